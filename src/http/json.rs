//! Request bodies: read within the size limit and the body read timeout, and parsed as
//! JSON with errors that name the offending field.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::config::Config;

/// After refusing a body, eddy still reads (and drops) this much of it, for at most
/// [`DRAIN_TIME`], so that a client still sending gets the 413 instead of a connection
/// reset; a client sending more than that is cut off.
const DRAIN_LIMIT: usize = 4 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The whole body, refused with 413 when its declared or actual size passes the body
/// limit (a declared size over it is refused without keeping any of the body), and with
/// 408 when it takes longer than the body read timeout to arrive (a trickling client
/// cannot hold a connection).
pub async fn read_body(request: Request<Incoming>, config: &Config) -> Result<Bytes, ApiError> {
    let timeout = config.body_read_timeout;
    tokio::time::timeout(timeout, read_limited(request, config.body_limit))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::request_timeout(format!(
                "the request body did not arrive within {}s",
                timeout.as_secs()
            )))
        })
}

async fn read_limited(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = request.into_body();
    if declared.is_some_and(|n| n > limit as u64) {
        drain(&mut body).await;
        return Err(ApiError::payload_too_large(limit));
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::invalid(format!("cannot read request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(&mut body).await;
                return Err(ApiError::payload_too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops what is left of a refused body, within [`DRAIN_LIMIT`] and [`DRAIN_TIME`].
async fn drain(body: &mut Incoming) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// Parses a JSON body into `T`; errors name the path of the offending field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "request body is empty: a JSON object is required",
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::invalid(format!("request body is not valid UTF-8: {e}")))?;
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::invalid("request body: must be a JSON object"));
    }
    // The plain parser first; only a body that fails is parsed again to name the field.
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = inner.to_string();
        let what = what.split(" at line ").next().unwrap_or(&what).to_string();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("request body is not valid JSON: {what}"))
        } else if path == "." || path.is_empty() {
            ApiError::invalid(format!("request body: {what}"))
        } else {
            ApiError::invalid(format!("{path}: {what}"))
        }
    })?;
    de.end()
        .map_err(|_| ApiError::invalid("request body has trailing data after the JSON value"))?;
    Ok(value)
}

/// The body parsed as JSON into `T`.
pub async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
    config: &Config,
) -> Result<T, ApiError> {
    parse(&read_body(request, config).await?)
}

/// [`read_json`], where an empty body means `T::default()`.
pub async fn read_json_or_default<T: DeserializeOwned + Default>(
    request: Request<Incoming>,
    config: &Config,
) -> Result<T, ApiError> {
    let bytes = read_body(request, config).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(&bytes)
}
