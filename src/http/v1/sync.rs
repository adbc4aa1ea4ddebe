//! The synchronous APIs: `POST /v1/ai` (ModelRiver's, raw or `"format": "wrapped"`) and
//! `POST /v1/chat/completions` (OpenAI's, so existing OpenAI clients work unchanged, with
//! `model` naming the workflow). Both run a workflow without `event_name` while the client
//! waits; the engine records the request once answered (see `engine::sync`).
//!
//! A streamed chat completion waits for the first piece of the answer before it sends
//! headers, so a request whose models all fail is still a plain JSON error; after that, a
//! failure can only be reported inside the stream, as OpenAI does, with an `error` event.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Request;
use hyper::body::{Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ai::{AiOutput, Deltas};
use crate::catalog::Project;
use crate::engine::{SyncAnswer, SyncInput};
use crate::error::Error;
use crate::http::app::App;
use crate::http::error::{Answer, ApiError};
use crate::http::input::check_messages;
use crate::http::json::read_json;
use crate::http::response::{Response, ok};
use crate::job::{ChannelId, Request as Record};
use crate::payload::{self, Usage};

fn messages_value(messages: Vec<Map<String, Value>>) -> Value {
    Value::Array(messages.into_iter().map(Value::Object).collect())
}

#[derive(Deserialize)]
struct AiBody {
    workflow: String,
    messages: Vec<Map<String, Value>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    test_mode: Option<bool>,
}

/// `POST /v1/ai`.
pub async fn ai(app: &App, project: Arc<Project>, request: Request<Incoming>) -> Answer {
    let body: AiBody = read_json(request, app.engine.config()).await?;
    if body.workflow.trim().is_empty() {
        return Err(ApiError::invalid("workflow: must not be empty"));
    }
    check_messages(&body.messages)?;
    let wrapped = match body.format.as_deref() {
        None | Some("raw") => false,
        Some("wrapped") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "format: '{other}' is not one of raw, wrapped"
            )));
        }
    };
    app.engine.sync_workflow(&project.id, &body.workflow)?;
    let input = SyncInput {
        workflow: body.workflow,
        messages: messages_value(body.messages),
        metadata: body.metadata.unwrap_or_default(),
        test_mode: body.test_mode.unwrap_or(false),
        id: app.engine.store().new_request_id().await?,
    };
    let SyncAnswer { record, result } = app.engine.run_sync(&project, input, None).await?;
    let customer_data: Value = serde_json::from_str(&record.customer_data).unwrap_or_default();
    let response = match (result, wrapped) {
        (Ok(out), true) => ok(&json!({
            "data": out.data,
            "customer_data": customer_data,
            "meta": meta(&record, "success"),
        })),
        (Ok(out), false) => {
            let raw = out
                .raw
                .clone()
                .unwrap_or_else(|| completion(&record, &record.workflow.model, &out));
            ok(&raw)
        }
        // The error envelope, with what a wrapped answer would carry beside it.
        (Err(e), true) => ApiError::ai_failed(e.message).into_response_beside(Map::from_iter([
            ("customer_data".to_string(), customer_data),
            ("meta".to_string(), meta(&record, "error")),
        ])),
        (Err(e), false) => ApiError::ai_failed(e.message).into_response(),
    };
    Ok(with_headers(response, &record))
}

/// `meta` of a wrapped `/v1/ai` answer.
fn meta(record: &Record, status: &str) -> Value {
    let ai = record.ai.as_ref();
    let usage = ai.map_or(Usage::new(0, 0), |a| {
        Usage::new(a.prompt_tokens, a.completion_tokens)
    });
    json!({
        "status": status,
        "channel_id": record.channel_id.to_string(),
        "workflow": record.workflow.name,
        "requested_provider": record.workflow.provider,
        "requested_model": record.workflow.model,
        "used_provider": ai.map(|a| a.provider.as_str()),
        "used_model": ai.map(|a| a.model.as_str()),
        "duration_ms": record.ai_attempts.iter().map(|a| a.duration_ms).sum::<u64>(),
        "usage": usage,
        "attempts": payload::attempts(record),
    })
}

