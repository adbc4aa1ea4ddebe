//! Request records in JetStream (`cluster::records`) against three real nats-servers: the
//! sled store's rules (updates by closure and CAS, the due index following the record,
//! idempotency claims, leases) hold when several nodes write the same records at once.

use eddy::cluster::Records;
use eddy::job::{ChannelId, ProjectId, Request, State};
use eddy::store::{Claim, Update};

use crate::cluster::node_on;
use crate::golden::scenario;
use crate::support::nats::Nats;

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

/// A record stored through one node reads back whole through another, with its due key;
/// an update moves the due key (the old one gone, the new one listed), a refused update
/// writes nothing, a missing id is `Missing`, and a stale due key is dropped while the
/// one the record owns is kept.
#[tokio::test]
async fn a_record_and_its_due_key_move_together_on_any_node() {
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
    assert_eq!(
        nodes[2].due_before(u64::MAX, 10).await.unwrap(),
        [(first_due, 11)]
    );

    let later = first_due + 60_000;
    let moved = nodes[1]
        .update(11, later, |r| {
            r.state = State::Callback;
            Ok::<_, ()>("moved")
        })
        .await
        .unwrap();
    let Update::Done(now, "moved") = moved else {
        panic!("{moved:?}");
    };
    assert_eq!(now.due_ms, Some(later));
    assert_eq!(
        nodes[0].due_before(u64::MAX, 10).await.unwrap(),
        [(later, 11)]
    );
    assert!(nodes[0].due_before(later, 10).await.unwrap().is_empty());

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
        !nodes[0].drop_stale_due(later, 11).await.unwrap(),
        "the record owns it"
    );
    assert!(nodes[0].drop_stale_due(first_due, 11).await.unwrap());
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
    use crate::support::wait::{eventually, ok_if};
    use std::time::Duration;

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
    use crate::support::wait::{eventually, ok_if};
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
