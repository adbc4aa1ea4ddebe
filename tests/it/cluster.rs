//! The cluster mode's NATS layer against real nats-servers (Debian's 2.9.10, installed by
//! `tests/setup`): the buckets and streams eddy creates and `eddy cluster check` compares,
//! compare-and-set that loses nothing between racing nodes, exact creates, leader reads,
//! removal without markers, listings and watches. Each test starts its own servers
//! (`support::nats`); the fault tests are in `cluster_faults`.

use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
use bytes::Bytes;
use eddy::cluster::check::{Level, check};
use eddy::cluster::{Bucket, CasMode, Cluster, ClusterError, Create, Settings, cas::Updated};
use futures_util::StreamExt;

use crate::support::WAIT;
use crate::support::nats::Nats;

/// A node of the cluster, connected first to server `first` of `nats`.
pub async fn node_on(nats: &Nats, first: usize) -> Cluster {
    let mut settings = nats.settings();
    settings.servers.rotate_left(first);
    open_node(settings).await
}

/// Opens a node that must open, trying again for up to 90 s while the servers are still
/// settling (on a loaded machine the first JetStream requests of a fresh or restarted
/// cluster can time out); how an open fails is tested on its own.
pub async fn open_node(settings: Settings) -> Cluster {
    let opened = crate::support::poll(std::time::Duration::from_secs(90), async || {
        Cluster::open(settings.clone()).await
    })
    .await;
    opened.unwrap_or_else(|e| panic!("the node did not open in 90 s: {e}"))
}

/// Adds one to the number `key` holds, by CAS. `Ok(true)`: done; `Ok(false)`: the
/// acknowledgement was lost and it is unknown whether it landed.
pub async fn increment(bucket: &Bucket, key: &str) -> Result<bool, ClusterError> {
    let result = bucket
        .update(key, |e| {
            let n: u64 = std::str::from_utf8(&e.value).unwrap().parse().unwrap();
            Ok::<_, ()>((Bytes::from((n + 1).to_string()), ()))
        })
        .await;
    match result {
        Ok(Updated::Done { .. }) => Ok(true),
        Err(ClusterError::Unknown { .. }) => Ok(false),
        Err(e) => Err(e),
        Ok(other) => panic!("the counter is there and the change never refuses: {other:?}"),
    }
}

pub async fn number(bucket: &Bucket, key: &str) -> u64 {
    let entry = bucket
        .get_leader(key)
        .await
        .unwrap()
        .expect("the key exists");
    std::str::from_utf8(&entry.value).unwrap().parse().unwrap()
}

/// A fresh three-server cluster gets every bucket, stream and the work consumer with
/// three replicas, `eddy cluster check` finds nothing to fix, a second node changes
/// nothing, and Debian's 2.9.10 gets fenced compare-and-set.
#[tokio::test]
async fn a_new_cluster_gets_its_layout_and_checks_clean() {
    let nats = Nats::three().await;
    let a = node_on(&nats, 0).await;
    assert_eq!(
        a.cas_mode(),
        CasMode::Fenced,
        "2.9.10 loses plain CAS writes"
    );
    let report = check(&nats.settings()).await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.count(Level::Warn), 0, "{report}");
    for stream in a.layout.streams() {
        let info = a
            .jetstream()
            .get_stream(&stream.name)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        assert_eq!(info.config.num_replicas, 3, "{}", stream.name);
        assert_eq!(info.config.storage, StorageType::File, "{}", stream.name);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.level == Level::Ok && f.what.starts_with(&format!("{}:", stream.name))),
            "{report}"
        );
    }
    assert!(
        report.to_string().contains("compare-and-set is fenced"),
        "{report}"
    );
    let b = node_on(&nats, 2).await;
    let changes = b.layout.ensure(b.jetstream()).await.unwrap();
    assert!(changes.is_empty(), "{changes:?}");
}

/// Three replicas asked of a single server: the check fails saying how to set up a
/// cluster, and a node refuses to start, saying what is missing, rather than run without
/// the copies it was promised.
#[tokio::test]
async fn too_few_servers_for_the_replicas_are_refused_with_the_fix() {
    let nats = Nats::one().await;
    let mut settings = nats.settings();
    settings.replicas = 3;
    let report = check(&settings).await;
    assert!(!report.passed(), "{report}");
    let text = report.to_string();
    assert!(text.contains("fewer servers than the 3 replicas"), "{text}");
    assert!(text.contains("cluster { name: eddy"), "{text}");
    let Err(err) = Cluster::open(settings).await else {
        panic!("a node started with 3 replicas on one server");
    };
    assert!(matches!(err, ClusterError::Layout { .. }), "{err}");
    assert!(
        err.to_string().contains("enough JetStream servers"),
        "{err}"
    );
}

