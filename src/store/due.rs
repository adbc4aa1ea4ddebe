//! The `due` index: `due_ms u64 BE ‖ id u64 BE` → empty, one key per record that has
//! something due (what is due is in the record). The scheduler reads it in time order; it
//! is derived from `requests`, and a key whose record moved on is dropped when it fires.

use super::{Result, Store, stored_record};

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

impl Store {
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

    /// Removes the due entry `(due_ms, id)` if the record no longer owns it (a leftover of a
    /// crash between swapping a record and removing its old key). Returns true if removed.
    pub fn drop_stale_due(&self, due_ms: u64, id: u64) -> Result<bool> {
        let _guard = self.stripe(id);
        let owned = stored_record(&*self.inner()?, id)?.and_then(|r| r.due_ms) == Some(due_ms);
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
