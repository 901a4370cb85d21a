//! `offline`: messages pile up for users who are offline, then they all reconnect at once.
//!
//! Phase 1: S online senders send P messages to each of U never-connected recipients and
//! wait for every sent ack. Phase 2 (the storm): the recipients connect and subscribe, get
//! their backlog pushed, and acknowledge it with cumulative `delivered` receipts, which the
//! senders must see forwarded on their `in/receipt`. Measured: time to drain, loss (acked,
//! never delivered), duplicates, and messages whose delivery no receipt ever confirmed.
//! During the storm a probe (sender 0 → sender 1, one DM every 100 ms) measures what an
//! unrelated user's send → sent ack round trip costs while the broker is busy.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::bail;
use rumqttc::AsyncClient;
use serde_json::json;

use super::{close_all, open_many, per_s, secs, wait_for, Env};
use crate::chat::{self, ChatStats, Outbox};
use crate::cli::OfflineArgs;
use crate::conn::Inbound;
use crate::protocol::{self, classify, InboundKind, ReceiptIn, TextStamp};
use crate::rate::{Pace, Timetable};
use crate::report::Report;
use crate::stats::{Counter, Latency};

/// The tag of the probe's sends (not addressed to a recipient).
const PROBE_TAG: u32 = u32::MAX;
/// Time between probe sends.
const PROBE_EVERY_NS: u64 = 100_000_000;

/// A sender's view of the receipts for its conversations.
#[derive(Default)]
struct Marks {
    /// Highest `delivered` marker seen per conversation.
    delivered: HashMap<String, u64>,
    /// Highest acked seq per conversation: the marker that confirms them all.
    need: HashMap<String, u64>,
}

impl Marks {
    /// Records a forwarded receipt; true when it newly covers the conversation.
    fn on_receipt(&mut self, r: &ReceiptIn) -> bool {
        if r.kind != "delivered" && r.kind != "read" {
            return false;
        }
        let mark = self.delivered.entry(r.conv.clone()).or_default();
        let before = *mark;
        *mark = before.max(r.up_to);
        matches!(self.need.get(&r.conv), Some(&n) if before < n && *mark >= n)
    }
}

/// A recipient's backlog as it arrives.
#[derive(Default)]
struct Backlog {
    seen: HashSet<u64>,
    /// Per conversation: highest seq received, messages since the last receipt.
    convs: HashMap<String, (u64, u64)>,
    received: u64,
    expected: u64,
    reordered: u64,
    connect_ns: u64,
    done_ns: Option<u64>,
    client: Option<AsyncClient>,
}

impl Backlog {
    /// Sends a receipt for every conversation with unconfirmed messages, once connected.
    fn flush(&mut self, me: &str) {
        let Some(client) = &self.client else { return };
        for (conv, (max, since)) in self.convs.iter_mut() {
            if *since > 0 {
                chat::spawn_receipt(client, me, conv, *max);
                *since = 0;
            }
        }
    }
}

