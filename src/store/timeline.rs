//! Timelines: one key per request in the `timeline` tree, grown by sled's merge operator
//! (a round's steps in one write), so timelines add no keys to split.

use super::{CodecError, Result, SledStore, codec};
use crate::job::Step;

/// The timeline's merge operator: appends the new frames to the old value.
pub(super) fn append(_key: &[u8], old: Option<&[u8]>, new: &[u8]) -> Option<Vec<u8>> {
    let mut value = old.map(<[u8]>::to_vec).unwrap_or_default();
    value.extend_from_slice(new);
    Some(value)
}

impl SledStore {
    /// Appends a step to a request's timeline. Durable with the next commit.
    pub fn append_step(&self, id: u64, at_ms: u64, step: &Step) -> Result<()> {
        self.append_steps(id, std::slice::from_ref(&(at_ms, step.clone())))
    }

    /// Appends steps to a request's timeline in one write (one key per request, grown by
    /// sled's merge operator, so timelines add no keys to split). Durable with the next
    /// commit.
    pub fn append_steps(&self, id: u64, steps: &[(u64, Step)]) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        self.inner()?
            .timeline
            .merge(id.to_be_bytes(), frames(steps)?)?;
        Ok(())
    }

    /// A request's timeline in time order (a webhook attempt is stamped with its start,
    /// so it sorts before a callback that arrived while it was in flight).
    pub fn timeline(&self, id: u64) -> Result<Vec<(u64, Step)>> {
        let mut out = Vec::new();
        if let Some(value) = self.inner()?.timeline.get(id.to_be_bytes())? {
            unframe(&value, &mut out)?;
        }
        out.sort_by_key(|(at_ms, _)| *at_ms);
        Ok(out)
    }
}

/// Steps as a timeline stores them: frames `[len u32 LE][v][at_ms, Step]` (one sled merge,
/// or one message of the cluster's timeline stream).
pub(super) fn frames(steps: &[(u64, Step)]) -> Result<Vec<u8>> {
    let mut framed = Vec::with_capacity(128 * steps.len());
    for (at_ms, step) in steps {
        let entry = codec::encode(&(*at_ms, step))?;
        framed.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        framed.extend_from_slice(&entry);
    }
    Ok(framed)
}

/// Decodes the frames of `value` onto `out`.
pub(super) fn unframe(value: &[u8], out: &mut Vec<(u64, Step)>) -> Result<()> {
    let mut rest = value;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let entry = tail.get(..len).ok_or(CodecError::Empty)?;
        out.push(codec::decode::<(u64, Step)>(entry)?);
        rest = &tail[len..];
    }
    Ok(())
}
