//! Test support: an in-process eddy on a temporary store, a real webhook receiver, a
//! Phoenix v2 client, the official `phoenix` JS client under Node ([`Browser`]), and an
//! independent implementation of the webhook signatures.
//!
//! Everything runs on real sockets: the server binds `127.0.0.1:0`, the receiver is a hyper
//! server on its own ephemeral port, and the socket client speaks WebSocket to the server.

pub mod api;
pub mod binary;
pub mod browser;
pub mod log;
pub mod nats;
pub mod nodes;
pub mod phoenix;
pub mod powerfs;
pub mod provider;
pub mod raw;
pub mod receiver;
pub mod sign;
pub mod tools;
pub mod wait;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use api::Api;
pub use binary::Eddy;
pub use browser::Browser;
pub use phoenix::Phoenix;
pub use receiver::{Callback, Receiver};
pub use wait::{eventually, ok_if, poll};

/// The bootstrap API key of every test server: `mr_live_` and 40 alphanumerics.
pub const KEY: &str = "mr_live_0123456789abcdefghijABCDEFGHIJ0123456789";

/// The metrics token of every test server (`/metrics` takes it as a bearer token).
pub const METRICS_TOKEN: &str = "metrics-token-0123456789";

/// How long a test waits for something that normally takes milliseconds. Generous, so a
/// loaded two-core machine does not fail a test that is merely slow; waits end as soon as
/// the awaited thing happens.
pub const WAIT: Duration = Duration::from_secs(20);

/// The seed's structured output: the headphones the product doc generates.
pub fn headphones() -> Value {
    json!({
        "title": "ProSound X1 Wireless Headphones",
        "description": "Experience crystal-clear audio...",
        "features": ["Active noise cancellation", "40-hour battery"]
    })
}

/// The seed's async request body for workflow `workflow`.
pub fn seed_request(workflow: &str) -> Value {
    json!({
        "workflow": workflow,
        "messages": [
            {"role": "user", "content": "Generate a product description for wireless headphones"}
        ],
        "metadata": {"product_id": "prod_123", "category": "electronics"}
    })
}

/// A reqwest client for plain-HTTP test traffic.
pub fn http_client() -> reqwest::Client {
    eddy::egress::install_crypto();
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("test client builds")
}

/// An HTTP answer, whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// The body as JSON, `Value::Null` if it is not JSON.
    pub json: Value,
}

/// An eddy server running in this process on a temporary store; derefs to its [`Api`].
pub struct TestServer {
    api: Api,
    config: eddy::Config,
    /// `http://IP:PORT` of the `/metrics` listener, when `metrics_listen` is configured.
    pub metrics_base: Option<String>,
    /// Kept alive for restarts on the same store.
    _dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts a server with the test defaults (bootstrap key, metrics token, private webhooks
/// allowed, a 0 ms / 50 ms / 100 ms retry schedule), changed by `tweak`. A
/// `metrics_listen` address is bound by the test (port 0 picks one: see
/// [`TestServer::metrics_base`]).
pub async fn start(tweak: impl FnOnce(&mut eddy::Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = eddy::Config {
        data: dir.path().to_path_buf(),
        api_key: Some(KEY.to_string()),
        metrics_token: Some(METRICS_TOKEN.to_string()),
        allow_private_webhooks: true,
        retry_schedule: vec![
            Duration::ZERO,
            Duration::from_millis(50),
            Duration::from_millis(100),
        ],
        webhook_timeout: Duration::from_secs(5),
        webhook_throttle_delay: Duration::from_millis(100),
        ..eddy::Config::default()
    };
    tweak(&mut config);
    let mut server = TestServer {
        api: Api {
            base: String::new(),
            key: KEY.to_string(),
            http: http_client(),
        },
        config,
        metrics_base: None,
        _dir: dir,
        stop: None,
        task: None,
    };
    server.launch().await;
    server
}

impl TestServer {
    async fn launch(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.launch_on(listener).await;
    }

    async fn launch_on(&mut self, listener: TcpListener) {
        let addr = listener.local_addr().expect("local addr");
        // sled releases its lock on drop; a store just closed may hold it for a moment.
        let server = eventually("the store to open", async || {
            eddy::Server::open(self.config.clone()).await
        })
        .await;
        let server = match self.config.metrics_listen {
            Some(addr) => {
                let metrics = TcpListener::bind(addr).await.expect("bind metrics");
                let addr = metrics.local_addr().expect("metrics address");
                self.metrics_base = Some(format!("http://{addr}"));
                server.with_metrics_listener(metrics)
            }
            None => server,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        self.api.base = format!("http://{addr}");
        self.stop = Some(stop);
        self.task = Some(task);
    }

    /// The store directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.config.data.clone()
    }

    /// Stops the server the way SIGTERM does and waits until it has closed its store.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops within the wait")
                .expect("server task does not panic")
                .expect("server stops cleanly");
        }
    }

    /// Stops the server and starts a new one on the same store (on a new port).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// [`TestServer::restart`] with the configuration changed by `tweak`.
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut eddy::Config)) {
        self.shutdown().await;
        tweak(&mut self.config);
        // Connections to the old port are useless now.
        self.api.http = http_client();
        self.launch().await;
    }

    /// Stops the server and starts a new one on the same store and port, as a restart
    /// looks to a browser that reconnects to the same URL.
    pub async fn restart_in_place(&mut self) {
        let addr: std::net::SocketAddr = self
            .api
            .base
            .trim_start_matches("http://")
            .parse()
            .expect("base is http://IP:PORT");
        self.shutdown().await;
        self.api.http = http_client();
        let listener = eventually(&format!("port {addr} to be free again"), async || {
            TcpListener::bind(addr).await
        })
        .await;
        self.launch_on(listener).await;
    }
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server (see [`start`]) and a [`Receiver`] registered as its webhook endpoint.
pub async fn start_with_receiver(tweak: impl FnOnce(&mut eddy::Config)) -> (TestServer, Receiver) {
    let server = start(tweak).await;
    let receiver = Receiver::start().await;
    server.register_webhook(&receiver.url).await;
    (server, receiver)
}

