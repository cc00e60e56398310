//! Baton's durable store: the [`Store`] trait, its embedded SQLite implementation and its
//! PostgreSQL one.
//!
//! Architecture invariant: this is the only crate with SQL. State tables are the source of
//! truth; every state change is written in the same transaction as its events. Writes are
//! compare-and-set where a stale writer could otherwise overwrite newer state (a task changes
//! only from the state and attempt its writer last saw), which is what makes completion
//! exactly-once.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use baton_core::budget::UsageRecord;
use baton_core::model::{AgentRecord, NewTask, RunRecord, TaskCount, TaskId, TaskRecord, TaskState, TaskStatus};
use baton_core::sched::Write;
use baton_core::schedule::{Firing, ScheduleRecord};
use baton_core::{Event, EventKind, Timestamp};

pub mod admin;
pub mod bulk;
pub mod metrics;
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "test-suite")]
pub mod suite;
#[cfg(feature = "test-suite")]
pub mod testing;
mod url;

pub use postgres::{PostgresStore, SchemaVersion};
pub use sqlite::SqliteStore;
pub use url::{StoreUrl, open};

/// What kind of failure a store [`Error`] is: what a caller branches on, and what the HTTP API
/// answers (one table, in the server's error module). Backends map their own errors to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// What was asked for is not in the store (a run, a schedule).
    NotFound,
    /// The store's state conflicts with the write: a key already taken, a plan held by another
    /// owner.
    Conflict,
    /// The caller's input was refused (a dependency on an unknown task, a dependency cycle, a
    /// store URL that names no backend this baton has).
    Refused,
    /// No room: an inbox at its limit, or a full disk. Trying again later may succeed.
    Full,
    /// The store cannot serve now: it is closed, busy or locked past the timeout, cannot be
    /// opened, or a commit failed (an IO error). Nothing of the failed operation was stored.
    Unavailable,
    /// The store holds or produced something this baton cannot read: a damaged database, a
    /// record that does not parse, or an unexpected database error.
    Corrupt,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Refused => "refused",
            ErrorKind::Full => "full",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Corrupt => "corrupt",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The underlying cause of an [`Error`], when there is one (a database error), kept for logs
/// and [`std::error::Error::source`]; callers branch on [`Error::kind`], never on this.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// A store's error: one variant per [`ErrorKind`] (and [`Error::RunHeld`], a conflict with the
/// fields the CLI reports). The message is for people; branch on [`Error::kind`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A new run of a plan was refused: another owner holds a live claim on an unfinished run
    /// of it. A [`ErrorKind::Conflict`].
    #[error("the plan `{plan}` is being run by {owner} (run {run})")]
    RunHeld { plan: String, run: String, owner: String, pid: u32, until: Timestamp },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Full(String),
    #[error("{message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Source>,
    },
    #[error("{message}")]
    Corrupt {
        message: String,
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) | Error::RunHeld { .. } => ErrorKind::Conflict,
            Error::Refused(_) => ErrorKind::Refused,
            Error::Full(_) => ErrorKind::Full,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
        }
    }

    /// An error of `kind` with `message` (and no source).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        let message = message.into();
        match kind {
            ErrorKind::NotFound => Error::NotFound(message),
            ErrorKind::Conflict => Error::Conflict(message),
            ErrorKind::Refused => Error::Refused(message),
            ErrorKind::Full => Error::Full(message),
            ErrorKind::Unavailable => Error::Unavailable { message, source: None },
            ErrorKind::Corrupt => Error::Corrupt { message, source: None },
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::Unavailable { message: message.into(), source: None }
    }

    pub fn corrupt(message: impl Into<String>) -> Error {
        Error::Corrupt { message: message.into(), source: None }
    }

    /// The store was closed (its writer has stopped): the process is shutting down.
    pub fn closed() -> Error {
        Error::unavailable("the store is closed: the process is stopping")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What became of one [`Write`] in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// A compare-and-set found the record changed; nothing of this write was stored.
    Conflict(String),
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub workstream: Option<String>,
    pub agent: Option<String>,
    pub limit: Option<u64>,
    /// Only tasks with an id greater than this (for paging).
    pub after: Option<TaskId>,
}

