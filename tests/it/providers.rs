//! Real models behind workflows, against fake provider servers that speak each wire format:
//! what eddy sends (headers, body), what it reads (answers, usage), and how it retries,
//! fails over and gives up.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::provider::{Answer, COMPLETION_TOKENS, FakeProvider, PROMPT_TOKENS, Wire};
use crate::support::{Receiver, TestServer, WAIT, seed_request, start};

/// A server that may call providers on loopback, retries each once after 10 ms.
pub async fn provider_server() -> TestServer {
    start(|c| {
        c.allow_private_providers = true;
        c.provider_retries = 1;
        c.provider_backoff = Duration::from_millis(10);
    })
    .await
}

/// Registers `fake` as provider `name`.
pub async fn register(server: &TestServer, name: &str, fake: &FakeProvider, extra: Value) {
    let mut body = json!({"provider": name, "api_key": format!("sk-{name}-0123456789abcdefghij"), "base_url": fake.base_url});
    crate::support::merge(&mut body, extra);
    let (status, reply) = server.post("/console/providers", body).await;
    assert!(status == 201 || status == 200, "register provider: {reply}");
}

/// The `ai_attempt` steps of a request view.
fn ai_steps(view: &Value) -> Vec<Value> {
    view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|s| s["type"] == "ai_attempt")
        .cloned()
        .collect()
}

/// `/v1/ai` wrapped, which must answer 200.
async fn wrapped(server: &TestServer, workflow: &str, messages: Value) -> Value {
    let (status, body) = server
        .post(
            "/v1/ai",
            json!({"workflow": workflow, "messages": messages, "format": "wrapped"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// OpenAI: `Authorization: Bearer`, the system prompt first, the model and messages as
/// given; the answer and its usage come back in `data` and `meta`; the timeline keeps the
/// attempt's request and response bodies, never the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_wire_format_and_usage() {
    let server = provider_server().await;
    let fake = FakeProvider::start(Wire::OpenAi).await;
    fake.answer(Answer::Text("Bonjour".into()));
    register(&server, "openai", &fake, json!({})).await;
    server
        .create_workflow(json!({
            "name": "chat", "provider": "openai", "model": "gpt-4o-mini",
            "system_prompt": "Answer in French."
        }))
        .await;
    let body = wrapped(
        &server,
        "chat",
        json!([{"role": "user", "content": "Hello"}]),
    )
    .await;
    assert_eq!(body["data"], json!({"content": "Bonjour"}));
    assert_eq!(body["meta"]["used_provider"], "openai");
    assert_eq!(body["meta"]["used_model"], "gpt-4o-mini");
    assert_eq!(
        body["meta"]["usage"],
        json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
               "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS})
    );

    let seen = fake.wait_for(1).await;
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].header("authorization"),
        "Bearer sk-openai-0123456789abcdefghij"
    );
    assert_eq!(seen[0].header("content-type"), "application/json");
    assert_eq!(seen[0].body["model"], "gpt-4o-mini");
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "system", "content": "Answer in French."},
               {"role": "user", "content": "Hello"}])
    );
    assert!(seen[0].body.get("response_format").is_none());

    // The timeline shows both bodies of the attempt, and the key nowhere.
    let (_, log) = server.get("/console/requests").await;
    let channel = log["data"][0]["channel_id"].as_str().unwrap();
    let view = server.request(channel).await;
    let attempt = &ai_steps(&view)[0];
    assert_eq!(attempt["request_body"]["model"], "gpt-4o-mini");
    assert_eq!(
        attempt["request_body"]["messages"],
        seen[0].body["messages"]
    );
    assert_eq!(
        attempt["response_body"]["choices"][0]["message"]["content"],
        "Bonjour"
    );
    assert!(!view.to_string().contains("sk-openai-0123456789abcdefghij"));
}

/// Regression: a `base_url` as Anthropic's SDKs take it (the root, no `/v1`) got 404s,
/// because eddy appended `/messages` to it. With or without `/v1` (and a trailing slash),
/// requests go to `/v1/messages`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_base_url_with_or_without_v1() {
    let server = provider_server().await;
    let fake = FakeProvider::start(Wire::Anthropic).await;
    let root = fake.base_url.trim_end_matches("/v1").to_string();
    register(&server, "anthropic", &fake, json!({"base_url": root})).await;
    let proxy = json!({"kind": "anthropic", "base_url": format!("{root}/v1/")});
    register(&server, "proxy", &fake, proxy).await;
    for provider in ["anthropic", "proxy"] {
        server
            .create_workflow(json!({"name": provider, "provider": provider, "model": "claude"}))
            .await;
        let messages = json!([{"role": "user", "content": "Hello"}]);
        let body = wrapped(&server, provider, messages).await;
        assert_eq!(body["data"], json!({"content": "Hello from the fake"}));
    }
    let paths: Vec<String> = fake.wait_for(2).await.into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1/messages", "/v1/messages"]);
}

