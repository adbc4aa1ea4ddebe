//! The due half of the record rules (issue 14's rule on JetStream, see `records`): how a
//! record's due time is kept (a work message for work due when written, a due key for
//! work due later), the due keys, and the job a round holds while it drives a request.

use std::cell::Cell;

use crate::cluster::key;
use crate::job::Request;

/// How the cluster keeps a record's due time (issue 14's rule, see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing due.
    Never,
    /// Due when written: a work message, no key.
    Now(u64),
    /// Due after its write: a due key.
    Later(u64),
}

impl Due {
    /// The due time `record` carries, and how it is kept.
    pub fn of(record: &Request) -> Due {
        match record.due_ms {
            None => Due::Never,
            Some(due) if due <= record.updated_ms => Due::Now(due),
            Some(due) => Due::Later(due),
        }
    }
}

/// The due-index key of `(due_ms, id)`: the minute first, so one minute lists by prefix.
pub fn due_key(due_ms: u64, id: u64) -> String {
    format!(
        "{}.{}.{}",
        key::num(due_ms / 60_000),
        key::num(due_ms),
        key::num(id)
    )
}

pub(super) fn split_due_key(k: &str) -> Option<(u64, u64)> {
    let mut tokens = k.split('.').skip(1);
    let due = key::parse_num(tokens.next()?)?;
    let id = key::parse_num(tokens.next()?)?;
    Some((due, id))
}

pub(super) fn entry_due(due: Due) -> Option<u64> {
    match due {
        Due::Never => None,
        Due::Now(at) | Due::Later(at) => Some(at),
    }
}

tokio::task_local! {
    /// The job the current task holds (see [`holding`]), and whether its round has read
    /// the write that published it.
    static HOLDING: (Held, Cell<bool>);
}

/// The job a round holds: its request, due time, and whether a write published it.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub id: u64,
    pub due_ms: u64,
    pub by_write: bool,
}

/// Runs `round` as the holder of a job of request `held.id`. A write it makes that leaves
/// the request due now publishes no message: the round goes on with that work itself, and
/// the message it holds is acknowledged only after it ends (or handed back, or
/// redelivered if its node dies), so the work is never without a message, and no second
/// node starts the same step meanwhile. Its reads of the record are the leader's, and a
/// job published by a write shows no record until that write is visible (see
/// [`super::Records::request`]).
pub async fn holding<F: std::future::Future>(held: Held, round: F) -> F::Output {
    HOLDING
        .scope((held, Cell::new(!held.by_write)), round)
        .await
}

/// The job held for request `id`, and whether the write that published it was read.
pub(super) fn holder(id: u64) -> Option<(Held, bool)> {
    HOLDING
        .try_with(|(held, seen)| (*held, seen.get()))
        .ok()
        .filter(|(h, _)| h.id == id)
}

/// The round has read a record that shows the write that published its job.
pub(super) fn seen_write() {
    let _ = HOLDING.try_with(|(_, seen)| seen.set(true));
}

pub(super) fn held(id: u64) -> bool {
    holder(id).is_some()
}
