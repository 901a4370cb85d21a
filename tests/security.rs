//! The security matrix: every path from one user into another user's data is refused.

mod common;

use common::*;
use serde_json::{json, Value};

/// A 5.0 raw client of `user`, subscribed to its own `in/#`.
async fn user(b: &Broker, name: &str) -> Raw {
    let (mut c, ack) = Raw::connect(b, "127.0.0.1", 5, name, "dev", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    assert_eq!(
        c.subscribe(1, &[&format!("chat/u/{name}/in/#")]).await,
        vec![1]
    );
    c
}

/// The next payload on `topic` (other publishes are acknowledged and skipped).
async fn on(c: &mut Raw, topic: &str, ms: u64) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (first, body) = c.next(left.as_millis() as u64).await?;
        if first >> 4 != 3 {
            continue;
        }
        let p = publish_parts(5, first, &body);
        if let Some(id) = p.pkid {
            c.send(&packet(0x40, &id)).await;
        }
        if p.topic == topic {
            return Some(unpack(&p.payload));
        }
    }
}

async fn rpc(c: &mut Raw, me: &str, req: Value) -> Value {
    c.publish(&format!("chat/u/{me}/out/rpc"), &msgpack(&req), 1, 900)
        .await;
    on(c, &format!("chat/u/{me}/in/rpc"), 5000)
        .await
        .expect("rpc answer")
}

/// PUBACK reason for a QoS 1 publish.
async fn puback(c: &mut Raw, topic: &str, payload: &[u8], pkid: u16) -> u8 {
    c.publish(topic, payload, 1, pkid).await;
    ack_v5(&c.next_of(4, 5000).await.expect("PUBACK")).1
}

fn send(cid: &str, to: &str) -> Vec<u8> {
    msgpack(&json!({"cid": cid, "to": to, "body": {"type": "text", "text": "x"}}))
}

#[tokio::test]
async fn no_path_from_one_user_into_another_users_data() {
    let b = Broker::start_with(|c| {
        // Even with the whole general plane open, chat stays out of reach.
        c.acl
            .push(toml::from_str("topic = \"#\"\naccess = \"readwrite\"").expect("rule"));
    })
    .await;
    let mut alice = user(&b, "alice").await;
    let mut bob = user(&b, "bob").await;
    let mut mallory = user(&b, "mallory").await;

    // Someone else's inbox and outbox, read and write; wildcards and $share over chat topics.
    let codes = mallory
        .subscribe(
            2,
            &[
                "chat/u/alice/in/#",
                "chat/u/alice/in/msg",
                "chat/u/alice/out/#",
                "chat/u/+/in/#",
                "chat/#",
                "$share/g/chat/u/alice/in/#",
                "chat/p/+",
            ],
        )
        .await;
    assert!(codes.iter().all(|c| *c >= 0x80), "{codes:x?}");
    for (i, topic) in [
        "chat/u/alice/out/send",
        "chat/u/alice/in/msg",
        "chat/u/alice/in/ack",
        "chat/g/gx/msg",
        "chat/p/alice",
    ]
    .iter()
    .enumerate()
    {
        let reason = puback(&mut mallory, topic, &send("m", "u:bob"), 10 + i as u16).await;
        assert_eq!(reason, 0x87, "{topic}");
    }
    // Wildcards on the open general plane are granted and never see chat traffic.
    assert_eq!(
        mallory
            .subscribe(3, &["#", "+/u/alice/in/msg", "+/u/+/in/#"])
            .await,
        vec![1, 1, 1]
    );
    assert_eq!(
        puback(&mut alice, "chat/u/alice/out/send", &send("a1", "u:bob"), 1).await,
        0
    );
    assert!(on(&mut bob, "chat/u/bob/in/msg", 5000).await.is_some());
    let leaked = mallory
        .next_of(3, 500)
        .await
        .map(|b| publish_parts(5, 0x32, &b).topic);
    assert!(
        leaked
            .as_deref()
            .is_none_or(|t| !t.starts_with("chat/") || t.starts_with("chat/u/mallory/")),
        "{leaked:?}"
    );

    // Alice's own copy of her DM.
    assert!(on(&mut alice, "chat/u/alice/in/msg", 5000).await.is_some());

    // Retained and will messages on chat topics.
    let mut retained = mallory.publish_packet("chat/u/alice/in/msg", b"x", 1, 20);
    retained[0] |= 1;
    mallory.send(&retained).await;
    assert_eq!(
        ack_v5(&mallory.next_of(4, 5000).await.expect("PUBACK")).1,
        0x87
    );
    let token = b.token("mallory");
    let hello = connect_with_will("mallory", &token, "will", "chat/u/alice/in/msg");
    let mut w = raw_from("127.0.0.1", b.port, &hello).await;
    assert!(first_answer(&mut w, 5000).await.is_some());
    drop(w); // an unclean close: a will would be published now
    assert!(
        on(&mut alice, "chat/u/alice/in/msg", 500).await.is_none(),
        "a will reached a chat inbox"
    );

    // Someone else's conversation history.
    let r = rpc(
        &mut mallory,
        "mallory",
        json!({"rid": "h", "op": "history", "conv": "d:alice:bob", "limit": 10}),
    )
    .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");

    // Groups: RPCs of an admin by a non-admin, and a member after removal.
    let r = rpc(
        &mut alice,
        "alice",
        json!({"rid": "g", "op": "group.create", "name": "g", "members": ["bob", "mallory"]}),
    )
    .await;
    let gid = r["result"]["gid"].as_str().expect("gid").to_owned();
    for op in [
        json!({"rid": "a", "op": "group.add", "gid": gid, "users": ["eve"]}),
        json!({"rid": "r", "op": "group.remove", "gid": gid, "users": ["alice"]}),
    ] {
        let r = rpc(&mut mallory, "mallory", op).await;
        assert_eq!(r["error"]["code"], "forbidden", "{r}");
    }
    let r = rpc(
        &mut alice,
        "alice",
        json!({"rid": "x", "op": "group.remove", "gid": gid, "users": ["mallory"]}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        mallory.subscribe(4, &[&format!("chat/g/{gid}/#")]).await,
        vec![0x87]
    );
    let group_to = format!("g:{gid}");
    assert_eq!(
        puback(
            &mut mallory,
            "chat/u/mallory/out/send",
            &send("m2", &group_to),
            30
        )
        .await,
        0x87
    );
    let r = rpc(
        &mut mallory,
        "mallory",
        json!({"rid": "h2", "op": "history", "conv": format!("g:{gid}"), "limit": 10}),
    )
    .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");

    // Presence of a user who hides last seen.
    let r = rpc(
        &mut bob,
        "bob",
        json!({"rid": "p", "op": "profile.set", "hide_last_seen": true}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = rpc(
        &mut mallory,
        "mallory",
        json!({"rid": "pg", "op": "presence.get", "users": ["bob"]}),
    )
    .await;
    assert!(r["result"]["presence"][0].get("last_seen").is_none(), "{r}");

    // Client-id takeover stays within a user: mallory's "dev" does not close alice's "dev".
    let (_m2, ack) = Raw::connect(&b, "127.0.0.1", 5, "mallory", "dev", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    assert_eq!(
        puback(&mut alice, "chat/u/alice/out/send", &send("a2", "u:bob"), 2).await,
        0,
        "alice's connection was taken over"
    );
    b.stop().await;
}
