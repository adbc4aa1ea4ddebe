//! The options of `eddy serve` as given (flags, `EDDY_*` variables, the `--config` TOML
//! file), and their validation into a [`Config`]: each refusal names its option.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Config;
use crate::secret::KEY_PREFIX;

/// The options of `eddy serve`, as given. Each is also `EDDY_<NAME>` and a key of the
/// `--config` TOML file (snake_case).
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Address to listen on (port 0 picks a free one) [default: 127.0.0.1:3000]
    #[arg(long, env = "EDDY_LISTEN")]
    pub listen: Option<String>,
    /// Store directory [default: ./data]
    #[arg(long, env = "EDDY_DATA")]
    pub data: Option<PathBuf>,
    /// Base URL for callback_url and websocket_url [default: http://<bound address>]
    #[arg(long, env = "EDDY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Make sure this API key exists for project "default"
    #[arg(long, env = "EDDY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Delay before each webhook attempt [default: 0s,5s,30s,2m,10m,30m,1h,2h]
    #[arg(long, env = "EDDY_WEBHOOK_RETRY_SCHEDULE")]
    pub webhook_retry_schedule: Option<String>,
    /// Timeout of one webhook attempt [default: 30s]
    #[arg(long, env = "EDDY_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<String>,
    /// Least delay before retrying after a 429 or a timeout [default: 60s]
    #[arg(long, env = "EDDY_WEBHOOK_THROTTLE_DELAY")]
    pub webhook_throttle_delay: Option<String>,
    /// Webhook attempts in flight per endpoint (first attempts and retries each) [default: 64]
    #[arg(long, env = "EDDY_ENDPOINT_CONCURRENCY")]
    pub endpoint_concurrency: Option<usize>,
    /// Disable an endpoint whose every delivery failed for this long [default: 5d]
    #[arg(long, env = "EDDY_ENDPOINT_DISABLE_AFTER")]
    pub endpoint_disable_after: Option<String>,
    /// How long a rotated webhook secret still signs [default: 24h]
    #[arg(long, env = "EDDY_SECRET_ROTATION_GRACE")]
    pub secret_rotation_grace: Option<String>,
    /// How long dead letters are kept [default: 30d]
    #[arg(long, env = "EDDY_DLQ_RETENTION")]
    pub dlq_retention: Option<String>,
    /// How long completed and failed requests are kept [default: 30d]
    #[arg(long, env = "EDDY_REQUEST_RETENTION")]
    pub request_retention: Option<String>,
    /// Time from a webhook's 2xx to the backend's callback [default: 5m]
    #[arg(long, env = "EDDY_CALLBACK_TIMEOUT")]
    pub callback_timeout: Option<String>,
    /// Permit webhook URLs on loopback and private ranges
    #[arg(long, env = "EDDY_ALLOW_PRIVATE_WEBHOOKS")]
    #[serde(default)]
    pub allow_private_webhooks: bool,
    /// Enables /admin/projects with this bearer token
    #[arg(long, env = "EDDY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token for /metrics (the admin token works too) [default: none]
    #[arg(long, env = "EDDY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Serve /metrics without a token on this address of its own [default: none]
    #[arg(long, env = "EDDY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Time a client may take to send a request head, from connecting [default: 10s]
    #[arg(long, env = "EDDY_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// Close a connection with no request in flight after this long [default: 75s]
    #[arg(long, env = "EDDY_KEEP_ALIVE_TIMEOUT")]
    pub keep_alive_timeout: Option<String>,
    /// Requests per second per project on /v1 routes [default: no limit]
    #[arg(long, env = "EDDY_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Open HTTP connections before new ones are refused [default: 10000]
    #[arg(long, env = "EDDY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open HTTP connections per client address (IPv6: per /64) [default: 1000]
    #[arg(long, env = "EDDY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Open WebSocket connections before new upgrades are refused [default: 50000]
    #[arg(long, env = "EDDY_MAX_SOCKETS")]
    pub max_sockets: Option<usize>,
    /// Free disk space (MiB) kept in reserve; below it new requests get 503 [default: 64]
    #[arg(long, env = "EDDY_MIN_FREE_MB")]
    pub min_free_mb: Option<u64>,
    /// Close a WebSocket that sends nothing (not even a heartbeat) for this long [default: 60s]
    #[arg(long, env = "EDDY_WS_IDLE_TIMEOUT")]
    pub ws_idle_timeout: Option<String>,
    /// sled page cache in MiB [default: 32]
    #[arg(long, env = "EDDY_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "EDDY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Timeout of one model attempt [default: 60s]
    #[arg(long, env = "EDDY_PROVIDER_TIMEOUT")]
    pub provider_timeout: Option<String>,
    /// Retries of a provider before its fallbacks [default: 2]
    #[arg(long, env = "EDDY_PROVIDER_RETRIES")]
    pub provider_retries: Option<u32>,
    /// Wait before the first retry of a provider, doubled per retry [default: 500ms]
    #[arg(long, env = "EDDY_PROVIDER_BACKOFF")]
    pub provider_backoff: Option<String>,
    /// Permit provider base URLs on loopback and private ranges (local vLLM, Ollama)
    #[arg(long, env = "EDDY_ALLOW_PRIVATE_PROVIDERS")]
    #[serde(default)]
    pub allow_private_providers: bool,
    /// Cluster mode: the NATS servers, comma-separated (nats://10.0.0.1:4222,…) [default:
    /// none: one node on the local store]
    #[arg(long, env = "EDDY_CLUSTER", value_name = "URLS")]
    pub cluster: Option<String>,
    /// Prefix of eddy's buckets, streams and subjects on the NATS servers [default: eddy]
    #[arg(long, env = "EDDY_CLUSTER_PREFIX")]
    pub cluster_prefix: Option<String>,
    /// Copies of every bucket and stream: 3 for a cluster, 1 for one server [default: 3]
    #[arg(long, env = "EDDY_CLUSTER_REPLICAS")]
    pub cluster_replicas: Option<usize>,
    /// A TOML file with any of these options
    #[arg(long, env = "EDDY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("option {option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
}

