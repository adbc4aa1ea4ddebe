//! The durable store: sled trees, key encoding, record CAS transitions and group commit.
//!
//! | tree | key | value | file |
//! |---|---|---|---|
//! | `requests` | id `u64` BE | `[v][Request]`: the truth | `requests` |
//! | `bodies` | id BE ‖ field ‖ chunk BE | a record's big texts, in 6 KiB chunks | `body` |
//! | `due` | `due_ms u64 BE ‖ id u64 BE` | empty; what is due is in the record | `due` |
//! | `idempotency` | `project ‖ sha256(key)` | id BE ‖ created_ms BE | `idempotency` |
//! | `timeline` | id BE | frames `[len u32 LE][v][at_ms, Step]`, appended by merge | `timeline` |
//! | `dlq` | `project ‖ dead_ms BE ‖ seq BE` | `[v][DeadLetter]` (public id: see `ids`) | `dlq` |
//! | `log_state` | `project ‖ phase ‖ created_ms ‖ id` | workflow hash ‖ `[v][Summary]` | `log` |
//! | `catalog` | kind byte ‖ … | `[v][Project/ApiKey/Workflow/…]` | [`catalog`] |
//! | `meta` | name | value (`ws_token_key`, `id_key`, …) | `open` |
//!
//! Each tree's keys and methods live in the file named in the table. [`Store`], the handle
//! every other module uses, is the seam over a backend (`seam`): this sled store, or (issue
//! 15, being built) JetStream. This file holds the sled store's handle, its opening, and
//! what the trees share: the error type, the striped locks, the counters, the group commit
//! and the free-space check. The other files:
//! `codec` (the value format), `commit` and `files` (the group commit and what it syncs),
//! `ids` (public ids), `open` (opening, health, reopening), `space` (free disk space).
//!
//! Invariants:
//! - Only this module touches sled; every state change of a request goes through
//!   [`Store::update`].
//! - `requests` is the truth; `due` and the request log are derived and [`Store::rebuild_indexes`]
//!   recomputes them. The due key of a record is inserted *before* the record is swapped
//!   in, so a durable record always has its due key; an old key is removed after. Work
//!   due when it is written has no key (the scheduler gets it in memory): an active
//!   request's, recovered at open from the request log's active phase (see `due`).
//! - No multi-tree transaction: each record moves by `compare_and_swap`, and writers of the
//!   same record in this process are serialized by a striped lock so that index
//!   maintenance cannot interleave.
//! - Nothing is acknowledged before [`Store::commit`] returns, and a commit covers every
//!   file and directory entry the acknowledged data depends on (see `files`).
//! - The sled database behind a `Store` may be replaced (see `open`): after a write error
//!   sled refuses every later write, so the store closes it and opens the same directory
//!   again once there is room. Every method reaches sled through [`Store::inner`] and
//!   holds that one database for its whole run.

pub(crate) mod body;
pub mod catalog;
mod codec;
mod commit;
mod dlq;
mod due;
mod files;
mod idempotency;
mod ids;
mod jet;
mod log;
mod open;
mod requests;
mod seam;
mod space;
mod timeline;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use codec::{CodecError, FORMAT_V1};
pub use commit::{CommitResult, CommitStats, Committer};
pub use idempotency::Claim;
pub use jet::JetStore;
pub use log::{Cursor, LogQuery, Summary, status_code};
pub use open::Health;
pub use requests::{Update, decode_request, encode_request};
pub use seam::Store;

use crate::job::Status;
use due::due_key;
use open::Inner;
use requests::{request_key, stored_record};

