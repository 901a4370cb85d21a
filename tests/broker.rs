//! End-to-end tests of the connection layer: auth, client ids, ACL, general plane via
//! rumqttd, wills, token expiry, hostile input.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as Code5, Packet as P5};
use rumqttc::{ConnectReturnCode, LastWill, Packet, QoS, SubscribeReasonCode};
use std::time::Duration;

fn refused_v4(got: Option<Got<Packet>>) -> Option<ConnectReturnCode> {
    match got {
        Some(Got::Error(e)) if e.contains("ConnectionRefused") => {
            Some(if e.contains("BadUserNamePassword") {
                ConnectReturnCode::BadUserNamePassword
            } else if e.contains("NotAuthorized") {
                ConnectReturnCode::NotAuthorized
            } else {
                ConnectReturnCode::RefusedProtocolVersion
            })
        }
        Some(Got::Packet(Packet::ConnAck(a))) => Some(a.code),
        _ => None,
    }
}

fn sign(claims: serde_json::Value, secret: &str, alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test]
async fn auth_accepts_good_tokens_and_refuses_bad_ones_with_connack_codes() {
    let b = Broker::start().await;
    let now = chatmq::auth::unix_now();
    let good = b.token("alice");
    let cases: Vec<(&str, String, ConnectReturnCode)> = vec![
        ("alice", good.clone(), ConnectReturnCode::Success),
        ("", good.clone(), ConnectReturnCode::Success),
        ("bob", good.clone(), ConnectReturnCode::BadUserNamePassword),
        (
            "alice",
            sign(
                serde_json::json!({"sub":"alice","exp":now+60}),
                "wrong-secret-wrong-secret",
                jsonwebtoken::Algorithm::HS256,
            ),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            "alice",
            sign(
                serde_json::json!({"sub":"alice","exp":now-600}),
                SECRET,
                jsonwebtoken::Algorithm::HS256,
            ),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            "alice",
            sign(
                serde_json::json!({"sub":"alice","exp":now+60}),
                SECRET,
                jsonwebtoken::Algorithm::HS384,
            ),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            "alice",
            format!(
                "{}.{}.",
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
                "eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0"
            ),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            "alice",
            "garbage".into(),
            ConnectReturnCode::BadUserNamePassword,
        ),
    ];
    for (i, (user, token, want)) in cases.into_iter().enumerate() {
        let mut c = v4_connect(v4_options(
            b.port,
            &format!("auth{i}"),
            Some((user, &token)),
        ));
        assert_eq!(
            refused_v4(next(&mut c.rx, 5).await),
            Some(want),
            "case {i} ({user})"
        );
    }
    // No credentials at all, anonymous not allowed: 0x05.
    let mut c = v4_connect(v4_options(b.port, "anon", None));
    assert_eq!(
        refused_v4(next(&mut c.rx, 5).await),
        Some(ConnectReturnCode::NotAuthorized)
    );

    // 5.0: 0x86 bad username or password, 0x87 not authorized.
    let mut c = v5_connect(v5_options(b.port, "v5bad", Some(("alice", "garbage"))));
    let got = next(&mut c.rx, 5).await;
    assert!(
        matches!(&got, Some(Got::Error(e)) if e.contains("BadUserNamePassword")),
        "{got:?}"
    );
    let mut c = v5_connect(v5_options(b.port, "v5anon", None));
    let got = next(&mut c.rx, 5).await;
    assert!(
        matches!(&got, Some(Got::Error(e)) if e.contains("NotAuthorized")),
        "{got:?}"
    );
    let mut c = v5_connect(v5_options(b.port, "v5good", Some(("alice", &good))));
    assert!(
        matches!(next(&mut c.rx, 5).await, Some(Got::Packet(P5::ConnAck(a))) if a.code == Code5::Success)
    );
    b.stop().await;
}

