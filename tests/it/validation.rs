//! Bad requests get the JSON error envelope with a fitting 4xx and store nothing; the
//! `/api` alias and `Idempotency-Key` behave as the README's "The flow" says.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Receiver, Reply, TestServer, assert_fields, seed_request, seeded, start};

/// Asserts `{"error": {"message", "type", "code"}}` with `status` and `code`; returns the
/// message.
fn assert_error(reply: &Reply, status: u16, code: &str) -> String {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let error = reply.json["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error envelope: {}", reply.json));
    assert_fields(&reply.json["error"], "code message type");
    assert_eq!(reply.json.as_object().unwrap().len(), 1, "{}", reply.json);
    assert_eq!(error["code"], code, "{}", reply.json);
    assert!(error["type"].as_str().is_some_and(|t| !t.is_empty()));
    error["message"].as_str().expect("message").to_string()
}

/// A server with the seed's event workflow and a webhook endpoint, ready for requests.
async fn ready() -> (TestServer, Receiver) {
    seeded(|_| {}).await
}

async fn post_raw(server: &TestServer, path: &str, body: &[u8]) -> Reply {
    server
        .call(
            Method::POST,
            path,
            Some(&server.key),
            Some(body.to_vec()),
            &[],
        )
        .await
}

async fn assert_nothing_stored(server: &TestServer) {
    let (status, list) = server.get("/console/requests").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"], json!([]), "a refused request was stored");
}

/// Without a key, with a malformed or an unknown key, every `/v1` and `/console` route
/// answers 401 `invalid_api_key` with ModelRiver's exact message, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_key_is_401() {
    let (server, receiver) = ready().await;
    let body = serde_json::to_vec(&seed_request("content_generator")).unwrap();
    let channel = uuid::Uuid::new_v4();
    let routes = [
        (Method::POST, "/v1/ai/async".to_string()),
        (Method::POST, "/api/v1/ai/async".to_string()),
        (Method::POST, format!("/v1/callback/{channel}")),
        (Method::POST, "/v1/ai/reconnect".to_string()),
        (Method::GET, "/console/requests".to_string()),
        (Method::GET, format!("/console/requests/{channel}")),
        (Method::GET, "/console/workflow".to_string()),
        (Method::GET, "/console/dlq".to_string()),
    ];
    let wrong = format!("mr_live_{}", "x".repeat(40));
    for (method, path) in routes {
        for key in [None, Some(wrong.as_str()), Some("not-a-key"), Some("")] {
            let reply = server
                .call(method.clone(), &path, key, Some(body.clone()), &[])
                .await;
            let message = assert_error(&reply, 401, "invalid_api_key");
            assert_eq!(message, "Invalid API key provided");
            assert_eq!(reply.json["error"]["type"], "authentication_error");
        }
    }
    // A Basic scheme carrying the right key is still not a bearer token.
    let reply = server
        .call(
            Method::GET,
            "/console/requests",
            None,
            None,
            &[("authorization", &format!("Basic {}", server.key))],
        )
        .await;
    assert_error(&reply, 401, "invalid_api_key");
    assert_nothing_stored(&server).await;
    assert!(receiver.received().is_empty());
}

