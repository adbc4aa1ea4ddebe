//! The engine: the business rules of the event-driven flow, written against the store,
//! the catalog, the models, the deliverer and the hub.
//!
//! - [`Engine::accept`] (in `accept.rs`): validate against the workflow, store the request,
//!   wait for the group commit, schedule it. Only then does the client get its 200.
//! - [`Engine::callback`]: record the backend's callback durably, then push and complete.
//! - [`drive`](Engine::drive) (in `drive.rs`): what the scheduler runs when a request is
//!   due: the model, webhook attempts and retries, callback timeouts, final pushes.
//! - [`Engine::run_sync`] (in `sync.rs`): a synchronous request, answered inline and
//!   recorded in its final state.
//!
//! Every change goes through `Store::update` → commit → effect: no webhook leaves for an
//! unrecorded result, no push for an unrecorded callback.

mod accept;
mod attempt;
mod dlq;
mod drive;
mod lanes;
mod lease;
mod model;
mod retention;
mod sync;

pub use accept::AcceptInput;
pub use attempt::REQUEST_ENDPOINT;
pub use dlq::Redrive;
pub use retention::Swept;
pub use sync::{SyncAnswer, SyncInput};

use std::sync::Arc;
use std::time::Duration;

use crate::ai::Models;
use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::config::Config;
use crate::delivery::Deliverer;
use crate::error::{Error, Result};
use crate::job::{CallbackData, ChannelId, Event, ProjectId, Request, State, Step};
use crate::metrics::{Gauges, Metrics};
use crate::payload;
use crate::scheduler::SchedulerHandle;
use crate::store::{Store, Update};
use crate::ws::{self, Claims, Hub, Replay, TokenKey};

/// What a client needs to follow its request.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub channel_id: String,
    pub project_id: String,
    pub ws_token: String,
    pub websocket_url: String,
    pub websocket_channel: String,
    /// JSON text.
    pub customer_data: String,
}

/// A validated callback body.
#[derive(Debug, Clone)]
pub enum CallbackInput {
    Data {
        /// JSON text of `data`.
        data: String,
        task_id: Option<String>,
        /// JSON text of `metadata`.
        metadata: Option<String>,
        /// The whole body, for the timeline.
        body: String,
    },
    Error {
        error: String,
        message: String,
    },
}

