//! Driving a due request forward: the round loop the scheduler runs.
//!
//! Each round reads the record, does the one thing its state calls for (run the model,
//! finish a recorded callback, time out a callback, settle, or make the webhook attempts
//! that are due, each admitted by its endpoint's lane and run as a unit by `attempt`),
//! records the outcome through `Store::update`, commits before any effect of it, and
//! reads again, until nothing is due now. The return value is when the request is next
//! due. Every round is safe to repeat: a duplicate timer re-reads the record and finds
//! nothing to do, and a crash mid-round repeats at most the effect (a webhook with the
//! same `webhook-id`, a push), never skips it.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tracing::Instrument;

use super::attempt::{Attempt, REQUEST_ENDPOINT, Recorded};
use super::{Engine, model};
use crate::clock::now_ms;
use crate::error::Result;
use crate::job::{Delivery, DeliveryOutcome, Event, Request, State, Step};
use crate::payload;
use crate::secret;
use crate::store::Update;

/// Rounds per `drive` call before handing back to the scheduler (a guard against a
/// request that keeps being due without progress).
const MAX_ROUNDS: usize = 16;
/// How long an attempt waits for a permit of its endpoint's lane before it is deferred.
const LANE_WAIT: Duration = Duration::from_millis(50);

/// What a round did.
enum Round {
    /// Changed something: read the record again.
    Again,
    /// Nothing is due now.
    Idle,
    /// Deliveries are due but their endpoints' lanes are full: look again at this time.
    Deferred(u64),
}

/// The lane of a delivery: its endpoint, or for a request's own `webhook_url` its host.
fn lane_of(d: &Delivery) -> String {
    if d.endpoint_id != REQUEST_ENDPOINT {
        return d.endpoint_id.clone();
    }
    reqwest::Url::parse(&d.url)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_else(|| d.url.clone())
}

