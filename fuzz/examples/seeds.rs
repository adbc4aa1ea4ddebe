//! Writes the `store_record` seed corpus: real records (moved through their life by the
//! job rules, as the engine does), timeline steps and a dead letter, each encoded as the
//! store keeps it. Run from `fuzz/`: `cargo run --example seeds` (after a change to the
//! stored format, so the seeds decode again).

use std::fs;
use std::path::Path;

use bincode::Encode;
use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use eddy::job::{
    AiAttemptLog, AiResult, AttemptLog, AttemptResult, CallbackData, ChannelId, DeadLetter,
    Delivery, DeliveryOutcome, Event, ProjectId, Request, State, Step, WorkflowSnapshot,
};
use eddy::store::{FORMAT_V1, encode_request};

/// The store's codec, as in the `store_record` target.
const BINCODE: Configuration<LittleEndian, Varint, Limit<{ 64 << 20 }>> =
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<{ 64 << 20 }>();

const T0: u64 = 1_771_144_200_000;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/store_record");
    fs::create_dir_all(&dir).expect("seed directory");
    let write = |name: &str, bytes: Vec<u8>| {
        fs::write(dir.join(name), bytes).expect("seed written");
        println!("{name}");
    };

    let pending = accepted();
    write("record-pending.bin", encode_request(&pending).unwrap());

    let mut generated = pending.clone();
    generated
        .record_ai_success(ai_result(), vec![delivery("a"), delivery("b")], T0 + 300)
        .unwrap();
    generated.ai_attempts = vec![
        attempt(Some("upstream 503"), Some(503)),
        attempt(None, None),
    ];
    let fail = AttemptResult {
        delivered: false,
        status: Some(500),
        error: Some("HTTP 500".into()),
    };
    generated
        .record_attempt("msg_a", &fail, T0 + 400, |_| Some(T0 + 5_400))
        .unwrap();
    generated.due_ms = generated.next_due();
    write("record-generated.bin", encode_request(&generated).unwrap());

    let mut completed = generated.clone();
    let ok = AttemptResult {
        delivered: true,
        status: Some(200),
        error: None,
    };
    completed
        .record_attempt("msg_b", &ok, T0 + 500, |_| None)
        .unwrap();
    completed.settle(T0 + 500, 300_000).unwrap();
    completed.apply(Event::CallbackReceived, T0 + 900).unwrap();
    completed.callback = Some(CallbackData {
        data: r#"{"title":"ProSound X1","sku":"PSX1-BLK","price":129.99}"#.into(),
        task_id: Some("task_42".into()),
        metadata: Some(r#"{"reviewed":true}"#.into()),
        error: None,
        received_ms: T0 + 900,
    });
    completed.apply(Event::Pushed, T0 + 950).unwrap();
    completed.due_ms = completed.next_due();
    write("record-completed.bin", encode_request(&completed).unwrap());

    let mut exhausted = generated.clone();
    for id in ["msg_a", "msg_b"] {
        exhausted
            .record_attempt(id, &fail, T0 + 60_000, |_| None)
            .unwrap();
    }
    exhausted.settle(T0 + 60_000, 300_000).unwrap();
    exhausted.due_ms = exhausted.next_due();
    assert_eq!(
        exhausted.state,
        State::Failed(eddy::job::Failure::WebhookExhausted)
    );
    write("record-exhausted.bin", encode_request(&exhausted).unwrap());

    let steps = [
        Step::Received {
            workflow: "content_generator".into(),
        },
        Step::AiAttempt {
            provider: "openai".into(),
            model: "gpt-4o".into(),
            error: Some("upstream 503".into()),
            http_status: Some(503),
            duration_ms: 812,
            prompt_tokens: 0,
            completion_tokens: 0,
            request_body: Some(r#"{"model":"gpt-4o","messages":[]}"#.into()),
            response_body: Some(r#"{"error":{"message":"overloaded"}}"#.into()),
        },
        Step::WebhookAttempt {
            webhook_id: "msg_a".into(),
            endpoint_id: "wh_a".into(),
            attempt: 1,
            status: Some(500),
            error: Some("HTTP 500".into()),
            duration_ms: 31,
            response_excerpt: "internal error".into(),
        },
        Step::DeadLettered {
            webhook_id: "msg_a".into(),
            endpoint_id: "wh_a".into(),
            reason: "HTTP 500".into(),
        },
        Step::Redriven {
            webhook_id: "msg_a".into(),
            endpoint_id: "wh_a".into(),
        },
        Step::CallbackReceived {
            body: r#"{"data":{"ok":true},"task_id":"task_42"}"#.into(),
        },
        Step::CallbackError {
            error: "enrichment_failed".into(),
            message: "catalog unavailable".into(),
        },
        Step::CallbackTimeout { after_ms: 300_000 },
        Step::Pushed {
            status: "completed".into(),
            sockets: 2,
        },
        Step::Transition {
            state: State::Failed(eddy::job::Failure::CallbackTimeout),
        },
    ];
    for (i, step) in steps.iter().enumerate() {
        write(&format!("step-{i}.bin"), encode(&(T0 + i as u64, step)));
    }

    let entry = DeadLetter {
        request_id: exhausted.id,
        channel_id: exhausted.channel_id,
        project_id: exhausted.project_id,
        webhook_id: "msg_a".into(),
        endpoint_id: "wh_a".into(),
        url: "https://backend.example.com/webhooks/a".into(),
        payload: r#"{"type":"task.ai_generated","channel_id":"…","ai_response":{"data":{}}}"#
            .into(),
        reason: "HTTP 500".into(),
        attempts: vec![AttemptLog {
            at_ms: T0 + 400,
            status: Some(500),
            error: Some("HTTP 500".into()),
            duration_ms: 31,
            response_excerpt: "internal error".into(),
        }],
        dead_ms: T0 + 60_000,
    };
    write("dead-letter.bin", encode(&entry));
}

fn encode<T: Encode>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    bincode::encode_into_std_write(value, &mut out, BINCODE).unwrap();
    out
}

/// A request as `accept` stores it.
fn accepted() -> Request {
    let mut record = Request::pending(
        (
            42,
            ChannelId::from_bytes(
                *b"\x5e\x6f\x7a\x8b\x9c\x0d\x4e\x1f\x8a\x2b\x3c\x4d\x5e\x6f\x7a\x8b",
            ),
        ),
        ProjectId::from_bytes(*b"\x1b\x0d\x4c\x3e\x6c\x1f\x4b\x8a\x9d\x3e\x2f\x6a\x7b\x8c\x9d\x0e"),
        WorkflowSnapshot {
            name: "content_generator".into(),
            event_name: Some("content_ready".into()),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            testing: false,
            response_delay_ms: 0,
            callback_timeout_ms: Some(300_000),
            structured_output_id: Some("product_description".into()),
            schema: Some(r#"{"type":"object","properties":{"title":{"type":"string"}}}"#.into()),
            sample_data: Some(r#"{"title":"Sample"}"#.into()),
            system_prompt: Some("You write product copy.".into()),
            fallbacks: vec![("anthropic".into(), "claude-sonnet-4".into())],
        },
        r#"[{"role":"user","content":"Generate a product description for wireless headphones"}]"#.into(),
        r#"{"product_id":"prod_123","category":"electronics"}"#.into(),
        None,
        false,
        T0,
    );
    record.due_ms = record.next_due();
    record
}

fn ai_result() -> AiResult {
    AiResult {
        data: r#"{"title":"ProSound X1 Wireless Headphones","features":["Active noise cancellation","40-hour battery"]}"#.into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        prompt_tokens: 31,
        completion_tokens: 88,
        duration_ms: 1_240,
        generated_ms: T0 + 300,
    }
}

fn attempt(error: Option<&str>, http_status: Option<u16>) -> AiAttemptLog {
    AiAttemptLog {
        provider: "openai".into(),
        model: "gpt-4o".into(),
        error: error.map(str::to_string),
        http_status,
        at_ms: T0 + 10,
        duration_ms: 600,
        prompt_tokens: if error.is_some() { 0 } else { 31 },
        completion_tokens: if error.is_some() { 0 } else { 88 },
    }
}

fn delivery(name: &str) -> Delivery {
    Delivery {
        webhook_id: format!("msg_{name}"),
        endpoint_id: format!("wh_{name}"),
        url: format!("https://backend.example.com/webhooks/{name}"),
        attempts: 0,
        next_ms: Some(T0 + 300),
        outcome: DeliveryOutcome::Pending,
        last_status: None,
        last_error: None,
    }
}
