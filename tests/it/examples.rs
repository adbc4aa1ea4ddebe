//! The runnable backends in `examples/` (Express, FastAPI), each started as its own process
//! with its pinned dependencies against a real eddy, and driven through a request with the
//! official `phoenix` client as the page: the backend starts the request, verifies all
//! three signatures of the webhook (on data JavaScript reprints differently), enriches,
//! calls back, and relays the SDK's `reconnectWithBackend()` after a reload.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::compat::awkward;
use crate::support::tools::{npm_ci, pip_install, venv_python};
use crate::support::{Api, Browser, KEY, TestServer, WAIT, http_client, start};

#[derive(Clone, Copy)]
enum Example {
    Express,
    FastApi,
}

impl Example {
    fn dir(self) -> PathBuf {
        let name = match self {
            Example::Express => "express",
            Example::FastApi => "fastapi",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
    }

    /// Installs the example's pinned dependencies if they are missing.
    fn install(self) {
        match self {
            Example::Express => npm_ci(&self.dir()),
            Example::FastApi => {
                let python = venv_python(&self.dir());
                pip_install(&python, &self.dir().join("requirements.txt"), "fastapi");
            }
        }
    }

    fn command(self) -> Command {
        let (program, script) = match self {
            Example::Express => (PathBuf::from("node"), "server.js"),
            Example::FastApi => (self.dir().join(".venv/bin/python"), "app.py"),
        };
        let mut command = Command::new(program);
        command.arg(script).current_dir(self.dir());
        command
    }
}

/// An example backend running as a process, on a port of its choosing.
struct Backend {
    /// Killed on drop.
    _child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
}

impl Backend {
    /// Starts `example` against `eddy` the way its README says, with the request secret;
    /// waits for its `listening on` line.
    async fn start(example: Example, eddy: &TestServer, secret: &str) -> Backend {
        tokio::time::timeout(
            WAIT * 6,
            tokio::task::spawn_blocking(move || example.install()),
        )
        .await
        .expect("the example's dependencies install")
        .expect("installing does not panic");
        let mut child = example
            .command()
            .env("EDDY_URL", &eddy.base)
            .env("EDDY_API_KEY", KEY)
            .env("WEBHOOK_SECRET", secret)
            .env("WORKFLOW", "chat")
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the example starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let url = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("stdout is readable") {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return url.to_string();
                }
            }
            panic!("the example exited before listening");
        })
        .await
        .expect("the example listens within the wait");
        Backend { _child: child, url }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = http_client()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("the example answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// One request through `example`, from the page's `/chat` to the enriched `completed`,
/// then a reload that gets a fresh token through the backend.
async fn drive(example: Example, name: &str) {
    let server = start(|_| {}).await;
    let output = server.create_output("chat_output", awkward()).await;
    server
        .create_workflow(json!({
            "name": "chat", "provider": "openai", "model": "gpt-4o",
            "structured_output_id": output, "mode": "testing", "response_delay_ms": 200,
        }))
        .await;
    let (_, project) = server.get("/console/project").await;
    let secret = project["request_webhook_secret"].as_str().expect("secret");
    let backend = Backend::start(example, &server, secret).await;

    let (status, refused) = backend
        .post("/webhook", json!({"type": "task.ai_generated", "data": {}}))
        .await;
    assert_eq!(status, 401, "an unsigned webhook is refused: {refused}");

    let (status, ticket) = backend.post("/chat", json!({"message": "Hello"})).await;
    assert_eq!(status, 200, "{ticket}");
    let channel = ticket["channel_id"]
        .as_str()
        .expect("channel_id")
        .to_string();
    let topic = ticket["websocket_channel"]
        .as_str()
        .expect("websocket_channel");
    let mut browser = Browser::start().await;
    browser
        .join_ticket("page", "chat", &ticket, json!({}))
        .await;
    let completed = browser.response("chat", "completed").await;
    let data = &completed["data"];
    assert_eq!(data["enriched_by"], name, "{completed}");
    assert_eq!(data["reply"], awkward()["reply"]);
    assert_eq!(
        data["big"], 12345678901234567000u64,
        "as JavaScript reads it"
    );
    assert_eq!(data["10"], "ten");

    // The backend calls back before it answers the webhook, so the attempt may be
    // recorded after the request completed.
    let view = server
        .wait_for_view(&channel, "completed, its attempt recorded", |view| {
            view["status"] == "completed" && !Api::steps(view, "webhook_attempt").is_empty()
        })
        .await;
    let attempts = Api::steps(&view, "webhook_attempt");
    assert_eq!(attempts.len(), 1, "verified the first time: {attempts:?}");
    assert_eq!(attempts[0]["http_status"], 200);
    assert_eq!(view["event_name"], "webhook_received");

    // A reload: the SDK's reconnectWithBackend() posts {channel_id} to the backend.
    browser
        .send(json!({"op": "disconnect", "socket": "page"}))
        .await;
    browser.next(|e| e["ev"] == "disconnected").await;
    let (status, fresh) = backend
        .post("/api/v1/ai/reconnect", json!({"channel_id": channel}))
        .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["websocket_channel"], topic);
    browser
        .join_ticket("reloaded", "again", &fresh, json!({}))
        .await;
    assert_eq!(browser.response("again", "completed").await, completed);
    browser.finish().await;
}

/// `examples/express`: the whole flow with ModelRiver's SDK's shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_backend_end_to_end() {
    drive(Example::Express, "express").await;
}

/// `examples/fastapi`: the whole flow with ModelRiver's SDK's shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_backend_end_to_end() {
    drive(Example::FastApi, "fastapi").await;
}
