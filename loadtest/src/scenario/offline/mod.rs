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

mod report;
mod storm;

use storm::{Backlog, StormTimes};

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