#[tokio::test]
async fn client_id_takeover_stays_within_a_user() {
    let b = Broker::start().await;
    let mut a1 = v4_user(b.port, &b, "alice", "phone").await;
    // Bob using the same client id is a different session: alice stays connected.
    let _bob = v4_user(b.port, &b, "bob", "phone").await;
    assert!(matches!(
        v4_subscribe(&mut a1, "iot/alice/x").await[..],
        [SubscribeReasonCode::Success(_)]
    ));
    // Alice again with the same id takes over her own session.
    let _a2 = v4_user(b.port, &b, "alice", "phone").await;
    let got = wait_for(&mut a1.rx, 5, |g| matches!(g, Got::Error(_))).await;
    assert!(
        got.is_some(),
        "the first alice connection must be closed by the takeover"
    );
    b.stop().await;
}

#[tokio::test]
async fn acl_table_both_sides_v4() {
    let b = Broker::start().await;
    let mut alice = v4_user(b.port, &b, "alice", "a").await;
    let mut bob = v4_user(b.port, &b, "bob", "b").await;
    v4_subscribe(&mut bob, "chat/u/bob/in/#").await;
    let filters = SUBSCRIBE_TABLE;
    for (f, ok) in filters {
        let codes = v4_subscribe(&mut alice, f).await;
        let granted = matches!(codes[..], [SubscribeReasonCode::Success(_)]);
        assert_eq!(granted, ok, "{f}: {codes:?}");
    }
    // Publishing where alice may not: dropped, in/ack error, nothing reaches bob.
    for topic in [
        "chat/u/bob/in/msg",
        "chat/u/bob/out/send",
        "chat/g/x/msg",
        "chat/p/bob",
        "iot/bob/x",
        "nowhere",
    ] {
        alice
            .client
            .publish(topic, QoS::AtLeastOnce, false, b"spoof".to_vec())
            .await
            .expect("pub");
        let err = v4_publish_on(&mut alice, "chat/u/alice/in/ack", 5)
            .await
            .expect("in/ack error");
        let v = unpack(&err.payload);
        assert_eq!(v["error"]["code"], "forbidden", "{topic}: {v}");
    }
    assert!(
        v4_publish_on(&mut bob, "chat/u/bob/in/msg", 1)
            .await
            .is_none(),
        "nothing denied reaches a subscriber"
    );
    b.stop().await;
}

const SUBSCRIBE_TABLE: [(&str, bool); 11] = [
    ("chat/u/alice/in/#", true),
    ("chat/u/bob/in/#", false),
    ("chat/u/+/in/#", false),
    ("#", false),
    ("chat/p/bob", true),
    ("chat/p/+", false),
    ("chat/g/nogroup/#", false),
    ("iot/alice/#", true),
    ("iot/bob/#", false),
    ("test/nosubscribe", false),
    ("$share/g/iot/alice/jobs", true),
];

const DENIED_PUBLISH: [&str; 6] = [
    "chat/u/bob/in/msg",
    "chat/u/bob/out/send",
    "chat/g/x/msg",
    "chat/p/bob",
    "iot/bob/x",
    "nowhere",
];

