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

fn new_message(conv: &ConvId, from: &str, ts: i64, text: &str) -> NewMessage {
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

async fn send(store: &Arc<dyn Store>, conv: &ConvId, from: &str, ts: i64) -> StoredMessage {
    match store
        .append_message(new_message(conv, from, ts, "hello"))
        .await
        .expect("append")
    {
        Appended::Stored(m) => m,
        Appended::Duplicate(m) => panic!("fresh cid reported as duplicate: {m:?}"),
    }
}

fn expect_kind<T: Debug>(result: StoreResult<T>, kind: StoreErrorKind, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind, kind, "{what}: wrong error kind ({e})"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn users(names: &[&String]) -> Vec<String> {
    names.iter().map(|s| (*s).clone()).collect()
}

/// Appends `n` messages to `conv` from `tasks` concurrent tasks; returns them by seq.
async fn append_concurrently(
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

// ---------------------------------------------------------------------------------------------
// Messages

pub async fn append_assigns_dense_seq_per_conv(store: Arc<dyn Store>) {
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let ab = ConvId::direct(&a, &b);
    let ac = ConvId::direct(&a, &c);
    assert_eq!(store.last_seq(&ab).await.expect("last_seq"), 0);
    let mut got_ab = Vec::new();
    let mut got_ac = Vec::new();
    for i in 0..5 {
        got_ab.push(
            send(&store, &ab, if i % 2 == 0 { &a } else { &b }, 10 + i)
                .await
                .seq,
        );
        if i < 3 {
            got_ac.push(send(&store, &ac, &c, 10 + i).await.seq);
        }
    }
    assert_eq!(got_ab, vec![1, 2, 3, 4, 5], "seqs of one conversation");
    assert_eq!(
        got_ac,
        vec![1, 2, 3],
        "another conversation counts on its own"
    );
    assert_eq!(store.last_seq(&ab).await.expect("last_seq"), 5);
    assert_eq!(store.last_seq(&ac).await.expect("last_seq"), 3);

    let gid = unique("g");
    store
        .create_group(&gid, "team", &a, std::slice::from_ref(&b), 1, 100)
        .await
        .expect("create_group");
    let g = ConvId::group(&gid);
    assert_eq!(send(&store, &g, &a, 20).await.seq, 1);
    assert_eq!(send(&store, &g, &b, 21).await.seq, 2);
    assert_eq!(store.last_seq(&g).await.expect("last_seq"), 2);
}

pub async fn appended_message_round_trips(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    let first = send(&store, &conv, &a, 1_700_000_000_123).await;
    let new = NewMessage {
        id: next_id(),
        conv: conv.clone(),
        from: b.clone(),
        ts: 1_700_000_000_456,
        cid: unique("cid"),
        // Opaque bytes, not necessarily UTF-8.
        body: vec![0x82, 0xa4, 0, 0xff, 0x00, 0x7f],
        reply_to: Some(first.id),
    };
    let stored = store
        .append_message(new.clone())
        .await
        .expect("append")
        .message()
        .clone();
    let expected = StoredMessage {
        id: new.id,
        conv: conv.clone(),
        seq: 2,
        from: b.clone(),
        ts: new.ts,
        cid: new.cid.clone(),
        body: new.body.clone(),
        reply_to: Some(first.id),
    };
    assert_eq!(stored, expected);
    assert_eq!(
        store.message(&conv, 2).await.expect("message"),
        Some(expected)
    );

    // Empty body and ids using all 64 bits survive the trip.
    let gid = unique("g");
    store
        .create_group(&gid, "ids", &a, &[], 1, 10)
        .await
        .expect("create_group");
    let g = ConvId::group(&gid);
    let wide = NewMessage {
        id: u64::MAX - 7,
        conv: g.clone(),
        from: a.clone(),
        ts: -1,
        cid: unique("cid"),
        body: Vec::new(),
        reply_to: Some(1 << 63),
    };
    store.append_message(wide.clone()).await.expect("append");
    let back = store
        .message(&g, 1)
        .await
        .expect("message")
        .expect("stored");
    assert_eq!(back.id, wide.id);
    assert_eq!(back.reply_to, wide.reply_to);
    assert_eq!(back.ts, -1);
    assert!(back.body.is_empty());
}

pub async fn duplicate_cid_returns_original(store: Arc<dyn Store>) {
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let conv = ConvId::direct(&a, &b);
    let first = new_message(&conv, &a, 100, "first");
    let original = match store.append_message(first.clone()).await.expect("append") {
        Appended::Stored(m) => m,
        other => panic!("first append: {other:?}"),
    };
    assert_eq!(original.seq, 1);

    // A retry after a lost ack: new id, even a different body. The original wins.
    let retry = NewMessage {
        id: next_id(),
        ts: 200,
        body: b"changed".to_vec(),
        ..first.clone()
    };
    assert_eq!(
        store.append_message(retry).await.expect("retry"),
        Appended::Duplicate(original.clone())
    );
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 1);
    let page = store
        .history(&conv, PageDir::After(0), 10)
        .await
        .expect("history");
    assert_eq!(page.messages, vec![original.clone()]);
    assert_eq!(store.pending_count(&b).await.expect("pending_count"), 1);

    // The cid is scoped by sender: the same cid from someone else is a new message.
    let from_b = NewMessage {
        id: next_id(),
        from: b.clone(),
        ..first.clone()
    };
    assert!(matches!(
        store.append_message(from_b).await.expect("append"),
        Appended::Stored(m) if m.seq == 2
    ));
    // ... and not by conversation: the same sender and cid elsewhere is still the original.
    let elsewhere = NewMessage {
        id: next_id(),
        conv: ConvId::direct(&a, &c),
        ..first
    };
    assert_eq!(
        store.append_message(elsewhere).await.expect("append"),
        Appended::Duplicate(original)
    );
    assert_eq!(
        store
            .last_seq(&ConvId::direct(&a, &c))
            .await
            .expect("last_seq"),
        0
    );
}

pub async fn concurrent_appends_get_dense_seqs(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    let all = append_concurrently(&store, &conv, &a, 200, 20).await;
    assert_eq!(
        seqs(&all),
        (1..=200).collect::<Vec<u64>>(),
        "no gap, no duplicate"
    );
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 200);
    let page = store
        .history(&conv, PageDir::After(0), 500)
        .await
        .expect("history");
    assert_eq!(page.messages, all);
    assert!(!page.has_more);
    assert_eq!(store.pending_count(&b).await.expect("pending_count"), 200);
}

pub async fn concurrent_duplicates_store_once(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    let cid = unique("cid");
    let mut handles = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let msg = NewMessage {
            id: next_id(),
            cid: cid.clone(),
            ..new_message(&conv, &a, 5, "same")
        };
        handles.push(tokio::spawn(async move { store.append_message(msg).await }));
    }
    let mut stored = 0;
    let mut results = Vec::new();
    for h in handles {
        let appended = h.await.expect("task").expect("append");
        stored += usize::from(matches!(appended, Appended::Stored(_)));
        results.push(appended.message().clone());
    }
    assert_eq!(stored, 1, "exactly one of the racing sends is stored");
    assert!(
        results.iter().all(|m| *m == results[0]),
        "all see the same message"
    );
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 1);
}

