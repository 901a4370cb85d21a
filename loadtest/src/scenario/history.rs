//! `history`: fill C DM conversations with M messages, then time `history` pages at random
//! anchors.
//!
//! Fill: S sender connections (`{prefix}s{j}`) send as fast as their sent acks come back
//! (up to `--window` in flight each) to never-connected peers `{prefix}p{c}`; conversation c
//! belongs to sender `c mod S`, and message i of the fill goes to conversation `i mod C`.
//! With `--tag` the ids are deterministic, so `--skip-fill` can query what an earlier run
//! stored (several fills with the same tag add up: cids carry the run tag).
//!
//! Queries: the newest seq of every conversation is read first (`history` without anchor,
//! limit 1); then K requests `{rid, op: "history", conv, before, limit}` at uniformly random
//! anchors, one at a time or on an open-loop timetable (`--rate`), each answered on
//! `in/rpc`. Measured: page latency (from the due time), failed requests (error or
//! timeout), and pages whose content is wrong (missing or extra seqs, wrong `has_more`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::bail;
use rand::{Rng, SeedableRng};
use rumqttc::{QoS, SubscribeFilter};
use serde_json::json;
use tokio::sync::Semaphore;

use super::{close_all, open_many, per_s, secs, Env};
use crate::chat::{self, ChatStats, RpcWaiters};
use crate::cli::HistoryArgs;
use crate::conn::{Conn, ConnectFailure, Inbound, Target};
use crate::protocol::{classify, InboundKind, TextStamp};
use crate::rate::{Pace, Timetable};
use crate::report::Report;
use crate::stats::{Counter, SharedLatency};

/// Conversation id of a DM, as the server forms it: `d:{a}:{b}` with `a < b`.
pub fn dm_conv(x: &str, y: &str) -> String {
    if x < y {
        format!("d:{x}:{y}")
    } else {
        format!("d:{y}:{x}")
    }
}

/// Sender (index) that owns conversation `c`.
pub fn owner(c: usize, senders: usize) -> usize {
    c % senders.max(1)
}

/// The conversations sender `j` fills, one entry per message, in sending order: message i of
/// the whole fill goes to conversation `i mod convs`.
pub fn fill_plan(messages: u64, convs: usize, senders: usize, j: usize) -> Vec<u32> {
    let convs = convs.max(1) as u64;
    (0..messages)
        .map(|i| i % convs)
        .filter(|&c| owner(c as usize, senders) == j)
        .map(|c| c as u32)
        .collect()
}

/// A random anchor: `before` in `2..=last_seq + 1`, so every page holds at least one message
/// (`last_seq + 1` asks for the newest page).
pub fn pick_anchor(rng: &mut impl Rng, last_seq: u64) -> u64 {
    rng.random_range(2..=last_seq.max(1) + 1)
}

/// What a correct `history before` page holds: seqs `max(1, before - limit) .. before` in
/// ascending order, and `has_more` exactly when seqs below the page exist.
pub fn check_page(before: u64, limit: u64, seqs: &[u64], has_more: bool) -> Result<(), String> {
    let lo = before.saturating_sub(limit).max(1);
    let want: Vec<u64> = (lo..before).collect();
    if seqs != want.as_slice() {
        let got = match (seqs.first(), seqs.last()) {
            (Some(a), Some(b)) => format!("{} seqs {a}..={b}", seqs.len()),
            _ => "no seqs".into(),
        };
        return Err(format!(
            "before {before}: wanted {} seqs {lo}..{before}, got {got}",
            want.len()
        ));
    }
    if has_more != (lo > 1) {
        return Err(format!("before {before}: has_more = {has_more}"));
    }
    Ok(())
}

/// Seqs and `has_more` of a `history` result.
pub fn page_of(result: &serde_json::Value) -> Option<(Vec<u64>, bool)> {
    let msgs = result.get("messages")?.as_array()?;
    let seqs = msgs
        .iter()
        .map(|m| m.get("seq").and_then(serde_json::Value::as_u64))
        .collect::<Option<Vec<u64>>>()?;
    let has_more = result
        .get("has_more")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    Some((seqs, has_more))
}

/// A sender's sends awaiting their sent ack: cid → send time.
#[derive(Default)]
struct FillBox {
    pending: HashMap<String, u64>,
}

