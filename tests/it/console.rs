//! The console API (README, "Observing"): the request log with its filters, workflow CRUD, API keys,
//! and secrets shown only once.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Api, Receiver, holding_workflow, message_request, seed_request, start};

async fn put(api: &Api, path: &str, body: Value) -> (u16, Value) {
    let reply = api
        .call(
            Method::PUT,
            path,
            Some(&api.key),
            Some(body.to_string().into_bytes()),
            &[],
        )
        .await;
    (reply.status, reply.json)
}

async fn delete(api: &Api, path: &str) -> (u16, Value) {
    let reply = api
        .call(Method::DELETE, path, Some(&api.key), None, &[])
        .await;
    (reply.status, reply.json)
}

fn channels(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| r["channel_id"].as_str().unwrap().to_string())
        .collect()
}

/// `GET /console/requests` lists newest first and filters by `status`, `workflow` and
/// `limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_filters_and_orders() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    server.event_workflow("content_generator", json!({})).await;
    server
        .create_workflow(json!({
            "name": "summarizer", "provider": "openai", "model": "gpt-4o", "mode": "testing"
        }))
        .await;
    server.register_webhook(&receiver.url).await;
    let mut sent = Vec::new();
    for workflow in ["content_generator", "summarizer", "content_generator"] {
        let ticket = server.send_async(seed_request(workflow)).await;
        sent.push(ticket["channel_id"].as_str().unwrap().to_string());
    }
    server.wait_for_status(&sent[0], "delivered").await;
    server.wait_for_status(&sent[1], "completed").await;
    server.wait_for_status(&sent[2], "delivered").await;

    let (status, all) = server.get("/console/requests").await;
    assert_eq!(status, 200, "{all}");
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();
    assert_eq!(channels(&all), newest_first);
    let summary = &all["data"][1];
    assert_eq!(summary["workflow"], "summarizer");
    assert_eq!(summary["status"], "completed");

    let (_, limited) = server.get("/console/requests?limit=2").await;
    assert_eq!(channels(&limited), newest_first[..2]);
    let (_, by_workflow) = server
        .get("/console/requests?workflow=content_generator")
        .await;
    assert_eq!(channels(&by_workflow), [sent[2].clone(), sent[0].clone()]);
    let (_, by_status) = server.get("/console/requests?status=completed").await;
    assert_eq!(channels(&by_status), [sent[1].clone()]);
    let (_, none) = server.get("/console/requests?status=failed").await;
    assert_eq!(none["data"], json!([]));
}

/// Workflows can be listed, read, replaced and deleted; a deleted workflow is
/// `workflow_not_found` for new requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_crud() {
    let server = start(|_| {}).await;
    server
        .create_workflow(json!({
            "name": "summarizer", "provider": "openai", "model": "gpt-4o", "mode": "testing",
            "description": "first"
        }))
        .await;
    let (status, list) = server.get("/console/workflow").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["name"], "summarizer");
    let (status, one) = server.get("/console/workflow/summarizer").await;
    assert_eq!(status, 200);
    assert_eq!(one["description"], "first");
    assert_eq!(one["mode"], "testing");

    let (status, replaced) = put(
        &server,
        "/console/workflow/summarizer",
        json!({"provider": "anthropic", "model": "claude", "mode": "testing", "description": "second"}),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    let (_, one) = server.get("/console/workflow/summarizer").await;
    assert_eq!(
        (&one["provider"], &one["description"]),
        (&json!("anthropic"), &json!("second"))
    );
    let (status, missing) = put(
        &server,
        "/console/workflow/nope",
        json!({"provider": "openai", "model": "gpt-4o"}),
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "workflow_not_found");

    let (status, _) = delete(&server, "/console/workflow/summarizer").await;
    assert_eq!(status, 200);
    let (status, gone) = server
        .post("/v1/ai/async", seed_request("summarizer"))
        .await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["code"], "workflow_not_found");
    let (status, _) = delete(&server, "/console/workflow/summarizer").await;
    assert_eq!(status, 404);
}

/// A new API key is shown once, works at once, is masked in the list, and stops working
/// when deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_shown_once_and_revocable() {
    let server = start(|_| {}).await;
    let (status, created) = server.post("/console/keys", json!({"name": "ci"})).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("mr_live_") && key.len() >= 8 + 32, "{key}");

    let as_new = Api {
        key: key.clone(),
        ..(*server).clone()
    };
    let (status, _) = as_new.get("/console/requests").await;
    assert_eq!(status, 200);
    let (_, list) = server.get("/console/keys").await;
    let listed = list.to_string();
    assert!(!listed.contains(&key), "a key is listed in full: {listed}");
    assert!(
        !listed.contains(&server.key),
        "the bootstrap key is listed in full"
    );

    let (status, _) = delete(&server, &format!("/console/keys/{id}")).await;
    assert_eq!(status, 200);
    let (status, error) = as_new.get("/console/requests").await;
    assert_eq!(status, 401, "{error}");
}

/// A webhook secret is shown on creation only; listing and reading an endpoint never show
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secret_is_shown_once() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    let (id, secret) = server.register_webhook(&receiver.url).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(id.starts_with("wh_"), "{id}");
    let (_, list) = server.get("/console/webhooks").await;
    let (status, one) = server.get(&format!("/console/webhooks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["url"], receiver.url);
    for shown in [list.to_string(), one.to_string()] {
        assert!(!shown.contains(&secret), "secret shown again: {shown}");
    }
}

/// `VmRSS` or `VmHWM` of process `pid`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The request list reads only what it shows: with 60 stored requests of about 900 KB,
/// four concurrent `GET /console/requests?limit=1000`, three times over, raise the
/// server's peak RSS by less than 32 MiB, and show every request. (On 22a75b8 each call
/// decoded every whole record: the peak rose by hundreds of MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_big_requests_reads_only_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let eddy = crate::support::Eddy::spawn(dir.path(), "0s");
    let api = eddy.api();
    api.create_workflow(holding_workflow("w")).await;
    let big = "x".repeat(900_000);
    for _ in 0..60 {
        api.send_async(message_request("w", &big)).await;
    }
    let pid = eddy.child.id();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("peak RSS resets");
    let before = status_kib(pid, "VmRSS:");
    for _ in 0..3 {
        let lists: Vec<_> = (0..4)
            .map(|_| {
                let api = api.clone();
                tokio::spawn(async move { api.get("/console/requests?limit=1000").await })
            })
            .collect();
        for list in lists {
            let (status, list) = list.await.unwrap();
            assert_eq!(status, 200, "{list}");
            assert_eq!(list["data"].as_array().unwrap().len(), 60);
        }
    }
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) >> 10;
    eprintln!("peak RSS growth while listing: {growth_mib} MiB");
    assert!(
        growth_mib < 32,
        "listing raised the peak RSS by {growth_mib} MiB"
    );
}
