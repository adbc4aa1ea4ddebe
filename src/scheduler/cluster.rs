//! A cluster node's side of the timer wheel (issue 15): the wheel itself is the one node's
//! (timers within a horizon, refilled from the due index), only where a timer leads and
//! where the work comes from differ.
//!
//! - **Firing publishes.** A timer of request `id` due at `due_ms` publishes its work
//!   message (`work.<id>`, message id `<id>:<due_ms>`, see `cluster::work`) instead of
//!   running it. Every node holds the same timers (each refills from the shared `due`
//!   bucket), and the stream stores one message per firing however many nodes publish
//!   it, so a node that died leaves its timers to the others.
//! - **Refills list minutes.** A refill lists the due keys of the minutes from the one
//!   before the previous refill up to the horizon (a few keys-only listings, not the whole
//!   bucket); the whole bucket is listed at start and every [`FULL_EVERY`], for keys left
//!   overdue (a crash between a firing and its round).
//! - **Jobs fill free slots.** A puller asks the work queue for as many jobs as the node
//!   has free slots (a semaphore of `max_inflight`), so a busy node takes nothing that an
//!   idle one could run; the wheel runs each job's round in its `JoinSet`, as the holder
//!   of the message (`cluster::records::holding`: the round's own writes then publish
//!   nothing for work due now, which it goes on with itself), extended with `+WPI` while
//!   it runs (a model call may outlast `ack_wait`).
//! - **Settled after the writes.** A round's writes are acknowledged by JetStream before
//!   they return, so when the round ends its job is settled: acknowledged if nothing is
//!   due now (what is due later has its due key, and its timer here); handed back with a
//!   delay (a confirmed `Nak`) if the round asked to run again soon
//!   ([`super::SchedulerHandle::retry`]: an error, a full webhook lane, another node's
//!   lease) or stopped with work still due now. A job for a request already running on
//!   this node is handed back at once, for a short while: an id never runs twice at once
//!   on a node. A node that dies holding jobs leaves them to the others after `ack_wait`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Wheel, Work};
use crate::clock::now_ms;
use crate::cluster::records::{Held, holding};
use crate::cluster::{Cluster, Job, Records, WorkQueue};

/// How often a refill lists the whole due bucket rather than the minutes ahead.
const FULL_EVERY: Duration = Duration::from_secs(300);

/// How long one pull for jobs stays open at the servers when there is no work.
const PULL_WAIT: Duration = Duration::from_secs(10);

/// Most jobs asked for in one pull.
const MOST_PER_PULL: usize = 256;

/// How soon a job handed back for want of anything else comes again: a job for a request
/// running here, or a round that stopped with work due now.
const SHORTLY: Duration = Duration::from_millis(200);

/// How many times a job whose request is not found comes back before it is dropped
/// (`SHORTLY` apart: about a minute).
const LOOKS_FOR_RECORD: i64 = 300;

/// A job taken from the queue with the slot it runs in.
pub(super) type Taken = (Job, OwnedSemaphorePermit);

/// What the scheduler's handle and its wheel share about the node.
#[derive(Default)]
pub(super) struct Node {
    clustered: AtomicBool,
    /// Retry times asked for by rounds in progress, by request id; `None`: the record was
    /// not found.
    retries: Mutex<HashMap<u64, Option<u64>>>,
    records: OnceLock<Records>,
}

impl Node {
    pub fn set_clustered(&self) {
        self.clustered.store(true, Ordering::Relaxed);
    }

    pub fn clustered(&self) -> bool {
        self.clustered.load(Ordering::Relaxed)
    }

    pub fn retry(&self, id: u64, at_ms: u64) {
        if self.clustered() {
            let mut retries = self.retries.lock().unwrap_or_else(|p| p.into_inner());
            let at = retries.entry(id).or_insert(Some(at_ms));
            *at = at.map(|t| t.min(at_ms));
        }
    }