pub async fn history_pages_across_many_messages(store: Arc<dyn Store>) {
    const N: u64 = 1_050;
    let (a, gid) = (unique("a"), unique("g"));
    store
        .create_group(&gid, "busy", &a, &[], 1, 10)
        .await
        .expect("create_group");
    let conv = ConvId::group(&gid);
    let all = append_concurrently(&store, &conv, &a, N as usize, 10).await;
    assert_eq!(seqs(&all), (1..=N).collect::<Vec<u64>>());
    let by_seq: HashMap<u64, &StoredMessage> = all.iter().map(|m| (m.seq, m)).collect();

    // Newest first page, then walk back to the start.
    let page = store
        .history(&conv, PageDir::Before(None), 100)
        .await
        .expect("history");
    assert_eq!(seqs(&page.messages), (N - 99..=N).collect::<Vec<u64>>());
    assert!(page.has_more);
    let mut walked: Vec<StoredMessage> = page.messages;
    loop {
        let oldest = walked.first().map(|m| m.seq).expect("non-empty");
        let page = store
            .history(&conv, PageDir::Before(Some(oldest)), 100)
            .await
            .expect("history");
        let mut older = page.messages;
        assert!(older.len() <= 100);
        older.append(&mut walked);
        walked = older;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        walked, all,
        "walking backwards visits every message once, in order"
    );

    // Forward from the start.
    let mut after = 0;
    let mut forward = Vec::new();
    loop {
        let page = store
            .history(&conv, PageDir::After(after), 100)
            .await
            .expect("history");
        for m in &page.messages {
            assert_eq!(
                by_seq.get(&m.seq).copied(),
                Some(m),
                "content of seq {}",
                m.seq
            );
        }
        after = page.messages.last().map_or(after, |m| m.seq);
        forward.extend(page.messages);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(forward, all);

    // A page that ends exactly at the last message says there is no more.
    let page = store
        .history(&conv, PageDir::After(N - 50), 50)
        .await
        .expect("history");
    assert_eq!(seqs(&page.messages), (N - 49..=N).collect::<Vec<u64>>());
    assert!(!page.has_more);
    let page = store
        .history(&conv, PageDir::Before(Some(51)), 50)
        .await
        .expect("history");
    assert_eq!(seqs(&page.messages), (1..=50).collect::<Vec<u64>>());
    assert!(!page.has_more);
    let page = store
        .history(&conv, PageDir::Before(Some(52)), 50)
        .await
        .expect("history");
    assert_eq!(seqs(&page.messages), (2..=51).collect::<Vec<u64>>());
    assert!(page.has_more);
}

pub async fn history_edges(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    for dir in [PageDir::Before(None), PageDir::After(0)] {
        let page = store.history(&conv, dir, 10).await.expect("history");
        assert!(
            page.messages.is_empty() && !page.has_more,
            "empty conversation"
        );
    }
    for i in 0..5 {
        send(&store, &conv, &a, i).await;
    }
    let page = |dir, limit| {
        let (store, conv) = (store.clone(), conv.clone());
        async move {
            let p = store.history(&conv, dir, limit).await.expect("history");
            (seqs(&p.messages), p.has_more)
        }
    };
    assert_eq!(
        page(PageDir::Before(None), 100).await,
        (vec![1, 2, 3, 4, 5], false)
    );
    assert_eq!(
        page(PageDir::Before(None), 5).await,
        (vec![1, 2, 3, 4, 5], false)
    );
    assert_eq!(
        page(PageDir::Before(None), 4).await,
        (vec![2, 3, 4, 5], true)
    );
    assert_eq!(
        page(PageDir::Before(Some(u64::MAX)), 2).await,
        (vec![4, 5], true)
    );
    assert_eq!(page(PageDir::Before(Some(1)), 10).await, (vec![], false));
    assert_eq!(page(PageDir::Before(Some(0)), 10).await, (vec![], false));
    assert_eq!(page(PageDir::After(5), 10).await, (vec![], false));
    assert_eq!(page(PageDir::After(u64::MAX), 10).await, (vec![], false));
    assert_eq!(page(PageDir::After(3), 1).await, (vec![4], true));
    // Limit 0 returns nothing but still tells whether anything lies that way.
    assert_eq!(page(PageDir::After(0), 0).await, (vec![], true));
    assert_eq!(page(PageDir::After(5), 0).await, (vec![], false));
    assert_eq!(page(PageDir::Before(None), 0).await, (vec![], true));
}

pub async fn message_by_seq(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    let first = send(&store, &conv, &a, 1).await;
    let second = send(&store, &conv, &b, 2).await;
    assert_eq!(store.message(&conv, 1).await.expect("message"), Some(first));
    assert_eq!(
        store.message(&conv, 2).await.expect("message"),
        Some(second)
    );
    assert_eq!(store.message(&conv, 3).await.expect("message"), None);
    assert_eq!(store.message(&conv, 0).await.expect("message"), None);
    assert_eq!(store.message(&conv, u64::MAX).await.expect("message"), None);
    let other = ConvId::direct(&a, &unique("z"));
    assert_eq!(store.message(&other, 1).await.expect("message"), None);
}

// ---------------------------------------------------------------------------------------------
// Offline delivery and cursors

pub async fn pending_for_dm_recipient_only(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    let mut to_b = Vec::new();
    for i in 0..3 {
        to_b.push(send(&store, &conv, &a, i).await);
    }
    let to_a = send(&store, &conv, &b, 10).await;
    // Group messages are caught up through history, never queued per member.
    let gid = unique("g");
    store
        .create_group(&gid, "g", &a, std::slice::from_ref(&b), 1, 10)
        .await
        .expect("create_group");
    send(&store, &ConvId::group(&gid), &a, 11).await;

    assert_eq!(store.pending(&b, 0, 10).await.expect("pending"), to_b);
    assert_eq!(store.pending(&a, 0, 10).await.expect("pending"), vec![to_a]);
    assert_eq!(store.pending_count(&b).await.expect("pending_count"), 3);
    assert_eq!(store.pending_count(&a).await.expect("pending_count"), 1);
    let nobody = unique("n");
    assert!(store
        .pending(&nobody, 0, 10)
        .await
        .expect("pending")
        .is_empty());
    assert_eq!(
        store.pending_count(&nobody).await.expect("pending_count"),
        0
    );

    // A note to self has nobody to deliver to.
    let me = ConvId::direct(&a, &a);
    send(&store, &me, &a, 12).await;
    assert_eq!(store.pending_count(&a).await.expect("pending_count"), 1);
}

pub async fn pending_pages_after_id(store: Arc<dyn Store>) {
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let (ab, cb) = (ConvId::direct(&a, &b), ConvId::direct(&c, &b));
    let mut expected = Vec::new();
    for i in 0..12 {
        // Interleaved conversations: the order is by message id, across conversations.
        let (conv, from) = if i % 3 == 0 { (&cb, &c) } else { (&ab, &a) };
        expected.push(send(&store, conv, from, i).await);
    }
    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let page = store.pending(&b, after, 5).await.expect("pending");
        assert!(page.len() <= 5);
        if page.is_empty() {
            break;
        }
        after = page.last().map_or(after, |m| m.id);
        got.extend(page);
    }
    assert_eq!(got, expected, "oldest first, every message once");
    assert!(store.pending(&b, 0, 0).await.expect("pending").is_empty());
    assert!(store
        .pending(&b, u64::MAX, 10)
        .await
        .expect("pending")
        .is_empty());
    assert_eq!(
        store
            .pending(&b, expected[10].id, 10)
            .await
            .expect("pending"),
        vec![expected[11].clone()]
    );
}