/// Which events to read: those matching every filter given, in sequence order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub run_id: Option<String>,
    /// Only events with a sequence number greater than this.
    pub since: i64,
    pub task: Option<TaskId>,
    /// At most this many events (counting only those that match the filters).
    pub limit: Option<u64>,
    /// Only events of these types, named as by [`EventKind::name`] (`"TaskCompleted"`); all
    /// types when empty. A name no event has matches nothing.
    pub kinds: Vec<String>,
    /// Only events about this agent ([`EventKind::agent`]).
    pub agent: Option<String>,
}

/// A process group Baton started, recorded so that a node taking over a run from a dead one
/// can kill what the dead one left running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    pub owner: ProcessOwner,
    pub pgid: i32,
    pub host: String,
}

/// What a recorded process group was started for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProcessOwner {
    /// One attempt of a task (a per-task agent's process).
    Attempt { task: TaskId, attempt: u32 },
    /// A long-running agent (a worker, a terminal program), by its start in this node: the
    /// `generation`-th start of `agent`'s runtime.
    Agent { agent: String, generation: u64 },
}

/// How one delivery attempt of a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Acked,
    /// Not acknowledged: tried again at `at`.
    Retry {
        at: Timestamp,
        error: String,
    },
    /// Not acknowledged after the last try.
    Dead {
        error: String,
    },
}

/// An entry for the audit log: who did what through the control plane, and how it ended.
/// Audit entries belong to no run: a server outlives its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAuditEntry {
    pub at: Timestamp,
    /// The token's subject: `admin`, `agent:builder`.
    pub actor: String,
    pub role: String,
    /// What was asked: `POST /tasks`, `task.cancel`.
    pub action: String,
    /// What it was asked of (a task, an agent, a path), when anything.
    pub target: Option<String>,
    /// `ok`, `denied` or `error: ...`.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    pub detail: Option<serde_json::Value>,
}

/// An A2A push notification config a client set on a task: kept so that a restarted server
/// still delivers to it. The store keeps it as it is given (`config`: the webhook and its
/// credentials, as the server writes them) and knows only its keys and owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushConfigRecord {
    pub task: TaskId,
    /// The config's id, unique per task.
    pub id: String,
    /// The token that set it (its id).
    pub owner: String,
    pub config: serde_json::Value,
}

/// A recorded [`NewAuditEntry`], with the id the store gave it (growing, never reused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub status: u16,
    pub detail: Option<serde_json::Value>,
}

/// Which audit entries to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries with an id greater than this.
    pub since_id: Option<i64>,
    /// Only entries of this actor.
    pub actor: Option<String>,
    /// At most this many entries (the newest ones with `newest_first`, else the oldest).
    pub limit: Option<u64>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
}

/// One attempt at a task, as its events tell it ([`attempts_from_events`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt's number. Not unique: an attempt interrupted by a shutdown is re-run under
    /// the same number, and a manual retry counts from 1 again.
    pub attempt: u32,
    pub agent: Option<String>,
    /// When it was claimed; `None` for an attempt whose claim is not among the events.
    pub started_at: Option<Timestamp>,
    /// `None` while it runs.
    pub ended_at: Option<Timestamp>,
    /// `succeeded`, `failed`, `lease expired`, `cancelled` or `requeued` (interrupted, to be run
    /// again); `None` while it runs.
    pub outcome: Option<String>,
    /// Why it failed, or why it was cancelled.
    pub error: Option<String>,
}

/// The event types [`attempts_from_events`] reads.
pub const ATTEMPT_EVENT_KINDS: [&str; 6] =
    ["TaskClaimed", "TaskCompleted", "TaskFailed", "TaskLeaseExpired", "TaskRequeued", "TaskCancelled"];

