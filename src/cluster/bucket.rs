//! A key-value bucket: the stream `KV_<bucket>` of the layout, read and written the way
//! async-nats' key-value store does (subjects `$KV.<bucket>.<key>`, `KV-Operation`
//! headers for deletes), so `nats kv` reads it too, but with what eddy needs besides:
//!
//! - two reads: [`Bucket::get`] asks any replica (a direct get: cheap, but the replica may
//!   be behind), [`Bucket::get_leader`] asks the stream's leader (sees every acknowledged
//!   write). A write made through another server was missed by a direct get 9–361 times in
//!   2,000 when measured; never by the leader. A replica that was restarted answers direct
//!   gets while it catches up, "not found" included, so `get` asks the leader before it
//!   says a key is absent: a value may be old, an absence is true. A decision to do
//!   nothing because of what a value says (nothing due, nothing to send) must read from the
//!   leader.
//! - [`Bucket::create`], exact even on 2.9.10 (an expected revision of 0 is checked when
//!   the write is applied), also over a delete marker, and resolved after a lost ack;
//! - [`Bucket::remove`], which purges a key's messages without leaving a marker, for
//!   index keys that come and go (a delete marker would stay until `max_age`);
//! - listings by key prefix and watches, for read models and caches (`listing`).
//!
//! Every write names its writer in an `Eddy-Writer` header, so a write whose
//! acknowledgement was lost can be recognised when it is read back (see `cas`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream};
use bytes::Bytes;

use super::layout::BucketSpec;
use super::{ClusterError, Result, key};

/// The header that names a write's writer.
pub(super) const WRITER: &str = "Eddy-Writer";
pub(super) const OPERATION: &str = "KV-Operation";

/// A key's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Bytes,
    /// The stream sequence of the write: what a CAS expects.
    pub revision: u64,
}

/// What [`Bucket::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Create {
    /// The key was absent (or deleted) and now holds the value, at this revision.
    Created(u64),
    /// The key already holds a value: this one.
    Exists(Entry),
}

/// A message as read back: a value, or a delete marker.
#[derive(Debug, Clone)]
pub(super) struct Raw {
    pub entry: Entry,
    pub deleted: bool,
    pub writer: Option<String>,
}

/// One bucket of the layout; cheap to clone.
#[derive(Clone)]
pub struct Bucket {
    pub(super) spec: BucketSpec,
    pub(super) js: jetstream::Context,
    pub(super) stream: Stream<()>,
    /// The fence bucket, when CAS writes must be fenced (see `cas`).
    pub(super) fence: Option<Box<Bucket>>,
    pub(super) resolve_for: Duration,
    /// This node's name, the first part of every writer token.
    pub(super) writer: String,
    /// Writes of this handle (and its clones) whose acknowledgement did not come.
    pub(super) unanswered: Arc<AtomicU64>,
}

/// An acknowledgement still to come; awaiting it tells whether the write was stored.
pub struct Ack {
    future: PublishAckFuture,
    op: &'static str,
}

impl Ack {
    pub(super) fn new(future: PublishAckFuture, op: &'static str) -> Ack {
        Ack { future, op }
    }

    /// The stream sequence of the write, once a quorum has stored it.
    pub async fn wait(self) -> Result<u64> {
        match self.future.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) => Err(match attempt_of(e, self.op) {
                Attempt::Unknown => ClusterError::Unknown { op: self.op },
                Attempt::Refused(e) => e,
                _ => ClusterError::failed(self.op, "no stream leader took it"),
            }),
        }
    }
}

/// How one write ended.
pub(super) enum Attempt {
    /// Stored by a quorum, at this stream sequence.
    Stored(u64),
    /// The expected revision did not hold: nothing was written.
    Conflict,
    /// No answer: the write may still land.
    Unknown,
    /// No stream leader to take it right now (an election, a lost connection): nothing
    /// was written; trying again shortly is right.
    Unavailable,
    /// The server refused it for good: nothing was written.
    Refused(ClusterError),
}

fn attempt_of(e: jetstream::context::PublishError, op: &'static str) -> Attempt {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => Attempt::Conflict,
        // 2.10 and later refuse a CAS racing another one on the same key in flight (10164).
        PublishErrorKind::Other if js_code(&e) == Some(10164) => Attempt::Conflict,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Attempt::Unknown,
        // No responders on the subject: the stream has no leader now.
        PublishErrorKind::StreamNotFound => Attempt::Unavailable,
        PublishErrorKind::Other if js_code(&e).is_none() => Attempt::Unavailable,
        _ => Attempt::Refused(ClusterError::failed(op, e)),
    }
}

