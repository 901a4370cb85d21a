//! Chat users as the scenarios see them: ids, tokens, inbox connections, sending, acks, rpc.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use tokio::sync::oneshot;

use crate::cli::ChatAuth;
use crate::conn::{Conn, ConnectFailure, Inbound, Target};
use crate::protocol::{self, RpcResponse, SentAck};
use crate::rate::{Clock, Pace, Timetable};
use crate::scenario::open_many;
use crate::stats::{id_key, Counter, SharedLatency};
use crate::token::TokenSource;

/// Where tokens come from, from the flags.
pub fn token_source(auth: &ChatAuth) -> anyhow::Result<TokenSource> {
    match (&auth.secret, &auth.token_cmd) {
        (Some(s), None) => Ok(TokenSource::hs256(
            s,
            auth.token_ttl,
            auth.token_iss.clone(),
            auth.token_aud.clone(),
        )),
        (None, Some(c)) => Ok(TokenSource::Command(c.clone())),
        (Some(_), Some(_)) => bail!("give either --secret or --token-cmd, not both"),
        (None, None) => bail!("chat scenarios need --secret (HS256) or --token-cmd"),
    }
}

/// The prefix of this run's user ids: `--user-prefix`, or `lt` + the run tag.
pub fn user_prefix(auth: &ChatAuth, run: u32) -> anyhow::Result<String> {
    let p = auth
        .user_prefix
        .clone()
        .unwrap_or_else(|| format!("lt{run:08x}"));
    if !p
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        || p.len() > 48
    {
        bail!("--user-prefix must match [A-Za-z0-9_.-] and be at most 48 characters");
    }
    Ok(p)
}

/// Fetches every user's token before anything is measured (a `--token-cmd` is slow).
pub async fn tokens_for(
    src: TokenSource,
    users: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let src = Arc::new(src);
    let results = open_many(users.len(), concurrency, 0.0, Clock::new(), |i| {
        let src = src.clone();
        let user = users[i].clone();
        async move { src.token(&user).await }
    })
    .await;
    results
        .into_iter()
        .zip(users)
        .map(|(r, u)| r.with_context(|| format!("token for {u}")))
        .collect()
}

