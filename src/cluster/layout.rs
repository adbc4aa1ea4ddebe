//! The one table of what eddy keeps in NATS: every bucket, stream, consumer and subject,
//! with the settings it needs. [`Layout::ensure`] creates what is missing and updates the
//! settings that may change; `check` compares the servers against the same table.
//!
//! | name (prefix `eddy`) | kind | holds | retention |
//! |---|---|---|---|
//! | `eddy_requests` | bucket | records, by `create` and CAS | request retention, from the last write |
//! | `eddy_bodies` | bucket | a record's big texts in chunks, written once | twice the request retention |
//! | `eddy_due` | bucket | the due index (removed by purge: no markers) | request retention |
//! | `eddy_idem` | bucket | idempotency claims, by `create` | idempotency TTL |
//! | `eddy_dlq` | bucket | dead letters | DLQ retention |
//! | `eddy_log` | bucket | the request log's keys and summaries | request retention |
//! | `eddy_catalog` | bucket | projects, keys, workflows, …; watched by every node | forever |
//! | `eddy_meta` | bucket | keys shared by every node, by `create` | forever |
//! | `eddy_fence` | bucket | CAS fences (see `cas`) | `fence_ttl` (60 s) |
//! | `eddy_lease` | bucket | leases on costly effects (a model call), by `create` | `lease_ttl` |
//! | `EDDY_WORK` | work-queue stream, `eddy.work.<id>` | one message per firing | until acknowledged |
//! | `eddy-workers` | durable pull consumer of `EDDY_WORK` | shared by all nodes | |
//! | `EDDY_TIMELINE` | stream, `eddy.tl.<id>` | one message per round of steps | twice the request retention |
//! | `eddy.push.<channel>` | core subject | WebSocket pushes | none (at most once) |
//!
//! A bucket is the stream `KV_<bucket>` with the settings async-nats would give it
//! (history 1, direct gets, rollups, no message deletes): async-nats 0.51's own
//! `create_key_value` first reads the account info, which it cannot parse from a 2.9
//! server, so eddy creates the stream itself. Every stream is on file storage with
//! `replicas` copies; big texts are stored in chunks (see `bucket`) so that no message
//! comes near the default 1 MiB `max_payload`.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};

use super::{ClusterError, Result, Settings, key};
use crate::job::ChannelId;

/// The logical names of the buckets, in the order they are created.
pub const BUCKETS: [&str; 10] = [
    "requests", "bodies", "due", "idem", "dlq", "log", "catalog", "meta", "fence", "lease",
];

/// A bucket of the layout.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    /// `requests`, `due`, …
    pub name: &'static str,
    /// `eddy_requests`, …
    pub bucket: String,
    pub config: Config,
}

impl BucketSpec {
    /// The subject of `key` in this bucket.
    pub fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }
}

/// Every name and setting of one installation (one prefix).
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: String,
    pub buckets: Vec<BucketSpec>,
    pub work: Config,
    pub workers: pull::Config,
    pub timeline: Config,
}

/// A setting that differs between the layout and a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub want: String,
    pub have: String,
    /// Whether an update of the stream or consumer can change it.
    pub mutable: bool,
}

fn kv_stream(bucket: &str, max_age: Duration, replicas: usize) -> Config {
    Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120).min(nonzero_or(max_age, Duration::MAX)),
        ..Default::default()
    }
}

fn nonzero_or(d: Duration, or: Duration) -> Duration {
    if d.is_zero() { or } else { d }
}

