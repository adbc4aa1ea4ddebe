//! The connection to NATS: the server list, one client per node that reconnects forever,
//! and what its events tell the rest of eddy.
//!
//! The client is given every server of `--cluster` and learns the others from them, so it
//! survives the loss of the server it is on: it reconnects to another one, resubscribes,
//! and in-flight requests of the lost one fail after one request timeout. Core NATS
//! delivers at most once, so a push published while this node was cut off is lost for
//! its sockets; [`Link::reconnected`] lets the hub resend the latest message of its joined
//! channels after every reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerInfo, jetstream};
use tokio::sync::watch;

use super::{ClusterError, Result, Settings};

/// Parses `--cluster`: comma-separated `nats://host:port` (or `tls://…`, or a bare
/// `host:port`, read as `nats://`). The port defaults to 4222.
pub fn parse_servers(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("an empty server address in {text:?}"));
        }
        let with_scheme = if part.contains("://") {
            part.to_string()
        } else {
            format!("nats://{part}")
        };
        let url = url::Url::parse(&with_scheme)
            .map_err(|e| format!("{part:?} is not a NATS server address: {e}"))?;
        if !matches!(url.scheme(), "nats" | "tls") {
            return Err(format!(
                "{part:?}: the scheme must be nats:// or tls://, not {}://",
                url.scheme()
            ));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(format!("{part:?} has no host"));
        };
        if url.path().len() > 1 || url.query().is_some() {
            return Err(format!("{part:?}: a server address has no path or query"));
        }
        let auth = match (url.username(), url.password()) {
            ("", None) => String::new(),
            (user, Some(pass)) => format!("{user}:{pass}@"),
            (user, None) => format!("{user}@"),
        };
        let port = url.port().unwrap_or(4222);
        out.push(format!("{}://{auth}{host}:{port}", url.scheme()));
    }
    Ok(out)
}

/// A server's version, `major.minor.patch` (a pre-release suffix is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32, pub u32, pub u32);

impl ServerVersion {
    /// The first release whose clustered streams check a CAS when it is applied (commit
    /// 244dda809, "Fix bug that would race around check for last sequence per subject").
    pub const SAFE_CAS: ServerVersion = ServerVersion(2, 9, 21);
    /// The oldest release eddy runs on: direct gets and `next_by_subj` reads are 2.9.
    pub const OLDEST: ServerVersion = ServerVersion(2, 9, 0);

