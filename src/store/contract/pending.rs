//! Contract cases: offline delivery and cursors.

use super::*;

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
