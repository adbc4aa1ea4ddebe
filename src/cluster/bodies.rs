//! A record's big texts in the `bodies` bucket, in chunks far under the servers'
//! `max_payload`, so that a record stays small whatever its request, model answer or
//! callback carried (the sled store does the same for its page cache: `store::body`,
//! whose list of big fields this shares).
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `bodies` | `<id>.<field>.<digest>.<chunk>` | ≤ 256 KiB of the field's text |
//!
//! A field over [`INLINE`] bytes is written in chunks before the record write that names
//! it, and the record holds a reference in its place: `"\0body:<digest>:<length>"` (JSON
//! text never starts with a NUL, so a reference cannot be mistaken for a text). The
//! digest (the first 8 bytes of the text's SHA-256) is part of every chunk's key, so a
//! text is never overwritten in place: two nodes writing the same field at once (a CAS
//! that will lose, a redelivered round) write either the same chunks or chunks of their
//! own, and the record that wins names its own. Chunks of a write that lost, and of
//! requests past retention, expire with the bucket's `max_age` (twice the request
//! retention). A chunk is read from any replica, and from the leader when a replica
//! does not have it yet (`Bucket::get`).

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Bucket, ClusterError, Result, key};
use crate::job::Request;
use crate::store::body::fields;
use crate::store::{decode_request, encode_request};

/// Texts up to this size stay inside the record.
pub const INLINE: usize = 64 << 10;
/// Bytes of text per chunk.
const CHUNK: usize = 256 << 10;
const REFERENCE: &str = "\0body:";

/// The `bodies` bucket of one node; cheap to clone.
#[derive(Clone)]
pub struct Bodies {
    bucket: Bucket,
}

fn digest(text: &str) -> String {
    key::hex(&Sha256::digest(text.as_bytes())[..8])
}

fn chunk_key(id: u64, field: usize, digest: &str, n: usize) -> String {
    format!("{}.{field}.{digest}.{}", key::num(id), key::num(n as u64))
}

/// The digest and length a reference names.
fn parse_reference(text: &str) -> Option<(&str, usize)> {
    let (digest, len) = text.strip_prefix(REFERENCE)?.split_once(':')?;
    Some((digest, len.parse().ok()?))
}

impl Bodies {
    pub fn new(bucket: Bucket) -> Bodies {
        Bodies { bucket }
    }

    /// A record as stored (`[v][Request]`) with its big texts read back in.
    pub async fn decode(&self, stored: &[u8]) -> Result<Request> {
        let mut record =
            decode_request(stored).map_err(|e| ClusterError::failed("decoding a record", e))?;
        let id = record.id;
        for (n, field) in fields(&mut record).into_iter().enumerate() {
            let Some(field) = field else { continue };
            let Some((digest, len)) = parse_reference(field) else {
                continue;
            };
            let mut text = Vec::with_capacity(len);
            for i in 0..len.div_ceil(CHUNK) {
                let chunk = self.bucket.get(&chunk_key(id, n, digest, i)).await?;
                let chunk = chunk.ok_or_else(|| {
                    ClusterError::failed("reading a record's text", format!("chunk {i} missing"))
                })?;
                text.extend_from_slice(&chunk.value);
            }
            *field = String::from_utf8(text)
                .ok()
                .filter(|t| t.len() == len)
                .ok_or_else(|| ClusterError::failed("reading a record's text", "corrupt"))?;
        }
        Ok(record)
    }

    /// `record` as stored: every text over [`INLINE`] bytes written in chunks (each
    /// acknowledged by a quorum) and replaced by its reference. `record` is unchanged.
    pub async fn encode(&self, record: &mut Request) -> Result<Bytes> {
        let id = record.id;
        let mut moved: [Option<String>; 4] = Default::default();
        for (n, field) in fields(record).into_iter().enumerate() {
            let Some(field) = field.filter(|f| f.len() > INLINE) else {
                continue;
            };
            let digest = digest(field);
            for (i, chunk) in field.as_bytes().chunks(CHUNK).enumerate() {
                let k = chunk_key(id, n, &digest, i);
                self.bucket.put(&k, Bytes::copy_from_slice(chunk)).await?;
            }
            let reference = format!("{REFERENCE}{digest}:{}", field.len());
            moved[n] = Some(std::mem::replace(field, reference));
        }
        let encoded = encode_request(record);
        for (field, text) in fields(record).into_iter().zip(moved) {
            if let (Some(field), Some(text)) = (field, text) {
                *field = text;
            }
        }
        encoded
            .map(Bytes::from)
            .map_err(|e| ClusterError::failed("encoding a record", e))
    }
}
