//! Failed-login throttling per source address: a token-guessing flood costs the broker a
//! closed socket per attempt, while clients that log in correctly are never counted.
//!
//! Each failed login takes a cell from its address's bucket (`governor`, keyed by IP). When
//! the bucket is empty the address is blocked until the bucket would allow again; blocked
//! addresses' sockets are closed at accept, before TLS, WebSocket or CONNECT are read.

use crate::metrics as m;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};
use tracing::info;

/// Addresses remembered as blocked at most (each entry is a few dozen bytes).
const MAX_BLOCKED: usize = 100_000;

pub struct AuthThrottle {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthThrottle {
    pub fn new(per_minute: u32, burst: u32) -> AuthThrottle {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        AuthThrottle {
            failures: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Whether sockets from `ip` are refused right now.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let mut blocked = self.blocked.lock();
        match blocked.get(&ip) {
            Some(until) if *until > Instant::now() => {
                metrics::counter!(m::AUTH_THROTTLED).increment(1);
                true
            }
            Some(_) => {
                blocked.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if let Err(not_until) = self.failures.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock();
            if blocked.len() >= MAX_BLOCKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            if blocked.len() < MAX_BLOCKED
                && blocked
                    .insert(ip, Instant::now() + wait.max(Duration::from_millis(1)))
                    .is_none()
            {
                info!(%ip, wait_ms = wait.as_millis() as u64, "too many failed logins: address throttled");
            }
        }
    }

    /// Forgets addresses whose buckets are full again (call now and then).
    pub fn sweep(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        self.blocked.lock().retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_burst_only_that_address() {
        let t = AuthThrottle::new(60, 3);
        let bad: IpAddr = [10, 0, 0, 1].into();
        let good: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            t.failed(bad);
            assert!(!t.is_blocked(bad));
        }
        t.failed(bad);
        assert!(t.is_blocked(bad));
        assert!(!t.is_blocked(good));
        // One cell comes back per second at 60/min.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!t.is_blocked(bad));
        t.sweep();
    }
}