#[tokio::test]
async fn acl_table_v5_reason_codes() {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as S5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let b = Broker::start().await;
    let mut alice = v5_user(b.port, &b, "alice", "a5").await;
    let mut bob = v4_user(b.port, &b, "bob", "b").await;
    v4_subscribe(&mut bob, "chat/u/bob/in/#").await;
    for (f, ok) in SUBSCRIBE_TABLE {
        alice
            .client
            .subscribe(f, Q5::AtLeastOnce)
            .await
            .expect("sub");
        let got = wait_for(&mut alice.rx, 5, |g| {
            matches!(g, Got::Packet(P5::SubAck(_)))
        })
        .await;
        let codes = match got {
            Some(Got::Packet(P5::SubAck(s))) => s.return_codes,
            other => panic!("no SUBACK for {f}: {other:?}"),
        };
        let want = if ok {
            matches!(codes[..], [S5::Success(_)])
        } else {
            matches!(codes[..], [S5::NotAuthorized])
        };
        assert!(want, "{f}: {codes:?}");
    }
    // A mixed SUBSCRIBE: allowed filters succeed, the denied one fails, in order.
    alice
        .client
        .subscribe_many(vec![
            rumqttc::v5::mqttbytes::v5::Filter::new("chat/u/alice/in/ack", Q5::AtLeastOnce),
            rumqttc::v5::mqttbytes::v5::Filter::new("chat/u/bob/in/ack", Q5::AtLeastOnce),
            rumqttc::v5::mqttbytes::v5::Filter::new("iot/alice/y", Q5::AtLeastOnce),
        ])
        .await
        .expect("sub");
    match wait_for(&mut alice.rx, 5, |g| {
        matches!(g, Got::Packet(P5::SubAck(_)))
    })
    .await
    {
        Some(Got::Packet(P5::SubAck(s))) => assert!(
            matches!(
                s.return_codes[..],
                [S5::Success(_), S5::NotAuthorized, S5::Success(_)]
            ),
            "{:?}",
            s.return_codes
        ),
        other => panic!("{other:?}"),
    }
    for topic in DENIED_PUBLISH {
        alice
            .client
            .publish(topic, Q5::AtLeastOnce, false, b"x".to_vec())
            .await
            .expect("pub");
        let got = wait_for(&mut alice.rx, 5, |g| {
            matches!(g, Got::Packet(P5::PubAck(_)))
        })
        .await;
        assert!(
            format!("{got:?}").contains("NotAuthorized"),
            "{topic}: {got:?}"
        );
    }
    assert!(
        v4_publish_on(&mut bob, "chat/u/bob/in/msg", 1)
            .await
            .is_none(),
        "nothing denied reaches a subscriber"
    );
    b.stop().await;
}

