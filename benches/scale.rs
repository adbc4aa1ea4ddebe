//! Scale benches against the release binary as a child process (so its RSS and its
//! restart are measured alone):
//!
//! - `cargo bench --bench scale -- restart [N]`: accept N requests (default 100,000) whose
//!   webhooks fail and wait to be retried, `kill -9` the server, start it again on the same
//!   store, and time how long until it listens and until it accepts a request again.
//! - `cargo bench --bench scale -- timers [N]`: accept N requests (default 1,000,000)
//!   whose webhooks were delivered and whose callbacks are awaited for an hour (each holds
//!   a timer), then report the server's RSS.
//!
//! - `cargo bench --bench scale -- latency R`: offer R accepts a second, open loop (each
//!   request is due on schedule and timed from then), for 10 s, to a test-mode workflow
//!   over 64 raw keep-alive connections, and report the accept latency percentiles beside
//!   those of `/healthz` under the same generator (the floor the client and kernel set).
//!
//! - `cargo bench --bench scale -- memory [N]`: accept N requests of 1 MB (default 500)
//!   that complete at once, and report RSS idle, right after and 10 s / 30 s after the
//!   burst, disk bytes per accepted byte, and the peak RSS of four concurrent
//!   `GET /console/requests?limit=1000`.
//!
//! All of them build the release binary first; `EDDY_BIN` runs another binary instead
//! (an older build, for a before/after figure).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;

const KEY: &str = "mr_live_scalebench0123456789abcdefghijklmnopqrst";

struct Server {
    child: Child,
    base: String,
}

fn start(data: &Path, extra: &[&str]) -> (Server, Duration) {
    let started = Instant::now();
    let binary = std::env::var_os("EDDY_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/eddy"),
        Into::into,
    );
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(["--api-key", KEY, "--allow-private-webhooks"])
        .args(["--metrics-token", common::METRICS_TOKEN])
        .args(extra)
        .env("RUST_LOG", "eddy=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("build the release binary first: cargo build --release");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    (Server { child, base }, started.elapsed())
}

/// A receiver that answers every webhook with `status` and never calls back.
async fn receiver(status: u16) -> String {
    common::receiver(move |_request| async move {
        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r
    })
    .await
}

