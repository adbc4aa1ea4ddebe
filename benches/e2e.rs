//! The end-to-end load bench: a real server in this process (its own runtime, threads named
//! `eddy-srv`), real clients on loopback. Each of N producers loops: `POST /v1/ai/async`
//! (event-driven, test-mode workflow), open a Phoenix socket with the ticket, join, and
//! wait for `completed`. A webhook receiver verifies `mr-signature` and calls back with
//! enriched data. Every accept is fsynced (group commit).
//!
//! `cargo bench --bench e2e [-- <seconds> <producers>]` prints one line:
//! `e2e: <flows>/s, accept p50 <ms> p99 <ms>, accept-to-completed p50 <ms> p99 <ms>,
//! cpu <ms> per 1000 flows, rss <MiB>` — cpu counts the server's threads only (tokio
//! workers, sled's threads, the committer); rss is the whole process.
//!
//! Cluster mode, `-- <seconds> <producers> --nodes N [--nats K | --cluster URLS]`: N
//! release binaries `eddy serve --cluster …` in their own processes on K `nats-server`s
//! started here (default 3, replicas 3; 1 server gets replicas 1), or on the servers
//! `URLS`. Producer `p` accepts on node `p mod N` and joins its socket on the next node,
//! so with N > 1 every push crosses nodes. The line adds the NATS servers' CPU, memory and
//! messages beside the nodes' (when the bench started them), and a second line counts the
//! writes per flow to each stream (where the time goes).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod common;

const KEY: &str = "mr_live_e2ebench0123456789abcdefghijklmnopqrstu";

/// The binary's allocator, so the server here allocates as `eddy serve` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (user, system) CPU seconds used so far by the server's threads.
fn server_cpu_seconds() -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let (mut user, mut system) = (0.0, 0.0);
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim();
        let server = name.starts_with("eddy-") || name.starts_with("sled") || name == "log flusher";
        if !server {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: utime is the 12th, stime the 13th.
        let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        user += utime / ticks;
        system += stime / ticks;
    }
    (user, system)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The seed's backend: verify, answer 200, enrich and call back.
async fn receiver(secret: Arc<Mutex<String>>, http: reqwest::Client) -> String {
    common::receiver(move |req: hyper::Request<hyper::body::Incoming>| {
        let (secret, http) = (secret.clone(), http.clone());
        async move {
            let sig = req
                .headers()
                .get("mr-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let secret = secret.lock().unwrap().clone();
            assert!(
                eddy::signature::verify_mr(&secret, &body, &sig),
                "bad signature"
            );
            let payload: Value = serde_json::from_slice(&body).unwrap();
            tokio::spawn(async move {
                let mut data = payload["ai_response"]["data"].clone();
                data["slug"] = json!("prosound-x1-wireless-headphones");
                let url = payload["callback_url"].as_str().unwrap().to_string();
                let _ = http
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&json!({"data": data, "task_id": "product_prod_123"}))
                    .send()
                    .await;
            });
            hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")))
        }
    })
    .await
}

/// One flow: accept on `base`, socket (on `socket`'s node when given, else the ticket's),
/// join, wait for `completed`. Returns (accept, accept-to-completed).
async fn flow(
    http: &reqwest::Client,
    base: &str,
    socket: Option<&str>,
    body: &str,
) -> Option<(Duration, Duration)> {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/v1/ai/async"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .ok()?;
    let ticket: Value = response.json().await.ok()?;
    let accepted = started.elapsed();
    let url = format!(
        "{}/websocket?token={}&vsn=2.0.0",
        match socket {
            Some(base) => format!("{}/socket", base.replace("http://", "ws://")),
            None => ticket["websocket_url"].as_str()?.to_string(),
        },
        ticket["ws_token"].as_str()?
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    let topic = ticket["websocket_channel"].as_str()?;
    ws.send(Message::text(
        json!(["1", "1", topic, "phx_join", {}]).to_string(),
    ))
    .await
    .ok()?;
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Text(text) = frame else { continue };
        let frame: Value = serde_json::from_str(&text).ok()?;
        if frame[3] == "response" && frame[4]["status"] == "completed" {
            let done = started.elapsed();
            let _ = ws.close(None).await;
            return Some((accepted, done));
        }
    }
    None
}

/// How the bench runs eddy.
enum Mode {
    /// One server in this process on its sled store: the default.
    Sled,
    /// `nodes` release binaries with `--cluster`, on `nats` servers started here or on the
    /// servers `urls`.
    Cluster {
        nodes: usize,
        nats: usize,
        urls: Option<String>,
    },
}

