//! ModelRiver's own code against eddy (README, "ModelRiver compatibility"): what its demo backend, its webhook test
//! server and its SDK read, computed the way they compute it. Signatures and tokens are
//! checked under Node (`tests/js/modelriver.mjs`), the page is the official `phoenix`
//! client (`support::browser`), the backend a real webhook receiver.

use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::support::receiver::Received;
use crate::support::tools::node_json;
use crate::support::{
    Browser, Callback, KEY, Phoenix, Receiver, eventually, headphones, ok_if, start,
    start_with_receiver, text,
};

/// Data that JavaScript prints back differently from how Rust, Python or a model write
/// it: integer-like keys out of order, `1.0`, tiny, huge and big numbers, `-0`, a double
/// whose shortest form is a tie, U+2028, emoji, control characters.
pub fn awkward() -> Value {
    json!({
        "reply": "Line\u{2028}separator, emoji 😀, bell \u{7}, unit \u{1f}, \"quoted\" \\",
        "10": "ten", "2": "two", "b": "bee", "1": "one",
        "confidence": 1.0, "ratio": 0.1, "tiny": 1e-7, "small": 0.00001, "huge": 1e21,
        "negative_zero": -0.0, "big": 12345678901234567890u64, "beyond": 9007199254740993u64,
        // 1910195614231229.25: its shortest forms …229.2 and …229.3 tie.
        "tie": 7640782456924917.0 / 4.0,
        "nested": {"3": [1.5e300, -2.5e-8, {"0": true, "x": null}], "0": []},
    })
}

/// Awkward data with 1,500 more doubles: random bit patterns, halves and quarters of
/// large integers (whose shortest forms can tie), and short decimals at every scale.
fn awkward_with_doubles() -> Value {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut doubles = Vec::new();
    while doubles.len() < 500 {
        let x = f64::from_bits(rng.random::<u64>());
        if x.is_finite() {
            doubles.push(json!(x));
        }
    }
    for _ in 0..500 {
        let n = rng.random_range(1u64..1 << 53) as f64;
        doubles.push(json!(n / [2.0, 4.0, 8.0][rng.random_range(0..3)]));
        let digits = rng.random_range(1u64..1_000_000) as f64;
        doubles.push(json!(digits * 10f64.powi(rng.random_range(-30..30))));
    }
    let mut data = awkward();
    data["doubles"] = Value::Array(doubles);
    data
}

/// What `tests/js/modelriver.mjs` makes of one webhook under `secret`.
async fn checks(hook: &Received, secret: &str) -> Value {
    let headers: Map<String, Value> = hook
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), json!(value.to_str().unwrap_or_default())))
        .collect();
    let body = std::str::from_utf8(&hook.body).expect("webhook bodies are UTF-8");
    let input = json!({"secret": secret, "headers": headers, "body": body});
    node_json("modelriver.mjs", "webhook", &input).await
}

const ALL_PASS: [&str; 6] = [
    "seed",
    "raw",
    "demo",
    "test_server",
    "standard",
    "roundtrip",
];

fn assert_all_pass(checks: &Value, what: &str) {
    for check in ALL_PASS {
        assert_eq!(checks[check], true, "{what}: {check} fails: {checks}");
    }
}

/// The webhook for `channel_id` among what `receiver` got.
async fn hook_for(receiver: &Receiver, channel_id: &str, seen: usize) -> Received {
    let hooks = receiver.wait_for(seen).await;
    hooks
        .into_iter()
        .find(|h| h.header("mr-channel-id") == channel_id)
        .unwrap_or_else(|| panic!("no webhook for {channel_id}"))
}