/// Connects `user` with its token and subscribes to its inbox (plus `extra` filters).
pub async fn open_user<H>(
    target: &Target,
    i: usize,
    user: &str,
    token: &str,
    extra: &[String],
    handler: H,
) -> Result<Conn, ConnectFailure>
where
    H: FnMut(Inbound<'_>) + Send + 'static,
{
    let opts = target.options(i, &format!("{user}-lt"), Some((user, token)));
    let mut subs = vec![SubscribeFilter::new(
        protocol::inbox_filter(user),
        QoS::AtLeastOnce,
    )];
    subs.extend(
        extra
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
    );
    Conn::open(target, opts, subs, handler).await
}

/// Resumes `user`'s persistent session: CONNECT with clean_session = false and no SUBSCRIBE,
/// so whatever arrives comes through the subscriptions the broker kept.
pub async fn resume_user<H>(
    target: &Target,
    i: usize,
    user: &str,
    token: &str,
    handler: H,
) -> Result<Conn, ConnectFailure>
where
    H: FnMut(Inbound<'_>) + Send + 'static,
{
    let target = target.persistent();
    let opts = target.options(i, &format!("{user}-lt"), Some((user, token)));
    Conn::open(&target, opts, Vec::new(), handler).await
}

/// Publishes a text message from `me` to `to` (`u:bob` or `g:team`).
pub async fn send_text(
    client: &AsyncClient,
    me: &str,
    to: String,
    cid: String,
    text: String,
) -> anyhow::Result<()> {
    let payload = protocol::encode(&protocol::Send::text(cid, to, text))?;
    client
        .publish(protocol::send_topic(me), QoS::AtLeastOnce, false, payload)
        .await?;
    Ok(())
}

/// One sender of an open-loop scenario: publishes text messages from `me` to `to` as `pace`
/// says, each stamped with its due time (latency is measured from it) and recorded in
/// `outbox` before it is sent.
pub struct TimedSender {
    pub clock: Clock,
    pub pace: Pace,
    pub client: AsyncClient,
    pub me: String,
    /// `u:{user}` or `g:{gid}`.
    pub to: String,
    pub outbox: Arc<Mutex<Outbox>>,
    pub sent: Counter,
    pub run: u32,
    /// This sender's index in the stamp.
    pub sender: u32,
    /// Text size in bytes.
    pub size: usize,
}

impl TimedSender {
    /// Sends until the timetable ends or a publish fails.
    pub async fn run(self) {
        let mut n = 0u64;
        while let Some(due) = self.pace.due(&self.clock, n).await {
            let cid = format!("{n}");
            let stamp = protocol::TextStamp {
                run: self.run,
                sender: self.sender,
                n,
                due_ns: due,
            };
            let text = stamp.encode(self.size);
            self.outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .expect(cid.clone(), due, 0);
            if send_text(&self.client, &self.me, self.to.clone(), cid, text)
                .await
                .is_err()
            {
                break;
            }
            self.sent.inc();
            n += 1;
        }
    }
}

/// One sender of [`send_phase`]: its client, user, target (`u:{user}` or `g:{gid}`), outbox
/// and index in the stamp.
pub struct SenderSpec {
    pub client: AsyncClient,
    pub me: String,
    pub to: String,
    pub outbox: Arc<Mutex<Outbox>>,
    pub index: u32,
}

/// What a send phase did: sends offered by the timetables, when sending started and ended.
pub struct SendPhase {
    pub offered: u64,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// The send phase of a chat scenario: `rate` msg/s split over `senders`, each an open-loop
/// [`TimedSender`], for `sending.duration` s (at most `sending.count` each); waits for all.
pub async fn send_phase(
    clock: Clock,
    rate: f64,
    sending: &crate::cli::Sending,
    run: u32,
    sent: &Counter,
    senders: Vec<SenderSpec>,
) -> SendPhase {
    let start_ns = clock.now_ns() + 50_000_000;
    let end_ns = start_ns + Duration::from_secs_f64(sending.duration.max(0.0)).as_nanos() as u64;
    let tables = Timetable::split(start_ns, rate, senders.len(), end_ns, sending.count);
    let offered = tables.iter().map(Timetable::len).sum();
    let mut tasks = Vec::with_capacity(senders.len());
    for (s, table) in senders.into_iter().zip(tables) {
        let sender = TimedSender {
            clock,
            pace: Pace::Table(table),
            client: s.client,
            me: s.me,
            to: s.to,
            outbox: s.outbox,
            sent: sent.clone(),
            run,
            sender: s.index,
            size: sending.size,
        };
        tasks.push(tokio::spawn(sender.run()));
    }
    for t in tasks {
        let _ = t.await;
    }
    SendPhase {
        offered,
        start_ns,
        end_ns: clock.now_ns(),
    }
}

/// Publishes a cumulative `delivered` receipt without waiting (receipts are cumulative, so
/// their order does not matter).
pub fn spawn_receipt(client: &AsyncClient, me: &str, conv: &str, up_to: u64) {
    let payload = protocol::encode(&protocol::Receipt {
        conv,
        up_to,
        kind: "delivered",
    });
    let Ok(payload) = payload else { return };
    let client = client.clone();
    let topic = protocol::receipt_topic(me);
    tokio::spawn(async move {
        let _ = client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await;
    });
}

/// Counters and histograms every chat scenario keeps.
#[derive(Clone, Default)]
pub struct ChatStats {
    pub sent: Counter,
    pub acked: Counter,
    pub ack_errors: Counter,
    /// Acks for no send of ours (a repeated ack, or a cid we never sent).
    pub stray_acks: Counter,
    pub delivered: Counter,
    pub duplicates: Counter,
    /// Copies of our own messages (DM echo to the sender's devices, own group messages).
    pub echoes: Counter,
    pub receipts_in: Counter,
    /// Payloads that did not decode, or text without the tool's stamp.
    pub undecodable: Counter,
    pub ack_latency: SharedLatency,
    pub e2e_latency: SharedLatency,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl ChatStats {
    /// Decodes an `in/ack` payload and matches it to its send with `take(cid)`, which gives
    /// back the send's due time and what the caller kept with it. Counts undecodable
    /// payloads, stray acks and error answers, and for a successful ack the ack and its
    /// latency.
    pub fn take_ack<T>(
        &self,
        payload: &[u8],
        now_ns: u64,
        take: impl FnOnce(&str) -> Option<(u64, T)>,
    ) -> Option<(SentAck, u64, T)> {
        let Some(a) = protocol::decode::<SentAck>(payload) else {
            self.undecodable.inc();
            return None;
        };
        let Some((due_ns, kept)) = take(&a.cid) else {
            self.stray_acks.inc();
            return None;
        };
        if let Some(e) = &a.error {
            self.ack_errors.inc();
            self.error(if e.code.is_empty() {
                "unknown"
            } else {
                &e.code
            });
            return None;
        }
        if a.id.is_empty() {
            self.ack_errors.inc();
            self.error("ack_without_id");
            return None;
        }
        self.acked.inc();
        self.ack_latency.record_ns(now_ns.saturating_sub(due_ns));
        Some((a, due_ns, kept))
    }

    /// Decodes a message delivered to `me`; `None` (and counted) when it does not decode or is
    /// `me`'s own echo.
    pub fn foreign_delivery(&self, me: &str, payload: &[u8]) -> Option<protocol::Delivery> {
        let Some(d) = protocol::decode::<protocol::Delivery>(payload) else {
            self.undecodable.inc();
            return None;
        };
        if d.from == me {
            self.echoes.inc();
            return None;
        }
        Some(d)
    }

    /// Counts a delivery as delivered the first time its id is seen, as a duplicate after.
    pub fn first_sight(&self, seen: &mut HashSet<u64>, d: &protocol::Delivery) -> bool {
        if seen.insert(id_key(&d.id)) {
            self.delivered.inc();
            true
        } else {
            self.duplicates.inc();
            false
        }
    }
    /// This run's stamp in a first-seen delivery: records its end-to-end latency (from the
    /// stamp's due time to `now`) and returns it; an unstamped text counts as undecodable.
    pub fn record_latency(&self, d: &protocol::Delivery, now: u64, run: u32) -> Option<u64> {
        match protocol::TextStamp::decode(&d.body.text).filter(|s| s.run == run) {
            Some(s) => {
                let lat = now.saturating_sub(s.due_ns);
                self.e2e_latency.record_ns(lat);
                Some(lat)
            }
            None => {
                self.undecodable.inc();
                None
            }
        }
    }

    pub fn error(&self, code: &str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code.to_string())
            .or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A message of ours the server acknowledged.
#[derive(Clone, Debug, PartialEq)]
pub struct Acked {
    pub key: u64,
    pub conv: String,
    pub seq: u64,
    pub due_ns: u64,
    /// When the ack arrived.
    pub acked_ns: u64,
    /// What the scenario attached at send time (e.g. the recipient's index).
    pub tag: u32,
}

/// One user's sends awaiting their ack, and the acks received.
#[derive(Default)]
pub struct Outbox {
    pending: HashMap<String, (u64, u32)>,
    pub acked: Vec<Acked>,
}

impl Outbox {
    /// Notes a send about to be published: its cid, due time and tag.
    pub fn expect(&mut self, cid: String, due_ns: u64, tag: u32) {
        self.pending.insert(cid, (due_ns, tag));
    }

    pub fn unacked(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Handles an `in/ack` payload.
    pub fn on_ack(&mut self, payload: &[u8], now_ns: u64, stats: &ChatStats) {
        let take = |cid: &str| self.pending.remove(cid);
        let Some((a, due_ns, tag)) = stats.take_ack(payload, now_ns, take) else {
            return;
        };
        self.acked.push(Acked {
            key: id_key(&a.id),
            conv: a.conv,
            seq: a.seq,
            due_ns,
            acked_ns: now_ns,
            tag,
        });
    }
}

/// Requests awaiting their `in/rpc` answer, by rid.
#[derive(Clone, Default)]
pub struct RpcWaiters(Arc<Mutex<HashMap<String, oneshot::Sender<RpcResponse>>>>);

impl RpcWaiters {
    /// Handles an `in/rpc` payload.
    pub fn on_response(&self, payload: &[u8]) {
        let Some(r) = protocol::decode::<RpcResponse>(payload) else {
            return;
        };
        let waiter = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&r.rid);
        if let Some(w) = waiter {
            let _ = w.send(r);
        }
    }

    /// Sends `{rid, op, ...args}` and waits for the result.
    pub async fn call(
        &self,
        client: &AsyncClient,
        me: &str,
        rid: String,
        op: &str,
        args: serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(rid.clone(), tx);
        let payload = protocol::rpc_request(&rid, op, args)?;
        client
            .publish(protocol::rpc_topic(me), QoS::AtLeastOnce, false, payload)
            .await?;
        let r = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => bail!("{op}: connection closed"),
            Err(_) => {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&rid);
                bail!("{op}: no answer within {timeout:?}")
            }
        };
        if !r.ok {
            let e = r.error.unwrap_or_default();
            bail!("{op}: {} {}", e.code, e.message);
        }
        Ok(r.result.unwrap_or(serde_json::Value::Null))
    }
}

/// Fails with the reasons when any connection failed.
pub fn all_connected(
    results: Vec<Result<Conn, ConnectFailure>>,
    users: &[String],
) -> anyhow::Result<Vec<Conn>> {
    let mut ok = Vec::with_capacity(results.len());
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = None;
    for (r, u) in results.into_iter().zip(users) {
        match r {
            Ok(c) => ok.push(c),
            Err(e) => {
                *failed.entry(e.kind()).or_default() += 1;
                first.get_or_insert_with(|| format!("{u}: {e}"));
            }
        }
    }
    if let Some(first) = first {
        bail!("connections failed {failed:?}; first: {first}");
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_matches_acks_by_cid() {
        let stats = ChatStats::default();
        let mut o = Outbox::default();
        o.expect("c1".into(), 1_000, 7);
        o.expect("c2".into(), 2_000, 8);
        let ack = rmp_serde::to_vec_named(&serde_json::json!(
            {"cid": "c1", "id": 99u64, "conv": "d:a:b", "seq": 1, "ts": 5}
        ))
        .expect("encode");
        o.on_ack(&ack, 1_001_000, &stats);
        o.on_ack(&ack, 1_002_000, &stats);
        let err = rmp_serde::to_vec_named(&serde_json::json!(
            {"cid": "c2", "error": {"code": "rate_limited", "message": "x"}}
        ))
        .expect("encode");
        o.on_ack(&err, 3_000, &stats);
        o.on_ack(b"\xc1", 3_000, &stats);
        assert_eq!(stats.acked.get(), 1);
        assert_eq!(stats.stray_acks.get(), 1);
        assert_eq!(stats.ack_errors.get(), 1);
        assert_eq!(stats.undecodable.get(), 1);
        assert_eq!(stats.errors().get("rate_limited"), Some(&1));
        assert_eq!(o.unacked(), 0);
        assert_eq!(
            o.acked,
            vec![Acked {
                key: id_key("99"),
                conv: "d:a:b".into(),
                seq: 1,
                due_ns: 1_000,
                acked_ns: 1_001_000,
                tag: 7
            }]
        );
        assert_eq!(stats.ack_latency.total().count(), 1);
    }

    #[test]
    fn prefixes_are_checked() {
        let mut auth = ChatAuth {
            secret: None,
            token_cmd: None,
            token_ttl: 60,
            token_iss: None,
            token_aud: None,
            user_prefix: None,
        };
        assert_eq!(user_prefix(&auth, 0xab).expect("default"), "lt000000ab");
        auth.user_prefix = Some("bad/prefix".into());
        assert!(user_prefix(&auth, 1).is_err());
        assert!(token_source(&auth).is_err());
        auth.secret = Some("s".into());
        assert!(token_source(&auth).is_ok());
    }
}
