//! The PostgreSQL store: the same [`Store`] as SQLite's, on a PostgreSQL database
//! (`postgres://user@host/db`).
//!
//! As on SQLite, one writer task owns the only write connection and commits every operation
//! waiting in one transaction (group commit, `writer`); the writes (`ops`) are SQLite's, with
//! the same compare-and-set rules and events. Reads go through a small pool of connections
//! (deadpool-postgres). The schema is migrated at open under an advisory lock (`migrations`);
//! rows read back as records in `rows`; PostgreSQL's errors become the store's in `error`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use baton_core::budget::{Limit, Scope, Spent, UsageRecord};
use baton_core::messages::{Delivery, NewMessage};
use baton_core::model::{AgentRecord, NewTask, RunRecord, TaskCount, TaskId, TaskRecord, TaskState, TaskStatus};
use baton_core::sched::Write;
use baton_core::schedule::{Firing, ScheduleRecord};
use baton_core::{Event, Timestamp};

use crate::{
    Applied, AuditEntry, AuditQuery, DeliveryOutcome, Error, EventQuery, NewAuditEntry, NewRun, ProcessRecord, Result,
    Store, TaskFilter,
};

pub mod copy;
mod error;
mod migrations;
mod ops;
mod rows;
mod writer;

pub use self::error::redact;
use self::ops::{Op, Output};
use self::rows::{
    DELIVERY_COLUMNS, RUN_COLUMNS, TASK_COLUMNS, delivery_from_row, event_from_row, from_json, parse, run_from_row,
    task_from_row, task_status_from_row,
};
use self::writer::{Job, Writer, write_loop};

/// Connections the readers share.
const READ_CONNECTIONS: usize = 4;

/// How long connecting may take when the URL says nothing (`connect_timeout`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct Inner {
    /// The URL without its password, for messages.
    shown: String,
    writer: mpsc::UnboundedSender<Job>,
    pool: deadpool_postgres::Pool,
    /// Committed events, each shared by every subscriber (as on SQLite).
    events: broadcast::Sender<Arc<Event>>,
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// The driver's configuration of `url`, with Baton's defaults (a connect timeout, the
/// application name); refused when it does not parse.
pub fn config(url: &str) -> Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|error| Error::Refused(format!("invalid store url `{}`: {error}", redact(url))))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("baton");
    }
    Ok(config)
}

/// A new connection, its connection task spawned on the current runtime.
async fn connect(config: &tokio_postgres::Config) -> Result<Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "store connection ended");
        }
    });
    Ok(client)
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

/// A store's schema: the version it has and the one this baton knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    pub version: i64,
    pub known: i64,
}

impl PostgresStore {
    /// Connects to the database `url` names, brings its schema up to date and starts the
    /// writer. Needs a Tokio runtime (the writer and the connections are tasks on it).
    pub async fn open(url: &str) -> Result<PostgresStore> {
        let shown = redact(url);
        let config = config(url)?;
        let mut client = connect(&config).await.map_err(|error| opening(&shown, error))?;
        migrations::migrate(&mut client).await.map_err(|error| opening(&shown, error))?;

        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            NoTls,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(READ_CONNECTIONS)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|error| Error::Unavailable {
                message: format!("cannot open the store at `{shown}`: cannot make its connection pool: {error}"),
                source: Some(Box::new(error)),
            })?;
        let (job_tx, job_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(65_536);
        tokio::spawn(write_loop(Writer::new(config, client), job_rx, events.clone()));
        Ok(PostgresStore { inner: Arc::new(Inner { shown, writer: job_tx, pool, events }) })
    }

    /// Applies the migrations this baton has to the database `url` names (what opening does
    /// first), and says which version it is at.
    pub async fn migrate(url: &str) -> Result<SchemaVersion> {
        let shown = redact(url);
        let mut client = connect(&config(url)?).await.map_err(|error| opening(&shown, error))?;
        let version = migrations::migrate(&mut client).await.map_err(|error| opening(&shown, error))?;
        Ok(SchemaVersion { version, known: migrations::MIGRATIONS.len() as i64 })
    }

