//! Wiring: opens the store and catalog, bootstraps the default project and key, then runs
//! the engine, the scheduler and the HTTP server on a bound listener until a shutdown
//! future resolves. Taking a listener and any future keeps the whole server testable
//! in-process (tests bind `127.0.0.1:0`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ai::{Models, Policy};
use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::cluster;
use crate::config::Config;
use crate::engine::Engine;
use crate::http::{self, App, Face};
use crate::job::ChannelId;
use crate::scheduler::{self, Work};
use crate::secret;
use crate::store::{Store, StoreError};
use crate::ws::socket::SocketContext;
use crate::ws::{Hub, TokenKey};

/// How long open HTTP requests may take to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// An opened, bootstrapped server, not yet serving.
pub struct Server {
    config: Arc<Config>,
    store: Store,
    catalog: Arc<Catalog>,
    tokens: TokenKey,
    models: Models,
    new_key: Option<String>,
    /// Serves `/metrics` alone (`--metrics-listen`).
    metrics_listener: Option<TcpListener>,
}

impl Server {
    /// Opens the store under `config.data` and makes sure project `default` exists with
    /// `--api-key` (or, on a store without any key, a new key: see [`Server::new_key`]).
    pub async fn open(config: Config) -> Result<Server, StoreError> {
        crate::egress::install_crypto();
        let store = match cluster::Settings::of_config(&config) {
            None => Store::open(&config.data, config.cache_bytes, config.min_free_bytes)?,
            // Boxed: the opening is a deep future, and the caller's stack may be a test's.
            Some(settings) => Box::pin(Store::open_cluster(settings?)).await?,
        };
        let catalog = Arc::new(Catalog::load(store.clone())?);
        let new_key = catalog
            .bootstrap(config.api_key.as_deref(), now_ms())
            .await?;
        let secret = store
            .meta_or_init("ws_token_key", || secret::random_bytes32().to_vec())
            .await?;
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|_| StoreError::Io(std::io::Error::other("corrupt ws_token_key")))?;
        store.commit().await?;
        let models = Models::new(Policy {
            timeout: config.provider_timeout,
            retries: config.provider_retries,
            backoff: config.provider_backoff,
            guarded: !config.allow_private_providers,
        });
        Ok(Server {
            config: Arc::new(config),
            store,
            catalog,
            tokens: TokenKey::new(secret),
            models,
            new_key,
            metrics_listener: None,
        })
    }

    /// A key created on this start because the store had none; print it once.
    pub fn new_key(&self) -> Option<&str> {
        self.new_key.as_deref()
    }

    /// Replaces the model registry (tests and real providers).
    pub fn with_models(mut self, models: Models) -> Server {
        self.models = models;
        self
    }

    /// Also serves `/metrics`, without a token, on `listener` (`--metrics-listen`).
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Server {
        self.metrics_listener = Some(listener);
        self
    }

    /// Serves until `shutdown` resolves; then stops accepting, closes WebSockets with 1001,
    /// stops the scheduler (in-flight work stays parked in the due index), lets open
    /// requests finish, and makes the store durable.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        let public_url = self
            .config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });

        let hub = Arc::new(Hub::new());
        if let Some(cluster) = self.store.cluster() {
            let store = self.store.clone();
            let resend = move |hub: Arc<Hub>, channels: Vec<ChannelId>| {
                tokio::spawn(resend_latest(hub, store.clone(), channels));
            };
            hub.join_cluster(cluster, resend)
                .await
                .map_err(|e| std::io::Error::other(format!("joining the cluster's pushes: {e}")))?;
        }
        let (scheduler_handle, inbox) = scheduler::channel();
        let engine = Arc::new(Engine::new(
            self.store.clone(),
            self.catalog.clone(),
            hub.clone(),
            self.models.clone(),
            scheduler_handle,
            self.config.clone(),
            self.tokens.clone(),
            public_url,
        ));
        let sockets = Arc::new(SocketContext {
            hub,
            replay: engine.clone(),
            idle_timeout: self.config.ws_idle_timeout,
            shutdown: stop.child_token(),
        });
        let settings = scheduler::Settings {
            max_inflight: self.config.max_inflight,
            ..scheduler::Settings::default()
        };
        let scheduler_task = scheduler::spawn(
            inbox,
            self.store.clone(),
            engine.clone(),
            settings,
            stop.child_token(),
        );
        let sweeper = tokio::spawn(sweep(engine.clone(), stop.child_token()));
        tokio::spawn(reload_catalog_on_reopen(
            self.store.clone(),
            self.catalog.clone(),
            stop.child_token(),
        ));
        let rate_limit = self
            .config
            .rate_limit
            .map(crate::http::limits::RateLimiter::new);
        let app = Arc::new(App {
            engine,
            sockets,
            rate_limit,
        });
        tracing::info!(%addr, "serving");
        let metrics = self.metrics_listener.map(|listener| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let shutdown = stop.cancelled_owned();
                http::serve(listener, app, Face::Metrics, SHUTDOWN_GRACE, shutdown).await;
            })
        });
        let shutdown = stop.clone().cancelled_owned();
        http::serve(listener, app, Face::Api, SHUTDOWN_GRACE, shutdown).await;
        stop.cancel();
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        let _ = scheduler_task.await;
        let _ = sweeper.await;
        if let Err(e) = self.store.commit().await {
            tracing::error!(error = %e, "final commit failed");
        }
        if let Some(cluster) = self.store.cluster() {
            // What this node took and did not finish goes to the other nodes.
            cluster.link.close().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Deletes terminal requests and dead letters past their retention, at start and then
/// every tenth of the shorter retention (at most hourly, at least every second).
async fn sweep(engine: Arc<Engine>, stop: CancellationToken) {
    let config = engine.config();
    let every = (config.dlq_retention.min(config.request_retention) / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match engine.sweep_expired().await {
                Ok(swept) if swept == Default::default() => {}
                Ok(swept) => tracing::info!(
                    requests = swept.requests,
                    dead_letters = swept.dead_letters,
                    "swept past retention"
                ),
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            },
        }
    }
}

/// After this node reconnected to NATS: the latest message of every channel joined here,
/// again (a push published while the node was cut off never reached it).
async fn resend_latest(hub: Arc<Hub>, store: Store, channels: Vec<ChannelId>) {
    for channel in channels {
        match store.request_by_channel(&channel).await {
            Ok(Some(record)) => {
                if let Some(push) = crate::payload::latest_push(&record) {
                    let topic = crate::ws::topic(&record.project_id, &channel);
                    hub.push_here(&channel, &topic, "response", &push.payload);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cluster: resending the latest message of {channel}: {e}"),
        }
    }
}

/// After the store reopened itself (a write error, then room again), the catalog reloads:
/// a change whose commit failed may not have reached the disk.
async fn reload_catalog_on_reopen(store: Store, catalog: Arc<Catalog>, stop: CancellationToken) {
    let mut reopened = store.reopened();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = reopened.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Err(e) = catalog.reload() {
                    tracing::error!(error = %e, "reloading the catalog after a reopen failed");
                }
            }
        }
    }
}

impl Work for Engine {
    fn run(&self, id: u64, due_ms: u64) -> Pin<Box<dyn Future<Output = Option<u64>> + Send + '_>> {
        Box::pin(self.drive(id, due_ms))
    }

    fn holds(&self, id: u64) -> bool {
        self.waits_in_lane(id)
    }
}
