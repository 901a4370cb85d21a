//! No silent gaps: the `chatmq` binary is SIGKILLed again and again under DM and group load
//! and restarted on the same data, while devices that follow PROTOCOL.md's completeness rules
//! literally (a contiguous watermark per conversation, a gap or a reconnect → `history` after
//! it, receipts never above a gap) stay connected through it, one member stays offline until
//! the end, and senders resend every cid without a sent receipt. Passes only if every
//! acknowledged message is stored exactly once and every device ends holding every message of
//! its conversations; prints how many each device got live and how many by catch-up.
//!
//! `CHATMQ_GAPS_KILLS` sets the number of kills (default 12).

mod common;

use chatmq::store::ConvId;
use common::kill::{self, Shared};
use common::*;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GID: &str = "gcrew";

/// One conversation as a device holds it (PROTOCOL.md, Completeness, rule 1).
#[derive(Default, Debug)]
struct Conv {
    /// Every seq ≤ `w` is held.
    w: u64,
    /// Held seqs above `w` (non-empty means a gap at `w + 1`).
    above: BTreeSet<u64>,
    /// `w` as last sent in a `delivered` receipt.
    receipted: u64,
    /// A `history` request for this conversation is out.
    fetching: bool,
}

impl Conv {
    /// Takes seq `s`; false when it was held already.
    fn take(&mut self, s: u64) -> bool {
        if s <= self.w || !self.above.insert(s) {
            return false;
        }
        while self.above.remove(&(self.w + 1)) {
            self.w += 1;
        }
        true
    }

    fn gap(&self) -> bool {
        !self.above.is_empty()
    }
}

/// What a device holds and how it got it.
#[derive(Default, Debug)]
struct Holdings {
    convs: HashMap<String, Conv>,
    live: u64,
    caught_up: u64,
    duplicates: u64,
    /// Rule 3 finished (conversations answered, every catch-up page in) since the last connect.
    settled: bool,
    connects: u64,
    /// Wall-clock ms intervals during which the subscriptions were in place (SUBACK received
    /// → connection seen closed).
    subscribed: Vec<(i64, i64)>,
    /// Server timestamps (`ts`) of the messages first held by catch-up.
    caught_up_ts: Vec<i64>,
}

