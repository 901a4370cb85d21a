//! Broker RSS and CPU, sampled from `/proc/PID/status` and `/proc/PID/stat`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

/// One reading of the broker process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// `VmRSS` and `VmHWM` in kB from the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

/// utime + stime in ticks from the text of `/proc/PID/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")" come field 3 (state) onwards; utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn read(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (rss_kb, hwm_kb) = parse_status(&status)?;
    Some(ProcSample {
        rss_kb,
        hwm_kb,
        cpu_ticks: parse_stat(&stat)?,
    })
}

/// Clock ticks per second of `/proc/PID/stat` times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// What the sampler saw over a run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct BrokerSummary {
    pub pid: u32,
    pub samples: u64,
    pub rss_start_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_end_mb: f64,
    /// The kernel's own high-water mark of the process's RSS (whole lifetime).
    pub rss_hwm_mb: f64,
    /// Average CPU over the sampled span, in % of one core.
    pub cpu_avg_pct: f64,
    /// Highest one-second CPU, in % of one core.
    pub cpu_peak_pct: f64,
    pub cpu_seconds: f64,
}

#[derive(Default)]
struct State {
    first: Option<(Instant, ProcSample)>,
    last: Option<(Instant, ProcSample)>,
    peak_rss_kb: u64,
    peak_cpu_pct: f64,
    last_cpu_pct: f64,
    samples: u64,
}

/// Samples a process once a second in the background.
#[derive(Clone)]
pub struct BrokerSampler {
    pid: u32,
    state: Arc<Mutex<State>>,
    task: Arc<JoinHandle<()>>,
}

impl BrokerSampler {
    /// Starts sampling; fails when the process cannot be read.
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        if read(pid).is_none() {
            anyhow::bail!("--broker-pid {pid}: cannot read /proc/{pid}/status and stat");
        }
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(s) = read(pid) else { break };
                Self::add(&st, Instant::now(), s);
            }
        });
        let sampler = BrokerSampler {
            pid,
            state,
            task: Arc::new(task),
        };
        Ok(sampler)
    }

    fn add(st: &Mutex<State>, now: Instant, s: ProcSample) {
        let mut g = st.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((t, prev)) = g.last {
            let dt = now.duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let pct =
                    s.cpu_ticks.saturating_sub(prev.cpu_ticks) as f64 / ticks_per_second() / dt
                        * 100.0;
                g.last_cpu_pct = pct;
                g.peak_cpu_pct = g.peak_cpu_pct.max(pct);
            }
        }
        if g.first.is_none() {
            g.first = Some((now, s));
        }
        g.last = Some((now, s));
        g.peak_rss_kb = g.peak_rss_kb.max(s.rss_kb);
        g.samples += 1;
    }

    /// Takes a reading now (outside the one-second rhythm) and returns the RSS in kB.
    pub fn sample_now(&self) -> Option<u64> {
        let s = read(self.pid)?;
        Self::add(&self.state, Instant::now(), s);
        Some(s.rss_kb)
    }

    /// RSS in MB and CPU % of the latest sample, for the progress line.
    pub fn current(&self) -> Option<(f64, f64)> {
        let g = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        g.last
            .map(|(_, s)| (s.rss_kb as f64 / 1024.0, g.last_cpu_pct))
    }

    /// Takes a last sample, stops sampling and summarises.
    pub fn finish(&self) -> BrokerSummary {
        self.sample_now();
        self.task.abort();
        let g = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mb = |kb: u64| kb as f64 / 1024.0;
        let (Some((t0, s0)), Some((t1, s1))) = (g.first, g.last) else {
            return BrokerSummary {
                pid: self.pid,
                ..Default::default()
            };
        };
        let cpu_seconds = s1.cpu_ticks.saturating_sub(s0.cpu_ticks) as f64 / ticks_per_second();
        let span = t1.duration_since(t0).as_secs_f64();
        BrokerSummary {
            pid: self.pid,
            samples: g.samples,
            rss_start_mb: mb(s0.rss_kb),
            rss_peak_mb: mb(g.peak_rss_kb),
            rss_end_mb: mb(s1.rss_kb),
            rss_hwm_mb: mb(s1.hwm_kb),
            cpu_avg_pct: if span > 0.0 {
                cpu_seconds / span * 100.0
            } else {
                0.0
            },
            cpu_peak_pct: g.peak_cpu_pct,
            cpu_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tchatmq\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t4\n";
        assert_eq!(parse_status(text), Some((10240, 20480)));
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "1234 (we ird) (name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_stat(text), Some(300));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_own_process() {
        let s = read(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kb > 0);
    }
}
