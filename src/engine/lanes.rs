//! Per-endpoint lanes: at most `per_lane` webhook attempts in flight per endpoint, with
//! first attempts and retries in separate lanes.
//!
//! A slow or dead endpoint thus holds a bounded number of connections and tasks; an
//! attempt that finds its lane full waits briefly for a permit (a healthy endpoint frees
//! one within milliseconds), and if none comes it is not made (and not counted) but
//! deferred, which frees its scheduler slot for deliveries to healthy endpoints. Keeping first
//! attempts apart means a retry storm against an endpoint never queues its fresh
//! deliveries behind it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

    /// A permit to attempt a delivery to `endpoint`, waiting at most `wait` for one;
    /// `None` if the lane stayed full.
    pub async fn enter(
        &self,
        endpoint: &str,
        first_attempt: bool,
        wait: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let semaphore = self.semaphore(endpoint, first_attempt);
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(wait, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()
    }

    fn semaphore(&self, endpoint: &str, first_attempt: bool) -> Arc<Semaphore> {
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
        if first_attempt {
            lane.fresh.clone()
        } else {
            lane.retry.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full lane refuses after the wait, the other lane of the same endpoint and other
    /// endpoints do not, and a permit released while waiting is handed to the waiter.
    #[tokio::test]
    async fn lanes_are_bounded_and_separate() {
        let lanes = Lanes::new(2);
        let wait = Duration::from_millis(20);
        let a1 = lanes.enter("a", false, wait).await.unwrap();
        let _a2 = lanes.enter("a", false, wait).await.unwrap();
        assert!(lanes.enter("a", false, wait).await.is_none());
        assert!(lanes.enter("a", true, wait).await.is_some());
        assert!(lanes.enter("b", false, wait).await.is_some());
        let waiter = lanes.enter("a", false, Duration::from_secs(5));
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(a1);
        };
        let (permit, ()) = tokio::join!(waiter, release);
        assert!(permit.is_some());
    }
}
