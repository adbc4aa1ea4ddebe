//! One webhook attempt as a unit, with everything it depends on in one place ([`Ctx`]):
//! prepare (the endpoint and its signing secrets, or why nothing can be sent) → send
//! (`delivery`) → classify (the endpoint rule) → record (the attempt on the record and
//! the timeline, and the dead letter of a delivery out of attempts).
//!
//! An attempt writes but never commits: what it recorded ([`Recorded`]) tells its driver
//! whether the request moved, and the driver makes that durable before any effect of it
//! (a failure's push). Admission (the endpoint's lane) is the driver's: an attempt is
//! handed the lane's permit and gives it back as soon as the send is over.

use std::sync::Arc;
use std::time::Duration;

use super::drive::Carry;
use super::lanes::Permit;
use super::{callback_timeout_ms, jittered, transition};
use crate::catalog::{Catalog, Endpoint};
use crate::clock::now_ms;
use crate::config::Config;
use crate::delivery::{self, Deliverer, Outcome, Permanent, Verdict};
use crate::error::Result;
use crate::job::{
    AttemptEffect, AttemptLog, AttemptResult, DeadLetter, Delivery, Request, StaleAttempt, Step,
};
use crate::metrics::Metrics;
use crate::store::{Store, Update};

/// `endpoint_id` of a delivery to the request's own `webhook_url`.
pub const REQUEST_ENDPOINT: &str = "request";

/// What an attempt depends on, borrowed from the engine for one attempt.
pub(super) struct Ctx<'a> {
    pub store: &'a Store,
    pub catalog: &'a Catalog,
    pub deliverer: &'a Deliverer,
    pub metrics: &'a Metrics,
    /// The retry schedule, the throttle delay, when a failing endpoint is disabled, the
    /// callback timeout.
    pub config: &'a Config,
}

/// One attempt of `delivery` of `record`, sending `body` (the same for every attempt).
#[derive(Clone, Copy)]
pub(super) struct Attempt<'a> {
    pub record: &'a Request,
    pub delivery: &'a Delivery,
    pub body: &'a str,
    /// Steps of the drive waiting for its next timeline write, which this attempt makes.
    pub carry: &'a Carry,
}

/// What an attempt recorded; none of it is durable yet.
pub(super) enum Recorded {
    /// The delivery moved (delivered, or its next attempt is due) and the request did not.
    Delivery,
    /// The request moved to a new state, to be made durable before it is pushed.
    Settled(Box<Request>),
    /// The delivery was settled or gone meanwhile (a duplicate timer): only the timeline
    /// step was written.
    Stale,
}

/// Where an attempt goes: the registered endpoint (`None` for the request's own
/// `webhook_url`) and the secrets it is signed with, or why nothing can be sent.
struct Prepared {
    endpoint: Option<Arc<Endpoint>>,
    secrets: std::result::Result<Vec<String>, String>,
}

