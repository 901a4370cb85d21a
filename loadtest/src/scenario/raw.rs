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
    if args.duration <= 0.0 {
        bail!("--duration must be positive");
    }
    let env = Env::new(&args.common)?;
    let clock = env.clock;
    let run = env.run;
    let tag = format!("lt{run:08x}");
    let layout = Layout::new(
        args.mode,
        args.clients,
        format!("{}/{tag}", args.topic_prefix),
    );
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let size = args.size.max(RAW_HEADER);
    let login = match (&args.username, &args.password, &args.secret) {
        (Some(u), Some(p), _) => Some((u.clone(), p.clone())),
        (Some(u), None, Some(secret)) => {
            let token = crate::token::TokenSource::hs256(secret, 3600, None, None)
                .token(u)
                .await?;
            Some((u.clone(), token))
        }
        (Some(u), None, None) => Some((u.clone(), String::new())),
        (None, _, _) => None,
    };

    let sent = Counter::default();
    let acked = Counter::default();
    let delivered = Counter::default();
    let duplicates = Counter::default();
    let foreign = Counter::default();
    let connected = Counter::default();
    let p = &env.progress;
    p.gauge("connected", &connected);
    let _progress = p.start();
    p.phase("connecting");

    // Subscribers first, so nothing published is missed.
    let states: Vec<Arc<Mutex<SubState>>> =
        (0..layout.subscribers).map(|_| Arc::default()).collect();
    let subs = open_many(
        layout.subscribers,
        env.common.connect_concurrency,
        0.0,
        clock,
        |i| {
            let st = states[i].clone();
            let (delivered, duplicates, foreign) =
                (delivered.clone(), duplicates.clone(), foreign.clone());
            let opts = env.target.options(
                i,
                &format!("{tag}-s{i}"),
                login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            );
            let filter = SubscribeFilter::new(layout.filter(i), qos);
            let target = env.target.clone();
            let connected = connected.clone();
            async move {
                let handler = move |ev: Inbound<'_>| {
                    let Inbound::Publish { payload, .. } = ev else {
                        return;
                    };
                    let Some(h) = RawHeader::decode(payload).filter(|h| h.run == run) else {
                        foreign.inc();
                        return;
                    };
                    let now = clock.now_ns();
                    let mut s = st.lock().unwrap_or_else(PoisonError::into_inner);
                    match s.seen.entry(h.publisher).or_default().record(h.seq) {
                        Seen::New => {
                            delivered.inc();
                            s.latency.record_ns(now.saturating_sub(h.sent_ns));
                            s.last_ns = s.last_ns.max(now);
                        }
                        Seen::Duplicate => duplicates.inc(),
                        Seen::Invalid => foreign.inc(),
                    }
                };
                let c = Conn::open(&target, opts, vec![filter], handler).await;
                if c.is_ok() {
                    connected.inc();
                }
                c
            }
        },
    )
    .await;
    let pubs = open_many(
        layout.publishers,
        env.common.connect_concurrency,
        0.0,
        clock,
        |i| {
            let acked = acked.clone();
            let opts = env.target.options(
                layout.subscribers + i,
                &format!("{tag}-p{i}"),
                login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            );
            let target = env.target.clone();
            let connected = connected.clone();
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
    .await;
    let subs = collect_all(subs, "subscriber")?;
    let pubs = collect_all(pubs, "publisher")?;

    // Publish.
    p.rate("sent", &sent);
    if qos == QoS::AtLeastOnce {
        p.rate("acked", &acked);
    }
    p.rate("delivered", &delivered);
    p.gauge("dup", &duplicates);
    p.phase("publishing");
    let start_ns = clock.now_ns() + 10_000_000;
    let end_ns = start_ns + secs(args.duration).as_nanos() as u64;
    let tables = (args.rate > 0.0)
        .then(|| Timetable::split(start_ns, args.rate, layout.publishers, end_ns, args.count));
    let mut tasks = Vec::new();
    for (i, c) in pubs.iter().enumerate() {
        let client = c.client.clone();
        let topic = layout.topic(i);
        let table = tables.as_ref().and_then(|t| t.get(i).cloned());
        let sent = sent.clone();
        let count = args.count;
        let pace = Pace::of(table, end_ns, count);
        tasks.push(tokio::spawn(async move {
            clock.sleep_until(start_ns).await;
            let mut seq = 0u64;
            while let Some(due) = pace.due(&clock, seq).await {
                let payload = RawHeader {
                    run,
                    publisher: i as u32,
                    seq,
                    sent_ns: due,
                }
                .encode(size);
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
    let mut sent_by: HashMap<u32, u64> = HashMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        sent_by.insert(i as u32, t.await.unwrap_or(0));
    }
    let send_end_ns = clock.now_ns();
    let total_sent: u64 = sent_by.values().sum();
    let expected: u64 = (0..layout.subscribers)
        .map(|s| {
            layout
                .heard_by(s)
                .iter()
                .map(|p| sent_by.get(&(*p as u32)).copied().unwrap_or(0))
                .sum::<u64>()
        })
        .sum();

    p.phase("draining");
    let drained = wait_for(secs(args.drain), || {
        delivered.get() >= expected && (qos == QoS::AtMostOnce || acked.get() >= total_sent)
    })
    .await;
    let drain_end_ns = clock.now_ns();

    let mut dropped = 0u64;
    let mut first_drop = None;
    for (i, c) in subs.into_iter().chain(pubs).enumerate() {
        if let ConnEnd::Dropped(e) = c.close().await {
            dropped += 1;
            let who = if i < layout.subscribers {
                format!("subscriber {i}")
            } else {
                format!("publisher {}", i - layout.subscribers)
            };
            first_drop.get_or_insert(format!("{who} dropped: {e}"));
        }
    }

    // Aggregate.
    let mut tally = LossTally::default();
    let mut latency = Latency::new();
    let mut last_ns = 0;
    for (s, st) in states.iter().enumerate() {
        let st = st.lock().unwrap_or_else(PoisonError::into_inner);
        let heard: HashMap<u32, u64> = layout
            .heard_by(s)
            .iter()
            .map(|p| (*p as u32, sent_by.get(&(*p as u32)).copied().unwrap_or(0)))
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
    let mut r = Report::new(
        "raw",
        format!(
            "raw {mode}, qos {}, {size} B, {rate}, {} s",
            args.qos, args.duration
        ),
        json!(args),
    );
    r.count("publishers", layout.publishers as u64);
    r.count("subscribers", layout.subscribers as u64);
    if args.rate > 0.0 {
        r.rate("offered rate", args.rate, "msg/s");
    } else {
        r.text("offered rate", "max");
    }
    let send_span = send_end_ns.saturating_sub(start_ns);
    r.count("sent", total_sent);
    r.value("send time", send_span as f64 / 1e9, "s");
    r.rate("achieved send rate", per_s(total_sent, send_span), "msg/s");
    if qos == QoS::AtLeastOnce {
        r.count("acked", acked.get());
    }
    r.count("expected deliveries", tally.expected);
    r.count("delivered", tally.received);
    r.rate(
        "delivery rate",
        per_s(tally.received, last_ns.saturating_sub(start_ns)),
        "msg/s",
    );
    r.count("lost", tally.lost);
    r.count("duplicates", tally.duplicates);
    r.count("reordered", tally.reordered);
    r.count("foreign or unexpected", foreign.get() + tally.unexpected);
    r.count("dropped connections", dropped);
    r.value(
        "drain time",
        drain_end_ns.saturating_sub(send_end_ns) as f64 / 1e9,
        "s",
    );
    r.latency("end-to-end", latency.summary());
    r.loss = tally.lost;
    r.duplicates = tally.duplicates;
    if qos == QoS::AtLeastOnce {
        r.unacked = total_sent.saturating_sub(acked.get());
    }
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
    drop(_progress);
    env.finish(r)
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
