//! The kill -9 harness of `tests/crash.rs` and `tests/gaps.rs`: the `chatmq` binary on a fixed
//! port and a real data directory, restarted after each SIGKILL, and senders that keep sending
//! and resend every cid without a sent receipt, across restarts.

use super::*;
use chatmq::store::ConvId;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_chatmq");
/// Sends a client keeps unacknowledged at once.
const WINDOW: usize = 16;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A broker config on `port` with its SQLite file in `dir`, rate limits out of the way.
pub fn write_config(dir: &Path, port: u16) -> (std::path::PathBuf, Config) {
    write_config_with(dir, &dir.join("chatmq.db"), port, "")
}

/// The same with the database at `db` and `store_extra` lines added to `[store]`; the config
/// file goes to `dir`.
pub fn write_config_with(
    dir: &Path,
    db: &Path,
    port: u16,
    store_extra: &str,
) -> (std::path::PathBuf, Config) {
    let text = format!(
        "[mqtt]\nlisten = \"127.0.0.1:{port}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[auth]\nsecret = \"{SECRET}\"\n\
         [store]\nbackend = \"sqlite\"\npath = \"{}\"\n{store_extra}\n\
         [chat]\nrate_per_sec = 100000.0\nrate_burst = 100000.0\n",
        db.display()
    );
    let path = dir.join("broker.toml");
    std::fs::write(&path, &text).expect("config");
    let cfg = Config::load(&path).expect("load config");
    (path, cfg)
}

pub fn spawn(cfg: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chatmq")
}

pub async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "broker did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILLs `child` and starts a new broker on the same config; returns the new process.
pub async fn kill_and_restart(mut child: Child, cfg: &Path, port: u16) -> Child {
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let child = spawn(cfg);
    wait_listening(port).await;
    child
}

/// SIGTERM, then wait.
pub fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A count from the environment (`CHATMQ_CRASH_KILLS`, …), else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates group `gid` (alice its admin, `members` besides) in the store of `cfg` before the
/// broker first starts.
pub async fn create_group(cfg: &Config, gid: &str, members: &[&str]) {
    let store = chatmq::store::open(&cfg.store).await.expect("store");
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    store
        .create_group(gid, gid, "alice", &members, 1, 100)
        .await
        .expect("group");
    store.flush().await.expect("flush");
}

/// One resending sender per `(user, MQTT level, to, conversation)`, all writing to `ledger`
/// until `stop`.
pub fn spawn_senders(
    port: u16,
    cfg: &Config,
    senders: Vec<(&'static str, u8, String, ConvId)>,
    ledger: &Shared,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    senders
        .into_iter()
        .map(|(me, level, to, conv)| {
            let token = token_ttl(cfg, me, 3600);
            let (ledger, stop) = (ledger.clone(), stop.clone());
            tokio::spawn(sender(port, level, token, me, to, conv, ledger, stop))
        })
        .collect()
}

/// Waits (up to 120 s) for the senders to have a sent receipt for everything.
pub async fn join_senders(senders: Vec<tokio::task::JoinHandle<()>>) {
    for s in senders {
        tokio::time::timeout(Duration::from_secs(120), s)
            .await
            .expect("senders finish after the kills")
            .expect("sender task");
    }
}

/// What the senders saw acknowledged.
#[derive(Default)]
pub struct Ledger {
    /// cid → conversation, for every send with a sent receipt or a success PUBACK.
    pub acked: BTreeMap<String, ConvId>,
    /// cids with a sent receipt (resends stop then).
    pub receipted: HashSet<String>,
    /// Acknowledged by PUBACK before their sent receipt arrived.
    pub puback_only: usize,
}

pub type Shared = Arc<parking_lot::Mutex<Ledger>>;

/// One sender (MQTT `level` 4 or 5): sends new messages to `to` until `stop`, then keeps
/// resending every cid without a sent receipt until all have one. Reconnects whenever the
/// broker goes away.
#[allow(clippy::too_many_arguments)]
pub async fn sender(
    port: u16,
    level: u8,
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
        let Some(mut c) = Raw::open(port, level, me, &token, &format!("{me}-sender")).await else {
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
                        let p = publish_parts(level, first, &body);
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

/// Asserts that `conv` holds every cid `acked` puts in it exactly once, with dense seqs;
/// returns how many were acknowledged and how many are stored.
pub async fn assert_stored_once(
    store: &dyn chatmq::store::Store,
    acked: &BTreeMap<String, ConvId>,
    conv: &ConvId,
) -> (usize, usize) {
    let stored = all_messages(store, conv).await;
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
    let mine: Vec<&String> = acked
        .iter()
        .filter(|(_, c)| *c == conv)
        .map(|(cid, _)| cid)
        .collect();
    let lost: Vec<_> = mine
        .iter()
        .filter(|cid| !seen.contains_key(**cid))
        .collect();
    assert!(
        lost.is_empty(),
        "{conv}: acknowledged but not stored: {lost:?}"
    );
    (mine.len(), seen.len())
}
