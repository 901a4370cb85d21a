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

use super::{chat_run, close_all, open_many, per_s, secs, wait_for, Env};
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
    let prefix = chat::user_prefix(&args.auth, env.run)?;
    let senders: Vec<String> = (0..args.senders).map(|j| format!("{prefix}s{j}")).collect();
    let recipients: Vec<String> = (0..args.users).map(|i| format!("{prefix}r{i}")).collect();
    env.progress.phase("minting tokens");
    let src = chat::token_source(&args.auth)?;
    let all: Vec<String> = senders.iter().chain(&recipients).cloned().collect();
    let mut sender_tokens = chat::tokens_for(src, &all, env.common.connect_concurrency).await?;
    let recipient_tokens = sender_tokens.split_off(senders.len());
    let o = Offline {
        env: &env,
        args: &args,
        outboxes: senders.iter().map(|_| Arc::default()).collect(),
        marks: senders.iter().map(|_| Arc::default()).collect(),
        senders,
        recipients,
        sender_tokens,
        recipient_tokens,
        stats: ChatStats::default(),
        covered: Counter::default(),
        connected: Counter::default(),
    };
    if args.persistent {
        o.leave_sessions().await?;
    }
    env.progress.gauge("connected", &o.connected);
    let _progress = env.progress.start();
    let sender_conns = o.connect_senders().await?;
    let pile = o.pile_up(&sender_conns).await;
    let expect = o.expectations();
    let storm = o.storm(&sender_conns, &expect).await?;
    let dropped = sender_conns
        .iter()
        .chain(&storm.conns)
        .filter(|c| !c.is_alive())
        .count();
    let resumed = storm.conns.iter().filter(|c| c.session_present).count() as u64;
    close_all(storm.conns).await;
    close_all(sender_conns).await;
    drop(_progress);
    let tally = o.tally(&storm.backlogs);
    let mut r = o.report(&pile, &expect, &storm.times, &tally, resumed, dropped);
    o.notes(&mut r, &pile, &storm.times, &tally, resumed);
    env.finish(r)
}

/// One offline run: its users, their tokens and what the senders see.
struct Offline<'a> {
    env: &'a Env,
    args: &'a OfflineArgs,
    senders: Vec<String>,
    recipients: Vec<String>,
    sender_tokens: Vec<String>,
    recipient_tokens: Vec<String>,
    stats: ChatStats,
    outboxes: Vec<Arc<Mutex<Outbox>>>,
    marks: Vec<Arc<Mutex<Marks>>>,
    /// Conversations a forwarded receipt has confirmed up to their last acked message.
    covered: Counter,
    connected: Counter,
}

/// How the pile-up went.
struct Pile {
    start_ns: u64,
    end_ns: u64,
    /// Every send was answered within `--send-timeout`.
    all_answered: bool,
}

/// What the storm should bring: messages per recipient, acked in all, conversations.
struct Expect {
    per_user: Vec<u64>,
    acked: u64,
    convs: u64,
}

/// The storm's times.
struct StormTimes {
    start_ns: u64,
    connected_ns: u64,
    end_ns: u64,
    /// Every backlog done (and, unless `--no-receipt-check`, every conversation confirmed).
    drained: bool,
    setup: Latency,
}

struct Storm {
    conns: Vec<crate::conn::Conn>,
    backlogs: Vec<Arc<Mutex<Backlog>>>,
    times: StormTimes,
}

/// The run's outcome, from the backlogs and the senders' outboxes.
#[derive(Default)]
struct Tally {
    lost: u64,
    unconfirmed: u64,
    unacked: u64,
    reordered: u64,
    drained_users: u64,
    /// When the last backlog was done.
    last_done: u64,
    per_user: Latency,
    probe_rtt: Latency,
}

