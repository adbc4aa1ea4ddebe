//! Checks of what clients send, in one place: names and texts, URLs (with the SSRF guard),
//! chat messages, channel ids, query strings (`limit`, times) and the `Idempotency-Key`
//! header.
//! Each refusal is a 400 whose message starts with the field it is about (a channel id
//! that is not one is a 404: there is no such request). The rules about resources (names
//! taken, references, expiry) are the catalog's; these only say whether input is well
//! formed.

use std::time::Duration;

use hyper::Request;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::config::Config;
use crate::egress;
use crate::job::ChannelId;

/// Names of workflows, events and structured outputs: 1–128 of `[A-Za-z0-9_.:-]`.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name_is(name, 128, ":") {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "{field}: must be 1 to 128 characters of letters, digits, '_', '-', '.' or ':'"
    )))
}

/// Provider names: 1–64 of `[A-Za-z0-9_.-]`.
pub fn check_provider_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name_is(name, 64, "") {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "{field}: must be 1 to 64 characters of letters, digits, '_', '-' or '.'"
    )))
}

/// Free text that must say something: 1 to `max` bytes, not only spaces (project names,
/// a workflow's provider and model).
pub fn check_text(field: &str, text: &str, max: usize) -> Result<(), ApiError> {
    if text.trim().is_empty() || text.len() > max {
        return Err(ApiError::invalid(format!(
            "{field}: must be 1 to {max} characters"
        )));
    }
    Ok(())
}

/// A key someone else issued: 1 to `max` visible ASCII characters, no spaces (a
/// provider's API key).
pub fn check_visible(field: &str, text: &str, max: usize) -> Result<(), ApiError> {
    if (1..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "{field}: must be 1 to {max} visible ASCII characters"
    )))
}

fn name_is(name: &str, max: usize, also: &str) -> bool {
    (1..=max).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || also.contains(c))
}

/// Which SSRF guard a URL is checked against (`egress`), or none (the operator allowed
/// private addresses); a refusal names the flag that lifts the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Webhooks,
    Providers,
    Off,
}

impl Guard {
    /// The guard for webhook URLs under `config`.
    pub fn webhooks(config: &Config) -> Guard {
        if config.allow_private_webhooks {
            Guard::Off
        } else {
            Guard::Webhooks
        }
    }

    /// The guard for provider `base_url`s under `config`.
    pub fn providers(config: &Config) -> Guard {
        if config.allow_private_providers {
            Guard::Off
        } else {
            Guard::Providers
        }
    }

    fn refusal(self, field: &str, why: &egress::Blocked) -> ApiError {
        let hint = match self {
            Guard::Providers => {
                "start eddy with --allow-private-providers to call models on loopback or \
                 private addresses"
            }
            Guard::Webhooks | Guard::Off => {
                "start eddy with --allow-private-webhooks to permit private addresses"
            }
        };
        ApiError::invalid(format!("{field}: {why} ({hint})"))
    }
}

/// An `http(s)://` URL with a host, at most 2048 characters; under a guard, not a literal
/// private or loopback address (names are checked when resolved: see
/// [`check_url_resolving`], and again at connect time).
pub fn check_url(field: &str, url: &str, guard: Guard) -> Result<reqwest::Url, ApiError> {
    if url.len() > 2048 {
        return Err(ApiError::invalid(format!(
            "{field}: longer than 2048 characters"
        )));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::invalid(format!("{field}: not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::invalid(format!(
            "{field}: must be an http:// or https:// URL with a host"
        )));
    }
    if guard != Guard::Off {
        egress::check_literal(&parsed).map_err(|b| guard.refusal(field, &b))?;
    }
    Ok(parsed)
}

/// [`check_url`], and under a guard the host name resolved now (within 2 s) to public
/// addresses only: for URLs registered to be called later.
pub async fn check_url_resolving(
    field: &str,
    url: &str,
    guard: Guard,
) -> Result<reqwest::Url, ApiError> {
    let parsed = check_url(field, url, guard)?;
    if guard != Guard::Off {
        egress::check_resolving(&parsed, Duration::from_secs(2))
            .await
            .map_err(|b| guard.refusal(field, &b))?;
    }
    Ok(parsed)
}

