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
use rumqttc::AsyncClient;
use serde_json::json;
use tokio::task::JoinSet;

use super::{chat_run, open_many, per_s, secs, Env};
use crate::chat::{self, ChatStats, Outbox, RpcWaiters};
use crate::cli::GroupArgs;
use crate::conn::Conn;
use crate::protocol::{self, value_id, InboundKind};
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
    check(&args, online)?;
    let env = Env::new(&args.common)?;
    let (clock, run) = (env.clock, env.run);
    let prefix = chat::user_prefix(&args.auth, run)?;
    let member = |g: usize, k: usize| format!("{prefix}g{g}m{k}");
    // Online users, group-major: online index = g * online + k.
    let users: Vec<String> = (0..args.groups)
        .flat_map(|g| (0..online).map(move |k| (g, k)))
        .map(|(g, k)| member(g, k))
        .collect();
    let stats = ChatStats::default();
    let outboxes: Vec<Arc<Mutex<Outbox>>> = users.iter().map(|_| Arc::default()).collect();
    let members: Vec<Arc<Mutex<Member>>> = users.iter().map(|_| Arc::default()).collect();
    let rpcs: Vec<RpcWaiters> = users.iter().map(|_| RpcWaiters::default()).collect();
    let _progress = env.progress.start();
    let (conns, setup) = chat_run::connect_users(&env, &args.auth, &users, |i| {
        let (me, mem, rpc) = (users[i].clone(), members[i].clone(), rpcs[i].clone());
        let stats2 = stats.clone();
        chat_run::handler(
            clock,
            outboxes[i].clone(),
            stats.clone(),
            move |kind, payload, now| match kind {
                InboundKind::Rpc => rpc.on_response(payload),
                InboundKind::Msg => on_message(&me, payload, now, run, &mem, &stats2),
                _ => {}
            },
        )
    })
    .await?;

    env.progress.phase("creating groups");
    let creators: Vec<Creator> = (0..args.groups)
        .map(|g| Creator {
            client: conns[g * online].client.clone(),
            rpc: rpcs[g * online].clone(),
            me: users[g * online].clone(),
            others: (1..args.members).map(|k| member(g, k)).collect(),
        })
        .collect();
    let (gids, create_latency) = create_groups(&args, run, creators).await?;
    env.progress.phase("subscribing to groups");
    let conns = subscribe_groups(&env, conns, &users, |i| gids[i / online].clone()).await?;

    chat_run::show_sending(&env, &stats);
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
    let recipients = (online - 1) as u64;
    let drained =
        chat_run::drain_and_close(&env, &stats, conns, args.drain, |a| a * recipients).await;
    drop(_progress);

    let outcome = Outcome {
        stats,
        outboxes,
        members,
        setup,
        create_latency,
        phase,
        drained,
        senders: senders.len(),
    };
    env.finish(report(&args, online, outcome))
}

/// What a group run leaves for its report.
struct Outcome {
    stats: ChatStats,
    outboxes: Vec<Arc<Mutex<Outbox>>>,
    members: Vec<Arc<Mutex<Member>>>,
    setup: Latency,
    create_latency: Latency,
    phase: chat::SendPhase,
    drained: chat_run::Drained,
    senders: usize,
}