impl Offline<'_> {
    /// Phase 0 (`--persistent`): every recipient leaves a session with its inbox subscription.
    async fn leave_sessions(&self) -> anyhow::Result<()> {
        let env = self.env;
        env.progress.phase("leaving persistent sessions");
        let target = env.target.persistent();
        let results = open_many(
            self.args.users,
            env.common.connect_concurrency,
            0.0,
            env.clock,
            |i| {
                let (me, token) = (self.recipients[i].clone(), self.recipient_tokens[i].clone());
                let (target, n) = (target.clone(), self.args.senders + i);
                async move { chat::open_user(&target, n, &me, &token, &[], |_| {}).await }
            },
        )
        .await;
        close_all(chat::all_connected(results, &self.recipients)?).await;
        Ok(())
    }

    /// Connects the senders: sent acks to their outboxes, forwarded receipts to their marks.
    async fn connect_senders(&self) -> anyhow::Result<Vec<crate::conn::Conn>> {
        let (env, clock) = (self.env, self.env.clock);
        env.progress.phase("connecting senders");
        let results = open_many(
            self.senders.len(),
            env.common.connect_concurrency,
            0.0,
            clock,
            |j| {
                let (me, token) = (self.senders[j].clone(), self.sender_tokens[j].clone());
                let (marks, stats, covered) = (
                    self.marks[j].clone(),
                    self.stats.clone(),
                    self.covered.clone(),
                );
                let on = move |kind, payload: &[u8], _| match kind {
                    InboundKind::Msg => stats.echoes.inc(),
                    InboundKind::Receipt => match protocol::decode::<ReceiptIn>(payload) {
                        Some(r) => {
                            if marks
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .on_receipt(&r)
                            {
                                covered.inc();
                            }
                        }
                        None => stats.undecodable.inc(),
                    },
                    _ => {}
                };
                let outbox = self.outboxes[j].clone();
                let handler = chat_run::handler(clock, outbox, self.stats.clone(), on);
                let (target, connected) = (env.target.clone(), self.connected.clone());
                async move {
                    let c = chat::open_user(&target, j, &me, &token, &[], handler).await;
                    if c.is_ok() {
                        connected.inc();
                    }
                    c
                }
            },
        )
        .await;
        chat::all_connected(results, &self.senders)
    }

    /// Phase 1: the senders pile messages up for the offline recipients and wait for acks.
    async fn pile_up(&self, conns: &[crate::conn::Conn]) -> Pile {
        let (args, stats, clock, run) = (self.args, &self.stats, self.env.clock, self.env.run);
        let p = &self.env.progress;
        p.rate("sent", &stats.sent);
        p.rate("acked", &stats.acked);
        p.phase("piling up");
        let s = args.senders;
        let start_ns = clock.now_ns() + 50_000_000;
        let tables = (args.send_rate > 0.0)
            .then(|| Timetable::split(start_ns, args.send_rate, s, u64::MAX, None));
        let mut tasks = Vec::new();
        for (j, plan) in pile_plans(args.users, args.pending, s)
            .into_iter()
            .enumerate()
        {
            let table = tables.as_ref().and_then(|t| t.get(j).cloned());
            let pace = Pace::of(table, u64::MAX, Some(plan.len() as u64));
            let (client, me) = (conns[j].client.clone(), self.senders[j].clone());
            let (outbox, sent) = (self.outboxes[j].clone(), stats.sent.clone());
            let (recipients, size) = (self.recipients.clone(), args.size);
            tasks.push(tokio::spawn(async move {
                clock.sleep_until(start_ns).await;
                for (n, (r, k)) in plan.into_iter().enumerate() {
                    let Some(due) = pace.due(&clock, n as u64).await else {
                        break;
                    };
                    let cid = format!("{r}-{k}");
                    let stamp = TextStamp {
                        run,
                        sender: j as u32,
                        n: k,
                        due_ns: due,
                    };
                    outbox
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .expect(cid.clone(), due, r);
                    let to = format!("u:{}", recipients[r as usize]);
                    let text = stamp.encode(size);
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
        Pile {
            start_ns,
            end_ns: clock.now_ns(),
            all_answered,
        }
    }

    /// What each recipient should get, and the marker each sender waits for.
    fn expectations(&self) -> Expect {
        let mut e = Expect {
            per_user: vec![0u64; self.args.users],
            acked: 0,
            convs: 0,
        };
        for (o, m) in self.outboxes.iter().zip(&self.marks) {
            let o = o.lock().unwrap_or_else(PoisonError::into_inner);
            let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
            for a in &o.acked {
                e.per_user[a.tag as usize] += 1;
                e.acked += 1;
                let need = m.need.entry(a.conv.clone()).or_default();
                *need = (*need).max(a.seq);
            }
            let already = m
                .need
                .iter()
                .filter(|(c, n)| m.delivered.get(*c).is_some_and(|d| d >= *n))
                .count();
            self.covered.add(already as u64);
            e.convs += m.need.len() as u64;
        }
        e
    }

    /// Phase 2: every recipient connects (or resumes its session) at `--storm-rate` and
    /// gets its backlog; the probe runs until every backlog is done and receipted.
    async fn storm(&self, senders: &[crate::conn::Conn], expect: &Expect) -> anyhow::Result<Storm> {
        let (env, args, clock) = (self.env, self.args, self.env.clock);
        let backlogs: Vec<Arc<Mutex<Backlog>>> = expect
            .per_user
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
        let nothing_expected = expect.per_user.iter().filter(|&&e| e == 0).count() as u64;
        let p = &env.progress;
        p.rate("delivered", &self.stats.delivered);
        p.gauge("drained users", &done);
        p.gauge("receipted convs", &self.covered);
        p.phase("reconnect storm");
        let start_ns = clock.now_ns();
        let probe = Probe::start(self, senders);
        let results = open_many(
            args.users,
            env.common.connect_concurrency,
            args.storm_rate,
            clock,
            |i| self.reconnect(i, backlogs[i].clone(), done.clone()),
        )
        .await;
        let connected_ns = clock.now_ns();
        let conns = chat::all_connected(results, &self.recipients)?;
        let mut setup = Latency::new();
        for c in &conns {
            setup.record_ns(c.setup.as_nanos() as u64);
        }
        let check_receipts = !args.no_receipt_check;
        let drained = wait_for(secs(args.drain), || {
            done.get() + nothing_expected >= args.users as u64
                && (!check_receipts || self.covered.get() >= expect.convs)
        })
        .await;
        let end_ns = clock.now_ns();
        if let Some(probe) = probe {
            probe.stop(&self.outboxes[0]).await;
        }
        Ok(Storm {
            conns,
            backlogs,
            times: StormTimes {
                start_ns,
                connected_ns,
                end_ns,
                drained,
                setup,
            },
        })
    }

    /// Recipient `i` connects (or resumes) and receipts its backlog as it arrives.
    fn reconnect(
        &self,
        i: usize,
        backlog: Arc<Mutex<Backlog>>,
        done: Counter,
    ) -> impl std::future::Future<Output = Result<crate::conn::Conn, crate::conn::ConnectFailure>>
           + Send
           + 'static {
        let (me, token) = (self.recipients[i].clone(), self.recipient_tokens[i].clone());
        let (target, connected, stats) = (
            self.env.target.clone(),
            self.connected.clone(),
            self.stats.clone(),
        );
        let (clock, every) = (self.env.clock, self.args.receipt_every.max(1));
        let (n, persistent) = (self.args.senders + i, self.args.persistent);
        async move {
            let (me2, b2) = (me.clone(), backlog.clone());
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
                chat::resume_user(&target, n, &me, &token, handler).await
            } else {
                chat::open_user(&target, n, &me, &token, &[], handler).await
            };
            if let Ok(c) = &c {
                connected.inc();
                let mut b = b2.lock().unwrap_or_else(PoisonError::into_inner);
                b.client = Some(c.client.clone());
                b.flush(&me);
            }
            c
        }
    }

    fn tally(&self, backlogs: &[Arc<Mutex<Backlog>>]) -> Tally {
        let mut t = Tally::default();
        let mut delivered_ids = HashSet::new();
        for b in backlogs {
            let b = b.lock().unwrap_or_else(PoisonError::into_inner);
            delivered_ids.extend(b.seen.iter().copied());
            t.reordered += b.reordered;
            if let Some(d) = b.done_ns {
                t.drained_users += 1;
                t.last_done = t.last_done.max(d);
                t.per_user.record_ns(d.saturating_sub(b.connect_ns));
            }
        }
        for (o, m) in self.outboxes.iter().zip(&self.marks) {
            let o = o.lock().unwrap_or_else(PoisonError::into_inner);
            let m = m.lock().unwrap_or_else(PoisonError::into_inner);
            t.unacked += o.unacked();
            for a in &o.acked {
                if a.tag == PROBE_TAG {
                    t.probe_rtt.record_ns(a.acked_ns.saturating_sub(a.due_ns));
                    continue;
                }
                if !delivered_ids.contains(&a.key) {
                    t.lost += 1;
                }
                if m.delivered.get(&a.conv).is_none_or(|&d| d < a.seq) {
                    t.unconfirmed += 1;
                }
            }
        }
        t
    }

    fn report(
        &self,
        pile: &Pile,
        expect: &Expect,
        storm: &StormTimes,
        t: &Tally,
        resumed: u64,
        dropped: usize,
    ) -> Report {
        let (args, stats) = (self.args, &self.stats);
        let mut r = Report::new("offline", title(args), json!(args));
        let pile_span = pile.end_ns.saturating_sub(pile.start_ns);
        let storm_connect = storm.connected_ns.saturating_sub(storm.start_ns);
        let storm_drain = t.last_done.saturating_sub(storm.start_ns);
        r.count("offline users", args.users as u64);
        r.count("pending per user", args.pending);
        r.count("messages to send", args.users as u64 * args.pending);
        r.count("sent", stats.sent.get());
        r.count("acked", expect.acked);
        r.count("ack errors", stats.ack_errors.get());
        r.count("unacked", t.unacked);
        r.value("pile-up time", pile_span as f64 / 1e9, "s");
        r.rate(
            "pile-up acked rate",
            per_s(expect.acked, pile_span),
            "msg/s",
        );
        r.value("storm connect time", storm_connect as f64 / 1e9, "s");
        let conn_rate = per_s(args.users as u64, storm_connect);
        r.rate("storm connections/s", conn_rate, "conn/s");
        if args.persistent {
            r.count("sessions resumed (CONNACK session present)", resumed);
        }
        r.count("users fully drained", t.drained_users);
        r.value(
            "time to drain (storm → last backlog)",
            storm_drain as f64 / 1e9,
            "s",
        );
        r.count("delivered", stats.delivered.get());
        let delivery_rate = per_s(stats.delivered.get(), storm_drain);
        r.rate("storm delivery rate", delivery_rate, "msg/s");
        r.count("lost (acked, not delivered)", t.lost);
        r.count("duplicates", stats.duplicates.get());
        r.count("out of order", t.reordered);
        r.count("conversations", expect.convs);
        r.count("conversations confirmed by receipt", self.covered.get());
        r.count("messages without delivered receipt", t.unconfirmed);
        let receipts_done = storm.end_ns.saturating_sub(storm.start_ns) as f64 / 1e9;
        r.value("time to receipts complete", receipts_done, "s");
        r.count("receipts received by senders", stats.receipts_in.get());
        r.count("dropped connections", dropped as u64);
        r.tally("ack errors by code", stats.errors());
        r.latency("send → sent ack", stats.ack_latency.total().summary());
        let connect = if args.persistent {
            "storm connect (session resumed)"
        } else {
            "storm connect+subscribe"
        };
        r.latency(connect, storm.setup.summary());
        r.latency("reconnect → backlog done", t.per_user.summary());
        if args.senders >= 2 {
            let probe = t.probe_rtt.summary();
            r.latency("probe send → sent ack during the storm", probe);
        }
        let check_receipts = !args.no_receipt_check;
        r.loss = t.lost + if check_receipts { t.unconfirmed } else { 0 };
        r.duplicates = stats.duplicates.get();
        r.unacked = t.unacked + stats.ack_errors.get();
        r
    }

    fn notes(&self, r: &mut Report, pile: &Pile, storm: &StormTimes, t: &Tally, resumed: u64) {
        let args = self.args;
        if args.senders < 2 {
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
        if !args.no_receipt_check {
            r.notes.push(
                "loss counts messages never delivered plus messages no forwarded delivered receipt confirmed (--no-receipt-check to leave receipts out)".into(),
            );
        }
        if !pile.all_answered {
            r.notes.push(format!(
                "pile-up: {} sends had no ack after {} s",
                t.unacked, args.send_timeout
            ));
        }
        if !storm.drained {
            r.notes
                .push(format!("storm: drain timed out after {} s", args.drain));
        }
    }
}

fn title(args: &OfflineArgs) -> String {
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
    )
}

/// Sender j sends message k to recipient r when (r + k) mod S = j, k-major, so every
/// recipient's backlog grows evenly and comes from several people.
fn pile_plans(users: usize, pending: u64, s: usize) -> Vec<Vec<(u32, u64)>> {
    (0..s)
        .map(|j| {
            (0..pending)
                .flat_map(|k| (0..users).map(move |r| (r, k)))
                .filter(|&(r, k)| (r + k as usize) % s == j)
                .map(|(r, k)| (r as u32, k))
                .collect()
        })
        .collect()
}

/// Sender 0 → sender 1, one DM every 100 ms while the storm runs.
struct Probe {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Probe {
    fn start(o: &Offline<'_>, senders: &[crate::conn::Conn]) -> Option<Probe> {
        if o.args.senders < 2 {
            return None;
        }
        let (client, clock) = (senders[0].client.clone(), o.env.clock);
        let (me, to) = (o.senders[0].clone(), format!("u:{}", o.senders[1]));
        let stop = Arc::new(AtomicBool::new(false));
        let (outbox, stopped) = (o.outboxes[0].clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !stopped.load(Ordering::Acquire) {
                let cid = format!("probe-{n}");
                let due = clock.now_ns();
                outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expect(cid.clone(), due, PROBE_TAG);
                let text = "probe".to_string();
                if chat::send_text(&client, &me, to.clone(), cid, text)
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                clock.sleep_until(due + PROBE_EVERY_NS).await;
            }
        });
        Some(Probe { task, stop })
    }

    /// Stops the probe and waits (up to 2 s) for its last ack.
    async fn stop(self, outbox: &Mutex<Outbox>) {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        wait_for(secs(2.0), || {
            outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unacked()
                == 0
        })
        .await;
    }
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
