//! Raw TCP against a server: bytes exactly as written (malformed HTTP, silent sockets,
//! half a handshake), and what comes back until the server closes.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{Api, WAIT};

/// The server's `IP:PORT`.
pub fn addr(api: &Api) -> SocketAddr {
    api.base
        .trim_start_matches("http://")
        .parse()
        .expect("base is http://IP:PORT")
}

/// A new connection to the server.
pub async fn connect(api: &Api) -> TcpStream {
    TcpStream::connect(addr(api)).await.expect("connects")
}

/// A new connection to the server from another loopback address (`127.0.0.2`, say).
pub async fn connect_from(api: &Api, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source address"))
        .expect("bind the source address");
    socket.connect(addr(api)).await.expect("connects")
}

/// Sends `bytes` on a new connection and reads until the server closes it (or the wait
/// ends).
pub async fn exchange(api: &Api, bytes: &[u8]) -> String {
    let mut stream = connect(api).await;
    let _ = stream.write_all(bytes).await;
    read_to_close(&mut stream, WAIT).await
}

/// Everything the server sends until it closes the connection, or until `wait` ends.
pub async fn read_to_close(stream: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server closes `stream` (end of stream or reset) within `wait`; whatever
/// it sends first is read and dropped.
pub async fn closes_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, read_all).await.is_ok()
}

/// One HTTP/1.1 answer read from raw text: status, the head, and the body parsed as JSON
/// (`Null` if it is not JSON).
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub json: Value,
}

/// Splits `text` into the answers it holds, in order (each framed by its
/// `content-length`).
pub fn answers(text: &str) -> Vec<RawAnswer> {
    let mut rest = text;
    let mut out = Vec::new();
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:.80}"));
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0)
            .min(after.len());
        let (body, next) = after.split_at(length);
        out.push(RawAnswer {
            status,
            head: head.to_string(),
            json: serde_json::from_str(body).unwrap_or(Value::Null),
        });
        rest = next;
    }
    out
}
