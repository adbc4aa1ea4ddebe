//! Per-project resources: projects, API keys, workflows, structured outputs, webhook
//! endpoints and provider credentials, with the rules that govern them (unique names,
//! references that must exist, keys that expire and cannot outlive their maker, secrets
//! that rotate with a grace period, endpoints that health disables).
//!
//! Every resource is read on the hot path (each request authenticates and looks up its
//! workflow and endpoints), and written rarely, so the whole catalog is held in memory
//! behind one `RwLock` and written through to the store. On a sled node a change is read,
//! decided and written under the write lock, the store before the map, so readers never
//! see a resource that is not in the store, a store write that fails changes nothing, and
//! two changes of one resource cannot lose each other. The methods callers answer after
//! return once the change is durable (they wait for [`Store::commit`]); the few the engine
//! calls on its own (`note_attempt`) ride along with the next commit.
//!
//! On a cluster node the store's writes are network round trips, which no `std` lock may
//! be held across, and other nodes change the catalog too. There a change is decided on a
//! copy of the map (the one closure both kinds of node run), its writes queue on a handle
//! of its own ([`Store::catalog_change`]) and are sent after the lock is released, each by
//! `create` or CAS (so names are unique across nodes and no change overwrites one it did
//! not see); the map is then loaded again from the node's copy of the `catalog` bucket,
//! which every node's watch keeps current (and which reloads the map on every change, see
//! `server`). A conflict means another node changed a key first: the change is decided
//! again on the map that now has theirs. Changes on one node are serialized by an async
//! lock, held across those writes. A change of several keys (a project and its first key)
//! is not atomic there: NATS failing between its writes leaves the first ones written
//! (on a sled node one commit makes both durable).
//!
//! One file per resource: `projects` (projects and API keys), `workflows` (workflows and
//! structured outputs), `endpoints`, `providers`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::clock::rfc3339_ms;
use crate::job::ProjectId;
use crate::store::catalog::Kind;
use crate::store::{Store, StoreError};

mod endpoints;
mod projects;
mod providers;
mod workflows;

pub use endpoints::Endpoint;
pub use projects::{ApiKey, DEFAULT_PROJECT, Project};
pub use providers::{ProviderCredential, ProviderKind, mask as mask_key};
pub use workflows::{StructuredOutput, Workflow};

/// What kind of resource an error is about; it names it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Project,
    Key,
    Workflow,
    StructuredOutput,
    Endpoint,
    Provider,
}

impl Resource {
    /// The noun clients know it by (an endpoint is a `webhook` on the wire).
    pub fn noun(self) -> &'static str {
        match self {
            Resource::Project => "project",
            Resource::Key => "key",
            Resource::Workflow => "workflow",
            Resource::StructuredOutput => "structured output",
            Resource::Endpoint => "webhook",
            Resource::Provider => "provider",
        }
    }
}

/// One resource by kind and name, as messages name it: `workflow 'summarizer'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named(pub Resource, pub String);

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}'", self.0.noun(), self.1)
    }
}

/// Why a change was refused. The HTTP layer maps each to a status (`http::error`).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The name is taken.
    #[error("{0} already exists")]
    Exists(Named),
    #[error("{0} not found")]
    NotFound(Named),
    /// A workflow names a structured output its project does not have.
    #[error("structured_output_id: structured output '{0}' not found")]
    NoSuchOutput(String),
    /// A structured output that a workflow uses cannot be deleted.
    #[error(
        "a reference from workflow '{workflow}' to structured output '{output}' already exists"
    )]
    InUse { workflow: String, output: String },
    /// A key may not create a key that outlives it; the maker expires at this time.
    #[error(
        "the new key would outlive the key making this request, which expires at {}",
        rfc3339_ms(*.0)
    )]
    WouldOutlive(u64),
    /// A key may not revoke a key that outlives it.
    #[error("key '{0}' outlives the key making this request, which cannot revoke it")]
    Outlived(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CatalogError {
    pub fn not_found(resource: Resource, name: impl Into<String>) -> CatalogError {
        CatalogError::NotFound(Named(resource, name.into()))
    }

    fn exists(resource: Resource, name: impl Into<String>) -> CatalogError {
        CatalogError::Exists(Named(resource, name.into()))
    }
}

type ByProject<T> = HashMap<ProjectId, BTreeMap<String, Arc<T>>>;

#[derive(Default, Clone)]
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
    /// Serializes the changes of a cluster node (see the module doc).
    writer: tokio::sync::Mutex<()>,
}

