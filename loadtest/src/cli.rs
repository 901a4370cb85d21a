//! Command-line flags of every scenario.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "chatmq-loadtest",
    version,
    about = "Load generator for chatmq (chat scenarios) and any MQTT broker (raw scenario)",
    long_about = "Load generator for chatmq (chat scenarios) and any MQTT 3.1.1 broker (raw).\n\
        Every run is bounded in time and count and talks to loopback addresses only\n\
        unless --allow-remote is given."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// Plain MQTT publishers and subscribers on the tool's own topics (any broker).
    Raw(RawArgs),
    /// Chat: users in random pairs sending direct messages on an open-loop timetable.
    Dm(DmArgs),
    /// Chat: groups, a few senders each; time for a message to reach every online member.
    Group(GroupArgs),
    /// Chat: messages pile up for offline users, then they all reconnect at once.
    Offline(OfflineArgs),
    /// Connections at a target rate, held idle: connections/s and memory per connection.
    Connect(ConnectArgs),
    /// Chat: fill conversations with many messages, then time `history` pages at random anchors.
    History(HistoryArgs),
}

/// Flags every scenario has.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Broker host(s), comma separated; connection i uses host i mod n.
    #[arg(long, default_value = "127.0.0.1", value_delimiter = ',')]
    pub host: Vec<String>,
    /// Broker MQTT port.
    #[arg(long, short = 'p', default_value_t = 1883)]
    pub port: u16,
    /// Allow hosts that are not loopback addresses.
    #[arg(long)]
    pub allow_remote: bool,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Exit with status 1 when anything was lost or duplicated, or a QoS 1 / chat send went
    /// unacknowledged (or was refused).
    #[arg(long)]
    pub assert_zero_loss: bool,
    /// Sample this process's RSS and CPU (the broker) from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// MQTT keep-alive, seconds.
    #[arg(long, default_value_t = 30)]
    pub keep_alive: u64,
    /// Outgoing QoS 1 messages in flight per connection.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Seconds allowed for CONNECT → CONNACK (+ SUBACK).
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Connection setups in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Leave Nagle's algorithm on (the tool sets TCP_NODELAY by default).
    #[arg(long)]
    pub no_nodelay: bool,
    /// Seed for random choices (pairing); random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// How chat users log in.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ChatAuth {
    /// HS256 secret: the tool mints each user's JWT (`sub` = user, `exp`).
    #[arg(long, env = "CHATMQ_LOADTEST_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub secret: Option<String>,
    /// Command printing a token for `{user}`, e.g. "chatmq token {user}" (instead of --secret).
    #[arg(long)]
    pub token_cmd: Option<String>,
    /// Token lifetime, seconds.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl: u64,
    /// `iss` claim to put in minted tokens.
    #[arg(long)]
    pub token_iss: Option<String>,
    /// `aud` claim to put in minted tokens.
    #[arg(long)]
    pub token_aud: Option<String>,
    /// Prefix of generated user ids (default: `lt` + a random tag, so runs never collide).
    #[arg(long)]
    pub user_prefix: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawMode {
    /// N publishers, each to its own subscriber.
    P2p,
    /// N publishers, one subscriber.
    FanIn,
    /// One publisher, N subscribers.
    FanOut,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct RawArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "p2p")]
    pub mode: RawMode,
    /// Pairs (p2p), publishers (fan-in) or subscribers (fan-out).
    #[arg(long, short = 'n', default_value_t = 10)]
    pub clients: usize,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Total publish rate, messages/s; 0 = as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    // `--size` is the payload here (at least the 28-byte header).
    #[command(flatten)]
    #[serde(flatten)]
    pub sending: Sending,
    /// Seconds to wait for outstanding deliveries after the last publish.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Topic prefix (a run tag is appended).
    #[arg(long, default_value = "chatmq-lt")]
    pub topic_prefix: String,
    /// MQTT username.
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT password.
    #[arg(long)]
    #[serde(skip)]
    pub password: Option<String>,
    /// Instead of --password: mint an HS256 JWT for --username with this secret (chatmq's
    /// general plane: every client logs in as that user, with its own client id).
    #[arg(long, env = "CHATMQ_LOADTEST_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub secret: Option<String>,
}