pub async fn delivered_cursor_clears_pending(store: Arc<dyn Store>) {
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let (ab, cb) = (ConvId::direct(&a, &b), ConvId::direct(&c, &b));
    let mut in_ab = Vec::new();
    for i in 0..5 {
        in_ab.push(send(&store, &ab, &a, i).await);
    }
    let in_cb = vec![
        send(&store, &cb, &c, 10).await,
        send(&store, &cb, &c, 11).await,
    ];

    let moved = store
        .set_cursor(&b, &ab, ReceiptKind::Delivered, 3)
        .await
        .expect("set_cursor");
    assert!(moved.moved);
    assert_eq!(moved.value, 3);
    let mut left = in_ab[3..].to_vec();
    left.extend(in_cb.iter().cloned());
    assert_eq!(store.pending(&b, 0, 100).await.expect("pending"), left);
    assert_eq!(store.pending_count(&b).await.expect("pending_count"), 4);

    // The sender's own cursor in the same conversation clears nothing of b's.
    store
        .set_cursor(&a, &ab, ReceiptKind::Delivered, 5)
        .await
        .expect("set_cursor");
    assert_eq!(store.pending_count(&b).await.expect("pending_count"), 4);

    // Read implies delivered: it clears the rest of this conversation, not the other one.
    store
        .set_cursor(&b, &ab, ReceiptKind::Read, 5)
        .await
        .expect("set_cursor");
    assert_eq!(store.pending(&b, 0, 100).await.expect("pending"), in_cb);
}

