//! # eddy
//!
//! A single-binary engine for event-driven AI: an app fires a request and returns at once;
//! eddy stores it durably, runs the model in the background, POSTs the result to the
//! customer's backend as a signed webhook, waits for the backend's callback, and pushes the
//! final result to the browser over Phoenix Channels. See `ARCHITECTURE.md`.
//!
//! # Layout
//!
//! - [`config`]: flags, env and TOML (the options) merged and validated into one `Config`.
//! - [`job`]: the request record, its states (and their names, `Status`) and events, the
//!   pure transition rules, the `ProjectId` and `ChannelId` types.
//! - [`store`]: sled trees (one file each), key encoding, record codec, CAS updates, the
//!   group commit (and the files it syncs), public ids, opening and reopening after a write
//!   error.
//! - [`catalog`]: projects, API keys, workflows, structured outputs, endpoints, provider
//!   credentials, and their rules (in memory, written through to the store, committed).
//! - [`cluster`]: the cluster mode's link to NATS JetStream (the only user of async-nats):
//!   the connection, the buckets and streams and their settings, fenced compare-and-set,
//!   the timeline stream, the work queue, push subjects, `eddy cluster check`.
//! - [`scheduler`]: the timer wheel over the persistent due index.
//! - [`engine`]: the flow's business rules: accept, drive (the round loop: model, webhook
//!   attempts, timeouts), the webhook attempt as a unit, callbacks, dead-letter re-drives,
//!   sync requests.
//! - [`ai`]: the provider trait, the OpenAI-compatible and Anthropic adapters, test mode,
//!   retries and failover, structured-output checks.
//! - [`delivery`]: sending one webhook attempt and classifying it (its `Verdict`).
//! - [`egress`]: the SSRF guard (one table of the addresses webhooks and providers may not
//!   go to) and the one builder of the webhook and model clients.
//! - [`signature`]: `mr-signature`, `X-ModelRiver-Signature` and Standard Webhooks
//!   signatures.
//! - [`payload`]: the JSON bodies sent to webhooks and sockets, built from a record and
//!   written as JavaScript prints JSON ([`payload::js`]).
//! - [`http`]: the hyper server, connection clocks and caps, request heads checked before
//!   hyper, routing, auth, input checks, the error envelope, handlers (`/v1`, `/console`
//!   per resource, `/admin`).
//! - [`metrics`]: counters and histograms in the Prometheus text format.
//! - [`ws`]: Phoenix Channels v2: frames, tokens, the channel hub, socket tasks.
//! - [`server`]: wiring of all the above around a bound listener.
//! - [`cli`]: the `eddy` command line; [`demo`]: `eddy demo`.
//! - [`clock`], [`secret`], [`error`]: wall-clock ms, random material, the error type.

pub mod ai;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod egress;
pub mod engine;
pub mod error;
pub mod http;
pub mod job;
pub mod metrics;
pub mod payload;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod signature;
pub mod store;
pub mod ws;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Server;
