//! The embedded SQLite store.
//!
//! One writer thread owns the only write connection. Callers send it operations; it takes
//! every operation waiting, runs each in its own savepoint inside one transaction, commits
//! once (one fsync with `synchronous=FULL`) and then answers them all: group commit, which is
//! how durability and throughput coexist on one disk. Reads use a separate connection; in WAL
//! mode they never wait for the writer.
//!
//! This module is the store itself (`SqliteStore` and its `Store` implementation). Beside it:
//! `options` (the URL's options, how a connection is configured), `writer` (the writer thread
//! and group commit), `migrations` (the schema), `writes` (the scheduler's writes), `messages`
//! (sends and deliveries), `rows` (records to and from rows) and `error` (SQLite's errors as
//! the store's kinds).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{broadcast, mpsc, oneshot};

use baton_core::budget::{Limit, Scope, Spent, UsageRecord};
use baton_core::model::{AgentRecord, NewTask, RunRecord, TaskCount, TaskId, TaskRecord, TaskState, TaskStatus};
use baton_core::sched::Write;
use baton_core::schedule::{Firing, ScheduleRecord};
use baton_core::{Event, EventKind, Timestamp};

use crate::{
    Applied, AuditEntry, AuditQuery, DeliveryOutcome, Error, EventQuery, NewAuditEntry, NewRun, ProcessOwner,
    ProcessRecord, PushConfigRecord, Result, Store, TaskFilter,
};
use baton_core::messages::{Delivery, NewMessage};

mod error;
mod messages;
pub(crate) mod migrations;
mod options;
mod rows;
pub(crate) mod rows_shared;
#[cfg(test)]
mod tests;
mod writer;
mod writes;

use self::messages::{QueuedSend, SendReply, full_inbox, insert_message, settle_acked, settle_final};
use self::migrations::migrate;
pub use self::options::{Options, Synchronous};
use self::options::{configure, opening};
use self::rows::{
    DELIVERY_COLUMNS, Lenient, RUN_COLUMNS, TASK_COLUMNS, delivery_from_row, event_from_row, from_json, parse,
    run_from_row, sql_generation, task_from_row, task_status_from_row, to_json,
};
use self::writer::{Job, Op, Output, Reply, WriteCtx, write_loop};
use self::writes::{apply_write, insert_tasks};

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
            Ok(run.record(now))
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

    async fn hand_over(&self, run_id: &str, holder: &str, agent: &str, now: Timestamp) -> Result<Vec<Delivery>> {
        let (run_id, holder, agent) = (run_id.to_string(), holder.to_string(), agent.to_string());
        self.write(move |ctx| {
            let sql = format!(
                "UPDATE deliveries SET recipient = ?3, next_attempt_at = ?4 \
                 WHERE run_id = ?1 AND recipient = ?2 AND state = 'pending' RETURNING {DELIVERY_COLUMNS}"
            );
            let mut handed: Vec<Delivery> = ctx
                .tx
                .prepare_cached(&sql)?
                .query_map(params![run_id, holder, agent, now.0], delivery_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let n = handed.len() as i64;
            if n > 0 {
                ctx.inbox.add(&run_id, &holder, -n);
                ctx.inbox.add(&run_id, &agent, n);
            }
            handed.sort_by_key(|delivery| delivery.id);
            Ok(handed)
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
            Ok(crate::merge_usage(rows.collect::<rusqlite::Result<Vec<_>>>()?))
        })
        .await
    }

    async fn append_transcript(
        &self,
        run_id: &str,
        task: TaskId,
        attempt: u32,
        entries: Vec<baton_core::transcript::Entry>,
    ) -> Result<()> {
        let run_id = run_id.to_string();
        self.write(move |ctx| {
            let next: i64 = ctx.tx.query_row(
                "SELECT coalesce(max(seq), -1) + 1 FROM transcripts WHERE task_id = ?1 AND attempt = ?2",
                params![task.0, attempt],
                |row| row.get(0),
            )?;
            let mut insert = ctx.tx.prepare_cached(
                "INSERT INTO transcripts (run_id, task_id, attempt, seq, entry) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (offset, mut entry) in entries.into_iter().enumerate() {
                entry.attempt = attempt;
                insert.execute(params![run_id, task.0, attempt, next + offset as i64, to_json(&entry)])?;
            }
            Ok(())
        })
        .await
    }

    async fn transcript(&self, task: TaskId) -> Result<Vec<baton_core::transcript::Entry>> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT entry FROM transcripts WHERE task_id = ?1 ORDER BY attempt, seq")?;
            let rows = stmt.query_map(params![task.0], |row| row.get::<_, String>(0))?;
            let mut entries = Vec::new();
            for row in rows {
                entries.push(from_json(&row?, "a transcript entry")?);
            }
            Ok(entries)
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

    async fn put_push_config(&self, config: PushConfigRecord) -> Result<()> {
        self.write(move |ctx| {
            ctx.tx
                .prepare_cached(
                    "INSERT INTO push_configs (task_id, id, owner, config, seq) \
                     VALUES (?1, ?2, ?3, ?4, (SELECT coalesce(max(seq), 0) + 1 FROM push_configs)) \
                     ON CONFLICT (task_id, id) DO UPDATE SET owner = excluded.owner, config = excluded.config",
                )?
                .execute(params![config.task.0, config.id, config.owner, to_json(&config.config)])?;
            Ok(())
        })
        .await
    }

    async fn delete_push_config(&self, task: TaskId, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.write(move |ctx| {
            let deleted = ctx
                .tx
                .prepare_cached("DELETE FROM push_configs WHERE task_id = ?1 AND id = ?2")?
                .execute(params![task.0, id])?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn push_configs(&self, task: Option<TaskId>) -> Result<Vec<PushConfigRecord>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT task_id, id, owner, config FROM push_configs \
                 WHERE ?1 IS NULL OR task_id = ?1 ORDER BY task_id, seq",
            )?;
            let rows = stmt.query_map(params![task.map(|task| task.0)], |row| {
                Ok(PushConfigRecord {
                    task: TaskId(row.get(0)?),
                    id: row.get(1)?,
                    owner: row.get(2)?,
                    config: from_json(&row.get::<_, String>(3)?, "push config")?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
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
