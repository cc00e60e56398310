//! The records Baton keeps: tasks, agents and runs, with their states. The store persists
//! these shapes; the scheduler changes them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A task's id, assigned by the store when the task is created.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub i64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Priority of a workstream, agent or task. Ordered so that `Critical` sorts first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Medium,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Medium, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    /// 0 for critical … 3 for low: the rank stored and sorted on.
    pub fn rank(self) -> i64 {
        self as i64
    }

    pub fn from_rank(rank: i64) -> Priority {
        match rank {
            0 => Priority::Critical,
            1 => Priority::High,
            2 => Priority::Medium,
            _ => Priority::Low,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a task is in its lifecycle (DESIGN.md §1).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for its dependencies or for its workstream's phase.
    Pending,
    /// May be claimed (once `not_before` has passed, for a retry).
    Ready,
    /// Leased by one agent.
    Running,
    Succeeded,
    /// No attempts left; kept for inspection and manual retry.
    Dead,
    Cancelled,
    /// Held because something upstream failed; released when it recovers.
    Suspended,
}

impl TaskState {
    /// This state's place in [`TaskState::ALL`].
    pub fn index(self) -> usize {
        match self {
            TaskState::Pending => 0,
            TaskState::Ready => 1,
            TaskState::Running => 2,
            TaskState::Succeeded => 3,
            TaskState::Dead => 4,
            TaskState::Cancelled => 5,
            TaskState::Suspended => 6,
        }
    }

    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Ready,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Dead,
        TaskState::Cancelled,
        TaskState::Suspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Ready => "ready",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
            TaskState::Suspended => "suspended",
        }
    }

    /// A terminal task is finished: it counts towards progress and never runs again unless an
    /// operator retries it.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        TaskState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| {
            let known: Vec<&str> = TaskState::ALL.iter().map(|state| state.as_str()).collect();
            format!("unknown task state `{text}` (one of: {})", known.join(", "))
        })
    }
}

/// How one attempt of a task ended, as reported by the agent runtime. A failure is data, not an
/// `Err`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Succeeded { result: serde_json::Value },
    Failed { reason: String },
}

/// What is known of a task without its record: enough to decide about the tasks that depend
/// on it (a finished task is not held in memory; the store answers for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub id: TaskId,
    pub key: Option<String>,
    pub state: TaskState,
}

/// How many tasks of a run are in one state in one workstream (`None`: without one), as the
/// store counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCount {
    pub workstream: Option<String>,
    pub state: TaskState,
    pub n: u64,
}

/// A task as stored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub run_id: String,
    /// Identity within a run: the configuration's `key`, or one derived from the title.
    pub key: Option<String>,
    pub workstream: Option<String>,
    pub title: String,
    pub description: String,
    pub input: serde_json::Value,
    pub requires: Vec<String>,
    /// Pinned agent, if any.
    pub agent: Option<String>,
    pub depends_on: Vec<TaskId>,
    pub priority: Priority,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub resources: Vec<String>,
    /// Tokens the task expects to use: it does not start while a budget that covers it has
    /// less left (pre-flight).
    #[serde(default)]
    pub estimated_tokens: Option<u64>,
    /// The task whose attempt created this one (an agent's sub-task), if any.
    #[serde(default)]
    pub parent: Option<TaskId>,
    pub state: TaskState,
    /// Number of attempts started so far.
    pub attempt: u32,
    /// The agent running (or that last ran) the task.
    pub assigned_agent: Option<String>,
    /// The node holding the task's lease while it runs.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    /// A retried task is not claimed before this time.
    pub not_before: Option<Timestamp>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

/// The mutable part of a task that a transition changes. The store writes it with a
/// compare-and-set on the task's previous `(state, attempt)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskChange {
    pub state: TaskState,
    pub attempt: u32,
    pub assigned_agent: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub not_before: Option<Timestamp>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub finished_at: Option<Timestamp>,
}

impl TaskRecord {
    pub fn change(&self) -> TaskChange {
        TaskChange {
            state: self.state,
            attempt: self.attempt,
            assigned_agent: self.assigned_agent.clone(),
            lease_owner: self.lease_owner.clone(),
            lease_expires_at: self.lease_expires_at,
            not_before: self.not_before,
            result: self.result.clone(),
            error: self.error.clone(),
            finished_at: self.finished_at,
        }
    }

    pub fn apply(&mut self, change: TaskChange, now: Timestamp) {
        self.state = change.state;
        self.attempt = change.attempt;
        self.assigned_agent = change.assigned_agent;
        self.lease_owner = change.lease_owner;
        self.lease_expires_at = change.lease_expires_at;
        self.not_before = change.not_before;
        self.result = change.result;
        self.error = change.error;
        self.finished_at = change.finished_at;
        self.updated_at = now;
    }
}

