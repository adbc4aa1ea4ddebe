//! Phoenix Channels v2 at `/socket/websocket` (README, "WebSocket"): token checks on the upgrade, join
//! refusals with their reasons, heartbeats, leaving, and replay to reconnecting clients.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::phoenix::Closed;
use crate::support::{
    Phoenix, Receiver, TestServer, WAIT, eventually, ok_if, seed_request, seeded, start,
};

/// A server with the seed's workflow and endpoint, and one accepted request's ticket.
async fn with_ticket(tweak: impl FnOnce(&mut eddy::Config)) -> (TestServer, Receiver, Value) {
    let (server, receiver) = seeded(tweak).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    (server, receiver, ticket)
}

fn refused_status(result: Result<Phoenix, tungstenite::Error>) -> u16 {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// A missing, malformed, tampered or expired token is refused with 403 on the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_on_upgrade() {
    let (server, _receiver, ticket) = with_ticket(|_| {}).await;
    let url = ticket["websocket_url"].as_str().unwrap();
    let token = ticket["ws_token"].as_str().unwrap();
    let mut tampered = token.to_string();
    let last = if tampered.ends_with('A') { "B" } else { "A" };
    tampered.replace_range(tampered.len() - 1.., last);
    for bad in ["", "nonsense", tampered.as_str()] {
        assert_eq!(
            refused_status(Phoenix::connect(url, bad).await),
            403,
            "{bad}"
        );
    }
    drop(server);

    // Tokens that live zero seconds are expired when issued.
    let (_server, _receiver, ticket) = with_ticket(|c| c.ws_token_ttl = Duration::ZERO).await;
    let result = Phoenix::connect(
        ticket["websocket_url"].as_str().unwrap(),
        ticket["ws_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(refused_status(result), 403);
}

/// Regression: a socket opened with a valid token and kept alive by heartbeats could
/// still join after the token expired. Joins are checked against the token's expiry: the
/// same join that succeeded before it is refused with `token_expired` after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_after_the_token_expired_are_refused() {
    let (_server, _receiver, ticket) =
        with_ticket(|c| c.ws_token_ttl = Duration::from_secs(5)).await;
    let topic = ticket["websocket_channel"].as_str().unwrap();
    let mut socket = Phoenix::connect(
        ticket["websocket_url"].as_str().unwrap(),
        ticket["ws_token"].as_str().unwrap(),
    )
    .await
    .expect("connects before the token expires");
    let mut joined_once = false;
    let refusal = eventually("a join refused after the token expired", async || {
        let reply = socket.join(topic).await;
        if reply["status"] != "ok" {
            return Ok(reply);
        }
        joined_once = true;
        assert_eq!(socket.leave(topic).await["status"], "ok");
        assert_eq!(socket.heartbeat().await["status"], "ok");
        Err(reply)
    })
    .await;
    assert_eq!(refusal["response"]["reason"], "token_expired", "{refusal}");
    assert!(joined_once, "the first join, before expiry, succeeds");
    assert_eq!(
        socket.heartbeat().await["status"],
        "ok",
        "the socket stays up"
    );
}

/// Joins on topics the token was not issued for are refused with ModelRiver's four reasons, and
/// the socket stays usable for the right topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refusals_name_the_reason() {
    let (server, _receiver, ticket) = with_ticket(|_| {}).await;
    let other = server.send_async(seed_request("content_generator")).await;
    let project = ticket["project_id"].as_str().unwrap();
    let channel = ticket["channel_id"].as_str().unwrap();
    let stranger = uuid::Uuid::new_v4();
    let mut socket = Phoenix::connect(
        ticket["websocket_url"].as_str().unwrap(),
        ticket["ws_token"].as_str().unwrap(),
    )
    .await
    .expect("connects");
    let cases = [
        ("room:lobby".to_string(), "invalid_channel_format"),
        (
            "ai_response:only-one-part".to_string(),
            "invalid_channel_format",
        ),
        (
            format!("ai_response:{project}:{channel}:x"),
            "invalid_channel_format",
        ),
        (
            format!("ai_response:not-a-uuid:{channel}"),
            "invalid_project_uuid",
        ),
        (
            format!("ai_response:{project}:not-a-uuid"),
            "invalid_channel_uuid",
        ),
        (
            format!("ai_response:{project}:{stranger}"),
            "unauthorized_project_access",
        ),
        (
            format!("ai_response:{stranger}:{channel}"),
            "unauthorized_project_access",
        ),
        (
            other["websocket_channel"].as_str().unwrap().to_string(),
            "unauthorized_project_access",
        ),
    ];
    for (topic, reason) in cases {
        let reply = socket.join(&topic).await;
        assert_eq!(
            reply,
            json!({"status": "error", "response": {"reason": reason}}),
            "{topic}"
        );
    }
    let reply = socket
        .join(ticket["websocket_channel"].as_str().unwrap())
        .await;
    assert_eq!(reply, json!({"status": "ok", "response": {}}));
    let push = socket.next_push(WAIT).await;
    assert_eq!(push["channel_id"], channel);
}

