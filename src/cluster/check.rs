//! `eddy cluster check`: whether the NATS side is set up for eddy, and what to fix.
//!
//! Read-only: it connects to every server of the list on its own (version, JetStream,
//! `max_payload`, the cluster it belongs to), asks JetStream for the account's usage, and
//! compares every stream and the work consumer with [`Layout`], the table `eddy serve`
//! creates them from, including each stream's leader and the state of its replicas.
//! Everything it reads is readable on 2.9.10 (no monitoring port needed). Each finding is
//! `ok`, `note` (worth knowing, nothing to do), `WARN` (works, but fix it) or `FAIL` (eddy
//! cannot run as set up), with the fix.

use std::fmt;

use async_nats::jetstream::stream::{ClusterInfo, Config};

use super::connect::{self, Reached, ServerVersion};
use super::layout::{Difference, consumer_differences, stream_differences};
use super::{CasMode, Layout, Link, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Note,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

/// Every finding of one check, in the order they were made.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, level: Level, what: impl Into<String>, fix: Option<&str>) {
        self.findings.push(Finding {
            level,
            what: what.into(),
            fix: fix.map(str::to_string),
        });
    }

    /// No finding is a failure.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.level < Level::Fail)
    }

    pub fn count(&self, level: Level) -> usize {
        self.findings.iter().filter(|f| f.level == level).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let tag = match finding.level {
                Level::Ok => "ok  ",
                Level::Note => "note",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            writeln!(f, "{tag}  {}", finding.what)?;
            if let Some(fix) = &finding.fix {
                writeln!(f, "      fix: {fix}")?;
            }
        }
        let (fails, warns) = (self.count(Level::Fail), self.count(Level::Warn));
        match (fails, warns) {
            (0, 0) => writeln!(f, "the NATS side is ready for eddy"),
            (0, w) => writeln!(f, "ready, with {w} warning(s)"),
            (n, _) => writeln!(
                f,
                "{n} problem(s): eddy cannot run in cluster mode as set up"
            ),
        }
    }
}

const NO_JETSTREAM: &str = "add a `jetstream { store_dir: \"/var/lib/nats\" }` block to every \
                            server's config and restart it";
const TOO_FEW: &str = "run three nats-servers joined by a `cluster { name: eddy, listen: …, \
                       routes: [ … ] }` block, or give eddy a single server with replicas 1";

/// Checks the servers of `settings` against the layout of `settings`.
pub async fn check(settings: &Settings) -> Report {
    let mut report = Report::default();
    let reached = connect::versions(settings).await;
    servers(&mut report, settings, &reached);
    let mode = settings.cas.resolve(&reached);
    let mode_text = match mode {
        CasMode::Plain => "plain: every server is 2.9.21 or later".to_string(),
        _ => format!(
            "fenced: servers before {} can lose concurrent CAS writes on replicated streams, \
             so each write first claims its revision (one more replicated write per change)",
            ServerVersion::SAFE_CAS
        ),
    };
    report.add(Level::Note, format!("compare-and-set is {mode_text}"), None);
    let layout = match Layout::new(settings) {
        Ok(l) => l,
        Err(e) => {
            report.add(Level::Fail, e.to_string(), None);
            return report;
        }
    };
    let link = match Link::connect(settings).await {
        Ok(l) => l,
        Err(e) => {
            report.add(
                Level::Fail,
                e.to_string(),
                Some("start the servers, or correct --cluster"),
            );
            return report;
        }
    };
    account(&mut report, &link, settings).await;
    let js = link.jetstream(settings.request_timeout);
    for want in layout.streams() {
        stream(&mut report, &js, want, settings.replicas).await;
    }
    consumer(&mut report, &js, &layout).await;
    report
}

