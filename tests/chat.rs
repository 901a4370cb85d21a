//! End-to-end chat semantics over real MQTT clients: send, dedup, durability, offline
//! delivery, receipts, history, groups, presence, typing, errors, rate limits.

mod common;

use common::*;
use rumqttc::QoS;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static RID: AtomicU64 = AtomicU64::new(1);

/// A 3.1.1 chat client that sees its own `in/` topics.
struct User {
    name: String,
    c: V4,
    /// Acks that arrived while waiting for another cid (acks of concurrent sends may come in
    /// any order).
    early_acks: std::collections::HashMap<String, Value>,
}

impl User {
    async fn connect(b: &Broker, name: &str, device: &str) -> User {
        let mut c = v4_user(b.port, b, name, device).await;
        v4_subscribe(&mut c, &format!("chat/u/{name}/in/#")).await;
        User {
            name: name.to_owned(),
            c,
            early_acks: Default::default(),
        }
    }

    async fn publish(&self, kind: &str, v: &Value) {
        let topic = format!("chat/u/{}/out/{kind}", self.name);
        self.c
            .client
            .publish(topic, QoS::AtLeastOnce, false, msgpack(v))
            .await
            .expect("publish");
    }

    async fn send(&self, cid: &str, to: &str, text: &str) {
        self.publish(
            "send",
            &json!({"cid": cid, "to": to, "body": {"type": "text", "text": text}}),
        )
        .await;
    }

    /// Next payload on one of my `in/{kind}` topics.
    async fn next_in(&mut self, kind: &str, secs: u64) -> Option<Value> {
        let topic = format!("chat/u/{}/in/{kind}", self.name);
        v4_publish_on(&mut self.c, &topic, secs)
            .await
            .map(|p| unpack(&p.payload))
    }

    async fn ack(&mut self, cid: &str) -> Value {
        if let Some(v) = self.early_acks.remove(cid) {
            return v;
        }
        loop {
            let v = self
                .next_in("ack", 10)
                .await
                .unwrap_or_else(|| panic!("no ack for {cid}"));
            if v["cid"] == cid {
                return v;
            }
            if let Some(other) = v["cid"].as_str() {
                self.early_acks.insert(other.to_owned(), v);
            }
        }
    }

    async fn on_topic(&mut self, topic: &str, secs: u64) -> Option<Value> {
        v4_publish_on(&mut self.c, topic, secs)
            .await
            .map(|p| unpack(&p.payload))
    }

