//! The request log: indexes that list a project's requests newest first, by status, by
//! workflow and by time, reading only the records they return; and the retention sweep
//! of terminal requests.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `log` | `project ‖ created_ms ‖ id` | empty |
//! | `log_state` | `project ‖ state code ‖ created_ms ‖ id` | workflow hash (8) |
//! | `log_workflow` | `project ‖ workflow hash (8) ‖ created_ms ‖ id` | empty |
//!
//! All three are derived from the records: `insert_request` adds them, `update` moves the
//! `log_state` key when the state changes (under the record's stripe lock), and
//! `rebuild_indexes` recomputes them.

use sha2::{Digest, Sha256};

use super::{Result, Store, request_key};
use crate::job::{Request, State};

/// The one-byte code of a state in `log_state` keys.
pub fn state_code(state: State) -> u8 {
    match state {
        State::Pending => 1,
        State::Generated => 2,
        State::Delivered => 3,
        State::Callback => 4,
        State::Completed => 5,
        State::Failed(_) => 6,
    }
}

/// The code of a state by its wire name (`pending` … `failed`).
pub fn state_code_of(name: &str) -> Option<u8> {
    Some(match name {
        "pending" => 1,
        "generated" => 2,
        "delivered" => 3,
        "callback" => 4,
        "completed" => 5,
        "failed" => 6,
        _ => return None,
    })
}

fn workflow_hash(name: &str) -> [u8; 8] {
    let digest = Sha256::digest(name.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn tail(created_ms: u64, id: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&created_ms.to_be_bytes());
    t[8..].copy_from_slice(&id.to_be_bytes());
    t
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A position in the log: list entries strictly older than it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_ms: u64,
    pub id: u64,
}

impl Cursor {
    /// `cur_<hex created_ms ‖ id>`.
    pub fn encode(&self) -> String {
        format!("cur_{:016x}{:016x}", self.created_ms, self.id)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let hex = text.strip_prefix("cur_")?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Cursor {
            created_ms: u64::from_str_radix(&hex[..16], 16).ok()?,
            id: u64::from_str_radix(&hex[16..], 16).ok()?,
        })
    }

    pub fn of(record: &Request) -> Cursor {
        Cursor {
            created_ms: record.created_ms,
            id: record.id,
        }
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct LogQuery<'a> {
    /// A state code ([`state_code_of`]).
    pub state: Option<u8>,
    pub workflow: Option<&'a str>,
    /// Created at or after.
    pub since_ms: u64,
    /// Created before.
    pub until_ms: Option<u64>,
    pub before: Option<Cursor>,
    pub limit: usize,
}

fn id_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        key.get(key.len() - 8..)?.try_into().ok()?,
    ))
}

impl Store {
    pub(super) fn log_insert(&self, r: &Request) -> Result<()> {
        let t = tail(r.created_ms, r.id);
        let wf = workflow_hash(&r.workflow.name);
        let inner = &self.inner;
        inner.log.insert(key(&[&r.project_id, &t]), &[])?;
        inner
            .log_state
            .insert(key(&[&r.project_id, &[state_code(r.state)], &t]), &wf[..])?;
        inner
            .log_workflow
            .insert(key(&[&r.project_id, &wf, &t]), &[])?;
        Ok(())
    }

    pub(super) fn log_move(&self, r: &Request, from: State) -> Result<()> {
        if state_code(from) == state_code(r.state) {
            return Ok(());
        }
        let t = tail(r.created_ms, r.id);
        let inner = &self.inner;
        inner.log_state.insert(
            key(&[&r.project_id, &[state_code(r.state)], &t]),
            &workflow_hash(&r.workflow.name)[..],
        )?;
        inner
            .log_state
            .remove(key(&[&r.project_id, &[state_code(from)], &t]))?;
        Ok(())
    }

