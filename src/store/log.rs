//! The request log: an index that lists a project's requests newest first, by status, by
//! workflow and by time, reading only what a list shows; and the retention sweep of
//! terminal requests.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `log_state` | `project ‖ phase ‖ created_ms ‖ id` | workflow hash (8) ‖ `[v][Summary]` |
//!
//! One key per request, in one of three phases: active (pending, generated, delivered,
//! callback), completed, failed. The key moves only when a request finishes; its value, the
//! request's [`Summary`] (what a list shows: channel id, workflow, status, times, a few
//! dozen bytes), is rewritten with every change of the record. So a listing never reads a
//! record: a request of 1 MiB costs a list what one of 100 bytes costs. A listing by a final
//! status walks one phase's range; by an active status, the active range, keeping the
//! entries in that state; of every status, the three ranges merged (each already newest
//! first). The workflow filter compares the hash. The index is derived from the records:
//! `insert_request` adds the key, `update` rewrites or moves it (under the record's stripe
//! lock), `rebuild_indexes` recomputes it. Counting requests by state at open reads only
//! this tree.

use sha2::{Digest, Sha256};

use bincode::{Decode, Encode};

use super::ids::{pair, unpair};
use super::open::Inner;
use super::{CodecError, Result, SledStore, be_u64, codec, due_key, request_key};
use crate::job::{ChannelId, Failure, ProjectId, Request, State, Status};

/// What a list shows of a request, kept beside its log key.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Summary {
    pub channel_id: ChannelId,
    pub workflow: String,
    pub event_name: Option<String>,
    pub state: State,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Summary {
    pub fn of(r: &Request) -> Summary {
        Summary {
            channel_id: r.channel_id,
            workflow: r.workflow.name.clone(),
            event_name: r.workflow.event_name.clone(),
            state: r.state,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }

    pub fn failure(&self) -> Option<Failure> {
        self.state.failure()
    }
}

/// The summary in a `log_state` value (after the 8-byte workflow hash).
pub(super) fn summary_of(value: &[u8]) -> std::result::Result<Summary, CodecError> {
    codec::decode(value.get(8..).ok_or(CodecError::Empty)?)
}

/// The one-byte code of a status: its slot among the counts, and for the final ones their
/// phase in `log_state` keys.
pub fn status_code(status: Status) -> u8 {
    match status {
        Status::Pending => 1,
        Status::Generated => 2,
        Status::Delivered => 3,
        Status::Callback => 4,
        Status::Completed => 5,
        Status::Failed => 6,
    }
}

/// The phase of a state in `log_state` keys: active (1), completed (5) or failed (6).
fn phase(state: State) -> u8 {
    phase_of_code(status_code(state.status()))
}

/// The phase of a status code.
fn phase_of_code(code: u8) -> u8 {
    if code >= 5 { code } else { 1 }
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
    pub fn of(summary: &Summary, id: u64) -> Cursor {
        Cursor {
            created_ms: summary.created_ms,
            id,
        }
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct LogQuery<'a> {
    pub status: Option<Status>,
    pub workflow: Option<&'a str>,
    /// Created at or after.
    pub since_ms: u64,
    /// Created before.
    pub until_ms: Option<u64>,
    pub before: Option<Cursor>,
    pub limit: usize,
}

/// The request id at the end of a `log_state` key.
pub(super) fn id_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        key.get(key.len() - 8..)?.try_into().ok()?,
    ))
}

/// `r`'s log entry: its key and value.
pub(super) fn entry(r: &Request) -> Result<(Vec<u8>, Vec<u8>)> {
    let t = tail(r.created_ms, r.id);
    let mut value = workflow_hash(&r.workflow.name).to_vec();
    value.extend_from_slice(&codec::encode(&Summary::of(r))?);
    Ok((
        key(&[r.project_id.as_bytes(), &[phase(r.state)], &t]),
        value,
    ))
}

/// The key `r` was listed under in state `from`, if that is not its key now (the phase
/// changed): to be removed once the new entry is written.
pub(super) fn left_behind(r: &Request, from: State) -> Option<Vec<u8>> {
    (phase(from) != phase(r.state)).then(|| {
        let t = tail(r.created_ms, r.id);
        key(&[r.project_id.as_bytes(), &[phase(from)], &t])
    })
}

