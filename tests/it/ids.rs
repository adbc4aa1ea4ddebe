//! Public ids say nothing about other requests: channel ids are version-4 UUIDs with no
//! bit shared by a server's ids, and dead-letter ids and list cursors carry no timestamp or
//! counter, yet every one of them still finds its request, entry or page.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::{Receiver, holding_workflow, message_request, seed_request, start};

/// True if the 16 hex digits at the start of `hex` read as a time within a day of now in
/// Unix milliseconds (what a `dead_ms` or `created_ms` in clear would be).
fn reads_as_now(hex: &str) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    u64::from_str_radix(&hex[..16], 16).is_ok_and(|ms| ms.abs_diff(now) < 86_400_000)
}

/// 64 channel ids of one server are version-4 UUIDs (RFC 4122 variant), and every one of
/// their 122 free bits differs somewhere among them: nothing tells which server made them
/// or in what order. Each still leads to its request. (On 22a75b8 the first 48 bits and
/// more were the same across a server's ids: a per-store mask over a counter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_ids_are_uuid_v4_sharing_no_bits() {
    let server = start(|_| {}).await;
    server.create_workflow(holding_workflow("w")).await;
    let mut ids = Vec::new();
    for i in 0..64 {
        let ticket = server
            .send_async(message_request("w", &i.to_string()))
            .await;
        let text = ticket["channel_id"].as_str().unwrap().to_string();
        let uuid = uuid::Uuid::parse_str(&text).unwrap();
        assert_eq!(uuid.get_version_num(), 4, "{text}");
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{text}");
        ids.push((text, uuid.as_u128()));
    }
    let all_ones = ids.iter().fold(u128::MAX, |acc, (_, bits)| acc & bits);
    let all_zeros = ids.iter().fold(u128::MAX, |acc, (_, bits)| acc & !bits);
    let version_and_variant = (0xfu128 << 76) | (0b11u128 << 62);
    let constant = (all_ones | all_zeros) & !version_and_variant;
    assert_eq!(constant, 0, "bits shared by every id: {constant:032x}");
    for (text, _) in &ids {
        let (status, view) = server.get(&format!("/console/requests/{text}")).await;
        assert_eq!(status, 200, "{view}");
    }
}

/// Dead-letter ids and the request list's cursors carry no timestamp (on 22a75b8 they were
/// `dlq_<dead_ms hex><seq hex>` and `cur_<created_ms hex><id hex>`), and they still work:
/// an entry is shown by its id, a cursor pages on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_ids_and_cursors_are_opaque() {
    let server = start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    for _ in 0..2 {
        let ticket = server.send_async(seed_request("content_generator")).await;
        server
            .wait_for_status(ticket["channel_id"].as_str().unwrap(), "failed")
            .await;
    }
    let (status, list) = server.get("/console/dlq").await;
    assert_eq!(status, 200, "{list}");
    let entries = list["data"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{list}");
    for entry in entries {
        let id = entry["id"].as_str().unwrap();
        let hex = id.strip_prefix("dlq_").unwrap();
        assert_eq!(hex.len(), 32, "{id}");
        assert!(!reads_as_now(hex), "{id} carries its time");
        let (status, shown) = server.get(&format!("/console/dlq/{id}")).await;
        assert_eq!(status, 200, "{shown}");
        assert_eq!(shown["channel_id"], entry["channel_id"]);
    }

    let (_, first) = server.get("/console/requests?limit=1").await;
    let cursor = first["next_before"].as_str().unwrap().to_string();
    let hex = cursor.strip_prefix("cur_").unwrap();
    assert!(!reads_as_now(hex), "{cursor} carries its time");
    let (status, second) = server
        .get(&format!("/console/requests?limit=1&before={cursor}"))
        .await;
    assert_eq!(status, 200, "{second}");
    let channel = |page: &Value| page["data"][0]["channel_id"].clone();
    assert_ne!(channel(&first), channel(&second));
    assert!(!channel(&second).is_null(), "{second}");
}
