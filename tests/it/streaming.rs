//! Streamed chat completions (`"stream": true` on `/v1/chat/completions`): relayed from
//! providers that stream (OpenAI chunks, Anthropic events), sent whole from those that
//! cannot or when the answer must be validated first, and ended with an error event when
//! a provider breaks midway.

use std::time::Duration;

use serde_json::{Value, json};

use crate::providers::{provider_server, register};
use crate::support::provider::{Answer, FakeProvider, Wire};
use crate::support::{KEY, TestServer, start};

/// A streamed chat completion relays the provider's chunks as they come, from OpenAI's
/// chunks and from Anthropic's events alike, in OpenAI's chunk format, with usage when
/// asked, and ends with `data: [DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_relays_provider_chunks() {
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let server = provider_server().await;
        let fake = FakeProvider::start(wire).await;
        fake.answer(Answer::Text("one two three four".into()));
        register(&server, "local", &fake, json!({"kind": kind(wire)})).await;
        server
            .create_workflow(
                json!({"name": "s", "provider": "local", "model": "m", "system_prompt": "p"}),
            )
            .await;
        let chunks = stream_chunks(
            &server,
            json!({"model": "s", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "count"}]}),
        )
        .await;
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "s")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            pieces(&chunks),
            ["one ", "two ", "three ", "four"],
            "{wire:?}: relayed piece by piece"
        );
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            chunks.last().unwrap()["usage"]["total_tokens"],
            18,
            "{wire:?}"
        );

        let seen = fake.wait_for(1).await;
        assert_eq!(seen[0].body["stream"], true);
        match wire {
            Wire::OpenAi => assert_eq!(seen[0].body["messages"][0]["content"], "p"),
            Wire::Anthropic => assert_eq!(seen[0].body["system"], "p"),
        }
        let (_, log) = server.get("/console/requests?status=completed").await;
        assert_eq!(log["data"].as_array().unwrap().len(), 1, "{log}");
    }
}

