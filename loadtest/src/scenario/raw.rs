//! `raw`: plain MQTT publishers and subscribers on the tool's own topics, against any broker.
//!
//! Every payload starts with a [`RawHeader`] (run, publisher, sequence number, due time), so
//! the subscribers measure end-to-end latency and count loss, duplicates and reordering per
//! publisher without trusting the broker's word.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::bail;
use rumqttc::{QoS, SubscribeFilter};
use serde_json::json;

use super::{open_many, per_s, secs, wait_for, Env};
use crate::cli::{RawArgs, RawMode};
use crate::conn::{Conn, ConnEnd, Inbound};
use crate::protocol::{RawHeader, RAW_HEADER};
use crate::rate::{Pace, Timetable};
use crate::report::Report;
use crate::stats::{Counter, Latency, LossTally, Seen, SeqTracker};

/// Who publishes where and who hears whom, for one mode and size.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub publishers: usize,
    pub subscribers: usize,
    prefix: String,
    mode: RawMode,
}

impl Layout {
    pub fn new(mode: RawMode, n: usize, prefix: String) -> Self {
        let (publishers, subscribers) = match mode {
            RawMode::P2p => (n, n),
            RawMode::FanIn => (n, 1),
            RawMode::FanOut => (1, n),
        };
        Layout {
            publishers,
            subscribers,
            prefix,
            mode,
        }
    }

    pub fn topic(&self, publisher: usize) -> String {
        match self.mode {
            RawMode::P2p => format!("{}/p2p/{publisher}", self.prefix),
            RawMode::FanIn => format!("{}/fan-in", self.prefix),
            RawMode::FanOut => format!("{}/fan-out", self.prefix),
        }
    }

    pub fn filter(&self, subscriber: usize) -> String {
        match self.mode {
            RawMode::P2p => self.topic(subscriber),
            _ => self.topic(0),
        }
    }

    /// The publishers a subscriber hears.
    pub fn heard_by(&self, subscriber: usize) -> Vec<usize> {
        match self.mode {
            RawMode::P2p => vec![subscriber],
            RawMode::FanIn => (0..self.publishers).collect(),
            RawMode::FanOut => vec![0],
        }
    }
}

#[derive(Default)]
struct SubState {
    seen: HashMap<u32, SeqTracker>,
    latency: Latency,
    last_ns: u64,
}

pub async fn run(args: RawArgs) -> anyhow::Result<i32> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.sending.duration <= 0.0 {
        bail!("--duration must be positive");
    }
    let env = Env::new(&args.common)?;
    let tag = format!("lt{:08x}", env.run);
    let raw = Raw {
        layout: Layout::new(
            args.mode,
            args.clients,
            format!("{}/{tag}", args.topic_prefix),
        ),
        qos: if args.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        size: args.sending.size.max(RAW_HEADER),
        login: login(&args).await?,
        tag,
        counts: Counts::default(),
        env: &env,
        args: &args,
    };
    let p = &env.progress;
    p.gauge("connected", &raw.counts.connected);
    let _progress = p.start();
    p.phase("connecting");
    // Subscribers first, so nothing published is missed.
    let states: Vec<Arc<Mutex<SubState>>> = (0..raw.layout.subscribers)
        .map(|_| Arc::default())
        .collect();
    let subs = collect_all(raw.open_subscribers(&states).await, "subscriber")?;
    let pubs = collect_all(raw.open_publishers().await, "publisher")?;
    let published = raw.publish(&pubs).await;
    let drained = raw.drain(&published).await;
    let drain_end_ns = env.clock.now_ns();
    let (dropped, first_drop) = raw.close(subs, pubs).await;
    drop(_progress);

    let mut r = raw.report(&states, &published, drain_end_ns, dropped);
    if !drained {
        r.notes.push(format!(
            "drain timed out after {} s with deliveries outstanding",
            args.drain
        ));
    }
    r.notes.extend(first_drop);
    if args.rate <= 0.0 {
        r.notes.push(
            "max rate: latency includes queueing in the client under saturation; use --rate for latency".into(),
        );
    }
    env.finish(r)
}

