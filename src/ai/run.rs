//! [`Models`]: runs a workflow's model the way ModelRiver does. The primary
//! `(provider, model)` is tried first, then each of `fallbacks` in order; each is retried
//! after a retryable failure (429, 5xx, timeout, connection failure, an answer that is not
//! the structured output) up to [`Policy::retries`] times with exponential backoff; every
//! attempt is reported. Test mode replaces all of it with one call to [`Testing`].
//!
//! Credentials are looked up per call through a [`Credentials`] function (they belong to
//! the request's project); adapters are built per attempt around one shared HTTP client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::anthropic::Anthropic;
use super::call::Http;
use super::openai::OpenAi;
use super::schema::Checker;
use super::testing::{self, Testing};
use super::{AiError, AiOutput, AiRequest, AttemptReport, Deltas, Exchange, Provider};
use crate::catalog::{ProviderCredential, ProviderKind};
use crate::clock::now_ms;
use crate::egress;
use crate::job::WorkflowSnapshot;

/// A longer wait than this (a provider's `Retry-After`) moves on to the next provider
/// instead of waiting.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// A project's provider credentials by name.
pub type Credentials<'a> = &'a (dyn Fn(&str) -> Option<Arc<ProviderCredential>> + Send + Sync);

/// How model calls are made.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Per attempt, unless the credential sets its own.
    pub timeout: Duration,
    /// Further attempts on the same provider after a retryable failure.
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one (±20% jitter).
    pub backoff: Duration,
    /// The SSRF guard is on for provider URLs.
    pub guarded: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            timeout: Duration::from_secs(60),
            retries: 2,
            backoff: Duration::from_millis(500),
            guarded: true,
        }
    }
}

/// The models a server can call. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Models {
    http: reqwest::Client,
    policy: Policy,
    schemas: Arc<Schemas>,
}

impl Default for Models {
    fn default() -> Self {
        Models::new(Policy::default())
    }
}

/// A structured output's schema, compiled.
type Compiled = Arc<(Value, Checker)>;

/// Compiled schemas by their text, so a schema is compiled once, not once per request.
#[derive(Default)]
struct Schemas {
    compiled: Mutex<HashMap<String, Compiled>>,
}

/// Schemas kept compiled at most; past it the cache starts over.
const SCHEMAS_KEPT: usize = 1024;

impl Schemas {
    fn get(&self, text: &str) -> Result<Compiled, String> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = compiled.get(text) {
            return Ok(found.clone());
        }
        let fresh = Arc::new(compile(text)?);
        if compiled.len() >= SCHEMAS_KEPT {
            compiled.clear();
        }
        compiled.insert(text.to_string(), fresh.clone());
        Ok(fresh)
    }
}

