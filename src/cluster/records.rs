//! Request records in JetStream: what the sled store's `requests`, `due` and
//! `idempotency` trees do, on the buckets of the layout, with the same record codec
//! ([`crate::store::encode_request`]) and the same rules, so the engine's calls mean the
//! same on both (the store seam will route them here in cluster mode).
//!
//! | sled tree | bucket | key | value |
//! |---|---|---|---|
//! | `requests` | `requests` | `<id>` | `[v][Request]`, as the sled store encodes it |
//! | `due` | `due` | `<due minute>.<due_ms>.<id>` | empty |
//! | `idempotency` | `idem` | `<project>.<sha256>` | id ‖ created_ms, both `u64` BE |
//! | (none) | `lease` | `<id>.<effect>` | the taker's name |
//!
//! The rules carried over:
//! - A record moves only through [`Records::update`]: read → the caller's closure → CAS
//!   (fenced below 2.9.21, see `cas`) → on a conflict, read again from the leader and run
//!   the closure again. `updated_ms` and `due_ms` are set here, so the due index always
//!   follows [`Request::next_due`].
//! - A record's new due key is written (and acknowledged) before the CAS that makes the
//!   record own it, and its old key is removed after: a crash in between leaves a stale key
//!   (harmless: [`Records::drop_stale_due`] drops it when it fires), never a record with
//!   something due and no key.
//! - An idempotency claim is taken by `create` (exact on every server version) before the
//!   record is stored; a repeat that finds the claim waits for its record (the claimant
//!   may be between the two writes), and takes over a claim whose record never came or
//!   that expired.
//! - A costly effect that several nodes may decide from the same record (two work
//!   messages for one request: a re-fire, a redelivery) is done by the node that takes
//!   its lease ([`Records::lease`]): one `create`, exact on every server version, and no
//!   change to the stored record. The lease expires with the bucket's `max_age`
//!   (`lease_ttl`), so a node that died holding it delays the effect, never blocks it.
//!
//! - A record's big texts are written in chunks before the record write that names them
//!   and read back with it (`bodies`), so a record stays far under `max_payload`.

use std::time::Duration;

use bytes::Bytes;

use super::{Bodies, Bucket, Cas, Cluster, ClusterError, Create, Result, key};
use crate::job::{ProjectId, Request};
use crate::store::{Claim, Update};

/// How long a repeat of an idempotency key waits for the record of a fresh claim whose
/// record is not there yet, before taking the claim over.
const CLAIM_GRACE: Duration = Duration::from_secs(5);

/// The record buckets of one node; cheap to clone.
#[derive(Clone)]
pub struct Records {
    requests: Bucket,
    due: Bucket,
    idem: Bucket,
    lease: Bucket,
    /// Big texts, in chunks beside the record (see `bodies`).
    bodies: Bodies,
}

/// The due-index key of `(due_ms, id)`: the minute first, so one minute lists by prefix.
pub fn due_key(due_ms: u64, id: u64) -> String {
    format!(
        "{}.{}.{}",
        key::num(due_ms / 60_000),
        key::num(due_ms),
        key::num(id)
    )
}

fn split_due_key(k: &str) -> Option<(u64, u64)> {
    let mut tokens = k.split('.').skip(1);
    let due = key::parse_num(tokens.next()?)?;
    let id = key::parse_num(tokens.next()?)?;
    Some((due, id))
}

impl Records {
    pub async fn open(cluster: &Cluster) -> Result<Records> {
        Ok(Records {
            requests: cluster.bucket("requests").await?,
            due: cluster.bucket("due").await?,
            idem: cluster.bucket("idem").await?,
            lease: cluster.bucket("lease").await?,
            bodies: Bodies::new(cluster.bucket("bodies").await?),
        })
    }

    /// Stores a new request and its due key; done once a quorum stored both. An id that
    /// is taken already is an error (ids are random `u64`s: it does not happen by chance).
    pub async fn insert_request(&self, record: &mut Request) -> Result<()> {
        record.due_ms = record.next_due();
        if let Some(due) = record.due_ms {
            self.due.put(&due_key(due, record.id), Bytes::new()).await?;
        }
        match self
            .requests
            .create(&key::num(record.id), self.bodies.encode(record).await?)
            .await?
        {
            Create::Created(_) => Ok(()),
            Create::Exists(_) => Err(ClusterError::failed(
                "storing a request",
                format!("the id {} is taken", record.id),
            )),
        }
    }

    /// Record `id` as some replica has it (an absence is confirmed by the leader): for
    /// reads that only show a record.
    pub async fn request(&self, id: u64) -> Result<Option<Request>> {
        match self.requests.get(&key::num(id)).await? {
            Some(e) => Ok(Some(self.bodies.decode(&e.value).await?)),
            None => Ok(None),
        }
    }

    /// Record `id` as the stream's leader has it, every acknowledged write included: for
    /// a decision to do nothing (nothing due, nothing to send, the latest message).
    pub async fn request_leader(&self, id: u64) -> Result<Option<Request>> {
        match self.requests.get_leader(&key::num(id)).await? {
            Some(e) => Ok(Some(self.bodies.decode(&e.value).await?)),
            None => Ok(None),
        }
    }

