//! How cheap are sockets? Holds 10,000 joined Phoenix sockets on one eddy and reports the
//! server's RSS per socket and how long it takes to push a result to each.
//!
//! `cargo bench --bench sockets` (`EDDY_BENCH_SOCKETS=n` for another count). The server is
//! the release binary in its own process, so its `/proc/<pid>/status` VmRSS is the
//! server's alone:
//!
//! 1. A first server accepts n+1 requests on an event-driven test-mode workflow and
//!    delivers their webhooks to a receiver here that answers 200 and never calls back,
//!    so every request waits for its callback. It is then stopped (SIGTERM).
//! 2. A fresh server opens the same store (tokens survive restarts), reads every request
//!    once so the store's cache holds what joins will read, and its RSS is taken.
//! 3. n sockets connect, each joins its own request's channel and is replayed
//!    `ai_generated`; RSS again: (after − before) / n is the memory per socket.
//! 4. The n callbacks are sent (64 at a time): time from the first callback to the last
//!    `completed` push, and each push's latency after its callback was sent.
//! 5. Fan-out: those sockets close, n new ones join the one remaining channel, and one
//!    callback is pushed to all of them.
//!
//! Sockets send the SDK's 30 s heartbeat. Client sockets come from 127.0.0.2 and
//! 127.0.0.3 so that 2n connections fit the ephemeral port range.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

mod common;

const KEY: &str = "mr_live_bench0123456789abcdefghijABCDEFGHIJ";
const CONNECTING: usize = 200;
const CALLING: usize = 64;

fn main() {
    let n: usize = std::env::var("EDDY_BENCH_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    raise_fd_limit(n as u64 + 4096);
    eddy::egress::install_crypto();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(n));
}

/// Raises this process's open-file limit (inherited by the server it spawns), past the
/// hard limit too when allowed (root).
fn raise_fd_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: limit.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    assert!(
        limit.rlim_cur >= want,
        "need {want} open files, the limit is {}",
        limit.rlim_cur
    );
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("eddy answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// A webhook endpoint that answers 200 and counts.
async fn receiver(count: Arc<AtomicUsize>) -> String {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    count.fetch_add(1, Ordering::Relaxed);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    format!("http://{addr}/hook")
}

/// When each socket saw its `completed` push (ns since `start`, 0 = not yet).
struct Arrivals {
    start: Instant,
    at: Vec<AtomicU64>,
    count: AtomicUsize,
    all: Notify,
}

impl Arrivals {
    fn new(n: usize, start: Instant) -> Arc<Arrivals> {
        Arc::new(Arrivals {
            start,
            at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicUsize::new(0),
            all: Notify::new(),
        })
    }

    fn arrived(&self, i: usize) {
        let ns = self.start.elapsed().as_nanos() as u64;
        if self.at[i].swap(ns.max(1), Ordering::Relaxed) == 0
            && self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.at.len()
        {
            self.all.notify_one();
        }
    }

    async fn wait_all(&self, limit: Duration) {
        let notified = self.all.notified();
        if self.count.load(Ordering::Relaxed) < self.at.len() {
            tokio::time::timeout(limit, notified)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {} pushes arrived",
                        self.count.load(Ordering::Relaxed),
                        self.at.len()
                    )
                });
        }
    }
}

/// Connects from `source`, joins `topic`, waits for the join's `ok`.
async fn join(addr: SocketAddr, source: Ipv4Addr, ticket: &Value) -> WebSocketStream<TcpStream> {
    let url = format!(
        "{}/websocket?token={}&vsn=2.0.0",
        ticket["websocket_url"].as_str().expect("websocket_url"),
        ticket["ws_token"].as_str().expect("ws_token")
    );
    let socket = TcpSocket::new_v4().expect("socket");
    // Ports of an earlier run may still be in TIME_WAIT on this source address.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(SocketAddr::from((source, 0))).expect("bind");
    let stream = socket.connect(addr).await.expect("connect");
    let config = WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0);
    let request = url.into_client_request().expect("url");
    let (mut ws, _) = client_async_with_config(request, stream, Some(config))
        .await
        .expect("handshake");
    let topic = &ticket["websocket_channel"];
    let frame = json!(["1", "1", topic, "phx_join", {}]).to_string();
    ws.send(Message::text(frame)).await.expect("join sent");
    loop {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            panic!("socket closed before the join reply");
        };
        if text.contains("\"phx_reply\"") {
            assert!(text.contains("\"status\":\"ok\""), "join refused: {text}");
            return ws;
        }
    }
}

