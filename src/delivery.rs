//! Sending one webhook attempt and classifying what came of it.
//!
//! Stages: prepare (headers and signatures for this attempt's timestamp) → call (with the
//! per-attempt timeout, no redirects, through the client `egress` builds) → classify (a
//! [`Verdict`]: 2xx delivered; a refusal of the SSRF guard permanent; any other answer, a
//! timeout or a connection error worth retrying) → report (status, error, duration,
//! response excerpt). What a verdict means for an endpoint (a 410 from a registered one
//! disables it) and recording the outcome are the engine's (`engine::attempt`).

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

/// What an attempt means for its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver answered 2xx.
    Delivered,
    /// Worth another attempt. `after` is the receiver's `Retry-After` (seconds or an HTTP
    /// date); `fault` says what went wrong.
    Retry {
        after: Option<Duration>,
        fault: Fault,
    },
    /// Retrying cannot help.
    Permanent(Permanent),
}

/// Why an attempt worth retrying failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The receiver answered with this status (not 2xx).
    Status(u16),
    /// No answer within the attempt's timeout.
    Timeout,
    /// The connection failed, or the answer could not be read.
    Transport,
}

/// Why retrying an attempt cannot help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanent {
    /// Nothing was sent: the SSRF guard refused a literal address, or the endpoint is
    /// disabled or deleted.
    Refused,
    /// The SSRF guard refused every address the name resolved to, at connect time.
    Blocked,
    /// A registered endpoint answered 410 Gone (the engine's endpoint rule).
    Gone,
}

/// What came of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub response_excerpt: String,
}

impl Outcome {
    /// An attempt that was not made, for a reason retrying cannot change.
    pub fn refused(reason: impl Into<String>) -> Outcome {
        Outcome {
            verdict: Verdict::Permanent(Permanent::Refused),
            status: None,
            error: Some(reason.into()),
            duration_ms: 0,
            response_excerpt: String::new(),
        }
    }

    /// The receiver asked to slow down (429) or did not answer in time: the next attempt
    /// waits at least the throttle delay.
    pub fn slow_down(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Retry {
                fault: Fault::Timeout | Fault::Status(429),
                ..
            }
        )
    }

    /// The `outcome` label of `eddy_webhook_attempts_total`: `delivered`, `timeout`,
    /// `refused` (the guard or a disabled or deleted endpoint), else `failed`.
    pub fn label(&self) -> &'static str {
        match self.verdict {
            Verdict::Delivered => "delivered",
            Verdict::Retry {
                fault: Fault::Timeout,
                ..
            } => "timeout",
            Verdict::Permanent(Permanent::Refused | Permanent::Blocked) => "refused",
            Verdict::Retry { .. } | Verdict::Permanent(Permanent::Gone) => "failed",
        }
    }

    /// How long the request took, if one went out.
    pub fn latency(&self) -> Option<Duration> {
        (self.verdict != Verdict::Permanent(Permanent::Refused))
            .then(|| Duration::from_millis(self.duration_ms))
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

    /// The headers of one attempt: ModelRiver's (`mr-*`, `X-ModelRiver-*`) and Standard
    /// Webhooks' (`webhook-*`).
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
        let mut outcome = match request.send().await {
            Ok(response) => answered(response).await,
            Err(e) => Outcome {
                verdict: if blocked_by_guard(&e) {
                    Verdict::Permanent(Permanent::Blocked)
                } else {
                    Verdict::Retry {
                        after: None,
                        fault: if e.is_timeout() {
                            Fault::Timeout
                        } else {
                            Fault::Transport
                        },
                    }
                },
                status: None,
                error: Some(describe(&e)),
                duration_ms: 0,
                response_excerpt: String::new(),
            },
        };
        outcome.duration_ms = started.elapsed().as_millis() as u64;
        outcome
    }
}

/// Classifies an answer and reads at most [`EXCERPT_LIMIT`] of its body.
async fn answered(mut response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    let delivered = response.status().is_success();
    let after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let mut error = None;
    let mut excerpt = Vec::new();
    while excerpt.len() < EXCERPT_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                if !delivered {
                    error = Some(format!("reading response: {}", describe(&e)));
                }
                break;
            }
        }
    }
    let cut = excerpt.len() > EXCERPT_LIMIT;
    excerpt.truncate(EXCERPT_LIMIT);
    let mut response_excerpt = String::from_utf8_lossy(&excerpt).into_owned();
    if cut {
        // The rest is never read: a huge or endless answer costs at most this.
        response_excerpt.push_str(&format!(" … [response cut at {EXCERPT_LIMIT} bytes]"));
    }
    let verdict = if delivered {
        Verdict::Delivered
    } else {
        error.get_or_insert_with(|| format!("HTTP {status}"));
        Verdict::Retry {
            after,
            fault: Fault::Status(status),
        }
    };
    Outcome {
        verdict,
        status: Some(status),
        error,
        duration_ms: 0,
        response_excerpt,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            duration_ms: 7,
            ..Outcome::refused("x")
        }
    }

    /// Each verdict's metric label, whether it slows the next attempt down, and whether a
    /// request went out (only then is its latency observed).
    #[test]
    fn verdicts_label_and_pace() {
        let retry = |fault| Verdict::Retry { after: None, fault };
        let sent = Some(Duration::from_millis(7));
        for (verdict, label, slow, latency) in [
            (Verdict::Delivered, "delivered", false, sent),
            (retry(Fault::Status(500)), "failed", false, sent),
            (retry(Fault::Status(429)), "failed", true, sent),
            (retry(Fault::Timeout), "timeout", true, sent),
            (retry(Fault::Transport), "failed", false, sent),
            (Verdict::Permanent(Permanent::Gone), "failed", false, sent),
            (
                Verdict::Permanent(Permanent::Blocked),
                "refused",
                false,
                sent,
            ),
            (
                Verdict::Permanent(Permanent::Refused),
                "refused",
                false,
                None,
            ),
        ] {
            let o = outcome(verdict);
            assert_eq!(
                (o.label(), o.slow_down(), o.latency()),
                (label, slow, latency),
                "{verdict:?}"
            );
        }
    }
}
