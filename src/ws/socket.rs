//! One WebSocket connection speaking Phoenix Channels v2.
//!
//! A single task per socket selects over: frames from the client (joins, leaves,
//! heartbeats), the bounded outbox fed by the hub, an idle check, the hub's "slow reader"
//! signal, and server shutdown (close code 1001). Replies are written directly; pushes go
//! through the outbox. A frame that is not valid v2 JSON closes this socket only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::frame::{self, Frame};
use super::{Claims, Hub, Replay};

/// Pushes a socket may have queued before it counts as a slow reader.
const OUTBOX: usize = 32;
/// Largest frame or message a client may send.
const MAX_CLIENT_MESSAGE: usize = 64 << 10;

/// What every socket shares.
pub struct SocketContext {
    pub hub: Arc<Hub>,
    pub replay: Arc<dyn Replay>,
    /// A socket that sends nothing (not even a heartbeat) for this long is closed.
    pub idle_timeout: Duration,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
}

/// Small buffers (tungstenite defaults to 128 KiB per socket) and capped client messages.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
        .max_write_buffer_size(256 << 10)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// Why a join is refused, as the `reason` of the error reply.
fn check_join(topic: &str, claims: &Claims) -> Result<[u8; 16], &'static str> {
    let rest = topic
        .strip_prefix("ai_response:")
        .ok_or("invalid_channel_format")?;
    let (project, channel) = rest.split_once(':').ok_or("invalid_channel_format")?;
    if channel.contains(':') {
        return Err("invalid_channel_format");
    }
    let project = uuid::Uuid::try_parse(project).map_err(|_| "invalid_project_uuid")?;
    let channel = uuid::Uuid::try_parse(channel).map_err(|_| "invalid_channel_uuid")?;
    if *project.as_bytes() != claims.project || *channel.as_bytes() != claims.channel {
        return Err("unauthorized_project_access");
    }
    Ok(*channel.as_bytes())
}

struct Session<'a> {
    ctx: &'a SocketContext,
    claims: Claims,
    id: u64,
    outbox: mpsc::Sender<Utf8Bytes>,
    kill: CancellationToken,
    /// topic → channel, for every joined topic.
    joined: HashMap<String, [u8; 16]>,
}

impl Session<'_> {
    /// Handles one client frame, adding the frames to write back to `out`.
    fn handle(&mut self, f: Frame, out: &mut Vec<String>) {
        let ok = json!({});
        match (f.topic.as_str(), f.event.as_str()) {
            ("phoenix", "heartbeat") => out.push(frame::reply(&f, "ok", &ok)),
            (_, "phx_join") => match check_join(&f.topic, &self.claims) {
                Ok(channel) => {
                    out.push(frame::reply(&f, "ok", &ok));
                    // Subscribe before reading the latest message: a push racing with the
                    // join may then arrive twice, but never not at all.
                    self.ctx.hub.subscribe(
                        channel,
                        self.id,
                        self.outbox.clone(),
                        self.kill.clone(),
                    );
                    self.joined.insert(f.topic.clone(), channel);
                    if let Some(latest) = self.ctx.replay.latest(&channel) {
                        out.push(frame::push(&f.topic, "response", &latest));
                    }
                }
                Err(reason) => out.push(frame::reply(&f, "error", &json!({ "reason": reason }))),
            },
            (topic, "phx_leave") => {
                if let Some(channel) = self.joined.remove(topic) {
                    self.ctx.hub.unsubscribe(&channel, self.id);
                }
                out.push(frame::reply(&f, "ok", &ok));
                out.push(frame::close(&f.join_ref, &f.topic));
            }
            (topic, "heartbeat") if self.joined.contains_key(topic) => {
                out.push(frame::reply(&f, "ok", &ok))
            }
            (topic, _) if self.joined.contains_key(topic) => out.push(frame::reply(
                &f,
                "error",
                &json!({ "reason": "unknown event" }),
            )),
            _ => out.push(frame::reply(
                &f,
                "error",
                &json!({ "reason": "unmatched topic" }),
            )),
        }
    }
}

/// Runs one socket until it closes.
pub async fn serve<S>(ws: WebSocketStream<S>, ctx: Arc<SocketContext>, claims: Claims)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (outbox, mut inbox) = mpsc::channel::<Utf8Bytes>(OUTBOX);
    let mut session = Session {
        ctx: &ctx,
        claims,
        id: ctx.hub.socket_opened(),
        outbox,
        kill: CancellationToken::new(),
        joined: HashMap::new(),
    };
    let (mut sink, mut stream) = ws.split();
    let mut last_seen = Instant::now();
    let mut idle_check = tokio::time::interval(ctx.idle_timeout / 4);
    let mut replies = Vec::with_capacity(2);
    let kill = session.kill.clone();
    let close = loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break Some((CloseCode::Away, "server shutting down")),
            _ = kill.cancelled() => break Some((CloseCode::Again, "slow reader")),
            Some(push) = inbox.recv() => {
                if sink.send(Message::Text(push)).await.is_err() {
                    break None;
                }
            }
            _ = idle_check.tick() => {
                if last_seen.elapsed() > ctx.idle_timeout {
                    break Some((CloseCode::Normal, "heartbeat timeout"));
                }
            }
            incoming = stream.next() => {
                last_seen = Instant::now();
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Binary(_))) => break Some((CloseCode::Unsupported, "binary frames are not supported")),
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(_)) => break Some((CloseCode::Size, "invalid or oversized frame")),
                };
                let parsed = match frame::parse(&text) {
                    Ok(f) => f,
                    Err(_) => break Some((CloseCode::Invalid, "not a Phoenix v2 frame")),
                };
                session.handle(parsed, &mut replies);
                let mut failed = false;
                for reply in replies.drain(..) {
                    if sink.feed(Message::text(reply)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || sink.flush().await.is_err() {
                    break None;
                }
            }
        }
    };
    for channel in session.joined.values() {
        ctx.hub.unsubscribe(channel, session.id);
    }
    ctx.hub.socket_closed();
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}