async fn setup(http: &reqwest::Client, base: &str, hook: &str) {
    for (path, body) in [
        (
            "/console/workflow",
            json!({"name": "w", "event_name": "done", "provider": "testing", "model": "m", "mode": "testing"}),
        ),
        ("/console/webhooks", json!({"url": hook})),
    ] {
        http.post(format!("{base}{path}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
    }
}

/// Accepts `n` requests, 64 at a time; returns how long it took.
async fn fill(http: &reqwest::Client, base: &str, n: u64) -> Duration {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (http, base, next) = (http.clone(), base.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = http
                    .post(format!("{base}/v1/ai/async"))
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(r#"{"workflow":"w","messages":[{"role":"user","content":"hello"}],"metadata":{"n":1}}"#)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

async fn gauge(http: &reqwest::Client, base: &str, state: &str) -> f64 {
    let text = common::metrics(http, base).await;
    let needle = format!("eddy_requests{{state=\"{state}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn restart(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let hook = receiver(503).await;
    let schedule = ["--webhook-retry-schedule", "0s,10m,1h"];
    let (mut server, _) = start(dir.path(), &schedule);
    setup(&http, &server.base, &hook).await;
    let took = fill(&http, &server.base, n).await;
    // Let the first attempts run, so the requests are waiting on retries.
    while gauge(&http, &server.base, "generated").await < n as f64 * 0.99 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let size: u64 = common::disk_bytes(dir.path());
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (server, listening) = start(dir.path(), &schedule);
    let started = Instant::now() - listening;
    loop {
        let r = http
            .post(format!("{}/v1/ai/async", server.base))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(r#"{"workflow":"w","messages":[{"role":"user","content":"hello"}]}"#)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let serving = started.elapsed();
    let in_flight = gauge(&http, &server.base, "generated").await;
    println!(
        "restart: {n} accepted in {:.1}s, store {} MiB, {in_flight} in flight after kill -9; listening after {} ms, first accept after {} ms",
        took.as_secs_f64(),
        size >> 20,
        listening.as_millis(),
        serving.as_millis()
    );
    drop(server);
}

async fn timers(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let hook = receiver(200).await;
    let extra: Vec<String> = std::env::var("EDDY_BENCH_ARGS")
        .map(|a| a.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut args = vec!["--callback-timeout", "1h"];
    args.extend(extra.iter().map(String::as_str));
    let (server, _) = start(dir.path(), &args);
    setup(&http, &server.base, &hook).await;
    let base_rss = common::rss_mib(server.child.id());
    let took = fill(&http, &server.base, n).await;
    while gauge(&http, &server.base, "delivered").await < n as f64 * 0.999 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Give the scheduler a refill round to settle what it holds in memory.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let delivered = gauge(&http, &server.base, "delivered").await;
    println!(
        "timers: {delivered} requests waiting on callback timers (accepted in {:.0}s), server RSS {:.0} MiB (idle start {:.0} MiB), store {} MiB",
        took.as_secs_f64(),
        common::rss_mib(server.child.id()),
        base_rss,
        common::disk_bytes(dir.path()) >> 20
    );
}

async fn latency(rate: u64) {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (server, _) = start(dir.path(), &[]);
    http.post(format!("{}/console/workflow", server.base))
        .bearer_auth(KEY)
        .json(&json!({"name": "w", "provider": "testing", "model": "m", "mode": "testing"}))
        .send()
        .await
        .unwrap();
    let addr: std::net::SocketAddr = server
        .base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let body = r#"{"workflow":"w","messages":[{"role":"user","content":"hello"}]}"#;
    let accept = format!(
        "POST /v1/ai/async HTTP/1.1\r\nhost: eddy\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let healthz = "GET /healthz HTTP/1.1\r\nhost: eddy\r\n\r\n".to_string();
    let secs = 10;
    // Warm up, then the floor: the same generator against /healthz.
    open_loop(addr, &accept, rate, 2).await;
    let floor = open_loop(addr, &healthz, rate, secs).await;
    let accepts = open_loop(addr, &accept, rate, secs).await;
    println!(
        "latency: {rate}/s offered for {secs}s, open loop over 64 connections; \
         /v1/ai/async {}; /healthz {}",
        summary(&accepts),
        summary(&floor)
    );
}

fn summary(samples: &[Duration]) -> String {
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    format!(
        "{} answered, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// Offers `rate` requests a second for `secs` over 64 keep-alive HTTP/1.1 connections,
/// each request written as `request` (raw bytes, lean enough that the generator costs
/// little of the two cores). Request `i` is due at `start + i / rate`; its latency counts
/// from when the schedule released it (within the timer's 1 ms of its due time), not from
/// when a connection was free to send it: a stalled server cannot hide behind a stalled
/// client (no coordinated omission). Returns the sorted
/// latencies of the requests answered 2xx.
async fn open_loop(
    addr: std::net::SocketAddr,
    request: &str,
    rate: u64,
    secs: u64,
) -> Vec<Duration> {
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let due_rx = Arc::new(tokio::sync::Mutex::new(due_rx));
    let request: Arc<[u8]> = request.as_bytes().into();
    let mut conns = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (due_rx, request) = (due_rx.clone(), request.clone());
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        conns.spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut samples = Vec::new();
            let mut buf = Vec::with_capacity(4096);
            loop {
                let Some(due) = due_rx.lock().await.recv().await else {
                    return samples;
                };
                stream.write_all(&request).await.unwrap();
                let status = common::read_response(&mut stream, &mut buf).await;
                if (200..300).contains(&status) {
                    samples.push(due.elapsed());
                }
            }
        });
    }
    let started = Instant::now();
    let total = rate * secs;
    let mut i = 0;
    while i < total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        // The timer wakes up to 1 ms late; send everything due by now, timed from now.
        let now = Instant::now();
        while i < total && started + Duration::from_secs_f64(i as f64 / rate as f64) <= now {
            due_tx.send(now).unwrap();
            i += 1;
        }
    }
    drop(due_tx);
    let mut samples = Vec::new();
    while let Some(done) = conns.join_next().await {
        samples.extend(done.unwrap());
    }
    samples.sort();
    samples
}

/// `VmHWM` (peak RSS) of `pid` in MiB, after the peak was reset with `clear_refs`.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib as f64 / 1024.0
}

async fn memory(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (server, _) = start(dir.path(), &[]);
    let (base, pid) = (server.base.clone(), server.child.id());
    http.post(format!("{base}/console/workflow"))
        .bearer_auth(KEY)
        .json(&json!({"name": "w", "provider": "testing", "model": "m", "mode": "testing"}))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = common::rss_mib(pid);
    let body =
        json!({"workflow": "w", "messages": [{"role": "user", "content": "x".repeat(1_000_000)}]})
            .to_string();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, base, next, body) = (http.clone(), base.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = http
                    .post(format!("{base}/v1/ai/async"))
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    while gauge(&http, &base, "completed").await < n as f64 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let burst = common::rss_mib(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after_10 = common::rss_mib(pid);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after_30 = common::rss_mib(pid);
    let accepted = n * body.len() as u64;
    let disk = common::disk_bytes(dir.path());
    println!(
        "memory: {n} requests of {} bytes accepted in {took:.1?}; RSS idle {idle:.0} MiB, \
         after the burst {burst:.0} MiB, 10 s later {after_10:.0} MiB, 30 s later \
         {after_30:.0} MiB; disk {} MiB = {:.2} bytes per accepted byte",
        body.len(),
        disk >> 20,
        disk as f64 / accepted as f64
    );
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = common::rss_mib(pid);
    let started = Instant::now();
    let lists: Vec<_> = (0..4)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                http.get(format!("{base}/console/requests?limit=1000"))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .len()
            })
        })
        .collect();
    for list in lists {
        list.await.unwrap();
    }
    println!(
        "lists: 4 concurrent GET /console/requests?limit=1000 over {n} requests took \
         {:.1?}; RSS {before:.0} MiB before, peak {:.0} MiB",
        started.elapsed(),
        peak_mib(pid)
    );
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = args.first().map(String::as_str).unwrap_or("restart");
    let n = args.get(1).and_then(|v| v.parse().ok());
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    eddy::egress::install_crypto();
    let rt = tokio::runtime::Runtime::new().unwrap();
    match mode {
        "restart" => rt.block_on(restart(n.unwrap_or(100_000))),
        "timers" => rt.block_on(timers(n.unwrap_or(1_000_000))),
        "latency" => rt.block_on(latency(n.unwrap_or(4000))),
        "memory" => rt.block_on(memory(n.unwrap_or(500))),
        other => panic!("unknown mode {other}: restart, timers, latency or memory"),
    }
}
