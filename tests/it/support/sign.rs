//! Webhook signatures computed the way a receiver would, written here from the specs and
//! not through `eddy::signature`, so a bug there cannot hide behind a shared
//! implementation.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::receiver::Received;
use super::unix_now;

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The seed's check: `crypto.createHmac("sha256", secret).update(body).digest("hex")`,
/// with the whole `whsec_…` string as the key.
pub fn seed_signature(secret: &str, body: &[u8]) -> String {
    hmac_sha256(secret.as_bytes(), body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Standard Webhooks: `v1,` + base64(HMAC-SHA256(base64-decode(secret after `whsec_`),
/// `"{id}.{timestamp}.{body}"`)).
pub fn standard_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(
            secret
                .strip_prefix("whsec_")
                .expect("secrets start with whsec_"),
        )
        .expect("secret is base64 after whsec_");
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!("v1,{}", STANDARD.encode(hmac_sha256(&key, &message)))
}

/// The headers on every webhook (README, "Webhook headers").
pub const WEBHOOK_HEADERS: [&str; 9] = [
    "content-type",
    "mr-signature",
    "mr-timestamp",
    "x-modelriver-timestamp",
    "mr-channel-id",
    "x-modelriver-webhook-id",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Asserts the webhook headers of one webhook and that both signatures verify, computed
/// independently of eddy: `mr-signature` the seed's way, `webhook-signature` the Standard
/// Webhooks way (and through `eddy::signature::verify_standard` too).
pub fn assert_signed(hook: &Received, endpoint_id: Option<&str>, secret: &str, channel_id: &str) {
    for name in WEBHOOK_HEADERS {
        assert!(hook.headers.contains_key(name), "missing header {name}");
    }
    assert_eq!(hook.header("content-type"), "application/json");
    assert_eq!(hook.header("mr-channel-id"), channel_id);
    if let Some(endpoint_id) = endpoint_id {
        assert_eq!(hook.header("x-modelriver-webhook-id"), endpoint_id);
    }
    let ts = hook.header("webhook-timestamp");
    assert_eq!(hook.header("mr-timestamp"), ts);
    assert_eq!(hook.header("x-modelriver-timestamp"), ts);
    let ts_secs: u64 = ts.parse().expect("timestamps are unix seconds");
    assert!(
        ts_secs.abs_diff(unix_now()) < 120,
        "timestamp {ts} is not now"
    );
    assert!(hook.header("webhook-id").starts_with("msg_"));

    assert_eq!(
        hook.header("mr-signature"),
        seed_signature(secret, &hook.body),
        "mr-signature does not verify the seed's way"
    );
    let webhook_id = hook.header("webhook-id");
    let want = standard_signature(secret, webhook_id, ts, &hook.body);
    let header = hook.header("webhook-signature");
    assert!(
        header.split(' ').any(|sig| sig == want),
        "webhook-signature {header} does not contain {want}"
    );
    assert!(eddy::signature::verify_standard(
        secret, webhook_id, ts_secs, &hook.body, header
    ));
}

/// Asserts that a body is compact JSON: re-serializing it gives the same bytes.
pub fn assert_compact(body: &[u8]) {
    let parsed: Value = serde_json::from_slice(body).expect("body is JSON");
    assert_eq!(
        serde_json::to_string(&parsed).expect("json"),
        std::str::from_utf8(body).expect("utf-8"),
        "webhook body is not compact JSON"
    );
}
