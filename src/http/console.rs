//! `/console` routes, per project: workflows, structured outputs, webhook endpoints, API
//! keys, the request log and the dead-letter queue. Input is validated here (messages name
//! the field); rules about the resources live in [`crate::catalog`].

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::json::{Response, json_response, parse, query, read_body, time_ms};
use super::runtime::{blocked, check_url, parse_channel};
use super::{App, dlq, views};
use crate::catalog::{ApiKey, Endpoint, Project, StructuredOutput, Workflow};
use crate::clock::now_ms;
use crate::egress;
use crate::error::Error;
use crate::job::Status;
use crate::secret;
use crate::store::{Cursor, LogQuery};

pub async fn route(
    app: &App,
    request: Request<Incoming>,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let (key, project) = app.authenticate_key(&request)?;
    if let Some(limiter) = &app.rate_limit {
        limiter.take(&project.id)?;
    }
    let method = request.method().clone();
    let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (&method, rest.as_slice()) {
        (&Method::GET, ["project"]) => Ok(ok(json!({
            "project_id": project.id.to_string(),
            "name": project.name,
            "request_webhook_secret": project.signing_secret,
        }))),

        (&Method::POST, ["workflow"]) => put_workflow(app, &project, request, None).await,
        (&Method::GET, ["workflow"]) => Ok(ok(json!({
            "data": app.engine.catalog().workflows(&project.id).iter().map(|w| views::workflow(w)).collect::<Vec<_>>()
        }))),
        (&Method::GET, ["workflow", name]) => app
            .engine
            .catalog()
            .workflow(&project.id, name)
            .map(|w| ok(views::workflow(&w)))
            .ok_or_else(|| Error::WorkflowNotFound(name.to_string()).into()),
        (&Method::PUT, ["workflow", name]) => {
            let name = name.to_string();
            put_workflow(app, &project, request, Some(name)).await
        }
        (&Method::DELETE, ["workflow", name]) => {
            if !app
                .engine
                .catalog()
                .delete_workflow(&project.id, name)
                .map_err(Error::from)?
            {
                return Err(Error::WorkflowNotFound(name.to_string()).into());
            }
            app.engine.store().commit().await.map_err(Error::from)?;
            Ok(ok(json!({ "deleted": true, "name": name })))
        }

        (&Method::POST, ["structured-outputs"]) => create_output(app, &project, request).await,
        (&Method::GET, ["structured-outputs"]) => Ok(ok(json!({
            "data": app.engine.catalog().structured_outputs(&project.id).iter().map(|o| views::structured_output(o)).collect::<Vec<_>>()
        }))),
        (&Method::GET, ["structured-outputs", id]) => app
            .engine
            .catalog()
            .structured_output(&project.id, id)
            .map(|o| ok(views::structured_output(&o)))
            .ok_or_else(|| ApiError::not_found(format!("structured output '{id}' not found"))),
        (&Method::DELETE, ["structured-outputs", id]) => {
            if !app
                .engine
                .catalog()
                .delete_structured_output(&project.id, id)
                .map_err(Error::from)?
            {
                return Err(ApiError::not_found(format!(
                    "structured output '{id}' not found"
                )));
            }
            app.engine.store().commit().await.map_err(Error::from)?;
            Ok(ok(json!({ "deleted": true, "id": id })))
        }

        (&Method::POST, ["webhooks"]) => create_endpoint(app, &project, request).await,
        (&Method::GET, ["webhooks"]) => Ok(ok(json!({
            "data": app.engine.catalog().endpoints(&project.id).iter().map(|e| views::endpoint(e, false)).collect::<Vec<_>>()
        }))),
        (&Method::GET, ["webhooks", id]) => app
            .engine
            .catalog()
            .endpoint(&project.id, id)
            .map(|e| ok(views::endpoint(&e, false)))
            .ok_or_else(|| ApiError::not_found(format!("webhook '{id}' not found"))),
        (&Method::DELETE, ["webhooks", id]) => {
            if !app
                .engine
                .catalog()
                .delete_endpoint(&project.id, id)
                .map_err(Error::from)?
            {
                return Err(ApiError::not_found(format!("webhook '{id}' not found")));
            }
            app.engine.store().commit().await.map_err(Error::from)?;
            Ok(ok(json!({ "deleted": true, "id": id })))
        }
        (&Method::POST, ["webhooks", id, "rotate-secret"]) => {
            let id = id.to_string();
            rotate_secret(app, &project, &id).await
        }

        (&Method::POST, ["keys"]) => create_key(app, &key, request).await,
        (&Method::GET, ["keys"]) => Ok(ok(json!({
            "data": app.engine.catalog().keys(&project.id).iter().map(|k| views::api_key(k)).collect::<Vec<_>>()
        }))),
        (&Method::DELETE, ["keys", id]) => {
            let catalog = app.engine.catalog();
            let target = catalog
                .key(&project.id, id)
                .ok_or_else(|| ApiError::not_found(format!("key '{id}' not found")))?;
            if target.outlives(&key) {
                return Err(ApiError::forbidden(format!(
                    "key '{id}' outlives the key making this request, which cannot revoke it"
                )));
            }
            if !catalog.delete_key(&project.id, id).map_err(Error::from)? {
                return Err(ApiError::not_found(format!("key '{id}' not found")));
            }
            app.engine.store().commit().await.map_err(Error::from)?;
            Ok(ok(json!({ "deleted": true, "id": id })))
        }

        (&Method::GET, ["requests"]) => list_requests(app, &project, &request),
        (&Method::GET, ["requests", channel]) => {
            let channel = parse_channel(channel)?;
            let record = app.engine.request_of(&project.id, &channel)?;
            let stored = app
                .engine
                .store()
                .timeline(record.id)
                .map_err(Error::from)?;
            Ok(ok(views::request(&record, &record.timeline_with(stored))))
        }

        (_, ["dlq", rest @ ..]) => dlq::route(app, &project, request, rest).await,
        (&Method::POST, ["webhooks", id, "enable"]) => {
            let enabled = app
                .engine
                .catalog()
                .update_endpoint(&project.id, id, |e| {
                    e.failing_since_ms = None;
                    e.disabled.take().is_some()
                })
                .map_err(Error::from)?
                .ok_or_else(|| ApiError::not_found(format!("webhook '{id}' not found")))?;
            app.engine.store().commit().await.map_err(Error::from)?;
            Ok(ok(views::endpoint(&enabled, false)))
        }

        (_, ["providers", tail @ ..]) => {
            super::providers::route(app, &project, request, tail).await
        }

        _ => Err(ApiError::not_found(format!(
            "no route for {method} /console/{}",
            rest.join("/")
        ))),
    }
}

