//! Faults under load in a cluster of eddy nodes on three NATS servers: nodes killed with
//! `kill -9` at random moments and restarted, and one NATS server killed mid-load. Every
//! accepted request completes and each request's deliveries share one `webhook-id`; the
//! counts are printed (accepted, completed, duplicate deliveries) for the closing note.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

use crate::support::nats::Nats;
use crate::support::nodes::Nodes;
use crate::support::{Api, Callback, KEY, Receiver, WAIT, eventually, ok_if, poll, seed_request};

/// A retry schedule long enough that a backend failing 40% of the time is always
/// delivered to in the end.
const PATIENT: &str = "0s,100ms,200ms,300ms,400ms,500ms,500ms,500ms,500ms,500ms,500ms,\
                       500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms";

/// `POST /v1/ai/async` that may fail: the ticket's channel id on 200, else what came back
/// (a status and body, or the transport error).
async fn try_send(api: &Api) -> Result<String, String> {
    let sent = api
        .http
        .post(format!("{}/v1/ai/async", api.base))
        .bearer_auth(&api.key)
        .json(&seed_request("content_generator"))
        .send()
        .await;
    let response = sent.map_err(|e| format!("transport: {e}"))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match (status, body["channel_id"].as_str()) {
        (200, Some(channel)) => Ok(channel.to_string()),
        _ => Err(format!("{status} {body}")),
    }
}

/// What the backend saw: per request, the `webhook-id`s used, the statuses it answered,
/// and how eddy answered its callbacks.
struct Deliveries {
    ids: BTreeMap<String, BTreeSet<String>>,
    answered: BTreeMap<String, Vec<u16>>,
    callbacks: BTreeMap<String, Vec<(u16, Value)>>,
    attempts: usize,
}

impl Deliveries {
    fn of(receiver: &Receiver) -> Deliveries {
        let mut d = Deliveries {
            ids: BTreeMap::new(),
            answered: BTreeMap::new(),
            callbacks: BTreeMap::new(),
            attempts: 0,
        };
        for c in receiver.callbacks() {
            let seen = d.callbacks.entry(c.channel_id).or_default();
            seen.push((c.status, c.reply));
        }
        for hook in receiver.received() {
            let channel = hook.header("mr-channel-id").to_string();
            d.attempts += 1;
            d.ids
                .entry(channel.clone())
                .or_default()
                .insert(hook.header("webhook-id").to_string());
            d.answered.entry(channel).or_default().push(hook.answered);
        }
        d
    }

    /// 2xx deliveries beyond the first of each request (a node died between the
    /// backend's 2xx and recording it, or two nodes raced one attempt).
    fn duplicates(&self) -> usize {
        let ok = |statuses: &Vec<u16>| statuses.iter().filter(|s| **s < 300).count();
        self.answered
            .values()
            .map(|s| ok(s).saturating_sub(1))
            .sum()
    }

    fn assert_one_id_each(&self) {
        for (channel, set) in &self.ids {
            assert_eq!(set.len(), 1, "request {channel} delivered with ids {set:?}");
        }
    }
}

/// Waits until every request of `accepted` reads `completed` (from any running node, in
/// turn); returns the final status of each (missing: 404, never stored).
async fn wait_completed(nodes: &Nodes, accepted: &BTreeSet<String>) -> BTreeMap<String, String> {
    let apis = nodes.running();
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    let mut turn = 0;
    let _ = poll(WAIT * 9, async || {
        for channel in accepted {
            if states.get(channel).is_some_and(|s| s == "completed") {
                continue;
            }
            turn += 1;
            let api = &apis[turn % apis.len()];
            let (status, view) = api.get(&format!("/console/requests/{channel}")).await;
            let state = match status {
                200 => view["status"].as_str().unwrap_or("?").to_string(),
                other => format!("http {other}"),
            };
            states.insert(channel.clone(), state);
        }
        let done = states.values().all(|s| s == "completed");
        if done { Ok(()) } else { Err(()) }
    })
    .await;
    states
}

