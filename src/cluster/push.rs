//! WebSocket pushes across nodes. A browser's socket is on one node; the callback that
//! completes its request may arrive on another. So a push is published on the core
//! subject `<prefix>.push.<channel>`, and every node subscribes to
//! `<prefix>.push.>` once, at start, and hands what arrives to its own hub (the publishing
//! node included: it gets its own push back through NATS).
//!
//! One standing subscription, not one per join: interest in a new subscription takes a
//! moment to reach the other servers (96 of 500 pushes published right after a subscribe on
//! another server were lost when measured), which would break the hub's rule "subscribe,
//! then read the record: a racing push may arrive twice, never zero times". Core NATS
//! delivers at most once, so a push published while a node was cut off from NATS is lost
//! for that node's sockets; after a reconnect the node sends its joined channels their
//! latest message again (see [`super::Link::reconnected`]).

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{ClusterError, Layout, Result, key};
use crate::job::ChannelId;

const TOPIC: &str = "Eddy-Topic";
const EVENT: &str = "Eddy-Event";

/// One push: what the hub of the node holding the socket sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub channel: ChannelId,
    pub topic: String,
    pub event: String,
    /// The JSON payload, as the hub frames it.
    pub payload: String,
}

/// Publishing and receiving pushes; cheap to clone.
#[derive(Clone)]
pub struct Pushes {
    client: Client,
    layout: Layout,
}

impl Pushes {
    pub fn new(client: Client, layout: &Layout) -> Pushes {
        Pushes {
            client,
            layout: layout.clone(),
        }
    }

    /// Publishes `push` to every node (at most once each; no acknowledgement).
    pub async fn publish(&self, push: &Push) -> Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert(TOPIC, push.topic.as_str());
        headers.insert(EVENT, push.event.as_str());
        self.client
            .publish_with_headers(
                self.layout.push_subject(&push.channel),
                headers,
                Bytes::from(push.payload.clone()),
            )
            .await
            .map_err(|e| ClusterError::failed("publishing a push", e))
    }

    /// Every push published by any node from now on. The subscription is registered with
    /// this node's server before this returns; malformed messages are skipped.
    pub async fn subscribe(&self) -> Result<BoxStream<'static, Push>> {
        let subscriber = self
            .client
            .subscribe(self.layout.push_wildcard())
            .await
            .map_err(|e| ClusterError::failed("subscribing to pushes", e))?;
        self.client
            .flush()
            .await
            .map_err(|e| ClusterError::failed("subscribing to pushes", e))?;
        let prefix = format!("{}.push.", self.layout.prefix);
        Ok(subscriber
            .filter_map(move |message| {
                let push = parse(&prefix, &message);
                if push.is_none() {
                    tracing::warn!(subject = %message.subject, "cluster: a malformed push was dropped");
                }
                std::future::ready(push)
            })
            .boxed())
    }
}

fn parse(prefix: &str, message: &async_nats::Message) -> Option<Push> {
    let channel = message.subject.strip_prefix(prefix)?;
    let channel = <[u8; 16]>::try_from(key::parse_hex(channel)?).ok()?;
    let headers = message.headers.as_ref()?;
    Some(Push {
        channel: ChannelId::from_bytes(channel),
        topic: headers.get(TOPIC)?.as_str().to_string(),
        event: headers.get(EVENT)?.as_str().to_string(),
        payload: String::from_utf8(message.payload.to_vec()).ok()?,
    })
}
