//! The persisted shape of a request and of its timeline steps.
//!
//! These types derive bincode's `Encode`/`Decode` and nothing else: they are the on-disk
//! format (behind the store's version byte), not the wire format. The HTTP layer converts
//! them to JSON views. JSON-valued fields (messages, metadata, model output) are kept as
//! JSON text: bincode cannot carry a self-describing `serde_json::Value`, and the text is
//! exactly what clients sent or will receive.

use bincode::{Decode, Encode};

use super::{ChannelId, Failure, ProjectId, State};

/// One asynchronous request: the truth that every index and timer is derived from.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Request {
    /// Store-assigned, monotonic; the key of the record.
    pub id: u64,
    /// The public id (UUID v4) used in URLs, frames and payloads.
    pub channel_id: ChannelId,
    pub project_id: ProjectId,
    /// The workflow as it was when the request was accepted, so edits and deletes of the
    /// workflow never change a request in flight.
    pub workflow: WorkflowSnapshot,
    /// The `messages` array as JSON text.
    pub messages: String,
    /// The `customer_data` object as JSON text: metadata plus cached fields.
    pub customer_data: String,
    /// A per-request webhook URL, used instead of the project's endpoints.
    pub webhook_url: Option<String>,
    /// `test_mode: true` on the request: never call a real model.
    pub test_mode: bool,
    pub state: State,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The due-index entry this record owns, always equal to [`Request::next_due`] once
    /// stored; kept so the store can delete the old index key when it moves.
    pub due_ms: Option<u64>,
    pub ai: Option<AiResult>,
    /// A human-readable reason when the request failed.
    pub error_message: Option<String>,
    /// When the request failed; the timestamp of error payloads.
    pub failed_ms: Option<u64>,
    /// One per webhook endpoint the result goes to.
    pub deliveries: Vec<Delivery>,
    pub callback: Option<CallbackData>,
    /// When an awaited callback times out.
    pub callback_deadline_ms: Option<u64>,
    /// Every model attempt (retries and fallbacks included), for `meta.attempts`.
    pub ai_attempts: Vec<AiAttemptLog>,
}

/// What a request needs of its workflow, frozen at accept time.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct WorkflowSnapshot {
    pub name: String,
    pub event_name: Option<String>,
    pub provider: String,
    pub model: String,
    /// Test mode: `mode: "testing"` or provider `testing`.
    pub testing: bool,
    pub response_delay_ms: u64,
    pub callback_timeout_ms: Option<u64>,
    pub structured_output_id: Option<String>,
    /// The structured output's JSON schema, as JSON text.
    pub schema: Option<String>,
    /// The structured output's sample data, as JSON text; test mode returns it.
    pub sample_data: Option<String>,
    pub system_prompt: Option<String>,
    /// `(provider, model)` pairs tried in order after the primary fails.
    pub fallbacks: Vec<(String, String)>,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct AiResult {
    /// The result object as JSON text (`ai_response.data`).
    pub data: String,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub duration_ms: u64,
    /// When the result was recorded; the webhook payload's `timestamp`, so every retry
    /// carries the same body.
    pub generated_ms: u64,
}

/// One model attempt, as `meta.attempts` shows it.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct AiAttemptLog {
    pub provider: String,
    pub model: String,
    /// Why it failed; `None` for the attempt that succeeded.
    pub error: Option<String>,
    /// The provider's HTTP status when it answered with an error.
    pub http_status: Option<u16>,
    pub at_ms: u64,
    pub duration_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The webhook of one request to one endpoint, across all its attempts.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Delivery {
    /// `webhook-id`: stable across retries and restarts.
    pub webhook_id: String,
    /// The endpoint (`wh_…`), or `request` for the request's own `webhook_url`.
    pub endpoint_id: String,
    pub url: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due; `None` once the delivery is settled.
    pub next_ms: Option<u64>,
    pub outcome: DeliveryOutcome,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum DeliveryOutcome {
    Pending,
    Succeeded { at_ms: u64 },
    DeadLettered { at_ms: u64 },
}

/// What the backend posted to the callback URL.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct CallbackData {
    /// `data` as JSON text (`null` for an error callback).
    pub data: String,
    pub task_id: Option<String>,
    /// `metadata` as JSON text.
    pub metadata: Option<String>,
    /// `(error, message)` of an error callback.
    pub error: Option<(String, String)>,
    pub received_ms: u64,
}

