//! Random material and how it is kept: API keys (`mr_live_…`, stored only as SHA-256),
//! webhook secrets (`whsec_…`), resource ids, and the constant-time comparison used on them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of every API key.
pub const KEY_PREFIX: &str = "mr_live_";
/// The prefix of every webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// `n` random characters from `[A-Za-z0-9]`.
pub fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A resource id such as `wh_3k9Xa…`: a prefix and 20 random alphanumerics (119 bits).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_alnum(20))
}

/// A new API key: `mr_live_` and 40 random alphanumerics (238 bits).
pub fn new_api_key() -> String {
    format!("{KEY_PREFIX}{}", random_alnum(40))
}

/// SHA-256 of a key: the only form in which keys are stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A masked form of a key for listings: `mr_live_AbCd…wxyz`.
pub fn key_hint(key: &str) -> String {
    let head: String = key.chars().take(KEY_PREFIX.len() + 4).collect();
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}…{tail}")
}

/// A new Standard Webhooks secret: `whsec_` and base64 of 32 random bytes.
pub fn new_webhook_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// 32 random bytes, e.g. for the WebSocket token key.
pub fn random_bytes32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys and secrets have the documented shapes and are different every time.
    #[test]
    fn shapes() {
        let k = new_api_key();
        assert!(k.starts_with(KEY_PREFIX) && k.len() == KEY_PREFIX.len() + 40);
        assert_ne!(k, new_api_key());
        let s = new_webhook_secret();
        let raw = STANDARD
            .decode(s.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert!(key_hint(&k).starts_with("mr_live_") && key_hint(&k).contains('…'));
        assert!(ct_eq(&hash_key(&k), &hash_key(&k)));
        assert!(!ct_eq(&hash_key(&k), &hash_key(&s)));
    }
}
