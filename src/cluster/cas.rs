//! Compare-and-set on a bucket key: write a value only if the key is still at the revision
//! it was read at.
//!
//! JetStream checks an expected revision (`Nats-Expected-Last-Subject-Sequence`), but on a
//! replicated stream before 2.9.21 it checks it only when the write is proposed, against
//! the writes already applied: two writes expecting the same revision, both proposed before
//! either is applied, both pass, and one update is lost (231 of 400 concurrent increments
//! were, on Debian's 2.9.10 with three replicas). A write expecting revision 0 (`create`)
//! is checked when applied, so it is exact. Hence the **fence**: before writing from
//! revision `r`, a writer `create`s the key `<bucket>.<key>.<r>` in the fence bucket; only
//! the one that created it sends the write. The loser of a race at `r` never sends, and a
//! writer holding an older revision is refused by the check at proposal (the leader has
//! applied the newer one). Measured: 0 lost of 1,600, for one more replicated write per
//! CAS. The fence must outlive any write still in flight (a proposal can commit after its
//! client gave up, across a leader election of 4–9 s), so fences live 60 s and are never
//! deleted. On 2.9.21 and later the fence is not needed ([`CasMode::Plain`]).
//!
//! A write whose acknowledgement was lost is followed on the leader: if the key now holds
//! it (the writer token of the `Eddy-Writer` header is this write's), it is done; if the
//! key is still at `r`, the same bytes are sent again (the fence is this writer's, or the
//! server checks when applying, so at most these bytes land); if another write came after
//! it, no one can tell whether it landed, and that is [`ClusterError::Unknown`]: the
//! caller treats it as a crash right after the write (every engine round may repeat).
//!
//! A writer that dies between creating a fence and writing blocks that key until the fence
//! expires (at most `fence_ttl`); [`Bucket::update`] waits with a backoff meanwhile.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::bucket::{Attempt, Bucket, Create, Entry, pause};
use super::connect::{Reached, ServerVersion};
use super::{ClusterError, Result, key};

/// How compare-and-set writes are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasMode {
    /// Fenced unless every server of the list is 2.9.21 or later.
    Auto,
    /// Each write first claims its revision in the fence bucket: correct on every version.
    Fenced,
    /// The expected revision alone: correct on 2.9.21 and later only.
    Plain,
}

impl CasMode {
    /// The mode to use with servers that answered as `reached` (`Auto` decided; a server
    /// that did not answer counts as an old one).
    pub fn resolve(self, reached: &[Reached]) -> CasMode {
        match self {
            CasMode::Auto => {
                let safe = |r: &Reached| {
                    r.info
                        .as_ref()
                        .ok()
                        .and_then(|i| ServerVersion::parse(&i.version))
                        .is_some_and(|v| v >= ServerVersion::SAFE_CAS)
                };
                if !reached.is_empty() && reached.iter().all(safe) {
                    CasMode::Plain
                } else {
                    CasMode::Fenced
                }
            }
            mode => mode,
        }
    }
}

/// What [`Bucket::cas`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// The value is stored, at this revision.
    Written(u64),
    /// The key was not at the expected revision (or another writer holds its fence):
    /// nothing was written; read again.
    Conflict,
}

/// What [`Bucket::update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated<T, R> {
    Done {
        revision: u64,
        value: T,
    },
    /// The change refused; nothing was written.
    Refused(R),
    Missing,
}

