//! The `/v1` routes. The event-driven flow is here: `POST /v1/ai/async` (accept),
//! `POST /v1/callback/{channel_id}` (the backend's callback), `POST /v1/ai/reconnect` (a
//! new socket token); the synchronous APIs are in [`sync`]. Every route takes `POST` and
//! an API key, and counts against the project's rate limit.

pub mod sync;

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::app::App;
use super::error::{Answer, ApiError};
use super::input::{Guard, check_messages, check_name, check_url, idempotency_key, parse_channel};
use super::json::{parse, read_body, read_json};
use super::response::ok;
use crate::catalog::Project;
use crate::engine::{AcceptInput, CallbackInput, Ticket};

pub async fn route(app: &App, request: Request<Incoming>, rest: &[&str]) -> Answer {
    let method = request.method();
    match rest {
        ["ai", "async"]
        | ["ai"]
        | ["chat", "completions"]
        | ["ai", "reconnect"]
        | ["callback", _]
            if method != Method::POST =>
        {
            Err(ApiError::method_not_allowed())
        }
        ["ai", "async"] => accept(app, app.admit(&request)?.project, request).await,
        ["ai"] => sync::ai(app, app.admit(&request)?.project, request).await,
        ["chat", "completions"] => {
            sync::chat_completions(app, app.admit(&request)?.project, request).await
        }
        ["ai", "reconnect"] => reconnect(app, app.admit(&request)?.project, request).await,
        ["callback", channel] => {
            let project = app.admit(&request)?.project;
            callback(app, &project, request, channel).await
        }
        _ => Err(ApiError::no_route(
            method,
            &format!("/v1/{}", rest.join("/")),
        )),
    }
}

#[derive(Deserialize)]
struct AsyncBody {
    workflow: String,
    messages: Vec<Map<String, Value>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    test_mode: Option<bool>,
    /// Makes the request event-driven when its workflow has no `event_name`.
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    delivery_method: Option<String>,
}

/// The `delivery_method` values ModelRiver documents ("you receive the result via WebSocket
/// or Webhook"). eddy always does both, so the value only has to be one of them.
const DELIVERY_METHODS: [&str; 2] = ["websocket", "webhook"];

/// Parses and validates a `POST /v1/ai/async` body (`guarded`: apply the SSRF guard to
/// `webhook_url`). Public for the fuzz target; it never panics on any input.
pub fn parse_async(bytes: &[u8], guarded: bool) -> Result<AcceptInput, ApiError> {
    validate_async(parse(bytes)?, guarded)
}

fn validate_async(body: AsyncBody, guarded: bool) -> Result<AcceptInput, ApiError> {
    if body.workflow.trim().is_empty() {
        return Err(ApiError::invalid("workflow: must not be empty"));
    }
    check_messages(&body.messages)?;
    if let Some(url) = &body.webhook_url {
        let guard = if guarded { Guard::Webhooks } else { Guard::Off };
        check_url("webhook_url", url, guard)?;
    }
    let events = body.events.unwrap_or_default();
    for (i, event) in events.iter().enumerate() {
        check_name(&format!("events[{i}]"), event)?;
    }
    if let Some(method) = &body.delivery_method
        && !DELIVERY_METHODS.contains(&method.as_str())
    {
        return Err(ApiError::invalid(format!(
            "delivery_method: '{method}' is not one of {}",
            DELIVERY_METHODS.join(", ")
        )));
    }
    Ok(AcceptInput {
        workflow: body.workflow,
        messages: Value::Array(body.messages.into_iter().map(Value::Object).collect()),
        metadata: body.metadata.unwrap_or_default(),
        webhook_url: body.webhook_url,
        test_mode: body.test_mode.unwrap_or(false),
        events,
    })
}

fn ticket_json(ticket: &Ticket) -> Value {
    let customer_data: Value = serde_json::from_str(&ticket.customer_data).unwrap_or(json!({}));
    json!({
        "message": "success",
        "status": "pending",
        "channel_id": ticket.channel_id,
        "project_id": ticket.project_id,
        "ws_token": ticket.ws_token,
        "websocket_url": ticket.websocket_url,
        "websocket_channel": ticket.websocket_channel,
        "customer_data": customer_data,
    })
}

async fn accept(app: &App, project: Arc<Project>, request: Request<Incoming>) -> Answer {
    let idempotency_key = idempotency_key(&request)?;
    let config = app.engine.config();
    let bytes = read_body(request, config).await?;
    let input = parse_async(&bytes, !config.allow_private_webhooks)?;
    let ticket = app
        .engine
        .accept(&project, input, idempotency_key.as_deref())
        .await?;
    Ok(ok(&ticket_json(&ticket)))
}

#[derive(Deserialize)]
struct CallbackBody {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

async fn callback(
    app: &App,
    project: &Project,
    request: Request<Incoming>,
    channel: &str,
) -> Answer {
    let channel_id = parse_channel(channel)?;
    let bytes = read_body(request, app.engine.config()).await?;
    let body: CallbackBody = parse(&bytes)?;
    let input = match (body.error, body.data) {
        (Some(error), _) => CallbackInput::Error {
            error,
            message: body.message.unwrap_or_default(),
        },
        (None, Some(data)) => {
            if let Some(m) = &body.metadata
                && !m.is_object()
            {
                return Err(ApiError::invalid("metadata: must be an object"));
            }
            CallbackInput::Data {
                data: data.to_string(),
                task_id: body.task_id,
                metadata: body.metadata.map(|m| m.to_string()),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "data: is required (or error and message for an error callback)",
            ));
        }
    };
    app.engine.callback(&project.id, &channel_id, input).await?;
    Ok(ok(&json!({ "status": "accepted", "channel_id": channel })))
}

#[derive(Deserialize)]
struct ReconnectBody {
    channel_id: String,
}

async fn reconnect(app: &App, project: Arc<Project>, request: Request<Incoming>) -> Answer {
    let body: ReconnectBody = read_json(request, app.engine.config()).await?;
    let channel = parse_channel(&body.channel_id)?;
    let ticket = app.engine.reconnect(&project.id, &channel).await?;
    Ok(ok(&json!({
        "channel_id": ticket.channel_id,
        "project_id": ticket.project_id,
        "ws_token": ticket.ws_token,
        "websocket_url": ticket.websocket_url,
        "websocket_channel": ticket.websocket_channel,
    })))
}
