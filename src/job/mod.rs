//! The life cycle of one request: its states, the events that move it, and the pure
//! transition function between them.
//!
//! ```text
//! accept ─► pending ─(AI done)─► generated ─(webhook 2xx)─► delivered ─(callback)─► callback ─(pushed)─► completed
//!              │                    │                             │
//!              └─ failed(ai_failed) └─ failed(webhook_exhausted)  └─ failed(callback_error | callback_timeout)
//! ```
//!
//! Nothing here does I/O: the engine reads a record, asks [`State::on`] whether an event
//! may move it, and persists the answer. Keeping the rules in one table makes them testable
//! pair by pair and keeps "what may happen" apart from "how it is made durable".

mod id;
#[cfg(test)]
pub(crate) mod props;
mod record;
mod rules;

pub use id::{ChannelId, InvalidId, ProjectId};
pub use record::{
    AiAttemptLog, AiResult, AttemptLog, CallbackData, DeadLetter, Delivery, DeliveryOutcome,
    Request, Step, WorkflowSnapshot,
};
pub use rules::{AttemptEffect, AttemptResult, StaleAttempt};

use bincode::{Decode, Encode};

/// Where a request is in its life. Persisted inside [`Request`]; clients and operators
/// see its [`Status`] (`as_str`) and, when it failed, its [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum State {
    /// Accepted and durable; the model has not answered yet.
    Pending,
    /// The model's result is recorded; webhooks are being delivered.
    Generated,
    /// A webhook was acknowledged with a 2xx; the backend's callback is awaited.
    Delivered,
    /// The backend's callback is recorded; the final push is due.
    Callback,
    /// Terminal: the final result was pushed.
    Completed,
    /// Terminal: the request failed for the given reason.
    Failed(Failure),
}

/// Why a request failed. Each is also the `error.code` pushed to the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Failure {
    AiFailed,
    WebhookExhausted,
    CallbackError,
    CallbackTimeout,
}

/// Something that happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The model produced a result.
    AiSucceeded,
    /// Every model attempt failed.
    AiFailed,
    /// A webhook delivery was acknowledged. `awaits_callback` is true for workflows with an
    /// `event_name` (the backend will call back) and false for standard ones, which are done
    /// once their webhooks are.
    WebhookDelivered { awaits_callback: bool },
    /// Every delivery of the request ran out of attempts without a 2xx.
    WebhookExhausted,
    /// The backend called back with data.
    CallbackReceived,
    /// The backend called back with an error payload.
    CallbackErrored,
    /// The callback did not arrive before its deadline.
    CallbackTimedOut,
    /// The final result was pushed to the request's channel.
    Pushed,
    /// An operator re-drove a dead-lettered delivery of a request that had failed for
    /// want of a delivery: it goes back to waiting for a 2xx.
    Redriven,
}

/// An event that the current state does not allow. The engine treats it as "someone else
/// already moved this request", never as a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} is not allowed in state {state:?}")]
pub struct InvalidTransition {
    pub state: State,
    pub event: Event,
}

impl State {
    /// Every state, each failure apart, in life-cycle order.
    pub const ALL: [State; 9] = [
        State::Pending,
        State::Generated,
        State::Delivered,
        State::Callback,
        State::Completed,
        State::Failed(Failure::AiFailed),
        State::Failed(Failure::WebhookExhausted),
        State::Failed(Failure::CallbackError),
        State::Failed(Failure::CallbackTimeout),
    ];

    /// The state after `event`, or why the event does not apply.
    pub fn on(self, event: Event) -> Result<State, InvalidTransition> {
        use Event as E;
        use State as S;
        let next = match (self, event) {
            (S::Pending, E::AiSucceeded) => S::Generated,
            (S::Pending, E::AiFailed) => S::Failed(Failure::AiFailed),

            (
                S::Generated,
                E::WebhookDelivered {
                    awaits_callback: true,
                },
            ) => S::Delivered,
            (
                S::Generated,
                E::WebhookDelivered {
                    awaits_callback: false,
                },
            ) => S::Completed,
            (S::Generated, E::WebhookExhausted) => S::Failed(Failure::WebhookExhausted),
            // The backend may answer before eddy has recorded the webhook's 2xx.
            (S::Generated, E::CallbackReceived) => S::Callback,
            (S::Generated, E::CallbackErrored) => S::Failed(Failure::CallbackError),

            (S::Delivered, E::CallbackReceived) => S::Callback,
            (S::Delivered, E::CallbackErrored) => S::Failed(Failure::CallbackError),
            (S::Delivered, E::CallbackTimedOut) => S::Failed(Failure::CallbackTimeout),

            (S::Callback, E::Pushed) => S::Completed,

            // The one way out of a terminal state: an operator retries the dead letter.
            (S::Failed(Failure::WebhookExhausted), E::Redriven) => S::Generated,

            (state, event) => return Err(InvalidTransition { state, event }),
        };
        Ok(next)
    }

