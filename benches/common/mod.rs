//! What the benchmarks share: reading a process's RSS, CPU time and a store's size on
//! disk, scraping `/metrics`, a webhook receiver on loopback, the release server as a
//! child process, and reading a raw HTTP/1.1 response (for lean load generators); and
//! `nats-server`s for cluster modes ([`nats`]). Each bench uses some of it.
#![allow(dead_code)]

pub mod nats;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;

/// Resident memory of process `pid` (`self` for this one), in KiB.
pub fn rss_kib(pid: impl std::fmt::Display) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Resident memory of process `pid` (`self` for this one), in MiB.
pub fn rss_mib(pid: impl std::fmt::Display) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

/// Bytes of every file below `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The `--metrics-token` of the benchmarks' servers.
pub const METRICS_TOKEN: &str = "bench-metrics-token-0123456789";

/// The server's `/metrics` text (the server runs with [`METRICS_TOKEN`]).
pub async fn metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A webhook receiver on `127.0.0.1` answering every request with `handle(request)`;
/// returns its URL.
pub async fn receiver<F, Fut>(handle: F) -> String
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = handle(request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

/// CPU seconds (user + system, all threads) used so far by process `pid`, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the parenthesised name: utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, s)| s);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ on Linux
}

/// The 1-minute load average of the machine.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The release eddy binary (`cargo bench` builds it; `EDDY_BIN` names another, e.g. an
/// older build for a before/after figure) serving on `127.0.0.1:0` in its own process, so
/// its CPU and memory are measured alone; its warnings and errors go to the bench's stderr.
/// Killed on drop.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Server {
    /// Starts `eddy serve` over the store `data` with the bootstrap key `key`, private
    /// webhook addresses allowed (the receivers are on loopback), and `extra` flags.
    pub fn start(data: &Path, key: &str, extra: &[String]) -> Server {
        let binary = std::env::var_os("EDDY_BIN").unwrap_or(env!("CARGO_BIN_EXE_eddy").into());
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(["--api-key", key, "--allow-private-webhooks"])
            .args(extra)
            .env("RUST_LOG", "eddy=warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("eddy starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("eddy did not start (its error is above): {line:?}"))
            .to_string();
        Server { child, base }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server as a service manager would (SIGTERM) and asserts it exited cleanly.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("eddy exits");
        assert!(status.success(), "eddy exited with {status}");
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.base["http://".len()..].parse().expect("host:port")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream` (using `buf`);
/// returns its status.
pub async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> u16 {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .unwrap()
                .to_ascii_lowercase();
            let status = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "server closed the connection");
                buf.extend_from_slice(&chunk[..n]);
            }
            return status;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}
