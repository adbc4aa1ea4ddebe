//! The JSON bodies eddy sends about a request: webhook payloads (`task.ai_generated`,
//! `task.completed`) and WebSocket `response` payloads (`ai_generated`, `completed`,
//! `success`, `error`), all built from the stored record.
//!
//! One place builds them so that the webhook and the socket always say the same thing, and
//! so that a body is a pure function of the record: every retry of a delivery sends the
//! same bytes, and a browser joining late is sent exactly what a live one got. Output is
//! compact, and every JSON value stored as text (AI data, callback data, customer data) is
//! written as JavaScript prints it ([`js`]), so a whole body reads back byte for byte
//! through `JSON.stringify(JSON.parse(body))`: the seed's `mr-signature` check and
//! ModelRiver's `X-ModelRiver-Signature` check (over `JSON.stringify(body.data)`) hold for
//! every body, whatever the model answered.

pub mod js;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::clock::rfc3339_ms;
use crate::job::{Failure, Request, State};

/// Stored JSON text as JavaScript prints it; stored text is always valid JSON, `null`
/// otherwise.
fn raw(text: &str) -> Box<RawValue> {
    literal(&js::canonical(text).unwrap_or_else(|| "null".into()))
}

/// JSON text known to be valid, as a raw value.
fn literal(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).expect("canonical JSON is JSON")
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("payloads serialize")
}

#[derive(Serialize)]
pub struct Meta<'a> {
    pub workflow_name: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    /// The answer's time, every attempt included (the SDK shows it as the processing
    /// step's duration), and its tokens; absent before the model answered.
    #[serde(flatten)]
    pub spent: Option<Spent>,
    /// Every model attempt, retries and fallbacks included.
    pub attempts: Vec<AttemptMeta<'a>>,
}

/// What model calls spent: `duration_ms` and `usage`.
#[derive(Serialize)]
pub struct Spent {
    pub duration_ms: u64,
    pub usage: Usage,
}

impl Spent {
    fn new(duration_ms: u64, prompt_tokens: u64, completion_tokens: u64) -> Spent {
        Spent {
            duration_ms,
            usage: Usage::new(prompt_tokens, completion_tokens),
        }
    }
}

/// Token counts in OpenAI's shape.
#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// One entry of `meta.attempts`.
#[derive(Serialize)]
pub struct AttemptMeta<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    /// `success` or `error`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(flatten)]
    pub spent: Spent,
}

/// `meta.attempts` of `record`.
pub fn attempt_metas(record: &Request) -> Vec<AttemptMeta<'_>> {
    record
        .ai_attempts
        .iter()
        .map(|a| AttemptMeta {
            provider: &a.provider,
            model: &a.model,
            status: if a.error.is_some() {
                "error"
            } else {
                "success"
            },
            http_status: a.http_status,
            reason: a.error.as_deref(),
            spent: Spent::new(a.duration_ms, a.prompt_tokens, a.completion_tokens),
        })
        .collect()
}

/// `meta.attempts` of `record` as a JSON value.
pub fn attempts(record: &Request) -> serde_json::Value {
    serde_json::to_value(attempt_metas(record)).expect("attempts serialize")
}

fn meta(record: &Request) -> Meta<'_> {
    let (provider, model) = match &record.ai {
        Some(ai) => (ai.provider.as_str(), ai.model.as_str()),
        None => (
            record.workflow.provider.as_str(),
            record.workflow.model.as_str(),
        ),
    };
    Meta {
        workflow_name: &record.workflow.name,
        provider,
        model,
        spent: record
            .ai
            .as_ref()
            .map(|ai| Spent::new(ai.duration_ms, ai.prompt_tokens, ai.completion_tokens)),
        attempts: attempt_metas(record),
    }
}

