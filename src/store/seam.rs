//! The store seam: [`Store`], the one handle the engine, scheduler, hub and catalog use,
//! over a backend: the sled store (one node, the default) or, in cluster mode, JetStream
//! ([`JetStore`], over `crate::cluster`).
//!
//! An enum rather than a trait object, so generic methods such as the closure-based
//! [`Store::update`] stay one code path in the engine, and a sled call costs one match.
//! Every method here only routes; what a method means is documented on the sled store's
//! method of the same name (in the file of its tree, see the table in `store`), and the
//! cluster backend keeps the same meaning. What a cluster node cannot answer yet is
//! [`StoreError::NotInCluster`].
//!
//! Every cluster call is boxed (`Box::pin`): a JetStream call is a deep future (fenced
//! CAS, chunked texts, retries), and unboxed it would sit inside every future that awaits
//! the store, on a sled node too, where a debug build overflowed a test thread's stack.
//! Boxing costs one allocation per cluster call, nothing on a sled node.

use std::path::Path;

use bincode::{Decode, Encode};

use super::catalog::Kind;
use super::jet::{Flush, JetStore};
use super::{
    Claim, CommitStats, Cursor, Health, LogQuery, Result, SledStore, StoreError, Summary, Update,
};
use crate::cluster::{Cluster, Settings};
use crate::job::{ChannelId, DeadLetter, ProjectId, Request, Status, Step};

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled(SledStore),
    /// Boxed: its bucket handles make it some 12 KB, and a sled `Store` should stay small.
    Jet(std::sync::Arc<JetStore>),
}

/// Routes a call: `on!(self, s => sled call, j => cluster call)`.
macro_rules! on {
    ($self:ident, $s:ident => $sled:expr, $j:ident => $jet:expr) => {
        match &$self.backend {
            Backend::Sled($s) => $sled,
            Backend::Jet($j) => $jet,
        }
    };
}

fn not_yet<T>(what: &'static str) -> Result<T> {
    Err(StoreError::NotInCluster(what))
}

impl Store {
    /// Opens (or creates) the sled store under `dir` (see the sled store's `open`).
    pub fn open(dir: &Path, cache_bytes: u64, reserve: u64) -> Result<Store> {
        Ok(Store {
            backend: Backend::Sled(SledStore::open(dir, cache_bytes, reserve)?),
        })
    }

    /// Connects to the NATS servers of `settings`, creates what is missing there, and
    /// opens a cluster node's store on them.
    pub async fn open_cluster(settings: Settings) -> Result<Store> {
        let cluster = Cluster::open(settings).await?;
        Ok(Store {
            backend: Backend::Jet(std::sync::Arc::new(JetStore::open(&cluster).await?)),
        })
    }

    /// The cluster this node is part of; `None` on a sled node.
    pub fn cluster(&self) -> Option<&Cluster> {
        on!(self, _s => None, j => Some(&j.cluster))
    }

    // Records (the accept and drive paths).

    pub async fn new_request_id(&self) -> Result<(u64, ChannelId)> {
        on!(self, s => s.new_request_id(), j => Ok(j.new_request_id()))
    }

    pub async fn insert_request(&self, record: &mut Request) -> Result<()> {
        on!(self, s => s.insert_request(record), j => Box::pin(j.insert_request(record)).await)
    }

    pub async fn insert_request_once(
        &self,
        record: &mut Request,
        project: &ProjectId,
        key_hash: &[u8; 32],
        ttl_ms: u64,
    ) -> Result<Claim> {
        on!(self,
            s => s.insert_request_once(record, project, key_hash, ttl_ms),
            j => Box::pin(j.insert_request_once(record, project, key_hash, ttl_ms)).await)
    }

    pub async fn request(&self, id: u64) -> Result<Option<Request>> {
        on!(self, s => s.request(id), j => Box::pin(j.request(id)).await)
    }

    pub async fn request_by_channel(&self, channel: &ChannelId) -> Result<Option<Request>> {
        on!(self, s => s.request_by_channel(channel), j => Box::pin(j.request_by_channel(channel)).await)
    }

    pub async fn summary(&self, id: u64) -> Result<Option<Summary>> {
        on!(self, s => s.summary(id), j => Box::pin(j.summary(id)).await)
    }

