//! The markdown of `tables.md`: one section per scenario, each table written by the tool's
//! one table writer ([`Table`]).

use std::fmt::Write as _;
use std::path::Path;

use chatmq_loadtest::table::{Align, Table};
use serde_json::Value;

use super::{fig, lat, sustained, Runs};

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

/// A table whose columns are all right-aligned numbers.
fn numbers(cols: &[&str]) -> Table {
    let cols: Vec<(&str, Align)> = cols.iter().map(|c| (*c, Align::Right)).collect();
    Table::new(&cols)
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
        (Some(s), Some(a)) if s - a != 0.0 => format!(" ({} unacked)", n0(Some(s - a))),
        _ => String::new(),
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

/// Every section for the runs in `dir` (plus the machine description, when there is one).
pub(crate) fn tables(runs: &Runs, dir: &Path) -> String {
    let txt = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let mut o = String::new();
    if let Some(m) = txt("machine.txt") {
        o.push_str("### Machine\n\n```\n");
        o.push_str(&m);
        o.push_str("```\n\n");
    }
    raw_section(&mut o, runs);
    dm_section(&mut o, runs, txt("dm-max-sustained.txt"));
    group_section(&mut o, runs);
    connect_section(&mut o, runs, txt("connect-capped.txt"));
    offline_section(&mut o, runs);
    history_section(&mut o, runs, txt("history-store-bytes.txt"));
    o
}

fn raw_section(o: &mut String, runs: &Runs) {
    if !runs.keys().any(|k| k.starts_with("raw-")) {
        return;
    }
    o.push_str("### 1. raw: chatmq general plane vs Mosquitto\n\n");
    o.push_str(
        "10 clients (pairs / publishers / subscribers), 64 B payloads. `pub/s` = publishes \
         per second achieved, `dlv/s` = deliveries per second (delivered ÷ send time), lost = \
         expected deliveries never received (QoS 1: sends never PUBACKed in brackets), \
         latency = publish due → delivery, ms. Ratio = chatmq dlv/s ÷ Mosquitto dlv/s.\n\n",
    );
    let mut cols: Vec<(String, Align)> = ["mode", "QoS", "rate"]
        .iter()
        .map(|c| (c.to_string(), Align::Left))
        .collect();
    for b in ["Mosq", "chatmq"] {
        for c in ["pub/s", "dlv/s", "lost", "dup", "p50", "p99"] {
            cols.push((format!("{b} {c}"), Align::Right));
        }
    }
    cols.push(("ratio".to_string(), Align::Right));
    let mut t = Table::new(&cols);
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
                let mut row = vec![mode.to_string(), qos.to_string(), rate];
                row.extend(raw_cells(m));
                row.extend(raw_cells(c));
                row.push(ratio);
                t.row(row);
            }
        }
    }
    o.push_str(&t.markdown());
    o.push('\n');
}

