//! Per-endpoint lanes: at most `per_lane` webhook attempts in flight per endpoint, with
//! first attempts and retries in separate FIFOs.
//!
//! Entering a lane is synchronous: a delivery gets a [`Permit`] at once, or its request
//! is parked at the back of the lane's FIFO and its drive returns (freeing its scheduler
//! slot for deliveries to other endpoints). Nothing is read, built or written for a parked
//! delivery: its record and due key stay as they are, so a restart finds it due and parks
//! it again. A permit that is dropped passes its slot to the head of its FIFO (a grant)
//! and asks the scheduler to run that request now; its drive enters the lane again and
//! claims the grant. So an endpoint's waiting deliveries cost nothing until a slot frees,
//! and then exactly one drive each, in the order they arrived.
//!
//! A slow or dead endpoint thus holds a bounded number of connections and tasks, and never
//! the scheduler's slots. Keeping first attempts apart means a retry storm against an
//! endpoint never queues its fresh deliveries behind it.
//!
//! A grant whose request no longer has anything due on that lane (the drive entered other
//! lanes, or none) is given back by [`Lanes::forfeit`] at the end of the drive, so a slot
//! is never lost.
//!
//! On a cluster node the lanes bound each node's attempts the same way but park nothing:
//! a delivery that finds its lane full ends its round, and the request's job is handed
//! back to the work queue to come again in a moment (200–800 ms, to any node). FIFO order
//! within a lane is given up there, so that no request waits on a node that may die.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::now_ms;
use crate::scheduler::SchedulerHandle;

/// A lane: an endpoint (or a request's own webhook host), first attempts or retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaneKey {
    pub endpoint: String,
    pub first_attempt: bool,
}

/// One lane's FIFO.
#[derive(Default)]
struct Fifo {
    /// Permits held and grants not yet claimed.
    taken: usize,
    /// Parked requests, oldest first, with the due time to wake them at (their record's).
    parked: VecDeque<(u64, u64)>,
    /// The ids in `parked`, so a request is parked once however often its drive runs.
    parked_ids: HashSet<u64>,
}

#[derive(Default)]
struct Table {
    lanes: HashMap<LaneKey, Fifo>,
    /// Lanes whose slot was passed to a request that has not claimed it yet.
    granted: HashMap<u64, Vec<LaneKey>>,
    /// Requests parked or granted in some lane, with how many lanes (see [`Lanes::holds`]).
    held: HashMap<u64, u32>,
}

struct Shared {
    per_lane: usize,
    table: Mutex<Table>,
    scheduler: SchedulerHandle,
}

/// The lanes of every endpoint; created on first use, forgotten when idle and many.
pub struct Lanes {
    shared: Arc<Shared>,
}

/// Forget idle lanes once there are more than this many.
const TIDY_ABOVE: usize = 4096;

/// What entering a lane gave.
pub enum Entry {
    Admitted(Permit),
    /// The lane is full: the request waits in its FIFO and is run again when its turn comes.
    Parked,
}

/// A slot in a lane, held while an attempt sends; dropping it passes the slot on.
pub struct Permit {
    shared: Arc<Shared>,
    key: LaneKey,
}

impl Lanes {
    pub fn new(per_lane: usize, scheduler: SchedulerHandle) -> Lanes {
        Lanes {
            shared: Arc::new(Shared {
                per_lane: per_lane.max(1),
                table: Mutex::new(Table::default()),
                scheduler,
            }),
        }
    }

    /// A permit for request `id` (due at `due_ms`) in lane `key`: its grant if it has one,
    /// a free slot if nobody waits, else it is parked (once) at the back of the FIFO.
    pub fn enter(&self, key: &LaneKey, id: u64, due_ms: u64) -> Entry {
        let mut table = self.shared.lock();
        if table.claim(id, key) {
            return self.permit(key);
        }
        if table.lanes.len() > TIDY_ABOVE {
            table
                .lanes
                .retain(|_, f| f.taken > 0 || !f.parked.is_empty());
        }
        let fifo = match table.lanes.get_mut(key) {
            Some(fifo) => fifo,
            None => table.lanes.entry(key.clone()).or_default(),
        };
        if fifo.taken < self.shared.per_lane && fifo.parked.is_empty() {
            fifo.taken += 1;
            return self.permit(key);
        }
        // A cluster node parks nothing: the job of the request is handed back to come
        // again shortly (to any node), so no node holds work that only it would resume.
        if self.shared.scheduler.clustered() {
            return Entry::Parked;
        }
        if fifo.parked_ids.insert(id) {
            fifo.parked.push_back((id, due_ms));
            *table.held.entry(id).or_default() += 1;
        }
        Entry::Parked
    }

    fn permit(&self, key: &LaneKey) -> Entry {
        Entry::Admitted(Permit {
            shared: self.shared.clone(),
            key: key.clone(),
        })
    }

