//! A client of eddy's HTTP API with the helpers tests share: authorized JSON calls,
//! setting up the seed's resources, polling a request's status, joining its channel.

use reqwest::Method;
use serde_json::{Value, json};

use super::{Phoenix, Reply, eventually, headphones, merge};

/// Talks to one eddy at `base` with bearer `key`.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    /// Any request; `key` is sent as a bearer token when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("response body");
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            json,
        }
    }

    /// An authorized JSON POST.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(&body).expect("json");
        let reply = self
            .call(Method::POST, path, Some(&self.key), Some(bytes), &[])
            .await;
        (reply.status, reply.json)
    }

    /// An authorized DELETE.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let reply = self
            .call(Method::DELETE, path, Some(&self.key), None, &[])
            .await;
        (reply.status, reply.json)
    }

    /// An authorized GET.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let reply = self
            .call(Method::GET, path, Some(&self.key), None, &[])
            .await;
        (reply.status, reply.json)
    }

    /// Creates a structured output with an any-object schema; returns its id.
    pub async fn create_output(&self, name: &str, sample_data: Value) -> String {
        self.create_output_from(json!({
            "name": name,
            "schema": {"type": "object"},
            "sample_data": sample_data,
        }))
        .await
    }

    /// Creates a structured output from a full body; returns its id.
    pub async fn create_output_from(&self, body: Value) -> String {
        let (status, reply) = self.post("/console/structured-outputs", body).await;
        assert_eq!(status, 201, "create structured output: {reply}");
        reply["id"].as_str().expect("output id").to_string()
    }

    /// Creates a workflow from a full body.
    pub async fn create_workflow(&self, body: Value) {
        let (status, reply) = self.post("/console/workflow", body).await;
        assert_eq!(status, 201, "create workflow: {reply}");
    }

    /// Registers a webhook endpoint; returns `(id, secret)`.
    pub async fn register_webhook(&self, url: &str) -> (String, String) {
        let (status, body) = self.post("/console/webhooks", json!({"url": url})).await;
        assert_eq!(status, 201, "register webhook: {body}");
        (
            body["id"].as_str().expect("endpoint id").to_string(),
            body["secret"]
                .as_str()
                .expect("endpoint secret")
                .to_string(),
        )
    }

    /// The seed's setup: the headphones output and an event-driven testing workflow
    /// `name` (with `extra` fields merged in).
    pub async fn event_workflow(&self, name: &str, extra: Value) {
        let output = self
            .create_output(&format!("{name}_output"), headphones())
            .await;
        let mut body = json!({
            "name": name,
            "event_name": "content_ready",
            "provider": "openai",
            "model": "gpt-4o",
            "structured_output_id": output,
            "mode": "testing",
        });
        merge(&mut body, extra);
        self.create_workflow(body).await;
    }

    /// `POST /v1/ai/async` that must succeed; returns the ticket.
    pub async fn send_async(&self, body: Value) -> Value {
        let (status, ticket) = self.post("/v1/ai/async", body).await;
        assert_eq!(status, 200, "async request: {ticket}");
        ticket
    }

    /// `POST /v1/callback/{channel}`, as the backend calls back.
    pub async fn callback(&self, channel: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/v1/callback/{channel}"), body).await
    }

    /// Rotates an endpoint's signing secret; returns the new one.
    pub async fn rotate_secret(&self, endpoint: &str) -> String {
        let path = format!("/console/webhooks/{endpoint}/rotate-secret");
        let (status, rotated) = self.post(&path, json!({})).await;
        assert_eq!(status, 200, "rotate-secret: {rotated}");
        rotated["secret"]
            .as_str()
            .expect("the new secret")
            .to_string()
    }

    /// `GET /console/requests/{channel}` that must succeed.
    pub async fn request(&self, channel: &str) -> Value {
        let (status, body) = self.get(&format!("/console/requests/{channel}")).await;
        assert_eq!(status, 200, "console request: {body}");
        body
    }

    /// Polls the request until its status is `status`; panics with the last view after
    /// the wait.
    pub async fn wait_for_status(&self, channel: &str, status: &str) -> Value {
        self.wait_for_view(channel, status, |view| view["status"] == status)
            .await
    }

    /// Polls the request's console view until `done(view)`; returns that view, or panics
    /// with `what` and the last view after the wait.
    pub async fn wait_for_view(
        &self,
        channel: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(&format!("request {channel}: {what}"), async || {
            let view = self.request(channel).await;
            if done(&view) { Ok(view) } else { Err(view) }
        })
        .await
    }

    /// A Phoenix client joined on the ticket's channel with the ticket's token.
    pub async fn join(&self, ticket: &Value) -> Phoenix {
        let mut socket = Phoenix::connect(
            ticket["websocket_url"].as_str().expect("websocket_url"),
            ticket["ws_token"].as_str().expect("ws_token"),
        )
        .await
        .expect("socket connects");
        let topic = ticket["websocket_channel"]
            .as_str()
            .expect("websocket_channel");
        let reply = socket.join(topic).await;
        assert_eq!(reply["status"], "ok", "join reply: {reply}");
        socket
    }

    /// The entries of a request view's timeline of type `kind`, in order.
    pub fn steps<'a>(view: &'a Value, kind: &str) -> Vec<&'a Value> {
        view["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .filter(|s| s["type"] == kind)
            .collect()
    }

    /// The `type`s of a request view's timeline, in order.
    pub fn timeline_types(view: &Value) -> Vec<String> {
        view["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .map(|s| s["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}
