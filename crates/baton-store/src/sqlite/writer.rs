//! The writer thread and group commit: it takes every operation waiting (up to
//! [`MAX_BATCH`]), runs each in its own savepoint inside one transaction, commits once and then
//! answers them all. A failed operation rolls back to its savepoint and fails alone.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{broadcast, mpsc};

use baton_core::{Event, EventKind, Timestamp};

use crate::{Error, ErrorKind, Result};

pub(super) type Output = Box<dyn Any + Send>;
pub(super) type Op = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Result<Output> + Send>;

/// Told how its operation ended, once the transaction is committed (or has failed).
pub(super) type Reply = Box<dyn FnOnce(Result<Output>) + Send>;

pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: Reply,
}

/// What an operation sees: the open transaction, and the events it wrote (published to
/// subscribers after the commit).
pub(crate) struct WriteCtx<'a> {
    pub(super) tx: &'a rusqlite::Transaction<'a>,
    pub(super) events: Vec<Event>,
    pub(super) inbox: &'a mut InboxCounts,
}

/// How many deliveries are pending per run and recipient, kept by the writer thread so that the
/// inbox-full check of a send is a map lookup rather than an index count (which walked up to
/// [`INBOX_LIMIT`] entries per send and was the largest cost of sending).
///
/// The counts are rebuilt from the table when they cannot be trusted: at the first write after
/// opening, after a failed commit, and whenever another connection (another `baton` process
/// sending with `baton send`) has committed since this one last looked (`PRAGMA data_version`
/// tells). Changes made by an operation are undone when its savepoint is rolled back.
#[derive(Default)]
pub(super) struct InboxCounts {
    pending: HashMap<(String, String), u64>,
    /// `PRAGMA data_version` as this connection saw it when the counts were last right; `None`
    /// when they must be rebuilt.
    data_version: Option<i64>,
    /// What the operation running now changed, to undo if it fails.
    job_changes: Vec<((String, String), i64)>,
}

impl InboxCounts {
    /// Makes the counts right for the transaction just begun on `tx`.
    pub(super) fn refresh(&mut self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        let version: i64 = tx.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        if self.data_version == Some(version) {
            return Ok(());
        }
        let mut stmt = tx.prepare_cached(
            "SELECT run_id, recipient, count(*) FROM deliveries WHERE state = 'pending' GROUP BY run_id, recipient",
        )?;
        let rows = stmt.query_map([], |row| Ok(((row.get(0)?, row.get(1)?), row.get::<_, i64>(2)? as u64)))?;
        self.pending = rows.collect::<rusqlite::Result<_>>()?;
        self.data_version = Some(version);
        Ok(())
    }

    pub(super) fn get(&self, run_id: &str, recipient: &str) -> u64 {
        // A borrowed-key lookup would need a custom key type; the allocation is cheap next to
        // the insert it guards.
        self.pending.get(&(run_id.to_string(), recipient.to_string())).copied().unwrap_or(0)
    }

