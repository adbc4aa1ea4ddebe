//! The work queue: when a request falls due, a node publishes one message,
//! `<prefix>.work.<id>`, to the `<PREFIX>_WORK` stream (retention: until acknowledged), and
//! one durable pull consumer shared by every node hands each message to one node at a time.
//!
//! - Several nodes firing the same due entry store one message: the message id is
//!   `<id>:<due_ms>` and the stream drops a repeat within its duplicate window (2 min),
//!   even one published after the first copy was acknowledged and removed.
//! - A job is acknowledged ([`Job::done`]) only after what its round wrote is acknowledged
//!   by JetStream. A node that dies holding a job lets it go to another node after
//!   `ack_wait`; a long round keeps its job with [`Job::progress`].
//! - [`Job::defer`] hands a job back to be delivered again after a delay (a full webhook
//!   lane, a record not visible yet). The delay is consumer state, kept by the replicas but
//!   lost if every server restarts within seconds (the job then comes back early, which is
//!   harmless), so long waits (retries, callback deadlines) belong in the due index, never
//!   here. A deferred job holds a slot of `max_ack_pending` while it waits.
//! - Acknowledgements and deferrals are confirmed by the server, so a node that closes
//!   right after one does not lose it.

use std::time::Duration;

use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::bucket::Ack;
use super::{ClusterError, Layout, Result, key};

/// The longest deferral (Go's time overflows near 292 years; eddy never needs more than
/// seconds here).
const LONGEST_DEFER: Duration = Duration::from_secs(24 * 3600);

/// The work stream and its consumer; cheap to clone.
#[derive(Clone)]
pub struct WorkQueue {
    js: jetstream::Context,
    consumer: Consumer<pull::Config>,
    layout: Layout,
}

/// One firing handed to this node.
pub struct Job {
    pub id: u64,
    pub due_ms: u64,
    /// Published by a write before it was stored (work due at once), rather than by a
    /// timer: until the record shows that write, the job is early, not idle.
    pub by_write: bool,
    /// 1 the first time, more when redelivered (deferred, or its node died).
    pub delivered: i64,
    message: jetstream::Message,
}

impl WorkQueue {
    pub async fn open(js: &jetstream::Context, layout: &Layout) -> Result<WorkQueue> {
        let stream = js
            .get_stream_no_info(&layout.work.name)
            .await
            .map_err(|e| ClusterError::failed("opening the work stream", e))?;
        let name = layout.workers.durable_name.clone().unwrap_or_default();
        let consumer = stream
            .get_consumer(&name)
            .await
            .map_err(|e| ClusterError::failed("opening the work consumer", e))?;
        Ok(WorkQueue {
            js: js.clone(),
            consumer,
            layout: layout.clone(),
        })
    }

    /// Publishes the firing of request `id` due at `due_ms` (a timer of the due index); a
    /// repeat of the same pair within the duplicate window is stored once. The
    /// acknowledgement can be awaited later.
    pub async fn publish(&self, id: u64, due_ms: u64) -> Result<Ack> {
        self.send(id, due_ms, false).await
    }

    /// Publishes the work of request `id` due at `due_ms` that a write is about to store
    /// (sent before the write, so the job can come before the write is visible: see
    /// [`Job::by_write`]).
    pub async fn publish_for_write(&self, id: u64, due_ms: u64) -> Result<Ack> {
        self.send(id, due_ms, true).await
    }

    async fn send(&self, id: u64, due_ms: u64, by_write: bool) -> Result<Ack> {
        let mut payload = due_ms.to_be_bytes().to_vec();
        if by_write {
            payload.push(1);
        }
        let message = PublishMessage::build()
            .payload(bytes::Bytes::from(payload))
            .message_id(format!("{}:{}", key::num(id), key::num(due_ms)));
        let future = self
            .js
            .send_publish(self.layout.work_subject(id), message)
            .await
            .map_err(|e| ClusterError::failed("publishing work", e))?;
        Ok(Ack::new(future, "publishing work"))
    }

