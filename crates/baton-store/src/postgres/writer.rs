//! The writer task and group commit, as on SQLite: one task owns the one write connection; it
//! takes every operation waiting (up to [`MAX_BATCH`]), runs each in its own savepoint inside
//! one transaction, commits once and then answers them all. A failed operation rolls back to
//! its savepoint and fails alone.
//!
//! Each transaction starts by taking the write lock (the `writer_state` row), so writers of
//! every process on the database take turns: event numbers are given here, in order, and are
//! therefore in commit order and without gaps, as SQLite's are.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use baton_core::{Event, EventKind, Timestamp};

use super::ops::{Op, Output};
use crate::{Error, ErrorKind, Result};

pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Output>>,
}

/// Most operations one commit takes. Bounds the latency of the first caller in a batch.
pub(super) const MAX_BATCH: usize = 512;

/// What an operation sees: the connection inside the open transaction, the events it wrote
/// (published after the commit), the next event number, and the inbox counts.
pub(super) struct WriteCtx<'a> {
    client: &'a Client,
    statements: &'a mut HashMap<String, Statement>,
    pub(super) events: Vec<Event>,
    pub(super) next_seq: i64,
    pub(super) inbox: &'a mut InboxCounts,
}

pub(super) type Params<'p> = [&'p (dyn ToSql + Sync)];

impl WriteCtx<'_> {
    async fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub(super) async fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64> {
        let statement = self.statement(sql).await?;
        Ok(self.client.execute(&statement, params).await?)
    }

    pub(super) async fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
        let statement = self.statement(sql).await?;
        Ok(self.client.query(&statement, params).await?)
    }

    pub(super) async fn query_opt(&mut self, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
        let statement = self.statement(sql).await?;
        Ok(self.client.query_opt(&statement, params).await?)
    }

    pub(super) async fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row> {
        let statement = self.statement(sql).await?;
        Ok(self.client.query_one(&statement, params).await?)
    }

    pub(super) async fn event(&mut self, run_id: &str, at: Timestamp, kind: EventKind) -> Result<i64> {
        let data = serde_json::to_string(&kind).map_err(|error| Error::corrupt(error.to_string()))?;
        let seq = self.next_seq;
        let task = kind.task().map(|id| id.0);
        let agent = kind.agent();
        self.execute(
            "INSERT INTO events (seq, run_id, at, type, task_id, agent, data) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&seq, &run_id, &at.0, &kind.name(), &task, &agent, &data],
        )
        .await?;
        self.next_seq += 1;
        self.events.push(Event { seq, run_id: run_id.to_string(), at, kind });
        Ok(seq)
    }
}

/// How many deliveries are pending per run and recipient, kept by the writer so that the
/// inbox-full check of a send is a map lookup (as on SQLite). Rebuilt from the table when it
/// cannot be trusted: at the first write, after a failed commit, and when another process has
/// written since (the write count moved by more than this writer's own commits).
#[derive(Default)]
pub(super) struct InboxCounts {
    pending: HashMap<(String, String), u64>,
    /// What the operation running now changed, to undo if it fails.
    job_changes: Vec<((String, String), i64)>,
}

impl InboxCounts {
    async fn rebuild(&mut self, client: &Client) -> Result<()> {
        let rows = client
            .query(
                "SELECT run_id, recipient, count(*) FROM deliveries WHERE state = 'pending' GROUP BY run_id, recipient",
                &[],
            )
            .await?;
        let mut pending = HashMap::with_capacity(rows.len());
        for row in rows {
            pending.insert((row.try_get(0)?, row.try_get(1)?), row.try_get::<_, i64>(2)?.max(0) as u64);
        }
        self.pending = pending;
        Ok(())
    }

    pub(super) fn get(&self, run_id: &str, recipient: &str) -> u64 {
        self.pending.get(&(run_id.to_string(), recipient.to_string())).copied().unwrap_or(0)
    }

