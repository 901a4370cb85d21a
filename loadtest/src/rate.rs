//! The open-loop timetable, the one pacing every sender uses, and the run clock.
//!
//! Senders never wait for a reply before the next send: the n-th send is due at a fixed
//! time computed up front, and latency is measured from that time. A broker that stalls
//! therefore shows up as latency for every message scheduled during the stall, instead of
//! silently slowing the sender down (coordinated omission).

use std::time::{Duration, Instant};

/// Monotonic time since the start of the run, in nanoseconds. Every timestamp the tool
/// embeds in a payload uses this clock, so publisher and subscriber (same process) agree.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn instant_at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// Sleeps until `ns`; returns at once when that time has passed.
    pub async fn sleep_until(&self, ns: u64) {
        if ns > self.now_ns() {
            tokio::time::sleep_until(self.instant_at(ns).into()).await;
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// When each send of one sender is due: `start + n * interval`, bounded by an end time and
/// an optional count.
#[derive(Clone, Debug, PartialEq)]
pub struct Timetable {
    start_ns: u64,
    interval_ns: f64,
    end_ns: u64,
    limit: Option<u64>,
}

impl Timetable {
    /// `rate` sends per second starting at `start_ns`, none at or after `end_ns`, at most `limit`.
    pub fn new(start_ns: u64, rate: f64, end_ns: u64, limit: Option<u64>) -> Self {
        let interval_ns = if rate > 0.0 {
            1e9 / rate
        } else {
            f64::INFINITY
        };
        Timetable {
            start_ns,
            interval_ns,
            end_ns,
            limit,
        }
    }

    /// Splits a total rate over `senders` senders, staggering their starts evenly within one
    /// interval so the aggregate stream is smooth rather than bursty.
    pub fn split(
        start_ns: u64,
        total_rate: f64,
        senders: usize,
        end_ns: u64,
        limit: Option<u64>,
    ) -> Vec<Timetable> {
        let senders = senders.max(1);
        let per = total_rate / senders as f64;
        let interval = if per > 0.0 { 1e9 / per } else { 0.0 };
        (0..senders)
            .map(|i| {
                let offset = (interval * i as f64 / senders as f64) as u64;
                Timetable::new(start_ns + offset, per, end_ns, limit)
            })
            .collect()
    }

    /// Due time of send `n`, or `None` when the timetable has no send `n`.
    pub fn at(&self, n: u64) -> Option<u64> {
        if self.limit.is_some_and(|l| n >= l) || !self.interval_ns.is_finite() {
            return None;
        }
        let t = self
            .start_ns
            .saturating_add((n as f64 * self.interval_ns) as u64);
        (t < self.end_ns).then_some(t)
    }

    /// How many sends the timetable holds in total.
    pub fn len(&self) -> u64 {
        if !self.interval_ns.is_finite() || self.end_ns <= self.start_ns {
            return 0;
        }
        let span = (self.end_ns - self.start_ns) as f64;
        let mut n = (span / self.interval_ns).ceil() as u64;
        // Guard the float rounding at the boundary.
        while n > 0 && self.at(n - 1).is_none() {
            n -= 1;
        }
        while self.at(n).is_some() {
            n += 1;
        }
        match self.limit {
            Some(l) => n.min(l),
            None => n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How an open-loop sender is paced: at the due times of a timetable, or as fast as it can
/// (each send due when it is made) until an end time or a count. Every sender of the tool
/// (chat senders, raw publishers, the offline pile-up, history queries) walks its sends with
/// [`Pace::due`].
#[derive(Clone, Debug)]
pub enum Pace {
    Table(Timetable),
    Max { end_ns: u64, limit: Option<u64> },
}

impl Pace {
    /// `table` when a rate was asked for, otherwise as fast as possible.
    pub fn of(table: Option<Timetable>, end_ns: u64, limit: Option<u64>) -> Pace {
        match table {
            Some(t) => Pace::Table(t),
            None => Pace::Max { end_ns, limit },
        }
    }

    /// Waits until send `n` is due and returns its due time; `None` when the pace has no
    /// send `n`. Call it with n = 0, 1, 2, … in turn.
    pub async fn due(&self, clock: &Clock, n: u64) -> Option<u64> {
        match self {
            Pace::Table(t) => {
                let due = t.at(n)?;
                clock.sleep_until(due).await;
                Some(due)
            }
            Pace::Max { end_ns, limit } => {
                if limit.is_some_and(|l| n >= l) {
                    return None;
                }
                // rumqttc's request channel does not take part in tokio's cooperative budget:
                // at max rate a sender would otherwise never yield and starve the receivers
                // sharing its worker thread.
                if n > 0 && n % 32 == 0 {
                    tokio::task::yield_now().await;
                }
                let now = clock.now_ns();
                (now < *end_ns).then_some(now)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_evenly_spaced_from_start() {
        let t = Timetable::new(1_000, 1000.0, u64::MAX, None);
        assert_eq!(t.at(0), Some(1_000));
        assert_eq!(t.at(1), Some(1_001_000));
        assert_eq!(t.at(1000), Some(1_000_001_000));
    }

    #[test]
    fn end_and_limit_bound_the_timetable() {
        let t = Timetable::new(0, 10.0, 1_000_000_000, None);
        assert_eq!(t.len(), 10);
        assert_eq!(t.at(9), Some(900_000_000));
        assert_eq!(t.at(10), None);
        let t = Timetable::new(0, 10.0, 1_000_000_000, Some(3));
        assert_eq!(t.len(), 3);
        assert_eq!(t.at(3), None);
        let t = Timetable::new(0, 0.0, 1_000_000_000, None);
        assert_eq!(t.len(), 0);
        assert_eq!(t.at(0), None);
    }

    #[test]
    fn split_keeps_the_total_rate_and_interleaves() {
        let tables = Timetable::split(0, 1000.0, 4, 1_000_000_000, None);
        let total: u64 = tables.iter().map(Timetable::len).sum();
        assert_eq!(total, 1000);
        let mut firsts: Vec<u64> = tables.iter().filter_map(|t| t.at(0)).collect();
        firsts.sort_unstable();
        // 4 senders at 250/s each (4 ms apart), staggered by 1 ms.
        assert_eq!(firsts, vec![0, 1_000_000, 2_000_000, 3_000_000]);
        let mut all: Vec<u64> = tables
            .iter()
            .flat_map(|t| (0..t.len()).filter_map(|n| t.at(n)))
            .collect();
        all.sort_unstable();
        let gaps: Vec<u64> = all.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| (999_000..=1_001_000).contains(g)));
    }

    #[test]
    fn unbounded_end_does_not_overflow() {
        let t = Timetable::new(5, 1000.0, u64::MAX, None);
        assert_eq!(t.at(u64::MAX), None);
        assert_eq!(t.at(2), Some(2_000_005));
    }

    #[tokio::test]
    async fn max_pace_ends_at_the_limit_or_the_end_time() {
        let clock = Clock::new();
        let pace = Pace::of(None, u64::MAX, Some(3));
        for n in 0..3 {
            assert!(pace.due(&clock, n).await.is_some());
        }
        assert_eq!(pace.due(&clock, 3).await, None);
        let ended = Pace::of(None, clock.now_ns(), None);
        assert_eq!(ended.due(&clock, 0).await, None);
        let table = Pace::of(Some(Timetable::new(0, 1000.0, u64::MAX, Some(2))), 0, None);
        assert_eq!(table.due(&clock, 1).await, Some(1_000_000));
        assert_eq!(table.due(&clock, 2).await, None);
    }

    #[test]
    fn fractional_rates_are_exact_over_time() {
        let t = Timetable::new(0, 3.0, 10_000_000_000, None);
        assert_eq!(t.len(), 30);
    }
}
