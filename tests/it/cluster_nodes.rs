//! Several eddy nodes as one service (`eddy serve --cluster …`) on a three-server NATS
//! cluster, each node the real binary: the seed's flow with its accept, its WebSocket and
//! its callback on three different nodes; the DLQ and the request log read the same from
//! every node, and a re-drive on one node is delivered by whichever takes it; and what a
//! careless operator does (a wrong `--cluster`, NATS down at start, `cluster check`
//! against a running cluster).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::nats::Nats;
use crate::support::nodes::{Nodes, cluster_args};
use crate::support::sign::assert_signed;
use crate::support::{Api, KEY, Receiver, WAIT, headphones, seed_request};

/// What every node must agree on in a request's console view: its state, its stored
/// results and its timeline's steps (not the URLs, which name the node asked).
fn request_essentials(view: &Value) -> Value {
    json!({
        "status": view["status"],
        "ai_response": view["ai_response"],
        "callback": view["callback"],
        "deliveries": view["deliveries"].as_array().map(|d| d.iter()
            .map(|d| json!([d["status"], d["attempt_count"]])).collect::<Vec<_>>()),
        "timeline": Api::timeline_types(view),
    })
}

/// The seed's flow across three nodes on three NATS servers: the app's accept on eddy1,
/// the browser's socket on eddy2, the backend's callback on eddy3. The browser sees
/// `ai_generated` then `completed` (pushed by eddy3 for a socket held by eddy2), the
/// backend gets one signed webhook, a late join on eddy1 gets the final result, a second
/// callback on eddy2 is refused, and every node shows the same request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_flow_crosses_three_nodes() {
    let nodes = Nodes::start(Nats::three().await, 3, &[]).await;
    let receiver = Receiver::start().await;
    let (endpoint_id, secret) = nodes.seed(0, &receiver.url).await;
    let metadata = json!({"product_id": "prod_123", "category": "electronics"});

    let ticket = nodes
        .api(0)
        .send_async(seed_request("content_generator"))
        .await;
    assert_eq!(ticket["status"], "pending", "{ticket}");
    let channel = ticket["channel_id"].as_str().unwrap().to_string();
    let mut socket = nodes.join_on(1, &ticket).await;
    let generated = socket.push_with_status("ai_generated").await;
    assert_eq!(generated["channel_id"], channel.as_str());
    assert_eq!(generated["customer_data"], metadata);

    let hooks = receiver.wait_for(1).await;
    let hook = &hooks[0];
    assert_signed(hook, Some(&endpoint_id), &secret, &channel);
    let body = hook.json();
    assert_eq!(body["type"], "task.ai_generated");
    assert_eq!(body["data"], headphones());
    let callback_url = body["callback_url"].as_str().unwrap();
    assert!(
        (0..3).any(|i| callback_url == format!("{}/v1/callback/{channel}", nodes.node(i).base())),
        "the callback URL names a node: {callback_url}"
    );

    let mut enriched = headphones();
    enriched["slug"] = json!("prosound-x1-wireless-headphones");
    let (status, reply) = nodes
        .api(2)
        .callback(
            &channel,
            json!({"data": enriched, "task_id": "product_prod_123"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"status": "accepted", "channel_id": channel}));
    let completed = socket.push_with_status("completed").await;
    assert_eq!(completed["data"], enriched, "{completed}");
    assert_eq!(completed["task_id"], "product_prod_123");
    assert_eq!(completed["customer_data"], metadata);

    let mut late = nodes.join_on(0, &ticket).await;
    let replayed = late.next_push(WAIT).await;
    assert_eq!(replayed, completed, "a late join on eddy1 gets the latest");

    let (status, error) = nodes
        .api(1)
        .callback(&channel, json!({"data": {"again": true}}))
        .await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"]["code"], "already_completed");

    let view = nodes
        .same_everywhere(&format!("/console/requests/{channel}"), request_essentials)
        .await;
    assert_eq!(view["status"], "completed", "{view:#}");
    assert_eq!(view["callback"]["data"], enriched, "{view:#}");
    let types = view["timeline"].as_array().unwrap();
    for step in [
        "request_received",
        "ai_attempt",
        "webhook_attempt",
        "callback_received",
    ] {
        assert!(types.contains(&json!(step)), "{step} in {types:?}");
    }
    assert_eq!(receiver.received().len(), 1, "one webhook only");
}