/// A short pause before trying a write or read again while a stream has no leader.
pub(super) async fn pause() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The JetStream error code behind `e`, if the server answered with one.
fn js_code(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(j) = err.downcast_ref::<jetstream::Error>() {
            return Some(j.error_code().0);
        }
        cur = err.source();
    }
    None
}

impl Bucket {
    /// A handle on the bucket of `spec` (which [`super::Layout::ensure`] created).
    pub async fn open(
        js: &jetstream::Context,
        spec: &BucketSpec,
        fence: Option<Box<Bucket>>,
    ) -> Result<Bucket> {
        let stream = js
            .get_stream_no_info(&spec.config.name)
            .await
            .map_err(|e| ClusterError::failed("opening a bucket", e))?;
        Ok(Bucket {
            spec: spec.clone(),
            js: js.clone(),
            stream,
            fence,
            resolve_for: Duration::from_secs(30),
            writer: "eddy".into(),
            unanswered: Arc::default(),
        })
    }

    pub(super) fn set_resolve_for(&mut self, d: Duration) {
        self.resolve_for = d;
    }

    pub(super) fn set_writer(&mut self, node: &str) {
        self.writer = node.into();
        if let Some(fence) = &mut self.fence {
            fence.writer = node.into();
        }
    }

    /// `eddy_requests`, …
    pub fn name(&self) -> &str {
        &self.spec.bucket
    }

    /// Whether CAS writes to this bucket are fenced.
    pub fn fenced(&self) -> bool {
        self.fence.is_some()
    }

    /// Writes (creates and CAS writes) whose acknowledgement did not come and that were
    /// followed on the leader to learn their fate: a sign of servers dying or overloaded.
    pub fn unanswered(&self) -> u64 {
        self.unanswered.load(Ordering::Relaxed)
    }

    /// A token naming one write of this node.
    pub(super) fn token(&self) -> String {
        format!("{}-{:016x}", self.writer, rand::random::<u64>())
    }

    pub(super) fn subject(&self, key: &str) -> Result<String> {
        if !key::valid(key) {
            return Err(ClusterError::Settings(format!(
                "{key:?} is not a valid key"
            )));
        }
        Ok(self.spec.subject(key))
    }

