//! `/console/keys`: list, create (shown once; it expires within ten years, and never after
//! the key that creates it), revoke (not a key that outlives the caller's).

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::{Value, json};

use super::context::Cx;
use crate::catalog::CatalogError;
use crate::clock::now_ms;
use crate::http::error::{Answer, ApiError};
use crate::http::input::time_ms;
use crate::http::json::read_json_or_default;
use crate::http::response::{created, ok};
use crate::http::views;

/// The longest life of a key, in days.
const MAX_DAYS: u64 = 3650;
const DAY_MS: u64 = 24 * 3600 * 1000;

pub(super) async fn route(cx: &Cx<'_>, request: Request<Incoming>, tail: &[&str]) -> Answer {
    match (&cx.method, tail) {
        (&Method::GET, []) => {
            let all = cx.catalog().keys(&cx.project.id);
            let data: Vec<_> = all.iter().map(|k| views::api_key(k)).collect();
            Ok(ok(&json!({ "data": data })))
        }
        (&Method::POST, []) => create(cx, request).await,
        (&Method::DELETE, [id]) => {
            cx.catalog().revoke_key(&cx.key, id).await?;
            Ok(ok(&json!({ "deleted": true, "id": id })))
        }
        (_, [] | [_]) => Err(ApiError::method_not_allowed()),
        _ => Err(cx.no_route()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expires_in_days: Option<u32>,
    /// An exact expiry (RFC 3339 or Unix ms), instead of `expires_in_days`.
    #[serde(default)]
    expires_at: Option<Value>,
}

/// Creates a key for the caller's project; without an expiry it expires with the caller's
/// key (the catalog's rule).
async fn create(cx: &Cx<'_>, request: Request<Incoming>) -> Answer {
    let body: KeyBody = read_json_or_default(request, cx.config()).await?;
    let now = now_ms();
    let (field, expires) = match (body.expires_in_days, &body.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "expires_at: give either expires_in_days or expires_at, not both",
            ));
        }
        (Some(days), None) => {
            if !(1..=MAX_DAYS).contains(&u64::from(days)) {
                return Err(ApiError::invalid(format!(
                    "expires_in_days: must be from 1 to {MAX_DAYS}"
                )));
            }
            ("expires_in_days", Some(now + u64::from(days) * DAY_MS))
        }
        (None, Some(at)) => {
            let at = time_ms("expires_at", at)?;
            if at <= now {
                return Err(ApiError::invalid("expires_at: must be in the future"));
            }
            if at > now + MAX_DAYS * DAY_MS {
                return Err(ApiError::invalid(format!(
                    "expires_at: must be at most {MAX_DAYS} days ahead"
                )));
            }
            ("expires_at", Some(at))
        }
        (None, None) => ("expires_at", None),
    };
    let (record, key) = cx
        .catalog()
        .create_key(&cx.key, body.name, expires, now)
        .await
        .map_err(|e| match e {
            CatalogError::WouldOutlive(_) => ApiError::from(e).in_field(field),
            other => other.into(),
        })?;
    let mut view = views::api_key(&record);
    view["key"] = Value::String(key);
    Ok(created(&view))
}
