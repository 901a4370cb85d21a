//! chatmq-bench-report: turns the JSON files `loadtest/bench.sh` wrote into the tables of
//! BENCHMARKS.md and PNG plots.
//!
//! ```text
//! chatmq-bench-report report DIR [--plots PLOTDIR]   # DIR/json/*.json → DIR/tables.md (+ PNGs)
//! chatmq-bench-report sustained FILE                 # exit 0 when a dm run kept up
//! ```
//!
//! Plots are drawn with plotters' bitmap backend; text uses the public-domain 8×8 bitmap
//! font of the `font8x8` crate, so nothing needs fontconfig or FreeType.

mod plots;
mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use plots::{plot_dm, plot_raw};
use tables::tables;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatmq-bench-report: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> anyhow::Result<i32> {
    match args.first().map(String::as_str) {
        Some("sustained") => {
            let file = args.get(1).context("sustained FILE")?;
            let j = load(Path::new(file))?;
            let (ok, why) = sustained(&j);
            eprintln!("{file}: {}", if ok { "sustained".into() } else { why });
            Ok(if ok { 0 } else { 1 })
        }
        Some("report") => {
            let dir = PathBuf::from(args.get(1).context("report DIR")?);
            let plots = match args.iter().position(|a| a == "--plots") {
                Some(i) => Some(PathBuf::from(args.get(i + 1).context("--plots DIR")?)),
                None => None,
            };
            let runs = load_dir(&dir.join("json"))?;
            let md = tables(&runs, &dir.join("json"));
            std::fs::write(dir.join("tables.md"), &md)?;
            if let Some(p) = plots {
                std::fs::create_dir_all(&p)?;
                plot_dm(&runs, &p.join("dm-latency.png"))?;
                plot_raw(&runs, &p.join("raw-p2p-qos1-latency.png"))?;
            }
            print!("{md}");
            Ok(0)
        }
        _ => bail!("usage: chatmq-bench-report report DIR [--plots DIR] | sustained FILE"),
    }
}

pub(crate) type Runs = BTreeMap<String, Value>;

fn load(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn load_dir(dir: &Path) -> anyhow::Result<Runs> {
    let mut runs = Runs::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                runs.insert(stem.to_string(), load(&p)?);
            }
        }
    }
    Ok(runs)
}

pub(crate) fn fig(j: &Value, name: &str) -> Option<f64> {
    j["figures"][name].as_f64()
}

pub(crate) fn lat(j: &Value, name: &str, q: &str) -> Option<f64> {
    j["latency_ms"][name][q].as_f64()
}

/// A dm run kept up: zero loss, ≥ 95 % of the offered rate acked, p99 send → delivered ≤ 1 s,
/// drained in time.
pub fn sustained(j: &Value) -> (bool, String) {
    let offered = fig(j, "offered rate").unwrap_or(0.0);
    let acked = fig(j, "acked rate").unwrap_or(0.0);
    let p99 = lat(j, "send → delivered", "p99_ms").unwrap_or(f64::INFINITY);
    let zero = j["zero_loss"].as_bool().unwrap_or(false);
    let timed_out = j["notes"].as_array().is_some_and(|n| {
        n.iter()
            .any(|s| s.as_str().is_some_and(|s| s.contains("timed out")))
    });
    let mut why = Vec::new();
    if !zero {
        why.push("loss, duplicates or unacked sends".to_string());
    }
    if acked < 0.95 * offered {
        why.push(format!("acked {acked:.0}/s of {offered:.0}/s offered"));
    }
    if p99 > 1000.0 {
        why.push(format!("p99 send → delivered {p99:.0} ms"));
    }
    if timed_out {
        why.push("drain timed out".into());
    }
    (why.is_empty(), why.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sustained_needs_rate_latency_and_zero_loss() {
        let mut j = json!({
            "figures": {"offered rate": 1000.0, "acked rate": 990.0},
            "latency_ms": {"send → delivered": {"p99_ms": 20.0}},
            "zero_loss": true, "notes": []
        });
        assert!(sustained(&j).0);
        j["figures"]["acked rate"] = json!(900.0);
        assert!(!sustained(&j).0);
        j["figures"]["acked rate"] = json!(1000.0);
        j["latency_ms"]["send → delivered"]["p99_ms"] = json!(1500.0);
        assert!(!sustained(&j).0);
        j["latency_ms"]["send → delivered"]["p99_ms"] = json!(15.0);
        j["zero_loss"] = json!(false);
        assert!(!sustained(&j).0);
    }
}