/// `X-ModelRiver-Signature` verifies the way ModelRiver's demo backend and its webhook
/// test server check it, and `mr-signature` the seed's way and over the raw body, and
/// Standard Webhooks too, on every kind of webhook (`task.ai_generated`, `task.completed`
/// success and error, a per-request `webhook_url` signed with the project's
/// `request_webhook_secret`), with data and metadata that JavaScript reprints differently;
/// a rotated secret's grace keeps only `webhook-signature` verifying under the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signature_verifies_awkward_data_under_node() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) = server.register_webhook(&receiver.url).await;
    let output = server
        .create_output("awkward", awkward_with_doubles())
        .await;
    for (name, event, mode) in [
        ("evented", Some("content_ready"), "testing"),
        ("plain", None, "testing"),
        ("broken", None, "production"),
    ] {
        server
            .create_workflow(json!({
                "name": name, "event_name": event, "provider": "openai", "model": "gpt-4o",
                "structured_output_id": output, "mode": mode,
            }))
            .await;
    }
    let request = |workflow: &str| {
        json!({"workflow": workflow, "messages": [{"role": "user", "content": "hi"}],
               "metadata": awkward()})
    };
    let mut seen = 0;
    for (workflow, kind) in [
        ("evented", "task.ai_generated"),
        ("plain", "task.completed"),
        ("broken", "task.completed"),
    ] {
        let ticket = server.send_async(request(workflow)).await;
        seen += 1;
        let hook = hook_for(&receiver, text(&ticket, "channel_id"), seen).await;
        assert_eq!(hook.json()["type"], kind);
        assert!(hook.json()["data"].is_object(), "{}", hook.json());
        assert_all_pass(&checks(&hook, &secret).await, workflow);
    }

    // A per-request webhook_url: the secret is one GET away.
    let (_, project) = server.get("/console/project").await;
    let request_secret = text(&project, "request_webhook_secret");
    let mut body = request("evented");
    body["webhook_url"] = json!(receiver.url);
    let ticket = server.send_async(body).await;
    seen += 1;
    let hook = hook_for(&receiver, text(&ticket, "channel_id"), seen).await;
    assert_eq!(hook.header("x-modelriver-webhook-id"), "request");
    assert_all_pass(&checks(&hook, request_secret).await, "webhook_url");

    // During a rotation's grace the single-valued signatures carry the new secret only.
    let new_secret = server.rotate_secret(&endpoint).await;
    let ticket = server.send_async(request("evented")).await;
    seen += 1;
    let hook = hook_for(&receiver, text(&ticket, "channel_id"), seen).await;
    assert_all_pass(&checks(&hook, &new_secret).await, "new secret");
    let old = checks(&hook, &secret).await;
    assert_eq!(
        (&old["standard"], &old["raw"], &old["demo"]),
        (&json!(true), &json!(false), &json!(false)),
        "{old}"
    );
}

