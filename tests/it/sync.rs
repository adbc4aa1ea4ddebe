//! The synchronous APIs (`/v1/ai`, `/v1/chat/completions`) and the provider console.

use reqwest::Method;
use serde_json::{Value, json};

use crate::providers::{provider_server, register};
use crate::support::provider::{Answer, FakeProvider, Wire};
use crate::support::{KEY, TestServer, start};

async fn post_raw(server: &TestServer, path: &str, body: Value) -> crate::support::Reply {
    let bytes = serde_json::to_vec(&body).unwrap();
    server
        .call(Method::POST, path, Some(KEY), Some(bytes), &[])
        .await
}

fn header<'a>(reply: &'a crate::support::Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .unwrap()
}

/// `/v1/ai` raw answers with the provider's own response and `X-ModelRiver-*` headers;
/// `/v1/chat/completions` answers in OpenAI's shape with `model` = the workflow; both
/// appear in the request log as completed, with their timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_answers_raw_and_openai_shaped_and_are_logged() {
    let server = provider_server().await;
    let fake = FakeProvider::start(Wire::OpenAi).await;
    fake.answer(Answer::Text("Paris".into()));
    register(&server, "local", &fake, json!({})).await;
    server
        .create_workflow(json!({
            "name": "geo", "provider": "local", "model": "llama-3",
            "cache_fields": ["metadata.user"]
        }))
        .await;
    let messages = json!([{"role": "user", "content": "Capital of France?"}]);

    let raw = post_raw(
        &server,
        "/v1/ai",
        json!({"workflow": "geo", "messages": messages, "metadata": {"user": "u1"}}),
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.json);
    assert_eq!(raw.json["id"], "chatcmpl-fake", "the provider's own body");
    assert_eq!(raw.json["choices"][0]["message"]["content"], "Paris");
    assert_eq!(header(&raw, "x-modelriver-workflow"), "geo");
    assert_eq!(header(&raw, "x-modelriver-provider"), "local");
    assert_eq!(header(&raw, "x-modelriver-model"), "llama-3");
    assert_eq!(header(&raw, "x-modelriver-attempts"), "1");
    let channel = header(&raw, "x-modelriver-channel-id").to_string();

    let chat = post_raw(
        &server,
        "/v1/chat/completions",
        json!({"model": "geo", "messages": messages, "temperature": 0.2}),
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.json);
    assert_eq!(chat.json["object"], "chat.completion");
    assert_eq!(chat.json["model"], "geo");
    assert_eq!(
        chat.json["choices"][0]["message"],
        json!({"role": "assistant", "content": "Paris", "refusal": null})
    );
    assert_eq!(chat.json["choices"][0]["finish_reason"], "stop");
    assert_eq!(chat.json["usage"]["total_tokens"], 18);
    assert!(chat.json["id"].as_str().unwrap().starts_with("chatcmpl-"));

    let view = server.request(&channel).await;
    assert_eq!(view["status"], "completed");
    assert_eq!(
        view["customer_data"],
        json!({"user": "u1", "metadata.user": "u1"})
    );
    assert_eq!(view["ai_response"]["data"], json!({"content": "Paris"}));
    assert!(view["deliveries"].as_array().unwrap().is_empty());
    let types = crate::support::Api::timeline_types(&view);
    assert_eq!(types, ["request_received", "ai_attempt", "state", "state"]);
    let (_, log) = server.get("/console/requests?workflow=geo").await;
    assert_eq!(log["data"].as_array().unwrap().len(), 2, "{log}");
}

