//! The browser side: Phoenix Channels v2 over WebSocket at `/socket/websocket`.
//!
//! - [`frame`]: the v2 wire format.
//! - [`token`]: channel-bound tokens checked on upgrade and join.
//! - [`hub`]: fan-out of pushes to the sockets joined on a channel.
//! - [`socket`]: one connection's task (joins, heartbeats, outbox, idle and shutdown).
//!
//! This module stores nothing. The latest message of a channel comes from the engine
//! through [`Replay`], which derives it from the stored record.

pub mod frame;
pub mod hub;
pub mod socket;
pub mod token;

pub use hub::Hub;

use futures_util::future::BoxFuture;

use crate::job::{ChannelId, ProjectId};
pub use token::{Claims, TokenError, TokenKey};

/// The latest `response` payload of a channel, for a socket that joins late or rejoins.
pub trait Replay: Send + Sync {
    /// The payload the request on `channel` would push now; `None` when there is no such
    /// request or it has nothing to say yet; an error when the store cannot be read.
    /// A boxed future (the trait is used as `dyn Replay`): a cluster node reads from NATS.
    fn latest<'a>(&'a self, channel: &'a ChannelId)
    -> BoxFuture<'a, crate::Result<Option<String>>>;
}

/// `ai_response:<project_id>:<channel_id>`.
pub fn topic(project: &ProjectId, channel: &ChannelId) -> String {
    format!("ai_response:{project}:{channel}")
}
