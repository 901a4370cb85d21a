//! Per-user rate limits (messages and typing indicators): `governor`'s keyed GCRA limiter, a
//! token bucket of `burst` cells refilled at `per_sec`, starting full.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// `burst` is floored to a whole number of cells, at least 1; a rate too high to express as a
/// period (below a nanosecond) is unlimited in practice.
fn quota(per_sec: f64, burst: f64) -> Quota {
    let burst =
        NonZeroU32::new(burst.clamp(1.0, f64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
    Duration::try_from_secs_f64(1.0 / per_sec)
        .ok()
        .and_then(Quota::with_period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

pub struct UserLimiter(DefaultKeyedRateLimiter<String>);

impl UserLimiter {
    pub fn new(per_sec: f64, burst: f64) -> UserLimiter {
        UserLimiter(RateLimiter::keyed(quota(per_sec, burst)))
    }

    /// Takes one cell for `user`; false when the user is over the limit.
    pub fn allow(&self, user: &String) -> bool {
        self.0.check_key(user).is_ok()
    }

    /// Forgets users whose bucket has filled up again (indistinguishable from a new user), so
    /// the map holds only recently active users. Called every minute.
    pub fn sweep(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }

    /// Users currently remembered.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn burst_then_refill() {
        let clock = FakeRelativeClock::default();
        let r = RateLimiter::dashmap_with_clock(quota(10.0, 3.0), clock.clone());
        let (a, b) = (String::from("a"), String::from("b"));
        for _ in 0..3 {
            assert!(r.check_key(&a).is_ok());
        }
        assert!(r.check_key(&a).is_err());
        assert!(r.check_key(&b).is_ok(), "users are independent");
        clock.advance(Duration::from_millis(100));
        assert!(r.check_key(&a).is_ok());
        assert!(r.check_key(&a).is_err());
        // Once a's bucket is full again it is forgotten.
        clock.advance(Duration::from_secs(1));
        r.retain_recent();
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn odd_rates_and_bursts() {
        let r = UserLimiter::new(1e12, 0.5);
        let u = String::from("u");
        assert!(r.allow(&u), "a burst below 1 still allows one");
        let r = UserLimiter::new(0.001, 2.9);
        assert!(r.allow(&u) && r.allow(&u));
        assert!(!r.allow(&u), "2.9 is floored to 2");
        r.sweep();
        assert_eq!(r.remembered(), 1, "an empty bucket is remembered");
    }
}
