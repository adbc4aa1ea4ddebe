//! `eddy demo`: the whole three-step flow on this machine, offline, narrated.
//!
//! Starts a server on a temporary store, a sample backend that verifies the webhook's
//! signature, enriches the AI data (slug, timestamp) and calls back, and a Phoenix
//! WebSocket client standing in for the browser; then sends the seed's headphones request
//! and prints each step and the request's timeline. Exits 0 when the browser got the
//! enriched result.

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::clock::{now_ms, rfc3339_ms};
use crate::config::Config;
use crate::server::Server;
use crate::{secret, signature};

type DemoError = Box<dyn std::error::Error + Send + Sync>;

pub async fn run() -> ExitCode {
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(started: Instant, who: &str, what: impl AsRef<str>) {
    println!(
        "{:>6} ms  {who:<9} {}",
        started.elapsed().as_millis(),
        what.as_ref()
    );
}

/// What the sample backend needs to verify and call back.
struct Backend {
    api_key: String,
    secret: OnceLock<String>,
    started: Instant,
    http: reqwest::Client,
}

/// `"ProSound X1 Wireless Headphones"` → `"prosound-x1-wireless-headphones"`.
fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

impl Backend {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let signature_header = request
            .headers()
            .get("mr-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = match request.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Response::new(Full::new(Bytes::new())),
        };
        let secret = self.secret.get().map(String::as_str).unwrap_or_default();
        let verified = signature::verify_mr(secret, &body, &signature_header);
        let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
        say(
            self.started,
            "backend",
            format!(
                "webhook {} for event '{}' received; mr-signature {}",
                payload["type"].as_str().unwrap_or("?"),
                payload["event"].as_str().unwrap_or("?"),
                if verified { "verified" } else { "INVALID" }
            ),
        );
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"received\":true}")));
        if !verified {
            *response.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            return response;
        }
        // Answer the webhook at once; enrich and call back in the background, as a real
        // backend would after saving to its database.
        tokio::spawn(self.clone().call_back(payload));
        response
    }

    async fn call_back(self: Arc<Self>, payload: Value) {
        let mut data = payload["ai_response"]["data"].clone();
        let title = data["title"].as_str().unwrap_or("untitled").to_string();
        data["slug"] = json!(slug(&title));
        data["saved_at"] = json!(rfc3339_ms(now_ms()));
        let product = payload["customer_data"]["product_id"]
            .as_str()
            .unwrap_or("unknown");
        let body = json!({ "data": data, "task_id": format!("product_{product}") });
        let url = payload["callback_url"].as_str().unwrap_or_default();
        say(
            self.started,
            "backend",
            format!("enriched with slug '{}'; calling back {url}", slug(&title)),
        );
        match self
            .http
            .post(url)
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => say(
                self.started,
                "backend",
                format!("callback answered {}", r.status()),
            ),
            Err(e) => say(self.started, "backend", format!("callback failed: {e}")),
        }
    }
}

