//! Configuration: raw options from flags, `EDDY_*` environment variables and an optional
//! TOML file ([`Options`], in `options`) are merged (flag/env over file over default) and
//! validated into the [`Config`] the program uses (here). Every default lives in
//! [`Config::default`], and nothing else reads options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod options;

pub use options::{ConfigError, Options, parse_duration, parse_schedule};

/// The validated configuration of one server. Its `Debug` form hides the secrets.
#[derive(Clone)]
pub struct Config {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Store directory.
    pub data: PathBuf,
    /// Base of `callback_url` and `websocket_url`; `http://<bound address>` when unset.
    pub public_url: Option<String>,
    /// Bootstrap key for project `default`.
    pub api_key: Option<String>,
    /// Delay before each webhook attempt; its length is the attempt count.
    pub retry_schedule: Vec<Duration>,
    /// Per webhook attempt.
    pub webhook_timeout: Duration,
    /// Least delay before retrying after a 429 or a timeout.
    pub webhook_throttle_delay: Duration,
    /// Webhook attempts in flight per endpoint, for first attempts and for retries each:
    /// a slow endpoint holds at most this many, never the whole server.
    pub endpoint_concurrency: usize,
    /// An endpoint whose every delivery failed for this long is disabled.
    pub endpoint_disable_after: Duration,
    /// How long a rotated webhook secret keeps signing beside the new one.
    pub secret_rotation_grace: Duration,
    /// How long dead letters are kept.
    pub dlq_retention: Duration,
    /// How long completed and failed requests (and their timelines) are kept.
    pub request_retention: Duration,
    /// From a webhook's 2xx to the backend's callback.
    pub callback_timeout: Duration,
    pub allow_private_webhooks: bool,
    pub admin_token: Option<String>,
    /// Bearer token for `/metrics` on the API listener (the admin token works too).
    pub metrics_token: Option<String>,
    /// A listener of its own for `/metrics`, without a token.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a client may take to send a request head, from the connection's
    /// acceptance (first request) or the head's first byte (later ones).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long (above the 60 s
    /// idle timeout of common load balancers, so they close first).
    pub keep_alive_timeout: Duration,
    /// Largest accepted request body.
    pub body_limit: usize,
    /// How long a request body may take to arrive.
    pub body_read_timeout: Duration,
    /// Requests per second per project on `/v1` routes (a token bucket holding one
    /// second's worth); `None` for no limit.
    pub rate_limit: Option<u32>,
    /// Open HTTP connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Open HTTP connections per client address (an IPv6 /64); more are answered 429.
    pub max_connections_per_ip: usize,
    /// Open WebSocket connections; more upgrades are answered 503.
    pub max_sockets: usize,
    /// Lifetime of a WebSocket token.
    pub ws_token_ttl: Duration,
    /// How long an `Idempotency-Key` returns its first response.
    pub idempotency_ttl: Duration,
    /// sled page cache.
    pub cache_bytes: u64,
    /// Free space kept in reserve on the store's filesystem: below it new requests are
    /// refused with 503 while accepted work goes on.
    pub min_free_bytes: u64,
    /// Requests worked on at once (AI calls and delivery rounds).
    pub max_inflight: usize,
    /// A WebSocket that sends nothing for this long is closed (the phoenix client sends a
    /// heartbeat every 30 s, so the default of 60 s is two missed heartbeats). It also
    /// bounds how long one write to a socket may take before it counts as a slow reader.
    pub ws_idle_timeout: Duration,
    /// JSON logs instead of human-readable ones.
    pub log_json: bool,
    /// Per model attempt, unless a provider's credentials set their own.
    pub provider_timeout: Duration,
    /// Further attempts on the same provider after a 429, 5xx, timeout or invalid answer,
    /// before the workflow's fallbacks.
    pub provider_retries: u32,
    /// Wait before the first retry of a provider; doubled for each next one.
    pub provider_backoff: Duration,
    /// Permit provider `base_url`s on loopback and private ranges (local vLLM, Ollama).
    pub allow_private_providers: bool,
    /// Cluster mode: the NATS servers (`nats://host:port`, comma-separated). `None` is
    /// the single sled node under `data`, the default.
    pub cluster: Option<String>,
    /// Prefix of eddy's buckets, streams and subjects on those servers.
    pub cluster_prefix: String,
    /// Copies of every bucket and stream: 3 for a cluster of servers, 1 for one server.
    pub cluster_replicas: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<hidden>");
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data", &self.data)
            .field("public_url", &self.public_url)
            .field("api_key", &hidden(&self.api_key))
            .field("admin_token", &hidden(&self.admin_token))
            .field("metrics_token", &hidden(&self.metrics_token))
            .field("retry_schedule", &self.retry_schedule)
            .field("webhook_timeout", &self.webhook_timeout)
            .field("callback_timeout", &self.callback_timeout)
            .field("allow_private_webhooks", &self.allow_private_webhooks)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data: PathBuf::from("./data"),
            public_url: None,
            api_key: None,
            retry_schedule: [0, 5, 30, 120, 600, 1800, 3600, 7200]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            webhook_timeout: Duration::from_secs(30),
            webhook_throttle_delay: Duration::from_secs(60),
            endpoint_concurrency: 64,
            endpoint_disable_after: Duration::from_secs(5 * 24 * 3600),
            secret_rotation_grace: Duration::from_secs(24 * 3600),
            dlq_retention: Duration::from_secs(30 * 24 * 3600),
            request_retention: Duration::from_secs(30 * 24 * 3600),
            callback_timeout: Duration::from_secs(300),
            allow_private_webhooks: false,
            admin_token: None,
            metrics_token: None,
            metrics_listen: None,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            body_limit: 1 << 20,
            body_read_timeout: Duration::from_secs(30),
            rate_limit: None,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_sockets: 50_000,
            ws_token_ttl: Duration::from_secs(300),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            cache_bytes: 32 << 20,
            min_free_bytes: 64 << 20,
            max_inflight: 4096,
            ws_idle_timeout: Duration::from_secs(60),
            log_json: false,
            provider_timeout: Duration::from_secs(60),
            provider_retries: 2,
            provider_backoff: Duration::from_millis(500),
            allow_private_providers: false,
            cluster: None,
            cluster_prefix: "eddy".into(),
            cluster_replicas: 3,
        }
    }
}

