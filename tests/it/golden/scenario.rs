//! What the golden store holds, built field by field: a request in every state (every
//! failure among them), a timeline with every kind of step, dead letters, one entry of
//! every catalog type, an idempotency claim, and big texts that live in chunks.
//!
//! The values are written out as literals rather than moved through the job rules, so
//! that the list of fields is here to read and a new stored field cannot go unnoticed: it
//! fails to compile until it is given a value (and a golden file to match). The typed ids
//! are made in [`project`] and [`channel`] alone.

use eddy::catalog::{
    ApiKey, Endpoint, Project, ProviderCredential, ProviderKind, StructuredOutput, Workflow,
};
use eddy::job::{
    AiAttemptLog, AiResult, AttemptLog, CallbackData, DeadLetter, Delivery, DeliveryOutcome,
    Failure, Request, State, Step, WorkflowSnapshot,
};

/// When the scenario starts: 2026-02-15T08:30:00Z.
pub const T0: u64 = 1_771_144_200_000;

/// The one project every entry belongs to.
const PROJECT: [u8; 16] = *b"\x0f\x8f\xad\x5b\xd9\xcb\x46\x9f\xa1\x65\x70\x86\x77\x28\x95\x0e";

/// `meta/id_key` of the golden store: the key of every public id it hands out.
pub const ID_KEY: [u8; 32] = *b"golden store: the id permutation";

/// `meta/ws_token_key`: the key socket tokens are signed with.
pub const WS_TOKEN_KEY: [u8; 32] = *b"golden store: socket tokens key!";

/// The API key whose hash the golden store holds; it must still authenticate.
pub const API_KEY: &str = "mr_live_g0ldenK3yg0ldenK3yg0ldenK3yg0ldenK3y";

/// The `Idempotency-Key` request 0 was accepted with.
pub const IDEMPOTENCY_KEY: &str = "order-42";

/// How many requests the scenario stores; their ids are `0..REQUESTS`.
pub const REQUESTS: usize = 9;

pub use eddy::job::{ChannelId, ProjectId};

/// The project id of every entry.
pub fn project() -> ProjectId {
    ProjectId::from_bytes(PROJECT)
}

/// A channel id from its UUID text.
pub fn channel(text: &str) -> ChannelId {
    text.parse().expect("a channel id is a UUID")
}

/// A channel id's UUID text.
pub fn channel_text(channel: &ChannelId) -> String {
    channel.to_string()
}

/// The state request `n` is in: each state in turn, then failed for each reason.
pub fn state(n: usize) -> State {
    use Failure::{AiFailed, CallbackError, CallbackTimeout, WebhookExhausted};
    use State::{Callback, Completed, Delivered, Generated, Pending};
    match n {
        0..5 => [Pending, Generated, Delivered, Callback, Completed][n],
        _ => State::Failed([AiFailed, WebhookExhausted, CallbackError, CallbackTimeout][n - 5]),
    }
}

