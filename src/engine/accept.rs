//! Accepting an async request: the workflow as the request will run it (frozen in the
//! record, with the request's own `events`), its `customer_data`, the durable insert (once
//! per idempotency key), then the schedule. The client's 200 waits for the group commit.

use super::{Engine, Ticket};
use crate::catalog::{Project, Workflow};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::job::{Request, State, WorkflowSnapshot};
use crate::secret;
use crate::store::Claim;

/// A validated `POST /v1/ai/async` body.
#[derive(Debug, Clone)]
pub struct AcceptInput {
    pub workflow: String,
    /// A non-empty array of `{role, content}` objects.
    pub messages: serde_json::Value,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub webhook_url: Option<String>,
    pub test_mode: bool,
    /// Request-level `events`: the first names the event of a request whose workflow has
    /// no `event_name`, which makes it event-driven.
    pub events: Vec<String>,
}

/// Reads `path` (`metadata.segment`, `messages.0.content`) out of a request body.
fn lookup<'a>(root: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(root, |node, part| match node {
        serde_json::Value::Object(map) => map.get(part),
        serde_json::Value::Array(list) => part.parse::<usize>().ok().and_then(|i| list.get(i)),
        _ => None,
    })
}

/// `customer_data`: the request's `metadata` plus the workflow's `cache_fields`, keyed by
/// path.
pub(super) fn customer_data(
    workflow: &Workflow,
    name: &str,
    messages: &serde_json::Value,
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut customer_data = metadata.clone();
    if !workflow.cache_fields.is_empty() {
        let body = serde_json::json!({
            "workflow": name,
            "messages": messages,
            "metadata": metadata,
        });
        for path in &workflow.cache_fields {
            if let Some(value) = lookup(&body, path) {
                customer_data.insert(path.clone(), value.clone());
            }
        }
    }
    customer_data
}

impl Engine {
    /// The workflow as the request will run it; `event` is the request's own event name,
    /// used when the workflow has none.
    pub(super) fn snapshot(&self, workflow: &Workflow, event: Option<&String>) -> WorkflowSnapshot {
        let output = workflow
            .structured_output_id
            .as_deref()
            .and_then(|id| self.catalog.structured_output(&workflow.project, id));
        WorkflowSnapshot {
            name: workflow.name.clone(),
            event_name: workflow.event_name.clone().or_else(|| event.cloned()),
            provider: workflow.provider.clone(),
            model: workflow.model.clone(),
            testing: workflow.testing,
            response_delay_ms: workflow.response_delay_ms,
            callback_timeout_ms: workflow.callback_timeout_ms,
            structured_output_id: workflow.structured_output_id.clone(),
            schema: output.as_ref().map(|o| o.schema.clone()),
            sample_data: output.as_ref().and_then(|o| o.sample_data.clone()),
            system_prompt: workflow.system_prompt.clone(),
            fallbacks: workflow.fallbacks.clone(),
        }
    }

    /// Accepts an async request: validates it against the workflow, stores it durably and
    /// schedules it. With an idempotency key, a repeat returns the first request's ticket.
    pub async fn accept(
        &self,
        project: &Project,
        input: AcceptInput,
        idempotency_key: Option<&str>,
    ) -> Result<Ticket> {
        let workflow = self
            .catalog
            .workflow_current(&project.id, &input.workflow)
            .await?
            .ok_or_else(|| Error::WorkflowNotFound(input.workflow.clone()))?;
        self.store.ensure_space()?;
        let snapshot = self.snapshot(&workflow, input.events.first());
        if let Some(event) = &snapshot.event_name
            && input.webhook_url.is_none()
            && self
                .catalog
                .endpoints_for(&project.id, Some(event))
                .is_empty()
        {
            return Err(Error::Invalid(format!(
                "request for workflow '{}' is event-driven but no webhook endpoint receives \
                 event '{event}': register one with POST /console/webhooks or pass webhook_url",
                workflow.name,
            )));
        }

        let customer_data =
            customer_data(&workflow, &input.workflow, &input.messages, &input.metadata);

        let now = now_ms();
        let ids = self.store.new_request_id().await?;
        let id = ids.0;
        let mut record = Request::pending(
            ids,
            project.id,
            snapshot,
            input.messages.to_string(),
            serde_json::Value::Object(customer_data).to_string(),
            input.webhook_url,
            input.test_mode,
            now,
        );
        match idempotency_key {
            Some(key) => {
                let hash = secret::hash_key(key);
                let ttl = self.config.idempotency_ttl.as_millis() as u64;
                let claim = self
                    .store
                    .insert_request_once(&mut record, &project.id, &hash, ttl)
                    .await?;
                if let Claim::Existing(first) = claim {
                    let first =
                        self.store.request(first).await?.ok_or_else(|| {
                            Error::Unavailable("idempotent request vanished".into())
                        })?;
                    // The first request may still be on its way to disk.
                    self.store.commit().await?;
                    // Its accept may have failed after its record was stored (its work
                    // message unacknowledged): on a cluster node, publish it again while
                    // it is pending (its due time, hence the message id, is then the
                    // accept's, so a message that did land is not stored twice; later the
                    // request has moved on and a round may be driving it).
                    if self.scheduler.clustered() && first.state == State::Pending {
                        self.scheduler
                            .wake(first.id, first.due_ms)
                            .await
                            .map_err(crate::store::StoreError::from)?;
                    }
                    return Ok(self.ticket(&first));
                }
            }
            None => self.store.insert_request(&mut record).await?,
        }
        self.store.commit().await?;
        self.metrics.accepted(&record.workflow.name);
        self.scheduler.schedule(id, record.due_ms);
        tracing::debug!(channel_id = %record.channel_id, "accepted");
        Ok(self.ticket(&record))
    }
}

#[cfg(test)]
mod tests {
    use super::lookup;
    use serde_json::json;

    /// Cache-field paths walk objects by key and arrays by index.
    #[test]
    fn cache_field_paths() {
        let body = json!({"metadata": {"segment": "pro"}, "messages": [{"content": "hi"}]});
        assert_eq!(lookup(&body, "metadata.segment"), Some(&json!("pro")));
        assert_eq!(lookup(&body, "messages.0.content"), Some(&json!("hi")));
        assert_eq!(lookup(&body, "messages.1.content"), None);
        assert_eq!(lookup(&body, "metadata.segment.x"), None);
    }
}
