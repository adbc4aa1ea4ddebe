//! The event-driven flow end to end on real sockets: the seed's own example, standard
//! workflows, callback errors and timeouts, webhook retries and the dead-letter queue.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::sign::{assert_compact, assert_signed};
use crate::support::{
    Api, Callback, Receiver, TestServer, WAIT, assert_fields, headphones, is_rfc3339_ms_z,
    seed_request, sign, start, text,
};

/// The seed's own example: a structured-output workflow with `event_name`, a signed
/// `task.ai_generated` webhook to a real backend that enriches and calls back, and the
/// browser seeing `ai_generated` then `completed` over Phoenix Channels; late joiners get
/// the final result, the timeline shows every step, and a second callback is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_end_to_end() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.call_back(&server.key, Callback::Enrich);
    receiver.hold_callbacks();
    server.event_workflow("content_generator", json!({})).await;
    let (endpoint_id, secret) = server.register_webhook(&receiver.url).await;
    let metadata = json!({"product_id": "prod_123", "category": "electronics"});

    // Step 1: the app fires the request and gets its ticket at once.
    let ticket = server.send_async(seed_request("content_generator")).await;
    assert_fields(
        &ticket,
        "channel_id customer_data message project_id status websocket_channel websocket_url \
         ws_token",
    );
    assert_eq!(ticket["message"], "success");
    assert_eq!(ticket["status"], "pending");
    let channel_id = ticket["channel_id"].as_str().unwrap().to_string();
    let project_id = ticket["project_id"].as_str().unwrap().to_string();
    let channel = uuid::Uuid::parse_str(&channel_id).expect("channel_id is a UUID");
    assert_eq!(channel.get_version_num(), 4, "channel_id is a UUID v4");
    uuid::Uuid::parse_str(&project_id).expect("project_id is a UUID");
    assert_eq!(
        ticket["websocket_url"],
        format!("{}/socket", server.base.replace("http://", "ws://"))
    );
    assert_eq!(
        ticket["websocket_channel"],
        format!("ai_response:{project_id}:{channel_id}")
    );
    assert!(!ticket["ws_token"].as_str().unwrap().is_empty());
    assert_eq!(ticket["customer_data"], metadata);

    // The browser joins; whether it joined before or after generation, it sees ai_generated.
    let mut socket = server.join(&ticket).await;
    let generated = socket.next_push(WAIT).await;
    assert_eq!(generated["status"], "ai_generated", "{generated}");
    assert_eq!(generated["channel_id"], channel_id);
    assert_eq!(generated["event_name"], "content_ready");
    // The SDK's step, not a result: the page shows the backend's `completed`, not this.
    assert!(generated.get("ai_response").is_none(), "{generated}");
    assert!(generated.get("data").is_none(), "{generated}");
    assert!(generated["meta"]["duration_ms"].is_u64(), "{generated}");
    assert_eq!(generated["customer_data"], metadata);
    assert_eq!(generated["meta"]["workflow_name"], "content_generator");

    // Step 2: the backend receives one signed webhook.
    let hooks = receiver.wait_for(1).await;
    let hook = &hooks[0];
    let body = hook.json();
    assert_fields(
        &body,
        "ai_response callback_required callback_url channel_id customer_data data event meta \
         timestamp type",
    );
    assert_eq!(body["type"], "task.ai_generated");
    assert_eq!(body["event"], "content_ready");
    assert_eq!(body["channel_id"], channel_id);
    assert_eq!(body["ai_response"], json!({"data": headphones()}));
    assert_eq!(body["data"], headphones());
    assert_eq!(
        body["callback_url"],
        format!("{}/v1/callback/{channel_id}", server.base)
    );
    assert_eq!(body["callback_required"], true);
    assert_eq!(body["customer_data"], metadata);
    assert_eq!(body["meta"]["workflow_name"], "content_generator");
    // Test mode reports itself (as ModelRiver's test mode does), whatever the workflow's provider is.
    assert_eq!(body["meta"]["provider"], "Testing");
    assert_eq!(body["meta"]["model"], "test-mode");
    let timestamp = body["timestamp"].as_str().expect("timestamp");
    assert!(is_rfc3339_ms_z(timestamp), "timestamp {timestamp}");
    assert_compact(&hook.body);
    assert_signed(hook, Some(&endpoint_id), &secret, &channel_id);

    // Step 3: the backend calls back with enriched data; the browser gets `completed`.
    receiver.release_callbacks();
    let completed = socket.push_with_status("completed").await;
    let callbacks = receiver.wait_for_callbacks(1).await;
    assert_eq!(callbacks[0].status, 200, "{:?}", callbacks[0]);
    assert_eq!(
        callbacks[0].reply,
        json!({"status": "accepted", "channel_id": channel_id})
    );
    let mut enriched = headphones();
    enriched["slug"] = json!("prosound-x1-wireless-headphones");
    enriched["saved_at"] = callbacks[0].sent["data"]["saved_at"].clone();
    assert!(enriched["saved_at"].is_string());
    assert_eq!(completed["channel_id"], channel_id);
    assert_eq!(completed["data"], enriched);
    assert_eq!(completed["task_id"], "product_prod_123");
    assert_eq!(completed["customer_data"], metadata);
    assert_eq!(completed["meta"]["workflow_name"], "content_generator");

    // The console shows the whole story.
    let view = server.wait_for_status(&channel_id, "completed").await;
    assert_eq!(view["channel_id"], channel_id);
    assert_eq!(view["workflow"], "content_generator");
    assert_eq!(view["customer_data"], metadata);
    assert_eq!(view["ai_response"]["data"], headphones());
    assert_eq!(view["callback"]["data"], enriched);
    assert_eq!(view["callback"]["task_id"], "product_prod_123");
    assert_eq!(view["deliveries"][0]["status"], "delivered");
    assert_eq!(view["deliveries"][0]["attempt_count"], 1);
    let types = Api::timeline_types(&view);
    assert_eq!(types[0], "request_received", "{types:?}");
    let first = |t: &str| {
        types
            .iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("no {t} in {types:?}"))
    };
    assert!(first("request_received") < first("ai_attempt"));
    assert!(first("ai_attempt") < first("webhook_attempt"));
    assert!(
        types.contains(&"callback_received".to_string()),
        "{types:?}"
    );
    let timeline = view["timeline"].as_array().unwrap();
    // Test mode calls no model: its attempt has no request or response body to show.
    let ai = &timeline[first("ai_attempt")];
    assert_eq!(ai["provider"], "Testing", "{ai}");
    assert!(
        ai["request_body"].is_null() && ai["response_body"].is_null(),
        "{ai}"
    );
    let attempt = &timeline[first("webhook_attempt")];
    assert_eq!(attempt["http_status"], 200);
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["endpoint_id"], endpoint_id);
    assert_eq!(attempt["webhook_id"], hook.header("webhook-id"));
    let states: Vec<&str> = timeline
        .iter()
        .filter(|s| s["type"] == "state")
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"generated"), "{states:?}");
    assert_eq!(states.last(), Some(&"completed"), "{states:?}");
    assert!(states.contains(&"callback"), "{states:?}");

    // A browser that joins after completion, with a fresh token, gets `completed` at once.
    let (status, fresh) = server
        .post("/v1/ai/reconnect", json!({"channel_id": channel_id}))
        .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["channel_id"], channel_id);
    assert_eq!(fresh["project_id"], project_id);
    assert_eq!(fresh["websocket_channel"], ticket["websocket_channel"]);
    assert_eq!(fresh["websocket_url"], ticket["websocket_url"]);
    let mut late = server.join(&fresh).await;
    let replayed = late.next_push(Duration::from_secs(5)).await;
    assert_eq!(replayed, completed);

    // A second callback is refused.
    let (status, error) = server
        .callback(&channel_id, json!({"data": {"again": true}}))
        .await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"]["code"], "already_completed");
    assert_eq!(receiver.received().len(), 1, "one webhook only");
}