/// `--username` with `--password`, or with a JWT minted from `--secret`.
async fn login(args: &RawArgs) -> anyhow::Result<Option<(String, String)>> {
    Ok(match (&args.username, &args.password, &args.secret) {
        (Some(u), Some(p), _) => Some((u.clone(), p.clone())),
        (Some(u), None, Some(secret)) => {
            let token = crate::token::TokenSource::hs256(secret, 3600, None, None)
                .token(u)
                .await?;
            Some((u.clone(), token))
        }
        (Some(u), None, None) => Some((u.clone(), String::new())),
        (None, _, _) => None,
    })
}

/// The live counters of a raw run.
#[derive(Clone, Default)]
struct Counts {
    sent: Counter,
    acked: Counter,
    delivered: Counter,
    duplicates: Counter,
    foreign: Counter,
    connected: Counter,
}

/// One raw run: its layout and settings, and the phases that use them.
struct Raw<'a> {
    env: &'a Env,
    args: &'a RawArgs,
    layout: Layout,
    qos: QoS,
    size: usize,
    tag: String,
    login: Option<(String, String)>,
    counts: Counts,
}

/// What the publishers did.
struct Published {
    /// Messages per publisher.
    sent_by: HashMap<u32, u64>,
    start_ns: u64,
    end_ns: u64,
}

impl Published {
    fn total(&self) -> u64 {
        self.sent_by.values().sum()
    }

    /// Messages publisher `p` sent.
    fn by(&self, p: usize) -> u64 {
        self.sent_by.get(&(p as u32)).copied().unwrap_or(0)
    }
}

