//! chatmq-loadtest: a load generator for chatmq's chat protocol and for any MQTT broker.
//!
//! # Layout
//! - `cli`       the flags of every scenario (clap)
//! - `scenario`  one module per scenario (`raw`, `dm`, `group`, `offline`, `connect`,
//!   `history`) and the
//!   setup they share (`Env`, opening many connections)
//! - `conn`      the target (loopback guard, client options) and one MQTT connection run by its
//!   own task, handing what arrives to a scenario's handler
//! - `chat`      chat users: ids, tokens, inbox connections, rpc, the chat send phase
//! - `protocol`  topics and payloads: the raw header, chat MessagePack maps (pure)
//! - `rate`      the run clock, the open-loop timetable and `Pace`, which every sender walks
//! - `stats`     latency histograms, per-publisher sequence tracking, live counters (pure)
//! - `token`     HS256 minting or `--token-cmd`
//! - `procstat`  broker RSS and CPU from /proc
//! - `progress`  the once-a-second line on stderr
//! - `report`    the final table and the JSON file
//! - `table`     the one table writer (markdown for BENCHMARKS.md, aligned text)

pub mod chat;
pub mod cli;
pub mod conn;
pub mod procstat;
pub mod progress;
pub mod protocol;
pub mod rate;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod table;
pub mod token;

use cli::{Cli, Scenario};

/// Runs the chosen scenario; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.scenario {
        Scenario::Raw(a) => scenario::raw::run(a).await,
        Scenario::Dm(a) => scenario::dm::run(a).await,
        Scenario::Group(a) => scenario::group::run(a).await,
        Scenario::Offline(a) => scenario::offline::run(a).await,
        Scenario::Connect(a) => scenario::connect::run(a).await,
        Scenario::History(a) => scenario::history::run(a).await,
    }
}