/// Malformed `POST /v1/ai/async` bodies are 400 `invalid_request` whose message names the
/// offending field, and none of them is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_async_bodies_name_the_field() {
    let (server, receiver) = ready().await;
    let message = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty body", b"".to_vec(), "body"),
        ("not JSON", b"{\"workflow\": ".to_vec(), "JSON"),
        ("trailing data", b"{\"workflow\":\"content_generator\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]} x".to_vec(), "trailing"),
        ("array body", b"[]".to_vec(), "body"),
        ("missing workflow", json!({"messages": message}).to_string().into_bytes(), "workflow"),
        ("workflow not a string", json!({"workflow": 7, "messages": message}).to_string().into_bytes(), "workflow"),
        ("empty workflow", json!({"workflow": " ", "messages": message}).to_string().into_bytes(), "workflow"),
        ("missing messages", json!({"workflow": "content_generator"}).to_string().into_bytes(), "messages"),
        ("messages not an array", json!({"workflow": "content_generator", "messages": "hi"}).to_string().into_bytes(), "messages"),
        ("empty messages", json!({"workflow": "content_generator", "messages": []}).to_string().into_bytes(), "messages"),
        ("message not an object", json!({"workflow": "content_generator", "messages": ["hi"]}).to_string().into_bytes(), "messages[0]"),
        ("bad role", json!({"workflow": "content_generator", "messages": [{"role": "wizard", "content": "hi"}]}).to_string().into_bytes(), "messages[0].role"),
        ("missing role", json!({"workflow": "content_generator", "messages": [{"content": "hi"}]}).to_string().into_bytes(), "messages[0].role"),
        ("role not a string", json!({"workflow": "content_generator", "messages": [{"role": 1, "content": "hi"}]}).to_string().into_bytes(), "messages[0].role"),
        ("missing content", json!({"workflow": "content_generator", "messages": [{"role": "user"}]}).to_string().into_bytes(), "messages[0].content"),
        ("content a number", json!({"workflow": "content_generator", "messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": 5}]}).to_string().into_bytes(), "messages[1].content"),
        ("metadata not an object", json!({"workflow": "content_generator", "messages": message, "metadata": [1]}).to_string().into_bytes(), "metadata"),
        ("webhook_url not a URL", json!({"workflow": "content_generator", "messages": message, "webhook_url": "nope"}).to_string().into_bytes(), "webhook_url"),
        ("webhook_url not http", json!({"workflow": "content_generator", "messages": message, "webhook_url": "ftp://example.com/x"}).to_string().into_bytes(), "webhook_url"),
        ("test_mode not a bool", json!({"workflow": "content_generator", "messages": message, "test_mode": "yes"}).to_string().into_bytes(), "test_mode"),
    ];
    for (what, body, field) in cases {
        let reply = post_raw(&server, "/v1/ai/async", &body).await;
        let message = assert_error(&reply, 400, "invalid_request");
        assert!(
            message.contains(field),
            "{what}: message {message:?} does not name {field}"
        );
    }
    assert_nothing_stored(&server).await;
    assert!(receiver.received().is_empty());
}

/// An unknown workflow is 404 `workflow_not_found`; an event-driven workflow with nowhere
/// to deliver is 400; neither is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_workflow_and_undeliverable_event_are_refused() {
    let server = start(|_| {}).await;
    server.event_workflow("content_generator", json!({})).await;
    let body = serde_json::to_vec(&seed_request("no_such_workflow")).unwrap();
    let reply = post_raw(&server, "/v1/ai/async", &body).await;
    let message = assert_error(&reply, 404, "workflow_not_found");
    assert!(message.contains("no_such_workflow"), "{message}");

    // No endpoint is registered and no webhook_url given: nothing could ever be delivered.
    let body = serde_json::to_vec(&seed_request("content_generator")).unwrap();
    let reply = post_raw(&server, "/v1/ai/async", &body).await;
    assert_error(&reply, 400, "invalid_request");
    assert_nothing_stored(&server).await;
}

/// Bodies over 1 MiB are 413 `payload_too_large` on the runtime and console routes; a body
/// just under the limit is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_one_mib_are_413() {
    let (server, _receiver) = ready().await;
    let padded = |size: usize| {
        let mut body = seed_request("content_generator");
        let skeleton = serde_json::to_vec(&body).unwrap().len();
        let filler = size - skeleton - r#","pad":"""#.len();
        body["metadata"]["pad"] = json!("p".repeat(filler));
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(bytes.len(), size);
        bytes
    };
    let over = padded((1 << 20) + 1);
    for path in ["/v1/ai/async", "/console/workflow"] {
        let reply = post_raw(&server, path, &over).await;
        assert_error(&reply, 413, "payload_too_large");
    }
    assert_nothing_stored(&server).await;

    let reply = post_raw(&server, "/v1/ai/async", &padded(1 << 20)).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
}