fn listed<T>(map: &ByProject<T>, project: &ProjectId) -> Vec<Arc<T>> {
    map.get(project)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default()
}

fn found<T>(map: &ByProject<T>, project: &ProjectId, name: &str) -> Option<Arc<T>> {
    map.get(project).and_then(|m| m.get(name)).cloned()
}

/// Puts `value` in the map of its project.
fn insert<T>(map: &mut ByProject<T>, project: ProjectId, name: &str, value: Arc<T>) {
    map.entry(project)
        .or_default()
        .insert(name.to_string(), value);
}

/// Deletes the entry of `kind` called `name` from the store, then from `map`; not found
/// if the map has none. The store goes first: if it refuses, the entry stays.
fn remove<T>(
    store: &Store,
    map: &mut ByProject<T>,
    (kind, resource): (Kind, Resource),
    project: &ProjectId,
    name: &str,
) -> Result<(), CatalogError> {
    if found(map, project, name).is_none() {
        return Err(CatalogError::not_found(resource, name));
    }
    store.catalog_delete(kind, project, name.as_bytes())?;
    if let Some(m) = map.get_mut(project) {
        m.remove(name);
    }
    Ok(())
}

impl Catalog {
    /// Loads every resource from the store.
    pub fn load(store: Store) -> Result<Catalog, StoreError> {
        Ok(Catalog {
            cache: RwLock::new(Catalog::read_all(&store)?),
            store,
            writer: tokio::sync::Mutex::new(()),
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
            let name = w.name.clone();
            insert(&mut cache.workflows, w.project, &name, Arc::new(w));
        }
        for o in store.catalog_load::<StructuredOutput>(Kind::StructuredOutput)? {
            let id = o.id.clone();
            insert(&mut cache.outputs, o.project, &id, Arc::new(o));
        }
        for e in store.catalog_load::<Endpoint>(Kind::Endpoint)? {
            let id = e.id.clone();
            insert(&mut cache.endpoints, e.project, &id, Arc::new(e));
        }
        for c in store.catalog_load::<ProviderCredential>(Kind::Provider)? {
            let name = c.name.clone();
            insert(&mut cache.providers, c.project, &name, Arc::new(c));
        }
        Ok(cache)
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads, decides and writes with `change` (which must write the store before the
    /// map), then waits until the change is durable. On a sled node `change` runs once,
    /// under the write lock; on a cluster node on a copy of the map, as many times as
    /// other nodes' changes make it decide again (see the module doc).
    async fn commit<T, E: From<StoreError>>(
        &self,
        mut change: impl FnMut(&Store, &mut Cache) -> Result<T, E>,
    ) -> Result<T, E> {
        let Some(writes) = self.store.catalog_change() else {
            let done = change(&self.store, &mut self.write())?;
            self.store.commit().await?;
            return Ok(done);
        };
        let _one_at_a_time = self.writer.lock().await;
        let mut backoff = std::time::Duration::from_millis(20);
        loop {
            let mut copy = self.read().clone();
            let done = match change(&writes, &mut copy) {
                Ok(done) => done,
                Err(e) => {
                    writes.catalog_discard();
                    return Err(e);
                }
            };
            let sent = writes.catalog_flush().await;
            self.reload()?;
            if sent? {
                return Ok(done);
            }
            // A key another node is writing (or whose fence a node that died holds, until
            // it expires): decide again, not at once.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
        }
    }
}