/// Anthropic: `x-api-key` and `anthropic-version`, `system` as a top-level field (the
/// prompt and the request's system messages), `max_tokens`; usage is read from
/// `input_tokens` / `output_tokens`; a structured output goes as a forced tool whose input
/// is the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_wire_format_usage_and_tool_output() {
    let server = provider_server().await;
    let fake = FakeProvider::start(Wire::Anthropic).await;
    register(&server, "anthropic", &fake, json!({})).await;
    server
        .create_workflow(json!({
            "name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5",
            "system_prompt": "Be brief."
        }))
        .await;
    let messages = json!([
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"}
    ]);
    let body = wrapped(&server, "claude", messages).await;
    assert_eq!(body["data"], json!({"content": "Hello from the fake"}));
    assert_eq!(body["meta"]["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(
        body["meta"]["usage"]["completion_tokens"],
        COMPLETION_TOKENS
    );

    let seen = fake.wait_for(1).await;
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(
        seen[0].header("x-api-key"),
        "sk-anthropic-0123456789abcdefghij"
    );
    assert_eq!(seen[0].header("anthropic-version"), "2023-06-01");
    assert!(seen[0].headers.get("authorization").is_none());
    assert_eq!(seen[0].body["system"], "Be brief.\n\nAnswer in French.");
    assert_eq!(seen[0].body["max_tokens"], 4096);
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "user", "content": "Hello"}])
    );

    // Structured output: the schema is the tool's input schema, the tool call the answer.
    let schema = json!({"type": "object", "properties": {"title": {"type": "string"}},
                        "required": ["title"]});
    let output = server
        .create_output_from(json!({"name": "card", "schema": schema}))
        .await;
    server
        .create_workflow(json!({
            "name": "card", "provider": "anthropic", "model": "claude-sonnet-4-5",
            "structured_output_id": output
        }))
        .await;
    fake.answer(Answer::Json(json!({"title": "ProSound X1"})));
    let body = wrapped(&server, "card", json!([{"role": "user", "content": "x"}])).await;
    assert_eq!(body["data"], json!({"title": "ProSound X1"}));
    let seen = fake.wait_for(2).await;
    assert_eq!(seen[1].body["tools"][0]["input_schema"], schema);
    assert_eq!(
        seen[1].body["tool_choice"],
        json!({"type": "tool", "name": seen[1].body["tools"][0]["name"]})
    );
}

/// A provider that keeps answering 500 is retried (once here), then the first fallback
/// answers; every attempt is in the webhook's `meta.attempts` and on the timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_after_5xx_and_records_every_attempt() {
    let server = provider_server().await;
    let primary = FakeProvider::start(Wire::OpenAi).await;
    primary.answer(Answer::Status(500));
    let backup = FakeProvider::start(Wire::Anthropic).await;
    backup.answer(Answer::Text("from the backup".into()));
    register(&server, "primary", &primary, json!({})).await;
    register(&server, "backup", &backup, json!({"kind": "anthropic"})).await;
    server
        .create_workflow(json!({
            "name": "resilient", "provider": "primary", "model": "gpt-4o",
            "fallbacks": [{"provider": "backup", "model": "claude-haiku"}]
        }))
        .await;
    let receiver = Receiver::start().await;
    let mut request = seed_request("resilient");
    request["webhook_url"] = json!(receiver.url);
    let ticket = server.send_async(request).await;
    let channel = ticket["channel_id"].as_str().unwrap();

    let hooks = receiver.wait_for(1).await;
    let hook = hooks[0].json();
    assert_eq!(hook["status"], "success", "{hook}");
    assert_eq!(hook["data"], json!({"content": "from the backup"}));
    assert_eq!(hook["meta"]["provider"], "backup");
    assert_eq!(hook["meta"]["model"], "claude-haiku");
    let attempts = hook["meta"]["attempts"].as_array().expect("meta.attempts");
    let summary: Vec<(&str, &str, Option<u64>)> = attempts
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap(),
                a["status"].as_str().unwrap(),
                a["http_status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("primary", "error", Some(500)),
            ("primary", "error", Some(500)),
            ("backup", "success", None)
        ]
    );
    assert!(
        attempts[0]["reason"]
            .as_str()
            .unwrap()
            .contains("fake failure 500")
    );
    assert_eq!(
        attempts[2]["usage"]["total_tokens"],
        PROMPT_TOKENS + COMPLETION_TOKENS
    );
    assert_eq!(primary.seen().len(), 2);

    let view = server.wait_for_status(channel, "completed").await;
    let steps = ai_steps(&view);
    assert_eq!(steps.len(), 3, "{view:#}");
    assert_eq!(steps[0]["http_status"], 500);
    assert_eq!(steps[2]["provider"], "backup");
    assert_eq!(steps[2]["status"], "success");
    assert_eq!(view["ai_attempts"].as_array().unwrap().len(), 3);
}

