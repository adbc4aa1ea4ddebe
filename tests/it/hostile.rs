//! Hostile input and other tenants: malformed, deep, non-UTF-8 and oversized input;
//! projects that cannot see each other; keys that expire or are revoked at once; rate
//! limits, connection and socket caps, slow clients; huge upstream answers; a full disk.
//! Every refusal is the JSON envelope with the right status, and the server stays up.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{addr, exchange};
use crate::support::{
    Api, KEY, Receiver, WAIT, eventually, http_client, ok_if, seed_request, start,
};

async fn healthy(api: &Api) {
    let (status, body) = api.get("/healthz").await;
    assert_eq!(status, 200, "server is up: {body}");
}

/// Deeply nested JSON, bytes that are not UTF-8, JSON with trailing data and huge headers
/// are refused with 4xx (the envelope where eddy answers) and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused() {
    let server = start(|_| {}).await;
    server
        .create_workflow(json!({"name": "w", "provider": "testing", "model": "m"}))
        .await;
    let deep = format!(
        r#"{{"workflow":"w","messages":[{{"role":"user","content":"x"}}],"metadata":{{"a":{}1{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (deep.into_bytes(), "not valid JSON"),
        (b"{\"workflow\":\"w\xff\xfe\"}".to_vec(), "UTF-8"),
        (
            br#"{"workflow":"w","messages":[{"role":"user","content":"x"}]} {}"#.to_vec(),
            "trailing",
        ),
        (br#"[1,2,3]"#.to_vec(), "must be a JSON object"),
        (b"".to_vec(), "empty"),
    ];
    for (body, needle) in cases {
        let reply = server
            .call(
                reqwest::Method::POST,
                "/v1/ai/async",
                Some(KEY),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(reply.status, 400, "{}", reply.json);
        assert_eq!(reply.json["error"]["code"], "invalid_request");
        let message = reply.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{needle}: {message}");
    }

    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let answer = exchange(&server, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.100}");
    let (_, list) = server.get("/console/requests").await;
    assert_eq!(list["data"], json!([]), "nothing stored");
    healthy(&server).await;
}

/// Projects made with the admin token see only their own resources: another project's
/// workflow, request, webhook and dead letter are 404, and its key cannot call back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_never_see_each_other() {
    let server = start(|c| c.admin_token = Some("admin-token-0123456789".into())).await;
    let admin = |path: &str, body: Option<Value>| {
        let http = http_client();
        let url = format!("{}{path}", server.base);
        async move {
            let request = match body {
                Some(b) => http.post(url).json(&b),
                None => http.get(url),
            };
            let response = request
                .bearer_auth("admin-token-0123456789")
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, a) = admin("/admin/projects", Some(json!({"name": "alpha"}))).await;
    assert_eq!(status, 201, "{a}");
    let (_, b) = admin("/admin/projects", Some(json!({"name": "beta"}))).await;
    let (status, dup) = admin("/admin/projects", Some(json!({"name": "beta"}))).await;
    assert_eq!(status, 409, "{dup}");
    let (_, listed) = admin("/admin/projects", None).await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        3,
        "default, alpha, beta"
    );
    let wrong = http_client()
        .get(format!("{}/admin/projects", server.base))
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let as_project = |key: &Value| Api {
        base: server.base.clone(),
        key: key.as_str().unwrap().to_string(),
        http: http_client(),
    };
    let (alpha, beta) = (as_project(&a["api_key"]), as_project(&b["api_key"]));
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    alpha.event_workflow("content_generator", json!({})).await;
    let (endpoint, _) = alpha.register_webhook(&receiver.url).await;
    let ticket = alpha.send_async(seed_request("content_generator")).await;
    let channel = ticket["channel_id"].as_str().unwrap().to_string();
    alpha.wait_for_status(&channel, "failed").await;
    let (_, dlq) = alpha.get("/console/dlq").await;
    let dead = dlq["data"][0]["id"].as_str().unwrap().to_string();

    for path in [
        "/console/workflow/content_generator".to_string(),
        format!("/console/requests/{channel}"),
        format!("/console/webhooks/{endpoint}"),
        format!("/console/dlq/{dead}"),
    ] {
        let (status, body) = beta.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = beta
        .post(&format!("/v1/callback/{channel}"), json!({"data": {}}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = beta
        .post("/v1/ai/reconnect", json!({"channel_id": channel}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = beta
        .post(&format!("/console/dlq/{dead}/retry"), json!({}))
        .await;
    assert_eq!(status, 404);
    let (_, mine) = beta.get("/console/requests").await;
    assert_eq!(mine["data"], json!([]));
    let (status, _) = beta.send_raw_async("content_generator").await;
    assert_eq!(status, 404, "beta has no such workflow");
}

impl Api {
    async fn send_raw_async(&self, workflow: &str) -> (u16, Value) {
        self.post("/v1/ai/async", seed_request(workflow)).await
    }
}

/// A revoked key is refused at once, and a key stops working at its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_keys_stop_at_once() {
    let server = start(|_| {}).await;
    let (_, revocable) = server.post("/console/keys", json!({"name": "ci"})).await;
    let (_, expiring) = server
        .post(
            "/console/keys",
            json!({"expires_at": eddy::clock::now_ms() + 700}),
        )
        .await;
    let with = |key: &Value| Api {
        base: server.base.clone(),
        key: key["key"].as_str().unwrap().to_string(),
        http: http_client(),
    };
    let (a, b) = (with(&revocable), with(&expiring));
    assert_eq!(a.get("/console/workflow").await.0, 200);
    assert_eq!(b.get("/console/workflow").await.0, 200);

    let id = revocable["id"].as_str().unwrap();
    assert_eq!(server.delete(&format!("/console/keys/{id}")).await.0, 200);
    let (status, body) = a.get("/console/workflow").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("invalid_api_key"))
    );

    eventually("the short-lived key to expire", async || {
        let (status, body) = b.get("/console/workflow").await;
        ok_if(status != 200, body)
    })
    .await;
    assert_eq!(b.get("/console/workflow").await.0, 401);
    let (status, _) = server
        .post(
            "/console/keys",
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 400);
}

/// Regression: a key that expired in a day could create keys that never expire and revoke
/// every other key. A key cannot create a key that outlives it (without an expiry the new
/// key expires with it; a later one is refused) nor revoke one (403); it may revoke keys
/// that expire no later than itself, itself included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cannot_outlive_or_revoke_longer_lived_keys() {
    let server = start(|_| {}).await;
    let (status, short) = server
        .post("/console/keys", json!({"name": "ci", "expires_in_days": 1}))
        .await;
    assert_eq!(status, 201, "{short}");
    let ci = Api {
        base: server.base.clone(),
        key: short["key"].as_str().unwrap().to_string(),
        http: http_client(),
    };

    let (status, child) = ci.post("/console/keys", json!({"name": "child"})).await;
    assert_eq!(status, 201, "{child}");
    assert_eq!(
        child["expires_at"], short["expires_at"],
        "expires with its maker"
    );
    for longer in [
        json!({"expires_in_days": 2}),
        json!({"expires_at": eddy::clock::now_ms() + 3 * 24 * 3600 * 1000}),
    ] {
        let (status, body) = ci.post("/console/keys", longer.clone()).await;
        assert_eq!(status, 400, "{longer}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("outlive"), "{message}");
    }
    let sooner = json!({"expires_at": eddy::clock::now_ms() + 3_600_000});
    assert_eq!(ci.post("/console/keys", sooner).await.0, 201);

    let (_, keys) = server.get("/console/keys").await;
    let id_of = |name: &str| {
        keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (status, body) = ci
        .delete(&format!("/console/keys/{}", id_of("bootstrap")))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(server.get("/console/workflow").await.0, 200, "still valid");
    let (status, _) = ci
        .delete(&format!("/console/keys/{}", id_of("child")))
        .await;
    assert_eq!(status, 200);
    let (status, _) = ci.delete(&format!("/console/keys/{}", id_of("ci"))).await;
    assert_eq!(status, 200, "a key may revoke itself");
    assert_eq!(ci.get("/console/workflow").await.0, 401);
}

/// The per-project rate limit answers 429 `rate_limited` with `Retry-After` once the
/// bucket is empty, for that project only; `/console` routes take from the same bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429() {
    let server = start(|c| c.rate_limit = Some(5)).await;
    server
        .create_workflow(json!({"name": "w", "provider": "testing", "model": "m"}))
        .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let reply = server
            .call(
                reqwest::Method::POST,
                "/v1/ai/async",
                Some(KEY),
                Some(serde_json::to_vec(&seed_request("w")).unwrap()),
                &[],
            )
            .await;
        statuses.push(reply.status);
        if reply.status == 429 {
            limited = Some(reply);
        }
    }
    // The bucket held 5; creating the workflow (a console call) took one.
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 4,
        "{statuses:?}"
    );
    let limited = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert_eq!(limited.json["error"]["code"], "rate_limited");
    assert_eq!(limited.headers["retry-after"], "1");

    let mut console = Vec::new();
    for _ in 0..50 {
        let (status, body) = server.get("/console/requests").await;
        console.push(status);
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
            return;
        }
    }
    panic!("a burst of console requests was never limited: {console:?}");
}

