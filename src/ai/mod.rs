//! Models behind workflows: the [`Provider`] trait every adapter implements, the adapters
//! ([`openai`] for OpenAI and every compatible server, [`anthropic`] for the Messages API,
//! [`testing`] for test mode), and [`Models`], which runs a workflow's model with retries,
//! backoff and fallbacks and reports every attempt.
//!
//! Every adapter maps its provider's messages, usage and errors to one shape
//! ([`AiOutput`], [`AiError`]), so the failover loop and the rest of eddy never see a wire
//! format. Structured output is checked in one place ([`schema`]) whatever the provider.
//! Credentials come in per call from the caller (they are per project); nothing here knows
//! about webhooks, sockets or the store. Keys are put in request headers and nowhere else:
//! not in errors, not in logs.

pub mod anthropic;
mod call;
pub mod openai;
mod run;
pub mod schema;
pub mod testing;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::catalog::ProviderKind;

pub use run::{Credentials, Models, Policy};

/// A future returned by a provider.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a provider is asked.
#[derive(Debug, Clone)]
pub struct AiRequest<'a> {
    pub model: &'a str,
    /// The request's `messages` array, as JSON.
    pub messages: &'a serde_json::Value,
    pub system_prompt: Option<&'a str>,
    /// JSON Schema of the structured output, if any.
    pub schema: Option<&'a serde_json::Value>,
    /// Sample data of the structured output, if any (test mode returns it).
    pub sample_data: Option<&'a str>,
    pub response_delay: Duration,
    /// How long the provider may take to answer (to send the next chunk, when streaming).
    pub timeout: Duration,
    /// Where the adapter notes what it sent and received, for the timeline.
    pub exchange: &'a Exchange,
}

#[cfg(test)]
impl<'a> AiRequest<'a> {
    /// A request for unit tests: `model` on `messages` with `schema`, the system prompt
    /// "be brief", no delay, a one-second timeout.
    pub fn sample(
        model: &'a str,
        messages: &'a serde_json::Value,
        schema: Option<&'a serde_json::Value>,
        exchange: &'a Exchange,
    ) -> AiRequest<'a> {
        AiRequest {
            model,
            messages,
            system_prompt: Some("be brief"),
            schema,
            sample_data: None,
            response_delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
            exchange,
        }
    }
}

/// The bodies of one attempt as the timeline shows them: what was sent to the provider and
/// what came back, each cut at [`Exchange::LIMIT`]. Keys travel in headers and are never
/// part of either.
#[derive(Debug, Default)]
pub struct Exchange {
    sent: std::sync::Mutex<Option<String>>,
    received: std::sync::Mutex<Option<String>>,
}

impl Exchange {
    /// Most of a body kept for the timeline.
    pub const LIMIT: usize = 20 * 1024;

    fn cut(mut text: String) -> String {
        if text.len() > Exchange::LIMIT {
            let mut end = Exchange::LIMIT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(" … [cut]");
        }
        text
    }

    /// Notes the request body.
    pub fn sent(&self, body: &serde_json::Value) {
        *self.sent.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Exchange::cut(body.to_string()));
    }

    /// Notes the response body.
    pub fn received(&self, body: &[u8]) {
        let text =
            String::from_utf8_lossy(&body[..body.len().min(Exchange::LIMIT + 4)]).into_owned();
        *self.received.lock().unwrap_or_else(|p| p.into_inner()) = Some(Exchange::cut(text));
    }

    /// What was noted, leaving the exchange empty for the next attempt.
    pub fn take(&self) -> (Option<String>, Option<String>) {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner()).take();
        let received = self
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        (sent, received)
    }
}

