//! The embedded SQLite store.
//!
//! One writer thread owns the only write connection. Callers send it operations; it takes
//! every operation waiting, runs each in its own savepoint inside one transaction, commits
//! once (one fsync with `synchronous=FULL`) and then answers them all: group commit, which is
//! how durability and throughput coexist on one disk. Reads use a separate connection; in WAL
//! mode they never wait for the writer.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::{broadcast, mpsc, oneshot};

use baton_core::budget::{Limit, Scope, Spent, UsageRecord};
use baton_core::model::{
    AgentRecord, NewTask, Priority, RunRecord, RunState, TaskCount, TaskId, TaskRecord, TaskRef, TaskState, TaskStatus,
};
use baton_core::sched::Write;
use baton_core::schedule::{Firing, ScheduleRecord};
use baton_core::{Event, EventKind, Timestamp};

use crate::{
    Applied, AuditEntry, AuditQuery, DeliveryOutcome, Error, ErrorKind, EventQuery, NewAuditEntry, NewRun,
    ProcessOwner, ProcessRecord, Result, Store, TaskFilter,
};
use baton_core::messages::{Delivery, DeliveryState, INBOX_LIMIT, NewMessage, Recipient};

/// How hard SQLite works to keep a commit on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync on every commit: a machine crash loses nothing acknowledged. The default.
    #[default]
    Full,
    /// fsync at checkpoints only: a machine crash may lose the last commits (a process crash
    /// loses nothing).
    Normal,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub synchronous: Synchronous,
}

impl Options {
    /// Parses `sqlite://PATH[?synchronous=full|normal]` into a path (relative paths resolved
    /// against `base`) and options.
    pub fn from_url(url: &str, base: &Path) -> Result<(PathBuf, Options)> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| Error::Refused(format!("`{url}` is not a sqlite url; write sqlite://PATH")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(Error::Refused(format!("`{url}` names no file; write sqlite://PATH")));
        }
        let mut options = Options::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("synchronous", "full")) => options.synchronous = Synchronous::Full,
                Some(("synchronous", "normal")) => options.synchronous = Synchronous::Normal,
                _ => {
                    return Err(Error::Refused(format!(
                        "unknown store option `{pair}` in `{url}`; known: synchronous=full|normal"
                    )));
                }
            }
        }
        let path = Path::new(path);
        let path = if path.is_absolute() { path.to_path_buf() } else { base.join(path) };
        Ok((path, options))
    }
}

type Output = Box<dyn Any + Send>;
type Op = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Result<Output> + Send>;

/// Told how its operation ended, once the transaction is committed (or has failed).
type Reply = Box<dyn FnOnce(Result<Output>) + Send>;

struct Job {
    op: Op,
    reply: Reply,
}

/// What an operation sees: the open transaction, and the events it wrote (published to
/// subscribers after the commit).
pub(crate) struct WriteCtx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    events: Vec<Event>,
    inbox: &'a mut InboxCounts,
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
struct InboxCounts {
    pending: HashMap<(String, String), u64>,
    /// `PRAGMA data_version` as this connection saw it when the counts were last right; `None`
    /// when they must be rebuilt.
    data_version: Option<i64>,
    /// What the operation running now changed, to undo if it fails.
    job_changes: Vec<((String, String), i64)>,
}

impl InboxCounts {
    /// Makes the counts right for the transaction just begun on `tx`.
    fn refresh(&mut self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
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

    fn get(&self, run_id: &str, recipient: &str) -> u64 {
        // A borrowed-key lookup would need a custom key type; the allocation is cheap next to
        // the insert it guards.
        self.pending.get(&(run_id.to_string(), recipient.to_string())).copied().unwrap_or(0)
    }

    fn add(&mut self, run_id: &str, recipient: &str, delta: i64) {
        let key = (run_id.to_string(), recipient.to_string());
        let count = self.pending.entry(key.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        debug_assert!(delta >= 0 || *count < u64::MAX, "a pending count went below zero");
        self.job_changes.push((key, delta));
    }

    /// The operation's savepoint was released: its changes stay.
    fn keep_job(&mut self) {
        self.job_changes.clear();
    }

    /// The operation's savepoint was rolled back: so are its changes.
    fn undo_job(&mut self) {
        for (key, delta) in self.job_changes.drain(..).rev() {
            if let Some(count) = self.pending.get_mut(&key) {
                *count = count.saturating_add_signed(-delta);
            }
        }
    }
}

impl WriteCtx<'_> {
    fn event(&mut self, run_id: &str, at: Timestamp, kind: EventKind) -> Result<i64> {
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

struct Inner {
    location: Location,
    writer: mpsc::UnboundedSender<Job>,
    /// The read connection. A std mutex because it is only ever held inside `spawn_blocking`,
    /// never across an `.await`.
    reader: Mutex<Connection>,
    /// Committed events, each shared by every subscriber: the channel's slots (65,536 of them,
    /// allocated at once) hold a pointer each rather than an event, which keeps them at about
    /// 2 MiB instead of 11.
    events: broadcast::Sender<Arc<Event>>,
    /// Messages waiting to be stored by the next send operation ([`SqliteStore::send_message`]).
    /// A std mutex: held only to push or take, never across an `.await`.
    sends: Mutex<Vec<QueuedSend>>,
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    phase INTEGER NOT NULL DEFAULT 0,
    n_phases INTEGER NOT NULL,
    n_tasks INTEGER NOT NULL DEFAULT 0,
    n_finished INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    error TEXT,
    owner TEXT,
    owner_pid INTEGER,
    owner_until INTEGER
);
CREATE INDEX runs_by_name ON runs (name, started_at);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    key TEXT,
    workstream TEXT,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    input TEXT NOT NULL,
    requires TEXT NOT NULL,
    agent TEXT,
    depends_on TEXT NOT NULL,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_ms INTEGER,
    resources TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    assigned_agent TEXT,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    not_before INTEGER,
    result TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE UNIQUE INDEX tasks_by_key ON tasks (run_id, key) WHERE key IS NOT NULL;
CREATE INDEX tasks_by_state ON tasks (run_id, state);

CREATE TABLE agents (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    type TEXT NOT NULL,
    task_id INTEGER,
    agent TEXT,
    data TEXT NOT NULL
);
CREATE INDEX events_by_task ON events (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE control (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    command TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    taken_at INTEGER
);
CREATE INDEX control_pending ON control (run_id) WHERE taken_at IS NULL;
"#,
    r#"
CREATE TABLE processes (
    run_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    host TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id, attempt)
);
"#,
    r#"
CREATE TABLE schedules (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
"#,
    r#"
CREATE TABLE usage (
    run_id TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_name TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    has_limit INTEGER NOT NULL DEFAULT 0,
    limit_tokens INTEGER,
    limit_cost_usd REAL,
    PRIMARY KEY (run_id, period_start, scope_kind, scope_name)
);
"#,
    r#"
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    topic TEXT,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    task_id INTEGER,
    correlation_id TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX deliveries_due ON deliveries (run_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_by_recipient ON deliveries (run_id, recipient, state);
"#,
    // Event filters by type and agent (`EventQuery::kinds`, `EventQuery::agent`). The columns
    // have been written with every event since the first schema, so there is nothing to
    // backfill; these indexes let a filtered read seek instead of scanning, in `seq` order.
    r#"
CREATE INDEX events_by_type ON events (type, seq);
CREATE INDEX events_by_agent ON events (agent, seq) WHERE agent IS NOT NULL;
"#,
    // The control plane's audit log. No run_id: a server outlives its runs. AUTOINCREMENT so
    // that an id is never reused and `since_id` tailing misses nothing.
    r#"
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT
);
CREATE INDEX audit_by_actor ON audit (actor, id);
"#,
    // When a delivery was acknowledged: delivery latency (sent, `created_at`, to acknowledged)
    // is read from the table; older deliveries have none. The index by recipient and state
    // served only the inbox-full count, which the writer now keeps in memory: dropping it saves
    // an index insert per message and an index update per acknowledgement.
    r#"
ALTER TABLE deliveries ADD COLUMN acked_at INTEGER;
DROP INDEX deliveries_by_recipient;
"#,
    // A task's own `estimated_tokens` (budget pre-flight), whichever way it was created: the
    // configuration, the API, `baton task add`, a worker's `task/create`, a schedule.
    r#"
ALTER TABLE tasks ADD COLUMN estimated_tokens INTEGER;
"#,
    // Commands for a running run no longer wait in the store: they reach the engine of the
    // process executing the run through its API (a Unix socket beside the store, or
    // `baton serve`'s address), so the engine is the only writer of its run. Commands a
    // baton from before left unread are dropped with the table: nobody would take them.
    r#"
DROP INDEX control_pending;
DROP TABLE control;
"#,
    // Long-running agents' process groups (workers, terminal programs), by agent and start:
    // they belong to no task. (Before, they were recorded in `processes` under task 0; such
    // rows are still taken, and killed, like any other.)
    r#"
CREATE TABLE agent_processes (
    run_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    generation INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    host TEXT NOT NULL,
    PRIMARY KEY (run_id, agent, generation)
);
"#,
    // Tasks per run, workstream and state, kept by triggers in the transaction of every task
    // insert, state change and delete: a restart reads the counts of a run's finished tasks
    // from a few rows instead of counting (or loading) millions. `''` stands for no workstream
    // (NULLs are never equal, so they cannot be part of a key).
    r#"
CREATE TABLE task_counts (
    run_id TEXT NOT NULL,
    workstream TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (run_id, workstream, state)
) WITHOUT ROWID;
INSERT INTO task_counts (run_id, workstream, state, n)
    SELECT run_id, coalesce(workstream, ''), state, count(*) FROM tasks GROUP BY 1, 2, 3;
CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_counts (run_id, workstream, state, n)
        VALUES (new.run_id, coalesce(new.workstream, ''), new.state, 1)
        ON CONFLICT (run_id, workstream, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER task_counts_update AFTER UPDATE OF state ON tasks WHEN old.state IS NOT new.state BEGIN
    UPDATE task_counts SET n = n - 1
        WHERE run_id = old.run_id AND workstream = coalesce(old.workstream, '') AND state = old.state;
    INSERT INTO task_counts (run_id, workstream, state, n)
        VALUES (new.run_id, coalesce(new.workstream, ''), new.state, 1)
        ON CONFLICT (run_id, workstream, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET n = n - 1
        WHERE run_id = old.run_id AND workstream = coalesce(old.workstream, '') AND state = old.state;
END;
"#,
];

/// An agent's start number as SQLite stores it (a signed 64-bit integer; no agent is started
/// 2^63 times).
fn sql_generation(generation: u64) -> i64 {
    i64::try_from(generation).unwrap_or(i64::MAX)
}

const TASK_COLUMNS: &str = "id, run_id, key, workstream, title, description, input, requires, agent, depends_on, \
     priority, max_attempts, timeout_ms, resources, state, attempt, assigned_agent, lease_owner, lease_expires_at, \
     not_before, result, error, created_at, updated_at, finished_at, estimated_tokens";

const RUN_COLUMNS: &str =
    "id, name, state, phase, n_phases, n_tasks, n_finished, started_at, ended_at, error, owner, owner_pid, owner_until";

/// Most operations one commit takes. Bounds the latency of the first caller in a batch.
const MAX_BATCH: usize = 512;

/// Where a [`SqliteStore`] keeps its database.
#[derive(Debug, Clone)]
enum Location {
    File(PathBuf),
    /// A database in this process's memory, named so that the writer's and the reader's
    /// connections share it (SQLite's `memdb` VFS); gone when the store is dropped.
    Memory(String),
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path, options: Options) -> Result<SqliteStore> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|error| Error::Unavailable {
                message: format!(
                    "cannot open the store at `{}`: cannot create {}: {error}",
                    path.display(),
                    parent.display()
                ),
                source: Some(Box::new(error)),
            })?;
        }
        SqliteStore::open_at(Location::File(path.to_path_buf()), options)
    }

    /// Opens a new, empty store in memory: the same SQLite implementation as [`SqliteStore::open`]
    /// (schema, group commit, one writer thread and one reader), on no file. Nothing survives
    /// the store, and no other process can open it. For tests and trials.
    pub fn open_memory() -> Result<SqliteStore> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A name starting with `/` is shared by every connection of the process that opens it.
        let uri = format!("file:/baton-memory-{}-{n}?vfs=memdb", std::process::id());
        SqliteStore::open_at(Location::Memory(uri), Options::default())
    }

