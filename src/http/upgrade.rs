//! The WebSocket upgrade at `/socket/websocket?token=…&vsn=2.0.0`: checks the token (403
//! if bad or expired) and the serializer version, answers 101, and hands the upgraded
//! connection to a socket task. Upgraded sockets leave hyper's graceful shutdown, so they
//! watch the server's own shutdown token (close code 1001).
//!
//! The token comes from the `token` query parameter (what ModelRiver's SDK sends) or, as
//! the phoenix client sends it with its `authToken` option, from the subprotocols
//! `phoenix, base64url.bearer.phx.<base64 of the token>`; the 101 then selects `phoenix`,
//! without which a browser fails the handshake.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::app::App;
use super::error::{Answer, ApiError};
use super::input::Query;
use super::response::full;
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

/// The subprotocol prefix of a phoenix `authToken`.
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// The subprotocols the client offers, in order.
fn subprotocols(request: &Request<Incoming>) -> Vec<String> {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The token of a `base64url.bearer.phx.` subprotocol (the phoenix client encodes it with
/// `btoa`, so standard base64 without padding; URL-safe is accepted too).
fn subprotocol_token(protocols: &[String]) -> Option<String> {
    let encoded = protocols
        .iter()
        .find_map(|p| p.strip_prefix(AUTH_TOKEN_PREFIX))?;
    let encoded = encoded.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(encoded)
        .or_else(|_| URL_SAFE_NO_PAD.decode(encoded))
        .ok()?;
    String::from_utf8(bytes).ok()
}

pub fn upgrade(app: &App, mut request: Request<Incoming>) -> Answer {
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
    let query = Query::of(&request);
    // Phoenix answers 403 to a serializer version it does not speak; eddy speaks 2.x only
    // and takes a missing vsn as 2.0.0 (Phoenix would pick 1.0.0, which eddy lacks).
    if let Some(vsn) = query.get("vsn")
        && !vsn.starts_with("2.")
    {
        return Err(ApiError::forbidden(format!(
            "vsn: {vsn} is not supported, eddy speaks the Phoenix serializer 2.0.0"
        )));
    }
    let protocols = subprotocols(&request);
    let token = query
        .get("token")
        .map(str::to_string)
        .or_else(|| subprotocol_token(&protocols))
        .ok_or_else(|| ApiError::forbidden("token: is required"))?;
    let claims = app
        .engine
        .tokens()
        .verify(&token, now_ms() / 1000)
        .map_err(|e| ApiError::forbidden(e.to_string()))?;

    if app.sockets.hub.open_sockets() >= app.engine.config().max_sockets {
        return Err(ApiError::unavailable(
            "too many open sockets; retry shortly",
        ));
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
    if protocols.iter().any(|p| p == "phoenix") {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("phoenix"));
    }
    Ok(response)
}
