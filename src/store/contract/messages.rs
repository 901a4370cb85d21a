//! Contract cases: appending, dedup, history.

use super::*;

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
