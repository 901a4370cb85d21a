//! The embedded default backend: SQLite in WAL mode on its own threads.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// Database file. Relative paths are relative to the working directory.
    #[serde(default = "default_path")]
    pub path: PathBuf,
}

fn default_path() -> PathBuf {
    PathBuf::from("data/chatmq.db")
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig { path: default_path() }
    }
}
