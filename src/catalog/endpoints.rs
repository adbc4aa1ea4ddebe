//! Webhook endpoints: where a project's deliveries go, the secret that signs them (and
//! the previous one while a rotation's grace lasts), and their health: a failing streak,
//! and the disable that a 410 Gone or a streak too long brings.
//!
//! Every change of an endpoint (a rotation, an enable, an attempt's outcome) is a
//! read-change-write under the catalog's write lock, so none overwrites another.

use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{Cache, Catalog, CatalogError, Resource, found, insert, listed, remove};
use crate::job::ProjectId;
use crate::secret;
use crate::store::catalog::Kind;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Endpoint {
    pub id: String,
    pub project: ProjectId,
    pub url: String,
    pub description: Option<String>,
    /// Event names this endpoint receives; empty means all.
    pub events: Vec<String>,
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_until_ms`.
    pub previous_secret: Option<(String, u64)>,
    pub created_ms: u64,
    /// Why and when the endpoint was disabled (410 Gone, or failing for too long).
    /// Deliveries to a disabled endpoint are dead-lettered, never dropped.
    pub disabled: Option<(String, u64)>,
    /// Since when every attempt to this endpoint has failed; `None` after a success.
    pub failing_since_ms: Option<u64>,
}

impl Endpoint {
    /// A new, enabled endpoint with a fresh secret.
    pub fn new(
        project: ProjectId,
        url: String,
        description: Option<String>,
        events: Vec<String>,
        now_ms: u64,
    ) -> Endpoint {
        Endpoint {
            id: secret::new_id("wh"),
            project,
            url,
            description,
            events,
            secret: secret::new_webhook_secret(),
            previous_secret: None,
            created_ms: now_ms,
            disabled: None,
            failing_since_ms: None,
        }
    }

    /// Whether a workflow with this `event_name` delivers here.
    pub fn wants(&self, event_name: Option<&str>) -> bool {
        self.events.is_empty() || event_name.is_some_and(|e| self.events.iter().any(|x| x == e))
    }

    /// The secrets that sign a delivery at `now_ms`: the current one, then the previous one
    /// while its grace period lasts.
    pub fn signing_secrets(&self, now_ms: u64) -> Vec<String> {
        let mut out = vec![self.secret.clone()];
        if let Some((old, until)) = &self.previous_secret
            && now_ms < *until
        {
            out.push(old.clone());
        }
        out
    }
}

/// Applies `change` to an endpoint and stores it if `change` says it changed (returns
/// true); the endpoint as it is after. `None` if there is no such endpoint.
fn change(
    store: &Store,
    cache: &mut Cache,
    (project, id): (&ProjectId, &str),
    change: impl FnOnce(&mut Endpoint) -> bool,
) -> Result<Option<Arc<Endpoint>>, StoreError> {
    let Some(current) = found(&cache.endpoints, project, id) else {
        return Ok(None);
    };
    let mut next = (*current).clone();
    if !change(&mut next) {
        return Ok(Some(current));
    }
    store.catalog_put(Kind::Endpoint, project, id.as_bytes(), &next)?;
    let next = Arc::new(next);
    insert(&mut cache.endpoints, *project, id, next.clone());
    Ok(Some(next))
}

impl Catalog {
    pub fn endpoint(&self, project: &ProjectId, id: &str) -> Option<Arc<Endpoint>> {
        found(&self.read().endpoints, project, id)
    }

    /// The endpoints of `project`, oldest first.
    pub fn endpoints(&self, project: &ProjectId) -> Vec<Arc<Endpoint>> {
        let mut all = listed(&self.read().endpoints, project);
        all.sort_by_key(|e| e.created_ms);
        all
    }

    /// The endpoints a workflow with `event_name` delivers to, oldest first.
    pub fn endpoints_for(
        &self,
        project: &ProjectId,
        event_name: Option<&str>,
    ) -> Vec<Arc<Endpoint>> {
        self.endpoints(project)
            .into_iter()
            .filter(|e| e.wants(event_name))
            .collect()
    }

    pub async fn create_endpoint(&self, endpoint: Endpoint) -> Result<Arc<Endpoint>, CatalogError> {
        self.commit(|store, cache| {
            let (project, id) = (endpoint.project, endpoint.id.clone());
            store.catalog_put(Kind::Endpoint, &project, id.as_bytes(), &endpoint)?;
            let endpoint = Arc::new(endpoint.clone());
            insert(&mut cache.endpoints, project, &id, endpoint.clone());
            Ok(endpoint)
        })
        .await
    }

    /// Gives an endpoint a new secret; the current one keeps signing beside it until
    /// `now_ms + grace_ms`.
    pub async fn rotate_secret(
        &self,
        project: &ProjectId,
        id: &str,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Arc<Endpoint>, CatalogError> {
        self.commit(|store, cache| {
            change(store, cache, (project, id), |e| {
                let old = std::mem::replace(&mut e.secret, secret::new_webhook_secret());
                e.previous_secret = Some((old, now_ms + grace_ms));
                true
            })?
            .ok_or_else(|| CatalogError::not_found(Resource::Endpoint, id))
        })
        .await
    }

    /// Enables a disabled endpoint again, with a clean record: no failing streak.
    pub async fn enable_endpoint(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<Arc<Endpoint>, CatalogError> {
        self.commit(|store, cache| {
            change(store, cache, (project, id), |e| {
                e.failing_since_ms = None;
                e.disabled.take().is_some()
            })?
            .ok_or_else(|| CatalogError::not_found(Resource::Endpoint, id))
        })
        .await
    }

    /// Notes an attempt's outcome on the endpoint's health: a success clears the failing
    /// streak; a failure starts one, and a streak older than `disable_after_ms` (or a
    /// `gone` answer, 410) disables the endpoint. Writes only when something changes, and
    /// does not wait for the commit (the delivery's own write is committed after it).
    pub fn note_attempt(
        &self,
        project: &ProjectId,
        id: &str,
        delivered: bool,
        gone: bool,
        now_ms: u64,
        disable_after_ms: u64,
    ) -> Result<Option<Arc<Endpoint>>, StoreError> {
        change(&self.store, &mut self.write(), (project, id), |e| {
            if delivered {
                return e.failing_since_ms.take().is_some();
            }
            let since = *e.failing_since_ms.get_or_insert(now_ms);
            if e.disabled.is_none() && gone {
                e.disabled = Some(("the endpoint answered 410 Gone".into(), now_ms));
            } else if e.disabled.is_none() && now_ms.saturating_sub(since) >= disable_after_ms {
                e.disabled = Some((
                    format!(
                        "every delivery failed for {} s",
                        now_ms.saturating_sub(since) / 1000
                    ),
                    now_ms,
                ));
            } else {
                return since == now_ms;
            }
            true
        })
    }

    pub async fn delete_endpoint(&self, project: &ProjectId, id: &str) -> Result<(), CatalogError> {
        self.commit(|store, cache| {
            let kind = (Kind::Endpoint, Resource::Endpoint);
            remove(store, &mut cache.endpoints, kind, project, id)
        })
        .await
    }
}
