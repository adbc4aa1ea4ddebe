//! Synchronous requests (`POST /v1/ai`, `POST /v1/chat/completions`): the model runs while
//! the client waits, and the answer goes back in the HTTP response, not to webhooks or
//! sockets. Only workflows without an `event_name` can be called this way: an event-driven
//! workflow needs a backend to call back, which a sync client cannot be.
//!
//! A sync request is recorded like an async one (so it shows in the request log with its
//! timeline), but only once it is answered and directly in its final state: `completed`, or
//! `failed(ai_failed)`, with no deliveries. Recording it `pending` first would let a restart
//! find it and run it again in the background for a client that is long gone. The price: a
//! crash during the model call leaves no trace, and the client sees its connection fail.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::Engine;
use super::accept::customer_data;
use super::model::{ai_result, attempt_logs};
use crate::ai::{AiError, AiOutput, Deltas};
use crate::catalog::{Project, Workflow};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::job::{ChannelId, ProjectId, Request};

/// A validated sync request.
#[derive(Debug, Clone)]
pub struct SyncInput {
    pub workflow: String,
    /// A non-empty array of `{role, content}` objects.
    pub messages: Value,
    pub metadata: Map<String, Value>,
    pub test_mode: bool,
    /// The request id and channel id it is recorded under, taken by the caller
    /// ([`crate::store::Store::new_request_id`]) so it can name the request before the
    /// answer is known (a streamed response's headers).
    pub id: (u64, ChannelId),
}

/// A sync request's outcome: the stored record and the model's result.
#[derive(Debug)]
pub struct SyncAnswer {
    pub record: Request,
    pub result: std::result::Result<AiOutput, AiError>,
}

impl Engine {
    /// The workflow a sync call runs: not found, or `model_not_supported` when it is
    /// event-driven.
    pub fn sync_workflow(&self, project: &ProjectId, name: &str) -> Result<Arc<Workflow>> {
        let workflow = self
            .catalog
            .workflow(project, name)
            .ok_or_else(|| Error::WorkflowNotFound(name.to_string()))?;
        if let Some(event) = &workflow.event_name {
            return Err(Error::ModelNotSupported(format!(
                "workflow '{name}' is event-driven (event_name '{event}'): call it with \
                 POST /v1/ai/async"
            )));
        }
        self.store.ensure_space()?;
        Ok(workflow)
    }

    /// Runs a sync request and records it; with `deltas`, streams the answer's text there.
    pub async fn run_sync(
        &self,
        project: &Project,
        input: SyncInput,
        deltas: Option<&Deltas>,
    ) -> Result<SyncAnswer> {
        let workflow = self.sync_workflow(&project.id, &input.workflow)?;
        let customer_data =
            customer_data(&workflow, &input.workflow, &input.messages, &input.metadata);
        let snapshot = self.snapshot(&workflow, None);
        let received = now_ms();
        let (result, reports) = self
            .call_models(
                &project.id,
                &snapshot,
                &input.messages,
                input.test_mode,
                deltas,
            )
            .await;
        let now = now_ms();
        let mut record = Request::pending(
            input.id,
            project.id,
            snapshot,
            input.messages.to_string(),
            Value::Object(customer_data).to_string(),
            None,
            input.test_mode,
            received,
        );
        record.updated_ms = now;
        record.ai_attempts = attempt_logs(&reports);
        let moved = match &result {
            Ok(out) => record
                .record_ai_success(ai_result(out, &reports, now), Vec::new(), now)
                .map(|()| {
                    let mut visited = vec![record.state];
                    visited.extend(record.settle(now, 0));
                    visited
                }),
            Err(e) => record
                .record_ai_failure(e.message.clone(), Vec::new(), now)
                .map(|()| vec![record.state]),
        };
        let visited = moved.map_err(|e| Error::Conflict(e.to_string()))?;
        self.store.insert_request(&mut record).await?;
        let mut steps = self.attempt_steps(&reports);
        steps.extend(
            visited
                .into_iter()
                .map(|state| self.transition(&record, state, now)),
        );
        self.store.append_steps(record.id, &steps).await?;
        Ok(SyncAnswer { record, result })
    }
}
