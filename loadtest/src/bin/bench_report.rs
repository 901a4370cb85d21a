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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plotters::prelude::*;
use serde_json::Value;

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

type Runs = BTreeMap<String, Value>;

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

fn fig(j: &Value, name: &str) -> Option<f64> {
    j["figures"][name].as_f64()
}

fn lat(j: &Value, name: &str, q: &str) -> Option<f64> {
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

// ---------------------------------------------------------------------------------------------
// tables

fn n0(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => chatmq_loadtest::report::fmt_f(v, 0),
        _ => "–".into(),
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "–".into(),
    }
}

/// Deliveries per second of a raw run: delivered / send time.
fn raw_tput(j: &Value) -> Option<f64> {
    let d = fig(j, "delivered")?;
    let t = fig(j, "send time")?;
    (t > 0.0).then(|| d / t)
}

fn raw_cells(j: Option<&Value>) -> [String; 6] {
    let Some(j) = j else {
        return std::array::from_fn(|_| "–".to_string());
    };
    let unacked = match (fig(j, "sent"), fig(j, "acked")) {
        (Some(s), Some(a)) => format!(" ({} unacked)", n0(Some(s - a))),
        _ => String::new(),
    };
    let unacked = if unacked == " (0 unacked)" {
        String::new()
    } else {
        unacked
    };
    [
        n0(fig(j, "achieved send rate")),
        n0(raw_tput(j)),
        format!("{}{unacked}", n0(fig(j, "lost"))),
        n0(fig(j, "duplicates")),
        ms(lat(j, "end-to-end", "p50_ms")),
        ms(lat(j, "end-to-end", "p99_ms")),
    ]
}

