//! The official `phoenix` JS client under Node, as a browser stand-in.
//!
//! [`Browser::start`] runs `node tests/js/browser.mjs`, which creates phoenix sockets and
//! channels on command (JSON lines on its stdin) and reports what they see (JSON lines on
//! its stdout). The test decides what happens on the server and what the page does; the
//! reconnects, rejoins, heartbeats and ref matching are phoenix's own.
//!
//! The first use installs `tests/js/node_modules` with `npm ci` when it is missing or
//! does not hold the pinned versions, so a plain `cargo test` works on a fresh machine
//! that has Node and npm; without them the tests fail, saying so.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::WAIT;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// The version `tests/js/package.json` pins for `name`, and the installed one.
fn versions(dir: &Path, name: &str) -> (String, Option<String>) {
    let read = |path: PathBuf| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    let manifest = read(dir.join("package.json")).expect("tests/js/package.json is JSON");
    let pinned = manifest["dependencies"][name]
        .as_str()
        .unwrap_or_else(|| panic!("tests/js/package.json pins {name}"))
        .to_string();
    let installed = read(dir.join("node_modules").join(name).join("package.json"))
        .and_then(|p| p["version"].as_str().map(str::to_string));
    (pinned, installed)
}

fn run(program: &str, args: &[&str], dir: &Path) -> Result<String, String> {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Makes sure Node runs and `tests/js/node_modules` holds the pinned packages, running
/// `npm ci` once per test run if not. Panics with what is missing.
fn ensure_node_modules() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let dir = js_dir();
        let node = run("node", &["--version"], &dir)
            .map_err(|e| format!("the browser tests need Node.js 18 or newer on PATH ({e})"))?;
        let stale = ["phoenix", "ws"].iter().any(|name| {
            let (pinned, installed) = versions(&dir, name);
            installed.as_deref() != Some(pinned.as_str())
        });
        if stale {
            eprintln!("tests/js: installing the pinned phoenix client with npm ci (node {node})");
            run("npm", &["ci", "--no-audit", "--no-fund"], &dir).map_err(|e| {
                format!("the browser tests need npm to install tests/js/node_modules ({e})")
            })?;
        }
        Ok(())
    });
    if let Err(e) = ready {
        panic!("{e}");
    }
}

/// One Node process running phoenix sockets.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every event read so far, in order.
    events: Vec<Value>,
    /// Events read but not yet returned by a wait, in order.
    pending: VecDeque<Value>,
}

impl Browser {
    /// Starts Node with the driver and waits until it is ready.
    pub async fn start() -> Browser {
        ensure_node_modules();
        let dir = js_dir();
        let mut child = Command::new("node")
            .arg(dir.join("browser.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut browser = Browser {
            child,
            stdin,
            lines,
            events: Vec::new(),
            pending: VecDeque::new(),
        };
        let ready = browser.next(|e| e["ev"] == "ready").await;
        let (pinned, _) = versions(&js_dir(), "phoenix");
        assert_eq!(ready["phoenix"], pinned.as_str(), "the pinned phoenix runs");
        browser
    }

    /// Sends one command.
    pub async fn send(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("node reads its commands");
    }

    /// A phoenix `Socket` with id `id` on the ticket's `websocket_url` and token, the way
    /// ModelRiver's SDK builds it, with `opts` (e.g. `heartbeatIntervalMs`); connected.
    pub async fn socket(&mut self, id: &str, ticket: &Value, opts: Value) {
        self.send(json!({
            "op": "socket", "id": id, "trace": true,
            "url": ticket["websocket_url"], "params": {"token": ticket["ws_token"]},
            "opts": opts,
        }))
        .await;
        self.send(json!({"op": "connect", "socket": id})).await;
    }

    /// What a page does with a ticket: a phoenix socket `socket` on the ticket's URL and
    /// token (see [`Browser::socket`]), joined on the ticket's topic as channel `channel`.
    /// Asserts that the join succeeded; returns the join event.
    pub async fn join_ticket(
        &mut self,
        socket: &str,
        channel: &str,
        ticket: &Value,
        opts: Value,
    ) -> Value {
        self.socket(socket, ticket, opts).await;
        let topic = super::text(ticket, "websocket_channel");
        let join = self.join(socket, channel, topic).await;
        assert_eq!(join["status"], "ok", "join of {topic}: {join}");
        join
    }

    /// Joins `topic` on socket `socket` as channel `channel`; returns the join event.
    pub async fn join(&mut self, socket: &str, channel: &str, topic: &str) -> Value {
        self.send(json!({"op": "join", "socket": socket, "channel": channel, "topic": topic}))
            .await;
        self.next(|e| e["ev"] == "join" && e["channel"] == channel)
            .await
    }

    /// The next event of kind `ev` for channel `channel`.
    pub async fn next_on(&mut self, ev: &str, channel: &str) -> Value {
        self.next(|e| e["ev"] == ev && e["channel"] == channel)
            .await
    }

    /// The next `response` push on `channel` whose status is `status`.
    pub async fn response(&mut self, channel: &str, status: &str) -> Value {
        self.next(|e| {
            e["ev"] == "response" && e["channel"] == channel && e["payload"]["status"] == status
        })
        .await["payload"]
            .clone()
    }

    /// The earliest event not yet returned by a wait that matches `matches`; panics after
    /// the wait, or when Node reports a fatal error or exits.
    pub async fn next(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.pending.iter().position(&matches) {
                return self.pending.remove(i).expect("position is in range");
            }
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no such event within {WAIT:?}; saw {:#?}", self.events))
                .expect("node's stdout is readable")
                .unwrap_or_else(|| panic!("node exited; saw {:#?}", self.events));
            self.record(&line);
        }
    }

    fn record(&mut self, line: &str) {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("node printed a non-JSON line ({e}): {line}"));
        assert_ne!(event["ev"], "fatal", "node failed: {}", event["message"]);
        self.events.push(event.clone());
        self.pending.push_back(event);
    }

    /// Every event read so far.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Asks Node to disconnect everything and exit; asserts it exits with 0.
    pub async fn finish(mut self) -> Vec<Value> {
        self.send(json!({"op": "exit"})).await;
        while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, self.lines.next_line()).await {
            self.record(&line);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("node exits within the wait")
            .expect("node's exit status");
        assert!(status.success(), "node exited with {status}");
        self.events
    }
}