/// Callbacks: an unknown channel id or a non-UUID is 404 `not_found`; a body that is
/// neither `{data}` nor `{error, message}`, or is not JSON, is 400; a callback before the
/// AI result exists is refused; and none of them changes the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callbacks_are_refused() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    // A slow model keeps the request pending while the bad callbacks arrive.
    server
        .event_workflow("content_generator", json!({"response_delay_ms": 60_000}))
        .await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel = ticket["channel_id"].as_str().unwrap();

    let data = br#"{"data":{"ok":true}}"#;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/callback/{unknown}"),
        "/v1/callback/not-a-uuid".to_string(),
        "/v1/callback/".to_string(),
    ] {
        let reply = post_raw(&server, &path, data).await;
        assert_error(&reply, 404, "not_found");
    }
    let path = format!("/v1/callback/{channel}");
    for (body, field) in [
        (&br#"{"task_id":"t"}"#[..], "data"),
        (br#"{"data":{},"metadata":[1]}"#, "metadata"),
        (br#"{"data":{},"task_id":5}"#, "task_id"),
        (br#"{"data":"#, "JSON"),
        (b"", "body"),
    ] {
        let reply = post_raw(&server, &path, body).await;
        let message = assert_error(&reply, 400, "invalid_request");
        assert!(message.contains(field), "{message:?} does not name {field}");
    }
    let reply = post_raw(&server, &path, data).await;
    assert_eq!(reply.status, 409, "{}", reply.json);

    let view = server.request(channel).await;
    assert_eq!(view["status"], "pending");
    assert!(view["callback"].is_null(), "{view}");
}

/// Console routes: an unknown or non-UUID request id is 404, an unknown route is 404, a bad
/// workflow body is 400 naming the field, a duplicate workflow name is 409, all in the
/// envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_errors_use_the_envelope() {
    let (server, _receiver) = ready().await;
    let get = |path: String| {
        let server = &server;
        async move {
            server
                .call(Method::GET, &path, Some(&server.key), None, &[])
                .await
        }
    };
    assert_error(
        &get(format!("/console/requests/{}", uuid::Uuid::new_v4())).await,
        404,
        "not_found",
    );
    assert_error(&get("/console/requests/42".into()).await, 404, "not_found");
    assert_error(&get("/console/nothing-here".into()).await, 404, "not_found");
    assert_error(
        &get("/console/workflow/nope".into()).await,
        404,
        "workflow_not_found",
    );
    assert_error(&get("/console/dlq/nope".into()).await, 404, "not_found");
    assert_error(
        &get("/console/requests?limit=0".into()).await,
        400,
        "invalid_request",
    );

    let bad_workflows: [(Value, &str); 6] = [
        (json!({"provider": "openai", "model": "gpt-4o"}), "name"),
        (json!({"name": "w", "model": "gpt-4o"}), "provider"),
        (
            json!({"name": "w", "provider": "openai", "model": "gpt-4o", "mode": "fast"}),
            "mode",
        ),
        (
            json!({"name": "w w", "provider": "openai", "model": "gpt-4o"}),
            "name",
        ),
        (
            json!({"name": "w", "provider": "openai", "model": "gpt-4o", "callback_timeout_ms": 1}),
            "callback_timeout_ms",
        ),
        (
            json!({"name": "w", "provider": "openai", "model": "gpt-4o", "structured_output_id": "schema_missing"}),
            "structured_output_id",
        ),
    ];
    for (body, field) in bad_workflows {
        let reply = post_raw(&server, "/console/workflow", body.to_string().as_bytes()).await;
        let message = assert_error(&reply, 400, "invalid_request");
        assert!(message.contains(field), "{message:?} does not name {field}");
    }
    let duplicate = json!({"name": "content_generator", "provider": "openai", "model": "gpt-4o"});
    let reply = post_raw(
        &server,
        "/console/workflow",
        duplicate.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.json);
    assert!(reply.json["error"]["code"].is_string(), "{}", reply.json);

    let reply = post_raw(&server, "/console/webhooks", br#"{"url":"not a url"}"#).await;
    let message = assert_error(&reply, 400, "invalid_request");
    assert!(message.contains("url"), "{message}");
    assert_nothing_stored(&server).await;
}

/// Every route is also served under `/api`: the whole flow can run on `/api/...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_prefix_is_an_alias() {
    let (server, _receiver) = ready().await;
    let (status, ticket) = server
        .post("/api/v1/ai/async", seed_request("content_generator"))
        .await;
    assert_eq!(status, 200, "{ticket}");
    let channel = ticket["channel_id"].as_str().unwrap();
    let (status, view) = server
        .get(&format!("/api/console/requests/{channel}"))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["channel_id"], channel);
    let (status, list) = server.get("/api/console/requests").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (status, health) = server.get("/api/healthz").await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    // `/apix` is not the alias.
    let reply = server
        .call(
            Method::GET,
            "/apix/console/requests",
            Some(&server.key),
            None,
            &[],
        )
        .await;
    assert_error(&reply, 404, "not_found");
}

/// The same `Idempotency-Key` twice returns the first response's channel and creates one
/// request; another key creates another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_request() {
    let (server, receiver) = ready().await;
    let body = serde_json::to_vec(&seed_request("content_generator")).unwrap();
    let send = |key: &'static str| {
        let (server, body) = (&server, body.clone());
        async move {
            let reply = server
                .call(
                    Method::POST,
                    "/v1/ai/async",
                    Some(&server.key),
                    Some(body),
                    &[("idempotency-key", key)],
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.json);
            reply.json
        }
    };
    let first = send("order-42").await;
    let again = send("order-42").await;
    assert_eq!(again["channel_id"], first["channel_id"]);
    assert_eq!(again["project_id"], first["project_id"]);
    assert_eq!(again["websocket_channel"], first["websocket_channel"]);
    assert_eq!(again["customer_data"], first["customer_data"]);
    let (status, list) = server.get("/console/requests").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list:#}");

    let other = send("order-43").await;
    assert_ne!(other["channel_id"], first["channel_id"]);
    let (_, list) = server.get("/console/requests").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list:#}");
    // Each request is delivered once, whatever the number of repeats.
    server
        .wait_for_status(first["channel_id"].as_str().unwrap(), "delivered")
        .await;
    server
        .wait_for_status(other["channel_id"].as_str().unwrap(), "delivered")
        .await;
    let channels: std::collections::BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("mr-channel-id").to_string())
        .collect();
    assert_eq!(channels.len(), 2);
    assert_eq!(receiver.received().len(), 2);
}

