//! Property tests of the life cycle: random event sequences against the transition table,
//! and random engine-like rounds against the record rules. The table-driven tests in
//! `job::tests` check each pair once; these check that walks of any length stay on it.

use std::collections::HashSet;

use proptest::prelude::*;

use super::tests::{EVENTS, allowed};
use super::{
    AiResult, AttemptResult, CallbackData, ChannelId, Delivery, DeliveryOutcome, Event, Failure,
    InvalidTransition, ProjectId, Request, State, WorkflowSnapshot,
};

/// The states the table reaches from `from`, found without calling [`State::on`].
fn reachable(from: State) -> HashSet<State> {
    let mut seen = HashSet::from([from]);
    let mut todo = vec![from];
    while let Some(state) = todo.pop() {
        for next in EVENTS.iter().filter_map(|&e| allowed(state, e)) {
            if seen.insert(next) {
                todo.push(next);
            }
        }
    }
    seen
}

/// A move from `before` to `after` is the table's, or no move.
fn on_table(before: State, after: State) -> bool {
    before == after || EVENTS.iter().any(|&e| allowed(before, e) == Some(after))
}

fn event() -> impl Strategy<Value = Event> {
    prop::sample::select(EVENTS.to_vec())
}

/// A request as `accept` stores it; `event_driven` gives its workflow an `event_name`.
pub(crate) fn accepted(event_driven: bool) -> Request {
    let mut r = Request::pending(
        (1, ChannelId::from_bytes([7; 16])),
        ProjectId::from_bytes([9; 16]),
        WorkflowSnapshot {
            name: "content_generator".into(),
            event_name: event_driven.then(|| "content_ready".into()),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            testing: false,
            response_delay_ms: 0,
            callback_timeout_ms: None,
            structured_output_id: None,
            schema: None,
            sample_data: None,
            system_prompt: None,
            fallbacks: Vec::new(),
        },
        r#"[{"role":"user","content":"hi"}]"#.into(),
        "{}".into(),
        None,
        false,
        1_000,
    );
    r.due_ms = r.next_due();
    r
}

/// One thing the engine may do to a record, with the inputs it would have.
#[derive(Debug, Clone)]
enum Op {
    /// The model answered (or failed); the result goes to `endpoints` deliveries.
    Model {
        ok: bool,
        endpoints: usize,
    },
    /// A webhook attempt of delivery `index` (past the end: an unknown `webhook-id`);
    /// `retry_in` is what the schedule has left.
    Attempt {
        index: usize,
        delivered: bool,
        retry_in: Option<u64>,
    },
    Settle,
    Callback {
        error: bool,
    },
    TimeOut,
    Push,
    Redrive {
        index: usize,
    },
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (any::<bool>(), 0..4usize).prop_map(|(ok, endpoints)| Op::Model { ok, endpoints }),
        3 => (0..4usize, any::<bool>(), prop::option::of(1..100_000u64)).prop_map(
            |(index, delivered, retry_in)| Op::Attempt {
                index,
                delivered,
                retry_in
            }
        ),
        1 => Just(Op::Settle),
        1 => any::<bool>().prop_map(|error| Op::Callback { error }),
        1 => Just(Op::TimeOut),
        1 => Just(Op::Push),
        1 => (0..4usize).prop_map(|index| Op::Redrive { index }),
        1 => (1..600_000u64).prop_map(Op::Wait),
    ]
}

const CALLBACK_TIMEOUT_MS: u64 = 300_000;

fn webhook_id(index: usize) -> String {
    format!("msg_{index}")
}

/// One rule call took the record from `from` to `r`: if the rule refused, nothing changed;
/// either way the state moved only along the table.
fn step(r: &Request, applied: bool, from: &Request) -> Result<(), TestCaseError> {
    if !applied {
        prop_assert_eq!(r, from, "a refused rule changed the record");
    }
    prop_assert!(
        on_table(from.state, r.state),
        "{:?} -> {:?} is not on the table",
        from.state,
        r.state
    );
    Ok(())
}