/// `<seconds> <producers>` and the cluster flags; anything else (`--bench`) is ignored.
fn parse_args() -> (u64, usize, Mode) {
    let (mut numbers, mut nodes, mut nats, mut urls) = (Vec::new(), None, 3, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--nodes" => nodes = Some(value().parse().expect("--nodes N")),
            "--nats" => nats = value().parse().expect("--nats K"),
            "--cluster" => urls = Some(value()),
            _ => numbers.extend(arg.parse::<u64>().ok()),
        }
    }
    let seconds = numbers.first().copied().unwrap_or(10);
    let producers = numbers.get(1).copied().unwrap_or(64) as usize;
    let mode = match nodes {
        Some(nodes) => Mode::Cluster { nodes, nats, urls },
        None if urls.is_some() => Mode::Cluster {
            nodes: 1,
            nats,
            urls,
        },
        None => Mode::Sled,
    };
    (seconds, producers, mode)
}

/// The eddy side under load: where to send, and what it costs.
struct Side {
    bases: Vec<String>,
    /// Node processes (cluster mode); empty for the in-process server.
    nodes: Vec<common::Server>,
    nats: Option<common::nats::NatsServers>,
    label: String,
}

impl Side {
    /// CPU seconds so far: (eddy user, eddy user + system, NATS servers).
    fn cpu(&self) -> (f64, f64, f64) {
        if self.nodes.is_empty() {
            let (user, system) = server_cpu_seconds();
            return (user, user + system, 0.0);
        }
        let eddy: f64 = self
            .nodes
            .iter()
            .map(|n| common::cpu_seconds(n.pid()))
            .sum();
        let nats = self
            .nats
            .as_ref()
            .map_or(0.0, |n| n.pids().into_iter().map(common::cpu_seconds).sum());
        (eddy, eddy, nats)
    }

    /// Resident memory in MiB: (eddy, NATS servers).
    fn rss(&self) -> (f64, f64) {
        if self.nodes.is_empty() {
            return (common::rss_mib("self"), 0.0);
        }
        let eddy = self.nodes.iter().map(|n| common::rss_mib(n.pid())).sum();
        let nats = self
            .nats
            .as_ref()
            .map_or(0.0, |n| n.pids().into_iter().map(common::rss_mib).sum());
        (eddy, nats)
    }

    /// Messages into the NATS servers so far (0 when the bench did not start them).
    async fn nats_messages(&self) -> u64 {
        match &self.nats {
            Some(servers) => servers.messages_in().await,
            None => 0,
        }
    }

    /// Last sequence of every stream (empty when the bench did not start the servers).
    async fn stream_seqs(&self) -> std::collections::BTreeMap<String, u64> {
        match &self.nats {
            Some(servers) => servers.stream_seqs().await,
            None => Default::default(),
        }
    }

    /// The node whose socket producer `p` joins (cluster mode: the next one).
    fn socket_for(&self, p: usize) -> Option<String> {
        (!self.nodes.is_empty()).then(|| self.bases[(p + 1) % self.bases.len()].clone())
    }
}

