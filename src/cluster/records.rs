//! Request records in JetStream: what the sled store's `requests`, `due` and
//! `idempotency` trees do, on the buckets of the layout, with the same record codec
//! ([`crate::store::encode_request`]) and the same rules, so the engine's calls mean the
//! same on both (the store seam will route them here in cluster mode).
//!
//! | sled tree | bucket | key | value |
//! |---|---|---|---|
//! | `requests` | `requests` | `<id>` | `[v][Request]`, as the sled store encodes it |
//! | `due` | `due` | `<due minute>.<due_ms>.<id>` | empty (only for work due after its write) |
//! | (none) | `WORK` stream | `work.<id>`, message id `<id>:<due_ms>` | `due_ms` |
//! | `idempotency` | `idem` | `<project>.<sha256>` | id ‖ created_ms, both `u64` BE |
//! | (none) | `lease` | `<id>.<effect>` | the taker's name |
//!
//! The rules carried over:
//! - A record moves only through [`Records::update`]: read → the caller's closure → CAS
//!   (fenced below 2.9.21, see `cas`) → on a conflict, read again from the leader and run
//!   the closure again. `updated_ms` and `due_ms` are set here, so the due index always
//!   follows [`Request::next_due`].
//! - Issue 14's due rule, on JetStream ([`Due`]): work due at the moment it is written (a
//!   new request, a recorded callback, a re-drive) gets no due key; the write publishes its
//!   work message (`work.<id>`, message id `<id>:<due_ms>`) instead, sent before the record's
//!   create or CAS and awaited with it, so a record is never due now without a message
//!   that some node will take. Work due later gets a due key, which every node's timer
//!   wheel lists by minute ([`Records::due_in_minutes`]) and fires by publishing the same
//!   message. A new due key is written (and acknowledged) before the CAS that makes the
//!   record own it, and the old one is removed after: a crash in between leaves a stale
//!   key (harmless: [`Records::drop_stale_due`] drops it when it fires), never a record
//!   with something due and neither a key nor a message. A message published for a CAS
//!   that then lost is harmless too: the round it starts re-reads the record.
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

mod due;

use std::time::Duration;

use bytes::Bytes;

pub use due::{Due, Held, due_key, holding};
use due::{entry_due, held, holder, seen_write, split_due_key};

use super::bucket::Ack;
use super::{Bodies, Bucket, Cas, Cluster, ClusterError, Create, Result, WorkQueue, key};
use crate::job::{ProjectId, Request};
use crate::store::{Claim, Update};

/// How long the work message of a stored write is sent again before the work is keyed.
const CONFIRM_FOR: Duration = Duration::from_secs(30);

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
    work: WorkQueue,
    /// Big texts, in chunks beside the record (see `bodies`).
    bodies: Bodies,
}

impl Records {
    pub async fn open(cluster: &Cluster) -> Result<Records> {
        Ok(Records {
            requests: cluster.bucket("requests").await?,
            due: cluster.bucket("due").await?,
            idem: cluster.bucket("idem").await?,
            lease: cluster.bucket("lease").await?,
            work: cluster.work().await?,
            bodies: Bodies::new(cluster.bucket("bodies").await?),
        })
    }