/// The Standard Webhooks specification's own vector, through this suite's independent
/// implementation and through eddy's.
#[test]
fn standard_webhooks_known_answer_vector() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    let body = br#"{"test": 2432232314}"#;
    let want = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(
        sign::standard_signature(secret, id, "1614265330", body),
        want
    );
    assert_eq!(
        eddy::signature::standard_signature(secret, id, 1614265330, body),
        want
    );
    assert!(eddy::signature::verify_standard(
        secret, id, 1614265330, body, want
    ));
}

/// A workflow without `event_name` pushes `success` to the browser and sends a signed
/// `task.completed` webhook; no callback is awaited and the request completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_workflow_pushes_success_and_sends_task_completed() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    server
        .create_workflow(json!({
            "name": "summarizer", "provider": "openai", "model": "gpt-4o", "mode": "testing"
        }))
        .await;
    let (endpoint_id, secret) = server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("summarizer")).await;
    let channel_id = ticket["channel_id"].as_str().unwrap().to_string();
    let echo = json!({"content": "Generate a product description for wireless headphones"});

    let mut socket = server.join(&ticket).await;
    let push = socket.next_push(WAIT).await;
    assert_eq!(push["status"], "success", "{push}");
    assert_eq!(push["channel_id"], channel_id);
    assert_eq!(push["data"], echo);
    assert_eq!(push["customer_data"], ticket["customer_data"]);
    assert_eq!(push["meta"]["workflow_name"], "summarizer");

    let hooks = receiver.wait_for(1).await;
    let body = hooks[0].json();
    assert_eq!(body["type"], "task.completed");
    assert_eq!(body["workflow"], "summarizer");
    assert_eq!(body["status"], "success");
    assert_eq!(body["channel_id"], channel_id);
    assert_eq!(body["data"], echo);
    assert_eq!(body["customer_data"], ticket["customer_data"]);
    assert_eq!(body["meta"]["workflow_name"], "summarizer");
    assert!(body.get("callback_url").is_none(), "{body}");
    assert!(is_rfc3339_ms_z(body["timestamp"].as_str().unwrap()));
    assert_compact(&hooks[0].body);
    assert_signed(&hooks[0], Some(&endpoint_id), &secret, &channel_id);

    let view = server.wait_for_status(&channel_id, "completed").await;
    assert!(view["callback"].is_null(), "{view}");
    assert_eq!(view["deliveries"][0]["status"], "delivered");
}

