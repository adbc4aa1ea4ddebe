//! Group commit: the one place where eddy makes writes durable.
//!
//! sled's `flush()` writes its buffers with `sync_file_range`, which survives a process
//! crash but not a power loss. A durable acknowledgement also needs `fdatasync` on the
//! store file, which costs ~0.26 ms here (~3.8k/s), and an fsync of every file and
//! directory entry sled made since the last commit (blob files, `conf`, new directory
//! entries: see `files`). So writers never sync themselves: they write, then
//! [`Committer::wait`]. One committer thread takes every waiter queued so far, runs
//! `flush()`, the file syncs and `sync_data()` once for all of them, and wakes them
//! together. Batches grow with load by themselves: while one sync runs, the next batch
//! queues up.
//!
//! A waiter is only ever woken by a sync that started after it queued, and it queued after
//! its write, so "woken with Ok" means "my write is on disk".

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::files::Files;
use crate::metrics::Histogram;

/// The outcome every waiter of a batch receives. The error is shared by the batch.
pub type CommitResult = Result<(), Arc<std::io::Error>>;

/// What the committer measures, for metrics and benchmarks.
pub struct CommitStats {
    /// Waiters woken by each batch.
    pub batch: Histogram,
    /// Time of each flush + fdatasync.
    pub latency: Histogram,
    pub failures: AtomicU64,
    /// Files (blobs, `conf`) fsynced besides `db`.
    pub files_synced: AtomicU64,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            batch: Histogram::batch_size(),
            latency: Histogram::latency(),
            failures: AtomicU64::new(0),
            files_synced: AtomicU64::new(0),
        }
    }
}

/// A handle to the committer thread; cheap to clone. The thread ends when the last handle
/// is dropped.
#[derive(Clone)]
pub struct Committer {
    tx: std_mpsc::Sender<oneshot::Sender<CommitResult>>,
    stats: Arc<CommitStats>,
}

impl Committer {
    /// Starts the committer for `db`, syncing `file` (a second handle to `<data>/db`) and
    /// what `files` reports.
    pub fn start(
        db: sled::Db,
        file: File,
        files: Files,
        stats: Arc<CommitStats>,
    ) -> std::io::Result<Committer> {
        let (tx, rx) = std_mpsc::channel::<oneshot::Sender<CommitResult>>();
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("eddy-commit".into())
            .spawn(move || run(db, file, files, rx, &thread_stats))?;
        Ok(Committer { tx, stats })
    }

    /// Resolves once every write made before this call is durable.
    pub async fn wait(&self) -> CommitResult {
        let (done, wake) = oneshot::channel();
        if self.tx.send(done).is_err() {
            return Err(Arc::new(std::io::Error::other("committer stopped")));
        }
        wake.await
            .unwrap_or_else(|_| Err(Arc::new(std::io::Error::other("committer stopped"))))
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

fn run(
    db: sled::Db,
    file: File,
    mut files: Files,
    rx: std_mpsc::Receiver<oneshot::Sender<CommitResult>>,
    stats: &CommitStats,
) {
    let mut batch = Vec::with_capacity(256);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        let started = Instant::now();
        let result = sync(&db, &file, &mut files, stats).map_err(Arc::new);
        stats.latency.observe_duration(started.elapsed());
        stats.batch.observe(batch.len() as f64);
        if let Err(e) = &result {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "group commit failed");
        }
        for waiter in batch.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

/// `flush()` first: it returns once every log reservation it covers is complete, and a
/// blob is written and closed before its reservation completes, so every file the flushed
/// records point to is announced by then.
fn sync(db: &sled::Db, file: &File, files: &mut Files, stats: &CommitStats) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    let synced = files.sync_new()?;
    stats
        .files_synced
        .fetch_add(synced as u64, Ordering::Relaxed);
    file.sync_data()
}
