//! What eddy answers with: the body type every response has, and JSON and text
//! responses. Errors become responses in [`super::error`], which builds on these.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

/// Every response body: whole, or streamed (a chat completion's server-sent events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Response = hyper::Response<Body>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// `bytes` with `status` and a `content-type`.
pub fn typed(status: StatusCode, content_type: &'static str, bytes: impl Into<Bytes>) -> Response {
    let mut response = hyper::Response::new(full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    let bytes = serde_json::to_vec(value).expect("responses serialize");
    typed(status, "application/json", bytes)
}

/// 200 with `value`.
pub fn ok<T: Serialize + ?Sized>(value: &T) -> Response {
    json_response(StatusCode::OK, value)
}

/// 201 with `value`: what was created.
pub fn created<T: Serialize + ?Sized>(value: &T) -> Response {
    json_response(StatusCode::CREATED, value)
}