    fn open_at(location: Location, options: Options) -> Result<SqliteStore> {
        let (target, shown) = match &location {
            Location::File(path) => (path.to_string_lossy().into_owned(), path.display().to_string()),
            Location::Memory(uri) => (uri.clone(), "memory".to_string()),
        };
        let memory = matches!(location, Location::Memory(_));
        let open_error = |error: rusqlite::Error| opening(&shown, Error::from(error));
        let mut writer = Connection::open(&target).map_err(open_error)?;
        configure(&writer, options, memory).map_err(open_error)?;
        migrate(&mut writer).map_err(|error| opening(&shown, error))?;
        let reader = Connection::open(&target).map_err(open_error)?;
        configure(&reader, options, memory).map_err(open_error)?;

        let (job_tx, job_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(65_536);
        let events_for_writer = events.clone();
        std::thread::Builder::new()
            .name("baton-store-writer".into())
            .spawn(move || write_loop(writer, job_rx, events_for_writer))
            .map_err(|error| Error::Unavailable {
                message: format!("cannot open the store at `{shown}`: cannot start its writer thread: {error}"),
                source: Some(Box::new(error)),
            })?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                location,
                writer: job_tx,
                reader: Mutex::new(reader),
                events,
                sends: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The database file; `None` for a store in memory.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.location {
            Location::File(path) => Some(path),
            Location::Memory(_) => None,
        }
    }

    /// Runs `op` on the writer thread inside the group-commit transaction.
    async fn write<R, F>(&self, op: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Op = Box::new(move |ctx| op(ctx).map(|value| Box::new(value) as Output));
        let reply: Reply = Box::new(move |output| {
            let _ = reply.send(output);
        });
        self.inner.writer.send(Job { op, reply }).map_err(|_| Error::closed())?;
        let output = answer.await.map_err(|_| Error::closed())??;
        Ok(*output.downcast::<R>().expect("an operation's output has the type it was sent with"))
    }

    /// Submits the operation that stores every queued message, each refused or stored on its
    /// own, and answers their senders once the transaction is committed.
    fn submit_sends(&self) -> Result<()> {
        let senders: Arc<Mutex<Vec<SendReply>>> = Arc::default();
        let inner = Arc::clone(&self.inner);
        let taken = Arc::clone(&senders);
        let op: Op = Box::new(move |ctx| {
            let queued = std::mem::take(&mut *inner.sends.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            let mut results: Vec<Result<Vec<i64>>> = Vec::with_capacity(queued.len());
            let mut replies = Vec::with_capacity(queued.len());
            for send in queued {
                replies.push(send.reply);
                // A full inbox refuses this message only, before it writes anything.
                if let Some(refusal) = full_inbox(ctx.inbox, &send.run_id, &send.recipients) {
                    results.push(Err(refusal));
                    continue;
                }
                match insert_message(ctx, &send.run_id, send.message_id, send.message, send.recipients, send.now) {
                    Ok(ids) => results.push(Ok(ids)),
                    // A failed write fails them all: the savepoint is rolled back.
                    Err(error) => {
                        *taken.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = replies;
                        return Err(error);
                    }
                }
            }
            *taken.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = replies;
            Ok(Box::new(results) as Output)
        });
        let reply: Reply = Box::new(move |output| {
            let replies = std::mem::take(&mut *senders.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            match output {
                Ok(output) => {
                    let results = output
                        .downcast::<Vec<Result<Vec<i64>>>>()
                        .expect("the send operation answers one result per message");
                    for (reply, result) in replies.into_iter().zip(*results) {
                        let _ = reply.send(result);
                    }
                }
                Err(error) => {
                    let message = error.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(Error::new(error.kind(), message.clone())));
                    }
                }
            }
        });
        if self.inner.writer.send(Job { op, reply }).is_err() {
            let queued = std::mem::take(&mut *self.inner.sends.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            for send in queued {
                let _ = send.reply.send(Err(Error::closed()));
            }
            return Err(Error::closed());
        }
        Ok(())
    }

    /// Runs `query` on the read connection off the async threads.
    async fn read<R, F>(&self, query: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            query(&conn)
        })
        .await
        .map_err(|_| Error::closed())?
    }
}

/// `error`, said to have happened opening the store at `shown`.
fn opening(shown: &str, mut error: Error) -> Error {
    if let Error::NotFound(message)
    | Error::Conflict(message)
    | Error::Refused(message)
    | Error::Full(message)
    | Error::Unavailable { message, .. }
    | Error::Corrupt { message, .. } = &mut error
    {
        *message = format!("cannot open the store at `{shown}`: {message}");
    }
    error
}