/// A provider's answer, in one shape for every provider.
#[derive(Debug, Clone, PartialEq)]
pub struct AiOutput {
    /// The result object (`ai_response.data`): the parsed answer for a structured output,
    /// else `{"content": <the answer's text>}`.
    pub data: serde_json::Value,
    /// The assistant message's text, as the model wrote it (JSON text for a structured
    /// output); what OpenAI-compatible clients get as `message.content`.
    pub content: String,
    /// The provider's own response body, when there is one (`POST /v1/ai` raw format).
    pub raw: Option<serde_json::Value>,
    /// Provider and model as reported in `meta`.
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AiError {
    pub message: String,
    /// Worth trying again (429, 5xx, timeouts, connection failures, invalid answers).
    pub retryable: bool,
    /// The provider's HTTP status, when it answered with an error.
    pub status: Option<u16>,
    /// The provider's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Tokens the failed attempt used (an answer that did not match its schema).
    pub usage: (u64, u64),
}

impl AiError {
    /// An error that trying again cannot fix.
    pub fn fatal(message: impl Into<String>) -> AiError {
        AiError {
            message: message.into(),
            retryable: false,
            status: None,
            retry_after: None,
            usage: (0, 0),
        }
    }

    /// An error that may go away: a timeout, a dropped connection, a bad answer.
    pub fn transient(message: impl Into<String>) -> AiError {
        AiError {
            retryable: true,
            ..AiError::fatal(message)
        }
    }
}

/// One model API.
pub trait Provider: Send + Sync {
    /// Asks for one whole answer.
    fn generate<'a>(
        &'a self,
        request: &'a AiRequest<'a>,
    ) -> BoxFuture<'a, Result<AiOutput, AiError>>;

    /// Asks for an answer and sends its text to `deltas` as it arrives. Providers that
    /// cannot stream answer whole, and the caller sends the text in one piece.
    fn stream<'a>(
        &'a self,
        request: &'a AiRequest<'a>,
        deltas: &'a Deltas,
    ) -> BoxFuture<'a, Result<AiOutput, AiError>> {
        let _ = deltas;
        self.generate(request)
    }
}

/// Where a streamed answer's text goes, piece by piece. Remembers whether anything was sent:
/// once a client has part of an answer, eddy cannot retry or fail over behind its back.
pub struct Deltas {
    tx: mpsc::Sender<String>,
    started: AtomicBool,
}

impl Deltas {
    pub fn new(tx: mpsc::Sender<String>) -> Deltas {
        Deltas {
            tx,
            started: AtomicBool::new(false),
        }
    }

    /// Sends a piece of text; a client that went away is not an error (the answer is still
    /// recorded).
    pub async fn send(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.started.store(true, Ordering::Release);
        let _ = self.tx.send(text.to_string()).await;
    }

    /// Whether any text was sent.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// One attempt as the timeline and `meta.attempts` record it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    pub provider: String,
    pub model: String,
    /// Why it failed; `None` for the attempt that succeeded.
    pub error: Option<String>,
    /// The provider's HTTP status when it answered with an error.
    pub http_status: Option<u16>,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The request body sent, if one was (see [`Exchange`]).
    pub request_body: Option<String>,
    /// The response body received, if one was.
    pub response_body: Option<String>,
}

/// A provider name eddy knows without a `base_url`: its wire format and API root.
pub fn preset(name: &str) -> Option<(ProviderKind, &'static str)> {
    Some(match name {
        "openai" => (ProviderKind::OpenAi, "https://api.openai.com/v1"),
        "anthropic" => (ProviderKind::Anthropic, "https://api.anthropic.com/v1"),
        "mistral" => (ProviderKind::OpenAi, "https://api.mistral.ai/v1"),
        "groq" => (ProviderKind::OpenAi, "https://api.groq.com/openai/v1"),
        "together" => (ProviderKind::OpenAi, "https://api.together.xyz/v1"),
        _ => return None,
    })
}

/// The text of the last `user` message: a string content, or the text parts of an array.
pub fn last_user_message(messages: &serde_json::Value) -> String {
    let Some(list) = messages.as_array() else {
        return String::new();
    };
    list.iter()
        .rev()
        .find(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
        .map(|m| text_of(m.get("content")))
        .unwrap_or_default()
}

/// A message content as plain text: a string, or the `text` parts of an array joined by
/// newlines.
pub fn text_of(content: Option<&serde_json::Value>) -> String {
    match content {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}
