//! Real `nats-server`s for the cluster tests: one, or three joined in a JetStream cluster,
//! on loopback ports of their own, each with its own store directory under a temporary
//! directory, killed (`kill -9`), frozen (`SIGSTOP`) and restarted on the same ports and
//! store, as an operator's servers are.
//!
//! Ports are taken below the kernel's ephemeral range (where no `bind(…:0)` or outgoing
//! connection of another test lands) and checked free; a server that still finds its port
//! taken makes the whole start begin again on new ports. Ready means every running server
//! answers `GET /healthz?js-server-only=true` with 200: JetStream is up and in contact with
//! its meta leader. (Without the option, 2.9.10 also waits for every replica to be current,
//! and after a restart an idle consumer's replica can stay "not current" for minutes.)
//! A stream may still be electing a leader then: tests poll their first operation. Waits
//! poll conditions; no fixed sleeps.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use super::WAIT;

/// Ports handed out in this process, never handed out twice.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The `nats-server` binary: `$NATS_SERVER`, else Debian's.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    for path in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(path).exists() {
            return PathBuf::from(path);
        }
    }
    panic!(
        "nats-server is missing: run tests/setup (installs Debian's nats-server) or set NATS_SERVER"
    );
}

/// A loopback port below the ephemeral range, free now and not handed out before.
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    loop {
        let port = rand::random_range(10_000..low.max(10_001));
        if taken.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        taken.insert(port);
        return port;
    }
}

struct Server {
    name: String,
    client: u16,
    route: u16,
    monitor: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// One or three nats-servers, killed when dropped.
pub struct Nats {
    dir: TempDir,
    servers: Vec<Server>,
}

impl Nats {
    /// One server with JetStream: replicas 1.
    pub async fn one() -> Nats {
        Nats::start(1).await
    }

    /// Three servers in one JetStream cluster: replicas 3.
    pub async fn three() -> Nats {
        Nats::start(3).await
    }

    async fn start(n: usize) -> Nats {
        for _ in 0..5 {
            let mut nats = Nats {
                servers: Vec::new(),
                dir: tempfile::tempdir().expect("temp dir"),
            };
            nats.configure(n);
            for i in 0..n {
                nats.spawn(i);
            }
            if nats.ready().await {
                return nats;
            }
            eprintln!("nats-servers did not start on their ports; starting again on new ones");
        }
        panic!("five attempts to start {n} nats-server(s) failed");
    }

    fn configure(&mut self, n: usize) {
        let mut servers: Vec<Server> = (1..=n)
            .map(|i| Server {
                name: format!("n{i}"),
                client: free_port(),
                route: free_port(),
                monitor: free_port(),
                conf: self.dir.path().join(format!("n{i}.conf")),
                log: self.dir.path().join(format!("n{i}.log")),
                child: None,
            })
            .collect();
        let routes: Vec<String> = servers
            .iter()
            .map(|s| format!("nats-route://127.0.0.1:{}", s.route))
            .collect();
        for s in &mut servers {
            let mut conf = format!(
                "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n",
                s.name,
                s.client,
                s.monitor,
                self.dir.path().join(&s.name).display()
            );
            if n > 1 {
                conf.push_str(&format!(
                    "cluster {{\n  name: eddy-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    s.route,
                    routes.join(", ")
                ));
            }
            std::fs::write(&s.conf, conf).expect("write nats config");
        }
        self.servers = servers;
    }

    fn spawn(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .expect("nats log file");
        let mut command = Command::new(binary());
        command
            .arg("-c")
            .arg(&s.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // A group of its own: when a process of the test binary's group exits, the
            // kernel may send SIGCONT (and SIGHUP, which makes nats-server reload) to the
            // stopped members of an orphaned group, and would thaw a frozen server.
            .process_group(0);
        // SAFETY: prctl(2) only, between fork and exec: the server dies with the thread
        // that started it, even if the test binary is killed without running Drop.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("nats-server starts");
        s.child = Some(child);
    }

    /// Waits until every running server is healthy; false if one exited (its port was
    /// taken meanwhile).
    async fn ready(&mut self) -> bool {
        eddy::egress::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = Instant::now() + WAIT.max(Duration::from_secs(60));
        for i in 0..self.servers.len() {
            loop {
                let s = &mut self.servers[i];
                let Some(child) = s.child.as_mut() else { break };
                if let Ok(Some(status)) = child.try_wait() {
                    s.child = None;
                    let name = s.name.clone();
                    eprintln!("nats-server {name} exited ({status}):\n{}", self.log(i));
                    return false;
                }
                let url = format!("http://127.0.0.1:{}/healthz?js-server-only=true", s.monitor);
                if let Ok(r) = http.get(&url).send().await
                    && r.status() == 200
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "nats-server {i} not healthy in time; its log:\n{}",
                    self.log(i)
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        true
    }

    /// Waits until every running server is healthy again (after a restart).
    pub async fn wait_ready(&mut self) {
        assert!(self.ready().await, "a nats-server exited");
    }

    /// `nats://127.0.0.1:…` of every server.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client)
    }

    /// The index of the server called `name` (`n1` …), as stream infos name leaders.
    pub fn index_of(&self, name: &str) -> usize {
        self.servers
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    /// Cluster settings for these servers: replicas 3 for three servers, 1 for one.
    pub fn settings(&self) -> eddy::cluster::Settings {
        let mut s = eddy::cluster::Settings::new(self.urls());
        s.replicas = if self.servers.len() >= 3 { 3 } else { 1 };
        s
    }

    /// `kill -9` of server `i`, reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again on its ports and store, and waits until all are healthy.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready().await;
    }

    /// `kill -9` of every server, then all started again.
    pub async fn restart_all(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        for i in 0..self.servers.len() {
            self.spawn(i);
        }
        self.wait_ready().await;
    }

    /// Freezes server `i` (`SIGSTOP`): its sockets stay open and say nothing.
    pub fn freeze(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// Lets a frozen server `i` go on (`SIGCONT`).
    pub fn thaw(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, signal: i32) {
        let child = self.servers[i].child.as_ref().expect("server is running");
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0, "signal {signal} to nats-server {i}");
    }

    /// Server `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.servers[i].log).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}
