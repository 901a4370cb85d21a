//! Contract cases: the conversation list.

use super::*;

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