/// The kind of a SQLite error: busy, locked, IO and the like are `Unavailable` (nothing was
/// stored; trying again may work), a full disk is `Full`, a damaged file or a value that does not
/// read back is `Corrupt`, a constraint violated is a `Conflict`. Anything else is a query this
/// baton got wrong: `Corrupt` too (a server error), with the SQLite error as its source.
impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Error {
        use rusqlite::ErrorCode as Code;
        let kind = match &error {
            rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
                Code::DatabaseBusy
                | Code::DatabaseLocked
                | Code::SystemIoFailure
                | Code::CannotOpen
                | Code::PermissionDenied
                | Code::ReadOnly
                | Code::OutOfMemory
                | Code::OperationInterrupted
                | Code::OperationAborted
                | Code::FileLockingProtocolFailed
                | Code::NoLargeFileSupport => ErrorKind::Unavailable,
                Code::DiskFull => ErrorKind::Full,
                Code::ConstraintViolation => ErrorKind::Conflict,
                _ => ErrorKind::Corrupt,
            },
            _ => ErrorKind::Corrupt,
        };
        let message = match kind {
            ErrorKind::Full => format!("the disk is full: {error}; free some space"),
            ErrorKind::Corrupt => format!("store error: {error}"),
            _ => error.to_string(),
        };
        match kind {
            ErrorKind::Unavailable => Error::Unavailable { message, source: Some(Box::new(error)) },
            ErrorKind::Corrupt => Error::Corrupt { message, source: Some(Box::new(error)) },
            kind => Error::new(kind, message),
        }
    }
}

/// How long a connection waits for another one's lock before it gives up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn configure(conn: &Connection, options: Options, memory: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if memory {
        // WAL needs shared memory a `memdb` database has not; its rollback journal is kept in
        // memory too (elsewhere it would be a file). Readers then wait (the busy timeout) only
        // while a commit writes.
        conn.pragma_update(None, "journal_mode", "MEMORY")?;
    } else {
        enable_wal(conn)?;
    }
    let synchronous = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Every operation runs in a savepoint, whose journal of the pages it changes is a temporary
    // file by default: creating, writing and deleting it each transaction was a fifth of the
    // writer's time. In memory it costs a copy; it is never needed after a crash.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Switches the database to WAL. On a new file that another process is creating at the same
/// time, SQLite answers "database is locked" without calling the busy handler (the switch needs
/// the file to itself), so the switch is retried within [`BUSY_TIMEOUT`].
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if matches!(failure.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Brings the schema up to date. Race-safe: the version is read inside the write transaction
/// that applies the migrations, so of two processes opening a new store at once, the second
/// waits for the first (the busy timeout) and then finds nothing left to do.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::unavailable(format!(
            "the store has schema version {version}, newer than this baton knows ({known}); upgrade baton"
        )));
    }
    for (idx, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", idx as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

fn write_loop(mut conn: Connection, mut jobs: mpsc::UnboundedReceiver<Job>, events: broadcast::Sender<Arc<Event>>) {
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
fn run_batch(
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

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("{what}: {error}").into())
    })
}

fn parse<T: std::str::FromStr<Err = String>>(text: &str) -> rusqlite::Result<T> {
    text.parse().map_err(|error: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, error.into())
    })
}

/// `id, key, state`.
fn task_status_from_row(row: &Row<'_>) -> rusqlite::Result<TaskStatus> {
    Ok(TaskStatus { id: TaskId(row.get(0)?), key: row.get(1)?, state: parse::<TaskState>(&row.get::<_, String>(2)?)? })
}

fn task_from_row(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let depends_on: Vec<i64> = from_json(&row.get::<_, String>(9)?, "depends_on")?;
    Ok(TaskRecord {
        id: TaskId(row.get(0)?),
        run_id: row.get(1)?,
        key: row.get(2)?,
        workstream: row.get(3)?,
        title: row.get(4)?,
        description: row.get(5)?,
        input: from_json(&row.get::<_, String>(6)?, "input")?,
        requires: from_json(&row.get::<_, String>(7)?, "requires")?,
        agent: row.get(8)?,
        depends_on: depends_on.into_iter().map(TaskId).collect(),
        priority: Priority::from_rank(row.get(10)?),
        max_attempts: row.get(11)?,
        timeout_ms: row.get::<_, Option<i64>>(12)?.map(|ms| ms as u64),
        resources: from_json(&row.get::<_, String>(13)?, "resources")?,
        estimated_tokens: row.get::<_, Option<i64>>(25)?.map(|tokens| tokens.max(0) as u64),
        state: parse(&row.get::<_, String>(14)?)?,
        attempt: row.get(15)?,
        assigned_agent: row.get(16)?,
        lease_owner: row.get(17)?,
        lease_expires_at: row.get::<_, Option<i64>>(18)?.map(Timestamp),
        not_before: row.get::<_, Option<i64>>(19)?.map(Timestamp),
        result: row.get::<_, Option<String>>(20)?.map(|text| from_json(&text, "result")).transpose()?,
        error: row.get(21)?,
        created_at: Timestamp(row.get(22)?),
        updated_at: Timestamp(row.get(23)?),
        finished_at: row.get::<_, Option<i64>>(24)?.map(Timestamp),
    })
}

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        state: parse::<RunState>(&row.get::<_, String>(2)?)?,
        phase: row.get(3)?,
        n_phases: row.get(4)?,
        n_tasks: row.get::<_, i64>(5)? as u64,
        n_finished: row.get::<_, i64>(6)? as u64,
        started_at: Timestamp(row.get(7)?),
        ended_at: row.get::<_, Option<i64>>(8)?.map(Timestamp),
        error: row.get(9)?,
        owner: row.get(10)?,
        owner_pid: row.get(11)?,
        owner_until: row.get::<_, Option<i64>>(12)?.map(Timestamp),
    })
}

const DELIVERY_COLUMNS: &str = "id, message_id, sender, recipient, topic, body, data, task_id, correlation_id, state, \
     attempts, next_attempt_at, created_at, error, acked_at";

/// Where the sender of a queued message hears whether it was stored, and its delivery ids.
type SendReply = oneshot::Sender<Result<Vec<i64>>>;

/// A message waiting for the writer, with the sender waiting for its answer.
struct QueuedSend {
    run_id: String,
    message_id: String,
    message: NewMessage,
    recipients: Vec<String>,
    now: Timestamp,
    reply: SendReply,
}

/// The refusal of a message whose recipients' inboxes cannot take it, if any. Every inbox is
/// checked before anything is written, so a refused message needs no savepoint of its own.
fn full_inbox(inbox: &InboxCounts, run_id: &str, recipients: &[String]) -> Option<Error> {
    for (idx, recipient) in recipients.iter().enumerate() {
        // A recipient named twice gets two deliveries.
        let earlier = recipients[..idx].iter().filter(|other| *other == recipient).count() as u64;
        if inbox.get(run_id, recipient) + earlier >= INBOX_LIMIT {
            return Some(Error::Full(format!(
                "the inbox of {recipient} is full ({INBOX_LIMIT} messages not yet acknowledged); try again later"
            )));
        }
    }
    None
}

/// Stores one message for its recipients (whose inboxes have room) with its `MessageSent` event.
fn insert_message(
    ctx: &mut WriteCtx<'_>,
    run_id: &str,
    message_id: String,
    message: NewMessage,
    recipients: Vec<String>,
    now: Timestamp,
) -> Result<Vec<i64>> {
    let topic = match &message.to {
        Recipient::Topic(topic) => Some(topic.clone()),
        _ => None,
    };
    let data = to_json(&message.data);
    let mut ids = Vec::with_capacity(recipients.len());
    {
        let mut insert = ctx.tx.prepare_cached(
            "INSERT INTO deliveries (run_id, message_id, sender, recipient, topic, body, data, task_id, \
             correlation_id, state, attempts, next_attempt_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', 0, ?10, ?10)",
        )?;
        for recipient in &recipients {
            insert.execute(params![
                run_id,
                message_id,
                message.from,
                recipient,
                topic,
                message.body,
                data,
                message.task.map(|task| task.0),
                message.correlation_id,
                now.0,
            ])?;
            ids.push(ctx.tx.last_insert_rowid());
        }
    }
    for recipient in &recipients {
        ctx.inbox.add(run_id, recipient, 1);
    }
    ctx.event(
        run_id,
        now,
        EventKind::MessageSent { message: message_id, from: message.from, to: recipients, body: message.body },
    )?;
    Ok(ids)
}

