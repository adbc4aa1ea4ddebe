//! The durable store: sled trees, key encoding, record CAS transitions and group commit.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `requests` | id `u64` BE | `[v][Request]`: the truth |
//! | `bodies` | id BE ‖ field ‖ chunk BE | a record's big texts, in 6 KiB chunks (see `body`) |
//! | `due` | `due_ms u64 BE ‖ id u64 BE` | empty; what is due is in the record |
//! | `idempotency` | `project ‖ sha256(key)` | id BE ‖ created_ms BE |
//! | `timeline` | id BE | frames `[len u32 LE][v][at_ms, Step]`, appended by merge |
//! | `dlq` | `project ‖ dead_ms BE ‖ seq BE` | `[v][DeadLetter]` (public id: see `ids`) |
//! | `log_state` | `project ‖ phase ‖ created_ms ‖ id` | workflow hash ‖ `[v][Summary]` (see `log`) |
//! | `catalog` | kind byte ‖ … (see [`catalog`]) | `[v][Project/ApiKey/Workflow/…]` |
//! | `meta` | name | value (`ws_token_key`, `id_key`, …) |
//!
//! Invariants:
//! - Only this module touches sled; every state change of a request goes through
//!   [`Store::update`].
//! - `requests` is the truth; `due` and the request log are derived and [`Store::rebuild_indexes`]
//!   recomputes them. The due key of a record is inserted *before* the record is swapped
//!   in, so a durable record always has its due key; an old key is removed after.
//! - No multi-tree transaction: each record moves by `compare_and_swap`, and writers of the
//!   same record in this process are serialized by a striped lock so that index
//!   maintenance cannot interleave.
//! - Nothing is acknowledged before [`Store::commit`] returns, and a commit covers every
//!   file and directory entry the acknowledged data depends on (see `files`).
//! - The sled database behind a `Store` may be replaced (see `open`): after a write error
//!   sled refuses every later write, so the store closes it and opens the same directory
//!   again once there is room. Every method reaches sled through [`Store::inner`] and
//!   holds that one database for its whole run.

mod body;
pub mod catalog;
mod codec;
mod commit;
mod dlq;
mod files;
mod idempotency;
mod ids;
mod log;
mod open;
mod space;
mod timeline;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use codec::{CodecError, FORMAT_V1};
pub use commit::{CommitResult, CommitStats, Committer};
pub use log::{Cursor, LogQuery, Summary, state_code, state_code_of};
pub use open::Health;

use crate::job::{ChannelId, Request};
use open::Inner;

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
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What [`Store::update`] did.
#[derive(Debug)]
pub enum Update<T, R> {
    /// The closure accepted the change; the record as stored now and the closure's value.
    Done(Box<Request>, T),
    /// The closure refused; nothing was written.
    Refused(R),
    /// No record has this id.
    Missing,
}

/// What [`Store::insert_request_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The request was stored under the key.
    New,
    /// A request was already created with this key.
    Existing(u64),
}

const LOCK_STRIPES: usize = 256;

/// Longest wait for a group commit before the caller gives up (and answers 503).
pub const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
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
    space: Arc<space::Space>,
    /// Serializes writers of one record (by id) so that "insert new due key → CAS →
    /// remove old due key" never interleaves with another writer of the same record.
    stripes: Vec<Mutex<()>>,
    /// Serializes "check idempotency claim → insert request" per key (by key hash).
    claim_stripes: Vec<Mutex<()>>,
}

/// Decodes a stored request record (`[version][bincode]`). Public for the fuzz target;
/// corrupt bytes are an error, never a panic or a huge allocation.
pub fn decode_request(bytes: &[u8]) -> std::result::Result<Request, CodecError> {
    codec::decode(bytes)
}

/// Encodes a request record as stored.
pub fn encode_request(record: &Request) -> std::result::Result<Vec<u8>, CodecError> {
    codec::encode(record)
}

pub fn request_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
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

