//! The writer thread (group commit: one transaction per batch, a SAVEPOINT per request) and
//! the pool of read-only connections.

use super::*;

pub(super) enum Command {
    Write(Box<dyn WriteJob>),
    /// Commit what is queued, checkpoint the WAL, answer, and stop.
    Flush(oneshot::Sender<StoreResult<()>>),
}

/// A write request with its result type erased, so one queue carries every kind of write.
pub(super) trait WriteJob: Send {
    /// Runs the request inside the batch transaction; `false` when it failed, and its
    /// savepoint must be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: with its own result, or with `batch_error` when the batch did not
    /// commit.
    fn answer(self: Box<Self>, batch_error: Option<&StoreError>);
}

pub(super) struct Job<T, F> {
    pub(super) work: Option<F>,
    pub(super) result: Option<StoreResult<T>>,
    pub(super) reply: oneshot::Sender<StoreResult<T>>,
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

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) rx: mpsc::Receiver<Command>,
    pub(super) max_batch: usize,
    pub(super) commits: Arc<AtomicU64>,
}

impl Writer {
    pub(super) fn run(mut self) {
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
    pub(super) fn commit(&mut self, batch: &mut Vec<Box<dyn WriteJob>>) {
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

    pub(super) fn checkpoint(&self) -> StoreResult<()> {
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

pub(super) struct ReadPool {
    pub(super) conns: Mutex<Vec<Connection>>,
    /// One permit per connection: waiting for a connection is async, never a blocked thread.
    pub(super) permits: Arc<Semaphore>,
    pub(super) closed: AtomicBool,
}

impl ReadPool {
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        self.conns.lock().clear();
    }
}