/// `events` on the request makes a workflow without `event_name` event-driven, as the demo
/// backend's request does: `task.ai_generated` with that event, a callback URL, and the
/// backend's callback reaching the page; `delivery_method` takes the documented values and
/// anything else is a 400 naming the field that stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_events_make_the_request_event_driven() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.call_back(KEY, Callback::Enrich);
    let output = server.create_output("chat_output", headphones()).await;
    server
        .create_workflow(json!({
            "name": "mr_chatbot_workflow", "provider": "openai", "model": "gpt-4o",
            "structured_output_id": output, "mode": "testing",
        }))
        .await;
    let demo_request = |delivery_method: Value, events: Value| {
        json!({
            "workflow": "mr_chatbot_workflow",
            "messages": [{"role": "user", "content": "Hello, how are you?"}],
            "delivery_method": delivery_method,
            "webhook_url": receiver.url,
            "events": events,
            "metadata": {"conversation_id": "c1", "message_id": "m1"},
        })
    };

    for (body, field) in [
        (
            demo_request(json!("sms"), json!(["webhook_received"])),
            "delivery_method",
        ),
        (
            demo_request(json!(7), json!(["webhook_received"])),
            "delivery_method",
        ),
        (demo_request(json!("websocket"), json!([""])), "events[0]"),
        (
            demo_request(json!("websocket"), json!("webhook_received")),
            "events",
        ),
    ] {
        let (status, reply) = server.post("/v1/ai/async", body).await;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["error"]["code"], "invalid_request");
        let message = text(&reply["error"], "message");
        assert!(message.starts_with(field), "{message} names {field}");
    }
    let mut no_target = demo_request(json!("websocket"), json!(["webhook_received"]));
    no_target.as_object_mut().unwrap().remove("webhook_url");
    let (status, reply) = server.post("/v1/ai/async", no_target).await;
    assert_eq!(status, 400, "nowhere to deliver the event: {reply}");
    let (_, listed) = server.get("/console/requests").await;
    assert_eq!(listed["data"], json!([]), "refused requests store nothing");

    let ticket = server
        .send_async(demo_request(
            json!("websocket"),
            json!(["webhook_received"]),
        ))
        .await;
    let channel_id = text(&ticket, "channel_id");
    let mut socket = server.join(&ticket).await;
    let hook = receiver.wait_for(1).await.remove(0).json();
    assert_eq!(hook["type"], "task.ai_generated");
    assert_eq!(hook["event"], "webhook_received");
    assert_eq!(
        hook["callback_url"],
        format!("{}/v1/callback/{channel_id}", server.base)
    );
    assert_eq!(hook["callback_required"], true);
    assert_eq!(hook["ai_response"]["data"], headphones());
    let completed = socket.push_with_status("completed").await;
    assert_eq!(completed["data"]["slug"], "prosound-x1-wireless-headphones");
    let view = server.wait_for_status(channel_id, "completed").await;
    assert_eq!(view["event_name"], "webhook_received");

    let ticket = server
        .send_async(demo_request(json!("webhook"), json!(["webhook_received"])))
        .await;
    server
        .wait_for_status(text(&ticket, "channel_id"), "completed")
        .await;
}

/// The `ai_generated` push is what the SDK's `handleResponse` expects of it (a step:
/// `channel_id`, `event_name`, `meta.duration_ms`, no `ai_response`), so a page that shows
/// the first push carrying an answer, as ModelRiver's demo page does, shows the backend's
/// enriched `completed`, seen with the official phoenix client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_the_enriched_result_not_the_raw_one() {
    let (server, receiver) = start_with_receiver(|_| {}).await;
    server
        .event_workflow("content_generator", json!({"response_delay_ms": 100}))
        .await;
    receiver.call_back(KEY, Callback::Enrich);
    receiver.hold_callbacks();
    let ticket = server
        .send_async(crate::support::seed_request("content_generator"))
        .await;
    let mut browser = Browser::start().await;
    browser
        .join_ticket("page", "chat", &ticket, json!({}))
        .await;
    let generated = browser.response("chat", "ai_generated").await;
    assert_eq!(generated["channel_id"], ticket["channel_id"]);
    assert_eq!(generated["event_name"], "content_ready");
    assert!(generated["meta"]["duration_ms"].is_u64(), "{generated}");
    for absent in ["ai_response", "data"] {
        assert!(generated.get(absent).is_none(), "{absent} in {generated}");
    }
    receiver.release_callbacks();
    browser.response("chat", "completed").await;
    let shown = browser
        .events()
        .iter()
        .filter(|e| e["ev"] == "response")
        .map(|e| &e["payload"])
        .find(|p| p["data"].is_object() || p["ai_response"]["data"].is_object())
        .cloned()
        .expect("a push with an answer");
    assert_eq!(shown["status"], "completed", "{shown}");
    assert_eq!(shown["data"]["slug"], "prosound-x1-wireless-headphones");
    browser.finish().await;
}