    pub(super) fn add(&mut self, run_id: &str, recipient: &str, delta: i64) {
        let key = (run_id.to_string(), recipient.to_string());
        let count = self.pending.entry(key.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        self.job_changes.push((key, delta));
    }

    fn keep_job(&mut self) {
        self.job_changes.clear();
    }

    fn undo_job(&mut self) {
        for (key, delta) in self.job_changes.drain(..).rev() {
            if let Some(count) = self.pending.get_mut(&key) {
                *count = count.saturating_add_signed(-delta);
            }
        }
    }
}

/// The writer's connection and what it keeps between transactions.
pub(super) struct Writer {
    config: tokio_postgres::Config,
    client: Client,
    statements: HashMap<String, Statement>,
    inbox: InboxCounts,
    /// The write count after this writer's last commit, and the next event number then;
    /// `None` when they must be read again.
    last: Option<(i64, i64)>,
}

impl Writer {
    pub(super) fn new(config: tokio_postgres::Config, client: Client) -> Writer {
        Writer { config, client, statements: HashMap::new(), inbox: InboxCounts::default(), last: None }
    }

    /// A connection that is open: after the server closed the last one (a restart, a
    /// failover), the next batch connects again rather than failing every write from then on.
    async fn reconnect_if_closed(&mut self) -> Result<()> {
        if !self.client.is_closed() {
            return Ok(());
        }
        self.client = super::connect(&self.config).await?;
        self.statements.clear();
        self.last = None;
        Ok(())
    }
}

pub(super) async fn write_loop(
    mut writer: Writer,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    events: broadcast::Sender<Arc<Event>>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let ops: Vec<Op> = batch.iter_mut().map(|job| std::mem::replace(&mut job.op, Op::Nothing)).collect();
        let n_ops = ops.len();
        let (outputs, committed) = run_batch(&mut writer, ops).await;
        match committed {
            Ok(published) => {
                // Published before the callers are answered: when a write returns, its events
                // are already with every subscriber.
                for event in published {
                    let _ = events.send(Arc::new(event));
                }
                for (job, output) in batch.drain(..).zip(outputs) {
                    let _ = job.reply.send(output);
                }
            }
            Err(Failed { error, maybe_stored }) => {
                let message = error.to_string();
                tracing::error!(%message, n_ops, maybe_stored, "store commit failed");
                let kind = match error.kind() {
                    kind @ (ErrorKind::Full | ErrorKind::Corrupt) => kind,
                    _ => ErrorKind::Unavailable,
                };
                let stored = if maybe_stored {
                    "it may have been stored: check before doing it again"
                } else {
                    "nothing was stored"
                };
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(Error::new(kind, format!("commit failed: {message}; {stored}"))));
                }
            }
        }
    }
}

/// A batch that did not commit: why, and whether it may have been stored all the same (the
/// connection was lost during COMMIT and the server could not tell what became of it).
struct Failed {
    error: Error,
    maybe_stored: bool,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed { error, maybe_stored: false }
    }
}

impl From<tokio_postgres::Error> for Failed {
    fn from(error: tokio_postgres::Error) -> Failed {
        Failed::from(Error::from(error))
    }
}

/// Runs every operation of a batch in its own savepoint and commits once. Returns each
/// operation's output and, when the commit succeeded, the events to publish.
async fn run_batch(
    writer: &mut Writer,
    ops: Vec<Op>,
) -> (Vec<Result<Output>>, std::result::Result<Vec<Event>, Failed>) {
    let mut outputs = Vec::with_capacity(ops.len());
    if let Err(error) = writer.reconnect_if_closed().await {
        return (outputs, Err(error.into()));
    }
    match run_transaction(writer, ops, &mut outputs).await {
        Ok(published) => (outputs, Ok(published)),
        Err(failed) => {
            writer.last = None;
            if !writer.client.is_closed() {
                let _ = writer.client.batch_execute("ROLLBACK").await;
            }
            (outputs, Err(failed))
        }
    }
}