    /// Awaits the work message of a write that is stored: the record depends on it now,
    /// so one that was not acknowledged (its stream electing a leader) is sent again (same
    /// message id: stored once) for a while, and failing that the work gets a due key,
    /// which the next full listing of any node's wheel finds.
    async fn confirm(&self, id: u64, due: Due, ack: Ack) -> Result<()> {
        let Due::Now(at) = due else {
            return Ok(());
        };
        let mut failed = match ack.wait().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let until = tokio::time::Instant::now() + CONFIRM_FOR;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let sent = match self.work.publish_for_write(id, at).await {
                Ok(ack) => ack.wait().await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(_) => return Ok(()),
                Err(e) => failed = e,
            }
        }
        tracing::warn!(
            id,
            "cluster: no work message for a stored write ({failed}); keyed instead"
        );
        self.due.put(&due_key(at, id), Bytes::new()).await?;
        Ok(())
    }

    /// Makes `due` findable before the write that sets it: publishes the work message of
    /// work due now (its acknowledgement is awaited by the caller, with the write), or
    /// writes the due key of work due later.
    async fn announce(&self, id: u64, due: Due) -> Result<Option<Ack>> {
        match due {
            Due::Never => Ok(None),
            Due::Now(at) => Ok(Some(self.work.publish_for_write(id, at).await?)),
            Due::Later(at) => {
                self.due.put(&due_key(at, id), Bytes::new()).await?;
                Ok(None)
            }
        }
    }

    /// Stores a new request and its work message (or due key); done once a quorum stored
    /// both. An id that is taken already is an error (ids are random `u64`s: it does not
    /// happen by chance).
    pub async fn insert_request(&self, record: &mut Request) -> Result<()> {
        record.due_ms = record.next_due();
        let published = self.announce(record.id, Due::of(record)).await?;
        let created = self
            .requests
            .create(&key::num(record.id), self.bodies.encode(record).await?)
            .await?;
        if let Some(ack) = published
            && matches!(created, Create::Created(_))
        {
            self.confirm(record.id, Due::of(record), ack).await?;
        }
        match created {
            Create::Created(_) => Ok(()),
            Create::Exists(_) => Err(ClusterError::failed(
                "storing a request",
                format!("the id {} is taken", record.id),
            )),
        }
    }

    /// Record `id` as some replica has it (an absence is confirmed by the leader): for
    /// reads that only show a record.
    ///
    /// A round holding the request's job ([`holding`]) reads from the leader instead: it
    /// decides from the record that nothing is due, and a replica may not have the write
    /// that published the job yet. For a job published by a write, a record that does not
    /// show that write yet (older, and not due at the job's time) reads as none: the
    /// write was sent after the message and may still be on its way, so the job must
    /// come back rather than find nothing to do.
    pub async fn request(&self, id: u64) -> Result<Option<Request>> {
        if let Some((held, seen)) = holder(id) {
            let record = self.request_leader(id).await?;
            let early =
                |r: &Request| !seen && r.due_ms != Some(held.due_ms) && r.updated_ms <= held.due_ms;
            let record = record.filter(|r| !early(r));
            if record.is_some() {
                seen_write();
            }
            return Ok(record);
        }
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
        let mut from_leader = held(id);
        // Due keys written by attempts that lost their CAS (removed once one wins), and
        // the pause before trying a revision again whose fence another writer holds.
        let mut unowned: Vec<u64> = Vec::new();
        let mut pause = Duration::from_millis(10);
        let mut current = match from_leader {
            true => self.requests.get_leader(&key).await?,
            false => self.requests.get(&key).await?,
        };
        loop {
            let Some(entry) = current else {
                if !from_leader {
                    from_leader = true;
                    current = self.requests.get_leader(&key).await?;
                    continue;
                }
                return Ok(Update::Missing);
            };
            let mut record = self.bodies.decode(&entry.value).await?;
            let old_due = Due::of(&record);
            let value = match change(&mut record) {
                Ok(v) => v,
                // A refusal stands only on the leader's copy: a replica's may be behind.
                Err(_) if !from_leader => {
                    from_leader = true;
                    current = self.requests.get_leader(&key).await?;
                    continue;
                }
                Err(refusal) => return Ok(Update::Refused(refusal)),
            };
            record.updated_ms = now_ms.max(record.updated_ms);
            record.due_ms = record.next_due();
            let new_due = Due::of(&record);
            // The same due time keeps what already announced it (its key, or its message,
            // which the round holding it is working on).
            let moved = record.due_ms != entry_due(old_due);
            let published = match new_due {
                _ if !moved => None,
                Due::Now(_) if held(id) => None,
                Due::Later(at) if unowned.contains(&at) => None,
                _ => self.announce(id, new_due).await?,
            };
            match self
                .requests
                .cas(&key, entry.revision, self.bodies.encode(&mut record).await?)
                .await?
            {
                Cas::Written(_) => {
                    if let Some(ack) = published {
                        self.confirm(id, new_due, ack).await?;
                    }
                    if moved && let Due::Later(due) = old_due {
                        unowned.push(due);
                    }
                    for due in unowned.iter().filter(|d| record.due_ms != Some(**d)) {
                        self.due.remove(&due_key(*due, id)).await?;
                    }
                    return Ok(Update::Done(Box::new(record), value));
                }
                // Another node moved the record: read what it wrote, decide again. If it
                // did not move, a writer holds the revision's fence (in flight, or dead
                // until the fence expires): try again after a growing pause.
                Cas::Conflict => {
                    if let Due::Later(at) = new_due
                        && moved
                        && !unowned.contains(&at)
                    {
                        unowned.push(at);
                    }
                    from_leader = true;
                    current = self.requests.get_leader(&key).await?;
                    if current.as_ref().map(|e| e.revision) == Some(entry.revision) {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
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
    /// the whole `due` bucket (keys only; ~1 s for 100k keys when measured): for a start
    /// and the occasional sweep; a timer wheel's refills list [`Records::due_in_minutes`].
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

    /// Due-index entries from minute `from_minute` (`due_ms / 60_000`) up to `until_ms`,
    /// oldest first: one keys-only listing per minute (40–53 ms for a minute of 834 keys
    /// when measured), so a refill costs the minutes it looks at, not the whole index.
    pub async fn due_in_minutes(&self, from_minute: u64, until_ms: u64) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for minute in from_minute..=until_ms / 60_000 {
            let keys = self.due.list(Some(&key::num(minute)), false).await?;
            out.extend(
                keys.iter()
                    .filter_map(|e| split_due_key(&e.key))
                    .filter(|(due, _)| *due < until_ms),
            );
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The work queue the records announce due work on.
    pub fn work(&self) -> &WorkQueue {
        &self.work
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
