//! The request log: an index that lists a project's requests newest first, by status, by
//! workflow and by time, reading only the records it returns; and the retention sweep of
//! terminal requests.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `log_state` | `project ‖ phase ‖ created_ms ‖ id` | workflow hash (8) |
//!
//! One key per request, in one of three phases: active (pending, generated, delivered,
//! callback), completed, failed. The key moves only when a request finishes, so the four
//! transitions in between cost the index nothing. A listing by a final status walks one
//! phase's range; by an active status, the active range (the requests in flight), keeping
//! the records in that state; of every status, the three ranges merged (each already newest
//! first). The workflow filter compares the value. The index is derived from the records:
//! `insert_request` adds the key, `update` moves it when the phase changes (under the
//! record's stripe lock), `rebuild_indexes` recomputes it.

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

/// The phase of a state in `log_state` keys: active (1), completed (5) or failed (6).
fn phase(state: State) -> u8 {
    match state {
        State::Completed => 5,
        State::Failed(_) => 6,
        _ => 1,
    }
}

/// The phase of a state code.
fn phase_of_code(code: u8) -> u8 {
    if code >= 5 { code } else { 1 }
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
        self.inner.log_state.insert(
            key(&[&r.project_id, &[phase(r.state)], &t]),
            &workflow_hash(&r.workflow.name)[..],
        )?;
        Ok(())
    }

    pub(super) fn log_move(&self, r: &Request, from: State) -> Result<()> {
        if phase(from) == phase(r.state) {
            return Ok(());
        }
        let t = tail(r.created_ms, r.id);
        let inner = &self.inner;
        inner.log_state.insert(
            key(&[&r.project_id, &[phase(r.state)], &t]),
            &workflow_hash(&r.workflow.name)[..],
        )?;
        inner
            .log_state
            .remove(key(&[&r.project_id, &[phase(from)], &t]))?;
        Ok(())
    }

    fn log_remove(&self, r: &Request) -> Result<()> {
        let t = tail(r.created_ms, r.id);
        self.inner
            .log_state
            .remove(key(&[&r.project_id, &[phase(r.state)], &t]))?;
        Ok(())
    }

    /// A page of a project's requests, newest first, and the cursor of the next page.
    pub fn list_requests(
        &self,
        project: &[u8; 16],
        query: &LogQuery<'_>,
    ) -> Result<(Vec<Request>, Option<Cursor>)> {
        let wf = query.workflow.map(workflow_hash);
        let phases: Vec<u8> = match query.state {
            Some(code) => vec![phase_of_code(code)],
            None => vec![1, 5, 6],
        };
        // An active state is told apart from the other active states by its record.
        let exact = query.state.filter(|code| phase_of_code(*code) == 1);
        let wanted = |r: &Request| exact.is_none_or(|code| state_code(r.state) == code);
        // The newest `limit` matching requests of each phase, then the newest `limit` of all.
        let mut found: Vec<(sled::IVec, Request)> = Vec::new();
        for ph in phases {
            let prefix = key(&[project, &[ph]]);
            let lower = key(&[&prefix, &tail(query.since_ms, 0)]);
            let mut upper = key(&[&prefix, &tail(query.until_ms.unwrap_or(u64::MAX), 0)]);
            if let Some(c) = query.before {
                upper = upper.min(key(&[&prefix, &tail(c.created_ms, c.id)]));
            }
            if lower >= upper {
                continue;
            }
            let mut taken = 0;
            for kv in self.inner.log_state.range(lower..upper).rev() {
                let (k, v) = kv?;
                if wf.is_some_and(|wf| v.as_ref() != wf) {
                    continue;
                }
                let Some(record) = id_of(&k).map(|id| self.request(id)).transpose()?.flatten()
                else {
                    continue;
                };
                if !wanted(&record) {
                    continue;
                }
                found.push((k, record));
                taken += 1;
                if taken >= query.limit {
                    break;
                }
            }
        }
        // Sort by `created_ms ‖ id`, the 16 bytes after the project and phase.
        found.sort_by(|a, b| b.0[17..].cmp(&a.0[17..]));
        found.truncate(query.limit);
        let next = (found.len() >= query.limit)
            .then(|| found.last().map(|(_, r)| Cursor::of(r)))
            .flatten();
        Ok((found.into_iter().map(|(_, r)| r).collect(), next))
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
        for code in [phase(State::Completed), 6] {
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

    /// Counts every request by state (at open): finished ones by their index keys, active
    /// ones (the requests in flight) by reading their records.
    pub(super) fn count_states(&self) -> Result<[i64; 7]> {
        let mut counts = [0i64; 7];
        for kv in self.inner.log_state.iter() {
            let (k, _) = kv?;
            match k.get(16) {
                Some(&1) => {
                    if let Some(r) = id_of(&k).map(|id| self.request(id)).transpose()?.flatten() {
                        counts[state_code(r.state) as usize] += 1;
                    }
                }
                Some(&code) => counts[(code as usize).min(6)] += 1,
                None => {}
            }
        }
        Ok(counts)
    }

    pub(super) fn log_clear(&self) -> Result<()> {
        self.inner.log_state.clear()?;
        Ok(())
    }
}
