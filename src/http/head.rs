//! HTTP/1 request heads checked before hyper parses them, so that a malformed one is
//! answered with the JSON envelope instead of hyper's bare 400 or 431 (hyper writes those
//! itself and offers no hook). Pure: bytes in, a verdict out; [`super::conn`] feeds it.
//!
//! The checks are hyper's own (httparse with the same configuration, hyper's limits on
//! header count, request targets and `Content-Length`/`Transfer-Encoding`), so a head that
//! passes here parses there; where eddy is stricter it says so. The message framing found
//! here (`Content-Length`, chunked, or none) tells [`super::conn`] where the next head
//! starts.

use std::mem::MaybeUninit;

use super::error::ApiError;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 32 << 10;
/// Most header fields in one head (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Longest request target (path and query).
pub const MAX_TARGET: usize = 8 << 10;

/// How the body of a request is framed (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

/// A head that hyper will accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub framing: Framing,
    /// The request asks to switch protocols (a WebSocket handshake).
    pub upgrade: bool,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

fn too_large(message: impl Into<String>) -> ApiError {
    ApiError::headers_too_large(message)
}

fn uri_too_long() -> ApiError {
    ApiError::uri_too_long(MAX_TARGET)
}

/// The answer to a TLS handshake on the plain-HTTP port.
pub fn tls_on_plain_port() -> ApiError {
    invalid(
        "this port speaks plain HTTP, not TLS: use http://, or terminate TLS in a proxy in \
         front of eddy",
    )
}

/// Where the head at the start of `buf` ends (just past its blank line), searching from
/// `from` (how far an earlier call got), or `None` while it is incomplete.
pub fn end_of_head(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    buf.get(start..)?
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .find_map(|(i, _)| {
            let i = start + i;
            match buf.get(i + 1..) {
                Some([b'\n', ..]) => Some(i + 2),
                Some([b'\r', b'\n', ..]) => Some(i + 3),
                _ => None,
            }
        })
}

/// Refuses an incomplete head that is already too long to be accepted.
pub fn check_partial(buf: &[u8]) -> Result<(), ApiError> {
    let first_line = buf.iter().position(|b| *b == b'\n').unwrap_or(buf.len());
    if first_line > MAX_TARGET + 32 {
        return Err(uri_too_long());
    }
    if buf.len() > MAX_HEAD {
        return Err(too_large(format!(
            "the request head is larger than {MAX_HEAD} bytes"
        )));
    }
    Ok(())
}

/// Checks a complete head (as found by [`end_of_head`]).
pub fn check(head: &[u8]) -> Result<Head, ApiError> {
    check_partial(head)?;
    // Left uninitialised, as hyper does: httparse writes the fields it finds.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        head,
        &mut fields,
    );
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("the request head is incomplete")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(too_large(format!(
                "the request has more than {MAX_HEADERS} header fields"
            )));
        }
        Err(httparse::Error::Token) if request.method.is_none() => {
            return Err(invalid("malformed request line: invalid method"));
        }
        Err(httparse::Error::Token) => {
            return Err(invalid("malformed request line: invalid request target"));
        }
        Err(e) => return Err(invalid(format!("malformed request head: {e}"))),
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(invalid("the request head is incomplete"));
    };
    if target.len() > MAX_TARGET {
        return Err(uri_too_long());
    }
    hyper::Method::from_bytes(method.as_bytes())
        .map_err(|_| invalid("malformed request line: invalid method"))?;
    hyper::Uri::try_from(target)
        .map_err(|e| invalid(format!("malformed request line: request target: {e}")))?;
    framing(request.headers, version == 1)
}

/// RFC 9112 §6.3 as hyper applies it to requests, and stricter on one point: a request
/// with both `Transfer-Encoding` and `Content-Length` is refused (hyper would drop the
/// length), since two parties reading such a request differently is how requests are
/// smuggled.
fn framing(fields: &[httparse::Header<'_>], http11: bool) -> Result<Head, ApiError> {
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None;
    let mut upgrade = false;
    for field in fields {
        hyper::header::HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| invalid(format!("invalid header name {:?}", field.name)))?;
        if field.name.eq_ignore_ascii_case("content-length") {
            let n = digits(field.value).ok_or_else(|| {
                invalid(format!(
                    "content-length: {:?} is not a number of bytes",
                    String::from_utf8_lossy(field.value)
                ))
            })?;
            if length.is_some_and(|m| m != n) {
                return Err(invalid("content-length: given twice with different values"));
            }
            length = Some(n);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(invalid("transfer-encoding: not allowed in HTTP/1.0"));
            }
            let last = field
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or_default();
            transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if field.name.eq_ignore_ascii_case("upgrade") {
            upgrade = http11;
        }
    }
    let framing = match (transfer_encoding, length) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "transfer-encoding and content-length: give one, not both",
            ));
        }
        (Some(false), None) => {
            return Err(invalid("transfer-encoding: must end with chunked"));
        }
        (Some(true), None) => Framing::Chunked,
        (None, n) => Framing::Length(n.unwrap_or(0)),
    };
    Ok(Head { framing, upgrade })
}

