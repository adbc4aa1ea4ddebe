//! The store seam's JetStream backend (`store::JetStore`) against a real nats-server:
//! what the engine asks of its store (ids, records, updates, timelines) means the same
//! on every node, and a channel id made on one node leads to its record on another.

use eddy::job::{State, Step};
use eddy::store::{JetStore, Update};
use serde_json::json;

use crate::cluster::node_on;
use crate::cluster_store::pending;
use crate::support::nats::Nats;
use crate::support::{Callback, Receiver, seed_request, start, text};

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
    let server = start(|c| {
        c.cluster = Some(nats.url(0));
        c.cluster_replicas = 1;
    })
    .await;
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
    let view = server.wait_for_status(&channel_id, "completed").await;
    assert_eq!(view["deliveries"][0]["status"], "delivered");
    assert!(
        std::fs::read_dir(server.data_dir())
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "a cluster node writes nothing under --data"
    );
}
