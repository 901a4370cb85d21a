//! The `Store` contract against a live ScyllaDB, when `CHATMQ_SCYLLA_NODES` is set
//! (comma-separated `host:port` contact points). Each run uses a fresh random keyspace
//! (SimpleStrategy, RF 1) and drops it at the end of each test.
//!
//! The variable is read when the tests are built (build.rs): without it every test is reported
//! as `ignored, CHATMQ_SCYLLA_NODES not set`, never as passed.
//!
//! ```sh
//! docker run -d --name scylla -p 9042:9042 scylladb/scylla --smp 1 --developer-mode 1
//! CHATMQ_SCYLLA_NODES=127.0.0.1:9042 cargo test --test scylla_contract -- --nocapture
//! ```

use chatmq::store::scylla::{ScyllaConfig, ScyllaStore};
use chatmq::store::{
    Appended, ConvId, NewMessage, PageDir, ProfileUpdate, ReceiptKind, Store, StoreErrorKind,
};
use rand::Rng;
use std::sync::Arc;

const NODES_VAR: &str = "CHATMQ_SCYLLA_NODES";

/// A keyspace created for one test and dropped when the test ends (best effort).
struct TestKeyspace {
    config: ScyllaConfig,
}

impl TestKeyspace {
    /// The tests only run when the variable was set at build time; it must still be set.
    fn new(test: &str) -> TestKeyspace {
        let nodes = std::env::var(NODES_VAR).unwrap_or_else(|_| {
            panic!("{test}: {NODES_VAR} was set when the tests were built, not now")
        });
        let nodes: Vec<String> = nodes
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let suffix: u64 = rand::rng().random();
        let mut config = ScyllaConfig::new(nodes);
        config.keyspace = format!("chatmq_test_{suffix:016x}");
        TestKeyspace { config }
    }

    async fn store(&self) -> ScyllaStore {
        match ScyllaStore::connect(&self.config).await {
            Ok(s) => s,
            Err(e) => panic!("connect to {:?}: {e} ({:?})", self.config.nodes, e.source),
        }
    }

    async fn drop_keyspace(self) {
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(&self.config.nodes)
            .build()
            .await;
        if let Ok(session) = session {
            let drop_ks = format!("DROP KEYSPACE IF EXISTS {}", self.config.keyspace);
            if let Err(e) = session.query_unpaged(drop_ks, ()).await {
                eprintln!("could not drop {}: {e}", self.config.keyspace);
            }
        }
    }
}

// ---- shared contract suite ------------------------------------------------------------------
//
// The shared suite from `src/store/contract/`, the same cases SQLite passes. Without
// `CHATMQ_SCYLLA_NODES` at build time each case is ignored with that reason.
chatmq::store_contract_tests!(
    contract_store,
    ignore_unless = chatmq_scylla_nodes,
    reason = "CHATMQ_SCYLLA_NODES not set"
);

// The smoke tests below stay: they cover what only this backend has (restart re-seeding,
// bucket boundaries, the bucket-size guard).

/// The keyspace every contract case of this run shares: cases use fresh random ids, so they
/// can, and creating a keyspace per case would dominate the run time. Left behind after the
/// run (its name is printed); drop it with `DROP KEYSPACE` when done.
static CONTRACT_KEYSPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A fresh store handle on the run's shared keyspace, for the contract suite. Only called
/// when `CHATMQ_SCYLLA_NODES` is set.
async fn contract_store() -> Arc<dyn Store> {
    let mut ks = TestKeyspace::new("contract");
    ks.config.keyspace = CONTRACT_KEYSPACE
        .get_or_init(|| {
            println!("contract keyspace: {}", ks.config.keyspace);
            ks.config.keyspace.clone()
        })
        .clone();
    // One connect at a time: the first creates the keyspace and tables, and concurrent DDL
    // on one keyspace is asking for schema disagreement on older clusters.
    static CONNECT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = CONNECT.lock().await;
    Arc::new(ks.store().await)
}

fn msg(id: u64, conv: &ConvId, from: &str, cid: &str) -> NewMessage {
    NewMessage {
        id,
        conv: conv.clone(),
        from: from.to_owned(),
        ts: 1_700_000_000_000 + id as i64,
        cid: cid.to_owned(),
        body: vec![0x80],
        reply_to: None,
    }
}

