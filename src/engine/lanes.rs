//! Per-endpoint lanes: at most `per_lane` webhook attempts in flight per endpoint, with
//! first attempts and retries in separate lanes.
//!
//! A slow or dead endpoint thus holds a bounded number of connections and tasks; an
//! attempt that finds its lane full is not made (and not counted) but deferred briefly,
//! which frees its scheduler slot for deliveries to healthy endpoints. Keeping first
//! attempts apart means a retry storm against an endpoint never queues its fresh
//! deliveries behind it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

struct Lane {
    fresh: Arc<Semaphore>,
    retry: Arc<Semaphore>,
}

/// Lanes are created on first use; idle ones are forgotten when many accumulate.
pub struct Lanes {
    per_lane: usize,
    lanes: Mutex<HashMap<String, Lane>>,
}

/// Forget idle lanes once there are more than this many.
const TIDY_ABOVE: usize = 4096;

impl Lanes {
    pub fn new(per_lane: usize) -> Lanes {
        Lanes {
            per_lane: per_lane.max(1),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// A permit to attempt a delivery to `endpoint` now, or `None` if its lane is full.
    pub fn try_enter(&self, endpoint: &str, first_attempt: bool) -> Option<OwnedSemaphorePermit> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes.len() > TIDY_ABOVE {
            let full = self.per_lane;
            lanes.retain(|_, l| {
                l.fresh.available_permits() < full || l.retry.available_permits() < full
            });
        }
        let lane = lanes.entry(endpoint.to_string()).or_insert_with(|| Lane {
            fresh: Arc::new(Semaphore::new(self.per_lane)),
            retry: Arc::new(Semaphore::new(self.per_lane)),
        });
        let semaphore = if first_attempt {
            &lane.fresh
        } else {
            &lane.retry
        };
        semaphore.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full lane refuses, the other lane of the same endpoint and other endpoints do
    /// not, and a released permit opens the lane again.
    #[test]
    fn lanes_are_bounded_and_separate() {
        let lanes = Lanes::new(2);
        let a1 = lanes.try_enter("a", false).unwrap();
        let _a2 = lanes.try_enter("a", false).unwrap();
        assert!(lanes.try_enter("a", false).is_none());
        assert!(lanes.try_enter("a", true).is_some());
        assert!(lanes.try_enter("b", false).is_some());
        drop(a1);
        assert!(lanes.try_enter("a", false).is_some());
    }
}