/// Connects a sender: acks and rpc answers only (no copies of its own messages).
async fn open_sender<H>(
    target: &Target,
    i: usize,
    user: &str,
    token: &str,
    handler: H,
) -> Result<Conn, ConnectFailure>
where
    H: FnMut(Inbound<'_>) + Send + 'static,
{
    let opts = target.options(i, &format!("{user}-lt"), Some((user, token)));
    let subs = ["ack", "rpc"]
        .iter()
        .map(|k| SubscribeFilter::new(format!("chat/u/{user}/in/{k}"), QoS::AtLeastOnce))
        .collect();
    Conn::open(target, opts, subs, handler).await
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<i32> {
    if args.convs == 0 || args.senders == 0 || args.senders > args.convs {
        bail!("--convs and --senders must be positive, with --senders ≤ --convs");
    }
    if !(1..=100).contains(&args.limit) {
        bail!("--limit must be 1..=100");
    }
    if args.skip_fill && args.tag.is_none() && args.auth.user_prefix.is_none() {
        bail!("--skip-fill needs the --tag (or --user-prefix) of the run that filled");
    }
    let env = Env::new(&args.common)?;
    let mut auth = args.auth.clone();
    if let (None, Some(tag)) = (&auth.user_prefix, &args.tag) {
        auth.user_prefix = Some(format!("lth-{tag}"));
    }
    let prefix = chat::user_prefix(&auth, env.run)?;
    let senders: Vec<String> = (0..args.senders).map(|j| format!("{prefix}s{j}")).collect();
    let peers: Vec<String> = (0..args.convs).map(|c| format!("{prefix}p{c}")).collect();
    let convs: Vec<String> = (0..args.convs)
        .map(|c| dm_conv(&senders[owner(c, args.senders)], &peers[c]))
        .collect();
    env.progress.phase("minting tokens");
    let concurrency = env.common.connect_concurrency;
    let tokens = chat::tokens_for(chat::token_source(&auth)?, &senders, concurrency).await?;
    let h = History {
        env: &env,
        args: &args,
        stats: ChatStats::default(),
        boxes: senders.iter().map(|_| Arc::default()).collect(),
        windows: senders
            .iter()
            .map(|_| Arc::new(Semaphore::new(args.window.max(1))))
            .collect(),
        waiters: senders.iter().map(|_| RpcWaiters::default()).collect(),
        senders,
        peers,
        convs,
    };
    let connected = Counter::default();
    env.progress.gauge("connected", &connected);
    let _progress = env.progress.start();
    let conns = h.connect(&tokens, &connected).await?;
    let mut r = Report::new("history", title(&args), json!(args));
    r.text("user prefix", &prefix);
    let fill_unacked = if args.skip_fill {
        0
    } else {
        h.fill(&conns, &mut r).await
    };
    let (last_seq, head_errors) = h.heads(&conns, &mut r).await;
    let queryable: Vec<usize> = (0..args.convs).filter(|&c| last_seq[c] > 0).collect();
    let pages = if queryable.is_empty() {
        r.notes
            .push("no conversation holds messages: nothing to query".into());
        None
    } else {
        Some(h.query(&conns, &last_seq, &queryable).await)
    };
    let dropped = conns.iter().filter(|c| !c.is_alive()).count() as u64;
    close_all(conns).await;
    drop(_progress);
    let failed = match pages {
        Some(pages) => {
            pages.figures(&mut r);
            r.count("dropped connections", dropped);
            if pages.issued.get() < args.queries {
                r.notes.push(format!(
                    "query phase hit --duration {} s after {} of {} queries",
                    args.duration,
                    pages.issued.get(),
                    args.queries
                ));
            }
            pages.failed.get()
        }
        None => 1,
    };
    r.unacked = fill_unacked + h.stats.ack_errors.get() + failed + head_errors;
    env.finish(r)
}

fn title(args: &HistoryArgs) -> String {
    format!(
        "history, {} messages over {} conversations{}, {} queries{}, limit {}",
        args.messages,
        args.convs,
        if args.skip_fill {
            " (fill skipped)"
        } else {
            ""
        },
        args.queries,
        if args.rate > 0.0 {
            format!(" at {}/s", args.rate)
        } else {
            " one at a time".into()
        },
        args.limit
    )
}

/// One history run: the senders (who own the conversations), the peers, and their state.
struct History<'a> {
    env: &'a Env,
    args: &'a HistoryArgs,
    senders: Vec<String>,
    peers: Vec<String>,
    convs: Vec<String>,
    stats: ChatStats,
    boxes: Vec<Arc<Mutex<FillBox>>>,
    /// Sends in flight per sender (`--window`); a sent ack gives a permit back.
    windows: Vec<Arc<Semaphore>>,
    waiters: Vec<RpcWaiters>,
}

impl History<'_> {
    async fn connect(&self, tokens: &[String], connected: &Counter) -> anyhow::Result<Vec<Conn>> {
        let (env, clock) = (self.env, self.env.clock);
        env.progress.phase("connecting");
        let concurrency = env.common.connect_concurrency;
        let results = open_many(self.senders.len(), concurrency, 0.0, clock, |j| {
            let (me, token) = (self.senders[j].clone(), tokens[j].clone());
            let (fill, window) = (self.boxes[j].clone(), self.windows[j].clone());
            let (waiters, stats) = (self.waiters[j].clone(), self.stats.clone());
            let (target, connected) = (env.target.clone(), connected.clone());
            async move {
                let handler = move |ev: Inbound<'_>| {
                    let Inbound::Publish { topic, payload } = ev else {
                        return;
                    };
                    match classify(topic) {
                        InboundKind::Ack => {
                            on_ack(payload, clock.now_ns(), &fill, &stats);
                            window.add_permits(1);
                        }
                        InboundKind::Rpc => waiters.on_response(payload),
                        _ => {}
                    }
                };
                let c = open_sender(&target, j, &me, &token, handler).await;
                if c.is_ok() {
                    connected.inc();
                }
                c
            }
        })
        .await;
        chat::all_connected(results, &self.senders)
    }

    /// Phase 1: every sender sends its share of the fill as fast as its window allows.
    /// Returns the sends never acked.
    async fn fill(&self, conns: &[Conn], r: &mut Report) -> u64 {
        let (args, stats, clock, run) = (self.args, &self.stats, self.env.clock, self.env.run);
        let p = &self.env.progress;
        p.rate("sent", &stats.sent);
        p.rate("acked", &stats.acked);
        p.latency("ack", &stats.ack_latency);
        p.phase("filling");
        let fill_start = clock.now_ns();
        let deadline = fill_start + secs(args.fill_timeout).as_nanos() as u64;
        let to: Arc<Vec<String>> = Arc::new(self.peers.iter().map(|u| format!("u:{u}")).collect());
        let mut tasks = Vec::new();
        for (j, conn) in conns.iter().enumerate() {
            let plan = fill_plan(args.messages, args.convs, args.senders, j);
            let (client, me, to) = (conn.client.clone(), self.senders[j].clone(), to.clone());
            let (fill, window) = (self.boxes[j].clone(), self.windows[j].clone());
            let (sent, size) = (stats.sent.clone(), args.size);
            tasks.push(tokio::spawn(async move {
                for (n, c) in plan.into_iter().enumerate() {
                    let wait = Duration::from_nanos(deadline.saturating_sub(clock.now_ns()));
                    let Ok(Ok(permit)) = tokio::time::timeout(wait, window.acquire()).await else {
                        break;
                    };
                    permit.forget();
                    let now = clock.now_ns();
                    let cid = format!("{run:08x}-{n}");
                    let stamp = TextStamp {
                        run,
                        sender: j as u32,
                        n: n as u64,
                        due_ns: now,
                    };
                    fill.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pending
                        .insert(cid.clone(), now);
                    let (to, text) = (to[c as usize].clone(), stamp.encode(size));
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
        let all_acked = super::wait_for(
            Duration::from_nanos(deadline.saturating_sub(clock.now_ns())),
            || stats.acked.get() + stats.ack_errors.get() >= stats.sent.get(),
        )
        .await;
        let span = clock.now_ns().saturating_sub(fill_start);
        let unacked = self
            .boxes
            .iter()
            .map(|b| {
                b.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pending
                    .len() as u64
            })
            .sum();
        r.count("fill messages asked", args.messages);
        r.count("fill sent", stats.sent.get());
        r.count("fill acked", stats.acked.get());
        r.count("fill ack errors", stats.ack_errors.get());
        r.count("fill unacked", unacked);
        r.value("fill time", span as f64 / 1e9, "s");
        r.rate("fill rate", per_s(stats.acked.get(), span), "msg/s");
        r.tally("fill ack errors by code", stats.errors());
        r.latency("fill send → sent ack", stats.ack_latency.total().summary());
        if !all_acked || stats.sent.get() < args.messages {
            r.notes.push(format!(
                "fill stopped at the {} s timeout: {} of {} sent, {} unacked",
                args.fill_timeout,
                stats.sent.get(),
                args.messages,
                unacked
            ));
        }
        unacked
    }

    /// Phase 2: the newest seq of every conversation, and how many heads could not be read.
    async fn heads(&self, conns: &[Conn], r: &mut Report) -> (Vec<u64>, u64) {
        self.env.progress.phase("reading conversation heads");
        let timeout = secs(self.args.rpc_timeout);
        let mut last_seq = vec![0u64; self.args.convs];
        let mut errors = 0u64;
        for (c, conv) in self.convs.iter().enumerate() {
            let j = owner(c, self.args.senders);
            let res = self.waiters[j]
                .call(
                    &conns[j].client,
                    &self.senders[j],
                    format!("head{c}"),
                    "history",
                    json!({"conv": conv, "limit": 1}),
                    timeout,
                )
                .await;
            match res.ok().as_ref().and_then(page_of) {
                Some((seqs, _)) => last_seq[c] = seqs.last().copied().unwrap_or(0),
                None => errors += 1,
            }
        }
        let with_messages = last_seq.iter().filter(|&&s| s > 0).count();
        r.count("conversations", self.args.convs as u64);
        r.count("conversations with messages", with_messages as u64);
        r.count(
            "messages stored (sum of newest seqs)",
            last_seq.iter().sum(),
        );
        r.count("head request errors", errors);
        (last_seq, errors)
    }

    /// Phase 3: `--queries` pages at random anchors of the `queryable` conversations, one at
    /// a time or on a timetable (`--rate`), until `--duration` runs out.
    async fn query(&self, conns: &[Conn], last_seq: &[u64], queryable: &[usize]) -> Pages {
        let (args, clock) = (self.args, self.env.clock);
        let pages = Pages::new(args.queries);
        let p = &self.env.progress;
        p.rate("pages", &pages.done);
        p.gauge("failed", &pages.failed);
        p.latency("page", &pages.latency);
        p.phase("querying");
        let mut rng = match self.env.common.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_rng(&mut rand::rng()),
        };
        let plan: Vec<(usize, u64)> = (0..args.queries)
            .map(|_| {
                let c = queryable[rng.random_range(0..queryable.len())];
                (c, pick_anchor(&mut rng, last_seq[c]))
            })
            .collect();
        let q_start = clock.now_ns() + 20_000_000;
        let q_end = q_start + secs(args.duration).as_nanos() as u64;
        let table = (args.rate > 0.0).then(|| Timetable::new(q_start, args.rate, q_end, None));
        let pace = Pace::of(table, q_end, None);
        let asker = Arc::new(Asker {
            clients: conns.iter().map(|c| c.client.clone()).collect(),
            users: self.senders.clone(),
            waiters: self.waiters.clone(),
            convs: self.convs.clone(),
            limit: args.limit,
            timeout: secs(args.rpc_timeout),
            clock,
        });
        let mut tasks = tokio::task::JoinSet::new();
        clock.sleep_until(q_start).await;
        for (i, (c, before)) in plan.into_iter().enumerate() {
            let Some(due) = pace.due(&clock, i as u64).await else {
                break;
            };
            if clock.now_ns() >= q_end {
                break;
            }
            pages.issued.inc();
            let fut = asker.clone().ask(i, c, before, due, pages.clone());
            if matches!(pace, Pace::Table(_)) {
                tasks.spawn(fut);
            } else {
                fut.await;
            }
        }
        while tasks.join_next().await.is_some() {}
        pages.span_ns.add(clock.now_ns().saturating_sub(q_start));
        pages
    }
}

/// What a query needs, shared by every query of the run.
struct Asker {
    clients: Vec<rumqttc::AsyncClient>,
    users: Vec<String>,
    waiters: Vec<RpcWaiters>,
    convs: Vec<String>,
    limit: u64,
    timeout: Duration,
    clock: crate::rate::Clock,
}

impl Asker {
    /// Asks for the page of conversation `c` before `before` and checks it.
    async fn ask(self: Arc<Self>, i: usize, c: usize, before: u64, due: u64, pages: Pages) {
        let j = owner(c, self.users.len());
        let query = json!({"conv": self.convs[c], "before": before, "limit": self.limit});
        let res = self.waiters[j]
            .call(
                &self.clients[j],
                &self.users[j],
                format!("q{i}"),
                "history",
                query,
                self.timeout,
            )
            .await;
        let now = self.clock.now_ns();
        match res {
            Ok(v) => {
                pages.latency.record_ns(now.saturating_sub(due));
                pages.done.inc();
                let verdict = page_of(&v)
                    .ok_or_else(|| "result without messages".to_string())
                    .and_then(|(seqs, more)| check_page(before, self.limit, &seqs, more));
                if let Err(e) = verdict {
                    pages.bad.inc();
                    pages
                        .first_bad
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(format!("{}: {e}", self.convs[c]));
                }
            }
            Err(e) => {
                pages.failed.inc();
                let msg = e.to_string();
                let key = if msg.contains("no answer") {
                    "timeout".to_string()
                } else {
                    msg.split_whitespace().nth(1).unwrap_or("error").to_string()
                };
                *pages
                    .errors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(key)
                    .or_default() += 1;
            }
        }
    }
}

/// The query phase's counters, shared by the queries in flight.
#[derive(Clone)]
struct Pages {
    asked: u64,
    issued: Counter,
    done: Counter,
    failed: Counter,
    bad: Counter,
    span_ns: Counter,
    latency: SharedLatency,
    errors: Arc<Mutex<HashMap<String, u64>>>,
    first_bad: Arc<Mutex<Option<String>>>,
}

impl Pages {
    fn new(asked: u64) -> Pages {
        Pages {
            asked,
            issued: Counter::default(),
            done: Counter::default(),
            failed: Counter::default(),
            bad: Counter::default(),
            span_ns: Counter::default(),
            latency: SharedLatency::default(),
            errors: Arc::default(),
            first_bad: Arc::default(),
        }
    }

    fn figures(&self, r: &mut Report) {
        let issued = self.issued.get();
        r.count("queries asked", self.asked);
        r.count("queries issued", issued);
        r.count("pages answered", self.done.get());
        r.count("pages failed (error or timeout)", self.failed.get());
        r.count("pages with wrong content", self.bad.get());
        let answered = self.done.get() + self.failed.get();
        r.rate("query rate", per_s(answered, self.span_ns.get()), "pages/s");
        let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        r.tally(
            "failed pages by error",
            errors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        );
        r.latency("history page", self.latency.total().summary());
        let first_bad = self
            .first_bad
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = first_bad.as_ref() {
            r.notes.push(format!("first wrong page: {e}"));
        }
        r.loss = self.bad.get();
    }
}

fn on_ack(payload: &[u8], now: u64, fill: &Mutex<FillBox>, stats: &ChatStats) {
    let mut fill = fill.lock().unwrap_or_else(PoisonError::into_inner);
    let take = |cid: &str| fill.pending.remove(cid).map(|due| (due, ()));
    stats.take_ack(payload, now, take);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_ids_order_the_pair() {
        assert_eq!(dm_conv("b", "a"), "d:a:b");
        assert_eq!(dm_conv("lth-xs0", "lth-xp3"), "d:lth-xp3:lth-xs0");
    }

    #[test]
    fn plan_spreads_messages_over_owned_conversations() {
        let (m, c, s) = (1_003u64, 10usize, 3usize);
        let plans: Vec<Vec<u32>> = (0..s).map(|j| fill_plan(m, c, s, j)).collect();
        assert_eq!(plans.iter().map(Vec::len).sum::<usize>() as u64, m);
        let mut per_conv = vec![0u64; c];
        for (j, plan) in plans.iter().enumerate() {
            for &cv in plan {
                assert_eq!(owner(cv as usize, s), j);
                per_conv[cv as usize] += 1;
            }
        }
        // 1,003 over 10: three conversations get one more.
        assert_eq!(
            per_conv,
            vec![101, 101, 101, 100, 100, 100, 100, 100, 100, 100]
        );
        // Round robin: a sender never sends twice in a row to one conversation when it owns more.
        assert_ne!(plans[0][0], plans[0][1]);
    }

    #[test]
    fn anchors_stay_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let a = pick_anchor(&mut rng, 10);
            assert!((2..=11).contains(&a));
        }
        assert_eq!(pick_anchor(&mut rng, 1), 2);
        assert_eq!(pick_anchor(&mut rng, 0), 2);
    }

    #[test]
    fn pages_are_checked() {
        let full: Vec<u64> = (51..101).collect();
        assert!(check_page(101, 50, &full, true).is_ok());
        assert!(check_page(101, 50, &full, false).is_err());
        assert!(check_page(101, 50, &full[1..], true).is_err());
        // Near the start: a short page and nothing more.
        assert!(check_page(4, 50, &[1, 2, 3], false).is_ok());
        assert!(check_page(4, 50, &[1, 2, 3], true).is_err());
        assert!(check_page(51, 50, &(1..51).collect::<Vec<_>>(), false).is_ok());
        assert!(check_page(52, 50, &(2..52).collect::<Vec<_>>(), true).is_ok());
        assert!(check_page(5, 50, &[], false).is_err());
        assert!(check_page(4, 50, &[3, 2, 1], false).is_err());
    }

    #[test]
    fn page_decodes_from_result() {
        let v = json!({"conv": "d:a:b", "messages": [{"seq": 1}, {"seq": 2}], "has_more": true});
        assert_eq!(page_of(&v), Some((vec![1, 2], true)));
        assert_eq!(page_of(&json!({"messages": [{"x": 1}]})), None);
        assert_eq!(page_of(&json!({})), None);
    }
}
