//! Disk use under steady load with retention: a release server in this process takes a
//! steady stream of async requests (test-mode workflow, so each completes at once) while
//! the retention sweep deletes finished requests older than `RETENTION`. Every few seconds
//! it prints the requests accepted, the requests still stored and the store's size on
//! disk; with retention working the last two level off instead of growing with the first.
//!
//! `cargo bench --bench retention [-- <seconds> <requests per second>]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eddy::{Config, Server};

mod common;

const RETENTION: Duration = Duration::from_secs(10);
const KEY: &str = "mr_live_retentionbench0123456789abcdefghijklmnop";

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(60);
    let rate = args.get(1).copied().unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(seconds, rate));
}

async fn run(seconds: u64, rate: u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data: dir.path().to_path_buf(),
        api_key: Some(KEY.into()),
        metrics_token: Some(common::METRICS_TOKEN.into()),
        request_retention: RETENTION,
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = Server::open(config).await.unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let http = reqwest::Client::new();
    http.post(format!("{base}/console/workflow"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"name": "bench", "provider": "testing", "model": "m", "mode": "testing"}))
        .send()
        .await
        .unwrap();

    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let workers = 16;
    for w in 0..workers {
        let (http, base, accepted) = (http.clone(), base.clone(), accepted.clone());
        let every = Duration::from_secs_f64(workers as f64 / rate as f64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + every.mul_f64(w as f64 / workers as f64),
                every,
            );
            while Instant::now() < deadline {
                tick.tick().await;
                let sent = http
                    .post(format!("{base}/v1/ai/async"))
                    .bearer_auth(KEY)
                    .body(r#"{"workflow":"bench","messages":[{"role":"user","content":"Generate a product description for wireless headphones"}],"metadata":{"product_id":"prod_123"}}"#)
                    .header("content-type", "application/json")
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    println!(
        "retention {}s, {rate} requests/s for {seconds}s",
        RETENTION.as_secs()
    );
    while Instant::now() < deadline + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let metrics = common::metrics(&http, &base).await;
        let stored: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("eddy_requests{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        println!(
            "t={:>3}s accepted={:>7} stored={:>7} disk={:>6.1} MiB",
            started.elapsed().as_secs(),
            accepted.load(Ordering::Relaxed),
            stored,
            common::disk_bytes(dir.path()) as f64 / (1 << 20) as f64
        );
    }
}
