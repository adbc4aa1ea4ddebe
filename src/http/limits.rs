//! Limits against floods: a token bucket per project for `/v1` and `/console` routes, and
//! the connection caps (all connections, and per client address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::ApiError;
use crate::job::ProjectId;

/// A token bucket per project: `rate` tokens a second, holding at most one second's worth.
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<ProjectId, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate_per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `project`, or says how many seconds until one is available.
    pub fn take(&self, project: &ProjectId) -> Result<(), ApiError> {
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
        Err(ApiError::rate_limited(
            format!(
                "rate limit of {} requests per second exceeded; retry after {wait}s",
                self.rate
            ),
            wait,
        ))
    }
}

/// Open connections per client address, where an IPv6 client counts by its /64 (a host
/// is given a whole /64, so counting single addresses would not limit it). IPv4 clients
/// seen on a dual-stack socket (`::ffff:a.b.c.d`) count as their IPv4 address.
pub struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<u128, usize>>,
}

/// One connection counted against its address; dropping it releases the count.
pub struct AddressSlot {
    owner: Arc<PerAddress>,
    key: u128,
}

impl PerAddress {
    pub fn new(limit: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn key(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(v4.to_ipv6_mapped()),
                None => u128::from(v6) & !u128::from(u64::MAX),
            },
        }
    }

    /// Counts a connection from `ip`, or `None` if its address is at the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = PerAddress::key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The answer to a connection past the server's cap.
pub fn too_many_connections() -> ApiError {
    ApiError::unavailable("too many open connections; retry shortly")
}

/// The answer to a connection past its address's cap.
pub fn too_many_from_address(limit: usize) -> ApiError {
    ApiError::rate_limited(
        format!(
            "too many open connections from your address (at most {limit}); close some or \
             retry shortly"
        ),
        1,
    )
}

/// Answers a connection that is not served with `error` (the request is never read, so
/// nothing is parsed or buffered), then closes it without resetting it.
pub async fn refuse(mut stream: tokio::net::TcpStream, error: ApiError) {
    use tokio::io::AsyncWriteExt;
    let sent = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(&error.to_raw_response()),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        super::conn::linger(stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket allows its rate in a burst, then refuses with a Retry-After, per project.
    #[test]
    fn bucket() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.take(&ProjectId::from_bytes([1; 16])).is_ok());
        }
        let refused = limiter.take(&ProjectId::from_bytes([1; 16])).unwrap_err();
        assert_eq!(refused.status(), hyper::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after(), Some(1));
        assert!(
            limiter.take(&ProjectId::from_bytes([2; 16])).is_ok(),
            "other projects have their own bucket"
        );
    }

    /// The canned refusal's content-length matches its body.
    #[test]
    fn refusal_is_well_formed() {
        let bytes = too_many_connections().to_raw_response();
        let text = std::str::from_utf8(&bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{}",
            body.len()
        );
        serde_json::from_str::<serde_json::Value>(body).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("retry-after: 1\r\n"), "{head}");
    }

    /// Each address has its own count, released when its connections close; an IPv6
    /// host counts by its /64 and a mapped IPv4 client as that IPv4 address.
    #[test]
    fn per_address_counts() {
        let caps = PerAddress::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = caps.admit(ip("10.0.0.1")).unwrap();
        let _b = caps.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert!(caps.admit(ip("10.0.0.1")).is_none());
        assert!(caps.admit(ip("10.0.0.2")).is_some(), "another address");
        drop(a);
        assert!(caps.admit(ip("10.0.0.1")).is_some(), "released on drop");
        let _c = caps.admit(ip("2001:db8:1:2::1")).unwrap();
        let _d = caps.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(caps.admit(ip("2001:db8:1:2::77")).is_none(), "same /64");
        assert!(caps.admit(ip("2001:db8:1:3::1")).is_some(), "another /64");
    }
}
