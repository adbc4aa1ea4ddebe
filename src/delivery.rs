//! Sending one webhook attempt and classifying its outcome, with the client `egress` builds.
//!
//! Stages: prepare (headers and signatures for this attempt's timestamp) → call (with the
//! per-attempt timeout, no redirects) → classify (2xx delivered; anything else, a timeout
//! or a connection error is retried) → report (status, error, duration, response excerpt).
//! Recording the outcome is the engine's job.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};

use crate::{egress, signature};

/// How much of a receiver's response body is kept for the timeline and the DLQ.
pub const EXCERPT_LIMIT: usize = 20 * 1024;

/// One attempt to send.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub url: &'a str,
    pub body: &'a str,
    /// `webhook-id`: the same for every attempt of one delivery.
    pub webhook_id: &'a str,
    /// `X-ModelRiver-Webhook-Id`: the endpoint.
    pub endpoint_id: &'a str,
    pub channel_id: &'a str,
    /// Signing secrets, current first.
    pub secrets: &'a [String],
    /// Unix seconds of this attempt.
    pub timestamp: u64,
}

/// What came of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub delivered: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub response_excerpt: String,
    /// The receiver's `Retry-After` (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
    /// The attempt timed out.
    pub timed_out: bool,
    /// Retrying cannot help (the SSRF guard refused the address, the endpoint is gone).
    pub permanent: bool,
    /// A request went out (false when the attempt was refused before sending).
    pub sent: bool,
}

impl Outcome {
    /// An attempt that was not made, for a reason retrying cannot change.
    pub fn refused(reason: impl Into<String>) -> Outcome {
        Outcome {
            error: Some(reason.into()),
            permanent: true,
            ..Outcome::new()
        }
    }

    fn new() -> Outcome {
        Outcome {
            delivered: false,
            status: None,
            error: None,
            duration_ms: 0,
            response_excerpt: String::new(),
            retry_after: None,
            timed_out: false,
            permanent: false,
            sent: false,
        }
    }

    /// The receiver asked to slow down (429) or did not answer in time.
    pub fn slow_down(&self) -> bool {
        self.timed_out || self.status == Some(429)
    }
}

/// Sends webhooks. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    timeout: Duration,
    /// The SSRF guard is on (no `--allow-private-webhooks`).
    guarded: bool,
}

impl Deliverer {
    /// A deliverer with a per-attempt `timeout`; `guarded` turns the SSRF guard on.
    pub fn new(timeout: Duration, guarded: bool) -> Deliverer {
        let client = egress::client(guarded, timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build()
            .expect("reqwest client builds with static settings");
        Deliverer {
            client,
            timeout,
            guarded,
        }
    }

    /// The headers of SPEC §4 and §7 for one attempt.
    fn headers(attempt: &Attempt<'_>) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(12);
        let body = attempt.body.as_bytes();
        let ts = attempt.timestamp.to_string();
        let secrets: Vec<&str> = attempt.secrets.iter().map(String::as_str).collect();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        // The single-valued signatures carry the current secret only; during a rotation's
        // grace the previous one signs `webhook-signature` too.
        let current = secrets.first().copied().unwrap_or("");
        put("mr-signature", signature::mr_signature(current, body));
        put(
            "x-modelriver-signature",
            signature::modelriver_signature(current, attempt.timestamp, body),
        );
        put("mr-timestamp", ts.clone());
        put("x-modelriver-timestamp", ts.clone());
        put("mr-channel-id", attempt.channel_id.to_string());
        put("x-modelriver-webhook-id", attempt.endpoint_id.to_string());
        put("webhook-id", attempt.webhook_id.to_string());
        put("webhook-timestamp", ts);
        put(
            "webhook-signature",
            signature::standard_header(&secrets, attempt.webhook_id, attempt.timestamp, body),
        );
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("eddy/", env!("CARGO_PKG_VERSION"))),
        );
        h
    }

    /// Sends one attempt and classifies it. Never fails: every problem is an [`Outcome`].
    pub async fn send(&self, attempt: &Attempt<'_>) -> Outcome {
        let started = Instant::now();
        let mut outcome = Outcome::new();
        if self.guarded {
            // Literal addresses never reach the resolver, so they are checked here.
            let checked = reqwest::Url::parse(attempt.url)
                .map_err(|e| egress::Blocked(format!("invalid URL: {e}")))
                .and_then(|url| egress::check_literal(&url));
            if let Err(blocked) = checked {
                return Outcome::refused(blocked.to_string());
            }
        }
        let request = self
            .client
            .post(attempt.url)
            .headers(Deliverer::headers(attempt))
            .body(attempt.body.to_string())
            .timeout(self.timeout);
        outcome.sent = true;
        match request.send().await {
            Ok(mut response) => {
                let status = response.status();
                outcome.status = Some(status.as_u16());
                outcome.delivered = status.is_success();
                outcome.retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after);
                let mut excerpt = Vec::new();
                while excerpt.len() < EXCERPT_LIMIT {
                    match response.chunk().await {
                        Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                        Ok(None) => break,
                        Err(e) => {
                            if !outcome.delivered {
                                outcome.error = Some(format!("reading response: {}", describe(&e)));
                            }
                            break;
                        }
                    }
                }
                let cut = excerpt.len() > EXCERPT_LIMIT;
                excerpt.truncate(EXCERPT_LIMIT);
                outcome.response_excerpt = String::from_utf8_lossy(&excerpt).into_owned();
                if cut {
                    // The rest is never read: a huge or endless answer costs at most this.
                    outcome
                        .response_excerpt
                        .push_str(&format!(" … [response cut at {EXCERPT_LIMIT} bytes]"));
                }
                if !outcome.delivered && outcome.error.is_none() {
                    outcome.error = Some(format!("HTTP {}", status.as_u16()));
                }
            }
            Err(e) => {
                outcome.timed_out = e.is_timeout();
                outcome.permanent = blocked_by_guard(&e);
                outcome.error = Some(describe(&e));
            }
        }
        outcome.duration_ms = started.elapsed().as_millis() as u64;
        outcome
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn sources(e: &reqwest::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(e), |s| s.source())
}

fn blocked_by_guard(e: &reqwest::Error) -> bool {
    sources(e).any(|s| s.downcast_ref::<egress::Blocked>().is_some())
}

/// A short, stable description of a transport error.
fn describe(e: &reqwest::Error) -> String {
    if let Some(blocked) = sources(e).find_map(|s| s.downcast_ref::<egress::Blocked>()) {
        blocked.to_string()
    } else if e.is_timeout() {
        "timeout".to_string()
    } else if e.is_connect() {
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
        let mut last = None;
        while let Some(s) = source {
            last = Some(s.to_string());
            source = s.source();
        }
        format!(
            "connection failed: {}",
            last.unwrap_or_else(|| e.to_string())
        )
    } else {
        e.to_string()
    }
}
