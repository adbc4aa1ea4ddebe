//! `/console/dlq`: the dead-letter queue. List (newest first, paged by `before`), show,
//! retry one, retry a range (`{since?, until?, webhook_id?}`), purge one.

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::{Value, json};

use super::context::Cx;
use crate::http::error::{Answer, ApiError};
use crate::http::input::{Query, time_ms};
use crate::http::json::read_json_or_default;
use crate::http::response::ok;
use crate::http::views;
use crate::job::DeadLetter;

pub(super) async fn route(cx: &Cx<'_>, request: Request<Incoming>, tail: &[&str]) -> Answer {
    let (engine, project) = (cx.engine(), &cx.project.id);
    match (&cx.method, tail) {
        (&Method::GET, []) => {
            let query = Query::of(&request);
            let limit = query.limit()?;
            let page = engine
                .store()
                .dead_letters(project, query.get("before"), limit)
                .await?;
            let next = (page.len() == limit)
                .then(|| page.last().map(|(id, _)| id.clone()))
                .flatten();
            let mut data: Vec<Value> = Vec::with_capacity(page.len());
            for (id, d) in &page {
                data.push(entry(cx, id, d).await);
            }
            Ok(ok(&json!({ "data": data, "next_before": next })))
        }
        (&Method::POST, ["retry"]) => {
            let body: RangeBody = read_json_or_default(request, cx.config()).await?;
            let time = |field, value: &Option<Value>| {
                value.as_ref().map(|v| time_ms(field, v)).transpose()
            };
            let (since, until) = (time("since", &body.since)?, time("until", &body.until)?);
            let endpoint = body.webhook_id.or(body.endpoint_id);
            let report = engine
                .redrive_range(
                    project,
                    since.unwrap_or(0),
                    until.unwrap_or(u64::MAX),
                    endpoint.as_deref(),
                )
                .await?;
            let skipped: Vec<Value> = report
                .skipped
                .iter()
                .map(|(id, why)| json!({"id": id, "reason": why}))
                .collect();
            Ok(ok(
                &json!({ "retried": report.retried, "skipped": skipped }),
            ))
        }
        (&Method::GET, [id]) => {
            let d = engine.dead_letter(project, id).await?;
            Ok(ok(&entry(cx, id, &d).await))
        }
        (&Method::POST, [id, "retry"]) => {
            let d = engine.dead_letter(project, id).await?;
            engine.redrive(project, id).await?;
            Ok(ok(&json!({
                "retried": true,
                "id": id,
                "webhook_id": d.webhook_id,
                "channel_id": d.channel_id.to_string(),
            })))
        }
        (&Method::DELETE, [id]) => {
            engine.purge_dead_letter(project, id).await?;
            Ok(ok(&json!({ "deleted": true, "id": id })))
        }
        (_, [] | ["retry"] | [_] | [_, "retry"]) => Err(ApiError::method_not_allowed()),
        _ => Err(cx.no_route()),
    }
}

/// An entry with its id and a summary of its request as it is now.
async fn entry(cx: &Cx<'_>, id: &str, d: &DeadLetter) -> Value {
    let mut v = views::dead_letter(d);
    v["id"] = Value::String(id.to_string());
    v["request"] = cx
        .engine()
        .store()
        .summary(d.request_id)
        .await
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