impl Engine {
    /// Runs what is due for request `id` (fired by the timer for `fired_due`) inside a
    /// span carrying its channel id; returns when it is next due.
    pub async fn drive(&self, id: u64, fired_due: u64) -> Option<u64> {
        let record = match self.store.request(id) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(id, error = %e, "cannot read request; retrying in 1s");
                return Some(now_ms() + 1000);
            }
        };
        // A timer for a due time the record no longer has: a leftover of a crash between
        // swapping the record and removing its old due key.
        if record.due_ms != Some(fired_due)
            && let Err(e) = self.store.drop_stale_due(fired_due, id)
        {
            tracing::warn!(id, error = %e, "cannot drop stale due entry");
        }
        let span = tracing::info_span!(
            "request",
            channel_id = %record.channel_id
        );
        self.rounds(record).instrument(span).await
    }

    async fn rounds(&self, first: Request) -> Option<u64> {
        let id = first.id;
        let mut record = Some(first);
        for _ in 0..MAX_ROUNDS {
            let current = match record.take() {
                Some(r) => r,
                None => match self.store.request(id) {
                    Ok(Some(r)) => r,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::error!(id, error = %e, "cannot read request; retrying in 1s");
                        return Some(now_ms() + 1000);
                    }
                },
            };
            let due = current.due_ms;
            match self.round(current).await {
                Ok(Round::Again) => continue,
                Ok(Round::Idle) => return due,
                // The record still says "due now"; only the in-memory timer waits.
                Ok(Round::Deferred(at)) => return Some(at),
                Err(e) => {
                    tracing::error!(id, error = %e, "request round failed; retrying in 1s");
                    return Some(now_ms() + 1000);
                }
            }
        }
        self.store.request(id).ok().flatten()?.due_ms
    }

    /// One round of work on a record.
    async fn round(&self, record: Request) -> Result<Round> {
        let now = now_ms();
        match record.state {
            State::Pending => {
                self.run_model(record).await?;
                return Ok(Round::Again);
            }
            State::Callback => {
                self.finish_callback(record.id).await;
                return Ok(Round::Again);
            }
            State::Delivered if record.callback_deadline_ms.is_some_and(|t| t <= now) => {
                self.time_out_callback(record.id).await?;
                return Ok(Round::Again);
            }
            State::Generated if !record.has_pending_delivery() => {
                self.settle(record.id).await?;
                return Ok(Round::Again);
            }
            _ => {}
        }
        let due: Vec<Delivery> = record
            .deliveries
            .iter()
            .filter(|d| {
                d.outcome == DeliveryOutcome::Pending && d.next_ms.is_some_and(|t| t <= now)
            })
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(Round::Idle);
        }
        let body = payload::webhook_body(&record, &self.public_url);
        let mut attempts: FuturesUnordered<_> = due
            .iter()
            .map(|d| {
                self.admitted(Attempt {
                    record: &record,
                    delivery: d,
                    body: &body,
                })
            })
            .collect();
        let mut made = false;
        while let Some(result) = attempts.next().await {
            made |= result?;
        }
        if made {
            return Ok(Round::Again);
        }
        use rand::Rng;
        Ok(Round::Deferred(now + rand::rng().random_range(200..800)))
    }

    /// Makes `attempt` once its endpoint's lane admits it, and makes what it settled
    /// durable before pushing it; false if the lane stayed full (the attempt is deferred).
    /// A healthy endpoint frees a permit within milliseconds; a lane still full after
    /// [`LANE_WAIT`] belongs to a slow endpoint.
    async fn admitted(&self, attempt: Attempt<'_>) -> Result<bool> {
        let d = attempt.delivery;
        let lane = lane_of(d);
        let Some(permit) = self.lanes.enter(&lane, d.attempts == 0, LANE_WAIT).await else {
            return Ok(false);
        };
        if let Recorded::Settled(record) = self.attempts().run(attempt, permit).await? {
            self.settled(&record).await?;
        }
        Ok(true)
    }

    /// The deliveries a result goes to: the request's `webhook_url`, or every endpoint of
    /// the project that wants the workflow's event.
    fn targets(&self, record: &Request, now: u64) -> Vec<Delivery> {
        let first_at = self.first_attempt_at(now);
        let delivery = |endpoint_id: &str, url: &str| Delivery {
            webhook_id: format!("msg_{}", secret::random_alnum(24)),
            endpoint_id: endpoint_id.to_string(),
            url: url.to_string(),
            attempts: 0,
            next_ms: Some(first_at),
            outcome: DeliveryOutcome::Pending,
            last_status: None,
            last_error: None,
        };
        match &record.webhook_url {
            Some(url) => vec![delivery(REQUEST_ENDPOINT, url)],
            None => self
                .catalog
                .endpoints_for(&record.project_id, record.workflow.event_name.as_deref())
                .iter()
                .map(|e| delivery(&e.id, &e.url))
                .collect(),
        }
    }

    /// Runs the model and records its result (or failure) with the deliveries it goes to;
    /// then, once that is durable, pushes it.
    async fn run_model(&self, record: Request) -> Result<()> {
        let messages: serde_json::Value =
            serde_json::from_str(&record.messages).unwrap_or_default();
        let (result, reports) = self
            .call_models(
                &record.project_id,
                &record.workflow,
                &messages,
                record.test_mode,
                None,
            )
            .await;
        let now = now_ms();
        let mut steps = self.attempt_steps(&reports);
        let attempts = model::attempt_logs(&reports);
        let targets = self.targets(&record, now);
        let timeout = self.callback_timeout_ms(&record);
        let update = self.store.update(record.id, now, |r| {
            r.ai_attempts = attempts.clone();
            match &result {
                Ok(out) => {
                    r.record_ai_success(model::ai_result(out, &reports, now), targets.clone(), now)?
                }
                // Event-driven workflows have nothing for a backend to call back about.
                Err(e) => {
                    let deliveries = if r.awaits_callback() {
                        Vec::new()
                    } else {
                        targets.clone()
                    };
                    r.record_ai_failure(e.message.clone(), deliveries, now)?
                }
            }
            let mut visited = vec![r.state];
            visited.extend(r.settle(now, timeout));
            Ok::<_, crate::job::InvalidTransition>(visited)
        })?;
        let Update::Done(record, visited) = update else {
            self.store.append_steps(record.id, &steps)?;
            return Ok(());
        };
        steps.extend(visited.iter().map(|s| self.transition(&record, *s, now)));
        // On the timeline before anyone can see the push.
        self.store.append_steps(record.id, &steps)?;
        self.store.commit().await?;
        self.push_and_note(&record, None)?;
        Ok(())
    }

    /// Settles a `generated` request whose deliveries are all settled.
    async fn settle(&self, id: u64) -> Result<()> {
        let now = now_ms();
        let record = self.store.request(id)?;
        let timeout = record.as_ref().map_or(0, |r| self.callback_timeout_ms(r));
        let update = self
            .store
            .update(id, now, |r| r.settle(now, timeout).ok_or(()))?;
        if let Update::Done(record, _) = update {
            let step = self.transition(&record, record.state, now);
            self.store.append_steps(id, &[step])?;
            self.settled(&record).await?;
        }
        Ok(())
    }

    /// Makes the state a request settled in durable, then pushes it if it failed (a
    /// delivered or completed one has nothing new for the browser).
    async fn settled(&self, record: &Request) -> Result<()> {
        self.store.commit().await?;
        if matches!(record.state, State::Failed(_)) {
            self.push_and_note(record, None)?;
        }
        Ok(())
    }

    /// Fails a `delivered` request whose callback deadline has passed.
    async fn time_out_callback(&self, id: u64) -> Result<()> {
        let now = now_ms();
        let update = self.store.update(id, now, |r| {
            let due = r.callback_deadline_ms.is_some_and(|t| t <= now);
            if r.state != State::Delivered || !due {
                return Err(());
            }
            r.apply(Event::CallbackTimedOut, now).map_err(|_| ())?;
            let waited = now.saturating_sub(r.callback_deadline_ms.unwrap_or(now))
                + self.callback_timeout_ms(r);
            r.error_message = Some(format!(
                "no callback within {}s of the webhook's delivery",
                waited / 1000
            ));
            Ok(waited)
        })?;
        if let Update::Done(record, after_ms) = update {
            self.metrics.callback("timeout");
            let steps = [
                (now, Step::CallbackTimeout { after_ms }),
                self.transition(&record, record.state, now),
            ];
            self.store.append_steps(id, &steps)?;
            self.store.commit().await?;
            self.push_and_note(&record, None)?;
        }
        Ok(())
    }

    /// Pushes the final result of a recorded callback and completes the request.
    pub(super) async fn finish_callback(&self, id: u64) {
        let record = match self.store.request(id) {
            Ok(Some(r)) if r.state == State::Callback => r,
            _ => return,
        };
        let pushed = self.push_latest(&record);
        let now = now_ms();
        let mut steps: Vec<(u64, Step)> = pushed.into_iter().collect();
        match self.store.update(id, now, |r| r.apply(Event::Pushed, now)) {
            Ok(Update::Done(record, _)) => steps.push(self.transition(&record, record.state, now)),
            Ok(_) => {}
            Err(e) => tracing::error!(id, error = %e, "cannot complete request"),
        }
        if let Err(e) = self.store.append_steps(id, &steps) {
            tracing::warn!(error = %e, "timeline write failed");
        }
    }

    /// Pushes the record's latest message and puts the push on the timeline, after
    /// `before` if given (one write for both).
    pub(super) fn push_and_note(
        &self,
        record: &Request,
        before: Option<(u64, Step)>,
    ) -> Result<()> {
        let steps: Vec<(u64, Step)> = before.into_iter().chain(self.push_latest(record)).collect();
        self.store.append_steps(record.id, &steps)?;
        Ok(())
    }

    /// The timeline step of a state the record entered; finished requests are counted.
    pub(super) fn transition(&self, record: &Request, state: State, now: u64) -> (u64, Step) {
        super::transition(&self.metrics, record, state, now)
    }
}
