//! `/console/workflow`: list, create (`POST`), show, replace (`PUT /{name}`), delete.

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::json;

use super::context::Cx;
use crate::catalog::{CatalogError, Resource, Workflow};
use crate::clock::now_ms;
use crate::http::error::{Answer, ApiError};
use crate::http::input::{check_name, check_text};
use crate::http::json::read_json;
use crate::http::response::{created, ok};
use crate::http::views;

pub(super) async fn route(cx: &Cx<'_>, request: Request<Incoming>, tail: &[&str]) -> Answer {
    let catalog = cx.catalog();
    match (&cx.method, tail) {
        (&Method::GET, []) => {
            let all = catalog.workflows(&cx.project.id);
            let data: Vec<_> = all.iter().map(|w| views::workflow(w)).collect();
            Ok(ok(&json!({ "data": data })))
        }
        (&Method::POST, []) => put(cx, request, None).await,
        (&Method::GET, [name]) => {
            let workflow = catalog
                .workflow(&cx.project.id, name)
                .ok_or_else(|| CatalogError::not_found(Resource::Workflow, *name))?;
            Ok(ok(&views::workflow(&workflow)))
        }
        (&Method::PUT, [name]) => put(cx, request, Some(name)).await,
        (&Method::DELETE, [name]) => {
            catalog.delete_workflow(&cx.project.id, name).await?;
            Ok(ok(&json!({ "deleted": true, "name": name })))
        }
        (_, [] | [_]) => Err(ApiError::method_not_allowed()),
        _ => Err(cx.no_route()),
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

/// Creates a workflow (no name in the path) or replaces the one named in the path.
async fn put(cx: &Cx<'_>, request: Request<Incoming>, path_name: Option<&str>) -> Answer {
    let body: WorkflowBody = read_json(request, cx.config()).await?;
    let name = match (path_name, body.name) {
        (Some(path), Some(given)) if path != given => {
            return Err(ApiError::invalid(
                "name: must match the workflow name in the URL",
            ));
        }
        (Some(path), _) => path.to_string(),
        (None, Some(given)) => given,
        (None, None) => return Err(ApiError::invalid("name: is required")),
    };
    check_name("name", &name)?;
    if let Some(event) = &body.event_name {
        check_name("event_name", event)?;
    }
    check_text("provider", &body.provider, 200)?;
    check_text("model", &body.model, 200)?;
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
        project: cx.project.id,
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
    let replace = path_name.is_some();
    let saved = cx.catalog().put_workflow(workflow, replace).await?;
    let view = views::workflow(&saved);
    Ok(if replace { ok(&view) } else { created(&view) })
}
