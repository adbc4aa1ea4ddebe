//! The SSRF guard at each place a tenant can point eddy: a webhook endpoint, a request's
//! own `webhook_url`, a provider's `base_url`, and the connection itself.

use serde_json::{Value, json};

use crate::support::provider::{FakeProvider, Wire};
use crate::support::{Receiver, seed_request, start};

/// IPv4 addresses of metadata and loopback in IPv6 spellings the guard once let through
/// (SIIT, `::ffff:0:a.b.c.d`), and the other embedding forms.
const HIDDEN: [&str; 5] = [
    "[::ffff:0:a9fe:a9fe]",
    "[::ffff:0:7f00:1]",
    "[64:ff9b::a9fe:a9fe]",
    "[2002:7f00:1::]",
    "[::ffff:127.0.0.1]",
];

fn refused(status: u16, body: &Value) -> String {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

/// Regression: `http://[::ffff:0:a9fe:a9fe]/` and `http://[::ffff:0:7f00:1]/` were
/// accepted as webhook URLs, request `webhook_url`s and provider `base_url`s. Each such
/// spelling is now refused at all three, and the message names the form and the address
/// inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_hidden_in_ipv6_is_refused_everywhere() {
    let server = start(|c| c.allow_private_webhooks = false).await;
    server.event_workflow("content_generator", json!({})).await;
    for host in HIDDEN {
        let url = format!("http://{host}:8080/hook");
        let (status, body) = server.post("/console/webhooks", json!({"url": url})).await;
        let message = refused(status, &body);
        assert!(message.contains("not a public address"), "{message}");
        assert!(message.contains(" form of "), "{message}");

        let mut request = seed_request("content_generator");
        request["webhook_url"] = json!(url);
        let (status, body) = server.post("/v1/ai/async", request).await;
        refused(status, &body);

        let (status, body) = server
            .post(
                "/console/providers",
                json!({"provider": "local", "base_url": format!("http://{host}:8080/v1")}),
            )
            .await;
        refused(status, &body);
    }
    let (_, list) = server.get("/console/requests").await;
    assert_eq!(list["data"], json!([]), "nothing accepted");
}

/// A webhook and a provider registered while private addresses were allowed, behind a SIIT
/// spelling of loopback, are never connected to once the guard is on: the delivery is
/// dead-lettered at its first attempt and the model call fails, both saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_holds_at_connect_time() {
    let mut server = start(|c| {
        c.allow_private_webhooks = true;
        c.allow_private_providers = true;
    })
    .await;
    let receiver = Receiver::start().await;
    let fake = FakeProvider::start(Wire::OpenAi).await;
    let port = |url: &str| {
        url.split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let hook = format!("http://[::ffff:0:7f00:1]:{}/hook", port(&receiver.url));
    let base = format!("http://[::ffff:0:7f00:1]:{}/v1", port(&fake.base_url));
    server.event_workflow("content_generator", json!({})).await;
    let (status, body) = server.post("/console/webhooks", json!({"url": hook})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/console/providers",
            json!({"provider": "local", "api_key": "sk-local", "base_url": base}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    server
        .create_workflow(json!({"name": "chat", "provider": "local", "model": "m"}))
        .await;
    server
        .restart_with(|c| {
            c.allow_private_webhooks = false;
            c.allow_private_providers = false;
        })
        .await;

    let ticket = server.send_async(seed_request("content_generator")).await;
    let view = server
        .wait_for_status(ticket["channel_id"].as_str().unwrap(), "failed")
        .await;
    let attempts: Vec<&Value> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] == "webhook_attempt")
        .collect();
    assert_eq!(attempts.len(), 1, "no retries: {view:#}");
    let error = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("blocked by the SSRF guard"), "{error}");
    assert!(error.contains("SIIT"), "{error}");

    let (status, body) = server
        .post(
            "/v1/ai",
            json!({"workflow": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("blocked by the SSRF guard"), "{message}");
    assert!(receiver.received().is_empty(), "the receiver was reached");
    assert!(fake.seen().is_empty(), "the provider was reached");
}
