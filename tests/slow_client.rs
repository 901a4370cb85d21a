//! A subscriber that stops reading under a 60 KB message flood: it is disconnected, its
//! sender is never held back, broker memory stays bounded, and nothing is lost — every
//! message reaches the device when it comes back. Alone in its binary so the process's RSS is
//! the broker's (plus the test's clients).

mod common;

use common::*;
use rumqttc::QoS;
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

const MESSAGES: usize = 400;
const TEXT: usize = 60_000;
/// Sends in flight at once (so the test's own client does not buffer the flood).
const WINDOW: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_and_loses_nothing() {
    let b = Broker::start_with(|c| {
        c.mqtt.outbound_queue_bytes = 1024 * 1024;
        c.mqtt.write_timeout_ms = 3_000;
        c.chat.max_text = TEXT;
        c.chat.max_payload = 65_536;
        c.chat.rate_per_sec = 100_000.0;
        c.chat.rate_burst = 100_000.0;
    })
    .await;

    // bob subscribes to his inbox and never reads again.
    let (mut bob, ack) = Raw::connect(&b, "127.0.0.1", 4, "bob", "stuck", 30).await;
    assert_eq!(ack.expect("connack")[1], 0);
    assert_eq!(bob.subscribe(1, &["chat/u/bob/in/#"]).await, vec![1]);

    let mut alice = v4_user(b.port, &b, "alice", "phone").await;
    v4_subscribe(&mut alice, "chat/u/alice/in/ack").await;
    let base = rss_kb();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kb(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let text = "x".repeat(TEXT);
    let started = Instant::now();
    let mut acked = HashSet::new();
    let mut sent = 0;
    while acked.len() < MESSAGES {
        while sent < MESSAGES && sent - acked.len() < WINDOW {
            let v = json!({"cid": format!("m{sent}"), "to": "u:bob", "body": {"type": "text", "text": text}});
            alice
                .client
                .publish(
                    "chat/u/alice/out/send",
                    QoS::AtLeastOnce,
                    false,
                    msgpack(&v),
                )
                .await
                .expect("publish");
            sent += 1;
        }
        let ack = v4_publish_on(&mut alice, "chat/u/alice/in/ack", 30)
            .await
            .map(|p| unpack(&p.payload))
            .expect("a sent ack within 30 s: the sender must not wait on bob");
        assert!(ack.get("error").is_none(), "{ack}");
        acked.insert(ack["cid"].as_str().unwrap_or_default().to_owned());
    }
    let elapsed = started.elapsed();
    sampler.abort();
    let growth_mb = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(base)
        / 1024;
    println!(
        "{MESSAGES} x {TEXT} B acked in {:.2} s ({:.0} msg/s) with bob stuck; RSS growth {growth_mb} MB",
        elapsed.as_secs_f64(),
        MESSAGES as f64 / elapsed.as_secs_f64()
    );

    // bob was disconnected as too slow.
    let mut gone = false;
    for _ in 0..200 {
        let n = b
            .server
            .as_ref()
            .expect("running")
            .state
            .registry
            .connections_of("bob");
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the stuck subscriber is still connected");
    assert!(growth_mb < 64, "RSS grew {growth_mb} MB");
    drop(bob);

    // Back online, bob gets every message (pending DMs are pushed oldest first).
    let mut bob = v4_user(b.port, &b, "bob", "phone").await;
    v4_subscribe(&mut bob, "chat/u/bob/in/msg").await;
    let mut seen = HashSet::new();
    while seen.len() < MESSAGES {
        let m = v4_publish_on(&mut bob, "chat/u/bob/in/msg", 30)
            .await
            .map(|p| unpack(&p.payload))
            .unwrap_or_else(|| panic!("bob got {} of {MESSAGES}", seen.len()));
        seen.insert(m["cid"].as_str().unwrap_or_default().to_owned());
    }
    b.stop().await;
}