    fn log_remove(&self, r: &Request) -> Result<()> {
        let t = tail(r.created_ms, r.id);
        let wf = workflow_hash(&r.workflow.name);
        let inner = &self.inner;
        inner.log.remove(key(&[&r.project_id, &t]))?;
        inner
            .log_state
            .remove(key(&[&r.project_id, &[state_code(r.state)], &t]))?;
        inner.log_workflow.remove(key(&[&r.project_id, &wf, &t]))?;
        Ok(())
    }

    /// A page of a project's requests, newest first, and the cursor of the next page.
    pub fn list_requests(
        &self,
        project: &[u8; 16],
        query: &LogQuery<'_>,
    ) -> Result<(Vec<Request>, Option<Cursor>)> {
        let wf = query.workflow.map(workflow_hash);
        let (tree, prefix): (&sled::Tree, Vec<u8>) = match (query.state, wf) {
            (Some(code), _) => (&self.inner.log_state, key(&[project, &[code]])),
            (None, Some(wf)) => (&self.inner.log_workflow, key(&[project, &wf])),
            (None, None) => (&self.inner.log, project.to_vec()),
        };
        let lower = key(&[&prefix, &tail(query.since_ms, 0)]);
        let mut upper = key(&[&prefix, &tail(query.until_ms.unwrap_or(u64::MAX), 0)]);
        if let Some(c) = query.before {
            upper = upper.min(key(&[&prefix, &tail(c.created_ms, c.id)]));
        }
        let mut out = Vec::new();
        if lower >= upper {
            return Ok((out, None));
        }
        for kv in tree.range(lower..upper).rev() {
            let (k, v) = kv?;
            // With both filters the state index is scanned and the workflow checked here.
            if query.state.is_some() && wf.is_some_and(|wf| v.as_ref() != wf) {
                continue;
            }
            let Some(record) = id_of(&k).map(|id| self.request(id)).transpose()?.flatten() else {
                continue;
            };
            out.push(record);
            if out.len() >= query.limit {
                break;
            }
        }
        let next = (out.len() >= query.limit)
            .then(|| out.last().map(Cursor::of))
            .flatten();
        Ok((out, next))
    }

    /// Deletes terminal requests of `project` (record, channel, timeline, log entries)
    /// whose last change is older than `cutoff_ms` and that have no delivery still due;
    /// at most `limit`. Returns how many were deleted.
    pub fn sweep_requests(
        &self,
        project: &[u8; 16],
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<usize> {
        let mut deleted = 0;
        for code in [state_code(State::Completed), 6] {
            let prefix = key(&[project, &[code]]);
            let range = key(&[&prefix, &tail(0, 0)])..key(&[&prefix, &tail(cutoff_ms, 0)]);
            for kv in self.inner.log_state.range(range) {
                if deleted >= limit {
                    return Ok(deleted);
                }
                let (k, _) = kv?;
                let Some(id) = id_of(&k) else { continue };
                let _guard = self.stripe(id);
                match self.request(id)? {
                    Some(r)
                        if r.state.is_terminal()
                            && r.due_ms.is_none()
                            && r.updated_ms < cutoff_ms =>
                    {
                        for entry in self.inner.timeline.scan_prefix(id.to_be_bytes()).keys() {
                            self.inner.timeline.remove(entry?)?;
                        }
                        self.inner.channels.remove(r.channel_id)?;
                        self.inner.requests.remove(request_key(id))?;
                        self.log_remove(&r)?;
                        self.count_state(r.state, -1);
                        deleted += 1;
                    }
                    Some(_) => {}
                    // An index entry left by a crash mid-sweep.
                    None => {
                        self.inner.log_state.remove(&k)?;
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Counts every request by state from the state index's keys (at open).
    pub(super) fn count_states(&self) -> Result<[i64; 7]> {
        let mut counts = [0i64; 7];
        for k in self.inner.log_state.iter().keys() {
            if let Some(&code) = k?.get(16) {
                counts[(code as usize).min(6)] += 1;
            }
        }
        Ok(counts)
    }

    pub(super) fn log_clear(&self) -> Result<()> {
        self.inner.log.clear()?;
        self.inner.log_state.clear()?;
        self.inner.log_workflow.clear()?;
        Ok(())
    }
}
