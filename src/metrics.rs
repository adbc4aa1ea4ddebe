//! Metrics in the Prometheus text format, kept with atomics and rendered at `/metrics`.
//!
//! Counters and histograms are recorded where things happen (the engine, the committer);
//! gauges (requests by state, dead letters, open sockets) are read from their owners when
//! scraped. Label sets are small and bounded (workflow names, provider names, fixed
//! outcomes), held in a map per metric.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::job::{State, Status};

/// Upper bounds (seconds) of latency histograms.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds (seconds) of the accept-to-completed histogram.
const FLOW_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds of the group-commit batch size histogram.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A histogram with fixed buckets; the sum is kept in millionths.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// A histogram of latencies in seconds (1 ms to 30 s).
    pub fn latency() -> Histogram {
        Histogram::new(&LATENCY_BUCKETS)
    }

    /// A histogram of batch sizes (1 to 1024).
    pub fn batch_size() -> Histogram {
        Histogram::new(&BATCH_BUCKETS)
    }

    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// One metric with a value per label set.
struct Family<T> {
    label_names: &'static [&'static str],
    make: fn() -> T,
    members: Mutex<BTreeMap<Vec<String>, Arc<T>>>,
}

impl<T> Family<T> {
    fn new(label_names: &'static [&'static str], make: fn() -> T) -> Family<T> {
        Family {
            label_names,
            make,
            members: Mutex::new(BTreeMap::new()),
        }
    }

    fn get(&self, values: &[&str]) -> Arc<T> {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members
            .entry(key)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    fn each(&self, mut f: impl FnMut(String, &T)) {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        for (values, member) in members.iter() {
            f(labels(self.label_names, values), member);
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

type Counters = Family<AtomicU64>;
type Histograms = Family<Histogram>;

fn counter() -> AtomicU64 {
    AtomicU64::new(0)
}

/// Every metric eddy records.
pub struct Metrics {
    requests_accepted: Counters,
    requests_finished: Counters,
    ai_attempts: Counters,
    ai_latency: Histograms,
    webhook_attempts: Counters,
    webhook_latency: Histogram,
    callbacks: Counters,
    accept_to_completed: Histogram,
    pushes: Counters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_accepted: Family::new(&["workflow"], counter),
            requests_finished: Family::new(&["workflow", "state", "reason"], counter),
            ai_attempts: Family::new(&["provider", "outcome"], counter),
            ai_latency: Family::new(&["provider"], || Histogram::new(&LATENCY_BUCKETS)),
            webhook_attempts: Family::new(&["outcome"], counter),
            webhook_latency: Histogram::new(&LATENCY_BUCKETS),
            callbacks: Family::new(&["outcome"], counter),
            accept_to_completed: Histogram::new(&FLOW_BUCKETS),
            pushes: Family::new(&["status"], counter),
        }
    }
}

/// Gauges and histograms read from their owners at scrape time.
pub struct Gauges<'a> {
    /// Requests in the store by status.
    pub requests_by_state: Vec<(Status, i64)>,
    pub dead_letters: i64,
    pub open_sockets: usize,
    /// The group committer's batch sizes and sync latencies.
    pub commit_batch: &'a Histogram,
    pub commit_latency: &'a Histogram,
}

