//! Keys and subject tokens. A NATS subject token may not hold `.`, `*`, `>` or white
//! space, and a key-value key only `[-/_=.a-zA-Z0-9]`, so everything eddy puts in a key is
//! lowercase hex of fixed width (numbers) or of the bytes (ids, hashes, names). Fixed-width
//! numbers make a key's text order its numeric order, as the big-endian keys of the sled
//! store are.

use std::fmt::Write;

/// A `u64` as 16 lowercase hex digits.
pub fn num(n: u64) -> String {
    format!("{n:016x}")
}

/// The inverse of [`num`].
pub fn parse_num(token: &str) -> Option<u64> {
    if token.len() != 16 {
        return None;
    }
    u64::from_str_radix(token, 16).ok()
}

/// Bytes as lowercase hex (an empty slice is `_`, since a token may not be empty).
pub fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The inverse of [`hex`].
pub fn parse_hex(token: &str) -> Option<Vec<u8>> {
    if token == "_" {
        return Some(Vec::new());
    }
    if token.len() % 2 != 0 {
        return None;
    }
    (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `key` is a valid key-value key: non-empty tokens of `[-/_=a-zA-Z0-9]` joined by
/// dots.
pub fn valid(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=".contains(&b))
        })
}

/// Whether `prefix` may name buckets, streams and subjects: a lowercase letter, then up
/// to 31 lowercase letters, digits or `_`.
pub fn valid_prefix(prefix: &str) -> bool {
    let mut bytes = prefix.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && prefix.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers keep their order as text and read back; bytes read back, empty included.
    #[test]
    fn tokens_round_trip_in_order() {
        let ns = [0u64, 1, 255, 256, 1 << 40, u64::MAX];
        let texts: Vec<String> = ns.iter().map(|n| num(*n)).collect();
        assert!(texts.windows(2).all(|w| w[0] < w[1]), "{texts:?}");
        for (n, t) in ns.iter().zip(&texts) {
            assert_eq!(parse_num(t), Some(*n));
        }
        assert_eq!(parse_num("ff"), None, "not fixed width");
        for bytes in [&b""[..], b"\x00", b"a.b*>", &[0xff; 32]] {
            let t = hex(bytes);
            assert!(valid(&t), "{t}");
            assert_eq!(parse_hex(&t).as_deref(), Some(bytes));
        }
        assert_eq!(parse_hex("abc"), None);
        assert_eq!(parse_hex("zz"), None);
    }

    /// Keys and prefixes that NATS would refuse, or that would change a subject's meaning,
    /// are refused here first.
    #[test]
    fn invalid_keys_and_prefixes_are_refused() {
        assert!(valid("r.00ff.aa"));
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a.>", "é"] {
            assert!(!valid(bad), "{bad:?}");
        }
        assert!(valid_prefix("eddy"));
        assert!(valid_prefix("eddy_2"));
        for bad in ["", "Eddy", "2eddy", "ed.dy", "ed-dy", &"e".repeat(33)] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