fn ok(value: Value) -> Response {
    json_response(StatusCode::OK, &value)
}

fn created(value: Value) -> Response {
    json_response(StatusCode::CREATED, &value)
}

pub fn limit_param(request: &Request<Incoming>) -> Result<usize, ApiError> {
    match query(request).into_iter().find(|(k, _)| k == "limit") {
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid("limit: must be an integer from 1 to 1000")),
        None => Ok(50),
    }
}

/// Names of workflows, events and structured outputs: 1–128 of `[A-Za-z0-9_.:-]`.
pub(super) fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field}: must be 1 to 128 characters of letters, digits, '_', '-', '.' or ':'"
        )))
    }
}

#[derive(Deserialize)]
struct FallbackBody {
    provider: String,
    model: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    event_name: Option<String>,
    provider: String,
    model: String,
    #[serde(default)]
    structured_output_id: Option<String>,
    #[serde(default)]
    fallbacks: Vec<FallbackBody>,
    #[serde(default)]
    system_prompt: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    response_delay_ms: Option<u64>,
    #[serde(default)]
    callback_timeout_ms: Option<u64>,
    #[serde(default)]
    cache_fields: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

async fn put_workflow(
    app: &App,
    project: &Project,
    request: Request<Incoming>,
    path_name: Option<String>,
) -> Result<Response, ApiError> {
    let replace = path_name.is_some();
    let bytes = read_body(request, app.engine.config()).await?;
    let body: WorkflowBody = parse(&bytes)?;
    let name = match (&path_name, body.name) {
        (Some(path), Some(given)) if *path != given => {
            return Err(ApiError::invalid(
                "name: must match the workflow name in the URL",
            ));
        }
        (Some(path), _) => path.clone(),
        (None, Some(given)) => given,
        (None, None) => return Err(ApiError::invalid("name: is required")),
    };
    check_name("name", &name)?;
    if let Some(event) = &body.event_name {
        check_name("event_name", event)?;
    }
    for (field, value) in [("provider", &body.provider), ("model", &body.model)] {
        if value.trim().is_empty() || value.len() > 200 {
            return Err(ApiError::invalid(format!(
                "{field}: must be 1 to 200 characters"
            )));
        }
    }
    for (i, f) in body.fallbacks.iter().enumerate() {
        if f.provider.trim().is_empty() || f.model.trim().is_empty() {
            return Err(ApiError::invalid(format!(
                "fallbacks[{i}]: provider and model must not be empty"
            )));
        }
    }
    let testing = match body.mode.as_deref() {
        None | Some("production") => false,
        Some("testing") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "mode: '{other}' is not one of production, testing"
            )));
        }
    };
    if body.response_delay_ms.is_some_and(|d| d > 600_000) {
        return Err(ApiError::invalid(
            "response_delay_ms: must be at most 600000",
        ));
    }
    if body
        .callback_timeout_ms
        .is_some_and(|t| !(100..=7 * 24 * 3600 * 1000).contains(&t))
    {
        return Err(ApiError::invalid(
            "callback_timeout_ms: must be from 100 to 604800000 (7 days)",
        ));
    }
    for (i, path) in body.cache_fields.iter().enumerate() {
        let root = path.split('.').next().unwrap_or("");
        if !matches!(root, "metadata" | "messages") || path.split('.').any(str::is_empty) {
            return Err(ApiError::invalid(format!(
                "cache_fields[{i}]: '{path}' must be a dot path under metadata or messages"
            )));
        }
    }
    let now = now_ms();
    let workflow = Workflow {
        project: project.id,
        name,
        event_name: body.event_name,
        provider: body.provider,
        model: body.model,
        structured_output_id: body.structured_output_id,
        fallbacks: body
            .fallbacks
            .into_iter()
            .map(|f| (f.provider, f.model))
            .collect(),
        system_prompt: body.system_prompt,
        testing,
        response_delay_ms: body.response_delay_ms.unwrap_or(0),
        callback_timeout_ms: body.callback_timeout_ms,
        cache_fields: body.cache_fields,
        description: body.description,
        created_ms: now,
        updated_ms: now,
    };
    let saved = app
        .engine
        .catalog()
        .put_workflow(workflow, replace)
        .map_err(|e| match e {
            crate::catalog::CatalogError::NotFound(_) => {
                Error::WorkflowNotFound(path_name.clone().unwrap_or_default())
            }
            other => Error::from(other),
        })?;
    app.engine.store().commit().await.map_err(Error::from)?;
    let view = views::workflow(&saved);
    Ok(if replace { ok(view) } else { created(view) })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputBody {
    name: String,
    schema: Value,
    #[serde(default)]
    sample_data: Option<Value>,
    #[serde(default)]
    description: Option<String>,
}