impl Layout {
    pub fn new(s: &Settings) -> Result<Layout> {
        let p = &s.prefix;
        if !key::valid_prefix(p) {
            return Err(ClusterError::Settings(format!(
                "the cluster prefix {p:?} must be a lowercase letter, then up to 31 lowercase \
                 letters, digits or _"
            )));
        }
        if !(1..=5).contains(&s.replicas) {
            return Err(ClusterError::Settings(format!(
                "replicas must be 1 to 5, not {}",
                s.replicas
            )));
        }
        let retention = s.request_retention;
        let buckets = BUCKETS
            .iter()
            .map(|name| {
                let max_age = match *name {
                    "requests" | "due" | "log" => retention,
                    "bodies" => retention.saturating_mul(2),
                    "idem" => s.idempotency_ttl,
                    "dlq" => s.dlq_retention,
                    "fence" => s.fence_ttl,
                    "lease" => s.lease_ttl,
                    _ => Duration::ZERO,
                };
                let bucket = format!("{p}_{name}");
                BucketSpec {
                    name,
                    config: kv_stream(&bucket, max_age, s.replicas),
                    bucket,
                }
            })
            .collect();
        let upper = p.to_uppercase();
        let work = Config {
            name: format!("{upper}_WORK"),
            subjects: vec![format!("{p}.work.>")],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: s.replicas,
            duplicate_window: s.duplicate_window,
            max_age: retention,
            ..Default::default()
        };
        let workers = pull::Config {
            durable_name: Some(format!("{p}-workers")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: s.ack_wait,
            max_deliver: -1,
            max_ack_pending: s.max_ack_pending,
            ..Default::default()
        };
        let timeline = Config {
            name: format!("{upper}_TIMELINE"),
            subjects: vec![format!("{p}.tl.>")],
            storage: StorageType::File,
            num_replicas: s.replicas,
            max_age: retention.saturating_mul(2),
            allow_direct: true,
            ..Default::default()
        };
        Ok(Layout {
            prefix: p.clone(),
            buckets,
            work,
            workers,
            timeline,
        })
    }

    pub fn bucket(&self, name: &str) -> Result<&BucketSpec> {
        self.buckets
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| ClusterError::Settings(format!("no bucket {name:?} in the layout")))
    }

    /// Every stream of the layout: the buckets', the work queue, the timeline.
    pub fn streams(&self) -> impl Iterator<Item = &Config> {
        self.buckets
            .iter()
            .map(|b| &b.config)
            .chain([&self.work, &self.timeline])
    }

    pub fn work_subject(&self, id: u64) -> String {
        format!("{}.work.{}", self.prefix, key::num(id))
    }

    pub fn timeline_subject(&self, id: u64) -> String {
        format!("{}.tl.{}", self.prefix, key::num(id))
    }

    pub fn push_subject(&self, channel: &ChannelId) -> String {
        format!("{}.push.{}", self.prefix, key::hex(channel.as_bytes()))
    }

    /// The subject every node subscribes to for pushes.
    pub fn push_wildcard(&self) -> String {
        format!("{}.push.>", self.prefix)
    }

    /// Creates every stream and the work consumer that is missing, and updates the
    /// settings of existing ones that differ and may change. Returns what it did, for the
    /// log. A setting that cannot change (retention, storage) is an error that says what
    /// to do: eddy never deletes a stream.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for want in self.streams() {
            if let Some(change) = ensure_stream(js, want).await? {
                done.push(change);
            }
        }
        let stream = js
            .get_stream(&self.work.name)
            .await
            .map_err(|e| ClusterError::failed("opening the work stream", e))?;
        let name = self.workers.durable_name.clone().unwrap_or_default();
        match stream.consumer_info(&name).await {
            Ok(info) => {
                let diffs = consumer_differences(&self.workers, &info.config);
                if !diffs.is_empty() {
                    refuse_immutable(&name, &diffs)?;
                    stream
                        .create_consumer(self.workers.clone())
                        .await
                        .map_err(|e| ClusterError::failed("updating the work consumer", e))?;
                    done.push(format!("updated consumer {name}: {}", describe(&diffs)));
                }
            }
            Err(_) => {
                stream
                    .create_consumer(self.workers.clone())
                    .await
                    .map_err(|e| ClusterError::failed("creating the work consumer", e))?;
                done.push(format!("created consumer {name}"));
            }
        }
        Ok(done)
    }
}

async fn ensure_stream(js: &jetstream::Context, want: &Config) -> Result<Option<String>> {
    for _ in 0..3 {
        match js.get_stream(&want.name).await {
            Ok(mut stream) => {
                let have = stream
                    .info()
                    .await
                    .map_err(|e| ClusterError::failed("reading a stream's settings", e))?
                    .config
                    .clone();
                let diffs = stream_differences(want, &have);
                if diffs.is_empty() {
                    return Ok(None);
                }
                refuse_immutable(&want.name, &diffs)?;
                js.update_stream(want)
                    .await
                    .map_err(|e| ClusterError::failed("updating a stream", e))?;
                return Ok(Some(format!("updated {}: {}", want.name, describe(&diffs))));
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                match js.create_stream(want.clone()).await {
                    Ok(_) => return Ok(Some(format!("created {}", want.name))),
                    // Another node created it meanwhile: compare again.
                    Err(e)
                        if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(j)
                        if j.error_code() == ErrorCode::STREAM_NAME_EXIST) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(create_error(&want.name, e)),
                }
            }
            Err(e) => return Err(ClusterError::failed("reading a stream's settings", e)),
        }
    }
    Err(ClusterError::failed(
        "creating a stream",
        format!("{} keeps changing under another node", want.name),
    ))
}

