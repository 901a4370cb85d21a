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

const SCHEMA: &str = include_str!("../../schema/sqlite.sql");

/// Stored in `PRAGMA user_version`. Bump it with every schema change that needs more than
/// `CREATE ... IF NOT EXISTS` (and add the migration to `apply_schema`).
const SCHEMA_VERSION: i32 = 1;

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
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("data/chatmq.db")
}
fn default_busy_timeout_ms() -> u64 {
    5_000
}
fn default_read_connections() -> usize {
    4
}
fn default_group_commit_max_batch() -> usize {
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

// ---------------------------------------------------------------------------------------------
// Errors

/// Internal error of one request: either SQLite's or an already classified one. Converted
/// to [`StoreError`] at the request boundary so the driver's type never leaves this file.
enum Fail {
    Sql(rusqlite::Error),
    Store(StoreError),
}

type DbResult<T> = Result<T, Fail>;

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Fail {
        Fail::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> StoreError {
        match f {
            Fail::Store(e) => e,
            Fail::Sql(e) => {
                let kind = match &e {
                    rusqlite::Error::SqliteFailure(err, _) => match err.code {
                        // Only reached after `busy_timeout` expired.
                        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                            StoreErrorKind::Timeout
                        }
                        ErrorCode::ConstraintViolation => StoreErrorKind::Conflict,
                        ErrorCode::CannotOpen
                        | ErrorCode::ReadOnly
                        | ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::PermissionDenied
                        | ErrorCode::NotADatabase
                        | ErrorCode::DatabaseCorrupt
                        | ErrorCode::FileLockingProtocolFailed
                        | ErrorCode::NoLargeFileSupport => StoreErrorKind::Unavailable,
                        _ => StoreErrorKind::Internal,
                    },
                    rusqlite::Error::QueryReturnedNoRows => StoreErrorKind::NotFound,
                    _ => StoreErrorKind::Internal,
                };
                StoreError::with_source(kind, "sqlite", e)
            }
        }
    }
}

fn fail(kind: StoreErrorKind, message: impl Into<String>) -> Fail {
    Fail::Store(StoreError::new(kind, message))
}

fn closed() -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, "store is closed")
}

// ---------------------------------------------------------------------------------------------
// Writer thread and group commit

enum Command {
    Write(Box<dyn WriteJob>),
    /// Commit what is queued, checkpoint the WAL, answer, and stop.
    Flush(oneshot::Sender<StoreResult<()>>),
}

/// A write request with its result type erased, so one queue carries every kind of write.
trait WriteJob: Send {
    /// Runs the request inside the batch transaction; `false` when it failed, and its
    /// savepoint must be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: with its own result, or with `batch_error` when the batch did not
    /// commit.
    fn answer(self: Box<Self>, batch_error: Option<&StoreError>);
}

