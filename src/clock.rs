//! Wall-clock time as the store and the wire carry it (pure; no dependencies).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: message timestamps, last seen, the health probe row.
/// A clock before 1970 reads 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch: token `exp`/`nbf`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_agree() {
        let (ms, s) = (now_ms(), unix_now());
        assert!(ms > 1_600_000_000_000);
        assert!((ms / 1000).abs_diff(s as i64) <= 1);
    }
}
