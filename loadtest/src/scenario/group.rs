//! `group`: G groups of M members, O of them online, S senders each; measures how long a
//! message takes to reach every online member.
//!
//! Groups are created through the chat rpc (`group.create`, then `group.add` in batches), so
//! a 50,000-member group never needs one oversized request. Members beyond the online ones
//! exist only as ids: they never connect.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::task::JoinSet;

use super::{open_many, per_s, secs, wait_for, Env};
use crate::chat::{self, ChatStats, Outbox, RpcWaiters};
use crate::cli::GroupArgs;
use crate::conn::{Conn, Inbound};
use crate::protocol::{self, classify, value_id, InboundKind};
use crate::report::Report;
use crate::stats::{id_key, Latency};

#[derive(Default)]
struct Member {
    seen: HashSet<u64>,
    /// (message key, due → received in ns) for every message received.
    got: Vec<(u64, u64)>,
}

/// Per acked message: how many recipients got it, and the slowest one.
#[derive(Debug, Default)]
pub struct Reach {
    pub complete: u64,
    pub missing: u64,
    pub reach_all: Latency,
}

/// Joins what the senders had acked with what every member received.
pub fn reach(acked: &[u64], received: &[(u64, u64)], recipients: u64) -> Reach {
    let mut by_msg: HashMap<u64, (u64, u64)> = HashMap::with_capacity(acked.len());
    for &(key, lat) in received {
        let e = by_msg.entry(key).or_default();
        e.0 += 1;
        e.1 = e.1.max(lat);
    }
    let mut r = Reach::default();
    for key in acked {
        let (n, slowest) = by_msg.get(key).copied().unwrap_or_default();
        r.missing += recipients.saturating_sub(n);
        if n >= recipients {
            r.complete += 1;
            r.reach_all.record_ns(slowest);
        }
    }
    r
}