/// Decimal digits only (no sign, no spaces), as hyper reads `Content-Length`.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Any bytes, with CR, LF, digits and `;` (what HTTP framing is made of) often among
/// them: the input of the property tests that split heads and chunked bodies anywhere.
#[cfg(test)]
pub(crate) fn framing_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::{Just, any};
    let byte = proptest::prop_oneof![
        any::<u8>(),
        Just(b'\r'),
        Just(b'\n'),
        Just(b'0'),
        Just(b'5'),
        Just(b';'),
    ];
    proptest::collection::vec(byte, 0..200)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(head: &str) -> Result<Head, (u16, String)> {
        let bytes = head.as_bytes();
        let end = end_of_head(bytes, 0).expect("a complete head");
        assert_eq!(end, bytes.len(), "{head:?}");
        check(bytes).map_err(|e| (e.status().as_u16(), e.message().to_string()))
    }

    /// Well-formed heads pass with their framing; each malformed head the issue lists is
    /// refused with the status hyper would have used and a message that says why.
    #[test]
    fn heads() {
        let ok = verdict("POST /v1/ai HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(ok.unwrap().framing, Framing::Length(12));
        let ok = verdict("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(ok.unwrap().framing, Framing::Chunked);
        let ok = verdict("GET /socket HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\n\n");
        assert!(ok.unwrap().upgrade);
        let same = verdict("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(same.unwrap().framing, Framing::Length(3));

        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        let cases = [
            (
                "GET / HTTP/1.1\r\nX-Bad: a\x7fb\r\n\r\n".to_string(),
                400,
                "header value",
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n".into(),
                400,
                "content-length",
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".into(),
                400,
                "content-length",
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n".into(),
                400,
                "different values",
            ),
            (
                "GET / HTTP/1.1\r\nno colon here\r\n\r\n".into(),
                400,
                "header name",
            ),
            (format!("GET / HTTP/1.1\r\n{many}\r\n"), 431, "100 header"),
            (
                format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET)),
                414,
                "target",
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n".into(),
                400,
                "not both",
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
                400,
                "chunked",
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                400,
                "HTTP/1.0",
            ),
            ("GET / HTTP/2.0\r\n\r\n".into(), 400, "version"),
            ("G\x01T / HTTP/1.1\r\n\r\n".into(), 400, "method"),
        ];
        for (head, status, needle) in cases {
            let (got, message) = verdict(&head).expect_err(&head);
            assert_eq!(got, status, "{head:?}: {message}");
            assert!(message.contains(needle), "{head:?}: {message}");
        }
    }

    /// An incomplete head is refused as soon as it cannot fit, not when it ends.
    #[test]
    fn partial_heads() {
        assert!(check_partial(b"GET / HTTP/1.1\r\nHost: x\r\n").is_ok());
        let long_target = format!("GET /{}", "a".repeat(MAX_TARGET + 64));
        assert_eq!(
            check_partial(long_target.as_bytes()).unwrap_err().status(),
            414
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(check_partial(big.as_bytes()).unwrap_err().status(), 431);
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
        let whole = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nnext";
        assert_eq!(end_of_head(whole, 20), Some(whole.len() - 4));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Any bytes, split anywhere: the end of a head is found at the same place as in
        /// one piece, and a check never panics.
        #[test]
        fn splits_do_not_matter(bytes in framing_bytes(), split in 0usize..200) {
            let split = split.min(bytes.len());
            let whole = end_of_head(&bytes, 0);
            let resumed = end_of_head(&bytes[..split], 0)
                .or_else(|| end_of_head(&bytes, split));
            proptest::prop_assert_eq!(whole, resumed);
            if let Some(end) = whole {
                let _ = check(&bytes[..end]);
            }
            let _ = check_partial(&bytes);
        }
    }
}