/// The seed's setup: [`start_with_receiver`] and the event-driven testing workflow
/// `content_generator` (see [`Api::event_workflow`]).
pub async fn seeded(tweak: impl FnOnce(&mut eddy::Config)) -> (TestServer, Receiver) {
    let (server, receiver) = start_with_receiver(tweak).await;
    server.event_workflow("content_generator", json!({})).await;
    (server, receiver)
}

/// A test-mode workflow `name` that answers after ten minutes: its requests stay pending,
/// so nothing happens in the background while a test looks at the store.
pub fn holding_workflow(name: &str) -> Value {
    json!({"name": name, "provider": "testing", "model": "test-mode",
           "mode": "testing", "response_delay_ms": 600_000})
}

/// An async request body for `workflow` with one user message `content`.
pub fn message_request(workflow: &str, content: &str) -> Value {
    json!({"workflow": workflow, "messages": [{"role": "user", "content": content}]})
}

/// A header as text; panics if it is missing.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} is missing"))
        .to_str()
        .expect("header is text")
}

/// A string field of a JSON object; panics naming the field if it is missing.
pub fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

/// Asserts that the JSON object `value` has exactly the fields `names` (space-separated,
/// in any order).
pub fn assert_fields(value: &Value, names: &str) {
    let mut fields: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let mut expected: Vec<&str> = names.split_whitespace().collect();
    expected.sort_unstable();
    assert_eq!(fields, expected, "{value}");
}

/// Shallow merge of object `extra` into object `into`.
pub fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// True for `2026-02-15T08:30:00.000Z`: RFC 3339, UTC, exactly three fraction digits.
pub fn is_rfc3339_ms_z(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| range.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A fake server (a webhook receiver, a model API) on its own port: its `state`, served by
/// [`serve_http`] until this is dropped. Derefs to the state.
pub struct FakeServer<S> {
    state: Arc<S>,
    pub addr: std::net::SocketAddr,
    task: JoinHandle<()>,
}

impl<S: Send + Sync + 'static> FakeServer<S> {
    /// Serves `state` on `listener`, answering each request with `handle(state, request)`.
    pub fn on<F, Fut, B>(listener: TcpListener, state: S, handle: F) -> FakeServer<S>
    where
        F: Fn(Arc<S>, hyper::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
        Fut: Future<Output = hyper::Response<B>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let addr = listener.local_addr().expect("fake server address");
        let state = Arc::new(state);
        let task = tokio::spawn(serve_http(listener, state.clone(), handle));
        FakeServer { state, addr, task }
    }
}

impl<S> std::ops::Deref for FakeServer<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S> Drop for FakeServer<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1 on `listener` until the task is dropped, answering each request with
/// `handle(state, request)`: the accept loop of every fake server.
pub async fn serve_http<S, F, Fut, B>(listener: TcpListener, state: Arc<S>, handle: F)
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, hyper::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
