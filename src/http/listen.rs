//! The accept loop: the connection caps (all connections, and per client address), each
//! connection behind a [`Conn`] (deadlines from acceptance, request heads checked before
//! hyper), served by hyper (HTTP/1 with upgrades, and HTTP/2), and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::app::App;
use super::conn::{Conn, Shared, Timeouts, Tracked};
use super::error::ApiError;
use super::limits;
use super::response::Response;
use super::route::{self, Face};

/// Serves connections from `listener` as `face` until `shutdown` resolves, then stops
/// accepting and waits up to `grace` for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    face: Face,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let config = app.engine.config();
    let timeouts = Timeouts {
        head: config.header_read_timeout,
        idle: config.keep_alive_timeout,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads are timed by `Conn`, from acceptance; hyper's own clock starts later.
        .header_read_timeout(None)
        .max_buf_size(64 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 << 10);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let per_address = limits::PerAddress::new(config.max_connections_per_ip);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
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
            tokio::spawn(limits::refuse(stream, limits::too_many_connections()));
            continue;
        };
        let Some(slot) = per_address.admit(peer.ip()) else {
            let error = limits::too_many_from_address(config.max_connections_per_ip);
            tokio::spawn(limits::refuse(stream, error));
            continue;
        };
        let shared = Shared::new();
        let io = TokioIo::new(Conn::new(stream, shared.clone(), timeouts));
        let app = app.clone();
        let service = service_fn(move |request| {
            let (app, shared) = (app.clone(), shared.clone());
            async move {
                let (number, in_flight) = shared.begin();
                let response = match shared.refusal(number) {
                    Some(error) => refused(error),
                    None => dispatch(app, face, request).await,
                };
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    shared.upgraded();
                }
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        });
        let connection = builder.serve_connection_with_upgrades(io, service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
            drop((permit, slot));
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

async fn dispatch(app: Arc<App>, face: Face, request: Request<hyper::body::Incoming>) -> Response {
    match face {
        Face::Api => route::route(&app, request).await,
        Face::Metrics => route::route_metrics(&app, &request),
    }
}

/// The answer to a refused head's stand-in request; the connection closes after it.
fn refused(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
