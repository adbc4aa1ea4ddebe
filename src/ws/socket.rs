//! One WebSocket connection speaking Phoenix Channels v2.
//!
//! A single task per socket selects over: frames from the client (joins, leaves,
//! heartbeats), the bounded outbox the hub fills with pushes, an idle deadline, the hub's
//! slow-reader signal, and server shutdown. Replies are written directly and pushes come
//! through the outbox; every write has a deadline, so a client that stops reading can
//! neither park the task nor grow its buffers.
//!
//! How a socket ends, and what the phoenix client does next (it always reconnects with
//! backoff and rejoins, and a rejoin is sent the channel's latest message):
//! - server shutdown: close 1001;
//! - nothing received for `idle_timeout` (two missed 30 s heartbeats by default): close
//!   1000 "heartbeat timeout";
//! - slow reader (its outbox is full, or one write takes longer than `idle_timeout`):
//!   `phx_error` on each joined topic, then close 1013, both best effort within
//!   [`CLOSE_GRACE`];
//! - a frame that is not Phoenix v2 JSON text closes this socket only: 1007 (not a v2
//!   frame or not UTF-8), 1003 (binary), 1009 (over [`MAX_CLIENT_MESSAGE`]), 1002
//!   (WebSocket protocol error).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::frame::{self, Frame};
use super::{Claims, Hub, Replay};
use crate::job::{ChannelId, ProjectId};

/// Pushes a socket may have queued before it counts as a slow reader. A socket joins one
/// channel, which sees a handful of pushes in its life, so only a stuck client fills it.
const OUTBOX: usize = 16;
/// Largest frame or message a client may send (the phoenix client's are ~100 bytes).
pub const MAX_CLIENT_MESSAGE: usize = 64 << 10;
/// Initial read buffer; it grows only for a larger frame.
const READ_BUFFER: usize = 1 << 10;
/// How long the goodbye (`phx_error`s, close frame) may take to write.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What every socket shares.
pub struct SocketContext {
    pub hub: Arc<Hub>,
    pub replay: Arc<dyn Replay>,
    /// A socket that sends nothing (not even a heartbeat) for this long is closed, and a
    /// write that takes longer makes it a slow reader.
    pub idle_timeout: Duration,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
}

/// Small buffers (tungstenite defaults to 128 KiB per socket) and capped client messages.
///
/// The write buffer is not capped: tungstenite refuses outright a frame larger than the
/// cap, which would make a large result undeliverable (and every rejoin fail again).
/// It holds at most the frames of one write, and every write has a deadline.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// A UUID in the lowercase hyphenated form eddy hands out. Pushes are framed with that
/// topic and the phoenix client matches topics as exact strings, so another spelling of
/// the same UUID would join a topic that never gets a push.
fn canonical<Id: FromStr + ToString>(text: &str) -> Option<Id> {
    let id: Id = text.parse().ok()?;
    (id.to_string() == text).then_some(id)
}

/// The channel a join may subscribe to at `now_s`, or why it is refused (the `reason` of
/// the error reply). The token is checked again here, not only on the upgrade: a socket
/// kept open by heartbeats outlives its token, and joins after that are refused.
fn check_join(topic: &str, claims: &Claims, now_s: u64) -> Result<ChannelId, &'static str> {
    if now_s >= claims.expires_s {
        return Err("token_expired");
    }
    let rest = topic
        .strip_prefix("ai_response:")
        .ok_or("invalid_channel_format")?;
    let (project, channel) = rest.split_once(':').ok_or("invalid_channel_format")?;
    if channel.contains(':') {
        return Err("invalid_channel_format");
    }
    let project: ProjectId = canonical(project).ok_or("invalid_project_uuid")?;
    let channel: ChannelId = canonical(channel).ok_or("invalid_channel_uuid")?;
    if project != claims.project || channel != claims.channel {
        return Err("unauthorized_project_access");
    }
    Ok(channel)
}

/// A topic this socket has joined.
struct Joined {
    topic: String,
    channel: ChannelId,
    /// The ref of the join, echoed in `phx_close` and `phx_error`.
    join_ref: Value,
}

struct Session<'a> {
    ctx: &'a SocketContext,
    claims: Claims,
    id: u64,
    outbox: mpsc::Sender<Utf8Bytes>,
    /// Cancelled by the hub when the outbox is full.
    lagged: CancellationToken,
    /// At most one entry in practice: a token grants one channel.
    joined: Vec<Joined>,
}

