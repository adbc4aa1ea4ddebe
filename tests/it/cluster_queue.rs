//! The cluster mode's work queue, timeline stream and push subject against three real
//! nats-servers (`support::nats`): each firing goes to one node and repeats are stored
//! once; work held by a dead node goes to another; deferred work comes back after its
//! delay; a timeline reads back in order on any node; a push reaches every node, and
//! through it the sockets of every node's hub.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy::cluster::{Job, Push};
use eddy::job::ChannelId;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;

use crate::cluster::node_on;
use crate::support::WAIT;
use crate::support::nats::Nats;
use crate::support::wait::{eventually, ok_if};

async fn next_job(jobs: &mut BoxStream<'static, eddy::cluster::Result<Job>>) -> Job {
    loop {
        match tokio::time::timeout(WAIT, jobs.next()).await {
            Ok(Some(Ok(job))) => return job,
            // A missed heartbeat on a loaded machine: the stream goes on.
            Ok(Some(Err(e))) => eprintln!("pulling work: {e}"),
            other => panic!("no job within the wait: {:?}", other.map(|o| o.is_none())),
        }
    }
}

/// Three nodes each publish the same 60 firings; 60 messages are stored, each is handed to
/// exactly one of the three nodes pulling, and once acknowledged the queue is empty.
#[tokio::test]
async fn each_firing_goes_to_one_node_and_repeats_are_stored_once() {
    let nats = Nats::three().await;
    let mut queues = Vec::new();
    for i in 0..3 {
        queues.push(node_on(&nats, i).await.work().await.unwrap());
    }
    for queue in &queues {
        let mut acks = Vec::new();
        for id in 1..=60u64 {
            acks.push(queue.publish(id, 1_000 + id).await.unwrap());
        }
        for ack in acks {
            ack.wait().await.unwrap();
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut pullers = Vec::new();
    for (n, queue) in queues.iter().enumerate() {
        let mut jobs = queue.jobs(16).await.unwrap();
        let tx = tx.clone();
        pullers.push(tokio::spawn(async move {
            loop {
                let job = next_job(&mut jobs).await;
                job.done().await.unwrap();
                let _ = tx.send((n, job.id, job.due_ms));
            }
        }));
    }
    let mut seen = Vec::new();
    while seen.len() < 60 {
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("60 jobs");
        seen.push(got.unwrap());
    }
    let ids: HashSet<u64> = seen.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids.len(), 60, "each firing once: {seen:?}");
    assert!(seen.iter().all(|(_, id, due)| *due == 1_000 + id));
    eventually("the queue to be empty", async || {
        let backlog = queues[0].backlog().await.unwrap();
        ok_if(backlog == (0, 0), backlog)
    })
    .await;
    assert!(rx.try_recv().is_err(), "no job twice");
    for p in pullers {
        p.abort();
    }
}

/// A node that takes a job and dies without acknowledging it: after `ack_wait` the job
/// goes to another node, marked as a second delivery.
#[tokio::test]
async fn work_held_by_a_dead_node_goes_to_another() {
    let nats = Nats::three().await;
    let mut settings = nats.settings();
    settings.ack_wait = Duration::from_secs(2);
    let a = crate::cluster::open_node(settings.clone()).await;
    let queue = a.work().await.unwrap();
    let mut jobs = queue.jobs(1).await.unwrap();
    queue.publish(42, 7).await.unwrap().wait().await.unwrap();
    let taken = next_job(&mut jobs).await;
    assert_eq!((taken.id, taken.due_ms, taken.delivered), (42, 7, 1));
    a.link.close().await;
    drop((taken, jobs, queue, a));

    settings.servers.rotate_left(2);
    let b = crate::cluster::open_node(settings).await;
    let mut jobs = b.work().await.unwrap().jobs(1).await.unwrap();
    let again = next_job(&mut jobs).await;
    assert_eq!((again.id, again.due_ms), (42, 7));
    assert!(again.delivered >= 2, "a redelivery: {}", again.delivered);
    again.done().await.unwrap();
}

/// A deferred job is delivered again, not before its delay.
#[tokio::test]
async fn deferred_work_comes_back_after_its_delay() {
    let nats = Nats::three().await;
    let queue = node_on(&nats, 1).await.work().await.unwrap();
    let mut jobs = queue.jobs(4).await.unwrap();
    queue.publish(9, 1).await.unwrap().wait().await.unwrap();
    let first = next_job(&mut jobs).await;
    let delay = Duration::from_millis(1500);
    let deferred_at = Instant::now();
    first.defer(delay).await.unwrap();
    let again = next_job(&mut jobs).await;
    assert!(
        deferred_at.elapsed() >= delay,
        "back after {:?}",
        deferred_at.elapsed()
    );
    assert_eq!((again.id, again.delivered), (9, 2));
    again.done().await.unwrap();
}

/// Rounds appended to one request's timeline, between other requests' rounds, read back
/// in order through another server; a request without rounds reads empty, and a removed
/// timeline is gone.
#[tokio::test]
async fn a_timeline_reads_back_in_order_from_any_node() {
    let nats = Nats::three().await;
    let a = node_on(&nats, 0).await.timeline().await.unwrap();
    let b = node_on(&nats, 2).await.timeline().await.unwrap();
    let mut acks = Vec::new();
    for round in 0..5 {
        acks.push(
            a.append(7, Bytes::from(format!("round {round}")))
                .await
                .unwrap(),
        );
        acks.push(
            a.append(8, Bytes::from(format!("other {round}")))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.wait().await.unwrap();
    }
    let rounds = b.read(7).await.unwrap();
    let expected: Vec<Bytes> = (0..5).map(|r| Bytes::from(format!("round {r}"))).collect();
    assert_eq!(rounds, expected);
    assert!(b.read(9).await.unwrap().is_empty());
    a.remove(7).await.unwrap();
    assert!(b.read(7).await.unwrap().is_empty());
    assert_eq!(b.read(8).await.unwrap().len(), 5);
}

fn push(n: u8) -> Push {
    Push {
        channel: ChannelId::from_bytes([n; 16]),
        topic: format!("ai_response:{n}"),
        event: "response".into(),
        payload: format!("{{\"n\":{n}}}"),
    }
}

/// A push published by one node reaches every node's standing subscription, its own
/// included; a malformed message on the push subjects is skipped, not passed on.
#[tokio::test]
async fn a_push_reaches_every_node_and_malformed_ones_are_skipped() {
    let nats = Nats::three().await;
    let mut nodes = Vec::new();
    let mut inboxes = Vec::new();
    for i in 0..3 {
        let node = node_on(&nats, i).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut pushes = node.pushes().subscribe().await.unwrap();
        tokio::spawn(async move {
            while let Some(p) = pushes.next().await {
                let _ = tx.send(p);
            }
        });
        nodes.push(node);
        inboxes.push(rx);
    }
    // Interest in a new subscription takes a moment to cross to the other servers: send
    // a first push until every node has one (eddy's nodes subscribe long before use).
    let pushes = nodes[0].pushes();
    for inbox in &mut inboxes {
        eventually("the subscriptions to reach every server", async || {
            pushes.publish(&push(0)).await.unwrap();
            ok_if(
                tokio::time::timeout(Duration::from_millis(100), inbox.recv())
                    .await
                    .is_ok(),
                (),
            )
        })
        .await;
    }
    nodes[0]
        .link
        .client()
        .publish("eddy.push.zz.not-hex", Bytes::from("junk"))
        .await
        .unwrap();
    pushes.publish(&push(5)).await.unwrap();
    for inbox in &mut inboxes {
        let got = loop {
            let p = tokio::time::timeout(WAIT, inbox.recv())
                .await
                .unwrap()
                .unwrap();
            if p != push(0) {
                break p;
            }
        };
        assert_eq!(got, push(5));
    }
}

/// Three nodes' hubs joined to the cluster: a push made on node 0 reaches, in order, a
/// socket joined on node 2 and none on node 1; node 0 counts only its own sockets; node
/// 2's own push reaches its socket too (back through NATS).
#[tokio::test]
async fn a_push_on_one_node_reaches_the_socket_on_another_in_order() {
    use eddy::ws::Hub;
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::Utf8Bytes;
    use tokio_util::sync::CancellationToken;

    let nats = Nats::three().await;
    let mut hubs = Vec::new();
    for i in 0..3 {
        let hub = Arc::new(Hub::new());
        let node = node_on(&nats, i).await;
        hub.join_cluster(&node, |_, _| {}).await.unwrap();
        hubs.push(hub);
    }
    let channel = ChannelId::from_bytes([7; 16]);
    let other = ChannelId::from_bytes([8; 16]);
    let socket = |hub: &Hub, channel| {
        let (tx, rx) = mpsc::channel::<Utf8Bytes>(64);
        hub.subscribe(channel, hub.socket_opened(), tx, CancellationToken::new());
        rx
    };
    let mut on_2 = socket(&hubs[2], channel);
    let mut on_1 = socket(&hubs[1], other);
    // Interest in node 2's subscription takes a moment to cross to node 0's server.
    eventually("node 0's pushes to reach node 2", async || {
        hubs[0].push(&channel, "t", "warm", "{}");
        let got = tokio::time::timeout(Duration::from_millis(100), on_2.recv()).await;
        ok_if(got.is_ok(), ())
    })
    .await;
    for n in 0..20 {
        assert_eq!(
            hubs[0].push(&channel, "t", "response", &format!("{{\"n\":{n}}}")),
            0
        );
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let frame = tokio::time::timeout(WAIT, on_2.recv())
            .await
            .unwrap()
            .unwrap();
        if !frame.as_str().contains("warm") {
            seen.push(frame.as_str().to_string());
        }
    }
    let expected: Vec<String> = (0..20)
        .map(|n| format!(r#"[null,null,"t","response",{{"n":{n}}}]"#))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(hubs[2].push(&channel, "t", "own", "{}"), 1);
    let own = tokio::time::timeout(WAIT, on_2.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(own.as_str(), r#"[null,null,"t","own",{}]"#);
    assert!(
        on_1.try_recv().is_err(),
        "a socket on another channel got nothing"
    );
}

/// Three nodes serving the work queue with two slots each: 30 jobs run once each, never
/// more than two at once on a node, and the queue is empty afterwards.
#[tokio::test]
async fn served_jobs_run_once_each_within_each_nodes_slots() {
    use eddy::cluster::Outcome;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_util::sync::CancellationToken;

    let nats = Nats::three().await;
    let (gate, _) = tokio::sync::watch::channel(false);
    let (ran_tx, mut ran) = mpsc::unbounded_channel();
    let (stop, mut queues, mut running) = (CancellationToken::new(), Vec::new(), Vec::new());
    for n in 0..3 {
        let queue = node_on(&nats, n).await.work().await.unwrap();
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (gate, ran_tx) = (gate.subscribe(), ran_tx.clone());
        let (now_, most_) = (now.clone(), most.clone());
        queue.serve(2, stop.clone(), move |id, _due| {
            let (mut gate, ran_tx, now, most) =
                (gate.clone(), ran_tx.clone(), now_.clone(), most_.clone());
            async move {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let _ = ran_tx.send((n, id));
                Outcome::Done
            }
        });
        queues.push(queue);
        running.push((now, most));
    }
    for id in 1..=30u64 {
        queues[0]
            .publish(id, 5)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    eventually("every node to fill its slots", async || {
        let busy: Vec<usize> = running
            .iter()
            .map(|(now, _)| now.load(Ordering::SeqCst))
            .collect();
        ok_if(busy == [2, 2, 2], busy)
    })
    .await;
    gate.send_replace(true);
    let mut ids = HashSet::new();
    while ids.len() < 30 {
        let (_, id) = tokio::time::timeout(WAIT, ran.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(ids.insert(id), "job {id} ran twice");
    }
    for (n, (_, most)) in running.iter().enumerate() {
        assert!(
            most.load(Ordering::SeqCst) <= 2,
            "node {n} ran more than its 2 slots"
        );
    }
    eventually("the queue to be empty", async || {
        let backlog = queues[0].backlog().await.unwrap();
        ok_if(backlog == (0, 0), backlog)
    })
    .await;
    stop.cancel();
}

/// A job whose handler runs longer than `ack_wait` is kept by its node (extended while it
/// runs), not given to another; a deferred job comes back after its delay. The long job
/// ends when the deferred one comes back, 3 s later, past the 2 s `ack_wait`.
#[tokio::test]
async fn a_long_job_is_kept_and_a_deferred_one_comes_back() {
    use eddy::cluster::Outcome;
    use std::sync::{Arc, Mutex};
    use tokio_util::sync::CancellationToken;

    let nats = Nats::three().await;
    let mut settings = nats.settings();
    settings.ack_wait = Duration::from_secs(2);
    let (back_tx, _) = tokio::sync::watch::channel(false);
    let runs: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut queues = Vec::new();
    for n in 0..2 {
        settings.servers.rotate_left(n);
        let queue = crate::cluster::open_node(settings.clone())
            .await
            .work()
            .await
            .unwrap();
        let (back_tx, runs) = (back_tx.clone(), runs.clone());
        queue.serve(2, stop.clone(), move |id, _due| {
            let (back_tx, runs) = (back_tx.clone(), runs.clone());
            async move {
                let before = {
                    let mut runs = runs.lock().unwrap();
                    runs.push((id, Instant::now()));
                    runs.iter().filter(|(i, _)| *i == id).count() - 1
                };
                match (id, before) {
                    (1, _) => {
                        let _ = back_tx.subscribe().wait_for(|back| *back).await;
                        Outcome::Done
                    }
                    (_, 0) => Outcome::Defer(Duration::from_secs(3)),
                    _ => {
                        back_tx.send_replace(true);
                        Outcome::Done
                    }
                }
            }
        });
        queues.push(queue);
    }
    queues[0].publish(1, 1).await.unwrap().wait().await.unwrap();
    queues[0].publish(2, 1).await.unwrap().wait().await.unwrap();
    eventually("both jobs to finish", async || {
        let backlog = queues[1].backlog().await.unwrap();
        let twice = runs
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == 2)
            .count()
            == 2;
        ok_if(twice && backlog == (0, 0), backlog)
    })
    .await;
    stop.cancel();
    let runs = runs.lock().unwrap().clone();
    let of = |id| {
        runs.iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, at)| *at)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(1).len(), 1, "the long job ran once: {runs:?}");
    let deferred = of(2);
    assert!(
        deferred[1] - deferred[0] >= Duration::from_secs(3),
        "{runs:?}"
    );
}

/// A node whose NATS server dies reconnects to another and asks for the latest message of
/// every channel joined on it (pushes made while it was cut off never reach it); what it
/// resends with `push_here` reaches its own socket.
#[tokio::test]
async fn after_a_reconnect_the_hub_resends_its_joined_channels() {
    use eddy::ws::Hub;
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::Utf8Bytes;
    use tokio_util::sync::CancellationToken;

    let mut nats = Nats::three().await;
    let mut settings = nats.settings();
    settings.servers = vec![nats.url(0)];
    let node = crate::cluster::open_node(settings).await;
    let hub = Arc::new(Hub::new());
    let (asked_tx, mut asked) = mpsc::unbounded_channel();
    hub.join_cluster(&node, move |hub, channels| {
        for channel in &channels {
            hub.push_here(channel, "t", "latest", "{}");
        }
        let _ = asked_tx.send(channels);
    })
    .await
    .unwrap();
    let channel = ChannelId::from_bytes([9; 16]);
    let (tx, mut socket) = mpsc::channel::<Utf8Bytes>(8);
    hub.subscribe(channel, hub.socket_opened(), tx, CancellationToken::new());
    nats.kill(0);
    let channels = tokio::time::timeout(Duration::from_secs(60), asked.recv()).await;
    assert_eq!(channels.unwrap().unwrap(), [channel]);
    let frame = tokio::time::timeout(WAIT, socket.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.as_str(), r#"[null,null,"t","latest",{}]"#);
}