/// Sends the seed's request and waits on its channel for the `error` push, which must name
/// the request and carry `code`; returns the ticket and the push.
async fn error_push(server: &TestServer, code: &str) -> (Value, Value) {
    let ticket = server.send_async(seed_request("content_generator")).await;
    let mut socket = server.join(&ticket).await;
    let error = socket.push_with_status("error").await;
    assert_eq!(error["channel_id"], ticket["channel_id"], "{error}");
    assert_eq!(error["error"]["code"], code, "{error}");
    (ticket, error)
}

/// No callback within the workflow's `callback_timeout_ms`: the request fails with
/// `callback_timeout`, the browser gets the error, and a late callback is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_callback_times_out() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    server
        .event_workflow("content_generator", json!({"callback_timeout_ms": 300}))
        .await;
    server.register_webhook(&receiver.url).await;
    let (ticket, error) = error_push(&server, "callback_timeout").await;
    let channel_id = text(&ticket, "channel_id");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(error["customer_data"], ticket["customer_data"]);

    let view = server.wait_for_status(channel_id, "failed").await;
    assert_eq!(view["failure"], "callback_timeout");
    let types = Api::timeline_types(&view);
    assert!(types.contains(&"callback_timeout".to_string()), "{types:?}");

    let (status, body) = server
        .callback(channel_id, json!({"data": {"late": true}}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_completed");
}

/// An error callback `{error, message}` fails the request with `callback_error` and pushes
/// the error to the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_callback_pushes_callback_error() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.call_back(
        &server.key,
        Callback::Error {
            error: "processing_failed".into(),
            message: "Database connection timeout".into(),
        },
    );
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let (ticket, error) = error_push(&server, "callback_error").await;
    let channel_id = text(&ticket, "channel_id");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("Database connection timeout"), "{message}");

    let callbacks = receiver.wait_for_callbacks(1).await;
    assert_eq!(callbacks[0].status, 200, "{:?}", callbacks[0]);
    let view = server.wait_for_status(channel_id, "failed").await;
    assert_eq!(view["failure"], "callback_error");
    let entry = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "callback_error")
        .unwrap_or_else(|| panic!("no callback_error step: {view:#}"))
        .clone();
    assert_eq!(entry["error"], "processing_failed");
    assert_eq!(entry["message"], "Database connection timeout");
}

