//! Per-project resources: projects, API keys, workflows, structured outputs and webhook
//! endpoints, with the rules that govern them (unique names, references that must exist,
//! keys that expire).
//!
//! Every resource is read on the hot path (each request authenticates and looks up its
//! workflow and endpoints), and written rarely, so the whole catalog is held in memory
//! behind one `RwLock` and written through to the store. Writers update the store first,
//! then the map, while holding the write lock, so readers never see a resource that is not
//! in the store; callers make the write durable (`Store::commit`) before answering.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bincode::{Decode, Encode};

use crate::job::ProjectId;
use crate::secret;
use crate::store::catalog::Kind;
use crate::store::{Store, StoreError};

/// Provider credentials live in their own file: see there.
mod providers;
pub use providers::{ProviderCredential, ProviderKind, mask as mask_key};

/// The project created on first start and bound to `--api-key`.
pub const DEFAULT_PROJECT: &str = "default";

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub created_ms: u64,
    /// Signs deliveries to a request's own `webhook_url`, which has no endpoint secret.
    pub signing_secret: String,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ApiKey {
    pub id: String,
    pub project: ProjectId,
    pub name: Option<String>,
    /// SHA-256 of the key: the key itself is never stored.
    pub hash: [u8; 32],
    /// A masked form for listings.
    pub hint: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
}