    async fn rpc(&mut self, op: &str, args: Value) -> Value {
        let rid = format!("r{}", RID.fetch_add(1, Ordering::Relaxed));
        let mut req = args;
        req["rid"] = json!(rid);
        req["op"] = json!(op);
        self.publish("rpc", &req).await;
        loop {
            let v = self
                .next_in("rpc", 10)
                .await
                .unwrap_or_else(|| panic!("no answer to {op}"));
            if v["rid"] == rid {
                return v;
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) -> bool {
        matches!(
            v4_subscribe(&mut self.c, filter).await[..],
            [rumqttc::SubscribeReasonCode::Success(_)]
        )
    }
}

fn text(m: &Value) -> &str {
    m["body"]["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn dm_is_acked_after_storing_and_delivered_to_both_sides() {
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a1").await;
    let mut alice2 = User::connect(&b, "alice", "a2").await;
    let mut bob = User::connect(&b, "bob", "b1").await;
    alice.send("c1", "u:bob", "hello bob").await;
    let ack = alice.ack("c1").await;
    assert_eq!(ack["conv"], "d:alice:bob");
    assert_eq!(ack["seq"], 1);
    assert!(ack["id"].as_u64().is_some_and(|id| id > 0));
    let got = bob.next_in("msg", 5).await.expect("bob receives");
    assert_eq!(
        (got["from"].as_str(), text(&got), &got["id"]),
        (Some("alice"), "hello bob", &ack["id"])
    );
    // The sender's other device sees it too.
    let mine = alice2
        .next_in("msg", 5)
        .await
        .expect("alice's other device");
    assert_eq!(mine["id"], ack["id"]);
    // JSON input is accepted; the seq is dense per conversation.
    let json = br#"{"cid":"c2","to":"u:alice","body":{"type":"text","text":"hi back"}}"#;
    bob.c
        .client
        .publish(
            "chat/u/bob/out/send",
            QoS::AtLeastOnce,
            false,
            json.to_vec(),
        )
        .await
        .expect("pub");
    assert_eq!(bob.ack("c2").await["seq"], 2);
    b.stop().await;
}

// Multi-threaded, like the real broker: spawned send tasks really race there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_keep_the_senders_order() {
    let b = Broker::start_with(|c| {
        c.chat.rate_per_sec = 100_000.0;
        c.chat.rate_burst = 100_000.0;
    })
    .await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let mut bob = User::connect(&b, "bob", "b").await;
    let n = 2000;
    for i in 0..n {
        alice.send(&format!("c{i}"), "u:bob", &format!("{i}")).await;
    }
    for i in 0..n {
        let ack = alice.ack(&format!("c{i}")).await;
        assert_eq!(ack["seq"], i + 1, "the i-th message sent gets seq i+1");
    }
    let mut texts = Vec::new();
    while texts.len() < n as usize {
        let m = bob.next_in("msg", 5).await.expect("delivery");
        texts.push((m["seq"].as_u64().unwrap_or(0), text(&m).to_owned()));
    }
    texts.sort();
    assert!(
        texts.iter().all(|(seq, t)| t == &(seq - 1).to_string()),
        "seq follows send order"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_resent_cid_returns_the_original_ack_stores_nothing_and_is_fanned_out_again() {
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let mut bob = User::connect(&b, "bob", "b").await;
    alice.send("same", "u:bob", "once").await;
    let first = alice.ack("same").await;
    bob.next_in("msg", 5).await.expect("delivered once");
    alice.send("same", "u:bob", "once").await;
    let again = alice.ack("same").await;
    assert_eq!(first, again);
    // The resend is fanned out again (its first fan-out may have been lost to a crash): the
    // same message, same id and seq, which a client that holds that seq drops.
    let resent = bob.next_in("msg", 5).await.expect("fanned out again");
    assert_eq!(
        (&resent["id"], &resent["seq"]),
        (&first["id"], &first["seq"])
    );
    let h = alice.rpc("history", json!({"conv": "d:alice:bob"})).await;
    assert_eq!(h["result"]["messages"].as_array().map(Vec::len), Some(1));
    b.stop().await;
}

#[tokio::test]
async fn offline_messages_are_pushed_oldest_first_until_delivered() {
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    for i in 0..30 {
        alice
            .send(&format!("c{i}"), "u:bob", &format!("m{i}"))
            .await;
        alice.ack(&format!("c{i}")).await;
    }
    let mut bob = User::connect(&b, "bob", "phone").await;
    let mut seqs = Vec::new();
    while let Some(m) = bob.next_in("msg", 3).await {
        seqs.push(m["seq"].as_u64().unwrap_or(0));
        if seqs.len() == 30 {
            break;
        }
    }
    assert_eq!(
        seqs,
        (1..=30).collect::<Vec<_>>(),
        "all pending, oldest first"
    );
    // A delivered receipt clears them: the next connection gets nothing again.
    bob.publish(
        "receipt",
        &json!({"conv": "d:alice:bob", "up_to": 30, "kind": "delivered"}),
    )
    .await;
    let r = alice
        .next_in("receipt", 5)
        .await
        .expect("alice sees delivered");
    assert_eq!(
        (r["by"].as_str(), r["kind"].as_str(), r["up_to"].as_u64()),
        (Some("bob"), Some("delivered"), Some(30))
    );
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bob = User::connect(&b, "bob", "phone").await;
    assert!(bob.next_in("msg", 1).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn receipts_are_cumulative_and_only_move_forward() {
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let mut bob = User::connect(&b, "bob", "b").await;
    for i in 0..3 {
        alice.send(&format!("c{i}"), "u:bob", "x").await;
        alice.ack(&format!("c{i}")).await;
    }
    bob.publish(
        "receipt",
        &json!({"conv": "d:alice:bob", "up_to": 3, "kind": "read"}),
    )
    .await;
    let r = alice.next_in("receipt", 5).await.expect("read receipt");
    assert_eq!(
        (r["kind"].as_str(), r["up_to"].as_u64()),
        (Some("read"), Some(3))
    );
    bob.publish(
        "receipt",
        &json!({"conv": "d:alice:bob", "up_to": 2, "kind": "read"}),
    )
    .await;
    assert!(
        alice.next_in("receipt", 1).await.is_none(),
        "a marker never moves back"
    );
    let convs = alice.rpc("conversations", json!({})).await;
    let row = &convs["result"]["conversations"][0];
    assert_eq!(
        (row["conv"].as_str(), row["last_seq"].as_u64()),
        (Some("d:alice:bob"), Some(3))
    );
    // Bob is not a participant of carol's conversations.
    bob.publish(
        "receipt",
        &json!({"conv": "d:alice:carol", "up_to": 1, "kind": "read"}),
    )
    .await;
    assert_eq!(
        bob.next_in("ack", 5).await.expect("error")["error"]["code"],
        "forbidden"
    );
    b.stop().await;
}

#[tokio::test]
async fn history_pages_by_seq_for_participants_only() {
    let b = Broker::start_with(|c| {
        c.chat.rate_per_sec = 100_000.0;
        c.chat.rate_burst = 100_000.0;
    })
    .await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let mut carol = User::connect(&b, "carol", "c").await;
    let n: u64 = 10_000;
    for i in 0..n {
        alice
            .send(&format!("c{i}"), "u:bob", &format!("m{i}"))
            .await;
    }
    for i in 0..n {
        alice.ack(&format!("c{i}")).await;
    }
    let mut seen: Vec<u64> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut args = json!({"conv": "d:alice:bob", "limit": 100});
        if let Some(b) = before {
            args["before"] = json!(b);
        }
        let page = alice.rpc("history", args).await;
        assert_eq!(page["ok"], true, "{page}");
        let msgs = page["result"]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["seq"].as_u64()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] + 1 == w[1]),
            "ascending and dense: {seqs:?}"
        );
        seen.extend(seqs.iter().rev().copied());
        before = seqs.first().copied();
        if page["result"]["has_more"] != true {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, (1..=n).collect::<Vec<u64>>());
    let after = alice
        .rpc("history", json!({"conv": "d:alice:bob", "after": n - 10}))
        .await;
    assert_eq!(
        after["result"]["messages"].as_array().map(Vec::len),
        Some(10)
    );
    let denied = carol.rpc("history", json!({"conv": "d:alice:bob"})).await;
    assert_eq!(
        (denied["ok"].as_bool(), denied["error"]["code"].as_str()),
        (Some(false), Some("forbidden"))
    );
    b.stop().await;
}

#[tokio::test]
async fn groups_membership_fanout_and_removal() {
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let mut bob = User::connect(&b, "bob", "b").await;
    let mut carol = User::connect(&b, "carol", "c").await;
    let created = alice
        .rpc("group.create", json!({"name": "team", "members": ["bob"]}))
        .await;
    assert_eq!(created["ok"], true, "{created}");
    let gid = created["result"]["gid"].as_str().expect("gid").to_owned();
    let ev = bob.next_in("event", 5).await.expect("bob told");
    assert_eq!(
        (ev["type"].as_str(), ev["gid"].as_str()),
        (Some("group.created"), Some(gid.as_str()))
    );
    let topic = format!("chat/g/{gid}/#");
    assert!(alice.subscribe(&topic).await);
    assert!(bob.subscribe(&topic).await);
    assert!(
        !carol.subscribe(&topic).await,
        "non-members cannot subscribe"
    );
    alice.send("g1", &format!("g:{gid}"), "hello team").await;
    let ack = alice.ack("g1").await;
    assert_eq!(
        (ack["conv"].as_str(), ack["seq"].as_u64()),
        (Some(format!("g:{gid}").as_str()), Some(1))
    );
    let m = bob
        .on_topic(&format!("chat/g/{gid}/msg"), 5)
        .await
        .expect("bob gets group msg");
    assert_eq!(text(&m), "hello team");
    carol.send("x", &format!("g:{gid}"), "let me in").await;
    assert_eq!(carol.ack("x").await["error"]["code"], "forbidden");
    // Only admins change membership.
    let denied = bob
        .rpc("group.add", json!({"gid": gid, "users": ["carol"]}))
        .await;
    assert_eq!(denied["error"]["code"], "forbidden");
    // Removal stops delivery at once, also on the subscription bob already has.
    let removed = alice
        .rpc("group.remove", json!({"gid": gid, "users": ["bob"]}))
        .await;
    assert_eq!(removed["ok"], true, "{removed}");
    alice.send("g2", &format!("g:{gid}"), "after removal").await;
    alice.ack("g2").await;
    let leaked = bob.on_topic(&format!("chat/g/{gid}/msg"), 1).await;
    assert!(leaked.is_none(), "removed member received {leaked:?}");
    let info = alice.rpc("group.info", json!({"gid": gid})).await;
    assert_eq!(info["result"]["members"], json!(["alice"]));
    let hist = bob
        .rpc("history", json!({"conv": format!("g:{gid}")}))
        .await;
    assert_eq!(hist["error"]["code"], "forbidden");
    b.stop().await;
}

#[tokio::test]
async fn presence_and_last_seen() {
    let b = Broker::start().await;
    let mut watcher = User::connect(&b, "watcher", "w").await;
    assert!(watcher.subscribe("chat/p/alice").await);
    let first = watcher
        .on_topic("chat/p/alice", 5)
        .await
        .expect("retained presence");
    assert_eq!(first["state"], "offline");
    let alice = User::connect(&b, "alice", "a").await;
    let online = watcher.on_topic("chat/p/alice", 5).await.expect("online");
    assert_eq!(online["state"], "online");
    drop(alice);
    let offline = watcher.on_topic("chat/p/alice", 5).await.expect("offline");
    assert_eq!(offline["state"], "offline");
    assert!(offline["last_seen"].as_i64().is_some(), "{offline}");
    // hide_last_seen hides it from others.
    let mut alice = User::connect(&b, "alice", "a").await;
    let set = alice
        .rpc(
            "profile.set",
            json!({"hide_last_seen": true, "display_name": "Alice"}),
        )
        .await;
    assert_eq!(set["ok"], true, "{set}");
    let p = watcher
        .rpc("presence.get", json!({"users": ["alice"]}))
        .await;
    assert_eq!(p["result"]["presence"][0]["state"], "online");
    assert!(p["result"]["presence"][0].get("last_seen").is_none());
    let prof = watcher
        .rpc("profile.get", json!({"users": ["alice"]}))
        .await;
    assert_eq!(prof["result"]["profiles"][0]["display_name"], "Alice");
    b.stop().await;
}

#[tokio::test]
async fn typing_is_forwarded_and_never_stored() {
    let b = Broker::start().await;
    let alice = User::connect(&b, "alice", "a").await;
    let mut bob = User::connect(&b, "bob", "b").await;
    alice
        .publish("typing", &json!({"to": "u:bob", "state": "typing"}))
        .await;
    let t = bob.next_in("typing", 5).await.expect("typing");
    assert_eq!(
        (t["from"].as_str(), t["state"].as_str(), t["conv"].as_str()),
        (Some("alice"), Some("typing"), Some("d:alice:bob"))
    );
    let h = bob.rpc("history", json!({"conv": "d:alice:bob"})).await;
    assert_eq!(h["result"]["messages"], json!([]));
    b.stop().await;
}

#[tokio::test]
async fn bad_payloads_get_error_acks_and_the_connection_goes_on() {
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let send = "chat/u/alice/out/send";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\xc1\xff garbage".to_vec(), "bad_request"),
        (b"{not json".to_vec(), "bad_request"),
        (
            msgpack(&json!({"cid": "x1", "to": "bob", "body": {"type": "text", "text": "t"}})),
            "bad_request",
        ),
        (
            msgpack(&json!({"cid": "x2", "to": "u:bob", "body": {"type": "text", "text": ""}})),
            "bad_request",
        ),
        (
            msgpack(
                &json!({"cid": "x3", "to": "u:bob", "body": {"type": "text", "text": "a".repeat(17 * 1024)}}),
            ),
            "too_large",
        ),
        (vec![b'{'; 70 * 1024], "too_large"),
        (
            msgpack(&json!({"cid": "x4", "to": "u:alice", "body": {"type": "text", "text": "me"}})),
            "bad_request",
        ),
    ];
    for (payload, code) in cases {
        alice
            .c
            .client
            .publish(send, QoS::AtLeastOnce, false, payload)
            .await
            .expect("pub");
        let err = alice.next_in("ack", 5).await.expect("error ack");
        assert_eq!(err["error"]["code"], code, "{err}");
        assert!(err["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let bad = alice.rpc("nope", json!({})).await;
    assert_eq!(bad["error"]["code"], "bad_request");
    // Still connected and working; nothing was stored.
    alice.send("ok", "u:bob", "fine").await;
    assert_eq!(alice.ack("ok").await["seq"], 1);
    b.stop().await;
}

#[tokio::test]
async fn rate_limited_senders_get_rate_limited_errors() {
    let b = Broker::start_with(|c| {
        c.chat.rate_per_sec = 1.0;
        c.chat.rate_burst = 3.0;
    })
    .await;
    let mut alice = User::connect(&b, "alice", "a").await;
    for i in 0..6 {
        alice.send(&format!("c{i}"), "u:bob", "spam").await;
    }
    let mut codes = Vec::new();
    for _ in 0..6 {
        let v = alice.next_in("ack", 5).await.expect("ack");
        codes.push(v["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes.iter().filter(|c| *c == "ok").count(), 3, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| *c == "rate_limited").count(),
        3,
        "{codes:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn v311_and_v5_clients_share_a_conversation() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let mut bob = v5_user(b.port, &b, "bob", "b5").await;
    bob.client
        .subscribe("chat/u/bob/in/#", Q5::AtLeastOnce)
        .await
        .expect("sub");
    wait_for(&mut bob.rx, 5, |g| matches!(g, Got::Packet(P5::SubAck(_))))
        .await
        .expect("suback");
    alice.send("c1", "u:bob", "to v5").await;
    alice.ack("c1").await;
    let got = wait_for(
        &mut bob.rx,
        5,
        |g| matches!(g, Got::Packet(P5::Publish(p)) if p.topic == "chat/u/bob/in/msg"),
    )
    .await;
    match got {
        Some(Got::Packet(P5::Publish(p))) => assert_eq!(text(&unpack(&p.payload)), "to v5"),
        other => panic!("{other:?}"),
    }
    let reply = msgpack(
        &json!({"cid": "r1", "to": "u:alice", "body": {"type": "text", "text": "from v5"}}),
    );
    bob.client
        .publish("chat/u/bob/out/send", Q5::AtLeastOnce, false, reply)
        .await
        .expect("pub");
    // Alice's own copy of "to v5" comes first on her in/msg.
    let mine = alice.next_in("msg", 5).await.expect("alice's own copy");
    assert_eq!(text(&mine), "to v5");
    let m = alice
        .next_in("msg", 5)
        .await
        .expect("alice gets v5 message");
    assert_eq!(text(&m), "from v5");
    // 5.0 request/response: answered on the response topic with the correlation data.
    let props = PublishProperties {
        response_topic: Some("chat/u/bob/in/rpc/mine".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        ..Default::default()
    };
    let req = msgpack(&json!({"rid": 7, "op": "conversations"}));
    bob.client
        .publish_with_properties("chat/u/bob/out/rpc", Q5::AtLeastOnce, false, req, props)
        .await
        .expect("rpc");
    let got = wait_for(
        &mut bob.rx,
        5,
        |g| matches!(g, Got::Packet(P5::Publish(p)) if p.topic == "chat/u/bob/in/rpc/mine"),
    )
    .await;
    match got {
        Some(Got::Packet(P5::Publish(p))) => {
            assert_eq!(
                p.properties.and_then(|pr| pr.correlation_data),
                Some(bytes::Bytes::from_static(b"corr-1"))
            );
            assert_eq!(unpack(&p.payload)["rid"], 7);
        }
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn acknowledged_messages_survive_a_restart_and_seq_continues() {
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    for i in 0..20 {
        alice
            .send(&format!("c{i}"), "u:bob", &format!("m{i}"))
            .await;
        alice.ack(&format!("c{i}")).await;
    }
    drop(alice);
    let b = b.restart().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    alice.send("after", "u:bob", "after restart").await;
    assert_eq!(alice.ack("after").await["seq"], 21);
    let mut bob = User::connect(&b, "bob", "b").await;
    let mut n = 0;
    while bob.next_in("msg", 3).await.is_some() {
        n += 1;
        if n == 21 {
            break;
        }
    }
    assert_eq!(n, 21, "every acknowledged message is still pending for bob");
    b.stop().await;
}

#[tokio::test]
async fn a_thousand_messages_across_fifty_users_no_loss_no_duplicates() {
    let b = Broker::start_with(|c| {
        c.chat.rate_per_sec = 100_000.0;
        c.chat.rate_burst = 100_000.0;
    })
    .await;
    let mut users = Vec::new();
    for i in 0..50 {
        users.push(User::connect(&b, &format!("u{i:02}"), "d").await);
    }
    // 20 messages each, to the next user in a ring.
    for (i, u) in users.iter().enumerate() {
        let to = format!("u:u{:02}", (i + 1) % 50);
        for k in 0..20 {
            u.send(&format!("c{k}"), &to, &format!("{i}-{k}")).await;
        }
    }
    let mut ids = HashSet::new();
    for u in users.iter_mut() {
        for k in 0..20 {
            let ack = u.ack(&format!("c{k}")).await;
            assert!(ids.insert(ack["id"].as_u64().expect("id")), "duplicate id");
        }
    }
    assert_eq!(ids.len(), 1000);
    let mut in_history = 0;
    for (i, u) in users.iter_mut().enumerate() {
        let peer = format!("u{:02}", (i + 1) % 50);
        let conv = if u.name < peer {
            format!("d:{}:{peer}", u.name)
        } else {
            format!("d:{peer}:{}", u.name)
        };
        let h = u.rpc("history", json!({"conv": conv, "limit": 100})).await;
        for m in h["result"]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if m["from"] == u.name.as_str() {
                in_history += 1;
                assert!(ids.contains(&m["id"].as_u64().unwrap_or(0)));
            }
        }
    }
    assert_eq!(
        in_history, 1000,
        "every acknowledged message is in history exactly once"
    );
    b.stop().await;
}

#[tokio::test]
async fn denied_publish_on_v4_answers_in_ack_and_leaks_nothing() {
    let b = Broker::start().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let mut bob = User::connect(&b, "bob", "b").await;
    alice
        .c
        .client
        .publish("chat/u/bob/in/msg", QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .expect("pub");
    assert_eq!(
        alice.next_in("ack", 5).await.expect("ack")["error"]["code"],
        "forbidden"
    );
    assert!(bob.next_in("msg", 1).await.is_none());
    b.stop().await;
}

/// A message committed just before a crash, its fan-out lost: the broker stops with the
/// message stored but never delivered (written straight into the store while the broker is
/// down), the sender resends the cid after the restart, and every online recipient gets it
/// live — in the group and in the DM.
#[tokio::test]
async fn a_message_stored_before_a_crash_reaches_online_members_when_resent() {
    let mut b = Broker::start().await;
    if let Some(s) = b.server.take() {
        s.shutdown().await;
    }
    let (group, dm) = (
        chatmq::store::ConvId::group("crew"),
        chatmq::store::ConvId::direct("alice", "bob"),
    );
    {
        let store = chatmq::store::open(&b.config.store).await.expect("store");
        let members = ["bob".to_owned(), "carol".to_owned()];
        store
            .create_group("crew", "crew", "alice", &members, 1, 100)
            .await
            .expect("group");
        for (id, conv, cid) in [(11, &group, "lost-g"), (12, &dm, "lost-dm")] {
            let msg = chatmq::store::NewMessage {
                id,
                conv: conv.clone(),
                from: "alice".into(),
                ts: 1,
                cid: cid.into(),
                body: msgpack(&json!({"type": "text", "text": cid})),
                reply_to: None,
            };
            store.append_message(msg).await.expect("stored");
        }
        store.flush().await.expect("flush");
    }
    let b = b.restart().await;
    let mut alice = User::connect(&b, "alice", "a").await;
    let mut bob = User::connect(&b, "bob", "b").await;
    let mut carol = User::connect(&b, "carol", "c").await;
    // bob's DM is still pending: his inbox subscription gets it pushed.
    let pushed = bob.next_in("msg", 5).await.expect("offline push");
    assert_eq!(pushed["cid"], "lost-dm");
    let topic = "chat/g/crew/#";
    assert!(bob.subscribe(topic).await && carol.subscribe(topic).await);

    alice.send("lost-g", "g:crew", "lost-g").await;
    let ack = alice.ack("lost-g").await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["id"].as_u64()),
        (Some(1), Some(11))
    );
    for member in [&mut bob, &mut carol] {
        let m = member
            .on_topic("chat/g/crew/msg", 5)
            .await
            .expect("the resend reaches every online member live");
        assert_eq!((m["seq"].as_u64(), text(&m)), (Some(1), "lost-g"));
    }
    alice.send("lost-dm", "u:bob", "lost-dm").await;
    assert_eq!(alice.ack("lost-dm").await["id"].as_u64(), Some(12));
    let live = bob
        .next_in("msg", 5)
        .await
        .expect("the DM resend reaches bob live");
    assert_eq!(
        (live["id"].as_u64(), live["seq"].as_u64()),
        (Some(12), Some(1))
    );
    b.stop().await;
}
