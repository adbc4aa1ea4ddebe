//! Webhook delivery details (README, "Delivery and the dead-letter queue"): who receives a delivery, how it is signed across a
//! secret rotation, and how timeouts, redirects and `Retry-After` are treated.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::sign::{assert_signed, seed_signature, standard_signature};
use crate::support::{Api, Receiver, TestServer, WAIT, seed_request, start, start_with_receiver};

/// A standard (no `event_name`) testing workflow called `summarizer`.
async fn standard_workflow(server: &TestServer) {
    server
        .create_workflow(json!({
            "name": "summarizer", "provider": "openai", "model": "gpt-4o", "mode": "testing"
        }))
        .await;
}

/// The `(attempt, http_status, error)` of every webhook attempt on a request's timeline.
type Attempts = Vec<(u64, Option<u64>, Option<String>)>;

/// The [`Attempts`] on a request view's timeline.
fn attempts(view: &Value) -> Attempts {
    Api::steps(view, "webhook_attempt")
        .into_iter()
        .map(|s| {
            (
                s["attempt"].as_u64().unwrap(),
                s["http_status"].as_u64(),
                s["error"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Sends one request of a standard workflow delivering to `receiver` and waits until it
/// completes; returns its view and its webhook attempts.
async fn one_standard_request(server: &TestServer, receiver: &Receiver) -> (Value, Attempts) {
    standard_workflow(server).await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("summarizer")).await;
    let view = server
        .wait_for_status(ticket["channel_id"].as_str().unwrap(), "completed")
        .await;
    let attempts = attempts(&view);
    (view, attempts)
}

/// An endpoint receives a workflow's deliveries only if its `events` is empty or names the
/// workflow's `event_name`; each endpoint gets its own delivery and `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_receive_only_their_events() {
    let server = start(|_| {}).await;
    let (named, other, all) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    server.event_workflow("content_generator", json!({})).await;
    for (receiver, events) in [
        (&named, json!(["content_ready"])),
        (&other, json!(["review_complete"])),
        (&all, json!([])),
    ] {
        let (status, body) = server
            .post(
                "/console/webhooks",
                json!({"url": receiver.url, "events": events}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel = ticket["channel_id"].as_str().unwrap();
    let first = named.wait_for(1).await;
    let second = all.wait_for(1).await;
    assert_ne!(
        first[0].header("webhook-id"),
        second[0].header("webhook-id"),
        "each endpoint has its own delivery"
    );
    let view = server
        .wait_for_view(channel, "both deliveries delivered", |view| {
            view["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "delivered")
        })
        .await;
    assert_eq!(view["deliveries"].as_array().unwrap().len(), 2, "{view:#}");
    assert!(
        other.received().is_empty(),
        "review_complete endpoint got a delivery"
    );
}

/// `customer_data` is the request's metadata plus the workflow's `cache_fields`, keyed by
/// path, in the ticket, the webhook and the push alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_fields_join_customer_data() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    server
        .event_workflow(
            "content_generator",
            json!({"cache_fields": ["metadata.product_id", "messages.0.content", "metadata.absent"]}),
        )
        .await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let want = json!({
        "product_id": "prod_123",
        "category": "electronics",
        "metadata.product_id": "prod_123",
        "messages.0.content": "Generate a product description for wireless headphones"
    });
    assert_eq!(ticket["customer_data"], want);
    let hooks = receiver.wait_for(1).await;
    assert_eq!(hooks[0].json()["customer_data"], want);
    let mut socket = server.join(&ticket).await;
    assert_eq!(socket.next_push(WAIT).await["customer_data"], want);
}

/// After `rotate-secret`, deliveries carry two space-separated Standard Webhooks
/// signatures (new and old secret) during the grace period, and `mr-signature` uses the
/// new secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_signs_with_both() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    standard_workflow(&server).await;
    let (endpoint, old) = server.register_webhook(&receiver.url).await;
    let new = server.rotate_secret(&endpoint).await;
    assert_ne!(new, old);
    let ticket = server.send_async(seed_request("summarizer")).await;
    let hooks = receiver.wait_for(1).await;
    let hook = &hooks[0];
    let channel = ticket["channel_id"].as_str().unwrap();
    assert_signed(hook, Some(&endpoint), &new, channel);
    let (id, ts) = (hook.header("webhook-id"), hook.header("webhook-timestamp"));
    let signatures: Vec<&str> = hook.header("webhook-signature").split(' ').collect();
    assert_eq!(
        signatures,
        [
            standard_signature(&new, id, ts, &hook.body),
            standard_signature(&old, id, ts, &hook.body)
        ]
    );
    assert_eq!(
        hook.header("mr-signature"),
        seed_signature(&new, &hook.body)
    );
}

/// An attempt that outlives `--webhook-timeout` counts as failed (error `timeout`, no
/// status) and is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_times_out_and_is_retried() {
    let server = start(|c| c.webhook_timeout = Duration::from_millis(300)).await;
    let receiver = Receiver::start().await;
    receiver.script_delays(&[Duration::from_secs(3)]);
    let (view, attempts) = one_standard_request(&server, &receiver).await;
    assert_eq!(attempts.len(), 2, "{view:#}");
    assert_eq!(attempts[0].0, 1);
    assert_eq!(attempts[0].1, None, "{view:#}");
    assert!(
        attempts[0]
            .2
            .as_deref()
            .is_some_and(|e| e.contains("timeout")),
        "{view:#}"
    );
    assert_eq!(attempts[1], (2, Some(200), None));
}

/// A 3xx is not followed: the redirect target gets nothing, the attempt is a failure with
/// its status, and the delivery is retried at the registered URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    receiver.script(&[302]);
    receiver.add_response_header("location", &elsewhere.url);
    let (view, attempts) = one_standard_request(&server, &receiver).await;
    assert_eq!(attempts.len(), 2, "{view:#}");
    assert_eq!((attempts[0].0, attempts[0].1), (1, Some(302)));
    assert_eq!((attempts[1].0, attempts[1].1), (2, Some(200)));
    assert!(elsewhere.received().is_empty(), "the redirect was followed");
    assert_eq!(receiver.received().len(), 2);
}

/// `Retry-After` stretches the scheduled delay, but only within [delay, 2×delay]: with a
/// 400 ms step (320–480 ms after jitter) and `Retry-After: 5`, the retry comes after
/// 640–960 ms, never sooner than twice the jittered step and never the full 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_within_twice_the_delay() {
    let server = start(|c| {
        c.retry_schedule = vec![Duration::ZERO, Duration::from_millis(400)];
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.script(&[503]);
    receiver.add_response_header("retry-after", "5");
    standard_workflow(&server).await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("summarizer")).await;
    let hooks = receiver.wait_for(2).await;
    let gap = hooks[1].at - hooks[0].at;
    assert!(
        gap >= Duration::from_millis(600) && gap < Duration::from_millis(2500),
        "retried {gap:?} after a 503 with Retry-After: 5"
    );
    server
        .wait_for_status(ticket["channel_id"].as_str().unwrap(), "completed")
        .await;
}

/// A model that fails (here: a provider with no credentials) fails the request with
/// `ai_failed`, pushed to the browser; an event-driven workflow sends no webhook then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_failure_pushes_ai_failed() {
    let (server, receiver) = start_with_receiver(|_| {}).await;
    server
        .create_workflow(json!({
            "name": "live", "event_name": "content_ready",
            "provider": "openai", "model": "gpt-4o"
        }))
        .await;
    let ticket = server.send_async(seed_request("live")).await;
    let mut socket = server.join(&ticket).await;
    let error = socket.push_with_status("error").await;
    assert_eq!(error["error"]["code"], "ai_failed", "{error}");
    assert_eq!(error["customer_data"], ticket["customer_data"]);
    let view = server
        .wait_for_status(ticket["channel_id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(view["failure"], "ai_failed");
    let ai = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "ai_attempt")
        .cloned()
        .unwrap_or_else(|| panic!("no ai_attempt: {view:#}"));
    assert_eq!(ai["status"], "error");
    assert!(receiver.received().is_empty());
}

/// With the SSRF guard on (the default, no `--allow-private-webhooks`), loopback webhook
/// URLs are never called: refused when registered or given, or at the latest when
/// delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_webhook_urls_are_refused_by_default() {
    let server = start(|c| c.allow_private_webhooks = false).await;
    let receiver = Receiver::start().await;
    standard_workflow(&server).await;
    let port = receiver.url.split(':').nth(2).unwrap().to_string();
    let localhost = format!("http://localhost:{port}");
    let mut channels = Vec::new();
    for url in [receiver.url.clone(), localhost] {
        let (status, body) = server.post("/console/webhooks", json!({"url": url})).await;
        if status == 201 {
            let ticket = server.send_async(seed_request("summarizer")).await;
            channels.push(ticket["channel_id"].as_str().unwrap().to_string());
            let id = body["id"].as_str().unwrap();
            let (status, _) = delete(&server, &format!("/console/webhooks/{id}")).await;
            assert_eq!(status, 200);
        } else {
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["error"]["code"], "invalid_request");
        }
        let mut request = seed_request("summarizer");
        request["webhook_url"] = json!(url);
        let (status, body) = server.post("/v1/ai/async", request).await;
        match status {
            200 => channels.push(body["channel_id"].as_str().unwrap().to_string()),
            _ => assert_eq!(body["error"]["code"], "invalid_request", "{body}"),
        }
    }
    // Requests that were accepted must settle without the receiver hearing of them.
    for channel in &channels {
        let settled = |view: &Value| {
            view["status"] != "pending"
                && view["deliveries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["status"] != "pending")
        };
        server.wait_for_view(channel, "settled", settled).await;
    }
    let hit: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("mr-channel-id").to_string())
        .collect();
    assert!(
        hit.is_empty(),
        "a loopback webhook was called without --allow-private-webhooks"
    );
}

async fn delete(api: &Api, path: &str) -> (u16, Value) {
    let reply = api
        .call(reqwest::Method::DELETE, path, Some(&api.key), None, &[])
        .await;
    (reply.status, reply.json)
}

/// How many times the rotation races below are run.
const ROUNDS: usize = 100;

/// An endpoint for 40,000 events: copying it takes long enough that, before the fix, a
/// rotation's read and its write were often far enough apart for the races below.
async fn big_endpoint(server: &TestServer, url: &str) -> String {
    let mut events: Vec<String> = (0..10_000).map(|i| format!("e{i}")).collect();
    events.push("content_ready".into());
    let body = json!({"url": url, "events": events});
    let (status, body) = server.post("/console/webhooks", body).await;
    assert_eq!(status, 201, "{}", body["error"]);
    body["id"].as_str().unwrap().to_string()
}

/// Rotates the secret of `endpoint` with `n` requests at once; returns the new secrets.
async fn rotate_at_once(server: &TestServer, endpoint: &str, n: usize) -> Vec<String> {
    let path = format!("/console/webhooks/{endpoint}/rotate-secret");
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (api, path) = ((**server).clone(), path.clone());
            tokio::spawn(async move { api.post(&path, json!({})).await })
        })
        .collect();
    let mut secrets = Vec::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        secrets.push(body["secret"].as_str().unwrap().to_string());
    }
    secrets
}

