//! A node's own copy of a bucket (or of one prefix of it), kept current by a watch: the
//! read models a cluster node lists from (the catalog, the DLQ, the request log), so a
//! listing stays a local range scan in key order, as it is on a sled node. JetStream has
//! no range scan, and listing a bucket costs a consumer per call.
//!
//! Start-up without a gap: the watch of changes from now on starts first, then the
//! bucket is listed, then the changes are applied. A change is applied only if it is
//! newer (a higher revision) than what the copy holds for its key, so a change that the
//! listing already showed is not applied twice, and one that came before the listing's
//! state of its key is ignored.
//!
//! What a watch cannot show: keys that expire by the bucket's `max_age` leave no delete
//! marker, so a copy of a bucket with a `max_age` keeps them until its owner drops them
//! by age itself (the DLQ and log read models know each entry's time).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::{Bucket, Change, Entry, Result};

/// A bucket's keys under a prefix, as this node last heard of them; cheap to clone. The
/// watch task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Mirror {
    keys: Arc<RwLock<BTreeMap<String, Entry>>>,
    /// Bumped after every change applied, so a cache built on the copy can refresh.
    changed: watch::Receiver<u64>,
    tell: Arc<watch::Sender<u64>>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies `change` unless the copy holds a newer state of its key.
fn apply(keys: &mut BTreeMap<String, Entry>, change: Change) {
    let key = &change.entry.key;
    if keys
        .get(key)
        .is_some_and(|e| e.revision >= change.entry.revision)
    {
        return;
    }
    if change.deleted {
        keys.remove(key);
    } else {
        keys.insert(key.clone(), change.entry);
    }
}

impl Mirror {
    /// Copies the keys under `prefix` (all keys for `None`) and keeps the copy current.
    /// Returns once the copy holds the bucket as it was when this was called.
    pub async fn start(bucket: &Bucket, prefix: Option<&str>) -> Result<Mirror> {
        let filter = prefix.map_or(">".to_string(), |p| format!("{p}.>"));
        let mut changes = bucket.watch_from_now(&filter).await?;
        let mut now = BTreeMap::new();
        for entry in bucket.list(prefix, true).await? {
            now.insert(entry.key.clone(), entry);
        }
        let keys = Arc::new(RwLock::new(now));
        let (tell, changed) = watch::channel(0u64);
        let tell = Arc::new(tell);
        let (copy, told) = (keys.clone(), tell.clone());
        let task = tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                match change {
                    Ok(change) => {
                        apply(&mut copy.write().unwrap_or_else(|p| p.into_inner()), change);
                        told.send_modify(|n| *n += 1);
                    }
                    // A missed heartbeat while a server is down: the watch goes on.
                    Err(e) => tracing::debug!("cluster: mirroring a bucket: {e}"),
                }
            }
        });
        Ok(Mirror {
            keys,
            changed,
            tell,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.read().get(key).cloned()
    }

    /// The entries whose key starts with `prefix` (a whole token, or `""` for all), in
    /// key order.
    pub fn range(&self, prefix: &str) -> Vec<Entry> {
        let start = match prefix {
            "" => String::new(),
            p => format!("{p}."),
        };
        self.read()
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The entries with `lower <= key < upper`, in key order.
    pub fn between(&self, lower: &str, upper: &str) -> Vec<Entry> {
        if lower >= upper {
            return Vec::new();
        }
        self.read()
            .range(lower.to_string()..upper.to_string())
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Calls `f` with every entry, in key order, under the copy's read lock.
    pub fn each(&self, mut f: impl FnMut(&Entry)) {
        for entry in self.read().values() {
            f(entry);
        }
    }

    /// Drops from this copy (not from the bucket) the entries `drop` picks: keys the
    /// bucket expired by its `max_age`, which leaves no marker for the watch. Returns how
    /// many were dropped.
    pub fn forget(&self, mut drop: impl FnMut(&Entry) -> bool) -> usize {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let before = keys.len();
        keys.retain(|_, e| !drop(e));
        before - keys.len()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Records a write this node made (`None`: a delete) at `revision`, so that the copy
    /// shows it before the watch brings it back; the same rule applies (the newer wins).
    pub fn note(&self, key: &str, value: Option<bytes::Bytes>, revision: u64) {
        let change = Change {
            entry: Entry {
                key: key.to_string(),
                value: value.clone().unwrap_or_default(),
                revision,
            },
            deleted: value.is_none(),
            current: true,
        };
        apply(
            &mut self.keys.write().unwrap_or_else(|p| p.into_inner()),
            change,
        );
        self.tell.send_modify(|n| *n += 1);
    }

    /// Changes after every change applied to the copy.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }
}