async fn start_backend(backend: Arc<Backend>) -> Result<String, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhooks/modelriver", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let backend = backend.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let backend = backend.clone();
                    async move { Ok::<_, Infallible>(backend.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(url)
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, DemoError> {
    let url = format!("{base}{path}");
    let request = match body {
        Some(b) => http.post(url).json(&b),
        None => http.get(url),
    };
    let response = request.bearer_auth(key).send().await?;
    let status = response.status();
    let value: Value = response.json().await?;
    if !status.is_success() {
        return Err(format!("{path}: {status} {value}").into());
    }
    Ok(value)
}

async fn demo() -> Result<(), DemoError> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let key = secret::new_api_key();
    let config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        data: dir.path().to_path_buf(),
        api_key: Some(key.clone()),
        allow_private_webhooks: true,
        retry_schedule: vec![
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2),
        ],
        callback_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let listener = TcpListener::bind(config.listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = Server::open(config).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    say(
        started,
        "eddy",
        format!("listening on {base}, store in {}", dir.path().display()),
    );

    let http = reqwest::Client::new();
    let backend = Arc::new(Backend {
        api_key: key.clone(),
        secret: OnceLock::new(),
        started,
        http: http.clone(),
    });
    let backend_url = start_backend(backend.clone()).await?;
    say(started, "backend", format!("listening on {backend_url}"));

    let output = call(&http, &base, &key, "/console/structured-outputs", Some(json!({
        "name": "product_description",
        "schema": {"type": "object", "required": ["title", "description", "features"], "properties": {
            "title": {"type": "string"}, "description": {"type": "string"},
            "features": {"type": "array", "items": {"type": "string"}}}},
        "sample_data": {
            "title": "ProSound X1 Wireless Headphones",
            "description": "Experience crystal-clear audio...",
            "features": ["Active noise cancellation", "40-hour battery"]}
    }))).await?;
    call(
        &http,
        &base,
        &key,
        "/console/workflow",
        Some(json!({
            "name": "content_generator", "event_name": "content_ready",
            "provider": "openai", "model": "gpt-4o",
            "structured_output_id": output["id"], "mode": "testing", "response_delay_ms": 300
        })),
    )
    .await?;
    let endpoint = call(
        &http,
        &base,
        &key,
        "/console/webhooks",
        Some(json!({
            "url": backend_url, "events": ["content_ready"]
        })),
    )
    .await?;
    let _ = backend
        .secret
        .set(endpoint["secret"].as_str().unwrap_or_default().to_string());
    say(
        started,
        "console",
        "workflow content_generator (event content_ready, test mode) and webhook registered",
    );

    let ticket = call(&http, &base, &key, "/v1/ai/async", Some(json!({
        "workflow": "content_generator",
        "messages": [{"role": "user", "content": "Generate a product description for wireless headphones"}],
        "metadata": {"product_id": "prod_123", "category": "electronics"}
    }))).await?;
    let channel = ticket["channel_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    say(
        started,
        "app",
        format!("POST /v1/ai/async → 200 status pending, channel {channel}"),
    );

    let url = format!(
        "{}/websocket?token={}&vsn=2.0.0",
        ticket["websocket_url"].as_str().unwrap_or_default(),
        ticket["ws_token"].as_str().unwrap_or_default()
    );
    let topic = ticket["websocket_channel"].as_str().unwrap_or_default();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::text(
        json!(["1", "1", topic, "phx_join", {}]).to_string(),
    ))
    .await?;
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = ws.next().await {
            let Message::Text(text) = frame? else {
                continue;
            };
            let frame: Value = serde_json::from_str(&text)?;
            match frame[3].as_str() {
                Some("phx_reply") => say(
                    started,
                    "browser",
                    format!("joined {topic}: {}", frame[4]["status"]),
                ),
                Some("response") => {
                    let payload = &frame[4];
                    let status = payload["status"].as_str().unwrap_or("?");
                    say(started, "browser", format!("push '{status}'"));
                    match status {
                        "completed" => return Ok::<Value, DemoError>(payload.clone()),
                        "error" => {
                            return Err(format!("request failed: {}", payload["error"]).into());
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Err("the socket closed before the result arrived".into())
    })
    .await
    .map_err(|_| "no result within 30 s")??;
    println!(
        "\nfinal result in the browser:\n{}",
        serde_json::to_string_pretty(&result)?
    );

    let request = call(
        &http,
        &base,
        &key,
        &format!("/console/requests/{channel}"),
        None,
    )
    .await?;
    println!("\ntimeline of {channel}:");
    for line in crate::cli::remote::timeline_lines(&request["timeline"]) {
        println!("  {line}");
    }
    let _ = ws.close(None).await;
    let _ = stop.send(());
    server_task.await??;
    say(started, "eddy", "stopped; demo complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::slug;

    /// Slugs are lowercase words joined by single hyphens.
    #[test]
    fn slugs() {
        assert_eq!(
            slug("ProSound X1 Wireless Headphones"),
            "prosound-x1-wireless-headphones"
        );
        assert_eq!(slug("  A -- b!"), "a-b");
    }
}
