//! `/console/requests`: the request log (newest first, filtered by `status`, `workflow`,
//! `since`, `until`, paged by `before`: a cursor or a channel id) and one request with its
//! timeline.

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{Value, json};

use super::context::Cx;
use crate::http::error::{Answer, ApiError};
use crate::http::input::{Query, parse_channel};
use crate::http::response::ok;
use crate::http::views;
use crate::job::Status;
use crate::store::{Cursor, LogQuery};

pub(super) async fn route(cx: &Cx<'_>, request: Request<Incoming>, tail: &[&str]) -> Answer {
    match (&cx.method, tail) {
        (&Method::GET, []) => list(cx, &Query::of(&request)).await,
        (&Method::GET, [channel]) => {
            let channel = parse_channel(channel)?;
            let record = cx.engine().request_of(&cx.project.id, &channel).await?;
            let stored = cx.engine().store().timeline(record.id).await?;
            Ok(ok(&views::request(&record, &record.timeline_with(stored))))
        }
        (_, [] | [_]) => Err(ApiError::method_not_allowed()),
        _ => Err(cx.no_route()),
    }
}

async fn list(cx: &Cx<'_>, query: &Query) -> Answer {
    let store = cx.engine().store();
    let status = query
        .get("status")
        .map(str::parse::<Status>)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("status: {e}")))?;
    let before = match query.get("before") {
        None => None,
        Some(text) => {
            let not_found =
                || ApiError::invalid("before: not a cursor or a request of this project");
            Some(match store.parse_cursor(text) {
                Some(cursor) => cursor,
                None => {
                    let channel = parse_channel(text).map_err(|_| not_found())?;
                    let (id, summary) = store
                        .summary_by_channel(&cx.project.id, &channel)
                        .await?
                        .ok_or_else(not_found)?;
                    Cursor::of(&summary, id)
                }
            })
        }
    };
    let log_query = LogQuery {
        status,
        workflow: query.get("workflow"),
        since_ms: query.time("since")?.unwrap_or(0),
        until_ms: query.time("until")?,
        before,
        limit: query.limit()?,
    };
    let (page, next) = store.list_requests(&cx.project.id, &log_query)?;
    let data: Vec<Value> = page.iter().map(views::request_summary).collect();
    Ok(ok(&json!({ "data": data, "next_before": next })))
}
