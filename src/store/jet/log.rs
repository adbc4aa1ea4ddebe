//! The request log of a cluster node: the sled store's `log_state` entries (same keys,
//! same values, see `store::log`) in the `log` bucket, each key the hex of the sled key,
//! so the text order of keys is their byte order; and this node's copy of the bucket (a
//! [`Mirror`]), which the listing reads exactly as the sled store reads its tree (one
//! code path: `log::list`). Counts per state come from the copy too.
//!
//! An entry is written after its record (a crash or a failed write in between leaves a
//! request the log does not list yet, or lists as it was, until its next change; never an
//! entry without a record) and rewritten after every change of the record; a phase change writes the new key, then deletes the old one. The bucket's
//! `max_age` (the request retention, from an entry's last write) removes entries of
//! requests nobody touched for that long without a marker, so the copy forgets finished
//! entries past the retention by itself ([`Log::forget_older`], called by the sweep).

use bytes::Bytes;

use super::super::log::{self, Cursor, LogQuery, Newest, Summary, summary_of};
use super::super::{Result, StoreError};
use crate::cluster::{Bucket, ClusterError, Mirror, key};
use crate::job::{ProjectId, Request, State};

/// The node's log bucket and its copy; cheap to clone.
#[derive(Clone)]
pub struct Log {
    bucket: Bucket,
    copy: Mirror,
}

fn unhex(k: &str) -> Result<Vec<u8>> {
    key::parse_hex(k).ok_or_else(|| {
        StoreError::Cluster(ClusterError::failed(
            "reading the request log",
            format!("key {k}"),
        ))
    })
}

impl Log {
    pub async fn open(bucket: Bucket) -> Result<Log> {
        let copy = Mirror::start(&bucket, None).await?;
        Ok(Log { bucket, copy })
    }

    /// Writes `r`'s entry; `from`, when given, is the state it was listed under before.
    pub async fn put(&self, r: &Request, from: Option<State>) -> Result<()> {
        let (k, value) = log::entry(r)?;
        let (k, value) = (key::hex(&k), Bytes::from(value));
        let revision = self.bucket.put(&k, value.clone()).await?;
        self.copy.note(&k, Some(value), revision);
        if let Some(old) = from.and_then(|from| log::left_behind(r, from)) {
            let old = key::hex(&old);
            let revision = self.bucket.delete(&old).await?;
            self.copy.note(&old, None, revision);
        }
        Ok(())
    }

    pub fn list(
        &self,
        project: &ProjectId,
        query: &LogQuery<'_>,
    ) -> Result<(Vec<Summary>, Option<Cursor>)> {
        let newest = |lower: Vec<u8>, upper: Vec<u8>| -> Newest<'static> {
            let entries = self.copy.between(&key::hex(&lower), &key::hex(&upper));
            Box::new(
                entries
                    .into_iter()
                    .rev()
                    .map(|e| Ok((unhex(&e.key)?, e.value.to_vec()))),
            )
        };
        log::list(newest, project, query)
    }

    /// Requests per state code, as this node's copy has them.
    pub fn counts(&self) -> [i64; 7] {
        let mut entries = Vec::new();
        self.copy.each(|e| {
            if let Some(k) = key::parse_hex(&e.key) {
                entries.push((k, e.value.clone()));
            }
        });
        log::count(entries.into_iter()).unwrap_or_default()
    }

    /// Forgets (in this node's copy) the finished entries of `project` last changed
    /// before `cutoff_ms`: the bucket expires them without a marker. Returns how many.
    pub fn forget_older(&self, project: &ProjectId, cutoff_ms: u64) -> usize {
        let prefix = key::hex(project.as_bytes());
        self.copy.forget(|e| {
            let Some(k) = e.key.strip_prefix(&prefix).and_then(key::parse_hex) else {
                return false;
            };
            k.first().is_some_and(|phase| *phase >= 5)
                && summary_of(&e.value).is_ok_and(|s| s.updated_ms < cutoff_ms)
        })
    }
}
