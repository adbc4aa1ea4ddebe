//! `/admin` routes, enabled by `--admin-token`: `POST /admin/projects {name}` creates a
//! project with its first API key; `GET /admin/projects` lists projects. Without an admin
//! token configured the routes do not exist (404).

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::App;
use super::error::ApiError;
use super::json::{Response, json_response, parse, read_body};
use crate::clock::{now_ms, rfc3339_ms};
use crate::error::Error;
use crate::secret::ct_eq;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    name: String,
}

pub async fn route(
    app: &App,
    request: Request<Incoming>,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let Some(token) = app.engine.config().admin_token.as_deref() else {
        return Err(ApiError::not_found(
            "no route: admin routes need --admin-token",
        ));
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !ct_eq(presented.as_bytes(), token.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_admin_token",
            "Invalid admin token provided",
        ));
    }
    let catalog = app.engine.catalog();
    match (request.method().clone(), rest) {
        (Method::GET, ["projects"]) => {
            let data: Vec<_> = catalog
                .projects()
                .iter()
                .map(|p| json!({"project_id": p.id.to_string(), "name": p.name, "created_at": rfc3339_ms(p.created_ms)}))
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "data": data })))
        }
        (Method::POST, ["projects"]) => {
            let bytes = read_body(request, app.engine.config()).await?;
            let body: ProjectBody = parse(&bytes)?;
            let name = body.name.trim();
            if name.is_empty() || name.len() > 128 {
                return Err(ApiError::invalid("name: must be 1 to 128 characters"));
            }
            let now = now_ms();
            let project = catalog.create_project(name, now).map_err(Error::from)?;
            let (_, key) = catalog
                .create_key(&project.id, Some("initial".into()), None, now)
                .map_err(Error::from)?;
            app.engine.store().commit().await.map_err(Error::from)?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"project_id": project.id.to_string(), "name": project.name, "api_key": key}),
            ))
        }
        (_, ["projects"]) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found(format!(
            "no route for /admin/{}",
            rest.join("/")
        ))),
    }
}