impl Metrics {
    pub fn accepted(&self, workflow: &str) {
        self.requests_accepted
            .get(&[workflow])
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A request reached a terminal state (labelled with its status and, if it failed, why),
    /// `since_accept` after it was accepted (observed for completed ones).
    pub fn finished(&self, workflow: &str, state: State, since_accept: Duration) {
        let reason = state.failure().map_or("", |f| f.as_str());
        self.requests_finished
            .get(&[workflow, state.as_str(), reason])
            .fetch_add(1, Ordering::Relaxed);
        if state == State::Completed {
            self.accept_to_completed.observe_duration(since_accept);
        }
    }

    pub fn ai_attempt(&self, provider: &str, ok: bool, took: Duration) {
        let outcome = if ok { "success" } else { "error" };
        self.ai_attempts
            .get(&[provider, outcome])
            .fetch_add(1, Ordering::Relaxed);
        self.ai_latency.get(&[provider]).observe_duration(took);
    }

    /// `outcome`: delivered, failed, timeout or refused; `took` for attempts that were sent.
    pub fn webhook_attempt(&self, outcome: &str, took: Option<Duration>) {
        self.webhook_attempts
            .get(&[outcome])
            .fetch_add(1, Ordering::Relaxed);
        if let Some(d) = took {
            self.webhook_latency.observe_duration(d);
        }
    }

    /// `outcome`: accepted, error, rejected or timeout.
    pub fn callback(&self, outcome: &str) {
        self.callbacks
            .get(&[outcome])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn pushed(&self, status: &str) {
        self.pushes.get(&[status]).fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition of every metric.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        let counters = |out: &mut String, name: &str, help: &str, family: &Counters| {
            header(out, name, "counter", help);
            family.each(|labels, value| {
                let _ = writeln!(out, "{name}{{{labels}}} {}", value.load(Ordering::Relaxed));
            });
        };
        counters(
            &mut out,
            "eddy_requests_accepted_total",
            "Async requests accepted, by workflow.",
            &self.requests_accepted,
        );
        counters(
            &mut out,
            "eddy_requests_finished_total",
            "Requests that reached a final state, by workflow, state and failure reason.",
            &self.requests_finished,
        );
        counters(
            &mut out,
            "eddy_ai_attempts_total",
            "Model attempts, by provider and outcome.",
            &self.ai_attempts,
        );
        header(
            &mut out,
            "eddy_ai_attempt_seconds",
            "histogram",
            "Model attempt latency, by provider.",
        );
        self.ai_latency
            .each(|labels, h| h.render(&mut out, "eddy_ai_attempt_seconds", &labels));
        counters(
            &mut out,
            "eddy_webhook_attempts_total",
            "Webhook attempts, by outcome (delivered, failed, timeout, refused).",
            &self.webhook_attempts,
        );
        header(
            &mut out,
            "eddy_webhook_attempt_seconds",
            "histogram",
            "Webhook attempt latency.",
        );
        self.webhook_latency
            .render(&mut out, "eddy_webhook_attempt_seconds", "");
        counters(
            &mut out,
            "eddy_callbacks_total",
            "Backend callbacks, by outcome (accepted, error, rejected, timeout).",
            &self.callbacks,
        );
        header(
            &mut out,
            "eddy_accept_to_completed_seconds",
            "histogram",
            "Time from accepting a request to its completion.",
        );
        self.accept_to_completed
            .render(&mut out, "eddy_accept_to_completed_seconds", "");
        counters(
            &mut out,
            "eddy_websocket_pushes_total",
            "Results pushed to channels, by status.",
            &self.pushes,
        );
        header(
            &mut out,
            "eddy_requests",
            "gauge",
            "Requests in the store, by state (the queue depth of each stage).",
        );
        for (status, n) in &gauges.requests_by_state {
            let _ = writeln!(out, "eddy_requests{{state=\"{}\"}} {n}", status.as_str());
        }
        header(
            &mut out,
            "eddy_dead_letters",
            "gauge",
            "Entries in the dead-letter queue.",
        );
        let _ = writeln!(out, "eddy_dead_letters {}", gauges.dead_letters);
        header(
            &mut out,
            "eddy_websocket_open_sockets",
            "gauge",
            "Open WebSocket connections.",
        );
        let _ = writeln!(out, "eddy_websocket_open_sockets {}", gauges.open_sockets);
        header(
            &mut out,
            "eddy_commit_batch_size",
            "histogram",
            "Writers made durable by one group commit.",
        );
        gauges
            .commit_batch
            .render(&mut out, "eddy_commit_batch_size", "");
        header(
            &mut out,
            "eddy_commit_seconds",
            "histogram",
            "Time of one group commit (flush + fdatasync).",
        );
        gauges
            .commit_latency
            .render(&mut out, "eddy_commit_seconds", "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histograms are cumulative with a +Inf bucket, and label values are escaped.
    #[test]
    fn text_format() {
        let m = Metrics::default();
        m.accepted("a\"b");
        m.webhook_attempt("delivered", Some(Duration::from_millis(3)));
        m.webhook_attempt("failed", Some(Duration::from_secs(60)));
        let (batch, latency) = (Histogram::batch_size(), Histogram::latency());
        batch.observe(3.0);
        let text = m.render(&Gauges {
            requests_by_state: vec![(Status::Pending, 2)],
            dead_letters: 1,
            open_sockets: 0,
            commit_batch: &batch,
            commit_latency: &latency,
        });
        assert!(
            text.contains("eddy_requests_accepted_total{workflow=\"a\\\"b\"} 1"),
            "{text}"
        );
        assert!(text.contains("eddy_webhook_attempt_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("eddy_webhook_attempt_seconds_bucket{le=\"30\"} 1"));
        assert!(text.contains("eddy_webhook_attempt_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("eddy_webhook_attempt_seconds_count 2"));
        assert!(text.contains("eddy_requests{state=\"pending\"} 2"));
        assert!(text.contains("eddy_commit_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("eddy_commit_batch_size_bucket{le=\"4\"} 1"));
    }
}
