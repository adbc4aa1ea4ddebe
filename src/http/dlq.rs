//! `/console/dlq` routes: list (newest first, paged by `before`), show, retry one, retry a
//! range (`{since?, until?, webhook_id?}`), purge one.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::console::limit_param;
use super::error::ApiError;
use super::json::{Response, json_response, parse, query, read_body, time_ms};
use super::{App, views};
use crate::catalog::Project;
use crate::error::Error;
use crate::job::DeadLetter;

pub async fn route(
    app: &App,
    project: &Project,
    request: Request<Incoming>,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let engine = &app.engine;
    match (request.method().clone(), rest) {
        (Method::GET, []) => {
            let limit = limit_param(&request)?;
            let before = query(&request)
                .into_iter()
                .find(|(k, _)| k == "before")
                .map(|(_, v)| v);
            let page = engine
                .store()
                .dead_letters(&project.id, before.as_deref(), limit)
                .map_err(Error::from)?;
            let next = (page.len() == limit)
                .then(|| page.last().map(|(id, _)| id.clone()))
                .flatten();
            let data: Vec<Value> = page.iter().map(|(id, d)| entry(app, id, d)).collect();
            Ok(ok(json!({ "data": data, "next_before": next })))
        }
        (Method::POST, ["retry"]) => {
            let bytes = read_body(request, engine.config()).await?;
            let body: RangeBody = if bytes.iter().all(u8::is_ascii_whitespace) {
                RangeBody::default()
            } else {
                parse(&bytes)?
            };
            let since = body
                .since
                .as_ref()
                .map(|v| time_ms("since", v))
                .transpose()?;
            let until = body
                .until
                .as_ref()
                .map(|v| time_ms("until", v))
                .transpose()?;
            let endpoint = body.webhook_id.or(body.endpoint_id);
            let report = engine
                .redrive_range(
                    &project.id,
                    since.unwrap_or(0),
                    until.unwrap_or(u64::MAX),
                    endpoint.as_deref(),
                )
                .await?;
            Ok(ok(json!({
                "retried": report.retried,
                "skipped": report.skipped.iter().map(|(id, why)| json!({"id": id, "reason": why})).collect::<Vec<_>>(),
            })))
        }
        (Method::GET, [id]) => {
            let d = engine.dead_letter(&project.id, id)?;
            Ok(ok(entry(app, id, &d)))
        }
        (Method::POST, [id, "retry"]) => {
            let d = engine.dead_letter(&project.id, id)?;
            engine.redrive(&project.id, id).await?;
            Ok(ok(json!({
                "retried": true,
                "id": id,
                "webhook_id": d.webhook_id,
                "channel_id": d.channel_id.to_string(),
            })))
        }
        (Method::DELETE, [id]) => {
            engine.purge_dead_letter(&project.id, id).await?;
            Ok(ok(json!({ "deleted": true, "id": id })))
        }
        (_, [] | ["retry"] | [_] | [_, "retry"]) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found(format!(
            "no route for /console/dlq/{}",
            rest.join("/")
        ))),
    }
}

fn ok(value: Value) -> Response {
    json_response(StatusCode::OK, &value)
}

/// An entry with its id and a summary of its request as it is now.
fn entry(app: &App, id: &str, d: &DeadLetter) -> Value {
    let mut v = views::dead_letter(d);
    v["id"] = Value::String(id.to_string());
    v["request"] = app
        .engine
        .store()
        .summary(d.request_id)
        .ok()
        .flatten()
        .map_or(Value::Null, |s| views::request_summary(&s));
    v
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RangeBody {
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    until: Option<Value>,
    /// The endpoint (`wh_…`), as in `X-ModelRiver-Webhook-Id`.
    #[serde(default)]
    webhook_id: Option<String>,
    #[serde(default)]
    endpoint_id: Option<String>,
}
