//! The end of a run: a human table on stdout and every figure as JSON.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use crate::procstat::BrokerSummary;
use crate::stats::LatencySummary;
use crate::table::Table;

/// Every figure of one scenario run.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    /// One line saying what ran, e.g. `raw p2p, qos 1, 10 pairs, 64 B, max rate, 10 s`.
    pub title: String,
    pub params: Value,
    pub wall_s: f64,
    figures: Vec<(String, Value, &'static str)>,
    latencies: Vec<(String, LatencySummary)>,
    tallies: Vec<(String, BTreeMap<String, u64>)>,
    pub broker: Option<BrokerSummary>,
    pub loss: u64,
    pub duplicates: u64,
    /// Sends the broker never acknowledged, or refused with an error.
    pub unacked: u64,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, title: String, params: Value) -> Self {
        Report {
            scenario: scenario.to_string(),
            title,
            params,
            ..Default::default()
        }
    }

    pub fn count(&mut self, name: &str, v: u64) {
        self.figures.push((name.into(), json!(v), ""));
    }

    pub fn rate(&mut self, name: &str, v: f64, unit: &'static str) {
        self.figures.push((name.into(), json!(round(v, 1)), unit));
    }

    pub fn value(&mut self, name: &str, v: f64, unit: &'static str) {
        self.figures.push((name.into(), json!(round(v, 3)), unit));
    }

    pub fn text(&mut self, name: &str, v: &str) {
        self.figures.push((name.into(), json!(v), ""));
    }

    pub fn latency(&mut self, name: &str, s: LatencySummary) {
        self.latencies.push((name.into(), s));
    }

    /// Named counts by kind, e.g. send errors by code; skipped when empty.
    pub fn tally(&mut self, name: &str, t: BTreeMap<String, u64>) {
        if !t.is_empty() {
            self.tallies.push((name.into(), t));
        }
    }

    pub fn figure(&self, name: &str) -> Option<&Value> {
        self.figures.iter().find(|f| f.0 == name).map(|f| &f.1)
    }

    pub fn passed(&self) -> bool {
        self.loss == 0 && self.duplicates == 0 && self.unacked == 0
    }

    pub fn to_json(&self) -> Value {
        let figures: serde_json::Map<String, Value> = self
            .figures
            .iter()
            .map(|(n, v, _)| (n.clone(), v.clone()))
            .collect();
        let units: serde_json::Map<String, Value> = self
            .figures
            .iter()
            .filter(|f| !f.2.is_empty())
            .map(|(n, _, u)| (n.clone(), json!(u)))
            .collect();
        let latencies: serde_json::Map<String, Value> = self
            .latencies
            .iter()
            .map(|(n, s)| (n.clone(), json!(s)))
            .collect();
        let tallies: serde_json::Map<String, Value> = self
            .tallies
            .iter()
            .map(|(n, t)| (n.clone(), json!(t)))
            .collect();
        json!({
            "tool": "chatmq-loadtest",
            "version": env!("CARGO_PKG_VERSION"),
            "scenario": self.scenario,
            "title": self.title,
            "params": self.params,
            "wall_s": round(self.wall_s, 3),
            "figures": figures,
            "units": units,
            "latency_ms": latencies,
            "tallies": tallies,
            "broker": self.broker,
            "loss": self.loss,
            "duplicates": self.duplicates,
            "unacked": self.unacked,
            "zero_loss": self.passed(),
            "notes": self.notes,
        })
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(&mut out, format!("== chatmq-loadtest {} ==", self.title));
        line(
            &mut out,
            format!("  {:<38} {:>14} s", "wall time", fmt_f(self.wall_s, 2)),
        );
        for (name, v, unit) in &self.figures {
            let v = match v {
                Value::Number(n) if n.is_u64() => fmt_u(n.as_u64().unwrap_or(0)),
                Value::Number(n) => fmt_f(
                    n.as_f64().unwrap_or(0.0),
                    if unit.is_empty() { 3 } else { 1 },
                ),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            line(&mut out, format!("  {name:<38} {v:>14} {unit}"));
        }
        for (name, t) in &self.tallies {
            let parts: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
            line(&mut out, format!("  {name:<38} {}", parts.join(" ")));
        }
        if !self.latencies.is_empty() {
            let mut t = Table::numeric(
                "latency (ms)",
                &["count", "p50", "p90", "p99", "p99.9", "max"],
            );
            for (name, s) in &self.latencies {
                t.row([
                    name.clone(),
                    fmt_u(s.count),
                    fmt_ms(s.p50_ms),
                    fmt_ms(s.p90_ms),
                    fmt_ms(s.p99_ms),
                    fmt_ms(s.p999_ms),
                    fmt_ms(s.max_ms),
                ]);
            }
            out.push_str(&t.text(2, &[22, 10, 9, 9, 9, 9, 9]));
        }
        if let Some(b) = &self.broker {
            line(
                &mut out,
                format!(
                    "  broker pid {}: rss start {:.1} MB, peak {:.1} MB, end {:.1} MB (hwm {:.1} MB); cpu avg {:.0}%, peak {:.0}% ({:.1} s)",
                    b.pid, b.rss_start_mb, b.rss_peak_mb, b.rss_end_mb, b.rss_hwm_mb, b.cpu_avg_pct, b.cpu_peak_pct, b.cpu_seconds
                ),
            );
        }
        line(
            &mut out,
            format!(
                "  loss {}, duplicates {}, unacked {} — {}",
                self.loss,
                self.duplicates,
                self.unacked,
                if self.passed() {
                    "zero loss"
                } else {
                    "LOSS, DUPLICATES OR UNACKED SENDS"
                }
            ),
        );
        for n in &self.notes {
            line(&mut out, format!("  note: {n}"));
        }
        out
    }
}

fn round(v: f64, digits: i32) -> f64 {
    if !v.is_finite() {
        return 0.0;
    }
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// 1234567 → "1,234,567".
pub fn fmt_u(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_f(v: f64, digits: usize) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let s = format!("{:.*}", digits, v.abs());
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let whole = whole
        .parse::<u64>()
        .map(fmt_u)
        .unwrap_or_else(|_| whole.to_string());
    let sign = if v < 0.0 { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{frac}")
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_u(0), "0");
        assert_eq!(fmt_u(1234), "1,234");
        assert_eq!(fmt_u(1234567), "1,234,567");
        assert_eq!(fmt_f(1234.56, 1), "1,234.6");
        assert_eq!(fmt_f(0.9999, 2), "1.00");
        assert_eq!(fmt_f(-2.5, 1), "-2.5");
        assert_eq!(fmt_f(7.0, 0), "7");
    }

    #[test]
    fn json_has_every_figure_and_pass_flag() {
        let mut r = Report::new("raw", "raw p2p".into(), json!({"qos": 1}));
        r.count("sent", 10);
        r.rate("send rate", 99.94, "msg/s");
        r.latency("e2e", LatencySummary::default());
        r.loss = 1;
        let j = r.to_json();
        assert_eq!(j["figures"]["sent"], 10);
        assert_eq!(j["figures"]["send rate"], 99.9);
        assert_eq!(j["units"]["send rate"], "msg/s");
        assert_eq!(j["zero_loss"], false);
        assert!(j["latency_ms"]["e2e"].is_object());
        assert!(r.to_table().contains("LOSS"));
        r.loss = 0;
        r.unacked = 2;
        assert!(!r.passed());
    }
}