/// A task's attempts, oldest first, from its events in sequence order (events of other types
/// are skipped; all events must be about the same task). A claim starts an attempt; completion,
/// failure, lease expiry, cancellation and a re-queue of a running task end the open one.
pub fn attempts_from_events(events: &[Event]) -> Vec<AttemptRecord> {
    let mut attempts: Vec<AttemptRecord> = Vec::new();
    for event in events {
        let (attempt, agent, outcome, error) = match &event.kind {
            EventKind::TaskClaimed { agent, attempt, .. } => {
                attempts.push(AttemptRecord {
                    attempt: *attempt,
                    agent: Some(agent.clone()),
                    started_at: Some(event.at),
                    ended_at: None,
                    outcome: None,
                    error: None,
                });
                continue;
            }
            EventKind::TaskCompleted { agent, attempt, .. } => (Some(*attempt), Some(agent), "succeeded", None),
            EventKind::TaskFailed { agent, attempt, reason, .. } => {
                (Some(*attempt), agent.as_ref(), "failed", Some(reason))
            }
            EventKind::TaskLeaseExpired { agent, attempt, .. } => {
                (Some(*attempt), agent.as_ref(), "lease expired", None)
            }
            EventKind::TaskCancelled { reason, .. } => (None, None, "cancelled", Some(reason)),
            EventKind::TaskRequeued { from: TaskState::Running, .. } => (None, None, "requeued", None),
            _ => continue,
        };
        let open = attempts
            .iter_mut()
            .rev()
            .find(|open| open.ended_at.is_none() && attempt.is_none_or(|attempt| open.attempt == attempt));
        let ended = match open {
            Some(open) => open,
            // A cancellation or re-queue with no attempt running ends nothing.
            None if attempt.is_none() => continue,
            // An end whose claim is not among the events.
            None => {
                attempts.push(AttemptRecord {
                    attempt: attempt.unwrap_or_default(),
                    agent: None,
                    started_at: None,
                    ended_at: None,
                    outcome: None,
                    error: None,
                });
                attempts.last_mut().expect("just pushed")
            }
        };
        ended.ended_at = Some(event.at);
        ended.outcome = Some(outcome.to_string());
        ended.error = error.cloned();
        if ended.agent.is_none() {
            ended.agent = agent.cloned();
        }
    }
    attempts
}

/// A run to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: String,
    pub name: String,
    pub n_phases: u32,
    pub owner: String,
    pub owner_pid: u32,
    pub owner_until: Timestamp,
}

impl NewRun {
    /// The run as [`Store::create_run`] answers it: running, at phase 0, claimed by its owner.
    pub(crate) fn record(self, now: Timestamp) -> RunRecord {
        RunRecord {
            id: self.id,
            name: self.name,
            state: baton_core::model::RunState::Running,
            phase: 0,
            n_phases: self.n_phases,
            n_tasks: 0,
            n_finished: 0,
            started_at: now,
            ended_at: None,
            error: None,
            owner: Some(self.owner),
            owner_pid: Some(self.owner_pid),
            owner_until: Some(self.owner_until),
        }
    }
}

/// A task just created from `task` under `id`, as [`Store::create_tasks`] answers it: pending,
/// with its dependencies still to be resolved (`depends_on` empty).
pub(crate) fn created_task(task: &NewTask, id: TaskId, run_id: &str, now: Timestamp) -> TaskRecord {
    TaskRecord {
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
        parent: task.parent,
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
    }
}

/// A `Write::Fence` of `owner` on run `run_id`, whose claim is `held` (`None`: no such run;
/// `Some(None)`: nobody holds it, as after the run finished or was interrupted): a conflict
/// unless `owner` holds it, which refuses the whole batch, as the backends apply a batch in
/// one savepoint. (The engine that finished a run writes its last attempts' outcomes
/// unfenced: its fenced batch finished the run.)
pub(crate) fn fenced(run_id: &str, owner: &str, held: Option<Option<String>>) -> Result<()> {
    match held {
        None => Err(Error::NotFound(format!("no run `{run_id}` in the store"))),
        Some(Some(holder)) if holder == owner => Ok(()),
        Some(holder) => Err(Error::Conflict(format!(
            "fenced: run {run_id} is led by {} now, not by this node ({owner}); it writes no more",
            holder.as_deref().unwrap_or("no node")
        ))),
    }
}

