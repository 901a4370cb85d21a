//! Latency histograms, per-publisher sequence tracking and live counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram records, in microseconds (one hour); larger values saturate.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Latency {
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_US, 3)
            .unwrap_or_else(|_| unreachable!("constant bounds are valid"));
        Latency { hist }
    }

    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1_000).clamp(1, MAX_US);
        self.hist.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn reset(&mut self) {
        self.hist.reset();
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.hist;
        let ms = |us: u64| us as f64 / 1_000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of one latency histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// A latency histogram shared between connection tasks, with a second histogram the
/// progress line drains every second.
///
/// A std `Mutex` is fine: it is held for one `record` and never across an `.await`.
#[derive(Clone, Default)]
pub struct SharedLatency {
    inner: Arc<Mutex<(Latency, Latency)>>,
}

impl SharedLatency {
    pub fn record_ns(&self, ns: u64) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0.record_ns(ns);
        g.1.record_ns(ns);
    }

    pub fn merge(&self, other: &Latency) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0.merge(other);
        g.1.merge(other);
    }

    /// The whole-run histogram.
    pub fn total(&self) -> Latency {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The summary of what was recorded since the last call, then starts a new interval.
    pub fn take_interval(&self) -> LatencySummary {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let s = g.1.summary();
        g.1.reset();
        s
    }
}

/// A live counter, shared with the progress line.
#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Raises the value to `v` if it is larger (a running maximum).
    pub fn max(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
}

/// Whether a received sequence number was new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    /// Outside the range a run can produce: a corrupt or foreign payload.
    Invalid,
}

/// Sequence numbers received from one publisher: a bitset, so loss and duplicates are
/// counted exactly, whatever the order of arrival.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    bits: Vec<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    highest: Option<u64>,
}

impl SeqTracker {
    /// Sequence numbers at or above this are refused (keeps a corrupt payload from
    /// allocating gigabytes).
    pub const MAX_SEQ: u64 = 1 << 30;

    pub fn record(&mut self, seq: u64) -> Seen {
        if seq >= Self::MAX_SEQ {
            return Seen::Invalid;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.bits[word] |= mask;
        self.unique += 1;
        match self.highest {
            Some(h) if seq < h => self.reordered += 1,
            _ => self.highest = Some(seq),
        }
        Seen::New
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// How many of the sequence numbers `0..sent` never arrived.
    pub fn missing(&self, sent: u64) -> u64 {
        let sent = sent.min(Self::MAX_SEQ);
        let full_words = (sent / 64) as usize;
        let mut have: u64 = self
            .bits
            .iter()
            .take(full_words)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = sent % 64;
        if rest > 0 {
            if let Some(w) = self.bits.get(full_words) {
                have += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        sent - have
    }

    /// Received numbers at or above `sent` (not sent in this run as far as we know).
    pub fn unexpected(&self, sent: u64) -> u64 {
        self.unique - (sent.min(Self::MAX_SEQ) - self.missing(sent))
    }
}

/// Loss and duplicate totals of many (publisher, subscriber) streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LossTally {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unexpected: u64,
}

impl LossTally {
    /// Adds what one subscriber saw from each publisher, given how many each one sent.
    pub fn add_subscriber(&mut self, seen: &HashMap<u32, SeqTracker>, sent: &HashMap<u32, u64>) {
        for (publisher, &n) in sent {
            self.expected += n;
            match seen.get(publisher) {
                Some(t) => {
                    self.lost += t.missing(n);
                    self.received += t.unique() - t.unexpected(n);
                    self.unexpected += t.unexpected(n);
                    self.duplicates += t.duplicates();
                    self.reordered += t.reordered();
                }
                None => self.lost += n,
            }
        }
        for (publisher, t) in seen {
            if !sent.contains_key(publisher) {
                self.unexpected += t.unique();
                self.duplicates += t.duplicates();
            }
        }
    }
}

/// A 64-bit key for a server-assigned message id, so per-message bookkeeping stays small.
pub fn id_key(id: &str) -> u64 {
    // FNV-1a: stable, fast, and collisions across a run's ids are negligible.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_loss_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 4, 3, 3, 7, 100] {
            t.record(s);
        }
        assert_eq!(t.unique(), 7);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.reordered(), 1);
        // Sent 0..8: missing 5 and 6; 100 was never sent.
        assert_eq!(t.missing(8), 2);
        assert_eq!(t.unexpected(8), 1);
        assert_eq!(t.missing(0), 0);
        assert_eq!(t.missing(200), 200 - 7);
        assert_eq!(t.record(SeqTracker::MAX_SEQ), Seen::Invalid);
    }

    #[test]
    fn tracker_handles_word_boundaries() {
        let mut t = SeqTracker::default();
        for s in 0..128 {
            assert_eq!(t.record(s), Seen::New);
        }
        assert_eq!(t.missing(64), 0);
        assert_eq!(t.missing(65), 0);
        assert_eq!(t.missing(128), 0);
        assert_eq!(t.missing(130), 2);
        assert_eq!(t.record(63), Seen::Duplicate);
    }

    #[test]
    fn tally_aggregates_subscribers() {
        let mut a = SeqTracker::default();
        (0..10).for_each(|s| {
            a.record(s);
        });
        let mut b = SeqTracker::default();
        (0..8).for_each(|s| {
            b.record(s);
        });
        b.record(2);
        let sent: HashMap<u32, u64> = [(1, 10), (2, 10)].into_iter().collect();
        let mut tally = LossTally::default();
        tally.add_subscriber(&[(1, a.clone()), (2, b)].into_iter().collect(), &sent);
        // A subscriber that heard nothing from publisher 2.
        tally.add_subscriber(&[(1, a)].into_iter().collect(), &sent);
        assert_eq!(tally.expected, 40);
        assert_eq!(tally.received, 28);
        assert_eq!(tally.lost, 12);
        assert_eq!(tally.duplicates, 1);
    }

    #[test]
    fn latency_summary_in_ms() {
        let mut l = Latency::new();
        for us in 1..=1000u64 {
            l.record_ns(us * 1_000);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 0.5).abs() < 0.01);
        assert!((s.p99_ms - 0.99).abs() < 0.01);
        assert!((s.max_ms - 1.0).abs() < 0.01);
        let mut m = Latency::new();
        m.record_ns(5_000_000_000);
        l.merge(&m);
        assert_eq!(l.summary().count, 1001);
        assert!((l.summary().max_ms - 5000.0).abs() < 5.0);
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }

    #[test]
    fn shared_latency_interval_resets() {
        let s = SharedLatency::default();
        s.record_ns(1_000_000);
        assert_eq!(s.take_interval().count, 1);
        assert_eq!(s.take_interval().count, 0);
        assert_eq!(s.total().count(), 1);
    }

    #[test]
    fn id_keys_differ() {
        assert_ne!(id_key("1"), id_key("2"));
        assert_eq!(id_key("123"), id_key("123"));
    }
}