/// The `X-ModelRiver-*` headers of a sync answer.
fn with_headers(mut response: Response, record: &Record) -> Response {
    let ai = record.ai.as_ref();
    let pairs = [
        ("x-modelriver-channel-id", record.channel_id.to_string()),
        ("x-modelriver-workflow", record.workflow.name.clone()),
        (
            "x-modelriver-requested-provider",
            record.workflow.provider.clone(),
        ),
        (
            "x-modelriver-requested-model",
            record.workflow.model.clone(),
        ),
        (
            "x-modelriver-provider",
            ai.map(|a| a.provider.clone()).unwrap_or_default(),
        ),
        (
            "x-modelriver-model",
            ai.map(|a| a.model.clone()).unwrap_or_default(),
        ),
        (
            "x-modelriver-attempts",
            record.ai_attempts.len().to_string(),
        ),
        (
            "x-modelriver-duration-ms",
            record
                .ai_attempts
                .iter()
                .map(|a| a.duration_ms)
                .sum::<u64>()
                .to_string(),
        ),
        (
            "x-modelriver-prompt-tokens",
            ai.map_or(0, |a| a.prompt_tokens).to_string(),
        ),
        (
            "x-modelriver-completion-tokens",
            ai.map_or(0, |a| a.completion_tokens).to_string(),
        ),
    ];
    for (name, value) in pairs {
        if value.is_empty() {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// An OpenAI `chat.completion` for `out`, reporting `model`.
fn completion(record: &Record, model: &str, out: &AiOutput) -> Value {
    json!({
        "id": completion_id(&record.channel_id),
        "object": "chat.completion",
        "created": record.created_ms / 1000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": out.content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": Usage::new(out.prompt_tokens, out.completion_tokens),
    })
}

fn completion_id(channel: &ChannelId) -> String {
    format!(
        "chatcmpl-{}",
        uuid::Uuid::from_bytes(*channel.as_bytes()).simple()
    )
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<Map<String, Value>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    test_mode: Option<bool>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`. Other OpenAI parameters (`temperature`, `max_tokens`, …)
/// are accepted and ignored: the workflow decides how its models are called.
pub async fn chat_completions(
    app: &App,
    project: Arc<Project>,
    request: Request<Incoming>,
) -> Answer {
    let body: ChatBody = read_json(request, app.engine.config()).await?;
    if body.model.trim().is_empty() {
        return Err(ApiError::invalid("model: must name a workflow"));
    }
    check_messages(&body.messages)?;
    app.engine.sync_workflow(&project.id, &body.model)?;
    let include_usage = body
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let input = SyncInput {
        workflow: body.model.clone(),
        messages: messages_value(body.messages),
        metadata: body.metadata.unwrap_or_default(),
        test_mode: body.test_mode.unwrap_or(false),
        id: app.engine.store().new_request_id().await?,
    };
    if body.stream != Some(true) {
        let SyncAnswer { record, result } = app.engine.run_sync(&project, input, None).await?;
        let out = result.map_err(|e| ApiError::ai_failed(e.message))?;
        let response = ok(&completion(&record, &body.model, &out));
        return Ok(with_headers(response, &record));
    }

    let chunks = Chunks {
        id: completion_id(&input.id.1),
        created: crate::clock::now_ms() / 1000,
        model: body.model,
    };
    let channel_id = input.id.1;
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let engine = app.engine.clone();
    let task: JoinHandle<crate::Result<SyncAnswer>> = tokio::spawn(async move {
        let deltas = Deltas::new(tx);
        engine.run_sync(&project, input, Some(&deltas)).await
    });
    let mut pending =
        VecDeque::from([chunks.delta(json!({"role": "assistant", "content": ""}), None)]);
    let task = match rx.recv().await {
        Some(first) => {
            pending.push_back(chunks.delta(json!({ "content": first }), None));
            Some(task)
        }
        // The run ended without any text: a failure is still a plain error response.
        None => {
            let answer = joined(task.await)?;
            if let Err(e) = answer.result {
                return Err(ApiError::ai_failed(e.message));
            }
            pending.extend(chunks.ending(Ok(answer), include_usage));
            None
        }
    };
    let sse = Sse {
        pending,
        rx,
        task,
        chunks,
        include_usage,
    };
    let stream = futures_util::stream::unfold(sse, Sse::next);
    let mut response = hyper::Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&channel_id.to_string()) {
        headers.insert("x-modelriver-channel-id", v);
    }
    Ok(response)
}

fn joined(
    joined: Result<crate::Result<SyncAnswer>, tokio::task::JoinError>,
) -> Result<SyncAnswer, ApiError> {
    match joined {
        Ok(answer) => Ok(answer?),
        Err(e) => Err(Error::Unavailable(format!("the request's task failed: {e}")).into()),
    }
}

/// Builds OpenAI `chat.completion.chunk` events for one completion.
struct Chunks {
    id: String,
    created: u64,
    model: String,
}

fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

impl Chunks {
    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        event(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        }))
    }

    /// The events after the last piece of text: the finish (and usage) or an error event,
    /// then `[DONE]`.
    fn ending(&self, answer: Result<SyncAnswer, ApiError>, include_usage: bool) -> Vec<Bytes> {
        let mut out = Vec::new();
        match answer.map(|a| a.result) {
            Ok(Ok(answer)) => {
                out.push(self.delta(json!({}), Some("stop")));
                if include_usage {
                    out.push(event(&json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": Usage::new(answer.prompt_tokens, answer.completion_tokens),
                    })));
                }
            }
            Ok(Err(e)) => out.push(event(&ApiError::ai_failed(e.message).envelope())),
            Err(e) => out.push(event(&e.envelope())),
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }
}

/// The state of a streamed response: events ready to send, the text still coming, and the
/// run whose end closes the stream.
struct Sse {
    pending: VecDeque<Bytes>,
    rx: mpsc::Receiver<String>,
    task: Option<JoinHandle<crate::Result<SyncAnswer>>>,
    chunks: Chunks,
    include_usage: bool,
}

impl Sse {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, Sse)> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some((Ok(Frame::data(bytes)), self));
            }
            if let Some(text) = self.rx.recv().await {
                let chunk = self.chunks.delta(json!({ "content": text }), None);
                self.pending.push_back(chunk);
                continue;
            }
            let task = self.task.take()?;
            let ending = self.chunks.ending(joined(task.await), self.include_usage);
            self.pending.extend(ending);
        }
    }
}
