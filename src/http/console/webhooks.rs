//! `/console/webhooks`: a project's endpoints. List, register (the URL passes the SSRF
//! guard, resolved now), show, delete, `rotate-secret` (the old secret signs beside the new
//! one for the grace period), `enable` (after 410 Gone or a failing streak disabled it).

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::{Value, json};

use super::context::Cx;
use crate::catalog::{CatalogError, Endpoint, Resource};
use crate::clock::{now_ms, rfc3339_ms};
use crate::http::error::{Answer, ApiError};
use crate::http::input::{Guard, check_name, check_url_resolving};
use crate::http::json::read_json;
use crate::http::response::{created, ok};
use crate::http::views;

pub(super) async fn route(cx: &Cx<'_>, request: Request<Incoming>, tail: &[&str]) -> Answer {
    let (catalog, project) = (cx.catalog(), &cx.project.id);
    match (&cx.method, tail) {
        (&Method::GET, []) => {
            let all = catalog.endpoints(project);
            let data: Vec<_> = all.iter().map(|e| views::endpoint(e, false)).collect();
            Ok(ok(&json!({ "data": data })))
        }
        (&Method::POST, []) => create(cx, request).await,
        (&Method::GET, [id]) => {
            let endpoint = catalog
                .endpoint(project, id)
                .ok_or_else(|| CatalogError::not_found(Resource::Endpoint, *id))?;
            Ok(ok(&views::endpoint(&endpoint, false)))
        }
        (&Method::DELETE, [id]) => {
            catalog.delete_endpoint(project, id).await?;
            Ok(ok(&json!({ "deleted": true, "id": id })))
        }
        (&Method::POST, [id, "rotate-secret"]) => {
            let grace = cx.config().secret_rotation_grace.as_millis() as u64;
            let rotated = catalog.rotate_secret(project, id, now_ms(), grace).await?;
            let mut view = views::endpoint(&rotated, true);
            if let Some((_, until)) = &rotated.previous_secret {
                view["previous_secret_expires_at"] = Value::String(rfc3339_ms(*until));
            }
            Ok(ok(&view))
        }
        (&Method::POST, [id, "enable"]) => {
            let enabled = catalog.enable_endpoint(project, id).await?;
            Ok(ok(&views::endpoint(&enabled, false)))
        }
        (_, [] | [_] | [_, "rotate-secret" | "enable"]) => Err(ApiError::method_not_allowed()),
        _ => Err(cx.no_route()),
    }
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

async fn create(cx: &Cx<'_>, request: Request<Incoming>) -> Answer {
    let body: EndpointBody = read_json(request, cx.config()).await?;
    check_url_resolving("url", &body.url, Guard::webhooks(cx.config())).await?;
    for (i, e) in body.events.iter().enumerate() {
        check_name(&format!("events[{i}]"), e)?;
    }
    let endpoint = Endpoint::new(
        cx.project.id,
        body.url,
        body.description,
        body.events,
        now_ms(),
    );
    let saved = cx.catalog().create_endpoint(endpoint).await?;
    Ok(created(&views::endpoint(&saved, true)))
}
