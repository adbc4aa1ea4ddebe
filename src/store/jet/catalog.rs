//! The catalog of a cluster node: the `catalog` bucket, and the node's copy of it (a
//! [`Mirror`] kept current by a watch) that [`crate::catalog::Catalog`] loads its cache
//! from, on start and after every change any node made.
//!
//! Writes are batched: a catalog change queues its puts and deletes (the sync
//! `catalog_put`/`catalog_delete` of the seam) and [`CatalogBatch::flush`] sends them, each
//! key by `create` if this node's copy has none, else by CAS on the revision the copy has.
//! A key another node wrote meanwhile is a [`Flush::Conflict`]: nothing more is sent, the
//! copy learns the other write, and the catalog decides the change again on it. So names
//! are unique by `create` across nodes, and no change overwrites one it did not see.
//! Deletes are plain delete markers (a delete racing an update of the same resource is
//! last-writer-wins).
//!
//! Key: `<kind byte>.<project hex>.<name hex>` (`-` for an empty name), so every key is a
//! valid subject and one kind of one project is one prefix.

use std::sync::{Arc, Mutex};

use bincode::{Decode, Encode};
use bytes::Bytes;

use super::super::catalog::Kind;
use super::super::{Result, codec};
use crate::cluster::{Bucket, Cas, Create, Entry, Mirror, key};
use crate::job::ProjectId;

/// One queued write: a value, or `None` for a delete.
type Write = (String, Option<Bytes>);

/// What [`CatalogBatch::flush`] did.
pub enum Flush {
    Done,
    /// Another node changed a key of the batch first; the copy now has its write.
    Conflict,
}

/// The node's catalog bucket, its copy, and writes queued but not sent.
#[derive(Clone)]
pub struct CatalogBatch {
    bucket: Bucket,
    copy: Mirror,
    queued: Arc<Mutex<Vec<Write>>>,
}

fn catalog_key(kind: Kind, project: &ProjectId, name: &[u8]) -> String {
    let name = if name.is_empty() {
        "-".to_string()
    } else {
        key::hex(name)
    };
    format!(
        "{}.{}.{name}",
        key::hex(&[kind as u8]),
        key::hex(project.as_bytes())
    )
}

impl CatalogBatch {
    pub async fn open(bucket: Bucket) -> Result<CatalogBatch> {
        let copy = Mirror::start(&bucket, None).await?;
        Ok(CatalogBatch {
            bucket,
            copy,
            queued: Arc::default(),
        })
    }

    /// Reads one key from the bucket's leader into the copy, for a resource another node
    /// wrote a moment ago that this node's watch has not brought yet. True when the copy
    /// learned something.
    pub async fn catch_up(&self, kind: Kind, project: &ProjectId, name: &[u8]) -> Result<bool> {
        let key = catalog_key(kind, project, name);
        let Some(entry) = self.bucket.get_leader(&key).await? else {
            return Ok(false);
        };
        if self
            .copy
            .get(&key)
            .is_some_and(|have| have.revision >= entry.revision)
        {
            return Ok(false);
        }
        self.copy.note(&key, Some(entry.value), entry.revision);
        Ok(true)
    }

    /// The same bucket and copy with an empty queue of its own: one catalog change's.
    pub fn fresh(&self) -> CatalogBatch {
        CatalogBatch {
            queued: Arc::default(),
            ..self.clone()
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Write>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn put<T: Encode>(
        &self,
        kind: Kind,
        project: &ProjectId,
        name: &[u8],
        value: &T,
    ) -> Result<()> {
        let value = Bytes::from(codec::encode(value)?);
        self.queue()
            .push((catalog_key(kind, project, name), Some(value)));
        Ok(())
    }

    /// Queues a delete; true if the copy has the entry.
    pub fn delete(&self, kind: Kind, project: &ProjectId, name: &[u8]) -> bool {
        let key = catalog_key(kind, project, name);
        let had = self.copy.get(&key).is_some();
        self.queue().push((key, None));
        had
    }

    /// Every entry of one kind, as this node's copy has them.
    pub fn load<T: Decode<()>>(&self, kind: Kind) -> Result<Vec<T>> {
        self.copy
            .range(&key::hex(&[kind as u8]))
            .iter()
            .map(|e| Ok(codec::decode(&e.value)?))
            .collect()
    }

    /// Bumped after every change of the copy, by this node or another.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.copy.changed()
    }

    /// Sends the queued writes in order, each acknowledged by a quorum before the next,
    /// and records each in the copy (so this node reads its own writes at once).
    pub async fn flush(&self) -> Result<Flush> {
        let writes = std::mem::take(&mut *self.queue());
        for (key, value) in writes {
            let Some(value) = value else {
                let revision = self.bucket.delete(&key).await?;
                self.copy.note(&key, None, revision);
                continue;
            };
            let written = match self.copy.get(&key) {
                Some(Entry { revision, .. }) => {
                    match self.bucket.cas(&key, revision, value.clone()).await? {
                        Cas::Written(revision) => Some(revision),
                        Cas::Conflict => {
                            if let Some(theirs) = self.bucket.get_leader(&key).await? {
                                self.copy.note(&key, Some(theirs.value), theirs.revision);
                            }
                            None
                        }
                    }
                }
                None => match self.bucket.create(&key, value.clone()).await? {
                    Create::Created(revision) => Some(revision),
                    Create::Exists(theirs) => {
                        self.copy.note(&key, Some(theirs.value), theirs.revision);
                        None
                    }
                },
            };
            match written {
                Some(revision) => self.copy.note(&key, Some(value), revision),
                None => return Ok(Flush::Conflict),
            }
        }
        Ok(Flush::Done)
    }

    /// Drops what is queued (a change that was refused after queueing writes).
    pub fn discard(&self) {
        self.queue().clear();
    }
}
