//! Phoenix Channels v2 at `/socket/websocket` (SPEC §5): token checks on the upgrade, join
//! refusals with their reasons, heartbeats, leaving, and replay to reconnecting clients.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::phoenix::Closed;
use crate::support::{Phoenix, Receiver, TestServer, WAIT, seed_request, start};

/// A server with the seed's workflow and endpoint, and one accepted request's ticket.
async fn with_ticket(tweak: impl FnOnce(&mut eddy::Config)) -> (TestServer, Receiver, Value) {
    let server = start(tweak).await;
    let receiver = Receiver::start().await;
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
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

/// Joins on topics the token was not issued for are refused with SPEC §5's reasons, and
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
    loop {
        match bad.next_frame(WAIT).await {
            Ok(_) => continue,
            Err(Closed::Closed(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Invalid);
                break;
            }
            Err(e) => panic!("expected a close frame, got {e:?}"),
        }
    }
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
    loop {
        match socket.next_frame(WAIT).await {
            Ok(_) => continue,
            Err(Closed::Closed(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away);
                break;
            }
            Err(e) => panic!("expected a close frame, got {e:?}"),
        }
    }
}
