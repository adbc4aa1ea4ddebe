//! The delivery bench: signed webhooks to one endpoint, the work Svix was measured doing
//! beside eddy (issue 14), and what each delivery costs eddy's process in CPU.
//!
//! The release binary runs as a child process with a standard test-mode workflow and one
//! registered endpoint (default options unless flags are given). In this process: a
//! webhook receiver on loopback that answers 204 at once (or after `--delay-ms`), and a
//! lean closed-loop generator (like wrk: raw keep-alive HTTP/1.1 connections, each sending
//! its next `POST /v1/ai/async` when the last one is answered). Two modes:
//!
//! - `cargo bench --bench delivery -- [--conns 64] [--secs 10] [--rate R] [--delay-ms D]`:
//!   load for `secs` (optionally paced to `R` accepts a second), then drain until every
//!   accepted request's webhook has reached the receiver. CPU counts the whole run, accepts
//!   included, as the Svix comparison did.
//! - `cargo bench --bench delivery -- --backlog N [--conns 64] [--delay-ms D]`: the receiver
//!   holds every webhook (answers none) until N requests are accepted, so a backlog of N
//!   forms (plus the attempts in flight, which wait); then it answers, and CPU per delivery
//!   is counted while the backlog drains (no accepts meanwhile) and over the whole run.
//!   Compare with a paced run that never builds a backlog (`--rate 1000 --secs 20`).
//!
//! Flags after a bare `--` go to `eddy serve` (e.g. `-- --endpoint-concurrency 256`);
//! `EDDY_BIN=<path>` runs another build of eddy (before/after figures).
//! `--profile "perf record -e cpu-clock -g -p {pid} -o drain.data"` runs a command over the
//! measured phase (the load and drain, or the drain of a backlog), `{pid}` being the
//! server's; it is stopped with SIGINT.
//!
//! Prints one line. CPU is the server process's utime + stime from `/proc/<pid>/stat` (10
//! ms ticks). The backlog is accepted − delivered, sampled every 50 ms from the generator's
//! and the receiver's counts (no `/metrics` scrape, which would cost the server CPU).
//! Repeated webhook-ids must be 0 with a healthy receiver. The load average is printed
//! beside the figures: the generator, the receiver and the server share the machine's cores.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::sync::watch;

mod common;

const KEY: &str = "mr_live_deliverybench0123456789abcdefghijklmnop";
/// The request; its metadata (echoed as `customer_data`) brings the webhook body to ~1 KiB,
/// the payload size of the Svix comparison.
const BODY: &str = concat!(
    r#"{"workflow":"bench","messages":[{"role":"user","content":"Generate a product description for wireless headphones"}],"#,
    r#""metadata":{"product_id":"prod_123","category":"electronics","note":"#,
    r#""Over-ear wireless headphones with active noise cancellation, a forty-hour battery, "#,
    r#"multipoint Bluetooth pairing, a foldable frame and a carrying case. Written for a product page "#,
    r#"that lists features first, then the specification table, then the warranty terms, "#,
    r#"in a friendly tone that avoids superlatives and keeps each sentence short.","#,
    r#""locale":"en-GB","campaign":"spring-audio"}}"#
);
/// Longest wait for a drain before the bench gives up and reports what it has.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Options {
    conns: usize,
    secs: u64,
    /// Accepts offered per second; `None` for as fast as answers come back.
    rate: Option<u64>,
    delay_ms: u64,
    /// Build a backlog of this many requests first.
    backlog: Option<u64>,
    profile: Option<String>,
    server_flags: Vec<String>,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Options {
        let mut o = Options {
            conns: 64,
            secs: 10,
            rate: None,
            delay_ms: 0,
            backlog: None,
            profile: None,
            server_flags: Vec::new(),
        };
        let mut args = args.filter(|a| a != "--bench");
        while let Some(flag) = args.next() {
            if flag == "--" {
                o.server_flags = args.by_ref().collect();
                break;
            }
            let value = args
                .next()
                .unwrap_or_else(|| panic!("{flag} needs a value"));
            let number = || -> u64 {
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("{flag}: not a number: {value}"))
            };
            match flag.as_str() {
                "--conns" => o.conns = number() as usize,
                "--secs" => o.secs = number(),
                "--rate" => o.rate = Some(number()).filter(|r| *r > 0),
                "--delay-ms" => o.delay_ms = number(),
                "--backlog" => o.backlog = Some(number()),
                "--profile" => o.profile = Some(value),
                other => panic!(
                    "unknown flag {other}: --conns, --secs, --rate, --delay-ms, --backlog, \
                     --profile, then -- and server flags"
                ),
            }
        }
        o
    }
}