    /// Read → `change` → CAS; see the sled store's `update` for the rules both keep.
    pub async fn update<T, R>(
        &self,
        id: u64,
        now_ms: u64,
        change: impl FnMut(&mut Request) -> std::result::Result<T, R>,
    ) -> Result<Update<T, R>> {
        on!(self, s => s.update(id, now_ms, change), j => Box::pin(j.update(id, now_ms, change)).await)
    }

    pub async fn commit(&self) -> Result<()> {
        on!(self, s => s.commit().await, j => Box::pin(j.commit()).await)
    }

    // Timelines.

    pub async fn append_step(&self, id: u64, at_ms: u64, step: &Step) -> Result<()> {
        on!(self,
            s => s.append_step(id, at_ms, step),
            j => Box::pin(j.append_steps(id, &[(at_ms, step.clone())])).await)
    }

    pub async fn append_steps(&self, id: u64, steps: &[(u64, Step)]) -> Result<()> {
        on!(self, s => s.append_steps(id, steps), j => Box::pin(j.append_steps(id, steps)).await)
    }

    pub async fn timeline(&self, id: u64) -> Result<Vec<(u64, Step)>> {
        on!(self, s => s.timeline(id), j => Box::pin(j.timeline(id)).await)
    }

    // Due work (the scheduler).

    pub async fn due_before(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, u64)>> {
        on!(self, s => s.due_before(until_ms, limit), j => Box::pin(j.due_before(until_ms, limit)).await)
    }

    pub fn recovered_due(&self) -> Vec<(u64, u64)> {
        on!(self, s => s.recovered_due(), _j => Vec::new())
    }

    pub async fn drop_stale_due(&self, due_ms: u64, id: u64) -> Result<bool> {
        on!(self, s => s.drop_stale_due(due_ms, id), j => Box::pin(j.drop_stale_due(due_ms, id)).await)
    }

    pub fn due_len(&self) -> usize {
        on!(self, s => s.due_len(), _j => 0)
    }

    // Dead letters.

    pub async fn insert_dead_letter(&self, entry: &DeadLetter) -> Result<String> {
        on!(self, s => s.insert_dead_letter(entry), j => Box::pin(j.insert_dead_letter(entry)).await)
    }

    pub async fn dead_letters(
        &self,
        project: &ProjectId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeadLetter)>> {
        on!(self,
            s => s.dead_letters(project, before, limit),
            j => j.dead_letters(project, before, limit))
    }