/// Heartbeats on the `phoenix` topic and on a joined topic get `phx_reply ok` echoing the
/// ref; `phx_leave` gets `phx_reply ok` then `phx_close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_leave() {
    let (server, _receiver, ticket) = with_ticket(|_| {}).await;
    let topic = ticket["websocket_channel"].as_str().unwrap();
    let mut socket = server.join(&ticket).await;
    for _ in 0..3 {
        assert_eq!(
            socket.heartbeat().await,
            json!({"status": "ok", "response": {}})
        );
    }
    let msg_ref = socket.send(json!("1"), topic, "heartbeat", json!({})).await;
    assert_eq!(
        socket.reply_to(&msg_ref).await,
        json!({"status": "ok", "response": {}})
    );
    assert_eq!(
        socket.leave(topic).await,
        json!({"status": "ok", "response": {}})
    );
    loop {
        let frame = socket.next_frame(WAIT).await.expect("phx_close follows");
        if frame.event == "phx_close" {
            assert_eq!(frame.topic, topic);
            break;
        }
        assert_eq!(frame.event, "response", "{frame:?}");
    }
}

/// A client that reconnects with the same token (as the phoenix client does by itself)
/// joins again and is sent the channel's latest message at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_token_reconnects_and_replays() {
    let (server, _receiver, ticket) = with_ticket(|_| {}).await;
    let mut first = server.join(&ticket).await;
    let pushed = first.push_with_status("ai_generated").await;
    drop(first);
    let mut again = server.join(&ticket).await;
    let replayed = again.next_push(Duration::from_secs(5)).await;
    assert_eq!(replayed, pushed);
}

/// A frame that is not a Phoenix v2 array closes that socket only (close code 1007); other
/// sockets keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_closes_only_that_socket() {
    let (server, _receiver, ticket) = with_ticket(|_| {}).await;
    let mut bad = server.join(&ticket).await;
    let mut good = server.join(&ticket).await;
    bad.send_text("{\"not\":\"a frame\"}".to_string()).await;
    let close = closed_by_server(&mut bad).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Invalid);
    assert_eq!(
        good.heartbeat().await,
        json!({"status": "ok", "response": {}})
    );
}

/// When the server shuts down, joined sockets are closed with code 1001 (going away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_1001() {
    let (mut server, _receiver, ticket) = with_ticket(|_| {}).await;
    let mut socket = server.join(&ticket).await;
    server.shutdown().await;
    let close = closed_by_server(&mut socket).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
}

/// Waits for the server to end `socket`; returns its close frame, if it sent one.
async fn closed_by_server(socket: &mut Phoenix) -> Option<tungstenite::protocol::CloseFrame> {
    loop {
        match socket.next_frame(WAIT).await {
            Ok(_) => continue,
            Err(Closed::Closed(frame)) => return frame,
            Err(Closed::Timeout) => panic!("the server did not close the socket"),
        }
    }
}

/// An oversized text frame (1009) or a binary frame (1003) closes that socket only;
/// another socket on the same channel keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_binary_frame_closes_only_that_socket() {
    let (server, _receiver, ticket) = with_ticket(|_| {}).await;
    let mut good = server.join(&ticket).await;
    let mut big = server.join(&ticket).await;
    let topic = ticket["websocket_channel"].as_str().unwrap();
    let padding = "x".repeat(eddy::ws::socket::MAX_CLIENT_MESSAGE);
    big.send(json!("1"), topic, "heartbeat", json!({ "pad": padding }))
        .await;
    let frame = closed_by_server(&mut big).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Size);

    let mut binary = server.join(&ticket).await;
    binary.send_binary(vec![0, 1, 2]).await;
    let frame = closed_by_server(&mut binary).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Unsupported);

    assert_eq!(
        good.heartbeat().await,
        json!({"status": "ok", "response": {}})
    );
}

/// Regression: tungstenite refuses a frame larger than its write-buffer cap (it was 256
/// KiB), which killed the socket on a large result, and again on every rejoin. A push of
/// 300 KB now arrives whole, live and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_larger_than_256_kib_arrives() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    let text = "a".repeat(300_000);
    let output = server
        .create_output("big_output", json!({ "text": text }))
        .await;
    server
        .create_workflow(json!({
            "name": "big", "provider": "openai", "model": "gpt-4o",
            "structured_output_id": output, "mode": "testing", "response_delay_ms": 300,
        }))
        .await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("big")).await;
    let mut live = server.join(&ticket).await;
    let push = live.push_with_status("success").await;
    assert_eq!(push["data"]["text"].as_str(), Some(text.as_str()));
    let mut rejoined = server.join(&ticket).await;
    let replayed = rejoined.next_push(WAIT).await;
    assert_eq!(replayed, push);
}

