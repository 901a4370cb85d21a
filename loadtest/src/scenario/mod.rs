//! The scenarios, and what they share: run setup, opening many connections, finishing.

pub mod chat_run;
pub mod connect;
pub mod dm;
pub mod group;
pub mod history;
pub mod offline;
pub mod raw;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::Common;
use crate::conn::Target;
use crate::procstat::BrokerSampler;
use crate::progress::Progress;
use crate::rate::Clock;
use crate::report::Report;

/// What every scenario run starts with.
pub struct Env {
    pub target: Target,
    pub clock: Clock,
    /// Random tag of this run: in topics, user ids and payloads.
    pub run: u32,
    pub common: Common,
    pub broker: Option<BrokerSampler>,
    pub progress: Progress,
    pub started: Instant,
    /// The tool's own CPU ticks at the start: on a shared machine, shows whether the
    /// generator itself was the bottleneck.
    own_cpu_start: Option<u64>,
}

impl Env {
    pub fn new(common: &Common) -> anyhow::Result<Env> {
        Target::check_hosts(&common.host, common.port, common.allow_remote)?;
        raise_fd_limit();
        let target = Target {
            hosts: common.host.clone(),
            port: common.port,
            keep_alive: Duration::from_secs(common.keep_alive.max(1)),
            inflight: common.inflight,
            connect_timeout: Duration::from_secs(common.connect_timeout.max(1)),
            nodelay: !common.no_nodelay,
            queue: 64,
            clean_session: true,
        };
        let broker = common.broker_pid.map(BrokerSampler::start).transpose()?;
        let progress = Progress::new(broker.clone(), common.quiet);
        Ok(Env {
            target,
            clock: Clock::new(),
            run: rand::random::<u32>(),
            common: common.clone(),
            broker,
            progress,
            started: Instant::now(),
            own_cpu_start: crate::procstat::read(std::process::id()).map(|s| s.cpu_ticks),
        })
    }

    /// Prints the table, writes the JSON, and says how the process should exit.
    pub fn finish(&self, mut report: Report) -> anyhow::Result<i32> {
        report.wall_s = self.started.elapsed().as_secs_f64();
        report.broker = self.broker.as_ref().map(BrokerSampler::finish);
        if let (Some(start), Some(end)) = (
            self.own_cpu_start,
            crate::procstat::read(std::process::id()).map(|s| s.cpu_ticks),
        ) {
            let cpu_s = end.saturating_sub(start) as f64 / crate::procstat::ticks_per_second();
            report.value(
                "tool cpu",
                cpu_s / report.wall_s.max(1e-9) * 100.0,
                "% of a core",
            );
        }
        if let Some(me) = crate::procstat::read(std::process::id()) {
            report.value("tool peak rss", me.hwm_kb as f64 / 1024.0, "MB");
        }
        print!("{}", report.to_table());
        if let Some(path) = &self.common.json {
            report.write_json(path)?;
        }
        if self.common.assert_zero_loss && !report.passed() {
            eprintln!(
                "--assert-zero-loss: {} lost, {} duplicated, {} sends unacked or refused",
                report.loss, report.duplicates, report.unacked
            );
            return Ok(1);
        }
        Ok(0)
    }
}

/// Runs `open(i)` for `i in 0..n`, at most `concurrency` at once and, when `rate > 0`, no
/// faster than `rate` starts per second. Results come back in index order.
pub async fn open_many<T, E, F, Fut>(
    n: usize,
    concurrency: usize,
    rate: f64,
    clock: Clock,
    open: F,
) -> Vec<Result<T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = clock.now_ns();
    let mut set = JoinSet::new();
    for i in 0..n {
        if rate > 0.0 {
            clock
                .sleep_until(start + (i as f64 * 1e9 / rate) as u64)
                .await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let fut = open(i);
        set.spawn(async move {
            let r = fut.await;
            drop(permit);
            (i, r)
        });
    }
    let mut out: Vec<Option<Result<T, E>>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        if let Ok((i, r)) = r {
            out[i] = Some(r);
        }
    }
    out.into_iter().flatten().collect()
}

/// Waits until `done()` or the timeout; checks every 10 ms. Returns whether it got done.
pub async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Per-second rate, 0 when the span is empty.
fn per_s(n: u64, span_ns: u64) -> f64 {
    if span_ns == 0 {
        0.0
    } else {
        n as f64 * 1e9 / span_ns as f64
    }
}

/// Many connections per process need many file descriptors: raise the soft limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Disconnects every connection (concurrently); returns how many had dropped on their own.
pub async fn close_all(conns: Vec<crate::conn::Conn>) -> u64 {
    let mut set = JoinSet::new();
    for c in conns {
        set.spawn(c.close());
    }
    let mut dropped = 0;
    while let Some(r) = set.join_next().await {
        if let Ok(crate::conn::ConnEnd::Dropped(_)) = r {
            dropped += 1;
        }
    }
    dropped
}

/// Pairs `0..n` (n even) at random: `peer[i]` is i's partner.
pub fn random_pairs(n: usize, seed: Option<u64>) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = match seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_rng(&mut rand::rng()),
    };
    order.shuffle(&mut rng);
    let mut peer = vec![0; n];
    for pair in order.chunks_exact(2) {
        peer[pair[0]] = pair[1];
        peer[pair[1]] = pair[0];
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_symmetric_and_seeded() {
        let p = random_pairs(10, Some(1));
        for (i, &j) in p.iter().enumerate() {
            assert_ne!(i, j);
            assert_eq!(p[j], i);
        }
        assert_eq!(p, random_pairs(10, Some(1)));
    }

    #[tokio::test]
    async fn open_many_keeps_order_and_limits_concurrency() {
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let out = open_many(20, 3, 0.0, Clock::new(), |i| {
            let (live, peak) = (live.clone(), peak.clone());
            async move {
                let n = live.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<usize, ()>(i)
            }
        })
        .await;
        assert_eq!(out, (0..20).map(Ok).collect::<Vec<_>>());
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    }
}