/// `/v1/ai` wrapped: `{data, customer_data, meta}` with the requested and used provider
/// and model; `test_mode: true` on the request answers without calling the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_format_and_request_test_mode() {
    let server = provider_server().await;
    let fake = FakeProvider::start(Wire::OpenAi).await;
    register(&server, "openai", &fake, json!({})).await;
    server
        .create_workflow(json!({"name": "w", "provider": "openai", "model": "gpt-4o"}))
        .await;
    let (status, body) = server
        .post(
            "/v1/ai",
            json!({"workflow": "w", "format": "wrapped", "test_mode": true,
                   "metadata": {"a": 1},
                   "messages": [{"role": "user", "content": "echo me"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!({"content": "echo me"}));
    assert_eq!(body["customer_data"], json!({"a": 1}));
    let meta = &body["meta"];
    assert_eq!(meta["status"], "success");
    assert_eq!(meta["workflow"], "w");
    assert_eq!(
        (
            meta["requested_provider"].as_str(),
            meta["requested_model"].as_str()
        ),
        (Some("openai"), Some("gpt-4o"))
    );
    assert_eq!(
        (meta["used_provider"].as_str(), meta["used_model"].as_str()),
        (Some("Testing"), Some("test-mode"))
    );
    assert_eq!(meta["usage"]["total_tokens"], 0);
    assert_eq!(meta["attempts"].as_array().unwrap().len(), 1);
    assert!(meta["duration_ms"].is_u64());
    assert!(fake.seen().is_empty(), "test mode called the provider");
}

/// Sync calls on an event-driven workflow are 400 `model_not_supported`; an unknown
/// workflow is 404; bad bodies are 400 naming the field; all models failing is 502
/// `ai_failed` in the OpenAI envelope; none of the refused calls is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_errors_use_the_envelope_and_store_nothing() {
    let server = provider_server().await;
    let fake = FakeProvider::start(Wire::OpenAi).await;
    fake.answer(Answer::Status(503));
    register(&server, "openai", &fake, json!({})).await;
    server
        .create_workflow(
            json!({"name": "evented", "event_name": "done", "provider": "testing", "model": "m"}),
        )
        .await;
    server
        .create_workflow(json!({"name": "down", "provider": "openai", "model": "m"}))
        .await;
    let messages = json!([{"role": "user", "content": "x"}]);
    for (path, body) in [
        (
            "/v1/ai",
            json!({"workflow": "evented", "messages": messages}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "evented", "messages": messages}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "evented", "messages": messages, "stream": true}),
        ),
    ] {
        let (status, reply) = server.post(path, body).await;
        assert_eq!(status, 400, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "model_not_supported");
        assert_eq!(reply["error"]["type"], "invalid_request_error");
    }
    let (status, reply) = server
        .post(
            "/v1/chat/completions",
            json!({"model": "nope", "messages": messages}),
        )
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (404, Some("workflow_not_found"))
    );
    for (path, body, field) in [
        (
            "/v1/ai",
            json!({"workflow": "down", "messages": []}),
            "messages",
        ),
        (
            "/v1/ai",
            json!({"workflow": "down", "messages": messages, "format": "xml"}),
            "format",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages}),
            "request body: missing field `model`",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "down", "messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
    ] {
        let (status, reply) = server.post(path, body).await;
        assert_eq!(status, 400, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let (_, log) = server.get("/console/requests").await;
    assert!(log["data"].as_array().unwrap().is_empty(), "{log}");

    let (status, reply) = server
        .post(
            "/v1/chat/completions",
            json!({"model": "down", "messages": messages}),
        )
        .await;
    assert_eq!(status, 502, "{reply}");
    assert_eq!(reply["error"]["code"], "ai_failed");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 503")
    );
    let (status, reply) = server
        .post(
            "/v1/ai",
            json!({"workflow": "down", "messages": messages, "format": "wrapped"}),
        )
        .await;
    assert_eq!(status, 502, "{reply}");
    assert_eq!(reply["meta"]["status"], "error");
    assert_eq!(reply["meta"]["attempts"].as_array().unwrap().len(), 2);
    let (_, log) = server.get("/console/requests?status=failed").await;
    assert_eq!(log["data"].as_array().unwrap().len(), 2, "{log}");
}

/// A streamed chat completion relays the provider's chunks as they come, from OpenAI's
/// chunks and from Anthropic's events alike, in OpenAI's chunk format, with usage when
/// asked, and ends with `data: [DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_relays_provider_chunks() {
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let server = provider_server().await;
        let fake = FakeProvider::start(wire).await;
        fake.answer(Answer::Text("one two three four".into()));
        let kind = if wire == Wire::Anthropic {
            "anthropic"
        } else {
            "openai"
        };
        register(&server, "local", &fake, json!({"kind": kind})).await;
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
    let (status, output) = server
        .post(
            "/console/structured-outputs",
            json!({"name": "card", "schema": schema}),
        )
        .await;
    assert_eq!(status, 201, "{output}");
    server
        .create_workflow(json!({"name": "c", "provider": "claude", "model": "m",
                                "structured_output_id": output["id"]}))
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