fn tables(runs: &Runs, dir: &Path) -> String {
    let mut o = String::new();
    let txt = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    if let Some(m) = txt("machine.txt") {
        o.push_str("### Machine\n\n```\n");
        o.push_str(&m);
        o.push_str("```\n\n");
    }

    // 1. raw
    if runs.keys().any(|k| k.starts_with("raw-")) {
        o.push_str("### 1. raw: chatmq general plane vs Mosquitto\n\n");
        o.push_str(
            "10 clients (pairs / publishers / subscribers), 64 B payloads. `pub/s` = publishes \
             per second achieved, `dlv/s` = deliveries per second (delivered ÷ send time), lost = \
             expected deliveries never received (QoS 1: sends never PUBACKed in brackets), \
             latency = publish due → delivery, ms. Ratio = chatmq dlv/s ÷ Mosquitto dlv/s.\n\n",
        );
        o.push_str("| mode | QoS | rate | Mosq pub/s | Mosq dlv/s | Mosq lost | Mosq dup | Mosq p50 | Mosq p99 | chatmq pub/s | chatmq dlv/s | chatmq lost | chatmq dup | chatmq p50 | chatmq p99 | ratio |\n");
        o.push_str(
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for mode in ["p2p", "fan-in", "fan-out"] {
            for qos in [0, 1] {
                for kind in ["fixed", "max"] {
                    let m = runs.get(&format!("raw-mosquitto-{mode}-q{qos}-{kind}"));
                    let c = runs.get(&format!("raw-chatmq-{mode}-q{qos}-{kind}"));
                    if m.is_none() && c.is_none() {
                        continue;
                    }
                    let rate = match kind {
                        "max" => "max".to_string(),
                        _ => m
                            .or(c)
                            .and_then(|j| fig(j, "offered rate"))
                            .map(|r| format!("{} /s", n0(Some(r))))
                            .unwrap_or_default(),
                    };
                    let ratio = match (m.and_then(raw_tput), c.and_then(raw_tput)) {
                        (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
                        _ => "–".into(),
                    };
                    let mc = raw_cells(m);
                    let cc = raw_cells(c);
                    let _ = writeln!(
                        o,
                        "| {mode} | {qos} | {rate} | {} | {ratio} |",
                        mc.iter()
                            .chain(cc.iter())
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" | ")
                    );
                }
            }
        }
        o.push('\n');
    }

    // 2. dm
    let mut dm: Vec<(f64, &String, &Value)> = runs
        .iter()
        .filter(|(k, _)| k.starts_with("sweep-dm-") || k.starts_with("dm-at-"))
        .filter_map(|(k, j)| fig(j, "offered rate").map(|r| (r, k, j)))
        .collect();
    dm.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !dm.is_empty() {
        o.push_str("### 2. chat dm: persisted throughput and latency\n\n");
        let best = txt("dm-max-sustained.txt").and_then(|s| s.trim().parse::<f64>().ok());
        let best_run = best.and_then(|b| runs.get(&format!("sweep-dm-{b}")));
        let best_acked = best_run.and_then(|j| fig(j, "acked rate"));
        let mosq = runs.get("raw-mosquitto-p2p-q1-max").and_then(raw_tput);
        if let Some(b) = best {
            let _ = writeln!(
                o,
                "Max sustained: **{} msg/s offered** ({} msg/s acked and delivered, zero loss, \
                 p99 send → delivered ≤ 1 s). Mosquitto raw QoS 1 p2p max in the same run: {} \
                 deliveries/s → ratio **{}**.\n",
                n0(Some(b)),
                n0(best_acked),
                n0(mosq),
                match (best_acked, mosq) {
                    (Some(a), Some(m)) if m > 0.0 => format!("{:.2}", a / m),
                    _ => "–".into(),
                }
            );
        }
        o.push_str("| run | offered /s | acked /s | delivered | lost | dup | ack p50 | ack p99 | e2e p50 | e2e p90 | e2e p99 | e2e p99.9 | e2e max | broker CPU % | kept up |\n");
        o.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for (r, k, j) in &dm {
            let (ok, why) = sustained(j);
            let _ = writeln!(
                o,
                "| {k} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                n0(Some(*r)),
                n0(fig(j, "acked rate")),
                n0(fig(j, "delivered")),
                n0(fig(j, "lost (acked, not delivered)")),
                n0(fig(j, "duplicates")),
                ms(lat(j, "send → sent ack", "p50_ms")),
                ms(lat(j, "send → sent ack", "p99_ms")),
                ms(lat(j, "send → delivered", "p50_ms")),
                ms(lat(j, "send → delivered", "p90_ms")),
                ms(lat(j, "send → delivered", "p99_ms")),
                ms(lat(j, "send → delivered", "p999_ms")),
                ms(lat(j, "send → delivered", "max_ms")),
                n0(j["broker"]["cpu_avg_pct"].as_f64()),
                if ok {
                    "yes".to_string()
                } else {
                    format!("no: {why}")
                }
            );
        }
        o.push('\n');
    }

    // 3. group
    if let Some(j) = runs.get("group") {
        o.push_str("### 3. group fan-out\n\n");
        o.push_str("| members | online | messages | send → all online p50 | max | send → each member p50 | p99 | missing | dup | create+add (ms) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} | {} | {} |\n",
            n0(fig(j, "members per group")),
            n0(fig(j, "online per group")),
            n0(fig(j, "acked")),
            ms(lat(j, "send → all online", "p50_ms")),
            ms(lat(j, "send → all online", "max_ms")),
            ms(lat(j, "send → each member", "p50_ms")),
            ms(lat(j, "send → each member", "p99_ms")),
            n0(fig(j, "missing deliveries")),
            n0(fig(j, "duplicates")),
            ms(lat(j, "group create+add", "max_ms")),
        );
    }

    // 4. connect
    let conns: Vec<(&String, &Value)> = runs
        .iter()
        .filter(|(k, _)| k.starts_with("connect-"))
        .collect();
    if !conns.is_empty() {
        o.push_str("### 4. connect (JWT, subscribed, held idle 10 s)\n\n");
        o.push_str("| asked | connected | failed | conn/s | connect p50 | p99 | RSS before (MB) | RSS idle (MB) | RSS per idle conn (KB) | dropped idle |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let mut conns = conns;
        conns.sort_by_key(|(_, j)| fig(j, "attempted").unwrap_or(0.0) as u64);
        for (_, j) in conns {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} ms | {} ms | {} | {} | {} | {} |",
                n0(fig(j, "attempted")),
                n0(fig(j, "connected")),
                n0(fig(j, "failed")),
                n0(fig(j, "connections/s")),
                ms(lat(j, "connect (CONNACK/SUBACK)", "p50_ms")),
                ms(lat(j, "connect (CONNACK/SUBACK)", "p99_ms")),
                ms(fig(j, "broker rss before")),
                ms(fig(j, "broker rss after hold")),
                ms(fig(j, "broker rss per idle connection")),
                n0(fig(j, "dropped while idle")),
            );
        }
        if let Some(c) = txt("connect-capped.txt") {
            let _ = writeln!(
                o,
                "\nCapped (asked, tried, open-file limit): `{}`",
                c.trim()
            );
        }
        o.push('\n');
    }

    // 5. offline
    if let Some(j) = runs.get("offline") {
        o.push_str("### 5. offline backlog and reconnect storm\n\n");
        o.push_str("| users | pending each | acked | pile-up rate /s | storm connect (s) | time to drain (s) | delivered | lost | dup | no receipt | backlog done p50 | p99 | max |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ms | {} ms | {} ms |\n",
            n0(fig(j, "offline users")),
            n0(fig(j, "pending per user")),
            n0(fig(j, "acked")),
            n0(fig(j, "pile-up acked rate")),
            ms(fig(j, "storm connect time")),
            ms(fig(j, "time to drain (storm → last backlog)")),
            n0(fig(j, "delivered")),
            n0(fig(j, "lost (acked, not delivered)")),
            n0(fig(j, "duplicates")),
            n0(fig(j, "messages without delivered receipt")),
            ms(lat(j, "reconnect → backlog done", "p50_ms")),
            ms(lat(j, "reconnect → backlog done", "p99_ms")),
            ms(lat(j, "reconnect → backlog done", "max_ms")),
        );
    }

    // 6. history
    if let Some(j) = runs.get("history") {
        o.push_str("### 6. history pages\n\n");
        let fills: Vec<&Value> = runs
            .iter()
            .filter(|(k, _)| k.starts_with("history-fill-"))
            .map(|(_, v)| v)
            .collect();
        let acked: f64 = fills.iter().filter_map(|f| fig(f, "fill acked")).sum();
        let time: f64 = fills.iter().filter_map(|f| fig(f, "fill time")).sum();
        let errs: f64 = fills
            .iter()
            .map(|f| {
                fig(f, "fill ack errors").unwrap_or(0.0) + fig(f, "fill unacked").unwrap_or(0.0)
            })
            .sum();
        if time > 0.0 {
            let _ = writeln!(
                o,
                "Fill: {} messages acked in {} runs, {:.1} s sending, **{} msg/s** (10 senders, 64 in flight each), {} unacked or refused.\n",
                n0(Some(acked)),
                fills.len(),
                time,
                n0(Some(acked / time)),
                n0(Some(errs))
            );
        }
        if let Some(b) = txt("history-store-bytes.txt").and_then(|s| s.trim().parse::<f64>().ok()) {
            let _ = writeln!(
                o,
                "Store on disk after the run: {:.0} MiB.\n",
                b / 1048576.0
            );
        }
        o.push_str("| stored | convs | pages | failed | wrong | pages/s | p50 | p90 | p99 | p99.9 | max |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let l = |q| ms(lat(j, "history page", q));
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms |\n",
            n0(fig(j, "messages stored (sum of newest seqs)")),
            n0(fig(j, "conversations with messages")),
            n0(fig(j, "pages answered")),
            n0(fig(j, "pages failed (error or timeout)")),
            n0(fig(j, "pages with wrong content")),
            n0(fig(j, "query rate")),
            l("p50_ms"),
            l("p90_ms"),
            l("p99_ms"),
            l("p999_ms"),
            l("max_ms"),
        );
    }
    o
}