impl ApiKey {
    /// Whether this key can still be used after `other` has expired (a key that never
    /// expires outlives every key that does). A key may not create or revoke a key that
    /// outlives it, so a short-lived key cannot mint or remove longer-lived access.
    pub fn outlives(&self, other: &ApiKey) -> bool {
        match (self.expires_ms, other.expires_ms) {
            (None, Some(_)) => true,
            (Some(a), Some(b)) => a > b,
            (_, None) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Workflow {
    pub project: ProjectId,
    pub name: String,
    pub event_name: Option<String>,
    pub provider: String,
    pub model: String,
    pub structured_output_id: Option<String>,
    pub fallbacks: Vec<(String, String)>,
    pub system_prompt: Option<String>,
    /// `mode: "testing"`.
    pub testing: bool,
    pub response_delay_ms: u64,
    pub callback_timeout_ms: Option<u64>,
    pub cache_fields: Vec<String>,
    pub description: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct StructuredOutput {
    pub id: String,
    pub project: ProjectId,
    pub name: String,
    /// The JSON Schema, as JSON text.
    pub schema: String,
    /// Sample data, as JSON text.
    pub sample_data: Option<String>,
    pub description: Option<String>,
    pub created_ms: u64,
}

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

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// `field` names a resource that does not exist (a workflow's structured output).
    #[error("{field}: {what} not found")]
    Missing { field: &'static str, what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

type ByProject<T> = HashMap<ProjectId, BTreeMap<String, Arc<T>>>;

#[derive(Default)]
struct Cache {
    projects: HashMap<ProjectId, Arc<Project>>,
    keys: HashMap<[u8; 32], Arc<ApiKey>>,
    workflows: ByProject<Workflow>,
    outputs: ByProject<StructuredOutput>,
    endpoints: ByProject<Endpoint>,
    providers: ByProject<ProviderCredential>,
}

/// The in-memory, write-through catalog.
pub struct Catalog {
    store: Store,
    cache: RwLock<Cache>,
}

fn listed<T>(map: &ByProject<T>, project: &ProjectId) -> Vec<Arc<T>> {
    map.get(project)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default()
}

fn found<T>(map: &ByProject<T>, project: &ProjectId, name: &str) -> Option<Arc<T>> {
    map.get(project).and_then(|m| m.get(name)).cloned()
}

impl Catalog {
    /// Loads every resource from the store.
    pub fn load(store: Store) -> Result<Catalog, StoreError> {
        Ok(Catalog {
            cache: RwLock::new(Catalog::read_all(&store)?),
            store,
        })
    }

    /// Loads every resource again (after the store was reopened, a change that was never
    /// made durable may be gone from it).
    pub fn reload(&self) -> Result<(), StoreError> {
        let mut cache = self.write();
        *cache = Catalog::read_all(&self.store)?;
        Ok(())
    }

    fn read_all(store: &Store) -> Result<Cache, StoreError> {
        let mut cache = Cache::default();
        for p in store.catalog_load::<Project>(Kind::Project)? {
            cache.projects.insert(p.id, Arc::new(p));
        }
        for k in store.catalog_load::<ApiKey>(Kind::ApiKey)? {
            cache.keys.insert(k.hash, Arc::new(k));
        }
        for w in store.catalog_load::<Workflow>(Kind::Workflow)? {
            let project = cache.workflows.entry(w.project).or_default();
            project.insert(w.name.clone(), Arc::new(w));
        }
        for o in store.catalog_load::<StructuredOutput>(Kind::StructuredOutput)? {
            let project = cache.outputs.entry(o.project).or_default();
            project.insert(o.id.clone(), Arc::new(o));
        }
        for e in store.catalog_load::<Endpoint>(Kind::Endpoint)? {
            let project = cache.endpoints.entry(e.project).or_default();
            project.insert(e.id.clone(), Arc::new(e));
        }
        for c in store.catalog_load::<ProviderCredential>(Kind::Provider)? {
            let project = cache.providers.entry(c.project).or_default();
            project.insert(c.name.clone(), Arc::new(c));
        }
        Ok(cache)
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    // ---- projects ----

    pub fn project(&self, id: &ProjectId) -> Option<Arc<Project>> {
        self.read().projects.get(id).cloned()
    }

    pub fn projects(&self) -> Vec<Arc<Project>> {
        let mut all: Vec<_> = self.read().projects.values().cloned().collect();
        all.sort_by_key(|p| p.created_ms);
        all
    }

    /// The project called `name`, created if there is none.
    pub fn ensure_project(&self, name: &str, now_ms: u64) -> Result<Arc<Project>, StoreError> {
        match self.create_project(name, now_ms) {
            Ok(project) => Ok(project),
            Err(CatalogError::Store(e)) => Err(e),
            Err(_) => self
                .read()
                .projects
                .values()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| StoreError::Io(std::io::Error::other("project vanished"))),
        }
    }

    /// A new project; names are unique.
    pub fn create_project(&self, name: &str, now_ms: u64) -> Result<Arc<Project>, CatalogError> {
        let mut cache = self.write();
        if cache.projects.values().any(|p| p.name == name) {
            return Err(CatalogError::Conflict(format!("project '{name}'")));
        }
        let project = Project {
            id: ProjectId::random(),
            name: name.to_string(),
            created_ms: now_ms,
            signing_secret: secret::new_webhook_secret(),
        };
        self.store
            .catalog_put(Kind::Project, &project.id, b"", &project)?;
        let project = Arc::new(project);
        cache.projects.insert(project.id, project.clone());
        Ok(project)
    }

    // ---- API keys ----

    /// The key record for a presented key, if it exists and has not expired. The lookup is
    /// by SHA-256, and the stored hash is compared in constant time.
    pub fn authenticate(&self, presented: &str, now_ms: u64) -> Option<Arc<ApiKey>> {
        let hash = secret::hash_key(presented);
        let cache = self.read();
        let key = cache.keys.get(&hash)?;
        if !secret::ct_eq(&key.hash, &hash) {
            return None;
        }
        if key.expires_ms.is_some_and(|t| now_ms >= t) {
            return None;
        }
        Some(key.clone())
    }

    /// Stores `key` for `project` unless it exists (idempotent bootstrap of `--api-key`).
    pub fn ensure_key(
        &self,
        project: &ProjectId,
        key: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let hash = secret::hash_key(key);
        if self.read().keys.contains_key(&hash) {
            return Ok(());
        }
        self.insert_key(project, key, Some(name.to_string()), None, now_ms)
            .map(|_| ())
    }

    /// Creates a new key; returns its record and the key itself (shown once).
    pub fn create_key(
        &self,
        project: &ProjectId,
        name: Option<String>,
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(Arc<ApiKey>, String), StoreError> {
        let key = secret::new_api_key();
        let record = self.insert_key(project, &key, name, expires_ms, now_ms)?;
        Ok((record, key))
    }

    fn insert_key(
        &self,
        project: &ProjectId,
        key: &str,
        name: Option<String>,
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Arc<ApiKey>, StoreError> {
        let record = ApiKey {
            id: secret::new_id("key"),
            project: *project,
            name,
            hash: secret::hash_key(key),
            hint: secret::key_hint(key),
            created_ms: now_ms,
            expires_ms,
        };
        let mut cache = self.write();
        self.store
            .catalog_put(Kind::ApiKey, project, &record.hash, &record)?;
        let record = Arc::new(record);
        cache.keys.insert(record.hash, record.clone());
        Ok(record)
    }

    pub fn keys(&self, project: &ProjectId) -> Vec<Arc<ApiKey>> {
        let mut keys: Vec<_> = self
            .read()
            .keys
            .values()
            .filter(|k| &k.project == project)
            .cloned()
            .collect();
        keys.sort_by_key(|k| k.created_ms);
        keys
    }

    /// A key of `project` by id.
    pub fn key(&self, project: &ProjectId, id: &str) -> Option<Arc<ApiKey>> {
        self.read()
            .keys
            .values()
            .find(|k| &k.project == project && k.id == id)
            .cloned()
    }

    /// Revokes a key of `project` by id; false if there is none.
    pub fn delete_key(&self, project: &ProjectId, id: &str) -> Result<bool, StoreError> {
        let mut cache = self.write();
        let Some(hash) = cache
            .keys
            .values()
            .find(|k| &k.project == project && k.id == id)
            .map(|k| k.hash)
        else {
            return Ok(false);
        };
        self.store.catalog_delete(Kind::ApiKey, project, &hash)?;
        cache.keys.remove(&hash);
        Ok(true)
    }

    // ---- workflows ----

    pub fn workflow(&self, project: &ProjectId, name: &str) -> Option<Arc<Workflow>> {
        found(&self.read().workflows, project, name)
    }

    pub fn workflows(&self, project: &ProjectId) -> Vec<Arc<Workflow>> {
        listed(&self.read().workflows, project)
    }

    /// Creates (`replace == false`, conflict if the name exists) or replaces
    /// (`replace == true`, not found if it does not) a workflow.
    pub fn put_workflow(
        &self,
        mut workflow: Workflow,
        replace: bool,
    ) -> Result<Arc<Workflow>, CatalogError> {
        let mut cache = self.write();
        if let Some(id) = &workflow.structured_output_id
            && found(&cache.outputs, &workflow.project, id).is_none()
        {
            return Err(CatalogError::Missing {
                field: "structured_output_id",
                what: format!("structured output '{id}'"),
            });
        }
        let existing = found(&cache.workflows, &workflow.project, &workflow.name);
        match (&existing, replace) {
            (Some(_), false) => {
                return Err(CatalogError::Conflict(format!(
                    "workflow '{}'",
                    workflow.name
                )));
            }
            (None, true) => {
                return Err(CatalogError::NotFound(format!(
                    "workflow '{}'",
                    workflow.name
                )));
            }
            (Some(old), true) => workflow.created_ms = old.created_ms,
            (None, false) => {}
        }
        self.store.catalog_put(
            Kind::Workflow,
            &workflow.project,
            workflow.name.as_bytes(),
            &workflow,
        )?;
        let workflow = Arc::new(workflow);
        cache
            .workflows
            .entry(workflow.project)
            .or_default()
            .insert(workflow.name.clone(), workflow.clone());
        Ok(workflow)
    }

    pub fn delete_workflow(&self, project: &ProjectId, name: &str) -> Result<bool, StoreError> {
        let mut cache = self.write();
        let removed = cache
            .workflows
            .get_mut(project)
            .and_then(|m| m.remove(name))
            .is_some();
        if removed {
            self.store
                .catalog_delete(Kind::Workflow, project, name.as_bytes())?;
        }
        Ok(removed)
    }

    // ---- structured outputs ----

    pub fn structured_output(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Option<Arc<StructuredOutput>> {
        found(&self.read().outputs, project, id)
    }

    pub fn structured_outputs(&self, project: &ProjectId) -> Vec<Arc<StructuredOutput>> {
        listed(&self.read().outputs, project)
    }

    pub fn create_structured_output(
        &self,
        output: StructuredOutput,
    ) -> Result<Arc<StructuredOutput>, CatalogError> {
        let mut cache = self.write();
        if listed(&cache.outputs, &output.project)
            .iter()
            .any(|o| o.name == output.name)
        {
            return Err(CatalogError::Conflict(format!(
                "structured output '{}'",
                output.name
            )));
        }
        self.store.catalog_put(
            Kind::StructuredOutput,
            &output.project,
            output.id.as_bytes(),
            &output,
        )?;
        let output = Arc::new(output);
        cache
            .outputs
            .entry(output.project)
            .or_default()
            .insert(output.id.clone(), output.clone());
        Ok(output)
    }

    /// Deletes a structured output unless a workflow still uses it.
    pub fn delete_structured_output(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<bool, CatalogError> {
        let mut cache = self.write();
        if found(&cache.outputs, project, id).is_none() {
            return Ok(false);
        }
        if let Some(user) = listed(&cache.workflows, project)
            .iter()
            .find(|w| w.structured_output_id.as_deref() == Some(id))
        {
            return Err(CatalogError::Conflict(format!(
                "a reference from workflow '{}' to structured output '{id}'",
                user.name
            )));
        }
        self.store
            .catalog_delete(Kind::StructuredOutput, project, id.as_bytes())?;
        if let Some(m) = cache.outputs.get_mut(project) {
            m.remove(id);
        }
        Ok(true)
    }

    // ---- webhook endpoints ----

    pub fn endpoint(&self, project: &ProjectId, id: &str) -> Option<Arc<Endpoint>> {
        found(&self.read().endpoints, project, id)
    }

    pub fn endpoints(&self, project: &ProjectId) -> Vec<Arc<Endpoint>> {
        let mut all = listed(&self.read().endpoints, project);
        all.sort_by_key(|e| e.created_ms);
        all
    }

    /// The endpoints a workflow with `event_name` delivers to.
    pub fn endpoints_for(
        &self,
        project: &ProjectId,
        event_name: Option<&str>,
    ) -> Vec<Arc<Endpoint>> {
        let mut all: Vec<_> = self
            .endpoints(project)
            .into_iter()
            .filter(|e| e.wants(event_name))
            .collect();
        all.sort_by_key(|e| e.created_ms);
        all
    }

    pub fn put_endpoint(&self, endpoint: Endpoint) -> Result<Arc<Endpoint>, StoreError> {
        let mut cache = self.write();
        self.store.catalog_put(
            Kind::Endpoint,
            &endpoint.project,
            endpoint.id.as_bytes(),
            &endpoint,
        )?;
        let endpoint = Arc::new(endpoint);
        cache
            .endpoints
            .entry(endpoint.project)
            .or_default()
            .insert(endpoint.id.clone(), endpoint.clone());
        Ok(endpoint)
    }

    /// Applies `change` to an endpoint and stores it if `change` says it changed
    /// (returns true). `None` if there is no such endpoint.
    pub fn update_endpoint(
        &self,
        project: &ProjectId,
        id: &str,
        change: impl FnOnce(&mut Endpoint) -> bool,
    ) -> Result<Option<Arc<Endpoint>>, StoreError> {
        let mut cache = self.write();
        let Some(current) = found(&cache.endpoints, project, id) else {
            return Ok(None);
        };
        let mut next = (*current).clone();
        if !change(&mut next) {
            return Ok(Some(current));
        }
        self.store
            .catalog_put(Kind::Endpoint, project, id.as_bytes(), &next)?;
        let next = Arc::new(next);
        cache
            .endpoints
            .entry(*project)
            .or_default()
            .insert(id.to_string(), next.clone());
        Ok(Some(next))
    }

    /// Notes an attempt's outcome on the endpoint's health: a success clears the failing
    /// streak; a failure starts one, and a streak older than `disable_after_ms` (or a
    /// `gone` answer, 410) disables the endpoint. Writes only when something changes.
    pub fn note_attempt(
        &self,
        project: &ProjectId,
        id: &str,
        delivered: bool,
        gone: bool,
        now_ms: u64,
        disable_after_ms: u64,
    ) -> Result<Option<Arc<Endpoint>>, StoreError> {
        self.update_endpoint(project, id, |e| {
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

    pub fn delete_endpoint(&self, project: &ProjectId, id: &str) -> Result<bool, StoreError> {
        let mut cache = self.write();
        let removed = cache
            .endpoints
            .get_mut(project)
            .and_then(|m| m.remove(id))
            .is_some();
        if removed {
            self.store
                .catalog_delete(Kind::Endpoint, project, id.as_bytes())?;
        }
        Ok(removed)
    }
}
