//! Persistence in chat terms.
//!
//! The chat layer talks to one `Arc<dyn Store>`; SQL lives only in `sqlite/` and CQL only in
//! `scylla/`. Backend errors are mapped to [`StoreErrorKind`] so callers never see a
//! driver's error type.
//!
//! Data model (shared by every backend, and shaped for ScyllaDB's partitioning):
//! - messages keyed by `(conv, seq)`; a group message is stored once, never per member;
//! - dedup index `(sender, cid) -> (conv, seq)`;
//! - per-(user, conv) cursors `delivered_up_to` / `read_up_to`, monotonic;
//! - per-user conversation index (DMs) with last activity; groups keep their own last activity;
//! - pending offline deliveries `(recipient, message id)` for DMs, removed by a `delivered`
//!   cursor that covers them;
//! - groups, members (both directions), profiles, last seen.

use async_trait::async_trait;
use serde::Deserialize;

#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod contract;
#[cfg(feature = "scylla")]
pub mod scylla;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(not(any(feature = "sqlite", feature = "scylla")))]
compile_error!("chatmq needs a store backend: enable the `sqlite` or the `scylla` feature");

// Conversation and user ids are the protocol's vocabulary; rows are keyed by the same strings.
pub use crate::protocol::{valid_id, ConvId, ConvKind};

/// A message as stored and as delivered. `body` is the message body encoded as MessagePack
/// (a map); the store never looks inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: u64,
    pub conv: ConvId,
    pub seq: u64,
    pub from: String,
    /// Milliseconds since the Unix epoch, server time.
    pub ts: i64,
    pub cid: String,
    pub body: Vec<u8>,
    pub reply_to: Option<u64>,
}

/// A message to append. The id is assigned by the caller (Snowflake generator); the seq by
/// the store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: u64,
    pub conv: ConvId,
    pub from: String,
    pub ts: i64,
    pub cid: String,
    pub body: Vec<u8>,
    pub reply_to: Option<u64>,
}

/// What `append_message` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Newly stored with this seq.
    Stored(StoredMessage),
    /// `(from, cid)` was seen before: the original message, nothing new stored.
    Duplicate(StoredMessage),
}

impl Appended {
    pub fn message(&self) -> &StoredMessage {
        match self {
            Appended::Stored(m) | Appended::Duplicate(m) => m,
        }
    }
}

/// Which way a history page walks from its anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageDir {
    /// The newest `limit` messages with `seq < before` (or the newest overall).
    Before(Option<u64>),
    /// The oldest `limit` messages with `seq > after`.
    After(u64),
}

/// A page of history, always in ascending seq order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    /// More messages exist beyond this page in the direction walked.
    pub has_more: bool,
}

/// Which cursor a receipt moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// The cursors one user holds in one conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursors {
    pub delivered_up_to: u64,
    pub read_up_to: u64,
}

/// Result of moving a cursor: `moved` is false when `up_to` was not ahead of the stored value
/// (markers only move forward). `value` is the stored value afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CursorMove {
    pub moved: bool,
    pub value: u64,
}

/// One row of a user's conversation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conv: ConvId,
    /// Last activity, ms since the epoch (the last message's ts; creation time for an empty group).
    pub last_ts: i64,
    pub last_seq: u64,
    pub last_message: Option<StoredMessage>,
    pub cursors: Cursors,
    /// Group name for groups.
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub gid: String,
    pub name: String,
    pub created_by: String,
    pub created_ts: i64,
    pub admins: Vec<String>,
    pub member_count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub user: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub status: Option<String>,
    pub hide_last_seen: bool,
    /// Last activity (ms since the epoch), if ever seen.
    pub last_seen: Option<i64>,
}

/// A partial profile update: `None` leaves a field as it is; `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    pub display_name: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub status: Option<Option<String>>,
    pub hide_last_seen: Option<bool>,
}

/// How a membership change went, per user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// Users whose membership actually changed.
    pub changed: Vec<String>,
    /// Member count afterwards.
    pub member_count: u64,
}

