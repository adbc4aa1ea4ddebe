//! A chunked request body (RFC 9112 §7.1) followed byte by byte as it arrives, only to
//! find where it ends and the next request head begins; the body itself is hyper's to
//! decode. A body this cannot follow is left to hyper, which fails on it and closes.

/// Follows a chunked body (RFC 9112 §7.1) to its end, byte by byte, as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    Size {
        size: u64,
        digits: u8,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: a trailer field line, or the final blank line.
    LineStart,
    Line,
    LineLf {
        blank: bool,
    },
    Done,
}

/// The chunked body could not be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unframed;

impl Chunked {
    pub fn new() -> Chunked {
        Chunked::Size { size: 0, digits: 0 }
    }

    /// Consumes from `buf` up to the end of the body; returns how many bytes belong to it
    /// (all of `buf` unless the body ends inside it: then the state is `Done`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, Unframed> {
        let mut i = 0;
        while i < buf.len() && *self != Chunked::Done {
            if let Chunked::Data { left } = self {
                let take = (*left).min((buf.len() - i) as u64);
                *left -= take;
                i += take as usize;
                if *left == 0 {
                    *self = Chunked::DataCr;
                }
                continue;
            }
            *self = self.step(buf[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(self, b: u8) -> Result<Chunked, Unframed> {
        use Chunked::*;
        Ok(match (self, b) {
            (Size { size, digits }, b) if b.is_ascii_hexdigit() && digits < 16 => Size {
                size: size * 16 + u64::from((b as char).to_digit(16).ok_or(Unframed)?),
                digits: digits + 1,
            },
            (Size { size, digits }, b';' | b' ' | b'\t') if digits > 0 => Extension { size },
            (Size { size, digits }, b'\r') if digits > 0 => SizeLf { size },
            (Extension { size }, b'\r') => SizeLf { size },
            (Extension { .. }, b'\n') => return Err(Unframed),
            (Extension { size }, _) => Extension { size },
            (SizeLf { size: 0 }, b'\n') => LineStart,
            (SizeLf { size }, b'\n') => Data { left: size },
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Chunked::new(),
            (LineStart, b'\r') => LineLf { blank: true },
            (Line, b'\r') => LineLf { blank: false },
            (LineStart | Line, b'\n') => return Err(Unframed),
            (LineStart | Line, _) => Line,
            (LineLf { blank: true }, b'\n') => Done,
            (LineLf { blank: false }, b'\n') => LineStart,
            _ => return Err(Unframed),
        })
    }
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::framing_bytes;

    /// A chunked body is followed through sizes, extensions, data split anywhere and
    /// trailers to its exact end; bad syntax is reported, not guessed at.
    #[test]
    fn chunked_bodies() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\nGET";
        for split in 0..body.len() {
            let mut chunked = Chunked::new();
            let end = body.len() - 3;
            let first = chunked.feed(&body[..split]).unwrap();
            assert_eq!(first, split.min(end), "split at {split}");
            let second = chunked.feed(&body[first..]).unwrap();
            assert_eq!(chunked, Chunked::Done, "split at {split}");
            assert_eq!(first + second, end, "split at {split}");
        }
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"\r\n", b"0\r\nbad\n"] {
            assert_eq!(Chunked::new().feed(bad), Err(Unframed), "{bad:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Any bytes, split anywhere: a chunked body is followed to the same end (or the
        /// same failure) as in one piece.
        #[test]
        fn splits_do_not_matter(bytes in framing_bytes(), split in 0usize..200) {
            let split = split.min(bytes.len());
            let mut one = Chunked::new();
            let at_once = one.feed(&bytes);
            let mut two = Chunked::new();
            let in_two = two.feed(&bytes[..split]).and_then(|first| {
                if first < split {
                    Ok(first)
                } else {
                    two.feed(&bytes[split..]).map(|second| first + second)
                }
            });
            proptest::prop_assert_eq!(at_once, in_two);
            if at_once.is_ok() {
                proptest::prop_assert_eq!(one, two);
            }
        }
    }
}