/// The roles a chat message may have.
const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

/// A non-empty list of `{role, content}` messages with known roles; errors name the field.
pub fn check_messages(messages: &[Map<String, Value>]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = match m.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r,
            Some(Value::String(r)) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role: '{r}' is not one of {}",
                    ROLES.join(", ")
                )));
            }
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role: must be a string"
                )));
            }
            None => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role: is required"
                )));
            }
        };
        match m.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            Some(Value::Null) | None if role == "assistant" => {}
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].content: must be a string or an array of parts"
                )));
            }
            None => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].content: is required"
                )));
            }
        }
    }
    Ok(())
}

/// A channel id from a URL or body: a UUID, else there is no such request (404).
pub fn parse_channel(text: &str) -> Result<ChannelId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::not_found(format!("request '{text}' not found")))
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, when present.
pub fn idempotency_key<B>(request: &Request<B>) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    // `to_str` takes visible ASCII, spaces and tabs: what a header value may be.
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) => Ok(Some(key.to_string())),
        _ => Err(ApiError::invalid(
            "Idempotency-Key: must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// A time as Unix milliseconds or an RFC 3339 string.
pub fn time_ms(field: &str, value: &Value) -> Result<u64, ApiError> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| ApiError::invalid(format!("{field}: must be Unix milliseconds"))),
        Value::String(s) => {
            let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| ApiError::invalid(format!("{field}: not an RFC 3339 time: {e}")))?;
            Ok((at.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        }
        _ => Err(ApiError::invalid(format!(
            "{field}: must be Unix milliseconds or an RFC 3339 time"
        ))),
    }
}

/// A request's query parameters, decoded.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn of<B>(request: &Request<B>) -> Query {
        Query(
            request
                .uri()
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`: a page size from 1 to 1000, 50 when absent.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.get("limit") {
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| ApiError::invalid("limit: must be an integer from 1 to 1000")),
            None => Ok(50),
        }
    }

    /// A time parameter, as Unix milliseconds or RFC 3339 (see [`time_ms`]).
    pub fn time(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                let v = v
                    .parse::<u64>()
                    .map_or_else(|_| Value::String(v.to_string()), Value::from);
                time_ms(name, &v)
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names, texts, page sizes and times: what passes, and that each refusal starts with
    /// its field.
    #[test]
    fn checks_name_their_field() {
        assert!(check_name("name", "content_generator:v1.2").is_ok());
        assert!(check_provider_name("provider", "my-vllm_1.0").is_ok());
        assert!(check_text("model", "gpt-4o", 200).is_ok());
        assert!(check_visible("api_key", "sk-123", 1024).is_ok());
        let refused = [
            check_name("name", ""),
            check_name("name", &"n".repeat(129)),
            check_name("name", "two words"),
            check_provider_name("provider", "a:b"),
            check_text("model", "   ", 200),
            check_visible("api_key", "sk 123", 1024),
        ];
        for (error, field) in refused
            .into_iter()
            .zip(["name", "name", "name", "provider", "model", "api_key"])
        {
            let message = error.unwrap_err().message().to_string();
            assert!(message.starts_with(&format!("{field}: ")), "{message}");
        }

        let query = |q: &str| Query::of(&Request::get(format!("/x?{q}")).body(()).unwrap());
        assert_eq!(query("").limit().unwrap(), 50);
        assert_eq!(query("limit=1000").limit().unwrap(), 1000);
        assert!(query("limit=0").limit().is_err());
        assert_eq!(query("since=1000").time("since").unwrap(), Some(1000));
        let at = query("until=1970-01-01T00:00:01.5Z").time("until").unwrap();
        assert_eq!(at, Some(1500));
        assert!(query("until=tomorrow").time("until").is_err());
        let far = time_ms("expires_at", &Value::from(u64::MAX)).unwrap();
        assert_eq!(far, u64::MAX, "times are not capped: callers bound them");
    }
}