impl Session<'_> {
    fn position(&self, topic: &str) -> Option<usize> {
        self.joined.iter().position(|j| j.topic == topic)
    }

    /// Handles one client frame, adding the frames to write back to `out`.
    async fn handle(&mut self, f: Frame, out: &mut Vec<String>) {
        let ok = json!({});
        match (f.topic.as_str(), f.event.as_str()) {
            ("phoenix", "heartbeat") => out.push(frame::reply(&f, "ok", &ok)),
            (_, "phx_join") => self.join(f, out).await,
            (topic, "phx_leave") => {
                // A leave for an earlier join (the phoenix client sends one after a join
                // timed out) must not end the current join.
                let current = self
                    .position(topic)
                    .filter(|&i| self.joined[i].join_ref == f.join_ref);
                out.push(frame::reply(&f, "ok", &ok));
                if let Some(i) = current {
                    let left = self.joined.swap_remove(i);
                    self.ctx.hub.unsubscribe(&left.channel, self.id);
                    out.push(frame::close(&left.join_ref, &left.topic));
                }
            }
            (topic, "heartbeat") if self.position(topic).is_some() => {
                out.push(frame::reply(&f, "ok", &ok))
            }
            (topic, _) if self.position(topic).is_some() => out.push(frame::reply(
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

    async fn join(&mut self, f: Frame, out: &mut Vec<String>) {
        let channel = match check_join(&f.topic, &self.claims, crate::clock::now_ms() / 1000) {
            Ok(channel) => channel,
            Err(reason) => {
                out.push(frame::reply(&f, "error", &json!({ "reason": reason })));
                return;
            }
        };
        // Joining a joined topic again replaces the join, as in Phoenix: the old one is
        // closed (the client ignores a phx_close for a join it no longer has).
        if let Some(i) = self.position(&f.topic) {
            let old = self.joined.swap_remove(i);
            out.push(frame::close(&old.join_ref, &old.topic));
        }
        // Subscribe before reading the latest message: a push racing with the join may
        // then arrive twice, but never not at all.
        self.ctx
            .hub
            .subscribe(channel, self.id, self.outbox.clone(), self.lagged.clone());
        match self.ctx.replay.latest(&channel).await {
            Ok(latest) => {
                out.push(frame::reply(&f, "ok", &json!({})));
                if let Some(latest) = latest {
                    out.push(frame::push(&f.topic, "response", &latest));
                }
                self.joined.push(Joined {
                    topic: f.topic,
                    channel,
                    join_ref: f.join_ref,
                });
            }
            Err(e) => {
                // Phoenix's answer when a channel's join fails on the server; the client
                // tries again after its rejoin backoff.
                tracing::warn!(error = %e, "cannot read the latest message for a join");
                self.ctx.hub.unsubscribe(&channel, self.id);
                out.push(frame::reply(
                    &f,
                    "error",
                    &json!({ "reason": "join crashed" }),
                ));
            }
        }
    }
}

/// Why the loop of a socket ended.
enum End {
    /// The client closed, or the connection broke: nothing more to say.
    Gone,
    /// The client sent a close frame; tungstenite has queued the reply.
    ClosedByClient,
    Close(CloseCode, &'static str),
    SlowReader,
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// Writes `frames` within the idle timeout (else the client is a slow reader) unless the
/// server shuts down first.
async fn write<S>(
    sink: &mut Sink<S>,
    frames: impl Iterator<Item = Message>,
    ctx: &SocketContext,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let send = async {
        for message in frames {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        sent = tokio::time::timeout(ctx.idle_timeout, send) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::SlowReader),
        },
        _ = ctx.shutdown.cancelled() => Err(End::Close(CloseCode::Away, "server shutting down")),
    }
}

/// The close frame for a read error, or `None` when the connection itself broke.
fn read_error(e: WsError) -> End {
    match e {
        WsError::Capacity(_) => End::Close(CloseCode::Size, "frame or message too large"),
        WsError::Protocol(_) => End::Close(CloseCode::Protocol, "websocket protocol error"),
        WsError::Utf8(_) => End::Close(CloseCode::Invalid, "text frame is not UTF-8"),
        _ => End::Gone,
    }
}

/// Runs one socket until it closes.
pub async fn serve<S>(ws: WebSocketStream<S>, ctx: Arc<SocketContext>, claims: Claims)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (outbox, mut inbox) = mpsc::channel::<Utf8Bytes>(OUTBOX);
    let lagged = CancellationToken::new();
    let mut session = Session {
        ctx: &ctx,
        claims,
        id: ctx.hub.socket_opened(),
        outbox,
        lagged: lagged.clone(),
        joined: Vec::new(),
    };
    let (mut sink, mut stream) = ws.split();
    let idle = tokio::time::sleep(ctx.idle_timeout);
    tokio::pin!(idle);
    let mut replies = Vec::new();
    let end = loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break End::Close(CloseCode::Away, "server shutting down"),
            _ = lagged.cancelled() => break End::SlowReader,
            _ = &mut idle => break End::Close(CloseCode::Normal, "heartbeat timeout"),
            Some(push) = inbox.recv() => {
                if let Err(end) = write(&mut sink, std::iter::once(Message::Text(push)), &ctx).await {
                    break end;
                }
            }
            incoming = stream.next() => {
                idle.as_mut().reset(Instant::now() + ctx.idle_timeout);
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        break End::Close(CloseCode::Unsupported, "binary frames are not supported");
                    }
                    Some(Ok(Message::Close(_))) => break End::ClosedByClient,
                    Some(Err(e)) => break read_error(e),
                    None => break End::Gone,
                };
                let Ok(parsed) = frame::parse(&text) else {
                    break End::Close(CloseCode::Invalid, "not a Phoenix v2 frame");
                };
                session.handle(parsed, &mut replies).await;
                let frames = replies.drain(..).map(Message::text);
                if let Err(end) = write(&mut sink, frames, &ctx).await {
                    break end;
                }
            }
        }
    };
    for joined in &session.joined {
        ctx.hub.unsubscribe(&joined.channel, session.id);
    }
    ctx.hub.socket_closed();
    let mut goodbye = Vec::new();
    match end {
        End::Gone => return,
        End::ClosedByClient => {}
        End::Close(code, reason) => goodbye.push(close_frame(code, reason)),
        End::SlowReader => {
            ctx.hub.note_slow_reader();
            goodbye.extend(
                session
                    .joined
                    .iter()
                    .map(|j| Message::text(frame::error(&j.join_ref, &j.topic))),
            );
            goodbye.push(close_frame(CloseCode::Again, "slow reader"));
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        for message in goodbye {
            sink.feed(message).await?;
        }
        sink.close().await
    })
    .await;
}

