//! Projects (tenants) and their API keys: a project is created with its first key, keys
//! are stored as SHA-256 only, and a key never creates or revokes a key that outlives it,
//! so a short-lived key cannot mint or remove longer-lived access.

use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{Cache, Catalog, CatalogError, Resource};
use crate::job::ProjectId;
use crate::secret;
use crate::store::catalog::Kind;
use crate::store::{Store, StoreError};

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
    /// expires outlives every key that does).
    pub fn outlives(&self, other: &ApiKey) -> bool {
        match (self.expires_ms, other.expires_ms) {
            (None, Some(_)) => true,
            (Some(a), Some(b)) => a > b,
            (_, None) => false,
        }
    }
}

/// Stores a new project called `name` (the caller checked that the name is free).
fn put_project(
    store: &Store,
    cache: &mut Cache,
    name: &str,
    now_ms: u64,
) -> Result<Arc<Project>, StoreError> {
    let project = Project {
        id: store.new_project_id(name),
        name: name.to_string(),
        created_ms: now_ms,
        signing_secret: secret::new_webhook_secret(),
    };
    store.catalog_put(Kind::Project, &project.id, b"", &project)?;
    let project = Arc::new(project);
    cache.projects.insert(project.id, project.clone());
    Ok(project)
}

/// What a new key is: its project, name and expiry.
#[derive(Clone)]
struct NewKey<'a> {
    project: ProjectId,
    name: Option<String>,
    expires_ms: Option<u64>,
    key: &'a str,
}

fn put_key(
    store: &Store,
    cache: &mut Cache,
    new: NewKey<'_>,
    now_ms: u64,
) -> Result<Arc<ApiKey>, StoreError> {
    let record = ApiKey {
        id: secret::new_id("key"),
        project: new.project,
        name: new.name,
        hash: secret::hash_key(new.key),
        hint: secret::key_hint(new.key),
        created_ms: now_ms,
        expires_ms: new.expires_ms,
    };
    store.catalog_put(Kind::ApiKey, &record.project, &record.hash, &record)?;
    let record = Arc::new(record);
    cache.keys.insert(record.hash, record.clone());
    Ok(record)
}

impl Catalog {
    pub fn project(&self, id: &ProjectId) -> Option<Arc<Project>> {
        self.read().projects.get(id).cloned()
    }

    pub fn projects(&self) -> Vec<Arc<Project>> {
        let mut all: Vec<_> = self.read().projects.values().cloned().collect();
        all.sort_by_key(|p| p.created_ms);
        all
    }

    /// A new project with its first API key (named `initial`); the key is returned, to be
    /// shown once. Project names are unique.
    pub async fn create_project(
        &self,
        name: &str,
        now_ms: u64,
    ) -> Result<(Arc<Project>, String), CatalogError> {
        let key = secret::new_api_key();
        self.commit(|store, cache| {
            if cache.projects.values().any(|p| p.name == name) {
                return Err(CatalogError::exists(Resource::Project, name));
            }
            let project = put_project(store, cache, name, now_ms)?;
            let first = NewKey {
                project: project.id,
                name: Some("initial".into()),
                expires_ms: None,
                key: &key,
            };
            put_key(store, cache, first, now_ms)?;
            Ok((project, key.clone()))
        })
        .await
    }

    /// What a start needs: the project `default` (created if missing) and, with
    /// `--api-key`, that key among its keys. Without one, a store whose only project has
    /// no key gets its first key, returned to be shown once.
    pub async fn bootstrap(
        &self,
        api_key: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<String>, StoreError> {
        self.commit(|store, cache| {
            let existing = cache
                .projects
                .values()
                .find(|p| p.name == DEFAULT_PROJECT)
                .cloned();
            let project = match existing {
                Some(project) => project,
                None => put_project(store, cache, DEFAULT_PROJECT, now_ms)?,
            };
            let (key, name, shown) = match api_key {
                Some(key) if cache.keys.contains_key(&secret::hash_key(key)) => return Ok(None),
                Some(key) => (key.to_string(), "bootstrap", false),
                None if cache.projects.len() == 1
                    && !cache.keys.values().any(|k| k.project == project.id) =>
                {
                    (secret::new_api_key(), "initial", true)
                }
                None => return Ok(None),
            };
            let new = NewKey {
                project: project.id,
                name: Some(name.into()),
                expires_ms: None,
                key: &key,
            };
            put_key(store, cache, new, now_ms)?;
            Ok(shown.then_some(key))
        })
        .await
    }

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

    /// A new key for the project of `maker`, which it may not outlive: without an expiry
    /// it expires with `maker`, and a later expiry is refused. Returns its record and the
    /// key itself (shown once).
    pub async fn create_key(
        &self,
        maker: &ApiKey,
        name: Option<String>,
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(Arc<ApiKey>, String), CatalogError> {
        let expires_ms = match (maker.expires_ms, expires_ms) {
            (Some(limit), Some(at)) if at > limit => return Err(CatalogError::WouldOutlive(limit)),
            (Some(limit), None) => Some(limit),
            (_, at) => at,
        };
        let key = secret::new_api_key();
        let new = NewKey {
            project: maker.project,
            name,
            expires_ms,
            key: &key,
        };
        let record = self
            .commit(|store, cache| put_key(store, cache, new.clone(), now_ms))
            .await?;
        Ok((record, key))
    }

    /// The keys of `project`, oldest first.
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

    /// Revokes the key `id` of the project of `revoker`, which may not revoke a key that
    /// outlives it (itself it may).
    pub async fn revoke_key(&self, revoker: &ApiKey, id: &str) -> Result<(), CatalogError> {
        self.commit(|store, cache| {
            let target = cache
                .keys
                .values()
                .find(|k| k.project == revoker.project && k.id == id)
                .cloned()
                .ok_or_else(|| CatalogError::not_found(Resource::Key, id))?;
            if target.outlives(revoker) {
                return Err(CatalogError::Outlived(id.to_string()));
            }
            store.catalog_delete(Kind::ApiKey, &target.project, &target.hash)?;
            cache.keys.remove(&target.hash);
            Ok(())
        })
        .await
    }
}
