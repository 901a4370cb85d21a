//! kill -9 durability: the `chatmq` binary is SIGKILLed at random moments under DM and group
//! load and restarted on the same data, while real clients keep sending and resend every cid
//! without a sent receipt. Passes only if every message with a sent receipt or a success
//! PUBACK is in history exactly once, seqs are dense, and every acknowledged DM reached its
//! recipient at least once.
//!
//! `CHATMQ_CRASH_KILLS` sets the number of kills (default 20).

mod common;

use chatmq::store::ConvId;
use common::*;
use rand::Rng;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_chatmq");
const GID: &str = "gcrash";
/// Sends a client keeps unacknowledged at once.
const WINDOW: usize = 16;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(cfg: &std::path::Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chatmq")
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "broker did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the clients saw acknowledged, by conversation and cid.
#[derive(Default)]
struct Ledger {
    /// cid → conversation, for every send with a sent receipt or a success PUBACK.
    acked: BTreeMap<String, ConvId>,
    /// cid → has a sent receipt (resends stop then).
    receipted: HashSet<String>,
    /// DM cids bob received.
    bob_got: HashSet<String>,
    puback_only: usize,
}

type Shared = Arc<parking_lot::Mutex<Ledger>>;

/// One sender: sends new messages until `stop`, then keeps resending every cid without a
/// sent receipt until all have one. Reconnects whenever the broker goes away.
async fn sender(
    port: u16,
    token: String,
    me: &'static str,
    to: String,
    conv: ConvId,
    ledger: Shared,
    stop: Arc<AtomicBool>,
) {
    let mut next_new = 0usize;
    let mut unreceipted: Vec<String> = Vec::new();
    loop {
        let Some(mut c) = Raw::open(port, 5, me, &token, "sender").await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ack_topic = format!("chat/u/{me}/in/ack");
        if c.try_subscribe(1, &[&ack_topic]).await.is_none() {
            continue;
        }
        // This connection: packet id → cid of sends waiting for their PUBACK.
        let mut inflight: HashMap<u16, String> = HashMap::new();
        let mut resend: Vec<String> = unreceipted.clone();
        let mut pkid: u16 = 1;
        let closed = loop {
            let stopping = stop.load(Ordering::Acquire);
            if stopping && unreceipted.is_empty() && inflight.is_empty() {
                return;
            }
            while inflight.len() < WINDOW {
                let cid = match resend.pop() {
                    Some(cid) => cid,
                    None if !stopping => {
                        next_new += 1;
                        let cid = format!("{me}-{next_new}");
                        unreceipted.push(cid.clone());
                        cid
                    }
                    None => break,
                };
                let body = json!({"cid": cid, "to": to, "body": {"type": "text", "text": cid}});
                c.publish(&format!("chat/u/{me}/out/send"), &msgpack(&body), 1, pkid)
                    .await;
                inflight.insert(pkid, cid);
                pkid = pkid % 60_000 + 1;
            }
            match c.poll(1000).await {
                Err(()) => break true,
                Ok(None) => {
                    // Nothing for a second: resend what still has no receipt.
                    if inflight.is_empty() {
                        resend = unreceipted.clone();
                    }
                }
                Ok(Some((first, body))) => match first >> 4 {
                    4 => {
                        let (id, reason, _) = ack_v5(&body);
                        if let Some(cid) = inflight.remove(&id) {
                            if reason == 0 {
                                let mut l = ledger.lock();
                                if !l.acked.contains_key(&cid) {
                                    l.puback_only += 1;
                                }
                                l.acked.insert(cid, conv.clone());
                            }
                        }
                    }
                    3 => {
                        let p = publish_parts(5, first, &body);
                        if let Some(id) = p.pkid {
                            c.send(&packet(0x40, &id)).await;
                        }
                        let v = unpack(&p.payload);
                        let cid = v["cid"].as_str().unwrap_or_default().to_owned();
                        if v.get("error").is_none() && v.get("seq").is_some() {
                            unreceipted.retain(|c| c != &cid);
                            resend.retain(|c| c != &cid);
                            let mut l = ledger.lock();
                            l.receipted.insert(cid.clone());
                            l.acked.insert(cid, conv.clone());
                        }
                    }
                    _ => {}
                },
            }
        };
        if closed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// bob: takes every DM (live and offline push) until `done`.
async fn receiver(port: u16, token: String, ledger: Shared, done: Arc<AtomicBool>) {
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
                        ledger.lock().bob_got.insert(cid.to_owned());
                    }
                }
                Ok(Some(_)) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let kills: usize = std::env::var("CHATMQ_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let db = dir.path().join("chatmq.db");
    let text = format!(
        "[mqtt]\nlisten = \"127.0.0.1:{port}\"\n[http]\n[auth]\nsecret = \"{SECRET}\"\n\
         [store]\nbackend = \"sqlite\"\npath = \"{}\"\n\
         [chat]\nrate_per_sec = 100000.0\nrate_burst = 100000.0\n",
        db.display()
    );
    let cfg_path = dir.path().join("broker.toml");
    std::fs::write(&cfg_path, &text).expect("config");
    let cfg = chatmq::config::Config::load(&cfg_path).expect("load config");

    // The group exists before the first start.
    {
        let store = chatmq::store::open(&cfg.store).await.expect("store");
        let members = ["bob".to_owned(), "carol".to_owned()];
        store
            .create_group(GID, "crash", "alice", &members, 1, 100)
            .await
            .expect("group");
        store.flush().await.expect("flush");
    }

    let token = |u: &str| token_ttl(&cfg, u, 3600);
    let ledger: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let mut child = spawn(&cfg_path);
    wait_listening(port).await;

    let dm = ConvId::direct("alice", "bob");
    let group = ConvId(format!("g:{GID}"));
    let senders = vec![
        tokio::spawn(sender(
            port,
            token("alice"),
            "alice",
            "u:bob".into(),
            dm.clone(),
            ledger.clone(),
            stop.clone(),
        )),
        tokio::spawn(sender(
            port,
            token("carol"),
            "carol",
            format!("g:{GID}"),
            group.clone(),
            ledger.clone(),
            stop.clone(),
        )),
    ];
    let bob = tokio::spawn(receiver(port, token("bob"), ledger.clone(), done.clone()));

    for _ in 0..kills {
        let wait = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        child = spawn(&cfg_path);
        wait_listening(port).await;
    }
    stop.store(true, Ordering::Release);
    for s in senders {
        tokio::time::timeout(Duration::from_secs(120), s)
            .await
            .expect("senders finish after the kills")
            .expect("sender task");
    }
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
        let missing = want.difference(&ledger.lock().bob_got).count();
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
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    // History: every acknowledged cid exactly once, seqs dense, per conversation.
    let store = chatmq::store::open(&cfg.store).await.expect("reopen");
    let (acked_all, puback_only, bob_got) = {
        let l = ledger.lock();
        (l.acked.clone(), l.puback_only, l.bob_got.len())
    };
    for conv in [&dm, &group] {
        let stored = all_messages(store.as_ref(), conv).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in &stored {
            *seen.entry(m.cid.clone()).or_default() += 1;
        }
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{conv}: seq gap"
        );
        let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dup.is_empty(), "{conv}: stored twice: {dup:?}");
        let acked: Vec<&String> = acked_all
            .iter()
            .filter(|(_, c)| *c == conv)
            .map(|(cid, _)| cid)
            .collect();
        let lost: Vec<_> = acked
            .iter()
            .filter(|cid| !seen.contains_key(**cid))
            .collect();
        assert!(
            lost.is_empty(),
            "{conv}: acknowledged but not stored: {lost:?}"
        );
        println!(
            "{conv}: {} acknowledged, {} stored, 0 lost, 0 duplicated, seqs 1..={} dense",
            acked.len(),
            seen.len(),
            seqs.len()
        );
    }
    println!(
        "{kills} SIGKILLs survived; {} messages acknowledged ({} by PUBACK before their receipt); bob got {} DMs",
        acked_all.len(),
        puback_only,
        bob_got
    );
    let _ = store.flush().await;
}