/// Applies `op` as the engine would (the rule, then `settle` where the engine settles),
/// checking that every refused rule left the record as it was and every accepted one moved
/// the state along the table. Returns whether the record changed.
fn run(r: &mut Request, op: &Op, now: u64) -> Result<bool, TestCaseError> {
    let before = r.clone();
    match op {
        Op::Model { ok, endpoints } => {
            let deliveries: Vec<Delivery> = (0..*endpoints)
                .map(|i| Delivery {
                    webhook_id: webhook_id(i),
                    endpoint_id: format!("wh_{i}"),
                    url: format!("https://backend.example.com/{i}"),
                    attempts: 0,
                    next_ms: Some(now),
                    outcome: DeliveryOutcome::Pending,
                    last_status: None,
                    last_error: None,
                })
                .collect();
            let applied = if *ok {
                let ai = AiResult {
                    data: "{}".into(),
                    provider: "openai".into(),
                    model: "gpt-4o".into(),
                    prompt_tokens: 1,
                    completion_tokens: 1,
                    duration_ms: 1,
                    generated_ms: now,
                };
                r.record_ai_success(ai, deliveries, now).is_ok()
            } else {
                // Event-driven workflows have nothing for a backend to call back about.
                let deliveries = if r.awaits_callback() {
                    Vec::new()
                } else {
                    deliveries
                };
                r.record_ai_failure("model failed".into(), deliveries, now)
                    .is_ok()
            };
            step(r, applied, &before)?;
            let mid = r.clone();
            let settled = r.settle(now, CALLBACK_TIMEOUT_MS).is_some();
            step(r, settled, &mid)?;
        }
        Op::Attempt {
            index,
            delivered,
            retry_in,
        } => {
            let result = AttemptResult {
                delivered: *delivered,
                status: Some(if *delivered { 200 } else { 500 }),
                error: (!delivered).then(|| "HTTP 500".into()),
            };
            let id = webhook_id(*index);
            let attempted = r
                .record_attempt(&id, &result, now, |_| retry_in.map(|d| now + d))
                .is_ok();
            step(r, attempted, &before)?;
            if attempted {
                let (was, is) = (&before.deliveries[*index], &r.deliveries[*index]);
                prop_assert_eq!(was.outcome, DeliveryOutcome::Pending);
                prop_assert_eq!(is.attempts, was.attempts + 1);
                for (i, (was, is)) in before.deliveries.iter().zip(&r.deliveries).enumerate() {
                    prop_assert!(i == *index || was == is, "attempt touched delivery {}", i);
                }
            }
            let mid = r.clone();
            let settled = r.settle(now, CALLBACK_TIMEOUT_MS).is_some();
            step(r, settled, &mid)?;
        }
        Op::Settle => {
            let settled = r.settle(now, CALLBACK_TIMEOUT_MS).is_some();
            step(r, settled, &before)?;
        }
        Op::Callback { error } => {
            // The engine answers 409 before any rule for standard workflows.
            if r.awaits_callback() {
                let event = if *error {
                    Event::CallbackErrored
                } else {
                    Event::CallbackReceived
                };
                let applied = r.apply(event, now).is_ok();
                if applied {
                    r.callback = Some(CallbackData {
                        data: if *error { "null" } else { "{}" }.into(),
                        task_id: None,
                        metadata: None,
                        error: error.then(|| ("failed".into(), "no".into())),
                        received_ms: now,
                    });
                }
                step(r, applied, &before)?;
            }
        }
        Op::TimeOut => {
            if r.callback_deadline_ms.is_some_and(|t| t <= now) {
                let applied = r.apply(Event::CallbackTimedOut, now).is_ok();
                step(r, applied, &before)?;
            }
        }
        Op::Push => {
            let applied = r.apply(Event::Pushed, now).is_ok();
            step(r, applied, &before)?;
        }
        Op::Redrive { index } => {
            let redriven = r.redrive(&webhook_id(*index), now).is_ok();
            step(r, redriven, &before)?;
            if redriven {
                let d = &r.deliveries[*index];
                let was_dead = matches!(
                    before.deliveries[*index].outcome,
                    DeliveryOutcome::DeadLettered { .. }
                );
                prop_assert!(was_dead, "re-drove a delivery that was not dead-lettered");
                prop_assert_eq!(
                    (d.outcome, d.attempts, d.next_ms),
                    (DeliveryOutcome::Pending, 0, Some(now))
                );
            }
        }
        Op::Wait(_) => {}
    }
    Ok(*r != before)
}