/// Past the connection cap a new connection gets a 503 envelope and is closed; past the
/// socket cap an upgrade is 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_socket_caps() {
    let server = start(|c| {
        c.max_connections = 3;
        c.max_sockets = 1;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr(&server)).await.unwrap());
    }
    let answer = exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    drop(held);
    // The held connections' permits return once the server sees them closed.
    eventually("the held connections to be released", async || {
        let answer = exchange(
            &server,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        ok_if(answer.starts_with("HTTP/1.1 200"), answer)
    })
    .await;

    server
        .create_workflow(json!({"name": "w", "provider": "testing", "model": "m"}))
        .await;
    let ticket = server.send_async(seed_request("w")).await;
    let _first = server.join(&ticket).await;
    let url = format!(
        "{}/websocket?token={}&vsn=2.0.0",
        ticket["websocket_url"].as_str().unwrap(),
        ticket["ws_token"].as_str().unwrap()
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("a second socket was not refused: {:?}", other.map(|_| ())),
    }
}

/// A client that sends headers too slowly is cut off by the header-read timeout, and one
/// that trickles its body gets 408; neither holds the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let server = start(|c| {
        c.header_read_timeout = Duration::from_millis(500);
        c.body_read_timeout = Duration::from_millis(500);
    })
    .await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr(&server)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, slow.read_to_end(&mut buf)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "not cut off");

    let mut trickle = TcpStream::connect(addr(&server)).await.unwrap();
    let head = format!(
        "POST /v1/ai/async HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"work"
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, trickle.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    healthy(&server).await;
}

