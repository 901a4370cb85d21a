//! The contract every [`Store`] backend must pass.
//!
//! Each case is a `pub async fn(Arc<dyn Store>)` that panics on a violation. Cases use fresh
//! random ids, so they can share one database (a Scylla keyspace) and run concurrently.
//! [`store_contract_tests!`](crate::store_contract_tests) turns the whole list into one
//! `#[tokio::test]` per case for a backend:
//!
//! ```ignore
//! async fn make() -> (Arc<dyn Store>, tempfile::TempDir) { ... }
//! chatmq::store_contract_tests!(make);
//! ```
//!
//! `make` is called once per case and must return a handle of its own (the `flush` case
//! closes it); it returns anything implementing [`Fixture`], e.g. the store alone or the store
//! plus a guard (a temp dir) dropped when the case ends.
//!
//! Not `#[cfg(test)]` so integration tests in `tests/` and other backends can use it.

mod conversations;
mod groups;
mod messages;
mod pending;
mod profiles;

pub use conversations::*;
pub use groups::*;
pub use messages::*;
pub use pending::*;
pub use profiles::*;

use super::{
    Appended, ConvId, MembershipChange, NewMessage, PageDir, ProfileUpdate, ReceiptKind, Store,
    StoreErrorKind, StoreResult, StoredMessage,
};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a backend's `make` returns: something that hands out the store under test and keeps
/// whatever it depends on alive until the case is over.
pub trait Fixture: Send + 'static {
    fn store(&self) -> Arc<dyn Store>;
}

impl Fixture for Arc<dyn Store> {
    fn store(&self) -> Arc<dyn Store> {
        self.clone()
    }
}

impl<G: Send + 'static> Fixture for (Arc<dyn Store>, G) {
    fn store(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
}

/// Expands into one `#[tokio::test]` per contract case, each calling `make().await` for a
/// fresh [`Fixture`]. Either name an existing async fn, or define it inline:
///
/// ```ignore
/// chatmq::store_contract_tests!(make);
/// chatmq::store_contract_tests!(async fn make() -> Arc<dyn Store> { ... });
/// ```
#[macro_export]
macro_rules! store_contract_tests {
    (@cases $make:path, $attrs:tt; $($case:ident),+ $(,)?) => {
        $( $crate::store_contract_tests!(@one $make, $attrs, $case); )+
    };
    (@one $make:path, [$($attr:meta)*], $case:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $case() {
            let fixture = $make().await;
            let store = $crate::store::contract::Fixture::store(&fixture);
            $crate::store::contract::$case(store).await;
            drop(fixture);
        }
    };
    (async fn $make:ident() -> $ret:ty $body:block) => {
        async fn $make() -> $ret $body
        $crate::store_contract_tests!($make);
    };
    // A backend that needs an outside server: without `cfg($cfg)` every case is reported as
    // ignored with `$why`, not as passed.
    ($make:path, ignore_unless = $cfg:meta, reason = $why:literal) => {
        $crate::store_contract_tests!(@all $make, [cfg_attr(not($cfg), ignore = $why)]);
    };
    ($make:path) => {
        $crate::store_contract_tests!(@all $make, []);
    };
    (@all $make:path, $attrs:tt) => {
        $crate::store_contract_tests!(@cases $make, $attrs;
            append_assigns_dense_seq_per_conv,
            appended_message_round_trips,
            duplicate_cid_returns_original,
            concurrent_appends_get_dense_seqs,
            concurrent_duplicates_store_once,
            history_pages_across_many_messages,
            history_edges,
            message_by_seq,
            pending_for_dm_recipient_only,
            pending_pages_after_id,
            delivered_cursor_clears_pending,
            cursors_are_monotonic,
            cursor_clamps_to_last_seq,
            conversations_by_last_activity,
            groups_lifecycle,
            group_limits,
            unknown_group_errors,
            profiles_partial_update_and_defaults,
            last_seen_is_monotonic,
            flush_refuses_later_calls,
        );
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A user/group id no other case (or earlier run against the same database) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{nanos:x}{n:x}", std::process::id())
}

/// A message id: increasing within this process, time-based across runs, below 2^63 like
/// the broker's Snowflake ids.
pub fn next_id() -> u64 {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    NEXT.get_or_init(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        AtomicU64::new(ms << 22)
    })
    .fetch_add(1, Ordering::Relaxed)
}

pub(super) fn new_message(conv: &ConvId, from: &str, ts: i64, text: &str) -> NewMessage {
    NewMessage {
        id: next_id(),
        conv: conv.clone(),
        from: from.to_owned(),
        ts,
        cid: unique("cid"),
        body: text.as_bytes().to_vec(),
        reply_to: None,
    }
}

pub(super) async fn send(
    store: &Arc<dyn Store>,
    conv: &ConvId,
    from: &str,
    ts: i64,
) -> StoredMessage {
    match store
        .append_message(new_message(conv, from, ts, "hello"))
        .await
        .expect("append")
    {
        Appended::Stored(m) => m,
        Appended::Duplicate(m) => panic!("fresh cid reported as duplicate: {m:?}"),
    }
}

pub(super) fn expect_kind<T: Debug>(result: StoreResult<T>, kind: StoreErrorKind, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind, kind, "{what}: wrong error kind ({e})"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

pub(super) fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

pub(super) fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub(super) fn users(names: &[&String]) -> Vec<String> {
    names.iter().map(|s| (*s).clone()).collect()
}

/// Appends `n` messages to `conv` from `tasks` concurrent tasks; returns them by seq.
pub(super) async fn append_concurrently(
    store: &Arc<dyn Store>,
    conv: &ConvId,
    from: &str,
    n: usize,
    tasks: usize,
) -> Vec<StoredMessage> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, conv, from) = (store.clone(), conv.clone(), from.to_owned());
        let count = n / tasks + usize::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                out.push(send(&store, &conv, &from, 1_000).await);
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for h in handles {
        all.extend(h.await.expect("append task"));
    }
    all.sort_by_key(|m| m.seq);
    all
}
