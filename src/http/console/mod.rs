//! `/console` routes, per project: the caller's project, then a file per resource
//! (`workflows`, `outputs`, `webhooks`, `keys`, `requests`, `dlq`, `providers`). Every
//! route authenticates (and takes a rate-limit token) first; a known path asked with a
//! method it does not take is 405, an unknown one 404.

mod context;
mod dlq;
mod keys;
mod outputs;
mod providers;
mod requests;
mod webhooks;
mod workflows;

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::json;

use super::app::{App, Caller};
use super::error::{Answer, ApiError};
use super::response::ok;
use context::Cx;

pub async fn route(app: &App, request: Request<Incoming>, rest: &[&str]) -> Answer {
    let Caller { key, project } = app.admit(&request)?;
    let cx = Cx {
        app,
        method: request.method().clone(),
        path: rest.join("/"),
        key,
        project,
    };
    match rest {
        ["project"] if cx.method == Method::GET => Ok(ok(&json!({
            "project_id": cx.project.id.to_string(),
            "name": cx.project.name,
            "request_webhook_secret": cx.project.signing_secret,
        }))),
        ["project"] => Err(ApiError::method_not_allowed()),
        ["workflow", tail @ ..] => workflows::route(&cx, request, tail).await,
        ["structured-outputs", tail @ ..] => outputs::route(&cx, request, tail).await,
        ["webhooks", tail @ ..] => webhooks::route(&cx, request, tail).await,
        ["keys", tail @ ..] => keys::route(&cx, request, tail).await,
        ["requests", tail @ ..] => requests::route(&cx, request, tail).await,
        ["dlq", tail @ ..] => dlq::route(&cx, request, tail).await,
        ["providers", tail @ ..] => providers::route(&cx, request, tail).await,
        _ => Err(cx.no_route()),
    }
}
