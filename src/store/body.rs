//! A request's big texts (`messages`, `customer_data`, the AI result's `data`, the
//! callback's `data`: each up to the 1 MiB body limit or the model's answer) live beside
//! its record, in small chunks written once.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `bodies` | id BE ‖ field `u8` ‖ chunk `u32` BE | ≤ 6 KiB of the field's text |
//!
//! Two things in sled 0.34 make a big value inside a record expensive. Its page cache
//! counts a page by the bytes it took in the log, and a page over 128 KiB (a quarter of a
//! log segment) is written to a `blobs/` file with only a pointer in the log: such a page
//! counts as a few dozen bytes, so the cache never evicts it, and every big record stayed
//! in memory (RSS grew by ~2.3 MB per 1 MB request until a restart). And every update of
//! a record (four or more in a request's life) rewrote all of it. Chunks of 6 KiB keep
//! every node of `bodies` far under 128 KiB (a leaf splits past 16 entries), so they are
//! cached and evicted like any page, and the record that the engine updates stays small.
//!
//! A field stored here is empty in the stored record: none of them is ever empty
//! otherwise (each is JSON text). Reading a record fills them in; writing one stores a
//! field here when it is big and not already here with the same text (the fields are
//! written once, so an update of the record writes none of them again).

use sled::Tree;

use super::{CodecError, Result, codec};
use crate::job::Request;

/// Texts up to this size stay inside the record.
const INLINE: usize = 4 << 10;
const CHUNK: usize = 6 << 10;

/// The big texts of a record, by field number.
pub(crate) fn fields(record: &mut Request) -> [Option<&mut String>; 4] {
    [
        Some(&mut record.messages),
        Some(&mut record.customer_data),
        record.ai.as_mut().map(|ai| &mut ai.data),
        record.callback.as_mut().map(|c| &mut c.data),
    ]
}

fn chunk_key(id: u64, field: u8, n: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8] = field;
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

fn prefix(id: u64, field: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8] = field;
    k
}

/// What [`fill`] read from `bodies`: the texts as they are stored there, by field.
pub(super) type Stored = [Option<String>; 4];

/// Fills in the fields of a record (as decoded from `requests`) that live in `bodies`;
/// returns what it read, for [`encode`].
pub(super) fn fill(bodies: &Tree, record: &mut Request) -> Result<Stored> {
    let id = record.id;
    let mut stored: Stored = Default::default();
    for (n, field) in fields(record).into_iter().enumerate() {
        let Some(field) = field.filter(|f| f.is_empty()) else {
            continue;
        };
        let mut bytes = Vec::new();
        for kv in bodies.scan_prefix(prefix(id, n as u8)) {
            bytes.extend_from_slice(&kv?.1);
        }
        *field = String::from_utf8(bytes).map_err(|_| CodecError::Empty)?;
        stored[n] = Some(field.clone());
    }
    Ok(stored)
}

/// Encodes `record` as stored: every big field goes to `bodies` (unless `stored` says it
/// is there already with this text) and is left empty in the record.
pub(super) fn encode(bodies: &Tree, record: &mut Request, stored: &Stored) -> Result<Vec<u8>> {
    let id = record.id;
    let mut moved: [Option<String>; 4] = Default::default();
    for (n, field) in fields(record).into_iter().enumerate() {
        let Some(field) = field.filter(|f| f.len() > INLINE) else {
            continue;
        };
        if stored[n].as_deref() != Some(field.as_str()) {
            if stored[n].is_some() {
                remove_field(bodies, id, n as u8)?;
            }
            for (i, chunk) in field.as_bytes().chunks(CHUNK).enumerate() {
                bodies.insert(chunk_key(id, n as u8, i as u32), chunk)?;
            }
        }
        moved[n] = Some(std::mem::take(field));
    }
    let encoded = codec::encode(&*record);
    for (field, text) in fields(record).into_iter().zip(moved) {
        if let (Some(field), Some(text)) = (field, text) {
            *field = text;
        }
    }
    Ok(encoded?)
}

fn remove_field(bodies: &Tree, id: u64, field: u8) -> Result<()> {
    for key in bodies.scan_prefix(prefix(id, field)).keys() {
        bodies.remove(key?)?;
    }
    Ok(())
}

/// Removes every big field of a request (retention).
pub(super) fn remove(bodies: &Tree, id: u64) -> Result<()> {
    for key in bodies.scan_prefix(id.to_be_bytes()).keys() {
        bodies.remove(key?)?;
    }
    Ok(())
}
