//! Power cuts: the real binary on a file system that drops everything not fsynced
//! (`support::powerfs`), killed with `kill -9` while requests are being accepted, then the
//! power cut, then a restart. An acknowledged request is never lost: not on the first
//! start, not with small, 300 KB or mixed messages.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::support::powerfs::PowerFs;
use crate::support::{Api, Eddy, KEY};

/// Acknowledged channel ids, shared by the sending tasks.
type Acked = Arc<Mutex<BTreeSet<String>>>;

/// One round: start eddy on `data`, send `n` requests from 8 tasks (every `every`-th with a
/// `big`-byte message, the rest 100 bytes), kill -9 once `kill_after` were acknowledged,
/// cut the power, start again and count the acknowledged requests that are gone.
async fn round(
    fs: &mut PowerFs,
    data: &Path,
    (n, big, every, kill_after): (usize, usize, usize, usize),
) -> (usize, Vec<String>) {
    let mut eddy = Eddy::spawn(data, "0s");
    let api = eddy.api();
    // Created on the first round; a later one finds it (409) unless a cut lost it.
    let (status, body) = api
        .post(
            "/console/workflow",
            json!({"name": "w", "provider": "testing", "model": "test-mode",
                   "mode": "testing", "response_delay_ms": 600_000}),
        )
        .await;
    assert!(status == 201 || status == 409, "{status} {body}");
    let acked: Acked = Arc::default();
    let (enough, mut enough_rx) = tokio::sync::watch::channel(false);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..8 {
        let (api, acked, next, enough) = (api.clone(), acked.clone(), next.clone(), enough.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let size = if every > 0 && i % every == every - 1 {
                    big
                } else {
                    100
                };
                let body = json!({"workflow": "w", "messages": [
                    {"role": "user", "content": format!("req {i} {}", "x".repeat(size))}
                ]});
                let Ok(channel) = send(&api, &body).await else {
                    return; // the server is gone
                };
                let mut acked = acked.lock().unwrap();
                acked.insert(channel);
                if acked.len() >= kill_after {
                    let _ = enough.send(true);
                }
            }
        });
    }
    let _ = enough_rx.wait_for(|done| *done).await;
    eddy.kill_9();
    let acked: BTreeSet<String> = acked.lock().unwrap().clone();
    fs.power_cut();

    let eddy = Eddy::spawn(data, "0s");
    let api = eddy.api();
    let mut lost = Vec::new();
    for channel in &acked {
        let (status, _) = api.get(&format!("/console/requests/{channel}")).await;
        if status != 200 {
            lost.push(channel.clone());
        }
    }
    (acked.len(), lost)
}

/// `POST /v1/ai/async`; the channel id of a 200, or an error if the server is gone or
/// refused.
async fn send(api: &Api, body: &serde_json::Value) -> Result<String, String> {
    let response = api
        .http
        .post(format!("{}/v1/ai/async", api.base))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(response.status().to_string());
    }
    let ticket: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    Ok(ticket["channel_id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Four power cuts on one store: right after its first start (100-byte messages), then
/// with 300 KB messages (kept by sled in `blobs/` files), with mixed ones (every 10th
/// 300 KB), and small ones again. After each cut and restart, every acknowledged request
/// is there. (Before the group commit synced sled's blob files, the store directory's
/// entries and `conf`, the first cut lost the whole new store and a 300 KB one lost every
/// request logged after the blob.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_cuts_lose_no_acknowledged_request() {
    let mut fs = PowerFs::mount();
    let data = fs.path().join("store");
    let rounds = [
        ("first start", (200, 0, 0, 100)),
        ("300 KB", (40, 300_000, 1, 15)),
        ("mixed", (150, 300_000, 10, 75)),
        ("small", (200, 0, 0, 100)),
    ];
    let mut report = Vec::new();
    let mut lost_any = false;
    for (name, shape) in rounds {
        let (acked, lost) = round(&mut fs, &data, shape).await;
        report.push(format!(
            "{name}: {} of {acked} lost {:?}",
            lost.len(),
            &lost[..lost.len().min(3)]
        ));
        lost_any |= !lost.is_empty();
    }
    eprintln!("power cuts: {report:#?}");
    assert!(
        !lost_any,
        "acknowledged requests lost after power cuts: {report:#?}"
    );
}
