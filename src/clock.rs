//! The wall clock, in the units eddy stores and sends: Unix milliseconds, and RFC 3339
//! with milliseconds and `Z` for payloads.
//!
//! Deadlines are stored as wall-clock milliseconds because they must survive restarts;
//! the scheduler converts them to monotonic instants only for the in-memory wheel.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// `2026-02-15T08:30:00.000Z` for a Unix millisecond timestamp.
pub fn rfc3339_ms(ms: u64) -> String {
    let at = time::OffsetDateTime::UNIX_EPOCH + Duration::from_millis(ms);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payload timestamps have exactly three fraction digits and a `Z`, like the seed's.
    #[test]
    fn rfc3339_has_millis_and_z() {
        assert_eq!(rfc3339_ms(1_771_144_200_000), "2026-02-15T08:30:00.000Z");
        assert_eq!(rfc3339_ms(1_771_144_202_007), "2026-02-15T08:30:02.007Z");
    }
}