impl Models {
    pub fn new(policy: Policy) -> Models {
        let http = egress::client(policy.guarded, policy.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("reqwest client builds with static settings");
        Models {
            http,
            policy,
            schemas: Arc::default(),
        }
    }

    fn adapter(&self, c: &ProviderCredential) -> Box<dyn Provider> {
        let guarded = self.policy.guarded;
        match c.kind {
            ProviderKind::OpenAi => Box::new(Http::<OpenAi>::new(&self.http, c, guarded)),
            ProviderKind::Anthropic => Box::new(Http::<Anthropic>::new(&self.http, c, guarded)),
        }
    }

    /// Runs the workflow's model on `messages`: the result or why every provider failed,
    /// with a report of every attempt made.
    pub async fn run(
        &self,
        workflow: &WorkflowSnapshot,
        messages: &Value,
        test_mode: bool,
        credentials: Credentials<'_>,
    ) -> (Result<AiOutput, AiError>, Vec<AttemptReport>) {
        self.run_with(workflow, messages, test_mode, credentials, None)
            .await
    }

    /// Like [`Models::run`], sending the answer's text to `deltas`: as the provider streams
    /// it when it can (OpenAI-compatible or Anthropic, no structured output: that must be
    /// checked whole before anyone sees it), else whole once
    /// it is known. Nothing is retried once part of an answer was sent.
    pub async fn stream(
        &self,
        workflow: &WorkflowSnapshot,
        messages: &Value,
        test_mode: bool,
        credentials: Credentials<'_>,
        deltas: &Deltas,
    ) -> (Result<AiOutput, AiError>, Vec<AttemptReport>) {
        self.run_with(workflow, messages, test_mode, credentials, Some(deltas))
            .await
    }

    async fn run_with(
        &self,
        workflow: &WorkflowSnapshot,
        messages: &Value,
        test_mode: bool,
        credentials: Credentials<'_>,
        deltas: Option<&Deltas>,
    ) -> (Result<AiOutput, AiError>, Vec<AttemptReport>) {
        let mut reports = Vec::new();
        let exchange = Exchange::default();
        let schema: Option<Compiled> = match workflow.schema.as_deref().map(|t| self.schemas.get(t))
        {
            None => None,
            Some(Ok(schema)) => Some(schema),
            Some(Err(e)) => return (Err(AiError::fatal(e)), reports),
        };
        let testing = test_mode || workflow.testing || workflow.provider == testing::NAME;
        let mut routes = vec![(workflow.provider.as_str(), workflow.model.as_str())];
        if !testing {
            routes.extend(
                workflow
                    .fallbacks
                    .iter()
                    .map(|(p, m)| (p.as_str(), m.as_str())),
            );
        }
        let mut failures = Vec::new();
        for (name, model) in routes {
            let (provider, label, tries, timeout): (Box<dyn Provider>, &str, u32, Duration) =
                if testing || name == testing::NAME {
                    (
                        Box::new(Testing),
                        testing::PROVIDER_LABEL,
                        1,
                        self.policy.timeout,
                    )
                } else {
                    match credentials(name) {
                        Some(c) => {
                            let timeout = c
                                .timeout_ms
                                .map_or(self.policy.timeout, Duration::from_millis);
                            (self.adapter(&c), name, 1 + self.policy.retries, timeout)
                        }
                        None => {
                            let e = format!(
                                "provider '{name}' is not configured: add its credentials with \
                                 POST /console/providers, or run the workflow in test mode"
                            );
                            reports.push(report(
                                name,
                                model,
                                now_ms(),
                                0,
                                &Err(AiError::fatal(&e)),
                                &exchange,
                            ));
                            failures.push(format!("{name}/{model}: {e}"));
                            continue;
                        }
                    }
                };
            let is_testing = label == testing::PROVIDER_LABEL;
            let request = AiRequest {
                model,
                messages,
                system_prompt: workflow.system_prompt.as_deref(),
                schema: schema.as_deref().map(|(v, _)| v),
                sample_data: workflow.sample_data.as_deref(),
                response_delay: std::time::Duration::from_millis(workflow.response_delay_ms),
                timeout,
                exchange: &exchange,
            };
            let shown_model = if is_testing {
                testing::MODEL_LABEL
            } else {
                model
            };
            for attempt in 0..tries {
                let started_ms = now_ms();
                let started = Instant::now();
                let result = match (deltas, schema.as_deref()) {
                    (Some(d), None) => provider.stream(&request, d).await,
                    _ => provider.generate(&request).await,
                };
                let result = match (schema.as_deref(), result) {
                    (Some((_, checker)), Ok(out)) if !is_testing => checked(checker, out),
                    (_, result) => result,
                };
                let duration_ms = started.elapsed().as_millis() as u64;
                reports.push(report(
                    label,
                    shown_model,
                    started_ms,
                    duration_ms,
                    &result,
                    &exchange,
                ));
                let e = match result {
                    Ok(out) => {
                        if let Some(d) = deltas
                            && !d.started()
                        {
                            d.send(&out.content).await;
                        }
                        return (Ok(out), reports);
                    }
                    Err(e) => e,
                };
                if deltas.is_some_and(Deltas::started) {
                    let message = format!("{label}/{shown_model} failed mid-stream: {e}");
                    return (Err(AiError::fatal(message)), reports);
                }
                let wait = backoff(self.policy.backoff, attempt, e.retry_after);
                if !e.retryable || attempt + 1 >= tries || wait > MAX_WAIT {
                    failures.push(format!("{label}/{shown_model}: {}", e.message));
                    break;
                }
                tracing::debug!(provider = label, model, attempt, error = %e, "retrying model");
                tokio::time::sleep(wait).await;
            }
        }
        let message = match failures.len() {
            1 => failures.remove(0),
            _ => format!("every provider failed: {}", failures.join("; ")),
        };
        (Err(AiError::fatal(message)), reports)
    }
}

fn compile(text: &str) -> Result<(Value, Checker), String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("the structured output's schema is not JSON: {e}"))?;
    let checker =
        Checker::new(&value).map_err(|e| format!("the structured output's schema {e}"))?;
    Ok((value, checker))
}

/// An answer that does not match the schema is a failed (retryable) attempt.
fn checked(checker: &Checker, out: AiOutput) -> Result<AiOutput, AiError> {
    match checker.check(&out.data) {
        Ok(()) => Ok(out),
        Err(why) => {
            let mut e = AiError::transient(format!("the answer does not match the schema: {why}"));
            e.usage = (out.prompt_tokens, out.completion_tokens);
            Err(e)
        }
    }
}

/// The wait before retry number `attempt + 1`: `base × 2^attempt` ±20%, at least the
/// provider's `Retry-After`.
fn backoff(base: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    use rand::Rng;
    let scaled = base
        .saturating_mul(1u32 << attempt.min(16))
        .mul_f64(rand::rng().random_range(0.8..=1.2));
    retry_after.map_or(scaled, |asked| scaled.max(asked))
}

fn report(
    provider: &str,
    model: &str,
    started_ms: u64,
    duration_ms: u64,
    result: &Result<AiOutput, AiError>,
    exchange: &Exchange,
) -> AttemptReport {
    let (request_body, response_body) = exchange.take();
    let (error, http_status, (prompt_tokens, completion_tokens)) = match result {
        Ok(out) => (None, None, (out.prompt_tokens, out.completion_tokens)),
        Err(e) => (Some(e.message.clone()), e.status, e.usage),
    };
    AttemptReport {
        provider: match result {
            Ok(out) => out.provider.clone(),
            Err(_) => provider.to_string(),
        },
        model: match result {
            Ok(out) => out.model.clone(),
            Err(_) => model.to_string(),
        },
        error,
        http_status,
        started_ms,
        duration_ms,
        prompt_tokens,
        completion_tokens,
        request_body,
        response_body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff doubles per retry within ±20% and never undercuts `Retry-After`.
    #[test]
    fn backoff_doubles_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        for attempt in 0..4 {
            let wait = backoff(base, attempt, None);
            let nominal = 100.0 * f64::from(1u32 << attempt);
            let ms = wait.as_secs_f64() * 1000.0;
            assert!(
                ms >= nominal * 0.79 && ms <= nominal * 1.21,
                "{attempt}: {wait:?}"
            );
        }
        let asked = Duration::from_secs(3);
        assert_eq!(backoff(base, 0, Some(asked)), asked);
    }
}
