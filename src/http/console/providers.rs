//! `/console/providers`: a project's provider credentials. `POST` creates or replaces them
//! (201 when new, 200 when replaced), `GET` lists them or shows one, `DELETE` removes one.
//! Keys go in and never come out: every answer shows the masked form.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::context::Cx;
use crate::ai::{preset, testing};
use crate::catalog::{CatalogError, ProviderCredential, ProviderKind, Resource};
use crate::clock::now_ms;
use crate::http::error::{Answer, ApiError};
use crate::http::input::{Guard, check_provider_name, check_url_resolving, check_visible};
use crate::http::json::read_json;
use crate::http::response::{json_response, ok};
use crate::http::views;

pub(super) async fn route(cx: &Cx<'_>, request: Request<Incoming>, tail: &[&str]) -> Answer {
    let (catalog, project) = (cx.catalog(), &cx.project.id);
    match (&cx.method, tail) {
        (&Method::POST, []) => upsert(cx, request).await,
        (&Method::GET, []) => {
            let all = catalog.providers(project);
            let data: Vec<Value> = all.iter().map(|c| views::provider(c)).collect();
            Ok(ok(&json!({ "data": data })))
        }
        (&Method::GET, [name]) => {
            let credential = catalog
                .provider(project, name)
                .ok_or_else(|| CatalogError::not_found(Resource::Provider, *name))?;
            Ok(ok(&views::provider(&credential)))
        }
        (&Method::DELETE, [name]) => {
            catalog.delete_provider(project, name).await?;
            Ok(ok(&json!({ "deleted": true, "provider": name })))
        }
        (_, [] | [_]) => Err(ApiError::method_not_allowed()),
        _ => Err(cx.no_route()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderBody {
    provider: String,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    /// `openai` (also for compatible servers) or `anthropic`; presets know their own.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn upsert(cx: &Cx<'_>, request: Request<Incoming>) -> Answer {
    let body: ProviderBody = read_json(request, cx.config()).await?;
    let name = body.provider;
    check_provider_name("provider", &name)?;
    if name == testing::NAME {
        return Err(ApiError::invalid(
            "provider: 'testing' is built in (test mode) and takes no credentials",
        ));
    }
    let known = preset(&name);
    let kind = match (body.kind.as_deref(), known) {
        (None, Some((kind, _))) => kind,
        (None, None) | (Some("openai" | "openai-compatible"), None) => ProviderKind::OpenAi,
        (Some("anthropic"), None) => ProviderKind::Anthropic,
        (Some(given), Some((kind, _))) if given == kind.as_str() => kind,
        (Some(given), Some((kind, _))) if matches!(given, "openai" | "anthropic") => {
            return Err(ApiError::invalid(format!(
                "kind: provider '{name}' speaks {}, not {given}",
                kind.as_str()
            )));
        }
        (Some(given), _) => {
            return Err(ApiError::invalid(format!(
                "kind: '{given}' is not one of openai, anthropic"
            )));
        }
    };
    let base_url = match (body.base_url, known) {
        (Some(url), _) => {
            check_url_resolving("base_url", &url, Guard::providers(cx.config())).await?;
            url.trim_end_matches('/').to_string()
        }
        (None, Some((_, url))) => {
            if body.api_key.is_none() {
                return Err(ApiError::invalid(format!(
                    "api_key: is required for provider '{name}' at {url}"
                )));
            }
            url.to_string()
        }
        (None, None) => {
            return Err(ApiError::invalid(format!(
                "base_url: is required for provider '{name}' (known without one: openai, \
                 anthropic, mistral, groq, together)"
            )));
        }
    };
    if let Some(key) = &body.api_key {
        check_visible("api_key", key, 1024)?;
    }
    if body
        .timeout_ms
        .is_some_and(|t| !(100..=600_000).contains(&t))
    {
        return Err(ApiError::invalid("timeout_ms: must be from 100 to 600000"));
    }
    let now = now_ms();
    let credential = ProviderCredential {
        project: cx.project.id,
        name,
        kind,
        api_key: body.api_key,
        base_url,
        timeout_ms: body.timeout_ms,
        created_ms: now,
        updated_ms: now,
    };
    let (saved, created) = cx.catalog().put_provider(credential).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &views::provider(&saved)))
}