#[derive(Serialize)]
struct DataWrap {
    data: Box<RawValue>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct AiGeneratedHook<'a> {
    r#type: &'static str,
    event: &'a str,
    channel_id: String,
    ai_response: DataWrap,
    /// The AI data again, at the top: ModelRiver's receivers sign `JSON.stringify(body.data)`
    /// and fall back to other forms when a body has none (see `signature`).
    data: Box<RawValue>,
    callback_url: String,
    callback_required: bool,
    customer_data: Box<RawValue>,
    meta: Meta<'a>,
    timestamp: String,
}

#[derive(Serialize)]
struct CompletedHook<'a> {
    r#type: &'static str,
    workflow: &'a str,
    status: &'static str,
    channel_id: String,
    /// The AI data; `{}` when the model failed (a `null` would be signed differently by
    /// ModelRiver's two receivers, see `signature`).
    data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody<'a>>,
    meta: Meta<'a>,
    customer_data: Box<RawValue>,
    timestamp: String,
}

/// The webhook body for `record`: `task.ai_generated` for workflows with an `event_name`,
/// `task.completed` otherwise. `public_url` is the base of `callback_url`.
pub fn webhook_body(record: &Request, public_url: &str) -> String {
    let channel_id = record.channel_id.to_string();
    let customer_data = raw(&record.customer_data);
    match (&record.workflow.event_name, &record.ai) {
        (Some(event), Some(ai)) => {
            let data = raw(&ai.data);
            encode(&AiGeneratedHook {
                r#type: "task.ai_generated",
                event,
                callback_url: format!("{public_url}/v1/callback/{channel_id}"),
                channel_id,
                ai_response: DataWrap { data: data.clone() },
                data,
                callback_required: true,
                customer_data,
                meta: meta(record),
                timestamp: rfc3339_ms(ai.generated_ms),
            })
        }
        (_, ai) => {
            let error = record.failure().map(|f| ErrorBody {
                code: f.as_str(),
                message: record.error_message.as_deref().unwrap_or(""),
            });
            let at = ai
                .as_ref()
                .map(|a| a.generated_ms)
                .or(record.failed_ms)
                .unwrap_or(record.created_ms);
            encode(&CompletedHook {
                r#type: "task.completed",
                workflow: &record.workflow.name,
                status: if ai.is_some() { "success" } else { "error" },
                channel_id,
                data: ai.as_ref().map_or_else(|| literal("{}"), |a| raw(&a.data)),
                error: if ai.is_some() { None } else { error },
                meta: meta(record),
                customer_data,
                timestamp: rfc3339_ms(at),
            })
        }
    }
}

/// The `status` of a WebSocket `response` payload: what the browser is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushStatus {
    /// The model answered; the backend is at work (event-driven workflows).
    AiGenerated,
    /// The backend's callback: the final result (event-driven workflows).
    Completed,
    /// The model's answer: the final result (standard workflows).
    Success,
    /// The request failed.
    Error,
}

impl PushStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PushStatus::AiGenerated => "ai_generated",
            PushStatus::Completed => "completed",
            PushStatus::Success => "success",
            PushStatus::Error => "error",
        }
    }
}

impl Serialize for PushStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A WebSocket `response` payload (JSON text) and its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub status: PushStatus,
    pub payload: String,
}

/// The model answered and the backend is at work: no data (the SDK treats this as a step
/// and notes that ModelRiver no longer sends `ai_response` in it; a page that showed the
/// model's raw answer here would drop the backend's enriched `completed` as a duplicate).
#[derive(Serialize)]
struct AiGeneratedPush<'a> {
    status: PushStatus,
    channel_id: String,
    event_name: &'a str,
    meta: Meta<'a>,
    customer_data: Box<RawValue>,
}

#[derive(Serialize)]
struct CompletedPush<'a> {
    status: PushStatus,
    channel_id: String,
    data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_metadata: Option<Box<RawValue>>,
    customer_data: Box<RawValue>,
    meta: Meta<'a>,
}

#[derive(Serialize)]
struct SuccessPush<'a> {
    status: PushStatus,
    channel_id: String,
    data: Box<RawValue>,
    meta: Meta<'a>,
    customer_data: Box<RawValue>,
}