/// What the receiver has seen.
#[derive(Default)]
struct Seen {
    ids: Mutex<HashSet<String>>,
    /// Distinct webhook-ids answered 204.
    delivered: AtomicU64,
    /// Arrivals of a webhook-id seen before.
    repeats: AtomicU64,
    body_bytes: AtomicU64,
}

/// The endpoint: counts each webhook-id once, answers 204 after `delay` and only while
/// `open` is true (a held request waits, as on a stalled backend).
async fn receiver(seen: Arc<Seen>, open: watch::Receiver<bool>, delay: Duration) -> String {
    common::receiver(move |request: hyper::Request<hyper::body::Incoming>| {
        let (seen, mut open) = (seen.clone(), open.clone());
        async move {
            let id = request
                .headers()
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            seen.body_bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            let first = seen.ids.lock().unwrap().insert(id);
            if !first {
                seen.repeats.fetch_add(1, Ordering::Relaxed);
            }
            let _ = open.wait_for(|open| *open).await;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if first {
                seen.delivered.fetch_add(1, Ordering::Relaxed);
            }
            let mut answer = hyper::Response::new(Full::new(Bytes::new()));
            *answer.status_mut() = hyper::StatusCode::NO_CONTENT;
            answer
        }
    })
    .await
}

/// The generator's counts.
#[derive(Default)]
struct Load {
    /// Requests handed out (the pacing schedule and the backlog mode's limit count these).
    issued: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    stop: AtomicBool,
}