    pub async fn dead_letters_between(
        &self,
        project: &ProjectId,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<(String, DeadLetter)>> {
        on!(self,
            s => s.dead_letters_between(project, since_ms, until_ms),
            j => j.dead_letters_between(project, since_ms, until_ms))
    }

    pub async fn dead_letter(&self, project: &ProjectId, id: &str) -> Result<Option<DeadLetter>> {
        on!(self, s => s.dead_letter(project, id), j => Box::pin(j.dead_letter(project, id)).await)
    }

    pub async fn remove_dead_letter(&self, project: &ProjectId, id: &str) -> Result<bool> {
        on!(self,
            s => s.remove_dead_letter(project, id),
            j => Box::pin(j.remove_dead_letter(project, id)).await)
    }

    pub async fn purge_dead_letters(&self, cutoff_ms: u64) -> Result<usize> {
        on!(self, s => s.purge_dead_letters(cutoff_ms), j => Ok(j.purge_dead_letters(cutoff_ms)))
    }

    pub fn dlq_len(&self) -> i64 {
        on!(self, s => s.dlq_len(), j => j.dlq_len())
    }

    // The request log.

    pub fn cursor_text(&self, cursor: Cursor) -> Result<String> {
        on!(self, s => s.cursor_text(cursor), j => Ok(j.cursor_text(cursor)))
    }

    pub fn parse_cursor(&self, text: &str) -> Option<Cursor> {
        on!(self, s => s.parse_cursor(text), j => j.parse_cursor(text))
    }

    pub async fn summary_by_channel(
        &self,
        project: &ProjectId,
        channel: &ChannelId,
    ) -> Result<Option<(u64, Summary)>> {
        on!(self,
            s => s.summary_by_channel(project, channel),
            j => Box::pin(j.summary_by_channel(project, channel)).await)
    }

    pub fn list_requests(
        &self,
        project: &ProjectId,
        query: &LogQuery<'_>,
    ) -> Result<(Vec<Summary>, Option<String>)> {
        on!(self, s => s.list_requests(project, query), j => j.list_requests(project, query))
    }

    pub fn sweep_requests(
        &self,
        project: &ProjectId,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<usize> {
        // A cluster's records and log keys expire by their buckets' `max_age`.
        on!(self,
            s => s.sweep_requests(project, cutoff_ms, limit),
            j => Ok(j.sweep_requests(project, cutoff_ms)))
    }

    pub fn rebuild_indexes(&self) -> Result<usize> {
        on!(self, s => s.rebuild_indexes(), _j => not_yet("rebuilding indexes"))
    }

    pub fn state_counts(&self) -> Vec<(Status, i64)> {
        on!(self, s => s.state_counts(), j => j.state_counts())
    }

    // The catalog and meta.

    pub fn catalog_put<T: Encode>(
        &self,
        kind: Kind,
        project: &ProjectId,
        name: &[u8],
        value: &T,
    ) -> Result<()> {
        on!(self,
            s => s.catalog_put(kind, project, name, value),
            j => j.catalog.put(kind, project, name, value))
    }

    pub fn catalog_delete(&self, kind: Kind, project: &ProjectId, name: &[u8]) -> Result<bool> {
        on!(self,
            s => s.catalog_delete(kind, project, name),
            j => Ok(j.catalog.delete(kind, project, name)))
    }

    pub fn catalog_load<T: Decode<()>>(&self, kind: Kind) -> Result<Vec<T>> {
        on!(self, s => s.catalog_load(kind), j => j.catalog.load(kind))
    }

    /// On a cluster node, reads one catalog entry from its bucket's leader into this node's
    /// copy when the copy lacks it (another node wrote it a moment ago); true when the copy
    /// changed and the catalog must be loaded again. Always false on a sled node.
    pub async fn catalog_catch_up(
        &self,
        kind: Kind,
        project: &ProjectId,
        name: &[u8],
    ) -> Result<bool> {
        on!(self, _s => Ok(false), j => Box::pin(j.catalog.catch_up(kind, project, name)).await)
    }

    /// For one catalog change on a cluster node: a handle whose catalog writes queue apart
    /// from every other's, to be sent by [`Store::catalog_flush`]. `None` on a sled node,
    /// whose catalog writes are made at once and durable with the next commit.
    pub fn catalog_change(&self) -> Option<Store> {
        on!(self, _s => None, j => Some(Store {
            backend: Backend::Jet(std::sync::Arc::new(j.catalog_change())),
        }))
    }

    /// Sends the catalog writes queued on this handle (see [`Store::catalog_change`]):
    /// false if another node changed one of their keys first (decide again).
    pub async fn catalog_flush(&self) -> Result<bool> {
        on!(self, _s => Ok(true), j => Ok(matches!(Box::pin(j.catalog.flush()).await?, Flush::Done)))
    }

    /// Drops the catalog writes queued on this handle.
    pub fn catalog_discard(&self) {
        on!(self, _s => {}, j => j.catalog.discard())
    }

    pub async fn meta_or_init(
        &self,
        name: &str,
        init: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        on!(self, s => s.meta_or_init(name, init), j => Box::pin(j.meta_or_init(name, init)).await)
    }

    /// The id of a new project called `name`: random on a sled node; on a cluster node
    /// derived from the name, so that nodes creating it at once create one.
    pub fn new_project_id(&self, name: &str) -> ProjectId {
        on!(self, _s => ProjectId::random(), j => j.new_project_id(name))
    }

    pub fn next_id(&self) -> Result<u64> {
        on!(self, s => s.next_id(), _j => Ok(rand::random::<u64>().max(1)))
    }

    // Health.

    pub fn ensure_space(&self) -> Result<()> {
        on!(self, s => s.ensure_space(), j => j.ensure_linked())
    }

    pub fn health(&self) -> Health {
        on!(self, s => s.health(), j => j.health())
    }

    /// Changes when the catalog must be loaded again: after a sled store reopened
    /// itself, and on a cluster node after every change of the catalog by any node.
    pub fn reopened(&self) -> tokio::sync::watch::Receiver<u64> {
        on!(self, s => s.reopened(), j => j.catalog.changed())
    }

    pub fn commit_stats(&self) -> &CommitStats {
        on!(self, s => s.commit_stats(), j => &j.stats)
    }
}