/// Writes `r`'s log entry; `from`, when given, is the state it was listed under before
/// (its key is removed if the phase changed).
pub(super) fn put(inner: &Inner, r: &Request, from: Option<State>) -> Result<()> {
    let (k, value) = entry(r)?;
    inner.log_state.insert(k, value)?;
    if let Some(old) = from.and_then(|from| left_behind(r, from)) {
        inner.log_state.remove(old)?;
    }
    Ok(())
}

/// The counts by state code of log entries `(key, value)`.
pub(super) fn count<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    entries: impl Iterator<Item = (K, V)>,
) -> std::result::Result<[i64; 7], CodecError> {
    let mut counts = [0i64; 7];
    for (k, v) in entries {
        match k.as_ref().get(16) {
            Some(&1) => counts[status_code(summary_of(v.as_ref())?.state.status()) as usize] += 1,
            Some(&code) => counts[(code as usize).min(6)] += 1,
            None => {}
        }
    }
    Ok(counts)
}

/// Log entries `(key, value)` in a key range, newest (highest key) first.
pub(super) type Newest<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// A page of a project's requests from its log entries, newest first, and the cursor of
/// the next page: the listing of both stores, each giving its ranges newest first.
pub(super) fn list<'a>(
    mut newest: impl FnMut(Vec<u8>, Vec<u8>) -> Newest<'a>,
    project: &ProjectId,
    query: &LogQuery<'_>,
) -> Result<(Vec<Summary>, Option<Cursor>)> {
    let wf = query.workflow.map(workflow_hash);
    let phases: Vec<u8> = match query.status {
        Some(status) => vec![phase_of_code(status_code(status))],
        None => vec![1, 5, 6],
    };
    // An active status is told apart from the other active ones by its summary.
    let exact = query
        .status
        .filter(|status| phase_of_code(status_code(*status)) == 1);
    // The newest `limit` matching requests of each phase, then the newest `limit` of all.
    let mut found: Vec<(Vec<u8>, Summary)> = Vec::new();
    for ph in phases {
        let prefix = key(&[project.as_bytes(), &[ph]]);
        let lower = key(&[&prefix, &tail(query.since_ms, 0)]);
        let mut upper = key(&[&prefix, &tail(query.until_ms.unwrap_or(u64::MAX), 0)]);
        if let Some(c) = query.before {
            upper = upper.min(key(&[&prefix, &tail(c.created_ms, c.id)]));
        }
        if lower >= upper {
            continue;
        }
        let mut taken = 0;
        for kv in newest(lower, upper) {
            let (k, v) = kv?;
            if wf.is_some_and(|wf| v.get(..8) != Some(&wf[..])) {
                continue;
            }
            let summary = summary_of(&v)?;
            if exact.is_some_and(|status| summary.state.status() != status) {
                continue;
            }
            found.push((k, summary));
            taken += 1;
            if taken >= query.limit {
                break;
            }
        }
    }
    // Sort by `created_ms ‖ id`, the 16 bytes after the project and phase.
    found.sort_by(|a, b| b.0[17..].cmp(&a.0[17..]));
    found.truncate(query.limit);
    let next = match found.last() {
        Some((k, s)) if found.len() >= query.limit => Some(Cursor::of(s, id_of(k).unwrap_or(0))),
        _ => None,
    };
    Ok((found.into_iter().map(|(_, s)| s).collect(), next))
}

/// Counts every request by state (at open) from the log alone; returns the counts and
/// the keys of the active requests' entries.
pub(super) fn count_states(inner: &Inner) -> Result<([i64; 7], Vec<sled::IVec>)> {
    let mut active = Vec::new();
    let mut failed = None;
    let entries = inner.log_state.iter().map_while(|kv| match kv {
        Ok((k, v)) => {
            // An active entry is told apart by its summary; a finished one by its key.
            if k.get(16) == Some(&1) {
                active.push(k.clone());
            }
            Some((k, v))
        }
        Err(e) => {
            failed = Some(e);
            None
        }
    });
    let counts = count(entries)?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok((counts, active)),
    }
}

