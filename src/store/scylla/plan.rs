//! Pure arithmetic over the message layout: buckets, history page plans, seq seeding.
//!
//! Kept free of I/O so every boundary case is tested without a cluster.

use crate::store::PageDir;

/// The partition bucket of a seq. Bucket 0 holds seqs 1..size-1 (seq 0 is never used);
/// bucket k holds k*size ..= (k+1)*size - 1.
pub fn bucket_of(seq: u64, bucket_size: u64) -> u64 {
    seq / bucket_size
}

/// The highest seq that belongs to `bucket`.
pub fn bucket_last_seq(bucket: u64, bucket_size: u64) -> u64 {
    bucket
        .checked_add(1)
        .and_then(|b| b.checked_mul(bucket_size))
        .map_or(u64::MAX, |end| end - 1)
}

/// One range read inside one partition, bounds inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketRange {
    pub bucket: u64,
    pub lo: u64,
    pub hi: u64,
}

/// What a history page reads and whether more exists beyond it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagePlan {
    /// Ascending by bucket; concatenating the (ascending) results gives the page.
    pub ranges: Vec<BucketRange>,
    pub has_more: bool,
}

/// Plans a history page over a conversation whose highest seq is `last_seq`.
///
/// Seqs are dense (1..=last_seq, no holes: see `SeqAllocator`), so the page is a seq interval
/// computed up front, split at bucket boundaries, and `has_more` follows from arithmetic —
/// no extra "peek" read.
pub fn plan_page(last_seq: u64, dir: PageDir, limit: u32, bucket_size: u64) -> PagePlan {
    let limit = u64::from(limit);
    // The inclusive window [lo, hi] of the page, plus whether seqs exist beyond it.
    let (lo, hi, has_more) = match dir {
        PageDir::Before(before) => {
            let hi = match before {
                Some(b) => b.saturating_sub(1).min(last_seq),
                None => last_seq,
            };
            if hi == 0 {
                return PagePlan {
                    ranges: Vec::new(),
                    has_more: false,
                };
            }
            if limit == 0 {
                return PagePlan {
                    ranges: Vec::new(),
                    has_more: true,
                };
            }
            let lo = hi.saturating_sub(limit - 1).max(1);
            (lo, hi, lo > 1)
        }
        PageDir::After(after) => {
            if after >= last_seq {
                return PagePlan {
                    ranges: Vec::new(),
                    has_more: false,
                };
            }
            if limit == 0 {
                return PagePlan {
                    ranges: Vec::new(),
                    has_more: true,
                };
            }
            let lo = after + 1;
            let hi = after.saturating_add(limit).min(last_seq);
            (lo, hi, hi < last_seq)
        }
    };
    let mut ranges = Vec::new();
    let mut bucket = bucket_of(lo, bucket_size);
    let last_bucket = bucket_of(hi, bucket_size);
    while bucket <= last_bucket {
        let first_in_bucket = bucket.saturating_mul(bucket_size);
        ranges.push(BucketRange {
            bucket,
            lo: lo.max(first_in_bucket),
            hi: hi.min(bucket_last_seq(bucket, bucket_size)),
        });
        bucket += 1;
    }
    PagePlan { ranges, has_more }
}

/// Finds a conversation's highest seq by probing buckets, starting at the bucket of a hint
/// that is known not to exceed it (`conv_meta.last_seq`, written after the message row).
///
/// Because seqs are dense, a bucket that is not full holds the highest seq, and an empty
/// bucket after a full one means the full one ended the conversation. Usually one read.
#[derive(Clone, Debug)]
pub struct SeedWalk {
    bucket_size: u64,
    bucket: u64,
    last: u64,
}

impl SeedWalk {
    pub fn new(hint: u64, bucket_size: u64) -> SeedWalk {
        SeedWalk {
            bucket_size,
            bucket: bucket_of(hint, bucket_size),
            last: hint,
        }
    }

    /// The bucket to probe next (its highest seq is what `feed` wants).
    pub fn bucket(&self) -> u64 {
        self.bucket
    }

