//! Request records in JetStream (`cluster::records`) against three real nats-servers: the
//! sled store's rules (updates by closure and CAS, the due index or the work queue
//! following the record, idempotency claims, leases) hold when several nodes write the
//! same records at once; and the cluster nodes' timer wheels (`scheduler`) that fire
//! them and share their jobs.

use eddy::cluster::Records;
use eddy::job::{ChannelId, ProjectId, Request, State};
use eddy::store::{Claim, Update};

use std::collections::HashSet;
use std::time::Duration;

use eddy::cluster::Cluster;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::cluster::node_on;
use crate::golden::scenario;
use crate::support::WAIT;
use crate::support::nats::Nats;
use crate::support::wait::{eventually, ok_if};

/// A pending request `id` (due at once), as the golden scenario builds one.
pub fn pending(id: u64) -> Request {
    let ids: Vec<(u64, ChannelId)> = (0..scenario::REQUESTS as u64)
        .map(|n| (id + n, ChannelId::from_bytes([id as u8; 16])))
        .collect();
    let mut record = scenario::requests(&ids).swap_remove(0);
    record.state = State::Pending;
    record.ai = None;
    record.deliveries.clear();
    record.customer_data = "0".into();
    record
}

async fn records_on(nats: &Nats) -> Vec<Records> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(node_on(nats, i).await.records().await.unwrap());
    }
    out
}

/// The work message of `records`' queue that comes next, as `(id, due_ms)`, acknowledged.
async fn next_firing(records: &Records) -> (u64, u64) {
    let mut jobs = records.work().take(1, WAIT).await.unwrap();
    let job = jobs.next().await.expect("a work message").unwrap();
    job.done().await.unwrap();
    (job.id, job.due_ms)
}

