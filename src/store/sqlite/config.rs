//! `[store]` settings of the SQLite backend.

use super::*;

/// `[store]` with `backend = "sqlite"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// Database file. Relative paths are relative to the working directory; the parent
    /// directory is created when missing.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// How hard a commit is synced to disk; see [`Synchronous`].
    #[serde(default)]
    pub synchronous: Synchronous,
    /// How long a statement waits for a lock held by another connection before failing with
    /// `Timeout`. Only another process on the same file can hold one for long.
    #[serde(default = "default_busy_timeout_ms")]
    pub busy_timeout_ms: u64,
    /// Read-only connections serving reads in parallel (at least 1).
    #[serde(default = "default_read_connections")]
    pub read_connections: usize,
    /// Most write requests committed in one transaction (at least 1).
    #[serde(default = "default_group_commit_max_batch")]
    pub group_commit_max_batch: usize,
}

/// `PRAGMA synchronous` for the write connection (always in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// The WAL is fsynced only at checkpoints. A committed transaction has been written to the
    /// OS, so it survives the process being killed (SIGKILL, OOM, panic), but not a power loss
    /// or kernel crash, which can roll back the last commits.
    Normal,
    /// The WAL is fsynced at every commit: a committed transaction survives power loss too.
    /// The default, because the sent ack promises durability and group commit pays one fsync
    /// per batch, not per message.
    #[default]
    Full,
    /// `FULL`, and the directory is also synced when the WAL is reset (paranoid filesystems).
    Extra,
}

impl Synchronous {
    pub(super) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

pub(super) fn default_path() -> PathBuf {
    PathBuf::from("data/chatmq.db")
}
pub(super) fn default_busy_timeout_ms() -> u64 {
    5_000
}
pub(super) fn default_read_connections() -> usize {
    4
}
pub(super) fn default_group_commit_max_batch() -> usize {
    512
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: default_path(),
            synchronous: Synchronous::default(),
            busy_timeout_ms: default_busy_timeout_ms(),
            read_connections: default_read_connections(),
            group_commit_max_batch: default_group_commit_max_batch(),
        }
    }
}

impl SqliteConfig {
    /// Settings that can lose a message after its sent ack went out.
    pub fn durability_warnings(&self) -> Vec<String> {
        match self.synchronous {
            Synchronous::Normal => vec![
                "store.synchronous = \"normal\": the WAL is not synced at commit, so a power \
                 loss or kernel crash can roll back messages whose sent ack went out; use \
                 \"full\" (the default)"
                    .into(),
            ],
            Synchronous::Full | Synchronous::Extra => Vec::new(),
        }
    }

    /// Checks the settings; the error names the key and the reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("store.path: must not be empty".into());
        }
        if self.path.as_os_str() == ":memory:" {
            // Every connection would get its own private database.
            return Err("store.path: an in-memory database is not supported".into());
        }
        if self.read_connections == 0 {
            return Err("store.read_connections: must be at least 1".into());
        }
        if self.group_commit_max_batch == 0 {
            return Err("store.group_commit_max_batch: must be at least 1".into());
        }
        Ok(())
    }
}