pub async fn cursors_are_monotonic(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    for i in 0..10 {
        send(&store, &conv, &a, i).await;
    }
    let cur = |user: String| {
        let (store, conv) = (store.clone(), conv.clone());
        async move { store.cursors(&user, &conv).await.expect("cursors") }
    };
    let set = |kind, up_to| {
        let (store, conv, b) = (store.clone(), conv.clone(), b.clone());
        async move {
            let m = store
                .set_cursor(&b, &conv, kind, up_to)
                .await
                .expect("set_cursor");
            (m.moved, m.value)
        }
    };
    assert_eq!(cur(b.clone()).await, Default::default());
    assert_eq!(set(ReceiptKind::Delivered, 0).await, (false, 0));
    assert_eq!(set(ReceiptKind::Delivered, 3).await, (true, 3));
    assert_eq!(
        set(ReceiptKind::Delivered, 2).await,
        (false, 3),
        "never backwards"
    );
    assert_eq!(set(ReceiptKind::Delivered, 3).await, (false, 3));
    assert_eq!(set(ReceiptKind::Read, 2).await, (true, 2));
    let now = cur(b.clone()).await;
    assert_eq!((now.delivered_up_to, now.read_up_to), (3, 2));
    assert_eq!(set(ReceiptKind::Read, 7).await, (true, 7));
    let now = cur(b.clone()).await;
    assert_eq!(
        (now.delivered_up_to, now.read_up_to),
        (7, 7),
        "read implies delivered"
    );
    assert_eq!(set(ReceiptKind::Read, 6).await, (false, 7));
    assert_eq!(set(ReceiptKind::Delivered, 6).await, (false, 7));
    assert_eq!(set(ReceiptKind::Delivered, 9).await, (true, 9));
    let now = cur(b.clone()).await;
    assert_eq!((now.delivered_up_to, now.read_up_to), (9, 7));
    // Cursors are per user.
    assert_eq!(cur(a.clone()).await, Default::default());
}