/// Store failures. Expected outcomes (a refused update, a missing record) are values of
/// [`Update`] instead.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored value: {0}")]
    Codec(#[from] CodecError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("durable commit failed: {0}")]
    Commit(Arc<std::io::Error>),
    #[error("the disk is almost full: {free_mib} MiB free, {reserve_mib} MiB kept in reserve")]
    LowSpace { free_mib: u64, reserve_mib: u64 },
    #[error(
        "no room on the disk to open the store: {free_mib} MiB free, {need_mib} MiB needed \
         (nothing was written; free some space and start again)"
    )]
    NoRoomToOpen { free_mib: u64, need_mib: u64 },
    #[error("the store cannot write ({0}); it reopens by itself once the disk has room")]
    Failed(String),
    /// What a cluster node cannot answer yet (issue 15 is being built).
    #[error("{0} is not available in cluster mode yet")]
    NotInCluster(&'static str),
    /// A cluster node's store (NATS JetStream) failed or did not answer in time.
    #[error("cluster store: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

const LOCK_STRIPES: usize = 256;

/// Longest wait for a group commit before the caller gives up (and answers 503).
pub const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The sled store (the single node's, the default); cheap to clone. Reached through
/// [`Store`] (see `seam`).
#[derive(Clone)]
pub(crate) struct SledStore {
    shared: Arc<Shared>,
}

/// What outlives a reopen of the sled database.
struct Shared {
    dir: std::path::PathBuf,
    cache_bytes: u64,
    /// The open database; `None` only while it is being reopened.
    current: RwLock<Option<Arc<Inner>>>,
    /// Why the store cannot write, until it has been reopened.
    failure: Mutex<Option<String>>,
    /// Bumped by every reopen (the catalog reloads then).
    generation: tokio::sync::watch::Sender<u64>,
    stats: Arc<CommitStats>,
    /// Requests per state code (1–6), kept with every insert, transition and sweep.
    state_counts: [AtomicI64; 7],
    /// Entries in the dead-letter queue.
    dlq_count: AtomicI64,
    /// Work due without a due key, found at open (see `due`), until the scheduler takes it.
    recovered: Mutex<Vec<(u64, u64)>>,
    space: Arc<space::Space>,
    /// Serializes writers of one record (by id) so that "insert new due key → CAS →
    /// remove old due key" never interleaves with another writer of the same record.
    stripes: Vec<Mutex<()>>,
    /// Serializes "check idempotency claim → insert request" per key (by key hash).
    claim_stripes: Vec<Mutex<()>>,
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

impl SledStore {
    /// Opens (or creates) the store under `dir` with a page cache of `cache_bytes`; new
    /// work is refused while the filesystem has less than `reserve` bytes free. A snapshot
    /// left incomplete by an interrupted start is removed first, and a disk without room
    /// for sled's own writes is refused before sled writes anything.
    pub fn open(dir: &Path, cache_bytes: u64, reserve: u64) -> Result<SledStore> {
        let stats = Arc::new(CommitStats::default());
        let inner = Inner::open(dir, cache_bytes, stats.clone())?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            cache_bytes,
            current: RwLock::new(None),
            failure: Mutex::new(None),
            generation: tokio::sync::watch::Sender::new(0),
            stats,
            state_counts: Default::default(),
            dlq_count: AtomicI64::new(0),
            recovered: Mutex::new(Vec::new()),
            space: space::Space::watch(dir.to_path_buf(), reserve),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            claim_stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        });
        let store = SledStore { shared };
        store.install(inner)?;
        open::watch_health(&store.shared);
        Ok(store)
    }

    /// Makes `inner` the open database, with the counters recounted from it.
    fn install(&self, inner: Inner) -> Result<()> {
        self.recount_and_recover(&inner)?;
        self.shared
            .dlq_count
            .store(inner.dlq.len() as i64, Ordering::Relaxed);
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(inner));
        Ok(())
    }

    /// Counts requests by state from the log and recovers the work due without a due key
    /// (see `due`), dropping active log entries whose record never made it to disk.
    fn recount_and_recover(&self, inner: &Inner) -> Result<()> {
        let (mut counts, active) = log::count_states(inner)?;
        let (due, dropped) = due::recover(inner, &active)?;
        if dropped > 0 {
            counts = log::count_states(inner)?.0;
        }
        *self
            .shared
            .recovered
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = due;
        for (slot, n) in self.shared.state_counts.iter().zip(counts) {
            slot.store(n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The open database, or an error while it is being reopened.
    fn inner(&self) -> Result<Arc<Inner>> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Failed("reopening".into()))
    }

    fn count_state(&self, state: crate::job::State, delta: i64) {
        let slot = status_code(state.status()) as usize;
        self.shared.state_counts[slot].fetch_add(delta, Ordering::Relaxed);
    }

    /// Requests per status.
    pub fn state_counts(&self) -> Vec<(Status, i64)> {
        Status::ALL
            .into_iter()
            .map(|status| {
                let slot = status_code(status) as usize;
                (
                    status,
                    self.shared.state_counts[slot].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Entries in the dead-letter queue (all projects).
    pub fn dlq_len(&self) -> i64 {
        self.shared.dlq_count.load(Ordering::Relaxed)
    }

    /// Resolves once every write made before the call is on disk (flush, the files and
    /// directory entries it depends on, fdatasync). A commit that takes longer than
    /// [`COMMIT_TIMEOUT`] is an error (the write may still land; the caller must not
    /// acknowledge it). A commit that fails marks the store as unable to write until it
    /// has been reopened.
    pub async fn commit(&self) -> Result<()> {
        let inner = self.inner()?;
        match tokio::time::timeout(COMMIT_TIMEOUT, inner.committer.wait()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.report_failure(&e.to_string());
                Err(StoreError::Commit(e))
            }
            Err(_) => Err(StoreError::Commit(Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the disk did not confirm the write in time",
            )))),
        }
    }

    /// Refuses new work while the store cannot write: the disk is almost full (see
    /// `space`), or a write failed and the store has not been reopened yet.
    pub fn ensure_space(&self) -> Result<()> {
        if let Some(reason) = self.failure() {
            return Err(StoreError::Failed(reason));
        }
        self.shared
            .space
            .check()
            .map_err(|(free, reserve)| StoreError::LowSpace {
                free_mib: free >> 20,
                reserve_mib: reserve >> 20,
            })
    }

    pub fn commit_stats(&self) -> &CommitStats {
        &self.shared.stats
    }

    /// A new unique id (for requests and dead letters).
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.inner()?.db.generate_id()?)
    }

    fn stripe(&self, id: u64) -> std::sync::MutexGuard<'_, ()> {
        let lock = &self.shared.stripes[(id as usize) % LOCK_STRIPES];
        lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A value of the `meta` tree, created with `init` on first use.
    pub fn meta_or_init(&self, name: &str, init: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        open::meta_or_init(&self.inner()?.meta, name, init)
    }
}
