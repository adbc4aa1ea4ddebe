//! `nats-server`s for the cluster mode of the benchmarks: one, or several joined in one
//! JetStream cluster, on free loopback ports with store directories under a temporary
//! directory; killed on drop. Their pids let a bench count the CPU the NATS side used,
//! their `/varz` the messages it handled.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Running `nats-server`s.
pub struct NatsServers {
    children: Vec<Child>,
    /// `nats://127.0.0.1:PORT` of each.
    pub urls: Vec<String>,
    /// Monitoring ports (`/varz`).
    monitors: Vec<u16>,
    _dir: tempfile::TempDir,
}

/// The `nats-server` binary: `$NATS_SERVER`, else Debian's.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return path.into();
    }
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nats-server is missing: run tests/setup or set NATS_SERVER")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

impl NatsServers {
    /// `n` servers (a cluster when `n > 1`), ready: every one answers
    /// `/healthz?js-server-only=true` with 200. A server that exits at start (a port taken
    /// meanwhile) makes the whole start begin again on new ports.
    pub async fn start(n: usize) -> NatsServers {
        for _ in 0..5 {
            if let Some(servers) = NatsServers::try_start(n).await {
                return servers;
            }
            eprintln!("a nats-server exited at start; starting again on new ports");
        }
        panic!("five attempts to start {n} nats-server(s) failed");
    }

    async fn try_start(n: usize) -> Option<NatsServers> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{}", p.1))
            .collect();
        let mut children = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let mut conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_file_store: 8GB\n}}\n",
                dir.path().join(format!("n{i}")).display()
            );
            if n > 1 {
                conf.push_str(&format!(
                    "cluster {{\n  name: eddy-bench\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, conf).expect("write nats config");
            let child = Command::new(binary())
                .arg("-c")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            children.push(child);
        }
        let urls = ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.0))
            .collect();
        let mut servers = NatsServers {
            children,
            urls,
            monitors: ports.iter().map(|p| p.2).collect(),
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..n {
            let url = format!(
                "http://127.0.0.1:{}/healthz?js-server-only=true",
                servers.monitors[i]
            );
            loop {
                if let Ok(r) = http.get(&url).send().await
                    && r.status() == 200
                {
                    break;
                }
                if let Ok(Some(_)) = servers.children[i].try_wait() {
                    return None;
                }
                assert!(Instant::now() < deadline, "nats-server not healthy: {url}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(servers)
    }

    /// Messages received so far by all servers together (clients' and routes': a write
    /// replicated to three servers counts once per server), from `/varz`.
    pub async fn messages_in(&self) -> u64 {
        let http = reqwest::Client::new();
        let mut total = 0;
        for port in &self.monitors {
            let varz: serde_json::Value = match http
                .get(format!("http://127.0.0.1:{port}/varz"))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            total += varz["in_msgs"].as_u64().unwrap_or(0);
        }
        total
    }

    /// The last sequence of every stream (name → seq) as server 0 sees it: each write,
    /// put, delete or publish takes one, so a difference counts the writes to a stream.
    pub async fn stream_seqs(&self) -> std::collections::BTreeMap<String, u64> {
        let url = format!(
            "http://127.0.0.1:{}/jsz?accounts=true&streams=true",
            self.monitors[0]
        );
        let jsz: serde_json::Value = match reqwest::get(url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let mut seqs = std::collections::BTreeMap::new();
        for account in jsz["account_details"].as_array().into_iter().flatten() {
            for stream in account["stream_detail"].as_array().into_iter().flatten() {
                if let Some(name) = stream["name"].as_str() {
                    let seq = stream["state"]["last_seq"].as_u64().unwrap_or(0);
                    seqs.insert(name.to_string(), seq);
                }
            }
        }
        seqs
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for NatsServers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
