//! The browser side, proven with the official `phoenix` JS client (pinned in
//! `tests/js/package.json`) under Node: what ModelRiver's client SDK runs on. Each test
//! drives a real eddy and a real phoenix `Socket` (see `support::browser`) through one
//! rule of the README's "WebSocket" section.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Browser, Callback, KEY, Receiver, TestServer, seed_request, seeded, start, text,
};

/// Quick recovery for tests: phoenix's own backoff, scaled down.
fn fast() -> Value {
    json!({"reconnectAfterMs": [50, 100, 200, 500], "rejoinAfterMs": [200, 500, 1000]})
}

/// A server with the seed's event-driven workflow and a receiver that calls back like the
/// seed's backend once callbacks are released (they are held at first).
async fn event_driven(tweak: impl FnOnce(&mut eddy::Config)) -> (TestServer, Receiver) {
    let (server, receiver) = seeded(tweak).await;
    receiver.call_back(KEY, Callback::Enrich);
    receiver.hold_callbacks();
    (server, receiver)
}

/// On one socket, joins on topics the token does not grant are refused with each of SPEC
/// §5's reasons, the right topic joins with `{}` and gets its push, and every reply
/// carries the refs phoenix sent (its callbacks fire only on an exact match).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_each_refusal() {
    let (server, _receiver) = event_driven(|_| {}).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let other = server.send_async(seed_request("content_generator")).await;
    let (project, channel) = (text(&ticket, "project_id"), text(&ticket, "channel_id"));
    let mut browser = Browser::start().await;
    browser.socket("tab", &ticket, fast()).await;
    let refusals = [
        ("lobby", "room:lobby".to_string(), "invalid_channel_format"),
        (
            "bad_project",
            format!("ai_response:not-a-uuid:{channel}"),
            "invalid_project_uuid",
        ),
        (
            "bad_channel",
            format!("ai_response:{project}:not-a-uuid"),
            "invalid_channel_uuid",
        ),
        (
            "foreign",
            text(&other, "websocket_channel").to_string(),
            "unauthorized_project_access",
        ),
    ];
    for (name, topic, reason) in &refusals {
        let join = browser.join("tab", name, topic).await;
        assert_eq!(join["status"], "error", "{topic}: {join}");
        assert_eq!(join["response"], json!({"reason": reason}), "{topic}");
    }
    let topic = text(&ticket, "websocket_channel");
    let join = browser.join("tab", "mine", topic).await;
    assert_eq!(join["status"], "ok", "{join}");
    assert_eq!(join["response"], json!({}));
    let push = browser.response("mine", "ai_generated").await;
    assert_eq!(push["channel_id"], channel);
    assert_eq!(push["event_name"], "content_ready");

    let reply = browser
        .next(|e| e["ev"] == "frame" && e["topic"] == topic && e["event"] == "phx_reply")
        .await;
    assert_eq!(reply["join_ref"], join["join_ref"], "{reply}");
    assert_eq!(reply["ref"], join["join_ref"], "{reply}");
    assert_eq!(reply["payload"], json!({"status": "ok", "response": {}}));
    browser.finish().await;
}

/// A bad or expired token is answered with 403 on the upgrade (the phoenix client reports
/// a transport error and never opens); a good token also works as phoenix's `authToken`
/// (sent as a subprotocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_expired_token_is_a_403() {
    let (server, _receiver) = event_driven(|_| {}).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let mut browser = Browser::start().await;
    let mut forged = ticket.clone();
    forged["ws_token"] = json!("AQ-not-a-token");
    browser.socket("forged", &forged, fast()).await;
    let error = browser
        .next(|e| e["ev"] == "error" && e["socket"] == "forged")
        .await;
    assert!(
        error["message"].as_str().unwrap().contains("403"),
        "{error}"
    );
    browser
        .send(json!({"op": "disconnect", "socket": "forged"}))
        .await;

    browser
        .send(json!({
            "op": "socket", "id": "bearer", "url": ticket["websocket_url"],
            "authToken": ticket["ws_token"], "opts": fast(),
        }))
        .await;
    browser
        .send(json!({"op": "connect", "socket": "bearer"}))
        .await;
    let join = browser
        .join("bearer", "mine", text(&ticket, "websocket_channel"))
        .await;
    assert_eq!(join["status"], "ok", "{join}");
    assert!(
        !browser
            .events()
            .iter()
            .any(|e| e["ev"] == "open" && e["socket"] == "forged"),
        "a forged token never opens a socket"
    );

    // Tokens that live zero seconds are expired when issued.
    let (expired_server, _receiver) = event_driven(|c| c.ws_token_ttl = Duration::ZERO).await;
    let expired = expired_server
        .send_async(seed_request("content_generator"))
        .await;
    browser.socket("expired", &expired, fast()).await;
    let error = browser
        .next(|e| e["ev"] == "error" && e["socket"] == "expired")
        .await;
    assert!(
        error["message"].as_str().unwrap().contains("403"),
        "{error}"
    );
    browser.finish().await;
}

