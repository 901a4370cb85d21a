//! Per-user token buckets (messages and typing indicators).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_sec: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `user` at `now`; false when the user is over the limit.
    pub fn allow_at(&self, user: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(user.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn allow(&self, user: &str) -> bool {
        self.allow_at(user, Instant::now())
    }

    /// Forgets a user (its last device went away), so the map only holds active users.
    pub fn forget(&self, user: &str) {
        self.buckets.lock().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let r = RateLimiter::new(10.0, 3.0);
        let t = Instant::now();
        assert!(r.allow_at("a", t) && r.allow_at("a", t) && r.allow_at("a", t));
        assert!(!r.allow_at("a", t));
        assert!(r.allow_at("b", t), "users are independent");
        assert!(r.allow_at("a", t + Duration::from_millis(100)));
        assert!(!r.allow_at("a", t + Duration::from_millis(100)));
    }
}
