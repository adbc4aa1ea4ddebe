//! Isolation of endpoints: a dead endpoint holds a bounded number of attempts and never
//! delays deliveries to a healthy one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Receiver, seed_request, start};

/// A dead endpoint (every attempt hangs until the 3 s timeout) with 60 deliveries piled
/// on it first must not delay a healthy endpoint, even with only 16 requests worked on at
/// once: every healthy delivery arrives while the dead endpoint's first attempts are still
/// hanging, and the dead endpoint never has more than its lane's 4 first attempts in
/// flight. (Without per-endpoint lanes the healthy deliveries wait ~9 s here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_does_not_delay_healthy_ones() {
    const DEAD: usize = 60;
    const HEALTHY: usize = 20;
    let timeout = Duration::from_secs(3);
    let server = start(|c| {
        c.webhook_timeout = timeout;
        c.endpoint_concurrency = 4;
        c.max_inflight = 16;
        c.retry_schedule = vec![Duration::ZERO, Duration::from_secs(10)];
    })
    .await;
    let dead = Receiver::start().await;
    dead.script_delays(&[Duration::from_secs(30); DEAD * 2]);
    let healthy = Receiver::start().await;
    server
        .event_workflow("slow", json!({"event_name": "slow_ready"}))
        .await;
    server
        .event_workflow("fast", json!({"event_name": "fast_ready"}))
        .await;
    for (url, event) in [(&dead.url, "slow_ready"), (&healthy.url, "fast_ready")] {
        let (status, body) = server
            .post("/console/webhooks", json!({"url": url, "events": [event]}))
            .await;
        assert_eq!(status, 201, "{body}");
    }

    let piled = Instant::now();
    let mut sends = Vec::new();
    for _ in 0..DEAD {
        let api = (*server).clone();
        sends.push(tokio::spawn(async move {
            api.send_async(seed_request("slow")).await
        }));
    }
    for send in sends {
        send.await.unwrap();
    }
    dead.wait_for(1).await;
    let mut accepted_at = HashMap::new();
    for _ in 0..HEALTHY {
        let ticket = server.send_async(seed_request("fast")).await;
        accepted_at.insert(
            ticket["channel_id"].as_str().unwrap().to_string(),
            Instant::now(),
        );
    }
    let arrivals = healthy.wait_for(HEALTHY).await;
    let mut delays: Vec<Duration> = arrivals
        .iter()
        .map(|h| {
            h.at.saturating_duration_since(accepted_at[h.header("mr-channel-id")])
        })
        .collect();
    delays.sort();
    let last_healthy = arrivals.iter().map(|h| h.at).max().unwrap();
    eprintln!(
        "healthy deliveries with {DEAD} piled on a dead endpoint: p50 {:?}, max {:?}; \
         last one {:?} after the pile-up began",
        delays[HEALTHY / 2],
        delays[HEALTHY - 1],
        last_healthy - piled
    );
    assert!(
        last_healthy < piled + timeout,
        "healthy deliveries waited for the dead endpoint: last arrived {:?} after the pile-up",
        last_healthy - piled
    );
    let dead_in_flight = dead
        .received()
        .iter()
        .filter(|h| h.at < piled + timeout)
        .count();
    assert!(
        (1..=4).contains(&dead_in_flight),
        "{dead_in_flight} attempts in flight at the dead endpoint"
    );
}
