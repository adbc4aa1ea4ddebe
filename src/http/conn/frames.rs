//! HTTP/2 frame headers read as the frames pass (nothing else of HTTP/2 is parsed), to
//! see header blocks open and close: a request head is a HEADERS frame and its
//! CONTINUATIONs, up to the one flagged END_HEADERS.

use super::PREFACE;

/// Reads HTTP/2 frame headers as they pass, to see header blocks open and close.
#[derive(Default)]
pub(super) struct Frames {
    preface_seen: usize,
    header: [u8; 9],
    have: usize,
    skip: usize,
}

impl Frames {
    /// Scans `buf`; returns whether a header block ended in it, and whether one is left
    /// open at its end.
    pub(super) fn scan(&mut self, buf: &[u8]) -> (bool, Option<bool>) {
        const HEADERS: u8 = 0x1;
        const CONTINUATION: u8 = 0x9;
        const END_HEADERS: u8 = 0x4;
        let (mut ended, mut open) = (false, None);
        let mut i = (PREFACE.len() - self.preface_seen).min(buf.len());
        self.preface_seen += i;
        while i < buf.len() {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - i);
                self.skip -= n;
                i += n;
                continue;
            }
            let n = (9 - self.have).min(buf.len() - i);
            self.header[self.have..self.have + n].copy_from_slice(&buf[i..i + n]);
            self.have += n;
            i += n;
            if self.have == 9 {
                self.have = 0;
                let [a, b, c, kind, flags, ..] = self.header;
                self.skip = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if kind == HEADERS || kind == CONTINUATION {
                    let closes = flags & END_HEADERS != 0;
                    ended |= closes;
                    open = Some(!closes);
                }
            }
        }
        (ended, open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header blocks are seen across any split of the input: a HEADERS frame without
    /// END_HEADERS opens one, its CONTINUATION with END_HEADERS closes it; other frames'
    /// payloads are skipped whole.
    #[test]
    fn frames_are_followed() {
        let frame = |kind: u8, flags: u8, len: usize| {
            let mut f = vec![0, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
            f.extend(std::iter::repeat_n(0x1, len));
            f
        };
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 6)); // SETTINGS
        input.extend(frame(0x1, 0, 300)); // HEADERS, block left open
        let open_at = input.len();
        input.extend(frame(0x9, 0x4, 20)); // CONTINUATION, END_HEADERS
        for split in 1..input.len() {
            let mut frames = Frames::default();
            let (ended, open) = frames.scan(&input[..split]);
            let (ended2, open2) = frames.scan(&input[split..]);
            assert!(ended || ended2, "split at {split}");
            assert_eq!(open2.or(open), Some(false), "split at {split}");
            if split == open_at {
                assert_eq!(open, Some(true));
            }
        }
    }
}
