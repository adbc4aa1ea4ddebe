//! The store seam's JetStream backend (`store::JetStore`) against a real nats-server:
//! what the engine asks of its store (ids, records, updates, timelines) means the same
//! on every node, and a channel id made on one node leads to its record on another.

use eddy::job::{State, Step};
use eddy::store::{JetStore, Update};
use serde_json::{Value, json};

use crate::cluster::node_on;
use crate::cluster_store::pending;
use crate::dlq::dead_letter;
use crate::support::nats::Nats;
use crate::support::wait::{eventually, ok_if};
use crate::support::{
    Callback, KEY, Receiver, holding_workflow, message_request, seed_request, start, text,
};

/// A node's settings on the one-server cluster `nats` (replicas 1).
fn on_one(nats: &Nats) -> impl Fn(&mut eddy::Config) + Copy + '_ {
    |c| {
        c.cluster = Some(nats.url(0));
        c.cluster_replicas = 1;
    }
}

/// A request stored through one node is found by its channel id through another (both
/// read the one id key), an update made on the second shows on the first, and a refused
/// update writes nothing.
#[tokio::test]
async fn a_request_made_on_one_node_reads_and_moves_on_another() {
    let nats = Nats::one().await;
    let a = JetStore::open(&node_on(&nats, 0).await).await.unwrap();
    let b = JetStore::open(&node_on(&nats, 0).await).await.unwrap();
    let (id, channel) = a.new_request_id();
    let mut record = pending(id);
    record.id = id;
    record.channel_id = channel;
    a.insert_request(&mut record).await.unwrap();
    assert_eq!(
        b.request_by_channel(&channel).await.unwrap(),
        Some(record.clone())
    );
    let (_, other) = b.new_request_id();
    assert_eq!(b.request_by_channel(&other).await.unwrap(), None);

    let later = record.updated_ms + 1_000;
    let moved = b
        .update(id, later, |r| {
            r.state = State::Callback;
            Ok::<_, ()>("moved")
        })
        .await
        .unwrap();
    assert!(matches!(moved, Update::Done(_, "moved")), "{moved:?}");
    let read = a.request(id).await.unwrap().expect("the record");
    assert_eq!((read.state, read.updated_ms), (State::Callback, later));
    let refused = a
        .update(id, later + 1, |_| Err::<(), _>("no"))
        .await
        .unwrap();
    assert!(matches!(refused, Update::Refused("no")), "{refused:?}");
    assert_eq!(a.request(id).await.unwrap(), Some(read));
}

/// Timeline rounds appended through two nodes read back whole, in time order, on either.
#[tokio::test]
async fn timeline_rounds_from_two_nodes_read_back_in_order() {
    let nats = Nats::one().await;
    let a = JetStore::open(&node_on(&nats, 0).await).await.unwrap();
    let b = JetStore::open(&node_on(&nats, 0).await).await.unwrap();
    let (id, _) = a.new_request_id();
    let step = |state| Step::Transition { state };
    a.append_steps(
        id,
        &[(10, step(State::Pending)), (30, step(State::Generated))],
    )
    .await
    .unwrap();
    b.append_steps(id, &[(20, step(State::Callback))])
        .await
        .unwrap();
    a.append_steps(id, &[]).await.unwrap();
    let want = vec![
        (10, step(State::Pending)),
        (20, step(State::Callback)),
        (30, step(State::Generated)),
    ];
    assert_eq!(b.timeline(id).await.unwrap(), want);
    assert_eq!(a.timeline(id).await.unwrap(), want);
    assert_eq!(a.timeline(id + 1).await.unwrap(), vec![]);
}

/// `meta_or_init` keeps the first node's value: the others read it, never their own.
#[tokio::test]
async fn the_first_meta_value_wins_on_every_node() {
    let nats = Nats::one().await;
    let a = JetStore::open(&node_on(&nats, 0).await).await.unwrap();
    let b = JetStore::open(&node_on(&nats, 0).await).await.unwrap();
    let first = a
        .meta_or_init("ws_token_key", || vec![1; 32])
        .await
        .unwrap();
    let second = b
        .meta_or_init("ws_token_key", || vec![2; 32])
        .await
        .unwrap();
    assert_eq!((first, second), (vec![1; 32], vec![1; 32]));
}

/// `serve --cluster` in-process on one NATS server: the seed's flow runs end to end on a
/// cluster node (accept, webhook, callback, push, console view), with its records,
/// catalog and timeline in JetStream and nothing in the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_runs_the_seed_flow() {
    let nats = Nats::one().await;
    let server = start(on_one(&nats)).await;
    let receiver = Receiver::start().await;
    receiver.call_back(&server.key, Callback::Enrich);
    server.event_workflow("content_generator", json!({})).await;
    server.register_webhook(&receiver.url).await;
    let ticket = server.send_async(seed_request("content_generator")).await;
    let channel_id = text(&ticket, "channel_id").to_string();
    let mut socket = server.join(&ticket).await;
    let completed = socket.push_with_status("completed").await;
    assert_eq!(completed["channel_id"], channel_id);
    let hooks = receiver.wait_for(1).await;
    assert_eq!(hooks[0].json()["channel_id"], channel_id);
    // The backend calls back at once: the webhook's 2xx may be recorded after that.
    let done =
        |v: &Value| v["status"] == "completed" && v["deliveries"][0]["status"] == "delivered";
    server
        .wait_for_view(&channel_id, "completed and delivered", done)
        .await;
    assert!(
        std::fs::read_dir(server.data_dir())
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "a cluster node writes nothing under --data"
    );
}