/// A receiver that answers 500 twice and then 200 gets three attempts of one delivery:
/// the same `webhook-id` and the same body bytes, each freshly signed, and the timeline
/// records attempts 1, 2, 3 with their statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_keep_one_webhook_id() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script(&[500, 500]);
    receiver.call_back(&server.key, Callback::Enrich);
    server.event_workflow("content_generator", json!({})).await;
    let (endpoint_id, secret) = server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel_id = ticket["channel_id"].as_str().unwrap().to_string();

    let hooks = receiver.wait_for(3).await;
    let statuses: Vec<u16> = hooks.iter().map(|h| h.answered).collect();
    assert_eq!(statuses, [500, 500, 200]);
    let webhook_id = hooks[0].header("webhook-id").to_string();
    for hook in &hooks {
        assert_eq!(hook.header("webhook-id"), webhook_id);
        assert_eq!(hook.body, hooks[0].body, "retries send the same bytes");
        assert_signed(hook, Some(&endpoint_id), &secret, &channel_id);
    }

    let view = server.wait_for_status(&channel_id, "completed").await;
    let attempts: Vec<(u64, u64, String)> = Api::steps(&view, "webhook_attempt")
        .into_iter()
        .map(|s| {
            (
                s["attempt"].as_u64().unwrap(),
                s["http_status"].as_u64().unwrap(),
                s["webhook_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            (1, 500, webhook_id.clone()),
            (2, 500, webhook_id.clone()),
            (3, 200, webhook_id.clone())
        ]
    );
    assert_eq!(view["deliveries"][0]["attempt_count"], 3);
    assert_eq!(view["deliveries"][0]["status"], "delivered");
    assert_eq!(receiver.received().len(), 3);
}

/// A receiver that always answers 500 uses up the three-attempt schedule: the request fails
/// with `webhook_exhausted`, the browser gets the error, and the dead-letter queue holds
/// the delivery with all three attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_webhook_is_dead_lettered() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    server.event_workflow("content_generator", json!({})).await;
    let (endpoint_id, _) = server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel_id = ticket["channel_id"].as_str().unwrap().to_string();
    let mut socket = server.join(&ticket).await;

    let error = socket.push_with_status("error").await;
    assert_eq!(error["error"]["code"], "webhook_exhausted", "{error}");
    assert_eq!(error["channel_id"], channel_id);
    let hooks = receiver.wait_for(3).await;
    let webhook_id = hooks[0].header("webhook-id").to_string();
    assert!(hooks.iter().all(|h| h.header("webhook-id") == webhook_id));
    receiver.assert_quiet(3, Duration::from_millis(500)).await;

    let view = server.wait_for_status(&channel_id, "failed").await;
    assert_eq!(view["failure"], "webhook_exhausted");
    assert_eq!(view["deliveries"][0]["status"], "dead_lettered");
    let types = Api::timeline_types(&view);
    assert!(types.contains(&"dead_lettered".to_string()), "{types:?}");

    let (status, dlq) = server.get("/console/dlq").await;
    assert_eq!(status, 200, "{dlq}");
    let entries = dlq["data"].as_array().expect("dlq data");
    assert_eq!(entries.len(), 1, "{dlq:#}");
    let entry = &entries[0];
    assert_eq!(entry["channel_id"], channel_id);
    assert_eq!(entry["webhook_id"], webhook_id);
    assert_eq!(entry["endpoint_id"], endpoint_id);
    assert_eq!(entry["url"], receiver.url);
    assert_eq!(entry["payload"], hooks[0].json());
    let attempts = entry["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "{entry:#}");
    assert!(
        attempts.iter().all(|a| a["http_status"] == 500),
        "{entry:#}"
    );
}

/// A request's own `webhook_url` replaces the project's endpoints and is signed with the
/// project's request-webhook secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_webhook_url_is_used_and_signed() {
    let server = start(|_| {}).await;
    let endpoint = Receiver::start().await;
    let own = Receiver::start().await;
    own.call_back(&server.key, Callback::Enrich);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&endpoint.url).await;
    let (status, project) = server.get("/console/project").await;
    assert_eq!(status, 200, "{project}");
    let secret = project["request_webhook_secret"]
        .as_str()
        .unwrap()
        .to_string();

    let mut body = seed_request("content_generator");
    body["webhook_url"] = json!(own.url);
    let ticket = server.send_async(body).await;
    let channel_id = ticket["channel_id"].as_str().unwrap().to_string();
    let hooks = own.wait_for(1).await;
    assert_signed(&hooks[0], None, &secret, &channel_id);
    server.wait_for_status(&channel_id, "completed").await;
    assert!(endpoint.received().is_empty(), "the endpoint was not used");
}