#[tokio::test]
async fn v5_user_properties_reach_a_v4_subscriber_on_the_general_plane() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let b = Broker::start().await;
    let mut sub4 = v4_user(b.port, &b, "carol", "c4").await;
    v4_subscribe(&mut sub4, "public/news").await;
    let mut sub5 = v5_user(b.port, &b, "dave", "d5").await;
    sub5.client
        .subscribe("public/news", Q5::AtLeastOnce)
        .await
        .expect("sub");
    wait_for(&mut sub5.rx, 5, |g| matches!(g, Got::Packet(P5::SubAck(_))))
        .await
        .expect("suback");
    let pub5 = v5_user(b.port, &b, "erin", "e5").await;
    let props = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    pub5.client
        .publish_with_properties(
            "public/news",
            Q5::AtLeastOnce,
            false,
            b"hello".to_vec(),
            props,
        )
        .await
        .expect("pub");
    let p = v4_publish_on(&mut sub4, "public/news", 5)
        .await
        .expect("3.1.1 subscriber gets it");
    assert_eq!(&p.payload[..], b"hello");
    let got = wait_for(&mut sub5.rx, 5, |g| {
        matches!(g, Got::Packet(P5::Publish(_)))
    })
    .await;
    match got {
        Some(Got::Packet(P5::Publish(p))) => {
            let props = p.properties.expect("properties forwarded");
            assert_eq!(
                props.user_properties,
                vec![("k".to_string(), "v".to_string())]
            );
        }
        other => panic!("5.0 subscriber: {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn will_is_published_on_unclean_disconnect_only() {
    let b = Broker::start().await;
    let mut watcher = v4_user(b.port, &b, "alice", "watch").await;
    v4_subscribe(&mut watcher, "iot/alice/status").await;
    // Clean DISCONNECT: no will.
    let token = b.token("alice");
    let mut o = v4_options(b.port, "dev-clean", Some(("alice", &token)));
    o.set_last_will(LastWill::new(
        "iot/alice/status",
        "gone-clean",
        QoS::AtLeastOnce,
        false,
    ));
    let mut c = v4_connect(o);
    assert!(matches!(
        next(&mut c.rx, 5).await,
        Some(Got::Packet(Packet::ConnAck(_)))
    ));
    c.client.disconnect().await.expect("disconnect");
    assert!(v4_publish_on(&mut watcher, "iot/alice/status", 1)
        .await
        .is_none());
    // Socket dropped without DISCONNECT: the will goes out.
    let mut o = v4_options(b.port, "dev-crash", Some(("alice", &token)));
    o.set_last_will(LastWill::new(
        "iot/alice/status",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let mut c = v4_connect(o);
    assert!(matches!(
        next(&mut c.rx, 5).await,
        Some(Got::Packet(Packet::ConnAck(_)))
    ));
    drop(c);
    let p = v4_publish_on(&mut watcher, "iot/alice/status", 5)
        .await
        .expect("will");
    assert_eq!(&p.payload[..], b"gone");
    b.stop().await;
}

#[tokio::test]
async fn retained_wildcards_and_shared_subscriptions_via_the_engine() {
    let b = Broker::start().await;
    let p = v4_user(b.port, &b, "pub", "p").await;
    p.client
        .publish(
            "public/rooms/1/temp",
            QoS::AtLeastOnce,
            true,
            b"21".to_vec(),
        )
        .await
        .expect("pub");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Retained + wildcard: a late subscriber gets the retained value.
    let mut late = v4_user(b.port, &b, "late", "l").await;
    late.client
        .subscribe("public/rooms/+/temp", QoS::AtLeastOnce)
        .await
        .expect("sub");
    let got = v4_publish_on(&mut late, "public/rooms/1/temp", 5)
        .await
        .expect("retained");
    assert_eq!(&got.payload[..], b"21");
    // $share: each message goes to one member of the group.
    let mut w1 = v4_user(b.port, &b, "w1", "w1").await;
    let mut w2 = v4_user(b.port, &b, "w2", "w2").await;
    for w in [&mut w1, &mut w2] {
        v4_subscribe(w, "$share/workers/public/jobs").await;
    }
    for i in 0..10 {
        p.client
            .publish(
                "public/jobs",
                QoS::AtLeastOnce,
                false,
                format!("job{i}").into_bytes(),
            )
            .await
            .expect("pub");
    }
    let mut total = 0;
    for w in [&mut w1, &mut w2] {
        while v4_publish_on(w, "public/jobs", 1).await.is_some() {
            total += 1;
        }
    }
    assert_eq!(
        total, 10,
        "every job delivered exactly once across the share group"
    );
    b.stop().await;
}

#[tokio::test]
async fn token_expiry_disconnects() {
    let b = Broker::start().await;
    let token = token_ttl(&b.config, "alice", 2);
    let mut c = v4_connect(v4_options(b.port, "short", Some(("alice", &token))));
    assert!(matches!(
        next(&mut c.rx, 5).await,
        Some(Got::Packet(Packet::ConnAck(_)))
    ));
    let got = wait_for(&mut c.rx, 8, |g| matches!(g, Got::Error(_))).await;
    assert!(got.is_some(), "connection closed at token expiry");
    b.stop().await;
}

#[tokio::test]
async fn random_bytes_after_connect_close_only_that_connection() {
    use rand::{Rng, SeedableRng};
    let b = Broker::start().await;
    let token = b.token("fuzz");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let sessions: Vec<Vec<u8>> = (0..2000u32)
        .map(|i| {
            let len = rng.random_range(1..200);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Half of the cases start with a plausible packet type so the parsers get exercised.
            if i % 2 == 0 {
                junk[0] = (rng.random_range(0u8..16) << 4) | (junk[0] & 0x0F);
            }
            let mut bytes = connect_packet("fuzz", &token, &format!("f{i}"));
            bytes.extend_from_slice(&junk);
            bytes
        })
        .collect();
    raw_sessions(b.port, sessions, 100, 300).await;
    // Our own checks turned every malformed packet away before rumqttd's codec could panic.
    assert_eq!(chatmq::broker::codec::caught_panics(), 0);
    // The listener still serves, and chat and general planes still work.
    let mut c = v4_user(b.port, &b, "alice", "after-fuzz").await;
    v4_subscribe(&mut c, "iot/alice/ok").await;
    c.client
        .publish("iot/alice/ok", QoS::AtLeastOnce, false, b"y".to_vec())
        .await
        .expect("pub");
    assert!(v4_publish_on(&mut c, "iot/alice/ok", 5).await.is_some());
    b.stop().await;
}

#[tokio::test]
async fn two_thousand_duplicate_client_id_reconnects_leave_the_listener_serving() {
    let b = Broker::start().await;
    let token = b.token("dup");
    let sessions = (0..2000u32)
        .map(|i| connect_packet("dup", &token, &format!("same-{}", i % 20)))
        .collect();
    raw_sessions(b.port, sessions, 200, 200).await;
    let mut c = v4_user(b.port, &b, "dup", "same-1").await;
    assert!(matches!(
        v4_subscribe(&mut c, "iot/dup/x").await[..],
        [SubscribeReasonCode::Success(_)]
    ));
    b.stop().await;
}

#[tokio::test]
async fn http_endpoints() {
    let b = Broker::start().await;
    let get = |path: &'static str| http_get(&b, path);
    let mut c = v4_user(b.port, &b, "alice", "m").await;
    v4_subscribe(&mut c, "iot/alice/m").await;
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    for name in [
        "chatmq_connects_total",
        "chatmq_connections",
        "chatmq_packets_received_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    b.stop().await;
}

#[tokio::test]
async fn v5_topic_aliases_are_resolved_before_the_acl() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let b = Broker::start().await;
    let mut sub = v4_user(b.port, &b, "carol", "c").await;
    v4_subscribe(&mut sub, "public/alias").await;
    let p = v5_user(b.port, &b, "erin", "e5").await;
    let alias = |a| PublishProperties {
        topic_alias: Some(a),
        ..Default::default()
    };
    p.client
        .publish_with_properties(
            "public/alias",
            Q5::AtLeastOnce,
            false,
            b"one".to_vec(),
            alias(1),
        )
        .await
        .expect("pub");
    p.client
        .publish_with_properties("", Q5::AtLeastOnce, false, b"two".to_vec(), alias(1))
        .await
        .expect("pub");
    let first = v4_publish_on(&mut sub, "public/alias", 5)
        .await
        .expect("first");
    let second = v4_publish_on(&mut sub, "public/alias", 5)
        .await
        .expect("second, by alias");
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"one"[..], &b"two"[..])
    );
    b.stop().await;
}

#[tokio::test]
async fn persistent_sessions_keep_subscriptions_across_reconnects() {
    let b = Broker::start().await;
    let token = b.token("alice");
    let opts = || {
        let mut o = v4_options(b.port, "tablet", Some(("alice", &token)));
        o.set_clean_session(false);
        o
    };
    let mut c = v4_connect(opts());
    assert!(
        matches!(next(&mut c.rx, 5).await, Some(Got::Packet(Packet::ConnAck(a))) if !a.session_present)
    );
    v4_subscribe(&mut c, "iot/alice/cmd").await;
    v4_subscribe(&mut c, "chat/u/alice/in/#").await;
    c.client.disconnect().await.expect("disconnect");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = v4_connect(opts());
    assert!(
        matches!(next(&mut c.rx, 5).await, Some(Got::Packet(Packet::ConnAck(a))) if a.session_present)
    );
    // No new SUBSCRIBE: both planes still deliver.
    let other = v4_user(b.port, &b, "alice", "phone").await;
    other
        .client
        .publish("iot/alice/cmd", QoS::AtLeastOnce, false, b"on".to_vec())
        .await
        .expect("pub");
    assert!(
        v4_publish_on(&mut c, "iot/alice/cmd", 5).await.is_some(),
        "general plane subscription kept"
    );
    let send = msgpack(
        &serde_json::json!({"cid": "p1", "to": "u:bob", "body": {"type": "text", "text": "hi"}}),
    );
    other
        .client
        .publish("chat/u/alice/out/send", QoS::AtLeastOnce, false, send)
        .await
        .expect("pub");
    assert!(
        v4_publish_on(&mut c, "chat/u/alice/in/msg", 5)
            .await
            .is_some(),
        "chat subscription kept"
    );
    b.stop().await;
}