pub async fn cursor_clamps_to_last_seq(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    // Nothing sent yet: nothing to acknowledge.
    let m = store
        .set_cursor(&b, &conv, ReceiptKind::Read, 3)
        .await
        .expect("set_cursor");
    assert_eq!((m.moved, m.value), (false, 0));
    for i in 0..5 {
        send(&store, &conv, &a, i).await;
    }
    let m = store
        .set_cursor(&b, &conv, ReceiptKind::Read, u64::MAX)
        .await
        .expect("set_cursor");
    assert_eq!((m.moved, m.value), (true, 5), "clamped to the last seq");
    let m = store
        .set_cursor(&b, &conv, ReceiptKind::Read, 6)
        .await
        .expect("set_cursor");
    assert_eq!((m.moved, m.value), (false, 5));
    // A message sent later is still unread and still pending.
    let later = send(&store, &conv, &a, 9).await;
    assert_eq!(later.seq, 6);
    assert_eq!(
        store.pending(&b, 0, 10).await.expect("pending"),
        vec![later]
    );
    let m = store
        .set_cursor(&b, &conv, ReceiptKind::Read, 6)
        .await
        .expect("set_cursor");
    assert_eq!((m.moved, m.value), (true, 6));
}

// ---------------------------------------------------------------------------------------------
// Conversation list

pub async fn conversations_by_last_activity(store: Arc<dyn Store>) {
    let me = unique("me");
    let (p1, p2, p3, x) = (unique("p1"), unique("p2"), unique("p3"), unique("x"));
    let (d1, d2, d3) = (
        ConvId::direct(&me, &p1),
        ConvId::direct(&me, &p2),
        ConvId::direct(&me, &p3),
    );
    let (quiet, chatty, foreign) = (unique("quiet"), unique("chatty"), unique("foreign"));
    store
        .create_group(&quiet, "Quiet", &p1, std::slice::from_ref(&me), 1_500, 10)
        .await
        .expect("create_group");
    store
        .create_group(&chatty, "Chatty", &me, std::slice::from_ref(&p2), 100, 10)
        .await
        .expect("create_group");
    store
        .create_group(&foreign, "Not mine", &x, std::slice::from_ref(&p1), 100, 10)
        .await
        .expect("create_group");

    send(&store, &d1, &p1, 1_000).await;
    send(&store, &d2, &me, 2_900).await;
    send(&store, &d2, &p2, 2_950).await;
    let last_d2 = send(&store, &d2, &p2, 3_000).await;
    send(&store, &d3, &me, 2_000).await;
    let last_chatty = send(&store, &ConvId::group(&chatty), &p2, 2_500).await;
    send(&store, &ConvId::group(&foreign), &x, 9_000).await;
    send(&store, &ConvId::direct(&x, &p1), &x, 9_000).await;
    store
        .set_cursor(&me, &d2, ReceiptKind::Read, 1)
        .await
        .expect("set_cursor");

    let list = store
        .conversations(&me, None, 100)
        .await
        .expect("conversations");
    let order: Vec<&str> = list.iter().map(|s| s.conv.as_str()).collect();
    let (gq, gc) = (ConvId::group(&quiet), ConvId::group(&chatty));
    assert_eq!(
        order,
        vec![
            d2.as_str(),
            gc.as_str(),
            d3.as_str(),
            gq.as_str(),
            d1.as_str()
        ],
        "most recent activity first; DMs and groups merged"
    );
    let dm = &list[0];
    assert_eq!(
        (dm.last_ts, dm.last_seq, dm.name.as_deref()),
        (3_000, 3, None)
    );
    assert_eq!(dm.last_message.as_ref(), Some(&last_d2));
    assert_eq!((dm.cursors.delivered_up_to, dm.cursors.read_up_to), (1, 1));
    assert_eq!(
        dm.last_seq - dm.cursors.read_up_to,
        2,
        "unread is derivable"
    );
    let group = &list[1];
    assert_eq!(group.name.as_deref(), Some("Chatty"));
    assert_eq!((group.last_ts, group.last_seq), (2_500, 1));
    assert_eq!(group.last_message.as_ref(), Some(&last_chatty));
    let empty = &list[3];
    assert_eq!(empty.name.as_deref(), Some("Quiet"));
    assert_eq!(
        (empty.last_ts, empty.last_seq),
        (1_500, 0),
        "created, never written"
    );
    assert_eq!(empty.last_message, None);

    let convs = |before, limit| {
        let (store, me) = (store.clone(), me.clone());
        async move {
            store
                .conversations(&me, before, limit)
                .await
                .expect("conversations")
                .into_iter()
                .map(|s| s.conv.0)
                .collect::<Vec<String>>()
        }
    };
    assert_eq!(convs(None, 2).await, vec![d2.0.clone(), gc.0.clone()]);
    assert_eq!(
        convs(Some(2_500), 10).await,
        vec![d3.0.clone(), gq.0.clone(), d1.0.clone()],
        "strictly before"
    );
    assert_eq!(convs(Some(2_500), 1).await, vec![d3.0.clone()]);
    assert!(convs(None, 0).await.is_empty());
    assert!(convs(Some(1_000), 10).await.is_empty());
    assert!(store
        .conversations(&unique("nobody"), None, 10)
        .await
        .expect("conversations")
        .is_empty());

    // New activity moves a conversation to the top; leaving a group drops it.
    send(&store, &d1, &me, 4_000).await;
    store
        .remove_members(&chatty, std::slice::from_ref(&me))
        .await
        .expect("remove_members");
    assert_eq!(
        convs(None, 10).await,
        vec![d1.0.clone(), d2.0.clone(), d3.0.clone(), gq.0.clone()]
    );
}