/// Everything the engine works with.
pub struct Engine {
    pub(crate) store: Store,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) hub: Arc<Hub>,
    models: Models,
    deliverer: Deliverer,
    pub(crate) metrics: Arc<Metrics>,
    /// Bounded in-flight webhook attempts per endpoint, and the deliveries waiting for them.
    lanes: lanes::Lanes,
    scheduler: SchedulerHandle,
    config: Arc<Config>,
    tokens: TokenKey,
    /// Base of `callback_url`s.
    public_url: String,
    /// `ws(s)://host/socket`.
    websocket_url: String,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        hub: Arc<Hub>,
        models: Models,
        scheduler: SchedulerHandle,
        config: Arc<Config>,
        tokens: TokenKey,
        public_url: String,
    ) -> Engine {
        let websocket_url = format!(
            "{}/socket",
            public_url
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        );
        Engine {
            deliverer: Deliverer::new(config.webhook_timeout, !config.allow_private_webhooks),
            lanes: lanes::Lanes::new(config.endpoint_concurrency, scheduler.clone()),
            metrics: Arc::new(Metrics::default()),
            store,
            catalog,
            hub,
            models,
            scheduler,
            config,
            tokens,
            public_url,
            websocket_url,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Whether request `id` waits in an endpoint's lane, which runs it again in turn.
    pub fn waits_in_lane(&self, id: u64) -> bool {
        self.lanes.holds(id)
    }

    /// Every metric in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let commit = self.store.commit_stats();
        self.metrics.render(&Gauges {
            requests_by_state: self.store.state_counts(),
            dead_letters: self.store.dlq_len(),
            open_sockets: self.hub.open_sockets(),
            commit_batch: &commit.batch,
            commit_latency: &commit.latency,
        })
    }

    pub fn tokens(&self) -> &TokenKey {
        &self.tokens
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn ticket(&self, record: &Request) -> Ticket {
        let expires_s = now_ms() / 1000 + self.config.ws_token_ttl.as_secs();
        let ws_token = self.tokens.issue(Claims {
            project: record.project_id,
            channel: record.channel_id,
            expires_s,
        });
        Ticket {
            channel_id: record.channel_id.to_string(),
            project_id: record.project_id.to_string(),
            ws_token,
            websocket_url: self.websocket_url.clone(),
            websocket_channel: ws::topic(&record.project_id, &record.channel_id),
            customer_data: record.customer_data.clone(),
        }
    }

    /// The request on `channel` if it belongs to `project` (another project's is not found).
    pub async fn request_of(&self, project: &ProjectId, channel: &ChannelId) -> Result<Request> {
        match self.store.request_by_channel(channel).await? {
            Some(r) if &r.project_id == project => Ok(r),
            _ => Err(Error::NotFound(format!("request '{channel}'"))),
        }
    }

    /// A fresh WebSocket token for an existing request of `project`.
    pub async fn reconnect(&self, project: &ProjectId, channel: &ChannelId) -> Result<Ticket> {
        let record = self.request_of(project, channel).await?;
        Ok(self.ticket(&record))
    }

    /// Records the backend's callback durably, then pushes the result and completes the
    /// request. Accepted while `generated` too: the backend may answer before eddy has
    /// recorded the webhook's 2xx.
    pub async fn callback(
        &self,
        project: &ProjectId,
        channel: &ChannelId,
        input: CallbackInput,
    ) -> Result<()> {
        let record = self.request_of(project, channel).await?;
        let now = now_ms();
        let mut seen = None;
        let update = self
            .store
            .update(record.id, now, |r| {
                seen = Some((r.state, r.due_ms));
                if !r.awaits_callback() {
                    return Err(Error::Conflict(format!(
                        "workflow '{}' has no event_name: no callback is expected",
                        r.workflow.name
                    )));
                }
                match r.state {
                    State::Pending => {
                        return Err(Error::Conflict(
                            "the AI result is not ready yet: no callback is expected".into(),
                        ));
                    }
                    State::Generated | State::Delivered => {}
                    _ => {
                        return Err(Error::AlreadyCompleted(format!(
                            "request is already {}",
                            r.failure().map_or(r.state.as_str(), |f| f.as_str())
                        )));
                    }
                }
                match &input {
                    CallbackInput::Data {
                        data,
                        task_id,
                        metadata,
                        ..
                    } => {
                        r.apply(Event::CallbackReceived, now)
                            .map_err(|e| Error::Conflict(e.to_string()))?;
                        r.callback = Some(CallbackData {
                            data: data.clone(),
                            task_id: task_id.clone(),
                            metadata: metadata.clone(),
                            error: None,
                            received_ms: now,
                        });
                    }
                    CallbackInput::Error { error, message } => {
                        r.apply(Event::CallbackErrored, now)
                            .map_err(|e| Error::Conflict(e.to_string()))?;
                        r.error_message = Some(format!("{error}: {message}"));
                        r.callback = Some(CallbackData {
                            data: "null".into(),
                            task_id: None,
                            metadata: None,
                            error: Some((error.clone(), message.clone())),
                            received_ms: now,
                        });
                    }
                }
                Ok(())
            })
            .await?;
        let record = match update {
            Update::Done(record, ()) => record,
            Update::Refused(e) => {
                self.metrics.callback("rejected");
                // A callback recorded by a try that then failed (its work message not
                // acknowledged): on a cluster node, publish that message again.
                if let Some((State::Callback, due)) = seen
                    && self.scheduler.clustered()
                {
                    self.scheduler
                        .wake(record.id, due)
                        .await
                        .map_err(crate::store::StoreError::from)?;
                }
                return Err(e);
            }
            Update::Missing => return Err(Error::NotFound("request".into())),
        };
        // Counted now: once the record is in `Callback`, a scheduler round may finish it
        // (it is due at once) before the commit below returns.
        self.metrics.callback(if record.state == State::Callback {
            "accepted"
        } else {
            "error"
        });
        let step = match input {
            CallbackInput::Data { body, .. } => Step::CallbackReceived { body },
            CallbackInput::Error { error, message } => Step::CallbackError { error, message },
        };
        let steps = [(now, step), self.transition(&record, record.state, now)];
        self.store.append_steps(record.id, &steps).await?;
        self.store.commit().await?;
        if record.state == State::Callback {
            // On a cluster node the work message this write published finishes it, on
            // whichever node takes it (finishing it here too would push it twice).
            if !self.scheduler.clustered() {
                self.finish_callback(record.id).await;
            }
        } else {
            self.push_and_note(&record, None).await?;
        }
        Ok(())
    }

    /// Pushes the record's latest message to its channel; the timeline step saying so
    /// (with how many sockets got it) is for the caller to write.
    fn push_latest(&self, record: &Request) -> Option<(u64, Step)> {
        let push = payload::latest_push(record)?;
        let topic = ws::topic(&record.project_id, &record.channel_id);
        let sockets = self
            .hub
            .push(&record.channel_id, &topic, "response", &push.payload);
        self.metrics.pushed(push.status.as_str());
        let step = Step::Pushed {
            status: push.status.as_str().to_string(),
            sockets: sockets as u32,
        };
        Some((now_ms(), step))
    }

    /// The callback timeout of a request: its workflow's, else the server's.
    fn callback_timeout_ms(&self, record: &Request) -> u64 {
        callback_timeout_ms(&self.config, record)
    }

    /// When the first attempt of a new delivery is due.
    fn first_attempt_at(&self, now: u64) -> u64 {
        let delay = self
            .config
            .retry_schedule
            .first()
            .copied()
            .unwrap_or_default();
        now + jittered(delay).as_millis() as u64
    }

    /// What a webhook attempt depends on, borrowed for one attempt.
    fn attempts(&self) -> attempt::Ctx<'_> {
        attempt::Ctx {
            store: &self.store,
            catalog: &self.catalog,
            deliverer: &self.deliverer,
            metrics: &self.metrics,
            config: &self.config,
        }
    }
}

/// The callback timeout of `record`: its workflow's, else the server's.
fn callback_timeout_ms(config: &Config, record: &Request) -> u64 {
    record
        .workflow
        .callback_timeout_ms
        .unwrap_or(config.callback_timeout.as_millis() as u64)
}

/// The timeline step of a state `record` entered at `now`; finished requests are counted.
fn transition(metrics: &Metrics, record: &Request, state: State, now: u64) -> (u64, Step) {
    if state.is_terminal() {
        let since_accept = Duration::from_millis(now.saturating_sub(record.created_ms));
        metrics.finished(&record.workflow.name, state, since_accept);
    }
    (now, Step::Transition { state })
}

/// `delay` scaled by a random factor in [0.8, 1.2].
pub fn jittered(delay: Duration) -> Duration {
    use rand::Rng;
    delay.mul_f64(rand::rng().random_range(0.8..=1.2))
}

impl Replay for Engine {
    fn latest<'a>(
        &'a self,
        channel: &'a ChannelId,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let record = self.store.request_by_channel(channel).await?;
            Ok(record
                .as_ref()
                .and_then(payload::latest_push)
                .map(|push| push.payload))
        })
    }
}