struct Job<T, F> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> DbResult<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A bug in one request must not take the writer thread (and every later write) down.
        let result = match catch_unwind(AssertUnwindSafe(|| work(conn))) {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Internal,
                "store write panicked",
            )),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, batch_error: Option<&StoreError>) {
        let result = match (self.result, batch_error) {
            // The request's own error explains more than the batch's.
            (Some(Err(own)), _) => Err(own),
            (_, Some(e)) => Err(StoreError::new(e.kind, e.message.clone())),
            (Some(Ok(value)), None) => Ok(value),
            (None, None) => Err(StoreError::new(
                StoreErrorKind::Internal,
                "write request never ran",
            )),
        };
        // The caller may have stopped waiting; the write stands either way.
        let _ = self.reply.send(result);
    }
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    max_batch: usize,
    commits: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(self.max_batch);
        // Ends when every sender is gone (store dropped) or after a flush.
        while let Some(first) = self.rx.blocking_recv() {
            let mut flush = None;
            match first {
                Command::Write(job) => batch.push(job),
                Command::Flush(reply) => flush = Some(reply),
            }
            // Group commit: whatever queued up while the previous batch was committing
            // rides along in this transaction.
            while flush.is_none() && batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Command::Write(job)) => batch.push(job),
                    Ok(Command::Flush(reply)) => flush = Some(reply),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if let Some(reply) = flush {
                let result = self.checkpoint();
                self.rx.close();
                let _ = reply.send(result);
                // Requests that raced with the flush are refused, not dropped silently.
                while let Ok(command) = self.rx.try_recv() {
                    match command {
                        Command::Write(job) => job.answer(Some(&closed())),
                        Command::Flush(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
                return;
            }
        }
    }

    /// Runs `batch` in one transaction, one savepoint per request, and answers every request
    /// after the outcome of COMMIT is known.
    fn commit(&mut self, batch: &mut Vec<Box<dyn WriteJob>>) {
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let e = StoreError::from(Fail::from(e));
            tracing::error!(error = %e, "store: cannot begin write transaction");
            for job in batch.drain(..) {
                job.answer(Some(&e));
            }
            return;
        }
        let mut aborted: Option<StoreError> = None;
        for job in batch.iter_mut() {
            if let Err(e) = self.conn.execute_batch("SAVEPOINT request") {
                aborted = Some(Fail::from(e).into());
                break;
            }
            let ok = job.run(&self.conn);
            let end = if ok {
                self.conn.execute_batch("RELEASE request")
            } else {
                self.conn
                    .execute_batch("ROLLBACK TO request; RELEASE request")
            };
            // Some errors (I/O, disk full) make SQLite roll back the whole transaction: then
            // nothing of this batch is kept and nobody may be told otherwise.
            if let Err(e) = end {
                aborted = Some(Fail::from(e).into());
                break;
            }
            if self.conn.is_autocommit() {
                aborted = Some(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "write transaction rolled back by the database",
                ));
                break;
            }
        }
        let outcome = match aborted {
            None => self
                .conn
                .execute_batch("COMMIT")
                .map_err(|e| Fail::from(e).into()),
            Some(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                for job in batch.drain(..) {
                    job.answer(None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "store: write batch failed");
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                for job in batch.drain(..) {
                    job.answer(Some(&e));
                }
            }
        }
    }

    fn checkpoint(&self) -> StoreResult<()> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .map_err(|e| StoreError::from(Fail::from(e)))?;
        if busy != 0 {
            // Another process is reading. Every commit is already durable in the WAL (with
            // synchronous=FULL), so this only leaves the WAL file larger.
            tracing::warn!("store: WAL checkpoint incomplete at flush, readers still active");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Read pool

struct ReadPool {
    conns: Mutex<Vec<Connection>>,
    /// One permit per connection: waiting for a connection is async, never a blocked thread.
    permits: Arc<Semaphore>,
    closed: AtomicBool,
}

impl ReadPool {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        self.conns.lock().clear();
    }
}

// ---------------------------------------------------------------------------------------------
// Value encoding

/// Seqs and cursors are dense counters far below 2^63; a larger value can only come from a
/// client, and means "beyond everything".
fn seq_to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_from_sql(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// Ids are opaque u64: stored bit for bit.
fn id_to_sql(id: u64) -> i64 {
    id as i64
}

fn id_from_sql(id: i64) -> u64 {
    id as u64
}

/// Pending deliveries are walked in id order, so their key must sort like the u64 it came
/// from: flipping the top bit maps u64 order onto i64 order exactly.
fn id_order_key(id: u64) -> i64 {
    (id ^ (1 << 63)) as i64
}

fn limit_to_sql(limit: u32) -> i64 {
    i64::from(limit)
}

/// Columns `conv, seq, id, sender, ts, cid, body, reply_to` starting at `at`.
fn message_at(row: &Row<'_>, at: usize) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        conv: ConvId(row.get(at)?),
        seq: seq_from_sql(row.get(at + 1)?),
        id: id_from_sql(row.get(at + 2)?),
        from: row.get(at + 3)?,
        ts: row.get(at + 4)?,
        cid: row.get(at + 5)?,
        body: row.get(at + 6)?,
        reply_to: row.get::<_, Option<i64>>(at + 7)?.map(id_from_sql),
    })
}