/// A streamed request for a structured output is not streamed from the provider: the
/// answer must be checked against the schema (and retried or failed over) before the
/// client sees any of it, so it arrives in one piece, valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_structured_output_arrives_whole_once_valid() {
    let server = provider_server().await;
    let fake = FakeProvider::start(Wire::Anthropic).await;
    fake.answer(Answer::Json(json!({"title": "Streamed", "score": 3})));
    register(&server, "claude", &fake, json!({"kind": "anthropic"})).await;
    let schema = json!({"type": "object", "required": ["title", "score"],
        "properties": {"title": {"type": "string"}, "score": {"type": "integer"}}});
    let output = server
        .create_output_from(json!({"name": "card", "schema": schema}))
        .await;
    server
        .create_workflow(json!({"name": "c", "provider": "claude", "model": "m",
                                "structured_output_id": output}))
        .await;
    let chunks = stream_chunks(
        &server,
        json!({"model": "c", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    let pieces = pieces(&chunks);
    assert_eq!(pieces.len(), 1, "{pieces:?}");
    let answer: Value = serde_json::from_str(pieces[0]).unwrap();
    assert_eq!(answer, json!({"title": "Streamed", "score": 3}));
    let seen = fake.wait_for(1).await;
    assert_eq!(seen[0].body["tool_choice"]["type"], "tool");
    assert!(seen[0].body.get("stream").is_none(), "asked whole");
    let (_, log) = server.get("/console/requests?status=completed").await;
    assert_eq!(log["data"].as_array().unwrap().len(), 1, "{log}");
}

/// Posts a streamed chat completion, checks it is answered 200 as an event stream, and
/// returns the stream's whole text.
async fn stream_text(server: &TestServer, body: Value) -> String {
    let response = server
        .http
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response.text().await.unwrap()
}

/// The chunks of a streamed chat completion, which must be data events ending in `[DONE]`.
async fn stream_chunks(server: &TestServer, body: Value) -> Vec<Value> {
    let text = stream_text(server, body).await;
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data events only"))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]", "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The `kind` a provider of `wire` is registered with.
fn kind(wire: Wire) -> &'static str {
    match wire {
        Wire::OpenAi => "openai",
        Wire::Anthropic => "anthropic",
    }
}

/// The non-empty content pieces of streamed chunks.
fn pieces(chunks: &[Value]) -> Vec<&str> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A provider that cannot stream (here test mode) still answers a streamed request in
/// OpenAI's chunk format: the whole answer in one piece once known, then `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_without_a_streaming_provider_sends_the_answer_whole() {
    let server = start(|_| {}).await;
    server
        .create_workflow(json!({"name": "t", "provider": "testing", "model": "m"}))
        .await;
    let text = stream_text(
        &server,
        json!({"model": "t", "stream": true,
               "messages": [{"role": "user", "content": "echo this back"}]}),
    )
    .await;
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "role, answer, finish, done: {text}");
    let answer: Value = serde_json::from_str(&events[1]["data: ".len()..]).unwrap();
    assert_eq!(answer["choices"][0]["delta"]["content"], "echo this back");
    let finish: Value = serde_json::from_str(&events[2]["data: ".len()..]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(finish.get("usage").is_none(), "no usage chunk unless asked");
    assert_eq!(events[3], "data: [DONE]");
}

/// A provider that fails after part of a streamed answer reached the client is not retried
/// nor failed over (the client cannot take back what it has): the stream ends with an
/// OpenAI-style `error` event and `[DONE]`, and the request is logged as `ai_failed`. The
/// same for OpenAI's `error` chunk and Anthropic's `error` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_midway_ends_with_an_error_event() {
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let server = provider_server().await;
        let flaky = FakeProvider::start(wire).await;
        flaky.answer(Answer::BreakAfter("half an".into()));
        let backup = FakeProvider::start(Wire::OpenAi).await;
        register(&server, "flaky", &flaky, json!({"kind": kind(wire)})).await;
        register(&server, "backup", &backup, json!({})).await;
        server
            .create_workflow(json!({"name": "f", "provider": "flaky", "model": "m",
                                    "fallbacks": [{"provider": "backup", "model": "m"}]}))
            .await;
        let text = stream_text(
            &server,
            json!({"model": "f", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert!(text.contains("\"content\":\"half \""), "{wire:?}: {text}");
        let error: Value =
            serde_json::from_str(&events[events.len() - 2]["data: ".len()..]).unwrap();
        assert_eq!(error["error"]["code"], "ai_failed", "{text}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("mid-stream") && message.contains("the fake broke"),
            "{wire:?}: {message}"
        );
        assert_eq!(*events.last().unwrap(), "data: [DONE]");
        assert_eq!(flaky.seen().len(), 1, "not retried");
        assert!(backup.seen().is_empty(), "not failed over");
        let (_, log) = server.get("/console/requests?status=failed").await;
        assert_eq!(log["data"][0]["failure"], "ai_failed", "{log}");
    }
}

/// Regression: an endless provider stream was relayed for 50 s (4.3 GB) despite
/// `--provider-timeout 10s`, which only bounded the gap between chunks. The whole answer
/// is bounded, streamed or not: a stream that goes on past the provider's timeout ends
/// with an error event saying so, and so does one that goes past the size limit, however
/// fast it comes; an endless whole answer fails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_answers_are_cut_by_time_and_size() {
    let server = provider_server().await;
    let trickle = FakeProvider::start(Wire::OpenAi).await;
    trickle.answer(Answer::Endless {
        pace: Duration::from_millis(20),
        size: 64,
    });
    register(&server, "trickle", &trickle, json!({"timeout_ms": 1000})).await;
    let flood = FakeProvider::start(Wire::OpenAi).await;
    flood.answer(Answer::Endless {
        pace: Duration::ZERO,
        size: 32 << 10,
    });
    register(&server, "flood", &flood, json!({"timeout_ms": 600_000})).await;
    for (name, needle) in [
        ("trickle", "did not end within 1s"),
        ("flood", "larger than"),
    ] {
        server
            .create_workflow(json!({"name": name, "provider": name, "model": "m"}))
            .await;
        let text = stream_text(
            &server,
            json!({"model": name, "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(*events.last().unwrap(), "data: [DONE]", "{name}");
        let error: Value =
            serde_json::from_str(&events[events.len() - 2]["data: ".len()..]).unwrap();
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{name}: {message}");
        assert!(
            text.len() < 40 << 20,
            "{name}: {} bytes relayed",
            text.len()
        );
    }
    let (status, body) = server
        .post(
            "/v1/ai",
            json!({"workflow": "trickle", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "ai_failed");
}
