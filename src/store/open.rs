//! Opening the sled database, and opening it again after a write error.
//!
//! sled 0.34 keeps the first I/O error it meets while writing its log (`ENOSPC` on a full
//! disk, `EIO`) as a global error and refuses every later write and flush with it: without
//! help, the store would answer 503 until the process restarts, even after space returns.
//! So a thread watches for that error (and for failed commits), marks the store as unable
//! to write (`/healthz` then answers 503), waits until the disk has room to open the store,
//! closes the database (new calls fail fast while the last users of the old one finish),
//! opens the same directory again (sled recovers its log up to the last write that reached
//! the disk, which includes every acknowledged one: an acknowledgement follows a
//! successful flush and fdatasync) and puts the new database behind the same handles.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sled::Tree;

use super::commit::{CommitStats, Committer};
use super::files::{self, Files};
use super::ids::IdKey;
use super::{Result, Shared, SledStore, StoreError, timeline};

/// How often the health thread looks at the store.
const POLL: Duration = Duration::from_millis(200);

/// One opened sled database and its trees.
pub(super) struct Inner {
    pub db: sled::Db,
    /// The configuration the database was opened with; it holds sled's global error.
    pub config: sled::Config,
    pub requests: Tree,
    /// Big request bodies, in chunks (see `body`).
    pub bodies: Tree,
    pub due: Tree,
    pub idempotency: Tree,
    pub timeline: Tree,
    pub dlq: Tree,
    pub catalog: Tree,
    pub meta: Tree,
    pub log_state: Tree,
    pub committer: Committer,
    /// The keyed permutation behind every public id (`meta/id_key`).
    pub ids: IdKey,
}

impl Inner {
    pub fn open(dir: &Path, cache_bytes: u64, stats: Arc<CommitStats>) -> Result<Inner> {
        files::create_dir_durable(dir)?;
        for path in files::clear_incomplete_snapshots(dir)? {
            tracing::warn!(
                file = %path.display(),
                "removed an incomplete snapshot left by an interrupted start (sled issue \
                 #1527); the store recovers from its log"
            );
        }
        files::check_room(dir)?;
        let files = Files::watch(dir)?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput);
        let db = config.open()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))?;
        let committer = Committer::start(db.clone(), file, files, stats)?;
        let meta = db.open_tree("meta")?;
        let key = meta_or_init(&meta, "id_key", || rand::random::<[u8; 32]>().to_vec())?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| StoreError::Io(std::io::Error::other("corrupt meta/id_key")))?;
        Ok(Inner {
            requests: db.open_tree("requests")?,
            bodies: db.open_tree("bodies")?,
            due: db.open_tree("due")?,
            idempotency: db.open_tree("idempotency")?,
            timeline: {
                let tree = db.open_tree("timeline")?;
                tree.set_merge_operator(timeline::append);
                tree
            },
            dlq: db.open_tree("dlq")?,
            catalog: db.open_tree("catalog")?,
            meta,
            log_state: db.open_tree("log_state")?,
            committer,
            ids: IdKey::new(key),
            config,
            db,
        })
    }
}

/// A value of the `meta` tree, created with `init` on first use.
pub(super) fn meta_or_init(
    meta: &Tree,
    name: &str,
    init: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>> {
    let fresh = init();
    match meta.compare_and_swap(name, None as Option<&[u8]>, Some(fresh.as_slice()))? {
        Ok(()) => Ok(fresh),
        Err(conflict) => Ok(conflict.current.map(|v| v.to_vec()).unwrap_or_default()),
    }
}

/// Whether the store can take new work, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub writable: bool,
    /// Why not, for an operator.
    pub reason: Option<String>,
}

impl SledStore {
    /// Whether new work can be stored now: not while a write error waits for a reopen,
    /// nor while the disk is under its reserve.
    pub fn health(&self) -> Health {
        match self.ensure_space() {
            Ok(()) => Health {
                writable: true,
                reason: None,
            },
            Err(e) => Health {
                writable: false,
                reason: Some(e.to_string()),
            },
        }
    }

    /// Resolves each time the database has been reopened after a write error.
    pub fn reopened(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Why the store cannot write, if it cannot: a reported failure, or sled's own
    /// global error.
    pub(super) fn failure(&self) -> Option<String> {
        if let Some(reason) = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(reason);
        }
        let inner = self.inner().ok()?;
        inner.config.global_error().err().map(|e| e.to_string())
    }

    /// Marks the store as unable to write (a commit failed); the health thread reopens it.
    pub(super) fn report_failure(&self, reason: &str) {
        let mut failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            tracing::error!(error = reason, "the store cannot write; it will reopen");
            *failure = Some(reason.to_string());
        }
    }

    /// Closes the database and opens it again; on error the store stays closed (and the
    /// health thread tries again).
    fn reopen(&self) -> Result<()> {
        let old = self
            .shared
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(old) = old {
            wait_until_unused(old);
        }
        let started = Instant::now();
        let inner = loop {
            // sled's background threads release the directory's lock a moment after the
            // last handle is dropped.
            match Inner::open(
                &self.shared.dir,
                self.shared.cache_bytes,
                self.shared.stats.clone(),
            ) {
                Ok(inner) => break inner,
                Err(StoreError::Sled(sled::Error::Io(e)))
                    if e.kind() == std::io::ErrorKind::Other
                        && started.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        self.install(inner)?;
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.generation.send_modify(|g| *g += 1);
        Ok(())
    }
}

/// Waits until nobody but this function holds the old database, then drops it (which
/// stops sled's threads and releases its lock on the directory).
fn wait_until_unused(mut old: Arc<Inner>) {
    let started = Instant::now();
    let mut warned = false;
    loop {
        match Arc::try_unwrap(old) {
            Ok(inner) => {
                drop(inner);
                return;
            }
            Err(still) => old = still,
        }
        if !warned && started.elapsed() > Duration::from_secs(10) {
            tracing::warn!("the old store is still in use; waiting to reopen");
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the thread that notices a store unable to write and reopens it once the disk
/// has room. It ends with the last handle to the store.
pub(super) fn watch_health(shared: &Arc<Shared>) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let _ = std::thread::Builder::new()
        .name("eddy-store-health".into())
        .spawn(move || {
            let mut last_attempt: Option<String> = None;
            loop {
                std::thread::sleep(POLL);
                let Some(shared) = weak.upgrade() else { return };
                let store = SledStore { shared };
                let Some(reason) = store.failure() else {
                    continue;
                };
                store.report_failure(&reason);
                if let Err(e) = files::check_room(&store.shared.dir) {
                    let text = e.to_string();
                    if last_attempt.as_deref() != Some(&text) {
                        tracing::warn!(error = %text, "waiting for room to reopen the store");
                        last_attempt = Some(text);
                    }
                    continue;
                }
                match store.reopen() {
                    Ok(()) => {
                        tracing::info!("the store was reopened and takes new work again");
                        last_attempt = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reopening the store failed; trying again");
                    }
                }
            }
        });
}