async fn run_transaction(
    writer: &mut Writer,
    ops: Vec<Op>,
    outputs: &mut Vec<Result<Output>>,
) -> std::result::Result<Vec<Event>, Failed> {
    let n_ops = ops.len();
    writer.client.batch_execute("BEGIN").await?;
    // The write lock, held to the commit: other writers wait here. The transaction's id and
    // the server process's say, should the connection be lost during COMMIT, what became of it.
    let lock = writer
        .client
        .query_one(
            "UPDATE writer_state SET generation = generation + 1 WHERE id = 1 \
             RETURNING generation, txid_current(), pg_backend_pid(), pg_postmaster_start_time()::text",
            &[],
        )
        .await?;
    let (generation, xid, pid): (i64, i64, i32) = (lock.try_get(0)?, lock.try_get(1)?, lock.try_get(2)?);
    let server = Server { pid, started: lock.try_get(3)? };
    let next_seq = match writer.last {
        Some((last_generation, next_seq)) if last_generation + 1 == generation => next_seq,
        _ => {
            // Another process wrote since (or this is the first write): what this writer
            // kept is stale.
            writer.inbox.rebuild(&writer.client).await?;
            let max: i64 =
                writer.client.query_one("SELECT coalesce(max(seq), 0) FROM events", &[]).await?.try_get(0)?;
            max + 1
        }
    };
    let Writer { client, statements, inbox, .. } = writer;
    let mut ctx = WriteCtx { client, statements, events: Vec::new(), next_seq, inbox };
    let mut published = Vec::new();
    for op in ops {
        let seq_before = ctx.next_seq;
        ctx.client.batch_execute("SAVEPOINT job").await?;
        let output = op.run(&mut ctx).await;
        match output {
            Ok(output) => {
                ctx.client.batch_execute("RELEASE SAVEPOINT job").await?;
                ctx.inbox.keep_job();
                published.append(&mut ctx.events);
                outputs.push(Ok(output));
            }
            Err(error) => {
                if ctx.client.is_closed() {
                    return Err(error.into());
                }
                ctx.inbox.undo_job();
                ctx.events.clear();
                ctx.next_seq = seq_before;
                ctx.client.batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job").await?;
                outputs.push(Err(error));
            }
        }
    }
    let next_seq = ctx.next_seq;
    let commit_started = std::time::Instant::now();
    match writer.client.batch_execute("COMMIT").await {
        Ok(()) => {}
        // No answer (the connection was lost), or the server ending the connection (a
        // shutdown, a terminated process): before or after it committed. (A cancelled
        // statement, 57014, leaves the connection open: that COMMIT did not happen.)
        Err(error) if error.code().is_none_or(|code| lost_with_the_connection(code.code())) => {
            match commit_outcome(&writer.config, xid, &server).await {
                Ok(true) => tracing::warn!(%error, "the store's connection was lost as it committed; the commit took"),
                Ok(false) => return Err(error.into()),
                Err(why) => {
                    let error = Error::Unavailable {
                        message: format!(
                            "postgres: the connection was lost during COMMIT, and whether it took is unknown: {why}"
                        ),
                        source: Some(Box::new(error)),
                    };
                    return Err(Failed { error, maybe_stored: true });
                }
            }
        }
        Err(error) => return Err(error.into()),
    }
    writer.last = Some((generation, next_seq));
    ::metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(commit_started.elapsed().as_secs_f64());
    ::metrics::counter!(crate::metrics::COMMITS_TOTAL).increment(1);
    ::metrics::histogram!(crate::metrics::BATCH_SIZE).record(n_ops as f64);
    Ok(published)
}

/// How long the writer tries to learn whether a commit whose answer was lost took.
const COMMIT_CHECK_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether an error with SQLSTATE `code` at COMMIT means the connection went with it: class
/// 08, or the server ending the session (57P01-57P03).
fn lost_with_the_connection(code: &str) -> bool {
    code.starts_with("08") || ["57P01", "57P02", "57P03"].contains(&code)
}

/// The server process a transaction ran in, and when the server started: a check of what
/// became of it asks the same server (not a failed-over replica, where the id means another
/// transaction) and ends only that process.
struct Server {
    pid: i32,
    started: String,
}

