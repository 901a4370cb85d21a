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
use crate::protocol::{self, classify, InboundKind, SentAck, TextStamp};
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

// A scenario reads top to bottom: setup, send, drain, report. It is longer than 80 lines
// because its phases share the run's connections, counters and clock; what scenarios have in
// common lives in `chat` (users, the send phase), `rate::Pace`, `report` and `table`.
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
    let clock = env.clock;
    let run = env.run;
    let mut auth = args.auth.clone();
    if let (None, Some(tag)) = (&auth.user_prefix, &args.tag) {
        auth.user_prefix = Some(format!("lth-{tag}"));
    }
    let prefix = chat::user_prefix(&auth, run)?;
    let senders: Vec<String> = (0..args.senders).map(|j| format!("{prefix}s{j}")).collect();
    let peers: Vec<String> = (0..args.convs).map(|c| format!("{prefix}p{c}")).collect();
    let convs: Vec<String> = (0..args.convs)
        .map(|c| dm_conv(&senders[owner(c, args.senders)], &peers[c]))
        .collect();
    let p = &env.progress;
    p.phase("minting tokens");
    let tokens = chat::tokens_for(
        chat::token_source(&auth)?,
        &senders,
        env.common.connect_concurrency,
    )
    .await?;

    let stats = ChatStats::default();
    let boxes: Vec<Arc<Mutex<FillBox>>> = senders.iter().map(|_| Arc::default()).collect();
    let windows: Vec<Arc<Semaphore>> = senders
        .iter()
        .map(|_| Arc::new(Semaphore::new(args.window.max(1))))
        .collect();
    let waiters: Vec<RpcWaiters> = senders.iter().map(|_| RpcWaiters::default()).collect();
    let connected = Counter::default();
    p.gauge("connected", &connected);
    let _progress = p.start();
    p.phase("connecting");
    let results = open_many(
        senders.len(),
        env.common.connect_concurrency,
        0.0,
        clock,
        |j| {
            let me = senders[j].clone();
            let token = tokens[j].clone();
            let (fill, window, waiters, stats) = (
                boxes[j].clone(),
                windows[j].clone(),
                waiters[j].clone(),
                stats.clone(),
            );
            let target = env.target.clone();
            let connected = connected.clone();
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
        },
    )
    .await;
    let conns = chat::all_connected(results, &senders)?;

    let mut r = Report::new(
        "history",
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
        ),
        json!(args),
    );
    r.text("user prefix", &prefix);

    // Phase 1: fill.
    let mut fill_unacked = 0u64;
    if !args.skip_fill {
        p.rate("sent", &stats.sent);
        p.rate("acked", &stats.acked);
        p.latency("ack", &stats.ack_latency);
        p.phase("filling");
        let fill_start = clock.now_ns();
        let deadline = fill_start + secs(args.fill_timeout).as_nanos() as u64;
        let mut tasks = Vec::new();
        for (j, conn) in conns.iter().enumerate() {
            let plan = fill_plan(args.messages, args.convs, args.senders, j);
            let client = conn.client.clone();
            let me = senders[j].clone();
            let to: Vec<String> = peers.iter().map(|u| format!("u:{u}")).collect();
            let (fill, window, sent) = (boxes[j].clone(), windows[j].clone(), stats.sent.clone());
            let size = args.size;
            tasks.push(tokio::spawn(async move {
                for (n, c) in plan.into_iter().enumerate() {
                    let wait = Duration::from_nanos(deadline.saturating_sub(clock.now_ns()));
                    let Ok(Ok(permit)) = tokio::time::timeout(wait, window.acquire()).await else {
                        break;
                    };
                    permit.forget();
                    let now = clock.now_ns();
                    let cid = format!("{run:08x}-{n}");
                    let text = TextStamp {
                        run,
                        sender: j as u32,
                        n: n as u64,
                        due_ns: now,
                    }
                    .encode(size);
                    fill.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pending
                        .insert(cid.clone(), now);
                    if chat::send_text(&client, &me, to[c as usize].clone(), cid, text)
                        .await
                        .is_err()
                    {
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
        let fill_end = clock.now_ns();
        fill_unacked = boxes
            .iter()
            .map(|b| {
                b.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pending
                    .len() as u64
            })
            .sum();
        let span = fill_end.saturating_sub(fill_start);
        r.count("fill messages asked", args.messages);
        r.count("fill sent", stats.sent.get());
        r.count("fill acked", stats.acked.get());
        r.count("fill ack errors", stats.ack_errors.get());
        r.count("fill unacked", fill_unacked);
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
                fill_unacked
            ));
        }
    }

    // Phase 2: the newest seq of every conversation.
    p.phase("reading conversation heads");
    let timeout = secs(args.rpc_timeout);
    let mut last_seq = vec![0u64; args.convs];
    let mut head_errors = 0u64;
    for (c, conv) in convs.iter().enumerate() {
        let j = owner(c, args.senders);
        let res = waiters[j]
            .call(
                &conns[j].client,
                &senders[j],
                format!("head{c}"),
                "history",
                json!({"conv": conv, "limit": 1}),
                timeout,
            )
            .await;
        match res.ok().as_ref().and_then(page_of) {
            Some((seqs, _)) => last_seq[c] = seqs.last().copied().unwrap_or(0),
            None => head_errors += 1,
        }
    }
    let stored: u64 = last_seq.iter().sum();
    let queryable: Vec<usize> = (0..args.convs).filter(|&c| last_seq[c] > 0).collect();
    r.count("conversations", args.convs as u64);
    r.count("conversations with messages", queryable.len() as u64);
    r.count("messages stored (sum of newest seqs)", stored);
    r.count("head request errors", head_errors);
    if queryable.is_empty() {
        drop(_progress);
        close_all(conns).await;
        r.notes
            .push("no conversation holds messages: nothing to query".into());
        r.unacked = fill_unacked + stats.ack_errors.get() + head_errors + 1;
        return env.finish(r);
    }

    // Phase 3: timed queries.
    let done = Counter::default();
    let failed = Counter::default();
    let bad = Counter::default();
    let latency = SharedLatency::default();
    let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let first_bad: Arc<Mutex<Option<String>>> = Arc::default();
    p.rate("pages", &done);
    p.gauge("failed", &failed);
    p.latency("page", &latency);
    p.phase("querying");
    let mut rng = match env.common.seed {
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
    let shared = Arc::new((
        conns.iter().map(|c| c.client.clone()).collect::<Vec<_>>(),
        senders.clone(),
        waiters.clone(),
        convs.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let mut issued = 0u64;
    clock.sleep_until(q_start).await;
    for (i, (c, before)) in plan.into_iter().enumerate() {
        let Some(due) = pace.due(&clock, i as u64).await else {
            break;
        };
        if clock.now_ns() >= q_end {
            break;
        }
        issued += 1;
        let shared = shared.clone();
        let (done, failed, bad, latency, errors, first_bad) = (
            done.clone(),
            failed.clone(),
            bad.clone(),
            latency.clone(),
            errors.clone(),
            first_bad.clone(),
        );
        let limit = args.limit;
        let fut = async move {
            let (clients, users, waiters, convs) = &*shared;
            let j = owner(c, users.len());
            let res = waiters[j]
                .call(
                    &clients[j],
                    &users[j],
                    format!("q{i}"),
                    "history",
                    json!({"conv": convs[c], "before": before, "limit": limit}),
                    timeout,
                )
                .await;
            let now = clock.now_ns();
            match res {
                Ok(v) => {
                    latency.record_ns(now.saturating_sub(due));
                    done.inc();
                    let verdict = page_of(&v)
                        .ok_or_else(|| "result without messages".to_string())
                        .and_then(|(seqs, more)| check_page(before, limit, &seqs, more));
                    if let Err(e) = verdict {
                        bad.inc();
                        first_bad
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(format!("{}: {e}", convs[c]));
                    }
                }
                Err(e) => {
                    failed.inc();
                    let msg = e.to_string();
                    let key = if msg.contains("no answer") {
                        "timeout".to_string()
                    } else {
                        msg.split_whitespace().nth(1).unwrap_or("error").to_string()
                    };
                    *errors
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(key)
                        .or_default() += 1;
                }
            }
        };
        if matches!(pace, Pace::Table(_)) {
            tasks.spawn(fut);
        } else {
            fut.await;
        }
    }
    while tasks.join_next().await.is_some() {}
    let q_span = clock.now_ns().saturating_sub(q_start);
    let alive = conns.iter().filter(|c| c.is_alive()).count();
    let dropped = (conns.len() - alive) as u64;
    close_all(conns).await;
    drop(_progress);

    r.count("queries asked", args.queries);
    r.count("queries issued", issued);
    r.count("pages answered", done.get());
    r.count("pages failed (error or timeout)", failed.get());
    r.count("pages with wrong content", bad.get());
    r.rate(
        "query rate",
        per_s(done.get() + failed.get(), q_span),
        "pages/s",
    );
    r.count("dropped connections", dropped);
    r.tally(
        "failed pages by error",
        errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    );
    r.latency("history page", latency.total().summary());
    if let Some(e) = first_bad
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        r.notes.push(format!("first wrong page: {e}"));
    }
    if issued < args.queries {
        r.notes.push(format!(
            "query phase hit --duration {} s after {issued} of {} queries",
            args.duration, args.queries
        ));
    }
    r.loss = bad.get();
    r.unacked = fill_unacked + stats.ack_errors.get() + failed.get() + head_errors;
    env.finish(r)
}

fn on_ack(payload: &[u8], now: u64, fill: &Mutex<FillBox>, stats: &ChatStats) {
    let Some(a) = protocol::decode::<SentAck>(payload) else {
        stats.undecodable.inc();
        return;
    };
    let due = fill
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pending
        .remove(&a.cid);
    let Some(due) = due else {
        stats.stray_acks.inc();
        return;
    };
    if let Some(e) = a.error {
        stats.ack_errors.inc();
        stats.error(if e.code.is_empty() {
            "unknown"
        } else {
            &e.code
        });
        return;
    }
    stats.acked.inc();
    stats.ack_latency.record_ns(now.saturating_sub(due));
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
