//! The dead-letter queue as operators use it: inspect, re-drive one entry or a range, purge,
//! retention across restarts, endpoint disabling (410 Gone, failing too long) and
//! re-enabling, and the `eddy dlq` command against a live server.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Api, Callback, KEY, Receiver, eventually, ok_if, seed_request, start};

/// Sends one request to an event-driven workflow whose only endpoint always fails, and
/// waits until its delivery is dead-lettered; returns `(channel_id, dlq entry)`.
pub(crate) async fn dead_letter(server: &Api, workflow: &str) -> (String, Value) {
    let ticket = server.send_async(seed_request(workflow)).await;
    let channel = ticket["channel_id"].as_str().unwrap().to_string();
    server.wait_for_status(&channel, "failed").await;
    let (status, list) = server.get("/console/dlq?limit=1000").await;
    assert_eq!(status, 200, "{list}");
    let entry = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["channel_id"] == channel.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no dead letter for {channel}: {list:#}"));
    (channel, entry)
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// A re-driven dead letter re-enters the flow with the same `webhook-id`: delivered,
/// called back, completed, with "retried" on the timeline, and it leaves the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_entry_reenters_the_flow() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let (channel, entry) = dead_letter(&server, "content_generator").await;
    let id = entry["id"].as_str().unwrap();

    let (status, shown) = server.get(&format!("/console/dlq/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["request"]["status"], "failed");
    assert_eq!(shown["request"]["failure"], "webhook_exhausted");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(shown["payload"]["type"], "task.ai_generated");
    let first_id = receiver.received()[0].header("webhook-id").to_string();
    assert_eq!(shown["webhook_id"], first_id.as_str());

    receiver.set_status(200);
    receiver.call_back(KEY, Callback::Enrich);
    let ticket = server
        .post("/v1/ai/reconnect", json!({"channel_id": channel}))
        .await
        .1;
    let mut socket = server.join(&ticket).await;
    assert_eq!(
        socket.push_with_status("error").await["error"]["code"],
        "webhook_exhausted"
    );
    let (status, retried) = server
        .post(&format!("/console/dlq/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["channel_id"], channel.as_str());

    let completed = socket.push_with_status("completed").await;
    assert_eq!(completed["data"]["slug"], "prosound-x1-wireless-headphones");
    let view = server.wait_for_status(&channel, "completed").await;
    let types = Api::timeline_types(&view);
    assert!(types.contains(&"retried".to_string()), "{types:?}");
    let hooks = receiver.received();
    assert_eq!(hooks.len(), 4, "3 failed attempts and the retried one");
    assert!(hooks.iter().all(|h| h.header("webhook-id") == first_id));

    let (_, list) = server.get("/console/dlq").await;
    assert!(ids(&list).is_empty(), "{list:#}");
    let (status, gone) = server.get(&format!("/console/dlq/{id}")).await;
    assert_eq!(
        (status, gone["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (status, again) = server
        .post(&format!("/console/dlq/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 404, "{again}");
}

/// A range retry takes only the entries in the time range and of the endpoint asked for;
/// the others stay in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_retry_by_time_and_endpoint() {
    let server = start(|_| {}).await;
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    a.set_status(500);
    b.set_status(500);
    server.event_workflow("content_generator", json!({})).await;
    let (endpoint_a, _) = server.register_webhook(&a.url).await;
    let (endpoint_b, _) = server.register_webhook(&b.url).await;
    for _ in 0..3 {
        let ticket = server.send_async(seed_request("content_generator")).await;
        server
            .wait_for_status(ticket["channel_id"].as_str().unwrap(), "failed")
            .await;
    }
    let (_, list) = server.get("/console/dlq").await;
    assert_eq!(ids(&list).len(), 6, "{list:#}");

    let (status, none) = server
        .post(
            "/console/dlq/retry",
            json!({"since": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["retried"], json!([]));

    a.set_status(200);
    let (status, report) = server
        .post(
            "/console/dlq/retry",
            json!({"since": 0, "until": "2999-01-01T00:00:00.000Z", "webhook_id": endpoint_a}),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["retried"].as_array().unwrap().len(), 3, "{report}");
    a.wait_for(9 + 3).await;
    let (_, rest) = server.get("/console/dlq").await;
    let left: BTreeSet<String> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, BTreeSet::from([endpoint_b.clone()]), "{rest:#}");
    assert_eq!(ids(&rest).len(), 3);

    let (status, bad) = server
        .post("/console/dlq/retry", json!({"since": "yesterday"}))
        .await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("since:")
    );
}

/// The queue pages newest first with `before`; purging removes one entry; unknown ids
/// are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_and_purge() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let mut channels = Vec::new();
    for _ in 0..5 {
        channels.push(dead_letter(&server, "content_generator").await.0);
    }
    let (_, first) = server.get("/console/dlq?limit=2").await;
    let page1 = ids(&first);
    assert_eq!(page1.len(), 2);
    assert_eq!(
        first["data"][0]["channel_id"],
        channels[4].as_str(),
        "newest first"
    );
    let before = first["next_before"].as_str().unwrap();
    let (_, second) = server
        .get(&format!("/console/dlq?limit=10&before={before}"))
        .await;
    let page2 = ids(&second);
    assert_eq!(page2.len(), 3);
    assert!(page2.iter().all(|id| !page1.contains(id)));
    assert_eq!(second["next_before"], Value::Null);

    let (status, purged) = server.delete(&format!("/console/dlq/{}", page1[0])).await;
    assert_eq!(status, 200, "{purged}");
    let (_, after) = server.get("/console/dlq?limit=10").await;
    assert_eq!(ids(&after).len(), 4);
    for bad in ["dlq_00", "nope", &page1[0]] {
        let (status, body) = server.get(&format!("/console/dlq/{bad}")).await;
        assert_eq!(status, 404, "{bad}: {body}");
    }
}

/// Dead letters survive a restart, and the sweeper purges them once they are older than
/// the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_restarts_until_retention() {
    let mut server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let (_, entry) = dead_letter(&server, "content_generator").await;

    server.restart().await;
    let (_, list) = server.get("/console/dlq").await;
    assert_eq!(ids(&list), vec![entry["id"].as_str().unwrap().to_string()]);

    server
        .restart_with(|c| c.dlq_retention = Duration::from_millis(1))
        .await;
    eventually("the expired dead letter to be purged", async || {
        let (_, list) = server.get("/console/dlq").await;
        ok_if(ids(&list).is_empty(), list)
    })
    .await;
}

/// `410 Gone` disables the endpoint at once: the delivery is dead-lettered with that
/// reason, later deliveries to it are dead-lettered without being sent, a retry is refused
/// while it is disabled, and after one call to re-enable it the retry is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_until_enabled() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_status(410);
    server.event_workflow("content_generator", json!({})).await;
    let (endpoint, _) = server.register_webhook(&receiver.url).await;
    let (_, first) = dead_letter(&server, "content_generator").await;
    assert!(first["reason"].as_str().unwrap().contains("410"), "{first}");
    assert_eq!(
        first["attempts"].as_array().unwrap().len(),
        1,
        "410 is not retried"
    );

    let (_, hooks) = server.get("/console/webhooks").await;
    assert_eq!(hooks["data"][0]["status"], "disabled", "{hooks}");
    assert!(
        hooks["data"][0]["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410")
    );

    let (_, second) = dead_letter(&server, "content_generator").await;
    assert!(
        second["reason"].as_str().unwrap().contains("disabled"),
        "{second}"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "a disabled endpoint is not called"
    );

    let id = second["id"].as_str().unwrap();
    let (status, refused) = server
        .post(&format!("/console/dlq/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");

    receiver.set_status(200);
    let (status, enabled) = server
        .post(&format!("/console/webhooks/{endpoint}/enable"), json!({}))
        .await;
    assert_eq!(status, 200, "{enabled}");
    assert_eq!(enabled["status"], "enabled");
    let (status, retried) = server
        .post(&format!("/console/dlq/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{retried}");
    server
        .wait_for_status(second["channel_id"].as_str().unwrap(), "delivered")
        .await;
}

/// An endpoint whose every delivery has failed for longer than the configured period is
/// disabled, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failing_too_long_is_disabled() {
    let server = start(|c| {
        c.endpoint_disable_after = Duration::from_millis(300);
        c.retry_schedule = vec![Duration::from_millis(150); 8];
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let (_, entry) = dead_letter(&server, "content_generator").await;
    assert!(
        entry["reason"].as_str().unwrap().contains("disabled"),
        "{entry}"
    );
    let (_, hooks) = server.get("/console/webhooks").await;
    let hook = &hooks["data"][0];
    assert_eq!(hook["status"], "disabled", "{hook}");
    assert!(
        hook["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("every delivery failed"),
        "{hook}"
    );
    let attempts = receiver.received().len();
    assert!(
        (2..8).contains(&attempts),
        "{attempts} attempts before disabling"
    );
}

/// After a 429 the next attempt waits at least the throttle delay, however short the
/// schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_waits_the_throttle_delay() {
    let server = start(|c| c.webhook_throttle_delay = Duration::from_millis(700)).await;
    let receiver = Receiver::start().await;
    receiver.script(&[429]);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    server.send_async(seed_request("content_generator")).await;
    let hooks = receiver.wait_for(2).await;
    let gap = hooks[1].at - hooks[0].at;
    assert!(gap >= Duration::from_millis(690), "retried after {gap:?}");
}

/// An `Idempotency-Key` keeps returning the first request after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_survives_restart() {
    let mut server = start(|_| {}).await;
    server.event_workflow("content_generator", json!({})).await;
    let receiver = Receiver::start().await;
    server.register_webhook(&receiver.url).await;
    let body = seed_request("content_generator");
    let send = |api: &Api| {
        let api = api.clone();
        let body = serde_json::to_vec(&body).unwrap();
        async move {
            api.call(
                reqwest::Method::POST,
                "/v1/ai/async",
                Some(KEY),
                Some(body),
                &[("idempotency-key", "order-42")],
            )
            .await
        }
    };
    let first = send(&server).await;
    server.restart().await;
    let again = send(&server).await;
    assert_eq!((first.status, again.status), (200, 200));
    assert_eq!(first.json["channel_id"], again.json["channel_id"]);
    let (_, list) = server.get("/console/requests").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

/// `eddy dlq list|show|retry|purge` work as a process against a live server, as tables
/// and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_command_line() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let (channel, first) = dead_letter(&server, "content_generator").await;
    let (_, second) = dead_letter(&server, "content_generator").await;
    let (first, second) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );

    let base = server.base.clone();
    let eddy = move |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args(args)
            .env("EDDY_URL", &base)
            .env("EDDY_API_KEY", KEY)
            .output()
            .expect("eddy runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |args: Vec<String>| {
        let eddy = eddy.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                eddy(&args)
            })
            .await
            .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (code, table, err) = run(args(&["dlq", "list"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(first) && table.contains(second), "{table}");

    let (code, json_out, _) = run(args(&["dlq", "list", "--json"])).await;
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&json_out).expect("--json prints JSON");
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);

    let (code, shown, _) = run(args(&["dlq", "show", first])).await;
    assert_eq!(code, Some(0));
    assert!(
        shown.contains(&channel) && shown.contains("payload:"),
        "{shown}"
    );

    receiver.set_status(200);
    let (code, out, err) = run(args(&["dlq", "retry", first])).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("retried"), "{out}");
    server.wait_for_status(&channel, "delivered").await;

    let (code, out, _) = run(args(&["dlq", "purge", second])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(second));
    let (code, _, err) = run(args(&["dlq", "show", second])).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");

    let (code, _, err) = tokio::task::spawn_blocking(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args(["dlq", "list", "--url", "http://127.0.0.1:1"])
            .env_remove("EDDY_API_KEY")
            .output()
            .expect("eddy runs");
        (
            out.status.code(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("API key"), "{err}");
}