fn report(args: &GroupArgs, online: usize, o: Outcome) -> Report {
    let recipients = (online - 1) as u64;
    let (acked, unacked) = chat_run::outbox_tally(&o.outboxes);
    let mut received = Vec::new();
    for m in &o.members {
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
    r.count("groups", args.groups as u64);
    r.count("members per group", args.members as u64);
    r.count("online per group", online as u64);
    r.count("senders", o.senders as u64);
    chat_run::send_figures(
        &mut r,
        args.rate,
        &o.phase,
        &o.stats,
        acked.len() as u64,
        unacked,
    );
    r.count("expected deliveries", acked.len() as u64 * recipients);
    r.count("delivered", o.stats.delivered.get());
    r.rate(
        "delivery rate",
        per_s(
            o.stats.delivered.get(),
            o.drained.end_ns.saturating_sub(o.phase.start_ns),
        ),
        "msg/s",
    );
    r.count("messages reaching all online", reach.complete);
    r.count("missing deliveries", reach.missing);
    chat_run::end_figures(&mut r, &o.stats, &o.setup, &o.phase, &o.drained, unacked);
    r.latency("group create+add", o.create_latency.summary());
    r.latency("send → each member", o.stats.e2e_latency.total().summary());
    r.latency("send → all online", reach.reach_all.summary());
    r.loss = reach.missing;
    if !o.drained.drained {
        r.notes.push(format!(
            "drain timed out after {} s with deliveries outstanding",
            args.drain
        ));
    }
    r
}

fn check(args: &GroupArgs, online: usize) -> anyhow::Result<()> {
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
    Ok(())
}

/// The member who creates a group, and the members it adds.
struct Creator {
    client: AsyncClient,
    rpc: RpcWaiters,
    me: String,
    others: Vec<String>,
}

/// Creates the groups (concurrently across groups, in `--add-batch` steps within one);
/// returns their ids and how long each took.
async fn create_groups(
    args: &GroupArgs,
    run: u32,
    creators: Vec<Creator>,
) -> anyhow::Result<(Vec<String>, Latency)> {
    let rpc_timeout = secs(args.rpc_timeout);
    let mut creations = JoinSet::new();
    for (g, c) in creators.into_iter().enumerate() {
        let (batch, name) = (args.add_batch, format!("lt {run:08x} group {g}"));
        creations.spawn(async move {
            let t0 = Instant::now();
            let first = &c.others[..c.others.len().min(batch)];
            let create = json!({"name": name, "members": first});
            let res = (c.rpc)
                .call(
                    &c.client,
                    &c.me,
                    format!("c{g}"),
                    "group.create",
                    create,
                    rpc_timeout,
                )
                .await?;
            let gid = res
                .get("gid")
                .and_then(value_id)
                .context("group.create answered without a gid")?;
            for (b, chunk) in c.others[first.len()..].chunks(batch).enumerate() {
                let add = json!({"gid": gid, "users": chunk});
                (c.rpc)
                    .call(
                        &c.client,
                        &c.me,
                        format!("a{g}.{b}"),
                        "group.add",
                        add,
                        rpc_timeout,
                    )
                    .await?;
            }
            anyhow::Ok((g, gid, t0.elapsed()))
        });
    }
    let mut gids = vec![String::new(); args.groups];
    let mut latency = Latency::new();
    while let Some(r) = creations.join_next().await {
        let (g, gid, took) = r.context("group creation task")??;
        latency.record_ns(took.as_nanos() as u64);
        gids[g] = gid;
    }
    Ok((gids, latency))
}

/// Subscribes connection i to the topics of group `gid_of(i)`; hands the connections back.
async fn subscribe_groups(
    env: &Env,
    conns: Vec<Conn>,
    users: &[String],
    gid_of: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<Conn>> {
    let conns: Vec<Arc<Conn>> = conns.into_iter().map(Arc::new).collect();
    let concurrency = env.common.connect_concurrency;
    let subscribed = open_many(conns.len(), concurrency, 0.0, env.clock, |i| {
        let c = conns[i].clone();
        let filter = protocol::group_filter(&gid_of(i));
        let t = env.target.connect_timeout;
        async move { c.subscribe(vec![filter], t).await }
    })
    .await;
    if let Some((i, e)) = subscribed
        .into_iter()
        .enumerate()
        .find_map(|(i, r)| r.err().map(|e| (i, e)))
    {
        bail!("{} could not subscribe to its group: {e:#}", users[i]);
    }
    // The subscribe tasks are done: each connection has one owner again.
    Ok(conns.into_iter().filter_map(Arc::into_inner).collect())
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
