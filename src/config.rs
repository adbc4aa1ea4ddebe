//! Configuration: raw options from flags, `EDDY_*` environment variables and an optional
//! TOML file are merged (flag/env over file over default) and validated into the
//! [`Config`] the program uses. Every default lives in [`Config::default`], and nothing else
//! reads options.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::KEY_PREFIX;

/// The validated configuration of one server.
#[derive(Debug, Clone)]
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
    /// From a webhook's 2xx to the backend's callback.
    pub callback_timeout: Duration,
    pub allow_private_webhooks: bool,
    pub admin_token: Option<String>,
    /// How long a client may take to send request headers.
    pub header_read_timeout: Duration,
    /// Largest accepted request body.
    pub body_limit: usize,
    /// Lifetime of a WebSocket token.
    pub ws_token_ttl: Duration,
    /// How long an `Idempotency-Key` returns its first response.
    pub idempotency_ttl: Duration,
    /// sled page cache.
    pub cache_bytes: u64,
    /// Requests worked on at once (AI calls and delivery rounds).
    pub max_inflight: usize,
    /// A WebSocket that sends nothing for this long is closed (the phoenix client sends a
    /// heartbeat every 30 s, so the default of 60 s is two missed heartbeats). It also
    /// bounds how long one write to a socket may take before it counts as a slow reader.
    pub ws_idle_timeout: Duration,
    /// JSON logs instead of human-readable ones.
    pub log_json: bool,
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
            callback_timeout: Duration::from_secs(300),
            allow_private_webhooks: false,
            admin_token: None,
            header_read_timeout: Duration::from_secs(10),
            body_limit: 1 << 20,
            ws_token_ttl: Duration::from_secs(300),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            cache_bytes: 64 << 20,
            max_inflight: 4096,
            ws_idle_timeout: Duration::from_secs(60),
            log_json: false,
        }
    }
}

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
    /// Time a client may take to send request headers [default: 10s]
    #[arg(long, env = "EDDY_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// Close a WebSocket that sends nothing (not even a heartbeat) for this long [default: 60s]
    #[arg(long, env = "EDDY_WS_IDLE_TIMEOUT")]
    pub ws_idle_timeout: Option<String>,
    /// sled page cache in MiB [default: 64]
    #[arg(long, env = "EDDY_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "EDDY_LOG_FORMAT")]
    pub log_format: Option<String>,
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
        if let Some(t) = self.header_read_timeout.or(file.header_read_timeout) {
            config.header_read_timeout = parse_duration("header_read_timeout", &t)?;
        }
        if let Some(t) = self.ws_idle_timeout.or(file.ws_idle_timeout) {
            let timeout = parse_duration("ws_idle_timeout", &t)?;
            if timeout < Duration::from_millis(100) {
                return Err(invalid("ws_idle_timeout", "must be at least 100ms"));
            }
            config.ws_idle_timeout = timeout;
        }
        if let Some(mb) = self.cache_mb.or(file.cache_mb) {
            config.cache_bytes = mb.max(1) << 20;
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
    }
}
