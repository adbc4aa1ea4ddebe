//! The HTTP face of eddy on raw hyper: the accept loop (HTTP/1 and HTTP/2, header-read
//! timeout, graceful shutdown), routing with the `/api` alias, authentication, and the
//! handlers, which translate JSON to engine calls and back. No business rules live here.
//!
//! - [`json`]: body limits, JSON parsing with field-naming errors, responses.
//! - [`error`]: the error envelope and the mapping from [`crate::Error`].
//! - [`runtime`]: `/v1` routes. [`console`]: `/console` routes. [`views`]: JSON views.
//! - [`providers`]: the `/console/providers` routes; [`sync`]: `/v1/ai` and
//!   `/v1/chat/completions`.
//! - [`upgrade`]: the WebSocket upgrade at `/socket/websocket`.

pub mod admin;
pub mod console;
pub mod dlq;
pub mod error;
pub mod json;
pub mod limits;
pub mod providers;
pub mod runtime;
pub mod sync;
pub mod upgrade;
pub mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::catalog::Project;
use crate::clock::now_ms;
use crate::engine::Engine;
use crate::ws::socket::SocketContext;
use error::ApiError;
use json::{Response, json_response};

/// What every handler needs.
pub struct App {
    pub engine: Arc<Engine>,
    pub sockets: Arc<SocketContext>,
    /// Per-project rate limit on `/v1` routes, when configured.
    pub rate_limit: Option<limits::RateLimiter>,
}

impl App {
    /// The project of the request's `Authorization: Bearer` key, or 401.
    pub fn authenticate(&self, request: &Request<Incoming>) -> Result<Arc<Project>, ApiError> {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        let catalog = self.engine.catalog();
        let key = catalog
            .authenticate(presented, now_ms())
            .ok_or_else(ApiError::unauthorized)?;
        catalog
            .project(&key.project)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then stops accepting and
/// waits up to `grace` for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(64 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 << 10);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(
        app.engine.config().max_connections,
    ));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(&limits::too_many_connections()),
                )
                .await;
            });
            continue;
        };
        let app = app.clone();
        let service = service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(route(app, request).await) }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// Dispatches one request; every failure becomes the JSON envelope.
async fn route(app: Arc<App>, request: Request<Incoming>) -> Response {
    let path = request.uri().path().to_string();
    let path = match path.strip_prefix("/api") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_string(),
        _ => path,
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(health(&app)),
        (&Method::GET, ["metrics"]) => Ok(metrics(&app)),
        (&Method::GET, [""] | ["index.html"]) => Ok(console_page()),
        (&Method::GET, ["socket", "websocket"]) => upgrade::upgrade(&app, request),
        (_, ["v1", rest @ ..]) => runtime::route(&app, request, rest).await,
        (_, ["console", rest @ ..]) => console::route(&app, request, rest).await,
        (_, ["admin", rest @ ..]) => admin::route(&app, request, rest).await,
        (_, ["healthz"] | ["metrics"] | ["socket", "websocket"]) => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::not_found(format!("no route for {method} {path}"))),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// The operator console: one self-contained page compiled into the binary.
const CONSOLE_PAGE: &str = include_str!("console.html");

fn console_page() -> Response {
    let mut response = hyper::Response::new(json::full(CONSOLE_PAGE));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    response
}

fn metrics(app: &App) -> Response {
    let mut response = hyper::Response::new(json::full(app.engine.render_metrics()));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// 200 while the store can take new work, 503 (with the reason) while it cannot: the disk
/// is almost full, or a write failed and the store has not reopened yet. A load balancer
/// then sends new requests elsewhere.
fn health(app: &App) -> Response {
    let store = app.engine.store().health();
    let status = if store.writable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &serde_json::json!({
            "status": if store.writable { "ok" } else { "unavailable" },
            "store": { "writable": store.writable, "reason": store.reason },
            "version": env!("CARGO_PKG_VERSION"),
            "open_sockets": app.sockets.hub.open_sockets(),
            "slow_readers": app.sockets.hub.slow_readers(),
        }),
    )
}