/// What callers branch on. The source is kept for logs only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    NotFound,
    Conflict,
    /// A limit would be exceeded (e.g. maximum group size).
    LimitExceeded,
    Unavailable,
    Timeout,
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: StoreErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything chatmq persists. Every method is durable when it returns `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends a message, deduplicating on `(from, cid)`, and allocates the next dense seq of
    /// its conversation (starting at 1). For a DM it also records a pending delivery for the
    /// recipient (not for the sender) and moves both participants' conversation index; for a
    /// group it moves the group's last activity. Durable (committed) before it returns.
    /// Dedup is scoped by sender, not by conversation: the same `(from, cid)` sent to another
    /// conversation still answers `Duplicate` with the original.
    async fn append_message(&self, msg: NewMessage) -> StoreResult<Appended>;

    /// A page of a conversation's history (ascending seq), at most `limit` messages. With
    /// `limit` 0 the page is empty and `has_more` still tells whether any message lies that way.
    async fn history(&self, conv: &ConvId, dir: PageDir, limit: u32) -> StoreResult<HistoryPage>;

    /// One message by conversation and seq.
    async fn message(&self, conv: &ConvId, seq: u64) -> StoreResult<Option<StoredMessage>>;

    /// Undelivered DMs for `user`, oldest first (by message id), strictly after message id
    /// `after` (0 = from the start), at most `limit`.
    async fn pending(&self, user: &str, after: u64, limit: u32) -> StoreResult<Vec<StoredMessage>>;

    /// Number of undelivered DMs for `user`.
    async fn pending_count(&self, user: &str) -> StoreResult<u64>;

    /// Moves `user`'s `kind` cursor in `conv` forward to `up_to` (never backwards). A
    /// `delivered` cursor also clears `user`'s pending deliveries in `conv` with seq ≤ `up_to`.
    /// A `read` cursor implies `delivered` up to the same seq. An `up_to` beyond the
    /// conversation's last seq is clamped to it, so a marker never covers a message not yet
    /// sent. `value` is the cursor of `kind` afterwards.
    async fn set_cursor(
        &self,
        user: &str,
        conv: &ConvId,
        kind: ReceiptKind,
        up_to: u64,
    ) -> StoreResult<CursorMove>;

    /// `user`'s cursors in `conv` (zeros when none).
    async fn cursors(&self, user: &str, conv: &ConvId) -> StoreResult<Cursors>;

    /// Highest seq of a conversation (0 when empty).
    async fn last_seq(&self, conv: &ConvId) -> StoreResult<u64>;

    /// `user`'s conversations (DMs and groups they are a member of), most recent activity
    /// first (ties by conv id), with `last_ts < before` when given, at most `limit`.
    async fn conversations(
        &self,
        user: &str,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationSummary>>;

    /// Creates a group with `creator` as its admin and member, plus `members` (duplicates and
    /// the creator among them count once).
    /// `Conflict` when the gid exists; `LimitExceeded` when more than `max_members`.
    async fn create_group(
        &self,
        gid: &str,
        name: &str,
        creator: &str,
        members: &[String],
        ts: i64,
        max_members: u64,
    ) -> StoreResult<GroupInfo>;

    async fn group(&self, gid: &str) -> StoreResult<Option<GroupInfo>>;

    /// Adds members; `LimitExceeded` (and nothing added) when the group would exceed
    /// `max_members`. `NotFound` for an unknown group. `changed` lists the users actually
    /// added, in the order given; existing members are skipped.
    async fn add_members(
        &self,
        gid: &str,
        users: &[String],
        ts: i64,
        max_members: u64,
    ) -> StoreResult<MembershipChange>;

    /// Removes members (and their admin role). `NotFound` for an unknown group. `changed`
    /// lists the users who were members. A group left empty still exists.
    async fn remove_members(&self, gid: &str, users: &[String]) -> StoreResult<MembershipChange>;

    /// Grants or revokes admin (idempotent). `NotFound` for an unknown group or a user who is
    /// not a member.
    async fn set_admin(&self, gid: &str, user: &str, admin: bool) -> StoreResult<()>;

    /// False for an unknown group.
    async fn is_member(&self, gid: &str, user: &str) -> StoreResult<bool>;

    /// All members of a group, in no particular order. `NotFound` for an unknown group.
    async fn members(&self, gid: &str) -> StoreResult<Vec<String>>;

    /// Gids of the groups `user` belongs to.
    async fn groups_of(&self, user: &str) -> StoreResult<Vec<String>>;

    async fn set_profile(&self, user: &str, update: ProfileUpdate) -> StoreResult<Profile>;

    /// Profiles of the given users, one per entry in the order asked; users never seen get a
    /// default profile (with `user` set).
    async fn profiles(&self, users: &[String]) -> StoreResult<Vec<Profile>>;

    /// Records user activity at `ts` (only ever moves forward).
    async fn touch_last_seen(&self, user: &str, ts: i64) -> StoreResult<()>;

    /// A small durable write that no user sees, to learn whether the store can write again
    /// after a failure (the `/readyz` probe).
    async fn probe(&self) -> StoreResult<()>;

    /// Makes everything written so far durable and releases resources (graceful shutdown).
    /// Afterwards every other call fails with `Unavailable`; a second `flush` is a no-op.
    async fn flush(&self) -> StoreResult<()>;
}

#[cfg(feature = "sqlite")]
type SqliteSection = sqlite::SqliteConfig;
/// A backend left out of this build still parses, so that opening it can say so.
#[cfg(not(feature = "sqlite"))]
type SqliteSection = serde::de::IgnoredAny;
#[cfg(feature = "scylla")]
type ScyllaSection = Box<scylla::ScyllaConfig>;
#[cfg(not(feature = "scylla"))]
type ScyllaSection = serde::de::IgnoredAny;

/// `[store]` in broker.toml: which backend, with that backend's settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    Sqlite(SqliteSection),
    Scylla(ScyllaSection),
}

/// The error for a backend this binary was built without.
#[cfg(not(all(feature = "sqlite", feature = "scylla")))]
fn not_built(backend: &str) -> String {
    format!("store.backend: this chatmq was built without `{backend}`; rebuild with `--features {backend}`")
}

impl StoreConfig {
    /// Points the embedded store at `dir` (the `--data` flag), keeping its file name.
    pub fn set_data_dir(&mut self, dir: &std::path::Path) {
        #[cfg(feature = "sqlite")]
        if let StoreConfig::Sqlite(c) = self {
            let name = c
                .path
                .file_name()
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "chatmq.db".into());
            c.path = dir.join(name);
        }
        #[cfg(not(feature = "sqlite"))]
        let _ = dir;
    }

    /// Checks the backend's settings (`store.<key>: reason`).
    /// Settings that can lose a message after its sent ack went out (logged at startup,
    /// printed by `check-config`).
    pub fn durability_warnings(&self) -> Vec<String> {
        match self {
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(c) => c.durability_warnings(),
            #[cfg(feature = "scylla")]
            StoreConfig::Scylla(c) => c.durability_warnings(),
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(c) => c.validate(),
            #[cfg(not(feature = "sqlite"))]
            StoreConfig::Sqlite(_) => Err(not_built("sqlite")),
            #[cfg(feature = "scylla")]
            StoreConfig::Scylla(c) => c.validate(),
            #[cfg(not(feature = "scylla"))]
            StoreConfig::Scylla(_) => Err(not_built("scylla")),
        }
    }
}

/// Opens the configured backend.
pub async fn open(cfg: &StoreConfig) -> StoreResult<std::sync::Arc<dyn Store>> {
    match cfg {
        #[cfg(feature = "sqlite")]
        StoreConfig::Sqlite(c) => {
            let c = c.clone();
            let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&c))
                .await
                .map_err(|e| {
                    StoreError::new(StoreErrorKind::Internal, format!("opening the store: {e}"))
                })??;
            Ok(std::sync::Arc::new(store))
        }
        #[cfg(not(feature = "sqlite"))]
        StoreConfig::Sqlite(_) => Err(StoreError::new(
            StoreErrorKind::Internal,
            not_built("sqlite"),
        )),
        #[cfg(feature = "scylla")]
        StoreConfig::Scylla(c) => Ok(std::sync::Arc::new(scylla::ScyllaStore::connect(c).await?)),
        #[cfg(not(feature = "scylla"))]
        StoreConfig::Scylla(_) => Err(StoreError::new(
            StoreErrorKind::Internal,
            not_built("scylla"),
        )),
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sqlite(SqliteSection::default())
    }
}
