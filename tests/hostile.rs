//! Hostile and broken clients against a running broker: none of them may hurt another client
//! or the broker, and each gets a clear answer or a prompt close.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn online(b: &Broker, user: &str) -> usize {
    b.server
        .as_ref()
        .expect("running")
        .state
        .registry
        .connections_of(user)
}

async fn wait_offline(b: &Broker, user: &str) -> bool {
    for _ in 0..100 {
        if online(b, user) == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn send_payload(cid: &str, to: &str, text: &str) -> Vec<u8> {
    msgpack(&json!({"cid": cid, "to": to, "body": {"type": "text", "text": text}}))
}

#[tokio::test]
async fn topics_starting_with_a_multibyte_character_are_refused_not_fatal() {
    let b = Broker::start().await;
    let names = ["日本/x", "ü", "€/chat", "é/x", "public/日本"];
    let filters = ["日本/#", "ü", "€/chat/+", "é/#", "$share/g/日本/#"];

    // 5.0: reason codes, and the connection goes on.
    let (mut c5, ack) = Raw::connect(&b, "127.0.0.1", 5, "mb", "v5", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    for (i, topic) in names.iter().enumerate() {
        c5.publish(topic, b"x", 1, 10 + i as u16).await;
        let (pkid, reason, _) = ack_v5(&c5.next_of(4, 5000).await.expect("PUBACK"));
        assert_eq!(pkid, 10 + i as u16);
        let expected = if topic.starts_with("public/") {
            0
        } else {
            0x90
        };
        assert_eq!(reason, expected, "{topic}");
    }
    let codes = c5.subscribe(1, &filters).await;
    assert_eq!(codes, vec![0x8F; filters.len()], "{codes:x?}");

    // 3.1.1: PUBACK (no reason codes there), SUBACK failure, connection kept.
    let (mut c4, ack) = Raw::connect(&b, "127.0.0.1", 4, "mb", "v4", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    for (i, topic) in names.iter().enumerate() {
        c4.publish(topic, b"x", 1, 20 + i as u16).await;
        assert!(c4.next_of(4, 5000).await.is_some(), "PUBACK for {topic}");
    }
    assert_eq!(c4.subscribe(2, &filters).await, vec![0x80; filters.len()]);

    // Both still serve chat after all of it.
    assert_eq!(c4.subscribe(3, &["chat/u/mb/in/#"]).await, vec![1]);
    c4.publish(
        "chat/u/mb/out/send",
        &send_payload("c1", "u:other", "hi"),
        1,
        30,
    )
    .await;
    let ack = c4.next_of(3, 5000).await.expect("sent ack on in/ack");
    assert!(String::from_utf8_lossy(&ack).contains("chat/u/mb/in/ack"));

    // A will on such a topic: connected without the will.
    let token = b.token("mb");
    let mut w = raw_from(
        "127.0.0.1",
        b.port,
        &connect_with_will("mb", &token, "will", "é/will"),
    )
    .await;
    let connack = first_answer(&mut w, 5000).await.expect("CONNACK");
    assert_eq!(connack[..4], [0x20, 2, 0, 0]);

    // Every connection of the user closes cleanly and the user is offline again.
    drop((c4, c5, w));
    assert!(wait_offline(&b, "mb").await, "mb stays online");
    b.stop().await;
}

#[tokio::test]
async fn keep_alive_zero_gets_the_server_keep_alive_and_is_timed_out() {
    let b = Broker::start_with(|c| c.mqtt.max_keep_alive_secs = 1).await;
    let (_c5, ack) = Raw::connect(&b, "127.0.0.1", 5, "ka", "v5", 0).await;
    assert_eq!(server_keep_alive(&ack.expect("connack")), Some(1));
    // 3.1.1 has no Server Keep Alive: the cap applies, a silent client is closed.
    let (mut c4, ack) = Raw::connect(&b, "127.0.0.1", 4, "ka", "v4", 0).await;
    assert_eq!(ack.expect("connack")[1], 0);
    assert!(
        closed_within(&mut c4.s, 10).await,
        "silent keep-alive-0 client kept"
    );
    // A client that pings within the cap stays.
    let (mut p, _) = Raw::connect(&b, "127.0.0.1", 4, "ka", "pinger", 1).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.send(&[0xC0, 0]).await;
        assert!(p.next_of(13, 2000).await.is_some(), "PINGRESP");
    }
    b.stop().await;
}

#[tokio::test]
async fn half_sent_packets_and_slowloris_are_cut_at_the_packet_deadline() {
    let b = Broker::start_with(|c| c.mqtt.packet_timeout_ms = 500).await;
    // A PUBLISH announcing 1000 bytes, 10 sent.
    let (mut half, _) = Raw::connect(&b, "127.0.0.1", 4, "slow", "half", 30).await;
    half.send(&[0x30, 0xE8, 0x07, 0, 5, b'p', b'u', b'b', b'/', b'x'])
        .await;
    assert!(closed_within(&mut half.s, 5).await, "half packet kept");
    // One byte every 200 ms never completes the packet: the deadline is not moved by reads.
    let (mut drip, _) = Raw::connect(&b, "127.0.0.1", 4, "slow", "drip", 30).await;
    let closed = tokio::spawn(async move {
        let mut bytes = vec![0x30u8, 0xE8, 0x07];
        bytes.extend(std::iter::repeat_n(b'a', 40));
        for byte in bytes {
            if tokio::io::AsyncWriteExt::write_all(&mut drip.s, &[byte])
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        closed_within(&mut drip.s, 1).await
    });
    assert!(closed.await.expect("drip task"), "slowloris kept");
    // Others connect as usual.
    let (_ok, ack) = Raw::connect(&b, "127.0.0.1", 4, "slow", "ok", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    b.stop().await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let b = Broker::start_with(|c| c.mqtt.max_subscriptions = 50).await;
    let filters: Vec<String> = (0..60).map(|i| format!("iot/cap/{i}")).collect();
    let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let (mut c5, _) = Raw::connect(&b, "127.0.0.1", 5, "cap", "v5", 30).await;
    let codes = c5.subscribe(1, &refs).await;
    assert_eq!(codes[..50], vec![1; 50][..]);
    assert_eq!(
        codes[50..],
        vec![0x97; 10][..],
        "QuotaExceeded past the cap"
    );
    // At the cap: a filter already held may be subscribed again; chat filters count too.
    assert_eq!(c5.subscribe(2, &["iot/cap/3"]).await, vec![1]);
    assert_eq!(c5.subscribe(3, &["chat/u/cap/in/#"]).await, vec![0x97]);
    let (mut c4, _) = Raw::connect(&b, "127.0.0.1", 4, "cap", "v4", 30).await;
    let codes = c4.subscribe(1, &refs).await;
    assert_eq!(codes[50..], vec![0x80; 10][..]);
    b.stop().await;
}

#[tokio::test]
async fn sessions_per_user_are_capped() {
    let b = Broker::start_with(|c| c.mqtt.max_sessions_per_user = 3).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let (c, ack) = Raw::connect(&b, "127.0.0.1", 4, "many", &format!("d{i}"), 30).await;
        assert_eq!(ack.expect("connack")[1], 0);
        held.push(c);
    }
    let (_c, ack) = Raw::connect(&b, "127.0.0.1", 5, "many", "d3", 30).await;
    assert_eq!(ack.expect("connack")[1], 0x97, "5.0: Quota exceeded");
    let (_c, ack) = Raw::connect(&b, "127.0.0.1", 4, "many", "d4", 30).await;
    assert_eq!(ack.expect("connack")[1], 3, "3.1.1: Server unavailable");
    // Taking over one's own client id is not a new session; others are not affected.
    let (_t, ack) = Raw::connect(&b, "127.0.0.1", 4, "many", "d0", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    let (_o, ack) = Raw::connect(&b, "127.0.0.1", 4, "other", "d0", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    // A freed slot can be used again.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..50 {
        let (_c, ack) = Raw::connect(&b, "127.0.0.1", 4, "many", "d5", 30).await;
        if ack.is_some_and(|a| a[1] == 0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "slot not given back");
    b.stop().await;
}

#[tokio::test]
async fn saved_sessions_per_user_are_capped_oldest_first() {
    let b = Broker::start_with(|c| c.mqtt.max_saved_sessions_per_user = 2).await;
    for (i, d) in ["d0", "d1", "d2"].into_iter().enumerate() {
        let level = if i == 1 { 5 } else { 4 };
        let (mut c, ack) = Raw::persistent(&b, level, "keeper", d).await;
        assert_eq!(ack.expect("connack")[1], 0);
        let codes = c.subscribe(1, &["chat/u/keeper/in/#"]).await;
        assert!(codes.iter().all(|&c| c < 0x80), "{codes:?}");
        c.send(&[0xE0, 0]).await;
        // The session is saved before the connection leaves the registry.
        assert!(wait_offline(&b, "keeper").await);
    }
    // Keeping d2 dropped the oldest (d0); d1 (5.0) and d2 resume, d0 starts afresh.
    let present = |ack: Option<Vec<u8>>| ack.expect("connack")[0] & 1;
    let (_d2, ack) = Raw::persistent(&b, 4, "keeper", "d2").await;
    assert_eq!(present(ack), 1);
    let (_d1, ack) = Raw::persistent(&b, 5, "keeper", "d1").await;
    assert_eq!(present(ack), 1);
    let (_d0, ack) = Raw::persistent(&b, 4, "keeper", "d0").await;
    assert_eq!(present(ack), 0);
    // Another user's sessions are not counted against keeper's.
    let (mut o, _) = Raw::persistent(&b, 4, "other", "d0").await;
    o.send(&[0xE0, 0]).await;
    assert!(wait_offline(&b, "other").await);
    let (_o, ack) = Raw::persistent(&b, 4, "other", "d0").await;
    assert_eq!(present(ack), 1);
    let metrics = http_get(&b, "/metrics").await;
    assert!(
        metrics.contains(r#"limit="saved_sessions_per_user"} 1"#),
        "{metrics}"
    );
    b.stop().await;
}

#[tokio::test]
async fn bad_token_floods_are_throttled_per_address() {
    let b = Broker::start_with(|c| {
        c.auth.failures_burst = 20;
        c.auth.failures_per_minute = 60;
    })
    .await;
    let mut answered = 0;
    let started = std::time::Instant::now();
    for i in 0..300 {
        let mut s = raw_from(
            "127.0.0.3",
            b.port,
            &connect_packet("guess", "not-a-token", &format!("g{i}")),
        )
        .await;
        if let Some(a) = first_answer(&mut s, 1000).await {
            assert_eq!(a[..4], [0x20, 2, 0, 4], "bad credentials");
            answered += 1;
        }
    }
    let flood = started.elapsed();
    // The burst is answered; the rest are closed unread (a cell refills per second).
    assert!((20..=40).contains(&answered), "answered {answered}");
    // A good client from another address connects at once; the flooding address is refused
    // unread even with a good token while its bucket is empty.
    let started = std::time::Instant::now();
    let (_good, ack) = Raw::connect(&b, "127.0.0.4", 4, "alice", "phone", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    println!(
        "300 bad-token CONNECTs in {:.0} ms: {answered} answered, the rest closed unread; \
         a good client from another address connected in {:.1} ms",
        flood.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let token = b.token("alice");
    let mut refused = false;
    for i in 0..50 {
        let mut bad = raw_from("127.0.0.3", b.port, &connect_packet("guess", "x", "g")).await;
        if first_answer(&mut bad, 1000).await.is_some() {
            continue; // a refilled cell: this failure empties the bucket again
        }
        let hello = connect_packet("alice", &token, &format!("other{i}"));
        let mut s = raw_from("127.0.0.3", b.port, &hello).await;
        assert_eq!(first_answer(&mut s, 1000).await, None);
        refused = true;
        break;
    }
    assert!(refused);
    b.stop().await;
}

#[tokio::test]
async fn idle_sockets_and_slow_connects_are_closed_at_the_connect_deadline() {
    let b = Broker::start_with(|c| c.mqtt.connect_timeout_ms = 500).await;
    let token = b.token("slow");
    let hello = connect_packet("slow", &token, "dribble");
    let mut socks = Vec::new();
    for i in 0..300 {
        // Two thirds say nothing; the rest send half a CONNECT.
        let bytes = if i % 3 == 0 {
            &hello[..hello.len() / 2]
        } else {
            &[][..]
        };
        socks.push(raw_from("127.0.0.1", b.port, bytes).await);
    }
    // A good client is not held up by them.
    let (_ok, ack) = Raw::connect(&b, "127.0.0.1", 4, "good", "phone", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    let closed =
        futures_util::future::join_all(socks.iter_mut().map(|s| closed_within(s, 5))).await;
    assert!(
        closed.iter().all(|c| *c),
        "{} of 300 still open",
        closed.iter().filter(|c| !**c).count()
    );
    b.stop().await;
}
