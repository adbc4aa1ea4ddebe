//! The dead-letter queue of a cluster node: the sled store's `dlq` entries (same keys and
//! values, same public ids, see `store::dlq`) in the `dlq` bucket, each key the hex of the
//! sled key, and this node's copy of the bucket, which listings read in key order as the
//! sled store reads its tree. An entry's sequence number is random (there is no shared
//! counter), taken by `create`. The bucket's `max_age` (the DLQ retention) expires
//! entries without a marker; the purge forgets them in the copy.

use bytes::Bytes;

use super::super::dlq::{dlq_id, dlq_key, parse_dlq_id};
use super::super::ids::IdKey;
use super::super::{Result, codec};
use crate::cluster::{Bucket, ClusterError, Create, Mirror, key};
use crate::job::{DeadLetter, ProjectId};

/// The node's DLQ bucket and its copy; cheap to clone.
#[derive(Clone)]
pub struct Dlq {
    bucket: Bucket,
    copy: Mirror,
}

impl Dlq {
    pub async fn open(bucket: Bucket) -> Result<Dlq> {
        let copy = Mirror::start(&bucket, None).await?;
        Ok(Dlq { bucket, copy })
    }

    pub async fn insert(&self, ids: &IdKey, entry: &DeadLetter) -> Result<String> {
        let value = Bytes::from(codec::encode(entry)?);
        loop {
            let seq = rand::random::<u64>();
            let raw = dlq_key(&entry.project_id, entry.dead_ms, seq);
            let k = key::hex(&raw);
            if let Create::Created(revision) = self.bucket.create(&k, value.clone()).await? {
                self.copy.note(&k, Some(value), revision);
                return Ok(dlq_id(ids, &raw));
            }
        }
    }

    /// Entries of `project` with keys in `lower..upper`, in key order, with their ids.
    fn range(
        &self,
        ids: &IdKey,
        (lower, upper): ([u8; 32], [u8; 32]),
    ) -> Result<Vec<(String, DeadLetter)>> {
        self.copy
            .between(&key::hex(&lower), &key::hex(&upper))
            .iter()
            .map(|e| {
                let raw = key::parse_hex(&e.key)
                    .ok_or_else(|| ClusterError::failed("reading the DLQ", &e.key))?;
                Ok((dlq_id(ids, &raw), codec::decode(&e.value)?))
            })
            .collect()
    }

    pub fn newest(
        &self,
        ids: &IdKey,
        project: &ProjectId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeadLetter)>> {
        let end = match before.and_then(|id| parse_dlq_id(ids, id)) {
            Some((dead_ms, seq)) => dlq_key(project, dead_ms, seq),
            None => dlq_key(project, u64::MAX, u64::MAX),
        };
        let mut all = self.range(ids, (dlq_key(project, 0, 0), end))?;
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    pub fn between(
        &self,
        ids: &IdKey,
        project: &ProjectId,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<(String, DeadLetter)>> {
        let range = (dlq_key(project, since_ms, 0), dlq_key(project, until_ms, 0));
        self.range(ids, range)
    }

    /// One entry, read from the bucket (a re-drive must not act on a stale copy).
    pub async fn get(
        &self,
        ids: &IdKey,
        project: &ProjectId,
        id: &str,
    ) -> Result<Option<DeadLetter>> {
        let Some((dead_ms, seq)) = parse_dlq_id(ids, id) else {
            return Ok(None);
        };
        let k = key::hex(&dlq_key(project, dead_ms, seq));
        match self.bucket.get(&k).await? {
            Some(e) => Ok(Some(codec::decode(&e.value)?)),
            None => Ok(None),
        }
    }

    pub async fn remove(&self, ids: &IdKey, project: &ProjectId, id: &str) -> Result<bool> {
        let Some((dead_ms, seq)) = parse_dlq_id(ids, id) else {
            return Ok(false);
        };
        let k = key::hex(&dlq_key(project, dead_ms, seq));
        if self.bucket.get(&k).await?.is_none() {
            return Ok(false);
        }
        let revision = self.bucket.delete(&k).await?;
        self.copy.note(&k, None, revision);
        Ok(true)
    }

    /// Forgets (in this node's copy) entries that died before `cutoff_ms`: the bucket
    /// expires them without a marker. Returns how many.
    pub fn forget_older(&self, cutoff_ms: u64) -> usize {
        self.copy.forget(|e| {
            key::parse_hex(&e.key)
                .and_then(|k| Some(u64::from_be_bytes(k.get(16..24)?.try_into().ok()?)))
                .is_some_and(|dead_ms| dead_ms < cutoff_ms)
        })
    }

    pub fn len(&self) -> usize {
        self.copy.len()
    }
}