impl SledStore {
    /// The text of a list cursor: `cur_` and the sealed `created_ms ‖ id` (see `ids`).
    pub fn cursor_text(&self, cursor: Cursor) -> Result<String> {
        Ok(format!(
            "cur_{}",
            self.inner()?.ids.seal(pair(cursor.created_ms, cursor.id))
        ))
    }

    /// The inverse of [`Store::cursor_text`].
    pub fn parse_cursor(&self, text: &str) -> Option<Cursor> {
        let (created_ms, id) = unpair(self.inner().ok()?.ids.open(text.strip_prefix("cur_")?)?);
        Some(Cursor { created_ms, id })
    }

    /// The summary of a request of `project` by its channel id, and its id, if any.
    pub fn summary_by_channel(
        &self,
        project: &ProjectId,
        channel: &ChannelId,
    ) -> Result<Option<(u64, Summary)>> {
        let inner = self.inner()?;
        let id = inner.ids.request_of_channel(channel);
        Ok(super::stored_record(&inner, id)?
            .filter(|r| &r.project_id == project && &r.channel_id == channel)
            .map(|r| (id, Summary::of(&r))))
    }

    /// A page of a project's requests, newest first, and the cursor of the next page.
    /// Reads only the log (no record).
    pub fn list_requests(
        &self,
        project: &ProjectId,
        query: &LogQuery<'_>,
    ) -> Result<(Vec<Summary>, Option<String>)> {
        let inner = self.inner()?;
        let tree = &inner.log_state;
        let newest = |lower: Vec<u8>, upper: Vec<u8>| -> Newest<'_> {
            Box::new(tree.range(lower..upper).rev().map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            }))
        };
        let (page, next) = list(newest, project, query)?;
        let next = next.map(|c| self.cursor_text(c)).transpose()?;
        Ok((page, next))
    }

    /// Deletes terminal requests of `project` (record, channel, timeline, log entries)
    /// whose last change is older than `cutoff_ms` and that have no delivery still due;
    /// at most `limit`. Returns how many were deleted.
    pub fn sweep_requests(
        &self,
        project: &ProjectId,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<usize> {
        let inner = self.inner()?;
        let mut deleted = 0;
        for code in [Status::Completed, Status::Failed].map(status_code) {
            let prefix = key(&[project.as_bytes(), &[code]]);
            let range = key(&[&prefix, &tail(0, 0)])..key(&[&prefix, &tail(cutoff_ms, 0)]);
            for kv in inner.log_state.range(range) {
                if deleted >= limit {
                    return Ok(deleted);
                }
                let (k, _) = kv?;
                let Some(id) = id_of(&k) else { continue };
                let _guard = self.stripe(id);
                match super::stored_record(&inner, id)? {
                    Some(r)
                        if r.state.is_terminal()
                            && r.due_ms.is_none()
                            && r.updated_ms < cutoff_ms =>
                    {
                        // The record first: a crash after it leaves only garbage.
                        inner.requests.remove(request_key(id))?;
                        inner.log_state.remove(&k)?;
                        inner.timeline.remove(id.to_be_bytes())?;
                        super::body::remove(&inner.bodies, id)?;
                        self.count_state(r.state, -1);
                        deleted += 1;
                    }
                    Some(_) => {}
                    // An index entry left by a crash mid-sweep.
                    None => {
                        inner.log_state.remove(&k)?;
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Recomputes the `due` index and the request log from the records. Returns the number of
    /// records scanned. Used on a store whose indexes are missing or suspect.
    pub fn rebuild_indexes(&self) -> Result<usize> {
        let inner = self.inner()?;
        inner.due.clear()?;
        inner.log_state.clear()?;
        let mut scanned = 0;
        for kv in inner.requests.iter() {
            let (k, v) = kv?;
            let Some(id) = be_u64(&k) else { continue };
            let _guard = self.stripe(id);
            let mut record: Request = codec::decode(&v)?;
            let due = record.next_due();
            if due != record.due_ms {
                record.due_ms = due;
                inner.requests.insert(&k, codec::encode(&record)?)?;
            }
            if let Some(due) = super::due::keyed_due(&record) {
                inner.due.insert(due_key(due, id), &[])?;
            }
            put(&inner, &record, None)?;
            scanned += 1;
        }
        self.recount_and_recover(&inner)?;
        Ok(scanned)
    }
}