fn dm_section(o: &mut String, runs: &Runs, best: Option<String>) {
    let mut dm: Vec<(f64, &String, &Value)> = runs
        .iter()
        .filter(|(k, _)| k.starts_with("sweep-dm-") || k.starts_with("dm-at-"))
        .filter_map(|(k, j)| fig(j, "offered rate").map(|r| (r, k, j)))
        .collect();
    dm.sort_by(|a, b| a.0.total_cmp(&b.0));
    if dm.is_empty() {
        return;
    }
    o.push_str("### 2. chat dm: persisted throughput and latency\n\n");
    if let Some(b) = best.and_then(|s| s.trim().parse::<f64>().ok()) {
        let best_acked = runs
            .get(&format!("sweep-dm-{b}"))
            .and_then(|j| fig(j, "acked rate"));
        let mosq = runs.get("raw-mosquitto-p2p-q1-max").and_then(raw_tput);
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
    let mut cols = vec![("run", Align::Left)];
    for c in [
        "offered /s",
        "acked /s",
        "delivered",
        "lost",
        "dup",
        "ack p50",
        "ack p99",
        "e2e p50",
        "e2e p90",
        "e2e p99",
        "e2e p99.9",
        "e2e max",
        "broker CPU %",
    ] {
        cols.push((c, Align::Right));
    }
    cols.push(("kept up", Align::Left));
    let mut t = Table::new(&cols);
    for (r, k, j) in &dm {
        let (ok, why) = sustained(j);
        let e2e = |q| ms(lat(j, "send → delivered", q));
        t.row([
            k.to_string(),
            n0(Some(*r)),
            n0(fig(j, "acked rate")),
            n0(fig(j, "delivered")),
            n0(fig(j, "lost (acked, not delivered)")),
            n0(fig(j, "duplicates")),
            ms(lat(j, "send → sent ack", "p50_ms")),
            ms(lat(j, "send → sent ack", "p99_ms")),
            e2e("p50_ms"),
            e2e("p90_ms"),
            e2e("p99_ms"),
            e2e("p999_ms"),
            e2e("max_ms"),
            n0(j["broker"]["cpu_avg_pct"].as_f64()),
            if ok {
                "yes".to_string()
            } else {
                format!("no: {why}")
            },
        ]);
    }
    o.push_str(&t.markdown());
    o.push('\n');
}

fn group_section(o: &mut String, runs: &Runs) {
    let Some(j) = runs.get("group") else {
        return;
    };
    o.push_str("### 3. group fan-out\n\n");
    let mut t = numbers(&[
        "members",
        "online",
        "messages",
        "send → all online p50",
        "max",
        "send → each member p50",
        "p99",
        "missing",
        "dup",
        "create+add (ms)",
    ]);
    t.row([
        n0(fig(j, "members per group")),
        n0(fig(j, "online per group")),
        n0(fig(j, "acked")),
        format!("{} ms", ms(lat(j, "send → all online", "p50_ms"))),
        format!("{} ms", ms(lat(j, "send → all online", "max_ms"))),
        format!("{} ms", ms(lat(j, "send → each member", "p50_ms"))),
        format!("{} ms", ms(lat(j, "send → each member", "p99_ms"))),
        n0(fig(j, "missing deliveries")),
        n0(fig(j, "duplicates")),
        ms(lat(j, "group create+add", "max_ms")),
    ]);
    o.push_str(&t.markdown());
    o.push('\n');
}

fn connect_section(o: &mut String, runs: &Runs, capped: Option<String>) {
    let mut conns: Vec<&Value> = runs
        .iter()
        .filter(|(k, _)| k.starts_with("connect-"))
        .map(|(_, j)| j)
        .collect();
    if conns.is_empty() {
        return;
    }
    o.push_str("### 4. connect (JWT, subscribed, held idle 10 s)\n\n");
    let mut t = numbers(&[
        "asked",
        "connected",
        "failed",
        "conn/s",
        "connect p50",
        "p99",
        "RSS before (MB)",
        "RSS idle (MB)",
        "RSS per idle conn (KB)",
        "dropped idle",
    ]);
    conns.sort_by_key(|j| fig(j, "attempted").unwrap_or(0.0) as u64);
    for j in conns {
        t.row([
            n0(fig(j, "attempted")),
            n0(fig(j, "connected")),
            n0(fig(j, "failed")),
            n0(fig(j, "connections/s")),
            format!("{} ms", ms(lat(j, "connect (CONNACK/SUBACK)", "p50_ms"))),
            format!("{} ms", ms(lat(j, "connect (CONNACK/SUBACK)", "p99_ms"))),
            ms(fig(j, "broker rss before")),
            ms(fig(j, "broker rss after hold")),
            ms(fig(j, "broker rss per idle connection")),
            n0(fig(j, "dropped while idle")),
        ]);
    }
    o.push_str(&t.markdown());
    if let Some(c) = capped {
        let _ = writeln!(
            o,
            "\nCapped (asked, tried, open-file limit): `{}`",
            c.trim()
        );
    }
    o.push('\n');
}

fn offline_section(o: &mut String, runs: &Runs) {
    let Some(j) = runs.get("offline") else {
        return;
    };
    o.push_str("### 5. offline backlog and reconnect storm\n\n");
    let mut t = numbers(&[
        "users",
        "pending each",
        "acked",
        "pile-up rate /s",
        "storm connect (s)",
        "time to drain (s)",
        "delivered",
        "lost",
        "dup",
        "no receipt",
        "backlog done p50",
        "p99",
        "max",
    ]);
    let done = |q| format!("{} ms", ms(lat(j, "reconnect → backlog done", q)));
    t.row([
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
        done("p50_ms"),
        done("p99_ms"),
        done("max_ms"),
    ]);
    o.push_str(&t.markdown());
    o.push('\n');
}

fn history_section(o: &mut String, runs: &Runs, store_bytes: Option<String>) {
    let Some(j) = runs.get("history") else {
        return;
    };
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
        .map(|f| fig(f, "fill ack errors").unwrap_or(0.0) + fig(f, "fill unacked").unwrap_or(0.0))
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
    if let Some(b) = store_bytes.and_then(|s| s.trim().parse::<f64>().ok()) {
        let _ = writeln!(
            o,
            "Store on disk after the run: {:.0} MiB.\n",
            b / 1048576.0
        );
    }
    let mut t = numbers(&[
        "stored", "convs", "pages", "failed", "wrong", "pages/s", "p50", "p90", "p99", "p99.9",
        "max",
    ]);
    let l = |q| format!("{} ms", ms(lat(j, "history page", q)));
    t.row([
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
    ]);
    o.push_str(&t.markdown());
    o.push('\n');
}
