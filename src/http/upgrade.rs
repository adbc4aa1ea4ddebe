//! The WebSocket upgrade at `/socket/websocket?token=…&vsn=2.0.0`: checks the token (403
//! if bad or expired), answers 101, and hands the upgraded connection to a socket task.
//! Upgraded sockets leave hyper's graceful shutdown, so they watch the server's own
//! shutdown token (close code 1001).

use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::App;
use super::error::ApiError;
use super::json::{Response, full, query};
use crate::clock::now_ms;
use crate::ws::socket;

fn header_has(request: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

pub fn upgrade(app: &App, mut request: Request<Incoming>) -> Result<Response, ApiError> {
    if !header_has(&request, UPGRADE, "websocket") || !header_has(&request, CONNECTION, "upgrade") {
        return Err(ApiError::invalid(
            "this route speaks WebSocket: send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if request
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(ApiError::invalid("Sec-WebSocket-Version: must be 13"));
    }
    let key = request
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::invalid("Sec-WebSocket-Key: is required"))?;
    let accept = derive_accept_key(key.as_bytes());
    let token = query(&request)
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .ok_or_else(|| ApiError::forbidden("token: is required"))?;
    let claims = app
        .engine
        .tokens()
        .verify(&token, now_ms() / 1000)
        .map_err(|e| ApiError::forbidden(e.to_string()))?;

    if app.sockets.hub.open_sockets() >= app.engine.config().max_sockets {
        let mut refused = ApiError::new(
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "unavailable",
            "too many open sockets; retry shortly",
        );
        refused.retry_after = Some(1);
        return Err(refused);
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let ctx = app.sockets.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(socket::config()))
                    .await;
                socket::serve(ws, ctx, claims).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut response = hyper::Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("accept keys are base64"),
    );
    Ok(response)
}