// ---------------------------------------------------------------------------------------------
// Groups

pub async fn groups_lifecycle(store: Arc<dyn Store>) {
    let (gid, creator) = (unique("g"), unique("c"));
    let (m1, m2, m3, x) = (unique("m1"), unique("m2"), unique("m3"), unique("x"));
    let info = store
        .create_group(
            &gid,
            "Team",
            &creator,
            &users(&[&m1, &m2, &creator, &m1]),
            42,
            10,
        )
        .await
        .expect("create_group");
    assert_eq!(info.gid, gid);
    assert_eq!(info.name, "Team");
    assert_eq!(info.created_by, creator);
    assert_eq!(info.created_ts, 42);
    assert_eq!(info.admins, vec![creator.clone()]);
    assert_eq!(
        info.member_count, 3,
        "creator counted once, duplicates ignored"
    );
    assert_eq!(store.group(&gid).await.expect("group"), Some(info));

    expect_kind(
        store.create_group(&gid, "Again", &x, &[], 43, 10).await,
        StoreErrorKind::Conflict,
        "create an existing gid",
    );
    assert_eq!(
        store.group(&gid).await.expect("group").map(|g| g.name),
        Some("Team".into()),
        "the conflict changed nothing"
    );

    for (user, member) in [(&creator, true), (&m1, true), (&m2, true), (&x, false)] {
        assert_eq!(
            store.is_member(&gid, user).await.expect("is_member"),
            member
        );
    }
    assert_eq!(
        sorted(store.members(&gid).await.expect("members")),
        sorted(users(&[&creator, &m1, &m2]))
    );

    let other = unique("g2");
    store
        .create_group(&other, "Other", &m1, &[], 50, 10)
        .await
        .expect("create_group");
    assert_eq!(
        sorted(store.groups_of(&m1).await.expect("groups_of")),
        sorted(vec![gid.clone(), other.clone()])
    );

    let change = store
        .add_members(&gid, &users(&[&m2, &m3, &m3]), 60, 10)
        .await
        .expect("add_members");
    assert_eq!(
        change,
        MembershipChange {
            changed: vec![m3.clone()],
            member_count: 4
        },
        "existing members are not changes"
    );
    let change = store
        .add_members(&gid, &users(&[&m1, &m3]), 61, 10)
        .await
        .expect("add_members");
    assert_eq!((change.changed.len(), change.member_count), (0, 4));

    store.set_admin(&gid, &m1, true).await.expect("set_admin");
    store
        .set_admin(&gid, &m1, true)
        .await
        .expect("set_admin twice");
    let admins = store
        .group(&gid)
        .await
        .expect("group")
        .expect("exists")
        .admins;
    assert_eq!(sorted(admins), sorted(users(&[&creator, &m1])));
    store.set_admin(&gid, &m2, true).await.expect("set_admin");
    store.set_admin(&gid, &m2, false).await.expect("revoke");
    let admins = store
        .group(&gid)
        .await
        .expect("group")
        .expect("exists")
        .admins;
    assert_eq!(sorted(admins), sorted(users(&[&creator, &m1])));
    expect_kind(
        store.set_admin(&gid, &x, true).await,
        StoreErrorKind::NotFound,
        "admin for a non-member",
    );

    let change = store
        .remove_members(&gid, &users(&[&m1, &x]))
        .await
        .expect("remove_members");
    assert_eq!(
        change,
        MembershipChange {
            changed: vec![m1.clone()],
            member_count: 3
        }
    );
    let info = store.group(&gid).await.expect("group").expect("exists");
    assert_eq!(
        info.admins,
        vec![creator.clone()],
        "removal drops the admin role"
    );
    assert_eq!(info.member_count, 3);
    assert!(!store.is_member(&gid, &m1).await.expect("is_member"));
    assert_eq!(store.groups_of(&m1).await.expect("groups_of"), vec![other]);
    assert_eq!(
        sorted(store.members(&gid).await.expect("members")),
        sorted(users(&[&creator, &m2, &m3]))
    );
    // Rejoining works and makes a plain member, not an admin again.
    store
        .add_members(&gid, &users(&[&m1]), 70, 10)
        .await
        .expect("add_members");
    let info = store.group(&gid).await.expect("group").expect("exists");
    assert_eq!((info.member_count, info.admins.len()), (4, 1));

    // Everyone leaves: the group still exists, empty.
    let all = store.members(&gid).await.expect("members");
    let change = store
        .remove_members(&gid, &all)
        .await
        .expect("remove_members");
    assert_eq!(change.member_count, 0);
    assert!(store.members(&gid).await.expect("members").is_empty());
    assert!(store.group(&gid).await.expect("group").is_some());
}