/// Keeps a joined socket: heartbeats every 30 s like the SDK, notes the `completed` push.
fn hold(
    mut ws: WebSocketStream<TcpStream>,
    i: usize,
    arrivals: Arc<Arrivals>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_secs(30));
        beat.tick().await;
        let mut refs = 1u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = beat.tick() => {
                    refs += 1;
                    let hb = Utf8Bytes::from(format!(r#"[null,"{refs}","phoenix","heartbeat",{{}}]"#));
                    if ws.send(Message::Text(hb)).await.is_err() { break; }
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if text.contains(r#""response",{"status":"completed""#) {
                            arrivals.arrived(i);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
    });
}

/// Opens one socket per ticket (from `source`), joined and held.
async fn open_all(
    addr: SocketAddr,
    source: Ipv4Addr,
    tickets: &[Value],
    arrivals: &Arc<Arrivals>,
    stop: &CancellationToken,
) -> Duration {
    let started = Instant::now();
    let sockets: Vec<_> = stream::iter(tickets.iter().enumerate())
        .map(|(i, ticket)| async move { (i, join(addr, source, ticket).await) })
        .buffer_unordered(CONNECTING)
        .collect()
        .await;
    let took = started.elapsed();
    for (i, ws) in sockets {
        hold(ws, i, arrivals.clone(), stop.clone());
    }
    took
}

async fn open_sockets(api: &Api) -> u64 {
    api.get("/healthz").await["open_sockets"]
        .as_u64()
        .expect("open_sockets")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CALLING * 2)
        .build()
        .expect("client");

    // 1. n + 1 requests waiting for their callbacks.
    let server = common::Server::start(
        dir.path(),
        KEY,
        &["--callback-timeout".into(), "30m".into()],
    );
    let api = Api {
        http: http.clone(),
        base: server.base.clone(),
    };
    let hooks = Arc::new(AtomicUsize::new(0));
    let hook_url = receiver(hooks.clone()).await;
    let output = api
        .post(
            "/console/structured-outputs",
            json!({"name": "bench", "schema": {"type": "object"},
                   "sample_data": {"title": "ProSound X1 Wireless Headphones"}}),
        )
        .await;
    api.post(
        "/console/workflow",
        json!({"name": "bench", "event_name": "bench_ready", "provider": "openai",
               "model": "gpt-4o", "mode": "testing", "structured_output_id": output["id"]}),
    )
    .await;
    api.post("/console/webhooks", json!({"url": hook_url}))
        .await;
    let started = Instant::now();
    let mut tickets: Vec<Value> = stream::iter(0..=n)
        .map(|i| {
            let api = &api;
            async move {
                api.post(
                    "/v1/ai/async",
                    json!({"workflow": "bench", "messages": [{"role": "user", "content": "hi"}],
                           "metadata": {"i": i}}),
                )
                .await
            }
        })
        .buffer_unordered(CALLING)
        .collect()
        .await;
    let accepted = started.elapsed();
    while hooks.load(Ordering::Relaxed) < n + 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = started.elapsed();
    server.stop();

    // 2. A fresh server on that store, its cache warmed by reading every request.
    let server = common::Server::start(
        dir.path(),
        KEY,
        &["--callback-timeout".into(), "30m".into()],
    );
    let api = Api {
        http,
        base: server.base.clone(),
    };
    let addr: SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let fanout_ticket = tickets.pop().expect("n + 1 tickets");
    stream::iter(&tickets)
        .for_each_concurrent(CALLING, |t| {
            let api = &api;
            async move {
                let channel = t["channel_id"].as_str().expect("channel_id");
                api.get(&format!("/console/requests/{channel}")).await;
            }
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = common::rss_kib(server.pid());

    // 3. n sockets, one per channel.
    let bench_start = Instant::now();
    let arrivals = Arrivals::new(n, bench_start);
    let stop = CancellationToken::new();
    let connect = open_all(
        addr,
        Ipv4Addr::new(127, 0, 0, 2),
        &tickets,
        &arrivals,
        &stop,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = common::rss_kib(server.pid());
    assert_eq!(open_sockets(&api).await, n as u64);
    let per_socket_kib = (rss_after - rss_before) as f64 / n as f64;

    // 4. A result for each: n callbacks, timed to the last push.
    let sent_at: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let first_sent = bench_start.elapsed();
    stream::iter(tickets.iter().enumerate())
        .for_each_concurrent(CALLING, |(i, t)| {
            let (api, sent_at) = (&api, &sent_at);
            async move {
                let channel = t["channel_id"].as_str().expect("channel_id");
                sent_at[i].store(bench_start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                api.post(
                    &format!("/v1/callback/{channel}"),
                    json!({"data": {"saved": true}}),
                )
                .await;
            }
        })
        .await;
    arrivals.wait_all(Duration::from_secs(120)).await;
    let mut latencies: Vec<Duration> = (0..n)
        .map(|i| {
            let at = arrivals.at[i].load(Ordering::Relaxed);
            Duration::from_nanos(at.saturating_sub(sent_at[i].load(Ordering::Relaxed)))
        })
        .collect();
    latencies.sort();
    let last = (0..n)
        .map(|i| arrivals.at[i].load(Ordering::Relaxed))
        .max()
        .expect("n > 0");
    let push_all = Duration::from_nanos(last) - first_sent;
    let rss_pushed = common::rss_kib(server.pid());

    // 5. Fan-out: n sockets on one channel, one result.
    stop.cancel();
    while open_sockets(&api).await > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = fanout_ticket["channel_id"].as_str().expect("channel_id");
    let fresh = api
        .post("/v1/ai/reconnect", json!({"channel_id": channel}))
        .await;
    let fanout = Arrivals::new(n, Instant::now());
    let stop = CancellationToken::new();
    let same = vec![fresh; n];
    open_all(addr, Ipv4Addr::new(127, 0, 0, 3), &same, &fanout, &stop).await;
    let fanout_sent = fanout.start.elapsed();
    api.post(
        &format!("/v1/callback/{channel}"),
        json!({"data": {"saved": true}}),
    )
    .await;
    fanout.wait_all(Duration::from_secs(60)).await;
    let fanout_last = (0..n)
        .map(|i| fanout.at[i].load(Ordering::Relaxed))
        .max()
        .expect("n > 0");
    let fanout_took = Duration::from_nanos(fanout_last) - fanout_sent;
    stop.cancel();
    server.stop();

    println!(
        "setup: {} requests accepted in {}, webhooks delivered after {}",
        n + 1,
        ms(accepted),
        ms(delivered)
    );
    println!(
        "sockets: {n} joined in {} ({:.0}/s); server RSS {} KiB -> {} KiB",
        ms(connect),
        n as f64 / connect.as_secs_f64(),
        rss_before,
        rss_after
    );
    println!(
        "push: {n} results (one callback each) pushed in {}: latency p50 {}, p99 {}, max {}; \
         server RSS then {} KiB",
        ms(push_all),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
        rss_pushed
    );
    println!(
        "fan-out: one result to {n} sockets on one channel in {}",
        ms(fanout_took)
    );
    println!(
        "SUMMARY sockets={n} rss_per_socket={per_socket_kib:.1}KiB push_{n}_results={} fanout_{n}={}",
        ms(push_all),
        ms(fanout_took)
    );
}