fn close_frame(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Join refusals name their reason as ModelRiver's clients expect it (the topic's
    /// format, its project or channel UUID, an expired token), only the canonical spelling
    /// of the token's own channel is accepted, and nothing is accepted once the token has
    /// expired.
    #[test]
    fn join_rules() {
        let project = uuid::Uuid::new_v4();
        let channel = uuid::Uuid::new_v4();
        let claims = Claims {
            project: ProjectId::from_bytes(*project.as_bytes()),
            channel: ChannelId::from_bytes(*channel.as_bytes()),
            expires_s: u64::MAX,
        };
        let upper = channel.hyphenated().to_string().to_uppercase();
        let simple = channel.simple().to_string();
        let other = uuid::Uuid::new_v4();
        let cases = [
            (
                format!("ai_response:{project}:{channel}"),
                Ok(claims.channel),
            ),
            ("room:lobby".into(), Err("invalid_channel_format")),
            ("ai_response:x".into(), Err("invalid_channel_format")),
            (
                format!("ai_response:{project}:{channel}:x"),
                Err("invalid_channel_format"),
            ),
            (
                format!("ai_response:nope:{channel}"),
                Err("invalid_project_uuid"),
            ),
            (
                format!("ai_response:{project}:nope"),
                Err("invalid_channel_uuid"),
            ),
            (
                format!("ai_response:{project}:{upper}"),
                Err("invalid_channel_uuid"),
            ),
            (
                format!("ai_response:{project}:{simple}"),
                Err("invalid_channel_uuid"),
            ),
            (
                format!("ai_response:{project}:{other}"),
                Err("unauthorized_project_access"),
            ),
            (
                format!("ai_response:{other}:{channel}"),
                Err("unauthorized_project_access"),
            ),
        ];
        for (topic, expected) in cases {
            assert_eq!(check_join(&topic, &claims, 0), expected, "{topic}");
        }
        let expiring = Claims {
            expires_s: 100,
            ..claims
        };
        let topic = format!("ai_response:{project}:{channel}");
        assert_eq!(check_join(&topic, &expiring, 99), Ok(claims.channel));
        assert_eq!(check_join(&topic, &expiring, 100), Err("token_expired"));
    }
}