    /// Gives back the grants of request `id` in lanes it did not enter (`entered`) during
    /// its drive: it has nothing due there any more.
    pub fn forfeit(&self, id: u64, entered: &[LaneKey]) {
        let mut woken = Vec::new();
        {
            let mut table = self.shared.lock();
            let Some(keys) = table.granted.get_mut(&id) else {
                return;
            };
            let (kept, given_back): (Vec<_>, Vec<_>) =
                keys.drain(..).partition(|k| entered.contains(k));
            *keys = kept;
            for key in given_back {
                table.release_hold(id);
                woken.extend(table.pass_on(&key));
            }
            if table.granted.get(&id).is_some_and(Vec::is_empty) {
                table.granted.remove(&id);
            }
        }
        for (id, due) in woken {
            self.shared.scheduler.schedule(id, Some(due));
        }
    }

    /// Whether request `id` waits in a lane (parked or granted): the lanes run it when its
    /// turn comes, so the scheduler need not.
    pub fn holds(&self, id: u64) -> bool {
        self.shared.lock().held.contains_key(&id)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Table {
    /// Takes request `id`'s grant in lane `key`, if it has one.
    fn claim(&mut self, id: u64, key: &LaneKey) -> bool {
        let Some(keys) = self.granted.get_mut(&id) else {
            return false;
        };
        let Some(at) = keys.iter().position(|k| k == key) else {
            return false;
        };
        keys.swap_remove(at);
        if keys.is_empty() {
            self.granted.remove(&id);
        }
        self.release_hold(id);
        true
    }

    fn release_hold(&mut self, id: u64) {
        if let Some(n) = self.held.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&id);
            }
        }
    }

    /// A slot of lane `key` is free: grants it to the head of the FIFO (returned, to be
    /// woken) or frees it.
    fn pass_on(&mut self, key: &LaneKey) -> Option<(u64, u64)> {
        let fifo = self.lanes.get_mut(key)?;
        match fifo.parked.pop_front() {
            Some((id, due)) => {
                fifo.parked_ids.remove(&id);
                // Still held: parked becomes granted.
                self.granted.entry(id).or_default().push(key.clone());
                Some((id, due))
            }
            None => {
                fifo.taken = fifo.taken.saturating_sub(1);
                None
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let woken = self.shared.lock().pass_on(&self.key);
        if let Some((id, due)) = woken {
            self.shared.scheduler.schedule(id, Some(due.min(now_ms())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(endpoint: &str, first_attempt: bool) -> LaneKey {
        LaneKey {
            endpoint: endpoint.into(),
            first_attempt,
        }
    }

    fn admitted(entry: Entry) -> Permit {
        match entry {
            Entry::Admitted(p) => p,
            Entry::Parked => panic!("parked"),
        }
    }

    fn parked(entry: Entry) -> bool {
        matches!(entry, Entry::Parked)
    }

    /// A full lane parks, the other lane of the same endpoint and other endpoints do not;
    /// a freed slot goes to the head of the FIFO (woken through the scheduler), which
    /// claims it, and a newcomer cannot take it first.
    #[tokio::test]
    async fn a_freed_slot_goes_to_the_head_of_the_fifo() {
        let (handle, mut inbox) = crate::scheduler::channel();
        let lanes = Lanes::new(2, handle);
        let a = key("a", false);
        let p1 = admitted(lanes.enter(&a, 1, 10));
        let _p2 = admitted(lanes.enter(&a, 2, 10));
        assert!(parked(lanes.enter(&a, 3, 30)));
        assert!(parked(lanes.enter(&a, 4, 40)));
        assert!(parked(lanes.enter(&a, 3, 30)), "parked once, still waiting");
        assert!(lanes.holds(3) && lanes.holds(4) && !lanes.holds(1));
        admitted(lanes.enter(&key("a", true), 5, 10));
        admitted(lanes.enter(&key("b", false), 6, 10));

        drop(p1);
        assert_eq!(inbox.try_next(), Some((3, 30)), "the head is woken");
        assert!(parked(lanes.enter(&a, 7, 70)), "a newcomer waits behind");
        let p3 = admitted(lanes.enter(&a, 3, 30));
        assert!(!lanes.holds(3));
        drop(p3);
        assert_eq!(inbox.try_next(), Some((4, 40)));
        assert_eq!(inbox.try_next(), None);
    }

    /// A grant the request does not claim (it had nothing due there any more) is passed
    /// on to the next in line; one it keeps waits for it.
    #[tokio::test]
    async fn an_unclaimed_grant_is_passed_on() {
        let (handle, mut inbox) = crate::scheduler::channel();
        let lanes = Lanes::new(1, handle);
        let a = key("a", true);
        let p1 = admitted(lanes.enter(&a, 1, 10));
        assert!(parked(lanes.enter(&a, 2, 20)));
        assert!(parked(lanes.enter(&a, 3, 30)));
        drop(p1);
        assert_eq!(inbox.try_next(), Some((2, 20)));
        lanes.forfeit(2, std::slice::from_ref(&a));
        assert!(
            lanes.holds(2),
            "a request still due on the lane keeps its grant"
        );
        lanes.forfeit(2, &[]);
        assert!(!lanes.holds(2));
        assert_eq!(inbox.try_next(), Some((3, 30)), "passed on");
        drop(admitted(lanes.enter(&a, 3, 30)));
        assert_eq!(inbox.try_next(), None);
        admitted(lanes.enter(&a, 9, 90));
    }
}
