//! Where a request goes: the `/api` alias, then `/v1`, `/console`, `/admin`, the WebSocket
//! upgrade, `/healthz`, `/metrics` and the console page. Every failure becomes the
//! envelope here.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::app::{App, presents_one_of};
use super::error::ApiError;
use super::response::{Response, json_response, typed};
use super::{admin, console, upgrade, v1};

/// What a listener serves: the whole API, or only `/metrics` (`--metrics-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Api,
    Metrics,
}

/// Dispatches one request; every failure becomes the JSON envelope.
pub async fn route(app: &App, request: Request<Incoming>) -> Response {
    let path = request.uri().path().to_string();
    let path = match path.strip_prefix("/api") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_string(),
        _ => path,
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    let answer = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(health(app)),
        (&Method::GET, ["metrics"]) => authorize_metrics(app, &request).map(|()| metrics(app)),
        (&Method::GET, [""] | ["index.html"]) => Ok(console_page()),
        (&Method::GET, ["socket", "websocket"]) => upgrade::upgrade(app, request),
        (_, ["v1", rest @ ..]) => v1::route(app, request, rest).await,
        (_, ["console", rest @ ..]) => console::route(app, request, rest).await,
        (_, ["admin", rest @ ..]) => admin::route(app, request, rest).await,
        (_, ["healthz"] | ["metrics"] | ["socket", "websocket"]) => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::no_route(&method, &path)),
    };
    answer.unwrap_or_else(ApiError::into_response)
}

/// The operator console: one self-contained page compiled into the binary.
const CONSOLE_PAGE: &str = include_str!("console.html");

fn console_page() -> Response {
    let mut response = typed(StatusCode::OK, "text/html; charset=utf-8", CONSOLE_PAGE);
    response.headers_mut().insert(
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
    let answer = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => Ok(metrics(app)),
        (_, "/metrics") => Err(ApiError::method_not_allowed()),
        (method, path) => Err(ApiError::not_found(format!(
            "no route for {method} {path}: this listener serves /metrics only"
        ))),
    };
    answer.unwrap_or_else(ApiError::into_response)
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
    if !presents_one_of(request, &tokens) {
        return Err(ApiError::invalid_metrics_token());
    }
    Ok(())
}

fn metrics(app: &App) -> Response {
    let mut text = app.engine.render_metrics();
    if let Some(cluster) = app.engine.store().cluster() {
        use std::fmt::Write;
        let _ = write!(
            text,
            "# HELP eddy_cluster_connected Whether this node is connected to a NATS server.\n\
             # TYPE eddy_cluster_connected gauge\neddy_cluster_connected {}\n\
             # HELP eddy_cluster_disconnects_total Times this node lost its NATS connection.\n\
             # TYPE eddy_cluster_disconnects_total counter\neddy_cluster_disconnects_total {}\n",
            u8::from(cluster.link.connected()),
            cluster.link.disconnects(),
        );
    }
    typed(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    )
}

/// 200 while the store can take new work, 503 (with the reason) while it cannot: the disk
/// is almost full, or a write failed and the store has not reopened yet. A load balancer
/// then sends new requests elsewhere. A cluster node also reports its NATS link (`null`
/// on a sled node): while it has none, the store cannot write.
fn health(app: &App) -> Response {
    let store = app.engine.store().health();
    let nats = app.engine.store().cluster().map(|c| {
        let server = c.link.server();
        serde_json::json!({
            "connected": c.link.connected(),
            "server": format!("{}:{}", server.host, server.port),
            "server_name": server.server_name,
            "server_version": server.version,
            "disconnects": c.link.disconnects(),
            "prefix": c.settings().prefix,
            "replicas": c.settings().replicas,
            "cas": format!("{:?}", c.cas_mode()).to_lowercase(),
        })
    });
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
            "cluster": nats,
        }),
    )
}
