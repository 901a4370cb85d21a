//! `dm`: users in random pairs send each other direct messages on an open-loop timetable.
//!
//! Measured: send → sent ack and send → recipient delivery, both from the time the send was
//! due; loss = acked but never delivered to the recipient; duplicates by message id.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::bail;
use rumqttc::AsyncClient;
use serde_json::json;

use super::{close_all, open_many, per_s, random_pairs, secs, wait_for, Env};
use crate::chat::{self, ChatStats, Outbox};
use crate::cli::DmArgs;
use crate::conn::Inbound;
use crate::protocol::{classify, InboundKind};
use crate::report::Report;
use crate::stats::Latency;

/// What a user received, and the receipts it owes.
#[derive(Default)]
struct Inbox {
    seen: HashSet<u64>,
    /// Per conversation: highest seq received, messages since the last receipt.
    convs: HashMap<String, (u64, u64)>,
    client: Option<AsyncClient>,
}

pub async fn run(args: DmArgs) -> anyhow::Result<i32> {
    if args.users < 2 || args.users % 2 != 0 {
        bail!("--users must be even and at least 2");
    }
    if args.rate <= 0.0 || args.sending.duration <= 0.0 {
        bail!("--rate and --duration must be positive");
    }
    let env = Env::new(&args.common)?;
    let clock = env.clock;
    let run = env.run;
    let prefix = chat::user_prefix(&args.auth, run)?;
    let users: Vec<String> = (0..args.users).map(|i| format!("{prefix}u{i}")).collect();
    let peer = random_pairs(args.users, env.common.seed);
    let p = &env.progress;
    p.phase("minting tokens");
    let tokens = chat::tokens_for(
        chat::token_source(&args.auth)?,
        &users,
        env.common.connect_concurrency,
    )
    .await?;

    let stats = ChatStats::default();
    let outboxes: Vec<Arc<Mutex<Outbox>>> = (0..args.users).map(|_| Arc::default()).collect();
    let inboxes: Vec<Arc<Mutex<Inbox>>> = (0..args.users).map(|_| Arc::default()).collect();
    let connected = crate::stats::Counter::default();
    p.gauge("connected", &connected);
    let _progress = p.start();
    p.phase("connecting");
    let receipt_every = args.receipt_every;
    let results = open_many(
        args.users,
        env.common.connect_concurrency,
        0.0,
        clock,
        |i| {
            let me = users[i].clone();
            let token = tokens[i].clone();
            let (outbox, inbox, stats) = (outboxes[i].clone(), inboxes[i].clone(), stats.clone());
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
                        InboundKind::Msg => {
                            on_message(&me2, payload, now, run, receipt_every, &inbox, &stats)
                        }
                        InboundKind::Receipt => stats.receipts_in.inc(),
                        _ => {}
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
    let conns = chat::all_connected(results, &users)?;
    let mut setup = Latency::new();
    for (c, inbox) in conns.iter().zip(&inboxes) {
        setup.record_ns(c.setup.as_nanos() as u64);
        inbox.lock().unwrap_or_else(PoisonError::into_inner).client = Some(c.client.clone());
    }

    p.rate("sent", &stats.sent);
    p.rate("acked", &stats.acked);
    p.rate("delivered", &stats.delivered);
    p.latency("ack", &stats.ack_latency);
    p.latency("e2e", &stats.e2e_latency);
    p.phase("sending");
    let senders = (0..args.users)
        .map(|i| chat::SenderSpec {
            client: conns[i].client.clone(),
            me: users[i].clone(),
            to: format!("u:{}", users[peer[i]]),
            outbox: outboxes[i].clone(),
            index: i as u32,
        })
        .collect();
    let phase = chat::send_phase(clock, args.rate, &args.sending, run, &stats.sent, senders).await;
    let (offered, start_ns, send_end_ns) = (phase.offered, phase.start_ns, phase.end_ns);

    p.phase("draining");
    let drained = wait_for(secs(args.drain), || {
        let answered = stats.acked.get() + stats.ack_errors.get();
        answered >= stats.sent.get() && stats.delivered.get() >= stats.acked.get()
    })
    .await;
    let drain_end_ns = clock.now_ns();
    let alive = conns.iter().filter(|c| c.is_alive()).count();
    let dropped = conns.len() - alive;
    close_all(conns).await;
    drop(_progress);

    // Acked but never delivered: each DM has exactly one recipient.
    let mut delivered_ids: HashSet<u64> = HashSet::new();
    for inbox in &inboxes {
        delivered_ids.extend(
            inbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .seen
                .iter(),
        );
    }
    let (mut lost, mut unacked, mut acked) = (0u64, 0u64, 0u64);
    for o in &outboxes {
        let o = o.lock().unwrap_or_else(PoisonError::into_inner);
        unacked += o.unacked();
        acked += o.acked.len() as u64;
        lost += o
            .acked
            .iter()
            .filter(|a| !delivered_ids.contains(&a.key))
            .count() as u64;
    }

    let mut r = Report::new(
        "dm",
        format!(
            "dm, {} users in {} pairs, {} msg/s offered, {} B, {} s",
            args.users,
            args.users / 2,
            args.rate,
            args.sending.size,
            args.sending.duration
        ),
        json!(args),
    );
    let send_span = send_end_ns.saturating_sub(start_ns);
    r.count("users", args.users as u64);
    r.rate("offered rate", args.rate, "msg/s");
    r.count("offered messages", offered);
    r.count("sent", stats.sent.get());
    r.rate(
        "achieved send rate",
        per_s(stats.sent.get(), send_span),
        "msg/s",
    );
    r.count("acked", acked);
    r.rate("acked rate", per_s(acked, send_span), "msg/s");
    r.count("ack errors", stats.ack_errors.get());
    r.count("unacked", unacked);
    r.count("delivered", stats.delivered.get());
    r.count("lost (acked, not delivered)", lost);
    r.count("duplicates", stats.duplicates.get());
    r.count("echoes to sender", stats.echoes.get());
    r.count("stray acks", stats.stray_acks.get());
    r.count("undecodable payloads", stats.undecodable.get());
    r.count("receipts received", stats.receipts_in.get());
    r.count("dropped connections", dropped as u64);
    r.value(
        "drain time",
        drain_end_ns.saturating_sub(send_end_ns) as f64 / 1e9,
        "s",
    );
    r.tally("ack errors by code", stats.errors());
    r.latency("connect+subscribe", setup.summary());
    r.latency("send → sent ack", stats.ack_latency.total().summary());
    r.latency("send → delivered", stats.e2e_latency.total().summary());
    r.loss = lost;
    r.duplicates = stats.duplicates.get();
    r.unacked = unacked + stats.ack_errors.get();
    if !drained {
        r.notes.push(format!(
            "drain timed out after {} s: {} unacked, {} acked not delivered",
            args.drain, unacked, lost
        ));
    }
    env.finish(r)
}

fn on_message(
    me: &str,
    payload: &[u8],
    now: u64,
    run: u32,
    receipt_every: u64,
    inbox: &Mutex<Inbox>,
    stats: &ChatStats,
) {
    let Some(d) = stats.foreign_delivery(me, payload) else {
        return;
    };
    let mut inbox = inbox.lock().unwrap_or_else(PoisonError::into_inner);
    if !stats.first_sight(&mut inbox.seen, &d) {
        return;
    }
    stats.record_latency(&d, now, run);
    if receipt_every > 0 {
        let conv = inbox.convs.entry(d.conv.clone()).or_default();
        conv.0 = conv.0.max(d.seq);
        conv.1 += 1;
        if conv.1 >= receipt_every {
            conv.1 = 0;
            let up_to = conv.0;
            if let Some(c) = &inbox.client {
                chat::spawn_receipt(c, me, &d.conv, up_to);
            }
        }
    }
}
