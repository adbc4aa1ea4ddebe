//! What operators see: the request log (filters, time ranges, cursor paging), retention,
//! `/metrics` read by a Prometheus text parser, `eddy requests` as a process, and the
//! console page driven in headless Chromium.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Callback, Eddy, KEY, METRICS_TOKEN, Receiver, eventually, http_client, ok_if, seed_request,
    start, tools,
};

fn channels(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["channel_id"].as_str().unwrap().to_string())
        .collect()
}

async fn standard(server: &crate::support::TestServer) {
    server
        .create_workflow(json!({
            "name": "summarizer", "provider": "openai", "model": "gpt-4o", "mode": "testing"
        }))
        .await;
}

/// A test-mode workflow `slow` whose requests stay in flight for a minute.
async fn slow(server: &crate::support::TestServer) {
    server
        .create_workflow(json!({
            "name": "slow", "provider": "openai", "model": "gpt-4o", "mode": "testing",
            "response_delay_ms": 60_000
        }))
        .await;
}

/// The log pages newest first through a cursor without repeats, combines status and
/// workflow filters, and takes `since`/`until` bounds; bad parameters are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_pages_and_time_ranges() {
    let server = start(|_| {}).await;
    standard(&server).await;
    slow(&server).await;
    let mut sent = Vec::new();
    for i in 0..7 {
        let workflow = if i == 3 { "slow" } else { "summarizer" };
        let ticket = server.send_async(seed_request(workflow)).await;
        sent.push(ticket["channel_id"].as_str().unwrap().to_string());
        // Distinct creation milliseconds make the time bounds below exact.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (i, c) in sent.iter().enumerate() {
        if i != 3 {
            server.wait_for_status(c, "completed").await;
        }
    }
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();

    let mut paged = Vec::new();
    let mut path = "/console/requests?limit=3".to_string();
    loop {
        let (status, page) = server.get(&path).await;
        assert_eq!(status, 200, "{page}");
        paged.extend(channels(&page));
        match page["next_before"].as_str() {
            Some(cursor) => path = format!("/console/requests?limit=3&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, newest_first);

    let (_, both) = server
        .get("/console/requests?status=completed&workflow=summarizer&limit=4")
        .await;
    assert_eq!(channels(&both).len(), 4);
    let (_, pending) = server.get("/console/requests?status=pending").await;
    assert_eq!(channels(&pending), [sent[3].clone()]);
    let (_, none) = server
        .get("/console/requests?status=pending&workflow=summarizer")
        .await;
    assert_eq!(channels(&none), Vec::<String>::new());

    let fourth = server.request(&sent[3]).await;
    let at = fourth["created_at"].as_str().unwrap();
    let (_, since) = server.get(&format!("/console/requests?since={at}")).await;
    assert_eq!(channels(&since), newest_first[..4]);
    let (_, until) = server.get(&format!("/console/requests?until={at}")).await;
    assert_eq!(channels(&until), newest_first[4..]);

    for bad in ["status=done", "since=monday", "before=nope", "limit=0"] {
        let (status, body) = server.get(&format!("/console/requests?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
}

/// Terminal requests past the retention are deleted with their timelines; requests still
/// in flight are kept however old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweeps_finished_requests() {
    let server = start(|c| c.request_retention = Duration::from_millis(500)).await;
    standard(&server).await;
    slow(&server).await;
    let slow = server.send_async(seed_request("slow")).await;
    let slow = slow["channel_id"].as_str().unwrap().to_string();
    let mut done = Vec::new();
    for _ in 0..3 {
        let ticket = server.send_async(seed_request("summarizer")).await;
        let channel = ticket["channel_id"].as_str().unwrap().to_string();
        server.wait_for_status(&channel, "completed").await;
        done.push(channel);
    }
    eventually("the completed requests to be swept", async || {
        let (_, list) = server.get("/console/requests").await;
        ok_if(channels(&list) == [slow.clone()], list)
    })
    .await;
    for channel in &done {
        let (status, _) = server.get(&format!("/console/requests/{channel}")).await;
        assert_eq!(status, 404);
    }
    assert_eq!(server.request(&slow).await["status"], "pending");
}

fn sample<'a>(
    scrape: &'a prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<&'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn number(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    match sample(scrape, metric, labels).map(|s| &s.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        other => panic!("{metric} {labels:?}: {other:?}"),
    }
}

/// After the seed's flow, `/metrics` (with the metrics token) parses as Prometheus text and counts
/// the request, its model attempt, its webhook, its callback and its push, with gauges by
/// state and histograms whose +Inf bucket holds every observation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.call_back(KEY, Callback::Enrich);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    server
        .wait_for_status(ticket["channel_id"].as_str().unwrap(), "completed")
        .await;

    let response = http_client()
        .get(format!("{}/metrics", server.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let workflow = [("workflow", "content_generator")];
    assert_eq!(
        number(&scrape, "eddy_requests_accepted_total", &workflow),
        1.0
    );
    assert_eq!(
        number(
            &scrape,
            "eddy_requests_finished_total",
            &[("workflow", "content_generator"), ("state", "completed")]
        ),
        1.0
    );
    let testing = [("provider", "Testing"), ("outcome", "success")];
    assert_eq!(number(&scrape, "eddy_ai_attempts_total", &testing), 1.0);
    assert_eq!(
        number(
            &scrape,
            "eddy_webhook_attempts_total",
            &[("outcome", "delivered")]
        ),
        1.0
    );
    assert_eq!(
        number(&scrape, "eddy_callbacks_total", &[("outcome", "accepted")]),
        1.0
    );
    assert_eq!(
        number(&scrape, "eddy_requests", &[("state", "completed")]),
        1.0
    );
    assert_eq!(
        number(&scrape, "eddy_requests", &[("state", "pending")]),
        0.0
    );
    assert_eq!(number(&scrape, "eddy_dead_letters", &[]), 0.0);
    assert!(sample(&scrape, "eddy_websocket_open_sockets", &[]).is_some());
    for histogram in [
        "eddy_webhook_attempt_seconds",
        "eddy_accept_to_completed_seconds",
        "eddy_commit_batch_size",
        "eddy_commit_seconds",
    ] {
        let Some(prometheus_parse::Value::Histogram(buckets)) =
            sample(&scrape, histogram, &[]).map(|s| &s.value)
        else {
            panic!("{histogram} is not a histogram in:\n{text}");
        };
        let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
        assert!(inf.count >= 1.0, "{histogram}: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    }
}

/// Regression: with `--listen 127.0.0.1:0` and no `--public-url`, callback URLs named a
/// port that dies with the process, and nothing said so. eddy warns at start, naming the
/// address; with `--public-url` it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_public_url_is_warned_about() {
    let log_of = |extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let (mut eddy, log) = Eddy::spawn_logged(dir.path(), "127.0.0.1:0", extra);
        // The warning comes before the `listening on` line; stopping the process closes
        // stderr, so the log below is complete.
        eddy.kill_9();
        let lines: Vec<String> = log.iter().collect();
        (eddy.base.clone(), lines.join("\n"))
    };
    let (base, log) = log_of(&[]);
    assert!(log.contains("no --public-url"), "{log}");
    assert!(log.contains(&base), "names {base}: {log}");
    let (_, log) = log_of(&["--public-url", "https://eddy.example.com"]);
    assert!(!log.contains("--public-url"), "{log}");
}

/// Regression: `/metrics` needed no key and showed every project's workflow names. On
/// the API listener it now takes the metrics token or the admin token (401 otherwise, 404
/// with neither configured); `--metrics-listen` serves it alone, without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_or_their_own_listener() {
    let scrape = |base: &str, token: Option<&str>| {
        let mut request = http_client().get(format!("{base}/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let admin = "admin-token-0123456789";
    let server = start(|c| {
        c.admin_token = Some(admin.into());
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    server
        .create_workflow(
            json!({"name": "secret_workflow_name", "provider": "testing", "model": "m"}),
        )
        .await;
    server
        .send_async(seed_request("secret_workflow_name"))
        .await;
    for token in [None, Some(KEY), Some("metrics-token-wrong")] {
        let (status, body) = scrape(&server.base, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(!body.contains("secret_workflow_name"));
        assert!(body.contains("invalid_metrics_token"), "{body}");
    }
    for token in [METRICS_TOKEN, admin] {
        let (status, body) = scrape(&server.base, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("secret_workflow_name"));
    }
    let own = server.metrics_base.clone().expect("a metrics listener");
    let (status, body) = scrape(&own, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("eddy_requests_accepted_total"));
    let other = http_client()
        .get(format!("{own}/console/requests"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        404,
        "the metrics listener serves nothing else"
    );

    let bare = start(|c| c.metrics_token = None).await;
    let (status, body) = scrape(&bare.base, None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--metrics-token"), "{body}");
}

/// `eddy requests list|show` run as a process against a live server: a table, JSON, and
/// the timeline printed readably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_command_line() {
    let server = start(|_| {}).await;
    standard(&server).await;
    let ticket = server.send_async(seed_request("summarizer")).await;
    let channel = ticket["channel_id"].as_str().unwrap().to_string();
    server.wait_for_status(&channel, "completed").await;
    let base = server.base.clone();
    let run = |args: &'static [&'static str], extra: Option<String>| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
                .args(args)
                .args(extra)
                .args(["--url", &base, "--key", KEY])
                .output()
                .expect("eddy runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let table = run(&["requests", "list", "--status", "completed"], None)
        .await
        .unwrap();
    assert!(
        table.starts_with("CHANNEL") && table.contains(&channel),
        "{table}"
    );
    let listed: Value =
        serde_json::from_str(&run(&["requests", "list", "--json"], None).await.unwrap())
            .expect("JSON");
    assert_eq!(listed["data"][0]["channel_id"], channel.as_str());
    let shown = run(&["requests", "show"], Some(channel.clone()))
        .await
        .unwrap();
    for needle in [
        "timeline:",
        "request_received",
        "ai_attempt",
        "state",
        "completed",
    ] {
        assert!(shown.contains(needle), "{needle} missing from:\n{shown}");
    }
}

/// The console page in headless Chromium: enter the key, see a completed request, open its
/// timeline, retry a dead letter and see it leave the list. The screenshot is kept at
/// `target/artifacts/console.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_page_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    tools::npm_ci(&dir);
    let chromium = tools::chromium();

    let server = start(|_| {}).await;
    let (ok, failing) = (Receiver::start().await, Receiver::start().await);
    ok.call_back(KEY, Callback::Enrich);
    failing.set_status(500);
    server
        .event_workflow("content_generator", json!({"event_name": "ok_event"}))
        .await;
    server
        .event_workflow("flaky", json!({"event_name": "bad_event"}))
        .await;
    for (url, event) in [(&ok.url, "ok_event"), (&failing.url, "bad_event")] {
        let (status, body) = server
            .post("/console/webhooks", json!({"url": url, "events": [event]}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let done = server.send_async(seed_request("content_generator")).await;
    let done = done["channel_id"].as_str().unwrap().to_string();
    server.wait_for_status(&done, "completed").await;
    let dead = server.send_async(seed_request("flaky")).await;
    server
        .wait_for_status(dead["channel_id"].as_str().unwrap(), "failed")
        .await;
    let (_, dlq) = server.get("/console/dlq").await;
    let dlq_id = dlq["data"][0]["id"].as_str().unwrap().to_string();
    // The backend is fixed, so the retry from the page is delivered.
    failing.set_status(200);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("console.png");
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("console.mjs"))
            .env("EDDY_BASE", base)
            .env("EDDY_KEY", KEY)
            .env("EDDY_CHANNEL", &done)
            .env("EDDY_DLQ_ID", dlq_id)
            .env("EDDY_SCREENSHOT", &screenshot)
            .env("CHROMIUM", chromium)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("null"))
        .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success(),
        "{result:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(result["title"], "eddy console");
    assert_eq!(result["row_status"], "completed");
    assert_eq!(result["filtered_rows"], 1, "{result}");
    let steps: BTreeSet<String> = result["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    for step in [
        "request_received",
        "ai_attempt",
        "webhook_attempt",
        "callback_received",
        "state",
    ] {
        assert!(steps.contains(step), "{step} missing: {steps:?}");
    }
    assert_eq!(
        (result["dlq_before"].clone(), result["dlq_after"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(result["error_shown"], false);
    assert_eq!(result["console_errors"], json!([]));
    assert!(Path::new(result["screenshot"].as_str().unwrap()).exists());
    let (_, after) = server.get("/console/dlq").await;
    assert_eq!(after["data"], json!([]), "the retried entry left the queue");
}
