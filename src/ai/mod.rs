//! Models behind workflows: the [`Provider`] trait every adapter implements, and the
//! [`Models`] registry that picks one for a request and reports each attempt.
//!
//! Test mode (provider `testing`, `mode: "testing"` or `test_mode: true` on the request)
//! never calls a model: see [`testing`]. It is the offline default. Knows nothing about
//! webhooks, sockets or the store.

pub mod testing;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::job::WorkflowSnapshot;

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
    pub schema: Option<&'a str>,
    /// Sample data of the structured output, if any (test mode returns it).
    pub sample_data: Option<&'a str>,
    pub response_delay: Duration,
}

/// A provider's answer, in one shape for every provider.
#[derive(Debug, Clone, PartialEq)]
pub struct AiOutput {
    /// The result object (`ai_response.data`).
    pub data: serde_json::Value,
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
    /// Worth trying again (429, 5xx, timeouts).
    pub retryable: bool,
}

/// One model API.
pub trait Provider: Send + Sync {
    fn generate<'a>(
        &'a self,
        request: &'a AiRequest<'a>,
    ) -> BoxFuture<'a, Result<AiOutput, AiError>>;
}

/// One attempt as the timeline records it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    pub provider: String,
    pub model: String,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The providers a server can call, by name.
#[derive(Clone)]
pub struct Models {
    testing: Arc<testing::Testing>,
    providers: HashMap<String, Arc<dyn Provider>>,
}

impl Default for Models {
    fn default() -> Self {
        Models {
            testing: Arc::new(testing::Testing),
            providers: HashMap::new(),
        }
    }
}

impl Models {
    /// Adds (or replaces) a provider under `name`.
    pub fn with_provider(mut self, name: &str, provider: Arc<dyn Provider>) -> Self {
        self.providers.insert(name.to_string(), provider);
        self
    }

    /// Runs the workflow's model on `messages`: the result or the last error, with a report
    /// of every attempt made.
    pub async fn run(
        &self,
        workflow: &WorkflowSnapshot,
        messages: &serde_json::Value,
        test_mode: bool,
    ) -> (Result<AiOutput, AiError>, Vec<AttemptReport>) {
        let testing = test_mode || workflow.testing || workflow.provider == testing::NAME;
        let provider: Option<&dyn Provider> = if testing {
            Some(self.testing.as_ref())
        } else {
            self.providers.get(&workflow.provider).map(|p| p.as_ref())
        };
        let (label, model) = if testing {
            (testing::PROVIDER_LABEL, testing::MODEL_LABEL)
        } else {
            (workflow.provider.as_str(), workflow.model.as_str())
        };
        let Some(provider) = provider else {
            let error = AiError {
                message: format!(
                    "provider '{}' is not configured: add its credentials or run the workflow in test mode",
                    workflow.provider
                ),
                retryable: false,
            };
            let report = AttemptReport {
                provider: label.to_string(),
                model: model.to_string(),
                error: Some(error.message.clone()),
                duration_ms: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
            };
            return (Err(error), vec![report]);
        };
        let request = AiRequest {
            model: &workflow.model,
            messages,
            system_prompt: workflow.system_prompt.as_deref(),
            schema: workflow.schema.as_deref(),
            sample_data: workflow.sample_data.as_deref(),
            response_delay: Duration::from_millis(workflow.response_delay_ms),
        };
        let started = Instant::now();
        let result = provider.generate(&request).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let report = match &result {
            Ok(out) => AttemptReport {
                provider: out.provider.clone(),
                model: out.model.clone(),
                error: None,
                duration_ms,
                prompt_tokens: out.prompt_tokens,
                completion_tokens: out.completion_tokens,
            },
            Err(e) => AttemptReport {
                provider: label.to_string(),
                model: model.to_string(),
                error: Some(e.message.clone()),
                duration_ms,
                prompt_tokens: 0,
                completion_tokens: 0,
            },
        };
        (result, vec![report])
    }
}