    pub fn not_found(&self, id: u64) {
        if self.clustered() {
            let mut retries = self.retries.lock().unwrap_or_else(|p| p.into_inner());
            retries.insert(id, None);
        }
    }

    fn take_retry(&self, id: u64) -> Option<Option<u64>> {
        self.retries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    pub async fn wake(&self, id: u64, due_ms: u64) -> crate::cluster::Result<()> {
        match self.records.get() {
            Some(records) => records
                .work()
                .publish(id, due_ms)
                .await?
                .wait()
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }

    pub async fn lease(&self, id: u64, effect: &str) -> crate::cluster::Result<bool> {
        match self.records.get() {
            Some(records) => records.lease(id, effect).await,
            None => Ok(true),
        }
    }
}

/// The work queue side of a cluster node's wheel.
pub(super) struct Side {
    records: Records,
    queue: WorkQueue,
    node: Arc<Node>,
    jobs: mpsc::Receiver<Taken>,
    /// The minute the previous refill ran in (`None` before the first, which lists all).
    listed_from: Option<u64>,
    listed_all: Instant,
}

impl Side {
    /// Opens the records and the work queue of `cluster` (trying again every second
    /// while NATS does not answer) and starts pulling jobs for `slots` slots; `None` if
    /// `stop` came first.
    pub async fn open(
        cluster: &Cluster,
        node: Arc<Node>,
        slots: usize,
        stop: CancellationToken,
    ) -> Option<Side> {
        let records = loop {
            match cluster.records().await {
                Ok(records) => break records,
                Err(e) => tracing::warn!("cluster: opening the scheduler's buckets: {e}"),
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        let _ = node.records.set(records.clone());
        let queue = records.work().clone();
        let (tx, jobs) = mpsc::channel(slots.max(1));
        let free = Arc::new(Semaphore::new(slots.max(1)));
        tokio::spawn(pull(queue.clone(), free, tx, stop));
        Some(Side {
            records,
            queue,
            node,
            jobs,
            listed_from: None,
            listed_all: Instant::now(),
        })
    }

    /// Publishes the firing of `id` due at `due_ms` (a repeat is stored once); a failed
    /// publish is left to the next refill, which finds the due key again.
    pub fn publish(&self, id: u64, due_ms: u64) {
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let published = match queue.publish(id, due_ms).await {
                Ok(ack) => ack.wait().await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = published {
                tracing::warn!(id, "cluster: firing: {e}");
            }
        });
    }

    /// The due keys before `until_ms` of the minutes since the previous refill (all of
    /// them at start and every [`FULL_EVERY`]).
    pub async fn due_before(&mut self, until_ms: u64, limit: usize) -> Vec<(u64, u64)> {
        let minute = now_ms() / 60_000;
        let listed = match self.listed_from {
            Some(from) if self.listed_all.elapsed() < FULL_EVERY => {
                // One minute back: a key written late in the previous refill's minute.
                let mut keys = self
                    .records
                    .due_in_minutes(from.saturating_sub(1), until_ms)
                    .await;
                if let Ok(keys) = &mut keys {
                    keys.truncate(limit);
                }
                keys
            }
            _ => {
                self.listed_all = Instant::now();
                self.records.due_before(until_ms, limit).await
            }
        };
        match listed {
            Ok(keys) => {
                self.listed_from = Some(minute);
                keys
            }
            Err(e) => {
                tracing::error!("cluster: cannot read the due index: {e}");
                Vec::new()
            }
        }
    }
}

/// The next job taken for this wheel; never, on one node.
pub(super) async fn next_job(side: &mut Option<Side>) -> Option<Taken> {
    match side {
        Some(side) => side.jobs.recv().await,
        None => std::future::pending().await,
    }
}

impl Wheel {
    /// Runs a job taken from the queue in the wheel's `JoinSet`, unless its request is
    /// running here already (then it is handed back for a moment).
    pub(super) fn take(&mut self, (job, slot): Taken) {
        let Some(side) = &self.cluster else {
            return;
        };
        if self.running.contains_key(&job.id) {
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = job.defer(SHORTLY).await {
                    tracing::debug!(id = job.id, "cluster: handing back a job: {e}");
                }
            });
            return;
        }
        self.running.insert(job.id, None);
        let work = self.work.clone();
        let node = side.node.clone();
        let extend_every = (side.queue.ack_wait() / 3).max(Duration::from_millis(100));
        self.tasks.spawn(async move {
            let _slot = slot;
            run_job(job, work, node, extend_every).await
        });
    }
}

/// Runs one job's round, extending the job while it runs, then settles it; returns the
/// request's next due time for this node's timer, if the job was acknowledged.
async fn run_job(
    job: Job,
    work: Arc<dyn Work>,
    node: Arc<Node>,
    extend_every: Duration,
) -> (u64, Option<u64>) {
    let (id, due) = (job.id, job.due_ms);
    let held = Held {
        id,
        due_ms: due,
        by_write: job.by_write,
    };
    let run = holding(held, work.run(id, due));
    tokio::pin!(run);
    let mut extend = tokio::time::interval_at(Instant::now() + extend_every, extend_every);
    let next = loop {
        tokio::select! {
            next = &mut run => break next,
            _ = extend.tick() => {
                if let Err(e) = job.progress().await {
                    tracing::debug!(id, "cluster: extending a job: {e}");
                }
            }
        }
    };
    let now = now_ms();
    let settled = match (node.take_retry(id), next) {
        (Some(Some(at)), _) => job
            .defer(Duration::from_millis(at.saturating_sub(now)).max(SHORTLY))
            .await
            .map(|_| None),
        // The write that published the job may not be stored yet: look again shortly,
        // for a while (a message whose record never came is then dropped).
        (Some(None), _) if job.delivered < LOOKS_FOR_RECORD => {
            job.defer(SHORTLY).await.map(|_| None)
        }
        (Some(None), _) => {
            tracing::warn!(
                id,
                "cluster: dropping the job of a request that is not stored"
            );
            job.done().await.map(|_| None)
        }
        (None, Some(at)) if at <= now => job.defer(SHORTLY).await.map(|_| None),
        (None, next) => job.done().await.map(|_| next),
    };
    match settled {
        Ok(next) => (id, next),
        // Not settled: the job comes back after `ack_wait`, and a round handles it again.
        Err(e) => {
            tracing::warn!(id, "cluster: settling a job: {e}");
            (id, None)
        }
    }
}

/// Takes jobs for this node, at most as many as it has free slots, and hands each to the
/// wheel with its slot, until `stop`.
async fn pull(
    queue: WorkQueue,
    free: Arc<Semaphore>,
    to_wheel: mpsc::Sender<Taken>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            slot = free.clone().acquire_owned() => slot.expect("never closed"),
        };
        let mut slots = vec![first];
        while slots.len() < MOST_PER_PULL {
            match free.clone().try_acquire_owned() {
                Ok(slot) => slots.push(slot),
                Err(_) => break,
            }
        }
        let mut jobs = match queue.take(slots.len(), PULL_WAIT).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!("cluster: taking work: {e}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        while !slots.is_empty() {
            let job = tokio::select! {
                _ = stop.cancelled() => return,
                job = jobs.next() => job,
            };
            match job {
                Some(Ok(job)) => {
                    let slot = slots.pop().expect("not empty");
                    if to_wheel.send((job, slot)).await.is_err() {
                        return;
                    }
                }
                // A refused pull (too many jobs pending across the nodes) or a server
                // gone: pull again after a pause.
                Some(Err(e)) => {
                    tracing::debug!("cluster: taking work: {e}");
                    tokio::time::sleep(SHORTLY).await;
                    break;
                }
                None => break,
            }
        }
    }
}
