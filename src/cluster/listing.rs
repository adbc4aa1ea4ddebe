//! Reading a whole bucket, or one prefix of it: listings (the keys as they are now) and
//! watches (the keys as they are now, then every change), for the read models and caches
//! each node keeps (the catalog, the request log, the DLQ). There is no range scan in
//! JetStream: a listing is an ordered consumer filtered on the prefix, in the order the
//! keys were last written; the caller sorts.

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::bucket::{Bucket, Entry, OPERATION};
use super::{ClusterError, Result};

impl Bucket {
    /// Every key under `prefix` (all keys for `None`) with its value, in the order they
    /// were last written (not key order: there is no range scan). `values: false` reads
    /// only the keys (the values come back empty), which is much less to send.
    ///
    /// The listing ends at the bucket's last write as of the call: under a steady stream
    /// of writes the consumer would otherwise never run out of messages to deliver (a
    /// node restarted under load waited for that).
    pub async fn list(&self, prefix: Option<&str>, values: bool) -> Result<Vec<Entry>> {
        let filter = match prefix {
            Some(p) => format!("{}.>", self.subject(p)?),
            None => self.spec.subject(">"),
        };
        let last = self
            .stream
            .get_info()
            .await
            .map_err(|e| ClusterError::failed("listing a bucket", e))?
            .state
            .last_sequence;
        let consumer = self
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: filter,
                headers_only: !values,
                replay_policy: ReplayPolicy::Instant,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::failed("listing a bucket", e))?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| ClusterError::failed("listing a bucket", e))?;
        let strip = format!("$KV.{}.", self.spec.bucket);
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| ClusterError::failed("listing a bucket", e))?;
            let info = message
                .info()
                .map_err(|e| ClusterError::failed("listing a bucket", e))?;
            let (revision, pending) = (info.stream_sequence, info.pending);
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get(OPERATION))
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            if !deleted && let Some(key) = message.subject.strip_prefix(strip.as_str()) {
                out.push(Entry {
                    key: key.to_string(),
                    value: if values {
                        message.payload.clone()
                    } else {
                        Bytes::new()
                    },
                    revision,
                });
            }
            if pending == 0 || revision >= last {
                break;
            }
        }
        Ok(out)
    }

    /// The current value of every key matching `filter` (a key, or a prefix ending in
    /// `>`), then every later change, deletes included: what a cache of the bucket needs.
    /// The watch follows the bucket across reconnects (an ordered consumer, recreated
    /// where it left off).
    pub async fn watch(&self, filter: &str) -> Result<BoxStream<'static, Result<Change>>> {
        self.watch_changes(filter, true).await
    }

    /// Every change of a key matching `filter` made from now on (no current values).
    pub async fn watch_from_now(&self, filter: &str) -> Result<BoxStream<'static, Result<Change>>> {
        self.watch_changes(filter, false).await
    }

    async fn watch_changes(
        &self,
        filter: &str,
        history: bool,
    ) -> Result<BoxStream<'static, Result<Change>>> {
        let store = self
            .js
            .get_key_value(&self.spec.bucket)
            .await
            .map_err(|e| ClusterError::failed("watching a bucket", e))?;
        let watch = match history {
            true => store.watch_with_history(filter).await,
            false => store.watch(filter).await,
        }
        .map_err(|e| ClusterError::failed("watching a bucket", e))?;
        // async-nats 0.51 panics when its watch is polled again after reporting that the
        // connection is closed ("Connection state watcher dropped"): end there.
        let watch =
            futures_util::stream::unfold((watch, false), |(mut watch, closed)| async move {
                if closed {
                    return None;
                }
                let item = watch.next().await?;
                let closed = item
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("state watcher dropped"));
                Some((item, (watch, closed)))
            });
        Ok(watch
            .map(|item| {
                let entry = item.map_err(|e| ClusterError::failed("watching a bucket", e))?;
                Ok(Change {
                    deleted: entry.operation != kv::Operation::Put,
                    current: entry.delta == 0,
                    entry: Entry {
                        key: entry.key,
                        value: entry.value,
                        revision: entry.revision,
                    },
                })
            })
            .boxed())
    }
}

/// One change seen by [`Bucket::watch`].
#[derive(Debug, Clone)]
pub struct Change {
    /// The key and its new value (empty when deleted).
    pub entry: Entry,
    pub deleted: bool,
    /// True once the watch has caught up with the bucket as it was when the watch began.
    pub current: bool,
}
