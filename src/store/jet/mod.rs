//! The JetStream backend of the store seam (cluster mode, issue 15): a cluster node's
//! answers to the methods of [`super::Store`], with the same meaning as the sled store's.
//!
//! - Records, due keys and idempotency claims go through [`cluster::Records`] (create,
//!   fenced CAS, the due key written before the record owns it).
//! - Request ids are random `u64`s claimed by the record's `create` (a taken one is an
//!   error, never an overwrite); channel ids are the same keyed permutation as the sled
//!   store's (`ids`), its key in the `meta` bucket, created by the first node to start and
//!   read back by every other, so a channel id made on one node leads to its record on all.
//! - Timelines are the sled store's frames (`timeline::frames`), one message per write on
//!   the request's subject of the timeline stream.
//!
//! - The catalog, the request log and the dead-letter queue are buckets of which every
//!   node keeps a copy current by a watch (`catalog`, `log`, `dlq`): listings and counts
//!   read the copy, in key order, with the sled store's own code where it has some.
//! - Every write of a record method is acknowledged by a quorum before the method
//!   returns, so [`super::Store::commit`] has only the catalog writes queued without a
//!   wait (an endpoint's health) to send.
//!
//! Not yet here: big texts in chunks (a record is stored whole and must fit the servers'
//! `max_payload`).

mod catalog;
mod dlq;
mod log;

use std::sync::Arc;

use bytes::Bytes;

use super::ids::{IdKey, pair, unpair};
use super::timeline::{frames, unframe};
use super::{Claim, CommitStats, Cursor, LogQuery, Result, StoreError, Summary, Update};
use crate::cluster::{self, Bucket, Cluster, Create, Records, Timeline};
use crate::job::{ChannelId, DeadLetter, ProjectId, Request, State, Status, Step};
pub use catalog::{CatalogBatch, Flush};

/// A cluster node's store; cheap to clone.
#[derive(Clone)]
pub struct JetStore {
    pub(super) cluster: Cluster,
    records: Records,
    timeline: Timeline,
    meta: Bucket,
    ids: IdKey,
    pub(super) catalog: CatalogBatch,
    log: log::Log,
    dlq: dlq::Dlq,
    pub(super) stats: Arc<CommitStats>,
}