fn servers(report: &mut Report, settings: &Settings, reached: &[Reached]) {
    let mut versions = Vec::new();
    for r in reached {
        let info = match &r.info {
            Ok(info) => info,
            Err(e) => {
                report.add(
                    Level::Warn,
                    format!("{}: not reachable ({e})", r.url),
                    Some("start it, or take it out of --cluster"),
                );
                continue;
            }
        };
        let version = ServerVersion::parse(&info.version);
        versions.push(info.version.clone());
        let size = info.connect_urls.len().max(1);
        let mut line = format!(
            "{}: nats-server {} ({}), max_payload {} KiB, {}",
            r.url,
            info.version,
            info.server_name,
            info.max_payload >> 10,
            match &info.cluster {
                Some(name) => format!("cluster {name:?} of {size} server(s)"),
                None => "not in a cluster".into(),
            }
        );
        let mut level = Level::Ok;
        let mut fix = None;
        if version.is_none_or(|v| v < ServerVersion::OLDEST) {
            level = Level::Fail;
            fix = Some("install nats-server 2.9 or later (Debian 12: apt-get install nats-server)");
        } else if !info.jetstream {
            line.push_str(", JetStream off");
            level = Level::Fail;
            fix = Some(NO_JETSTREAM);
        } else if settings.replicas > 1 && (info.cluster.is_none() || size < settings.replicas) {
            line.push_str(&format!(
                ", fewer servers than the {} replicas asked for",
                settings.replicas
            ));
            level = Level::Fail;
            fix = Some(TOO_FEW);
        } else if info.max_payload < 1 << 20 {
            line.push_str(", max_payload under the 1 MiB default");
            level = Level::Warn;
            fix = Some("remove the max_payload line (eddy keeps every message far under 1 MiB)");
        }
        report.add(level, line, fix);
        if version.is_some_and(|v| v < ServerVersion(2, 10, 0)) {
            report.add(
                Level::Note,
                format!(
                    "{}: nats-server 2.9 writes to disk every 60 s: a write is acknowledged once a \
                     quorum of servers holds it in memory, so losing a machine loses nothing, but \
                     a power cut of every server at once can lose the last minute",
                    r.url
                ),
                Some(
                    "nats-server 2.10+ with `sync_interval: always` in its jetstream block \
                      syncs every write (slower)",
                ),
            );
        }
    }
    if versions.is_empty() {
        report.add(
            Level::Fail,
            format!("no server of {} answered", settings.servers.join(",")),
            Some("start the servers, or correct --cluster"),
        );
    }
    versions.sort();
    versions.dedup();
    if versions.len() > 1 {
        report.add(
            Level::Warn,
            format!(
                "the servers run different versions: {}",
                versions.join(", ")
            ),
            Some("finish the upgrade; until then eddy fences every CAS unless all are 2.9.21+"),
        );
    }
}

async fn account(report: &mut Report, link: &Link, settings: &Settings) {
    let answer = link
        .client()
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await;
    let info: serde_json::Value = match answer {
        Ok(m) => serde_json::from_slice(&m.payload).unwrap_or_default(),
        Err(e) => {
            report.add(
                Level::Fail,
                format!("JetStream does not answer: {e}"),
                Some(NO_JETSTREAM),
            );
            return;
        }
    };
    if let Some(error) = info.get("error") {
        report.add(
            Level::Fail,
            format!("JetStream refuses this account: {error}"),
            Some(NO_JETSTREAM),
        );
        return;
    }
    let used = info["storage"].as_u64().unwrap_or(0);
    let limit = info["limits"]["max_storage"].as_i64().unwrap_or(-1);
    let text = format!(
        "JetStream: {} stream(s), {} MiB stored{}, prefix {:?}, {} replica(s)",
        info["streams"].as_u64().unwrap_or(0),
        used >> 20,
        if limit > 0 {
            format!(" of {} MiB allowed", limit >> 20)
        } else {
            String::new()
        },
        settings.prefix,
        settings.replicas,
    );
    if limit > 0 && used * 10 > limit as u64 * 9 {
        report.add(
            Level::Warn,
            text + ": over 90% of the account's storage",
            Some("raise max_file_store in the servers' jetstream block, or shorten the retentions"),
        );
    } else {
        report.add(Level::Ok, text, None);
    }
}