pub async fn run(args: GroupArgs) -> anyhow::Result<i32> {
    let online = args.online.unwrap_or(args.members);
    if args.groups == 0 || args.members < 2 {
        bail!("need at least 1 group of at least 2 members");
    }
    if online < 2 || online > args.members {
        bail!("--online must be between 2 and --members");
    }
    if args.senders == 0 || args.senders > online {
        bail!("--senders must be between 1 and --online");
    }
    if args.rate <= 0.0 || args.sending.duration <= 0.0 || args.add_batch == 0 {
        bail!("--rate, --duration and --add-batch must be positive");
    }
    let env = Env::new(&args.common)?;
    let clock = env.clock;
    let run = env.run;
    let prefix = chat::user_prefix(&args.auth, run)?;
    let member = |g: usize, k: usize| format!("{prefix}g{g}m{k}");
    // Online users, group-major: online index = g * online + k.
    let users: Vec<String> = (0..args.groups)
        .flat_map(|g| (0..online).map(move |k| (g, k)))
        .map(|(g, k)| member(g, k))
        .collect();
    let p = &env.progress;
    p.phase("minting tokens");
    let tokens = chat::tokens_for(
        chat::token_source(&args.auth)?,
        &users,
        env.common.connect_concurrency,
    )
    .await?;

    let stats = ChatStats::default();
    let outboxes: Vec<Arc<Mutex<Outbox>>> = users.iter().map(|_| Arc::default()).collect();
    let members: Vec<Arc<Mutex<Member>>> = users.iter().map(|_| Arc::default()).collect();
    let rpcs: Vec<RpcWaiters> = users.iter().map(|_| RpcWaiters::default()).collect();
    let connected = crate::stats::Counter::default();
    p.gauge("connected", &connected);
    let _progress = p.start();
    p.phase("connecting");
    let results = open_many(
        users.len(),
        env.common.connect_concurrency,
        0.0,
        clock,
        |i| {
            let me = users[i].clone();
            let token = tokens[i].clone();
            let (outbox, mem, rpc, stats) = (
                outboxes[i].clone(),
                members[i].clone(),
                rpcs[i].clone(),
                stats.clone(),
            );
            let target = env.target.clone();
            let connected = connected.clone();
            async move {
                let me2 = me.clone();
                let handler = move |ev: Inbound<'_>| {
                    let Inbound::Publish { topic, payload } = ev else {
                        return;
                    };
                    let now = clock.now_ns();
                    match classify(topic) {
                        InboundKind::Ack => outbox
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .on_ack(payload, now, &stats),
                        InboundKind::Rpc => rpc.on_response(payload),
                        InboundKind::Msg => on_message(&me2, payload, now, run, &mem, &stats),
                        InboundKind::Receipt => stats.receipts_in.inc(),
                        InboundKind::Other => {}
                    }
                };
                let c = chat::open_user(&target, i, &me, &token, &[], handler).await;
                if c.is_ok() {
                    connected.inc();
                }
                c
            }
        },
    )
    .await;
    let conns: Vec<Arc<Conn>> = chat::all_connected(results, &users)?
        .into_iter()
        .map(Arc::new)
        .collect();
    let mut setup = Latency::new();
    for c in &conns {
        setup.record_ns(c.setup.as_nanos() as u64);
    }

    // Create the groups (concurrently across groups, in order within one).
    p.phase("creating groups");
    let rpc_timeout = secs(args.rpc_timeout);
    let mut creations = JoinSet::new();
    let mut create_latency = Latency::new();
    for g in 0..args.groups {
        let creator = g * online;
        let client = conns[creator].client.clone();
        let rpc = rpcs[creator].clone();
        let me = users[creator].clone();
        let others: Vec<String> = (1..args.members).map(|k| member(g, k)).collect();
        let (batch, name) = (args.add_batch, format!("lt {run:08x} group {g}"));
        creations.spawn(async move {
            let t0 = Instant::now();
            let first = &others[..others.len().min(batch)];
            let res = rpc
                .call(
                    &client,
                    &me,
                    format!("c{g}"),
                    "group.create",
                    json!({"name": name, "members": first}),
                    rpc_timeout,
                )
                .await?;
            let gid = res
                .get("gid")
                .and_then(value_id)
                .context("group.create answered without a gid")?;
            for (b, chunk) in others[first.len()..].chunks(batch).enumerate() {
                rpc.call(
                    &client,
                    &me,
                    format!("a{g}.{b}"),
                    "group.add",
                    json!({"gid": gid, "users": chunk}),
                    rpc_timeout,
                )
                .await?;
            }
            anyhow::Ok((g, gid, t0.elapsed()))
        });
    }
    let mut gids = vec![String::new(); args.groups];
    while let Some(r) = creations.join_next().await {
        let (g, gid, took) = r.context("group creation task")??;
        create_latency.record_ns(took.as_nanos() as u64);
        gids[g] = gid;
    }

    p.phase("subscribing to groups");
    let subscribed = open_many(
        users.len(),
        env.common.connect_concurrency,
        0.0,
        clock,
        |i| {
            let c = conns[i].clone();
            let filter = protocol::group_filter(&gids[i / online]);
            let t = env.target.connect_timeout;
            async move { c.subscribe(vec![filter], t).await }
        },
    )
    .await;
    if let Some((i, e)) = subscribed
        .into_iter()
        .enumerate()
        .find_map(|(i, r)| r.err().map(|e| (i, e)))
    {
        bail!("{} could not subscribe to its group: {e:#}", users[i]);
    }

    p.rate("sent", &stats.sent);
    p.rate("acked", &stats.acked);
    p.rate("delivered", &stats.delivered);
    p.latency("e2e", &stats.e2e_latency);
    p.phase("sending");
    let senders: Vec<usize> = (0..args.groups)
        .flat_map(|g| (0..args.senders).map(move |k| g * online + k))
        .collect();
    let specs = senders
        .iter()
        .map(|&i| chat::SenderSpec {
            client: conns[i].client.clone(),
            me: users[i].clone(),
            to: format!("g:{}", gids[i / online]),
            outbox: outboxes[i].clone(),
            index: i as u32,
        })
        .collect();
    let phase = chat::send_phase(clock, args.rate, &args.sending, run, &stats.sent, specs).await;
    let (offered, start_ns, send_end_ns) = (phase.offered, phase.start_ns, phase.end_ns);

    p.phase("draining");
    let recipients = (online - 1) as u64;
    let drained = wait_for(secs(args.drain), || {
        let answered = stats.acked.get() + stats.ack_errors.get();
        answered >= stats.sent.get() && stats.delivered.get() >= stats.acked.get() * recipients
    })
    .await;
    let drain_end_ns = clock.now_ns();
    let alive = conns.iter().filter(|c| c.is_alive()).count();
    let dropped = conns.len() - alive;
    let owned: Vec<Conn> = conns.into_iter().filter_map(Arc::into_inner).collect();
    super::close_all(owned).await;
    drop(_progress);

    let (mut acked, mut unacked) = (Vec::new(), 0u64);
    for o in &outboxes {
        let o = o.lock().unwrap_or_else(PoisonError::into_inner);
        unacked += o.unacked();
        acked.extend(o.acked.iter().map(|a| a.key));
    }
    let mut received = Vec::new();
    for m in &members {
        received.extend_from_slice(&m.lock().unwrap_or_else(PoisonError::into_inner).got);
    }
    let reach = reach(&acked, &received, recipients);

    let mut r = Report::new(
        "group",
        format!(
            "group, {} × {} members ({} online, {} senders each), {} msg/s offered, {} s",
            args.groups, args.members, online, args.senders, args.rate, args.sending.duration
        ),
        json!(args),
    );
    let send_span = send_end_ns.saturating_sub(start_ns);
    r.count("groups", args.groups as u64);
    r.count("members per group", args.members as u64);
    r.count("online per group", online as u64);
    r.count("senders", senders.len() as u64);
    r.rate("offered rate", args.rate, "msg/s");
    r.count("offered messages", offered);
    r.count("sent", stats.sent.get());
    r.rate(
        "achieved send rate",
        per_s(stats.sent.get(), send_span),
        "msg/s",
    );
    r.count("acked", acked.len() as u64);
    r.count("ack errors", stats.ack_errors.get());
    r.count("unacked", unacked);
    r.count("expected deliveries", acked.len() as u64 * recipients);
    r.count("delivered", stats.delivered.get());
    r.rate(
        "delivery rate",
        per_s(stats.delivered.get(), drain_end_ns.saturating_sub(start_ns)),
        "msg/s",
    );
    r.count("messages reaching all online", reach.complete);
    r.count("missing deliveries", reach.missing);
    r.count("duplicates", stats.duplicates.get());
    r.count("own messages echoed", stats.echoes.get());
    r.count("undecodable payloads", stats.undecodable.get());
    r.count("dropped connections", dropped as u64);
    r.value(
        "drain time",
        drain_end_ns.saturating_sub(send_end_ns) as f64 / 1e9,
        "s",
    );
    r.tally("ack errors by code", stats.errors());
    r.latency("connect+subscribe", setup.summary());
    r.latency("group create+add", create_latency.summary());
    r.latency("send → sent ack", stats.ack_latency.total().summary());
    r.latency("send → each member", stats.e2e_latency.total().summary());
    r.latency("send → all online", reach.reach_all.summary());
    r.loss = reach.missing;
    r.duplicates = stats.duplicates.get();
    r.unacked = unacked + stats.ack_errors.get();
    if !drained {
        r.notes.push(format!(
            "drain timed out after {} s with deliveries outstanding",
            args.drain
        ));
    }
    env.finish(r)
}

fn on_message(
    me: &str,
    payload: &[u8],
    now: u64,
    run: u32,
    member: &Mutex<Member>,
    stats: &ChatStats,
) {
    let Some(d) = stats.foreign_delivery(me, payload) else {
        return;
    };
    let mut m = member.lock().unwrap_or_else(PoisonError::into_inner);
    if !stats.first_sight(&mut m.seen, &d) {
        return;
    }
    if let Some(lat) = stats.record_latency(&d, now, run) {
        m.got.push((id_key(&d.id), lat));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_counts_complete_and_missing() {
        // Message 1 reached all 3, message 2 reached 2 of 3, message 3 nobody.
        let received = vec![
            (1, 5_000_000),
            (1, 9_000_000),
            (1, 7_000_000),
            (2, 1),
            (2, 1),
        ];
        let r = reach(&[1, 2, 3], &received, 3);
        assert_eq!(r.complete, 1);
        assert_eq!(r.missing, 1 + 3);
        let s = r.reach_all.summary();
        assert_eq!(s.count, 1);
        assert!((s.max_ms - 9.0).abs() < 0.01);
    }
}