fn invalid(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        message: message.into(),
    }
}

/// `"30s"`, `"2m"`, `"1h30m"`, `"250ms"`.
pub fn parse_duration(option: &'static str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| invalid(option, format!("{text:?}: {e}")))
}

/// A timeout of at least 100 ms (0 would close every connection at once).
fn at_least(option: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let timeout = parse_duration(option, text)?;
    if timeout < Duration::from_millis(100) {
        return Err(invalid(option, "must be at least 100ms"));
    }
    Ok(timeout)
}

/// A comma-separated list of durations, e.g. `"0s,5s,30s"`.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, ConfigError> {
    const OPTION: &str = "webhook_retry_schedule";
    let schedule = text
        .split(',')
        .map(|part| parse_duration(OPTION, part))
        .collect::<Result<Vec<_>, _>>()?;
    if schedule.is_empty() || schedule.len() > 30 {
        return Err(invalid(OPTION, "give between 1 and 30 delays"));
    }
    Ok(schedule)
}

impl Options {
    fn read_file(path: &Path) -> Result<Options, ConfigError> {
        let fail = |message: String| ConfigError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        toml::from_str(&text).map_err(|e| fail(e.to_string()))
    }

    /// Flags and environment first, then the file, then defaults; validated.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => Options::read_file(path)?,
            None => Options::default(),
        };
        let mut config = Config::default();
        if let Some(listen) = self.listen.or(file.listen) {
            config.listen = listen
                .parse()
                .map_err(|e| invalid("listen", format!("{listen:?}: {e}")))?;
        }
        if let Some(data) = self.data.or(file.data) {
            config.data = data;
        }
        if let Some(url) = self.public_url.or(file.public_url) {
            let url = url.trim_end_matches('/').to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid("public_url", "must start with http:// or https://"));
            }
            config.public_url = Some(url);
        }
        if let Some(key) = self.api_key.or(file.api_key) {
            let ok = key.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
                rest.len() >= 32
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
            if !ok {
                return Err(invalid(
                    "api_key",
                    "must be mr_live_ followed by at least 32 letters, digits, '_' or '-'",
                ));
            }
            config.api_key = Some(key);
        }
        if let Some(s) = self.webhook_retry_schedule.or(file.webhook_retry_schedule) {
            config.retry_schedule = parse_schedule(&s)?;
        }
        if let Some(t) = self.webhook_timeout.or(file.webhook_timeout) {
            config.webhook_timeout = parse_duration("webhook_timeout", &t)?;
        }
        if let Some(t) = self.webhook_throttle_delay.or(file.webhook_throttle_delay) {
            config.webhook_throttle_delay = parse_duration("webhook_throttle_delay", &t)?;
        }
        if let Some(n) = self.endpoint_concurrency.or(file.endpoint_concurrency) {
            if !(1..=1024).contains(&n) {
                return Err(invalid("endpoint_concurrency", "must be from 1 to 1024"));
            }
            config.endpoint_concurrency = n;
        }
        if let Some(t) = self.endpoint_disable_after.or(file.endpoint_disable_after) {
            config.endpoint_disable_after = parse_duration("endpoint_disable_after", &t)?;
        }
        if let Some(t) = self.secret_rotation_grace.or(file.secret_rotation_grace) {
            config.secret_rotation_grace = parse_duration("secret_rotation_grace", &t)?;
        }
        if let Some(t) = self.dlq_retention.or(file.dlq_retention) {
            config.dlq_retention = parse_duration("dlq_retention", &t)?;
        }
        if let Some(t) = self.request_retention.or(file.request_retention) {
            config.request_retention = parse_duration("request_retention", &t)?;
        }
        if let Some(t) = self.callback_timeout.or(file.callback_timeout) {
            config.callback_timeout = parse_duration("callback_timeout", &t)?;
        }
        config.allow_private_webhooks = self.allow_private_webhooks || file.allow_private_webhooks;
        if let Some(token) = self.admin_token.or(file.admin_token) {
            if token.len() < 16 {
                return Err(invalid("admin_token", "must be at least 16 characters"));
            }
            config.admin_token = Some(token);
        }
        if let Some(token) = self.metrics_token.or(file.metrics_token) {
            if token.len() < 16 {
                return Err(invalid("metrics_token", "must be at least 16 characters"));
            }
            config.metrics_token = Some(token);
        }
        if let Some(listen) = self.metrics_listen.or(file.metrics_listen) {
            config.metrics_listen = Some(
                listen
                    .parse()
                    .map_err(|e| invalid("metrics_listen", format!("{listen:?}: {e}")))?,
            );
        }
        if let Some(t) = self.header_read_timeout.or(file.header_read_timeout) {
            config.header_read_timeout = at_least("header_read_timeout", &t)?;
        }
        if let Some(t) = self.keep_alive_timeout.or(file.keep_alive_timeout) {
            config.keep_alive_timeout = at_least("keep_alive_timeout", &t)?;
        }
        if let Some(rate) = self.rate_limit.or(file.rate_limit) {
            if rate == 0 {
                return Err(invalid(
                    "rate_limit",
                    "must be at least 1 (omit it for no limit)",
                ));
            }
            config.rate_limit = Some(rate);
        }
        if let Some(n) = self.max_connections.or(file.max_connections) {
            config.max_connections = n.max(1);
        }
        if let Some(n) = self.max_connections_per_ip.or(file.max_connections_per_ip) {
            config.max_connections_per_ip = n.max(1);
        }
        if let Some(n) = self.max_sockets.or(file.max_sockets) {
            config.max_sockets = n;
        }
        if let Some(mb) = self.min_free_mb.or(file.min_free_mb) {
            config.min_free_bytes = mb << 20;
        }
        if let Some(t) = self.ws_idle_timeout.or(file.ws_idle_timeout) {
            config.ws_idle_timeout = at_least("ws_idle_timeout", &t)?;
        }
        if let Some(mb) = self.cache_mb.or(file.cache_mb) {
            config.cache_bytes = mb.max(1) << 20;
        }
        if let Some(t) = self.provider_timeout.or(file.provider_timeout) {
            config.provider_timeout = parse_duration("provider_timeout", &t)?;
        }
        if let Some(n) = self.provider_retries.or(file.provider_retries) {
            if n > 10 {
                return Err(invalid("provider_retries", "must be at most 10"));
            }
            config.provider_retries = n;
        }
        if let Some(t) = self.provider_backoff.or(file.provider_backoff) {
            config.provider_backoff = parse_duration("provider_backoff", &t)?;
        }
        config.allow_private_providers =
            self.allow_private_providers || file.allow_private_providers;
        if let Some(urls) = self.cluster.or(file.cluster) {
            crate::cluster::connect::parse_servers(&urls).map_err(|e| {
                invalid(
                    "cluster",
                    format!("{e} (give --cluster nats://host:4222[,nats://host:4222…])"),
                )
            })?;
            config.cluster = Some(urls);
        }
        if let Some(prefix) = self.cluster_prefix.or(file.cluster_prefix) {
            if !crate::cluster::key::valid_prefix(&prefix) {
                return Err(invalid(
                    "cluster_prefix",
                    "a lowercase letter, then up to 31 lowercase letters, digits or _",
                ));
            }
            config.cluster_prefix = prefix;
        }
        if let Some(n) = self.cluster_replicas.or(file.cluster_replicas) {
            if !(1..=5).contains(&n) {
                return Err(invalid("cluster_replicas", "must be from 1 to 5"));
            }
            config.cluster_replicas = n;
        }
        match self.log_format.or(file.log_format).as_deref() {
            None | Some("text") => {}
            Some("json") => config.log_json = true,
            Some(other) => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?}: use text or json"),
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags win over the file, the file over defaults, and bad values name their option.
    #[test]
    fn precedence_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eddy.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:4000\"\nwebhook_timeout = \"7s\"\ncallback_timeout = \"1m\"\n\
             ws_idle_timeout = \"90s\"\n",
        )
        .unwrap();
        let opts = Options {
            listen: Some("127.0.0.1:0".into()),
            config: Some(path),
            ..Options::default()
        };
        let config = opts.into_config().unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.webhook_timeout, Duration::from_secs(7));
        assert_eq!(config.callback_timeout, Duration::from_secs(60));
        assert_eq!(config.retry_schedule.len(), 8);
        assert_eq!(config.ws_idle_timeout, Duration::from_secs(90));

        let bad = Options {
            webhook_retry_schedule: Some("1s,soon".into()),
            ..Options::default()
        };
        let err = bad.into_config().unwrap_err().to_string();
        assert!(err.contains("webhook_retry_schedule"), "{err}");

        let short_key = Options {
            api_key: Some("mr_live_short".into()),
            ..Options::default()
        };
        assert!(short_key.into_config().is_err());

        let instant_idle = Options {
            ws_idle_timeout: Some("0s".into()),
            ..Options::default()
        };
        let err = instant_idle.into_config().unwrap_err().to_string();
        assert!(err.contains("ws_idle_timeout"), "{err}");

        for wrong in ["http://127.0.0.1:4222", "nats://a:4222,,nats://b:4222"] {
            let cluster = Options {
                cluster: Some(wrong.into()),
                ..Options::default()
            };
            let err = cluster.into_config().unwrap_err().to_string();
            assert!(
                err.contains("--cluster") && err.contains("nats://"),
                "{err}"
            );
        }
        let cluster = Options {
            cluster: Some("10.0.0.1,nats://10.0.0.2:4223".into()),
            cluster_replicas: Some(1),
            ..Options::default()
        };
        let config = cluster.into_config().unwrap();
        assert_eq!(
            config.cluster.as_deref(),
            Some("10.0.0.1,nats://10.0.0.2:4223")
        );
        assert_eq!(
            (config.cluster_prefix.as_str(), config.cluster_replicas),
            ("eddy", 1)
        );
    }
}
