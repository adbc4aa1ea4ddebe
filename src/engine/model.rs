//! Calling a request's models with its project's credentials, and recording the attempts:
//! shared by [`drive`](super::drive) (async requests) and [`sync`](super::sync).

use serde_json::Value;

use super::Engine;
use crate::ai::{AiError, AiOutput, AttemptReport, Deltas};

use crate::job::{AiAttemptLog, AiResult, ProjectId, Step, WorkflowSnapshot};

impl Engine {
    /// Runs `workflow`'s models for a request of `project`; with `deltas`, streams the
    /// answer's text there.
    pub(crate) async fn call_models(
        &self,
        project: &ProjectId,
        workflow: &WorkflowSnapshot,
        messages: &Value,
        test_mode: bool,
        deltas: Option<&Deltas>,
    ) -> (std::result::Result<AiOutput, AiError>, Vec<AttemptReport>) {
        let catalog = self.catalog.clone();
        let project = *project;
        let credentials = move |name: &str| catalog.provider(&project, name);
        match deltas {
            Some(deltas) => {
                self.models
                    .stream(workflow, messages, test_mode, &credentials, deltas)
                    .await
            }
            None => {
                self.models
                    .run(workflow, messages, test_mode, &credentials)
                    .await
            }
        }
    }

    /// The timeline steps of model attempts, counted in the metrics.
    pub(crate) fn attempt_steps(&self, reports: &[AttemptReport]) -> Vec<(u64, Step)> {
        reports
            .iter()
            .map(|r| {
                self.metrics.ai_attempt(
                    &r.provider,
                    r.error.is_none(),
                    std::time::Duration::from_millis(r.duration_ms),
                );
                let step = Step::AiAttempt {
                    provider: r.provider.clone(),
                    model: r.model.clone(),
                    error: r.error.clone(),
                    http_status: r.http_status,
                    duration_ms: r.duration_ms,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    request_body: r.request_body.clone(),
                    response_body: r.response_body.clone(),
                };
                (r.started_ms, step)
            })
            .collect()
    }
}

/// The attempts as the record keeps them.
pub(crate) fn attempt_logs(reports: &[AttemptReport]) -> Vec<AiAttemptLog> {
    reports
        .iter()
        .map(|r| AiAttemptLog {
            provider: r.provider.clone(),
            model: r.model.clone(),
            error: r.error.clone(),
            http_status: r.http_status,
            at_ms: r.started_ms,
            duration_ms: r.duration_ms,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        })
        .collect()
}

/// The recorded result of a successful run; its duration covers every attempt.
pub(crate) fn ai_result(out: &AiOutput, reports: &[AttemptReport], now: u64) -> AiResult {
    AiResult {
        data: out.data.to_string(),
        provider: out.provider.clone(),
        model: out.model.clone(),
        prompt_tokens: out.prompt_tokens,
        completion_tokens: out.completion_tokens,
        duration_ms: reports.iter().map(|r| r.duration_ms).sum(),
        generated_ms: now,
    }
}
