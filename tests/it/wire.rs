//! Malformed HTTP on a raw socket: each is answered with the JSON envelope and the right
//! status (not hyper's bare 400 or 431), in order after the requests before it on the same
//! connection, and the server goes on serving.

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::support::raw::{answers, connect, exchange, read_to_close};
use crate::support::{WAIT, start};

/// A TLS 1.2 ClientHello record's first bytes, as a client sends them to an `https://`
/// URL that points at the plain port.
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x31, 0x01, 0x00, 0x00, 0x2d, 0x03, 0x03, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x00, 0x00, 0x02, 0xc0, 0x2f,
    0x01, 0x00, 0x00, 0x00,
];

/// Regression: each of these got hyper's own 400 or 431 with an empty body. Now every one
/// is the envelope with the status hyper chose (414 for the long URL), a message that
/// says what is wrong, and `connection: close`; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_the_envelope() {
    let server = start(|_| {}).await;
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Del: a\x7fb\r\n\r\n".to_vec(),
            400,
            "invalid_request",
            "header value",
        ),
        (
            b"POST /v1/ai/async HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n".to_vec(),
            400,
            "invalid_request",
            "content-length",
        ),
        (
            b"POST /v1/ai/async HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"
                .to_vec(),
            400,
            "invalid_request",
            "different values",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n".to_vec(),
            400,
            "invalid_request",
            "header name",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
            431,
            "headers_too_large",
            "100 header fields",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100 << 10)).into_bytes(),
            414,
            "uri_too_long",
            "request target",
        ),
        (CLIENT_HELLO.to_vec(), 400, "invalid_request", "not TLS"),
    ];
    for (bytes, status, code, needle) in cases {
        let text = exchange(&server, &bytes).await;
        let got = answers(&text);
        assert_eq!(got.len(), 1, "one answer, then close: {text:.300}");
        let answer = &got[0];
        assert_eq!(answer.status, status, "{text:.300}");
        assert_eq!(answer.json["error"]["code"], code, "{text:.300}");
        let message = answer.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle:?} in {message:?}");
        assert!(
            answer
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{}",
            answer.head
        );
    }
    let (_, list) = server.get("/console/requests").await;
    assert_eq!(list["data"], json!([]), "nothing stored");
    assert_eq!(server.get("/healthz").await.0, 200);
}

/// A malformed head after good requests on one keep-alive connection (pipelined, or sent
/// after the first answer) is answered after their answers, in order, and the connection
/// then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_after_good_ones_is_answered_in_order() {
    let server = start(|_| {}).await;
    let good = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let bad = "GET /healthz HTTP/1.1\r\nHost: x\r\nbroken header\r\n\r\n";

    let pipelined = format!("{good}{good}{bad}{good}");
    let text = exchange(&server, pipelined.as_bytes()).await;
    let statuses: Vec<u16> = answers(&text).iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 400], "{text}");
    assert_eq!(answers(&text)[2].json["error"]["code"], "invalid_request");

    let mut socket = connect(&server).await;
    socket.write_all(good.as_bytes()).await.unwrap();
    let mut first = [0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut socket, &mut first)
        .await
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    socket.write_all(bad.as_bytes()).await.unwrap();
    let rest = read_to_close(&mut socket, WAIT).await;
    let text = format!("{}{rest}", String::from_utf8_lossy(&first[..n]));
    let got = answers(&text);
    assert_eq!(got.last().map(|a| a.status), Some(400), "{text}");
}

/// Bodies are followed to their end, chunked or by length, so the head after them is
/// checked where it starts (and a body that merely looks like a bad head is not refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_after_bodies_are_found() {
    let server = start(|_| {}).await;
    let odd = "not: a\r\nhead\x7f\r\n\r\n";
    let sized = format!(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{odd}",
        odd.len()
    );
    let chunked = format!(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{odd}\r\n0\r\n\r\n",
        odd.len()
    );
    let last = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let text = exchange(&server, format!("{sized}{chunked}{last}").as_bytes()).await;
    let statuses: Vec<u16> = answers(&text).iter().map(|a| a.status).collect();
    assert_eq!(statuses, [405, 405, 200], "{text}");
}
