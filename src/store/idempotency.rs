//! Idempotency keys: `project ‖ sha256(key)` → the request created with the key, so a
//! repeated `Idempotency-Key` gets the first request's answer.

use super::{LOCK_STRIPES, Result, SledStore, be_u64, request_key};
use crate::job::{ProjectId, Request};

/// What [`Store::insert_request_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The request was stored under the key.
    New,
    /// A request was already created with this key.
    Existing(u64),
}

impl SledStore {
    /// Stores a new request unless `project ‖ key_hash` already names one that exists and
    /// is younger than `ttl_ms`; then returns that request's id and stores nothing. The
    /// check and the insert happen under one lock per key, so concurrent repeats of a key
    /// create exactly one request; a claim whose request is missing (a crash between the
    /// two writes) or expired is taken over.
    pub fn insert_request_once(
        &self,
        record: &mut Request,
        project: &ProjectId,
        key_hash: &[u8; 32],
        ttl_ms: u64,
    ) -> Result<Claim> {
        let inner = self.inner()?;
        let mut key = [0u8; 48];
        key[..16].copy_from_slice(project.as_bytes());
        key[16..].copy_from_slice(key_hash);
        let stripe = u64::from_be_bytes(key_hash[..8].try_into().unwrap_or_default());
        let _guard = self.shared.claim_stripes[(stripe as usize) % LOCK_STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(current) = inner.idempotency.get(key)? {
            let owner = be_u64(&current).unwrap_or(0);
            let created = current.get(8..).and_then(be_u64).unwrap_or(0);
            let fresh = record.created_ms.saturating_sub(created) < ttl_ms;
            if fresh && inner.requests.contains_key(request_key(owner))? {
                return Ok(Claim::Existing(owner));
            }
        }
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&record.id.to_be_bytes());
        value[8..].copy_from_slice(&record.created_ms.to_be_bytes());
        inner.idempotency.insert(key, &value[..])?;
        self.insert_request(record)?;
        Ok(Claim::New)
    }
}