    pub(super) fn add(&mut self, run_id: &str, recipient: &str, delta: i64) {
        let key = (run_id.to_string(), recipient.to_string());
        let count = self.pending.entry(key.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        debug_assert!(delta >= 0 || *count < u64::MAX, "a pending count went below zero");
        self.job_changes.push((key, delta));
    }

    /// The operation's savepoint was released: its changes stay.
    pub(super) fn keep_job(&mut self) {
        self.job_changes.clear();
    }

    /// The operation's savepoint was rolled back: so are its changes.
    pub(super) fn undo_job(&mut self) {
        for (key, delta) in self.job_changes.drain(..).rev() {
            if let Some(count) = self.pending.get_mut(&key) {
                *count = count.saturating_add_signed(-delta);
            }
        }
    }
}

impl WriteCtx<'_> {
    pub(super) fn event(&mut self, run_id: &str, at: Timestamp, kind: EventKind) -> Result<i64> {
        let data = serde_json::to_string(&kind).map_err(|error| Error::corrupt(error.to_string()))?;
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO events (run_id, at, type, task_id, agent, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        stmt.execute(params![run_id, at.0, kind.name(), kind.task().map(|id| id.0), kind.agent(), data])?;
        let seq = self.tx.last_insert_rowid();
        self.events.push(Event { seq, run_id: run_id.to_string(), at, kind });
        Ok(seq)
    }
}

/// Most operations one commit takes. Bounds the latency of the first caller in a batch.
pub(super) const MAX_BATCH: usize = 512;

pub(super) fn write_loop(
    mut conn: Connection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    events: broadcast::Sender<Arc<Event>>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut inbox = InboxCounts::default();
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (outputs, committed) = run_batch(&mut conn, &mut batch, &mut inbox);
        match committed {
            Ok(published) => {
                // Published before the callers are answered: when a write returns, its events
                // are already with every subscriber.
                for event in published {
                    let _ = events.send(Arc::new(event));
                }
                for (job, output) in batch.drain(..).zip(outputs) {
                    (job.reply)(output);
                }
            }
            Err(error) => {
                let message = error.to_string();
                tracing::error!(%message, "store commit failed");
                // A full disk stays `Full` and a damaged file `Corrupt`; any other failure to
                // commit (an IO error, a lock held past the timeout) is `Unavailable`.
                let kind = match error.kind() {
                    kind @ (ErrorKind::Full | ErrorKind::Corrupt) => kind,
                    _ => ErrorKind::Unavailable,
                };
                for job in batch.drain(..) {
                    (job.reply)(Err(Error::new(kind, format!("commit failed: {message}; nothing was stored"))));
                }
            }
        }
    }
}

/// Runs every job of a batch in its own savepoint and commits once. Returns each job's output
/// and, when the commit succeeded, the events to publish.
pub(super) fn run_batch(
    conn: &mut Connection,
    batch: &mut [Job],
    inbox: &mut InboxCounts,
) -> (Vec<Result<Output>>, Result<Vec<Event>>) {
    let mut outputs = Vec::with_capacity(batch.len());
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => return (outputs, Err(error.into())),
    };
    if let Err(error) = inbox.refresh(&tx) {
        inbox.data_version = None;
        return (outputs, Err(error.into()));
    }
    let mut published = Vec::new();
    for job in batch.iter_mut() {
        if tx.is_autocommit() {
            // SQLite rolled the whole transaction back (disk full, IO error): nothing more can
            // join it, and the inbox counts no longer match the table.
            inbox.data_version = None;
            outputs.push(Err(Error::unavailable("the transaction was rolled back by an earlier failure")));
            continue;
        }
        let op = std::mem::replace(&mut job.op, Box::new(|_| Err(Error::closed())));
        let output = (|| -> Result<Output> {
            // Cached: parsing these statements once per operation cost more than some
            // operations themselves.
            tx.prepare_cached("SAVEPOINT job")?.execute([])?;
            let mut ctx = WriteCtx { tx: &tx, events: Vec::new(), inbox: &mut *inbox };
            let result = op(&mut ctx);
            let mut events = std::mem::take(&mut ctx.events);
            match result {
                Ok(output) => {
                    if let Err(error) = tx.prepare_cached("RELEASE job").and_then(|mut stmt| stmt.execute([])) {
                        // Whatever SQLite kept of it, the counts are rebuilt from the table.
                        inbox.data_version = None;
                        return Err(error.into());
                    }
                    inbox.keep_job();
                    published.append(&mut events);
                    Ok(output)
                }
                Err(error) => {
                    inbox.undo_job();
                    let rolled_back = tx
                        .prepare_cached("ROLLBACK TO job")
                        .and_then(|mut stmt| stmt.execute([]))
                        .and_then(|_| tx.prepare_cached("RELEASE job")?.execute([]));
                    if let Err(rollback_error) = rolled_back {
                        inbox.data_version = None;
                        return Err(rollback_error.into());
                    }
                    Err(error)
                }
            }
        })();
        outputs.push(output);
    }
    let commit_started = std::time::Instant::now();
    let committed = tx.commit();
    if committed.is_err() {
        inbox.data_version = None;
    }
    match committed {
        Ok(()) => {
            ::metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(commit_started.elapsed().as_secs_f64());
            ::metrics::counter!(crate::metrics::COMMITS_TOTAL).increment(1);
            ::metrics::histogram!(crate::metrics::BATCH_SIZE).record(batch.len() as f64);
            (outputs, Ok(published))
        }
        Err(error) => (outputs, Err(error.into())),
    }
}