/// A retention changed in eddy's config shows in the check as a warning and is updated by
/// the next node to start; a stream eddy cannot change (a work queue that is not one)
/// fails both, naming the setting and what to do.
#[tokio::test]
async fn changed_settings_are_updated_and_unchangeable_ones_refused() {
    let nats = Nats::one().await;
    let a = node_on(&nats, 0).await;
    let mut shorter = nats.settings();
    shorter.request_retention = std::time::Duration::from_secs(3600);
    let report = check(&shorter).await;
    assert!(report.passed(), "{report}");
    assert!(
        report
            .to_string()
            .contains("KV_eddy_requests: max_age is 30days (eddy needs 1h)"),
        "{report}"
    );
    let _b = open_node(shorter.clone()).await;
    let report = check(&shorter).await;
    assert_eq!(report.count(Level::Warn), 0, "{report}");

    let mut other = nats.settings();
    other.prefix = "other".into();
    a.jetstream()
        .create_stream(Config {
            name: "OTHER_WORK".into(),
            subjects: vec!["other.work.>".into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let Err(err) = Cluster::open(other.clone()).await else {
        panic!("a node started on a work stream that is not a work queue");
    };
    assert!(
        err.to_string()
            .contains("retention Limits (wanted WorkQueue)"),
        "{err}"
    );
    let report = check(&other).await;
    assert!(!report.passed(), "{report}");
    assert!(
        report
            .to_string()
            .contains("OTHER_WORK: retention is Limits (eddy needs WorkQueue)"),
        "{report}"
    );
}

/// Nodes on different servers incrementing one counter by CAS at once lose no increment:
/// the fence makes 2.9.10's replicated CAS exact (without it, a quarter to two thirds of
/// such increments were lost when measured).
#[tokio::test]
async fn fenced_cas_loses_no_update_between_racing_nodes() {
    let nats = Nats::three().await;
    let mut buckets = Vec::new();
    for i in 0..6 {
        buckets.push(
            node_on(&nats, i % 3)
                .await
                .bucket("requests")
                .await
                .unwrap(),
        );
    }
    assert!(buckets[0].fenced());
    assert_eq!(
        buckets[0]
            .create("counter", Bytes::from("0"))
            .await
            .unwrap(),
        Create::Created(
            buckets[0]
                .get_leader("counter")
                .await
                .unwrap()
                .unwrap()
                .revision
        )
    );
    let per_node = 20;
    let tasks: Vec<_> = buckets
        .iter()
        .cloned()
        .map(|bucket| {
            tokio::spawn(async move {
                let mut unknown = 0;
                for _ in 0..per_node {
                    if !increment(&bucket, "counter")
                        .await
                        .expect("a healthy cluster")
                    {
                        unknown += 1;
                    }
                }
                unknown
            })
        })
        .collect();
    let mut unknown = 0;
    for task in tasks {
        unknown += task.await.unwrap();
    }
    let total = number(&buckets[0], "counter").await;
    let done = buckets.len() as u64 * per_node - unknown;
    assert!(
        (done..=done + unknown).contains(&total),
        "{total} after {done} increments (and {unknown} of unknown fate)"
    );
}

/// Nodes racing to create the same keys: each key is created by exactly one of them, and
/// the others are told which value won.
#[tokio::test]
async fn create_is_exact_between_racing_nodes() {
    let nats = Nats::three().await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let bucket = node_on(&nats, i).await.bucket("idem").await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for k in 0..30 {
                let mine = Bytes::from(format!("node {i}"));
                outcomes.push(bucket.create(&format!("k{k}"), mine).await.unwrap());
            }
            outcomes
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.unwrap());
    }
    let reader = node_on(&nats, 0).await.bucket("idem").await.unwrap();
    for k in 0..30 {
        let outcomes: Vec<&Create> = all.iter().map(|node| &node[k]).collect();
        let winners: Vec<usize> = (0..3)
            .filter(|i| matches!(outcomes[*i], Create::Created(_)))
            .collect();
        assert_eq!(winners.len(), 1, "key k{k}: {:?}", winners);
        let value = reader
            .get_leader(&format!("k{k}"))
            .await
            .unwrap()
            .unwrap()
            .value;
        assert_eq!(value, format!("node {}", winners[0]));
        for outcome in outcomes {
            if let Create::Exists(entry) = outcome {
                assert_eq!(entry.value, value, "key k{k}");
            }
        }
    }
}

/// A write acknowledged through one server is seen at once by a leader read through
/// another (a direct get may not be: replicas apply writes a little later).
#[tokio::test]
async fn a_leader_read_sees_a_write_made_through_another_server() {
    let nats = Nats::three().await;
    let one_server = |i: usize| Settings {
        servers: vec![nats.url(i)],
        ..nats.settings()
    };
    let a = open_node(one_server(0)).await;
    let b = open_node(one_server(2)).await;
    assert_ne!(a.link.server().server_name, b.link.server().server_name);
    let (wa, rb) = (
        a.bucket("log").await.unwrap(),
        b.bucket("log").await.unwrap(),
    );
    for i in 0..200 {
        let key = format!("k.{i}");
        wa.put(&key, Bytes::from(i.to_string())).await.unwrap();
        let seen = rb.get_leader(&key).await.unwrap().expect("seen at once");
        assert_eq!(seen.value, i.to_string());
    }
}

/// `remove` takes a key's messages away without a marker (the stream is empty after),
/// `delete` leaves a marker that watchers see; a key can be created again after either.
#[tokio::test]
async fn removed_and_deleted_keys_can_be_created_again() {
    let nats = Nats::one().await;
    let node = node_on(&nats, 0).await;
    let due = node.bucket("due").await.unwrap();
    due.put("k", Bytes::from("v1")).await.unwrap();
    due.remove("k").await.unwrap();
    assert_eq!(due.get_leader("k").await.unwrap(), None);
    let stream = node.jetstream().get_stream("KV_eddy_due").await.unwrap();
    assert_eq!(
        stream.get_info().await.unwrap().state.messages,
        0,
        "no marker"
    );
    assert!(matches!(
        due.create("k", Bytes::from("v2")).await.unwrap(),
        Create::Created(_)
    ));

    let catalog = node.bucket("catalog").await.unwrap();
    catalog.put("w", Bytes::from("v1")).await.unwrap();
    catalog.delete("w").await.unwrap();
    assert_eq!(catalog.get("w").await.unwrap(), None);
    assert!(catalog.list(None, true).await.unwrap().is_empty());
    let Create::Created(revision) = catalog.create("w", Bytes::from("v2")).await.unwrap() else {
        panic!("a deleted key is created again");
    };
    let now = catalog.get_leader("w").await.unwrap().unwrap();
    assert_eq!((now.value, now.revision), (Bytes::from("v2"), revision));
}

/// A listing returns exactly the keys under its prefix (at once when there are none),
/// and a watch from another node gives the current values, then every change, deletes
/// included.
#[tokio::test]
async fn listings_take_one_prefix_and_watches_follow_changes() {
    let nats = Nats::three().await;
    let a = node_on(&nats, 0).await.bucket("catalog").await.unwrap();
    for k in ["a.1", "a.2", "a.3", "b.1", "b.2"] {
        a.put(k, Bytes::from(format!("v{k}"))).await.unwrap();
    }
    let mut keys: Vec<String> = a
        .list(Some("a"), true)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            assert_eq!(e.value, format!("v{}", e.key));
            e.key
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["a.1", "a.2", "a.3"]);
    assert!(a.list(Some("c"), true).await.unwrap().is_empty());
    let all = a.list(None, false).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|e| e.value.is_empty()), "keys only");

    let b = node_on(&nats, 2).await.bucket("catalog").await.unwrap();
    let mut watch = b.watch(">").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let change = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(change.entry.key.clone());
        assert_eq!(change.current, seen.len() == 5, "{seen:?}");
    }
    a.put("a.4", Bytes::from("new")).await.unwrap();
    a.delete("a.1").await.unwrap();
    for (key, deleted) in [("a.4", false), ("a.1", true)] {
        let change = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((change.entry.key.as_str(), change.deleted), (key, deleted));
    }
}

