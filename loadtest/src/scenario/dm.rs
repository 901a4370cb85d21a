//! `dm`: users in random pairs send each other direct messages on an open-loop timetable.
//!
//! Measured: send → sent ack and send → recipient delivery, both from the time the send was
//! due; loss = acked but never delivered to the recipient; duplicates by message id.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::bail;
use rumqttc::AsyncClient;
use serde_json::json;

use super::{chat_run, random_pairs, Env};
use crate::chat::{self, ChatStats, Outbox};
use crate::cli::DmArgs;
use crate::protocol::InboundKind;
use crate::report::Report;

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
    let (clock, run) = (env.clock, env.run);
    let prefix = chat::user_prefix(&args.auth, run)?;
    let users: Vec<String> = (0..args.users).map(|i| format!("{prefix}u{i}")).collect();
    let peer = random_pairs(args.users, env.common.seed);
    let stats = ChatStats::default();
    let outboxes: Vec<Arc<Mutex<Outbox>>> = (0..args.users).map(|_| Arc::default()).collect();
    let inboxes: Vec<Arc<Mutex<Inbox>>> = (0..args.users).map(|_| Arc::default()).collect();
    let _progress = env.progress.start();
    let receipt_every = args.receipt_every;
    let (conns, setup) = chat_run::connect_users(&env, &args.auth, &users, |i| {
        let (me, inbox, stats2) = (users[i].clone(), inboxes[i].clone(), stats.clone());
        chat_run::handler(
            clock,
            outboxes[i].clone(),
            stats.clone(),
            move |kind, payload, now| {
                if matches!(kind, InboundKind::Msg) {
                    on_message(&me, payload, now, run, receipt_every, &inbox, &stats2);
                }
            },
        )
    })
    .await?;
    for (c, inbox) in conns.iter().zip(&inboxes) {
        inbox.lock().unwrap_or_else(PoisonError::into_inner).client = Some(c.client.clone());
    }

    chat_run::show_sending(&env, &stats);
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
    // Each DM has exactly one recipient.
    let drained = chat_run::drain_and_close(&env, &stats, conns, args.drain, |acked| acked).await;
    drop(_progress);

    let (acked, unacked) = chat_run::outbox_tally(&outboxes);
    let lost = lost(&acked, &inboxes);
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
    r.count("users", args.users as u64);
    chat_run::send_figures(
        &mut r,
        args.rate,
        &phase,
        &stats,
        acked.len() as u64,
        unacked,
    );
    r.count("delivered", stats.delivered.get());
    r.count("lost (acked, not delivered)", lost);
    r.count("stray acks", stats.stray_acks.get());
    r.count("receipts received", stats.receipts_in.get());
    chat_run::end_figures(&mut r, &stats, &setup, &phase, &drained, unacked);
    r.latency("send → delivered", stats.e2e_latency.total().summary());
    r.loss = lost;
    if !drained.drained {
        r.notes.push(format!(
            "drain timed out after {} s: {} unacked, {} acked not delivered",
            args.drain, unacked, lost
        ));
    }
    env.finish(r)
}

/// Acked messages no recipient got.
fn lost(acked: &[u64], inboxes: &[Arc<Mutex<Inbox>>]) -> u64 {
    let mut delivered: HashSet<u64> = HashSet::new();
    for inbox in inboxes {
        delivered.extend(
            inbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .seen
                .iter(),
        );
    }
    acked.iter().filter(|k| !delivered.contains(k)).count() as u64
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
