//! Driving a due request forward: the round loop the scheduler runs.
//!
//! Each round reads the record, does the one thing its state calls for (run the model,
//! finish a recorded callback, time out a callback, settle, or make the webhook attempts
//! that are due, each admitted by its endpoint's lane and run as a unit by `attempt`),
//! records the outcome through `Store::update`, commits before any effect of it, and
//! reads again, until nothing is due now. The return value is when the request is next
//! due. A delivery whose lane is full is parked there (see `lanes`): the drive leaves it
//! to the lane, which runs the request again when a slot frees. Every round is safe to
//! repeat: a duplicate timer re-reads the record and finds nothing to do, and a crash
//! mid-round repeats at most the effect (a webhook with the same `webhook-id`, a push),
//! never skips it.

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tracing::Instrument;

use super::attempt::{Attempt, REQUEST_ENDPOINT, Recorded};
use super::lanes::{Entry, LaneKey, Permit};
use super::lease::RETRY_MS;
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

/// What a round did.
enum Round {
    /// Changed something: read the record again.
    Again,
    /// Nothing is due now.
    Idle,
    /// What is due now waits in full lanes, which run the request again in turn; the
    /// rest is due at this time.
    Parked(Option<u64>),
}

/// The lane of a delivery: its endpoint, or for a request's own `webhook_url` its host;
/// first attempts and retries apart.
fn lane_of(d: &Delivery) -> LaneKey {
    let endpoint = if d.endpoint_id != REQUEST_ENDPOINT {
        d.endpoint_id.clone()
    } else {
        reqwest::Url::parse(&d.url)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_else(|| d.url.clone())
    };
    LaneKey {
        endpoint,
        first_attempt: d.attempts == 0,
    }
}

/// Timeline steps of effects that follow a commit (pushes), kept for the drive's next
/// timeline write so that a round writes the timeline once; written at the end of the
/// drive if no write comes. Like every step, durable with the next commit.
#[derive(Default)]
pub(super) struct Carry(std::sync::Mutex<Vec<(u64, Step)>>);

impl Carry {
    fn add(&self, step: Option<(u64, Step)>) {
        self.lock().extend(step);
    }

    /// The steps carried so far, for the caller's write.
    pub fn take(&self) -> Vec<(u64, Step)> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Step)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When `record` is next due after `now`, leaving out what is due now (parked in lanes).
fn due_after(record: &Request, now: u64) -> Option<u64> {
    let deadline = match record.state {
        State::Delivered => record.callback_deadline_ms,
        _ => None,
    };
    let deliveries = record.deliveries.iter().filter_map(|d| d.next_ms);
    deadline
        .into_iter()
        .chain(deliveries)
        .filter(|t| *t > now)
        .min()
}

impl Engine {
    /// Runs what is due for request `id` (fired by the timer for `fired_due`) inside a
    /// span carrying its channel id; returns when it is next due.
    pub async fn drive(&self, id: u64, fired_due: u64) -> Option<u64> {
        let mut entered = Vec::new();
        let carry = Carry::default();
        let next = self.drive_rounds(id, fired_due, &mut entered, &carry).await;
        self.lanes.forfeit(id, &entered);
        if let Err(e) = self.store.append_steps(id, &carry.take()).await {
            tracing::warn!(id, error = %e, "timeline write failed");
        }
        next
    }