/// Runs `eddy cluster check` with `args`; returns its exit code and all it printed.
async fn cluster_check(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["cluster", "check"])
        .args(args)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// `eddy cluster check` as an operator runs it: on a fresh cluster it passes and lists the
/// streams the first node will create; once a node has started, everything is ready;
/// against servers that do not answer, or a wrong address, it fails saying why.
#[tokio::test]
async fn eddy_cluster_check_tells_an_operator_what_to_fix() {
    let nats = Nats::three().await;
    let urls = nats.urls().join(",");
    let (code, text) = cluster_check(&["--cluster", &urls]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("WARN  KV_eddy_requests: missing"), "{text}");
    assert!(
        text.contains("fix: `eddy serve --cluster …` creates it at start"),
        "{text}"
    );
    assert!(text.contains("nats-server 2.9.10 (n1)"), "{text}");
    node_on(&nats, 0).await;
    let (code, text) = cluster_check(&["--cluster", &urls]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("the NATS side is ready for eddy"), "{text}");
    let (code, text) = cluster_check(&["--cluster", "nats://127.0.0.1:1"]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("no server of nats://127.0.0.1:1 answered"),
        "{text}"
    );
    let (code, text) = cluster_check(&["--cluster", "http://127.0.0.1:4222"]).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("the scheme must be nats:// or tls://"),
        "{text}"
    );
}

/// `eddy cluster check` against a single server: it fails for the default three replicas,
/// saying how to make a cluster, and passes with `--cluster-replicas 1`.
#[tokio::test]
async fn eddy_cluster_check_on_one_server_needs_one_replica() {
    let nats = Nats::one().await;
    let url = nats.url(0);
    let (code, text) = cluster_check(&["--cluster", &url]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("fewer servers than the 3 replicas"), "{text}");
    let (code, text) = cluster_check(&["--cluster", &url, "--cluster-replicas", "1"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("1 replica(s)"), "{text}");
}