/// Two cluster nodes on one NATS server list the same request log (by status, paged by
/// the cursor either node made) and the same counts, and a request accepted on one is
/// found by channel id on the other's console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cluster_nodes_list_the_same_request_log() {
    let nats = Nats::one().await;
    let on_nats = on_one(&nats);
    let a = start(on_nats).await;
    let b = start(on_nats).await;
    a.create_workflow(holding_workflow("held")).await;
    let mut channels = Vec::new();
    for n in 0..5 {
        let node = if n % 2 == 0 { &a } else { &b };
        let ticket = node.send_async(message_request("held", "hi")).await;
        channels.push(text(&ticket, "channel_id").to_string());
    }
    channels.reverse();
    let listed = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| text(r, "channel_id").to_string())
            .collect()
    };
    for node in [&a, &b] {
        // Another node's writes reach this node's copy of the log by its watch.
        let page = eventually("every request in the log", async || {
            let (_, all) = node.get("/console/requests?status=pending").await;
            let (_, page) = node.get("/console/requests?status=pending&limit=3").await;
            ok_if(listed(&all) == channels, page)
        })
        .await;
        assert_eq!(listed(&page), channels[..3], "{page}");
        let cursor = text(&page, "next_before").to_string();
        let other = if std::ptr::eq(node, &a) { &b } else { &a };
        let path = format!("/console/requests?status=pending&before={cursor}");
        eventually("the next page on the other node", async || {
            let (_, rest) = other.get(&path).await;
            ok_if(listed(&rest) == channels[3..], rest)
        })
        .await;
        let one = node.request(&channels[4]).await;
        assert_eq!(one["status"], "pending", "{one}");
    }
}

/// Three cluster nodes started at once with the same `--api-key` make one project
/// `default` with that key (the first start creates them, the others find them); a
/// workflow created on one node is used by a request accepted on another, and a second
/// workflow of the same name is refused on a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_at_once_share_one_catalog() {
    let nats = Nats::one().await;
    let on_nats = on_one(&nats);
    // Boxed: three starts at once would overflow the test's stack.
    let (a, b, c) = tokio::join!(
        Box::pin(start(on_nats)),
        Box::pin(start(on_nats)),
        Box::pin(start(on_nats))
    );
    let nodes = [a, b, c];
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };
    let mut ids = Vec::new();
    for node in &nodes {
        let (status, project) = node.get("/console/project").await;
        assert_eq!(status, 200, "{project}");
        ids.push((
            project["project_id"].clone(),
            project["request_webhook_secret"].clone(),
        ));
    }
    assert!(
        ids.iter().all(|id| *id == ids[0] && id.0.is_string()),
        "{ids:?}"
    );
    a.create_workflow(holding_workflow("shared")).await;
    let ticket = eventually("the workflow on node b", async || {
        let (status, ticket) = b
            .post("/v1/ai/async", message_request("shared", "hi"))
            .await;
        ok_if(status == 200, ticket)
    })
    .await;
    let channel = text(&ticket, "channel_id").to_string();
    let (status, refused) = eventually("the workflow on node c", async || {
        let reply = c
            .post("/console/workflow", holding_workflow("shared"))
            .await;
        ok_if(reply.0 == 409, reply)
    })
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(a.request(&channel).await["status"], "pending");
}

/// A request near the 1 MiB body limit (messages and metadata of 600 KB each: the
/// record whole would be over the servers' 1 MiB `max_payload`) is accepted by a cluster
/// node and read back whole on another: its texts are stored in chunks beside the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_max_payload_is_stored_in_chunks() {
    let nats = Nats::one().await;
    let on_nats = |c: &mut eddy::Config| {
        on_one(&nats)(c);
        c.body_limit = 2 << 20;
    };
    let (a, b) = tokio::join!(Box::pin(start(on_nats)), Box::pin(start(on_nats)));
    a.create_workflow(holding_workflow("held")).await;
    let content = "x".repeat(600_000);
    let mut body = message_request("held", &content);
    body["metadata"] = json!({"note": "y".repeat(600_000)});
    let ticket = a.send_async(body).await;
    let channel = text(&ticket, "channel_id");
    let view = b.request(channel).await;
    assert_eq!(
        view["messages"][0]["content"].as_str().map(str::len),
        Some(600_000)
    );
    assert_eq!(
        view["customer_data"]["note"].as_str().map(str::len),
        Some(600_000)
    );
}

/// A dead letter made on one cluster node is listed with the same id on another, shown
/// there with its request, re-driven from there to completion, and then gone from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_reads_the_same_on_two_nodes_and_either_re_drives() {
    let nats = Nats::one().await;
    let on_nats = on_one(&nats);
    let (a, b) = tokio::join!(Box::pin(start(on_nats)), Box::pin(start(on_nats)));
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    a.event_workflow("content_generator", json!({})).await;
    a.register_webhook(&receiver.url).await;
    let (channel, entry) = dead_letter(&a, "content_generator").await;
    let id = text(&entry, "id").to_string();
    let listed = eventually("the dead letter on node b", async || {
        let (_, list) = b.get("/console/dlq").await;
        ok_if(list["data"].as_array().is_some_and(|d| !d.is_empty()), list)
    })
    .await;
    assert_eq!(listed["data"][0]["id"], id.as_str(), "{listed}");
    let (status, shown) = b.get(&format!("/console/dlq/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["request"]["status"], "failed");

    receiver.set_status(200);
    receiver.call_back(KEY, Callback::Enrich);
    let (status, retried) = b.post(&format!("/console/dlq/{id}/retry"), json!({})).await;
    assert_eq!(status, 200, "{retried}");
    a.wait_for_status(&channel, "completed").await;
    for node in [&a, &b] {
        eventually("the dead letter gone", async || {
            let (_, list) = node.get("/console/dlq").await;
            ok_if(list["data"].as_array().is_some_and(Vec::is_empty), list)
        })
        .await;
    }
}
