//! The crash loop: the real binary killed with `kill -9` ten times while deliveries,
//! retries and callbacks are in flight. Nothing accepted is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use crate::support::{Callback, Eddy, KEY, Receiver, WAIT, poll, seed_request};

/// Ten rounds of: start the binary on the same store and port, accept 20 requests while a
/// flaky backend (40% 500s) is being delivered to and calling back, then `kill -9` at a
/// random moment. After a last start, every accepted request is completed, and every
/// request's deliveries at the backend share one `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_kills_lose_nothing() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 20;
    let started = Instant::now();
    let schedule = [
        "0s", "100ms", "200ms", "300ms", "400ms", "500ms", "500ms", "500ms", "500ms", "500ms",
        "500ms", "500ms", "500ms", "500ms", "500ms", "500ms", "500ms", "500ms", "500ms", "500ms",
    ]
    .join(",");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start().await;
    let script: Vec<u16> = {
        let mut rng = rand::rng();
        (0..2000)
            .map(|_| if rng.random_bool(0.4) { 500 } else { 200 })
            .collect()
    };
    receiver.script(&script);
    receiver.call_back(KEY, Callback::Enrich);

    let mut accepted = BTreeSet::new();
    for round in 0..ROUNDS {
        let mut eddy = Eddy::spawn_on(dir.path(), &listen, &schedule);
        let api = eddy.api();
        if round == 0 {
            api.event_workflow("content_generator", json!({})).await;
            api.register_webhook(&receiver.url).await;
        }
        let mut sends = Vec::new();
        for _ in 0..PER_ROUND {
            let api = api.clone();
            sends.push(tokio::spawn(async move {
                api.send_async(seed_request("content_generator")).await
            }));
        }
        for send in sends {
            let ticket = send.await.expect("every request of a round is accepted");
            accepted.insert(ticket["channel_id"].as_str().unwrap().to_string());
        }
        let pause = rand::rng().random_range(20..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        eddy.kill_9();
    }
    let in_flight_at_kills = receiver.received().len();

    let eddy = Eddy::spawn_on(dir.path(), &listen, &schedule);
    let api = eddy.api();
    let (Ok(states) | Err(states)) = poll(WAIT * 2, async || {
        let (status, list) = api.get("/console/requests?limit=1000").await;
        assert_eq!(status, 200, "{list}");
        let states: BTreeMap<String, String> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["channel_id"].as_str().unwrap().to_string(),
                    r["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let done = accepted.iter().all(|c| {
            states
                .get(c)
                .is_some_and(|s| s == "completed" || s == "failed")
        });
        if done { Ok(states) } else { Err(states) }
    })
    .await;
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|c| !states.contains_key(*c))
        .collect();
    assert!(lost.is_empty(), "accepted but lost: {lost:?}");
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &accepted {
        *tally.entry(states[c].as_str()).or_default() += 1;
    }
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for hook in receiver.received() {
        ids.entry(hook.header("mr-channel-id").to_string())
            .or_default()
            .insert(hook.header("webhook-id").to_string());
    }
    let attempts = receiver.received().len();
    let callbacks = receiver.callbacks();
    let conflicts = callbacks.iter().filter(|c| c.status == 409).count();
    eprintln!(
        "crash loop: {ROUNDS} kills, {} accepted, final states {tally:?}, {attempts} webhook \
         attempts ({in_flight_at_kills} before the last start), {} callbacks ({conflicts} \
         answered 409 as repeats), {:?}",
        accepted.len(),
        callbacks.len(),
        started.elapsed()
    );
    assert_eq!(
        tally.get("completed").copied().unwrap_or(0),
        accepted.len(),
        "every accepted request completes: {tally:?}"
    );
    for (channel, set) in &ids {
        assert_eq!(
            set.len(),
            1,
            "request {channel} was delivered with ids {set:?}"
        );
    }
}
