//! What a round does differently on a cluster node (issue 15), kept apart from the round
//! itself: the lease on a model call (lead decision 4: one `create`, so two nodes driving
//! the same request never both pay for its model call, except after a crash), and runs
//! asked for again at a time no due key records (a store error, a full webhook lane,
//! another node's lease),
//! which a cluster node hands back to the work queue ([`crate::scheduler::SchedulerHandle::retry`]).
//! On one node the lease is always granted and a retry is the round's returned due time.

use super::Engine;
use crate::clock::now_ms;
use crate::error::Result;
use crate::job::Request;

/// How long after a failed round (a store error) it runs again.
pub(super) const RETRY_MS: u64 = 1000;

/// On a cluster node, how long a round that found another node's lease on the model call
/// waits before it looks again (the holder records its result, or its lease expires).
const LEASE_RECHECK_MS: u64 = 5000;

impl Engine {
    /// Runs request `id` again at `at_ms`, a time no due key records: the returned due time
    /// on one node, and on a cluster node the time its job comes back (see
    /// `SchedulerHandle::retry`).
    pub(super) fn again_at(&self, id: u64, at_ms: u64) -> Option<u64> {
        self.scheduler.retry(id, at_ms);
        Some(at_ms)
    }

    /// Whether this node may call the model for `record`: always on one node; on a cluster
    /// node, if it takes the lease on the call (lead decision 4), so that two nodes driving
    /// the same request (a re-fire, a redelivered job) never both pay for it, except after
    /// a crash. Otherwise its job comes back once the holder had time to record a result.
    pub(super) async fn may_call_model(&self, record: &Request) -> Result<bool> {
        if !self.scheduler.clustered() {
            return Ok(true);
        }
        let effect = format!("model.{}", record.ai_attempts.len());
        let taken = self
            .scheduler
            .lease(record.id, &effect)
            .await
            .map_err(crate::store::StoreError::from)?;
        if !taken {
            self.scheduler.retry(record.id, now_ms() + LEASE_RECHECK_MS);
        }
        Ok(taken)
    }

    /// A due delivery of request `id` found its lane full: on a cluster node, which parks
    /// nothing (see `lanes`), its job comes back in about half a second, to any node.
    pub(super) fn lane_full(&self, id: u64, now: u64) {
        if self.scheduler.clustered() {
            let wait = super::jittered(std::time::Duration::from_millis(500));
            self.scheduler.retry(id, now + wait.as_millis() as u64);
        }
    }
}
