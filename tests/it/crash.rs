//! Durability across restarts: a graceful restart of the in-process server, and `kill -9`
//! of the real binary with hundreds of accepted requests whose webhooks could not be
//! delivered yet. Every accepted request must still be delivered, called back and
//! completed, and every delivery must keep its `webhook-id`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::support::{
    Callback, Eddy, KEY, Receiver, eventually, http_client, ok_if, poll, seed_request, start,
};

/// A graceful restart while a delivery is failing: the new server resumes the same
/// delivery (same `webhook-id`) and the request completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_graceful_restart() {
    let mut server = start(|c| c.retry_schedule = vec![Duration::from_millis(200); 20]).await;
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel = ticket["channel_id"].as_str().unwrap().to_string();
    receiver.wait_for(1).await;

    server.restart().await;
    receiver.call_back(&server.key, Callback::Enrich);
    receiver.set_status(200);
    let view = server.wait_for_status(&channel, "completed").await;
    let ids: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one delivery, one webhook-id: {ids:?}");
    assert_eq!(view["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(view["deliveries"][0]["status"], "delivered");
    let callbacks = receiver.wait_for_callbacks(1).await;
    assert_eq!(callbacks[0].status, 200, "{:?}", callbacks[0]);
}

/// Accepted means durable: 300 requests accepted 16 at a time while the backend is down,
/// then `kill -9` right after the 300th 200, with more requests in flight. After a restart on the same store, with the
/// backend up, every accepted request is delivered, called back and completed, and the
/// backend saw exactly one `webhook-id` per request (repeats allowed, sharing it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_accepted_request() {
    const REQUESTS: usize = 300;
    const CONCURRENCY: usize = 16;
    // Ten seconds of attempts: the backend stays down for all of them before the kill.
    let schedule = "0s,200ms,500ms,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s";
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::on(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    receiver.set_status(503);

    let mut eddy = Eddy::spawn(dir.path(), schedule);
    let api = eddy.api();
    api.event_workflow("content_generator", json!({})).await;
    api.register_webhook(&receiver.url).await;

    // Workers keep sending until the kill; a request counts as accepted once its 200 is
    // read, so the kill lands while other requests are in flight.
    let accepted = Arc::new(Mutex::new(Vec::with_capacity(REQUESTS + CONCURRENCY)));
    let enough = Arc::new(Notify::new());
    let body = serde_json::to_vec(&seed_request("content_generator")).unwrap();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (accepted, enough, body) = (accepted.clone(), enough.clone(), body.clone());
        let (url, http) = (format!("{}/v1/ai/async", api.base), http_client());
        workers.push(tokio::spawn(async move {
            loop {
                let sent = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let Ok(response) = sent else { break };
                let status = response.status().as_u16();
                let Ok(bytes) = response.bytes().await else {
                    break;
                };
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
                let ticket: Value = serde_json::from_slice(&bytes).expect("ticket");
                let mut accepted = accepted.lock().unwrap();
                accepted.push(ticket["channel_id"].as_str().unwrap().to_string());
                if accepted.len() == REQUESTS {
                    enough.notify_one();
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(30), enough.notified())
        .await
        .expect("300 requests accepted within 30 s");
    eddy.kill_9();
    for worker in workers {
        worker.await.expect("worker does not panic");
    }
    let accepted: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert!(accepted.len() >= REQUESTS);
    let before_kill = receiver.received().len();
    let total = accepted.len();
    eprintln!(
        "accepted {total} in {:?}; {before_kill} webhook attempts before the kill",
        started.elapsed()
    );

    receiver.call_back(KEY, Callback::Enrich);
    receiver.set_status(200);
    let eddy = Eddy::spawn(dir.path(), schedule);
    let api = eddy.api();

    // Every accepted request completes.
    let (Ok(completed) | Err(completed)) = poll(Duration::from_secs(45), async || {
        let (status, list) = api
            .get("/console/requests?status=completed&limit=1000")
            .await;
        assert_eq!(status, 200, "{list}");
        let completed: BTreeSet<String> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["channel_id"].as_str().unwrap().to_string())
            .collect();
        if completed.is_superset(&accepted) {
            Ok(completed)
        } else {
            Err(completed)
        }
    })
    .await;
    let missing: Vec<&String> = accepted.difference(&completed).collect();
    if !missing.is_empty() {
        let view = api.request(missing[0]).await;
        panic!(
            "{} of {total} accepted requests never completed; first: {view:#}",
            missing.len()
        );
    }
    // Requests killed between their commit and their 200 may exist too; nothing else does.
    assert!(
        completed.len() <= total + CONCURRENCY,
        "{} completed",
        completed.len()
    );

    // One webhook-id per request, and every request was delivered with a 2xx.
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut delivered = BTreeSet::new();
    for hook in receiver.received() {
        let channel = hook.header("mr-channel-id").to_string();
        assert_eq!(hook.json()["channel_id"], channel.as_str());
        if hook.answered == 200 {
            delivered.insert(channel.clone());
        }
        ids.entry(channel)
            .or_default()
            .insert(hook.header("webhook-id").to_string());
    }
    assert!(
        delivered.is_superset(&accepted),
        "every request was delivered"
    );
    for (channel, set) in &ids {
        assert_eq!(set.len(), 1, "request {channel} had webhook-ids {set:?}");
    }

    // Every request was called back successfully (repeats of a delivery may see 409).
    // The last answers may still be on their way back to the receiver.
    eventually("every request to be called back", async || {
        let called_back: BTreeSet<String> = receiver
            .callbacks()
            .iter()
            .filter(|c| c.status == 200)
            .map(|c| c.channel_id.clone())
            .collect();
        let seen = called_back.intersection(&accepted).count();
        ok_if(seen == total, format!("{seen} of {total} called back"))
    })
    .await;
    eprintln!("kill -9 test took {:?}", started.elapsed());
}

/// SIGTERM stops the binary with exit status 0, and the work it parked resumes on the next
/// start: a delivery failing at the time is delivered afterwards with the same
/// `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_parks_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    let schedule = "0s,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms";
    let mut eddy = Eddy::spawn(dir.path(), schedule);
    let api = eddy.api();
    api.event_workflow("content_generator", json!({})).await;
    api.register_webhook(&receiver.url).await;
    let ticket = api.send_async(seed_request("content_generator")).await;
    let channel = ticket["channel_id"].as_str().unwrap().to_string();
    receiver.wait_for(1).await;

    let pid = eddy.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = eventually("eddy to stop on SIGTERM", async || {
        eddy.child.try_wait().expect("wait").ok_or("still running")
    })
    .await;
    assert!(status.success(), "exit status {status}");

    receiver.call_back(KEY, Callback::Enrich);
    receiver.set_status(200);
    let eddy = Eddy::spawn(dir.path(), schedule);
    eddy.api().wait_for_status(&channel, "completed").await;
    let ids: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
}