/// Regression (issue 13): two rotations at once both read the endpoint before either
/// wrote, so the later write dropped the earlier one's new secret, which then never signed
/// anything although its caller had been told to use it. Now, round after round, both
/// secrets two concurrent rotations hand out sign the next delivery (one as the current
/// secret, the other as the previous one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_both_sign() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    server.event_workflow("content_generator", json!({})).await;
    let endpoint = big_endpoint(&server, &receiver.url).await;
    for round in 0..ROUNDS {
        let secrets = rotate_at_once(&server, &endpoint, 2).await;
        server.send_async(seed_request("content_generator")).await;
        let hook = receiver.wait_for(round + 1).await.swap_remove(round);
        let (id, ts) = (hook.header("webhook-id"), hook.header("webhook-timestamp"));
        let signatures: Vec<&str> = hook.header("webhook-signature").split(' ').collect();
        for secret in &secrets {
            let expected = standard_signature(secret, id, ts, &hook.body);
            assert!(
                signatures.contains(&expected.as_str()),
                "round {round}: a secret a rotation handed out does not sign"
            );
        }
    }
}

/// Regression (issue 13): a rotation read the endpoint, a delivery answered 410 Gone
/// disabled it, and the rotation wrote back what it had read: the endpoint was enabled
/// again. Now a disable made while rotations run stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_a_disable_made_meanwhile() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_status(410);
    server.event_workflow("content_generator", json!({})).await;
    let endpoint = big_endpoint(&server, &receiver.url).await;
    for trial in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let rotators: Vec<_> = (0..4)
            .map(|_| {
                let (api, stop) = ((*server).clone(), stop.clone());
                let path = format!("/console/webhooks/{endpoint}/rotate-secret");
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, body) = api.post(&path, json!({})).await;
                        assert_eq!(status, 200, "{body}");
                    }
                })
            })
            .collect();
        let ticket = server.send_async(seed_request("content_generator")).await;
        // Failed (webhook_exhausted) once the 410 is recorded, after the endpoint noted it.
        let channel = ticket["channel_id"].as_str().unwrap();
        server.wait_for_status(channel, "failed").await;
        stop.store(true, Ordering::Relaxed);
        for rotator in rotators {
            rotator.await.unwrap();
        }
        let (_, view) = server.get(&format!("/console/webhooks/{endpoint}")).await;
        assert_eq!(
            view["status"], "disabled",
            "trial {trial}: a rotation enabled the endpoint again"
        );
        let (status, view) = server
            .post(&format!("/console/webhooks/{endpoint}/enable"), json!({}))
            .await;
        assert_eq!(status, 200, "{}", view["error"]);
    }
}
