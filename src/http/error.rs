//! The JSON error envelope and the one mapping from [`crate::Error`] to HTTP:
//! `{"error": {"message": "...", "type": "...", "code": "..."}}`.

use hyper::StatusCode;
use hyper::header::{HeaderValue, RETRY_AFTER};

use super::json::{Body, Response, json_response};
use crate::error::Error;

/// An error as a client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
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

    /// 400 `invalid_request`; the message names the field.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "Invalid API key provided",
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

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
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

    fn envelope(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "code": self.code }
        })
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
        let mut response: hyper::Response<Body> = json_response(self.status, &self.envelope());
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
            Error::WorkflowNotFound(_) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "workflow_not_found",
                message,
            ),
            Error::ModelNotSupported(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "model_not_supported",
                message,
            ),
            Error::AlreadyCompleted(_) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict_error",
                "already_completed",
                message,
            ),
            Error::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict_error", "conflict", message)
            }
            Error::Unavailable(_) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    "unavailable",
                    message,
                );
                e.retry_after = Some(1);
                e
            }
        }
    }
}