    /// Jobs for this node as they come, at most `batch` requested at a time. The stream
    /// keeps pulling (across reconnects) until dropped; a malformed message is terminated
    /// and skipped. Errors (a missed heartbeat while a server is down) are passed on and
    /// the stream goes on.
    pub async fn jobs(&self, batch: usize) -> Result<BoxStream<'static, Result<Job>>> {
        let messages = self
            .consumer
            .stream()
            .max_messages_per_batch(batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| ClusterError::failed("pulling work", e))?;
        Ok(self.parsed(messages))
    }

    /// At most `n` jobs for this node, in one pull request that the servers hold open for
    /// up to `wait` (jobs come as they are published meanwhile): a node asks for as many
    /// as it has free slots, so no job waits on a busy node while another is idle. The
    /// stream ends after `n` jobs or `wait`; an error (the pull was refused, a server
    /// went away) is passed on and ends it.
    pub async fn take(&self, n: usize, wait: Duration) -> Result<BoxStream<'static, Result<Job>>> {
        let messages = self
            .consumer
            .batch()
            .max_messages(n.max(1))
            .expires(wait)
            .messages()
            .await
            .map_err(|e| ClusterError::failed("pulling work", e))?;
        Ok(self.parsed(messages))
    }

    /// The jobs in a stream of work messages; a malformed message is terminated and
    /// skipped.
    fn parsed<S, E>(&self, messages: S) -> BoxStream<'static, Result<Job>>
    where
        S: futures_util::Stream<Item = std::result::Result<jetstream::Message, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let prefix = format!("{}.work.", self.layout.prefix);
        messages
            .filter_map(move |item| {
                let prefix = prefix.clone();
                async move {
                    let message = match item {
                        Ok(m) => m,
                        Err(e) => return Some(Err(ClusterError::failed("pulling work", e))),
                    };
                    match Job::parse(&prefix, message) {
                        Ok(job) => Some(Ok(job)),
                        Err(message) => {
                            tracing::warn!(subject = %message.subject, "cluster: a malformed work message was dropped");
                            let _ = message.ack_with(AckKind::Term).await;
                            None
                        }
                    }
                }
            })
            .boxed()
    }

    /// How long a job taken by a node waits for its acknowledgement (or an extension)
    /// before it goes to another node.
    pub fn ack_wait(&self) -> Duration {
        self.layout.workers.ack_wait
    }

    /// Messages waiting for a node, and handed out but not acknowledged.
    pub async fn backlog(&self) -> Result<(u64, usize)> {
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|e| ClusterError::failed("reading the work consumer", e))?;
        Ok((info.num_pending, info.num_ack_pending))
    }
}

impl Job {
    /// The job in `message`, or the message back (boxed: it is large) if it is not one.
    fn parse(
        prefix: &str,
        message: jetstream::Message,
    ) -> std::result::Result<Job, Box<jetstream::Message>> {
        let id = message
            .subject
            .strip_prefix(prefix)
            .and_then(key::parse_num);
        let payload = message.payload.as_ref();
        let due = payload.get(..8).and_then(|d| <[u8; 8]>::try_from(d).ok());
        let by_write = match payload.get(8..) {
            Some([]) => Some(false),
            Some([1]) => Some(true),
            _ => None,
        };
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        match (id, due, by_write) {
            (Some(id), Some(due), Some(by_write)) => Ok(Job {
                id,
                due_ms: u64::from_be_bytes(due),
                by_write,
                delivered,
                message,
            }),
            _ => Err(Box::new(message)),
        }
    }

    /// The job is finished: the server removes it (confirmed).
    pub async fn done(&self) -> Result<()> {
        self.message
            .double_ack()
            .await
            .map_err(|e| ClusterError::failed("acknowledging work", e))
    }

    /// Hands the job back, to be delivered again (to any node) after `delay` (confirmed).
    pub async fn defer(&self, delay: Duration) -> Result<()> {
        self.message
            .double_ack_with(AckKind::Nak(Some(delay.min(LONGEST_DEFER))))
            .await
            .map_err(|e| ClusterError::failed("deferring work", e))
    }

    /// The job is still being worked on: its `ack_wait` starts again.
    pub async fn progress(&self) -> Result<()> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| ClusterError::failed("extending work", e))
    }
}
