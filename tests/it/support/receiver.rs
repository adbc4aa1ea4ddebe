//! A real webhook endpoint: a hyper server on an ephemeral port that records every request
//! in order (headers and exact body bytes), answers with a status the test can change or
//! script, and can act as the seed's backend: after a 2xx to a `task.ai_generated` webhook
//! it POSTs `{data: {...ai data, slug, saved_at}, task_id}` to the payload's `callback_url`
//! (again while eddy cannot be reached or answers 503, as a real backend retries).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::log::Log;
use super::{FakeServer, poll};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the receiver answered with.
    pub answered: u16,
    /// When the request arrived.
    pub at: Instant,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }

    /// A header as text; panics if it is missing.
    pub fn header(&self, name: &str) -> &str {
        super::header(&self.headers, name)
    }
}

/// How long the backend keeps trying a callback that eddy does not take (unreachable, or
/// 503): longer than any test waits.
const CALLBACK_PATIENCE: Duration = Duration::from_secs(600);

/// What the receiver does after answering a `task.ai_generated` webhook with a 2xx.
#[derive(Debug, Clone)]
pub enum Callback {
    /// Nothing: the callback never comes.
    None,
    /// The seed's backend: enrich the AI data with `slug` and `saved_at` and call back.
    Enrich,
    /// An error callback `{error, message}`.
    Error { error: String, message: String },
}

/// A callback the receiver made, and how eddy answered it.
#[derive(Debug, Clone)]
pub struct CallbackResult {
    pub channel_id: String,
    /// What was sent.
    pub sent: Value,
    pub status: u16,
    pub reply: Value,
}

struct Inner {
    /// Answered when the script is empty.
    status: AtomicU16,
    /// Statuses to answer first, in order.
    script: Mutex<VecDeque<u16>>,
    /// How long to wait before answering, one per request, in order.
    delays: Mutex<VecDeque<Duration>>,
    /// Added to every response.
    response_headers: Mutex<Vec<(String, String)>>,
    /// The response body, when not the default `{"ok":true}`.
    response_body: Mutex<Option<Bytes>>,
    received: Log<Received>,
    callback: Mutex<(Callback, Option<String>)>,
    /// Callbacks wait while this is false.
    gate: watch::Sender<bool>,
    callbacks: Log<CallbackResult>,
    http: reqwest::Client,
}

/// A webhook endpoint on `127.0.0.1`.
pub struct Receiver {
    inner: FakeServer<Inner>,
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
}

impl Receiver {
    /// A receiver answering 200, not calling back.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        Receiver::on(listener)
    }

    /// A receiver serving on an already bound listener.
    pub fn on(listener: TcpListener) -> Receiver {
        let inner = FakeServer::on(
            listener,
            Inner {
                status: AtomicU16::new(200),
                script: Mutex::new(VecDeque::new()),
                delays: Mutex::new(VecDeque::new()),
                response_headers: Mutex::new(Vec::new()),
                response_body: Mutex::new(None),
                received: Log::of("webhooks at the receiver"),
                callback: Mutex::new((Callback::None, None)),
                gate: watch::channel(true).0,
                callbacks: Log::of("callbacks the receiver made"),
                http: super::http_client(),
            },
            handle,
        );
        Receiver {
            url: format!("http://{}/hook", inner.addr),
            inner,
        }
    }

    /// The status answered from now on (after any scripted ones).
    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    /// Statuses to answer next, one per request, before falling back to the set status.
    pub fn script(&self, statuses: &[u16]) {
        self.inner
            .script
            .lock()
            .unwrap()
            .extend(statuses.iter().copied());
    }

    /// Delays before answering the next requests, one per request.
    pub fn script_delays(&self, delays: &[Duration]) {
        self.inner
            .delays
            .lock()
            .unwrap()
            .extend(delays.iter().copied());
    }

    /// Answers every request with this body from now on.
    pub fn set_body(&self, body: Vec<u8>) {
        *self.inner.response_body.lock().unwrap() = Some(Bytes::from(body));
    }

    /// A header put on every response from now on.
    pub fn add_response_header(&self, name: &str, value: &str) {
        self.inner
            .response_headers
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
    }

    /// Calls back like `callback` after each 2xx to a webhook that asks for a callback,
    /// with `Authorization: Bearer <key>`.
    pub fn call_back(&self, key: &str, callback: Callback) {
        *self.inner.callback.lock().unwrap() = (callback, Some(key.to_string()));
    }

    /// Makes callbacks wait until [`Receiver::release_callbacks`].
    pub fn hold_callbacks(&self) {
        self.inner.gate.send_replace(false);
    }

    pub fn release_callbacks(&self) {
        self.inner.gate.send_replace(true);
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.all()
    }

    /// Waits until at least `n` requests were received; returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.inner.received.wait_for(n).await
    }

    /// Every callback made so far, in order of completion.
    pub fn callbacks(&self) -> Vec<CallbackResult> {
        self.inner.callbacks.all()
    }

    /// Waits until at least `n` callbacks were answered by eddy; returns all of them.
    pub async fn wait_for_callbacks(&self, n: usize) -> Vec<CallbackResult> {
        self.inner.callbacks.wait_for(n).await
    }

    /// Asserts that no further request arrives within `quiet`.
    pub async fn assert_quiet(&self, seen: usize, quiet: Duration) {
        assert!(
            self.inner.received.stays_at(seen, quiet).await,
            "receiver got more than {seen} requests: {:?}",
            self.received().len()
        );
    }
}

