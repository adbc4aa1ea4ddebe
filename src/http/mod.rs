//! The HTTP face of eddy on raw hyper: the accept loop, routing with the `/api` alias,
//! authentication, and the handlers, which translate JSON to engine calls and back. No
//! business rules live here.
//!
//! - [`listen`]: the accept loop and connection caps; [`conn`]: one connection's clocks
//!   and the checks of request heads before hyper, which [`head`] makes.
//! - [`json`]: body limits, JSON parsing with field-naming errors, responses.
//! - [`error`]: the error envelope and the mapping from [`crate::Error`].
//! - [`runtime`]: `/v1` routes. [`console`]: `/console` routes. [`views`]: JSON views.
//! - [`providers`]: the `/console/providers` routes; [`sync`]: `/v1/ai` and
//!   `/v1/chat/completions`.
//! - [`upgrade`]: the WebSocket upgrade at `/socket/websocket`.

pub mod admin;
pub mod conn;
pub mod console;
pub mod dlq;
pub mod error;
pub mod head;
pub mod json;
pub mod limits;
pub mod listen;
pub mod providers;
pub mod runtime;
pub mod sync;
pub mod upgrade;
pub mod views;

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, StatusCode};

use crate::catalog::{ApiKey, Project};
use crate::clock::now_ms;
use crate::engine::Engine;
use crate::secret::ct_eq;
use crate::ws::socket::SocketContext;
use error::ApiError;
use json::{Response, json_response};
pub use listen::serve;

/// What a listener serves: the whole API, or only `/metrics` (`--metrics-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Api,
    Metrics,
}

/// What every handler needs.
pub struct App {
    pub engine: Arc<Engine>,
    pub sockets: Arc<SocketContext>,
    /// Per-project rate limit on `/v1` and `/console` routes, when configured.
    pub rate_limit: Option<limits::RateLimiter>,
}

impl App {
    /// The project of the request's `Authorization: Bearer` key, or 401.
    pub fn authenticate(&self, request: &Request<Incoming>) -> Result<Arc<Project>, ApiError> {
        self.authenticate_key(request).map(|(_, project)| project)
    }

    /// The request's key and its project, or 401.
    pub fn authenticate_key(
        &self,
        request: &Request<Incoming>,
    ) -> Result<(Arc<ApiKey>, Arc<Project>), ApiError> {
        let presented = bearer(request).ok_or_else(ApiError::unauthorized)?;
        let catalog = self.engine.catalog();
        let key = catalog
            .authenticate(presented, now_ms())
            .ok_or_else(ApiError::unauthorized)?;
        let project = catalog
            .project(&key.project)
            .ok_or_else(ApiError::unauthorized)?;
        Ok((key, project))
    }
}

/// The request's `Authorization: Bearer` token.
pub fn bearer(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
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
        (&Method::GET, ["metrics"]) => authorize_metrics(&app, &request).map(|()| metrics(&app)),
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

/// The only route of a `--metrics-listen` listener: `/metrics` without a token (the
/// operator keeps that address private).
pub fn route_metrics(app: &App, request: &Request<Incoming>) -> Response {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => metrics(app),
        (_, "/metrics") => ApiError::method_not_allowed().into_response(),
        (_, path) => ApiError::not_found(format!(
            "no route for {path}: this listener serves /metrics only"
        ))
        .into_response(),
    }
}

/// `/metrics` on the API listener shows every project's workflow names, so it takes the
/// metrics token or the admin token; with neither configured it is not served there.
fn authorize_metrics(app: &App, request: &Request<Incoming>) -> Result<(), ApiError> {
    let config = app.engine.config();
    let tokens: Vec<&str> = [&config.metrics_token, &config.admin_token]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if tokens.is_empty() {
        return Err(ApiError::not_found(
            "no route: /metrics needs --metrics-token or --admin-token (as a bearer token), \
             or --metrics-listen for an address of its own",
        ));
    }
    let presented = bearer(request).unwrap_or_default();
    // Every token is compared, so the time taken does not tell which one matched.
    let matched = tokens.iter().fold(false, |any, token| {
        ct_eq(presented.as_bytes(), token.as_bytes()) | any
    });
    if !matched {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_metrics_token",
            "Invalid metrics token provided: /metrics takes --metrics-token or --admin-token",
        ));
    }
    Ok(())
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