/// Acknowledges or dead-letters a delivery. Only a pending delivery leaves its recipient's
/// inbox; settling one that was settled already rewrites it as before, without counting it twice.
/// Acknowledges deliveries in one statement (the ids go in as one JSON array); those that
/// were no longer pending (settled twice) are updated one by one as [`settle_final`] does.
fn settle_acked(ctx: &mut WriteCtx<'_>, ids: &[i64], now: Timestamp) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let id_list = serde_json::to_string(ids).map_err(|error| Error::corrupt(error.to_string()))?;
    let mut left_inbox: Vec<(i64, String, String)> = Vec::with_capacity(ids.len());
    {
        let mut stmt = ctx.tx.prepare_cached(
            "UPDATE deliveries SET state = 'acked', attempts = attempts + 1, acked_at = ?2 \
             WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending' RETURNING id, run_id, recipient",
        )?;
        let rows = stmt.query_map(params![id_list, now.0], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        for row in rows {
            left_inbox.push(row?);
        }
    }
    for (_, run_id, recipient) in &left_inbox {
        ctx.inbox.add(run_id, recipient, -1);
    }
    if left_inbox.len() < ids.len() {
        let settled: HashSet<i64> = left_inbox.iter().map(|(id, _, _)| *id).collect();
        for id in ids.iter().filter(|id| !settled.contains(id)) {
            settle_final(ctx, *id, "acked", None, now)?;
        }
    }
    Ok(())
}

fn settle_final(ctx: &mut WriteCtx<'_>, id: i64, state: &str, error: Option<&str>, now: Timestamp) -> Result<()> {
    let acked_at = (state == "acked").then_some(now.0);
    let left_inbox: Option<(String, String)> = ctx
        .tx
        .prepare_cached(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, error = coalesce(?3, error), \
             acked_at = coalesce(?4, acked_at) WHERE id = ?1 AND state = 'pending' RETURNING run_id, recipient",
        )?
        .query_row(params![id, state, error, acked_at], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    match left_inbox {
        Some((run_id, recipient)) => ctx.inbox.add(&run_id, &recipient, -1),
        None => {
            ctx.tx
                .prepare_cached(
                    "UPDATE deliveries SET state = ?2, attempts = attempts + 1, error = coalesce(?3, error), \
                     acked_at = coalesce(?4, acked_at) WHERE id = ?1",
                )?
                .execute(params![id, state, error, acked_at])?;
        }
    }
    Ok(())
}

fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let state = match row.get::<_, String>(9)?.as_str() {
        "acked" => DeliveryState::Acked,
        "dead" => DeliveryState::Dead,
        _ => DeliveryState::Pending,
    };
    Ok(Delivery {
        id: row.get(0)?,
        message_id: row.get(1)?,
        from: row.get(2)?,
        to: row.get(3)?,
        topic: row.get(4)?,
        body: row.get(5)?,
        data: from_json(&row.get::<_, String>(6)?, "message data")?,
        task: row.get::<_, Option<i64>>(7)?.map(TaskId),
        correlation_id: row.get(8)?,
        state,
        attempts: row.get(10)?,
        next_attempt_at: Timestamp(row.get(11)?),
        created_at: Timestamp(row.get(12)?),
        error: row.get(13)?,
        acked_at: row.get::<_, Option<i64>>(14)?.map(Timestamp),
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        seq: row.get(0)?,
        run_id: row.get(1)?,
        at: Timestamp(row.get(2)?),
        kind: from_json(&row.get::<_, String>(3)?, "event")?,
    })
}

fn apply_write(ctx: &mut WriteCtx<'_>, run_id: &str, now: Timestamp, write: Write) -> Result<Applied> {
    match write {
        Write::Task { id, expect_state, expect_attempt, change, events } => {
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE tasks SET state = ?1, attempt = ?2, assigned_agent = ?3, lease_owner = ?4, \
                 lease_expires_at = ?5, not_before = ?6, result = ?7, error = ?8, finished_at = ?9, updated_at = ?10 \
                 WHERE id = ?11 AND state = ?12 AND attempt = ?13",
            )?;
            let n_changed = stmt.execute(params![
                change.state.as_str(),
                change.attempt,
                change.assigned_agent,
                change.lease_owner,
                change.lease_expires_at.map(|t| t.0),
                change.not_before.map(|t| t.0),
                change.result.as_ref().map(to_json),
                change.error,
                change.finished_at.map(|t| t.0),
                now.0,
                id.0,
                expect_state.as_str(),
                expect_attempt,
            ])?;
            if n_changed == 0 {
                return Ok(Applied::Conflict(format!(
                    "task {id} is no longer {expect_state} at attempt {expect_attempt}"
                )));
            }
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::Agent { record, events } => {
            let mut stmt = ctx.tx.prepare_cached(
                "INSERT OR REPLACE INTO agents (run_id, name, state, record, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            stmt.execute(params![run_id, record.name, record.state.as_str(), to_json(&record), now.0])?;
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::Run { change, events } => {
            let ended = change.state.is_finished();
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE runs SET state = ?1, phase = ?2, n_tasks = ?3, n_finished = ?4, ended_at = ?5, error = ?6, \
                 owner = CASE WHEN ?7 THEN NULL ELSE owner END, \
                 owner_until = CASE WHEN ?7 THEN NULL ELSE owner_until END WHERE id = ?8",
            )?;
            let n_changed = stmt.execute(params![
                change.state.as_str(),
                change.phase,
                change.n_tasks as i64,
                change.n_finished as i64,
                change.ended_at.map(|t| t.0),
                change.error,
                ended,
                run_id,
            ])?;
            if n_changed == 0 {
                return Err(Error::NotFound(format!("no run `{run_id}` in the store")));
            }
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::RenewLeases { owner, until } => {
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE tasks SET lease_expires_at = ?1 WHERE run_id = ?2 AND state = 'running' AND lease_owner = ?3",
            )?;
            stmt.execute(params![until.0, run_id, owner])?;
        }
        Write::RunOwner { owner, pid, until, expect_owner } => {
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE runs SET owner = ?1, owner_pid = ?2, owner_until = ?3 WHERE id = ?4 \
                 AND (owner IS NULL OR owner = ?5 OR owner = ?1 OR owner_until < ?6)",
            )?;
            let n_changed = stmt.execute(params![owner, pid, until.map(|t| t.0), run_id, expect_owner, now.0])?;
            if n_changed == 0 {
                return Ok(Applied::Conflict(format!("run {run_id} is held by another node")));
            }
        }
        Write::RunInterrupted { expect_owner } => {
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE runs SET state = 'interrupted', owner = NULL, owner_pid = NULL, owner_until = NULL \
                 WHERE id = ?1 AND state = 'running' AND owner = ?2",
            )?;
            if stmt.execute(params![run_id, expect_owner])? == 0 {
                return Ok(Applied::Conflict(format!("run {run_id} is not running under {expect_owner}")));
            }
        }
        Write::Event(event) => {
            ctx.event(run_id, now, event)?;
        }
        Write::Schedule { record, events } => {
            let mut stmt = ctx.tx.prepare_cached(
                "INSERT OR REPLACE INTO schedules (run_id, name, cursor, record) VALUES (?1, ?2, ?3, ?4)",
            )?;
            stmt.execute(params![run_id, record.name, record.cursor.0, to_json(&record)])?;
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::Usage { period_start, scope, spent, events } => {
            // Saturating: SQLite turns an integer sum that overflows into a REAL, which would
            // make the column unreadable as a count. Both sides are at least 0 here, so
            // `MAX - tokens` cannot overflow; a stored value that is not an integer (written
            // before this was so) is cast back to one, which SQLite clamps to the i64 range.
            let mut stmt = ctx.tx.prepare_cached(
                "INSERT INTO usage (run_id, period_start, scope_kind, scope_name, tokens, cost_usd) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (run_id, period_start, scope_kind, scope_name) \
                 DO UPDATE SET \
                 tokens = CASE WHEN max(0, CAST(tokens AS INTEGER)) > 9223372036854775807 - excluded.tokens \
                     THEN 9223372036854775807 ELSE max(0, CAST(tokens AS INTEGER)) + excluded.tokens END, \
                 cost_usd = min(cost_usd + excluded.cost_usd, 1.7976931348623157e308)",
            )?;
            let tokens = i64::try_from(spent.tokens).unwrap_or(i64::MAX);
            let cost_usd = if spent.cost_usd.is_finite() { spent.cost_usd.max(0.0) } else { 0.0 };
            stmt.execute(params![run_id, period_start.0, scope.kind(), scope.name(), tokens, cost_usd])?;
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::BudgetLimit { period_start, scope, limit, events } => {
            let mut stmt = ctx.tx.prepare_cached(
                "INSERT INTO usage (run_id, period_start, scope_kind, scope_name, has_limit, limit_tokens, limit_cost_usd) \
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6) ON CONFLICT (run_id, period_start, scope_kind, scope_name) \
                 DO UPDATE SET has_limit = 1, limit_tokens = excluded.limit_tokens, limit_cost_usd = excluded.limit_cost_usd",
            )?;
            let tokens = limit.daily_tokens.map(|tokens| i64::try_from(tokens).unwrap_or(i64::MAX));
            stmt.execute(params![run_id, period_start.0, scope.kind(), scope.name(), tokens, limit.cost_usd])?;
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
    }
    Ok(Applied::Done)
}

fn insert_tasks(ctx: &mut WriteCtx<'_>, run_id: &str, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<TaskRecord>> {
    let mut created: Vec<TaskRecord> = Vec::with_capacity(tasks.len());
    let mut by_key: HashMap<String, TaskId> = HashMap::new();
    {
        let mut stmt = ctx.tx.prepare_cached(
            "INSERT INTO tasks (run_id, key, workstream, title, description, input, requires, agent, depends_on, \
             priority, max_attempts, timeout_ms, resources, state, attempt, created_at, updated_at, estimated_tokens) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '[]', ?9, ?10, ?11, ?12, 'pending', 0, ?13, ?13, ?14)",
        )?;
        for task in &tasks {
            let inserted = stmt.execute(params![
                run_id,
                task.key,
                task.workstream,
                task.title,
                task.description,
                to_json(&task.input),
                to_json(&task.requires),
                task.agent,
                task.priority.rank(),
                task.max_attempts,
                task.timeout_ms.map(|ms| ms as i64),
                to_json(&task.resources),
                now.0,
                task.estimated_tokens.map(|tokens| i64::try_from(tokens).unwrap_or(i64::MAX)),
            ]);
            if let Err(rusqlite::Error::SqliteFailure(failure, _)) = &inserted
                && failure.code == rusqlite::ErrorCode::ConstraintViolation
            {
                return Err(Error::Conflict(format!(
                    "a task with key `{}` already exists in run {run_id}",
                    task.key.as_deref().unwrap_or_default()
                )));
            }
            inserted?;
            let id = TaskId(ctx.tx.last_insert_rowid());
            if let Some(key) = &task.key {
                by_key.insert(key.clone(), id);
            }
            created.push(TaskRecord {
                id,
                run_id: run_id.to_string(),
                key: task.key.clone(),
                workstream: task.workstream.clone(),
                title: task.title.clone(),
                description: task.description.clone(),
                input: task.input.clone(),
                requires: task.requires.clone(),
                agent: task.agent.clone(),
                depends_on: Vec::new(),
                priority: task.priority,
                max_attempts: task.max_attempts,
                timeout_ms: task.timeout_ms,
                resources: task.resources.clone(),
                estimated_tokens: task.estimated_tokens,
                state: TaskState::Pending,
                attempt: 0,
                assigned_agent: None,
                lease_owner: None,
                lease_expires_at: None,
                not_before: None,
                result: None,
                error: None,
                created_at: now,
                updated_at: now,
                finished_at: None,
            });
        }
    }
    // Resolved once every task of the batch has its id, so that a task may depend on a later
    // one of its batch by key.
    let mut resolved: Vec<Vec<TaskId>> = Vec::with_capacity(tasks.len());
    for (task, record) in tasks.iter().zip(&created) {
        let mut ids = Vec::with_capacity(task.depends_on.len());
        for dep in &task.depends_on {
            let id = match dep {
                TaskRef::Id(id) => ctx
                    .tx
                    .prepare_cached("SELECT id FROM tasks WHERE id = ?1 AND run_id = ?2")?
                    .query_row(params![id.0, run_id], |row| row.get(0))
                    .optional()?
                    .map(TaskId),
                TaskRef::Key(key) => match by_key.get(key) {
                    Some(id) => Some(*id),
                    None => ctx
                        .tx
                        .prepare_cached("SELECT id FROM tasks WHERE run_id = ?1 AND key = ?2")?
                        .query_row(params![run_id, key], |row| row.get(0))
                        .optional()?
                        .map(TaskId),
                },
            };
            let Some(id) = id else {
                let name = match dep {
                    TaskRef::Id(id) => id.to_string(),
                    TaskRef::Key(key) => format!("`{key}`"),
                };
                return Err(Error::Refused(format!("task `{}` depends on unknown task {name}", record.title)));
            };
            if id == record.id {
                return Err(Error::Refused(format!("task `{}` depends on itself", record.title)));
            }
            ids.push(id);
        }
        resolved.push(ids);
    }
    // Tasks stored earlier depend on none of these, so a cycle can only run through the batch.
    if resolved.iter().filter(|ids| !ids.is_empty()).nth(1).is_some() {
        let position: HashMap<TaskId, usize> =
            created.iter().enumerate().map(|(idx, record)| (record.id, idx)).collect();
        let graph: Vec<Vec<usize>> =
            resolved.iter().map(|ids| ids.iter().filter_map(|id| position.get(id).copied()).collect()).collect();
        if let Some(cycle) = baton_core::graph::find_cycle(&graph) {
            let path: Vec<&str> = cycle.iter().map(|&idx| created[idx].title.as_str()).collect();
            return Err(Error::Refused(format!("task dependency cycle: {}", path.join(" -> "))));
        }
    }
    for (ids, record) in resolved.into_iter().zip(created.iter_mut()) {
        if ids.is_empty() {
            continue;
        }
        let raw: Vec<i64> = ids.iter().map(|id| id.0).collect();
        ctx.tx
            .prepare_cached("UPDATE tasks SET depends_on = ?1 WHERE id = ?2")?
            .execute(params![to_json(&raw), record.id.0])?;
        record.depends_on = ids;
    }
    for record in &created {
        ctx.event(
            run_id,
            now,
            EventKind::TaskCreated {
                task: record.id,
                key: record.key.clone(),
                title: record.title.clone(),
                workstream: record.workstream.clone(),
            },
        )?;
    }
    Ok(created)
}

/// Reads the numbers of a usage row whatever SQLite holds in them. A row written before totals
/// saturated may hold a REAL (SQLite's answer to an integer overflow) or, edited by hand,
/// anything: such a value is clamped to the range it should have and reported, so that one bad
/// row does not make the plan's budgets (and every command that reads them) fail.
struct Lenient<'a> {
    run: String,
    scope: &'a Scope,
}

impl Lenient<'_> {
    fn count(&self, row: &rusqlite::Row<'_>, idx: usize, column: &str) -> rusqlite::Result<Option<u64>> {
        use rusqlite::types::ValueRef;
        Ok(match row.get_ref(idx)? {
            ValueRef::Null => None,
            ValueRef::Integer(count) => Some(u64::try_from(count).unwrap_or(0)),
            // `as` saturates (and NaN is 0): the nearest count there is.
            ValueRef::Real(real) => {
                let count = real as u64;
                self.report(column, &real.to_string(), &count.to_string());
                Some(count)
            }
            other => {
                self.report(column, &format!("{other:?}"), "0");
                Some(0)
            }
        })
    }

    fn cost(&self, row: &rusqlite::Row<'_>, idx: usize, column: &str) -> rusqlite::Result<Option<f64>> {
        use rusqlite::types::ValueRef;
        Ok(match row.get_ref(idx)? {
            ValueRef::Null => None,
            ValueRef::Real(cost) if cost.is_finite() && cost >= 0.0 => Some(cost),
            ValueRef::Integer(cost) if cost >= 0 => Some(cost as f64),
            ValueRef::Real(real) => {
                let cost = if real.is_nan() { 0.0 } else { real.clamp(0.0, f64::MAX) };
                self.report(column, &real.to_string(), &cost.to_string());
                Some(cost)
            }
            other => {
                self.report(column, &format!("{other:?}"), "0");
                Some(0.0)
            }
        })
    }

    fn report(&self, column: &str, found: &str, counted: &str) {
        tracing::warn!(
            run = %self.run,
            scope = %self.scope,
            "corrupt usage record: `{column}` holds {found}, counted as {counted}"
        );
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_run(&self, run: NewRun, now: Timestamp) -> Result<RunRecord> {
        self.write(move |ctx| {
            // Checked and inserted in one write transaction (taken with BEGIN IMMEDIATE, so no
            // other process writes in between): two processes that both found no unfinished
            // run cannot both create one.
            let held = ctx
                .tx
                .prepare_cached(
                    "SELECT id, owner, owner_pid, owner_until FROM runs \
                     WHERE name = ?1 AND state = 'running' AND owner IS NOT NULL AND owner != ?2 AND owner_until > ?3 \
                     ORDER BY started_at DESC LIMIT 1",
                )?
                .query_row(params![run.name, run.owner, now.0], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<u32>>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .optional()?;
            if let Some((held_run, owner, pid, until)) = held {
                return Err(Error::RunHeld {
                    plan: run.name,
                    run: held_run,
                    owner,
                    pid: pid.unwrap_or_default(),
                    until: Timestamp(until),
                });
            }
            ctx.tx.execute(
                "INSERT INTO runs (id, name, state, phase, n_phases, started_at, owner, owner_pid, owner_until) \
                 VALUES (?1, ?2, 'running', 0, ?3, ?4, ?5, ?6, ?7)",
                params![run.id, run.name, run.n_phases, now.0, run.owner, run.owner_pid, run.owner_until.0],
            )?;
            ctx.event(&run.id, now, EventKind::RunStarted { name: run.name.clone(), n_phases: run.n_phases })?;
            Ok(RunRecord {
                id: run.id,
                name: run.name,
                state: RunState::Running,
                phase: 0,
                n_phases: run.n_phases,
                n_tasks: 0,
                n_finished: 0,
                started_at: now,
                ended_at: None,
                error: None,
                owner: Some(run.owner),
                owner_pid: Some(run.owner_pid),
                owner_until: Some(run.owner_until),
            })
        })
        .await
    }

    async fn create_tasks(&self, run_id: &str, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<TaskRecord>> {
        let run_id = run_id.to_string();
        self.write(move |ctx| insert_tasks(ctx, &run_id, tasks, now)).await
    }

    async fn apply(&self, run_id: &str, now: Timestamp, writes: Vec<Write>) -> Result<Vec<Applied>> {
        let run_id = run_id.to_string();
        self.write(move |ctx| {
            let mut applied = Vec::with_capacity(writes.len());
            for write in writes {
                applied.push(apply_write(ctx, &run_id, now, write)?);
            }
            Ok(applied)
        })
        .await
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        let id = id.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?
                .query_row(params![id], run_from_row)
                .optional()?)
        })
        .await
    }

    async fn latest_run(&self, name: Option<&str>) -> Result<Option<RunRecord>> {
        let name = name.map(str::to_string);
        self.read(move |conn| {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR name = ?1) ORDER BY started_at DESC, rowid DESC LIMIT 1"
            );
            Ok(conn.prepare_cached(&sql)?.query_row(params![name], run_from_row).optional()?)
        })
        .await
    }

    async fn tasks(&self, run_id: &str, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let run_id = run_id.to_string();
        let filter = filter.clone();
        self.read(move |conn| {
            // Only the filters given become conditions, so that SQLite can use the index by
            // state (an `?2 IS NULL OR ...` term would hide it: a million finished tasks would
            // be read to list ten dead ones).
            let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = ? AND id > ?");
            let mut values: Vec<rusqlite::types::Value> = vec![run_id.into(), filter.after.map_or(0, |id| id.0).into()];
            if let Some(state) = filter.state {
                sql.push_str(" AND state = ?");
                values.push(state.as_str().to_string().into());
            }
            if let Some(workstream) = filter.workstream {
                sql.push_str(" AND workstream = ?");
                values.push(workstream.into());
            }
            if let Some(agent) = filter.agent {
                sql.push_str(" AND assigned_agent = ?");
                values.push(agent.into());
            }
            sql.push_str(" ORDER BY id LIMIT ?");
            values.push(filter.limit.map_or(-1, |limit| limit as i64).into());
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), task_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn task(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?
                .query_row(params![id.0], task_from_row)
                .optional()?)
        })
        .await
    }

    async fn task_counts(&self, run_id: &str) -> Result<Vec<(TaskState, u64)>> {
        let run_id = run_id.to_string();
        self.read(move |conn| {
            // From the counts the triggers keep: a few rows, however many tasks the run has.
            let mut stmt =
                conn.prepare_cached("SELECT state, sum(n) FROM task_counts WHERE run_id = ?1 GROUP BY state")?;
            let rows = stmt.query_map(params![run_id], |row| {
                Ok((parse::<TaskState>(&row.get::<_, String>(0)?)?, row.get::<_, i64>(1)?.max(0) as u64))
            })?;
            let counted: HashMap<TaskState, u64> = rows.collect::<rusqlite::Result<_>>()?;
            Ok(TaskState::ALL.iter().map(|state| (*state, counted.get(state).copied().unwrap_or(0))).collect())
        })
        .await
    }

    async fn unfinished_tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>> {
        let run_id = run_id.to_string();
        self.read(move |conn| {
            // The index by state: the finished tasks are not read.
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = ?1 \
                 AND state IN ('pending', 'ready', 'running', 'suspended') ORDER BY id"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![run_id], task_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn task_counts_by_workstream(&self, run_id: &str) -> Result<Vec<TaskCount>> {
        let run_id = run_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT workstream, state, n FROM task_counts WHERE run_id = ?1 AND n > 0 ORDER BY workstream, state",
            )?;
            let rows = stmt.query_map(params![run_id], |row| {
                let workstream: String = row.get(0)?;
                Ok(TaskCount {
                    workstream: (!workstream.is_empty()).then_some(workstream),
                    state: parse::<TaskState>(&row.get::<_, String>(1)?)?,
                    n: row.get::<_, i64>(2)?.max(0) as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn task_statuses(&self, run_id: &str, ids: &[TaskId]) -> Result<Vec<TaskStatus>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let run_id = run_id.to_string();
        let ids = serde_json::to_string(&ids.iter().map(|id| id.0).collect::<Vec<i64>>())
            .map_err(|error| Error::corrupt(error.to_string()))?;
        self.read(move |conn| {
            // By primary key, one lookup per id: the ids as one JSON array, one statement. The
            // unary `+` keeps SQLite from the index by run, which would walk every task of the
            // run (a million) to find a few.
            let mut stmt = conn.prepare_cached(
                "SELECT id, key, state FROM tasks WHERE id IN (SELECT value FROM json_each(?2)) AND +run_id = ?1 \
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![run_id, ids], task_status_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn tasks_by_key(&self, run_id: &str, keys: &[String]) -> Result<Vec<TaskStatus>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let run_id = run_id.to_string();
        let keys = serde_json::to_string(keys).map_err(|error| Error::corrupt(error.to_string()))?;
        self.read(move |conn| {
            // The unique index by run and key, one lookup per key.
            let mut stmt = conn.prepare_cached(
                "SELECT id, key, state FROM tasks WHERE run_id = ?1 AND key IN (SELECT value FROM json_each(?2)) \
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![run_id, keys], task_status_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn agents(&self, run_id: &str) -> Result<Vec<AgentRecord>> {
        let run_id = run_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT record FROM agents WHERE run_id = ?1 ORDER BY rowid")?;
            let rows =
                stmt.query_map(params![run_id], |row| from_json::<AgentRecord>(&row.get::<_, String>(0)?, "agent"))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn last_event_seq(&self) -> Result<i64> {
        self.read(|conn| Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |row| row.get(0))?)).await
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        let query = query.clone();
        self.read(move |conn| {
            // Only the filters given become conditions, so that SQLite can pick the index that
            // fits (an `?1 IS NULL OR ...` term would hide every index from it).
            let mut sql = String::from("SELECT seq, run_id, at, data FROM events WHERE seq > ?");
            let mut values: Vec<rusqlite::types::Value> = vec![query.since.into()];
            if let Some(run_id) = query.run_id {
                sql.push_str(" AND run_id = ?");
                values.push(run_id.into());
            }
            if let Some(task) = query.task {
                sql.push_str(" AND task_id = ?");
                values.push(task.0.into());
            }
            if !query.kinds.is_empty() {
                // The names as one JSON array: one statement whatever their number.
                sql.push_str(" AND type IN (SELECT value FROM json_each(?))");
                values.push(to_json(&query.kinds).into());
            }
            if let Some(agent) = query.agent {
                sql.push_str(" AND agent = ?");
                values.push(agent.into());
            }
            sql.push_str(" ORDER BY seq LIMIT ?");
            values.push(query.limit.map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX)).into());
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), event_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.events.subscribe()
    }

    async fn record_process(&self, run_id: &str, process: ProcessRecord) -> Result<()> {
        let run_id = run_id.to_string();
        self.write(move |ctx| {
            match &process.owner {
                ProcessOwner::Attempt { task, attempt } => ctx
                    .tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO processes (run_id, task_id, attempt, pgid, host) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![run_id, task.0, attempt, process.pgid, process.host])?,
                ProcessOwner::Agent { agent, generation } => ctx
                    .tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO agent_processes (run_id, agent, generation, pgid, host) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![run_id, agent, sql_generation(*generation), process.pgid, process.host])?,
            };
            Ok(())
        })
        .await
    }

    async fn fire_schedule(&self, run_id: &str, firing: Firing, now: Timestamp) -> Result<Option<TaskRecord>> {
        let run_id = run_id.to_string();
        self.write(move |ctx| {
            let stored: Option<String> = ctx
                .tx
                .prepare_cached("SELECT record FROM schedules WHERE run_id = ?1 AND name = ?2")?
                .query_row(params![run_id, firing.schedule], |row| row.get(0))
                .optional()?;
            let Some(stored) = stored else {
                return Err(Error::NotFound(format!("no schedule `{}` in run {run_id}", firing.schedule)));
            };
            let mut record: ScheduleRecord = from_json(&stored, "schedule")?;
            if record.cursor != firing.expect_cursor {
                return Ok(None);
            }
            let task = insert_tasks(ctx, &run_id, vec![firing.task], now)?.remove(0);
            record.cursor = firing.due;
            record.last_fired_due = Some(firing.due);
            record.last_fired_at = Some(now);
            record.last_task = Some(task.id);
            record.updated_at = now;
            ctx.tx
                .prepare_cached("UPDATE schedules SET cursor = ?1, record = ?2 WHERE run_id = ?3 AND name = ?4")?
                .execute(params![record.cursor.0, to_json(&record), run_id, record.name])?;
            let fired = EventKind::ScheduleFired {
                schedule: record.name.clone(),
                due: firing.due,
                task: task.id,
                n_due: firing.n_due,
                late: firing.late,
            };
            ctx.event(&run_id, now, fired)?;
            Ok(Some(task))
        })
        .await
    }

    async fn schedules(&self, run_id: &str) -> Result<Vec<ScheduleRecord>> {
        let run_id = run_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT record FROM schedules WHERE run_id = ?1 ORDER BY rowid")?;
            let rows = stmt
                .query_map(params![run_id], |row| from_json::<ScheduleRecord>(&row.get::<_, String>(0)?, "schedule"))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn forget_process(&self, run_id: &str, process: &ProcessRecord) -> Result<()> {
        let run_id = run_id.to_string();
        let process = process.clone();
        self.write(move |ctx| {
            match &process.owner {
                ProcessOwner::Attempt { task, attempt } => ctx
                    .tx
                    .prepare_cached(
                        "DELETE FROM processes WHERE run_id = ?1 AND task_id = ?2 AND attempt = ?3 AND pgid = ?4",
                    )?
                    .execute(params![run_id, task.0, attempt, process.pgid])?,
                ProcessOwner::Agent { agent, generation } => ctx
                    .tx
                    .prepare_cached(
                        "DELETE FROM agent_processes WHERE run_id = ?1 AND agent = ?2 AND generation = ?3 AND pgid = ?4",
                    )?
                    .execute(params![run_id, agent, sql_generation(*generation), process.pgid])?,
            };
            Ok(())
        })
        .await
    }

    async fn take_processes(&self, run_id: &str) -> Result<Vec<ProcessRecord>> {
        let run_id = run_id.to_string();
        self.write(move |ctx| {
            let records = {
                let mut stmt = ctx.tx.prepare_cached(
                    "SELECT task_id, attempt, pgid, host FROM processes WHERE run_id = ?1 ORDER BY task_id, attempt",
                )?;
                let rows = stmt.query_map(params![run_id], |row| {
                    Ok(ProcessRecord {
                        owner: ProcessOwner::Attempt { task: TaskId(row.get(0)?), attempt: row.get(1)? },
                        pgid: row.get(2)?,
                        host: row.get(3)?,
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut records = records;
            {
                let mut stmt = ctx.tx.prepare_cached(
                    "SELECT agent, generation, pgid, host FROM agent_processes WHERE run_id = ?1 ORDER BY agent, generation",
                )?;
                let rows = stmt.query_map(params![run_id], |row| {
                    let generation: i64 = row.get(1)?;
                    Ok(ProcessRecord {
                        owner: ProcessOwner::Agent { agent: row.get(0)?, generation: generation.max(0) as u64 },
                        pgid: row.get(2)?,
                        host: row.get(3)?,
                    })
                })?;
                records.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
            }
            ctx.tx.execute("DELETE FROM processes WHERE run_id = ?1", params![run_id])?;
            ctx.tx.execute("DELETE FROM agent_processes WHERE run_id = ?1", params![run_id])?;
            Ok(records)
        })
        .await
    }

    async fn send_message(
        &self,
        run_id: &str,
        message_id: String,
        message: NewMessage,
        recipients: Vec<String>,
        now: Timestamp,
    ) -> Result<Vec<i64>> {
        let (reply, answer) = oneshot::channel();
        let send = QueuedSend { run_id: run_id.to_string(), message_id, message, recipients, now, reply };
        let first = {
            let mut queue = self.inner.sends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.push(send);
            queue.len() == 1
        };
        // The first send into an empty queue submits the operation that will take it and every
        // send queued after it until the writer runs that operation: concurrent senders share one
        // savepoint and one pass of the writer, not just one commit.
        if first {
            self.submit_sends()?;
        }
        answer.await.map_err(|_| Error::closed())?
    }

    async fn due_deliveries(
        &self,
        run_id: &str,
        recipients: &[String],
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<Delivery>> {
        let run_id = run_id.to_string();
        // The recipients as a JSON array, expanded by SQLite: one statement whatever their number.
        let recipients = to_json(&recipients);
        self.read(move |conn| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ?1 AND state = 'pending' \
                 AND next_attempt_at <= ?2 AND recipient IN (SELECT value FROM json_each(?4)) \
                 ORDER BY next_attempt_at, id LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![run_id, now.0, limit as i64, recipients], delivery_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn settle_deliveries(
        &self,
        run_id: &str,
        outcomes: Vec<(Delivery, DeliveryOutcome)>,
        now: Timestamp,
    ) -> Result<()> {
        let run_id = run_id.to_string();
        // Sorted here, not in the writer: of an acknowledged delivery the writer needs only its
        // id, and dropping the rest (its body, data, names) there cost the writer, the busiest
        // thread, a tenth of its time.
        let mut acked: Vec<i64> = Vec::with_capacity(outcomes.len());
        let mut unacked: Vec<(Delivery, DeliveryOutcome)> = Vec::new();
        for (delivery, outcome) in outcomes {
            match outcome {
                DeliveryOutcome::Acked => acked.push(delivery.id),
                other => unacked.push((delivery, other)),
            }
        }
        self.write(move |ctx| {
            settle_acked(ctx, &acked, now)?;
            for (delivery, outcome) in unacked {
                match outcome {
                    DeliveryOutcome::Acked => settle_final(ctx, delivery.id, "acked", None, now)?,
                    DeliveryOutcome::Retry { at, error } => {
                        ctx.tx
                            .prepare_cached(
                                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?2, error = ?3 WHERE id = ?1",
                            )?
                            .execute(params![delivery.id, at.0, error])?;
                    }
                    DeliveryOutcome::Dead { error } => {
                        settle_final(ctx, delivery.id, "dead", Some(&error), now)?;
                        let event = EventKind::MessageDeadLettered {
                            message: delivery.message_id.clone(),
                            to: delivery.to.clone(),
                            attempts: delivery.attempts + 1,
                            error,
                        };
                        ctx.event(&run_id, now, event)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn redeliver(&self, run_id: &str, ids: Option<Vec<i64>>, now: Timestamp) -> Result<Vec<i64>> {
        let run_id = run_id.to_string();
        self.write(move |ctx| {
            // The ids as one JSON array (or null: every dead delivery), one statement whatever
            // their number.
            let ids = ids.map(|ids| to_json(&ids));
            let revived: Vec<(i64, String, String)> = ctx
                .tx
                .prepare_cached(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?2, error = NULL \
                     WHERE run_id = ?1 AND state = 'dead' AND (?3 IS NULL OR id IN (SELECT value FROM json_each(?3))) \
                     RETURNING id, recipient, message_id",
                )?
                .query_map(params![run_id, now.0, ids], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut redelivered = Vec::with_capacity(revived.len());
            for (id, to, message) in revived {
                ctx.inbox.add(&run_id, &to, 1);
                ctx.event(&run_id, now, EventKind::MessageRedelivered { message, to })?;
                redelivered.push(id);
            }
            redelivered.sort_unstable();
            Ok(redelivered)
        })
        .await
    }

    async fn deliveries(&self, run_id: &str, recipient: Option<&str>, limit: u64) -> Result<Vec<Delivery>> {
        let run_id = run_id.to_string();
        let recipient = recipient.map(str::to_string);
        self.read(move |conn| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ?1 AND (?2 IS NULL OR recipient = ?2 \
                 OR sender = ?2) ORDER BY id DESC LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![run_id, recipient, limit as i64], delivery_from_row)?;
            let mut found = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            found.reverse();
            Ok(found)
        })
        .await
    }

    async fn usage(&self, run_id: &str, since: Timestamp) -> Result<Vec<UsageRecord>> {
        let run_id = run_id.to_string();
        self.read(move |conn| {
            // Every run of the plan (the runs with this run's name), oldest first, so that an
            // operator's limit set in a later run replaces one set earlier in the period.
            let mut stmt = conn.prepare_cached(
                "SELECT u.period_start, u.scope_kind, u.scope_name, u.tokens, u.cost_usd, u.has_limit, \
                 u.limit_tokens, u.limit_cost_usd, u.run_id \
                 FROM usage u LEFT JOIN runs r ON r.id = u.run_id \
                 WHERE (u.run_id = ?1 OR u.run_id IN \
                     (SELECT id FROM runs WHERE name = (SELECT name FROM runs WHERE id = ?1))) \
                   AND u.period_start >= ?2 \
                 ORDER BY u.period_start, u.scope_kind, u.scope_name, r.started_at, u.run_id",
            )?;
            let rows = stmt.query_map(params![run_id, since.0], |row| {
                let kind: String = row.get(1)?;
                let name: String = row.get(2)?;
                let scope = Scope::from_parts(&kind, &name).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        format!("unknown budget scope `{kind}`").into(),
                    )
                })?;
                let has_limit: bool = row.get(5)?;
                let lenient = Lenient { run: row.get(8)?, scope: &scope };
                Ok(UsageRecord {
                    period_start: Timestamp(row.get(0)?),
                    spent: Spent {
                        tokens: lenient.count(row, 3, "tokens")?.unwrap_or(0),
                        cost_usd: lenient.cost(row, 4, "cost_usd")?.unwrap_or(0.0),
                    },
                    limit: has_limit
                        .then(|| -> rusqlite::Result<Limit> {
                            Ok(Limit {
                                daily_tokens: lenient.count(row, 6, "limit_tokens")?,
                                cost_usd: lenient.cost(row, 7, "limit_cost_usd")?,
                            })
                        })
                        .transpose()?,
                    scope,
                })
            })?;
            // One record per period and scope: the runs' usage added up, the latest limit.
            let mut records: Vec<UsageRecord> = Vec::new();
            for row in rows {
                let row = row?;
                match records.last_mut() {
                    Some(last) if last.period_start == row.period_start && last.scope == row.scope => {
                        last.spent.add(row.spent);
                        if row.limit.is_some() {
                            last.limit = row.limit;
                        }
                    }
                    _ => records.push(row),
                }
            }
            Ok(records)
        })
        .await
    }

    async fn record_audit(&self, entry: NewAuditEntry) -> Result<i64> {
        self.write(move |ctx| {
            ctx.tx
                .prepare_cached(
                    "INSERT INTO audit (at, actor, role, action, target, outcome, status, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    entry.at.0,
                    entry.actor,
                    entry.role,
                    entry.action,
                    entry.target,
                    entry.outcome,
                    entry.status,
                    entry.detail.as_ref().map(to_json),
                ])?;
            Ok(ctx.tx.last_insert_rowid())
        })
        .await
    }

    async fn prune_audit(&self, actor: &str, keep: u64) -> Result<u64> {
        let actor = actor.to_string();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.write(move |ctx| {
            let deleted = ctx
                .tx
                .prepare_cached(
                    "DELETE FROM audit WHERE actor = ?1 AND id <= \
                 (SELECT id FROM audit WHERE actor = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                )?
                .execute(params![actor, keep])?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let query = query.clone();
        self.read(move |conn| {
            let mut sql = String::from(
                "SELECT id, at, actor, role, action, target, outcome, status, detail FROM audit WHERE id > ?",
            );
            let mut values: Vec<rusqlite::types::Value> = vec![query.since_id.unwrap_or(0).into()];
            if let Some(actor) = query.actor {
                sql.push_str(" AND actor = ?");
                values.push(actor.into());
            }
            sql.push_str(if query.newest_first { " ORDER BY id DESC LIMIT ?" } else { " ORDER BY id LIMIT ?" });
            values.push(query.limit.map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX)).into());
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), |row| {
                Ok(AuditEntry {
                    id: row.get(0)?,
                    at: Timestamp(row.get(1)?),
                    actor: row.get(2)?,
                    role: row.get(3)?,
                    action: row.get(4)?,
                    target: row.get(5)?,
                    outcome: row.get(6)?,
                    status: row.get(7)?,
                    detail: row
                        .get::<_, Option<String>>(8)?
                        .map(|text| from_json(&text, "audit detail"))
                        .transpose()?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan SQLite chooses for `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str, values: &[&dyn rusqlite::ToSql]) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map(values, |row| row.get::<_, String>(3)).unwrap();
        rows.collect::<rusqlite::Result<Vec<_>>>().unwrap().join("\n")
    }

    /// A store written by a baton from before the event indexes and the audit log opens, is
    /// brought up to date, and keeps its events readable with the new filters.
    #[tokio::test]
    async fn a_store_of_schema_5_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        {
            let conn = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..5] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            let kind = EventKind::TaskClaimed { task: TaskId(1), agent: "builder".into(), attempt: 1 };
            conn.execute(
                "INSERT INTO events (run_id, at, type, task_id, agent, data) VALUES ('r1', 1, ?1, 1, 'builder', ?2)",
                params![kind.name(), to_json(&kind)],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, Options::default()).unwrap();
        let version: i64 =
            store.read(|conn| Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)).await.unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let query =
            EventQuery { kinds: vec!["TaskClaimed".into()], agent: Some("builder".into()), ..Default::default() };
        assert_eq!(store.events(&query).await.unwrap().len(), 1);
        let entry = NewAuditEntry {
            at: Timestamp(1),
            actor: "admin".into(),
            role: "admin".into(),
            action: "task.cancel".into(),
            target: None,
            outcome: "ok".into(),
            status: 200,
            detail: None,
        };
        let id = store.record_audit(entry).await.unwrap();
        assert_eq!(store.audit(&AuditQuery::default()).await.unwrap()[0].id, id);
    }

    /// A store from before commands went through the API loses its command table, commands
    /// left unread in it included: no engine takes them any more.
    #[tokio::test]
    async fn the_command_table_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        let before = MIGRATIONS.iter().position(|migration| migration.contains("DROP TABLE control")).unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..before] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", before as i64).unwrap();
            conn.execute(
                "INSERT INTO control (run_id, command, created_at) VALUES ('r1', '{\"command\":\"retry-task\",\"task\":1}', 1)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, Options::default()).unwrap();
        let tables: i64 = store
            .read(|conn| {
                Ok(conn
                    .query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE 'control%'", [], |row| row.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(tables, 0, "neither the table nor its index is left");
    }

    /// A store bricked before totals saturated: its usage rows hold REALs (an overflowed sum)
    /// and worse. Reading the plan's budgets clamps and reports them instead of failing, and
    /// the next report turns the column back into an integer.
    #[tokio::test]
    async fn usage_rows_holding_floats_from_an_overflow_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        let store = SqliteStore::open(&path, Options::default()).unwrap();
        let run = NewRun {
            id: "r1".into(),
            name: "plan".into(),
            n_phases: 1,
            owner: "n".into(),
            owner_pid: 1,
            owner_until: Timestamp(1),
        };
        store.create_run(run, Timestamp(0)).await.unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "INSERT INTO usage (run_id, period_start, scope_kind, scope_name, tokens, cost_usd) VALUES \
                 ('r1', 0, 'global', '', 1.8446744073709552e19, 0.5), \
                 ('r1', 0, 'agent', 'coder', -3.5, 'lots'), \
                 ('r1', 0, 'workstream', 'build', 'many', -1.0);
                 INSERT INTO usage (run_id, period_start, scope_kind, scope_name, has_limit, limit_tokens, limit_cost_usd) \
                 VALUES ('r1', 0, 'agent', 'tester', 1, 9.9e99, 2.0);",
            )
            .unwrap();
        }
        let records = store.usage("r1", Timestamp::ZERO).await.unwrap();
        let spent = |scope: Scope| records.iter().find(|record| record.scope == scope).unwrap().spent;
        assert_eq!(spent(Scope::Global), Spent { tokens: u64::MAX, cost_usd: 0.5 });
        assert_eq!(spent(Scope::Agent("coder".into())), Spent { tokens: 0, cost_usd: 0.0 });
        assert_eq!(spent(Scope::Workstream("build".into())), Spent { tokens: 0, cost_usd: 0.0 });
        let tester = records.iter().find(|record| record.scope == Scope::Agent("tester".into())).unwrap();
        assert_eq!(tester.limit, Some(Limit { daily_tokens: Some(u64::MAX), cost_usd: Some(2.0) }));

        let more = Write::Usage {
            period_start: Timestamp(0),
            scope: Scope::Global,
            spent: Spent { tokens: 5, cost_usd: 0.0 },
            events: vec![],
        };
        store.apply("r1", Timestamp(0), vec![more]).await.unwrap();
        let kind: String = store
            .read(|conn| {
                Ok(conn
                    .query_row("SELECT typeof(tokens) FROM usage WHERE scope_kind = 'global'", [], |row| row.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(kind, "integer");
        let records = store.usage("r1", Timestamp::ZERO).await.unwrap();
        let global = records.iter().find(|record| record.scope == Scope::Global).unwrap();
        assert_eq!(global.spent.tokens, i64::MAX as u64, "the REAL was cast back to the largest count");
    }

    #[test]
    fn event_filters_seek_by_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let by_agent = plan(
            &conn,
            "SELECT seq FROM events WHERE seq > ? AND agent = ? ORDER BY seq LIMIT ?",
            &[&0, &"builder", &10],
        );
        assert!(by_agent.contains("events_by_agent"), "{by_agent}");
        let by_type = plan(
            &conn,
            "SELECT seq FROM events WHERE seq > ? AND type IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?",
            &[&0, &"[\"TaskCompleted\"]", &10],
        );
        assert!(by_type.contains("events_by_type"), "{by_type}");
    }
}