pub async fn group_limits(store: Arc<dyn Store>) {
    let (gid, c, a, b, d) = (
        unique("g"),
        unique("c"),
        unique("a"),
        unique("b"),
        unique("d"),
    );
    expect_kind(
        store
            .create_group(&gid, "big", &c, &users(&[&a, &b]), 1, 2)
            .await,
        StoreErrorKind::LimitExceeded,
        "create over the limit",
    );
    assert_eq!(
        store.group(&gid).await.expect("group"),
        None,
        "nothing created"
    );
    assert!(store.groups_of(&a).await.expect("groups_of").is_empty());

    let info = store
        .create_group(&gid, "full", &c, &users(&[&a, &b]), 1, 3)
        .await
        .expect("exactly at the limit");
    assert_eq!(info.member_count, 3);
    expect_kind(
        store.add_members(&gid, &users(&[&a, &d]), 2, 3).await,
        StoreErrorKind::LimitExceeded,
        "add over the limit",
    );
    assert!(
        !store.is_member(&gid, &d).await.expect("is_member"),
        "nothing added"
    );
    assert_eq!(
        store
            .group(&gid)
            .await
            .expect("group")
            .map(|g| g.member_count),
        Some(3)
    );
    let change = store
        .add_members(&gid, &users(&[&a]), 3, 3)
        .await
        .expect("re-adding a member to a full group changes nothing");
    assert!(change.changed.is_empty());
    store
        .remove_members(&gid, &users(&[&b]))
        .await
        .expect("remove_members");
    let change = store
        .add_members(&gid, &users(&[&d]), 4, 3)
        .await
        .expect("room again");
    assert_eq!((change.changed, change.member_count), (vec![d.clone()], 3));
}

pub async fn unknown_group_errors(store: Arc<dyn Store>) {
    let (gid, u) = (unique("nog"), unique("u"));
    let us = vec![u.clone()];
    assert_eq!(store.group(&gid).await.expect("group"), None);
    assert!(!store.is_member(&gid, &u).await.expect("is_member"));
    assert!(store.groups_of(&u).await.expect("groups_of").is_empty());
    expect_kind(
        store.add_members(&gid, &us, 1, 10).await,
        StoreErrorKind::NotFound,
        "add_members",
    );
    expect_kind(
        store.remove_members(&gid, &us).await,
        StoreErrorKind::NotFound,
        "remove_members",
    );
    expect_kind(
        store.set_admin(&gid, &u, true).await,
        StoreErrorKind::NotFound,
        "set_admin",
    );
    expect_kind(
        store.members(&gid).await,
        StoreErrorKind::NotFound,
        "members",
    );
    assert_eq!(
        store.group(&gid).await.expect("group"),
        None,
        "nothing created"
    );
}