#[derive(Serialize)]
struct ErrorPush<'a> {
    status: PushStatus,
    channel_id: String,
    error: ErrorBody<'a>,
    customer_data: Box<RawValue>,
}

/// The WebSocket `response` payload that reflects `record` now: what a browser should have
/// seen last. `None` while the model has not answered.
///
/// Standard workflows (no `event_name`) show `success` once the model answered: that is the
/// browser's final result, and a webhook that later runs out of attempts is an operator's
/// concern (dead-letter queue), not the browser's.
pub fn latest_push(record: &Request) -> Option<Push> {
    let channel_id = record.channel_id.to_string();
    let customer_data = raw(&record.customer_data);
    let ai = record.ai.as_ref();
    let event_name = record.workflow.event_name.as_deref();
    let (status, payload) = match (record.state, event_name, ai) {
        (State::Pending, _, _) => return None,
        (State::Failed(f), _, _) if !(f == Failure::WebhookExhausted && event_name.is_none()) => {
            let status = PushStatus::Error;
            (
                status,
                encode(&ErrorPush {
                    status,
                    channel_id,
                    error: ErrorBody {
                        code: f.as_str(),
                        message: record.error_message.as_deref().unwrap_or(""),
                    },
                    customer_data,
                }),
            )
        }
        (State::Callback | State::Completed, Some(_), _) => {
            let cb = record.callback.as_ref();
            let status = PushStatus::Completed;
            (
                status,
                encode(&CompletedPush {
                    status,
                    channel_id,
                    data: cb.map_or_else(|| literal("null"), |c| raw(&c.data)),
                    task_id: cb.and_then(|c| c.task_id.as_deref()),
                    callback_metadata: cb.and_then(|c| c.metadata.as_deref()).map(raw),
                    customer_data,
                    meta: meta(record),
                }),
            )
        }
        (_, Some(event), Some(_)) => {
            let status = PushStatus::AiGenerated;
            (
                status,
                encode(&AiGeneratedPush {
                    status,
                    channel_id,
                    event_name: event,
                    meta: meta(record),
                    customer_data,
                }),
            )
        }
        (_, None, Some(ai)) => {
            let status = PushStatus::Success;
            (
                status,
                encode(&SuccessPush {
                    status,
                    channel_id,
                    data: raw(&ai.data),
                    meta: meta(record),
                    customer_data,
                }),
            )
        }
        _ => return None,
    };
    Some(Push { status, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::props::accepted;
    use crate::job::{AiResult, CallbackData, Delivery, Event};

    fn answered(event_driven: bool) -> Request {
        let mut r = accepted(event_driven);
        let ai = AiResult {
            data: r#"{"content":"hi"}"#.into(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            duration_ms: 3,
            generated_ms: 2_000,
        };
        r.record_ai_success(ai, Vec::<Delivery>::new(), 2_000)
            .unwrap();
        r
    }

    /// The latest push of each kind of record carries, as its `status`, the status it is
    /// reported under; nothing is pushed before the model answered.
    #[test]
    fn a_push_says_its_status() {
        let mut called_back = answered(true);
        called_back.apply(Event::CallbackReceived, 3_000).unwrap();
        called_back.callback = Some(CallbackData {
            data: "{}".into(),
            task_id: None,
            metadata: None,
            error: None,
            received_ms: 3_000,
        });
        let mut failed = accepted(true);
        failed
            .record_ai_failure("down".into(), Vec::new(), 2_000)
            .unwrap();
        for (record, status) in [
            (answered(true), PushStatus::AiGenerated),
            (called_back, PushStatus::Completed),
            (answered(false), PushStatus::Success),
            (failed, PushStatus::Error),
        ] {
            let push = latest_push(&record).expect("a push");
            assert_eq!(push.status, status);
            let payload: serde_json::Value = serde_json::from_str(&push.payload).unwrap();
            assert_eq!(payload["status"], status.as_str(), "{}", push.payload);
        }
        assert_eq!(latest_push(&accepted(true)), None);
    }
}
