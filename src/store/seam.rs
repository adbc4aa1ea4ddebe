//! The store seam: [`Store`], the one handle the engine, scheduler, hub and catalog use,
//! over a backend: the sled store (one node, the default) and, in cluster mode, JetStream
//! (`crate::cluster`; issue 15, not wired yet).
//!
//! An enum rather than a trait object, so generic methods such as the closure-based
//! [`Store::update`] stay one code path in the engine, and a sled call costs one match.
//! Every method here only routes; what a method means is documented on the sled store's
//! method of the same name (in the file of its tree, see the table in `store`), and the
//! cluster backend keeps the same meaning.

use std::path::Path;

use bincode::{Decode, Encode};

use super::catalog::Kind;
use super::{Claim, CommitStats, Cursor, Health, LogQuery, Result, SledStore, Summary, Update};
use crate::job::{ChannelId, DeadLetter, ProjectId, Request, Status, Step};

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled(SledStore),
}

impl Store {
    /// Opens (or creates) the sled store under `dir` (see the sled store's `open`).
    pub fn open(dir: &Path, cache_bytes: u64, reserve: u64) -> Result<Store> {
        Ok(Store {
            backend: Backend::Sled(SledStore::open(dir, cache_bytes, reserve)?),
        })
    }

    fn sled(&self) -> &SledStore {
        match &self.backend {
            Backend::Sled(s) => s,
        }
    }

    // Records (the accept and drive paths).

    pub async fn new_request_id(&self) -> Result<(u64, ChannelId)> {
        self.sled().new_request_id()
    }

    pub async fn insert_request(&self, record: &mut Request) -> Result<()> {
        self.sled().insert_request(record)
    }

    pub async fn insert_request_once(
        &self,
        record: &mut Request,
        project: &ProjectId,
        key_hash: &[u8; 32],
        ttl_ms: u64,
    ) -> Result<Claim> {
        self.sled()
            .insert_request_once(record, project, key_hash, ttl_ms)
    }

    pub async fn request(&self, id: u64) -> Result<Option<Request>> {
        self.sled().request(id)
    }

    pub async fn request_by_channel(&self, channel: &ChannelId) -> Result<Option<Request>> {
        self.sled().request_by_channel(channel)
    }

    pub fn summary(&self, id: u64) -> Result<Option<Summary>> {
        self.sled().summary(id)
    }

    /// Read → `change` → CAS; see the sled store's `update` for the rules both keep.
    pub async fn update<T, R>(
        &self,
        id: u64,
        now_ms: u64,
        change: impl FnMut(&mut Request) -> std::result::Result<T, R>,
    ) -> Result<Update<T, R>> {
        self.sled().update(id, now_ms, change)
    }

    pub async fn commit(&self) -> Result<()> {
        self.sled().commit().await
    }

    // Timelines.

    pub async fn append_step(&self, id: u64, at_ms: u64, step: &Step) -> Result<()> {
        self.sled().append_step(id, at_ms, step)
    }

    pub async fn append_steps(&self, id: u64, steps: &[(u64, Step)]) -> Result<()> {
        self.sled().append_steps(id, steps)
    }

    pub async fn timeline(&self, id: u64) -> Result<Vec<(u64, Step)>> {
        self.sled().timeline(id)
    }

    // Due work (the scheduler).

    pub async fn due_before(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, u64)>> {
        self.sled().due_before(until_ms, limit)
    }

    pub fn recovered_due(&self) -> Vec<(u64, u64)> {
        self.sled().recovered_due()
    }

    pub async fn drop_stale_due(&self, due_ms: u64, id: u64) -> Result<bool> {
        self.sled().drop_stale_due(due_ms, id)
    }

    pub fn due_len(&self) -> usize {
        self.sled().due_len()
    }

    // Dead letters.

    pub async fn insert_dead_letter(&self, entry: &DeadLetter) -> Result<String> {
        self.sled().insert_dead_letter(entry)
    }

    pub async fn dead_letters(
        &self,
        project: &ProjectId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeadLetter)>> {
        self.sled().dead_letters(project, before, limit)
    }

    pub async fn dead_letters_between(
        &self,
        project: &ProjectId,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<(String, DeadLetter)>> {
        self.sled()
            .dead_letters_between(project, since_ms, until_ms)
    }

    pub async fn dead_letter(&self, project: &ProjectId, id: &str) -> Result<Option<DeadLetter>> {
        self.sled().dead_letter(project, id)
    }

    pub async fn remove_dead_letter(&self, project: &ProjectId, id: &str) -> Result<bool> {
        self.sled().remove_dead_letter(project, id)
    }

    pub async fn purge_dead_letters(&self, cutoff_ms: u64) -> Result<usize> {
        self.sled().purge_dead_letters(cutoff_ms)
    }

    pub fn dlq_len(&self) -> i64 {
        self.sled().dlq_len()
    }

    // The request log.

    pub fn cursor_text(&self, cursor: Cursor) -> Result<String> {
        self.sled().cursor_text(cursor)
    }

    pub fn parse_cursor(&self, text: &str) -> Option<Cursor> {
        self.sled().parse_cursor(text)
    }

    pub fn summary_by_channel(
        &self,
        project: &ProjectId,
        channel: &ChannelId,
    ) -> Result<Option<(u64, Summary)>> {
        self.sled().summary_by_channel(project, channel)
    }

    pub fn list_requests(
        &self,
        project: &ProjectId,
        query: &LogQuery<'_>,
    ) -> Result<(Vec<Summary>, Option<String>)> {
        self.sled().list_requests(project, query)
    }

    pub fn sweep_requests(
        &self,
        project: &ProjectId,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<usize> {
        self.sled().sweep_requests(project, cutoff_ms, limit)
    }

    pub fn rebuild_indexes(&self) -> Result<usize> {
        self.sled().rebuild_indexes()
    }

    pub fn state_counts(&self) -> Vec<(Status, i64)> {
        self.sled().state_counts()
    }

    // The catalog and meta.

    pub fn catalog_put<T: Encode>(
        &self,
        kind: Kind,
        project: &ProjectId,
        name: &[u8],
        value: &T,
    ) -> Result<()> {
        self.sled().catalog_put(kind, project, name, value)
    }

    pub fn catalog_delete(&self, kind: Kind, project: &ProjectId, name: &[u8]) -> Result<bool> {
        self.sled().catalog_delete(kind, project, name)
    }

    pub fn catalog_load<T: Decode<()>>(&self, kind: Kind) -> Result<Vec<T>> {
        self.sled().catalog_load(kind)
    }

    pub async fn meta_or_init(
        &self,
        name: &str,
        init: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.sled().meta_or_init(name, init)
    }

    pub fn next_id(&self) -> Result<u64> {
        self.sled().next_id()
    }

    // Health.

    pub fn ensure_space(&self) -> Result<()> {
        self.sled().ensure_space()
    }

    pub fn health(&self) -> Health {
        self.sled().health()
    }

    pub fn reopened(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sled().reopened()
    }

    pub fn commit_stats(&self) -> &CommitStats {
        self.sled().commit_stats()
    }
}