/// A receiver answering with a 10 MB body is read only up to the 20 kB excerpt, and the
/// timeline says the answer was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_receiver_answers_are_cut() {
    let server = start(|_| {}).await;
    let receiver = crate::support::Receiver::start().await;
    receiver.set_status(500);
    receiver.set_body(vec![b'z'; 10 << 20]);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let view = server
        .wait_for_status(ticket["channel_id"].as_str().unwrap(), "failed")
        .await;
    let attempt = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "webhook_attempt")
        .unwrap();
    let excerpt = attempt["response_excerpt"].as_str().unwrap();
    assert!(excerpt.len() < 21 * 1024, "{}", excerpt.len());
    assert!(
        excerpt.ends_with("[response cut at 20480 bytes]"),
        "{:.60}",
        &excerpt[excerpt.len() - 60..]
    );
}

/// Regression (issue 13): an `expires_at` more than a year ahead was silently cut to one
/// year, while `expires_in_days` allows ten years. Now a key expires when asked, in either
/// form, up to 3650 days ahead, and a later `expires_at` is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expires_when_asked_or_is_refused() {
    let server = start(|_| {}).await;
    const DAY: u64 = 24 * 3600 * 1000;
    let now = eddy::clock::now_ms();
    for at in [now + 2 * 365 * DAY, now + 3649 * DAY] {
        let as_text = eddy::clock::rfc3339_ms(at);
        for given in [json!(at), json!(as_text)] {
            let (status, key) = server
                .post("/console/keys", json!({"expires_at": given}))
                .await;
            assert_eq!(status, 201, "{key}");
            assert_eq!(key["expires_at"], as_text, "asked for {given}");
        }
    }
    let (status, body) = server
        .post("/console/keys", json!({"expires_at": now + 3651 * DAY}))
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("expires_at: "), "{message}");
}

/// Regression (issue 13): `/admin` read its token only after `Bearer ` to the letter, while
/// API keys could also be sent after `bearer` or with more spaces. Now one parser reads
/// every bearer token: API keys, the admin token and the metrics token alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bearer_token_is_read_alike() {
    const ADMIN: &str = "admin-token-0123456789";
    let server = start(|c| c.admin_token = Some(ADMIN.into())).await;
    let routes = [
        ("/admin/projects", ADMIN),
        ("/console/project", KEY),
        ("/metrics", crate::support::METRICS_TOKEN),
    ];
    for (path, token) in routes {
        for scheme in ["Bearer ", "bearer ", "BEARER ", "Bearer    "] {
            let authorization = format!("{scheme}{token}");
            let reply = server
                .call(
                    reqwest::Method::GET,
                    path,
                    None,
                    None,
                    &[("authorization", &authorization)],
                )
                .await;
            assert_eq!(reply.status, 200, "{path} with {scheme:?}: {}", reply.json);
        }
    }
}