/// One `Idempotency-Key` sent to three nodes at once, as a client retrying through a load
/// balancer does: every node answers 200 with the same channel, one request exists, and
/// the backend gets its webhook with one `webhook-id` (once, or more if nodes raced).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_on_three_nodes_makes_one_request() {
    let nodes = Nodes::start(Nats::three().await, 3, &[]).await;
    let receiver = Receiver::start().await;
    nodes.seed(2, &receiver.url).await;
    let body = serde_json::to_vec(&seed_request("content_generator")).unwrap();
    let mut sends = Vec::new();
    for i in 0..6 {
        let (api, body) = (nodes.api(i % 3), body.clone());
        sends.push(tokio::spawn(async move {
            let reply = api
                .call(
                    reqwest::Method::POST,
                    "/v1/ai/async",
                    Some(KEY),
                    Some(body),
                    &[("idempotency-key", "order-42")],
                )
                .await;
            (reply.status, reply.json)
        }));
    }
    let mut channels = BTreeSet::new();
    for send in sends {
        let (status, ticket) = send.await.unwrap();
        assert_eq!(status, 200, "{ticket}");
        channels.insert(ticket["channel_id"].as_str().unwrap().to_string());
    }
    assert_eq!(channels.len(), 1, "one request: {channels:?}");
    let channel = channels.pop_first().unwrap();
    nodes.api(1).wait_for_status(&channel, "delivered").await;
    let log = nodes
        .same_everywhere("/console/requests?limit=100", |l| {
            listing(l, &["channel_id"])
        })
        .await;
    assert_eq!(log, json!([[channel]]));
    // Two nodes may race one attempt (at-least-once, as the design says): never with two
    // identities.
    let hooks = receiver.received();
    let ids: BTreeSet<(&str, &str)> = hooks
        .iter()
        .map(|h| (h.header("mr-channel-id"), h.header("webhook-id")))
        .collect();
    assert_eq!(ids.len(), 1, "one delivery identity: {ids:?}");
    if hooks.len() > 1 {
        eprintln!("the one request was delivered {} times", hooks.len());
    }
}

/// The keys of a listing's entries that every node must show alike.
fn listing(list: &Value, fields: &[&str]) -> Value {
    let rows: Vec<Value> = list["data"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|e| Value::Array(fields.iter().map(|f| e[*f].clone()).collect()))
        .collect();
    Value::Array(rows)
}