/// A provider that does not answer within its credential's timeout counts as a failed
/// attempt: retried, then the fallback answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_after_timeouts() {
    let server = provider_server().await;
    let slow = FakeProvider::start(Wire::OpenAi).await;
    slow.answer(Answer::Hang);
    let fast = FakeProvider::start(Wire::OpenAi).await;
    register(&server, "slow", &slow, json!({"timeout_ms": 300})).await;
    register(&server, "fast", &fast, json!({})).await;
    server
        .create_workflow(json!({
            "name": "impatient", "provider": "slow", "model": "big",
            "fallbacks": [{"provider": "fast", "model": "small"}]
        }))
        .await;
    let started = std::time::Instant::now();
    let body = wrapped(
        &server,
        "impatient",
        json!([{"role": "user", "content": "hi"}]),
    )
    .await;
    assert!(started.elapsed() < WAIT);
    assert_eq!(body["data"], json!({"content": "Hello from the fake"}));
    assert_eq!(body["meta"]["used_provider"], "fast");
    let attempts = body["meta"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{body}");
    for a in &attempts[..2] {
        assert_eq!(a["provider"], "slow");
        assert_eq!(a["reason"], "timed out after 300ms", "{a}");
        assert!(a["duration_ms"].as_u64().unwrap() >= 290, "{a}");
    }
    assert_eq!(attempts[2]["status"], "success");
}

/// Structured output: an answer that does not match the schema is a failed attempt,
/// retried on the same provider, then failed over; the schema went to OpenAI as a
/// `json_schema` response format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_structured_output_is_retried_then_failed_over() {
    let server = provider_server().await;
    let sloppy = FakeProvider::start(Wire::OpenAi).await;
    sloppy.script(&[
        Answer::Json(json!({"title": 42})),
        Answer::Text("Sure! Here is your product card.".into()),
    ]);
    let careful = FakeProvider::start(Wire::Anthropic).await;
    careful.answer(Answer::Json(json!({"title": "ProSound X1", "price": 199})));
    register(&server, "sloppy", &sloppy, json!({})).await;
    register(&server, "careful", &careful, json!({"kind": "anthropic"})).await;
    let schema = json!({"type": "object", "required": ["title"],
                        "properties": {"title": {"type": "string"}, "price": {"type": "number"}}});
    let output = server
        .create_output_from(
            json!({"name": "card", "schema": schema, "sample_data": {"title": "T"}}),
        )
        .await;
    server
        .create_workflow(json!({
            "name": "cards", "provider": "sloppy", "model": "m1",
            "structured_output_id": output,
            "fallbacks": [{"provider": "careful", "model": "m2"}]
        }))
        .await;
    let body = wrapped(
        &server,
        "cards",
        json!([{"role": "user", "content": "card"}]),
    )
    .await;
    assert_eq!(body["data"], json!({"title": "ProSound X1", "price": 199}));
    let attempts = body["meta"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{body}");
    let reason = attempts[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not match the schema") && reason.contains("/title"),
        "{reason}"
    );
    let reason = attempts[1]["reason"].as_str().unwrap();
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(attempts[0]["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(
        (
            attempts[2]["provider"].as_str(),
            attempts[2]["status"].as_str()
        ),
        (Some("careful"), Some("success"))
    );

    let seen = sloppy.wait_for(2).await;
    let format = &seen[0].body["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["schema"], schema);
}

/// When every provider fails, the request fails with `ai_failed` and the browser is told
/// why: each provider's last error. A client error (400) is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_providers_failing_pushes_ai_failed_with_the_reason() {
    let server = provider_server().await;
    let busy = FakeProvider::start(Wire::OpenAi).await;
    busy.answer(Answer::Status(503));
    let picky = FakeProvider::start(Wire::Anthropic).await;
    picky.answer(Answer::Status(400));
    register(&server, "busy", &busy, json!({})).await;
    register(&server, "picky", &picky, json!({"kind": "anthropic"})).await;
    let receiver = Receiver::start().await;
    server.register_webhook(&receiver.url).await;
    server
        .create_workflow(json!({
            "name": "doomed", "event_name": "content_ready", "provider": "busy", "model": "a",
            "fallbacks": [{"provider": "picky", "model": "b"}, {"provider": "missing", "model": "c"}]
        }))
        .await;
    let ticket = server.send_async(seed_request("doomed")).await;
    let mut socket = server.join(&ticket).await;
    let error = socket.push_with_status("error").await;
    assert_eq!(error["error"]["code"], "ai_failed", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("every provider failed"), "{message}");
    assert!(
        message.contains("busy/a: HTTP 503: fake failure 503"),
        "{message}"
    );
    assert!(
        message.contains("picky/b: HTTP 400: fake failure 400"),
        "{message}"
    );
    assert!(
        message.contains("provider 'missing' is not configured"),
        "{message}"
    );
    assert_eq!(busy.seen().len(), 2);
    assert_eq!(picky.seen().len(), 1);

    let view = server
        .wait_for_status(ticket["channel_id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(view["failure"], "ai_failed");
    assert_eq!(ai_steps(&view).len(), 4, "{view:#}");
    assert!(receiver.received().is_empty());
}