pub async fn run(args: OfflineArgs) -> anyhow::Result<i32> {
    if args.users == 0 || args.senders == 0 || args.pending == 0 {
        bail!("--users, --senders and --pending must be positive");
    }
    let env = Env::new(&args.common)?;
    let clock = env.clock;
    let run = env.run;
    let prefix = chat::user_prefix(&args.auth, run)?;
    let senders: Vec<String> = (0..args.senders).map(|j| format!("{prefix}s{j}")).collect();
    let recipients: Vec<String> = (0..args.users).map(|i| format!("{prefix}r{i}")).collect();
    let p = &env.progress;
    p.phase("minting tokens");
    let src = chat::token_source(&args.auth)?;
    let all: Vec<String> = senders.iter().chain(&recipients).cloned().collect();
    let mut tokens = chat::tokens_for(src, &all, env.common.connect_concurrency).await?;
    let recipient_tokens = tokens.split_off(senders.len());

    // Phase 0 (--persistent): every recipient leaves a session with its inbox subscription.
    if args.persistent {
        p.phase("leaving persistent sessions");
        let target = env.target.persistent();
        let results = open_many(
            args.users,
            env.common.connect_concurrency,
            0.0,
            clock,
            |i| {
                let (me, token, target) = (
                    recipients[i].clone(),
                    recipient_tokens[i].clone(),
                    target.clone(),
                );
                let n = args.senders + i;
                async move { chat::open_user(&target, n, &me, &token, &[], |_| {}).await }
            },
        )
        .await;
        let conns = chat::all_connected(results, &recipients)?;
        close_all(conns).await;
    }

    // Phase 1: senders connect and pile messages up.
    let stats = ChatStats::default();
    let outboxes: Vec<Arc<Mutex<Outbox>>> = senders.iter().map(|_| Arc::default()).collect();
    let marks: Vec<Arc<Mutex<Marks>>> = senders.iter().map(|_| Arc::default()).collect();
    let covered = Counter::default();
    let connected = Counter::default();
    p.gauge("connected", &connected);
    let _progress = p.start();
    p.phase("connecting senders");
    let results = open_many(
        senders.len(),
        env.common.connect_concurrency,
        0.0,
        clock,
        |j| {
            let me = senders[j].clone();
            let token = tokens[j].clone();
            let (outbox, marks, stats, covered) = (
                outboxes[j].clone(),
                marks[j].clone(),
                stats.clone(),
                covered.clone(),
            );
            let target = env.target.clone();
            let connected = connected.clone();
            async move {
                let handler = move |ev: Inbound<'_>| {
                    let Inbound::Publish { topic, payload } = ev else {
                        return;
                    };
                    match classify(topic) {
                        InboundKind::Ack => outbox
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .on_ack(payload, clock.now_ns(), &stats),
                        InboundKind::Receipt => {
                            stats.receipts_in.inc();
                            match protocol::decode::<ReceiptIn>(payload) {
                                Some(r) => {
                                    let mut m =
                                        marks.lock().unwrap_or_else(PoisonError::into_inner);
                                    if m.on_receipt(&r) {
                                        covered.inc();
                                    }
                                }
                                None => stats.undecodable.inc(),
                            }
                        }
                        InboundKind::Msg => stats.echoes.inc(),
                        _ => {}
                    }
                };
                let c = chat::open_user(&target, j, &me, &token, &[], handler).await;
                if c.is_ok() {
                    connected.inc();
                }
                c
            }
        },
    )
    .await;
    let sender_conns = chat::all_connected(results, &senders)?;

    p.rate("sent", &stats.sent);
    p.rate("acked", &stats.acked);
    p.phase("piling up");
    let total = args.users as u64 * args.pending;
    let s = args.senders;
    let start_ns = clock.now_ns() + 50_000_000;
    // Sender j sends message k to recipient r when (r + k) mod S = j, k-major, so every
    // recipient's backlog grows evenly and comes from several people.
    let plans: Vec<Vec<(u32, u64)>> = (0..s)
        .map(|j| {
            (0..args.pending)
                .flat_map(|k| (0..args.users).map(move |r| (r, k)))
                .filter(|&(r, k)| (r + k as usize) % s == j)
                .map(|(r, k)| (r as u32, k))
                .collect()
        })
        .collect();
    let tables: Option<Vec<Timetable>> = (args.send_rate > 0.0)
        .then(|| Timetable::split(start_ns, args.send_rate, s, u64::MAX, None));
    let mut tasks = Vec::new();
    for (j, plan) in plans.into_iter().enumerate() {
        let client = sender_conns[j].client.clone();
        let me = senders[j].clone();
        let outbox = outboxes[j].clone();
        let sent = stats.sent.clone();
        let table = tables.as_ref().and_then(|t| t.get(j).cloned());
        let recipients = recipients.clone();
        let size = args.size;
        let pace = Pace::of(table, u64::MAX, Some(plan.len() as u64));
        tasks.push(tokio::spawn(async move {
            clock.sleep_until(start_ns).await;
            for (n, (r, k)) in plan.into_iter().enumerate() {
                let Some(due) = pace.due(&clock, n as u64).await else {
                    break;
                };
                let cid = format!("{r}-{k}");
                let text = TextStamp {
                    run,
                    sender: j as u32,
                    n: k,
                    due_ns: due,
                }
                .encode(size);
                outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expect(cid.clone(), due, r);
                let to = format!("u:{}", recipients[r as usize]);
                if chat::send_text(&client, &me, to, cid, text).await.is_err() {
                    break;
                }
                sent.inc();
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let all_answered = wait_for(secs(args.send_timeout), || {
        stats.acked.get() + stats.ack_errors.get() >= stats.sent.get()
    })
    .await;
    let pile_end_ns = clock.now_ns();

    // What each recipient should get, and the marker each sender waits for.
    let mut expected = vec![0u64; args.users];
    let mut acked_total = 0u64;
    let mut convs_total = 0u64;
    for (o, m) in outboxes.iter().zip(&marks) {
        let o = o.lock().unwrap_or_else(PoisonError::into_inner);
        let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
        for a in &o.acked {
            expected[a.tag as usize] += 1;
            acked_total += 1;
            let need = m.need.entry(a.conv.clone()).or_default();
            *need = (*need).max(a.seq);
        }
        let already = m
            .need
            .iter()
            .filter(|(c, n)| m.delivered.get(*c).is_some_and(|d| d >= *n))
            .count();
        covered.add(already as u64);
        convs_total += m.need.len() as u64;
    }

    // Phase 2: the storm.
    let backlogs: Vec<Arc<Mutex<Backlog>>> = expected
        .iter()
        .map(|&e| {
            Arc::new(Mutex::new(Backlog {
                expected: e,
                ..Default::default()
            }))
        })
        .collect();
    let done = Counter::default();
    // Recipients none of whose messages were acked have nothing to wait for.
    let nothing_expected = expected.iter().filter(|&&e| e == 0).count() as u64;
    p.rate("delivered", &stats.delivered);
    p.gauge("drained users", &done);
    p.gauge("receipted convs", &covered);
    p.phase("reconnect storm");
    let storm_ns = clock.now_ns();
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = (args.senders >= 2).then(|| {
        let client = sender_conns[0].client.clone();
        let (me, to) = (senders[0].clone(), format!("u:{}", senders[1]));
        let (outbox, stop) = (outboxes[0].clone(), probe_stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let cid = format!("probe-{n}");
                let due = clock.now_ns();
                outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expect(cid.clone(), due, PROBE_TAG);
                if chat::send_text(&client, &me, to.clone(), cid, "probe".into())
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                clock.sleep_until(due + PROBE_EVERY_NS).await;
            }
        })
    });
    let every = args.receipt_every.max(1);
    let n_senders = args.senders;
    let persistent = args.persistent;
    let results = open_many(
        args.users,
        env.common.connect_concurrency,
        args.storm_rate,
        clock,
        |i| {
            let me = recipients[i].clone();
            let token = recipient_tokens[i].clone();
            let (backlog, stats, done) = (backlogs[i].clone(), stats.clone(), done.clone());
            let target = env.target.clone();
            let connected = connected.clone();
            async move {
                let me2 = me.clone();
                let b2 = backlog.clone();
                b2.lock().unwrap_or_else(PoisonError::into_inner).connect_ns = clock.now_ns();
                let handler = move |ev: Inbound<'_>| {
                    let Inbound::Publish { topic, payload } = ev else {
                        return;
                    };
                    if classify(topic) == InboundKind::Msg {
                        on_message(
                            &me2,
                            payload,
                            clock.now_ns(),
                            every,
                            &backlog,
                            &stats,
                            &done,
                        );
                    }
                };
                let c = if persistent {
                    chat::resume_user(&target, n_senders + i, &me, &token, handler).await
                } else {
                    chat::open_user(&target, n_senders + i, &me, &token, &[], handler).await
                };
                if let Ok(c) = &c {
                    connected.inc();
                    let mut b = b2.lock().unwrap_or_else(PoisonError::into_inner);
                    b.client = Some(c.client.clone());
                    b.flush(&me);
                }
                c
            }
        },
    )
    .await;
    let storm_connected_ns = clock.now_ns();
    let recipient_conns = chat::all_connected(results, &recipients)?;
    let mut setup = Latency::new();
    for c in &recipient_conns {
        setup.record_ns(c.setup.as_nanos() as u64);
    }
    let resumed = recipient_conns.iter().filter(|c| c.session_present).count() as u64;
    let check_receipts = !args.no_receipt_check;
    let drained = wait_for(secs(args.drain), || {
        done.get() + nothing_expected >= args.users as u64
            && (!check_receipts || covered.get() >= convs_total)
    })
    .await;
    let drain_end_ns = clock.now_ns();
    probe_stop.store(true, Ordering::Release);
    if let Some(probe) = probe {
        let _ = probe.await;
        // The last probe's ack.
        wait_for(secs(2.0), || {
            outboxes[0]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unacked()
                == 0
        })
        .await;
    }
    let dropped = sender_conns
        .iter()
        .chain(&recipient_conns)
        .filter(|c| !c.is_alive())
        .count();
    close_all(recipient_conns).await;
    close_all(sender_conns).await;
    drop(_progress);

    // Tally.
    let mut delivered_ids = HashSet::new();
    let mut per_user = Latency::new();
    let (mut last_done, mut drained_users, mut reordered) = (0u64, 0u64, 0u64);
    for b in &backlogs {
        let b = b.lock().unwrap_or_else(PoisonError::into_inner);
        delivered_ids.extend(b.seen.iter().copied());
        reordered += b.reordered;
        if let Some(d) = b.done_ns {
            drained_users += 1;
            last_done = last_done.max(d);
            per_user.record_ns(d.saturating_sub(b.connect_ns));
        }
    }
    let (mut lost, mut unconfirmed, mut unacked) = (0u64, 0u64, 0u64);
    let mut probe_rtt = Latency::new();
    for (o, m) in outboxes.iter().zip(&marks) {
        let o = o.lock().unwrap_or_else(PoisonError::into_inner);
        let m = m.lock().unwrap_or_else(PoisonError::into_inner);
        unacked += o.unacked();
        for a in &o.acked {
            if a.tag == PROBE_TAG {
                probe_rtt.record_ns(a.acked_ns.saturating_sub(a.due_ns));
                continue;
            }
            if !delivered_ids.contains(&a.key) {
                lost += 1;
            }
            if m.delivered.get(&a.conv).is_none_or(|&d| d < a.seq) {
                unconfirmed += 1;
            }
        }
    }

    let mut r = Report::new(
        "offline",
        format!(
            "offline, {} users × {} pending from {} senders, {}storm at {}",
            args.users,
            args.pending,
            args.senders,
            if args.persistent {
                "persistent sessions, "
            } else {
                ""
            },
            if args.storm_rate > 0.0 {
                format!("{} conn/s", args.storm_rate)
            } else {
                "max rate".into()
            }
        ),
        json!(args),
    );
    let pile_span = pile_end_ns.saturating_sub(start_ns);
    r.count("offline users", args.users as u64);
    r.count("pending per user", args.pending);
    r.count("messages to send", total);
    r.count("sent", stats.sent.get());
    r.count("acked", acked_total);
    r.count("ack errors", stats.ack_errors.get());
    r.count("unacked", unacked);
    r.value("pile-up time", pile_span as f64 / 1e9, "s");
    r.rate("pile-up acked rate", per_s(acked_total, pile_span), "msg/s");
    r.value(
        "storm connect time",
        storm_connected_ns.saturating_sub(storm_ns) as f64 / 1e9,
        "s",
    );
    r.rate(
        "storm connections/s",
        per_s(
            args.users as u64,
            storm_connected_ns.saturating_sub(storm_ns),
        ),
        "conn/s",
    );
    if args.persistent {
        r.count("sessions resumed (CONNACK session present)", resumed);
    }
    r.count("users fully drained", drained_users);
    r.value(
        "time to drain (storm → last backlog)",
        last_done.saturating_sub(storm_ns) as f64 / 1e9,
        "s",
    );
    r.count("delivered", stats.delivered.get());
    r.rate(
        "storm delivery rate",
        per_s(stats.delivered.get(), last_done.saturating_sub(storm_ns)),
        "msg/s",
    );
    r.count("lost (acked, not delivered)", lost);
    r.count("duplicates", stats.duplicates.get());
    r.count("out of order", reordered);
    r.count("conversations", convs_total);
    r.count("conversations confirmed by receipt", covered.get());
    r.count("messages without delivered receipt", unconfirmed);
    r.value(
        "time to receipts complete",
        drain_end_ns.saturating_sub(storm_ns) as f64 / 1e9,
        "s",
    );
    r.count("receipts received by senders", stats.receipts_in.get());
    r.count("dropped connections", dropped as u64);
    r.tally("ack errors by code", stats.errors());
    r.latency("send → sent ack", stats.ack_latency.total().summary());
    r.latency(
        if args.persistent {
            "storm connect (session resumed)"
        } else {
            "storm connect+subscribe"
        },
        setup.summary(),
    );
    r.latency("reconnect → backlog done", per_user.summary());
    if args.senders >= 2 {
        r.latency(
            "probe send → sent ack during the storm",
            probe_rtt.summary(),
        );
    } else {
        r.notes
            .push("no probe: it needs --senders 2 or more".into());
    }
    if args.persistent && resumed < args.users as u64 {
        r.notes.push(format!(
            "{} of {} recipients found no session to resume",
            args.users as u64 - resumed,
            args.users
        ));
    }
    r.loss = lost + if check_receipts { unconfirmed } else { 0 };
    r.duplicates = stats.duplicates.get();
    r.unacked = unacked + stats.ack_errors.get();
    if check_receipts {
        r.notes.push(
            "loss counts messages never delivered plus messages no forwarded delivered receipt confirmed (--no-receipt-check to leave receipts out)".into(),
        );
    }
    if !all_answered {
        r.notes.push(format!(
            "pile-up: {unacked} sends had no ack after {} s",
            args.send_timeout
        ));
    }
    if !drained {
        r.notes
            .push(format!("storm: drain timed out after {} s", args.drain));
    }
    env.finish(r)
}

fn on_message(
    me: &str,
    payload: &[u8],
    now: u64,
    every: u64,
    backlog: &Mutex<Backlog>,
    stats: &ChatStats,
    done: &Counter,
) {
    let Some(d) = stats.foreign_delivery(me, payload) else {
        return;
    };
    let mut b = backlog.lock().unwrap_or_else(PoisonError::into_inner);
    if !stats.first_sight(&mut b.seen, &d) {
        return;
    }
    b.received += 1;
    let b = &mut *b;
    let conv = b.convs.entry(d.conv.clone()).or_default();
    if d.seq < conv.0 {
        b.reordered += 1;
    }
    conv.0 = conv.0.max(d.seq);
    conv.1 += 1;
    // Before the connection is handed over there is no client yet: `flush` catches up.
    if conv.1 >= every {
        if let Some(c) = &b.client {
            chat::spawn_receipt(c, me, &d.conv, conv.0);
            conv.1 = 0;
        }
    }
    if b.received == b.expected && b.done_ns.is_none() {
        b.done_ns = Some(now);
        done.inc();
        b.flush(me);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_cover_when_the_marker_reaches_the_last_acked_seq() {
        let mut m = Marks::default();
        m.need.insert("d:a:b".into(), 5);
        let r = |up_to, kind: &str| ReceiptIn {
            conv: "d:a:b".into(),
            by: "b".into(),
            kind: kind.into(),
            up_to,
        };
        assert!(!m.on_receipt(&r(3, "delivered")));
        assert!(!m.on_receipt(&r(9, "typing")));
        assert!(m.on_receipt(&r(5, "delivered")));
        // Already covered: not counted twice; markers never move back.
        assert!(!m.on_receipt(&r(6, "read")));
        assert!(!m.on_receipt(&r(1, "delivered")));
        assert_eq!(m.delivered.get("d:a:b"), Some(&6));
    }
}