/// A task to create. Dependencies name other tasks by key (resolved within the run when the
/// batch is written) or by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    pub key: Option<String>,
    pub workstream: Option<String>,
    pub title: String,
    pub description: String,
    pub input: serde_json::Value,
    pub requires: Vec<String>,
    pub agent: Option<String>,
    pub depends_on: Vec<TaskRef>,
    pub priority: Priority,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub resources: Vec<String>,
    /// Tokens the task expects to use ([`TaskRecord::estimated_tokens`]).
    #[serde(default)]
    pub estimated_tokens: Option<u64>,
    /// The task whose attempt creates this one ([`TaskRecord::parent`]).
    #[serde(default)]
    pub parent: Option<TaskId>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskRef {
    Id(TaskId),
    Key(String),
}

/// An agent's status as shown to users.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    /// Declared; its workstream's phase has not started.
    Waiting,
    Starting,
    /// Running a task.
    Active,
    /// Started and without work.
    Idle,
    /// Its process exited; it restarts after a backoff.
    Restarting,
    /// Failed too many tasks in a row: no new tasks until a cooldown ends.
    CircuitOpen,
    /// A terminal agent that printed nothing for longer than its `stall_after` while working
    /// on a task. It keeps its task and gets no new one until it prints again.
    Stalled,
    /// A terminal agent whose screen ends in a question (one of its `prompt_patterns`): it
    /// waits for someone to answer through `baton attach`. It keeps its task and gets no new
    /// one until it prints again.
    WaitingInput,
    /// Idle, but a budget that covers it (its own, its workstream's or the global one) is
    /// exhausted: it gets no new task until the budget resets or its limit is raised. Derived
    /// for display: the scheduler keeps such an agent `idle` and skips it when dispatching.
    BlockedBudget,
    /// Not heard from: nothing executes its run (shown by readers; never stored).
    Offline,
    /// Could not be started or gave up.
    Failed,
    /// Its work is done, or it was stopped.
    Stopped,
}

impl AgentState {
    /// Started and not yet stopped or failed: there is something to stop.
    pub fn is_started(self) -> bool {
        matches!(
            self,
            AgentState::Starting
                | AgentState::Idle
                | AgentState::Active
                | AgentState::Restarting
                | AgentState::CircuitOpen
                | AgentState::Stalled
                | AgentState::WaitingInput
        )
    }

    pub const ALL: [AgentState; 12] = [
        AgentState::Waiting,
        AgentState::Starting,
        AgentState::Active,
        AgentState::Idle,
        AgentState::Restarting,
        AgentState::CircuitOpen,
        AgentState::Stalled,
        AgentState::WaitingInput,
        AgentState::BlockedBudget,
        AgentState::Offline,
        AgentState::Failed,
        AgentState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Waiting => "waiting",
            AgentState::Starting => "starting",
            AgentState::Active => "active",
            AgentState::Idle => "idle",
            AgentState::Restarting => "restarting",
            AgentState::CircuitOpen => "circuit-open",
            AgentState::Stalled => "stalled",
            AgentState::WaitingInput => "waiting-input",
            AgentState::BlockedBudget => "blocked-budget",
            AgentState::Offline => "offline",
            AgentState::Failed => "failed",
            AgentState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent as stored, for `baton agents`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub run_id: String,
    pub name: String,
    pub role: String,
    pub workstream: Option<String>,
    pub priority: Priority,
    pub capabilities: Vec<String>,
    pub runtime: String,
    pub state: AgentState,
    pub running: u32,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    pub last_activity: Option<Timestamp>,
    pub updated_at: Timestamp,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    /// Stopped before its end by a shutdown (Ctrl-C, SIGTERM): nobody executes it, and the next
    /// `baton run` resumes it as it would a run whose process died while `running`.
    Interrupted,
    Succeeded,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    /// Whether the run has ended (succeeded or failed); a running or interrupted run has not,
    /// and is resumed by the next `baton run`.
    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "running" => Ok(RunState::Running),
            "interrupted" => Ok(RunState::Interrupted),
            "succeeded" => Ok(RunState::Succeeded),
            "failed" => Ok(RunState::Failed),
            other => Err(format!("unknown run state `{other}`")),
        }
    }
}

/// One execution of a plan.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub name: String,
    pub state: RunState,
    /// 1-based index of the current phase; 0 before the first starts.
    pub phase: u32,
    pub n_phases: u32,
    pub n_tasks: u64,
    pub n_finished: u64,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// The node executing the run and until when its claim holds.
    pub owner: Option<String>,
    pub owner_pid: Option<u32>,
    pub owner_until: Option<Timestamp>,
}

impl RunRecord {
    pub fn progress(&self) -> f64 {
        if self.n_tasks == 0 {
            return if self.state.is_finished() { 1.0 } else { 0.0 };
        }
        self.n_finished as f64 / self.n_tasks as f64
    }
}
