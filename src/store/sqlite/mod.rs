//! The embedded default backend: SQLite in WAL mode on its own threads.
//!
//! - One **writer thread** owns the only write connection. Writes reach it over a channel; it
//!   takes everything already queued (up to `group_commit_max_batch`) and runs it in ONE
//!   transaction, each request inside its own SAVEPOINT so a failing request is rolled back
//!   alone. Every caller is answered only after COMMIT, so a burst of messages shares one fsync
//!   (group commit) and an `Ok` always means durable.
//! - Reads run on a small pool of read-only connections through `spawn_blocking`; WAL lets them
//!   proceed while the writer commits, and they see every write that has been answered.
//!
//! No SQLite call ever runs on an async worker thread.
//!
//! Encoding: message ids and `reply_to` are u64 bit-cast to INTEGER (i64). Seqs and cursors
//! fit i64; a larger value coming from a client is clamped. The schema is
//! `schema/sqlite.sql`, applied at every open.

mod config;
mod errors;
mod groups;
mod messages;
mod profiles;
mod rows;
mod writer;

pub use config::{SqliteConfig, Synchronous};
use errors::*;
use groups::*;
use messages::*;
use profiles::*;
use rows::*;
use writer::*;

use super::{
    Appended, ConvId, ConvKind, ConversationSummary, CursorMove, Cursors, GroupInfo, HistoryPage,
    MembershipChange, NewMessage, PageDir, Profile, ProfileUpdate, ReceiptKind, Store, StoreError,
    StoreErrorKind, StoreResult, StoredMessage,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};
use serde::Deserialize;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

const SCHEMA: &str = include_str!("../../../schema/sqlite.sql");

/// Stored in `PRAGMA user_version`. Bump it with every schema change that needs more than
/// `CREATE ... IF NOT EXISTS` (and add the migration to `apply_schema`).
const SCHEMA_VERSION: i32 = 1;

/// The SQLite [`Store`]. See the module docs for the threading model.
pub struct SqliteStore {
    /// `None` once flushed: writes are refused from then on.
    writer: Mutex<Option<mpsc::Sender<Command>>>,
    readers: Arc<ReadPool>,
    commits: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating when needed) the database, applies the schema and starts the writer
    /// thread. Blocking (file I/O): call it at startup, or through `spawn_blocking`.
    pub fn open(cfg: &SqliteConfig) -> StoreResult<SqliteStore> {
        cfg.validate()
            .map_err(|reason| StoreError::new(StoreErrorKind::Internal, reason))?;
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::with_source(
                    StoreErrorKind::Unavailable,
                    format!("creating {}", dir.display()),
                    e,
                )
            })?;
        }
        let busy_timeout = Duration::from_millis(cfg.busy_timeout_ms);

        let conn = Connection::open(&cfg.path).map_err(|e| open_error(cfg, e))?;
        configure_writer(&conn, cfg, busy_timeout).map_err(StoreError::from)?;

        // Readers open after the writer so the file exists and is already in WAL mode.
        let mut readers = Vec::with_capacity(cfg.read_connections);
        for _ in 0..cfg.read_connections {
            let reader = Connection::open_with_flags(
                &cfg.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(|e| open_error(cfg, e))?;
            reader
                .busy_timeout(busy_timeout)
                .map_err(|e| StoreError::from(Fail::from(e)))?;
            reader.set_prepared_statement_cache_capacity(32);
            readers.push(reader);
        }

        // Bounded so a stalled disk pushes back on senders instead of growing memory.
        let (tx, rx) = mpsc::channel(cfg.group_commit_max_batch.saturating_mul(8).max(64));
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            conn,
            rx,
            max_batch: cfg.group_commit_max_batch,
            commits: commits.clone(),
        };
        std::thread::Builder::new()
            .name("chatmq-sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| {
                StoreError::with_source(StoreErrorKind::Internal, "spawning writer thread", e)
            })?;

        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            readers: Arc::new(ReadPool {
                permits: Arc::new(Semaphore::new(readers.len())),
                conns: Mutex::new(readers),
                closed: AtomicBool::new(false),
            }),
            commits,
        })
    }

    /// Write transactions committed so far. Each carries one or more requests, so under load
    /// this grows much slower than the number of writes (group commit).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `work` on the writer thread inside the current batch's transaction and returns
    /// its result once that transaction has committed.
    async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
    {
        // Clone and release at once: the lock is never held across an await.
        let sender = self.writer.lock().clone().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work: Some(work),
            result: None,
            reply,
        };
        sender
            .send(Command::Write(Box::new(job)))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Runs `work` on a pooled read-only connection on a blocking thread.
    async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let permit = pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        if pool.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let conn = pool.conns.lock().pop().ok_or_else(closed)?;
        let task = tokio::task::spawn_blocking(move || {
            let result = catch_unwind(AssertUnwindSafe(|| work(&conn)));
            // The connection goes back here, not in the caller: a caller that stops waiting
            // (cancelled future) must not leak it.
            if !pool.closed.load(Ordering::Acquire) {
                pool.conns.lock().push(conn);
            }
            drop(permit);
            result
        });
        match task.await {
            Ok(Ok(result)) => result.map_err(StoreError::from),
            Ok(Err(_)) => Err(StoreError::new(
                StoreErrorKind::Internal,
                "store read panicked",
            )),
            Err(e) => Err(StoreError::with_source(
                StoreErrorKind::Internal,
                "store read task failed",
                e,
            )),
        }
    }
}