// ---------------------------------------------------------------------------------------------
// Profiles and last seen

pub async fn profiles_partial_update_and_defaults(store: Arc<dyn Store>) {
    let (u, v) = (unique("u"), unique("v"));
    let both = users(&[&u, &v]);
    let defaults = store.profiles(&both).await.expect("profiles");
    assert_eq!(defaults.len(), 2);
    for (p, user) in defaults.iter().zip(&both) {
        assert_eq!(p.user, *user, "in the order asked");
        assert_eq!(
            (
                &p.display_name,
                &p.avatar_url,
                &p.status,
                p.hide_last_seen,
                p.last_seen
            ),
            (&None, &None, &None, false, None)
        );
    }

    let p = store
        .set_profile(
            &u,
            ProfileUpdate {
                display_name: Some(Some("Ann".into())),
                ..Default::default()
            },
        )
        .await
        .expect("set_profile");
    assert_eq!(p.user, u);
    assert_eq!(p.display_name.as_deref(), Some("Ann"));
    assert_eq!(
        (&p.avatar_url, &p.status, p.hide_last_seen),
        (&None, &None, false)
    );

    let p = store
        .set_profile(
            &u,
            ProfileUpdate {
                status: Some(Some("busy".into())),
                avatar_url: Some(Some("https://example.com/a.png".into())),
                ..Default::default()
            },
        )
        .await
        .expect("set_profile");
    assert_eq!(
        p.display_name.as_deref(),
        Some("Ann"),
        "untouched field kept"
    );
    assert_eq!(p.status.as_deref(), Some("busy"));

    let p = store
        .set_profile(
            &u,
            ProfileUpdate {
                display_name: Some(None),
                hide_last_seen: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("set_profile");
    assert_eq!(p.display_name, None, "Some(None) clears");
    assert_eq!(p.status.as_deref(), Some("busy"));
    assert_eq!(p.avatar_url.as_deref(), Some("https://example.com/a.png"));
    assert!(p.hide_last_seen);

    let unchanged = store
        .set_profile(&u, ProfileUpdate::default())
        .await
        .expect("empty update");
    assert_eq!(unchanged, p);

    let read = store.profiles(&users(&[&v, &u])).await.expect("profiles");
    assert_eq!(read[0].user, v);
    assert_eq!(read[1], p);
    assert!(store.profiles(&[]).await.expect("profiles").is_empty());
}

pub async fn last_seen_is_monotonic(store: Arc<dyn Store>) {
    let u = unique("u");
    let seen = || {
        let (store, u) = (store.clone(), u.clone());
        async move { store.profiles(&[u]).await.expect("profiles")[0].last_seen }
    };
    assert_eq!(seen().await, None);
    store.touch_last_seen(&u, 1_000).await.expect("touch");
    assert_eq!(seen().await, Some(1_000));
    store.touch_last_seen(&u, 500).await.expect("touch");
    assert_eq!(seen().await, Some(1_000), "never backwards");
    store.touch_last_seen(&u, 2_000).await.expect("touch");
    assert_eq!(seen().await, Some(2_000));
    let p = store
        .set_profile(
            &u,
            ProfileUpdate {
                status: Some(Some("hi".into())),
                ..Default::default()
            },
        )
        .await
        .expect("set_profile");
    assert_eq!(p.last_seen, Some(2_000), "a profile update keeps last seen");
    assert_eq!(seen().await, Some(2_000));
}

// ---------------------------------------------------------------------------------------------
// Shutdown

pub async fn flush_refuses_later_calls(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let conv = ConvId::direct(&a, &b);
    send(&store, &conv, &a, 1).await;
    store.flush().await.expect("flush");
    expect_kind(
        store
            .append_message(new_message(&conv, &a, 2, "late"))
            .await,
        StoreErrorKind::Unavailable,
        "append after flush",
    );
    expect_kind(
        store.history(&conv, PageDir::Before(None), 10).await,
        StoreErrorKind::Unavailable,
        "history after flush",
    );
    expect_kind(
        store.touch_last_seen(&a, 5).await,
        StoreErrorKind::Unavailable,
        "touch_last_seen after flush",
    );
    store.flush().await.expect("flush is idempotent");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn unique_ids_are_valid_and_distinct() {
        let ids: BTreeSet<String> = (0..1000).map(|_| unique("user")).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| super::super::valid_id(id)));
        let a = next_id();
        assert!(next_id() > a && a < 1 << 63);
    }
}