/// A client that stops reading while the server has frames for it is dropped once a
/// write takes longer than the idle timeout: the server neither waits for it forever nor
/// buffers for it without bound, and other sockets are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_dropped() {
    let server = start(|c| c.ws_idle_timeout = Duration::from_secs(2)).await;
    let receiver = Receiver::start().await;
    let output = server
        .create_output("big_output", json!({ "text": "b".repeat(200_000) }))
        .await;
    server
        .create_workflow(json!({
            "name": "big", "provider": "openai", "model": "gpt-4o",
            "structured_output_id": output, "mode": "testing",
        }))
        .await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("big")).await;
    let mut good = server.join(&ticket).await;
    good.push_with_status("success").await;
    let mut stuck = server.join(&ticket).await;
    let topic = ticket["websocket_channel"].as_str().unwrap();
    // Each join is answered with the 200 KB result; 100 of them fill every buffer on the
    // way while this client reads nothing.
    for _ in 0..100 {
        let join_ref = json!(uuid::Uuid::new_v4().to_string());
        stuck.send(join_ref, topic, "phx_join", json!({})).await;
    }
    let health = eventually("the slow reader to be dropped", async || {
        assert_eq!(
            good.heartbeat().await,
            json!({"status": "ok", "response": {}})
        );
        let (_, health) = server.get("/healthz").await;
        ok_if(health["slow_readers"] == 1, health)
    })
    .await;
    assert_eq!(health["open_sockets"], 1, "{health}");
}

/// Joining a joined topic again closes the earlier join (`phx_close` with its ref), as
/// Phoenix does; a leave carrying an earlier join's ref does not end the current join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_replaces_the_join_and_stale_leave_is_ignored() {
    let (_server, _receiver, ticket) = with_ticket(|_| {}).await;
    let topic = ticket["websocket_channel"].as_str().unwrap();
    let mut socket = Phoenix::connect(
        ticket["websocket_url"].as_str().unwrap(),
        ticket["ws_token"].as_str().unwrap(),
    )
    .await
    .expect("connects");
    let ok = json!({"status": "ok", "response": {}});
    let first = socket.send(json!("j1"), topic, "phx_join", json!({})).await;
    assert_eq!(socket.reply_to(&first).await, ok);
    let second = socket.send(json!("j2"), topic, "phx_join", json!({})).await;
    assert_eq!(socket.reply_to(&second).await, ok);
    let close = loop {
        let frame = socket.next_frame(WAIT).await.expect("frames");
        if frame.event == "phx_close" {
            break frame;
        }
    };
    assert_eq!((close.join_ref, close.msg_ref), (json!("j1"), json!("j1")));

    let stale = socket
        .send(json!("j1"), topic, "phx_leave", json!({}))
        .await;
    assert_eq!(socket.reply_to(&stale).await, ok);
    let beat = socket
        .send(json!("j2"), topic, "heartbeat", json!({}))
        .await;
    assert_eq!(socket.reply_to(&beat).await, ok, "still joined");
    let leave = socket
        .send(json!("j2"), topic, "phx_leave", json!({}))
        .await;
    assert_eq!(socket.reply_to(&leave).await, ok);
    let beat = socket
        .send(json!("j2"), topic, "heartbeat", json!({}))
        .await;
    assert_eq!(
        socket.reply_to(&beat).await,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    let closes: Vec<Value> = std::iter::from_fn(|| socket.take_buffered())
        .filter(|f| f.event == "phx_close")
        .map(|f| f.join_ref)
        .collect();
    assert_eq!(closes, [json!("j2")], "one phx_close, for the current join");
}

/// The upgrade refuses a serializer version eddy does not speak (403, as Phoenix does)
/// and takes a missing `vsn` as 2.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializer_version_is_checked_on_upgrade() {
    let (_server, _receiver, ticket) = with_ticket(|_| {}).await;
    let base = format!(
        "{}/websocket?token={}",
        ticket["websocket_url"].as_str().unwrap(),
        ticket["ws_token"].as_str().unwrap()
    );
    match tokio_tungstenite::connect_async(format!("{base}&vsn=1.0.0")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("vsn 1.0.0 was not refused: {other:?}"),
    }
    for url in [base.clone(), format!("{base}&vsn=2.1.0")] {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("2.x or no vsn connects");
        drop(ws);
    }
}