#[tokio::test]
#[cfg_attr(not(chatmq_scylla_nodes), ignore = "CHATMQ_SCYLLA_NODES not set")]
async fn smoke_messages_dedup_pending_cursors() {
    let ks = TestKeyspace::new("smoke_messages_dedup_pending_cursors");
    let store = ks.store().await;
    let conv = ConvId::direct("alice", "bob");
    for i in 1..=3u64 {
        let a = store
            .append_message(msg(100 + i, &conv, "alice", &format!("c{i}")))
            .await
            .expect("append");
        assert!(matches!(a, Appended::Stored(ref m) if m.seq == i));
    }
    let dup = store
        .append_message(msg(999, &conv, "alice", "c2"))
        .await
        .expect("resend");
    assert!(matches!(dup, Appended::Duplicate(ref m) if m.seq == 2 && m.id == 102));
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 3);

    let page = store
        .history(&conv, PageDir::Before(None), 2)
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(page.has_more);

    assert_eq!(store.pending_count("bob").await.expect("count"), 3);
    assert_eq!(store.pending_count("alice").await.expect("count"), 0);
    let pending = store.pending("bob", 0, 10).await.expect("pending");
    assert_eq!(
        pending.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![101, 102, 103]
    );

    let mv = store
        .set_cursor("bob", &conv, ReceiptKind::Read, 2)
        .await
        .expect("cursor");
    assert!(mv.moved);
    let c = store.cursors("bob", &conv).await.expect("cursors");
    assert_eq!((c.delivered_up_to, c.read_up_to), (2, 2));
    let back = store
        .set_cursor("bob", &conv, ReceiptKind::Delivered, 1)
        .await
        .expect("cursor");
    assert!(!back.moved);
    assert_eq!(back.value, 2);
    assert_eq!(store.pending_count("bob").await.expect("count"), 1);

    let convs = store.conversations("bob", None, 10).await.expect("convs");
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].last_seq, 3);

    let g = store
        .create_group("team", "Team", "alice", &["bob".to_owned()], 5, 10)
        .await
        .expect("group");
    assert_eq!(g.member_count, 2);
    let again = store
        .create_group("team", "Other", "carol", &[], 6, 10)
        .await
        .expect_err("conflict");
    assert_eq!(again.kind, StoreErrorKind::Conflict);
    let too_many = store
        .add_members("team", &["c".to_owned(), "d".to_owned()], 7, 3)
        .await
        .expect_err("limit");
    assert_eq!(too_many.kind, StoreErrorKind::LimitExceeded);
    assert_eq!(store.groups_of("bob").await.expect("groups"), vec!["team"]);

    let p = store
        .set_profile(
            "bob",
            ProfileUpdate {
                display_name: Some(Some("Bob".into())),
                ..ProfileUpdate::default()
            },
        )
        .await
        .expect("profile");
    assert_eq!(p.display_name.as_deref(), Some("Bob"));
    store.touch_last_seen("bob", 50).await.expect("touch");
    store.touch_last_seen("bob", 40).await.expect("touch");
    let p = store.profiles(&["bob".to_owned()]).await.expect("profiles");
    assert_eq!(p[0].last_seen, Some(50));

    drop(store);
    ks.drop_keyspace().await;
}

#[tokio::test]
#[cfg_attr(not(chatmq_scylla_nodes), ignore = "CHATMQ_SCYLLA_NODES not set")]
async fn seqs_continue_densely_after_a_restart_and_across_buckets() {
    let mut ks = TestKeyspace::new("seqs_continue_densely_after_a_restart_and_across_buckets");
    ks.config.bucket_size = 100;
    let conv = ConvId::group("big");
    {
        let store = ks.store().await;
        for i in 1..=150u64 {
            store
                .append_message(msg(i, &conv, "alice", &format!("a{i}")))
                .await
                .expect("append");
        }
    }
    // A new store is a restarted broker: it must re-seed from the database.
    let store = Arc::new(ks.store().await);
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 150);
    let a = store
        .append_message(msg(151, &conv, "alice", "a151"))
        .await
        .expect("append");
    assert_eq!(a.message().seq, 151);
    // Concurrent appends to one conversation still get distinct, dense seqs.
    let mut tasks = Vec::new();
    for i in 152..=171u64 {
        let store = Arc::clone(&store);
        let conv = conv.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_message(msg(i, &conv, "bob", &format!("b{i}")))
                .await
                .map(|a| a.message().seq)
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.expect("join").expect("append"));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (152..=171).collect::<Vec<_>>());

    // A page across the bucket boundary at 100.
    let page = store
        .history(&conv, PageDir::Before(Some(105)), 10)
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (95..=104).collect::<Vec<_>>()
    );
    assert!(page.has_more);
    drop(store);

    // The bucket size is fixed once data exists.
    ks.config.bucket_size = 200;
    let refused = ScyllaStore::connect(&ks.config).await;
    assert!(refused.is_err_and(|e| e.message.contains("bucket_size")));
    ks.drop_keyspace().await;
}