fn message_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    message_at(row, 0)
}

/// Keeps the first occurrence of each user, in order.
fn distinct(users: &[String]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(users.len());
    users
        .iter()
        .filter(|u| seen.insert(u.as_str()))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Requests. Each runs on one connection: writes inside the writer's batch transaction.

fn append(conn: &Connection, msg: NewMessage) -> DbResult<Appended> {
    let original = conn
        .prepare_cached(
            "SELECT m.conv, m.seq, m.id, m.sender, m.ts, m.cid, m.body, m.reply_to
             FROM dedup d JOIN messages m ON m.conv = d.conv AND m.seq = d.seq
             WHERE d.sender = ?1 AND d.cid = ?2",
        )?
        .query_row(params![msg.from, msg.cid], message_row)
        .optional()?;
    if let Some(original) = original {
        return Ok(Appended::Duplicate(original));
    }

    let kind = msg.conv.kind().ok_or_else(|| {
        fail(
            StoreErrorKind::Internal,
            format!("invalid conversation id {:?}", msg.conv.as_str()),
        )
    })?;
    if let ConvKind::Direct { .. } = kind {
        if kind.peer_of(&msg.from).is_none() {
            return Err(fail(
                StoreErrorKind::Internal,
                format!("{} is not a participant of {}", msg.from, msg.conv),
            ));
        }
    }

    // The seq comes from the conversation row inside this (single-writer) transaction, so it
    // is dense and never reused, whatever the concurrency of callers.
    let seq: i64 = conn
        .prepare_cached(
            "INSERT INTO conversations (conv, last_seq) VALUES (?1, 1)
             ON CONFLICT (conv) DO UPDATE SET last_seq = last_seq + 1
             RETURNING last_seq",
        )?
        .query_row([msg.conv.as_str()], |row| row.get(0))?;
    conn.prepare_cached(
        "INSERT INTO messages (conv, seq, id, sender, ts, cid, body, reply_to)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        msg.conv.as_str(),
        seq,
        id_to_sql(msg.id),
        msg.from,
        msg.ts,
        msg.cid,
        msg.body,
        msg.reply_to.map(id_to_sql),
    ])?;
    conn.prepare_cached("INSERT INTO dedup (sender, cid, conv, seq) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![msg.from, msg.cid, msg.conv.as_str(), seq])?;

    match kind {
        ConvKind::Direct { a, b } => {
            let mut index = conn.prepare_cached(
                "INSERT INTO dm_index (user, conv, last_ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, conv) DO UPDATE SET last_ts = excluded.last_ts",
            )?;
            index.execute(params![a, msg.conv.as_str(), msg.ts])?;
            if a != b {
                index.execute(params![b, msg.conv.as_str(), msg.ts])?;
            }
            // A note to self has nobody else to deliver to.
            let recipient = if msg.from == a { b } else { a };
            if recipient != msg.from {
                conn.prepare_cached(
                    "INSERT INTO pending (recipient, msg_id, conv, seq) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    recipient,
                    id_order_key(msg.id),
                    msg.conv.as_str(),
                    seq
                ])?;
            }
        }
        ConvKind::Group { gid } => {
            conn.prepare_cached("UPDATE chat_groups SET last_ts = ?2 WHERE gid = ?1")?
                .execute(params![gid, msg.ts])?;
        }
    }

    Ok(Appended::Stored(StoredMessage {
        id: msg.id,
        seq: seq_from_sql(seq),
        conv: msg.conv,
        from: msg.from,
        ts: msg.ts,
        cid: msg.cid,
        body: msg.body,
        reply_to: msg.reply_to,
    }))
}