/// Concurrent repeats of one `Idempotency-Key` create one request: every response names
/// the same channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_idempotent_repeats_create_one_request() {
    let (server, _receiver) = ready().await;
    let body = serde_json::to_vec(&seed_request("content_generator")).unwrap();
    for round in 0..200 {
        let key = format!("race-{round}");
        let mut calls = Vec::new();
        for _ in 0..16 {
            let (api, body, key) = ((*server).clone(), body.clone(), key.clone());
            calls.push(tokio::spawn(async move {
                let reply = api
                    .call(
                        Method::POST,
                        "/v1/ai/async",
                        Some(&api.key),
                        Some(body),
                        &[("idempotency-key", &key)],
                    )
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.json);
                reply.json["channel_id"].as_str().unwrap().to_string()
            }));
        }
        let mut channels = std::collections::BTreeSet::new();
        for call in calls {
            channels.insert(call.await.unwrap());
        }
        assert_eq!(channels.len(), 1, "key {key} created {channels:?}");
    }
    let (_, list) = server.get("/console/requests?limit=1000").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 200);
}

/// A resource of another project is 404, never 403: a second project's key cannot read,
/// call back, reconnect to or use the first project's requests, workflows or endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_projects_resources_are_404() {
    const ADMIN: &str = "admin-token-0123456789";
    let server = start(|c| c.admin_token = Some(ADMIN.to_string())).await;
    let receiver = Receiver::start().await;
    server.event_workflow("content_generator", json!({})).await;
    let (endpoint, _) = server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel = ticket["channel_id"].as_str().unwrap();

    let admin = crate::support::Api {
        key: ADMIN.to_string(),
        ..(*server).clone()
    };
    let (status, wrong) = crate::support::Api {
        key: server.key.clone(),
        ..admin.clone()
    }
    .post("/admin/projects", json!({"name": "other"}))
    .await;
    assert_eq!(
        status, 401,
        "the project key is not the admin token: {wrong}"
    );
    let (status, created) = admin
        .post("/admin/projects", json!({"name": "other"}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_ne!(created["project_id"], ticket["project_id"]);
    let other = crate::support::Api {
        key: created["api_key"].as_str().unwrap().to_string(),
        ..(*server).clone()
    };

    let cases = [
        (
            Method::GET,
            format!("/console/requests/{channel}"),
            None,
            "not_found",
        ),
        (
            Method::POST,
            format!("/v1/callback/{channel}"),
            Some(json!({"data": {"stolen": true}})),
            "not_found",
        ),
        (
            Method::POST,
            "/v1/ai/reconnect".to_string(),
            Some(json!({"channel_id": channel})),
            "not_found",
        ),
        (
            Method::GET,
            "/console/workflow/content_generator".to_string(),
            None,
            "workflow_not_found",
        ),
        (
            Method::POST,
            "/v1/ai/async".to_string(),
            Some(seed_request("content_generator")),
            "workflow_not_found",
        ),
        (
            Method::GET,
            format!("/console/webhooks/{endpoint}"),
            None,
            "not_found",
        ),
        (
            Method::DELETE,
            format!("/console/webhooks/{endpoint}"),
            None,
            "not_found",
        ),
        (
            Method::POST,
            format!("/console/webhooks/{endpoint}/rotate-secret"),
            Some(json!({})),
            "not_found",
        ),
    ];
    for (method, path, body, code) in cases {
        let body = body.map(|b| b.to_string().into_bytes());
        let reply = other
            .call(method.clone(), &path, Some(&other.key), body, &[])
            .await;
        assert_error(&reply, 404, code);
    }
    let (_, list) = other.get("/console/requests").await;
    assert_eq!(list["data"], json!([]));
    let (_, list) = other.get("/console/webhooks").await;
    assert_eq!(list["data"], json!([]));
    let (_, list) = other.get("/console/workflow").await;
    assert_eq!(list["data"], json!([]));

    // The first project's request is untouched.
    let view = server.request(channel).await;
    assert!(view["callback"].is_null(), "{view}");
    let (status, _) = server.get(&format!("/console/webhooks/{endpoint}")).await;
    assert_eq!(status, 200);
}

/// Regression (issue 13): a `/console` path that exists, asked with a method it does not
/// take, was 404 `no route` (the other routes answer 405). Now it is 405
/// `method_not_allowed`, and a path that does not exist is still 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_a_console_path_is_405() {
    let server = start(|_| {}).await;
    let wrong = [
        (Method::DELETE, "/console/project"),
        (Method::PUT, "/console/workflow"),
        (Method::PATCH, "/console/workflow/w"),
        (Method::PUT, "/console/structured-outputs/schema_x"),
        (Method::PUT, "/console/webhooks"),
        (Method::GET, "/console/webhooks/wh_x/rotate-secret"),
        (Method::DELETE, "/console/webhooks/wh_x/enable"),
        (Method::DELETE, "/console/keys"),
        (Method::GET, "/console/keys/key_x"),
        (Method::POST, "/console/requests"),
        (Method::DELETE, "/console/requests/x"),
    ];
    for (method, path) in wrong {
        let reply = server
            .call(method, path, Some(&server.key), None, &[])
            .await;
        assert_error(&reply, 405, "method_not_allowed");
    }
    let reply = server
        .call(
            Method::GET,
            "/console/nothing",
            Some(&server.key),
            None,
            &[],
        )
        .await;
    assert_error(&reply, 404, "not_found");
}