// ---------------------------------------------------------------------------------------------
// plots

struct Series {
    label: String,
    color: RGBColor,
    dashed: bool,
    /// Points only, no line (runs that are not part of the sweep).
    markers: bool,
    points: Vec<(f64, f64)>,
}

fn plot_dm(runs: &Runs, path: &Path) -> anyhow::Result<()> {
    let points = |prefix: &str| {
        let mut pts: Vec<(f64, f64, f64)> = runs
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, j)| {
                Some((
                    fig(j, "offered rate")?,
                    lat(j, "send → delivered", "p50_ms")?,
                    lat(j, "send → delivered", "p99_ms")?,
                ))
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let sweep = points("sweep-dm-");
    let at = points("dm-at-");
    if sweep.is_empty() && at.is_empty() {
        return Ok(());
    }
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let mut series = vec![
        Series {
            label: "p50 send -> delivered (sweep, 10 s runs)".into(),
            color: blue,
            dashed: false,
            markers: false,
            points: sweep.iter().map(|p| (p.0, p.1)).collect(),
        },
        Series {
            label: "p99 send -> delivered (sweep)".into(),
            color: blue,
            dashed: true,
            markers: false,
            points: sweep.iter().map(|p| (p.0, p.2)).collect(),
        },
    ];
    if !at.is_empty() {
        series.push(Series {
            label: "p50 / p99 at 25/50/75 % of max (20 s runs)".into(),
            color: orange,
            dashed: false,
            markers: true,
            points: at.iter().flat_map(|p| [(p.0, p.1), (p.0, p.2)]).collect(),
        });
    }
    chart(
        path,
        "chatmq dm, 200 users: latency vs offered load",
        &series,
    )
}

fn plot_raw(runs: &Runs, path: &Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for (broker, color) in [
        ("mosquitto", RGBColor(214, 39, 40)),
        ("chatmq", RGBColor(31, 119, 180)),
    ] {
        let prefix = format!("sweep-raw-{broker}-p2p-q1-");
        let mut pts: Vec<(f64, f64, f64)> = runs
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(_, j)| {
                Some((
                    fig(j, "offered rate")?,
                    lat(j, "end-to-end", "p50_ms")?,
                    lat(j, "end-to-end", "p99_ms")?,
                ))
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.is_empty() {
            continue;
        }
        series.push(Series {
            label: format!("{broker} p50"),
            color,
            dashed: false,
            markers: false,
            points: pts.iter().map(|p| (p.0, p.1)).collect(),
        });
        series.push(Series {
            label: format!("{broker} p99"),
            color,
            dashed: true,
            markers: false,
            points: pts.iter().map(|p| (p.0, p.2)).collect(),
        });
    }
    if series.is_empty() {
        return Ok(());
    }
    chart(
        path,
        "raw p2p QoS 1, 10 pairs: latency vs offered load",
        &series,
    )
}

/// Nice tick values for a linear axis from 0 to `max`.
pub fn linear_ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0];
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = Vec::new();
    let mut v = 0.0;
    while v <= max * 1.0001 + step {
        t.push(v);
        if v >= max {
            break;
        }
        v += step;
    }
    t
}

