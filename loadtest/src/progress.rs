//! One line per second on stderr while a scenario runs.

use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::procstat::BrokerSampler;
use crate::stats::{Counter, SharedLatency};

enum Item {
    /// Shown as per-second rate and total.
    Rate(&'static str, Counter),
    /// Shown as its current value.
    Gauge(&'static str, Counter),
    /// p99 of the last second.
    Latency(&'static str, SharedLatency),
}

/// What the progress line shows; items can be added while it runs (scenarios have phases).
#[derive(Clone)]
pub struct Progress {
    items: Arc<Mutex<Vec<Item>>>,
    phase: Arc<Mutex<&'static str>>,
    broker: Option<BrokerSampler>,
    quiet: bool,
}

impl Progress {
    pub fn new(broker: Option<BrokerSampler>, quiet: bool) -> Self {
        Progress {
            items: Arc::default(),
            phase: Arc::new(Mutex::new("")),
            broker,
            quiet,
        }
    }

    pub fn rate(&self, name: &'static str, c: &Counter) {
        self.push(Item::Rate(name, c.clone()));
    }
    pub fn gauge(&self, name: &'static str, c: &Counter) {
        self.push(Item::Gauge(name, c.clone()));
    }
    pub fn latency(&self, name: &'static str, l: &SharedLatency) {
        self.push(Item::Latency(name, l.clone()));
    }
    pub fn phase(&self, p: &'static str) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = p;
        if !self.quiet {
            eprintln!("-- {p}");
        }
    }
    fn push(&self, i: Item) {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(i);
    }

    /// Starts printing; the line stops when the handle is dropped.
    pub fn start(&self) -> ProgressHandle {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut last: Vec<u64> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = me.line(start, &mut last);
                if !me.quiet {
                    eprintln!("{line}");
                }
            }
        });
        ProgressHandle(task)
    }

    fn line(&self, start: Instant, last: &mut Vec<u64>) -> String {
        let items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        last.resize(items.len(), 0);
        let mut s = format!("[{:>6.1}s]", start.elapsed().as_secs_f64());
        let phase = *self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if !phase.is_empty() {
            let _ = write!(s, " {phase}:");
        }
        for (i, item) in items.iter().enumerate() {
            match item {
                Item::Rate(n, c) => {
                    let v = c.get();
                    let _ = write!(s, " {n} {}/s ({v})", v.saturating_sub(last[i]));
                    last[i] = v;
                }
                Item::Gauge(n, c) => {
                    let _ = write!(s, " {n} {}", c.get());
                }
                Item::Latency(n, l) => {
                    let sum = l.take_interval();
                    if sum.count > 0 {
                        let _ = write!(s, " {n} p99 {:.2}ms", sum.p99_ms);
                    }
                }
            }
        }
        if let Some((rss, cpu)) = self.broker.as_ref().and_then(BrokerSampler::current) {
            let _ = write!(s, " | broker {rss:.1}MB {cpu:.0}%");
        }
        s
    }
}

pub struct ProgressHandle(JoinHandle<()>);

impl Drop for ProgressHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}