/// A backend's callback with `task_id` and `metadata` reaches the browser as `task_id` and
/// `callback_metadata` of the `completed` push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_metadata_reaches_the_browser() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel_id = ticket["channel_id"].as_str().unwrap().to_string();
    let hooks = receiver.wait_for(1).await;
    let callback_url = hooks[0].json()["callback_url"]
        .as_str()
        .unwrap()
        .to_string();
    let path = callback_url
        .strip_prefix(&server.base)
        .expect("callback_url on this server");

    let (status, reply) = server
        .post(
            path,
            json!({
                "data": {"saved": true},
                "task_id": "optional_tracking_id",
                "metadata": {"processing_time_ms": 234}
            }),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"status": "accepted", "channel_id": channel_id})
    );
    let mut socket = server.join(&ticket).await;
    let completed = socket.push_with_status("completed").await;
    assert_eq!(completed["data"], json!({"saved": true}));
    assert_eq!(completed["task_id"], "optional_tracking_id");
    assert_eq!(
        completed["callback_metadata"],
        json!({"processing_time_ms": 234})
    );
    assert_eq!(completed["customer_data"], ticket["customer_data"]);
    let view = server.wait_for_status(&channel_id, "completed").await;
    assert_eq!(
        view["callback"]["metadata"],
        json!({"processing_time_ms": 234})
    );
}

/// A callback that arrives while eddy is still waiting for the webhook's 2xx is accepted
/// (as ModelRiver allows); the request completes, and the late 2xx neither undoes that nor starts a
/// callback timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_before_the_webhook_answer_is_accepted() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script_delays(&[Duration::from_secs(2)]);
    server
        .event_workflow("content_generator", json!({"callback_timeout_ms": 300}))
        .await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel_id = ticket["channel_id"].as_str().unwrap().to_string();
    receiver.wait_for(1).await;
    assert_eq!(server.request(&channel_id).await["status"], "generated");

    let (status, reply) = server
        .callback(&channel_id, json!({"data": {"early": true}}))
        .await;
    assert_eq!(status, 200, "{reply}");
    server.wait_for_status(&channel_id, "completed").await;
    // Once the delayed 2xx is recorded, the request is still completed.
    let view = server
        .wait_for_view(&channel_id, "the delayed 2xx recorded", |view| {
            view["deliveries"][0]["status"] == "delivered"
        })
        .await;
    assert_eq!(view["status"], "completed", "{view:#}");
    let mut socket = server.join(&ticket).await;
    let push = socket.next_push(WAIT).await;
    assert_eq!(push["status"], "completed", "{push}");
    assert_eq!(push["data"], json!({"early": true}));
}