fn create_error(name: &str, e: jetstream::context::CreateStreamError) -> ClusterError {
    let text = e.to_string();
    let fix = if ["insufficient resources", "no suitable peers", "replicas"]
        .iter()
        .any(|t| text.contains(t))
    {
        "start enough JetStream servers for the replicas asked for (3 by default), each with \
         room in max_file_store"
    } else {
        "run `eddy cluster check` against the same servers"
    };
    ClusterError::Layout {
        name: name.into(),
        problem: format!("cannot be created: {text}"),
        fix: fix.into(),
    }
}

fn refuse_immutable(name: &str, diffs: &[Difference]) -> Result<()> {
    let fixed: Vec<&Difference> = diffs.iter().filter(|d| !d.mutable).collect();
    if fixed.is_empty() {
        return Ok(());
    }
    Err(ClusterError::Layout {
        name: name.into(),
        problem: format!(
            "exists with settings eddy cannot change: {}",
            describe_refs(&fixed)
        ),
        fix: "use another --cluster-prefix, or delete it (nats stream rm) if its data may go"
            .into(),
    })
}

fn describe(diffs: &[Difference]) -> String {
    describe_refs(&diffs.iter().collect::<Vec<_>>())
}

fn describe_refs(diffs: &[&Difference]) -> String {
    diffs
        .iter()
        .map(|d| format!("{} {} (wanted {})", d.field, d.have, d.want))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A difference in `field` if `want` and `have` differ.
fn diff<T: std::fmt::Debug>(
    field: &'static str,
    want: T,
    have: T,
    mutable: bool,
) -> Option<Difference> {
    // Strings are shown without Debug's quotes.
    let show = |v: T| format!("{v:?}").trim_matches('"').to_string();
    let (want, have) = (show(want), show(have));
    (want != have).then_some(Difference {
        field,
        want,
        have,
        mutable,
    })
}

/// How the settings eddy relies on differ between `want` and a server's `have`.
pub fn stream_differences(w: &Config, h: &Config) -> Vec<Difference> {
    let history = |c: &Config| c.max_messages_per_subject.max(0);
    let window = |c: &Config| secs(c.duplicate_window);
    [
        diff("subjects", w.subjects.join(" "), h.subjects.join(" "), true),
        diff("retention", w.retention, h.retention, false),
        diff("storage", w.storage, h.storage, false),
        diff("replicas", w.num_replicas, h.num_replicas, true),
        diff("max_age", secs(w.max_age), secs(h.max_age), true),
        diff("history", history(w), history(h), true),
        diff("allow_direct", w.allow_direct, h.allow_direct, true),
        diff("allow_rollup", w.allow_rollup, h.allow_rollup, true),
        diff("deny_delete", w.deny_delete, h.deny_delete, false),
        (!w.duplicate_window.is_zero())
            .then(|| diff("duplicate_window", window(w), window(h), true))
            .flatten(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// How the work consumer differs between `want` and a server's `have`.
pub fn consumer_differences(w: &pull::Config, h: &jetstream::consumer::Config) -> Vec<Difference> {
    let push = if h.deliver_subject.is_some() {
        "yes"
    } else {
        "no"
    };
    [
        diff("ack_policy", w.ack_policy, h.ack_policy, false),
        diff("deliver_policy", w.deliver_policy, h.deliver_policy, false),
        diff("push consumer", "no", push, false),
        diff(
            "filter_subject",
            &w.filter_subject,
            &h.filter_subject,
            false,
        ),
        diff("ack_wait", secs(w.ack_wait), secs(h.ack_wait), true),
        diff("max_deliver", w.max_deliver, h.max_deliver, true),
        diff(
            "max_ack_pending",
            w.max_ack_pending,
            h.max_ack_pending,
            true,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn secs(d: Duration) -> String {
    if d.is_zero() {
        "none".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}
