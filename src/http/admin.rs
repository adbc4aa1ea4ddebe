//! `/admin` routes, enabled by `--admin-token`: `POST /admin/projects {name}` creates a
//! project with its first API key; `GET /admin/projects` lists projects. Without an admin
//! token configured the routes do not exist (404).

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::json;

use super::app::{App, presents_one_of};
use super::error::{Answer, ApiError};
use super::input::check_text;
use super::json::read_json;
use super::response::{created, ok};
use crate::clock::{now_ms, rfc3339_ms};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    name: String,
}

pub async fn route(app: &App, request: Request<Incoming>, rest: &[&str]) -> Answer {
    let Some(token) = app.engine.config().admin_token.as_deref() else {
        return Err(ApiError::not_found(
            "no route: admin routes need --admin-token",
        ));
    };
    if !presents_one_of(&request, &[token]) {
        return Err(ApiError::invalid_admin_token());
    }
    let catalog = app.engine.catalog();
    match (request.method(), rest) {
        (&Method::GET, ["projects"]) => {
            let data: Vec<_> = catalog
                .projects()
                .iter()
                .map(|p| json!({"project_id": p.id.to_string(), "name": p.name, "created_at": rfc3339_ms(p.created_ms)}))
                .collect();
            Ok(ok(&json!({ "data": data })))
        }
        (&Method::POST, ["projects"]) => {
            let body: ProjectBody = read_json(request, app.engine.config()).await?;
            let name = body.name.trim();
            check_text("name", name, 128)?;
            let (project, key) = catalog.create_project(name, now_ms()).await?;
            Ok(created(&json!({
                "project_id": project.id.to_string(),
                "name": project.name,
                "api_key": key,
            })))
        }
        (_, ["projects"]) => Err(ApiError::method_not_allowed()),
        (method, _) => Err(ApiError::no_route(
            method,
            &format!("/admin/{}", rest.join("/")),
        )),
    }
}
