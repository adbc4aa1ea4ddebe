//! Retention: terminal requests and dead letters older than their configured retention are
//! deleted by a background sweep, so the store stays bounded under steady load.

use super::Engine;
use crate::clock::now_ms;
use crate::error::Result;

/// Requests deleted per project per sweep, so one sweep never stalls the store for long.
const SWEEP_BATCH: usize = 10_000;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub requests: usize,
    pub dead_letters: usize,
}

impl Engine {
    /// Deletes terminal requests (with their timelines) and dead letters past retention.
    pub async fn sweep_expired(&self) -> Result<Swept> {
        let now = now_ms();
        let request_cutoff = now.saturating_sub(self.config.request_retention.as_millis() as u64);
        let mut swept = Swept::default();
        for project in self.catalog.projects() {
            swept.requests +=
                self.store
                    .sweep_requests(&project.id, request_cutoff, SWEEP_BATCH)?;
        }
        let dlq_cutoff = now.saturating_sub(self.config.dlq_retention.as_millis() as u64);
        swept.dead_letters = self.store.purge_dead_letters(dlq_cutoff).await?;
        Ok(swept)
    }
}