fn history(conn: &Connection, conv: &str, dir: PageDir, limit: u32) -> DbResult<HistoryPage> {
    // One extra row tells whether there is more beyond the page.
    let probe = limit_to_sql(limit) + 1;
    let mut messages = match dir {
        PageDir::Before(before) => {
            let before = before.map_or(i64::MAX, seq_to_sql);
            let mut rows = conn
                .prepare_cached(
                    "SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages
                     WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                )?
                .query_map(params![conv, before, probe], message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            rows
        }
        PageDir::After(after) => conn
            .prepare_cached(
                "SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages
                 WHERE conv = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3",
            )?
            .query_map(params![conv, seq_to_sql(after), probe], message_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = messages.len() > limit;
    if has_more {
        match dir {
            // Walking backwards, the extra row is the oldest one, at the front.
            PageDir::Before(_) => {
                messages.remove(0);
            }
            PageDir::After(_) => messages.truncate(limit),
        }
    }
    Ok(HistoryPage { messages, has_more })
}

fn message(conn: &Connection, conv: &str, seq: u64) -> DbResult<Option<StoredMessage>> {
    Ok(conn
        .prepare_cached(
            "SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages
             WHERE conv = ?1 AND seq = ?2",
        )?
        .query_row(params![conv, seq_to_sql(seq)], message_row)
        .optional()?)
}

fn pending(conn: &Connection, user: &str, after: u64, limit: u32) -> DbResult<Vec<StoredMessage>> {
    Ok(conn
        .prepare_cached(
            "SELECT m.conv, m.seq, m.id, m.sender, m.ts, m.cid, m.body, m.reply_to
             FROM pending p JOIN messages m ON m.conv = p.conv AND m.seq = p.seq
             WHERE p.recipient = ?1 AND p.msg_id > ?2
             ORDER BY p.msg_id LIMIT ?3",
        )?
        .query_map(
            params![user, id_order_key(after), limit_to_sql(limit)],
            message_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

fn pending_count(conn: &Connection, user: &str) -> DbResult<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM pending WHERE recipient = ?1")?
        .query_row([user], |row| row.get(0))?;
    Ok(seq_from_sql(n))
}

fn last_seq(conn: &Connection, conv: &str) -> DbResult<i64> {
    Ok(conn
        .prepare_cached("SELECT last_seq FROM conversations WHERE conv = ?1")?
        .query_row([conv], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}

fn cursors(conn: &Connection, user: &str, conv: &str) -> DbResult<(i64, i64)> {
    Ok(conn
        .prepare_cached(
            "SELECT delivered_up_to, read_up_to FROM cursors WHERE user = ?1 AND conv = ?2",
        )?
        .query_row([user, conv], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?
        .unwrap_or((0, 0)))
}

fn set_cursor(
    conn: &Connection,
    user: &str,
    conv: &str,
    kind: ReceiptKind,
    up_to: u64,
) -> DbResult<CursorMove> {
    // A marker past the last message would pre-acknowledge messages not yet sent.
    let up_to = seq_to_sql(up_to).min(last_seq(conn, conv)?);
    let (delivered, read) = cursors(conn, user, conv)?;
    // Reading a message implies it was delivered.
    let new_delivered = delivered.max(up_to);
    let (new_read, moved, value) = match kind {
        ReceiptKind::Delivered => (read, up_to > delivered, new_delivered),
        ReceiptKind::Read => (read.max(up_to), up_to > read, read.max(up_to)),
    };
    if new_delivered != delivered || new_read != read {
        conn.prepare_cached(
            "INSERT INTO cursors (user, conv, delivered_up_to, read_up_to) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user, conv) DO UPDATE
             SET delivered_up_to = excluded.delivered_up_to, read_up_to = excluded.read_up_to",
        )?
        .execute(params![user, conv, new_delivered, new_read])?;
    }
    if new_delivered > 0 {
        // Run even when the cursor did not move: cheap (an index range), and it leaves no
        // pending row behind a cursor whatever happened before.
        conn.prepare_cached(
            "DELETE FROM pending WHERE recipient = ?1 AND conv = ?2 AND seq <= ?3",
        )?
        .execute(params![user, conv, new_delivered])?;
    }
    Ok(CursorMove {
        moved,
        value: seq_from_sql(value),
    })
}

fn conversations(
    conn: &Connection,
    user: &str,
    before: Option<i64>,
    limit: u32,
) -> DbResult<Vec<ConversationSummary>> {
    // DMs come from the user's own index (already in activity order, so only `limit` rows are
    // read); groups from the user's memberships joined to each group's last activity. Both
    // are index lookups; `messages` is only touched by primary key for the last message.
    let mut stmt = conn.prepare_cached(
        "WITH page (conv, last_ts, name) AS (
             SELECT conv, last_ts, name FROM (
                 SELECT conv, last_ts, NULL AS name FROM (
                     SELECT conv, last_ts FROM dm_index
                     WHERE user = ?1 AND last_ts < ?2
                     ORDER BY last_ts DESC LIMIT ?3)
                 UNION ALL
                 SELECT 'g:' || g.gid, g.last_ts, g.name
                 FROM group_members gm JOIN chat_groups g ON g.gid = gm.gid
                 WHERE gm.user = ?1 AND g.last_ts < ?2)
             ORDER BY last_ts DESC, conv LIMIT ?3)
         SELECT p.conv, p.last_ts, p.name, COALESCE(c.last_seq, 0),
                COALESCE(cu.delivered_up_to, 0), COALESCE(cu.read_up_to, 0),
                m.conv, m.seq, m.id, m.sender, m.ts, m.cid, m.body, m.reply_to
         FROM page p
         LEFT JOIN conversations c ON c.conv = p.conv
         LEFT JOIN cursors cu ON cu.user = ?1 AND cu.conv = p.conv
         LEFT JOIN messages m ON m.conv = p.conv AND m.seq = c.last_seq
         ORDER BY p.last_ts DESC, p.conv",
    )?;
    let rows = stmt.query_map(
        params![user, before.unwrap_or(i64::MAX), limit_to_sql(limit)],
        |row| {
            let has_message = row.get::<_, Option<String>>(6)?.is_some();
            Ok(ConversationSummary {
                conv: ConvId(row.get(0)?),
                last_ts: row.get(1)?,
                name: row.get(2)?,
                last_seq: seq_from_sql(row.get(3)?),
                cursors: Cursors {
                    delivered_up_to: seq_from_sql(row.get(4)?),
                    read_up_to: seq_from_sql(row.get(5)?),
                },
                last_message: if has_message {
                    Some(message_at(row, 6)?)
                } else {
                    None
                },
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn group_exists(conn: &Connection, gid: &str) -> DbResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM chat_groups WHERE gid = ?1")?
        .exists([gid])?)
}

fn member_count(conn: &Connection, gid: &str) -> DbResult<u64> {
    conn.prepare_cached("SELECT member_count FROM chat_groups WHERE gid = ?1")?
        .query_row([gid], |row| row.get::<_, i64>(0))
        .optional()?
        .map(seq_from_sql)
        .ok_or_else(|| unknown_group(gid))
}

fn unknown_group(gid: &str) -> Fail {
    fail(StoreErrorKind::NotFound, format!("no group {gid}"))
}

fn is_member(conn: &Connection, gid: &str, user: &str) -> DbResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM group_members WHERE gid = ?1 AND user = ?2")?
        .exists([gid, user])?)
}

fn insert_member(conn: &Connection, gid: &str, user: &str, ts: i64) -> DbResult<()> {
    conn.prepare_cached("INSERT INTO group_members (gid, user, joined_ts) VALUES (?1, ?2, ?3)")?
        .execute(params![gid, user, ts])?;
    Ok(())
}

fn set_member_count(conn: &Connection, gid: &str, count: u64) -> DbResult<()> {
    conn.prepare_cached("UPDATE chat_groups SET member_count = ?2 WHERE gid = ?1")?
        .execute(params![gid, seq_to_sql(count)])?;
    Ok(())
}

fn too_many(gid: &str, count: usize, max: u64) -> Fail {
    fail(
        StoreErrorKind::LimitExceeded,
        format!("group {gid} would have {count} members, more than {max}"),
    )
}

fn create_group(
    conn: &Connection,
    gid: &str,
    name: &str,
    creator: &str,
    members: &[String],
    ts: i64,
    max_members: u64,
) -> DbResult<GroupInfo> {
    if group_exists(conn, gid)? {
        return Err(fail(
            StoreErrorKind::Conflict,
            format!("group {gid} exists"),
        ));
    }
    let mut all = Vec::with_capacity(members.len() + 1);
    all.push(creator.to_owned());
    all.extend_from_slice(members);
    let all = distinct(&all);
    if all.len() as u64 > max_members {
        return Err(too_many(gid, all.len(), max_members));
    }
    let count = all.len() as u64;
    conn.prepare_cached(
        "INSERT INTO chat_groups (gid, name, created_by, created_ts, last_ts, member_count)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
    )?
    .execute(params![gid, name, creator, ts, seq_to_sql(count)])?;
    for user in &all {
        insert_member(conn, gid, user, ts)?;
    }
    conn.prepare_cached("INSERT INTO group_admins (gid, user) VALUES (?1, ?2)")?
        .execute([gid, creator])?;
    Ok(GroupInfo {
        gid: gid.to_owned(),
        name: name.to_owned(),
        created_by: creator.to_owned(),
        created_ts: ts,
        admins: vec![creator.to_owned()],
        member_count: count,
    })
}

fn group(conn: &Connection, gid: &str) -> DbResult<Option<GroupInfo>> {
    // Two statements: read them from one snapshot.
    let tx = conn.unchecked_transaction()?;
    let row = tx
        .prepare_cached(
            "SELECT name, created_by, created_ts, member_count FROM chat_groups WHERE gid = ?1",
        )?
        .query_row([gid], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    let Some((name, created_by, created_ts, member_count)) = row else {
        return Ok(None);
    };
    let admins = tx
        .prepare_cached("SELECT user FROM group_admins WHERE gid = ?1 ORDER BY user")?
        .query_map([gid], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some(GroupInfo {
        gid: gid.to_owned(),
        name,
        created_by,
        created_ts,
        admins,
        member_count: seq_from_sql(member_count),
    }))
}

fn add_members(
    conn: &Connection,
    gid: &str,
    users: &[String],
    ts: i64,
    max_members: u64,
) -> DbResult<MembershipChange> {
    let count = member_count(conn, gid)?;
    let mut added = Vec::new();
    for user in distinct(users) {
        if !is_member(conn, gid, &user)? {
            added.push(user);
        }
    }
    if added.is_empty() {
        return Ok(MembershipChange {
            changed: added,
            member_count: count,
        });
    }
    let new_count = count + added.len() as u64;
    if new_count > max_members {
        return Err(too_many(gid, new_count as usize, max_members));
    }
    for user in &added {
        insert_member(conn, gid, user, ts)?;
    }
    set_member_count(conn, gid, new_count)?;
    Ok(MembershipChange {
        changed: added,
        member_count: new_count,
    })
}

fn remove_members(conn: &Connection, gid: &str, users: &[String]) -> DbResult<MembershipChange> {
    let count = member_count(conn, gid)?;
    let mut removed = Vec::new();
    for user in distinct(users) {
        let n = conn
            .prepare_cached("DELETE FROM group_members WHERE gid = ?1 AND user = ?2")?
            .execute([gid, user.as_str()])?;
        conn.prepare_cached("DELETE FROM group_admins WHERE gid = ?1 AND user = ?2")?
            .execute([gid, user.as_str()])?;
        if n > 0 {
            removed.push(user);
        }
    }
    let new_count = count.saturating_sub(removed.len() as u64);
    if !removed.is_empty() {
        set_member_count(conn, gid, new_count)?;
    }
    Ok(MembershipChange {
        changed: removed,
        member_count: new_count,
    })
}

fn set_admin(conn: &Connection, gid: &str, user: &str, admin: bool) -> DbResult<()> {
    if !group_exists(conn, gid)? {
        return Err(unknown_group(gid));
    }
    if !is_member(conn, gid, user)? {
        return Err(fail(
            StoreErrorKind::NotFound,
            format!("{user} is not a member of group {gid}"),
        ));
    }
    if admin {
        conn.prepare_cached("INSERT OR IGNORE INTO group_admins (gid, user) VALUES (?1, ?2)")?
            .execute([gid, user])?;
    } else {
        conn.prepare_cached("DELETE FROM group_admins WHERE gid = ?1 AND user = ?2")?
            .execute([gid, user])?;
    }
    Ok(())
}

fn members(conn: &Connection, gid: &str) -> DbResult<Vec<String>> {
    // One statement (one snapshot): no row at all means no group; a NULL user means a group
    // with nobody left in it.
    let rows = conn
        .prepare_cached(
            "SELECT gm.user FROM chat_groups g LEFT JOIN group_members gm ON gm.gid = g.gid
             WHERE g.gid = ?1",
        )?
        .query_map([gid], |row| row.get::<_, Option<String>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Err(unknown_group(gid));
    }
    Ok(rows.into_iter().flatten().collect())
}

fn groups_of(conn: &Connection, user: &str) -> DbResult<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT gid FROM group_members WHERE user = ?1 ORDER BY gid")?
        .query_map([user], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?)
}

fn profile(conn: &Connection, user: &str) -> DbResult<Profile> {
    let mut profile = conn
        .prepare_cached(
            "SELECT display_name, avatar_url, status, hide_last_seen FROM profiles
             WHERE user = ?1",
        )?
        .query_row([user], |row| {
            Ok(Profile {
                user: user.to_owned(),
                display_name: row.get(0)?,
                avatar_url: row.get(1)?,
                status: row.get(2)?,
                hide_last_seen: row.get(3)?,
                last_seen: None,
            })
        })
        .optional()?
        .unwrap_or_else(|| Profile {
            user: user.to_owned(),
            ..Profile::default()
        });
    profile.last_seen = conn
        .prepare_cached("SELECT ts FROM last_seen WHERE user = ?1")?
        .query_row([user], |row| row.get(0))
        .optional()?;
    Ok(profile)
}

fn set_profile(conn: &Connection, user: &str, update: ProfileUpdate) -> DbResult<Profile> {
    let mut p = profile(conn, user)?;
    if let Some(v) = update.display_name {
        p.display_name = v;
    }
    if let Some(v) = update.avatar_url {
        p.avatar_url = v;
    }
    if let Some(v) = update.status {
        p.status = v;
    }
    if let Some(v) = update.hide_last_seen {
        p.hide_last_seen = v;
    }
    conn.prepare_cached(
        "INSERT INTO profiles (user, display_name, avatar_url, status, hide_last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user) DO UPDATE SET display_name = excluded.display_name,
             avatar_url = excluded.avatar_url, status = excluded.status,
             hide_last_seen = excluded.hide_last_seen",
    )?
    .execute(params![
        user,
        p.display_name,
        p.avatar_url,
        p.status,
        p.hide_last_seen
    ])?;
    Ok(p)
}

fn profiles(conn: &Connection, users: &[String]) -> DbResult<Vec<Profile>> {
    let tx = conn.unchecked_transaction()?;
    users.iter().map(|user| profile(&tx, user)).collect()
}

fn touch_last_seen(conn: &Connection, user: &str, ts: i64) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO last_seen (user, ts) VALUES (?1, ?2)
         ON CONFLICT (user) DO UPDATE SET ts = excluded.ts WHERE excluded.ts > last_seen.ts",
    )?
    .execute(params![user, ts])?;
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