/// One entry of a request's timeline. Stored in its own tree, appended, never rewritten.
/// `Received` is not stored: [`Request::timeline_with`] adds it from `created_ms`.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Step {
    Received {
        workflow: String,
    },
    AiAttempt {
        provider: String,
        model: String,
        error: Option<String>,
        /// The provider's HTTP status when it answered with an error.
        http_status: Option<u16>,
        duration_ms: u64,
        prompt_tokens: u64,
        completion_tokens: u64,
        /// What was sent to the provider (no key: keys go in headers), cut at 20 kB.
        request_body: Option<String>,
        /// What the provider answered, cut at 20 kB.
        response_body: Option<String>,
    },
    WebhookAttempt {
        webhook_id: String,
        endpoint_id: String,
        attempt: u32,
        status: Option<u16>,
        error: Option<String>,
        duration_ms: u64,
        response_excerpt: String,
    },
    DeadLettered {
        webhook_id: String,
        endpoint_id: String,
        reason: String,
    },
    /// An operator retried a dead-lettered delivery.
    Redriven {
        webhook_id: String,
        endpoint_id: String,
    },
    CallbackReceived {
        body: String,
    },
    CallbackError {
        error: String,
        message: String,
    },
    CallbackTimeout {
        after_ms: u64,
    },
    Pushed {
        status: String,
        sockets: u32,
    },
    Transition {
        state: State,
    },
}

impl Request {
    /// A new `pending` request, accepted at `now_ms`. `messages` and `customer_data` are
    /// JSON text.
    #[allow(clippy::too_many_arguments)]
    pub fn pending(
        (id, channel_id): (u64, ChannelId),
        project_id: ProjectId,
        workflow: WorkflowSnapshot,
        messages: String,
        customer_data: String,
        webhook_url: Option<String>,
        test_mode: bool,
        now_ms: u64,
    ) -> Request {
        Request {
            id,
            channel_id,
            project_id,
            workflow,
            messages,
            customer_data,
            webhook_url,
            test_mode,
            state: State::Pending,
            created_ms: now_ms,
            updated_ms: now_ms,
            due_ms: None,
            ai: None,
            error_message: None,
            failed_ms: None,
            deliveries: Vec::new(),
            callback: None,
            callback_deadline_ms: None,
            ai_attempts: Vec::new(),
        }
    }

    /// When the engine must next look at this request, derived from its state alone: the
    /// due index is this function applied to every record, so it can always be rebuilt.
    pub fn next_due(&self) -> Option<u64> {
        let mut due = match self.state {
            State::Pending | State::Callback => Some(self.updated_ms),
            // Generated with nothing left in flight: settle it (move it on or fail it).
            State::Generated if !self.has_pending_delivery() => Some(self.updated_ms),
            State::Delivered => self.callback_deadline_ms,
            _ => None,
        };
        for next in self.deliveries.iter().filter_map(|d| d.next_ms) {
            due = Some(due.map_or(next, |d| d.min(next)));
        }
        due
    }

    pub fn has_pending_delivery(&self) -> bool {
        self.deliveries
            .iter()
            .any(|d| d.outcome == DeliveryOutcome::Pending)
    }

    pub fn any_delivery_succeeded(&self) -> bool {
        self.deliveries
            .iter()
            .any(|d| matches!(d.outcome, DeliveryOutcome::Succeeded { .. }))
    }

    /// The whole timeline: the implied "received" step at `created_ms`, then `stored`.
    pub fn timeline_with(&self, stored: Vec<(u64, Step)>) -> Vec<(u64, Step)> {
        let mut all = Vec::with_capacity(stored.len() + 1);
        all.push((
            self.created_ms,
            Step::Received {
                workflow: self.workflow.name.clone(),
            },
        ));
        all.extend(stored);
        all
    }

    /// True for workflows with an `event_name`: the backend calls back.
    pub fn awaits_callback(&self) -> bool {
        self.workflow.event_name.is_some()
    }

    pub fn failure(&self) -> Option<Failure> {
        self.state.failure()
    }
}

/// A delivery that ran out of attempts, with everything needed to inspect and re-drive it.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct DeadLetter {
    pub request_id: u64,
    pub channel_id: ChannelId,
    pub project_id: ProjectId,
    pub webhook_id: String,
    pub endpoint_id: String,
    pub url: String,
    /// The exact body that was sent.
    pub payload: String,
    pub reason: String,
    pub attempts: Vec<AttemptLog>,
    pub dead_ms: u64,
}

/// One webhook attempt as the dead-letter queue shows it.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct AttemptLog {
    pub at_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub response_excerpt: String,
}