impl Bucket {
    /// Writes `value` to `key` if the key is at `revision` (fenced where the servers need
    /// it; see the module doc).
    pub async fn cas(&self, key: &str, revision: u64, value: Bytes) -> Result<Cas> {
        let token = self.token();
        if let Some(fence) = &self.fence {
            let claim = format!("{}.{key}.{}", self.spec.name, key::num(revision));
            if let Create::Exists(_) = fence.create(&claim, Bytes::from(token.clone())).await? {
                return Ok(Cas::Conflict);
            }
        }
        let deadline = Instant::now() + self.resolve_for;
        let mut maybe_sent = false;
        loop {
            match self
                .attempt(key, value.clone(), Some(revision), &token, "a CAS")
                .await
            {
                Attempt::Stored(revision) => return Ok(Cas::Written(revision)),
                Attempt::Refused(e) => return Err(e),
                Attempt::Conflict if !maybe_sent => return Ok(Cas::Conflict),
                // This writer holds the fence: the same write, again, once a leader is back.
                Attempt::Unavailable if !maybe_sent => {
                    if Instant::now() >= deadline {
                        return Err(ClusterError::failed("a CAS", "no stream leader"));
                    }
                    pause().await;
                    continue;
                }
                Attempt::Unknown => maybe_sent = true,
                // After a copy went unanswered: that copy may be what moved the key.
                Attempt::Conflict | Attempt::Unavailable => {}
            }
            if let Some(written) = self.follow(key, revision, &token, deadline).await? {
                return Ok(written);
            }
        }
    }

    /// After a write from `revision` went unanswered: `Some` once its fate is known,
    /// `None` when the key is still at `revision` and the write may be sent again.
    async fn follow(
        &self,
        key: &str,
        revision: u64,
        token: &str,
        deadline: Instant,
    ) -> Result<Option<Cas>> {
        loop {
            if Instant::now() >= deadline {
                return Err(ClusterError::Unknown { op: "a CAS" });
            }
            match self.read(key, true).await {
                Ok(Some(raw)) if raw.writer.as_deref() == Some(token) => {
                    return Ok(Some(Cas::Written(raw.entry.revision)));
                }
                Ok(Some(raw)) if raw.entry.revision == revision => return Ok(None),
                Ok(Some(_)) => return Err(ClusterError::Unknown { op: "a CAS" }),
                // The key was removed (or expired) meanwhile: the write cannot land now.
                Ok(None) => return Ok(Some(Cas::Conflict)),
                Err(_) => pause().await,
            }
        }
    }

    /// Read → `change` → CAS, again from a leader read after a conflict, until the write
    /// holds or `change` refuses. `change` gets the current entry and returns the new value
    /// (and anything to hand back). While a fence blocks the key (its writer died), waits
    /// with a backoff, up to the fence's lifetime and the time to resolve a write.
    pub async fn update<T, R>(
        &self,
        key: &str,
        mut change: impl FnMut(&Entry) -> std::result::Result<(Bytes, T), R>,
    ) -> Result<Updated<T, R>> {
        let mut leader = false;
        let mut stuck = Stuck::default();
        loop {
            let current = if leader {
                self.get_leader(key).await?
            } else {
                self.get(key).await?
            };
            let Some(entry) = current else {
                return Ok(Updated::Missing);
            };
            let (value, out) = match change(&entry) {
                Ok(v) => v,
                Err(refusal) => return Ok(Updated::Refused(refusal)),
            };
            match self.cas(key, entry.revision, value).await? {
                Cas::Written(revision) => {
                    return Ok(Updated::Done {
                        revision,
                        value: out,
                    });
                }
                Cas::Conflict => {
                    leader = true;
                    stuck.wait(entry.revision, self.give_up_after()).await?;
                }
            }
        }
    }

    /// How long a key may stay blocked by a fence before an update gives up.
    fn give_up_after(&self) -> Duration {
        let fence_ttl = self
            .fence
            .as_ref()
            .map_or(Duration::ZERO, |f| f.spec.config.max_age);
        fence_ttl + self.resolve_for
    }
}

/// Conflicts at one revision in a row: another writer holds its fence.
#[derive(Default)]
struct Stuck {
    revision: u64,
    since: Option<Instant>,
    pause: Duration,
}

impl Stuck {
    async fn wait(&mut self, revision: u64, limit: Duration) -> Result<()> {
        if self.since.is_none() || self.revision != revision {
            *self = Stuck {
                revision,
                since: Some(Instant::now()),
                pause: Duration::from_millis(2),
            };
            return Ok(());
        }
        if self.since.is_some_and(|t| t.elapsed() > limit) {
            return Err(ClusterError::failed(
                "a CAS",
                "the key stays at one revision whose fence another writer holds",
            ));
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        Ok(())
    }
}
