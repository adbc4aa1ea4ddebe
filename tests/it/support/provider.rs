//! Fake model providers: real hyper servers on `127.0.0.1` that speak OpenAI's chat
//! completions (whole and streamed as server-sent events) or Anthropic's Messages API,
//! record every request (path, headers, JSON body), and answer as scripted: a text, a JSON
//! answer (OpenAI content, or an Anthropic tool call), an error status in the wire's own
//! error envelope, or a hang.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::FakeServer;
use super::log::Log;

/// `prompt_tokens` / `input_tokens` of every answer.
pub const PROMPT_TOKENS: u64 = 11;
/// `completion_tokens` / `output_tokens` of every answer.
pub const COMPLETION_TOKENS: u64 = 7;

/// Which API a fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

/// How a fake answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A text answer; streamed word by word when the request asks for a stream.
    Text(String),
    /// A JSON answer: OpenAI message content holding its text, or an Anthropic call of the
    /// tool the request offered.
    Json(Value),
    /// An error status with the wire's error envelope.
    Status(u16),
    /// No answer for a minute.
    Hang,
    /// A stream that sends this text, then an `error` event instead of finishing.
    BreakAfter(String),
    /// An OpenAI answer that never ends: a piece of `size` bytes of text every `pace` (as
    /// stream chunks, or as the never-closed JSON of a whole answer), until eddy hangs up.
    Endless { pace: Duration, size: usize },
}

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Seen {
    /// A header as text; panics if it is missing.
    pub fn header(&self, name: &str) -> &str {
        super::header(&self.headers, name)
    }
}

struct Inner {
    wire: Wire,
    /// Answers for the next requests, in order, before `fallback`.
    script: Mutex<VecDeque<Answer>>,
    fallback: Mutex<Answer>,
    seen: Log<Seen>,
}

/// A fake provider; its API root is [`FakeProvider::base_url`].
pub struct FakeProvider {
    inner: FakeServer<Inner>,
    /// `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
}

impl FakeProvider {
    /// A fake answering `Text("Hello from the fake")` until told otherwise.
    pub async fn start(wire: Wire) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let inner = Inner {
            wire,
            script: Mutex::new(VecDeque::new()),
            fallback: Mutex::new(Answer::Text("Hello from the fake".into())),
            seen: Log::of("requests to the fake provider"),
        };
        let inner = FakeServer::on(listener, inner, handle);
        FakeProvider {
            base_url: format!("http://{}/v1", inner.addr),
            inner,
        }
    }

    /// The answer once the script is used up.
    pub fn answer(&self, answer: Answer) {
        *self.inner.fallback.lock().unwrap() = answer;
    }

    /// Answers for the next requests, in order.
    pub fn script(&self, answers: &[Answer]) {
        self.inner
            .script
            .lock()
            .unwrap()
            .extend(answers.iter().cloned());
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.all()
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Seen> {
        self.inner.seen.wait_for(n).await
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(status: u16, content_type: &str, body: Body) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    response
        .headers_mut()
        .insert("content-type", content_type.parse().expect("content type"));
    response
}

fn json_body(status: u16, value: &Value) -> hyper::Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(value).expect("json"));
    respond(status, "application/json", Full::new(bytes).boxed())
}

async fn handle(inner: Arc<Inner>, request: hyper::Request<Incoming>) -> hyper::Response<Body> {
    let path = request.uri().path().to_string();
    let headers = request.headers().clone();
    let bytes = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    inner.seen.push(Seen {
        path,
        headers,
        body: body.clone(),
    });
    let scripted = inner.script.lock().unwrap().pop_front();
    let answer = scripted.unwrap_or_else(|| inner.fallback.lock().unwrap().clone());
    let model = body["model"].clone();
    match (inner.wire, answer) {
        (_, Answer::Hang) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            json_body(504, &json!({"error": {"message": "hung"}}))
        }
        (Wire::OpenAi, Answer::Status(status)) => json_body(
            status,
            &json!({"error": {"message": format!("fake failure {status}"), "type": "server_error", "code": null}}),
        ),
        (Wire::Anthropic, Answer::Status(status)) => json_body(
            status,
            &json!({"type": "error", "error": {"type": "api_error", "message": format!("fake failure {status}")}}),
        ),
        (Wire::OpenAi, Answer::Json(value)) => openai(&body, model, value.to_string(), false),
        (Wire::OpenAi, Answer::Text(text)) => openai(&body, model, text, false),
        (Wire::OpenAi, Answer::BreakAfter(text)) => openai(&body, model, text, true),
        (Wire::OpenAi, Answer::Endless { pace, size }) => endless(&body, model, pace, size),
        (Wire::Anthropic, answer) => anthropic(&body, model, answer),
    }
}