/// With heartbeats every 200 ms, a socket stays open across several 1 s idle timeouts;
/// the SDK's channel-level `heartbeat` is answered `ok` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_the_socket_open() {
    let (server, _receiver) = event_driven(|c| c.ws_idle_timeout = Duration::from_secs(1)).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let mut browser = Browser::start().await;
    let mut opts = fast();
    opts["heartbeatIntervalMs"] = json!(200);
    browser.join_ticket("tab", "mine", &ticket, opts).await;
    let opened = browser.next(|e| e["ev"] == "open").await;
    let mut last = opened.clone();
    for _ in 0..18 {
        last = browser
            .next(|e| e["ev"] == "frame" && e["topic"] == "phoenix" && e["event"] == "phx_reply")
            .await;
        assert_eq!(last["payload"]["status"], "ok", "{last}");
    }
    let held = last["t"].as_u64().unwrap() - opened["t"].as_u64().unwrap();
    assert!(
        held >= 3000,
        "18 heartbeats span over 3 idle timeouts ({held} ms)"
    );
    browser
        .send(json!({"op": "push", "channel": "mine", "event": "heartbeat", "tag": "sdk"}))
        .await;
    let reply = browser.next_on("reply", "mine").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let events = browser.finish().await;
    let closes: Vec<_> = events.iter().filter(|e| e["ev"] == "close").collect();
    assert!(
        closes.iter().all(|c| c["t"].as_u64() > last["t"].as_u64()),
        "no close before the test ended it: {closes:?}"
    );
}

/// A socket that sends nothing for the idle timeout is closed by the server (1000,
/// "heartbeat timeout"); phoenix reconnects by itself, rejoins, and is replayed the
/// channel's latest message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_socket_is_closed_and_phoenix_recovers() {
    let (server, _receiver) = event_driven(|c| c.ws_idle_timeout = Duration::from_secs(1)).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let mut browser = Browser::start().await;
    let join = browser.join_ticket("tab", "mine", &ticket, fast()).await;
    let first = browser.response("mine", "ai_generated").await;
    let opened = browser.next(|e| e["ev"] == "open").await;
    let closed = browser.next(|e| e["ev"] == "close").await;
    assert_eq!(closed["code"], 1000, "{closed}");
    assert_eq!(closed["reason"], "heartbeat timeout");
    let silent = closed["t"].as_u64().unwrap() - opened["t"].as_u64().unwrap();
    assert!(
        silent >= 900,
        "closed after the idle timeout, not before ({silent} ms)"
    );
    browser.next(|e| e["ev"] == "open").await;
    let rejoin = browser.next_on("join", "mine").await;
    assert_eq!(rejoin["status"], "ok", "{rejoin}");
    assert_ne!(
        rejoin["join_ref"], join["join_ref"],
        "a rejoin is a new join"
    );
    assert_eq!(browser.response("mine", "ai_generated").await, first);
    browser.finish().await;
}

/// Two tabs joined on one channel both get every push: `ai_generated`, then `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_get_every_push() {
    let (server, receiver) = event_driven(|_| {}).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let mut browser = Browser::start().await;
    for tab in ["tab1", "tab2"] {
        browser.join_ticket(tab, tab, &ticket, fast()).await;
    }
    let generated1 = browser.response("tab1", "ai_generated").await;
    let generated2 = browser.response("tab2", "ai_generated").await;
    assert_eq!(generated1, generated2);
    receiver.release_callbacks();
    let completed1 = browser.response("tab1", "completed").await;
    let completed2 = browser.response("tab2", "completed").await;
    assert_eq!(completed1, completed2);
    assert_eq!(
        completed1["data"]["slug"],
        "prosound-x1-wireless-headphones"
    );
    let view = server
        .wait_for_status(text(&ticket, "channel_id"), "completed")
        .await;
    let pushed: Vec<_> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] == "websocket_push" && s["status"] == "completed")
        .collect();
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0]["sockets"], 2, "{pushed:?}");
    browser.finish().await;
}

/// Pushes for a request whose browser never connected are not an error (the request
/// completes, its timeline notes zero sockets), and a browser that joins afterwards gets
/// the latest message right after its join reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_join_gets_the_latest_message_at_once() {
    let (server, receiver) = event_driven(|_| {}).await;
    receiver.release_callbacks();
    let ticket = server.send_async(seed_request("content_generator")).await;
    let view = server
        .wait_for_status(text(&ticket, "channel_id"), "completed")
        .await;
    let pushes: Vec<_> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] == "websocket_push")
        .collect();
    assert!(!pushes.is_empty(), "{view:#}");
    assert!(pushes.iter().all(|p| p["sockets"] == 0), "{pushes:?}");

    let mut browser = Browser::start().await;
    browser.join_ticket("tab", "late", &ticket, fast()).await;
    let next = browser
        .next(|e| e["ev"] == "frame" && e["event"] != "phx_reply")
        .await;
    assert_eq!(
        next["event"], "response",
        "the push follows the join reply: {next}"
    );
    assert_eq!(next["payload"]["status"], "completed");
    let completed = browser.response("late", "completed").await;
    assert_eq!(completed["data"]["slug"], "prosound-x1-wireless-headphones");
    browser.finish().await;
}

