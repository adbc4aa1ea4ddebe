//! The cluster mode's link to NATS JetStream: the only module that names `async_nats`.
//!
//! Several eddy nodes share one NATS cluster (three `nats-server`s, every stream replicated
//! three times) and through it their records, due work and pushes. This module owns the
//! pieces every node needs, each in its own file:
//!
//! | file | owns |
//! |---|---|
//! | `connect` | the server list, the client (reconnecting forever), connection events |
//! | `layout` | the name and settings of every bucket, stream and consumer; creating them |
//! | `bucket` | key-value buckets (streams created by eddy): reads, `create`, puts, removal |
//! | `listing` | a bucket's keys under a prefix, and watches of them (for read models and caches) |
//! | `mirror` | a node's copy of a bucket kept current by a watch: the read models' base |
//! | `cas` | compare-and-set on a bucket key, fenced on servers that lose concurrent CAS writes |
//! | `timeline` | a request's timeline as messages on its own subject |
//! | `work` | the work queue: one message per firing, one durable consumer shared by all nodes |
//! | `records` | request records, their due keys and idempotency claims: the sled store's rules on buckets |
//! | `bodies` | a record's big texts, in chunks beside it |
//! | `worker` | running the jobs a node takes: slots, extensions while a job runs, settling |
//! | `push` | WebSocket pushes on a core subject every node subscribes to |
//! | `check` | `eddy cluster check`: what is wrong with the NATS side and how to fix it |
//!
//! Invariants:
//! - Nothing here knows the engine's rules: values are bytes, keys are the tokens built by
//!   [`key`]; the store (or the hub, or the scheduler) decides what they mean.
//! - A write is reported done only after JetStream acknowledged it, which a replicated
//!   stream does once a quorum of its servers stored it. A write whose acknowledgement did
//!   not come is *unknown*, never "not written": [`ClusterError::Unknown`].
//! - Buckets and streams are created by [`layout`] from one table; `check` compares the
//!   servers against the same table, so what eddy creates and what it checks cannot drift.
//! - Every key of a bucket that is changed by compare-and-set is only ever written by
//!   `create` (expected revision 0) or by [`cas`]; a plain put on such a key would defeat
//!   the fence.

pub mod bodies;
pub mod bucket;
pub mod cas;
pub mod check;
pub mod connect;
pub mod key;
pub mod layout;
pub mod listing;
pub mod mirror;
pub mod push;
pub mod records;
pub mod timeline;
pub mod work;
pub mod worker;

use std::time::Duration;

use async_nats::jetstream;

pub use bodies::Bodies;
pub use bucket::{Bucket, Create, Entry};
pub use cas::{Cas, CasMode};
pub use connect::{Link, ServerVersion};
pub use layout::Layout;
pub use listing::Change;
pub use mirror::Mirror;
pub use push::{Push, Pushes};
pub use records::Records;
pub use timeline::Timeline;
pub use work::{Job, WorkQueue};
pub use worker::Outcome;

/// Failures talking to NATS. Expected outcomes (a key that exists, a CAS that lost) are
/// values of [`Create`] and [`Cas`] instead.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("{0}")]
    Settings(String),
    #[error("{op} failed: {reason}")]
    Failed { op: &'static str, reason: String },
    /// A write was sent but its acknowledgement did not come: it may still land.
    #[error("{op}: no acknowledgement from NATS in time; the write may still land")]
    Unknown { op: &'static str },
    #[error("{value} of {size} bytes is over the servers' max_payload of {max} bytes")]
    TooLarge {
        value: &'static str,
        size: usize,
        max: usize,
    },
    #[error("{name}: {problem} ({fix})")]
    Layout {
        name: String,
        problem: String,
        fix: String,
    },
}

pub type Result<T> = std::result::Result<T, ClusterError>;

impl ClusterError {
    pub(crate) fn failed(op: &'static str, reason: impl std::fmt::Display) -> ClusterError {
        ClusterError::Failed {
            op,
            reason: reason.to_string(),
        }
    }
}

/// What a cluster node is told: where NATS is, what to call things, and how long to keep
/// them. `servers` comes from `--cluster`; the retentions from the node's own config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `nats://host:port` of every server (the client learns others from them too).
    pub servers: Vec<String>,
    /// Prefix of every bucket, stream and subject, so several installations can share one
    /// NATS account: lowercase letters, digits and `_`.
    pub prefix: String,
    /// Copies of every bucket and stream: 3 for a cluster, 1 for a single server.
    pub replicas: usize,
    /// Longest wait for one NATS request or acknowledgement.
    pub request_timeout: Duration,
    /// How long a write whose acknowledgement timed out is followed before it is reported
    /// [`ClusterError::Unknown`] (a proposal can still commit across a leader election).
    pub resolve_for: Duration,
    /// How long a fence key lives; it must outlive any CAS still in flight.
    pub fence_ttl: Duration,
    /// How long a lease on a costly effect (a model call) holds: past it, a node that
    /// died holding it no longer blocks the effect. Longer than the longest model call.
    pub lease_ttl: Duration,
    /// Compare-and-set: fenced, plain, or chosen by the servers' version.
    pub cas: CasMode,
    pub request_retention: Duration,
    pub dlq_retention: Duration,
    pub idempotency_ttl: Duration,
    /// Work messages with the same id within this window are stored once.
    pub duplicate_window: Duration,
    /// A work message not acknowledged (or extended) within this is given to another node.
    pub ack_wait: Duration,
    /// Work messages handed out and not yet acknowledged, across all nodes.
    pub max_ack_pending: i64,
    /// This node's name in connection names and writer tokens.
    pub node: String,
    /// How long a starting node waits for the streams to answer (after every server was
    /// restarted, they elect their leaders within 10–15 s).
    pub start_within: Duration,
}

