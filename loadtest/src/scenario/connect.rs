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
        let src = chat::token_source(&args.auth)?;
        Some(chat::tokens_for(src, &users, env.common.connect_concurrency).await?)
    };
    let dialer = Dialer {
        target: env.target.clone(),
        login: args
            .username
            .clone()
            .map(|u| (u, args.password.clone().unwrap_or_default())),
        subscribe: args.subscribe,
        prefix,
        users,
        tokens,
        clock,
        connected: Counter::default(),
        failed: Counter::default(),
        last_ok_ns: Counter::default(),
    };
    let mut rss = Rss {
        before: env.broker.as_ref().and_then(|b| b.sample_now()),
        ..Rss::default()
    };
    p.rate("connected", &dialer.connected);
    p.gauge("failed", &dialer.failed);
    let _progress = p.start();
    p.phase("connecting");
    let start_ns = clock.now_ns();
    let concurrency = env.common.connect_concurrency;
    let results = open_many(args.connections, concurrency, args.rate, clock, |i| {
        dialer.dial(i)
    })
    .await;
    let connect_end_ns = clock.now_ns();
    let opened = Opened::sort(results);
    rss.connected = env.broker.as_ref().and_then(|b| b.sample_now());

    let ok = opened.conns.len() as u64;
    let (dropped, close_time) = hold_and_close(&env, args.hold, opened.conns, &mut rss).await;
    drop(_progress);

    let mut r = Report::new("connect", title(&args), json!(args));
    let span = dialer.last_ok_ns.get().max(start_ns) - start_ns;
    r.count("attempted", args.connections as u64);
    r.count("connected", ok);
    r.count("failed", dialer.failed.get());
    if args.rate > 0.0 {
        r.rate("offered rate", args.rate, "conn/s");
    } else {
        r.text("offered rate", "max");
    }
    r.value("connect phase", span as f64 / 1e9, "s");
    r.rate("connections/s", per_s(ok, span), "conn/s");
    r.count("dropped while idle", dropped as u64);
    r.value("disconnect time", close_time.as_secs_f64(), "s");
    let with_failures = connect_end_ns.saturating_sub(start_ns) as f64 / 1e9;
    r.value("connect phase incl. failures", with_failures, "s");
    rss.figures(&mut r, ok);
    r.tally("failures by kind", opened.failures);
    r.latency("connect (CONNACK/SUBACK)", opened.setup.summary());
    r.loss = dialer.failed.get() + dropped as u64;
    r.notes
        .push("loss counts failed connections plus connections dropped while idle".into());
    if let Some(e) = opened.first_failure {
        r.notes.push(format!("first failure: {e}"));
    }
    env.finish(r)
}

/// Holds the connections idle for `hold` s, then closes them: how many had dropped, and how
/// long closing took. Samples the broker's RSS after the hold and after closing.
async fn hold_and_close(
    env: &Env,
    hold: f64,
    conns: Vec<Conn>,
    rss: &mut Rss,
) -> (usize, Duration) {
    env.progress.phase("holding idle");
    tokio::time::sleep(secs(hold)).await;
    rss.idle = env.broker.as_ref().and_then(|b| b.sample_now());
    let dropped = conns.iter().filter(|c| !c.is_alive()).count();
    env.progress.phase("disconnecting");
    let t0 = std::time::Instant::now();
    close_all(conns).await;
    let close_time = t0.elapsed();
    // Give the broker a moment to free the sessions before the last sample.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rss.after = env.broker.as_ref().and_then(|b| b.sample_now());
    (dropped, close_time)
}

fn title(args: &ConnectArgs) -> String {
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
    )
}

/// Opens connection i: a chat user with its JWT and inbox, or (`--raw`) a plain MQTT client
/// with its own topic.
struct Dialer {
    target: crate::conn::Target,
    /// `--username`/`--password` for raw connections.
    login: Option<(String, String)>,
    subscribe: bool,
    prefix: String,
    users: Vec<String>,
    tokens: Option<Vec<String>>,
    clock: crate::rate::Clock,
    connected: Counter,
    failed: Counter,
    /// When the latest connection succeeded (max).
    last_ok_ns: Counter,
}

impl Dialer {
    fn dial(
        &self,
        i: usize,
    ) -> impl std::future::Future<Output = Result<Conn, ConnectFailure>> + Send + 'static {
        let user = self.users[i].clone();
        // Chat: username = user, password = JWT, inbox `chat/u/{me}/in/#`.
        let (login, filter) = match self.tokens.as_ref().map(|t| t[i].clone()) {
            Some(t) => (
                Some((user.clone(), t)),
                crate::protocol::inbox_filter(&user),
            ),
            None => (
                self.login.clone(),
                format!("chatmq-lt/{}/c/{i}/#", self.prefix),
            ),
        };
        let opts = self.target.options(
            i,
            &format!("{user}-lt"),
            login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        );
        let subs = if self.subscribe {
            vec![SubscribeFilter::new(filter, QoS::AtLeastOnce)]
        } else {
            vec![]
        };
        let (target, clock) = (self.target.clone(), self.clock);
        let (connected, failed, last_ok_ns) = (
            self.connected.clone(),
            self.failed.clone(),
            self.last_ok_ns.clone(),
        );
        async move {
            let r = Conn::open(&target, opts, subs, |_| {}).await;
            match &r {
                Ok(_) => {
                    connected.inc();
                    last_ok_ns.max(clock.now_ns());
                }
                Err(_) => failed.inc(),
            }
            r
        }
    }
}

/// The connections that opened, and why the others did not.
struct Opened {
    conns: Vec<Conn>,
    failures: BTreeMap<String, u64>,
    first_failure: Option<ConnectFailure>,
    setup: Latency,
}

impl Opened {
    fn sort(results: Vec<Result<Conn, ConnectFailure>>) -> Opened {
        let mut o = Opened {
            conns: Vec::with_capacity(results.len()),
            failures: BTreeMap::new(),
            first_failure: None,
            setup: Latency::new(),
        };
        for r in results {
            match r {
                Ok(c) => {
                    o.setup.record_ns(c.setup.as_nanos() as u64);
                    o.conns.push(c);
                }
                Err(e) => {
                    *o.failures.entry(e.kind()).or_default() += 1;
                    o.first_failure.get_or_insert(e);
                }
            }
        }
        o
    }
}

/// The broker's RSS (KB) at the four points of the run, with `--broker-pid`.
#[derive(Default)]
struct Rss {
    before: Option<u64>,
    connected: Option<u64>,
    idle: Option<u64>,
    after: Option<u64>,
}

impl Rss {
    fn figures(&self, r: &mut Report, ok: u64) {
        let (Some(before), Some(idle)) = (self.before, self.idle) else {
            return;
        };
        r.value("broker rss before", before as f64 / 1024.0, "MB");
        if let Some(c) = self.connected {
            r.value("broker rss all connected", c as f64 / 1024.0, "MB");
        }
        r.value("broker rss after hold", idle as f64 / 1024.0, "MB");
        if let Some(a) = self.after {
            r.value("broker rss after disconnect", a as f64 / 1024.0, "MB");
        }
        if ok > 0 {
            let per = idle.saturating_sub(before) as f64 / ok as f64;
            r.value("broker rss per idle connection", per, "KB");
        }
    }
}
