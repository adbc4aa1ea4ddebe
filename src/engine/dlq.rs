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
    /// `(id, why)` of entries not re-driven: those blocked by their endpoint (deleted, or
    /// disabled) stay in the queue; stale ones (see [`STALE`]) are removed.
    pub skipped: Vec<(String, String)>,
}

/// Why a stale entry was not re-driven: its delivery is no longer dead (a crash between
/// re-arming it and removing the entry) or its request was swept by retention.
const STALE: &str = "was already retried or its request no longer exists";

/// What re-arming one dead letter came to. Nothing is scheduled yet: the caller commits,
/// then schedules.
enum Rearmed {
    /// Re-armed on request `id`, which is due at `due_ms` once the re-drive is durable.
    Done { id: u64, due_ms: Option<u64> },
    /// Stale ([`STALE`]); the entry was removed.
    Stale,
}

impl Engine {
    /// One dead letter of `project`.
    pub async fn dead_letter(&self, project: &ProjectId, id: &str) -> Result<DeadLetter> {
        self.store
            .dead_letter(project, id)
            .await?
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

    /// Re-drives one dead letter; once that is durable, the request re-enters the flow.
    pub async fn redrive(&self, project: &ProjectId, id: &str) -> Result<()> {
        let entry = self.dead_letter(project, id).await?;
        if let Some(why) = self.blocked(&entry) {
            return Err(Error::Conflict(why));
        }
        let rearmed = self.rearm(project, id, &entry).await?;
        self.store.commit().await?;
        match rearmed {
            Rearmed::Done { id, due_ms } => {
                self.scheduler.schedule(id, due_ms);
                Ok(())
            }
            Rearmed::Stale => Err(Error::Conflict(format!("dead letter '{id}' {STALE}"))),
        }
    }

    /// Re-drives every dead letter of `project` that died in `[since_ms, until_ms)` and,
    /// if given, went to `endpoint`; entries that cannot be re-driven are reported, not
    /// fatal. Everything re-armed is committed, then scheduled, even when a store error
    /// stops the walk (the error is returned after).
    pub async fn redrive_range(
        &self,
        project: &ProjectId,
        since_ms: u64,
        until_ms: u64,
        endpoint: Option<&str>,
    ) -> Result<Redrive> {
        let mut report = Redrive::default();
        let mut due = Vec::new();
        let walk = async {
            for (id, entry) in self
                .store
                .dead_letters_between(project, since_ms, until_ms)
                .await?
            {
                if endpoint.is_some_and(|e| e != entry.endpoint_id) {
                    continue;
                }
                if let Some(why) = self.blocked(&entry) {
                    report.skipped.push((id, why));
                    continue;
                }
                match self.rearm(project, &id, &entry).await? {
                    Rearmed::Done {
                        id: request,
                        due_ms,
                    } => {
                        due.push((request, due_ms));
                        report.retried.push(id);
                    }
                    Rearmed::Stale => {
                        report
                            .skipped
                            .push((id, format!("it {STALE} (entry removed)")));
                    }
                }
            }
            Ok::<(), Error>(())
        };
        let walked = walk.await;
        self.store.commit().await?;
        for (request, due_ms) in due {
            self.scheduler.schedule(request, due_ms);
        }
        walked.map(|()| report)
    }

    /// Re-arms the delivery on its record and removes the entry (neither durable yet).
    async fn rearm(&self, project: &ProjectId, id: &str, entry: &DeadLetter) -> Result<Rearmed> {
        let now = now_ms();
        let update = self
            .store
            .update(entry.request_id, now, |r| r.redrive(&entry.webhook_id, now))
            .await?;
        let Update::Done(record, revived) = update else {
            self.store.remove_dead_letter(project, id).await?;
            return Ok(Rearmed::Stale);
        };
        let mut steps = vec![(
            now,
            Step::Redriven {
                webhook_id: entry.webhook_id.clone(),
                endpoint_id: entry.endpoint_id.clone(),
            },
        )];
        steps.extend(revived.map(|state| self.transition(&record, state, now)));
        self.store.append_steps(record.id, &steps).await?;
        self.store.remove_dead_letter(project, id).await?;
        Ok(Rearmed::Done {
            id: record.id,
            due_ms: record.due_ms,
        })
    }

    /// Deletes one dead letter of `project`.
    pub async fn purge_dead_letter(&self, project: &ProjectId, id: &str) -> Result<()> {
        if !self.store.remove_dead_letter(project, id).await? {
            return Err(Error::NotFound(format!("dead letter '{id}'")));
        }
        self.store.commit().await?;
        Ok(())
    }
}
