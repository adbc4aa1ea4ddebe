//! A Phoenix Channels v2 client on tokio-tungstenite, speaking the frames the official
//! `phoenix` JS client sends: `[join_ref, ref, topic, event, payload]` with string refs.
//!
//! Frames that arrive while the client waits for a reply are kept, in order, for
//! [`Phoenix::next_push`]: nothing the server sends is lost to the test.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

/// One server frame, decoded by this client (eddy's frame type is only the record it is
/// read into: `[join_ref, ref, topic, event, payload]`).
pub use eddy::ws::frame::Frame;

/// What ended a wait for a frame.
#[derive(Debug)]
pub enum Closed {
    /// Nothing arrived in time.
    Timeout,
    /// The server closed the socket (with its close frame, if any).
    Closed(Option<tungstenite::protocol::CloseFrame>),
}

pub struct Phoenix {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
    /// Frames read but not yet consumed.
    buffered: VecDeque<Frame>,
    /// `join_ref` of each joined topic.
    joins: Vec<(String, String)>,
}

impl Phoenix {
    /// Connects to `{websocket_url}/websocket?token=…&vsn=2.0.0`.
    pub async fn connect(websocket_url: &str, token: &str) -> Result<Phoenix, tungstenite::Error> {
        let url = format!("{websocket_url}/websocket?token={token}&vsn=2.0.0");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket handshake within the wait")?;
        Ok(Phoenix {
            ws,
            next_ref: 0,
            buffered: VecDeque::new(),
            joins: Vec::new(),
        })
    }

    fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("frame is sent");
    }

    /// Sends a binary frame (Phoenix v2 frames are text).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .await
            .expect("frame is sent");
    }

    /// The oldest frame kept while waiting for a reply, if any.
    pub fn take_buffered(&mut self) -> Option<Frame> {
        self.buffered.pop_front()
    }

    /// Sends `[join_ref, ref, topic, event, payload]`; returns the ref.
    pub async fn send(
        &mut self,
        join_ref: Value,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let msg_ref = self.new_ref();
        let frame = json!([join_ref, msg_ref, topic, event, payload]);
        self.send_text(frame.to_string()).await;
        msg_ref
    }

    /// Joins `topic` and returns the reply's payload (`{status, response}`).
    pub async fn join(&mut self, topic: &str) -> Value {
        let join_ref = self.new_ref();
        let frame = json!([join_ref, join_ref, topic, "phx_join", {}]);
        self.send_text(frame.to_string()).await;
        let reply = self.reply_to(&join_ref).await;
        if reply["status"] == "ok" {
            self.joins.push((topic.to_string(), join_ref));
        }
        reply
    }

    /// Leaves `topic`; returns the reply's payload.
    pub async fn leave(&mut self, topic: &str) -> Value {
        let join_ref = self
            .joins
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        let msg_ref = self
            .send(json!(join_ref), topic, "phx_leave", json!({}))
            .await;
        self.reply_to(&msg_ref).await
    }

    /// `[null, ref, "phoenix", "heartbeat", {}]`; returns the reply's payload.
    pub async fn heartbeat(&mut self) -> Value {
        let msg_ref = self
            .send(Value::Null, "phoenix", "heartbeat", json!({}))
            .await;
        self.reply_to(&msg_ref).await
    }

    /// Waits for the `phx_reply` with `msg_ref`, keeping every other frame for later.
    pub async fn reply_to(&mut self, msg_ref: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .read(left)
                .await
                .unwrap_or_else(|e| panic!("no reply to ref {msg_ref}: {e:?}"));
            if frame.event == "phx_reply" && frame.msg_ref == json!(msg_ref) {
                return frame.payload;
            }
            self.buffered.push_back(frame);
        }
    }

    /// Reads one frame from the socket (not the buffer).
    async fn read(&mut self, timeout: Duration) -> Result<Frame, Closed> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| Closed::Timeout)?;
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => return Err(Closed::Closed(frame)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Closed::Closed(None)),
            };
            let value: Value = serde_json::from_str(&text).expect("server frames are JSON");
            let items = value.as_array().expect("server frames are arrays");
            assert_eq!(items.len(), 5, "v2 frames have five elements: {text}");
            return Ok(Frame {
                join_ref: items[0].clone(),
                msg_ref: items[1].clone(),
                topic: items[2].as_str().expect("topic is a string").to_string(),
                event: items[3].as_str().expect("event is a string").to_string(),
                payload: items[4].clone(),
            });
        }
    }

    /// The next frame, buffered or read.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Frame, Closed> {
        match self.buffered.pop_front() {
            Some(frame) => Ok(frame),
            None => self.read(timeout).await,
        }
    }

    /// The payload of the next `response` push within `timeout`; panics otherwise.
    pub async fn next_push(&mut self, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(frame) if frame.event == "response" => {
                    assert_eq!(frame.join_ref, Value::Null, "pushes carry null refs");
                    return frame.payload;
                }
                Ok(_) => continue,
                Err(e) => panic!("no push within {timeout:?}: {e:?}"),
            }
        }
    }

    /// The next `response` push with this `status`, skipping repeats of earlier ones (a
    /// push racing with a join may arrive twice; the README's "WebSocket" section allows it).
    pub async fn push_with_status(&mut self, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let push = self.next_push(left).await;
            if push["status"] == status {
                return push;
            }
        }
    }
}