/// Closed-loop load on `POST /v1/ai/async` over `conns` keep-alive connections until
/// `load.stop` is set or `limit` requests were issued; with `rate`, request `i` is not sent
/// before `started + i / rate`.
async fn generate(
    addr: std::net::SocketAddr,
    load: Arc<Load>,
    conns: usize,
    rate: Option<u64>,
    limit: u64,
) {
    let request: Arc<[u8]> = format!(
        "POST /v1/ai/async HTTP/1.1\r\nhost: eddy\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
    .into();
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (load, request) = (load.clone(), request.clone());
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        tasks.spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut buf = Vec::with_capacity(4096);
            while !load.stop.load(Ordering::Relaxed) {
                let i = load.issued.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                }
                stream.write_all(&request).await.unwrap();
                match common::read_response(&mut stream, &mut buf).await {
                    200 => load.accepted.fetch_add(1, Ordering::Relaxed),
                    _ => load.refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Samples accepted − delivered every 50 ms; returns the peak seen when `done` is set.
async fn backlog_peak(load: Arc<Load>, seen: Arc<Seen>, done: Arc<AtomicBool>) -> u64 {
    let mut peak = 0;
    while !done.load(Ordering::Relaxed) {
        let accepted = load.accepted.load(Ordering::Relaxed);
        peak = peak.max(accepted.saturating_sub(seen.delivered.load(Ordering::Relaxed)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak
}

/// Waits until the receiver has every accepted request's webhook (or [`DRAIN_LIMIT`]).
async fn drain(load: &Load, seen: &Seen) -> bool {
    let started = Instant::now();
    let accepted = load.accepted.load(Ordering::Relaxed);
    while seen.delivered.load(Ordering::Relaxed) < accepted {
        if started.elapsed() > DRAIN_LIMIT {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A command run over the measured phase (`--profile`) in a process group of its own,
/// stopped with SIGINT to the group.
struct Profiler(Option<std::process::Child>);

impl Profiler {
    fn start(command: Option<&str>, pid: u32) -> Profiler {
        Profiler(command.map(|c| {
            let c = c.replace("{pid}", &pid.to_string());
            std::process::Command::new("sh")
                .args(["-c", &format!("exec {c}")])
                .process_group(0)
                .spawn()
                .expect("the profile command starts")
        }))
    }

    fn stop(self) {
        if let Some(mut child) = self.0 {
            // SAFETY: kill(2) on the process group of our own child (it leads it).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// Registers the standard test-mode workflow `bench` and one endpoint at `hook`.
async fn setup(base: &str, hook: &str) {
    let http = reqwest::Client::new();
    for (path, body) in [
        (
            "/console/workflow",
            json!({"name": "bench", "provider": "testing", "model": "test-mode", "mode": "testing"}),
        ),
        ("/console/webhooks", json!({"url": hook})),
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
}

async fn run(o: Options) {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), KEY, &o.server_flags);
    let pid = server.pid();
    let seen = Arc::new(Seen::default());
    let (open_tx, open) = watch::channel(o.backlog.is_none());
    let hook = receiver(seen.clone(), open, Duration::from_millis(o.delay_ms)).await;
    setup(&server.base, &hook).await;

    let load = Arc::new(Load::default());
    let done = Arc::new(AtomicBool::new(false));
    let peak = tokio::spawn(backlog_peak(load.clone(), seen.clone(), done.clone()));
    let load_avg = common::load_average();
    let cpu_start = common::cpu_seconds(pid);
    let started = Instant::now();
    let profiler = o
        .backlog
        .is_none()
        .then(|| Profiler::start(o.profile.as_deref(), pid));
    let generator = tokio::spawn(generate(
        server.addr(),
        load.clone(),
        o.conns,
        o.rate,
        o.backlog.unwrap_or(u64::MAX),
    ));
    if o.backlog.is_none() {
        tokio::time::sleep(Duration::from_secs(o.secs)).await;
        load.stop.store(true, Ordering::Relaxed);
    }
    generator.await.unwrap();
    let loaded = started.elapsed();
    let cpu_loaded = common::cpu_seconds(pid);
    // The backlog is largest when the load stops; the sampler may have slept through it.
    let at_stop = load
        .accepted
        .load(Ordering::Relaxed)
        .saturating_sub(seen.delivered.load(Ordering::Relaxed));
    let profiler = profiler.unwrap_or_else(|| Profiler::start(o.profile.as_deref(), pid));
    open_tx.send_replace(true);
    let drained = drain(&load, &seen).await;
    let total = started.elapsed();
    let cpu_end = common::cpu_seconds(pid);
    profiler.stop();
    done.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap().max(at_stop);

    let accepted = load.accepted.load(Ordering::Relaxed);
    let delivered = seen.delivered.load(Ordering::Relaxed);
    let per_delivery = |cpu: f64| cpu * 1000.0 / delivered.max(1) as f64;
    let drain_secs = (total - loaded).as_secs_f64();
    let context = format!(
        "{} conns, receiver delay {} ms, webhook body {} B, {} refused, server flags [{}], \
         load average {load_avg:.1} → {:.1}{}",
        o.conns,
        o.delay_ms,
        seen.body_bytes.load(Ordering::Relaxed) / delivered.max(1),
        load.refused.load(Ordering::Relaxed),
        o.server_flags.join(" "),
        common::load_average(),
        if drained { "" } else { "; DRAIN TIMED OUT" },
    );
    let repeats = seen.repeats.load(Ordering::Relaxed);
    match o.backlog {
        None => println!(
            "delivery: {:.0} accepted/s, {:.0} delivered/s ({:.2} of accepted/s), drained {:.1} s \
             after the load, {:.3} eddy CPU-ms per delivered webhook, backlog peak {peak}, \
             repeated webhook-ids {repeats} ({accepted} accepted in {:.1} s{}, {context})",
            accepted as f64 / loaded.as_secs_f64(),
            delivered as f64 / total.as_secs_f64(),
            (delivered as f64 / total.as_secs_f64()) / (accepted as f64 / loaded.as_secs_f64()),
            drain_secs,
            per_delivery(cpu_end - cpu_start),
            loaded.as_secs_f64(),
            o.rate.map_or(String::new(), |r| format!(" paced at {r}/s")),
        ),
        Some(_) => println!(
            "delivery: backlog of {accepted} built at {:.0} accepted/s (receiver holding), \
             drained at {:.0} delivered/s in {drain_secs:.1} s, {:.3} eddy CPU-ms per delivered \
             webhook while draining, {:.3} over the whole run ({:.3} per accept while it built), \
             backlog peak {peak}, repeated webhook-ids {repeats} ({context})",
            accepted as f64 / loaded.as_secs_f64(),
            delivered as f64 / drain_secs,
            per_delivery(cpu_end - cpu_loaded),
            per_delivery(cpu_end - cpu_start),
            (cpu_loaded - cpu_start) * 1000.0 / accepted.max(1) as f64,
        ),
    }
}

fn main() {
    let options = Options::parse(std::env::args().skip(1));
    eddy::egress::install_crypto();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(options));
}
