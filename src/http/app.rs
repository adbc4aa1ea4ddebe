//! What every handler shares ([`App`]), and who is calling: one parser of bearer tokens
//! for API keys, the admin token and the metrics token alike, the key and project a
//! request authenticates as, and the per-project rate limit.

use std::sync::Arc;

use hyper::Request;
use hyper::header::AUTHORIZATION;

use super::error::ApiError;
use super::limits::RateLimiter;
use crate::catalog::{ApiKey, Project};
use crate::clock::now_ms;
use crate::engine::Engine;
use crate::secret::ct_eq;
use crate::ws::socket::SocketContext;

/// What every handler needs.
pub struct App {
    pub engine: Arc<Engine>,
    pub sockets: Arc<SocketContext>,
    /// Per-project rate limit on `/v1` and `/console` routes, when configured.
    pub rate_limit: Option<RateLimiter>,
}

/// The caller of a request: the API key it presented and that key's project.
pub struct Caller {
    pub key: Arc<ApiKey>,
    pub project: Arc<Project>,
}

impl App {
    /// The caller of a request with a valid `Authorization: Bearer` key, or 401.
    pub fn authenticate<B>(&self, request: &Request<B>) -> Result<Caller, ApiError> {
        let presented = bearer(request).ok_or_else(ApiError::unauthorized)?;
        let catalog = self.engine.catalog();
        let key = catalog
            .authenticate(presented, now_ms())
            .ok_or_else(ApiError::unauthorized)?;
        let project = catalog
            .project(&key.project)
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Caller { key, project })
    }

    /// [`App::authenticate`], then a token of the project's rate limit (429 without one).
    pub fn admit<B>(&self, request: &Request<B>) -> Result<Caller, ApiError> {
        let caller = self.authenticate(request)?;
        if let Some(limiter) = &self.rate_limit {
            limiter.take(&caller.project.id)?;
        }
        Ok(caller)
    }
}

/// The request's bearer token: `Authorization: Bearer <token>`, the scheme in any case
/// and any spaces around the token (RFC 9110 §11.1).
pub fn bearer<B>(request: &Request<B>) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the request's bearer token is one of `tokens`. Every token is compared in
/// constant time, so the time taken does not tell which one matched.
pub fn presents_one_of<B>(request: &Request<B>, tokens: &[&str]) -> bool {
    let presented = bearer(request).unwrap_or_default();
    tokens.iter().fold(false, |any, token| {
        ct_eq(presented.as_bytes(), token.as_bytes()) | any
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheme is read in any case and spaces around the token are dropped; anything
    /// else (another scheme, no token, no space after the scheme) is no bearer token.
    #[test]
    fn bearer_tokens() {
        let read = |value: &str| {
            let request = Request::builder()
                .header(AUTHORIZATION, value)
                .body(())
                .unwrap();
            bearer(&request).map(str::to_string)
        };
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "Bearer   tok  "] {
            assert_eq!(read(value).as_deref(), Some("tok"), "{value:?}");
        }
        for value in ["Basic tok", "Bearer", "Bearer   ", "Bearertok", "tok"] {
            assert_eq!(read(value), None, "{value:?}");
        }
        let none = Request::builder().body(()).unwrap();
        assert_eq!(bearer(&none), None);
    }
}
