//! What the HTTP adapters share: [`Http`], the provider around a [`Wire`] format (the SSRF
//! check of the URL, the POST, the answer read whole or as a stream); sending one request
//! within the attempt's timeout, reading a bounded body, turning transport failures and
//! error statuses into [`AiError`]s, and reading a server-sent event stream as its `data`
//! payloads.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use reqwest::RequestBuilder;
use reqwest::header::RETRY_AFTER;
use serde_json::Value;

use super::{AiError, AiOutput, AiRequest, BoxFuture, Deltas, Provider};
use crate::catalog::ProviderCredential;
use crate::egress;

/// A provider's wire format: what differs between the HTTP adapters. [`Http`] does the
/// rest the same way for each.
pub trait Wire: Send + Sync + 'static {
    /// A streamed answer being put together from its events.
    type Stream: Default + Send;

    /// The URL of a call under the credential's `base_url`.
    fn url(base_url: &str) -> String;

    /// `post` with the API's headers, the key among them when there is one.
    fn headers(post: RequestBuilder, key: Option<&str>) -> RequestBuilder;

    /// The request body; `stream` asks for the answer as server-sent events.
    fn body(request: &AiRequest<'_>, stream: bool) -> Value;

    /// A whole answer, reported as `label`'s.
    fn output(label: &str, request: &AiRequest<'_>, answer: Value) -> Result<AiOutput, AiError>;

    /// Takes one event of a stream; returns the text it adds to the answer, if any.
    fn event(stream: &mut Self::Stream, event: &Value) -> Result<Option<String>, AiError>;

    /// The answer once its stream has ended (noted in the attempt's exchange).
    fn finish(
        stream: Self::Stream,
        label: &str,
        request: &AiRequest<'_>,
    ) -> Result<AiOutput, AiError>;
}

/// An HTTP provider: one credential on the shared client, speaking `W`.
pub struct Http<W> {
    client: reqwest::Client,
    /// Name reported in `meta.provider` (the credential's name).
    label: String,
    base_url: String,
    api_key: Option<String>,
    /// The SSRF guard is on.
    guarded: bool,
    wire: PhantomData<W>,
}

impl<W: Wire> Http<W> {
    pub fn new(client: &reqwest::Client, credential: &ProviderCredential, guarded: bool) -> Self {
        Http {
            client: client.clone(),
            label: credential.name.clone(),
            base_url: credential.base_url.clone(),
            api_key: credential.api_key.clone(),
            guarded,
            wire: PhantomData,
        }
    }

    /// The call's POST, once its URL passed the SSRF guard.
    fn post(&self) -> Result<RequestBuilder, AiError> {
        let url = W::url(&self.base_url);
        check_target(&url, self.guarded)?;
        Ok(W::headers(self.client.post(url), self.api_key.as_deref()))
    }
}

impl<W: Wire> Provider for Http<W> {
    fn generate<'a>(
        &'a self,
        request: &'a AiRequest<'a>,
    ) -> BoxFuture<'a, Result<AiOutput, AiError>> {
        Box::pin(async move {
            let answer = send_json(self.post()?, &W::body(request, false), request).await?;
            W::output(&self.label, request, answer)
        })
    }

    fn stream<'a>(
        &'a self,
        request: &'a AiRequest<'a>,
        deltas: &'a Deltas,
    ) -> BoxFuture<'a, Result<AiOutput, AiError>> {
        Box::pin(async move {
            let mut events = Sse::open(self.post()?, &W::body(request, true), request).await?;
            let mut stream = W::Stream::default();
            while let Some(event) = events.next_json().await? {
                if let Some(piece) = W::event(&mut stream, &event)? {
                    deltas.send(&piece).await;
                }
            }
            W::finish(stream, &self.label, request)
        })
    }
}

/// The largest provider response eddy reads.
const BODY_LIMIT: usize = 8 << 20;
/// The largest streamed answer eddy reads: events carry far more than their text (an
/// OpenAI chunk is ~200 bytes around a token of ~4 characters), so this bounds the
/// stream, not the answer, and leaves room for the longest outputs models produce.
const STREAM_LIMIT: usize = 4 * BODY_LIMIT;
/// How much of a provider's error message goes into an attempt's reason.
const REASON_LIMIT: usize = 300;

/// Refuses, when `guarded`, a URL whose literal host is not public (names are checked by
/// the client's resolver at connect time).
pub fn check_target(url: &str, guarded: bool) -> Result<(), AiError> {
    if !guarded {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| AiError::fatal(format!("invalid provider URL {url:?}: {e}")))?;
    egress::check_literal(&parsed).map_err(|b| AiError::fatal(b.to_string()))
}

/// Sends `body` as JSON with `post` (the adapter's URL and headers) and reads the JSON
/// answer, within the attempt's timeout; both bodies are noted in the attempt's exchange.
/// An error status becomes an [`AiError`].
pub async fn send_json(
    post: RequestBuilder,
    body: &Value,
    attempt: &AiRequest<'_>,
) -> Result<Value, AiError> {
    let (timeout, exchange) = (attempt.timeout, attempt.exchange);
    exchange.sent(body);
    let mut response = post
        .json(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| transport(&e, timeout))?;
    let status = response.status().as_u16();
    let retry_after = retry_after(&response);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e, timeout))? {
        body.extend_from_slice(&chunk);
        if body.len() > BODY_LIMIT {
            return Err(AiError::fatal(format!(
                "the provider's response is larger than {BODY_LIMIT} bytes"
            )));
        }
    }
    exchange.received(&body);
    if !(200..300).contains(&status) {
        return Err(status_error(status, &body, retry_after));
    }
    serde_json::from_slice(&body)
        .map_err(|e| AiError::transient(format!("the provider's response is not JSON: {e}")))
}