/// Waits for every accepted request to finish, tallies the final states and the
/// receiver's deliveries, and asserts that all completed (printing the counts first) and
/// that each request's deliveries share one `webhook-id`.
async fn assert_all_completed(
    nodes: &Nodes,
    what: &str,
    accepted: &BTreeSet<String>,
    receiver: &Receiver,
    started: Instant,
) {
    let states = wait_completed(nodes, accepted).await;
    let d = &Deliveries::of(receiver);
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for state in states.values() {
        *tally.entry(state).or_default() += 1;
    }
    eprintln!(
        "{what}: {} accepted, {} completed, final states {tally:?}, {} webhook attempts, {} \
         duplicate deliveries (2xx beyond one per request), {} distinct webhook-ids for {} \
         requests delivered to, {:?}",
        accepted.len(),
        tally.get("completed").copied().unwrap_or(0),
        d.attempts,
        d.duplicates(),
        d.ids.values().map(BTreeSet::len).sum::<usize>(),
        d.ids.len(),
        started.elapsed()
    );
    let unfinished: Vec<(&String, &String)> =
        states.iter().filter(|(_, s)| *s != "completed").collect();
    for (channel, state) in unfinished.iter().take(5) {
        let (_, view) = nodes.running()[0]
            .get(&format!("/console/requests/{channel}"))
            .await;
        eprintln!(
            "{channel} is {state}: the backend answered its webhooks {:?}; its callbacks were \
             answered {:?}; its timeline: {:?}",
            d.answered.get(*channel),
            d.callbacks.get(*channel),
            view["timeline"].as_array().map(|t| t
                .iter()
                .map(|s| format!("{} {}", s["type"], s["state"]))
                .collect::<Vec<_>>())
        );
    }
    assert!(
        unfinished.is_empty(),
        "{} accepted but not completed: {unfinished:?}",
        unfinished.len()
    );
    d.assert_one_id_each();
}

/// The crash loop across nodes: three eddy nodes on three NATS servers behind a load
/// balancer (which the backend's callbacks and some clients go through), ten rounds of
/// load spread over the nodes while a flaky backend (40% 500s) is delivered to and calls
/// back; each round one node is killed with `kill -9` at a random moment under load and
/// started again. Every accepted request completes, and each request's deliveries share
/// one `webhook-id`, whichever nodes made them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_across_three_nodes_loses_nothing() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 12;
    let started = Instant::now();
    let extra = ["--webhook-retry-schedule", PATIENT];
    let mut nodes = Nodes::start_balanced(Nats::three().await, 3, &extra).await;
    let receiver = Receiver::start().await;
    let script: Vec<u16> = {
        let mut rng = rand::rng();
        (0..4000)
            .map(|_| if rng.random_bool(0.4) { 500 } else { 200 })
            .collect()
    };
    receiver.script(&script);
    receiver.call_back(KEY, Callback::Enrich);
    nodes.seed(0, &receiver.url).await;

    let mut accepted = BTreeSet::new();
    let mut refused = Vec::new();
    for round in 0..ROUNDS {
        let victim = rand::rng().random_range(0..nodes.len());
        let mut sends = Vec::new();
        for i in 0..PER_ROUND * 2 {
            // The first half goes to every node; the second half, sent while the victim
            // is being killed, to the others or through the balancer.
            let mut target = i % nodes.len();
            if i >= PER_ROUND && target == victim {
                target = (target + 1) % nodes.len();
            }
            let api = match i >= PER_ROUND && i % 2 == 1 {
                true => nodes.balanced(),
                false => nodes.api(target),
            };
            sends.push(tokio::spawn(async move { try_send(&api).await }));
            if i == PER_ROUND {
                let pause = rand::rng().random_range(20..400);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                nodes.kill_9(victim);
            }
        }
        for send in sends {
            match send.await.expect("send task") {
                Ok(channel) => {
                    accepted.insert(channel);
                }
                Err(e) => refused.push(format!("round {round}: {e}")),
            }
        }
        nodes.restart(victim);
    }
    let before_end = receiver.received().len();
    eprintln!(
        "crash loop: {ROUNDS} kills, {} sends refused or unanswered ({before_end} webhook \
         attempts before the last restart): {refused:?}",
        refused.len()
    );
    assert_all_completed(
        &nodes,
        "crash loop across nodes",
        &accepted,
        &receiver,
        started,
    )
    .await;
}