/// JSON text of `len` bytes: big enough to live in `bodies` past 4 KiB.
fn big_json(field: &str, len: usize) -> String {
    let head = format!(r#"{{"{field}":""#);
    let filler = "golden ".repeat(len / 7 + 1);
    format!("{head}{}\"}}", &filler[..len - head.len() - 2])
}

fn snapshot(event_driven: bool) -> WorkflowSnapshot {
    WorkflowSnapshot {
        name: if event_driven {
            "content_generator"
        } else {
            "summarizer"
        }
        .into(),
        event_name: event_driven.then(|| "content_ready".into()),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        testing: !event_driven,
        response_delay_ms: if event_driven { 0 } else { 200 },
        callback_timeout_ms: event_driven.then_some(300_000),
        structured_output_id: Some("so_product".into()),
        schema: Some(r#"{"type":"object","properties":{"title":{"type":"string"}}}"#.into()),
        sample_data: Some(r#"{"title":"Sample"}"#.into()),
        system_prompt: event_driven.then(|| "You write product copy.".into()),
        fallbacks: vec![("anthropic".into(), "claude-sonnet-4".into())],
    }
}

fn ai_result(data: String) -> AiResult {
    AiResult {
        data,
        provider: "openai".into(),
        model: "gpt-4o".into(),
        prompt_tokens: 31,
        completion_tokens: 88,
        duration_ms: 1_240,
        generated_ms: T0 + 300,
    }
}

fn ai_attempt(error: Option<&str>, http_status: Option<u16>) -> AiAttemptLog {
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

fn delivery(name: &str, attempts: u32, outcome: DeliveryOutcome) -> Delivery {
    let pending = outcome == DeliveryOutcome::Pending;
    Delivery {
        webhook_id: format!("msg_{name}"),
        endpoint_id: format!("wh_{name}"),
        url: format!("https://backend.example.com/webhooks/{name}"),
        attempts,
        next_ms: pending.then_some(T0 + 5_400),
        outcome,
        last_status: (attempts > 0).then_some(if pending { 500 } else { 200 }),
        last_error: (attempts > 0 && pending).then(|| "HTTP 500".into()),
    }
}

/// The records, by scenario index, with the ids and channel ids the store gave them.
pub fn requests(ids: &[(u64, ChannelId)]) -> Vec<Request> {
    let accepted = |n: usize, event_driven: bool| Request {
        id: ids[n].0,
        channel_id: ids[n].1,
        project_id: project(),
        workflow: snapshot(event_driven),
        messages: r#"[{"role":"user","content":"Generate a product description"}]"#.into(),
        customer_data: r#"{"product_id":"prod_123","category":"electronics"}"#.into(),
        webhook_url: None,
        test_mode: false,
        state: state(n),
        created_ms: T0 + n as u64,
        updated_ms: T0 + 1_000,
        due_ms: None,
        ai: Some(ai_result(
            r#"{"title":"ProSound X1 Wireless Headphones"}"#.into(),
        )),
        error_message: None,
        failed_ms: None,
        deliveries: vec![delivery(
            "a",
            1,
            DeliveryOutcome::Succeeded { at_ms: T0 + 400 },
        )],
        callback: None,
        callback_deadline_ms: None,
        ai_attempts: vec![ai_attempt(None, None)],
    };
    let callback = |data: String, error: Option<(String, String)>| CallbackData {
        data,
        task_id: Some("task_42".into()),
        metadata: Some(r#"{"reviewed":true}"#.into()),
        error,
        received_ms: T0 + 900,
    };
    let mut records = vec![
        Request {
            messages: big_json("messages", 7_000),
            ai: None,
            deliveries: vec![],
            ai_attempts: vec![],
            updated_ms: T0,
            ..accepted(0, true)
        },
        Request {
            deliveries: vec![
                delivery("a", 1, DeliveryOutcome::Pending),
                delivery("b", 0, DeliveryOutcome::Pending),
            ],
            ai_attempts: vec![
                ai_attempt(Some("upstream 503"), Some(503)),
                ai_attempt(None, None),
            ],
            ..accepted(1, true)
        },
        Request {
            ai: Some(ai_result(big_json("title", 5_000))),
            callback_deadline_ms: Some(T0 + 301_000),
            ..accepted(2, true)
        },
        Request {
            callback: Some(callback(big_json("sku", 5_000), None)),
            ..accepted(3, true)
        },
        Request {
            webhook_url: Some("https://backend.example.com/per-request".into()),
            test_mode: true,
            ..accepted(4, false)
        },
        Request {
            ai: None,
            error_message: Some("every provider failed: upstream 503".into()),
            failed_ms: Some(T0 + 1_000),
            deliveries: vec![],
            ai_attempts: vec![ai_attempt(Some("upstream 503"), Some(503))],
            ..accepted(5, true)
        },
        Request {
            error_message: Some("every webhook delivery failed".into()),
            failed_ms: Some(T0 + 61_000),
            deliveries: vec![
                delivery("a", 3, DeliveryOutcome::DeadLettered { at_ms: T0 + 60_000 }),
                delivery("b", 3, DeliveryOutcome::DeadLettered { at_ms: T0 + 61_000 }),
            ],
            ..accepted(6, true)
        },
        Request {
            callback: Some(callback(
                "null".into(),
                Some(("enrichment_failed".into(), "catalog unavailable".into())),
            )),
            error_message: Some("catalog unavailable".into()),
            failed_ms: Some(T0 + 900),
            ..accepted(7, true)
        },
        Request {
            error_message: Some("no callback within 300000 ms".into()),
            failed_ms: Some(T0 + 301_000),
            ..accepted(8, true)
        },
    ];
    for record in &mut records {
        record.due_ms = record.next_due();
    }
    records
}

/// The timeline of request `n` as it is appended: a batch is one write (one merge).
pub fn timeline(n: usize) -> Vec<Vec<(u64, Step)>> {
    let at = |k: u64| T0 + 100 * k;
    let transition = |k: u64| (at(k), Step::Transition { state: state(n) });
    let attempt = |k: u64, status: u16| {
        let failed = status >= 300;
        let step = Step::WebhookAttempt {
            webhook_id: "msg_a".into(),
            endpoint_id: "wh_a".into(),
            attempt: k as u32,
            status: Some(status),
            error: failed.then(|| format!("HTTP {status}")),
            duration_ms: 31,
            response_excerpt: if failed { "internal error" } else { "ok" }.into(),
        };
        (at(k), step)
    };
    let ai = |error: Option<&str>| Step::AiAttempt {
        provider: "openai".into(),
        model: "gpt-4o".into(),
        error: error.map(str::to_string),
        http_status: error.map(|_| 503),
        duration_ms: 812,
        prompt_tokens: if error.is_some() { 0 } else { 31 },
        completion_tokens: if error.is_some() { 0 } else { 88 },
        request_body: Some(r#"{"model":"gpt-4o","messages":[]}"#.into()),
        response_body: Some(match error {
            Some(_) => r#"{"error":{"message":"overloaded"}}"#.into(),
            None => r#"{"choices":[]}"#.into(),
        }),
    };
    let pushed = |k: u64, status: &str| {
        let step = Step::Pushed {
            status: status.into(),
            sockets: 2,
        };
        (at(k), step)
    };
    match n {
        // The engine never stores `Received` (a view adds it), but its index comes first
        // in `Step`, so it is pinned with the rest.
        0 => vec![vec![(
            T0,
            Step::Received {
                workflow: "content_generator".into(),
            },
        )]],
        1 => vec![
            vec![
                (at(1), ai(Some("upstream 503"))),
                (at(2), ai(None)),
                transition(2),
            ],
            vec![attempt(3, 500)],
        ],
        2 => vec![vec![attempt(3, 200), transition(4)]],
        3 => vec![vec![
            (
                at(5),
                Step::CallbackReceived {
                    body: r#"{"data":{"ok":true},"task_id":"task_42"}"#.into(),
                },
            ),
            transition(5),
        ]],
        4 => vec![vec![attempt(3, 200), pushed(4, "success"), transition(4)]],
        5 => vec![
            vec![(at(1), ai(Some("upstream 503"))), transition(2)],
            vec![pushed(3, "error")],
        ],
        6 => vec![
            vec![attempt(3, 500)],
            vec![
                (
                    at(4),
                    Step::DeadLettered {
                        webhook_id: "msg_a".into(),
                        endpoint_id: "wh_a".into(),
                        reason: "HTTP 500".into(),
                    },
                ),
                transition(4),
            ],
            vec![(
                at(5),
                Step::Redriven {
                    webhook_id: "msg_a".into(),
                    endpoint_id: "wh_a".into(),
                },
            )],
        ],
        7 => vec![vec![
            (
                at(5),
                Step::CallbackError {
                    error: "enrichment_failed".into(),
                    message: "catalog unavailable".into(),
                },
            ),
            transition(5),
        ]],
        8 => vec![vec![
            (at(6), Step::CallbackTimeout { after_ms: 300_000 }),
            transition(6),
        ]],
        _ => vec![],
    }
}

/// The dead letters of request 6, oldest first.
pub fn dead_letters(record: &Request) -> Vec<DeadLetter> {
    ["a", "b"]
        .into_iter()
        .zip([T0 + 60_000, T0 + 61_000])
        .map(|(name, dead_ms)| DeadLetter {
            request_id: record.id,
            channel_id: record.channel_id,
            project_id: record.project_id,
            webhook_id: format!("msg_{name}"),
            endpoint_id: format!("wh_{name}"),
            url: format!("https://backend.example.com/webhooks/{name}"),
            payload: r#"{"type":"task.ai_generated","ai_response":{"data":{}}}"#.into(),
            reason: "HTTP 500".into(),
            attempts: vec![AttemptLog {
                at_ms: dead_ms - 1_000,
                status: Some(500),
                error: Some("HTTP 500".into()),
                duration_ms: 31,
                response_excerpt: "internal error".into(),
            }],
            dead_ms,
        })
        .collect()
}

/// Every catalog type, in the order the catalog tree keeps each kind (by name).
pub struct CatalogEntries {
    pub project: Project,
    pub keys: Vec<ApiKey>,
    pub workflows: Vec<Workflow>,
    pub outputs: Vec<StructuredOutput>,
    pub endpoints: Vec<Endpoint>,
    pub providers: Vec<ProviderCredential>,
}

pub fn catalog() -> CatalogEntries {
    let key = |id: &str, key: &str, name: Option<&str>, expires_ms: Option<u64>| ApiKey {
        id: id.into(),
        project: project(),
        name: name.map(str::to_string),
        hash: eddy::secret::hash_key(key),
        hint: eddy::secret::key_hint(key),
        created_ms: T0,
        expires_ms,
    };
    let mut keys = vec![
        key("key_bootstrap", API_KEY, Some("bootstrap"), None),
        key(
            "key_ci",
            "mr_live_shortlivedshortlivedshortlived0001",
            None,
            Some(T0 + 86_400_000),
        ),
    ];
    keys.sort_by_key(|k| k.hash);
    let workflow = |snapshot: WorkflowSnapshot, description: Option<&str>| Workflow {
        project: project(),
        name: snapshot.name,
        event_name: snapshot.event_name,
        provider: snapshot.provider,
        model: snapshot.model,
        structured_output_id: snapshot.structured_output_id,
        fallbacks: snapshot.fallbacks,
        system_prompt: snapshot.system_prompt,
        testing: snapshot.testing,
        response_delay_ms: snapshot.response_delay_ms,
        callback_timeout_ms: snapshot.callback_timeout_ms,
        cache_fields: vec!["product_id".into()],
        description: description.map(str::to_string),
        created_ms: T0,
        updated_ms: T0 + 5,
    };
    let endpoint = |id: &str, rotated: bool| Endpoint {
        id: id.into(),
        project: project(),
        url: format!("https://backend.example.com/webhooks/{id}"),
        description: rotated.then(|| "rotated, then disabled".into()),
        events: if rotated {
            vec!["content_ready".into()]
        } else {
            vec![]
        },
        secret: format!("whsec_{id}_current"),
        previous_secret: rotated.then(|| (format!("whsec_{id}_previous"), T0 + 86_400_000)),
        created_ms: T0,
        disabled: rotated.then(|| ("410 Gone".into(), T0 + 60_000)),
        failing_since_ms: rotated.then_some(T0 + 1_000),
    };
    let provider = |name: &str, kind: ProviderKind, api_key: Option<&str>| ProviderCredential {
        project: project(),
        name: name.into(),
        kind,
        api_key: api_key.map(str::to_string),
        base_url: match kind {
            ProviderKind::OpenAi => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com/v1",
        }
        .into(),
        timeout_ms: api_key.map(|_| 30_000),
        created_ms: T0,
        updated_ms: T0 + 5,
    };
    CatalogEntries {
        project: Project {
            id: project(),
            name: "golden".into(),
            created_ms: T0,
            signing_secret: "whsec_golden_project".into(),
        },
        keys,
        workflows: vec![
            workflow(snapshot(true), Some("the seed's event-driven workflow")),
            workflow(snapshot(false), None),
        ],
        outputs: vec![StructuredOutput {
            id: "so_product".into(),
            project: project(),
            name: "product_description".into(),
            schema: r#"{"type":"object","properties":{"title":{"type":"string"}}}"#.into(),
            sample_data: Some(r#"{"title":"Sample"}"#.into()),
            description: Some("a product page".into()),
            created_ms: T0,
        }],
        endpoints: vec![endpoint("wh_a", false), endpoint("wh_b", true)],
        providers: vec![
            provider("anthropic", ProviderKind::Anthropic, None),
            provider(
                "openai",
                ProviderKind::OpenAi,
                Some("sk-golden-0123456789abcdef"),
            ),
        ],
    }
}