/// An error status as an attempt's failure: 408, 409, 429 and 5xx are worth retrying.
pub fn status_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> AiError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let said = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let said: String = said.chars().take(REASON_LIMIT).collect();
    let message = if said.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {said}")
    };
    AiError {
        message,
        retryable: matches!(status, 408 | 409 | 429) || status >= 500,
        status: Some(status),
        retry_after,
        usage: (0, 0),
    }
}

/// A transport failure as an attempt's failure. Only the SSRF guard's refusal is final.
pub fn transport(e: &reqwest::Error, timeout: Duration) -> AiError {
    let mut sources = std::iter::successors(std::error::Error::source(e), |s| s.source());
    if let Some(blocked) = sources.find_map(|s| s.downcast_ref::<egress::Blocked>()) {
        return AiError::fatal(blocked.to_string());
    }
    if e.is_timeout() {
        return AiError::transient(format!("timed out after {}", show(timeout)));
    }
    let mut deepest = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        deepest = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        AiError::transient(format!("connection failed: {deepest}"))
    } else {
        AiError::transient(format!("request failed: {deepest}"))
    }
}

/// `1.5s`, `30s`, `250ms`.
pub fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The response's `Retry-After`, as delay-seconds or an HTTP date.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A streamed answer being read: its `data` payloads one by one. The whole stream is
/// bounded like a whole answer: it must end within the attempt's timeout of the request
/// being sent, and within [`STREAM_LIMIT`] bytes (an endless stream fails either way).
pub struct Sse {
    response: reqwest::Response,
    events: EventStream,
    ready: VecDeque<String>,
    timeout: Duration,
    deadline: tokio::time::Instant,
    received: usize,
}

impl Sse {
    /// Sends `body` as JSON with `post` (noted in the attempt's exchange) and, if the
    /// status is 2xx, returns the answer's stream; an error status is an [`AiError`] with
    /// the provider's message (its body noted too).
    pub async fn open(
        post: RequestBuilder,
        body: &Value,
        attempt: &AiRequest<'_>,
    ) -> Result<Sse, AiError> {
        let (timeout, exchange) = (attempt.timeout, attempt.exchange);
        exchange.sent(body);
        let deadline = tokio::time::Instant::now() + timeout;
        let response = match tokio::time::timeout_at(deadline, post.json(body).send()).await {
            Err(_) => {
                return Err(AiError::transient(format!(
                    "timed out after {}",
                    show(timeout)
                )));
            }
            Ok(Err(e)) => return Err(transport(&e, timeout)),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let retry_after = retry_after(&response);
            let body = tokio::time::timeout_at(deadline, response.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            exchange.received(&body);
            return Err(status_error(status, &body, retry_after));
        }
        Ok(Sse {
            response,
            events: EventStream::default(),
            ready: VecDeque::new(),
            timeout,
            deadline,
            received: 0,
        })
    }

    /// The next event's `data`, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Result<Option<String>, AiError> {
        loop {
            if let Some(data) = self.ready.pop_front() {
                return Ok(Some(data));
            }
            match tokio::time::timeout_at(self.deadline, self.response.chunk()).await {
                Err(_) => {
                    return Err(AiError::transient(format!(
                        "the streamed answer did not end within {}",
                        show(self.timeout)
                    )));
                }
                Ok(Err(e)) => return Err(transport(&e, self.timeout)),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(chunk))) => {
                    self.received += chunk.len();
                    if self.received > STREAM_LIMIT {
                        return Err(AiError::fatal(format!(
                            "the provider's streamed answer is larger than {STREAM_LIMIT} bytes"
                        )));
                    }
                    self.ready.extend(self.events.push(&chunk));
                }
            }
        }
    }

    /// The next event's `data` as JSON, skipping OpenAI's `[DONE]` marker.
    pub async fn next_json(&mut self) -> Result<Option<Value>, AiError> {
        while let Some(data) = self.next().await? {
            if data == "[DONE]" {
                continue;
            }
            return serde_json::from_str(&data)
                .map(Some)
                .map_err(|e| AiError::transient(format!("a stream event is not JSON: {e}")));
        }
        Ok(None)
    }
}

/// Splits a `text/event-stream` body, fed in arbitrary pieces, into the `data` of each
/// complete event (several `data:` lines of one event are joined with newlines).
#[derive(Default)]
pub struct EventStream {
    pending: Vec<u8>,
}

impl EventStream {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending
            .extend(bytes.iter().copied().filter(|b| *b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events split across reads, CRLF line ends, comments and multi-line data all come out
    /// as one payload per event.
    #[test]
    fn event_stream_reassembles_events() {
        let mut events = EventStream::default();
        assert!(events.push(b": keep-alive\n\ndata: {\"a\"").is_empty());
        assert_eq!(
            events.push(b":1}\r\n\r\ndata: x\ndata: y\n\nda"),
            ["{\"a\":1}", "x\ny"]
        );
        assert_eq!(events.push(b"ta: [DONE]\n\n"), ["[DONE]"]);
    }

    /// Rate limits and server errors are retryable, client errors are not; the provider's
    /// own message is kept.
    #[test]
    fn statuses_classify() {
        let e = status_error(429, br#"{"error":{"message":"slow down"}}"#, None);
        assert!(e.retryable);
        assert_eq!(e.message, "HTTP 429: slow down");
        assert!(status_error(503, b"", None).retryable);
        let e = status_error(
            400,
            br#"{"type":"error","error":{"type":"x","message":"bad"}}"#,
            None,
        );
        assert!(!e.retryable);
        assert_eq!(e.message, "HTTP 400: bad");
    }
}
