//! The dead-letter queue's storage: one project's entries are one range of the `dlq` tree
//! in time order. An entry's public id is its key's `dead_ms ‖ seq` sealed by the store's
//! id permutation (see `ids`), so ids say nothing about when or in what order other
//! entries died, yet lead to the key without an index.

use std::sync::atomic::Ordering;

use super::ids::{IdKey, unpair};
use super::{Result, SledStore, codec};
use crate::job::{DeadLetter, ProjectId};

/// `project ‖ dead_ms BE ‖ seq BE`: one project's dead letters are a contiguous range in
/// time order.
pub(super) fn dlq_key(project: &ProjectId, dead_ms: u64, seq: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(project.as_bytes());
    k[16..24].copy_from_slice(&dead_ms.to_be_bytes());
    k[24..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The public id of a dead letter: `dlq_` and 32 hex digits.
pub(super) fn dlq_id(ids: &IdKey, key: &[u8]) -> String {
    let tail: [u8; 16] = key
        .get(16..32)
        .and_then(|t| t.try_into().ok())
        .unwrap_or_default();
    format!("dlq_{}", ids.seal(tail))
}

pub(super) fn parse_dlq_id(ids: &IdKey, id: &str) -> Option<(u64, u64)> {
    ids.open(id.strip_prefix("dlq_")?).map(unpair)
}

/// The smallest project id greater than `project`, if any.
fn next_project(project: &ProjectId) -> Option<ProjectId> {
    let n = u128::from_be_bytes(*project.as_bytes()).checked_add(1)?;
    Some(ProjectId::from_bytes(n.to_be_bytes()))
}

impl SledStore {
    /// Records a dead-lettered delivery; returns its id. Durable with the next commit.
    pub fn insert_dead_letter(&self, entry: &DeadLetter) -> Result<String> {
        let inner = self.inner()?;
        let seq = inner.db.generate_id()?;
        let key = dlq_key(&entry.project_id, entry.dead_ms, seq);
        if inner.dlq.insert(key, codec::encode(entry)?)?.is_none() {
            self.shared.dlq_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(dlq_id(&inner.ids, &key))
    }

    /// A project's dead letters, newest first, at most `limit`, older than the entry
    /// `before` (an id) when given.
    pub fn dead_letters(
        &self,
        project: &ProjectId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeadLetter)>> {
        let inner = self.inner()?;
        let start = dlq_key(project, 0, 0);
        let end = match before.and_then(|id| parse_dlq_id(&inner.ids, id)) {
            Some((dead_ms, seq)) => dlq_key(project, dead_ms, seq),
            None => dlq_key(project, u64::MAX, u64::MAX),
        };
        let mut out = Vec::new();
        for kv in inner.dlq.range(start..end).rev().take(limit) {
            let (k, v) = kv?;
            out.push((dlq_id(&inner.ids, &k), codec::decode(&v)?));
        }
        Ok(out)
    }

    /// A project's dead letters with `since_ms <= dead_ms < until_ms`, oldest first.
    pub fn dead_letters_between(
        &self,
        project: &ProjectId,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<(String, DeadLetter)>> {
        let inner = self.inner()?;
        let mut out = Vec::new();
        let range = dlq_key(project, since_ms, 0)..dlq_key(project, until_ms, 0);
        for kv in inner.dlq.range(range) {
            let (k, v) = kv?;
            out.push((dlq_id(&inner.ids, &k), codec::decode(&v)?));
        }
        Ok(out)
    }

    /// One dead letter of `project` by id.
    pub fn dead_letter(&self, project: &ProjectId, id: &str) -> Result<Option<DeadLetter>> {
        let inner = self.inner()?;
        let Some((dead_ms, seq)) = parse_dlq_id(&inner.ids, id) else {
            return Ok(None);
        };
        match inner.dlq.get(dlq_key(project, dead_ms, seq))? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Removes one dead letter of `project`; true if it existed.
    pub fn remove_dead_letter(&self, project: &ProjectId, id: &str) -> Result<bool> {
        let inner = self.inner()?;
        let Some((dead_ms, seq)) = parse_dlq_id(&inner.ids, id) else {
            return Ok(false);
        };
        let removed = inner.dlq.remove(dlq_key(project, dead_ms, seq))?.is_some();
        if removed {
            self.shared.dlq_count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(removed)
    }

    /// Removes every dead letter (of every project) that died before `cutoff_ms`; returns
    /// how many. Keys lead with the project, so this walks each project's old range.
    pub fn purge_dead_letters(&self, cutoff_ms: u64) -> Result<usize> {
        let inner = self.inner()?;
        let mut removed = 0;
        let mut project_start = Some(ProjectId::from_bytes([0; 16]));
        while let Some(from) = project_start {
            let Some(kv) = inner.dlq.range(dlq_key(&from, 0, 0)..).next() else {
                break;
            };
            let (k, _) = kv?;
            let project = ProjectId::from_bytes(k[..16].try_into().unwrap_or([0xff; 16]));
            for kv in inner
                .dlq
                .range(dlq_key(&project, 0, 0)..dlq_key(&project, cutoff_ms, 0))
            {
                let (k, _) = kv?;
                if inner.dlq.remove(k)?.is_some() {
                    self.shared.dlq_count.fetch_sub(1, Ordering::Relaxed);
                    removed += 1;
                }
            }
            project_start = next_project(&project);
        }
        Ok(removed)
    }
}
