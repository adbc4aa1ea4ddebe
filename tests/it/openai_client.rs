//! The official OpenAI Python client (`openai`, pinned in `tests/python/requirements.txt`)
//! pointed at eddy's `/v1`, so "existing clients work unchanged" is checked by an existing
//! client. The pinned package is installed with pip when it is missing; the test fails,
//! never skips, when that is impossible.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::providers::{provider_server, register};
use crate::support::provider::{Answer, FakeProvider, Wire};
use crate::support::tools::pip_install;
use crate::support::{KEY, WAIT};

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// The official client makes a plain completion and a streamed one against a workflow
/// backed by an OpenAI-compatible provider, and gets a 400 `model_not_supported`
/// (`BadRequestError`) for an event-driven workflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_client_works_unchanged() {
    let server = provider_server().await;
    let fake = FakeProvider::start(Wire::OpenAi).await;
    fake.answer(Answer::Text("Hello there, human".into()));
    register(&server, "local", &fake, json!({})).await;
    server
        .create_workflow(json!({"name": "assistant", "provider": "local", "model": "llama"}))
        .await;
    server
        .create_workflow(json!({
            "name": "evented", "event_name": "content_ready", "provider": "testing", "model": "m"
        }))
        .await;

    let base_url = format!("{}/v1", server.base);
    let output = tokio::time::timeout(
        WAIT * 6,
        tokio::task::spawn_blocking(move || {
            let requirements = python_dir().join("requirements.txt");
            pip_install(Path::new("python3"), &requirements, "openai");
            Command::new("python3")
                .arg(python_dir().join("openai_client.py"))
                .args([&base_url, KEY, "assistant", "evented"])
                .output()
                .expect("python3 runs")
        }),
    )
    .await
    .expect("the client finishes")
    .expect("the client task does not panic");
    assert!(
        output.status.success(),
        "openai_client.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&output.stdout));
    });

    let plain = &seen["plain"];
    assert_eq!(plain["object"], "chat.completion", "{seen}");
    assert_eq!(plain["model"], "assistant");
    assert_eq!(plain["role"], "assistant");
    assert_eq!(plain["content"], "Hello there, human");
    assert_eq!(plain["finish_reason"], "stop");
    assert_eq!(plain["total_tokens"], 18);

    let stream = &seen["stream"];
    assert_eq!(
        stream["pieces"],
        json!(["Hello ", "there, ", "human"]),
        "{seen}"
    );
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["total_tokens"], 18);
    assert_eq!(stream["ids"], 1, "every chunk carries the completion's id");

    let evented = &seen["evented"];
    assert_eq!(evented["raised"], "BadRequestError", "{seen}");
    assert_eq!(evented["status"], 400);
    assert_eq!(evented["code"], "model_not_supported");
    assert_eq!(evented["type"], "invalid_request_error");

    let seen_by_provider = fake.wait_for(2).await;
    assert_eq!(seen_by_provider[1].body["stream"], true);
}