    pub fn parse(text: &str) -> Option<ServerVersion> {
        let core = text.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        Some(ServerVersion(
            parts.next()??,
            parts.next()??,
            parts.next()??,
        ))
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What one server of the list answered when connected to alone.
#[derive(Debug, Clone)]
pub struct Reached {
    pub url: String,
    pub info: std::result::Result<ServerInfo, String>,
}

/// Connects to each server of the list on its own (not following its gossip) and reads
/// its INFO: version, JetStream, `max_payload`, the cluster it is in.
pub async fn versions(settings: &Settings) -> Vec<Reached> {
    let mut out = Vec::new();
    for url in &settings.servers {
        let info = async {
            let client = ConnectOptions::new()
                .name(format!("{} (check)", settings.node))
                .ignore_discovered_servers()
                .max_reconnects(Some(1))
                .connection_timeout(settings.request_timeout)
                .connect(url.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let info = client.server_info();
            drop(client);
            Ok(info)
        }
        .await;
        out.push(Reached {
            url: url.clone(),
            info,
        });
    }
    out
}

/// What the connection's events have shown so far.
#[derive(Default)]
struct State {
    connected: AtomicBool,
    connects: AtomicU64,
    disconnects: AtomicU64,
    /// Bumped by every reconnect (not the first connect).
    reconnects: watch::Sender<u64>,
}

/// One node's connection to NATS; cheap to clone.
#[derive(Clone)]
pub struct Link {
    client: Client,
    state: Arc<State>,
}

impl Link {
    /// Connects to the first server of the list that answers (an error if none does:
    /// eddy does not start against a cluster it cannot reach), then stays connected:
    /// reconnects forever, to any server of the list or learnt from it.
    pub async fn connect(settings: &Settings) -> Result<Link> {
        if settings.servers.is_empty() {
            return Err(ClusterError::Settings("no NATS server given".into()));
        }
        let state = Arc::new(State::default());
        let events = state.clone();
        let client = ConnectOptions::new()
            .name(&settings.node)
            .connection_timeout(settings.request_timeout)
            .request_timeout(Some(settings.request_timeout))
            .max_reconnects(None)
            .event_callback(move |event| {
                let state = events.clone();
                async move { state.note(event) }
            })
            .connect(settings.servers.as_slice())
            .await
            .map_err(|e| ClusterError::Connect {
                servers: settings.servers.join(","),
                reason: e.to_string(),
            })?;
        // The first `Connected` event may come before or after `connect` returns.
        state.connected.store(true, Ordering::Relaxed);
        Ok(Link { client, state })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A JetStream context whose requests and acknowledgements wait at most `timeout`.
    pub fn jetstream(&self, timeout: Duration) -> jetstream::Context {
        jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(self.client.clone())
    }

    pub fn connected(&self) -> bool {
        self.state.connected.load(Ordering::Relaxed)
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Times the connection was lost so far.
    pub fn disconnects(&self) -> u64 {
        self.state.disconnects.load(Ordering::Relaxed)
    }

    /// Changes after every reconnect: what was published meanwhile may not have arrived.
    pub fn reconnected(&self) -> watch::Receiver<u64> {
        self.state.reconnects.subscribe()
    }

    /// Stops taking messages, lets what was sent be flushed, and closes the connection
    /// (a node shutting down; its unacknowledged work goes to other nodes).
    pub async fn close(&self) {
        if let Err(e) = self.client.drain().await {
            tracing::warn!("cluster: closing the NATS connection: {e}");
        }
    }

    /// The server this node is connected to now.
    pub fn server(&self) -> ServerInfo {
        self.client.server_info()
    }
}

impl State {
    fn note(&self, event: Event) {
        match event {
            Event::Connected => {
                self.connected.store(true, Ordering::Relaxed);
                if self.connects.fetch_add(1, Ordering::Relaxed) > 0 {
                    tracing::info!("cluster: reconnected to NATS");
                    self.reconnects.send_modify(|n| *n += 1);
                }
            }
            Event::Disconnected => {
                self.connected.store(false, Ordering::Relaxed);
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("cluster: lost the connection to NATS; reconnecting");
            }
            Event::LameDuckMode => {
                tracing::info!("cluster: the NATS server is shutting down (lame duck mode)")
            }
            other => tracing::warn!("cluster: NATS {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--cluster` accepts what operators write (several servers, bare host:port, default
    /// port, credentials) and refuses what cannot be a NATS server, saying why.
    #[test]
    fn server_lists_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_servers("nats://10.0.0.1:4222, nats://b.example,c:4333").unwrap(),
            [
                "nats://10.0.0.1:4222",
                "nats://b.example:4222",
                "nats://c:4333"
            ]
        );
        assert_eq!(
            parse_servers("tls://u:p@n1:7422").unwrap(),
            ["tls://u:p@n1:7422"]
        );
        for (bad, why) in [
            ("", "empty"),
            ("nats://a:4222,,nats://b:4222", "empty"),
            ("http://a:4222", "scheme"),
            ("nats://:4222", "host"),
            ("nats://a:4222/x", "path"),
            ("nats://a:99999", "not a NATS server address"),
        ] {
            let err = parse_servers(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    /// Versions parse from what servers report, pre-releases included, and order as
    /// releases do around the CAS fix.
    #[test]
    fn versions_parse_and_order() {
        assert_eq!(
            ServerVersion::parse("2.9.10"),
            Some(ServerVersion(2, 9, 10))
        );
        assert_eq!(
            ServerVersion::parse("v2.10.0-beta.3"),
            Some(ServerVersion(2, 10, 0))
        );
        assert_eq!(ServerVersion::parse("2.9"), None);
        assert_eq!(ServerVersion::parse("two"), None);
        assert!(ServerVersion(2, 9, 10) < ServerVersion::SAFE_CAS);
        assert!(ServerVersion(2, 10, 0) > ServerVersion::SAFE_CAS);
        assert!(ServerVersion(2, 8, 4) < ServerVersion::OLDEST);
    }
}