/// How long and how much each sender sends (`raw`, `dm`, `group`).
#[derive(Args, Debug, Clone, Serialize)]
pub struct Sending {
    /// Seconds of sending.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// At most this many messages per sender (publisher).
    #[arg(long)]
    pub count: Option<u64>,
    /// Bytes per message: chat text, or the raw payload (at least its 28-byte header).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct DmArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    pub auth: ChatAuth,
    /// Users (even): paired at random, each pair talks both ways.
    #[arg(long, short = 'u', default_value_t = 100)]
    pub users: usize,
    /// Total send rate, messages/s, on a fixed timetable (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub sending: Sending,
    /// Seconds to wait for outstanding acks and deliveries after the last send.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Recipients send a `delivered` receipt every N messages per conversation (0 = never).
    #[arg(long, default_value_t = 0)]
    pub receipt_every: u64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct GroupArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    pub auth: ChatAuth,
    /// Groups.
    #[arg(long, short = 'g', default_value_t = 1)]
    pub groups: usize,
    /// Members per group (creator included).
    #[arg(long, short = 'm', default_value_t = 10)]
    pub members: usize,
    /// Online (connected) members per group; the rest exist only as ids.
    #[arg(long, short = 'o')]
    pub online: Option<usize>,
    /// Senders per group (taken from the online members).
    #[arg(long, short = 's', default_value_t = 1)]
    pub senders: usize,
    /// Total send rate over all groups, messages/s (open loop).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub sending: Sending,
    /// Users per `group.add` request.
    #[arg(long, default_value_t = 500)]
    pub add_batch: usize,
    /// Seconds to wait for each rpc answer.
    #[arg(long, default_value_t = 30.0)]
    pub rpc_timeout: f64,
    /// Seconds to wait for outstanding deliveries after the last send.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct OfflineArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    pub auth: ChatAuth,
    /// Offline users (recipients).
    #[arg(long, short = 'u', default_value_t = 100)]
    pub users: usize,
    /// Messages piling up per offline user.
    #[arg(long, short = 'P', default_value_t = 10)]
    pub pending: u64,
    /// Online users sending them (round robin).
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Total send rate while piling up, messages/s; 0 = as fast as acks come back.
    #[arg(long, default_value_t = 0.0)]
    pub send_rate: f64,
    /// Reconnect rate in the storm, connections/s; 0 = all at once (bounded by --connect-concurrency).
    #[arg(long, default_value_t = 0.0)]
    pub storm_rate: f64,
    /// Text bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Recipients send a cumulative `delivered` receipt every N messages per conversation
    /// (and always for the last one).
    #[arg(long, default_value_t = 50)]
    pub receipt_every: u64,
    /// Don't wait for the senders to see `delivered` receipts covering every message.
    #[arg(long)]
    pub no_receipt_check: bool,
    /// Seconds allowed for piling up (all acks).
    #[arg(long, default_value_t = 120.0)]
    pub send_timeout: f64,
    /// Seconds allowed for the storm to drain (all deliveries and receipts).
    #[arg(long, default_value_t = 120.0)]
    pub drain: f64,
    /// Recipients first connect with a persistent session (clean_session = false), subscribe
    /// to their inbox and go away; in the storm they resume it without subscribing again, so
    /// the broker restores every subscription at once.
    #[arg(long)]
    pub persistent: bool,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    pub auth: ChatAuth,
    /// Connections to open.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// Connection rate, connections/s; 0 = as fast as possible (bounded by --connect-concurrency).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds to hold the connections idle once all are open.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Subscribe each connection to its inbox (`chat/u/{me}/in/#`; raw: `{prefix}/{i}/#`).
    #[arg(long)]
    pub subscribe: bool,
    /// Plain MQTT: no JWT; --username/--password if given (client ids are `{prefix}c{i}`).
    #[arg(long)]
    pub raw: bool,
    /// MQTT username for --raw.
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT password for --raw.
    #[arg(long)]
    #[serde(skip)]
    pub password: Option<String>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct HistoryArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    pub auth: ChatAuth,
    /// Messages to store in the fill phase (spread evenly over the conversations).
    #[arg(long, short = 'M', default_value_t = 1_000_000)]
    pub messages: u64,
    /// DM conversations: sender `{prefix}s{c mod S}` with peer `{prefix}p{c}`.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub convs: usize,
    /// Sender connections of the fill phase; they are also the readers of the query phase.
    #[arg(long, short = 's', default_value_t = 10)]
    pub senders: usize,
    /// Sends in flight per sender during the fill (each waits for its sent ack).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Seconds allowed for the fill (sending and all acks); the run stops there.
    #[arg(long, default_value_t = 120.0)]
    pub fill_timeout: f64,
    /// Don't fill: query conversations an earlier run (same --tag/--user-prefix, --convs
    /// and --senders) filled.
    #[arg(long)]
    pub skip_fill: bool,
    /// Deterministic user ids: prefix `lth-{tag}` (so a later run can find the conversations).
    #[arg(long)]
    pub tag: Option<String>,
    /// `history` requests to time.
    #[arg(long, short = 'k', default_value_t = 2_000)]
    pub queries: u64,
    /// Requests per second on an open-loop timetable; 0 = one at a time.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages per page (1..=100).
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
    /// Seconds the query phase may last at most.
    #[arg(long, short = 'd', default_value_t = 60.0)]
    pub duration: f64,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 10.0)]
    pub rpc_timeout: f64,
    /// Text bytes per stored message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}