    /// Completed and failed requests never move again on their own (only an operator's
    /// re-drive of a dead letter revives a `webhook_exhausted` one).
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Completed | State::Failed(_))
    }

    /// The state without its failure reason.
    pub fn status(self) -> Status {
        match self {
            State::Pending => Status::Pending,
            State::Generated => Status::Generated,
            State::Delivered => Status::Delivered,
            State::Callback => Status::Callback,
            State::Completed => Status::Completed,
            State::Failed(_) => Status::Failed,
        }
    }

    /// The name clients and operators see: its status's.
    pub fn as_str(self) -> &'static str {
        self.status().as_str()
    }

    /// Why the request failed, if it did.
    pub fn failure(self) -> Option<Failure> {
        match self {
            State::Failed(f) => Some(f),
            _ => None,
        }
    }
}

/// A state as requests are listed, filtered and counted by it: the one place its names
/// are spelled (the console's `status` filter, the CLI, the views, the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    Generated,
    Delivered,
    Callback,
    Completed,
    Failed,
}

impl Status {
    /// Every status, in life-cycle order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Generated,
        Status::Delivered,
        Status::Callback,
        Status::Completed,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Generated => "generated",
            Status::Delivered => "delivered",
            Status::Callback => "callback",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

/// A name that is no [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not one of {names}", names = Status::ALL.map(Status::as_str).join(", "))]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(name: &str) -> Result<Status, UnknownStatus> {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownStatus(name.to_string()))
    }
}

impl Failure {
    /// The `error.code` of the browser push and the `failure` of the request view.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::AiFailed => "ai_failed",
            Failure::WebhookExhausted => "webhook_exhausted",
            Failure::CallbackError => "callback_error",
            Failure::CallbackTimeout => "callback_timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const EVENTS: [Event; 10] = [
        Event::AiSucceeded,
        Event::AiFailed,
        Event::WebhookDelivered {
            awaits_callback: true,
        },
        Event::WebhookDelivered {
            awaits_callback: false,
        },
        Event::WebhookExhausted,
        Event::CallbackReceived,
        Event::CallbackErrored,
        Event::CallbackTimedOut,
        Event::Pushed,
        Event::Redriven,
    ];

    /// The allowed transitions, written out once by hand; every pair not listed must fail.
    pub(super) fn allowed(state: State, event: Event) -> Option<State> {
        use Event as E;
        use Failure as F;
        use State as S;
        let table: &[(S, E, S)] = &[
            (S::Pending, E::AiSucceeded, S::Generated),
            (S::Pending, E::AiFailed, S::Failed(F::AiFailed)),
            (
                S::Generated,
                E::WebhookDelivered {
                    awaits_callback: true,
                },
                S::Delivered,
            ),
            (
                S::Generated,
                E::WebhookDelivered {
                    awaits_callback: false,
                },
                S::Completed,
            ),
            (
                S::Generated,
                E::WebhookExhausted,
                S::Failed(F::WebhookExhausted),
            ),
            (S::Generated, E::CallbackReceived, S::Callback),
            (
                S::Generated,
                E::CallbackErrored,
                S::Failed(F::CallbackError),
            ),
            (S::Delivered, E::CallbackReceived, S::Callback),
            (
                S::Delivered,
                E::CallbackErrored,
                S::Failed(F::CallbackError),
            ),
            (
                S::Delivered,
                E::CallbackTimedOut,
                S::Failed(F::CallbackTimeout),
            ),
            (S::Callback, E::Pushed, S::Completed),
            (S::Failed(F::WebhookExhausted), E::Redriven, S::Generated),
        ];
        table
            .iter()
            .find(|(s, e, _)| *s == state && *e == event)
            .map(|(_, _, next)| *next)
    }

    /// Every (state, event) pair gives exactly the table's answer: the listed next state, or
    /// an `InvalidTransition` naming the pair.
    #[test]
    fn every_state_event_pair_follows_the_table() {
        let mut allowed_pairs = 0;
        for state in State::ALL {
            for event in EVENTS {
                match (allowed(state, event), state.on(event)) {
                    (Some(want), Ok(got)) => {
                        assert_eq!(got, want, "{state:?} + {event:?}");
                        allowed_pairs += 1;
                    }
                    (None, Err(err)) => assert_eq!(err, InvalidTransition { state, event }),
                    (want, got) => panic!("{state:?} + {event:?}: want {want:?}, got {got:?}"),
                }
            }
        }
        assert_eq!(allowed_pairs, 12);
    }

    /// Every status's name reads back as that status, every state has one, and an unknown
    /// name is refused with the names there are.
    #[test]
    fn status_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
        for state in State::ALL {
            assert!(Status::ALL.contains(&state.status()), "{state:?}");
        }
        let err = "done".parse::<Status>().unwrap_err().to_string();
        assert_eq!(
            err,
            "'done' is not one of pending, generated, delivered, callback, completed, failed"
        );
    }

    /// Terminal states accept no event but an operator's re-drive of a request that
    /// failed for want of a delivery.
    #[test]
    fn terminal_states_never_move_on_their_own() {
        for state in State::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in EVENTS {
                let revived =
                    state == State::Failed(Failure::WebhookExhausted) && event == Event::Redriven;
                assert_eq!(state.on(event).is_ok(), revived, "{state:?} on {event:?}");
            }
        }
    }
}