    /// Feeds the highest seq found in `bucket()` (None when the partition is empty).
    /// Returns the conversation's highest seq once known; otherwise `bucket()` moved on.
    pub fn feed(&mut self, max_in_bucket: Option<u64>) -> Option<u64> {
        match max_in_bucket {
            // An empty bucket: the previous one (or the hint) holds the end. An empty hint
            // bucket only happens when old partitions expired or were deleted; the hint is
            // still a lower bound that was once written, so it stands.
            None => Some(self.last),
            Some(max) => {
                self.last = self.last.max(max);
                if max >= bucket_last_seq(self.bucket, self.bucket_size) {
                    self.bucket += 1;
                    None
                } else {
                    Some(self.last)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_arithmetic() {
        assert_eq!(bucket_of(1, 1000), 0);
        assert_eq!(bucket_of(999, 1000), 0);
        assert_eq!(bucket_of(1000, 1000), 1);
        assert_eq!(bucket_of(1999, 1000), 1);
        assert_eq!(bucket_of(2000, 1000), 2);
        assert_eq!(bucket_last_seq(0, 1000), 999);
        assert_eq!(bucket_last_seq(1, 1000), 1999);
        assert_eq!(bucket_last_seq(u64::MAX, 1000), u64::MAX);
        // Every seq lies inside the bucket it maps to.
        for seq in 1..5000 {
            let b = bucket_of(seq, 100);
            assert!(b * 100 <= seq && seq <= bucket_last_seq(b, 100));
        }
    }

    fn seqs(plan: &PagePlan) -> Vec<u64> {
        plan.ranges.iter().flat_map(|r| r.lo..=r.hi).collect()
    }

    #[test]
    fn latest_page_of_an_empty_conversation() {
        let p = plan_page(0, PageDir::Before(None), 50, 100);
        assert!(p.ranges.is_empty());
        assert!(!p.has_more);
        let p = plan_page(0, PageDir::After(0), 50, 100);
        assert!(p.ranges.is_empty());
        assert!(!p.has_more);
    }

    #[test]
    fn latest_page_inside_one_bucket() {
        let p = plan_page(30, PageDir::Before(None), 50, 100);
        assert_eq!(
            p.ranges,
            vec![BucketRange {
                bucket: 0,
                lo: 1,
                hi: 30
            }]
        );
        assert!(!p.has_more);
        let p = plan_page(30, PageDir::Before(None), 10, 100);
        assert_eq!(seqs(&p), (21..=30).collect::<Vec<_>>());
        assert!(p.has_more);
    }

    #[test]
    fn before_page_crossing_a_bucket_boundary() {
        // Seqs 95..=104 span bucket 0 (..=99) and bucket 1 (100..).
        let p = plan_page(500, PageDir::Before(Some(105)), 10, 100);
        assert_eq!(
            p.ranges,
            vec![
                BucketRange {
                    bucket: 0,
                    lo: 95,
                    hi: 99
                },
                BucketRange {
                    bucket: 1,
                    lo: 100,
                    hi: 104
                },
            ]
        );
        assert!(p.has_more);
    }

    #[test]
    fn after_page_crossing_a_bucket_boundary_and_reaching_the_end() {
        let p = plan_page(203, PageDir::After(195), 100, 100);
        assert_eq!(
            p.ranges,
            vec![
                BucketRange {
                    bucket: 1,
                    lo: 196,
                    hi: 199
                },
                BucketRange {
                    bucket: 2,
                    lo: 200,
                    hi: 203
                },
            ]
        );
        assert!(!p.has_more);
        let p = plan_page(203, PageDir::After(195), 5, 100);
        assert_eq!(seqs(&p), vec![196, 197, 198, 199, 200]);
        assert!(p.has_more);
        let p = plan_page(203, PageDir::After(203), 5, 100);
        assert!(p.ranges.is_empty() && !p.has_more);
        let p = plan_page(203, PageDir::After(1000), 5, 100);
        assert!(p.ranges.is_empty() && !p.has_more);
    }

    #[test]
    fn before_edges() {
        // before = 1 and before = 0: nothing older.
        for b in [0, 1] {
            let p = plan_page(10, PageDir::Before(Some(b)), 5, 100);
            assert!(p.ranges.is_empty() && !p.has_more);
        }
        // before beyond the end behaves like "latest".
        let p = plan_page(10, PageDir::Before(Some(1000)), 5, 100);
        assert_eq!(seqs(&p), vec![6, 7, 8, 9, 10]);
        assert!(p.has_more);
        // Exactly reaching seq 1 leaves nothing more.
        let p = plan_page(10, PageDir::Before(Some(6)), 5, 100);
        assert_eq!(seqs(&p), vec![1, 2, 3, 4, 5]);
        assert!(!p.has_more);
    }

    #[test]
    fn zero_limit_reads_nothing_but_reports_more() {
        let p = plan_page(10, PageDir::Before(None), 0, 100);
        assert!(p.ranges.is_empty() && p.has_more);
        let p = plan_page(10, PageDir::After(3), 0, 100);
        assert!(p.ranges.is_empty() && p.has_more);
    }

    #[test]
    fn walking_all_pages_backwards_visits_every_seq_once() {
        for (last, limit, size) in [(1000, 7, 100), (250, 100, 100), (99, 33, 100), (1, 1, 100)] {
            let mut seen = Vec::new();
            let mut before = None;
            loop {
                let p = plan_page(last, PageDir::Before(before), limit, size);
                let mut page = seqs(&p);
                assert!(page.len() <= limit as usize);
                for r in &p.ranges {
                    assert_eq!(bucket_of(r.lo, size), r.bucket);
                    assert_eq!(bucket_of(r.hi, size), r.bucket);
                }
                before = page.first().copied();
                page.extend(seen);
                seen = page;
                if !p.has_more {
                    break;
                }
            }
            assert_eq!(seen, (1..=last).collect::<Vec<_>>());
        }
    }

    #[test]
    fn walking_all_pages_forwards_visits_every_seq_once() {
        let (last, limit, size) = (777, 64, 100);
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let p = plan_page(last, PageDir::After(after), limit, size);
            let page = seqs(&p);
            after = page.last().copied().unwrap_or(after);
            seen.extend(page);
            if !p.has_more {
                break;
            }
        }
        assert_eq!(seen, (1..=last).collect::<Vec<_>>());
    }

    /// Simulates seeding against a conversation whose highest seq is `actual`.
    fn seed(actual: u64, hint: u64, size: u64) -> (u64, usize) {
        let mut walk = SeedWalk::new(hint, size);
        let mut probes = 0;
        loop {
            let b = walk.bucket();
            probes += 1;
            let first = (b * size).max(1);
            let max = (actual >= first).then(|| actual.min(bucket_last_seq(b, size)));
            if let Some(last) = walk.feed(max) {
                return (last, probes);
            }
            assert!(probes < 1000, "seed walk does not terminate");
        }
    }

    #[test]
    fn seed_walk_finds_the_exact_end() {
        assert_eq!(seed(0, 0, 100), (0, 1));
        assert_eq!(seed(5, 0, 100), (5, 1));
        assert_eq!(seed(5, 5, 100), (5, 1));
        // The hint lags (conv_meta write lost in a crash): walk forward across buckets.
        assert_eq!(seed(250, 3, 100), (250, 3));
        // A full bucket ends the conversation: one extra probe finds the next one empty.
        assert_eq!(seed(99, 0, 100), (99, 2));
        assert_eq!(seed(199, 150, 100), (199, 2));
        assert_eq!(seed(200, 150, 100), (200, 2));
        for actual in 0..450 {
            for hint in [0, actual / 2, actual] {
                assert_eq!(
                    seed(actual, hint, 100).0,
                    actual,
                    "actual {actual} hint {hint}"
                );
            }
        }
    }
}