async fn handle(
    inner: Arc<Inner>,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let at = Instant::now();
    let headers = request.headers().clone();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let scripted = inner.script.lock().unwrap().pop_front();
    let status = scripted.unwrap_or_else(|| inner.status.load(Ordering::SeqCst));
    inner.received.push(Received {
        headers,
        body: body.clone(),
        answered: status,
        at,
    });
    if (200..300).contains(&status) {
        let (callback, key) = inner.callback.lock().unwrap().clone();
        if let (Ok(payload), Some(key)) = (serde_json::from_slice::<Value>(&body), key)
            && payload["callback_required"] == true
            && !matches!(callback, Callback::None)
        {
            tokio::spawn(call_back(inner.clone(), payload, callback, key));
        }
    }
    let delay = inner.delays.lock().unwrap().pop_front();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let body = inner
        .response_body
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| Bytes::from_static(b"{\"ok\":true}"));
    let mut response = hyper::Response::new(Full::new(body));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    for (name, value) in inner.response_headers.lock().unwrap().iter() {
        response.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            hyper::header::HeaderValue::from_str(value).expect("header value"),
        );
    }
    response
}

/// `ProSound X1 Wireless Headphones` → `prosound-x1-wireless-headphones`.
fn slug(title: &str) -> String {
    title
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

async fn call_back(inner: Arc<Inner>, payload: Value, callback: Callback, key: String) {
    let mut gate = inner.gate.subscribe();
    let _ = gate.wait_for(|open| *open).await;
    let channel_id = payload["channel_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let sent = match callback {
        Callback::None => return,
        Callback::Enrich => {
            let mut data = payload["ai_response"]["data"].clone();
            let title = data["title"].as_str().unwrap_or("untitled").to_string();
            if let Value::Object(map) = &mut data {
                map.insert("slug".into(), json!(slug(&title)));
                map.insert(
                    "saved_at".into(),
                    json!(eddy::clock::rfc3339_ms(eddy::clock::now_ms())),
                );
            }
            let task_id = match payload["customer_data"]["product_id"].as_str() {
                Some(product) => format!("product_{product}"),
                None => format!("task_{channel_id}"),
            };
            json!({"data": data, "task_id": task_id})
        }
        Callback::Error { error, message } => json!({"error": error, "message": message}),
    };
    let url = payload["callback_url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Like a real backend, keep calling back while eddy cannot be reached (restarting) or
    // answers 503 (a cluster node while NATS elects a leader: "try again"), for as long as
    // eddy waits for a callback (minutes): a test ends first.
    let body = serde_json::to_vec(&sent).expect("json");
    // The probe owns what it uses (a task spawned with a borrowing probe is not `Send`).
    let http = inner.http.clone();
    let answered = poll(CALLBACK_PATIENCE, move || {
        let request = http
            .post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.clone());
        async move {
            let response = request
                .send()
                .await
                .map_err(|e| (0, json!({"transport_error": e.to_string()})))?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            let reply = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == 503 {
                return Err((status, reply));
            }
            Ok((status, reply))
        }
    })
    .await;
    let (status, reply) = answered.unwrap_or_else(|last| last);
    inner.callbacks.push(CallbackResult {
        channel_id,
        sent,
        status,
        reply,
    });
}
