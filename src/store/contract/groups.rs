//! Contract cases: groups and members.

use super::*;

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