impl Ctx<'_> {
    /// Runs `attempt`, holding its lane's `permit` while it sends, and records it.
    pub async fn run(&self, attempt: Attempt<'_>, permit: Permit) -> Result<Recorded> {
        let started = now_ms();
        let prepared = self.prepare(attempt, started);
        let outcome = match &prepared.secrets {
            Ok(secrets) => {
                let d = attempt.delivery;
                self.deliverer
                    .send(&delivery::Attempt {
                        url: &d.url,
                        body: attempt.body,
                        webhook_id: &d.webhook_id,
                        endpoint_id: &d.endpoint_id,
                        channel_id: &attempt.record.channel_id.to_string(),
                        secrets,
                        timestamp: started / 1000,
                    })
                    .await
            }
            Err(why) => Outcome::refused(why.as_str()),
        };
        drop(permit);
        let outcome = self.classify(attempt, prepared.endpoint.as_deref(), outcome)?;
        self.record(attempt, started, &outcome).await
    }

    fn prepare(&self, attempt: Attempt<'_>, now: u64) -> Prepared {
        let project = &attempt.record.project_id;
        let deleted = || "the endpoint was deleted".to_string();
        if attempt.delivery.endpoint_id == REQUEST_ENDPOINT {
            let secrets = self
                .catalog
                .project(project)
                .map(|p| vec![p.signing_secret.clone()]);
            return Prepared {
                endpoint: None,
                secrets: secrets.ok_or_else(deleted),
            };
        }
        let endpoint = self
            .catalog
            .endpoint(project, &attempt.delivery.endpoint_id);
        let secrets = match &endpoint {
            None => Err(deleted()),
            Some(e) => match &e.disabled {
                Some((why, _)) => Err(format!("the endpoint is disabled: {why}")),
                None => Ok(e.signing_secrets(now)),
            },
        };
        Prepared { endpoint, secrets }
    }

    /// The endpoint rule, in one place: an attempt that reached a registered endpoint
    /// counts toward its health (`Catalog::note_attempt`: a 2xx ends a failing streak, a
    /// failure starts one, and a streak longer than `--endpoint-disable-after` disables
    /// it), and a 410 Gone from it disables it at once and ends the delivery. A request's
    /// own `webhook_url` has no endpoint: its 410 is retried like any failure.
    fn classify(
        &self,
        attempt: Attempt<'_>,
        endpoint: Option<&Endpoint>,
        mut outcome: Outcome,
    ) -> Result<Outcome> {
        if let Some(e) = endpoint
            && !matches!(outcome.verdict, Verdict::Permanent(_))
        {
            let gone = outcome.status == Some(410);
            if gone {
                outcome.verdict = Verdict::Permanent(Permanent::Gone);
            }
            // A 2xx from an endpoint without a failing streak changes nothing: spare the
            // catalog's write lock (every delivery to a healthy endpoint comes here).
            let delivered = outcome.verdict == Verdict::Delivered;
            let project = &attempt.record.project_id;
            let unchanged = delivered
                && self
                    .catalog
                    .endpoint(project, &e.id)
                    .is_some_and(|now| now.failing_since_ms.is_none());
            if !unchanged {
                let noted = self.catalog.note_attempt(
                    project,
                    &e.id,
                    delivered,
                    gone,
                    now_ms(),
                    self.config.endpoint_disable_after.as_millis() as u64,
                )?;
                if let Some(disabled) = noted.filter(|n| n.disabled.is_some()) {
                    tracing::warn!(endpoint = %disabled.id, "webhook endpoint disabled");
                }
            }
        }
        self.metrics
            .webhook_attempt(outcome.label(), outcome.latency());
        Ok(outcome)
    }

    /// Writes the attempt on the record (its next attempt, or its settlement and the
    /// request's) and the timeline, and the dead letter when it was the last one.
    async fn record(
        &self,
        attempt: Attempt<'_>,
        started: u64,
        outcome: &Outcome,
    ) -> Result<Recorded> {
        let (record, d) = (attempt.record, attempt.delivery);
        let now = now_ms();
        let step = (
            started,
            Step::WebhookAttempt {
                webhook_id: d.webhook_id.clone(),
                endpoint_id: d.endpoint_id.clone(),
                attempt: d.attempts + 1,
                status: outcome.status,
                error: outcome.error.clone(),
                duration_ms: outcome.duration_ms,
                response_excerpt: outcome.response_excerpt.clone(),
            },
        );
        let result = AttemptResult {
            delivered: outcome.verdict == Verdict::Delivered,
            status: outcome.status,
            error: outcome.error.clone(),
        };
        let timeout = callback_timeout_ms(self.config, record);
        let update = self
            .store
            .update(record.id, now, |r| {
                let effect = r.record_attempt(&d.webhook_id, &result, now, |made| {
                    self.retry_at(made, now, outcome)
                })?;
                Ok::<_, StaleAttempt>((effect, r.settle(now, timeout)))
            })
            .await?;
        let mut steps = attempt.carry.take();
        steps.push(step);
        let Update::Done(record, (effect, settled)) = update else {
            self.store.append_steps(record.id, &steps).await?;
            return Ok(Recorded::Stale);
        };
        if settled.is_some() {
            steps.push(transition(self.metrics, &record, record.state, now));
        }
        // Before the dead letter, which gathers its attempts from the timeline.
        self.store.append_steps(record.id, &steps).await?;
        if effect == AttemptEffect::DeadLettered {
            let reason = result.error.unwrap_or_else(|| "out of attempts".into());
            self.dead_letter(&record, &d.webhook_id, attempt.body, reason, now)
                .await?;
        }
        Ok(match settled {
            Some(_) => Recorded::Settled(record),
            None => Recorded::Delivery,
        })
    }

    /// When attempt number `made + 1` of a delivery is due after `outcome`, or `None` when
    /// the schedule is used up or retrying cannot help. The scheduled delay (±20% jitter)
    /// stretches to the receiver's `Retry-After`, clamped to [delay, 2×delay], and to at
    /// least the throttle delay after a 429 or a timeout.
    fn retry_at(&self, made: u32, now: u64, outcome: &Outcome) -> Option<u64> {
        let Verdict::Retry { after, .. } = outcome.verdict else {
            return None;
        };
        let scheduled: Duration = jittered(*self.config.retry_schedule.get(made as usize)?);
        let mut delay = after.map_or(scheduled, |asked| asked.clamp(scheduled, scheduled * 2));
        if outcome.slow_down() {
            delay = delay.max(self.config.webhook_throttle_delay);
        }
        Some(now + delay.as_millis() as u64)
    }

    /// Stores the dead-letter entry of one exhausted delivery, with all its attempts.
    async fn dead_letter(
        &self,
        record: &Request,
        webhook_id: &str,
        body: &str,
        reason: String,
        now: u64,
    ) -> Result<()> {
        let Some(d) = record
            .deliveries
            .iter()
            .find(|d| d.webhook_id == webhook_id)
        else {
            return Ok(());
        };
        let attempts = self
            .store
            .timeline(record.id)
            .await?
            .into_iter()
            .filter_map(|(at_ms, step)| match step {
                Step::WebhookAttempt {
                    webhook_id,
                    status,
                    error,
                    duration_ms,
                    response_excerpt,
                    ..
                } if webhook_id == d.webhook_id => Some(AttemptLog {
                    at_ms,
                    status,
                    error,
                    duration_ms,
                    response_excerpt,
                }),
                _ => None,
            })
            .collect();
        self.store
            .insert_dead_letter(&DeadLetter {
                request_id: record.id,
                channel_id: record.channel_id,
                project_id: record.project_id,
                webhook_id: d.webhook_id.clone(),
                endpoint_id: d.endpoint_id.clone(),
                url: d.url.clone(),
                payload: body.to_string(),
                reason: reason.clone(),
                attempts,
                dead_ms: now,
            })
            .await?;
        self.store
            .append_step(
                record.id,
                now,
                &Step::DeadLettered {
                    webhook_id: d.webhook_id.clone(),
                    endpoint_id: d.endpoint_id.clone(),
                    reason,
                },
            )
            .await?;
        tracing::warn!(
            channel_id = %record.channel_id,
            webhook_id = %d.webhook_id,
            "delivery dead-lettered"
        );
        Ok(())
    }
}
