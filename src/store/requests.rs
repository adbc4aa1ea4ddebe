//! The `requests` tree: id `u64` BE → `[v][Request]`, the truth every index is derived
//! from. A record moves only through [`Store::update`] (read → change → CAS), which keeps
//! its due key (see `due`), its big texts (see `body`) and its log entry (see `log`) in step
//! with it under the record's stripe lock.

use super::due::keyed_due;
use super::open::Inner;
use super::{CodecError, Result, SledStore, Summary, body, codec, due_key, log};
use crate::job::{ChannelId, Request};

/// What [`Store::update`] did.
#[derive(Debug)]
pub enum Update<T, R> {
    /// The closure accepted the change; the record as stored now and the closure's value.
    Done(Box<Request>, T),
    /// The closure refused; nothing was written.
    Refused(R),
    /// No record has this id.
    Missing,
}

/// Decodes a stored request record (`[version][bincode]`). Public for the fuzz target;
/// corrupt bytes are an error, never a panic or a huge allocation.
pub fn decode_request(bytes: &[u8]) -> std::result::Result<Request, CodecError> {
    codec::decode(bytes)
}

/// Encodes a request record as stored.
pub fn encode_request(record: &Request) -> std::result::Result<Vec<u8>, CodecError> {
    codec::encode(record)
}

pub fn request_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Record `id` as stored: big texts kept in `bodies` are empty (see `body`).
pub(super) fn stored_record(inner: &Inner, id: u64) -> Result<Option<Request>> {
    match inner.requests.get(request_key(id))? {
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        None => Ok(None),
    }
}

impl SledStore {
    /// Stores a new request with its indexes. Not durable until [`Store::commit`].
    pub fn insert_request(&self, record: &mut Request) -> Result<()> {
        let inner = self.inner()?;
        let _guard = self.stripe(record.id);
        record.due_ms = record.next_due();
        if let Some(due) = keyed_due(record) {
            inner.due.insert(due_key(due, record.id), &[])?;
        }
        let stored = body::encode(&inner.bodies, record, &Default::default())?;
        // The log entry first: open finds keyless work through it (see `due`).
        log::put(&inner, record, None)?;
        inner.requests.insert(request_key(record.id), stored)?;
        self.count_state(record.state, 1);
        Ok(())
    }

    pub fn request(&self, id: u64) -> Result<Option<Request>> {
        let inner = self.inner()?;
        let Some(mut record) = stored_record(&inner, id)? else {
            return Ok(None);
        };
        body::fill(&inner.bodies, &mut record)?;
        Ok(Some(record))
    }

    /// What a list shows of request `id` (its big texts are not read).
    pub fn summary(&self, id: u64) -> Result<Option<Summary>> {
        Ok(stored_record(&*self.inner()?, id)?.map(|r| Summary::of(&r)))
    }

    /// A new request id and its public channel id: a UUID v4 whose 122 free bits are a
    /// keyed permutation of the id and 58 random bits (see `ids`), so a channel id leads
    /// to its record without an index and says nothing about any other.
    pub fn new_request_id(&self) -> Result<(u64, ChannelId)> {
        let inner = self.inner()?;
        let id = inner.db.generate_id()?;
        Ok((id, inner.ids.channel_id(id, rand::random())))
    }

    /// The request whose channel id is `channel`, if any.
    pub fn request_by_channel(&self, channel: &ChannelId) -> Result<Option<Request>> {
        let id = self.inner()?.ids.request_of_channel(channel);
        Ok(self.request(id)?.filter(|r| &r.channel_id == channel))
    }

    /// Applies `change` to the record and swaps it in: read → change → CAS → move the due
    /// key and the log entry. `change` may refuse (nothing is written). `updated_ms` and
    /// `due_ms` are set here, so the due index always follows [`Request::next_due`] (a
    /// time already come gets no key: see `due`). The caller hands the new due time to
    /// the scheduler.
    pub fn update<T, R>(
        &self,
        id: u64,
        now_ms: u64,
        mut change: impl FnMut(&mut Request) -> std::result::Result<T, R>,
    ) -> Result<Update<T, R>> {
        let inner = self.inner()?;
        let _guard = self.stripe(id);
        let key = request_key(id);
        loop {
            let Some(old) = inner.requests.get(key)? else {
                return Ok(Update::Missing);
            };
            let mut record: Request = codec::decode(&old)?;
            let stored = body::fill(&inner.bodies, &mut record)?;
            let old_key = keyed_due(&record);
            let before = Summary::of(&record);
            let value = match change(&mut record) {
                Ok(v) => v,
                Err(refusal) => return Ok(Update::Refused(refusal)),
            };
            record.updated_ms = now_ms.max(record.updated_ms);
            record.due_ms = record.next_due();
            let new_key = keyed_due(&record);
            if new_key != old_key
                && let Some(due) = new_key
            {
                inner.due.insert(due_key(due, id), &[])?;
            }
            let new = body::encode(&inner.bodies, &mut record, &stored)?;
            // Another process cannot write this store (sled locks it), and this process
            // holds the stripe, so a conflict means a bug elsewhere; re-reading is still
            // the correct answer to it.
            if inner
                .requests
                .compare_and_swap(key, Some(old), Some(new))?
                .is_err()
            {
                continue;
            }
            if new_key != old_key
                && let Some(due) = old_key
            {
                inner.due.remove(due_key(due, id))?;
            }
            if Summary::of(&record) != before {
                log::put(&inner, &record, Some(before.state))?;
            }
            if record.state != before.state {
                self.count_state(before.state, -1);
                self.count_state(record.state, 1);
            }
            return Ok(Update::Done(Box::new(record), value));
        }
    }
}