/// When the server goes away (restart: close 1001), phoenix reconnects to the same URL
/// with the same token, rejoins, is replayed the latest message, and gets the next push
/// over the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phoenix_reconnects_after_the_server_drops_it() {
    let (mut server, receiver) = event_driven(|_| {}).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel = text(&ticket, "channel_id").to_string();
    let mut browser = Browser::start().await;
    browser.join_ticket("tab", "mine", &ticket, fast()).await;
    let generated = browser.response("mine", "ai_generated").await;
    server.wait_for_status(&channel, "delivered").await;

    server.restart_in_place().await;
    let closed = browser.next(|e| e["ev"] == "close").await;
    assert_eq!(closed["code"], 1001, "{closed}");
    let rejoin = browser.next_on("join", "mine").await;
    assert_eq!(rejoin["status"], "ok", "{rejoin}");
    assert_eq!(browser.response("mine", "ai_generated").await, generated);

    receiver.release_callbacks();
    let completed = browser.response("mine", "completed").await;
    assert_eq!(completed["channel_id"], channel.as_str());
    browser.finish().await;
}

/// `POST /v1/ai/reconnect` issues a fresh token for an existing request of the project;
/// phoenix connects and joins with it and gets the latest message. Unknown channels are
/// 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_endpoint_issues_a_fresh_token() {
    let (server, _receiver) = event_driven(|_| {}).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel = text(&ticket, "channel_id");
    server.wait_for_status(channel, "delivered").await;
    let (status, fresh) = server
        .post("/v1/ai/reconnect", json!({"channel_id": channel}))
        .await;
    assert_eq!(status, 200, "{fresh}");
    let fields: Vec<&String> = fresh.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        [
            "channel_id",
            "project_id",
            "ws_token",
            "websocket_url",
            "websocket_channel"
        ]
    );
    for field in [
        "channel_id",
        "project_id",
        "websocket_url",
        "websocket_channel",
    ] {
        assert_eq!(fresh[field], ticket[field], "{field}");
    }
    let mut browser = Browser::start().await;
    browser.join_ticket("tab", "mine", &fresh, fast()).await;
    let push = browser.response("mine", "ai_generated").await;
    assert_eq!(push["channel_id"], channel);

    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, error) = server
        .post("/v1/ai/reconnect", json!({"channel_id": unknown}))
        .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "not_found");
    browser.finish().await;
}

/// A workflow without `event_name` delivers twice: `success` on the socket and the
/// `task.completed` webhook, with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_workflow_dual_delivery() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    let output = server
        .create_output("summary_output", json!({"summary": "two lines"}))
        .await;
    server
        .create_workflow(json!({
            "name": "summarizer", "provider": "openai", "model": "gpt-4o-mini",
            "structured_output_id": output, "mode": "testing", "response_delay_ms": 200,
        }))
        .await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("summarizer")).await;
    let mut browser = Browser::start().await;
    browser.join_ticket("tab", "mine", &ticket, fast()).await;
    let success = browser.response("mine", "success").await;
    assert_eq!(success["data"], json!({"summary": "two lines"}));
    assert_eq!(success["channel_id"], ticket["channel_id"]);
    assert_eq!(success["customer_data"], ticket["customer_data"]);

    let hook = receiver.wait_for(1).await[0].json();
    assert_eq!(hook["type"], "task.completed");
    assert_eq!(hook["status"], "success");
    assert_eq!(hook["channel_id"], ticket["channel_id"]);
    assert_eq!(hook["data"], success["data"]);
    server
        .wait_for_status(text(&ticket, "channel_id"), "completed")
        .await;
    browser.finish().await;
}

/// `leave` gets `phx_reply ok` and then `phx_close` for that join; phoenix closes the
/// channel, and a new join on the same socket works and is replayed the latest message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_then_join_again() {
    let (server, _receiver) = event_driven(|_| {}).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let topic = text(&ticket, "websocket_channel");
    let mut browser = Browser::start().await;
    let join = browser.join_ticket("tab", "first", &ticket, fast()).await;
    let generated = browser.response("first", "ai_generated").await;
    browser
        .send(json!({"op": "leave", "channel": "first"}))
        .await;
    let left = browser.next_on("left", "first").await;
    assert_eq!(left["status"], "ok", "{left}");
    browser.next_on("chan_close", "first").await;
    let close = browser
        .next(|e| e["ev"] == "frame" && e["event"] == "phx_close")
        .await;
    assert_eq!(close["topic"], topic);
    assert_eq!(close["join_ref"], join["join_ref"], "{close}");

    let again = browser.join("tab", "second", topic).await;
    assert_eq!(again["status"], "ok", "{again}");
    assert_eq!(browser.response("second", "ai_generated").await, generated);
    browser.finish().await;
}