/// What holds of every record between two rounds of the engine.
fn check_record(r: &Request) -> Result<(), TestCaseError> {
    for d in &r.deliveries {
        prop_assert_eq!(
            d.outcome == DeliveryOutcome::Pending,
            d.next_ms.is_some(),
            "delivery {} is {:?} with next_ms {:?}",
            &d.webhook_id,
            d.outcome,
            d.next_ms
        );
    }
    prop_assert_eq!(
        r.next_due().is_none(),
        r.state.is_terminal() && !r.has_pending_delivery(),
        "next_due {:?} in state {:?}",
        r.next_due(),
        r.state
    );
    prop_assert_eq!(r.failed_ms.is_some(), matches!(r.state, State::Failed(_)));
    if r.state == State::Delivered {
        prop_assert!(r.callback_deadline_ms.is_some());
    }
    if r.state == State::Callback || (r.state == State::Completed && r.awaits_callback()) {
        prop_assert!(r.callback.is_some());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// From `pending`, any sequence of events, applying those `on` accepts, follows the
    /// table: only reachable states, terminal states left only by a re-drive of
    /// `webhook_exhausted`, `completed` entered only from `callback` or `generated`, and a
    /// refused event changes neither the state nor the record it is applied to.
    #[test]
    fn random_event_sequences_stay_on_the_table(events in prop::collection::vec(event(), 0..64)) {
        let reachable = reachable(State::Pending);
        let mut state = State::Pending;
        let mut record = accepted(true);
        for (now, event) in (2_000u64..).zip(events) {
            let before = record.clone();
            match state.on(event) {
                Ok(next) => {
                    prop_assert_eq!(allowed(state, event), Some(next));
                    prop_assert!(reachable.contains(&next), "{:?} is not reachable", next);
                    if state.is_terminal() {
                        prop_assert_eq!(
                            (state, event, next),
                            (State::Failed(Failure::WebhookExhausted), Event::Redriven, State::Generated)
                        );
                    }
                    if next == State::Completed {
                        prop_assert!(matches!(state, State::Callback | State::Generated));
                    }
                    prop_assert_eq!(record.apply(event, now), Ok(next));
                    prop_assert_eq!(record.state, next);
                    if matches!(next, State::Failed(_)) {
                        prop_assert_eq!(record.failed_ms, Some(now));
                    } else {
                        prop_assert_eq!(record.failed_ms, before.failed_ms);
                    }
                    state = next;
                }
                Err(err) => {
                    prop_assert_eq!(allowed(state, event), None);
                    prop_assert_eq!(err, InvalidTransition { state, event });
                    prop_assert_eq!(record.apply(event, now), Err(err));
                    prop_assert_eq!(&record, &before);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Random rounds of the engine's rules (model results, webhook attempts, settling,
    /// callbacks, timeouts, pushes, re-drives) keep every record consistent: a delivery is
    /// pending exactly when it has a next attempt time, `next_due` is `None` only for a
    /// terminal request with nothing pending, `failed_ms` is set exactly when failed, a
    /// `delivered` request has a callback deadline, and states move only along the table.
    #[test]
    fn engine_rounds_keep_records_consistent(
        event_driven in any::<bool>(),
        ops in prop::collection::vec(op(), 1..48),
    ) {
        let mut r = accepted(event_driven);
        let mut now = r.created_ms;
        check_record(&r)?;
        for op in &ops {
            if let Op::Wait(ms) = op {
                now += ms;
            }
            if run(&mut r, op, now)? {
                // What `Store::update` does with every accepted change.
                r.updated_ms = now.max(r.updated_ms);
                r.due_ms = r.next_due();
            }
            check_record(&r)?;
        }
    }
}

/// Every state of the table is reachable from `pending`, so the walks above can visit
/// them all.
#[test]
fn every_state_is_reachable_from_pending() {
    assert_eq!(reachable(State::Pending), State::ALL.into_iter().collect());
}
