//! What a fake server records, in arrival order, with a way to wait until enough has
//! arrived: the one mechanism behind the receiver's requests and callbacks and the fake
//! providers' requests.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::WAIT;

pub struct Log<T> {
    /// What the items are, for a wait's failure ("webhooks at the receiver").
    what: &'static str,
    items: Mutex<Vec<T>>,
    count: watch::Sender<usize>,
}

impl<T: Clone> Log<T> {
    /// An empty log of `what`.
    pub fn of(what: &'static str) -> Self {
        Log {
            what,
            items: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        }
    }

    pub fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap();
        items.push(item);
        self.count.send_replace(items.len());
    }

    /// Everything so far, in order.
    pub fn all(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }

    /// Waits (up to [`WAIT`]) until at least `n` items arrived; returns all of them.
    /// Panics naming what they are if they did not.
    pub async fn wait_for(&self, n: usize) -> Vec<T> {
        let mut count = self.count.subscribe();
        let reached = tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n)).await;
        let all = self.all();
        assert!(
            matches!(reached, Ok(Ok(_))),
            "{}: {} arrived, expected {n}",
            self.what,
            all.len()
        );
        all
    }

    /// Whether no item beyond the first `seen` arrives within `quiet`.
    pub async fn stays_at(&self, seen: usize, quiet: Duration) -> bool {
        let mut count = self.count.subscribe();
        tokio::time::timeout(quiet, count.wait_for(|c| *c > seen))
            .await
            .is_err()
    }
}
