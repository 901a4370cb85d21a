//! Contract cases: profiles, last seen and shutdown.

use super::*;

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
        assert!(ids.iter().all(|id| crate::store::valid_id(id)));
        let a = next_id();
        assert!(next_id() > a && a < 1 << 63);
    }
}
