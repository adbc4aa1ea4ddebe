//! The timer wheel that decides *when* a request is worked on (never *what* is done).
//!
//! The persistent `due` index is the truth. In memory there is only what falls due within
//! a horizon: a tokio-util `DelayQueue` (a hierarchical timing wheel, ~56 B per timer) with
//! one timer per request id. One task owns it and selects over: expired timers, newly
//! scheduled ids, finished work, and a periodic refill from `due.range(..now + horizon)`.
//! On start the first refill loads everything overdue, and the work the store recovered
//! at open that was due when written (it has no key: see `store::due`), so a restart
//! resumes all work. Requests whose deliveries wait in an endpoint's lane are left to the
//! lane ([`Work::holds`]), which schedules them when their turn comes.
//!
//! Work runs as tasks in a `JoinSet`, at most `max_inflight` at once; expired ids beyond
//! that wait in a FIFO backlog, which bounds the burst after a restart. An id is never
//! run twice at once: a timer that fires while its request is running is remembered and
//! merged with the run's own next due time when it finishes.
//!
//! On a cluster node (issue 15; `cluster.rs` beside this file) the wheel is the same, but
//! *firing publishes* the request's work message instead of running it, and what runs is
//! the jobs this node takes from the work queue, up to its free slots, in the same
//! `JoinSet`; see `scheduler/cluster.rs` for the rules.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::store::Store;

mod cluster;

/// What the scheduler runs for a due request: `run(id, due_ms)` returns when the request
/// is next due, if ever.
pub trait Work: Send + Sync + 'static {
    fn run(&self, id: u64, due_ms: u64) -> Pin<Box<dyn Future<Output = Option<u64>> + Send + '_>>;

    /// Whether the work holds request `id` itself and will schedule it when it can go on
    /// (a delivery parked in its endpoint's lane): the refill leaves it alone.
    fn holds(&self, _id: u64) -> bool {
        false
    }
}

enum Command {
    Schedule(u64, u64),
}

/// Tells the scheduler about new or moved due times. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
    node: Arc<cluster::Node>,
}

impl SchedulerHandle {
    /// The request `id` is due at `due_ms` (wall-clock ms); `None` does nothing. On a
    /// cluster node, work due already needs nothing: the write that made it due published
    /// its work message.
    pub fn schedule(&self, id: u64, due_ms: Option<u64>) {
        if let Some(due) = due_ms {
            if self.node.clustered() && due <= now_ms() {
                return;
            }
            let _ = self.tx.send(Command::Schedule(id, due));
        }
    }

    /// The run of `id` in progress stops short of what is due and wants to run again at
    /// `at_ms`, a time no due key records (an error, a full webhook lane, another node's
    /// lease): on a cluster node its job is handed back to come again then (to any node).
    /// On one node it does nothing: the run's returned due time is its timer.
    pub fn retry(&self, id: u64, at_ms: u64) {
        self.node.retry(id, at_ms);
    }

    /// The run of `id` in progress found no record: on a cluster node its job comes back
    /// shortly for a while (the write that published it may not be stored yet); on one
    /// node it does nothing.
    pub fn not_found(&self, id: u64) {
        self.node.not_found(id);
    }

    /// Makes sure request `id`, due at `due_ms` by its stored record, is driven: on a
    /// cluster node its work message is published again (a repeat is stored once), for a
    /// write whose own message was not acknowledged (a retried callback or accept finds
    /// the record written); on one node it does nothing (the store recovers such work).
    pub async fn wake(&self, id: u64, due_ms: Option<u64>) -> crate::cluster::Result<()> {
        match due_ms {
            Some(due) if due <= now_ms() => self.node.wake(id, due).await,
            _ => Ok(()),
        }
    }

    /// Whether this node runs as one of several (set when the scheduler starts).
    pub fn clustered(&self) -> bool {
        self.node.clustered()
    }

    /// Takes the lease on a costly `effect` of request `id` (a model call; see
    /// `cluster::records`): true if this node may go ahead. Always true on one node.
    pub async fn lease(&self, id: u64, effect: &str) -> crate::cluster::Result<bool> {
        self.node.lease(id, effect).await
    }
}

/// The receiving half, given to [`spawn`] once the work is built.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Command>,
    node: Arc<cluster::Node>,
}

#[cfg(test)]
impl Inbox {
    /// The next `(id, due_ms)` scheduled, if one is waiting.
    pub fn try_next(&mut self) -> Option<(u64, u64)> {
        match self.rx.try_recv().ok()? {
            Command::Schedule(id, due) => Some((id, due)),
        }
    }
}

/// A handle and its inbox: the engine needs the handle before the scheduler can run it.
pub fn channel() -> (SchedulerHandle, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let node = Arc::new(cluster::Node::default());
    (
        SchedulerHandle {
            tx,
            node: node.clone(),
        },
        Inbox { rx, node },
    )
}

/// Tuning of the wheel.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How far ahead timers are held in memory.
    pub horizon: Duration,
    /// How often the due index is re-read.
    pub refill_every: Duration,
    /// Requests worked on at once.
    pub max_inflight: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            horizon: Duration::from_secs(60),
            refill_every: Duration::from_secs(20),
            max_inflight: 4096,
        }
    }
}

/// Most due-index entries loaded by one refill.
const REFILL_LIMIT: usize = 200_000;

struct Wheel {
    store: Store,
    work: Arc<dyn Work>,
    settings: Settings,
    queue: DelayQueue<(u64, u64)>,
    timers: HashMap<u64, (Key, u64)>,
    /// Running ids, with the earliest due time that fired or was scheduled meanwhile.
    running: HashMap<u64, Option<u64>>,
    backlog: VecDeque<(u64, u64)>,
    /// Ids in `backlog`, so a refill does not queue them twice.
    waiting: HashSet<u64>,
    tasks: JoinSet<(u64, Option<u64>)>,
    /// On a cluster node: the work queue side (firing publishes; jobs come from it).
    cluster: Option<cluster::Side>,
}

