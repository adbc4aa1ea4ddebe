//! A request's timeline as messages on its own subject, `<prefix>.tl.<id>`, in the
//! `<PREFIX>_TIMELINE` stream: one message per engine round (the round's steps, framed by
//! the store as it frames them in sled). Appending is a plain publish, no read and no CAS,
//! so rounds of different nodes never conflict; reading asks the stream's leader for the
//! subject's messages in order, one sequence after the other, so a timeline read on any
//! node shows every acknowledged round.

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self};
use bytes::Bytes;

use super::bucket::Ack;
use super::{ClusterError, Layout, Result};

/// Most messages one timeline read returns (a request has a few dozen rounds at most).
const MOST: usize = 10_000;

/// The timeline stream; cheap to clone.
#[derive(Clone)]
pub struct Timeline {
    js: jetstream::Context,
    stream: Stream<()>,
    layout: Layout,
}

impl Timeline {
    pub async fn open(js: &jetstream::Context, layout: &Layout) -> Result<Timeline> {
        let stream = js
            .get_stream_no_info(&layout.timeline.name)
            .await
            .map_err(|e| ClusterError::failed("opening the timeline stream", e))?;
        Ok(Timeline {
            js: js.clone(),
            stream,
            layout: layout.clone(),
        })
    }

    /// Appends one round's frames to request `id`'s timeline; the acknowledgement can be
    /// awaited later.
    pub async fn append(&self, id: u64, frames: Bytes) -> Result<Ack> {
        let future = self
            .js
            .send_publish(
                self.layout.timeline_subject(id),
                PublishMessage::build().payload(frames),
            )
            .await
            .map_err(|e| ClusterError::failed("appending to a timeline", e))?;
        Ok(Ack::new(future, "appending to a timeline"))
    }

    /// Every round appended to request `id`'s timeline, in the order the stream stored
    /// them.
    pub async fn read(&self, id: u64) -> Result<Vec<Bytes>> {
        let subject = self.layout.timeline_subject(id);
        let mut out = Vec::new();
        let mut next = 1;
        while out.len() < MOST {
            let found = self
                .stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            match found {
                Ok(message) => {
                    next = message.sequence + 1;
                    out.push(message.payload);
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(ClusterError::failed("reading a timeline", e)),
            }
        }
        Ok(out)
    }

    /// Removes request `id`'s timeline.
    pub async fn remove(&self, id: u64) -> Result<()> {
        self.stream
            .purge()
            .filter(self.layout.timeline_subject(id))
            .await
            .map_err(|e| ClusterError::failed("removing a timeline", e))?;
        Ok(())
    }
}