async fn meta_or_init(
    meta: &Bucket,
    name: &str,
    init: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>> {
    let fresh = Bytes::from(init());
    Ok(match meta.create(name, fresh.clone()).await? {
        Create::Created(_) => fresh.to_vec(),
        Create::Exists(entry) => entry.value.to_vec(),
    })
}

impl JetStore {
    /// Opens the record buckets and the timeline stream of `cluster`, and reads (or, on
    /// the first node, creates) the id key.
    pub async fn open(cluster: &Cluster) -> Result<JetStore> {
        let meta = cluster.bucket("meta").await?;
        let key = meta_or_init(&meta, "id_key", || rand::random::<[u8; 32]>().to_vec()).await?;
        let key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
            StoreError::Cluster(cluster::ClusterError::failed(
                "reading meta/id_key",
                "not 32 bytes",
            ))
        })?;
        Ok(JetStore {
            cluster: cluster.clone(),
            records: cluster.records().await?,
            timeline: cluster.timeline().await?,
            meta,
            ids: IdKey::new(key),
            catalog: CatalogBatch::open(cluster.bucket("catalog").await?).await?,
            log: log::Log::open(cluster.bucket("log").await?).await?,
            dlq: dlq::Dlq::open(cluster.bucket("dlq").await?).await?,
            stats: Arc::default(),
        })
    }

    /// The value of `meta/<name>`, created with `init` by the first node that asks; every
    /// other node reads the winner's.
    pub async fn meta_or_init(
        &self,
        name: &str,
        init: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        meta_or_init(&self.meta, name, init).await
    }

    /// Sends the catalog writes queued without a wait (see `catalog`); a conflict there
    /// is an endpoint's health that another node changed first, and theirs stands.
    pub async fn commit(&self) -> Result<()> {
        self.catalog.flush().await?;
        Ok(())
    }

    /// The same store with a catalog queue of its own, for one catalog change.
    pub fn catalog_change(&self) -> JetStore {
        JetStore {
            catalog: self.catalog.fresh(),
            ..self.clone()
        }
    }

    pub fn new_project_id(&self, name: &str) -> ProjectId {
        self.ids.project_of_name(name)
    }

    /// A new request id (random, never 0) and its channel id.
    pub fn new_request_id(&self) -> (u64, ChannelId) {
        let id = rand::random::<u64>().max(1);
        (id, self.ids.channel_id(id, rand::random()))
    }

    pub async fn insert_request(&self, record: &mut Request) -> Result<()> {
        self.records.insert_request(record).await?;
        self.note_in_log(record, None).await;
        Ok(())
    }

    pub async fn insert_request_once(
        &self,
        record: &mut Request,
        project: &ProjectId,
        key_hash: &[u8; 32],
        ttl_ms: u64,
    ) -> Result<Claim> {
        let claim = self
            .records
            .insert_request_once(record, project, key_hash, ttl_ms)
            .await?;
        if let Claim::New = claim {
            self.note_in_log(record, None).await;
        }
        Ok(claim)
    }

    pub async fn request(&self, id: u64) -> Result<Option<Request>> {
        Ok(self.records.request(id).await?)
    }

    /// The record of `channel`, as the stream's leader has it: a socket's late join (and a
    /// resend after a reconnect) must never replay a message older than a push it had.
    pub async fn request_by_channel(&self, channel: &ChannelId) -> Result<Option<Request>> {
        let id = self.ids.request_of_channel(channel);
        Ok(self
            .records
            .request_leader(id)
            .await?
            .filter(|r| &r.channel_id == channel))
    }

    pub async fn update<T, R>(
        &self,
        id: u64,
        now_ms: u64,
        mut change: impl FnMut(&mut Request) -> std::result::Result<T, R>,
    ) -> Result<Update<T, R>> {
        let mut from = None;
        let done = self
            .records
            .update(id, now_ms, |r| {
                from = Some(r.state);
                change(r)
            })
            .await?;
        if let Update::Done(record, _) = &done {
            self.note_in_log(record, from).await;
        }
        Ok(done)
    }

    /// Writes `record`'s log entry after its record's write. The log is derived: an
    /// entry that cannot be written now is written with the record's next change (until
    /// then the listings show the request as it was), and the record's write, which is
    /// the truth and already acknowledged, is not reported failed for it.
    async fn note_in_log(&self, record: &Request, from: Option<State>) {
        if let Err(e) = self.log.put(record, from).await {
            tracing::warn!(
                id = record.id,
                "cluster: the request log entry was not written: {e}"
            );
        }
    }

    /// A request's summary, from its record.
    pub async fn summary(&self, id: u64) -> Result<Option<Summary>> {
        Ok(self.request(id).await?.as_ref().map(Summary::of))
    }

    pub async fn summary_by_channel(
        &self,
        project: &ProjectId,
        channel: &ChannelId,
    ) -> Result<Option<(u64, Summary)>> {
        Ok(self
            .request_by_channel(channel)
            .await?
            .filter(|r| &r.project_id == project)
            .map(|r| (r.id, Summary::of(&r))))
    }

    pub fn cursor_text(&self, cursor: Cursor) -> String {
        format!("cur_{}", self.ids.seal(pair(cursor.created_ms, cursor.id)))
    }

    pub fn parse_cursor(&self, text: &str) -> Option<Cursor> {
        let (created_ms, id) = unpair(self.ids.open(text.strip_prefix("cur_")?)?);
        Some(Cursor { created_ms, id })
    }

    pub fn list_requests(
        &self,
        project: &ProjectId,
        query: &LogQuery<'_>,
    ) -> Result<(Vec<Summary>, Option<String>)> {
        let (page, next) = self.log.list(project, query)?;
        Ok((page, next.map(|c| self.cursor_text(c))))
    }

    /// Finished requests past the retention leave this node's copy of the log (their
    /// records and entries expire in the buckets by `max_age`).
    pub fn sweep_requests(&self, project: &ProjectId, cutoff_ms: u64) -> usize {
        self.log.forget_older(project, cutoff_ms)
    }

    pub fn state_counts(&self) -> Vec<(Status, i64)> {
        let counts = self.log.counts();
        Status::ALL
            .into_iter()
            .map(|s| (s, counts[super::status_code(s) as usize]))
            .collect()
    }

    // Dead letters.

    pub async fn insert_dead_letter(&self, entry: &DeadLetter) -> Result<String> {
        self.dlq.insert(&self.ids, entry).await
    }

    pub fn dead_letters(
        &self,
        project: &ProjectId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeadLetter)>> {
        self.dlq.newest(&self.ids, project, before, limit)
    }

    pub fn dead_letters_between(
        &self,
        project: &ProjectId,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<(String, DeadLetter)>> {
        self.dlq.between(&self.ids, project, since_ms, until_ms)
    }

    pub async fn dead_letter(&self, project: &ProjectId, id: &str) -> Result<Option<DeadLetter>> {
        self.dlq.get(&self.ids, project, id).await
    }

    pub async fn remove_dead_letter(&self, project: &ProjectId, id: &str) -> Result<bool> {
        self.dlq.remove(&self.ids, project, id).await
    }

    pub fn purge_dead_letters(&self, cutoff_ms: u64) -> usize {
        self.dlq.forget_older(cutoff_ms)
    }

    pub fn dlq_len(&self) -> i64 {
        self.dlq.len() as i64
    }

    /// Appends steps as one message of the request's timeline; returns once a quorum
    /// stored it.
    pub async fn append_steps(&self, id: u64, steps: &[(u64, Step)]) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let framed = Bytes::from(frames(steps)?);
        self.timeline.append(id, framed).await?.wait().await?;
        Ok(())
    }

    pub async fn timeline(&self, id: u64) -> Result<Vec<(u64, Step)>> {
        let mut out = Vec::new();
        for message in self.timeline.read(id).await? {
            unframe(&message, &mut out)?;
        }
        out.sort_by_key(|(at_ms, _)| *at_ms);
        Ok(out)
    }

    pub async fn due_before(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, u64)>> {
        Ok(self.records.due_before(until_ms, limit).await?)
    }

    pub async fn drop_stale_due(&self, due_ms: u64, id: u64) -> Result<bool> {
        Ok(self.records.drop_stale_due(due_ms, id).await?)
    }
}

impl JetStore {
    /// New work is refused while this node has no connection to NATS (a write would only
    /// time out).
    pub fn ensure_linked(&self) -> Result<()> {
        if self.cluster.link.connected() {
            Ok(())
        } else {
            Err(StoreError::Cluster(cluster::ClusterError::failed(
                "reaching NATS",
                "this node has lost its connection to every server; it reconnects by itself",
            )))
        }
    }

    pub fn health(&self) -> super::Health {
        match self.ensure_linked() {
            Ok(()) => super::Health {
                writable: true,
                reason: None,
            },
            Err(e) => super::Health {
                writable: false,
                reason: Some(e.to_string()),
            },
        }
    }
}
