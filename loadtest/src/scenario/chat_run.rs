//! What the chat scenarios (`dm`, `group`) share: connecting the users with their inbound
//! handler, the send phase's progress line, draining, and the figures every chat report has.
//! Each scenario keeps only what differs: who talks to whom, what a delivery means, receipts
//! or group creation.

use std::sync::{Arc, Mutex, PoisonError};

use super::{open_many, per_s, secs, wait_for, Env};
use crate::chat::{self, ChatStats, Outbox, SendPhase};
use crate::cli::ChatAuth;
use crate::conn::{Conn, Inbound};
use crate::protocol::{classify, InboundKind};
use crate::rate::Clock;
use crate::report::Report;
use crate::stats::{Counter, Latency};

/// The inbound handler of one chat user: sent acks go to `outbox`; messages, rpc answers and
/// receipts (counted) go to `on(kind, payload, now)`.
pub fn handler<F>(
    clock: Clock,
    outbox: Arc<Mutex<Outbox>>,
    stats: ChatStats,
    mut on: F,
) -> impl FnMut(Inbound<'_>) + Send + 'static
where
    F: FnMut(InboundKind, &[u8], u64) + Send + 'static,
{
    move |ev: Inbound<'_>| {
        let Inbound::Publish { topic, payload } = ev else {
            return;
        };
        let now = clock.now_ns();
        match classify(topic) {
            InboundKind::Ack => outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .on_ack(payload, now, &stats),
            InboundKind::Receipt => {
                stats.receipts_in.inc();
                on(InboundKind::Receipt, payload, now);
            }
            kind @ (InboundKind::Msg | InboundKind::Rpc) => on(kind, payload, now),
            InboundKind::Other => {}
        }
    }
}

/// Mints the users' tokens and connects each with its inbox subscribed and the handler
/// `make(i)` builds; fails when any connection failed. Returns the connections and their
/// connect+subscribe latency.
pub async fn connect_users<M, H>(
    env: &Env,
    auth: &ChatAuth,
    users: &[String],
    make: M,
) -> anyhow::Result<(Vec<Conn>, Latency)>
where
    M: Fn(usize) -> H,
    H: FnMut(Inbound<'_>) + Send + 'static,
{
    let p = &env.progress;
    p.phase("minting tokens");
    let concurrency = env.common.connect_concurrency;
    let tokens = chat::tokens_for(chat::token_source(auth)?, users, concurrency).await?;
    let connected = Counter::default();
    p.gauge("connected", &connected);
    p.phase("connecting");
    let results = open_many(users.len(), concurrency, 0.0, env.clock, |i| {
        let (me, token) = (users[i].clone(), tokens[i].clone());
        let (target, connected, handler) = (env.target.clone(), connected.clone(), make(i));
        async move {
            let c = chat::open_user(&target, i, &me, &token, &[], handler).await;
            if c.is_ok() {
                connected.inc();
            }
            c
        }
    })
    .await;
    let conns = chat::all_connected(results, users)?;
    let mut setup = Latency::new();
    for c in &conns {
        setup.record_ns(c.setup.as_nanos() as u64);
    }
    Ok((conns, setup))
}

/// The progress line while sending.
pub fn show_sending(env: &Env, stats: &ChatStats) {
    let p = &env.progress;
    p.rate("sent", &stats.sent);
    p.rate("acked", &stats.acked);
    p.rate("delivered", &stats.delivered);
    p.latency("ack", &stats.ack_latency);
    p.latency("e2e", &stats.e2e_latency);
    p.phase("sending");
}

/// How the drain went.
pub struct Drained {
    /// `done` held before the drain time ran out.
    pub drained: bool,
    pub end_ns: u64,
    /// Connections that had dropped by then.
    pub dropped: usize,
}

/// Waits up to `drain` seconds for every send to be answered and `delivered()` to reach
/// `expected(acked)`, then closes every connection.
pub async fn drain_and_close(
    env: &Env,
    stats: &ChatStats,
    conns: Vec<Conn>,
    drain: f64,
    expected: impl Fn(u64) -> u64,
) -> Drained {
    env.progress.phase("draining");
    let drained = wait_for(secs(drain), || {
        let answered = stats.acked.get() + stats.ack_errors.get();
        answered >= stats.sent.get() && stats.delivered.get() >= expected(stats.acked.get())
    })
    .await;
    let end_ns = env.clock.now_ns();
    let dropped = conns.iter().filter(|c| !c.is_alive()).count();
    super::close_all(conns).await;
    Drained {
        drained,
        end_ns,
        dropped,
    }
}

/// What the senders' outboxes hold at the end: acked sends (their message keys) and sends
/// never answered.
pub fn outbox_tally(outboxes: &[Arc<Mutex<Outbox>>]) -> (Vec<u64>, u64) {
    let (mut acked, mut unacked) = (Vec::new(), 0u64);
    for o in outboxes {
        let o = o.lock().unwrap_or_else(PoisonError::into_inner);
        unacked += o.unacked();
        acked.extend(o.acked.iter().map(|a| a.key));
    }
    (acked, unacked)
}

/// The send-phase figures of every chat report.
pub fn send_figures(
    r: &mut Report,
    rate: f64,
    phase: &SendPhase,
    stats: &ChatStats,
    acked: u64,
    unacked: u64,
) {
    let send_span = phase.end_ns.saturating_sub(phase.start_ns);
    r.rate("offered rate", rate, "msg/s");
    r.count("offered messages", phase.offered);
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
}

/// The closing figures of every chat report, and its verdict inputs besides the loss.
pub fn end_figures(
    r: &mut Report,
    stats: &ChatStats,
    setup: &Latency,
    phase: &SendPhase,
    drained: &Drained,
    unacked: u64,
) {
    r.count("duplicates", stats.duplicates.get());
    r.count("echoes to sender", stats.echoes.get());
    r.count("undecodable payloads", stats.undecodable.get());
    r.count("dropped connections", drained.dropped as u64);
    r.value(
        "drain time",
        drained.end_ns.saturating_sub(phase.end_ns) as f64 / 1e9,
        "s",
    );
    r.tally("ack errors by code", stats.errors());
    r.latency("connect+subscribe", setup.summary());
    r.latency("send → sent ack", stats.ack_latency.total().summary());
    r.duplicates = stats.duplicates.get();
    r.unacked = unacked + stats.ack_errors.get();
}