    /// `key`'s value as any replica has it (it may miss the latest writes); an absence is
    /// confirmed by the leader.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        match self.read(key, false).await? {
            Some(raw) if !raw.deleted => Ok(Some(raw.entry)),
            _ => self.get_leader(key).await,
        }
    }

    /// `key`'s value as the stream's leader has it: every acknowledged write included.
    pub async fn get_leader(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self
            .read(key, true)
            .await?
            .filter(|r| !r.deleted)
            .map(|r| r.entry))
    }

    /// One read of `key`, asked again (it changes nothing) while the stream has no leader
    /// or does not answer, for up to `resolve_for`: a read rides out an election as a
    /// write does.
    pub(super) async fn read(&self, key: &str, leader: bool) -> Result<Option<Raw>> {
        let subject = self.subject(key)?;
        let deadline = tokio::time::Instant::now() + self.resolve_for;
        let message = loop {
            let failed = if leader {
                match self.stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(m) => break m,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                        return Ok(None);
                    }
                    Err(e) => ClusterError::failed("reading from the stream leader", e),
                }
            } else {
                match self
                    .stream
                    .direct_get_last_for_subject(subject.clone())
                    .await
                {
                    Ok(m) => break m,
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                    Err(e) => ClusterError::failed("reading a key", e),
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(failed);
            }
            pause().await;
        };
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_string());
        Ok(Some(Raw {
            deleted: matches!(header(OPERATION).as_deref(), Some("DEL" | "PURGE")),
            writer: header(WRITER),
            entry: Entry {
                key: key.to_string(),
                value: message.payload,
                revision: message.sequence,
            },
        }))
    }

    /// Sends a write of `key`; `expect` is the revision the key must be at (0: absent).
    pub(super) async fn send(
        &self,
        key: &str,
        value: Bytes,
        expect: Option<u64>,
        token: &str,
        op: &'static str,
    ) -> Result<PublishAckFuture> {
        let subject = self.subject(key)?;
        let size = value.len();
        let mut message = PublishMessage::build().payload(value).header(WRITER, token);
        if let Some(revision) = expect {
            message = message.expected_last_subject_sequence(revision);
        }
        self.js
            .send_publish(subject, message)
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => ClusterError::TooLarge {
                    value: op,
                    size,
                    max: self.js.client().server_info().max_payload,
                },
                _ => ClusterError::failed(op, e),
            })
    }

    /// Sends one write of `key` expecting it at `expect` (0: absent; `None`: anything) and
    /// waits for its fate.
    pub(super) async fn attempt(
        &self,
        key: &str,
        value: Bytes,
        expect: Option<u64>,
        token: &str,
        op: &'static str,
    ) -> Attempt {
        let future = match self.send(key, value, expect, token, op).await {
            Ok(future) => future,
            Err(e @ (ClusterError::TooLarge { .. } | ClusterError::Settings(_))) => {
                return Attempt::Refused(e);
            }
            // Not handed to the connection (it is down): not sent.
            Err(_) => return Attempt::Unavailable,
        };
        match future.await {
            Ok(ack) => Attempt::Stored(ack.sequence),
            Err(e) => {
                let attempt = attempt_of(e, op);
                if matches!(attempt, Attempt::Unknown) {
                    self.unanswered.fetch_add(1, Ordering::Relaxed);
                }
                attempt
            }
        }
    }

    /// Writes `key` unconditionally and waits for the quorum's acknowledgement. Only for
    /// keys no one changes by CAS (index entries, dead letters), so sending the same put
    /// again is harmless: while the stream has no leader (an election after a server
    /// died) or an acknowledgement does not come, it is sent again for up to
    /// `resolve_for`, as a create or a CAS rides out an election.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64> {
        let token = self.token();
        let deadline = tokio::time::Instant::now() + self.resolve_for;
        loop {
            let outcome = match self
                .attempt(key, value.clone(), None, &token, "a put")
                .await
            {
                Attempt::Stored(revision) => return Ok(revision),
                Attempt::Refused(e) => return Err(e),
                Attempt::Conflict => return Err(ClusterError::failed("a put", "refused")),
                Attempt::Unknown => ClusterError::Unknown { op: "a put" },
                Attempt::Unavailable => ClusterError::failed("a put", "no stream leader"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(outcome);
            }
            pause().await;
        }
    }

    /// Sends an unconditional write of `key`; the acknowledgement can be awaited later
    /// (writes that gate no answer are awaited together, as a group commit would).
    pub async fn put_later(&self, key: &str, value: Bytes) -> Result<Ack> {
        let token = self.token();
        let future = self.send(key, value, None, &token, "a put").await?;
        Ok(Ack {
            future,
            op: "a put",
        })
    }

    /// Writes `key` only if it holds no value (absent, or deleted). Exactly one of several
    /// concurrent creates of a key wins, on every server version. A create whose
    /// acknowledgement is lost is read back and recognised by its writer token.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<Create> {
        let token = self.token();
        let deadline = tokio::time::Instant::now() + self.resolve_for;
        let mut maybe_sent = false;
        loop {
            match self
                .attempt(key, value.clone(), Some(0), &token, "a create")
                .await
            {
                Attempt::Stored(revision) => return Ok(Create::Created(revision)),
                Attempt::Refused(e) => return Err(e),
                Attempt::Unknown => maybe_sent = true,
                Attempt::Conflict => {}
                Attempt::Unavailable if !maybe_sent => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ClusterError::failed("a create", "no stream leader"));
                    }
                    pause().await;
                    continue;
                }
                Attempt::Unavailable => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(match maybe_sent {
                    true => ClusterError::Unknown { op: "a create" },
                    false => ClusterError::failed("a create", "the key keeps changing"),
                });
            }
            match self.read(key, true).await {
                Ok(Some(raw)) if raw.writer.as_deref() == Some(token.as_str()) => {
                    return Ok(Create::Created(raw.entry.revision));
                }
                Ok(Some(raw)) if !raw.deleted => return Ok(Create::Exists(raw.entry)),
                // Deleted: write over the marker with a CAS (fenced where needed).
                Ok(Some(raw)) => {
                    let cas = Box::pin(self.cas(key, raw.entry.revision, value.clone()));
                    if let super::Cas::Written(revision) = cas.await? {
                        return Ok(Create::Created(revision));
                    }
                }
                // Absent: the create did not land (yet); send it again.
                Ok(None) => {}
                Err(_) => pause().await,
            }
        }
    }

    /// Removes every message of `key`, leaving no delete marker: for keys of an index
    /// that nothing watches (a watcher would not see the removal).
    pub async fn remove(&self, key: &str) -> Result<()> {
        let subject = self.subject(key)?;
        self.stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| ClusterError::failed("removing a key", e))?;
        Ok(())
    }

    /// Deletes `key` with a delete marker, which watchers see (see [`Bucket::watch`]).
    pub async fn delete(&self, key: &str) -> Result<u64> {
        let subject = self.subject(key)?;
        let mut headers = HeaderMap::new();
        headers.insert(OPERATION, "DEL");
        headers.insert(WRITER, self.token().as_str());
        let future = self
            .js
            .send_publish(subject, PublishMessage::build().headers(headers))
            .await
            .map_err(|e| ClusterError::failed("a delete", e))?;
        Ack {
            future,
            op: "a delete",
        }
        .wait()
        .await
    }
}
