//! Power loss: the store lives on chatmq-lazyfs, which keeps only what was synced. Under DM
//! and group load the test cuts the power — SIGKILL of the broker and, at the same instant,
//! every unsynced byte dropped (every other cut leaves a torn last write) — remounts, restarts
//! the broker on what is left, and lets the clients reconnect and resend every cid without a
//! sent receipt. Passes only if the store opens every time and every message with a sent
//! receipt or a success PUBACK is stored exactly once with dense seqs and is delivered.
//!
//! A negative control runs the same load with `synchronous = "normal"` (commits not synced)
//! and must see acknowledged messages lost: the test has teeth.
//!
//! `CHATMQ_POWER_CUTS` sets the number of cuts (default 10).

mod common;

use chatmq::store::ConvId;
use chatmq_lazyfs::{Cut, LazyFs};
use common::kill::{self, Shared};
use common::*;
use rand::Rng;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GID: &str = "gpower";

/// The filesystem, served by this test binary run again as its `lazyfs_server` test: a FUSE
/// server must not touch its own mount (the test opens the store through it, and SQLite maps
/// files into memory: page faults served by the faulting process deadlock).
struct Disk {
    dir: std::path::PathBuf,
    child: Child,
    stdin: ChildStdin,
    out: std::io::Lines<BufReader<ChildStdout>>,
}

impl Disk {
    fn mount(dir: &std::path::Path) -> Disk {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args(["lazyfs_server", "--exact", "--ignored", "--nocapture"])
            .env("CHATMQ_LAZYFS_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the lazyfs server");
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut disk = Disk {
            dir: dir.to_owned(),
            child,
            stdin,
            out,
        };
        disk.answer("mounted");
        disk
    }

    /// The next `lazyfs: …` line (libtest prints its own lines around ours).
    fn answer(&mut self, expect: &str) -> String {
        for line in self.out.by_ref() {
            let line = line.expect("lazyfs server output");
            if let Some(rest) = line.strip_prefix("lazyfs: ") {
                assert!(rest.starts_with(expect), "lazyfs server: {rest}");
                return rest.to_owned();
            }
        }
        panic!("the lazyfs server ended");
    }

