//! The channel hub: which sockets have joined which channel, and fan-out of pushes.
//!
//! A push encodes one frame and hands a cheap clone of it to every subscriber's bounded
//! outbox. A subscriber whose outbox is full is a slow reader: it is removed and its socket
//! told (through its `lagged` token) to error its channels and close, so one stuck browser
//! can neither block a push nor grow memory. The hub keeps no history: the latest message
//! of a channel is derived from the stored record (see `Replay`), so it survives restarts.
//!
//! In cluster mode ([`Hub::join_cluster`]) a browser's socket may be on another node than
//! the callback that completes its request, so a push is not delivered here: it is
//! published on NATS, in order, and every node's hub (this one included) delivers it to
//! its own sockets from the node's one standing subscription (see `cluster::push`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::StreamExt;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::frame;
use crate::cluster::{self, Cluster, Push};
use crate::job::ChannelId;

/// One socket's subscription to one channel.
struct Subscriber {
    socket: u64,
    outbox: mpsc::Sender<Utf8Bytes>,
    /// Cancelled to make the socket close itself (slow reader).
    lagged: CancellationToken,
}

#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<ChannelId, Vec<Subscriber>>>,
    next_socket: AtomicU64,
    open_sockets: AtomicUsize,
    pushes: AtomicU64,
    slow_readers: AtomicU64,
    /// In cluster mode: where pushes go to be published on NATS, one task publishing
    /// them in the order they were made.
    cluster: OnceLock<mpsc::UnboundedSender<Push>>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// A new socket id; counts the socket as open until [`Hub::socket_closed`].
    pub fn socket_opened(&self) -> u64 {
        self.open_sockets.fetch_add(1, Ordering::Relaxed);
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    pub fn socket_closed(&self) {
        self.open_sockets.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open_sockets(&self) -> usize {
        self.open_sockets.load(Ordering::Relaxed)
    }

    /// Sockets closed so far for not keeping up with their frames.
    pub fn slow_readers(&self) -> u64 {
        self.slow_readers.load(Ordering::Relaxed)
    }

    pub fn note_slow_reader(&self) {
        self.slow_readers.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelId, Vec<Subscriber>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(
        &self,
        channel: ChannelId,
        socket: u64,
        outbox: mpsc::Sender<Utf8Bytes>,
        lagged: CancellationToken,
    ) {
        let mut channels = self.lock();
        let subs = channels.entry(channel).or_default();
        subs.retain(|s| s.socket != socket);
        subs.push(Subscriber {
            socket,
            outbox,
            lagged,
        });
    }

    pub fn unsubscribe(&self, channel: &ChannelId, socket: u64) {
        let mut channels = self.lock();
        if let Some(subs) = channels.get_mut(channel) {
            subs.retain(|s| s.socket != socket);
            if subs.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Pushes `event` with `payload` (JSON text) on `topic` to every socket joined on
    /// `channel`. Returns how many sockets got it. No socket is not an error. In cluster
    /// mode the push goes to every node through NATS, and this counts the sockets joined
    /// here (the others are on other nodes).
    pub fn push(&self, channel: &ChannelId, topic: &str, event: &str, payload: &str) -> usize {
        let Some(out) = self.cluster.get() else {
            return self.push_here(channel, topic, event, payload);
        };
        let _ = out.send(Push {
            channel: *channel,
            topic: topic.into(),
            event: event.into(),
            payload: payload.into(),
        });
        self.lock().get(channel).map_or(0, Vec::len)
    }

    /// Makes this hub one of a cluster's: from now on its pushes are published on NATS,
    /// and every push published by any node is delivered to this hub's sockets. The
    /// subscription is in place when this returns; the tasks end when the connection
    /// closes (or the hub is dropped). Core NATS delivers at most once, so after every
    /// reconnect `resend` is called with the channels joined here, to send them their
    /// latest message again (from the record, with [`Hub::push_here`]).
    pub async fn join_cluster(
        self: &Arc<Self>,
        cluster: &Cluster,
        resend: impl Fn(Arc<Hub>, Vec<ChannelId>) + Send + 'static,
    ) -> cluster::Result<()> {
        let pushes = cluster.pushes();
        let mut incoming = pushes.subscribe().await?;
        let (tx, mut outgoing) = mpsc::unbounded_channel::<Push>();
        if self.cluster.set(tx).is_err() {
            return Err(cluster::ClusterError::Settings(
                "this hub has joined a cluster already".into(),
            ));
        }
        let hub = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(p) = incoming.next().await {
                let Some(hub) = hub.upgrade() else { break };
                hub.push_here(&p.channel, &p.topic, &p.event, &p.payload);
            }
        });
        tokio::spawn(async move {
            while let Some(p) = outgoing.recv().await {
                if let Err(e) = pushes.publish(&p).await {
                    tracing::warn!("cluster: a push was not published: {e}");
                }
            }
        });
        let (hub, mut reconnected) = (Arc::downgrade(self), cluster.link.reconnected());
        tokio::spawn(async move {
            while reconnected.changed().await.is_ok() {
                let Some(hub) = hub.upgrade() else { break };
                let joined: Vec<ChannelId> = hub.lock().keys().copied().collect();
                resend(hub, joined);
            }
        });
        Ok(())
    }

    /// Hands a push to the sockets joined on `channel` on this node only. Returns how many
    /// sockets got it.
    pub fn push_here(&self, channel: &ChannelId, topic: &str, event: &str, payload: &str) -> usize {
        let mut channels = self.lock();
        let Some(subs) = channels.get_mut(channel) else {
            return 0;
        };
        let frame = Utf8Bytes::from(frame::push(topic, event, payload));
        let mut delivered = 0;
        subs.retain(|s| match s.outbox.try_send(frame.clone()) {
            Ok(()) => {
                delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.lagged.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if subs.is_empty() {
            channels.remove(channel);
        }
        self.pushes.fetch_add(1, Ordering::Relaxed);
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(capacity: usize) -> (mpsc::Sender<Utf8Bytes>, mpsc::Receiver<Utf8Bytes>) {
        mpsc::channel(capacity)
    }

    /// A push reaches every socket on the channel as one shared frame; a channel nobody
    /// joined is not an error; a socket whose outbox is full is dropped and told so
    /// (`lagged`), while a closed one is just forgotten.
    #[test]
    fn fan_out_and_slow_readers() {
        let hub = Hub::new();
        let channel = ChannelId::from_bytes([1; 16]);
        assert_eq!(hub.push(&channel, "t", "response", "{}"), 0);

        let (fast_tx, mut fast_rx) = subscriber(4);
        let (slow_tx, _slow_rx) = subscriber(1);
        let (gone_tx, gone_rx) = subscriber(4);
        let (fast_lag, slow_lag) = (CancellationToken::new(), CancellationToken::new());
        hub.subscribe(channel, 1, fast_tx, fast_lag.clone());
        hub.subscribe(channel, 2, slow_tx, slow_lag.clone());
        hub.subscribe(channel, 3, gone_tx, CancellationToken::new());
        drop(gone_rx);

        assert_eq!(hub.push(&channel, "t", "response", r#"{"n":1}"#), 2);
        assert_eq!(hub.push(&channel, "t", "response", r#"{"n":2}"#), 1);
        assert!(slow_lag.is_cancelled() && !fast_lag.is_cancelled());
        assert_eq!(
            fast_rx.try_recv().unwrap().as_str(),
            r#"[null,null,"t","response",{"n":1}]"#
        );
        assert_eq!(
            fast_rx.try_recv().unwrap().as_str(),
            r#"[null,null,"t","response",{"n":2}]"#
        );

        hub.unsubscribe(&channel, 1);
        assert_eq!(hub.push(&channel, "t", "response", "{}"), 0);
        assert!(hub.lock().is_empty(), "an empty channel is removed");
    }
}