/// `nodes` eddy processes on the NATS servers `urls` (or on `nats` started here).
fn cluster_side(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    nodes: usize,
    nats: usize,
    urls: Option<String>,
) -> Side {
    let (servers, urls) = match urls {
        Some(urls) => (None, urls),
        None => {
            let servers = rt.block_on(common::nats::NatsServers::start(nats));
            let urls = servers.urls.join(",");
            (Some(servers), urls)
        }
    };
    let replicas = if servers.is_some() && nats < 3 { 1 } else { 3 };
    let extra: Vec<String> = [
        "--cluster",
        &urls,
        "--cluster-replicas",
        &replicas.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let nodes: Vec<common::Server> = (0..nodes)
        .map(|i| common::Server::start(&dir.join(format!("node{i}")), KEY, &extra))
        .collect();
    let label = format!(
        "cluster of {} node(s) on {} (replicas {replicas})",
        nodes.len(),
        match &servers {
            Some(s) => format!("{} nats-server(s) started here", s.urls.len()),
            None => urls.clone(),
        }
    );
    Side {
        bases: nodes.iter().map(|n| n.base.clone()).collect(),
        nodes,
        nats: servers,
        label,
    }
}

/// Waits until every node knows the endpoint `id` (the catalog reached it).
async fn wait_catalog(http: &reqwest::Client, bases: &[String], id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for base in bases {
        loop {
            let listed: Option<Value> = match http
                .get(format!("{base}/console/webhooks"))
                .bearer_auth(KEY)
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let known = listed.is_some_and(|l| {
                l["data"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|e| e["id"] == id))
            });
            if known {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{base} never learnt endpoint {id}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn main() {
    let (seconds, producers, mode) = parse_args();
    eddy::egress::install_crypto();

    let dir = tempfile::tempdir().unwrap();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("eddy-srv")
        .enable_all()
        .build()
        .unwrap();
    let side = match mode {
        Mode::Sled => {
            let base = server_rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let base = format!("http://{}", listener.local_addr().unwrap());
                let config = eddy::Config {
                    data: dir.path().to_path_buf(),
                    api_key: Some(KEY.into()),
                    allow_private_webhooks: true,
                    ..eddy::Config::default()
                };
                let server = eddy::Server::open(config).await.unwrap();
                tokio::spawn(server.serve(listener, std::future::pending()));
                base
            });
            Side {
                bases: vec![base],
                nodes: Vec::new(),
                nats: None,
                label: String::new(),
            }
        }
        Mode::Cluster { nodes, nats, urls } => {
            cluster_side(&server_rt, dir.path(), nodes, nats, urls)
        }
    };
    let base = side.bases[0].clone();

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async move {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(producers * 2)
            .build()
            .unwrap();
        let secret = Arc::new(Mutex::new(String::new()));
        let hook = receiver(secret.clone(), http.clone()).await;
        let call = |path: &str, body: Value| {
            let http = http.clone();
            let url = format!("{base}{path}");
            async move {
                let r: Value = http
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r
            }
        };
        let output = call("/console/structured-outputs", json!({
            "name": "product", "schema": {"type": "object"},
            "sample_data": {"title": "ProSound X1 Wireless Headphones",
                "description": "Experience crystal-clear audio...",
                "features": ["Active noise cancellation", "40-hour battery"]}
        }))
        .await;
        call("/console/workflow", json!({
            "name": "content_generator", "event_name": "content_ready", "provider": "openai",
            "model": "gpt-4o", "structured_output_id": output["id"], "mode": "testing"
        }))
        .await;
        let endpoint = call("/console/webhooks", json!({"url": hook})).await;
        *secret.lock().unwrap() = endpoint["secret"].as_str().unwrap().to_string();
        wait_catalog(&http, &side.bases, endpoint["id"].as_str().unwrap()).await;

        let body = json!({
            "workflow": "content_generator",
            "messages": [{"role": "user", "content": "Generate a product description for wireless headphones"}],
            "metadata": {"product_id": "prod_123", "category": "electronics"}
        })
        .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let messages_before = side.nats_messages().await;
        let seqs_before = side.stream_seqs().await;
        let cpu_before = side.cpu();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..producers {
            let (http, body, stop, samples) =
                (http.clone(), body.clone(), stop.clone(), samples.clone());
            let base = side.bases[p % side.bases.len()].clone();
            let socket = side.socket_for(p);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(s) = flow(&http, &base, socket.as_deref(), &body).await {
                        samples.lock().unwrap().push(s);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let cpu_after = side.cpu();
        let user = cpu_after.0 - cpu_before.0;
        let cpu = cpu_after.1 - cpu_before.1;
        let nats_cpu = cpu_after.2 - cpu_before.2;
        let messages = side.nats_messages().await - messages_before;
        let seqs_after = side.stream_seqs().await;
        for t in tasks {
            let _ = t.await;
        }
        let samples = samples.lock().unwrap().clone();
        let flows = samples.len();
        let mut accept: Vec<Duration> = samples.iter().map(|s| s.0).collect();
        let mut done: Vec<Duration> = samples.iter().map(|s| s.1).collect();
        accept.sort();
        done.sort();
        let per_1000 = |seconds: f64| seconds * 1000.0 / (flows.max(1) as f64 / 1000.0);
        let line = format!(
            "{:.0} flows/s, accept p50 {:.2} ms p99 {:.2} ms, accept-to-completed p50 {:.2} ms p99 {:.2} ms",
            flows as f64 / elapsed.as_secs_f64(),
            percentile(&accept, 0.5),
            percentile(&accept, 0.99),
            percentile(&done, 0.5),
            percentile(&done, 0.99),
        );
        let (rss, nats_rss) = side.rss();
        if side.nodes.is_empty() {
            println!(
                "e2e: {line}, cpu {:.0} ms per 1000 flows, rss {rss:.0} MiB ({producers} producers, {seconds}s; server cpu {:.0}% user)",
                per_1000(cpu),
                100.0 * user / cpu.max(1e-9),
            );
        } else {
            println!(
                "e2e {}: {line}, cpu eddy {:.0} ms + nats {:.0} ms per 1000 flows, {:.0} messages into NATS servers per flow, rss eddy {rss:.0} MiB + nats {nats_rss:.0} MiB ({producers} producers, {seconds}s)",
                side.label,
                per_1000(cpu),
                per_1000(nats_cpu),
                messages as f64 / flows.max(1) as f64,
            );
            let writes: Vec<String> = seqs_after
                .iter()
                .map(|(name, seq)| {
                    let before = seqs_before.get(name).copied().unwrap_or(0);
                    let per_flow = (seq - before.min(*seq)) as f64 / flows.max(1) as f64;
                    format!("{name} {per_flow:.1}")
                })
                .collect();
            println!("writes per flow by stream: {}", writes.join(", "));
        }
    });
    drop(server_rt);
}
