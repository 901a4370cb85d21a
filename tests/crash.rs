//! kill -9 durability: the `chatmq` binary is SIGKILLed at random moments under DM and group
//! load and restarted on the same data, while real clients keep sending and resend every cid
//! without a sent receipt. Passes only if every message with a sent receipt or a success
//! PUBACK is in history exactly once, seqs are dense, and every acknowledged DM reached its
//! recipient at least once.
//!
//! `CHATMQ_CRASH_KILLS` sets the number of kills (default 20).

mod common;

use chatmq::store::ConvId;
use common::kill::{self, Shared};
use common::*;
use rand::Rng;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// DM cids bob received.
type Got = Arc<parking_lot::Mutex<HashSet<String>>>;

const GID: &str = "gcrash";

/// bob: takes every DM (live and offline push) until `done`.
async fn receiver(port: u16, token: String, got: Got, done: Arc<AtomicBool>) {
    while !done.load(Ordering::Acquire) {
        let Some(mut c) = Raw::open(port, 4, "bob", &token, "phone").await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if c.try_subscribe(1, &["chat/u/bob/in/msg"]).await.is_none() {
            continue;
        }
        while !done.load(Ordering::Acquire) {
            match c.poll(200).await {
                Err(()) => break,
                Ok(None) => {}
                Ok(Some((first, body))) if first >> 4 == 3 => {
                    let p = publish_parts(4, first, &body);
                    if let Some(id) = p.pkid {
                        c.send(&packet(0x40, &id)).await;
                    }
                    let v = unpack(&p.payload);
                    if let Some(cid) = v["cid"].as_str() {
                        got.lock().insert(cid.to_owned());
                    }
                }
                Ok(Some(_)) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let kills = kill::env_count("CHATMQ_CRASH_KILLS", 20);
    let dir = tempfile::tempdir().expect("dir");
    let port = kill::free_port();
    let (cfg_path, cfg) = kill::write_config(dir.path(), port);

    // The group exists before the first start.
    kill::create_group(&cfg, GID, &["bob", "carol"]).await;

    let token = |u: &str| token_ttl(&cfg, u, 3600);
    let ledger: Shared = Arc::default();
    let bob_got: Got = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let mut child = kill::spawn(&cfg_path);
    kill::wait_listening(port).await;

    let dm = ConvId::direct("alice", "bob");
    let group = ConvId(format!("g:{GID}"));
    let senders = kill::spawn_senders(
        port,
        &cfg,
        vec![
            ("alice", 5, "u:bob".into(), dm.clone()),
            ("carol", 5, format!("g:{GID}"), group.clone()),
        ],
        &ledger,
        &stop,
    );
    let bob = tokio::spawn(receiver(port, token("bob"), bob_got.clone(), done.clone()));

    for _ in 0..kills {
        let wait = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child = kill::kill_and_restart(child, &cfg_path, port).await;
    }
    stop.store(true, Ordering::Release);
    kill::join_senders(senders).await;
    // bob must have every acknowledged DM.
    let want: HashSet<String> = ledger
        .lock()
        .acked
        .iter()
        .filter(|(_, c)| **c == dm)
        .map(|(cid, _)| cid.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = want.difference(&bob_got.lock()).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob is missing {missing} acknowledged DMs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Release);
    let _ = bob.await;
    kill::terminate(child);

    // History: every acknowledged cid exactly once, seqs dense, per conversation.
    let store = chatmq::store::open(&cfg.store).await.expect("reopen");
    let (acked_all, puback_only, bob_got) = {
        let l = ledger.lock();
        (l.acked.clone(), l.puback_only, bob_got.lock().len())
    };
    for conv in [&dm, &group] {
        let (acked, stored) = kill::assert_stored_once(store.as_ref(), &acked_all, conv).await;
        println!("{conv}: {acked} acknowledged, {stored} stored, 0 lost, 0 duplicated, seqs 1..={stored} dense");
    }
    println!(
        "{kills} SIGKILLs survived; {} messages acknowledged ({} by PUBACK before their receipt); bob got {} DMs",
        acked_all.len(),
        puback_only,
        bob_got
    );
    let _ = store.flush().await;
}
