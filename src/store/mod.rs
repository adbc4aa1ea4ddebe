//! The durable store: sled trees, key encoding, record CAS transitions and group commit.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `requests` | id `u64` BE | `[v][Request]`: the truth |
//! | `due` | `due_ms u64 BE ‖ id u64 BE` | empty; what is due is in the record |
//! | `idempotency` | `project ‖ sha256(key)` | id BE ‖ created_ms BE |
//! | `timeline` | id BE | frames `[len u32 LE][v][at_ms, Step]`, appended by merge |
//! | `dlq` | `project ‖ dead_ms BE ‖ seq BE` | `[v][DeadLetter]` (id `dlq_<hex dead_ms ‖ seq>`) |
//! | `log_state` | `project ‖ phase ‖ created_ms ‖ id` | workflow hash (see `log`) |
//! | `catalog` | kind byte ‖ … (see [`catalog`]) | `[v][Project/ApiKey/Workflow/…]` |
//! | `meta` | name | value (`ws_token_key`, `channel_mask`, …) |
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
//! - Nothing is acknowledged before [`Store::commit`] returns.

pub mod catalog;
mod codec;
mod commit;
mod dlq;
mod log;
mod space;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use sled::Tree;

pub use codec::{CodecError, FORMAT_V1};
pub use commit::{CommitResult, CommitStats, Committer};
pub use log::{Cursor, LogQuery, state_code, state_code_of};

use crate::job::{Request, Step};

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
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    requests: Tree,
    due: Tree,
    /// XORed into the request id hidden in each channel id (see [`Store::new_request_id`]).
    channel_mask: u64,
    idempotency: Tree,
    timeline: Tree,
    dlq: Tree,
    catalog: Tree,
    meta: Tree,
    log_state: Tree,
    committer: Committer,
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

/// The timeline's merge operator: appends the new frames to the old value.
fn append(_key: &[u8], old: Option<&[u8]>, new: &[u8]) -> Option<Vec<u8>> {
    let mut value = old.map(<[u8]>::to_vec).unwrap_or_default();
    value.extend_from_slice(new);
    Some(value)
}