fn open_error(cfg: &SqliteConfig, e: rusqlite::Error) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Unavailable,
        format!("opening {}", cfg.path.display()),
        e,
    )
}

fn configure_writer(conn: &Connection, cfg: &SqliteConfig, busy: Duration) -> DbResult<()> {
    conn.busy_timeout(busy)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail(
            StoreErrorKind::Unavailable,
            format!("{}: cannot use WAL mode (got {mode})", cfg.path.display()),
        ));
    }
    conn.pragma_update(None, "synchronous", cfg.synchronous.pragma())?;
    // A burst can grow the WAL far beyond its steady size; trim it back after checkpoints.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // The settings as SQLite took them, for the operator: they decide what a sent ack means.
    let synchronous: i64 = conn.pragma_query_value(None, "synchronous", |row| row.get(0))?;
    let synchronous = match synchronous {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "unknown",
    };
    tracing::info!(
        path = %cfg.path.display(),
        journal_mode = %mode,
        synchronous,
        group_commit_max_batch = cfg.group_commit_max_batch,
        "sqlite store: each group commit is one transaction, acknowledged only after it commits"
    );
    conn.set_prepared_statement_cache_capacity(64);
    apply_schema(conn)
}

fn apply_schema(conn: &Connection) -> DbResult<()> {
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(fail(
            StoreErrorKind::Internal,
            format!(
                "database schema version {version} is newer than this build's \
                 {SCHEMA_VERSION}; refusing to touch it"
            ),
        ));
    }
    // One transaction: a crash half way leaves the previous state, never half a schema.
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn append_message(&self, msg: NewMessage) -> StoreResult<Appended> {
        self.write(move |conn| append(conn, msg)).await
    }

    async fn history(&self, conv: &ConvId, dir: PageDir, limit: u32) -> StoreResult<HistoryPage> {
        let conv = conv.0.clone();
        self.read(move |conn| history(conn, &conv, dir, limit))
            .await
    }

    async fn message(&self, conv: &ConvId, seq: u64) -> StoreResult<Option<StoredMessage>> {
        let conv = conv.0.clone();
        self.read(move |conn| message(conn, &conv, seq)).await
    }

    async fn pending(&self, user: &str, after: u64, limit: u32) -> StoreResult<Vec<StoredMessage>> {
        let user = user.to_owned();
        self.read(move |conn| pending(conn, &user, after, limit))
            .await
    }

    async fn pending_count(&self, user: &str) -> StoreResult<u64> {
        let user = user.to_owned();
        self.read(move |conn| pending_count(conn, &user)).await
    }

    async fn set_cursor(
        &self,
        user: &str,
        conv: &ConvId,
        kind: ReceiptKind,
        up_to: u64,
    ) -> StoreResult<CursorMove> {
        let (user, conv) = (user.to_owned(), conv.0.clone());
        self.write(move |conn| set_cursor(conn, &user, &conv, kind, up_to))
            .await
    }

    async fn cursors(&self, user: &str, conv: &ConvId) -> StoreResult<Cursors> {
        let (user, conv) = (user.to_owned(), conv.0.clone());
        self.read(move |conn| {
            let (delivered, read) = cursors(conn, &user, &conv)?;
            Ok(Cursors {
                delivered_up_to: seq_from_sql(delivered),
                read_up_to: seq_from_sql(read),
            })
        })
        .await
    }

    async fn last_seq(&self, conv: &ConvId) -> StoreResult<u64> {
        let conv = conv.0.clone();
        self.read(move |conn| last_seq(conn, &conv).map(seq_from_sql))
            .await
    }

    async fn conversations(
        &self,
        user: &str,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationSummary>> {
        let user = user.to_owned();
        self.read(move |conn| conversations(conn, &user, before, limit))
            .await
    }

    async fn create_group(
        &self,
        gid: &str,
        name: &str,
        creator: &str,
        members: &[String],
        ts: i64,
        max_members: u64,
    ) -> StoreResult<GroupInfo> {
        let (gid, name, creator) = (gid.to_owned(), name.to_owned(), creator.to_owned());
        let members = members.to_vec();
        self.write(move |conn| create_group(conn, &gid, &name, &creator, &members, ts, max_members))
            .await
    }

    async fn group(&self, gid: &str) -> StoreResult<Option<GroupInfo>> {
        let gid = gid.to_owned();
        self.read(move |conn| group(conn, &gid)).await
    }

    async fn add_members(
        &self,
        gid: &str,
        users: &[String],
        ts: i64,
        max_members: u64,
    ) -> StoreResult<MembershipChange> {
        let (gid, users) = (gid.to_owned(), users.to_vec());
        self.write(move |conn| add_members(conn, &gid, &users, ts, max_members))
            .await
    }

    async fn remove_members(&self, gid: &str, users: &[String]) -> StoreResult<MembershipChange> {
        let (gid, users) = (gid.to_owned(), users.to_vec());
        self.write(move |conn| remove_members(conn, &gid, &users))
            .await
    }

    async fn set_admin(&self, gid: &str, user: &str, admin: bool) -> StoreResult<()> {
        let (gid, user) = (gid.to_owned(), user.to_owned());
        self.write(move |conn| set_admin(conn, &gid, &user, admin))
            .await
    }

    async fn is_member(&self, gid: &str, user: &str) -> StoreResult<bool> {
        let (gid, user) = (gid.to_owned(), user.to_owned());
        self.read(move |conn| is_member(conn, &gid, &user)).await
    }

    async fn members(&self, gid: &str) -> StoreResult<Vec<String>> {
        let gid = gid.to_owned();
        self.read(move |conn| members(conn, &gid)).await
    }

    async fn groups_of(&self, user: &str) -> StoreResult<Vec<String>> {
        let user = user.to_owned();
        self.read(move |conn| groups_of(conn, &user)).await
    }

    async fn set_profile(&self, user: &str, update: ProfileUpdate) -> StoreResult<Profile> {
        let user = user.to_owned();
        self.write(move |conn| set_profile(conn, &user, update))
            .await
    }

    async fn profiles(&self, users: &[String]) -> StoreResult<Vec<Profile>> {
        let users = users.to_vec();
        self.read(move |conn| profiles(conn, &users)).await
    }

    async fn touch_last_seen(&self, user: &str, ts: i64) -> StoreResult<()> {
        let user = user.to_owned();
        self.write(move |conn| touch_last_seen(conn, &user, ts))
            .await
    }

    async fn probe(&self) -> StoreResult<()> {
        self.write(|conn| {
            conn.prepare_cached(
                "INSERT INTO health_probe (id, ts) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET ts = excluded.ts",
            )?
            .execute(params![crate::clock::now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> StoreResult<()> {
        let sender = self.writer.lock().take();
        // Readers first: an open read snapshot would keep the checkpoint from truncating.
        self.readers.close();
        let Some(sender) = sender else {
            return Ok(()); // already flushed
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(Command::Flush(reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn config(dir: &TempDir) -> SqliteConfig {
        SqliteConfig {
            // A missing parent directory is created by `open`.
            path: dir.path().join("data").join("chatmq.db"),
            ..SqliteConfig::default()
        }
    }

    async fn make() -> (Arc<dyn Store>, TempDir) {
        let dir = TempDir::new().expect("temp dir");
        let store = SqliteStore::open(&config(&dir)).expect("open");
        (Arc::new(store), dir)
    }

    mod contract {
        crate::store_contract_tests!(super::make);
    }

    fn message(conv: &ConvId, from: &str) -> NewMessage {
        NewMessage {
            id: crate::store::contract::next_id(),
            conv: conv.clone(),
            from: from.to_owned(),
            ts: 1,
            cid: crate::store::contract::unique("cid"),
            body: b"x".to_vec(),
            reply_to: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_and_seq_survive_reopen() {
        let dir = TempDir::new().expect("temp dir");
        let cfg = config(&dir);
        let conv = ConvId::direct("alice", "bob");
        let first = {
            let store = SqliteStore::open(&cfg).expect("open");
            for _ in 0..3 {
                store
                    .append_message(message(&conv, "alice"))
                    .await
                    .expect("append");
            }
            store
                .set_cursor("bob", &conv, ReceiptKind::Delivered, 1)
                .await
                .expect("set_cursor");
            store.message(&conv, 1).await.expect("message")
            // Dropped without flush: an acknowledged write must already be on disk.
        };
        let store = SqliteStore::open(&cfg).expect("reopen");
        assert_eq!(store.message(&conv, 1).await.expect("message"), first);
        assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 3);
        let next = store
            .append_message(message(&conv, "bob"))
            .await
            .expect("append");
        assert_eq!(next.message().seq, 4, "seq continues after reopen");
        assert_eq!(store.pending_count("bob").await.expect("pending_count"), 2);
        assert_eq!(
            store
                .cursors("bob", &conv)
                .await
                .expect("cursors")
                .delivered_up_to,
            1
        );
        store.flush().await.expect("flush");
        drop(store);
        // And after a clean shutdown (WAL checkpointed and truncated).
        let store = SqliteStore::open(&cfg).expect("reopen after flush");
        assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 4);
    }

    const KILL_CHILD_ENV: &str = "CHATMQ_TEST_SQLITE_KILL_CHILD";

    /// The durability promise end to end: a process appends as fast as it can and is
    /// SIGKILLed mid-stream; every append it had been answered `Ok` for must be there after
    /// reopening. The test binary re-runs itself as the child.
    #[test]
    fn acknowledged_writes_survive_sigkill() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        if let Ok(path) = std::env::var(KILL_CHILD_ENV) {
            return sigkill_child(PathBuf::from(path));
        }
        let dir = TempDir::new().expect("temp dir");
        let cfg = config(&dir);
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "store::sqlite::tests::acknowledged_writes_survive_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_ENV, &cfg.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read child");
            if let Some(rest) = line.strip_prefix("acked ") {
                let mut parts = rest.split(' ');
                let seq: u64 = parts.next().and_then(|s| s.parse().ok()).expect("seq");
                let id: u64 = parts.next().and_then(|s| s.parse().ok()).expect("id");
                acked.push((seq, id));
                if acked.len() == 300 {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL child"); // SIGKILL on Unix: no destructor, no flush runs
        let _ = child.wait();
        assert_eq!(acked.len(), 300, "child stopped early");

        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let store = SqliteStore::open(&cfg).expect("reopen after kill");
            let conv = ConvId::group("kill");
            let last = store.last_seq(&conv).await.expect("last_seq");
            for (seq, id) in &acked {
                let m = store.message(&conv, *seq).await.expect("message");
                assert_eq!(m.map(|m| m.id), Some(*id), "acked seq {seq} lost");
                assert!(*seq <= last);
            }
            // Whatever else was committed is dense too.
            let page = store
                .history(&conv, PageDir::After(0), 100_000)
                .await
                .expect("history");
            assert_eq!(seqs_of(&page.messages), (1..=last).collect::<Vec<u64>>());
        });
    }

    fn seqs_of(messages: &[StoredMessage]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    fn sigkill_child(path: PathBuf) {
        use std::io::Write;
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let cfg = SqliteConfig {
                path,
                ..SqliteConfig::default()
            };
            let store = Arc::new(SqliteStore::open(&cfg).expect("open"));
            let conv = ConvId::group("kill");
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (store, conv) = (store.clone(), conv.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let Ok(done) = store.append_message(message(&conv, "alice")).await else {
                            return;
                        };
                        let m = done.message();
                        // Straight to the pipe (not the test harness's capture), after the ack.
                        let mut out = std::io::stdout().lock();
                        if writeln!(out, "acked {} {}", m.seq, m.id)
                            .and_then(|()| out.flush())
                            .is_err()
                        {
                            return;
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    }

    #[test]
    fn schema_version_recorded_and_newer_refused() {
        let dir = TempDir::new().expect("temp dir");
        let cfg = config(&dir);
        drop(SqliteStore::open(&cfg).expect("open"));
        drop(SqliteStore::open(&cfg).expect("schema applies twice"));
        let conn = Connection::open(&cfg.path).expect("raw open");
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        drop(conn);
        let err = SqliteStore::open(&cfg).err().expect("newer schema refused");
        assert_eq!(err.kind, StoreErrorKind::Internal);
    }

    #[test]
    fn bad_config_refused() {
        for cfg in [
            SqliteConfig {
                read_connections: 0,
                ..SqliteConfig::default()
            },
            SqliteConfig {
                group_commit_max_batch: 0,
                ..SqliteConfig::default()
            },
            SqliteConfig {
                path: PathBuf::from(":memory:"),
                ..SqliteConfig::default()
            },
        ] {
            assert!(cfg.validate().is_err());
            assert!(SqliteStore::open(&cfg).is_err());
        }
        let cfg: SqliteConfig =
            toml::from_str("path = \"x.db\"\nsynchronous = \"normal\"\nread_connections = 2")
                .expect("parse");
        assert_eq!(cfg.synchronous, Synchronous::Normal);
        assert_eq!(cfg.group_commit_max_batch, 512);
        assert!(toml::from_str::<SqliteConfig>("nope = 1").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits() {
        let (store, _dir) = make_sqlite().await;
        let store = Arc::new(store);
        let conv = ConvId::group("busy");
        let before = store.commits();
        let mut tasks = Vec::new();
        for _ in 0..500 {
            let (store, conv) = (store.clone(), conv.clone());
            tasks.push(tokio::spawn(async move {
                store.append_message(message(&conv, "alice")).await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("append");
        }
        let commits = store.commits() - before;
        assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 500);
        assert!(
            commits < 500,
            "500 writes took {commits} commits: no group commit"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_respect_max_size() {
        let dir = TempDir::new().expect("temp dir");
        let store = Arc::new(
            SqliteStore::open(&SqliteConfig {
                group_commit_max_batch: 16,
                ..config(&dir)
            })
            .expect("open"),
        );
        let conv = ConvId::group("bounded");
        let before = store.commits();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (store, conv) = (store.clone(), conv.clone());
            tasks.push(tokio::spawn(async move {
                store.append_message(message(&conv, "alice")).await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("append");
        }
        assert!(store.commits() - before >= 200 / 16);
        assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 200);
    }

    async fn make_sqlite() -> (SqliteStore, TempDir) {
        let dir = TempDir::new().expect("temp dir");
        (SqliteStore::open(&config(&dir)).expect("open"), dir)
    }

    /// Occupies the writer so the following requests queue up and land in one batch.
    /// Returns once the writer is busy with it.
    async fn hold_writer(store: &Arc<SqliteStore>) -> tokio::task::JoinHandle<StoreResult<()>> {
        let store = store.clone();
        let (started, busy) = oneshot::channel();
        let handle = tokio::spawn(async move {
            store
                .write(move |_| {
                    let _ = started.send(());
                    std::thread::sleep(Duration::from_millis(500));
                    Ok(())
                })
                .await
        });
        busy.await.expect("writer picked up the hold");
        handle
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_request_does_not_fail_its_batch() {
        let (store, _dir) = make_sqlite().await;
        let store = Arc::new(store);
        let conv = ConvId::direct("alice", "bob");
        let hold = hold_writer(&store).await;
        let before = store.commits();

        let good1 = tokio::spawn({
            let store = store.clone();
            let msg = message(&conv, "alice");
            async move { store.append_message(msg).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Writes half of a message, then hits a constraint: its half must vanish.
        let bad = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(|conn| {
                        conn.execute(
                            "INSERT INTO messages (conv, seq, id, sender, ts, cid, body)
                             VALUES ('g:ghost', 1, 1, 'x', 1, 'c', x'00')",
                            [],
                        )?;
                        conn.execute(
                            "INSERT INTO dedup (sender, cid, conv, seq)
                             VALUES ('x', 'c', 'g:ghost', 1), ('x', 'c', 'g:ghost', 1)",
                            [],
                        )?;
                        Ok(())
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let panicking = tokio::spawn({
            let store = store.clone();
            async move { store.write(|_| -> DbResult<()> { panic!("bug") }).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let good2 = tokio::spawn({
            let store = store.clone();
            let msg = message(&conv, "bob");
            async move { store.append_message(msg).await }
        });

        hold.await.expect("task").expect("hold");
        let seq1 = good1.await.expect("task").expect("append").message().seq;
        let err = bad.await.expect("task").expect_err("constraint violation");
        assert_eq!(err.kind, StoreErrorKind::Conflict);
        let err = panicking.await.expect("task").expect_err("panic reported");
        assert_eq!(err.kind, StoreErrorKind::Internal);
        let seq2 = good2.await.expect("task").expect("append").message().seq;
        assert_eq!(seq1 + seq2, 3, "both stored, seqs 1 and 2");
        assert_eq!(
            store.commits() - before,
            2,
            "hold, then one batch for the rest"
        );

        let ghost = ConvId::group("ghost");
        assert_eq!(store.message(&ghost, 1).await.expect("message"), None);
        assert_eq!(store.pending_count("bob").await.expect("pending_count"), 1);
        // The writer survived the panic.
        store
            .append_message(message(&conv, "alice"))
            .await
            .expect("append");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_reads_return_their_connection() {
        let (store, _dir) = make_sqlite().await;
        let conv = ConvId::group("g");
        for _ in 0..20 {
            // Dropping the future right after it started must not leak a pooled connection.
            let read = store.history(&conv, PageDir::Before(None), 10);
            let _ = tokio::time::timeout(Duration::from_micros(1), read).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..10 {
            store
                .history(&conv, PageDir::Before(None), 10)
                .await
                .expect("history");
        }
        assert_eq!(store.readers.conns.lock().len(), 4);
    }

    #[test]
    fn conversations_query_uses_indexes() {
        let dir = TempDir::new().expect("temp dir");
        let cfg = config(&dir);
        drop(SqliteStore::open(&cfg).expect("open"));
        let conn = Connection::open(&cfg.path).expect("raw open");
        let plan = |sql: &str| -> String {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("explain");
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(3))
                .expect("plan")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("rows");
            rows.join("\n")
        };
        let dm = plan(
            "SELECT conv, last_ts FROM dm_index WHERE user = 'u' AND last_ts < 5
             ORDER BY last_ts DESC LIMIT 10",
        );
        assert!(dm.contains("dm_index_by_activity"), "{dm}");
        assert!(!dm.contains("TEMP B-TREE"), "{dm}");
        let groups = plan(
            "SELECT g.gid FROM group_members gm JOIN chat_groups g ON g.gid = gm.gid
             WHERE gm.user = 'u' AND g.last_ts < 5",
        );
        assert!(groups.contains("group_members_by_user"), "{groups}");
        let pending = plan(
            "SELECT m.id FROM pending p JOIN messages m ON m.conv = p.conv AND m.seq = p.seq
             WHERE p.recipient = 'u' AND p.msg_id > 0 ORDER BY p.msg_id LIMIT 5",
        );
        assert!(!pending.contains("SCAN"), "{pending}");
    }

    #[test]
    fn id_order_key_preserves_u64_order() {
        let ids = [0, 1, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
        for pair in ids.windows(2) {
            assert!(id_order_key(pair[0]) < id_order_key(pair[1]));
        }
        assert_eq!(id_from_sql(id_to_sql(u64::MAX)), u64::MAX);
        assert_eq!(seq_to_sql(u64::MAX), i64::MAX);
    }
}