/// Posts a streamed chat completion, checks it is an event stream ending in `[DONE]`, and
/// returns its chunks.
async fn stream_chunks(server: &TestServer, body: Value) -> Vec<Value> {
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
    let text = response.text().await.unwrap();
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

/// The non-empty content pieces of streamed chunks.
fn pieces(chunks: &[Value]) -> Vec<&str> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Provider credentials: created and replaced by `POST`, listed and shown with the key
/// masked, deleted; the key itself never comes back; bad input is 400 naming the field and
/// stores nothing; another project cannot see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_credentials_never_show_their_key() {
    let server = start(|c| c.admin_token = Some("admin-token-0123456789".into())).await;
    let key = "sk-live-abcdefghijklmnopqrstuvwxyz0123";
    let (status, body) = server
        .post(
            "/console/providers",
            json!({"provider": "openai", "api_key": key}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["provider"], "openai");
    assert_eq!(body["kind"], "openai");
    assert_eq!(body["base_url"], "https://api.openai.com/v1");
    assert_eq!(body["api_key"], "sk-l…0123");
    let (status, body) = server
        .post(
            "/console/providers",
            json!({"provider": "openai", "api_key": key, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!((status, body["timeout_ms"].as_u64()), (200, Some(5000)));
    let (status, body) = server
        .post(
            "/console/providers",
            json!({"provider": "anthropic", "api_key": "short-key"}),
        )
        .await;
    assert_eq!(
        (status, body["kind"].as_str(), body["api_key"].as_str()),
        (201, Some("anthropic"), Some("…ey"))
    );
    let (_, list) = server.get("/console/providers").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let (_, one) = server.get("/console/providers/openai").await;
    for text in [list.to_string(), one.to_string()] {
        assert!(
            !text.contains("abcdefghij") && !text.contains("short-key"),
            "{text}"
        );
    }

    for (body, field) in [
        (json!({"provider": "testing", "api_key": "k"}), "provider"),
        (json!({"provider": "bad name", "api_key": "k"}), "provider"),
        (json!({"provider": "vllm"}), "base_url"),
        (json!({"provider": "openai"}), "api_key"),
        (
            json!({"provider": "openai", "api_key": "k", "kind": "anthropic"}),
            "kind",
        ),
        (json!({"provider": "x", "base_url": "ftp://h"}), "base_url"),
        (
            json!({"provider": "x", "base_url": "http://127.0.0.1:1/v1"}),
            "base_url",
        ),
        (
            json!({"provider": "x", "base_url": "http://h.example/v1", "timeout_ms": 5}),
            "timeout_ms",
        ),
        (
            json!({"provider": "x", "base_url": "http://h.example/v1", "api_key": "a b"}),
            "api_key",
        ),
        (
            json!({"provider": "x", "base_url": "http://h.example/v1", "extra": 1}),
            "extra: unknown field",
        ),
    ] {
        let (status, reply) = server.post("/console/providers", body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let (_, list) = server.get("/console/providers").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        2,
        "nothing stored: {list}"
    );

    let admin = crate::support::Api {
        key: "admin-token-0123456789".to_string(),
        ..(*server).clone()
    };
    let (status, created) = admin
        .post("/admin/projects", json!({"name": "other"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let other = crate::support::Api {
        key: created["api_key"].as_str().unwrap().to_string(),
        ..(*server).clone()
    };
    let (status, _) = other.get("/console/providers/openai").await;
    assert_eq!(status, 404);
    let (_, list) = other.get("/console/providers").await;
    assert!(list["data"].as_array().unwrap().is_empty());

    let reply = server
        .call(
            Method::DELETE,
            "/console/providers/openai",
            Some(KEY),
            None,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let (status, _) = server.get("/console/providers/openai").await;
    assert_eq!(status, 404);
}

/// A structured output's schema must be a valid JSON Schema and its `sample_data` must
/// match it; otherwise 400 naming the field, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_outputs_are_validated_on_creation() {
    let server = start(|_| {}).await;
    let schema = json!({"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}});
    for (body, field) in [
        (
            json!({"name": "a", "schema": {"type": "no-such-type"}}),
            "schema",
        ),
        (
            json!({"name": "b", "schema": schema, "sample_data": {"title": 1}}),
            "sample_data",
        ),
        (
            json!({"name": "c", "schema": schema, "sample_data": {}}),
            "sample_data",
        ),
    ] {
        let (status, reply) = server.post("/console/structured-outputs", body).await;
        assert_eq!(status, 400, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let (_, list) = server.get("/console/structured-outputs").await;
    assert!(list["data"].as_array().unwrap().is_empty());
    let (status, _) = server
        .post(
            "/console/structured-outputs",
            json!({"name": "ok", "schema": schema, "sample_data": {"title": "T"}}),
        )
        .await;
    assert_eq!(status, 201);
}

/// A provider that cannot stream (here test mode) still answers a streamed request in
/// OpenAI's chunk format: the whole answer in one piece once known, then `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_without_a_streaming_provider_sends_the_answer_whole() {
    let server = start(|_| {}).await;
    server
        .create_workflow(json!({"name": "t", "provider": "testing", "model": "m"}))
        .await;
    let response = server
        .http
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(KEY)
        .json(&json!({"model": "t", "stream": true,
                      "messages": [{"role": "user", "content": "echo this back"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
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
        let kind = if wire == Wire::Anthropic {
            "anthropic"
        } else {
            "openai"
        };
        let server = provider_server().await;
        let flaky = FakeProvider::start(wire).await;
        flaky.answer(Answer::BreakAfter("half an".into()));
        let backup = FakeProvider::start(Wire::OpenAi).await;
        register(&server, "flaky", &flaky, json!({"kind": kind})).await;
        register(&server, "backup", &backup, json!({})).await;
        server
            .create_workflow(json!({"name": "f", "provider": "flaky", "model": "m",
                                    "fallbacks": [{"provider": "backup", "model": "m"}]}))
            .await;
        let response = server
            .http
            .post(format!("{}/v1/chat/completions", server.base))
            .bearer_auth(KEY)
            .json(&json!({"model": "f", "stream": true,
                          "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
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