/// Starts the scheduler task; it stops when `shutdown` is cancelled, aborting running work
/// (which is safe: work is recorded before its effects, and resumes from the due index).
/// A cluster node's store makes it a cluster node's wheel.
pub fn spawn(
    inbox: Inbox,
    store: Store,
    work: Arc<dyn Work>,
    settings: Settings,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let cluster = store.cluster().cloned();
    spawn_on(inbox, store, cluster, work, settings, shutdown)
}

/// [`spawn`], on `cluster` if given: the wheel fires by publishing work messages and runs
/// the jobs this node takes (`store` is then not read by the wheel).
pub fn spawn_on(
    inbox: Inbox,
    store: Store,
    cluster: Option<Cluster>,
    work: Arc<dyn Work>,
    settings: Settings,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if cluster.is_some() {
        inbox.node.set_clustered();
    }
    let wheel = Wheel {
        store,
        work,
        settings,
        queue: DelayQueue::new(),
        timers: HashMap::new(),
        running: HashMap::new(),
        backlog: VecDeque::new(),
        waiting: HashSet::new(),
        tasks: JoinSet::new(),
        cluster: None,
    };
    tokio::spawn(async move {
        let mut wheel = wheel;
        if let Some(cluster) = cluster {
            let side = cluster::Side::open(
                &cluster,
                inbox.node.clone(),
                wheel.settings.max_inflight,
                shutdown.child_token(),
            );
            match side.await {
                Some(side) => wheel.cluster = Some(side),
                None => return,
            }
        }
        wheel.run(inbox, shutdown).await
    })
}

fn instant_of(due_ms: u64, now_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(due_ms.saturating_sub(now_ms))
}

impl Wheel {
    async fn run(mut self, mut inbox: Inbox, shutdown: CancellationToken) {
        let mut refill = tokio::time::interval(self.settings.refill_every);
        refill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(cmd) = inbox.rx.recv() => match cmd {
                    Command::Schedule(id, due) => self.schedule(id, due),
                },
                Some(expired) = self.queue.next(), if !self.queue.is_empty() => {
                    let (id, due) = expired.into_inner();
                    self.timers.remove(&id);
                    self.fire(id, due);
                }
                Some(taken) = cluster::next_job(&mut self.cluster) => self.take(taken),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match done {
                        Ok((id, next)) => self.finished(id, next),
                        Err(e) => tracing::error!(error = %e, "request task failed"),
                    }
                }
                _ = refill.tick() => self.refill().await,
            }
        }
        self.tasks.shutdown().await;
    }

    /// Holds a timer for `id` at `due` if it falls within the horizon (else the refill will
    /// find it in the index), or runs it if it is due. One timer per id: a new due time
    /// replaces the old one.
    fn schedule(&mut self, id: u64, due: u64) {
        if let Some(pending) = self.running.get_mut(&id) {
            *pending = Some(pending.map_or(due, |p| p.min(due)));
            return;
        }
        let now = now_ms();
        if let Some((key, _)) = self.timers.remove(&id) {
            self.queue.try_remove(&key);
        }
        // Due already (a new request, a delivery whose lane just freed a slot): run it
        // now rather than at the timer wheel's next 1 ms tick.
        if due <= now {
            self.fire(id, due);
            return;
        }
        if due > now + self.settings.horizon.as_millis() as u64 {
            return;
        }
        let key = self.queue.insert_at((id, due), instant_of(due, now));
        self.timers.insert(id, (key, due));
    }

    fn fire(&mut self, id: u64, due: u64) {
        if let Some(pending) = self.running.get_mut(&id) {
            *pending = Some(pending.map_or(due, |p| p.min(due)));
            return;
        }
        if let Some(side) = &self.cluster {
            side.publish(id, due);
            return;
        }
        if self.running.len() >= self.settings.max_inflight {
            if self.waiting.insert(id) {
                self.backlog.push_back((id, due));
            }
            return;
        }
        self.running.insert(id, None);
        let work = self.work.clone();
        self.tasks
            .spawn(async move { (id, work.run(id, due).await) });
    }

    fn finished(&mut self, id: u64, next: Option<u64>) {
        let pending = self.running.remove(&id).flatten();
        let next = match (next, pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(due) = next {
            self.schedule(id, due);
        }
        while self.running.len() < self.settings.max_inflight {
            let Some((id, due)) = self.backlog.pop_front() else {
                break;
            };
            self.waiting.remove(&id);
            self.fire(id, due);
        }
    }

    /// Loads every due-index entry up to the horizon that has no timer yet, and the work
    /// the store found due without a key when it opened (on a cluster node: the due keys
    /// of the minutes up to the horizon, see `cluster.rs`).
    async fn refill(&mut self) {
        let until = now_ms() + self.settings.horizon.as_millis() as u64;
        let entries = match &mut self.cluster {
            Some(side) => side.due_before(until, REFILL_LIMIT).await,
            None => {
                let mut entries = self.store.recovered_due();
                match self.store.due_before(until, REFILL_LIMIT).await {
                    Ok(e) => entries.extend(e),
                    Err(e) => tracing::error!(error = %e, "cannot read the due index"),
                }
                entries
            }
        };
        for (due, id) in entries {
            let known = self.timers.get(&id).is_some_and(|(_, d)| *d <= due);
            if !known
                && !self.running.contains_key(&id)
                && !self.waiting.contains(&id)
                && !self.work.holds(id)
            {
                self.schedule(id, due);
            }
        }
    }
}
