//! Running the work queue's jobs on one node: what the scheduler's `JoinSet` does for a
//! sled node, with the jobs coming from every node's firings (see `work`).
//!
//! [`WorkQueue::serve`] takes jobs from the shared consumer while it has a free slot, runs
//! the caller's handler on each (the engine's round, once the scheduler is wired to it),
//! and settles the job by what the handler answers: [`Outcome::Done`] acknowledges it,
//! [`Outcome::Defer`] hands it back for later. While a handler runs (a model call can take
//! minutes) the job's `ack_wait` is extended every third of it, so a slow round is not
//! given to a second node; a node that dies stops extending, and its jobs go to another
//! node after `ack_wait`. A handler must therefore be safe to run twice for one job (the
//! engine's rounds are: every effect follows the CAS that allows it).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::work::{Job, WorkQueue};

/// How a job's handler ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished: the job is removed from the queue.
    Done,
    /// Not now: the job comes back (to any node) after this delay.
    Defer(Duration),
}

impl WorkQueue {
    /// Runs `handler(id, due_ms)` on the jobs this node takes, at most `slots` at once,
    /// until `stop` is cancelled (running handlers finish and are settled; jobs taken but
    /// not started go to another node after `ack_wait`). Errors pulling (a server down)
    /// are logged and the pulling goes on.
    pub fn serve<F, Fut>(&self, slots: usize, stop: CancellationToken, handler: F) -> JoinHandle<()>
    where
        F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let queue = self.clone();
        let slots = slots.max(1);
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            let mut jobs = loop {
                match queue.jobs(slots).await {
                    Ok(jobs) => break jobs,
                    Err(e) => tracing::warn!("cluster: taking work: {e}"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            };
            let free = Arc::new(Semaphore::new(slots));
            let extend_every = queue.ack_wait() / 3;
            loop {
                let slot = tokio::select! {
                    _ = stop.cancelled() => return,
                    slot = free.clone().acquire_owned() => slot.expect("never closed"),
                };
                let job = tokio::select! {
                    _ = stop.cancelled() => return,
                    job = jobs.next() => job,
                };
                let job = match job {
                    Some(Ok(job)) => job,
                    Some(Err(e)) => {
                        tracing::debug!("cluster: taking work: {e}");
                        continue;
                    }
                    None => return,
                };
                let run = handler(job.id, job.due_ms);
                tokio::spawn(async move {
                    let _slot = slot;
                    settle(job, run, extend_every).await;
                });
            }
        })
    }
}

/// Runs one job's handler, extending the job while it runs, then settles it.
async fn settle(job: Job, run: impl Future<Output = Outcome>, extend_every: Duration) {
    tokio::pin!(run);
    let mut extend = tokio::time::interval_at(
        tokio::time::Instant::now() + extend_every,
        extend_every.max(Duration::from_millis(100)),
    );
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = extend.tick() => {
                if let Err(e) = job.progress().await {
                    tracing::debug!("cluster: extending job {}: {e}", job.id);
                }
            }
        }
    };
    let settled = match outcome {
        Outcome::Done => job.done().await,
        Outcome::Defer(delay) => job.defer(delay).await,
    };
    // Not settled: the job comes back after `ack_wait`, which a rerun handles.
    if let Err(e) = settled {
        tracing::warn!("cluster: settling job {}: {e}", job.id);
    }
}
