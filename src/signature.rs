//! Webhook signatures: ModelRiver's `mr-signature` and `X-ModelRiver-Signature`, and
//! Standard Webhooks' `webhook-signature`, signing and verifying. Knows nothing about HTTP.
//!
//! - `mr-signature`: lowercase hex of HMAC-SHA256 with the secret *string* as key, over the
//!   exact body bytes (what the seed's `createHmac("sha256", secret)` computes).
//! - `X-ModelRiver-Signature`: lowercase hex of HMAC-SHA256 with the secret string as key,
//!   over `"{X-ModelRiver-Timestamp}.{JSON.stringify(body.data)}"`, or over
//!   `"{timestamp}.{raw body}"` when `body.data` is missing or falsy: what ModelRiver's demo
//!   backend (`backend/server.js`, `verifyWebhookSignature`) and its webhook test server
//!   (`webhook-verifier.js`) check. eddy computes `JSON.stringify` as JavaScript does
//!   ([`crate::payload::js`]), and its bodies always carry a truthy `data`, because for a
//!   missing or falsy one those two receivers sign different strings.
//! - `webhook-signature`: `v1,` + base64 of HMAC-SHA256 with the base64-decoded bytes after
//!   `whsec_` as key, over `{webhook-id}.{webhook-timestamp}.{body}`; several signatures are
//!   space-separated while a rotated secret is in its grace period.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::payload::js;
use crate::secret::{SECRET_PREFIX, ct_eq};

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn hex(mac: [u8; 32]) -> String {
    let mut out = String::with_capacity(64);
    for b in mac {
        out.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        out.push(char::from_digit((b & 0xf) as u32, 16).unwrap_or('0'));
    }
    out
}

/// `mr-signature` for `body` under `secret` (the whole `whsec_…` string).
pub fn mr_signature(secret: &str, body: &[u8]) -> String {
    hex(hmac(secret.as_bytes(), &[body]))
}

/// What ModelRiver's receivers put after the timestamp: `JSON.stringify(body.data)` when
/// the body's `data` is truthy in JavaScript, else the raw body.
pub fn modelriver_signed(body: &[u8]) -> Cow<'_, [u8]> {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    let data = serde_json::from_slice::<Top<'_>>(body)
        .ok()
        .and_then(|top| top.data)
        .and_then(|data| js::canonical(data.get()));
    match data {
        Some(text) if !matches!(text.as_str(), "null" | "false" | "0" | "\"\"") => {
            Cow::Owned(text.into_bytes())
        }
        _ => Cow::Borrowed(body),
    }
}

/// `X-ModelRiver-Signature` for `body` sent at `timestamp` under `secret`.
pub fn modelriver_signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    hex(hmac(
        secret.as_bytes(),
        &[ts.as_bytes(), b".", &modelriver_signed(body)],
    ))
}

/// The key bytes of a Standard Webhooks secret: base64 after `whsec_`. A secret that is
/// not of that form is used as raw bytes, so any string can still sign.
pub fn standard_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|b64| STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// One `v1,<base64>` signature.
pub fn standard_signature(secret: &str, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac(
        &standard_key(secret),
        &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body],
    );
    format!("v1,{}", STANDARD.encode(mac))
}

/// The `webhook-signature` header value for every secret given (current first).
pub fn standard_header(secrets: &[&str], msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| standard_signature(s, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// True if any signature in a `webhook-signature` header verifies under `secret`.
pub fn verify_standard(
    secret: &str,
    msg_id: &str,
    timestamp: u64,
    body: &[u8],
    header: &str,
) -> bool {
    let want = standard_signature(secret, msg_id, timestamp, body);
    header
        .split(' ')
        .any(|sig| ct_eq(sig.as_bytes(), want.as_bytes()))
}

/// True if `signature` is the `mr-signature` of `body` under `secret`.
pub fn verify_mr(secret: &str, body: &[u8], signature: &str) -> bool {
    ct_eq(mr_signature(secret, body).as_bytes(), signature.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer vector from the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_known_answer() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = standard_signature(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// RFC 4231 test case 2 for HMAC-SHA256, through the hex `mr-signature` path.
    #[test]
    fn mr_signature_known_answer() {
        assert_eq!(
            mr_signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// `X-ModelRiver-Signature` signs `"{ts}.{JSON.stringify(body.data)}"`, and the raw body
    /// when `data` is missing or falsy in JavaScript (the demo backend's fallback).
    #[test]
    fn modelriver_signed_part() {
        let signed =
            |body: &str| String::from_utf8(modelriver_signed(body.as_bytes()).into_owned());
        assert_eq!(signed(r#"{"a":1,"data":{"x":1.0}}"#).unwrap(), r#"{"x":1}"#);
        assert_eq!(signed(r#"{"data":[]}"#).unwrap(), "[]");
        assert_eq!(signed(r#"{"data":"s"}"#).unwrap(), r#""s""#);
        for body in [
            r#"{"a":1}"#,
            r#"{"data":null}"#,
            r#"{"data":0.0}"#,
            r#"{"data":""}"#,
            r#"{"data":false}"#,
            "not json",
        ] {
            assert_eq!(signed(body).unwrap(), body);
        }
        assert_eq!(
            modelriver_signature("Jefe", 1, br#"{"data":{"a":1}}"#),
            hex(hmac(b"Jefe", &[br#"1.{"a":1}"#]))
        );
    }

    /// A header with an old and a new signature verifies under either secret only.
    #[test]
    fn rotated_header_verifies_under_both() {
        let (a, b) = (
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAA",
            "whsec_BBBBBBBBBBBBBBBBBBBBBBBB",
        );
        let header = standard_header(&[b, a], "msg_1", 42, b"{}");
        assert!(verify_standard(a, "msg_1", 42, b"{}", &header));
        assert!(verify_standard(b, "msg_1", 42, b"{}", &header));
        assert!(!verify_standard(
            "whsec_CCCCCCCCCCCCCCCCCCCCCCCC",
            "msg_1",
            42,
            b"{}",
            &header
        ));
        assert!(!verify_standard(a, "msg_1", 43, b"{}", &header));
    }
}