    /// The schema version of the database `url` names, read without changing anything.
    pub async fn schema_version(url: &str) -> Result<SchemaVersion> {
        let shown = redact(url);
        let client = connect(&config(url)?).await.map_err(|error| opening(&shown, error))?;
        let version = migrations::version(&client).await.map_err(|error| opening(&shown, error))?;
        Ok(SchemaVersion { version, known: migrations::MIGRATIONS.len() as i64 })
    }

    /// The URL, without its password.
    pub fn shown_url(&self) -> &str {
        &self.inner.shown
    }

    /// Runs `op` in the writer's next group-commit transaction.
    async fn write(&self, op: Op) -> Result<Output> {
        let (reply, answer) = oneshot::channel();
        self.inner.writer.send(Job { op, reply }).map_err(|_| Error::closed())?;
        answer.await.map_err(|_| Error::closed())?
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.inner.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query(&statement, params).await?)
    }

    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let client = self.inner.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query_opt(&statement, params).await?)
    }
}

/// An output of the wrong type: the writer answered another operation's.
fn mismatched() -> Error {
    Error::corrupt("store error: the writer answered with another operation's output")
}

/// A parameter list built with the query: each value gets the next `$n`.
#[derive(Default)]
struct Params {
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Params {
    fn push(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.values.push(Box::new(value));
        format!("${}", self.values.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values.iter().map(|value| value.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

fn all<T>(rows: &[Row], read: fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(read).collect()
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_run(&self, run: NewRun, now: Timestamp) -> Result<RunRecord> {
        match self.write(Op::CreateRun { run, now }).await? {
            Output::Run(run) => Ok(*run),
            _ => Err(mismatched()),
        }
    }

    async fn create_tasks(&self, run_id: &str, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<TaskRecord>> {
        match self.write(Op::CreateTasks { run_id: run_id.to_string(), tasks, now }).await? {
            Output::Tasks(tasks) => Ok(tasks),
            _ => Err(mismatched()),
        }
    }

    async fn apply(&self, run_id: &str, now: Timestamp, writes: Vec<Write>) -> Result<Vec<Applied>> {
        match self.write(Op::Apply { run_id: run_id.to_string(), now, writes }).await? {
            Output::Applied(applied) => Ok(applied),
            _ => Err(mismatched()),
        }
    }

    async fn append_transcript(
        &self,
        run_id: &str,
        task: TaskId,
        attempt: u32,
        entries: Vec<baton_core::transcript::Entry>,
    ) -> Result<()> {
        self.write(Op::AppendTranscript { run_id: run_id.to_string(), task, attempt, entries }).await.map(|_| ())
    }

    async fn transcript(&self, task: TaskId) -> Result<Vec<baton_core::transcript::Entry>> {
        let rows =
            self.query("SELECT entry FROM transcripts WHERE task_id = $1 ORDER BY attempt, seq", &[&task.0]).await?;
        rows.iter().map(|row| from_json(row.try_get::<_, &str>(0)?, "a transcript entry")).collect()
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        let row = self.query_opt(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"), &[&id]).await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn latest_run(&self, name: Option<&str>) -> Result<Option<RunRecord>> {
        let row = match name {
            Some(name) => {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE name = $1 ORDER BY started_at DESC, ord DESC LIMIT 1"
                );
                self.query_opt(&sql, &[&name]).await?
            }
            None => {
                let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, ord DESC LIMIT 1");
                self.query_opt(&sql, &[]).await?
            }
        };
        row.as_ref().map(run_from_row).transpose()
    }

    async fn tasks(&self, run_id: &str, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        // Only the filters given become conditions, so that the planner can use the index by
        // state.
        let mut params = Params::default();
        let mut sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = {} AND id > {}",
            params.push(run_id.to_string()),
            params.push(filter.after.map_or(0, |id| id.0))
        );
        if let Some(state) = filter.state {
            sql.push_str(&format!(" AND state = {}", params.push(state.as_str().to_string())));
        }
        if let Some(workstream) = &filter.workstream {
            sql.push_str(&format!(" AND workstream = {}", params.push(workstream.clone())));
        }
        if let Some(agent) = &filter.agent {
            sql.push_str(&format!(" AND assigned_agent = {}", params.push(agent.clone())));
        }
        let limit = filter.limit.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
        sql.push_str(&format!(" ORDER BY id LIMIT {}", params.push(limit)));
        let rows = self.query(&sql, &params.refs()).await?;
        all(&rows, task_from_row)
    }

    async fn task(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        let row = self.query_opt(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"), &[&id.0]).await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn task_counts(&self, run_id: &str) -> Result<Vec<(TaskState, u64)>> {
        let rows = self
            .query("SELECT state, sum(n)::bigint FROM task_counts WHERE run_id = $1 GROUP BY state", &[&run_id])
            .await?;
        let mut counted: HashMap<TaskState, u64> = HashMap::new();
        for row in rows {
            counted.insert(parse::<TaskState>(row.try_get::<_, &str>(0)?)?, row.try_get::<_, i64>(1)?.max(0) as u64);
        }
        Ok(TaskState::ALL.iter().map(|state| (*state, counted.get(state).copied().unwrap_or(0))).collect())
    }

    async fn unfinished_tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = $1 \
             AND state IN ('pending', 'ready', 'running', 'suspended') ORDER BY id"
        );
        let rows = self.query(&sql, &[&run_id]).await?;
        all(&rows, task_from_row)
    }

    async fn task_counts_by_workstream(&self, run_id: &str) -> Result<Vec<TaskCount>> {
        let rows = self
            .query(
                "SELECT workstream, state, n FROM task_counts WHERE run_id = $1 AND n > 0 ORDER BY workstream, state",
                &[&run_id],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let workstream: String = row.try_get(0)?;
                Ok(TaskCount {
                    workstream: (!workstream.is_empty()).then_some(workstream),
                    state: parse::<TaskState>(row.try_get::<_, &str>(1)?)?,
                    n: row.try_get::<_, i64>(2)?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn task_statuses(&self, run_id: &str, ids: &[TaskId]) -> Result<Vec<TaskStatus>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let rows = self
            .query("SELECT id, key, state FROM tasks WHERE id = ANY($2) AND run_id = $1 ORDER BY id", &[&run_id, &ids])
            .await?;
        all(&rows, task_status_from_row)
    }

    async fn tasks_by_key(&self, run_id: &str, keys: &[String]) -> Result<Vec<TaskStatus>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                "SELECT id, key, state FROM tasks WHERE run_id = $1 AND key = ANY($2) ORDER BY id",
                &[&run_id, &keys],
            )
            .await?;
        all(&rows, task_status_from_row)
    }

    async fn agents(&self, run_id: &str) -> Result<Vec<AgentRecord>> {
        let rows = self.query("SELECT record FROM agents WHERE run_id = $1 ORDER BY ord", &[&run_id]).await?;
        rows.iter().map(|row| from_json(row.try_get::<_, &str>(0)?, "agent")).collect()
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        // Only the filters given become conditions, so that the planner can pick the index
        // that fits.
        let mut params = Params::default();
        let mut sql = format!("SELECT seq, run_id, at, data FROM events WHERE seq > {}", params.push(query.since));
        if let Some(run_id) = &query.run_id {
            sql.push_str(&format!(" AND run_id = {}", params.push(run_id.clone())));
        }
        if let Some(task) = query.task {
            sql.push_str(&format!(" AND task_id = {}", params.push(task.0)));
        }
        if !query.kinds.is_empty() {
            sql.push_str(&format!(" AND type = ANY({})", params.push(query.kinds.clone())));
        }
        if let Some(agent) = &query.agent {
            sql.push_str(&format!(" AND agent = {}", params.push(agent.clone())));
        }
        let limit = query.limit.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
        sql.push_str(&format!(" ORDER BY seq LIMIT {}", params.push(limit)));
        let rows = self.query(&sql, &params.refs()).await?;
        all(&rows, event_from_row)
    }

    async fn last_event_seq(&self) -> Result<i64> {
        let rows = self.query("SELECT coalesce(max(seq), 0) FROM events", &[]).await?;
        Ok(rows.first().map(|row| row.try_get(0)).transpose()?.unwrap_or(0))
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.events.subscribe()
    }

    async fn record_process(&self, run_id: &str, process: ProcessRecord) -> Result<()> {
        self.write(Op::RecordProcess { run_id: run_id.to_string(), process }).await.map(|_| ())
    }

    async fn forget_process(&self, run_id: &str, process: &ProcessRecord) -> Result<()> {
        self.write(Op::ForgetProcess { run_id: run_id.to_string(), process: process.clone() }).await.map(|_| ())
    }

    async fn fire_schedule(&self, run_id: &str, firing: Firing, now: Timestamp) -> Result<Option<TaskRecord>> {
        match self.write(Op::FireSchedule { run_id: run_id.to_string(), firing: Box::new(firing), now }).await? {
            Output::Fired(task) => Ok(task.map(|task| *task)),
            _ => Err(mismatched()),
        }
    }

    async fn schedules(&self, run_id: &str) -> Result<Vec<ScheduleRecord>> {
        let rows = self.query("SELECT record FROM schedules WHERE run_id = $1 ORDER BY ord", &[&run_id]).await?;
        rows.iter().map(|row| from_json(row.try_get::<_, &str>(0)?, "schedule")).collect()
    }

    async fn send_message(
        &self,
        run_id: &str,
        message_id: String,
        message: NewMessage,
        recipients: Vec<String>,
        now: Timestamp,
    ) -> Result<Vec<i64>> {
        let op = Op::SendMessage { run_id: run_id.to_string(), message_id, message, recipients, now };
        match self.write(op).await? {
            Output::Ids(ids) => Ok(ids),
            _ => Err(mismatched()),
        }
    }

    async fn due_deliveries(
        &self,
        run_id: &str,
        recipients: &[String],
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE run_id = $1 AND state = 'pending' \
             AND next_attempt_at <= $2 AND recipient = ANY($4) ORDER BY next_attempt_at, id LIMIT $3"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(&sql, &[&run_id, &now.0, &limit, &recipients]).await?;
        all(&rows, delivery_from_row)
    }

    async fn settle_deliveries(
        &self,
        run_id: &str,
        outcomes: Vec<(Delivery, DeliveryOutcome)>,
        now: Timestamp,
    ) -> Result<()> {
        // Sorted here, not in the writer, as on SQLite: of an acknowledged delivery the writer
        // needs only its id.
        let mut acked: Vec<i64> = Vec::with_capacity(outcomes.len());
        let mut unacked: Vec<(Delivery, DeliveryOutcome)> = Vec::new();
        for (delivery, outcome) in outcomes {
            match outcome {
                DeliveryOutcome::Acked => acked.push(delivery.id),
                other => unacked.push((delivery, other)),
            }
        }
        self.write(Op::SettleDeliveries { run_id: run_id.to_string(), acked, unacked, now }).await.map(|_| ())
    }

    async fn redeliver(&self, run_id: &str, ids: Option<Vec<i64>>, now: Timestamp) -> Result<Vec<i64>> {
        match self.write(Op::Redeliver { run_id: run_id.to_string(), ids, now }).await? {
            Output::Ids(ids) => Ok(ids),
            _ => Err(mismatched()),
        }
    }

    async fn hand_over(&self, run_id: &str, holder: &str, agent: &str, now: Timestamp) -> Result<Vec<Delivery>> {
        let op = Op::HandOver { run_id: run_id.to_string(), holder: holder.to_string(), agent: agent.to_string(), now };
        match self.write(op).await? {
            Output::Deliveries(handed) => Ok(handed),
            _ => Err(mismatched()),
        }
    }

    async fn deliveries(&self, run_id: &str, agent: Option<&str>, limit: u64) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE run_id = $1 AND ($2::text IS NULL OR recipient = $2 \
             OR sender = $2) ORDER BY id DESC LIMIT $3"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(&sql, &[&run_id, &agent, &limit]).await?;
        let mut found = all(&rows, delivery_from_row)?;
        found.reverse();
        Ok(found)
    }

    async fn take_processes(&self, run_id: &str) -> Result<Vec<ProcessRecord>> {
        match self.write(Op::TakeProcesses { run_id: run_id.to_string() }).await? {
            Output::Processes(records) => Ok(records),
            _ => Err(mismatched()),
        }
    }

    async fn usage(&self, run_id: &str, since: Timestamp) -> Result<Vec<UsageRecord>> {
        // Every run of the plan (the runs with this run's name), oldest first, so that an
        // operator's limit set in a later run replaces one set earlier in the period.
        let rows = self
            .query(
                "SELECT u.period_start, u.scope_kind, u.scope_name, u.tokens, u.cost_usd, u.has_limit, \
                 u.limit_tokens, u.limit_cost_usd, u.run_id \
                 FROM usage u LEFT JOIN runs r ON r.id = u.run_id \
                 WHERE (u.run_id = $1 OR u.run_id IN \
                     (SELECT id FROM runs WHERE name = (SELECT name FROM runs WHERE id = $1))) \
                   AND u.period_start >= $2 \
                 ORDER BY u.period_start, u.scope_kind, u.scope_name, r.started_at, u.run_id",
                &[&run_id, &since.0],
            )
            .await?;
        let mut records: Vec<UsageRecord> = Vec::new();
        for row in rows {
            let kind: &str = row.try_get(1)?;
            let name: &str = row.try_get(2)?;
            let scope = Scope::from_parts(kind, name)
                .ok_or_else(|| Error::corrupt(format!("store error: unknown budget scope `{kind}`")))?;
            let cost = |value: Option<f64>| value.map(|cost| if cost.is_finite() { cost.max(0.0) } else { 0.0 });
            let has_limit: bool = row.try_get(5)?;
            let record = UsageRecord {
                period_start: Timestamp(row.try_get(0)?),
                spent: Spent {
                    tokens: row.try_get::<_, i64>(3)?.max(0) as u64,
                    cost_usd: cost(row.try_get(4)?).unwrap_or(0.0),
                },
                limit: if has_limit {
                    Some(Limit {
                        daily_tokens: row.try_get::<_, Option<i64>>(6)?.map(|tokens| tokens.max(0) as u64),
                        cost_usd: cost(row.try_get(7)?),
                    })
                } else {
                    None
                },
                scope,
            };
            records.push(record);
        }
        Ok(crate::merge_usage(records))
    }

    async fn record_audit(&self, entry: NewAuditEntry) -> Result<i64> {
        match self.write(Op::RecordAudit { entry }).await? {
            Output::Id(id) => Ok(id),
            _ => Err(mismatched()),
        }
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut params = Params::default();
        let mut sql = format!(
            "SELECT id, at, actor, role, action, target, outcome, status, detail FROM audit WHERE id > {}",
            params.push(query.since_id.unwrap_or(0))
        );
        if let Some(actor) = &query.actor {
            sql.push_str(&format!(" AND actor = {}", params.push(actor.clone())));
        }
        let order = if query.newest_first { "id DESC" } else { "id" };
        let limit = query.limit.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
        sql.push_str(&format!(" ORDER BY {order} LIMIT {}", params.push(limit)));
        let rows = self.query(&sql, &params.refs()).await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get(0)?,
                    at: Timestamp(row.try_get(1)?),
                    actor: row.try_get(2)?,
                    role: row.try_get(3)?,
                    action: row.try_get(4)?,
                    target: row.try_get(5)?,
                    outcome: row.try_get(6)?,
                    status: u16::try_from(row.try_get::<_, i64>(7)?).unwrap_or_default(),
                    detail: row
                        .try_get::<_, Option<&str>>(8)?
                        .map(|text| from_json(text, "audit detail"))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn put_push_config(&self, config: crate::PushConfigRecord) -> Result<()> {
        match self.write(Op::PutPushConfig(config)).await? {
            Output::Unit => Ok(()),
            _ => Err(mismatched()),
        }
    }

    async fn delete_push_config(&self, task: TaskId, id: &str) -> Result<bool> {
        match self.write(Op::DeletePushConfig { task: task.0, id: id.to_string() }).await? {
            Output::Count(n) => Ok(n > 0),
            _ => Err(mismatched()),
        }
    }

    async fn push_configs(&self, task: Option<TaskId>) -> Result<Vec<crate::PushConfigRecord>> {
        let task = task.map(|task| task.0);
        let rows = self
            .query(
                "SELECT task_id, id, owner, config FROM push_configs \
                 WHERE $1::BIGINT IS NULL OR task_id = $1 ORDER BY task_id, seq",
                &[&task],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(crate::PushConfigRecord {
                    task: TaskId(row.try_get(0)?),
                    id: row.try_get(1)?,
                    owner: row.try_get(2)?,
                    config: from_json(row.try_get::<_, &str>(3)?, "push config")?,
                })
            })
            .collect()
    }

    async fn prune_audit(&self, actor: &str, keep: u64) -> Result<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        match self.write(Op::PruneAudit { actor: actor.to_string(), keep }).await? {
            Output::Count(n) => Ok(n),
            _ => Err(mismatched()),
        }
    }
}