impl Settings {
    /// The defaults for a three-server cluster at `servers`, with eddy's default retentions.
    pub fn new(servers: Vec<String>) -> Settings {
        let defaults = crate::Config::default();
        Settings {
            servers,
            prefix: "eddy".into(),
            replicas: 3,
            request_timeout: Duration::from_secs(3),
            resolve_for: Duration::from_secs(30),
            fence_ttl: Duration::from_secs(60),
            lease_ttl: (defaults.provider_timeout * 2).max(Duration::from_secs(60)),
            cas: CasMode::Auto,
            request_retention: defaults.request_retention,
            dlq_retention: defaults.dlq_retention,
            idempotency_ttl: defaults.idempotency_ttl,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            node: format!("eddy-{:08x}", rand::random::<u32>()),
            start_within: Duration::from_secs(60),
        }
    }
}

impl Settings {
    /// The settings of a node started with `--cluster` (`config.cluster`), its prefix,
    /// replicas and retentions; `None` for a sled node.
    pub fn of_config(config: &crate::Config) -> Option<Result<Settings>> {
        let urls = config.cluster.as_deref()?;
        let servers = match connect::parse_servers(urls) {
            Ok(servers) => servers,
            Err(e) => return Some(Err(ClusterError::Settings(format!("--cluster: {e}")))),
        };
        let mut s = Settings::new(servers);
        s.prefix = config.cluster_prefix.clone();
        s.replicas = config.cluster_replicas;
        s.request_retention = config.request_retention;
        s.dlq_retention = config.dlq_retention;
        s.idempotency_ttl = config.idempotency_ttl;
        s.lease_ttl = (config.provider_timeout * 2).max(Duration::from_secs(60));
        Some(Ok(s))
    }
}

/// One node's connection to the cluster and the handles it opened. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub link: Link,
    pub layout: Layout,
    js: jetstream::Context,
    settings: std::sync::Arc<Settings>,
    /// The CAS mode in force (never `Auto`).
    mode: CasMode,
}

impl Cluster {
    /// Connects to the servers, decides the CAS mode from their version, and creates every
    /// bucket and stream that is missing (or updates the settings that may change).
    pub async fn open(settings: Settings) -> Result<Cluster> {
        let link = Link::connect(&settings).await?;
        let mode = settings.cas.resolve(&connect::versions(&settings).await);
        let js = link.jetstream(settings.request_timeout);
        let layout = Layout::new(&settings)?;
        let deadline = tokio::time::Instant::now() + settings.start_within;
        let changes = loop {
            match layout.ensure(&js).await {
                Ok(changes) => break changes,
                // Streams still electing leaders (all servers restarted): wait for them.
                Err(ClusterError::Failed { op, reason })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!("cluster: waiting for JetStream ({op}: {reason})");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        for change in changes {
            tracing::info!("cluster: {change}");
        }
        Ok(Cluster {
            link,
            layout,
            js,
            settings: std::sync::Arc::new(settings),
            mode,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The compare-and-set in force: fenced unless every server is 2.9.21 or later.
    pub fn cas_mode(&self) -> CasMode {
        self.mode
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The bucket `name` of the layout (`requests`, `bodies`, `due`, …), CAS fenced as the
    /// servers need.
    pub async fn bucket(&self, name: &str) -> Result<Bucket> {
        let spec = self.layout.bucket(name)?;
        let fence = match self.mode {
            CasMode::Fenced => {
                Some(Bucket::open(&self.js, self.layout.bucket("fence")?, None).await?)
            }
            _ => None,
        };
        let mut bucket = Bucket::open(&self.js, spec, fence.map(Box::new)).await?;
        bucket.set_resolve_for(self.settings.resolve_for);
        bucket.set_writer(&self.settings.node);
        Ok(bucket)
    }

    pub async fn timeline(&self) -> Result<Timeline> {
        Timeline::open(&self.js, &self.layout).await
    }

    pub async fn work(&self) -> Result<WorkQueue> {
        WorkQueue::open(&self.js, &self.layout).await
    }

    pub async fn records(&self) -> Result<Records> {
        Records::open(self).await
    }

    pub fn pushes(&self) -> Pushes {
        Pushes::new(self.link.client(), &self.layout)
    }
}
