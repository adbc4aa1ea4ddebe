//! `/console/providers`: a project's provider credentials. `POST` creates or replaces them
//! (201 when new, 200 when replaced), `GET` lists them or shows one, `DELETE` removes one.
//! Keys go in and never come out: every answer shows the masked form.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::error::ApiError;
use super::json::{Response, json_response, parse, read_body};
use crate::ai::{preset, testing};
use crate::catalog::{Project, ProviderCredential, ProviderKind};
use crate::clock::{now_ms, rfc3339_ms};
use crate::egress;
use crate::error::Error;

pub async fn route(
    app: &App,
    project: &Project,
    request: Request<Incoming>,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let catalog = app.engine.catalog();
    match (request.method(), rest) {
        (&Method::POST, []) => upsert(app, project, request).await,
        (&Method::GET, []) => {
            let data: Vec<Value> = catalog
                .providers(&project.id)
                .iter()
                .map(|c| view(c))
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "data": data })))
        }
        (&Method::GET, [name]) => catalog
            .provider(&project.id, name)
            .map(|c| json_response(StatusCode::OK, &view(&c)))
            .ok_or_else(|| not_found(name)),
        (&Method::DELETE, [name]) => {
            if !catalog
                .delete_provider(&project.id, name)
                .map_err(Error::from)?
            {
                return Err(not_found(name));
            }
            app.engine.store().commit().await.map_err(Error::from)?;
            Ok(json_response(
                StatusCode::OK,
                &json!({ "deleted": true, "provider": name }),
            ))
        }
        (_, [] | [_]) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found(format!(
            "no route for /console/providers/{}",
            rest.join("/")
        ))),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("provider '{name}' not found"))
}

/// The wire form of a credential: the key masked.
pub fn view(c: &ProviderCredential) -> Value {
    json!({
        "provider": c.name,
        "kind": c.kind.as_str(),
        "base_url": c.base_url,
        "api_key": c.masked_key(),
        "timeout_ms": c.timeout_ms,
        "created_at": rfc3339_ms(c.created_ms),
        "updated_at": rfc3339_ms(c.updated_ms),
    })
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

async fn upsert(
    app: &App,
    project: &Project,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let bytes = read_body(request, app.engine.config()).await?;
    let body: ProviderBody = parse(&bytes)?;
    let name = body.provider;
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_name {
        return Err(ApiError::invalid(
            "provider: must be 1 to 64 characters of letters, digits, '_', '-' or '.'",
        ));
    }
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
            check_base_url(&url, !app.engine.config().allow_private_providers).await?;
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
        let printable = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > 1024 || !printable {
            return Err(ApiError::invalid(
                "api_key: must be 1 to 1024 visible ASCII characters",
            ));
        }
    }
    if body
        .timeout_ms
        .is_some_and(|t| !(100..=600_000).contains(&t))
    {
        return Err(ApiError::invalid("timeout_ms: must be from 100 to 600000"));
    }
    let now = now_ms();
    let credential = ProviderCredential {
        project: project.id,
        name,
        kind,
        api_key: body.api_key,
        base_url,
        timeout_ms: body.timeout_ms,
        created_ms: now,
        updated_ms: now,
    };
    let (saved, created) = app
        .engine
        .catalog()
        .put_provider(credential)
        .map_err(Error::from)?;
    app.engine.store().commit().await.map_err(Error::from)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &view(&saved)))
}

/// An `http(s)://` URL with a host; with the guard on, one that is not private.
async fn check_base_url(url: &str, guarded: bool) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::invalid(format!("base_url: not a valid URL: {e}")))?;
    if url.len() > 2048
        || !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none()
    {
        return Err(ApiError::invalid(
            "base_url: must be an http:// or https:// URL with a host, at most 2048 characters",
        ));
    }
    if guarded {
        egress::check_resolving(&parsed, Duration::from_secs(2))
            .await
            .map_err(|b| {
                ApiError::invalid(format!(
                    "base_url: {b} (start eddy with --allow-private-providers to call models \
                     on loopback or private addresses)"
                ))
            })?;
    }
    Ok(())
}