/// Dead letters made through three nodes read the same from each (the DLQ list, one
/// entry, the request log and its status filter); a re-drive of one entry on eddy2 and of
/// the rest by range on eddy3 is delivered with each entry's own `webhook-id`, by
/// whichever node takes it, and every node then shows an empty DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_and_log_read_the_same_everywhere_and_redrive_anywhere() {
    let extra = ["--webhook-retry-schedule", "0s,50ms,100ms"];
    let nodes = Nodes::start(Nats::three().await, 3, &extra).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    nodes.seed(0, &receiver.url).await;

    let mut channels = Vec::new();
    for i in 0..6 {
        let ticket = nodes
            .api(i % 3)
            .send_async(seed_request("content_generator"))
            .await;
        channels.push(ticket["channel_id"].as_str().unwrap().to_string());
    }
    for (i, channel) in channels.iter().enumerate() {
        nodes
            .api((i + 1) % 3)
            .wait_for_status(channel, "failed")
            .await;
    }
    let dlq = nodes
        .same_everywhere("/console/dlq?limit=100", |l| {
            listing(l, &["id", "channel_id", "webhook_id", "reason"])
        })
        .await;
    let entries = dlq.as_array().unwrap();
    let dead: BTreeSet<&str> = entries.iter().map(|e| e[1].as_str().unwrap()).collect();
    let sent: BTreeSet<&str> = channels.iter().map(String::as_str).collect();
    assert_eq!(dead, sent, "one dead letter per request: {dlq:#}");
    let log = nodes
        .same_everywhere("/console/requests?limit=100", |l| {
            listing(l, &["channel_id", "status", "workflow"])
        })
        .await;
    assert_eq!(log.as_array().unwrap().len(), channels.len(), "{log:#}");
    let failed = nodes
        .same_everywhere("/console/requests?status=failed&limit=100", |l| {
            listing(l, &["channel_id"])
        })
        .await;
    assert_eq!(
        failed.as_array().unwrap().len(),
        channels.len(),
        "{failed:#}"
    );
    let first = entries[0][0].as_str().unwrap();
    nodes
        .same_everywhere(&format!("/console/dlq/{first}"), |e| {
            json!([e["channel_id"], e["webhook_id"], e["request"]["status"]])
        })
        .await;

    receiver.set_status(200);
    let before = receiver.received().len();
    let (status, one) = nodes
        .api(1)
        .post(&format!("/console/dlq/{first}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{one}");
    let (status, rest) = nodes.api(2).post("/console/dlq/retry", json!({})).await;
    assert_eq!(status, 200, "{rest}");
    let retried = rest["retried"].as_array().unwrap().len();
    assert_eq!(retried, entries.len() - 1, "{rest}");
    let hooks = receiver.wait_for(before + entries.len()).await;
    let delivered: BTreeSet<(String, String)> = hooks[before..]
        .iter()
        .filter(|h| h.answered == 200)
        .map(|h| {
            let id = (h.header("mr-channel-id"), h.header("webhook-id"));
            (id.0.to_string(), id.1.to_string())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = entries
        .iter()
        .map(|e| (e[1].as_str().unwrap().into(), e[2].as_str().unwrap().into()))
        .collect();
    assert_eq!(delivered, expected, "each re-drive keeps its webhook-id");
    for channel in &channels {
        nodes.api(0).wait_for_status(channel, "delivered").await;
    }
    nodes
        .same_everywhere("/console/dlq?limit=100", |l| l["data"].clone())
        .await;
    nodes
        .wait_all("an empty DLQ", "/console/dlq", |l| l["data"] == json!([]))
        .await;
}

/// Runs the binary with `args` until it exits (at most `within`); returns its exit code
/// and everything it printed.
async fn run_eddy(args: &[String], within: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(args)
        .args(["--data".as_ref(), dir.path().as_os_str()])
        .args(["--api-key", KEY, "--listen", "127.0.0.1:0"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("eddy {args:?} did not exit within {within:?}"))
        .expect("eddy runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// A careless operator: `--cluster` with an HTTP URL or an empty server is refused before
/// anything starts (exit 2, `option cluster: …` saying what is wrong); `--cluster` naming a
/// server where nothing listens exits 1 saying that no server answered, and never says it
/// is listening. Nothing is served against a cluster that cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_wrong_or_unreachable_cluster() {
    let serve = |cluster: &str| vec!["serve".to_string(), "--cluster".into(), cluster.into()];
    let (code, text) = run_eddy(&serve("http://127.0.0.1:4222"), WAIT).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("option cluster"), "{text}");
    assert!(text.contains("nats://"), "names the scheme to use: {text}");
    assert!(!text.contains("listening on"), "{text}");
    let (code, text) = run_eddy(&serve("nats://127.0.0.1:4222,"), WAIT).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("option cluster"), "{text}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("nats://127.0.0.1:{port}");
    let (code, text) = run_eddy(&serve(&down), WAIT * 3).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&down), "names the servers it tried: {text}");
    assert!(!text.contains("listening on"), "{text}");
}

/// `eddy cluster check` against the servers of a running cluster of two nodes finds
/// nothing to fix, and the nodes go on serving: a request accepted before the check is
/// delivered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_check_against_running_nodes_finds_nothing_to_fix() {
    let nodes = Nodes::start(Nats::three().await, 2, &[]).await;
    let receiver = Receiver::start().await;
    nodes.seed(1, &receiver.url).await;
    let ticket = nodes
        .api(0)
        .send_async(seed_request("content_generator"))
        .await;
    let mut args = vec!["cluster".to_string(), "check".into()];
    args.extend(cluster_args(&nodes.nats));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(&args)
        .output()
        .await
        .expect("eddy cluster check runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("the NATS side is ready for eddy"), "{text}");
    let channel = ticket["channel_id"].as_str().unwrap();
    nodes.api(1).wait_for_status(channel, "delivered").await;
    receiver.wait_for(1).await;
}

/// Two installations on the same NATS servers, told apart by `--cluster-prefix`: each
/// keeps its own catalog and requests, neither sees the other's, and both deliver. A
/// prefix that cannot name a bucket is refused at start, naming the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_prefixes_on_one_nats_are_two_installations() {
    let blue = Nodes::start(Nats::three().await, 1, &["--cluster-prefix", "blue"]).await;
    let mut args = cluster_args(&blue.nats);
    args.extend(["--cluster-prefix".to_string(), "green".to_string()]);
    let green_dir = tempfile::tempdir().expect("temp dir");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (green_node, _log) =
        crate::support::Eddy::spawn_logged(green_dir.path(), "127.0.0.1:0", &args);
    let green = green_node.api();
    let receiver = Receiver::start().await;
    blue.seed(0, &receiver.url).await;
    let (status, body) = green.get("/console/workflow/content_generator").await;
    assert_eq!(status, 404, "green sees blue's workflow: {body}");

    let ticket = blue
        .api(0)
        .send_async(seed_request("content_generator"))
        .await;
    let channel = ticket["channel_id"].as_str().unwrap();
    let (status, body) = green.get(&format!("/console/requests/{channel}")).await;
    assert_eq!(status, 404, "green sees blue's request: {body}");
    green.event_workflow("content_generator", json!({})).await;
    green.register_webhook(&receiver.url).await;
    let mine = green.send_async(seed_request("content_generator")).await;
    let mine = mine["channel_id"].as_str().unwrap();
    green.wait_for_status(mine, "delivered").await;
    blue.api(0).wait_for_status(channel, "delivered").await;
    let (status, _) = blue.api(0).get(&format!("/console/requests/{mine}")).await;
    assert_eq!(status, 404, "blue sees green's request");
    let (_, log) = green.get("/console/requests?limit=100").await;
    assert_eq!(listing(&log, &["channel_id"]), json!([[mine]]), "{log:#}");

    let mut bad = vec!["serve".to_string()];
    bad.extend(cluster_args(&blue.nats));
    bad.extend(["--cluster-prefix".to_string(), "no.dots".to_string()]);
    let (code, text) = run_eddy(&bad, WAIT).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("cluster_prefix"), "{text}");
}