fn split_due_key(k: &[u8]) -> Option<(u64, u64)> {
    let due = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
    Some((due, id))
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

impl Store {
    /// Opens (or creates) the store under `dir` with a page cache of `cache_bytes`; new
    /// work is refused while the filesystem has less than `reserve` bytes free.
    pub fn open(dir: &Path, cache_bytes: u64, reserve: u64) -> Result<Store> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))?;
        let committer = Committer::start(db.clone(), file)?;
        let meta = db.open_tree("meta")?;
        let fresh: [u8; 8] = rand::random();
        let mask =
            match meta.compare_and_swap("channel_mask", None as Option<&[u8]>, Some(&fresh[..]))? {
                Ok(()) => fresh.to_vec(),
                Err(current) => current
                    .current
                    .map(|v| v.to_vec())
                    .unwrap_or(fresh.to_vec()),
            };
        let inner = Inner {
            requests: db.open_tree("requests")?,
            due: db.open_tree("due")?,
            channel_mask: be_u64(&mask).unwrap_or(0),
            idempotency: db.open_tree("idempotency")?,
            timeline: {
                let tree = db.open_tree("timeline")?;
                tree.set_merge_operator(append);
                tree
            },
            dlq: db.open_tree("dlq")?,
            catalog: db.open_tree("catalog")?,
            meta,
            log_state: db.open_tree("log_state")?,
            committer,
            state_counts: Default::default(),
            dlq_count: AtomicI64::new(0),
            space: space::Space::watch(dir.to_path_buf(), reserve),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            claim_stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            db,
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        for (slot, n) in store.inner.state_counts.iter().zip(store.count_states()?) {
            slot.store(n, Ordering::Relaxed);
        }
        store
            .inner
            .dlq_count
            .store(store.inner.dlq.len() as i64, Ordering::Relaxed);
        Ok(store)
    }

    fn count_state(&self, state: crate::job::State, delta: i64) {
        self.inner.state_counts[state_code(state) as usize].fetch_add(delta, Ordering::Relaxed);
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
                self.inner.state_counts[i + 1].load(Ordering::Relaxed),
            )
        })
        .collect()
    }

    /// Entries in the dead-letter queue (all projects).
    pub fn dlq_len(&self) -> i64 {
        self.inner.dlq_count.load(Ordering::Relaxed)
    }

    /// Resolves once every write made before the call is on disk (flush + fdatasync).
    /// A commit that takes longer than [`COMMIT_TIMEOUT`] is an error (the write may still
    /// land; the caller must not acknowledge it).
    pub async fn commit(&self) -> Result<()> {
        match tokio::time::timeout(COMMIT_TIMEOUT, self.inner.committer.wait()).await {
            Ok(done) => done.map_err(StoreError::Commit),
            Err(_) => Err(StoreError::Commit(Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the disk did not confirm the write in time",
            )))),
        }
    }

    /// Refuses new work while the disk is almost full (see `space`).
    pub fn ensure_space(&self) -> Result<()> {
        self.inner
            .space
            .check()
            .map_err(|(free, reserve)| StoreError::LowSpace {
                free_mib: free >> 20,
                reserve_mib: reserve >> 20,
            })
    }

    pub fn commit_stats(&self) -> &CommitStats {
        self.inner.committer.stats()
    }

    /// A new unique, increasing id (for requests and timeline entries).
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.inner.db.generate_id()?)
    }

    fn stripe(&self, id: u64) -> std::sync::MutexGuard<'_, ()> {
        let lock = &self.inner.stripes[(id as usize) % LOCK_STRIPES];
        lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new request with its indexes. Not durable until [`Store::commit`].
    pub fn insert_request(&self, record: &mut Request) -> Result<()> {
        let _guard = self.stripe(record.id);
        record.due_ms = record.next_due();
        if let Some(due) = record.due_ms {
            self.inner.due.insert(due_key(due, record.id), &[])?;
        }
        self.inner
            .requests
            .insert(request_key(record.id), codec::encode(record)?)?;
        self.log_insert(record)?;
        self.count_state(record.state, 1);
        Ok(())
    }

    pub fn request(&self, id: u64) -> Result<Option<Request>> {
        match self.inner.requests.get(request_key(id))? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// A new request id and its public channel id: a UUID v4 that carries the id (XORed
    /// with a per-store mask) in 64 of its bits and 58 random bits in the rest, so a channel
    /// id leads to its record without an index, and cannot be guessed from another.
    pub fn new_request_id(&self) -> Result<(u64, [u8; 16])> {
        let id = self.next_id()?;
        let mut channel = *uuid::Uuid::new_v4().as_bytes();
        let hidden = (id ^ self.inner.channel_mask).to_be_bytes();
        channel[..6].copy_from_slice(&hidden[..6]);
        channel[7] = hidden[6];
        channel[9] = hidden[7];
        Ok((id, channel))
    }

    /// The request whose channel id is `channel`, if any.
    pub fn request_by_channel(&self, channel: &[u8; 16]) -> Result<Option<Request>> {
        let mut hidden = [0u8; 8];
        hidden[..6].copy_from_slice(&channel[..6]);
        hidden[6] = channel[7];
        hidden[7] = channel[9];
        let id = u64::from_be_bytes(hidden) ^ self.inner.channel_mask;
        Ok(self.request(id)?.filter(|r| &r.channel_id == channel))
    }

    /// Applies `change` to the record and swaps it in: read → change → CAS → move the due
    /// key. `change` may refuse (nothing is written). `updated_ms` and `due_ms` are set
    /// here, so the due index always follows [`Request::next_due`].
    pub fn update<T, R>(
        &self,
        id: u64,
        now_ms: u64,
        mut change: impl FnMut(&mut Request) -> std::result::Result<T, R>,
    ) -> Result<Update<T, R>> {
        let _guard = self.stripe(id);
        let key = request_key(id);
        loop {
            let Some(old) = self.inner.requests.get(key)? else {
                return Ok(Update::Missing);
            };
            let mut record: Request = codec::decode(&old)?;
            let old_due = record.due_ms;
            let old_state = record.state;
            let value = match change(&mut record) {
                Ok(v) => v,
                Err(refusal) => return Ok(Update::Refused(refusal)),
            };
            record.updated_ms = now_ms.max(record.updated_ms);
            record.due_ms = record.next_due();
            if record.due_ms != old_due
                && let Some(due) = record.due_ms
            {
                self.inner.due.insert(due_key(due, id), &[])?;
            }
            let new = codec::encode(&record)?;
            // Another process cannot write this store (sled locks it), and this process
            // holds the stripe, so a conflict means a bug elsewhere; re-reading is still
            // the correct answer to it.
            if self
                .inner
                .requests
                .compare_and_swap(key, Some(old), Some(new))?
                .is_err()
            {
                continue;
            }
            if record.due_ms != old_due
                && let Some(due) = old_due
            {
                self.inner.due.remove(due_key(due, id))?;
            }
            if record.state != old_state {
                self.log_move(&record, old_state)?;
                self.count_state(old_state, -1);
                self.count_state(record.state, 1);
            }
            return Ok(Update::Done(Box::new(record), value));
        }
    }

    /// Due-index entries with `due_ms < until_ms`, oldest first, at most `limit`.
    pub fn due_before(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for kv in self.inner.due.range(..due_key(until_ms, 0)).take(limit) {
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
        let owned = self.request(id)?.and_then(|r| r.due_ms) == Some(due_ms);
        if !owned {
            self.inner.due.remove(due_key(due_ms, id))?;
        }
        Ok(!owned)
    }

    pub fn due_len(&self) -> usize {
        self.inner.due.len()
    }

    /// Stores a new request unless `project ‖ key_hash` already names one that exists and
    /// is younger than `ttl_ms`; then returns that request's id and stores nothing. The
    /// check and the insert happen under one lock per key, so concurrent repeats of a key
    /// create exactly one request; a claim whose request is missing (a crash between the
    /// two writes) or expired is taken over.
    pub fn insert_request_once(
        &self,
        record: &mut Request,
        project: &[u8; 16],
        key_hash: &[u8; 32],
        ttl_ms: u64,
    ) -> Result<Claim> {
        let mut key = [0u8; 48];
        key[..16].copy_from_slice(project);
        key[16..].copy_from_slice(key_hash);
        let stripe = u64::from_be_bytes(key_hash[..8].try_into().unwrap_or_default());
        let _guard = self.inner.claim_stripes[(stripe as usize) % LOCK_STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(current) = self.inner.idempotency.get(key)? {
            let owner = be_u64(&current).unwrap_or(0);
            let created = current.get(8..).and_then(be_u64).unwrap_or(0);
            let fresh = record.created_ms.saturating_sub(created) < ttl_ms;
            if fresh && self.inner.requests.contains_key(request_key(owner))? {
                return Ok(Claim::Existing(owner));
            }
        }
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&record.id.to_be_bytes());
        value[8..].copy_from_slice(&record.created_ms.to_be_bytes());
        self.inner.idempotency.insert(key, &value[..])?;
        self.insert_request(record)?;
        Ok(Claim::New)
    }

    /// Appends a step to a request's timeline. Durable with the next commit.
    pub fn append_step(&self, id: u64, at_ms: u64, step: &Step) -> Result<()> {
        self.append_steps(id, std::slice::from_ref(&(at_ms, step.clone())))
    }

    /// Appends steps to a request's timeline in one write (one key per request, grown by
    /// sled's merge operator, so timelines add no keys to split). Durable with the next
    /// commit.
    pub fn append_steps(&self, id: u64, steps: &[(u64, Step)]) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let mut framed = Vec::with_capacity(128 * steps.len());
        for (at_ms, step) in steps {
            let entry = codec::encode(&(*at_ms, step))?;
            framed.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            framed.extend_from_slice(&entry);
        }
        self.inner.timeline.merge(id.to_be_bytes(), framed)?;
        Ok(())
    }

    /// A request's timeline in time order (a webhook attempt is stamped with its start,
    /// so it sorts before a callback that arrived while it was in flight).
    pub fn timeline(&self, id: u64) -> Result<Vec<(u64, Step)>> {
        let mut out = Vec::new();
        if let Some(value) = self.inner.timeline.get(id.to_be_bytes())? {
            let mut rest: &[u8] = &value;
            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                let len = u32::from_le_bytes(*len) as usize;
                let entry = tail.get(..len).ok_or(CodecError::Empty)?;
                out.push(codec::decode::<(u64, Step)>(entry)?);
                rest = &tail[len..];
            }
        }
        out.sort_by_key(|(at_ms, _)| *at_ms);
        Ok(out)
    }

    /// A value of the `meta` tree, created with `init` on first use.
    pub fn meta_or_init(&self, name: &str, init: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        let fresh = init();
        match self.inner.meta.compare_and_swap(
            name,
            None as Option<&[u8]>,
            Some(fresh.as_slice()),
        )? {
            Ok(()) => Ok(fresh),
            Err(conflict) => Ok(conflict.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    /// Recomputes the `due` index and the request log from the records. Returns the number of
    /// records scanned. Used on a store whose indexes are missing or suspect.
    pub fn rebuild_indexes(&self) -> Result<usize> {
        self.inner.due.clear()?;
        self.log_clear()?;
        let mut scanned = 0;
        for kv in self.inner.requests.iter() {
            let (k, v) = kv?;
            let Some(id) = be_u64(&k) else { continue };
            let _guard = self.stripe(id);
            let mut record: Request = codec::decode(&v)?;
            let due = record.next_due();
            if due != record.due_ms {
                record.due_ms = due;
                self.inner.requests.insert(&k, codec::encode(&record)?)?;
            }
            if let Some(due) = due {
                self.inner.due.insert(due_key(due, id), &[])?;
            }
            self.log_insert(&record)?;
            scanned += 1;
        }
        for (slot, n) in self.inner.state_counts.iter().zip(self.count_states()?) {
            slot.store(n, Ordering::Relaxed);
        }
        Ok(scanned)
    }
}