/// Issue 14's due rule on JetStream: a record stored through one node reads back whole
/// through another; work due when written (a new request, a recorded callback) gets a
/// work message and no due key, work due later a due key, which moves with the record (the
/// old one gone, the new one listed, by minute too); a refused update writes nothing, a
/// missing id is `Missing`, and a stale due key is dropped while the one the record owns
/// is kept.
#[tokio::test]
async fn a_record_and_its_due_key_or_work_message_move_together_on_any_node() {
    let nats = Nats::three().await;
    let nodes = records_on(&nats).await;
    let mut record = pending(11);
    nodes[0].insert_request(&mut record).await.unwrap();
    let first_due = record.updated_ms;
    assert_eq!(record.due_ms, Some(first_due));
    assert_eq!(
        nodes[1].request_leader(11).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(next_firing(&nodes[2]).await, (11, first_due));
    assert!(nodes[2].due_before(u64::MAX, 10).await.unwrap().is_empty());

    let later = first_due + 60_000;
    let deadline = later + 90_000;
    let moved = nodes[1]
        .update(11, later, |r| {
            r.state = State::Delivered;
            r.callback_deadline_ms = Some(deadline);
            Ok::<_, ()>("moved")
        })
        .await
        .unwrap();
    let Update::Done(now, "moved") = moved else {
        panic!("{moved:?}");
    };
    assert_eq!(now.due_ms, Some(deadline));
    assert_eq!(
        nodes[0].due_before(u64::MAX, 10).await.unwrap(),
        [(deadline, 11)]
    );
    assert_eq!(
        nodes[0]
            .due_in_minutes(later / 60_000, deadline + 1)
            .await
            .unwrap(),
        [(deadline, 11)]
    );
    assert!(nodes[0].due_before(deadline, 10).await.unwrap().is_empty());

    let refused = nodes[2]
        .update(11, later + 1, |_| Err::<(), _>("no"))
        .await
        .unwrap();
    assert!(matches!(refused, Update::Refused("no")), "{refused:?}");
    assert_eq!(nodes[0].request_leader(11).await.unwrap(), Some(*now));
    let missing = nodes[2]
        .update(12, later, |_| Ok::<_, ()>(()))
        .await
        .unwrap();
    assert!(matches!(missing, Update::Missing), "{missing:?}");
    assert!(
        !nodes[0].drop_stale_due(deadline, 11).await.unwrap(),
        "the record owns it"
    );
    assert!(nodes[0].drop_stale_due(first_due, 11).await.unwrap());

    // A callback: due at once again, so a work message, and the deadline's key is gone.
    let called = later + 10;
    let update = nodes[2]
        .update(11, called, |r| {
            r.state = State::Callback;
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    assert!(matches!(update, Update::Done(..)), "{update:?}");
    assert_eq!(next_firing(&nodes[0]).await, (11, called));
    assert!(nodes[1].due_before(u64::MAX, 10).await.unwrap().is_empty());
}

/// Three nodes update one record at once by closure, 20 times each: every update is
/// applied exactly once (the closure reruns on a conflict), whatever the server version's
/// CAS does with racing writers.
#[tokio::test]
async fn racing_updates_from_three_nodes_are_each_applied_once() {
    let nats = Nats::three().await;
    let nodes = records_on(&nats).await;
    nodes[0].insert_request(&mut pending(21)).await.unwrap();
    let tasks: Vec<_> = nodes
        .iter()
        .cloned()
        .map(|node| {
            tokio::spawn(async move {
                for _ in 0..20 {
                    let done = node
                        .update(21, 0, |r| {
                            let n: u64 = r.customer_data.parse().unwrap();
                            r.customer_data = (n + 1).to_string();
                            Ok::<_, ()>(())
                        })
                        .await
                        .unwrap();
                    assert!(matches!(done, Update::Done(..)));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let record = nodes[1].request_leader(21).await.unwrap().unwrap();
    assert_eq!(record.customer_data, "60");
}

/// Three nodes store a request with the same idempotency key at once: exactly one stores
/// its request, the others are told its id; a claim whose request never came is taken
/// over, and an expired one too.
#[tokio::test]
async fn one_idempotency_key_makes_one_request_across_nodes() {
    let nats = Nats::three().await;
    let nodes = records_on(&nats).await;
    let project = ProjectId::from_bytes([3; 16]);
    let hash = [9u8; 32];
    let tasks: Vec<_> = nodes
        .iter()
        .cloned()
        .enumerate()
        .map(|(n, node)| {
            tokio::spawn(async move {
                let mut record = pending(31 + n as u64);
                node.insert_request_once(&mut record, &project, &hash, 60_000)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claims = Vec::new();
    for task in tasks {
        claims.push(task.await.unwrap());
    }
    let winners: Vec<u64> = (0..3)
        .filter(|n| claims[*n] == Claim::New)
        .map(|n| 31 + n as u64)
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    for claim in &claims {
        assert!(matches!(claim, Claim::New) || *claim == Claim::Existing(winners[0]));
    }
    for loser in (31..34).filter(|id| *id != winners[0]) {
        assert_eq!(nodes[0].request_leader(loser).await.unwrap(), None);
    }

    // An expired claim is taken over at once.
    let mut late = pending(40);
    late.created_ms += 120_000;
    let claim = nodes[2]
        .insert_request_once(&mut late, &project, &hash, 60_000)
        .await;
    assert_eq!(claim.unwrap(), Claim::New);
    assert!(nodes[0].request_leader(40).await.unwrap().is_some());
}

/// Three nodes racing for the lease on one model call: one takes it; another effect of
/// the same record is free; once the lease expires (a node died holding it), the call can
/// be leased again.
#[tokio::test]
async fn one_node_takes_a_lease_and_it_expires() {
    let nats = Nats::three().await;
    let mut settings = nats.settings();
    settings.lease_ttl = Duration::from_secs(2);
    let mut nodes = Vec::new();
    for i in 0..3 {
        settings.servers.rotate_left(i);
        let node = eddy::cluster::Cluster::open(settings.clone())
            .await
            .unwrap();
        nodes.push(node.records().await.unwrap());
    }
    let races: Vec<_> = nodes
        .iter()
        .cloned()
        .map(|node| tokio::spawn(async move { node.lease(5, "model.0").await.unwrap() }))
        .collect();
    let mut taken = 0;
    for race in races {
        taken += race.await.unwrap() as usize;
    }
    assert_eq!(taken, 1, "one node takes the lease");
    assert!(
        nodes[0].lease(5, "model.1").await.unwrap(),
        "another effect is free"
    );
    assert!(!nodes[1].lease(5, "model.0").await.unwrap());
    eventually("the lease to expire", async || {
        let again = nodes[2].lease(5, "model.0").await.unwrap();
        ok_if(again, again)
    })
    .await;
}

/// A node's copy of one prefix of the catalog, started while another node keeps writing
/// to it: once the writes stop, the copy holds exactly what the bucket holds under the
/// prefix (no write lost between the listing and the watch), in key order, deletes
/// applied, other prefixes left out.
#[tokio::test]
async fn a_mirror_started_mid_writes_ends_equal_to_the_bucket() {
    use bytes::Bytes;
    use eddy::cluster::Mirror;

    let nats = Nats::three().await;
    let writer = node_on(&nats, 0).await.bucket("catalog").await.unwrap();
    let reader = node_on(&nats, 2).await.bucket("catalog").await.unwrap();
    writer.put("b.1", Bytes::from("other")).await.unwrap();
    let writing = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for round in 0..60u32 {
                let key = format!("a.{}", round % 12);
                writer
                    .put(&key, Bytes::from(round.to_string()))
                    .await
                    .unwrap();
                if round % 7 == 6 {
                    writer.delete(&format!("a.{}", round % 5)).await.unwrap();
                }
            }
        })
    };
    let mirror = Mirror::start(&reader, Some("a")).await.unwrap();
    writing.await.unwrap();
    let mut want = reader.list(Some("a"), true).await.unwrap();
    want.sort_by(|x, y| x.key.cmp(&y.key));
    assert!(!want.is_empty());
    eventually("the copy to equal the bucket", async || {
        let have = mirror.range("a");
        ok_if(have == want, (have.len(), want.len()))
    })
    .await;
    assert!(mirror.get("b.1").is_none() && mirror.range("b").is_empty());
    assert_eq!(mirror.len(), want.len());
}

/// A scheduler's work that reports each run as `(node, id)`; a run of `retried` asks once
/// to run again, and the first run of `stuck` never ends.
struct Runs {
    node: usize,
    tx: mpsc::UnboundedSender<(usize, u64)>,
    handle: eddy::scheduler::SchedulerHandle,
    retried: u64,
    stuck: Option<u64>,
    seen: std::sync::Arc<std::sync::Mutex<HashSet<u64>>>,
}

impl eddy::scheduler::Work for Runs {
    fn run(&self, id: u64, _due: u64) -> futures_util::future::BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            let _ = self.tx.send((self.node, id));
            let first = self.seen.lock().unwrap().insert(id);
            if first && id == self.retried {
                self.handle.retry(id, eddy::clock::now_ms() + 300);
            }
            if first && Some(id) == self.stuck {
                std::future::pending::<()>().await;
            }
            None
        })
    }
}

/// Three cluster wheels, each with its own stop token, on `nats` (ack_wait `ack_wait`).
async fn wheels(
    nats: &Nats,
    ack_wait: Duration,
    work: impl Fn(usize, eddy::scheduler::SchedulerHandle) -> Runs,
) -> Vec<(tokio_util::sync::CancellationToken, tempfile::TempDir)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let mut settings = nats.settings();
        settings.servers.rotate_left(i);
        settings.ack_wait = ack_wait;
        let cluster = Cluster::open(settings).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = eddy::store::Store::open(dir.path(), 8 << 20, 0).unwrap();
        let (handle, inbox) = eddy::scheduler::channel();
        let stop = tokio_util::sync::CancellationToken::new();
        let settings = eddy::scheduler::Settings {
            refill_every: Duration::from_millis(500),
            max_inflight: 4,
            ..Default::default()
        };
        let work = std::sync::Arc::new(work(i, handle));
        eddy::scheduler::spawn_on(inbox, store, Some(cluster), work, settings, stop.clone());
        out.push((stop, dir));
    }
    out
}

/// Three nodes' wheels share the work: each request stored due at once runs exactly once
/// on some node; one whose due key falls due later is fired by the wheels (every node
/// publishes, one message is stored) and runs once, not before its time; a run that asks
/// to retry runs again; then every job is acknowledged.
#[tokio::test]
async fn cluster_wheels_run_each_firing_once_and_retries_again() {
    let nats = Nats::three().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let seen = std::sync::Arc::default();
    let _wheels = wheels(&nats, Duration::from_secs(30), |node, handle| Runs {
        node,
        tx: tx.clone(),
        handle,
        retried: 7,
        stuck: None,
        seen: std::sync::Arc::clone(&seen),
    })
    .await;
    let records = node_on(&nats, 0).await.records().await.unwrap();
    for id in 1..=20 {
        records.insert_request(&mut pending(id)).await.unwrap();
    }
    let mut later = pending(100);
    records.insert_request(&mut later).await.unwrap();
    let deadline = eddy::clock::now_ms() + 1500;
    records
        .update(100, eddy::clock::now_ms(), |r| {
            r.state = eddy::job::State::Delivered;
            r.callback_deadline_ms = Some(deadline);
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    // 20 + the retried one again + 100 twice (its insert's message, its deadline).
    let mut runs: Vec<(usize, u64)> = Vec::new();
    while runs.len() < 23 {
        let run = tokio::time::timeout(WAIT, rx.recv()).await.expect("runs");
        runs.push(run.unwrap());
        if runs.last().unwrap().1 == 100 && runs.iter().filter(|r| r.1 == 100).count() == 2 {
            assert!(eddy::clock::now_ms() >= deadline, "not before its time");
        }
    }
    let queue = records.work().clone();
    eventually("every job acknowledged", async || {
        let backlog = queue.backlog().await.unwrap();
        ok_if(backlog == (0, 0), backlog)
    })
    .await;
    let count = |id| runs.iter().filter(|r| r.1 == id).count();
    assert!(
        (1..=20).all(|id| count(id) == 1 + (id == 7) as usize),
        "{runs:?}"
    );
    assert_eq!(count(100), 2, "{runs:?}");
    assert!(rx.try_recv().is_err(), "no run twice");
}

/// A node stopped while it runs a job (as `kill -9` would) leaves the job to another
/// node once its `ack_wait` passes, and that node runs it.
#[tokio::test]
async fn a_job_held_by_a_stopped_node_runs_on_another() {
    let nats = Nats::three().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let seen = std::sync::Arc::default();
    let wheels = wheels(&nats, Duration::from_secs(2), |node, handle| Runs {
        node,
        tx: tx.clone(),
        handle,
        retried: 0,
        stuck: Some(5),
        seen: std::sync::Arc::clone(&seen),
    })
    .await;
    // Opened with the same ack_wait (a node opening with another one would change it).
    let mut settings = nats.settings();
    settings.ack_wait = Duration::from_secs(2);
    let records = Cluster::open(settings).await.unwrap().records().await;
    records
        .unwrap()
        .insert_request(&mut pending(5))
        .await
        .unwrap();
    let (first, _) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    wheels[first].0.cancel();
    let (second, id) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, 5);
    assert_ne!(second, first, "another node");
}
