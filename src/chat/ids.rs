//! Snowflake-style message ids: 41 bits of milliseconds since 2024-01-01, 10 bits of node,
//! 12 bits of sequence. Time-ordered and unique per node, also when the clock steps back
//! (the generator never goes below the last time it used).

use parking_lot::Mutex;

/// 2024-01-01T00:00:00Z in Unix milliseconds.
const EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;

pub struct IdGenerator {
    node: u64,
    state: Mutex<(i64, u64)>,
}

impl IdGenerator {
    pub fn new(node: u16) -> IdGenerator {
        IdGenerator {
            node: u64::from(node) & ((1 << NODE_BITS) - 1),
            state: Mutex::new((0, 0)),
        }
    }

    /// The next id for a message stamped at `now_ms`.
    pub fn next(&self, now_ms: i64) -> u64 {
        let mut st = self.state.lock();
        let (last, seq) = *st;
        let (ms, seq) = if now_ms > last {
            (now_ms, 0)
        } else if seq < SEQ_MAX {
            (last, seq + 1)
        } else {
            // 4,096 ids in one millisecond: borrow the next millisecond.
            (last + 1, 0)
        };
        *st = (ms, seq);
        let t = u64::try_from(ms - EPOCH_MS).unwrap_or(0);
        (t << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq
    }
}

pub use crate::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_even_when_the_clock_stalls_or_steps_back() {
        let g = IdGenerator::new(1);
        let now = now_ms();
        let mut last = 0;
        for i in 0..10_000 {
            let t = if i % 3 == 0 { now - 5 } else { now };
            let id = g.next(t);
            assert!(id > last, "{id} <= {last}");
            last = id;
        }
    }

    #[test]
    fn node_bits_distinguish_generators() {
        let (a, b) = (IdGenerator::new(1), IdGenerator::new(2));
        let t = now_ms();
        assert_ne!(a.next(t), b.next(t));
    }
}