impl Config {
    /// What to tell the operator at start when `--public-url` is not set: callback and
    /// WebSocket URLs then name `bound`, which a backend elsewhere, or any client after a
    /// restart on a new port, cannot reach.
    pub fn public_url_warning(&self, bound: SocketAddr) -> Option<String> {
        if self.public_url.is_some() {
            return None;
        }
        let why = if self.listen.port() == 0 {
            "a port picked for this process only: callbacks for requests accepted now reach \
             nothing after a restart"
        } else if bound.ip().is_unspecified() {
            "not an address a client can connect to"
        } else if bound.ip().is_loopback() {
            "which only this machine can reach"
        } else {
            "right only if backends and browsers reach eddy at that address"
        };
        Some(format!(
            "no --public-url: callback_url and websocket_url name http://{bound}, {why}; set \
             --public-url for anything that restarts or is reached through a proxy"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `--public-url`, the start warns that callback and socket URLs name the
    /// bound address, and says why that is a problem; with it, nothing is said.
    #[test]
    fn public_url_warning_says_why() {
        let ephemeral = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        };
        let bound = SocketAddr::from(([127, 0, 0, 1], 41234));
        let warning = ephemeral.public_url_warning(bound).unwrap();
        assert!(
            warning.contains("http://127.0.0.1:41234, a port picked"),
            "{warning}"
        );
        let set = Config {
            public_url: Some("https://eddy.example.com".into()),
            ..ephemeral
        };
        assert_eq!(set.public_url_warning(bound), None);
    }
}
