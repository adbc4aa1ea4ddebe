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
