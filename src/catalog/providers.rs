//! Provider credentials, per project: which model APIs a project's workflows may call, with
//! what key, at what address, and with what timeout.
//!
//! Keys are secrets a project hands to eddy, so they are stored (the model APIs need them in
//! clear) but never shown again: listings carry a masked form, and [`ProviderCredential`]'s
//! `Debug` prints the mask, so a key cannot reach a log through `{:?}` by accident.

use std::fmt;
use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{Catalog, CatalogError, Resource, found, insert, listed, remove};
use crate::job::ProjectId;
use crate::store::catalog::Kind;

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ProviderKind {
    /// OpenAI's chat completions: OpenAI itself and every compatible server (vLLM,
    /// llama.cpp, Ollama, Groq, Together, Mistral, …).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

impl ProviderKind {
    /// The name clients use for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// One provider's credentials for one project. Workflows name it by `name` in `provider`
/// and in `fallbacks`.
#[derive(Clone, PartialEq, Encode, Decode)]
pub struct ProviderCredential {
    pub project: ProjectId,
    /// `openai`, `anthropic`, another preset, or any name for a server at `base_url`.
    pub name: String,
    pub kind: ProviderKind,
    /// Sent as `Authorization: Bearer` (OpenAI-compatible) or `x-api-key` (Anthropic);
    /// never returned by any API nor logged.
    pub api_key: Option<String>,
    /// The API root, e.g. `https://api.openai.com/v1`; requests go to
    /// `{base_url}/chat/completions` or `{base_url}/messages`.
    pub base_url: String,
    /// Per attempt; the server's `--provider-timeout` when unset.
    pub timeout_ms: Option<u64>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl ProviderCredential {
    /// The key as listings show it: a few characters of each end, never the whole key.
    pub fn masked_key(&self) -> Option<String> {
        self.api_key.as_deref().map(mask)
    }
}

/// `sk-p…wxyz` for keys long enough that showing 8 characters leaves most hidden, else
/// only `…` and the last 2.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() >= 20 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}…{tail}")
    } else {
        let tail: String = chars[chars.len().saturating_sub(2)..].iter().collect();
        format!("…{tail}")
    }
}

impl fmt::Debug for ProviderCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderCredential")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("api_key", &self.masked_key())
            .field("base_url", &self.base_url)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn provider(&self, project: &ProjectId, name: &str) -> Option<Arc<ProviderCredential>> {
        found(&self.read().providers, project, name)
    }

    pub fn providers(&self, project: &ProjectId) -> Vec<Arc<ProviderCredential>> {
        listed(&self.read().providers, project)
    }

    /// Creates or replaces the credentials called `credential.name`; true if they are new.
    /// A replacement keeps the original creation time.
    pub async fn put_provider(
        &self,
        mut credential: ProviderCredential,
    ) -> Result<(Arc<ProviderCredential>, bool), CatalogError> {
        self.commit(|store, cache| {
            let (project, name) = (credential.project, credential.name.clone());
            let existing = found(&cache.providers, &project, &name);
            if let Some(old) = &existing {
                credential.created_ms = old.created_ms;
            }
            store.catalog_put(Kind::Provider, &project, name.as_bytes(), &credential)?;
            let credential = Arc::new(credential.clone());
            insert(&mut cache.providers, project, &name, credential.clone());
            Ok((credential, existing.is_none()))
        })
        .await
    }

    pub async fn delete_provider(
        &self,
        project: &ProjectId,
        name: &str,
    ) -> Result<(), CatalogError> {
        self.commit(|store, cache| {
            let kind = (Kind::Provider, Resource::Provider);
            remove(store, &mut cache.providers, kind, project, name)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks never show a short key whole, and `Debug` prints the mask, not the key.
    #[test]
    fn keys_are_masked_everywhere() {
        assert_eq!(mask("sk-proj-abcdefghijklmnopqrstuvwxyz"), "sk-p…wxyz");
        assert_eq!(mask("short-key"), "…ey");
        assert_eq!(mask(""), "…");
        let credential = ProviderCredential {
            project: ProjectId::from_bytes([0; 16]),
            name: "openai".into(),
            kind: ProviderKind::OpenAi,
            api_key: Some("sk-secret-0123456789abcdefXYZW".into()),
            base_url: "https://api.openai.com/v1".into(),
            timeout_ms: None,
            created_ms: 0,
            updated_ms: 0,
        };
        let debug = format!("{credential:?}");
        assert!(!debug.contains("0123456789"), "{debug}");
        assert!(debug.contains("sk-s…XYZW"), "{debug}");
    }
}
