//! Every error eddy answers with, and the one place that turns errors into statuses: the
//! constructors of [`ApiError`] (nothing else in `http` builds one from a status), the
//! mappings from [`crate::Error`], [`CatalogError`] and [`StoreError`], and the builders of
//! the envelope `{"error": {"message": "...", "type": "...", "code": "..."}}`: alone, as a
//! whole HTTP/1.1 answer for a connection hyper never serves, or with fields beside it (a
//! wrapped `/v1/ai` answer). A streamed chat completion that fails after its headers ends
//! with the same envelope as an event, as OpenAI's streams do.

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Method, StatusCode};
use serde_json::{Map, Value};

use super::response::{Response, json_response};
use crate::catalog::{CatalogError, Named, Resource};
use crate::error::Error;
use crate::store::StoreError;

/// What a handler returns: its answer, or the error the client gets instead.
pub type Answer = Result<Response, ApiError>;

/// An error as a client sees it. Built only by the constructors below.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    /// Seconds, for a `Retry-After` header.
    retry_after: Option<u64>,
}

const INVALID: &str = "invalid_request_error";

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retrying_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Seconds after which the client may try again, if it may.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// 400 `invalid_request`; the message names the field.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, INVALID, "invalid_request", message)
    }

    /// The same error about `field`: its message then starts with the field's name.
    pub fn in_field(mut self, field: &str) -> ApiError {
        self.message = format!("{field}: {}", self.message);
        self
    }

    /// 401 for a request without a valid API key.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "Invalid API key provided",
        )
    }

    /// 401 for a route that takes the admin token.
    pub fn invalid_admin_token() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_admin_token",
            "Invalid admin token provided",
        )
    }

    /// 401 for `/metrics` on the API listener.
    pub fn invalid_metrics_token() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_metrics_token",
            "Invalid metrics token provided: /metrics takes --metrics-token or --admin-token",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "authentication_error",
            "forbidden",
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "not_found",
            message,
        )
    }

    /// 404 for a path that is no route.
    pub fn no_route(method: &Method, path: &str) -> ApiError {
        ApiError::not_found(format!("no route for {method} {path}"))
    }

    /// 405 for a route asked with a method it does not take.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            INVALID,
            "request_timeout",
            message,
        )
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 414 for a request target longer than `limit` bytes.
    pub fn uri_too_long(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            INVALID,
            "uri_too_long",
            format!("the request target is longer than {limit} bytes"),
        )
    }

    /// 431 for a request head too large.
    pub fn headers_too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            INVALID,
            "headers_too_large",
            message,
        )
    }

    /// 429, to be retried after `secs`.
    pub fn rate_limited(message: impl Into<String>, secs: u64) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limited",
            message,
        )
        .retrying_after(secs)
    }

    /// 503, to be retried in a second: the store cannot take the request, or a cap is
    /// reached.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "unavailable",
            message,
        )
        .retrying_after(1)
    }

    /// 502 `ai_failed`: every model attempt failed.
    pub fn ai_failed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, "api_error", "ai_failed", message)
    }

    /// `{"error": {"message", "type", "code"}}`.
    pub fn envelope(&self) -> Value {
        self.envelope_beside(Map::new())
    }

    /// The envelope with `fields` beside `error` (what a wrapped `/v1/ai` answer carries).
    pub fn envelope_beside(&self, fields: Map<String, Value>) -> Value {
        let error = serde_json::json!({
            "message": self.message, "type": self.kind, "code": self.code
        });
        let mut body = Map::from_iter([("error".to_string(), error)]);
        body.extend(fields);
        Value::Object(body)
    }

    /// The whole HTTP/1.1 answer as bytes, with `connection: close`, for a connection that
    /// is refused before hyper serves it.
    pub fn to_raw_response(&self) -> Vec<u8> {
        let body = self.envelope().to_string();
        let retry = self
            .retry_after
            .map(|s| format!("retry-after: {s}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {}\r\ncontent-type: application/json\r\n{retry}connection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }

    pub fn into_response(self) -> Response {
        self.into_response_beside(Map::new())
    }

    /// The response with `fields` beside the envelope's `error`.
    pub fn into_response_beside(self, fields: Map<String, Value>) -> Response {
        let mut response = json_response(self.status, &self.envelope_beside(fields));
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let message = e.to_string();
        match e {
            Error::Invalid(_) => ApiError::invalid(message),
            Error::NotFound(_) => ApiError::not_found(message),
            Error::WorkflowNotFound(_) => workflow_not_found(message),
            Error::ModelNotSupported(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                INVALID,
                "model_not_supported",
                message,
            ),
            Error::AlreadyCompleted(_) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict_error",
                "already_completed",
                message,
            ),
            Error::Conflict(_) => conflict(message),
            Error::Unavailable(_) => ApiError::unavailable(message),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        let message = e.to_string();
        match e {
            CatalogError::NotFound(Named(Resource::Workflow, _)) => workflow_not_found(message),
            CatalogError::NotFound(_) => ApiError::not_found(message),
            CatalogError::Exists(_) | CatalogError::InUse { .. } => conflict(message),
            CatalogError::NoSuchOutput(_) | CatalogError::WouldOutlive(_) => {
                ApiError::invalid(message)
            }
            CatalogError::Outlived(_) => ApiError::forbidden(message),
            CatalogError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        Error::from(e).into()
    }
}

fn workflow_not_found(message: String) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "workflow_not_found",
        message,
    )
}

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict_error", "conflict", message)
}