async fn create_output(
    app: &App,
    project: &Project,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let bytes = read_body(request, app.engine.config()).await?;
    let body: OutputBody = parse(&bytes)?;
    check_name("name", &body.name)?;
    if !body.schema.is_object() {
        return Err(ApiError::invalid("schema: must be a JSON Schema object"));
    }
    if let Some(sample) = &body.sample_data
        && !sample.is_object()
    {
        return Err(ApiError::invalid("sample_data: must be a JSON object"));
    }
    crate::ai::schema::check_output(&body.schema, body.sample_data.as_ref())
        .map_err(ApiError::invalid)?;
    let output = StructuredOutput {
        id: secret::new_id("schema"),
        project: project.id,
        name: body.name,
        schema: body.schema.to_string(),
        sample_data: body.sample_data.map(|s| s.to_string()),
        description: body.description,
        created_ms: now_ms(),
    };
    let saved = app
        .engine
        .catalog()
        .create_structured_output(output)
        .map_err(Error::from)?;
    app.engine.store().commit().await.map_err(Error::from)?;
    Ok(created(views::structured_output(&saved)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    url: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    events: Vec<String>,
}

async fn create_endpoint(
    app: &App,
    project: &Project,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let bytes = read_body(request, app.engine.config()).await?;
    let body: EndpointBody = parse(&bytes)?;
    let guarded = !app.engine.config().allow_private_webhooks;
    let url = check_url("url", &body.url, guarded)?;
    if guarded {
        egress::check_resolving(&url, Duration::from_secs(2))
            .await
            .map_err(|b| blocked("url", &b))?;
    }
    for (i, e) in body.events.iter().enumerate() {
        check_name(&format!("events[{i}]"), e)?;
    }
    let endpoint = Endpoint {
        id: secret::new_id("wh"),
        project: project.id,
        url: body.url,
        description: body.description,
        events: body.events,
        secret: secret::new_webhook_secret(),
        previous_secret: None,
        created_ms: now_ms(),
        disabled: None,
        failing_since_ms: None,
    };
    let saved = app
        .engine
        .catalog()
        .put_endpoint(endpoint)
        .map_err(Error::from)?;
    app.engine.store().commit().await.map_err(Error::from)?;
    Ok(created(views::endpoint(&saved, true)))
}

async fn rotate_secret(app: &App, project: &Project, id: &str) -> Result<Response, ApiError> {
    let current = app
        .engine
        .catalog()
        .endpoint(&project.id, id)
        .ok_or_else(|| ApiError::not_found(format!("webhook '{id}' not found")))?;
    let mut next = (*current).clone();
    let until = now_ms() + app.engine.config().secret_rotation_grace.as_millis() as u64;
    next.previous_secret = Some((current.secret.clone(), until));
    next.secret = secret::new_webhook_secret();
    let saved = app
        .engine
        .catalog()
        .put_endpoint(next)
        .map_err(Error::from)?;
    app.engine.store().commit().await.map_err(Error::from)?;
    let mut view = views::endpoint(&saved, true);
    view["previous_secret_expires_at"] = Value::String(crate::clock::rfc3339_ms(until));
    Ok(ok(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expires_in_days: Option<u32>,
    /// An exact expiry (RFC 3339 or Unix ms), instead of `expires_in_days`.
    #[serde(default)]
    expires_at: Option<Value>,
}

/// Creates a key for the caller's project that does not outlive the caller's key: without
/// an expiry it expires with the caller's key, and a later expiry is refused.
async fn create_key(
    app: &App,
    caller: &ApiKey,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let bytes = read_body(request, app.engine.config()).await?;
    let body: KeyBody = if bytes.is_empty() {
        KeyBody {
            name: None,
            expires_in_days: None,
            expires_at: None,
        }
    } else {
        parse(&bytes)?
    };
    if body.expires_in_days.is_some_and(|d| d == 0 || d > 3650) {
        return Err(ApiError::invalid("expires_in_days: must be from 1 to 3650"));
    }
    let now = now_ms();
    let expires = match (body.expires_in_days, &body.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "expires_at: give either expires_in_days or expires_at, not both",
            ));
        }
        (Some(days), None) => Some(now + u64::from(days) * 24 * 3600 * 1000),
        (None, Some(at)) => {
            let at = time_ms("expires_at", at)?;
            if at <= now {
                return Err(ApiError::invalid("expires_at: must be in the future"));
            }
            Some(at)
        }
        (None, None) => None,
    };
    let expires = match (caller.expires_ms, expires) {
        (Some(limit), Some(at)) if at > limit => {
            let field = if body.expires_at.is_some() {
                "expires_at"
            } else {
                "expires_in_days"
            };
            return Err(ApiError::invalid(format!(
                "{field}: the new key would outlive the key making this request, which \
                 expires at {}",
                crate::clock::rfc3339_ms(limit)
            )));
        }
        (Some(limit), None) => Some(limit),
        (_, expires) => expires,
    };
    let (record, key) = app
        .engine
        .catalog()
        .create_key(&caller.project, body.name, expires, now)
        .map_err(Error::from)?;
    app.engine.store().commit().await.map_err(Error::from)?;
    let mut view = views::api_key(&record);
    view["key"] = Value::String(key);
    Ok(created(view))
}

fn list_requests(
    app: &App,
    project: &Project,
    request: &Request<Incoming>,
) -> Result<Response, ApiError> {
    let params = query(request);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let status = get("status")
        .map(str::parse::<Status>)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("status: {e}")))?;
    let time = |name: &str| {
        get(name)
            .map(|v| {
                let v = v
                    .parse::<u64>()
                    .map_or_else(|_| Value::String(v.to_string()), Value::from);
                time_ms(name, &v)
            })
            .transpose()
    };
    let before = match get("before") {
        None => None,
        Some(text) => {
            let not_found =
                || ApiError::invalid("before: not a cursor or a request of this project");
            Some(match app.engine.store().parse_cursor(text) {
                Some(cursor) => cursor,
                None => {
                    let channel = parse_channel(text).map_err(|_| not_found())?;
                    let (id, summary) = app
                        .engine
                        .store()
                        .summary_by_channel(&project.id, &channel)
                        .map_err(Error::from)?
                        .ok_or_else(not_found)?;
                    Cursor::of(&summary, id)
                }
            })
        }
    };
    let log_query = LogQuery {
        status,
        workflow: get("workflow"),
        since_ms: time("since")?.unwrap_or(0),
        until_ms: time("until")?,
        before,
        limit: limit_param(request)?,
    };
    let (page, next) = app
        .engine
        .store()
        .list_requests(&project.id, &log_query)
        .map_err(Error::from)?;
    let data: Vec<Value> = page.iter().map(views::request_summary).collect();
    Ok(ok(json!({ "data": data, "next_before": next })))
}
