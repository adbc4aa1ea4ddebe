//! The `due` index: `due_ms u64 BE ‖ id u64 BE` → empty, one key per record that has
//! something due later than its last write (what is due is in the record). The scheduler
//! reads it in time order; it is derived from `requests`, and a key whose record moved on
//! is dropped when it fires.
//!
//! Work due at the moment it is written (a new request, a first attempt without delay, a
//! recorded callback) gets no key: the writer hands it to the scheduler in memory, and
//! the index would only be written to be removed a moment later. After a restart such
//! work is found again from the request log's active phase, where every active request is
//! listed (read at open anyway to count states): [`recover`] reads those records and
//! returns the ones due, which the scheduler takes with [`Store::recovered_due`]. A
//! finished request still delivering its webhooks keeps its key (it is not in the active
//! phase).

use super::open::Inner;
use super::{Result, SledStore, stored_record};
use crate::job::Request;

/// The due time the index holds a key for: the record's, unless the record is active and
/// that time had come when it was written.
pub(super) fn keyed_due(r: &Request) -> Option<u64> {
    r.due_ms
        .filter(|due| r.state.is_terminal() || *due > r.updated_ms)
}

/// The `(due_ms, id)` of the requests whose active log entries are `active` with work due
/// and no due key, and how many entries were dropped for want of a record: a new request's
/// entry is written before its record (so a record on disk is always listed), and a crash
/// between the two leaves an entry of a request never acknowledged.
pub(super) fn recover(inner: &Inner, active: &[sled::IVec]) -> Result<(Vec<(u64, u64)>, usize)> {
    let mut due = Vec::new();
    let mut dropped = 0;
    for key in active {
        let Some(id) = super::log::id_of(key) else {
            continue;
        };
        let Some(record) = stored_record(inner, id)? else {
            inner.log_state.remove(key)?;
            dropped += 1;
            continue;
        };
        if let Some(at) = record.due_ms
            && keyed_due(&record).is_none()
        {
            due.push((at, id));
        }
    }
    due.sort_unstable();
    Ok((due, dropped))
}

pub fn due_key(due_ms: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&due_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

fn split_due_key(k: &[u8]) -> Option<(u64, u64)> {
    let due = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
    Some((due, id))
}

impl SledStore {
    /// Due-index entries with `due_ms < until_ms`, oldest first, at most `limit`.
    pub fn due_before(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for kv in self.inner()?.due.range(..due_key(until_ms, 0)).take(limit) {
            let (k, _) = kv?;
            if let Some(entry) = split_due_key(&k) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The requests found at open with work due and no due key (see [`recover`]); handed
    /// out once, to the scheduler.
    pub fn recovered_due(&self) -> Vec<(u64, u64)> {
        std::mem::take(
            &mut *self
                .shared
                .recovered
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Removes the due entry `(due_ms, id)` if the record no longer owns it (a leftover of a
    /// crash between swapping a record and removing its old key). Returns true if removed.
    pub fn drop_stale_due(&self, due_ms: u64, id: u64) -> Result<bool> {
        let _guard = self.stripe(id);
        let record = stored_record(&*self.inner()?, id)?;
        let owned = record.as_ref().and_then(keyed_due) == Some(due_ms);
        if !owned {
            self.inner()?.due.remove(due_key(due_ms, id))?;
        }
        Ok(!owned)
    }

    /// Entries in the due index (0 while the store is being reopened).
    pub fn due_len(&self) -> usize {
        self.inner().map_or(0, |inner| inner.due.len())
    }
}
