//! The scenarios, and what they share: run setup, opening many connections, finishing.

pub mod connect;
pub mod dm;
pub mod group;
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
        })
    }

    /// Prints the table, writes the JSON, and says how the process should exit.
    pub fn finish(&self, mut report: Report) -> anyhow::Result<i32> {
        report.wall_s = self.started.elapsed().as_secs_f64();
        report.broker = self.broker.as_ref().map(BrokerSampler::finish);
        print!("{}", report.to_table());
        if let Some(path) = &self.common.json {
            report.write_json(path)?;
        }
        if self.common.assert_zero_loss && !report.passed() {
            eprintln!(
                "--assert-zero-loss: {} lost, {} duplicated",
                report.loss, report.duplicates
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