impl Holdings {
    /// Messages held by catch-up that were stored while the device was subscribed (after its
    /// SUBACK and before the broker it was connected to was killed, `kills` in ms): their live
    /// delivery was lost.
    fn caught_up_while_subscribed(&self, kills: &[i64]) -> usize {
        let windows: Vec<(i64, i64)> = self
            .subscribed
            .iter()
            .map(|&(a, b)| {
                let killed = kills.iter().copied().filter(|k| *k >= a).min();
                (a, killed.map_or(b, |k| k.min(b)))
            })
            .collect();
        self.caught_up_ts
            .iter()
            .filter(|ts| windows.iter().any(|(a, b)| a <= *ts && *ts <= b))
            .count()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Held = Arc<parking_lot::Mutex<Holdings>>;

/// A device of `user` that follows PROTOCOL.md's completeness rules, until `done`.
struct Device {
    port: u16,
    level: u8,
    user: &'static str,
    token: String,
    held: Held,
}

/// A request this device has out: the `conversations` list, or a `history` page of a conv.
enum Asked {
    Conversations,
    History(String),
}

impl Device {
    async fn run(self, done: Arc<AtomicBool>) {
        let mut rid = 0u64;
        while !done.load(Ordering::Acquire) {
            let id = format!("{}-device", self.user);
            let Some(mut c) = Raw::open(self.port, self.level, self.user, &self.token, &id).await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // Rule 3: subscribe first, then `conversations`.
            let inbox = format!("chat/u/{}/in/#", self.user);
            let group = format!("chat/g/{GID}/#");
            if c.try_subscribe(1, &[&inbox, &group]).await.is_none() {
                continue;
            }
            let subscribed_at = now_ms();
            {
                let mut h = self.held.lock();
                h.settled = false;
                h.connects += 1;
                for conv in h.convs.values_mut() {
                    conv.fetching = false;
                }
            }
            let mut asked: HashMap<String, Asked> = HashMap::new();
            rid += 1;
            self.rpc(&mut c, &mut asked, rid, Asked::Conversations, json!({}))
                .await;
            let mut last_receipts = Instant::now();
            loop {
                match c.poll(100).await {
                    Err(()) => {
                        self.held.lock().subscribed.push((subscribed_at, now_ms()));
                        break;
                    }
                    Ok(None) => {}
                    Ok(Some((first, body))) if first >> 4 == 3 => {
                        let p = publish_parts(self.level, first, &body);
                        if let Some(id) = p.pkid {
                            c.send(&packet(0x40, &id)).await;
                        }
                        let v = unpack(&p.payload);
                        if p.topic.ends_with("/in/rpc") {
                            self.answered(&mut c, &mut asked, &mut rid, &v).await;
                        } else if p.topic.ends_with("/msg") {
                            self.live(&mut c, &mut asked, &mut rid, &v).await;
                        }
                    }
                    Ok(Some(_)) => {}
                }
                if last_receipts.elapsed() > Duration::from_millis(300) {
                    self.receipts(&mut c).await;
                    last_receipts = Instant::now();
                }
                let mut h = self.held.lock();
                if asked.is_empty() && !h.convs.values().any(Conv::gap) {
                    h.settled = true;
                }
                if done.load(Ordering::Acquire) {
                    h.subscribed.push((subscribed_at, now_ms()));
                    return;
                }
            }
        }
    }

    async fn rpc(
        &self,
        c: &mut Raw,
        asked: &mut HashMap<String, Asked>,
        rid: u64,
        what: Asked,
        mut args: Value,
    ) {
        let rid = format!("r{rid}");
        args["rid"] = json!(rid);
        args["op"] = json!(match &what {
            Asked::Conversations => "conversations",
            Asked::History(_) => "history",
        });
        if let Asked::History(conv) = &what {
            args["conv"] = json!(conv);
            args["limit"] = json!(100);
        }
        let topic = format!("chat/u/{}/out/rpc", self.user);
        c.publish(&topic, &msgpack(&args), 0, 0).await;
        asked.insert(rid, what);
    }

    /// Rule 2/3: asks for `history {conv, after}` unless a request for `conv` is out.
    async fn fetch(
        &self,
        c: &mut Raw,
        asked: &mut HashMap<String, Asked>,
        rid: &mut u64,
        conv: &str,
        after: u64,
    ) {
        {
            let mut h = self.held.lock();
            let state = h.convs.entry(conv.to_owned()).or_default();
            if state.fetching {
                return;
            }
            state.fetching = true;
        }
        *rid += 1;
        let what = Asked::History(conv.to_owned());
        self.rpc(c, asked, *rid, what, json!({"after": after}))
            .await;
    }

    /// Rule 2: a live message; a gap starts a catch-up from the watermark.
    async fn live(
        &self,
        c: &mut Raw,
        asked: &mut HashMap<String, Asked>,
        rid: &mut u64,
        m: &Value,
    ) {
        let (Some(conv), Some(seq)) = (m["conv"].as_str(), m["seq"].as_u64()) else {
            return;
        };
        let gap_from = {
            let mut h = self.held.lock();
            let state = h.convs.entry(conv.to_owned()).or_default();
            let new = state.take(seq);
            let gap_from = state.gap().then_some(state.w);
            if new {
                h.live += 1;
            } else {
                h.duplicates += 1;
            }
            gap_from
        };
        if let Some(w) = gap_from {
            self.fetch(c, asked, rid, conv, w).await;
        }
    }

    /// An rpc answer: the conversation list (catch up where `last_seq` is above `w`) or a
    /// history page (take it; page on, or start again from `w` if a gap is left).
    async fn answered(
        &self,
        c: &mut Raw,
        asked: &mut HashMap<String, Asked>,
        rid: &mut u64,
        v: &Value,
    ) {
        let Some(what) = v["rid"].as_str().and_then(|r| asked.remove(r)) else {
            return;
        };
        let result = &v["result"];
        match what {
            Asked::Conversations => {
                let convs = result["conversations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for conv in convs {
                    let (Some(id), Some(last)) = (conv["conv"].as_str(), conv["last_seq"].as_u64())
                    else {
                        continue;
                    };
                    let w = self.held.lock().convs.entry(id.to_owned()).or_default().w;
                    if last > w {
                        self.fetch(c, asked, rid, id, w).await;
                    }
                }
            }
            Asked::History(conv) => {
                let messages = result["messages"].as_array().cloned().unwrap_or_default();
                let (more_after, w) = {
                    let mut h = self.held.lock();
                    let mut new = 0;
                    let mut last = None;
                    let state = h.convs.entry(conv.clone()).or_default();
                    state.fetching = false;
                    let mut new_ts = Vec::new();
                    for m in &messages {
                        if let Some(seq) = m["seq"].as_u64() {
                            if state.take(seq) {
                                new += 1;
                                new_ts.push(m["ts"].as_i64().unwrap_or(0));
                            }
                            last = Some(seq);
                        }
                    }
                    let more = result["has_more"].as_bool() == Some(true);
                    let more_after = if more { last } else { None };
                    let w = state.gap().then_some(state.w);
                    h.caught_up += new;
                    h.caught_up_ts.extend(new_ts);
                    (more_after, w)
                };
                if let Some(after) = more_after.or(w) {
                    self.fetch(c, asked, rid, &conv, after).await;
                }
            }
        }
    }

    /// Rule 4: `delivered` up to the watermark, for every conversation where it moved.
    async fn receipts(&self, c: &mut Raw) {
        let due: Vec<(String, u64)> = {
            let mut h = self.held.lock();
            h.convs
                .iter_mut()
                .filter(|(_, s)| s.w > s.receipted)
                .map(|(conv, s)| {
                    s.receipted = s.w;
                    (conv.clone(), s.w)
                })
                .collect()
        };
        let topic = format!("chat/u/{}/out/receipt", self.user);
        for (conv, up_to) in due {
            let r = json!({"conv": conv, "up_to": up_to, "kind": "delivered"});
            c.publish(&topic, &msgpack(&r), 0, 0).await;
        }
    }
}

fn start_device(
    port: u16,
    level: u8,
    user: &'static str,
    cfg: &chatmq::config::Config,
    done: &Arc<AtomicBool>,
) -> (Held, tokio::task::JoinHandle<()>) {
    let held = Held::default();
    let device = Device {
        port,
        level,
        user,
        token: token_ttl(cfg, user, 3600),
        held: held.clone(),
    };
    (held, tokio::spawn(device.run(done.clone())))
}

/// Waits until every device has finished its reconnect catch-up.
async fn settled(devices: &[(&str, Held)], connects_after: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = devices.iter().zip(connects_after).all(|((_, h), n)| {
            let h = h.lock();
            h.settled && h.connects > *n
        });
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "devices did not settle: {:?}",
            devices
                .iter()
                .map(|(u, h)| {
                    let h = h.lock();
                    (u, h.settled, h.connects)
                })
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_follow_the_protocol_end_with_every_message_through_kill_9() {
    let kills = kill::env_count("CHATMQ_GAPS_KILLS", 12);
    let dir = tempfile::tempdir().expect("dir");
    let port = kill::free_port();
    let (cfg_path, cfg) = kill::write_config(dir.path(), port);
    kill::create_group(&cfg, GID, &["bob", "carol", "dave", "frank"]).await;
    let mut child = kill::spawn(&cfg_path);
    kill::wait_listening(port).await;

    let ledger: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let group = ConvId::group(GID);
    let (bob_dm, dave_dm) = (
        ConvId::direct("bob", "erin"),
        ConvId::direct("dave", "gina"),
    );
    // Senders at both protocol levels, to the group and to two DMs.
    let senders = vec![
        ("alice", 5, format!("g:{GID}"), group.clone()),
        ("carol", 4, format!("g:{GID}"), group.clone()),
        ("erin", 4, "u:bob".to_owned(), bob_dm.clone()),
        ("gina", 5, "u:dave".to_owned(), dave_dm.clone()),
    ];
    let senders = kill::spawn_senders(port, &cfg, senders, &ledger, &stop);
    // Devices online through the kills (3.1.1 and 5.0); frank stays away until the end.
    let (bob, bob_task) = start_device(port, 4, "bob", &cfg, &done);
    let (dave, dave_task) = start_device(port, 5, "dave", &cfg, &done);

    let mut kill_times = Vec::new();
    for _ in 0..kills {
        let wait = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        kill_times.push(now_ms());
        child = kill::kill_and_restart(child, &cfg_path, port).await;
    }
    stop.store(true, Ordering::Release);
    kill::join_senders(senders).await;
    // Everything is stored now. One more restart: bob and dave reconnect and catch up (rule 3);
    // frank connects for the first time.
    let before = [bob.lock().connects, dave.lock().connects, 0];
    kill_times.push(now_ms());
    child = kill::kill_and_restart(child, &cfg_path, port).await;
    let (frank, frank_task) = start_device(port, 4, "frank", &cfg, &done);
    let devices = [("bob", bob), ("dave", dave), ("frank", frank)];
    settled(&devices, &before).await;
    done.store(true, Ordering::Release);
    for t in [bob_task, dave_task, frank_task] {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    kill::terminate(child);

    // Storage: every acknowledged cid exactly once, seqs dense.
    let store = chatmq::store::open(&cfg.store).await.expect("reopen");
    let acked = ledger.lock().acked.clone();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for conv in [&group, &bob_dm, &dave_dm] {
        let (n_acked, n_stored) = kill::assert_stored_once(store.as_ref(), &acked, conv).await;
        println!("{conv}: {n_acked} acknowledged, {n_stored} stored, 0 lost, 0 duplicated, dense");
        last_seq.insert(conv.as_str().to_owned(), n_stored as u64);
    }
    // Every device holds every message of its conversations.
    let own = |user: &str| -> Vec<&ConvId> {
        match user {
            "bob" => vec![&group, &bob_dm],
            "dave" => vec![&group, &dave_dm],
            _ => vec![&group],
        }
    };
    for (user, held) in &devices {
        let h = held.lock();
        for conv in own(user) {
            let state = h.convs.get(conv.as_str());
            let (w, above) = state.map(|s| (s.w, s.above.len())).unwrap_or((0, 0));
            assert_eq!(
                (w, above),
                (last_seq[conv.as_str()], 0),
                "{user} does not hold all of {conv}"
            );
        }
        println!(
            "{user}: {} messages live, {} by catch-up ({} of them stored while it was subscribed), \
             {} duplicates dropped, {} connects",
            h.live,
            h.caught_up,
            h.caught_up_while_subscribed(&kill_times),
            h.duplicates,
            h.connects
        );
    }
    println!("{kills} SIGKILLs; {} messages acknowledged", acked.len());
    let _ = store.flush().await;
}