/// `ws_token` reads as the SDK's `decodeToken` reads it (a JWT: `project_id`,
/// `channel_id`, `topic`, `exp`) and `isTokenExpired` is false until eddy refuses it; it
/// still connects after a restart (the store's key signs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_token_decodes_as_the_sdk_decodes_it() {
    let mut server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let ticket = server
        .send_async(crate::support::seed_request("content_generator"))
        .await;
    let token = text(&ticket, "ws_token");
    let decoded = node_json("modelriver.mjs", "token", &json!({ "token": token })).await;
    assert_eq!(
        decoded["payload"]["project_id"], ticket["project_id"],
        "{decoded}"
    );
    assert_eq!(decoded["payload"]["channel_id"], ticket["channel_id"]);
    assert_eq!(decoded["topic"], ticket["websocket_channel"]);
    assert_eq!(decoded["expired"], false);
    let exp = decoded["payload"]["exp"].as_u64().expect("exp in seconds");
    let now = crate::support::unix_now();
    assert!(
        now < exp && exp <= now + 300,
        "exp {exp} is within 5 minutes"
    );

    server.restart_in_place().await;
    // The token outlives a restart.
    server.join(&ticket).await;

    server
        .restart_with(|c| c.ws_token_ttl = std::time::Duration::from_secs(1))
        .await;
    let (status, fresh) = server
        .post(
            "/v1/ai/reconnect",
            json!({"channel_id": ticket["channel_id"]}),
        )
        .await;
    assert_eq!(status, 200, "{fresh}");
    let short = text(&fresh, "ws_token");
    eventually("the SDK to see the token expired", async || {
        let decoded = node_json("modelriver.mjs", "token", &json!({ "token": short })).await;
        ok_if(decoded["expired"] == true, decoded)
    })
    .await;
    let refused = Phoenix::connect(text(&fresh, "websocket_url"), short).await;
    assert!(refused.is_err(), "an expired token is refused");
}

/// The SDK's reload paths: with `persist`, a reloaded page reconnects with the stored
/// token and channel (`reconnect()`), or, once `isTokenExpired` says so, asks its backend
/// for `/api/v1/ai/reconnect` (`reconnectWithBackend()`, whose answer it reads as
/// `{channel_id, ws_token, websocket_url, websocket_channel}`); either way it is sent the
/// latest message and then the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reload_paths_reach_the_result() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    receiver.call_back(KEY, Callback::Enrich);
    receiver.hold_callbacks();
    let stored = server
        .send_async(crate::support::seed_request("content_generator"))
        .await;
    let mut browser = Browser::start().await;
    browser
        .join_ticket("first", "before", &stored, json!({}))
        .await;
    let generated = browser.response("before", "ai_generated").await;
    browser
        .send(json!({"op": "disconnect", "socket": "first"}))
        .await;
    browser.next(|e| e["ev"] == "disconnected").await;

    // reconnect(): the stored token is still good, so the reloaded page uses it.
    let decoded = node_json(
        "modelriver.mjs",
        "token",
        &json!({"token": stored["ws_token"]}),
    )
    .await;
    assert_eq!(decoded["expired"], false, "{decoded}");
    browser
        .join_ticket("reloaded", "after", &stored, json!({}))
        .await;
    assert_eq!(browser.response("after", "ai_generated").await, generated);

    // reconnectWithBackend(): the backend relays {channel_id} to /api/v1/ai/reconnect.
    let (status, fresh) = server
        .post(
            "/api/v1/ai/reconnect",
            json!({"channel_id": stored["channel_id"]}),
        )
        .await;
    assert_eq!(status, 200, "{fresh}");
    for field in [
        "channel_id",
        "websocket_url",
        "websocket_channel",
        "project_id",
    ] {
        assert_eq!(fresh[field], stored[field], "{field}");
    }
    let decoded = node_json(
        "modelriver.mjs",
        "token",
        &json!({"token": fresh["ws_token"]}),
    )
    .await;
    assert_eq!(
        decoded["payload"]["channel_id"], stored["channel_id"],
        "{decoded}"
    );
    browser
        .join_ticket("backend", "fresh", &fresh, json!({}))
        .await;
    assert_eq!(browser.response("fresh", "ai_generated").await, generated);

    receiver.release_callbacks();
    for channel in ["after", "fresh"] {
        let completed = browser.response(channel, "completed").await;
        assert_eq!(completed["data"]["slug"], "prosound-x1-wireless-headphones");
    }
    browser.finish().await;
}