/// An Anthropic answer: whole, or as the Messages API's stream of events 20 ms apart when
/// asked (text word by word; `BreakAfter` ends in an `error` event instead of the
/// message's end).
fn anthropic(request: &Value, model: Value, answer: Answer) -> hyper::Response<Body> {
    let tool = request["tools"][0]["name"].clone();
    let (content, breaks) = match &answer {
        Answer::Json(input) => (
            json!([{"type": "tool_use", "id": "toolu_fake", "name": tool, "input": input}]),
            false,
        ),
        Answer::Text(text) => (json!([{"type": "text", "text": text}]), false),
        Answer::BreakAfter(text) => (json!([{"type": "text", "text": text}]), true),
        _ => unreachable!("handled by the caller"),
    };
    if request["stream"] != true {
        return json_body(
            200,
            &json!({
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": "end_turn",
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS},
            }),
        );
    }
    let mut events = vec![json!({"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}})];
    events.push(json!({"type": "ping"}));
    match answer {
        Answer::Json(input) => {
            events.push(
                json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": "toolu_fake", "name": tool, "input": {}}}),
            );
            let text = input.to_string();
            let (a, b) = text.split_at(text.len() / 2);
            for piece in [a, b] {
                events.push(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}));
            }
        }
        Answer::Text(text) | Answer::BreakAfter(text) => {
            events.push(json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}));
            for piece in text.split_inclusive(' ') {
                events.push(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}));
            }
        }
        _ => unreachable!("handled by the caller"),
    }
    if breaks {
        events.push(json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "the fake broke mid-stream"}}));
    } else {
        events.push(json!({"type": "content_block_stop", "index": 0}));
        events.push(json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": COMPLETION_TOKENS}}));
        events.push(json!({"type": "message_stop"}));
    }
    let events = events
        .into_iter()
        .map(|e| {
            format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap_or("x")
            )
        })
        .collect();
    sse(events)
}

/// An OpenAI answer that never ends (see [`Answer::Endless`]).
fn endless(request: &Value, model: Value, pace: Duration, size: usize) -> hyper::Response<Body> {
    let stream = request["stream"] == true;
    let piece = "x".repeat(size);
    let (first, each) = if stream {
        let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        (String::new(), format!("data: {chunk}\n\n"))
    } else {
        let head =
            json!({"id": "chatcmpl-fake", "object": "chat.completion", "model": model}).to_string();
        let open = format!(
            "{},\"choices\":[{{\"message\":{{\"content\":\"",
            &head[..head.len() - 1]
        );
        (open, piece)
    };
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut next = Bytes::from(first);
        let each = Bytes::from(each);
        loop {
            if !next.is_empty() && tx.send(next).await.is_err() {
                return;
            }
            next = each.clone();
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    });
    let stream_body = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    let kind = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    respond(200, kind, StreamBody::new(stream_body).boxed())
}

/// A `text/event-stream` response sending `events` 20 ms apart.
fn sse(events: Vec<String>) -> hyper::Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        for event in events {
            let _ = tx.send(Bytes::from(event)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    respond(200, "text/event-stream", StreamBody::new(stream).boxed())
}

/// An OpenAI answer with `content`: whole, or as chunks 20 ms apart when asked to stream
/// (ending in an `error` event instead of the finish when `breaks`).
fn openai(request: &Value, model: Value, content: String, breaks: bool) -> hyper::Response<Body> {
    let usage = json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    });
    if request["stream"] != true {
        return json_body(
            200,
            &json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": usage,
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
               "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in content.split_inclusive(' ') {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    if breaks {
        events.push(
            json!({"error": {"message": "the fake broke mid-stream", "type": "server_error"}}),
        );
    } else {
        events.push(chunk(json!({}), json!("stop")));
    }
    if !breaks && request["stream_options"]["include_usage"] == true {
        events.push(
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                           "created": 1, "model": model, "choices": [], "usage": usage}),
        );
    }
    let mut events: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    events.push("data: [DONE]\n\n".to_string());
    sse(events)
}