    /// Applies `change` to record `id` and swaps it in, as the sled store's `update`
    /// does: `change` may refuse (nothing is written) and runs again on a conflict.
    pub async fn update<T, R>(
        &self,
        id: u64,
        now_ms: u64,
        mut change: impl FnMut(&mut Request) -> std::result::Result<T, R>,
    ) -> Result<Update<T, R>> {
        let key = key::num(id);
        let mut current = self.requests.get(&key).await?;
        loop {
            let Some(entry) = current else {
                return Ok(Update::Missing);
            };
            let mut record = self.bodies.decode(&entry.value).await?;
            let old_due = record.due_ms;
            let value = match change(&mut record) {
                Ok(v) => v,
                Err(refusal) => return Ok(Update::Refused(refusal)),
            };
            record.updated_ms = now_ms.max(record.updated_ms);
            record.due_ms = record.next_due();
            let moved = record.due_ms != old_due;
            if moved && let Some(due) = record.due_ms {
                self.due.put(&due_key(due, id), Bytes::new()).await?;
            }
            match self
                .requests
                .cas(&key, entry.revision, self.bodies.encode(&mut record).await?)
                .await?
            {
                Cas::Written(_) => {
                    if moved && let Some(due) = old_due {
                        self.due.remove(&due_key(due, id)).await?;
                    }
                    return Ok(Update::Done(Box::new(record), value));
                }
                // Another node moved the record: read what it wrote, decide again.
                Cas::Conflict => current = self.requests.get_leader(&key).await?,
            }
        }
    }

    /// Takes the lease on `effect` of record `id`, where `effect` names the effect with
    /// the record's state it was decided from (`model.<attempts so far>`): true for the
    /// one node that takes it, false for every other until it expires (`lease_ttl`).
    /// A lease is never released: once the effect is recorded the record has moved on,
    /// and the next decision names another effect.
    pub async fn lease(&self, id: u64, effect: &str) -> Result<bool> {
        let key = format!("{}.{effect}", key::num(id));
        let taker = Bytes::from(self.lease.token());
        Ok(matches!(
            self.lease.create(&key, taker).await?,
            Create::Created(_)
        ))
    }

    /// Due-index entries with `due_ms < until_ms`, oldest first, at most `limit`. Lists
    /// the whole `due` bucket (keys only; ~1 s for 100k keys when measured): the minute
    /// token that leads each key lets a scheduler that remembers its oldest overdue
    /// minute list only the minutes up to its horizon instead.
    pub async fn due_before(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = self
            .due
            .list(None, false)
            .await?
            .iter()
            .filter_map(|e| split_due_key(&e.key))
            .filter(|(due, _)| *due < until_ms)
            .collect();
        out.sort_unstable();
        out.truncate(limit);
        Ok(out)
    }

    /// Removes the due entry `(due_ms, id)` if the record (read from the leader) no
    /// longer owns it. Returns true if removed.
    pub async fn drop_stale_due(&self, due_ms: u64, id: u64) -> Result<bool> {
        let owned = self.request_leader(id).await?.and_then(|r| r.due_ms) == Some(due_ms);
        if !owned {
            self.due.remove(&due_key(due_ms, id)).await?;
        }
        Ok(!owned)
    }

    /// Stores a new request unless `project ‖ key_hash` names one that exists and is
    /// younger than `ttl_ms`; then returns that request's id and stores nothing. Exactly
    /// one of several nodes racing with the same key stores a request.
    pub async fn insert_request_once(
        &self,
        record: &mut Request,
        project: &ProjectId,
        key_hash: &[u8; 32],
        ttl_ms: u64,
    ) -> Result<Claim> {
        let claim_key = format!("{}.{}", key::hex(project.as_bytes()), key::hex(key_hash));
        let mut mine = [0u8; 16];
        mine[..8].copy_from_slice(&record.id.to_be_bytes());
        mine[8..].copy_from_slice(&record.created_ms.to_be_bytes());
        let mine = Bytes::copy_from_slice(&mine);
        let mut waited = None;
        loop {
            let theirs = match self.idem.create(&claim_key, mine.clone()).await? {
                Create::Created(_) => break,
                Create::Exists(entry) => entry,
            };
            let number = |at: usize| {
                let bytes = theirs.value.get(at..at + 8)?;
                Some(u64::from_be_bytes(bytes.try_into().ok()?))
            };
            let (owner, created) = (number(0).unwrap_or(0), number(8).unwrap_or(0));
            let fresh = record.created_ms.saturating_sub(created) < ttl_ms;
            if fresh {
                if self.request_leader(owner).await?.is_some() {
                    return Ok(Claim::Existing(owner));
                }
                // The claimant may be between its claim and its record: give it time.
                let since = waited.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < CLAIM_GRACE {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            // Expired, or its record never came (its node died between the writes).
            if let Cas::Written(_) = self
                .idem
                .cas(&claim_key, theirs.revision, mine.clone())
                .await?
            {
                break;
            }
        }
        self.insert_request(record).await?;
        Ok(Claim::New)
    }
}
