//! Per-key async locks with a little state: the seq allocator (one slot per conversation)
//! and the membership lock (one per group).
//!
//! # Why seqs stay dense and unique without an LWT per message
//!
//! This process is the only writer of its conversations (see ARCHITECTURE.md, "ScyllaDB
//! backend and seq allocation", for what changes with several brokers). For each
//! conversation it keeps the last allocated seq behind an async mutex, and an append holds
//! that mutex until the message row (and its dedup row) is written at the configured
//! consistency. So seq n+1 is handed out only after seq n is durable, or after its write
//! failed — and then the slot is *invalidated*, not advanced: the next append re-seeds.
//!
//! Seeding (first use after a start, or after a failed write) reads the highest stored seq:
//! `conv_meta.last_seq` gives a lower bound (it is written after the message row), and a
//! walk over the buckets from there finds the exact end (`plan::SeedWalk`). Reads run at the
//! same consistency as writes, so with a quorum level (R + W > RF) a seed sees every
//! acknowledged message: no acknowledged seq is ever handed out twice, and the next seq
//! follows the last stored one, so there are no holes.
//!
//! A write that failed with a timeout may still land later on a minority of replicas. The
//! seed may then not see it and hand its seq to another message; the later write has a
//! newer client timestamp and wins on every replica. The lost message was never acknowledged
//! (its sender retries with the same cid), and a dedup row that pointed at it is recognised
//! as stale because the message under that seq has another `(sender, cid)`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// Async locks by key, each guarding a `T`. Idle entries are dropped when the map outgrows
/// `cap`; the state they held is a cache that can always be rebuilt from the database.
pub struct LockMap<K, T> {
    slots: Mutex<HashMap<K, Arc<tokio::sync::Mutex<T>>>>,
    cap: usize,
}

impl<K: Eq + Hash + Clone, T: Default> LockMap<K, T> {
    pub fn new(cap: usize) -> LockMap<K, T> {
        LockMap {
            slots: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// The slot of `key`, created empty on first use. The std-style mutex around the map is
    /// never held across an `.await`: it only hands out the per-key async mutex.
    pub fn slot(&self, key: &K) -> Arc<tokio::sync::Mutex<T>> {
        let mut slots = self.slots.lock();
        if let Some(s) = slots.get(key) {
            return Arc::clone(s);
        }
        if slots.len() >= self.cap {
            // Only the map holds an idle slot; one in use has a clone out there, and
            // dropping it would let two holders of "the" lock for one key coexist.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let s = Arc::new(tokio::sync::Mutex::new(T::default()));
        slots.insert(key.clone(), Arc::clone(&s));
        s
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }
}

/// A conversation's allocator state: the last seq handed out, or `None` when it must be
/// (re)read from the database.
#[derive(Debug, Default)]
pub struct ConvSeq {
    pub last: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_lock_per_key() {
        let map: LockMap<String, ConvSeq> = LockMap::new(100);
        let a = map.slot(&"a".to_owned());
        let a2 = map.slot(&"a".to_owned());
        assert!(Arc::ptr_eq(&a, &a2));
        a.lock().await.last = Some(3);
        assert_eq!(a2.lock().await.last, Some(3));
        let b = map.slot(&"b".to_owned());
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[tokio::test]
    async fn eviction_spares_slots_in_use() {
        let map: LockMap<u32, ConvSeq> = LockMap::new(4);
        let held = map.slot(&0);
        held.lock().await.last = Some(9);
        for k in 1..4 {
            map.slot(&k);
        }
        assert_eq!(map.len(), 4);
        map.slot(&100); // over the cap: idle 1..3 go, 0 stays
        assert_eq!(map.len(), 2);
        assert!(Arc::ptr_eq(&held, &map.slot(&0)));
        assert_eq!(held.lock().await.last, Some(9));
        // An evicted key comes back empty: its state is re-read from the database.
        assert_eq!(map.slot(&1).lock().await.last, None);
    }
}