impl Raw<'_> {
    fn login(&self) -> Option<(&str, &str)> {
        self.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    async fn open_subscribers(
        &self,
        states: &[Arc<Mutex<SubState>>],
    ) -> Vec<Result<Conn, crate::conn::ConnectFailure>> {
        let (env, clock, run) = (self.env, self.env.clock, self.env.run);
        open_many(
            self.layout.subscribers,
            env.common.connect_concurrency,
            0.0,
            clock,
            |i| {
                let (st, c) = (states[i].clone(), self.counts.clone());
                let opts = env
                    .target
                    .options(i, &format!("{}-s{i}", self.tag), self.login());
                let filter = SubscribeFilter::new(self.layout.filter(i), self.qos);
                let target = env.target.clone();
                async move {
                    let connected = c.connected.clone();
                    let handler = move |ev: Inbound<'_>| {
                        if let Inbound::Publish { payload, .. } = ev {
                            on_publish(payload, clock.now_ns(), run, &st, &c);
                        }
                    };
                    let conn = Conn::open(&target, opts, vec![filter], handler).await;
                    if conn.is_ok() {
                        connected.inc();
                    }
                    conn
                }
            },
        )
        .await
    }

    async fn open_publishers(&self) -> Vec<Result<Conn, crate::conn::ConnectFailure>> {
        let env = self.env;
        open_many(
            self.layout.publishers,
            env.common.connect_concurrency,
            0.0,
            env.clock,
            |i| {
                let (acked, connected) = (self.counts.acked.clone(), self.counts.connected.clone());
                let client_id = format!("{}-p{i}", self.tag);
                let opts =
                    env.target
                        .options(self.layout.subscribers + i, &client_id, self.login());
                let target = env.target.clone();
                async move {
                    let handler = move |ev: Inbound<'_>| {
                        if let Inbound::PubAck = ev {
                            acked.inc();
                        }
                    };
                    let c = Conn::open(&target, opts, vec![], handler).await;
                    if c.is_ok() {
                        connected.inc();
                    }
                    c
                }
            },
        )
        .await
    }

    /// Every publisher sends on its own pace (a share of `--rate`, or as fast as it can).
    async fn publish(&self, pubs: &[Conn]) -> Published {
        let (p, c, clock, run) = (
            &self.env.progress,
            &self.counts,
            self.env.clock,
            self.env.run,
        );
        p.rate("sent", &c.sent);
        if self.qos == QoS::AtLeastOnce {
            p.rate("acked", &c.acked);
        }
        p.rate("delivered", &c.delivered);
        p.gauge("dup", &c.duplicates);
        p.phase("publishing");
        let start_ns = clock.now_ns() + 10_000_000;
        let end_ns = start_ns + secs(self.args.sending.duration).as_nanos() as u64;
        let count = self.args.sending.count;
        let tables = (self.args.rate > 0.0)
            .then(|| Timetable::split(start_ns, self.args.rate, pubs.len(), end_ns, count));
        let mut tasks = Vec::new();
        for (i, conn) in pubs.iter().enumerate() {
            let (client, topic, sent) = (conn.client.clone(), self.layout.topic(i), c.sent.clone());
            let pace = Pace::of(
                tables.as_ref().and_then(|t| t.get(i).cloned()),
                end_ns,
                count,
            );
            let (qos, size) = (self.qos, self.size);
            tasks.push(tokio::spawn(async move {
                clock.sleep_until(start_ns).await;
                let mut seq = 0u64;
                while let Some(due) = pace.due(&clock, seq).await {
                    let header = RawHeader {
                        run,
                        publisher: i as u32,
                        seq,
                        sent_ns: due,
                    };
                    let payload = header.encode(size);
                    if client
                        .publish(topic.clone(), qos, false, payload)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent.inc();
                    seq += 1;
                }
                seq
            }));
        }
        let mut sent_by = HashMap::new();
        for (i, t) in tasks.into_iter().enumerate() {
            sent_by.insert(i as u32, t.await.unwrap_or(0));
        }
        Published {
            sent_by,
            start_ns,
            end_ns: clock.now_ns(),
        }
    }

    /// Deliveries each subscriber should get, given what was sent.
    fn expected(&self, published: &Published) -> u64 {
        (0..self.layout.subscribers)
            .map(|s| {
                self.layout
                    .heard_by(s)
                    .iter()
                    .map(|&p| published.by(p))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Waits up to `--drain` s for every expected delivery (and every PUBACK at QoS 1).
    async fn drain(&self, published: &Published) -> bool {
        self.env.progress.phase("draining");
        let (expected, total) = (self.expected(published), published.total());
        let c = &self.counts;
        wait_for(secs(self.args.drain), || {
            c.delivered.get() >= expected && (self.qos == QoS::AtMostOnce || c.acked.get() >= total)
        })
        .await
    }

    /// Closes every connection: how many had dropped, and the first drop's reason.
    async fn close(&self, subs: Vec<Conn>, pubs: Vec<Conn>) -> (u64, Option<String>) {
        let mut dropped = 0u64;
        let mut first_drop = None;
        for (i, c) in subs.into_iter().chain(pubs).enumerate() {
            if let ConnEnd::Dropped(e) = c.close().await {
                dropped += 1;
                let who = if i < self.layout.subscribers {
                    format!("subscriber {i}")
                } else {
                    format!("publisher {}", i - self.layout.subscribers)
                };
                first_drop.get_or_insert(format!("{who} dropped: {e}"));
            }
        }
        (dropped, first_drop)
    }

    fn report(
        &self,
        states: &[Arc<Mutex<SubState>>],
        published: &Published,
        drain_end_ns: u64,
        dropped: u64,
    ) -> Report {
        let (args, c) = (self.args, &self.counts);
        let mut tally = LossTally::default();
        let mut latency = Latency::new();
        let mut last_ns = 0;
        for (s, st) in states.iter().enumerate() {
            let st = st.lock().unwrap_or_else(PoisonError::into_inner);
            let heard: HashMap<u32, u64> = self
                .layout
                .heard_by(s)
                .iter()
                .map(|&p| (p as u32, published.by(p)))
                .collect();
            tally.add_subscriber(&st.seen, &heard);
            latency.merge(&st.latency);
            last_ns = last_ns.max(st.last_ns);
        }
        let mode = match args.mode {
            RawMode::P2p => format!("p2p, {} pairs", args.clients),
            RawMode::FanIn => format!("fan-in, {} → 1", args.clients),
            RawMode::FanOut => format!("fan-out, 1 → {}", args.clients),
        };
        let rate = if args.rate > 0.0 {
            format!("{} msg/s", args.rate)
        } else {
            "max rate".into()
        };
        let title = format!(
            "raw {mode}, qos {}, {} B, {rate}, {} s",
            args.qos, self.size, args.sending.duration
        );
        let mut r = Report::new("raw", title, json!(args));
        r.count("publishers", self.layout.publishers as u64);
        r.count("subscribers", self.layout.subscribers as u64);
        if args.rate > 0.0 {
            r.rate("offered rate", args.rate, "msg/s");
        } else {
            r.text("offered rate", "max");
        }
        let (total, start_ns) = (published.total(), published.start_ns);
        let send_span = published.end_ns.saturating_sub(start_ns);
        r.count("sent", total);
        r.value("send time", send_span as f64 / 1e9, "s");
        r.rate("achieved send rate", per_s(total, send_span), "msg/s");
        if self.qos == QoS::AtLeastOnce {
            r.count("acked", c.acked.get());
            r.unacked = total.saturating_sub(c.acked.get());
        }
        r.count("expected deliveries", tally.expected);
        r.count("delivered", tally.received);
        let delivery_span = last_ns.saturating_sub(start_ns);
        r.rate(
            "delivery rate",
            per_s(tally.received, delivery_span),
            "msg/s",
        );
        r.count("lost", tally.lost);
        r.count("duplicates", tally.duplicates);
        r.count("reordered", tally.reordered);
        r.count("foreign or unexpected", c.foreign.get() + tally.unexpected);
        r.count("dropped connections", dropped);
        let drain_s = drain_end_ns.saturating_sub(published.end_ns) as f64 / 1e9;
        r.value("drain time", drain_s, "s");
        r.latency("end-to-end", latency.summary());
        r.loss = tally.lost;
        r.duplicates = tally.duplicates;
        r
    }
}

/// A subscriber got a publish: ours (this run) counts as delivered or duplicate.
fn on_publish(payload: &[u8], now: u64, run: u32, st: &Mutex<SubState>, c: &Counts) {
    let Some(h) = RawHeader::decode(payload).filter(|h| h.run == run) else {
        c.foreign.inc();
        return;
    };
    let mut s = st.lock().unwrap_or_else(PoisonError::into_inner);
    match s.seen.entry(h.publisher).or_default().record(h.seq) {
        Seen::New => {
            c.delivered.inc();
            s.latency.record_ns(now.saturating_sub(h.sent_ns));
            s.last_ns = s.last_ns.max(now);
        }
        Seen::Duplicate => c.duplicates.inc(),
        Seen::Invalid => c.foreign.inc(),
    }
}

fn collect_all<E: std::fmt::Display>(
    results: Vec<Result<Conn, E>>,
    what: &str,
) -> anyhow::Result<Vec<Conn>> {
    let mut out = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(c) => out.push(c),
            Err(e) => bail!("{what} {i} could not connect: {e}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let l = Layout::new(RawMode::P2p, 3, "t".into());
        assert_eq!((l.publishers, l.subscribers), (3, 3));
        assert_eq!(l.topic(2), "t/p2p/2");
        assert_eq!(l.filter(2), "t/p2p/2");
        assert_eq!(l.heard_by(1), vec![1]);
        let l = Layout::new(RawMode::FanIn, 3, "t".into());
        assert_eq!((l.publishers, l.subscribers), (3, 1));
        assert_eq!(l.topic(2), l.filter(0));
        assert_eq!(l.heard_by(0), vec![0, 1, 2]);
        let l = Layout::new(RawMode::FanOut, 3, "t".into());
        assert_eq!((l.publishers, l.subscribers), (1, 3));
        assert_eq!(l.heard_by(2), vec![0]);
    }
}
