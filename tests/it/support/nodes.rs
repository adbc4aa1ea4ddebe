//! Several eddy nodes as one service on real `nats-server`s: the harness of the cluster
//! tests. Each node is the real binary (`eddy serve --cluster …`) in its own process with
//! its own data directory and a port of its own kept across restarts, so a test can
//! `kill -9` one at any moment and start it again as an operator's service manager does.
//! A node's log lines (warnings and errors) are shown prefixed with its name.
//!
//! Helpers here read the same thing from every node (the catalog, a request, a listing)
//! and wait until the nodes agree: the cluster's promise is that it does not matter which
//! node a client talks to.

use serde_json::Value;
use tempfile::TempDir;

use super::nats::Nats;
use super::{Api, Eddy, Phoenix, eventually};

/// One node: its store directory, its fixed address, and its process while it runs.
pub struct Node {
    pub name: String,
    data: TempDir,
    listen: String,
    extra: Vec<String>,
    eddy: Option<Eddy>,
}

impl Node {
    /// `http://127.0.0.1:PORT`, the same across restarts.
    pub fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// A client of this node's API.
    pub fn api(&self) -> Api {
        Api {
            base: self.base(),
            key: super::KEY.to_string(),
            http: super::http_client(),
        }
    }

    pub fn running(&self) -> bool {
        self.eddy.is_some()
    }

    fn spawn(&mut self) {
        assert!(self.eddy.is_none(), "{} is already running", self.name);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let (eddy, lines) = Eddy::spawn_logged(self.data.path(), &self.listen, &extra);
        assert_eq!(eddy.base, self.base(), "{} keeps its port", self.name);
        let name = self.name.clone();
        eprintln!("[{name}] listening after {:?}", started.elapsed());
        std::thread::spawn(move || {
            for line in lines {
                eprintln!("[{name}] {line}");
            }
        });
        self.eddy = Some(eddy);
    }

    /// `kill -9`, reaped.
    fn kill_9(&mut self) {
        if let Some(mut eddy) = self.eddy.take() {
            eddy.kill_9();
        }
    }
}

/// eddy nodes sharing the NATS servers `nats`; every process is killed on drop, the
/// nodes first.
pub struct Nodes {
    nodes: Vec<Node>,
    pub nats: Nats,
    /// In front of the nodes when started by [`Nodes::start_balanced`].
    balancer: Option<Balancer>,
}

