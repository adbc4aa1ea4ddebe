//! Persistence of the per-project resources (projects, API keys, workflows, structured
//! outputs, webhook endpoints, provider credentials) in the `catalog` tree.
//!
//! Key: `kind byte ‖ project UUID (16) ‖ name bytes`, so one kind of one project is a
//! contiguous range. API keys use the SHA-256 of the key as their name. The in-memory view
//! and the rules about these resources live in [`crate::catalog`]; this is only storage.

use bincode::{Decode, Encode};

use super::{Result, SledStore, codec};
use crate::job::ProjectId;

/// What a catalog entry is; the first byte of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Project = b'p',
    ApiKey = b'k',
    Workflow = b'w',
    StructuredOutput = b'o',
    Endpoint = b'e',
    Provider = b'v',
}

fn key(kind: Kind, project: &ProjectId, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + name.len());
    k.push(kind as u8);
    k.extend_from_slice(project.as_bytes());
    k.extend_from_slice(name);
    k
}

impl SledStore {
    /// Writes one entry. Durable with the next commit.
    pub fn catalog_put<T: Encode>(
        &self,
        kind: Kind,
        project: &ProjectId,
        name: &[u8],
        value: &T,
    ) -> Result<()> {
        self.inner()?
            .catalog
            .insert(key(kind, project, name), codec::encode(value)?)?;
        Ok(())
    }

    /// Deletes one entry; true if it existed.
    pub fn catalog_delete(&self, kind: Kind, project: &ProjectId, name: &[u8]) -> Result<bool> {
        Ok(self
            .inner()?
            .catalog
            .remove(key(kind, project, name))?
            .is_some())
    }

    /// Every entry of one kind, across projects.
    pub fn catalog_load<T: Decode<()>>(&self, kind: Kind) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for kv in self.inner()?.catalog.scan_prefix([kind as u8]) {
            let (_, v) = kv?;
            out.push(codec::decode(&v)?);
        }
        Ok(out)
    }
}
