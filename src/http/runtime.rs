//! `/v1` routes: `POST /v1/ai/async`, `POST /v1/callback/{channel_id}`,
//! `POST /v1/ai/reconnect`; the sync routes are in [`super::sync`].

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::App;
use super::error::ApiError;
use super::json::{Response, json_response, parse, read_body};
use crate::egress;
use crate::engine::{AcceptInput, CallbackInput, Ticket};
use crate::job::ChannelId;

pub async fn route(
    app: &App,
    request: Request<Incoming>,
    rest: &[&str],
) -> Result<Response, ApiError> {
    if let Some(limiter) = &app.rate_limit {
        limiter.take(&app.authenticate(&request)?.id)?;
    }
    let method = request.method().clone();
    match (&method, rest) {
        (&Method::POST, ["ai", "async"]) => accept(app, request).await,
        (&Method::POST, ["ai"]) => super::sync::ai(app, request).await,
        (&Method::POST, ["chat", "completions"]) => {
            super::sync::chat_completions(app, request).await
        }
        (&Method::POST, ["ai", "reconnect"]) => reconnect(app, request).await,
        (&Method::POST, ["callback", channel]) => {
            let channel = channel.to_string();
            callback(app, request, &channel).await
        }
        (
            _,
            ["ai", "async"]
            | ["ai", "reconnect"]
            | ["callback", _]
            | ["ai"]
            | ["chat", "completions"],
        ) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found(format!(
            "no route for {method} /v1/{}",
            rest.join("/")
        ))),
    }
}

/// A channel id from a URL or body: a UUID.
pub fn parse_channel(text: &str) -> Result<ChannelId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::not_found(format!("request '{text}' not found")))
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

const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

/// Checks an `http(s)://` URL with a host and, when `guarded`, that its host is not a
/// private or loopback address (names are resolved at connect time).
pub fn check_url(field: &str, url: &str, guarded: bool) -> Result<reqwest::Url, ApiError> {
    if url.len() > 2048 {
        return Err(ApiError::invalid(format!(
            "{field}: longer than 2048 characters"
        )));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::invalid(format!("{field}: not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::invalid(format!(
            "{field}: must be an http:// or https:// URL with a host"
        )));
    }
    if guarded {
        egress::check_literal(&parsed).map_err(|b| blocked(field, &b))?;
    }
    Ok(parsed)
}

/// The 400 for a URL the SSRF guard refuses.
pub fn blocked(field: &str, why: &egress::Blocked) -> ApiError {
    ApiError::invalid(format!(
        "{field}: {why} (start eddy with --allow-private-webhooks to permit private addresses)"
    ))
}

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
        check_url("webhook_url", url, guarded)?;
    }
    let events = body.events.unwrap_or_default();
    for (i, event) in events.iter().enumerate() {
        super::console::check_name(&format!("events[{i}]"), event)?;
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

/// A non-empty list of `{role, content}` messages with known roles; errors name the field.
pub fn check_messages(messages: &[Map<String, Value>]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        match m.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => {}
            Some(Value::String(r)) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role: '{r}' is not one of {}",
                    ROLES.join(", ")
                )));
            }
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role: must be a string"
                )));
            }
            None => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role: is required"
                )));
            }
        }
        match m.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            Some(Value::Null) | None if m.get("role") == Some(&json!("assistant")) => {}
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].content: must be a string or an array of parts"
                )));
            }
            None => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].content: is required"
                )));
            }
        }
    }
    Ok(())
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

async fn accept(app: &App, request: Request<Incoming>) -> Result<Response, ApiError> {
    let project = app.authenticate(&request)?;
    let idempotency_key = request
        .headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::invalid("Idempotency-Key: must be 1 to 255 visible ASCII characters")
                })
        })
        .transpose()?;
    let bytes = read_body(request, app.engine.config()).await?;
    let input = parse_async(&bytes, !app.engine.config().allow_private_webhooks)?;
    let ticket = app
        .engine
        .accept(&project, input, idempotency_key.as_deref())
        .await?;
    Ok(json_response(StatusCode::OK, &ticket_json(&ticket)))
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
    request: Request<Incoming>,
    channel: &str,
) -> Result<Response, ApiError> {
    let project = app.authenticate(&request)?;
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
    Ok(json_response(
        StatusCode::OK,
        &json!({ "status": "accepted", "channel_id": channel }),
    ))
}

#[derive(Deserialize)]
struct ReconnectBody {
    channel_id: String,
}

async fn reconnect(app: &App, request: Request<Incoming>) -> Result<Response, ApiError> {
    let project = app.authenticate(&request)?;
    let bytes = read_body(request, app.engine.config()).await?;
    let body: ReconnectBody = parse(&bytes)?;
    let channel = parse_channel(&body.channel_id)?;
    let ticket = app.engine.reconnect(&project.id, &channel)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "channel_id": ticket.channel_id,
            "project_id": ticket.project_id,
            "ws_token": ticket.ws_token,
            "websocket_url": ticket.websocket_url,
            "websocket_channel": ticket.websocket_channel,
        }),
    ))
}
