//! Limits against floods: a token bucket per project for `/v1` routes, and the refusal
//! sent to connections past the connection cap.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use hyper::StatusCode;

use super::error::ApiError;

/// A token bucket per project: `rate` tokens a second, holding at most one second's worth.
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<[u8; 16], (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate_per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `project`, or says how many seconds until one is available.
    pub fn take(&self, project: &[u8; 16]) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(*project).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64;
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limited",
            format!(
                "rate limit of {} requests per second exceeded; retry after {wait}s",
                self.rate
            ),
        );
        error.retry_after = Some(wait);
        Err(error)
    }
}

/// The raw HTTP/1.1 answer to a connection past the cap, written before closing it (the
/// connection is never handed to hyper, so no request is parsed or buffered).
pub fn too_many_connections() -> Vec<u8> {
    let body = r#"{"error":{"message":"too many open connections; retry shortly","type":"api_error","code":"unavailable"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket allows its rate in a burst, then refuses with a Retry-After, per project.
    #[test]
    fn bucket() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.take(&[1; 16]).is_ok());
        }
        let refused = limiter.take(&[1; 16]).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(1));
        assert!(
            limiter.take(&[2; 16]).is_ok(),
            "other projects have their own bucket"
        );
    }

    /// The canned refusal's content-length matches its body.
    #[test]
    fn refusal_is_well_formed() {
        let bytes = too_many_connections();
        let text = std::str::from_utf8(&bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{}",
            body.len()
        );
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
