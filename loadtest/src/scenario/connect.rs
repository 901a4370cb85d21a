//! `connect`: C connections opened at a target rate and held idle.
//!
//! Measured: connections/s, CONNECT → CONNACK (+ SUBACK) latency, failures by kind,
//! connections dropped while idle and, with `--broker-pid`, the broker's RSS per idle
//! connection ((RSS after the hold − RSS before connecting) / connections).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use rumqttc::{QoS, SubscribeFilter};
use serde_json::json;

use super::{close_all, open_many, per_s, secs, Env};
use crate::chat;
use crate::cli::ConnectArgs;
use crate::conn::{Conn, ConnectFailure};
use crate::report::Report;
use crate::stats::{Counter, Latency};

// A scenario reads top to bottom: setup, send, drain, report. It is longer than 80 lines
// because its phases share the run's connections, counters and clock; what scenarios have in
// common lives in `chat` (users, the send phase), `rate::Pace`, `report` and `table`.
pub async fn run(args: ConnectArgs) -> anyhow::Result<i32> {
    if args.connections == 0 {
        bail!("--connections must be positive");
    }
    let env = Env::new(&args.common)?;
    let clock = env.clock;
    let prefix = chat::user_prefix(&args.auth, env.run)?;
    let users: Vec<String> = (0..args.connections)
        .map(|i| format!("{prefix}c{i}"))
        .collect();
    let p = &env.progress;
    let tokens = if args.raw {
        None
    } else {
        p.phase("minting tokens");
        Some(
            chat::tokens_for(
                chat::token_source(&args.auth)?,
                &users,
                env.common.connect_concurrency,
            )
            .await?,
        )
    };
    let login = args
        .username
        .clone()
        .map(|u| (u, args.password.clone().unwrap_or_default()));

    let rss_before_kb = env.broker.as_ref().and_then(|b| b.sample_now());
    let connected = Counter::default();
    let failed = Counter::default();
    p.rate("connected", &connected);
    p.gauge("failed", &failed);
    let _progress = p.start();
    p.phase("connecting");
    let start_ns = clock.now_ns();
    let last_ok_ns = Counter::default();
    let results = open_many(
        args.connections,
        env.common.connect_concurrency,
        args.rate,
        clock,
        |i| {
            let user = users[i].clone();
            let target = env.target.clone();
            let (connected, failed, last_ok_ns) =
                (connected.clone(), failed.clone(), last_ok_ns.clone());
            let token = tokens.as_ref().map(|t| t[i].clone());
            let login = login.clone();
            let subscribe = args.subscribe;
            let raw_filter = format!("chatmq-lt/{prefix}/c/{i}/#");
            async move {
                // Chat: username = user, password = JWT, inbox `chat/u/{me}/in/#`.
                let (login, filter) = match &token {
                    Some(t) => (
                        Some((user.clone(), t.clone())),
                        crate::protocol::inbox_filter(&user),
                    ),
                    None => (login, raw_filter),
                };
                let opts = target.options(
                    i,
                    &format!("{user}-lt"),
                    login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
                );
                let subs = if subscribe {
                    vec![SubscribeFilter::new(filter, QoS::AtLeastOnce)]
                } else {
                    vec![]
                };
                let r = Conn::open(&target, opts, subs, |_| {}).await;
                match r {
                    Ok(c) => {
                        connected.inc();
                        last_ok_ns.max(clock.now_ns());
                        Ok(c)
                    }
                    Err(e) => {
                        failed.inc();
                        Err(e)
                    }
                }
            }
        },
    )
    .await;
    let connect_end_ns = clock.now_ns();

    let mut conns = Vec::with_capacity(results.len());
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_failure: Option<ConnectFailure> = None;
    let mut setup = Latency::new();
    for r in results {
        match r {
            Ok(c) => {
                setup.record_ns(c.setup.as_nanos() as u64);
                conns.push(c);
            }
            Err(e) => {
                *failures.entry(e.kind()).or_default() += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    let rss_connected_kb = env.broker.as_ref().and_then(|b| b.sample_now());

    p.phase("holding idle");
    tokio::time::sleep(secs(args.hold)).await;
    let rss_idle_kb = env.broker.as_ref().and_then(|b| b.sample_now());
    let alive = conns.iter().filter(|c| c.is_alive()).count();
    let dropped = conns.len() - alive;

    p.phase("disconnecting");
    let t0 = std::time::Instant::now();
    let n_conns = conns.len();
    close_all(conns).await;
    let close_time = t0.elapsed();
    // Give the broker a moment to free the sessions before the last sample.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_kb = env.broker.as_ref().and_then(|b| b.sample_now());
    drop(_progress);

    let ok = n_conns as u64;
    let mut r = Report::new(
        "connect",
        format!(
            "connect, {} {} connections at {}, held {} s{}",
            args.connections,
            if args.raw { "raw" } else { "JWT" },
            if args.rate > 0.0 {
                format!("{} conn/s", args.rate)
            } else {
                "max rate".into()
            },
            args.hold,
            if args.subscribe { ", subscribed" } else { "" }
        ),
        json!(args),
    );
    let span = last_ok_ns.get().max(start_ns) - start_ns;
    r.count("attempted", args.connections as u64);
    r.count("connected", ok);
    r.count("failed", failed.get());
    if args.rate > 0.0 {
        r.rate("offered rate", args.rate, "conn/s");
    } else {
        r.text("offered rate", "max");
    }
    r.value("connect phase", span as f64 / 1e9, "s");
    r.rate("connections/s", per_s(ok, span), "conn/s");
    r.count("dropped while idle", dropped as u64);
    r.value("disconnect time", close_time.as_secs_f64(), "s");
    r.value(
        "connect phase incl. failures",
        connect_end_ns.saturating_sub(start_ns) as f64 / 1e9,
        "s",
    );
    if let (Some(before), Some(idle)) = (rss_before_kb, rss_idle_kb) {
        r.value("broker rss before", before as f64 / 1024.0, "MB");
        if let Some(c) = rss_connected_kb {
            r.value("broker rss all connected", c as f64 / 1024.0, "MB");
        }
        r.value("broker rss after hold", idle as f64 / 1024.0, "MB");
        if let Some(a) = rss_after_kb {
            r.value("broker rss after disconnect", a as f64 / 1024.0, "MB");
        }
        if ok > 0 {
            r.value(
                "broker rss per idle connection",
                idle.saturating_sub(before) as f64 / ok as f64,
                "KB",
            );
        }
    }
    r.tally("failures by kind", failures);
    r.latency("connect (CONNACK/SUBACK)", setup.summary());
    r.loss = failed.get() + dropped as u64;
    r.notes
        .push("loss counts failed connections plus connections dropped while idle".into());
    if let Some(e) = first_failure {
        r.notes.push(format!("first failure: {e}"));
    }
    env.finish(r)
}