/// One usage record per period and scope from rows ordered by period, scope, then run (oldest
/// first): the runs' usage added up, the latest limit set.
pub(crate) fn merge_usage(rows: impl IntoIterator<Item = UsageRecord>) -> Vec<UsageRecord> {
    let mut records: Vec<UsageRecord> = Vec::new();
    for row in rows {
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
    records
}

/// The durable store. One implementation per database; one conformance suite ([`suite`]) for
/// all of them.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a run, claimed by its owner, and writes `RunStarted`.
    async fn create_run(&self, run: NewRun, now: Timestamp) -> Result<RunRecord>;

    /// Creates tasks in a run, resolving dependencies given by key against the run's tasks
    /// (including those in the same batch), and writes `TaskCreated` for each.
    async fn create_tasks(&self, run_id: &str, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<TaskRecord>>;

    /// Applies a batch of writes in one transaction, with their events.
    async fn apply(&self, run_id: &str, now: Timestamp, writes: Vec<Write>) -> Result<Vec<Applied>>;

    /// Appends events that change no record.
    async fn append_events(&self, run_id: &str, now: Timestamp, events: Vec<EventKind>) -> Result<()> {
        self.apply(run_id, now, events.into_iter().map(Write::Event).collect()).await.map(|_| ())
    }

    /// Appends entries to the transcript of a task's attempt (an LLM agent's conversation),
    /// after those it has. Written by the engine, the run's single writer.
    async fn append_transcript(
        &self,
        run_id: &str,
        task: TaskId,
        attempt: u32,
        entries: Vec<baton_core::transcript::Entry>,
    ) -> Result<()> {
        let _ = (run_id, task, attempt, entries);
        Ok(())
    }

    /// The transcripts of a task's attempts, oldest attempt first, each in order; each entry's
    /// `attempt` says whose. Empty for a task no LLM agent ran.
    async fn transcript(&self, task: TaskId) -> Result<Vec<baton_core::transcript::Entry>> {
        let _ = task;
        Ok(Vec::new())
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>>;

    /// The most recently started run, of the plan `name` when given.
    async fn latest_run(&self, name: Option<&str>) -> Result<Option<RunRecord>>;

    async fn tasks(&self, run_id: &str, filter: &TaskFilter) -> Result<Vec<TaskRecord>>;

    async fn task(&self, id: TaskId) -> Result<Option<TaskRecord>>;

    /// The task's attempts, oldest first, derived from its events ([`attempts_from_events`]).
    async fn attempts(&self, task: TaskId) -> Result<Vec<AttemptRecord>> {
        let query = EventQuery {
            task: Some(task),
            kinds: ATTEMPT_EVENT_KINDS.iter().map(|kind| kind.to_string()).collect(),
            ..EventQuery::default()
        };
        Ok(attempts_from_events(&self.events(&query).await?))
    }

    /// How many of the run's tasks are in each state, counted by the store without loading
    /// them: every [`TaskState`] in [`TaskState::ALL`] order, zeros included (a gauge per state
    /// then falls back to zero). All zeros for a run the store does not have.
    async fn task_counts(&self, run_id: &str) -> Result<Vec<(TaskState, u64)>>;

    /// The run's unfinished tasks (pending, ready, running, suspended), by id: what a restart
    /// loads. Finished tasks are not read.
    async fn unfinished_tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>>;

    /// How many of the run's tasks are in each state, per workstream (`None`: tasks without
    /// one), kept by the store as tasks are written rather than counted: a restart reads the
    /// counts of millions of finished tasks from a few rows. States with no task are left out.
    async fn task_counts_by_workstream(&self, run_id: &str) -> Result<Vec<TaskCount>>;

    /// The id, key and state of the run's tasks among `ids`, by id; ids of no task of the run
    /// are left out. What the engine needs of finished tasks that others depend on.
    async fn task_statuses(&self, run_id: &str, ids: &[TaskId]) -> Result<Vec<TaskStatus>>;

    /// The run's tasks with one of these keys, by id (a key names at most one task of a run).
    async fn tasks_by_key(&self, run_id: &str, keys: &[String]) -> Result<Vec<TaskStatus>>;

    async fn agents(&self, run_id: &str) -> Result<Vec<AgentRecord>>;

    async fn events(&self, query: &EventQuery) -> Result<Vec<Event>>;

    /// The sequence number of the newest event in the store, 0 when there is none: where a
    /// stream that wants only what happens from now on starts.
    async fn last_event_seq(&self) -> Result<i64>;

    /// Events committed through this handle from now on, once each, in sequence order, and
    /// only once committed: when a write returns, its events have been published. Other
    /// processes' events are read with [`Store::events`]. A subscriber that falls more than
    /// the channel's capacity behind is told it lagged.
    fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<Event>>;

    /// Records a running process group (an attempt's, or a long-running agent's); a record of
    /// the same owner is replaced.
    async fn record_process(&self, run_id: &str, process: ProcessRecord) -> Result<()>;

    /// Forgets a process group that has ended: `process`'s owner's record, if it is still of
    /// the same group (a newer start of the same owner may have replaced it).
    async fn forget_process(&self, run_id: &str, process: &ProcessRecord) -> Result<()>;

    /// Performs a schedule's firing in one transaction: creates its task (with `TaskCreated`),
    /// moves the schedule's cursor from `firing.expect_cursor` to `firing.due` and writes
    /// `ScheduleFired`. `None`, writing nothing, when the cursor is elsewhere: that due time
    /// was dealt with already. This is what makes a due time fire at most once.
    async fn fire_schedule(&self, run_id: &str, firing: Firing, now: Timestamp) -> Result<Option<TaskRecord>>;

    /// The run's schedules, as last written ([`Write::Schedule`] and firings).
    async fn schedules(&self, run_id: &str) -> Result<Vec<ScheduleRecord>>;

    /// Stores a message for each recipient (one delivery each) and writes `MessageSent`.
    /// Refused, storing nothing, when a recipient's inbox is full.
    async fn send_message(
        &self,
        run_id: &str,
        message_id: String,
        message: baton_core::messages::NewMessage,
        recipients: Vec<String>,
        now: Timestamp,
    ) -> Result<Vec<i64>>;

    /// Pending deliveries to `recipients` whose time has come, oldest first.
    async fn due_deliveries(
        &self,
        run_id: &str,
        recipients: &[String],
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<baton_core::messages::Delivery>>;

    /// Records how delivery attempts ended (dead letters get their event).
    async fn settle_deliveries(
        &self,
        run_id: &str,
        outcomes: Vec<(baton_core::messages::Delivery, DeliveryOutcome)>,
        now: Timestamp,
    ) -> Result<()>;

    /// Dead deliveries back to pending, tried again from `now` with a fresh count of tries: those
    /// of `ids`, or every dead delivery of the run when `None`. Each gets a
    /// `MessageRedelivered` event; a delivery that is not dead (or not of the run) is left as it
    /// is. Returns the ids redelivered.
    async fn redeliver(&self, run_id: &str, ids: Option<Vec<i64>>, now: Timestamp) -> Result<Vec<i64>>;

    /// Hands the pending deliveries held for `holder` (a topic nobody followed,
    /// [`baton_core::messages::topic_holder`]) over to `agent`, due now; returns them as they are
    /// now. Counted in `agent`'s inbox from then on (it may go over the limit: they were sent
    /// when the topic's limit allowed them).
    async fn hand_over(
        &self,
        run_id: &str,
        holder: &str,
        agent: &str,
        now: Timestamp,
    ) -> Result<Vec<baton_core::messages::Delivery>>;

    /// The latest deliveries to or from `agent` (all when `None`), oldest first.
    async fn deliveries(
        &self,
        run_id: &str,
        agent: Option<&str>,
        limit: u64,
    ) -> Result<Vec<baton_core::messages::Delivery>>;

    /// The process groups recorded for a run (attempts' first, then agents'), removed from the
    /// store.
    async fn take_processes(&self, run_id: &str) -> Result<Vec<ProcessRecord>>;

    /// Budget usage of a run's plan per period and scope, from the period starting at `since`
    /// on, with the limits operators set: budgets belong to the plan, so the usage of every run
    /// with the run's name counts (one record per period and scope, added up; a limit set in a
    /// later run replaces an earlier one). A fresh run does not start the day's budget anew.
    async fn usage(&self, run_id: &str, since: Timestamp) -> Result<Vec<UsageRecord>>;

    /// Records an entry in the audit log, durably before it returns, and gives its id.
    async fn record_audit(&self, entry: NewAuditEntry) -> Result<i64>;

    /// Reads the audit log.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;

    /// Deletes `actor`'s audit entries but the newest `keep`, and says how many went. Keeps
    /// the entries of callers nobody vouches for (failed authentication) from growing without
    /// bound.
    async fn prune_audit(&self, actor: &str, keep: u64) -> Result<u64>;

    /// Keeps an A2A push config, durably before it returns: a config of the same task and id
    /// is replaced.
    async fn put_push_config(&self, config: PushConfigRecord) -> Result<()>;

    /// Deletes task `task`'s push config `id`; whether there was one.
    async fn delete_push_config(&self, task: TaskId, id: &str) -> Result<bool>;

    /// The push configs kept: `task`'s, or every task's; by task, then in the order they were
    /// first put.
    async fn push_configs(&self, task: Option<TaskId>) -> Result<Vec<PushConfigRecord>>;
}