/// Record `id` as stored: big texts kept in `bodies` are empty (see `body`).
fn stored_record(inner: &Inner, id: u64) -> Result<Option<Request>> {
    match inner.requests.get(request_key(id))? {
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        None => Ok(None),
    }
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

impl Store {
    /// Opens (or creates) the store under `dir` with a page cache of `cache_bytes`; new
    /// work is refused while the filesystem has less than `reserve` bytes free. A snapshot
    /// left incomplete by an interrupted start is removed first, and a disk without room
    /// for sled's own writes is refused before sled writes anything.
    pub fn open(dir: &Path, cache_bytes: u64, reserve: u64) -> Result<Store> {
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
            space: space::Space::watch(dir.to_path_buf(), reserve),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            claim_stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        });
        let store = Store { shared };
        store.install(inner)?;
        open::watch_health(&store.shared);
        Ok(store)
    }

    /// Makes `inner` the open database, with the counters recounted from it.
    fn install(&self, inner: Inner) -> Result<()> {
        let counts = log::count_states(&inner)?;
        for (slot, n) in self.shared.state_counts.iter().zip(counts) {
            slot.store(n, Ordering::Relaxed);
        }
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
        self.shared.state_counts[state_code(state) as usize].fetch_add(delta, Ordering::Relaxed);
    }

    /// Requests per state: `(state name, count)`.
    pub fn state_counts(&self) -> Vec<(&'static str, i64)> {
        [
            "pending",
            "generated",
            "delivered",
            "callback",
            "completed",
            "failed",
        ]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                *name,
                self.shared.state_counts[i + 1].load(Ordering::Relaxed),
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

    /// Stores a new request with its indexes. Not durable until [`Store::commit`].
    pub fn insert_request(&self, record: &mut Request) -> Result<()> {
        let inner = self.inner()?;
        let _guard = self.stripe(record.id);
        record.due_ms = record.next_due();
        if let Some(due) = record.due_ms {
            inner.due.insert(due_key(due, record.id), &[])?;
        }
        let stored = body::encode(&inner.bodies, record, &Default::default())?;
        inner.requests.insert(request_key(record.id), stored)?;
        log::put(&inner, record, None)?;
        self.count_state(record.state, 1);
        Ok(())
    }

    pub fn request(&self, id: u64) -> Result<Option<Request>> {
        let inner = self.inner()?;
        let Some(mut record) = stored_record(&inner, id)? else {
            return Ok(None);
        };
        body::fill(&inner.bodies, &mut record)?;
        Ok(Some(record))
    }

    /// What a list shows of request `id` (its big texts are not read).
    pub fn summary(&self, id: u64) -> Result<Option<Summary>> {
        Ok(stored_record(&*self.inner()?, id)?.map(|r| Summary::of(&r)))
    }

    /// A new request id and its public channel id: a UUID v4 whose 122 free bits are a
    /// keyed permutation of the id and 58 random bits (see `ids`), so a channel id leads
    /// to its record without an index and says nothing about any other.
    pub fn new_request_id(&self) -> Result<(u64, ChannelId)> {
        let inner = self.inner()?;
        let id = inner.db.generate_id()?;
        Ok((id, inner.ids.channel_id(id, rand::random())))
    }

    /// The request whose channel id is `channel`, if any.
    pub fn request_by_channel(&self, channel: &ChannelId) -> Result<Option<Request>> {
        let id = self.inner()?.ids.request_of_channel(channel);
        Ok(self.request(id)?.filter(|r| &r.channel_id == channel))
    }

    /// Applies `change` to the record and swaps it in: read → change → CAS → move the due
    /// key and the log entry. `change` may refuse (nothing is written). `updated_ms` and
    /// `due_ms` are set here, so the due index always follows [`Request::next_due`].
    pub fn update<T, R>(
        &self,
        id: u64,
        now_ms: u64,
        mut change: impl FnMut(&mut Request) -> std::result::Result<T, R>,
    ) -> Result<Update<T, R>> {
        let inner = self.inner()?;
        let _guard = self.stripe(id);
        let key = request_key(id);
        loop {
            let Some(old) = inner.requests.get(key)? else {
                return Ok(Update::Missing);
            };
            let mut record: Request = codec::decode(&old)?;
            let stored = body::fill(&inner.bodies, &mut record)?;
            let old_due = record.due_ms;
            let before = Summary::of(&record);
            let value = match change(&mut record) {
                Ok(v) => v,
                Err(refusal) => return Ok(Update::Refused(refusal)),
            };
            record.updated_ms = now_ms.max(record.updated_ms);
            record.due_ms = record.next_due();
            if record.due_ms != old_due
                && let Some(due) = record.due_ms
            {
                inner.due.insert(due_key(due, id), &[])?;
            }
            let new = body::encode(&inner.bodies, &mut record, &stored)?;
            // Another process cannot write this store (sled locks it), and this process
            // holds the stripe, so a conflict means a bug elsewhere; re-reading is still
            // the correct answer to it.
            if inner
                .requests
                .compare_and_swap(key, Some(old), Some(new))?
                .is_err()
            {
                continue;
            }
            if record.due_ms != old_due
                && let Some(due) = old_due
            {
                inner.due.remove(due_key(due, id))?;
            }
            if Summary::of(&record) != before {
                log::put(&inner, &record, Some(before.state))?;
            }
            if record.state != before.state {
                self.count_state(before.state, -1);
                self.count_state(record.state, 1);
            }
            return Ok(Update::Done(Box::new(record), value));
        }
    }

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

    /// A value of the `meta` tree, created with `init` on first use.
    pub fn meta_or_init(&self, name: &str, init: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        open::meta_or_init(&self.inner()?.meta, name, init)
    }
}