    async fn drive_rounds(
        &self,
        id: u64,
        fired_due: u64,
        entered: &mut Vec<LaneKey>,
        carry: &Carry,
    ) -> Option<u64> {
        let record = match self.store.request(id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.scheduler.not_found(id);
                return None;
            }
            Err(e) => {
                tracing::error!(id, error = %e, "cannot read request; retrying in 1s");
                return self.again_at(id, now_ms() + RETRY_MS);
            }
        };
        // A timer for a due time the record no longer has: a leftover of a crash between
        // swapping the record and removing its old due key (timers set in memory carry the
        // record's due time, so only such leftovers and retries after errors get here).
        if record.due_ms != Some(fired_due)
            && let Err(e) = self.store.drop_stale_due(fired_due, id).await
        {
            tracing::warn!(id, error = %e, "cannot drop stale due entry");
        }
        let span = tracing::info_span!(
            "request",
            channel_id = %record.channel_id
        );
        self.rounds(record, entered, carry).instrument(span).await
    }

    async fn rounds(
        &self,
        first: Request,
        entered: &mut Vec<LaneKey>,
        carry: &Carry,
    ) -> Option<u64> {
        let id = first.id;
        let mut record = Some(first);
        for _ in 0..MAX_ROUNDS {
            let current = match record.take() {
                Some(r) => r,
                None => match self.store.request(id).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::error!(id, error = %e, "cannot read request; retrying in 1s");
                        return self.again_at(id, now_ms() + RETRY_MS);
                    }
                },
            };
            let due = current.due_ms;
            match self.round(current, entered, carry).await {
                Ok(Round::Again) => continue,
                Ok(Round::Idle) => return due,
                Ok(Round::Parked(next)) => return next,
                Err(e) => {
                    tracing::error!(id, error = %e, "request round failed; retrying in 1s");
                    return self.again_at(id, now_ms() + RETRY_MS);
                }
            }
        }
        match self.store.request(id).await {
            Ok(record) => record?.due_ms,
            Err(_) => self.again_at(id, now_ms() + RETRY_MS),
        }
    }

    /// One round of work on a record.
    async fn round(
        &self,
        record: Request,
        entered: &mut Vec<LaneKey>,
        carry: &Carry,
    ) -> Result<Round> {
        let now = now_ms();
        match record.state {
            State::Pending => {
                if !self.may_call_model(&record).await? {
                    return Ok(Round::Parked(None));
                }
                self.run_model(record, carry).await?;
                return Ok(Round::Again);
            }
            State::Callback => {
                self.finish_callback(record.id).await;
                return Ok(Round::Again);
            }
            State::Delivered if record.callback_deadline_ms.is_some_and(|t| t <= now) => {
                self.time_out_callback(record.id, carry).await?;
                return Ok(Round::Again);
            }
            State::Generated if !record.has_pending_delivery() => {
                self.settle(record.id, carry).await?;
                return Ok(Round::Again);
            }
            _ => {}
        }
        // Each due delivery enters its lane now; the body is built only for those let in.
        let mut admitted: Vec<(&Delivery, Permit)> = Vec::new();
        let mut any_due = false;
        for d in &record.deliveries {
            if d.outcome != DeliveryOutcome::Pending || d.next_ms.is_none_or(|t| t > now) {
                continue;
            }
            any_due = true;
            let lane = lane_of(d);
            let due = record.due_ms.unwrap_or(now);
            if let Entry::Admitted(permit) = self.lanes.enter(&lane, record.id, due) {
                admitted.push((d, permit));
            }
            entered.push(lane);
        }
        if !any_due {
            return Ok(Round::Idle);
        }
        if admitted.is_empty() {
            self.lane_full(record.id, now);
            return Ok(Round::Parked(due_after(&record, now)));
        }
        let body = payload::webhook_body(&record, &self.public_url);
        let mut attempts: FuturesUnordered<_> = admitted
            .into_iter()
            .map(|(d, permit)| {
                let attempt = Attempt {
                    record: &record,
                    delivery: d,
                    body: &body,
                    carry,
                };
                self.attempt(attempt, permit)
            })
            .collect();
        while let Some(result) = attempts.next().await {
            result?;
        }
        Ok(Round::Again)
    }

    /// Makes `attempt` (its lane's `permit` held while it sends), and makes what it
    /// settled durable before pushing it.
    async fn attempt(&self, attempt: Attempt<'_>, permit: Permit) -> Result<()> {
        if let Recorded::Settled(record) = self.attempts().run(attempt, permit).await? {
            self.settled(&record, attempt.carry).await?;
        }
        Ok(())
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
    async fn run_model(&self, record: Request, carry: &Carry) -> Result<()> {
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
        let update = self
            .store
            .update(record.id, now, |r| {
                r.ai_attempts = attempts.clone();
                match &result {
                    Ok(out) => r.record_ai_success(
                        model::ai_result(out, &reports, now),
                        targets.clone(),
                        now,
                    )?,
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
            })
            .await?;
        let Update::Done(record, visited) = update else {
            self.store.append_steps(record.id, &steps).await?;
            return Ok(());
        };
        steps.extend(visited.iter().map(|s| self.transition(&record, *s, now)));
        // On the timeline before anyone can see the push.
        self.store.append_steps(record.id, &steps).await?;
        self.store.commit().await?;
        carry.add(self.push_latest(&record));
        Ok(())
    }

    /// Settles a `generated` request whose deliveries are all settled.
    async fn settle(&self, id: u64, carry: &Carry) -> Result<()> {
        let now = now_ms();
        let record = self.store.request(id).await?;
        let timeout = record.as_ref().map_or(0, |r| self.callback_timeout_ms(r));
        let update = self
            .store
            .update(id, now, |r| r.settle(now, timeout).ok_or(()))
            .await?;
        if let Update::Done(record, _) = update {
            let step = self.transition(&record, record.state, now);
            self.store.append_steps(id, &[step]).await?;
            self.settled(&record, carry).await?;
        }
        Ok(())
    }

    /// Pushes the state a request settled in if it failed, once that is durable. A
    /// delivered or completed one has nothing new for the browser, so nothing waits for
    /// its commit: it rides along with the next one (a crash before it repeats the
    /// attempt, with the same `webhook-id`).
    async fn settled(&self, record: &Request, carry: &Carry) -> Result<()> {
        if matches!(record.state, State::Failed(_)) {
            self.store.commit().await?;
            carry.add(self.push_latest(record));
        }
        Ok(())
    }

    /// Fails a `delivered` request whose callback deadline has passed.
    async fn time_out_callback(&self, id: u64, carry: &Carry) -> Result<()> {
        let now = now_ms();
        let update = self
            .store
            .update(id, now, |r| {
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
            })
            .await?;
        if let Update::Done(record, after_ms) = update {
            self.metrics.callback("timeout");
            let steps = [
                (now, Step::CallbackTimeout { after_ms }),
                self.transition(&record, record.state, now),
            ];
            self.store.append_steps(id, &steps).await?;
            self.store.commit().await?;
            carry.add(self.push_latest(&record));
        }
        Ok(())
    }

    /// Pushes the final result of a recorded callback and completes the request.
    pub(super) async fn finish_callback(&self, id: u64) {
        let record = match self.store.request(id).await {
            Ok(Some(r)) if r.state == State::Callback => r,
            _ => return,
        };
        let pushed = self.push_latest(&record);
        let now = now_ms();
        let mut steps: Vec<(u64, Step)> = pushed.into_iter().collect();
        match self
            .store
            .update(id, now, |r| r.apply(Event::Pushed, now))
            .await
        {
            Ok(Update::Done(record, _)) => steps.push(self.transition(&record, record.state, now)),
            Ok(_) => {}
            Err(e) => {
                // Still due (and without a due key: see `store::due`): try again soon.
                tracing::error!(id, error = %e, "cannot complete request; retrying in 1s");
                self.scheduler.schedule(id, Some(now + RETRY_MS));
                self.scheduler.retry(id, now + RETRY_MS);
            }
        }
        if let Err(e) = self.store.append_steps(id, &steps).await {
            tracing::warn!(error = %e, "timeline write failed");
        }
    }

    /// Pushes the record's latest message and puts the push on the timeline, after
    /// `before` if given (one write for both).
    pub(super) async fn push_and_note(
        &self,
        record: &Request,
        before: Option<(u64, Step)>,
    ) -> Result<()> {
        let steps: Vec<(u64, Step)> = before.into_iter().chain(self.push_latest(record)).collect();
        self.store.append_steps(record.id, &steps).await?;
        Ok(())
    }

    /// The timeline step of a state the record entered; finished requests are counted.
    pub(super) fn transition(&self, record: &Request, state: State, now: u64) -> (u64, Step) {
        super::transition(&self.metrics, record, state, now)
    }
}