/// Decades covering `lo..=hi` for a log axis.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let a = lo.max(1e-3).log10().floor() as i32;
    let b = hi.max(lo * 10.0).log10().ceil() as i32;
    (a..=b).map(|e| 10f64.powi(e)).collect()
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{}k", k.round())
        } else {
            format!("{k:.1}k")
        }
    } else if v >= 1.0 || v == 0.0 {
        format!("{}", v.round())
    } else {
        format!("{v}")
    }
}

const W: i32 = 960;
const H: i32 = 600;
const SCALE: i32 = 2;

fn chart(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (W as u32, H as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (l, r, t, b) = (110, W - 50, 60, H - 90);
    let xmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .collect();
    let ylo = ys.iter().copied().fold(f64::INFINITY, f64::min);
    let yhi = ys.iter().copied().fold(0.0, f64::max);
    let xt = linear_ticks(xmax);
    let yt = log_ticks(ylo, yhi);
    let xspan = *xt.last().unwrap_or(&1.0);
    let (ya, yb) = (
        yt.first().copied().unwrap_or(0.1).log10(),
        yt.last().copied().unwrap_or(1000.0).log10(),
    );
    let px = |x: f64| l + ((x / xspan) * (r - l) as f64) as i32;
    let py = |y: f64| b - (((y.max(1e-3).log10() - ya) / (yb - ya)) * (b - t) as f64) as i32;
    let grid = RGBColor(225, 225, 225);
    let ink = RGBColor(40, 40, 40);
    // grid, ticks and labels
    for &x in &xt {
        let xp = px(x);
        root.draw(&PathElement::new(vec![(xp, t), (xp, b)], grid))?;
        root.draw(&PathElement::new(vec![(xp, b), (xp, b + 6)], ink))?;
        let s = fmt_tick(x);
        text(&root, &s, xp - text_w(&s) / 2, b + 12, ink, false)?;
    }
    for &y in &yt {
        let yp = py(y);
        root.draw(&PathElement::new(vec![(l, yp), (r, yp)], grid))?;
        root.draw(&PathElement::new(vec![(l - 6, yp), (l, yp)], ink))?;
        let s = fmt_tick(y);
        text(&root, &s, l - 12 - text_w(&s), yp - 8, ink, false)?;
        // minor ticks 2..9
        for m in 2..10 {
            let v = y * m as f64;
            if v.log10() <= yb + 1e-9 {
                let yv = py(v);
                root.draw(&PathElement::new(vec![(l - 3, yv), (l, yv)], ink))?;
            }
        }
    }
    root.draw(&PathElement::new(
        vec![(l, t), (l, b), (r, b)],
        ink.stroke_width(2),
    ))?;
    text(&root, title, (W - text_w(title)) / 2, 18, ink, false)?;
    let xl = "offered load (messages/s)";
    text(&root, xl, (l + r - text_w(xl)) / 2, H - 40, ink, false)?;
    let yl = "latency (ms, log scale)";
    text(&root, yl, 20, (t + b + text_w(yl)) / 2, ink, true)?;
    // series
    for s in series {
        let pts: Vec<(i32, i32)> = s.points.iter().map(|&(x, y)| (px(x), py(y))).collect();
        let style = s.color.stroke_width(3);
        if s.markers {
            // points only
        } else if s.dashed {
            for w in pts.windows(2) {
                dashed(&root, w[0], w[1], s.color)?;
            }
        } else {
            root.draw(&PathElement::new(pts.clone(), style))?;
        }
        for &(x, y) in &pts {
            root.draw(&Circle::new(
                (x, y),
                if s.markers { 7 } else { 5 },
                s.color.filled(),
            ))?;
        }
    }
    // legend, top left inside the plot
    let mut ly = t + 12;
    for s in series {
        let (x0, x1) = (l + 16, l + 56);
        if s.markers {
            root.draw(&Circle::new(((x0 + x1) / 2, ly + 8), 6, s.color.filled()))?;
        } else if s.dashed {
            dashed(&root, (x0, ly + 8), (x1, ly + 8), s.color)?;
        } else {
            root.draw(&PathElement::new(
                vec![(x0, ly + 8), (x1, ly + 8)],
                s.color.stroke_width(3),
            ))?;
        }
        text(&root, &s.label, x1 + 10, ly, ink, false)?;
        ly += 24;
    }
    root.present()?;
    Ok(())
}

fn dashed(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    a: (i32, i32),
    b: (i32, i32),
    color: RGBColor,
) -> anyhow::Result<()> {
    let (dx, dy) = ((b.0 - a.0) as f64, (b.1 - a.1) as f64);
    let len = (dx * dx + dy * dy).sqrt();
    let n = (len / 10.0).ceil().max(1.0) as i32;
    for i in (0..n).step_by(2) {
        let f0 = i as f64 / n as f64;
        let f1 = ((i + 1) as f64 / n as f64).min(1.0);
        let p = |f: f64| (a.0 + (dx * f) as i32, a.1 + (dy * f) as i32);
        root.draw(&PathElement::new(vec![p(f0), p(f1)], color.stroke_width(3)))?;
    }
    Ok(())
}

fn text_w(s: &str) -> i32 {
    s.chars().count() as i32 * 8 * SCALE
}

/// Draws `s` with the 8×8 bitmap font at SCALE×; `vertical` turns it 90° counter-clockwise
/// (reading bottom to top, starting at (x, y)).
fn text(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    s: &str,
    x: i32,
    y: i32,
    color: RGBColor,
    vertical: bool,
) -> anyhow::Result<()> {
    for (i, ch) in s.chars().enumerate() {
        let ch = match ch {
            '→' => '>',
            '–' => '-',
            c => c,
        };
        let Some(glyph) = font8x8::legacy::BASIC_LEGACY.get(ch as usize) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for sy in 0..SCALE {
                    for sx in 0..SCALE {
                        let (gx, gy) = ((i as i32 * 8 + col) * SCALE + sx, row as i32 * SCALE + sy);
                        let p = if vertical {
                            (x + gy, y - gx)
                        } else {
                            (x + gx, y + gy)
                        };
                        root.draw_pixel(p, &color)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ticks() {
        assert_eq!(
            linear_ticks(10_000.0),
            vec![0.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0]
        );
        assert_eq!(*linear_ticks(23_000.0).last().unwrap(), 25_000.0);
        assert_eq!(log_ticks(0.3, 45.0), vec![0.1, 1.0, 10.0, 100.0]);
        assert_eq!(fmt_tick(2500.0), "2.5k");
        assert_eq!(fmt_tick(20000.0), "20k");
        assert_eq!(fmt_tick(0.1), "0.1");
    }

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

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.png");
        let s = vec![Series {
            label: "p50".into(),
            color: RGBColor(0, 0, 255),
            dashed: true,
            markers: false,
            points: vec![(1000.0, 0.5), (5000.0, 2.0), (9000.0, 80.0)],
        }];
        chart(&p, "test", &s).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).ok();
    }
}
