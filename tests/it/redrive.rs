//! Re-driving dead letters as a unit of work: a range re-drive gets past entries that can
//! no longer be re-driven, and a re-drive is on disk before its webhook leaves.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::powerfs::PowerFs;
use crate::support::{Api, Eddy, Receiver, WAIT, start};

/// A dead letter of the workflow `content_generator`, whose endpoint fails: its request's
/// channel id and its own id.
async fn dead_letter(api: &Api) -> (String, String) {
    let (channel, entry) = crate::dlq::dead_letter(api, "content_generator").await;
    (channel, entry["id"].as_str().unwrap().to_string())
}

/// A range re-drive skips a stale entry (its request was swept) and re-drives the rest:
/// 200, the stale one under `skipped` with why, the fresh one retried and delivered. (On
/// 5882ce0 the stale entry's conflict ended the range with a 409 before the entries after
/// it, and skipped the commit of those before it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_redrive_gets_past_a_stale_entry() {
    let mut server = start(|c| c.request_retention = Duration::from_millis(1)).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let (swept, stale) = dead_letter(&server).await;
    let deadline = Instant::now() + WAIT;
    while server.get(&format!("/console/requests/{swept}")).await.0 != 404 {
        assert!(Instant::now() < deadline, "request {swept} never swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server
        .restart_with(|c| c.request_retention = Duration::from_secs(3600))
        .await;
    let (channel, fresh) = dead_letter(&server).await;
    receiver.set_status(200);
    let (status, report) = server.post("/console/dlq/retry", json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["retried"], json!([fresh]), "{report}");
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["id"], stale.as_str(), "{report}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no longer exists"),
        "{report}"
    );
    server.wait_for_status(&channel, "delivered").await;
    let (_, left) = server.get("/console/dlq").await;
    assert_eq!(left["data"], json!([]), "{left:#}");
}

/// A re-drive is durable before its webhook leaves. On a disk whose syncs take a second,
/// eddy is killed the moment the re-driven webhook arrives, and the power is cut: after
/// the restart the dead letter stays re-driven and the delivery goes on. (On 5882ce0 the
/// re-drive was scheduled before its commit, so the webhook left first; after the cut the
/// dead letter was back and the request failed, though its webhook had been sent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redrive_is_durable_before_its_webhook_leaves() {
    let mut fs = PowerFs::mount();
    let data = fs.path().join("store");
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let mut eddy = Eddy::spawn(&data, "0s,0s");
    let api = eddy.api();
    api.event_workflow("content_generator", json!({})).await;
    api.register_webhook(&receiver.url).await;
    let (channel, id) = dead_letter(&api).await;

    receiver.set_status(200);
    let sent = receiver.received().len();
    fs.slow_syncs(Duration::from_secs(1));
    let retry = api
        .http
        .post(format!("{}/console/dlq/{id}/retry", api.base))
        .bearer_auth(&api.key)
        .send();
    tokio::spawn(retry);
    let hooks = receiver.wait_for(sent + 1).await;
    fs.power_fails();
    eddy.kill_9();
    fs.power_cut();
    fs.slow_syncs(Duration::ZERO);

    let eddy = Eddy::spawn(&data, "0s,0s");
    let api = eddy.api();
    let (_, list) = api.get("/console/dlq").await;
    let back: Vec<&Value> = list["data"].as_array().unwrap().iter().collect();
    assert!(
        back.is_empty(),
        "the dead letter is back though its webhook was sent: {:?}, request {}",
        back.iter().map(|e| &e["id"]).collect::<Vec<_>>(),
        api.request(&channel).await["status"]
    );
    let view = api.wait_for_status(&channel, "delivered").await;
    assert_eq!(
        view["deliveries"][0]["webhook_id"],
        hooks[sent].header("webhook-id"),
        "{view:#}"
    );
}