/// Whether transaction `xid` (of `server`), whose COMMIT went unanswered because the
/// connection was lost, committed: asked on a new connection with `txid_status`, which
/// PostgreSQL has for this. A transaction still in progress (its process has not noticed yet
/// that its client is gone) is ended first — the process that still runs that very
/// transaction, no other — so that the answer is final. A server started since (a restart, a
/// failover) cannot tell. Tried for [`COMMIT_CHECK_TIME`] while the server cannot be reached;
/// `Err` says why it could not tell.
async fn commit_outcome(
    config: &tokio_postgres::Config,
    xid: i64,
    server: &Server,
) -> std::result::Result<bool, String> {
    let deadline = tokio::time::Instant::now() + COMMIT_CHECK_TIME;
    let mut why = "the server was not reached".to_string();
    loop {
        match tokio::time::timeout_at(deadline, transaction_status(config, xid, server)).await {
            Ok(Ok(Some(committed))) => return Ok(committed),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => why = error.to_string(),
            Err(_) => return Err(why),
        }
        if tokio::time::Instant::now() + std::time::Duration::from_millis(200) >= deadline {
            return Err(why);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// One try of [`commit_outcome`]: `None` when the transaction was still in progress (its
/// process is then told to end).
async fn transaction_status(config: &tokio_postgres::Config, xid: i64, server: &Server) -> Result<Option<bool>> {
    let client = super::connect(config).await?;
    let row = client.query_one("SELECT txid_status($1), pg_postmaster_start_time()::text", &[&xid]).await?;
    let (status, started): (Option<String>, String) = (row.try_get(0)?, row.try_get(1)?);
    if started != server.started {
        return Err(Error::corrupt(format!(
            "the server restarted (or another answered) since the commit: it started at {started}, not {}",
            server.started
        )));
    }
    match status.as_deref() {
        Some("committed") => Ok(Some(true)),
        Some("aborted") => Ok(Some(false)),
        Some(_) => {
            // Only the process whose transaction this is: a process id may be taken again.
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE pid = $1 AND backend_xid::text = ($2 % 4294967296)::text",
                    &[&server.pid, &xid],
                )
                .await?;
            Ok(None)
        }
        None => Err(Error::corrupt(format!("the server no longer knows transaction {xid}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test PostgreSQL server, or `None` (with a notice) when none is named.
    fn config() -> Option<tokio_postgres::Config> {
        let url = crate::testing::postgres_server()?;
        Some(url.parse().expect("the test server's URL is a PostgreSQL URL"))
    }

    async fn begin(config: &tokio_postgres::Config) -> (Client, i64, Server) {
        let client = super::super::connect(config).await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        let row = client
            .query_one("SELECT txid_current(), pg_backend_pid(), pg_postmaster_start_time()::text", &[])
            .await
            .unwrap();
        (client, row.get(0), Server { pid: row.get(1), started: row.get(2) })
    }

    #[tokio::test]
    async fn a_commit_whose_answer_was_lost_is_found_out() {
        let Some(config) = config() else { return };
        // One that committed.
        let (client, xid, pid) = begin(&config).await;
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(commit_outcome(&config, xid, &pid).await, Ok(true));
        // A server that started since cannot tell.
        let restarted = Server { pid: pid.pid, started: "1999-01-01 00:00:00+00".into() };
        assert!(transaction_status(&config, xid, &restarted).await.is_err());
        // One rolled back.
        let (client, xid, pid) = begin(&config).await;
        client.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(commit_outcome(&config, xid, &pid).await, Ok(false));
        // One still open when its client is taken for gone: its process is ended, and it did
        // not commit; its connection is closed, so a COMMIT now fails as a lost one does.
        let (client, xid, pid) = begin(&config).await;
        assert_eq!(commit_outcome(&config, xid, &pid).await, Ok(false));
        let error = client.batch_execute("COMMIT").await.unwrap_err();
        assert!(error.code().is_none() || client.is_closed(), "{error}");
    }
}