async fn stream(
    report: &mut Report,
    js: &async_nats::jetstream::Context,
    want: &Config,
    replicas: usize,
) {
    let name = &want.name;
    let info = match js.get_stream(name).await {
        Ok(mut s) => match s.info().await {
            Ok(info) => info.clone(),
            Err(e) => {
                report.add(Level::Fail, format!("{name}: cannot be read: {e}"), None);
                return;
            }
        },
        Err(e) if e.to_string().contains("not found") => {
            report.add(
                Level::Warn,
                format!("{name}: missing"),
                Some("`eddy serve --cluster …` creates it at start"),
            );
            return;
        }
        Err(e) => {
            report.add(Level::Fail, format!("{name}: cannot be read: {e}"), None);
            return;
        }
    };
    let diffs = stream_differences(want, &info.config);
    settings_findings(report, name, &diffs);
    let mut health = health(info.cluster.as_ref(), replicas);
    if diffs.is_empty() && health.is_empty() {
        report.add(
            Level::Ok,
            format!(
                "{name}: {} message(s), {} KiB",
                info.state.messages,
                info.state.bytes >> 10
            ),
            None,
        );
    }
    for (level, what, fix) in health.drain(..) {
        report.add(level, format!("{name}: {what}"), Some(fix));
    }
}

fn settings_findings(report: &mut Report, name: &str, diffs: &[Difference]) {
    for d in diffs {
        let what = format!("{name}: {} is {} (eddy needs {})", d.field, d.have, d.want);
        if d.mutable {
            report.add(
                Level::Warn,
                what,
                Some("`eddy serve --cluster …` updates it at start"),
            );
        } else {
            report.add(
                Level::Fail,
                what,
                Some(
                    "eddy cannot change it: use another cluster prefix, or delete the stream \
                 (`nats stream rm`) if its data may go",
                ),
            );
        }
    }
}

/// What is wrong with a stream's replicas.
fn health(cluster: Option<&ClusterInfo>, replicas: usize) -> Vec<(Level, String, &'static str)> {
    let mut out = Vec::new();
    let Some(cluster) = cluster else {
        return out;
    };
    const QUORUM: &str = "bring back the servers that are down: a stream needs a majority of \
                          its replicas";
    if cluster.leader.is_none() {
        out.push((
            Level::Fail,
            "no leader: writes stop until a majority of its replicas is up".into(),
            QUORUM,
        ));
    }
    let mut behind = 0;
    for peer in &cluster.replicas {
        if peer.offline || !peer.current {
            behind += 1;
            out.push((
                Level::Warn,
                format!(
                    "replica on {} is {}",
                    peer.name,
                    if peer.offline {
                        "offline".to_string()
                    } else {
                        format!("catching up ({} behind)", peer.lag.unwrap_or(0))
                    }
                ),
                "wait for it to catch up, or restart that server",
            ));
        }
    }
    let present = cluster.replicas.len() + usize::from(cluster.leader.is_some());
    if replicas > 1 && present < replicas && behind == 0 {
        out.push((
            Level::Warn,
            format!("{present} of {replicas} replicas placed"),
            "start enough servers for every replica",
        ));
    }
    out
}

async fn consumer(report: &mut Report, js: &async_nats::jetstream::Context, layout: &Layout) {
    let name = layout.workers.durable_name.clone().unwrap_or_default();
    let Ok(stream) = js.get_stream_no_info(&layout.work.name).await else {
        return;
    };
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let diffs = consumer_differences(&layout.workers, &info.config);
            settings_findings(report, &name, &diffs);
            if diffs.is_empty() {
                report.add(
                    Level::Ok,
                    format!(
                        "{name}: {} waiting, {} being worked on, {} redelivered",
                        info.num_pending, info.num_ack_pending, info.num_redelivered
                    ),
                    None,
                );
            }
            let max = layout.workers.max_ack_pending.max(1) as usize;
            if info.num_ack_pending * 10 > max * 9 {
                report.add(
                    Level::Warn,
                    format!(
                        "{name}: {} of {max} handed-out slots in use",
                        info.num_ack_pending
                    ),
                    Some("add nodes, or raise the work consumer's max_ack_pending"),
                );
            }
        }
        Err(_) => report.add(
            Level::Warn,
            format!("{name}: missing"),
            Some("`eddy serve --cluster …` creates it at start"),
        ),
    }
}
