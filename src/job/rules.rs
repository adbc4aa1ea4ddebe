//! The rules that change a request record beyond a bare state change: recording a model
//! result, a webhook attempt, and settling the request once its deliveries allow it.
//! Pure functions of the record and their inputs; the engine persists what they decide.

use super::{
    AiResult, Delivery, DeliveryOutcome, Event, Failure, InvalidTransition, Request, State,
};

/// What one webhook attempt did to its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEffect {
    Delivered,
    /// Failed; the next attempt is due at this time.
    RetryAt(u64),
    /// Failed and out of attempts.
    DeadLettered,
}

/// A webhook attempt's result as the record keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub delivered: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// The attempt refers to a delivery that is gone or already settled (a duplicate timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleAttempt;

impl Request {
    /// Moves the request by `event`, stamping `failed_ms` when it fails.
    pub fn apply(&mut self, event: Event, now_ms: u64) -> Result<State, InvalidTransition> {
        let next = self.state.on(event)?;
        self.state = next;
        if let State::Failed(_) = next {
            self.failed_ms = Some(now_ms);
        }
        Ok(next)
    }

    /// Records the model's result and the deliveries it goes to.
    pub fn record_ai_success(
        &mut self,
        ai: AiResult,
        deliveries: Vec<Delivery>,
        now_ms: u64,
    ) -> Result<(), InvalidTransition> {
        self.apply(Event::AiSucceeded, now_ms)?;
        self.ai = Some(ai);
        self.deliveries = deliveries;
        Ok(())
    }

    /// Records that the model failed; `deliveries` tell the backend (standard workflows).
    pub fn record_ai_failure(
        &mut self,
        message: String,
        deliveries: Vec<Delivery>,
        now_ms: u64,
    ) -> Result<(), InvalidTransition> {
        self.apply(Event::AiFailed, now_ms)?;
        self.error_message = Some(message);
        self.deliveries = deliveries;
        Ok(())
    }

    /// Records one attempt of the delivery `webhook_id`. `retry_at(attempts_made)` gives
    /// when the next attempt is due, or `None` when the schedule is used up.
    pub fn record_attempt(
        &mut self,
        webhook_id: &str,
        result: &AttemptResult,
        now_ms: u64,
        retry_at: impl FnOnce(u32) -> Option<u64>,
    ) -> Result<AttemptEffect, StaleAttempt> {
        let d = self
            .deliveries
            .iter_mut()
            .find(|d| d.webhook_id == webhook_id && d.outcome == DeliveryOutcome::Pending)
            .ok_or(StaleAttempt)?;
        d.attempts += 1;
        d.last_status = result.status;
        d.last_error = result.error.clone();
        let effect = if result.delivered {
            d.outcome = DeliveryOutcome::Succeeded { at_ms: now_ms };
            d.next_ms = None;
            AttemptEffect::Delivered
        } else if let Some(at) = retry_at(d.attempts) {
            d.next_ms = Some(at);
            AttemptEffect::RetryAt(at)
        } else {
            d.outcome = DeliveryOutcome::DeadLettered { at_ms: now_ms };
            d.next_ms = None;
            AttemptEffect::DeadLettered
        };
        Ok(effect)
    }

    /// Re-arms the dead-lettered delivery `webhook_id` (same `webhook-id`, a fresh run of
    /// the schedule, first attempt at `now_ms`); a request that had failed for want of a
    /// delivery goes back to `generated`. Returns the new state if it changed.
    pub fn redrive(
        &mut self,
        webhook_id: &str,
        now_ms: u64,
    ) -> Result<Option<State>, StaleAttempt> {
        let d = self
            .deliveries
            .iter_mut()
            .find(|d| {
                d.webhook_id == webhook_id
                    && matches!(d.outcome, DeliveryOutcome::DeadLettered { .. })
            })
            .ok_or(StaleAttempt)?;
        d.outcome = DeliveryOutcome::Pending;
        d.attempts = 0;
        d.next_ms = Some(now_ms);
        let revived = self.apply(Event::Redriven, now_ms).ok();
        if revived.is_some() {
            self.failed_ms = None;
            self.error_message = None;
            self.callback_deadline_ms = None;
        }
        Ok(revived)
    }

    /// Moves a `generated` request on once its deliveries allow: to `delivered` (callback
    /// awaited, deadline set) at the first 2xx of an event-driven workflow; to `completed`
    /// when every delivery of a standard workflow is settled with one success (or there
    /// were none); to `failed(webhook_exhausted)` when every delivery is dead-lettered.
    pub fn settle(&mut self, now_ms: u64, callback_timeout_ms: u64) -> Option<State> {
        if self.state != State::Generated {
            return None;
        }
        let pending = self.has_pending_delivery();
        let succeeded = self.any_delivery_succeeded();
        let event = match (self.awaits_callback(), pending, succeeded) {
            (true, _, true) => Event::WebhookDelivered {
                awaits_callback: true,
            },
            (true, false, false) => Event::WebhookExhausted,
            (false, false, true) => Event::WebhookDelivered {
                awaits_callback: false,
            },
            (false, false, false) if self.deliveries.is_empty() => Event::WebhookDelivered {
                awaits_callback: false,
            },
            (false, false, false) => Event::WebhookExhausted,
            (_, true, _) => return None,
        };
        let next = self.apply(event, now_ms).ok()?;
        match next {
            State::Delivered => self.callback_deadline_ms = Some(now_ms + callback_timeout_ms),
            State::Failed(Failure::WebhookExhausted) => {
                self.error_message = Some(if self.deliveries.is_empty() {
                    "no webhook endpoint to deliver to".to_string()
                } else {
                    "every webhook delivery failed".to_string()
                });
            }
            _ => {}
        }
        Some(next)
    }
}