    /// Cuts the power (whatever used the files must be gone); returns how many files got a
    /// torn write.
    fn cut(&mut self, how: Cut) -> usize {
        let cmd = match how {
            Cut::Clean => "cut clean\n".to_owned(),
            Cut::TornLastWrite { seed } => format!("cut torn {seed}\n"),
        };
        self.stdin.write_all(cmd.as_bytes()).expect("command");
        let a = self.answer("cut");
        a.split_whitespace()
            .nth(3)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Disk {
    /// The server is killed (it cannot unmount while this process may still hold files on
    /// the mount) and the mount detached lazily.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.dir)
            .status();
    }
}

/// Not a test of its own: the filesystem process of the power tests (see [`Disk`]).
#[test]
#[ignore = "run by the power tests as their filesystem process"]
fn lazyfs_server() {
    let Some(dir) = std::env::var_os("CHATMQ_LAZYFS_DIR") else {
        return;
    };
    let fs = LazyFs::new();
    let mut mounted = fs.mount(std::path::Path::new(&dir)).expect("mount lazyfs");
    println!("lazyfs: mounted");
    for line in std::io::stdin().lines() {
        let line = line.unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        let how = match words.as_slice() {
            ["cut", "clean"] => Cut::Clean,
            ["cut", "torn", seed] => Cut::TornLastWrite {
                seed: seed.parse().unwrap_or(0),
            },
            _ => break,
        };
        let r = mounted.power_cut(how).expect("power cut");
        println!(
            "lazyfs: cut {} {} {}",
            r.files_rolled_back, r.bytes_lost, r.torn
        );
    }
}

/// What one run saw.
struct Outcome {
    cuts: usize,
    torn: usize,
    acked: BTreeMap<String, ConvId>,
    /// Acknowledged but not in history after the run.
    lost: Vec<String>,
    /// Stored more than once.
    duplicated: usize,
    /// Seqs missing in a conversation's history.
    seq_gaps: usize,
    /// Acknowledged DMs bob never got.
    undelivered: usize,
}

/// The load, `cuts` power cuts, then the checks' figures. `synchronous` is the store setting.
async fn run(cuts: usize, synchronous: &str) -> Outcome {
    let dir = tempfile::tempdir().expect("dir");
    let mnt = dir.path().join("disk");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let mut disk = Disk::mount(&mnt);
    let port = kill::free_port();
    let extra = format!("synchronous = \"{synchronous}\"");
    let (cfg_path, cfg) = kill::write_config_with(dir.path(), &mnt.join("chatmq.db"), port, &extra);
    kill::create_group(&cfg, GID, &["bob", "carol"]).await;
    let mut child = kill::spawn(&cfg_path);
    kill::wait_listening(port).await;

    let ledger: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let token = |u: &str| token_ttl(&cfg, u, 3600);
    let (dm, group) = (ConvId::direct("alice", "bob"), ConvId::group(GID));
    let senders = vec![
        ("alice", 5, "u:bob".to_owned(), dm.clone()),
        ("carol", 4, format!("g:{GID}"), group.clone()),
    ];
    let senders = kill::spawn_senders(port, &cfg, senders, &ledger, &stop);

    let mut torn = 0;
    for i in 0..cuts {
        let wait = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // The power goes: the process and the page cache at once.
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let how = if i % 2 == 1 {
            Cut::TornLastWrite {
                seed: rand::rng().random(),
            }
        } else {
            Cut::Clean
        };
        torn += disk.cut(how);
        child = kill::spawn(&cfg_path);
        // The store must open on what is left: a broker that cannot start never listens.
        kill::wait_listening(port).await;
    }
    stop.store(true, Ordering::Release);
    kill::join_senders(senders).await;
    let acked = ledger.lock().acked.clone();
    let undelivered = undelivered_dms(port, &token("bob"), &acked, &dm).await;
    kill::terminate(child);

    let store = chatmq::store::open(&cfg.store).await.expect("reopen");
    let (mut lost, mut duplicated, mut seq_gaps) = (Vec::new(), 0, 0);
    for conv in [&dm, &group] {
        let stored = all_messages(store.as_ref(), conv).await;
        let mut seen: HashSet<&str> = HashSet::new();
        for m in &stored {
            if !seen.insert(m.cid.as_str()) {
                duplicated += 1;
            }
        }
        seq_gaps += stored
            .iter()
            .enumerate()
            .filter(|(i, m)| m.seq != *i as u64 + 1)
            .count();
        lost.extend(
            acked
                .iter()
                .filter(|(cid, c)| *c == conv && !seen.contains(cid.as_str()))
                .map(|(cid, _)| cid.clone()),
        );
    }
    let _ = store.flush().await;
    drop(store);
    drop(disk);
    Outcome {
        cuts,
        torn,
        acked,
        lost,
        duplicated,
        seq_gaps,
        undelivered,
    }
}

/// bob connects once at the end: his pending DMs are pushed. Returns how many acknowledged
/// DMs did not arrive within 30 s.
async fn undelivered_dms(
    port: u16,
    token: &str,
    acked: &BTreeMap<String, ConvId>,
    dm: &ConvId,
) -> usize {
    let mut want: HashSet<&str> = acked
        .iter()
        .filter(|(_, c)| *c == dm)
        .map(|(cid, _)| cid.as_str())
        .collect();
    let Some(mut c) = Raw::open(port, 4, "bob", token, "bob-phone").await else {
        return want.len();
    };
    if c.try_subscribe(1, &["chat/u/bob/in/msg"]).await.is_none() {
        return want.len();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.is_empty() && Instant::now() < deadline {
        match c.poll(500).await {
            Err(()) => break,
            Ok(Some((first, body))) if first >> 4 == 3 => {
                let p = publish_parts(4, first, &body);
                if let Some(id) = p.pkid {
                    c.send(&packet(0x40, &id)).await;
                }
                if let Some(cid) = unpack(&p.payload)["cid"].as_str() {
                    want.remove(cid);
                }
            }
            _ => {}
        }
    }
    want.len()
}

fn cuts() -> usize {
    kill::env_count("CHATMQ_POWER_CUTS", 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_nothing_acknowledged() {
    if chatmq_lazyfs::skip_without_fuse() {
        return;
    }
    let o = run(cuts(), "full").await;
    println!(
        "{} power cuts ({} files left with a torn last write), synchronous = full: {} acknowledged, {} lost, \
         {} duplicated, {} seq gaps, {} acknowledged DMs undelivered",
        o.cuts,
        o.torn,
        o.acked.len(),
        o.lost.len(),
        o.duplicated,
        o.seq_gaps,
        o.undelivered
    );
    assert!(!o.acked.is_empty(), "nothing was sent");
    assert!(o.lost.is_empty(), "acknowledged, then lost: {:?}", o.lost);
    assert_eq!((o.duplicated, o.seq_gaps, o.undelivered), (0, 0, 0));
}

/// The negative control: without a sync at commit the same cuts lose acknowledged messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sync_at_commit_power_cuts_lose_acknowledged_messages() {
    if chatmq_lazyfs::skip_without_fuse() {
        return;
    }
    let o = run(cuts(), "normal").await;
    println!(
        "{} power cuts, synchronous = normal (control): {} acknowledged, {} lost",
        o.cuts,
        o.acked.len(),
        o.lost.len()
    );
    assert!(
        !o.lost.is_empty(),
        "the control lost nothing: the power-loss test would not notice a missing sync"
    );
}
