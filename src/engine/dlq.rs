//! The dead-letter queue as operators use it: inspect, re-drive one entry or a range,
//! purge, and the retention sweep.
//!
//! Re-driving removes the entry and re-arms its delivery on the request record: same
//! `webhook-id`, a fresh run of the retry schedule, first attempt now. A request that had
//! failed with `webhook_exhausted` goes back to `generated` and on through the flow
//! (delivered → callback awaited → completed). If the delivery dies again it is a new
//! entry.

use super::Engine;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::job::{DeadLetter, ProjectId, Step};
use crate::store::Update;

/// What a range re-drive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Redrive {
    pub retried: Vec<String>,
    /// `(id, why)` of entries left in the queue.
    pub skipped: Vec<(String, String)>,
}

impl Engine {
    /// One dead letter of `project`.
    pub fn dead_letter(&self, project: &ProjectId, id: &str) -> Result<DeadLetter> {
        self.store
            .dead_letter(project, id)?
            .ok_or_else(|| Error::NotFound(format!("dead letter '{id}'")))
    }

    /// Why an entry cannot be re-driven now, if it cannot.
    fn blocked(&self, entry: &DeadLetter) -> Option<String> {
        if entry.endpoint_id == super::REQUEST_ENDPOINT {
            return None;
        }
        match self.catalog.endpoint(&entry.project_id, &entry.endpoint_id) {
            None => Some(format!("endpoint '{}' was deleted", entry.endpoint_id)),
            Some(e) => e.disabled.as_ref().map(|(why, _)| {
                format!("endpoint '{}' is disabled ({why}): enable it first", e.id)
            }),
        }
    }

    /// Re-drives one dead letter; the request re-enters the flow.
    pub async fn redrive(&self, project: &ProjectId, id: &str) -> Result<()> {
        let entry = self.dead_letter(project, id)?;
        if let Some(why) = self.blocked(&entry) {
            return Err(Error::Conflict(why));
        }
        self.rearm(project, id, &entry)?;
        self.store.commit().await?;
        Ok(())
    }

    /// Re-drives every dead letter of `project` that died in `[since_ms, until_ms)` and,
    /// if given, went to `endpoint`.
    pub async fn redrive_range(
        &self,
        project: &ProjectId,
        since_ms: u64,
        until_ms: u64,
        endpoint: Option<&str>,
    ) -> Result<Redrive> {
        let mut report = Redrive::default();
        for (id, entry) in self
            .store
            .dead_letters_between(project, since_ms, until_ms)?
        {
            if endpoint.is_some_and(|e| e != entry.endpoint_id) {
                continue;
            }
            match self.blocked(&entry) {
                Some(why) => report.skipped.push((id, why)),
                None => {
                    self.rearm(project, &id, &entry)?;
                    report.retried.push(id);
                }
            }
        }
        self.store.commit().await?;
        Ok(report)
    }

    /// Re-arms the delivery on its record and removes the entry (not yet durable).
    fn rearm(&self, project: &ProjectId, id: &str, entry: &DeadLetter) -> Result<()> {
        let now = now_ms();
        let update = self
            .store
            .update(entry.request_id, now, |r| r.redrive(&entry.webhook_id, now))?;
        match update {
            Update::Done(record, revived) => {
                let mut steps = vec![(
                    now,
                    Step::Redriven {
                        webhook_id: entry.webhook_id.clone(),
                        endpoint_id: entry.endpoint_id.clone(),
                    },
                )];
                steps.extend(revived.map(|state| self.transition(&record, state, now)));
                self.store.append_steps(record.id, &steps)?;
                self.store.remove_dead_letter(project, id)?;
                self.scheduler.schedule(record.id, record.due_ms);
                Ok(())
            }
            // The delivery is no longer dead (re-driven already) or the request is gone
            // (swept): the entry is stale either way.
            Update::Refused(_) | Update::Missing => {
                self.store.remove_dead_letter(project, id)?;
                Err(Error::Conflict(format!(
                    "dead letter '{id}' was already retried or its request no longer exists"
                )))
            }
        }
    }

    /// Deletes one dead letter of `project`.
    pub async fn purge_dead_letter(&self, project: &ProjectId, id: &str) -> Result<()> {
        if !self.store.remove_dead_letter(project, id)? {
            return Err(Error::NotFound(format!("dead letter '{id}'")));
        }
        self.store.commit().await?;
        Ok(())
    }
}
