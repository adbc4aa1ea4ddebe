//! Connections that hold the server without using it: sockets that never send a byte, an
//! HTTP/2 preface and nothing after it, idle keep-alive connections over HTTP/1 and HTTP/2,
//! and one address opening connection after connection. Each is closed or refused on its
//! clock, and other clients are served.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::raw::{answers, closes_within, connect, connect_from, exchange};
use crate::support::{WAIT, eventually, ok_if, start};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// Regression: the header-read timeout used to start at the first byte, so 50 sockets that
/// never sent one kept `--max-connections 50` full for good and every new client got 503.
/// Now each is closed once the header-read timeout has passed since it was accepted (not
/// before), and a new client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_closed_and_new_clients_served() {
    let timeout = Duration::from_secs(2);
    let server = start(|c| {
        c.max_connections = 50;
        c.header_read_timeout = timeout;
    })
    .await;
    let opened = Instant::now();
    let mut silent = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut socket = connect(&server).await;
        silent.spawn(async move { closes_within(&mut socket, WAIT).await.then(Instant::now) });
    }
    eventually("a new client to be served", async || {
        let answer = exchange(&server, HEALTHZ).await;
        let head: String = answer.chars().take(200).collect();
        let served = answer.starts_with("HTTP/1.1 200");
        assert!(
            served || answer.starts_with("HTTP/1.1 503"),
            "refused with the envelope while full: {head}"
        );
        ok_if(served, head)
    })
    .await;
    while let Some(closed) = silent.join_next().await {
        let closed = closed.unwrap().expect("every silent socket is closed");
        assert!(
            closed - opened >= timeout,
            "closed before the header-read timeout: {:?}",
            closed - opened
        );
    }
}

/// Regression: an HTTP/2 client that sends only the connection preface (or the preface
/// and its settings, and then no request) was never closed. Now it is closed when no
/// header block arrived within the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_preface_without_a_request_is_closed() {
    let server = start(|c| c.header_read_timeout = Duration::from_millis(500)).await;
    let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    for extra in [&[][..], &settings[..]] {
        let mut socket = connect(&server).await;
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        socket.write_all(extra).await.unwrap();
        assert!(
            closes_within(&mut socket, WAIT).await,
            "a preface alone held the connection (then {} bytes)",
            extra.len()
        );
    }
}

/// Regression: an HTTP/1.1 keep-alive connection that made a request and then went quiet
/// stayed open for as long as the header-read timeout, and an idle HTTP/2 connection for
/// ever. Both are closed once idle for `--keep-alive-timeout`, here shorter than the
/// header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_keep_alive_timeout() {
    let idle = Duration::from_millis(800);
    let server = start(|c| {
        c.header_read_timeout = Duration::from_secs(60);
        c.keep_alive_timeout = idle;
    })
    .await;

    // The server's idle clock starts once it has answered, so no earlier than the request
    // was sent: the close must come `idle` after that at the soonest. (Timed from the
    // answer's arrival, a loaded machine made the close look early.)
    let mut socket = connect(&server).await;
    let sent = Instant::now();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closes_within(&mut socket, WAIT).await,
        "HTTP/1.1 stayed open"
    );
    assert!(sent.elapsed() >= idle, "{:?}", sent.elapsed());

    let stream = connect(&server).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(format!("{}/healthz", server.base))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let sent = Instant::now();
    let response = sender.send_request(request).await.expect("HTTP/2 answer");
    assert_eq!(response.status(), 200);
    drop(response);
    let closed = tokio::time::timeout(WAIT, connection).await;
    assert!(closed.is_ok(), "HTTP/2 stayed open");
    assert!(sent.elapsed() >= idle, "{:?}", sent.elapsed());
}

/// One address may hold `--max-connections-per-ip` connections: the next is answered 429
/// with the envelope, while another address is served; closing one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection() {
    let server = start(|c| c.max_connections_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&server).await);
    }
    let answer = exchange(&server, HEALTHZ).await;
    let refused = &answers(&answer)[0];
    assert_eq!(refused.status, 429, "{answer}");
    assert_eq!(refused.json["error"]["code"], "rate_limited");
    assert!(refused.head.contains("retry-after: 1"), "{}", refused.head);

    let mut other = connect_from(&server, "127.0.0.2").await;
    other.write_all(HEALTHZ).await.unwrap();
    let answer = crate::support::raw::read_to_close(&mut other, WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    drop(held.pop());
    eventually("the closed connection to be released", async || {
        let answer = exchange(&server, HEALTHZ).await;
        ok_if(answer.starts_with("HTTP/1.1 200"), answer)
    })
    .await;
}