/// The name of the server that leads the requests bucket's stream (the worst one to
/// lose), found through server `via`.
async fn requests_leader(nats: &Nats, via: usize) -> Option<String> {
    let client = async_nats::connect(nats.url(via)).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("KV_eddy_requests").await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

/// One of three NATS servers killed mid-load (the leader of the requests' stream): the
/// nodes go on accepting through the other two, and every request accepted before,
/// during or after the loss completes with one `webhook-id`. Accepts that were answered
/// 503 during the election were not accepted and are only counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_server_killed_mid_load_loses_nothing() {
    let started = Instant::now();
    let extra = ["--webhook-retry-schedule", "0s,50ms,100ms,200ms,500ms"];
    let mut nodes = Nodes::start(Nats::three().await, 3, &extra).await;
    let receiver = Receiver::start().await;
    receiver.call_back(KEY, Callback::Enrich);
    nodes.seed(0, &receiver.url).await;

    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..6 {
        let api = nodes.api(p % 3);
        let (accepted, refused, stop) = (accepted.clone(), refused.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match try_send(&api).await {
                    Ok(channel) => {
                        accepted.lock().unwrap().insert(channel);
                    }
                    Err(e) => refused.lock().unwrap().push(e),
                }
            }
        }));
    }
    let count = || accepted.lock().unwrap().len();
    let wait_count = async |n: usize| {
        eventually(&format!("{n} accepted"), async || {
            ok_if(count() >= n, count())
        })
        .await
    };
    wait_count(30).await;
    let leader = requests_leader(&nodes.nats, 0).await;
    let victim = leader
        .as_deref()
        .map_or(0, |name| nodes.nats.index_of(name));
    nodes.nats.kill(victim);
    let (at_kill, killed) = (count(), Instant::now());
    wait_count(at_kill + 1).await;
    let resumed = killed.elapsed();
    wait_count(at_kill + 60).await;
    let sixty = killed.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in producers {
        p.await.expect("producer");
    }
    let accepted = accepted.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    eprintln!(
        "nats server n{} (leader {leader:?}) killed after {at_kill} accepts, the next one \
         accepted {resumed:?} later, 60 more in {sixty:?}; {} accepted in all, {} refused or unanswered: {:?}",
        victim + 1,
        accepted.len(),
        refused.len(),
        refused.iter().take(5).collect::<Vec<_>>()
    );
    assert_all_completed(&nodes, "nats server killed", &accepted, &receiver, started).await;
    nodes.nats.restart(victim).await;
}

/// Every NATS server down at once (a careless operator's restart of the whole NATS side):
/// a node does not claim to accept what it cannot store (503, not 200), its `/healthz`
/// says 503 with `cluster.connected: false` (a load balancer stops sending to it), and once
/// the servers are back the nodes report the link and accept again by themselves, and what
/// was accepted before the outage and after it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_refuse_accepts_while_nats_is_down_and_resume_after() {
    let started = Instant::now();
    let mut nodes = Nodes::start(Nats::three().await, 2, &[]).await;
    let receiver = Receiver::start().await;
    receiver.call_back(KEY, Callback::Enrich);
    nodes.seed(0, &receiver.url).await;
    let mut accepted = BTreeSet::new();
    accepted.insert(
        try_send(&nodes.api(0))
            .await
            .expect("accepted before the outage"),
    );

    for i in 0..3 {
        nodes.nats.kill(i);
    }
    let health = |connected: bool| {
        move |h: &Value| {
            h["cluster"]["connected"] == connected && (h["status"] == "ok") == connected
        }
    };
    for api in nodes.running() {
        match try_send(&api).await {
            Ok(channel) => panic!(
                "{} accepted {channel} with every NATS server down",
                api.base
            ),
            Err(e) => assert!(e.starts_with("503 "), "{}: {e}", api.base),
        }
        let healthz = eventually("/healthz to report the lost NATS link", async || {
            let (status, body) = api.get("/healthz").await;
            ok_if(status == 503 && health(false)(&body), (status, body))
        })
        .await;
        eprintln!("{} while NATS is down: /healthz {healthz:?}", api.base);
    }
    nodes.nats.restart_all().await;
    for api in nodes.running() {
        eventually("/healthz to report the NATS link back", async || {
            let (status, body) = api.get("/healthz").await;
            ok_if(status == 200 && health(true)(&body), (status, body))
        })
        .await;
    }
    for api in nodes.running() {
        let channel = eventually(&format!("{} to accept again", api.base), async || {
            try_send(&api).await
        })
        .await;
        accepted.insert(channel);
    }
    assert_all_completed(&nodes, "nats restarted", &accepted, &receiver, started).await;
}
