//! Waiting for a condition, the one way the suite does it: poll a probe until it answers
//! `Ok`, sleeping a little longer between tries (10 ms up to 200 ms), and give up after a
//! deadline with what was last seen instead. Never a fixed sleep: a wait ends as soon as
//! the condition holds, so a loaded two-core machine makes a test slower, not flaky.
//!
//! A probe is an async closure returning `Result<T, S>`: `Ok(value)` ends the wait with
//! `value`; `Err(seen)` means "not yet" and `seen` (a view, a status, an error) is what a
//! timeout reports, so a failure says what the test was looking at.

use std::fmt::Debug;
use std::time::Duration;

use tokio::time::Instant;

use super::WAIT;

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// Polls `probe` until it answers `Ok` and returns that value; after `within`, the last
/// `Err` instead. For waits that must not panic (a fake backend's retries).
pub async fn poll<T, S>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, S>,
) -> Result<T, S> {
    let deadline = Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        let seen = match probe().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Waits up to [`WAIT`] for `probe` to answer `Ok`; returns its value. Panics naming
/// `what` and showing the last thing seen.
pub async fn eventually<T, S: Debug>(what: &str, probe: impl AsyncFnMut() -> Result<T, S>) -> T {
    match poll(WAIT, probe).await {
        Ok(value) => value,
        Err(seen) => panic!("timed out after {WAIT:?} waiting for {what}; last seen: {seen:#?}"),
    }
}

/// A probe's answer from a condition: `Ok(value)` when `done`, else `Err(value)`, what
/// was seen instead.
pub fn ok_if<T>(done: bool, value: T) -> Result<T, T> {
    if done { Ok(value) } else { Err(value) }
}