/// A TCP load balancer in front of the nodes, as an operator runs one: each connection
/// goes to the next node, or the one after if that one does not take it (a node killed
/// or restarting). The nodes' `--public-url` names it, so the callback and socket URLs
/// they hand out reach whichever node is up.
pub struct Balancer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    fn start(listener: tokio::net::TcpListener, targets: Vec<String>) -> Balancer {
        let base = format!(
            "http://{}",
            listener.local_addr().expect("balancer address")
        );
        let task = tokio::spawn(async move {
            let mut next = 0;
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    continue;
                };
                next += 1;
                let (targets, first) = (targets.clone(), next);
                tokio::spawn(async move {
                    for k in 0..targets.len() {
                        let target = &targets[(first + k) % targets.len()];
                        if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { base, task }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address free now, for a node to keep across its restarts.
fn free_listen() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").to_string()
}

/// `--cluster` and `--cluster-replicas` for the servers of `nats`.
pub fn cluster_args(nats: &Nats) -> Vec<String> {
    let settings = nats.settings();
    vec![
        "--cluster".into(),
        nats.urls().join(","),
        "--cluster-replicas".into(),
        settings.replicas.to_string(),
    ]
}

impl Nodes {
    /// `n` nodes on `nats`, started one after the other (the first creates the buckets and
    /// streams), each with the `extra` options of `eddy serve`.
    pub async fn start(nats: Nats, n: usize, extra: &[&str]) -> Nodes {
        Nodes::launch(nats, n, extra, None).await
    }

    /// [`Nodes::start`] behind a [`Balancer`] that their `--public-url` names.
    pub async fn start_balanced(nats: Nats, n: usize, extra: &[&str]) -> Nodes {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind balancer");
        Nodes::launch(nats, n, extra, Some(listener)).await
    }

    async fn launch(
        nats: Nats,
        n: usize,
        extra: &[&str],
        balancer: Option<tokio::net::TcpListener>,
    ) -> Nodes {
        let mut args = cluster_args(&nats);
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(listener) = &balancer {
            let address = listener.local_addr().expect("balancer address");
            args.extend(["--public-url".to_string(), format!("http://{address}")]);
        }
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                name: format!("eddy{}", i + 1),
                data: tempfile::tempdir().expect("temp dir"),
                listen: free_listen(),
                extra: args.clone(),
                eddy: None,
            })
            .collect();
        let targets = nodes.iter().map(|n| n.listen.clone()).collect();
        let balancer = balancer.map(|listener| Balancer::start(listener, targets));
        let mut nodes = Nodes {
            nodes,
            nats,
            balancer,
        };
        for i in 0..n {
            nodes.nodes[i].spawn();
        }
        nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// A client of node `i`.
    pub fn api(&self, i: usize) -> Api {
        self.nodes[i].api()
    }

    /// A client of the balancer in front of the nodes ([`Nodes::start_balanced`]).
    pub fn balanced(&self) -> Api {
        let balancer = self.balancer.as_ref().expect("nodes started balanced");
        Api {
            base: balancer.base.clone(),
            key: super::KEY.to_string(),
            http: super::http_client(),
        }
    }

    /// Clients of every running node.
    pub fn running(&self) -> Vec<Api> {
        self.nodes
            .iter()
            .filter(|n| n.running())
            .map(Node::api)
            .collect()
    }

    /// `kill -9` of node `i`.
    pub fn kill_9(&mut self, i: usize) {
        self.nodes[i].kill_9();
    }

    /// Starts node `i` again on its store and port (after [`Nodes::kill_9`]).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill_9();
        self.nodes[i].spawn();
    }

    /// Waits until every running node answers `GET path` with 200 and `seen(body)` holds.
    pub async fn wait_all(&self, what: &str, path: &str, seen: impl Fn(&Value) -> bool) {
        for api in self.running() {
            eventually(&format!("{what} on {}", api.base), async || {
                let (status, body) = api.get(path).await;
                if status == 200 && seen(&body) {
                    Ok(())
                } else {
                    Err((status, body))
                }
            })
            .await;
        }
    }

    /// Waits until every running node answers `GET path` with 200 and the same body once
    /// passed through `view` (which drops what may differ, such as a node's own URLs);
    /// returns that view.
    pub async fn same_everywhere(&self, path: &str, view: impl Fn(&Value) -> Value) -> Value {
        let apis = self.running();
        eventually(&format!("every node to show the same {path}"), async || {
            let mut views = Vec::new();
            for api in &apis {
                let (status, body) = api.get(path).await;
                if status != 200 {
                    return Err(vec![(api.base.clone(), status, body)]);
                }
                views.push((api.base.clone(), status, view(&body)));
            }
            if views.windows(2).all(|w| w[0].2 == w[1].2) {
                Ok(views.swap_remove(0).2)
            } else {
                Err(views)
            }
        })
        .await
    }

    /// The seed's setup made on node `on`: the headphones output, the event-driven workflow
    /// `content_generator` and a webhook endpoint at `url`; returns the endpoint's
    /// `(id, secret)` once every running node knows the workflow and the endpoint.
    pub async fn seed(&self, on: usize, url: &str) -> (String, String) {
        let api = self.api(on);
        api.event_workflow("content_generator", serde_json::json!({}))
            .await;
        let endpoint = api.register_webhook(url).await;
        self.wait_all(
            "the workflow",
            "/console/workflow/content_generator",
            |_| true,
        )
        .await;
        let id = endpoint.0.clone();
        self.wait_all("the webhook endpoint", "/console/webhooks", |list| {
            list["data"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["id"] == id.as_str()))
        })
        .await;
        endpoint
    }

    /// A Phoenix client on node `i`'s socket, joined on the ticket's channel with its
    /// token (the ticket may come from another node).
    pub async fn join_on(&self, i: usize, ticket: &Value) -> Phoenix {
        let mut ticket = ticket.clone();
        let url = format!(
            "{}/socket",
            self.nodes[i].base().replace("http://", "ws://")
        );
        ticket["websocket_url"] = Value::String(url);
        self.api(i).join(&ticket).await
    }
}
