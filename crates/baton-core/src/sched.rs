//! The scheduler: the engine's decisions, as a state machine with no IO.
//!
//! It holds a run's unfinished tasks and its agents in memory, takes commands (start, an attempt's outcome,
//! cancel, a clock tick) with the current time, changes its state and returns [`Effects`]:
//! the writes to make durable (each with its events) and the effects to perform afterwards
//! (start an agent, hand a task to an agent, kill an attempt). The runtime makes the writes
//! durable *before* it performs the effects, so a crash never leaves an effect without its
//! record.
//!
//! Finished tasks are not held: a task's record leaves memory once it ends and its writes are
//! durable ([`Scheduler::writes_durable`]). What the run still needs of them is kept compact —
//! counts per workstream and state, the outcome of those that unfinished tasks depend on, a few
//! dead and cancelled tasks for the failure report — and the store answers the rest (the
//! runtime loads a finished task back for an operator's retry, [`Scheduler::restore`], and the
//! outcome of a new task's finished dependencies, [`Scheduler::settle`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::budget::{Budgets, Limit, Scope, Spent, UsageRecord};
use crate::config::{AgentSpec, ConflictPolicy, Plan};
use crate::event::EventKind;
use crate::model::{
    AgentRecord, AgentState, Outcome, RunState, TaskChange, TaskCount, TaskId, TaskRecord, TaskState, TaskStatus,
};
use crate::schedule::{Firing, ScheduleRecord};
use crate::time::{Timestamp, format_duration};

/// A durable change. The store applies a batch of them in one transaction, writing each
/// write's events with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Write {
    /// Change a task, only if it is still in `expect_state` at `expect_attempt`.
    Task { id: TaskId, expect_state: TaskState, expect_attempt: u32, change: TaskChange, events: Vec<EventKind> },
    /// Insert or replace an agent's record.
    Agent { record: AgentRecord, events: Vec<EventKind> },
    /// Update the run's progress and state.
    Run { change: RunChange, events: Vec<EventKind> },
    /// The writes of this batch are `owner`'s, the node that leads the run: the batch is
    /// applied only while `owner` holds the run's claim, else refused whole (nothing of it
    /// stored) as a conflict. A leader deposed by another node's takeover can never write
    /// again. First in a batch.
    Fence { owner: String },
    /// Extend the leases of every running task this node owns.
    RenewLeases { owner: String, until: Timestamp },
    /// Take or renew the claim on executing the run, only if it is held by `expect_owner` (or
    /// by nobody, or expired by `now`). `owner: None` releases it.
    RunOwner { owner: Option<String>, pid: Option<u32>, until: Option<Timestamp>, expect_owner: Option<String> },
    /// The run stopped before its end (a shutdown): it becomes `interrupted` and its claim is
    /// released, only if it is `running` and held by `expect_owner`; with a `RunInterrupted`
    /// event.
    RunInterrupted { expect_owner: String },
    /// An event about no record in particular.
    Event(EventKind),
    /// Insert or replace a schedule's record (its cursor, last firing, paused flag).
    Schedule { record: ScheduleRecord, events: Vec<EventKind> },
    /// Add to a budget scope's usage in a period (creating its record), with events.
    Usage { period_start: Timestamp, scope: Scope, spent: Spent, events: Vec<EventKind> },
    /// Set an operator's limit on a budget scope for a period, with events.
    BudgetLimit { period_start: Timestamp, scope: Scope, limit: Limit, events: Vec<EventKind> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunChange {
    pub state: RunState,
    pub phase: u32,
    pub n_tasks: u64,
    pub n_finished: u64,
    pub ended_at: Option<Timestamp>,
    pub error: Option<String>,
}

/// What the store holds of a run: the input to [`Scheduler::new`].
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub run_id: String,
    /// The phase the run had reached (0 for a new run).
    pub phase: u32,
    /// The run's unfinished tasks. Finished ones given here are counted and dropped (their
    /// outcome kept for the unfinished tasks that depend on them).
    pub tasks: Vec<TaskRecord>,
    /// How many of the run's finished tasks there are, per workstream and state (entries for
    /// unfinished states are ignored: those tasks are in `tasks`).
    pub finished: Vec<TaskCount>,
    /// What became of the finished tasks that tasks in `tasks` depend on.
    pub dependencies: Vec<TaskStatus>,
    /// The first few dead and cancelled tasks (by id), for the failure report.
    pub failures: Vec<TaskRecord>,
    pub agents: Vec<AgentRecord>,
    pub schedules: Vec<ScheduleRecord>,
    /// Budget usage of the current period (older records are ignored).
    pub usage: Vec<UsageRecord>,
}

/// A task handed to an agent. The attempt number identifies it: an outcome for an older
/// attempt is rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub task: TaskRecord,
    pub agent: String,
}

/// What the runtime must do after a command: make `writes` durable, then perform the rest.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    pub writes: Vec<Write>,
    pub start_agents: Vec<String>,
    pub stop_agents: Vec<String>,
    pub assignments: Vec<Assignment>,
    /// Running attempts to kill (cancelled, or their workstream timed out).
    pub kills: Vec<(TaskId, u32)>,
    /// Tasks schedules create, performed after the writes ([`Scheduler::schedule_fired`]).
    pub fire: Vec<Firing>,
    /// Ready tasks that several agents can take, held until the coordinator chooses among
    /// them (the agents' names) and [`Scheduler::assignment_chosen`] is called.
    pub choose_agent: Vec<(TaskId, Vec<String>)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.start_agents.is_empty()
            && self.stop_agents.is_empty()
            && self.assignments.is_empty()
            && self.kills.is_empty()
            && self.fire.is_empty()
            && self.choose_agent.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("no task {0} in this run")]
    UnknownTask(TaskId),
    #[error("task {task} is {state}; only a {wanted} task can be {verb}")]
    WrongState { task: TaskId, state: TaskState, wanted: &'static str, verb: &'static str },
    /// A late or duplicate outcome: the attempt no longer holds the task.
    #[error("outcome for task {task} attempt {attempt} rejected: {reason}")]
    Stale { task: TaskId, attempt: u32, reason: String },
    #[error("no agent `{0}` in this run")]
    UnknownAgent(String),
    #[error("no schedule `{0}` in this plan")]
    UnknownSchedule(String),
    #[error("no budget `{0}` in this run; name global, workstream:NAME or agent:NAME")]
    UnknownScope(String),
    #[error("agent `{0}` exists already; update it instead, or pick another name")]
    AgentExists(String),
    #[error("no workstream `{0}` in this run; add it first")]
    UnknownWorkstream(String),
    #[error("workstream `{0}` exists already")]
    WorkstreamExists(String),
    #[error("workstream dependency cycle: {0}")]
    WorkstreamCycle(String),
    #[error("invalid agent `{name}`: {reason}")]
    InvalidAgent { name: String, reason: String },
    /// A reservation of tokens that a budget does not allow now.
    #[error("budget `{scope}` does not allow {tokens} more tokens now: {reason}")]
    OverBudget { scope: String, tokens: u64, reason: String },
    #[error("{0}")]
    InvalidRequest(String),
}

#[derive(Debug, Clone)]
struct AgentSlot {
    spec: AgentSpec,
    state: AgentState,
    running: u32,
    succeeded: u64,
    failed: u64,
    last_activity: Option<Timestamp>,
    /// When it was restarted, within its restart window.
    restarts: Vec<Timestamp>,
    restart_at: Option<Timestamp>,
    consecutive_failures: u32,
    circuit_until: Option<Timestamp>,
    /// Stopped by an operator: it is expected back, so its tasks wait instead of being
    /// cancelled as unrunnable.
    held_by_operator: bool,
    /// Removed from the plan while the run went on (`sched/reconfigure.rs`). The slot stays,
    /// so that indices held elsewhere stay valid, but it is out of `agent_index` and skipped
    /// wherever agents are iterated.
    removed: bool,
}

#[derive(Debug, Clone)]
struct Dying {
    agent_idx: Option<usize>,
    resources: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct WorkstreamState {
    started: bool,
    done: bool,
    failed: bool,
    n_total: u64,
    n_open: u64,
    n_running: u64,
    n_unsuccessful: u64,
    deadline: Option<Timestamp>,
}

/// A run's progress, per workstream, for progress bars.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub phase: u32,
    pub n_phases: u32,
    /// The run's tasks per state, in [`TaskState::ALL`] order.
    pub by_state: [u64; 7],
    pub workstreams: Vec<WorkstreamProgress>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkstreamProgress {
    /// `None` for tasks without a workstream.
    pub name: Option<String>,
    pub phase: u32,
    pub started: bool,
    pub n_total: u64,
    pub n_finished: u64,
    pub n_running: u64,
    /// Dead or cancelled.
    pub n_unsuccessful: u64,
}

/// How an attempt was lost.
#[derive(Debug, Clone, Copy)]
enum Lost {
    /// It ran and failed; `jitter` in `[0, 1)` spreads the retry.
    Attempt { jitter: f64 },
    /// Its node stopped while it ran.
    Lease,
    /// Its agent died or was stopped while it ran.
    Agent,
}

/// Equal jitter: half the delay fixed, half random, so retries spread without ever being
/// immediate. `jitter` is a number in `[0, 1)` from the caller's random source.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exponent).min(max);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// How many dead and cancelled tasks the failure report names (each kind).
const FAILURES_SHOWN: usize = 5;

/// The first dead and cancelled tasks (by id), each as `name (reason)`, for the failure report;
/// how many there are is in the per-state counts. A task retried leaves it.
#[derive(Debug, Clone, Default)]
struct Failures {
    dead: BTreeMap<TaskId, String>,
    cancelled: BTreeMap<TaskId, String>,
}

impl Failures {
    fn note(&mut self, task: &TaskRecord) {
        let shown = match task.state {
            TaskState::Dead => &mut self.dead,
            TaskState::Cancelled => &mut self.cancelled,
            _ => return,
        };
        let name = task.key.clone().unwrap_or_else(|| task.id.to_string());
        shown.insert(task.id, format!("{name} ({})", task.error.as_deref().unwrap_or("no reason recorded")));
        if shown.len() > FAILURES_SHOWN {
            shown.pop_last();
        }
    }

    fn forget(&mut self, id: TaskId) {
        self.dead.remove(&id);
        self.cancelled.remove(&id);
    }
}

fn status_of(task: &TaskRecord) -> TaskStatus {
    TaskStatus { id: task.id, key: task.key.clone(), state: task.state }
}

pub struct Scheduler {
    plan: Plan,
    run_id: String,
    node: String,
    /// The run's unfinished tasks. A task leaves when it ends (for `ended`) and comes back only
    /// when an operator retries it: memory follows the work in flight, not the run's history.
    tasks: HashMap<TaskId, TaskRecord>,
    /// Records of tasks that ended, or that the runtime loaded back ([`Scheduler::restore`]),
    /// since the writes were last made durable ([`Scheduler::writes_durable`]): until then the
    /// store may not know what became of them.
    ended: HashMap<TaskId, TaskRecord>,
    /// The unfinished tasks that depend on each task.
    dependents: HashMap<TaskId, Vec<TaskId>>,
    /// What became of finished tasks that unfinished ones depend on. An entry goes with its
    /// last dependant.
    settled: HashMap<TaskId, TaskStatus>,
    /// Entries the runtime settled ([`Scheduler::settle`]) that may have no dependant: checked
    /// when the writes are durable.
    unclaimed: Vec<TaskId>,
    /// A few dead and cancelled tasks, for the failure report.
    failures: Failures,
    ready: BTreeSet<(i64, TaskId)>,
    delayed: BTreeSet<(Timestamp, TaskId)>,
    agents: Vec<AgentSlot>,
    agent_index: HashMap<String, usize>,
    workstreams: BTreeMap<String, WorkstreamState>,
    /// Counters of the tasks without a workstream.
    unassigned: WorkstreamState,
    /// Resource keys held by running tasks, and by killed attempts until they have exited.
    held: HashMap<String, TaskId>,
    /// Killed attempts whose process has not exited yet: they keep their agent slot and
    /// resources until the runtime reports them ended.
    dying: HashMap<(TaskId, u32), Dying>,
    /// (task, holder) conflicts already reported, so that a waiting task says so once.
    conflicts_reported: HashMap<TaskId, HashSet<Holder>>,
    /// Resources agents hold explicitly (the protocol's `resource/acquire`), by key.
    leases: HashMap<String, leases::AgentLease>,
    /// Tasks suspended because a critical agent upstream failed, by that agent's index.
    suspended_by: HashMap<TaskId, usize>,
    /// Critical agents that are down (restarting, or failed for good), by index: a task
    /// created downstream of one meanwhile is held (or cancelled) like those that were there.
    outages: HashMap<usize, supervise::Outage>,
    phase: u32,
    n_running: u32,
    n_finished: u64,
    state: RunState,
    /// While held, nothing new is assigned (a shutdown lets running attempts finish).
    held_back: bool,
    /// An open run does not end when its tasks are done: more may come (a server, a benchmark).
    stays_open: bool,
    run_dirty: bool,
    dirty_agents: BTreeSet<usize>,
    next_lease_renewal: Option<Timestamp>,
    /// `[[schedules]]` (`sched/schedules.rs`).
    schedules: Vec<schedules::ScheduleSlot>,
    /// The schedule of each unfinished task a schedule created.
    schedule_of: HashMap<TaskId, usize>,
    /// Token budgets of the current period (`sched/budget.rs`).
    budgets: Budgets,
    /// Tasks that have said, this period, that a budget holds them back.
    budget_waits: BTreeSet<TaskId>,
    /// Tokens agents reserved ([`Scheduler::reserve_budget`]) and have not reported yet, by
    /// agent and task; cleared at each budget reset.
    reservations: budget::Reservations,
    /// Tokens a task's first model call needs, learnt when the budget refused it before the
    /// attempt did anything ([`Scheduler::wait_for_budget`]): counted as its `estimated_tokens`
    /// until a call of it is granted. In memory only: after a restart it is learnt again.
    budget_needs: HashMap<TaskId, u64>,
    /// Tasks per state, in [`TaskState::ALL`] order, kept as they change.
    by_state: [u64; 7],
    /// Whether the coordinator chooses among several agents that can take a task
    /// ([`Scheduler::coordinator_assigns`]).
    coordinator_assigns: bool,
    /// The coordinator's choices, by task, until the task is claimed. In memory only: after a
    /// restart it is asked again.
    choices: HashMap<TaskId, Choice>,
}

/// Where the coordinator's choice of agent for a task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    /// Asked; the task waits for the answer.
    Asking,
    /// This agent takes it when it can (unless it is gone, then the rules choose).
    Agent(String),
    /// The rules choose (the coordinator fell back).
    Rules,
}

impl Scheduler {
    /// Builds the scheduler for a run from the plan and what the store holds of the run. Tasks
    /// left `running` by a previous node are taken back: their lease is treated as expired and
    /// the attempt counted. `node` names this node as the holder of the leases it takes.
    pub fn new(plan: Plan, node: String, stored: Stored, now: Timestamp, fx: &mut Effects) -> Scheduler {
        let Stored {
            run_id,
            phase,
            tasks: stored,
            finished,
            dependencies,
            failures,
            agents: stored_agents,
            schedules: stored_schedules,
            usage,
        } = stored;
        let budgets = Budgets::new(plan.budget.clone(), &usage, now);
        let agents: Vec<AgentSlot> = plan
            .agents
            .iter()
            .map(|spec| {
                let before = stored_agents.iter().find(|record| record.name == spec.name);
                AgentSlot {
                    spec: spec.clone(),
                    state: AgentState::Waiting,
                    running: 0,
                    succeeded: before.map_or(0, |record| record.tasks_succeeded),
                    failed: before.map_or(0, |record| record.tasks_failed),
                    last_activity: before.and_then(|record| record.last_activity),
                    restarts: Vec::new(),
                    restart_at: None,
                    consecutive_failures: 0,
                    circuit_until: None,
                    held_by_operator: false,
                    removed: false,
                }
            })
            .collect();
        let agent_index = agents.iter().enumerate().map(|(idx, slot)| (slot.spec.name.clone(), idx)).collect();
        let workstreams = plan.workstreams.iter().map(|ws| (ws.name.clone(), WorkstreamState::default())).collect();
        let mut sched = Scheduler {
            plan,
            run_id,
            node,
            tasks: HashMap::with_capacity(stored.len()),
            ended: HashMap::new(),
            dependents: HashMap::new(),
            settled: HashMap::new(),
            unclaimed: Vec::new(),
            failures: Failures::default(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            agents,
            agent_index,
            workstreams,
            unassigned: WorkstreamState::default(),
            held: HashMap::new(),
            dying: HashMap::new(),
            suspended_by: HashMap::new(),
            outages: HashMap::new(),
            conflicts_reported: HashMap::new(),
            coordinator_assigns: false,
            choices: HashMap::new(),
            leases: HashMap::new(),
            phase: 0,
            n_running: 0,
            n_finished: 0,
            state: RunState::Running,
            held_back: false,
            stays_open: false,
            run_dirty: true,
            dirty_agents: BTreeSet::new(),
            next_lease_renewal: None,
            schedules: Vec::new(),
            schedule_of: HashMap::new(),
            budgets,
            budget_waits: BTreeSet::new(),
            reservations: Default::default(),
            budget_needs: HashMap::new(),
            by_state: [0; 7],
        };
        for count in finished.iter().filter(|count| count.state.is_terminal()) {
            sched.count_finished(count.workstream.as_deref(), count.state, count.n);
        }
        for task in &failures {
            sched.failures.note(task);
        }
        for status in dependencies.into_iter().filter(|status| status.state.is_terminal()) {
            sched.settled.insert(status.id, status);
        }
        // Finished tasks given with the unfinished ones: counted, and their outcome kept for
        // the unfinished tasks that depend on them.
        let mut outcomes: HashMap<TaskId, TaskStatus> = HashMap::new();
        for task in stored {
            if task.state.is_terminal() {
                sched.count_finished(task.workstream.as_deref(), task.state, 1);
                sched.failures.note(&task);
                outcomes.insert(task.id, status_of(&task));
            } else {
                sched.insert(task);
            }
        }
        let depended_on: Vec<TaskId> = sched.dependents.keys().copied().collect();
        for id in depended_on {
            if let Some(status) = outcomes.remove(&id) {
                sched.settled.insert(id, status);
            }
        }
        sched.init_schedules(stored_schedules, now, fx);
        sched.take_back_running(now, fx);
        sched.cancel_orphans(now, fx);
        // Phases the run had already started are entered again silently: their events exist.
        for phase_number in 1..=phase.min(sched.plan.phases.len() as u32) {
            sched.enter_phase(phase_number, now, false, fx);
        }
        sched
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn state(&self) -> RunState {
        self.state
    }

    pub fn phase(&self) -> u32 {
        self.phase
    }

    pub fn n_running(&self) -> u32 {
        self.n_running
    }

    /// An unfinished task, or one that ended (or was restored) since the writes were last
    /// made durable.
    pub fn task(&self, id: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(&id).or_else(|| self.ended.get(&id))
    }

    /// The unfinished tasks.
    pub fn tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.tasks.values()
    }

    /// How many tasks the run has, finished ones included.
    pub fn n_tasks(&self) -> u64 {
        self.by_state.iter().sum()
    }

    /// The writes returned so far are durable: the records of tasks that ended leave memory
    /// (the store has them now), keeping only the outcome of those that unfinished tasks
    /// depend on. The runtime calls this after each successful [`Effects::writes`] commit.
    pub fn writes_durable(&mut self) {
        self.ended.clear();
        for id in std::mem::take(&mut self.unclaimed) {
            if !self.dependents.contains_key(&id) {
                self.settled.remove(&id);
            }
        }
        // A burst of work (100,000 tasks at once) must not keep its tables' room for ever.
        if self.tasks.capacity() > 1024 && self.tasks.len() < self.tasks.capacity() / 4 {
            self.tasks.shrink_to(self.tasks.len() * 2);
        }
        if self.ended.capacity() > 1024 {
            self.ended.shrink_to(64);
        }
    }

    /// Puts a finished task's record, which the runtime loaded from the store, back within
    /// reach of the commands of this turn (an operator's retry, or a cancel to refuse). It
    /// leaves again with [`Scheduler::writes_durable`] unless it was retried.
    pub fn restore(&mut self, task: TaskRecord) {
        if task.state.is_terminal() && !self.tasks.contains_key(&task.id) {
            self.ended.entry(task.id).or_insert(task);
        }
    }

    /// The dependencies of `tasks` the scheduler knows nothing of (neither unfinished nor
    /// settled), other than tasks among them: finished tasks, whose outcome the runtime reads
    /// from the store and gives to [`Scheduler::settle`] before adding or retrying the tasks.
    pub fn unknown_dependencies<'a>(&self, tasks: impl IntoIterator<Item = &'a TaskRecord>) -> Vec<TaskId> {
        let tasks: Vec<&TaskRecord> = tasks.into_iter().collect();
        let batch: HashSet<TaskId> = tasks.iter().map(|task| task.id).collect();
        let mut unknown: Vec<TaskId> = tasks
            .iter()
            .flat_map(|task| task.depends_on.iter().copied())
            .filter(|dep| !batch.contains(dep) && self.dependency(*dep).is_none())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        unknown
    }

    /// What became of finished tasks, as the store says: the outcome of dependencies of tasks
    /// about to be added or retried ([`Scheduler::unknown_dependencies`]). A task not given
    /// stays unknown, and a task depending on it is cancelled as depending on a task outside
    /// the run.
    pub fn settle(&mut self, statuses: Vec<TaskStatus>) {
        for status in statuses {
            if status.state.is_terminal() && !self.tasks.contains_key(&status.id) {
                self.unclaimed.push(status.id);
                self.settled.insert(status.id, status);
            }
        }
    }

    /// A dependency's state and key: unfinished, settled, or ended this turn.
    fn dependency(&self, id: TaskId) -> Option<(TaskState, Option<&str>)> {
        if let Some(task) = self.tasks.get(&id) {
            return Some((task.state, task.key.as_deref()));
        }
        if let Some(status) = self.settled.get(&id) {
            return Some((status.state, status.key.as_deref()));
        }
        self.ended.get(&id).map(|task| (task.state, task.key.as_deref()))
    }

    /// Adds a task that the store has just created (state `pending`), making it ready at once
    /// when its workstream has started and its dependencies are done. Call
    /// [`Scheduler::step`] afterwards to assign it.
    pub fn add_task(&mut self, task: TaskRecord, now: Timestamp, fx: &mut Effects) {
        self.add_tasks(vec![task], now, fx);
    }

    /// Adds tasks created together (a batch). All of them are known before any is released,
    /// so that a task may depend on a later one of its batch.
    pub fn add_tasks(&mut self, tasks: Vec<TaskRecord>, now: Timestamp, fx: &mut Effects) {
        let mut added = Vec::with_capacity(tasks.len());
        for task in tasks {
            debug_assert_eq!(task.state, TaskState::Pending);
            added.push((task.id, task.workstream.clone()));
            if let Some(ws) = task.workstream.as_deref().and_then(|ws| self.workstreams.get_mut(ws))
                && ws.done
            {
                // The workstream has work again; it completes again when that is done.
                ws.done = false;
                ws.failed = false;
            }
            self.insert(task);
        }
        self.run_dirty = true;
        for (id, _) in &added {
            self.hold_if_downstream_of_an_outage(*id, now, fx);
            self.try_release(*id, now, fx);
        }
        let mut woken: Vec<Option<String>> = Vec::new();
        for (_, workstream) in added {
            if !woken.contains(&workstream) {
                self.wake_agents(workstream.as_deref(), fx);
                woken.push(workstream);
            }
        }
    }

    /// Starts the agents of a started workstream that now has work (a retried or added task):
    /// those stopped when it completed, and those never started because it had no task when
    /// it started (a service fed through the API). An agent an operator stopped stays stopped.
    fn wake_agents(&mut self, workstream: Option<&str>, fx: &mut Effects) {
        let Some(workstream) = workstream else { return };
        if !self.workstream_started(Some(workstream)) {
            return;
        }
        for idx in 0..self.agents.len() {
            let slot = &self.agents[idx];
            if slot.removed || slot.held_by_operator || slot.spec.workstream.as_deref() != Some(workstream) {
                continue;
            }
            match slot.state {
                AgentState::Stopped => {
                    self.set_agent_state(idx, AgentState::Waiting, Some("its workstream has work again".into()), fx);
                    self.start_agent(idx, fx);
                }
                AgentState::Waiting => self.start_agent(idx, fx),
                _ => {}
            }
        }
    }

    /// Adds a task to the counts and, unless it is finished, to memory.
    fn insert(&mut self, task: TaskRecord) {
        if task.state.is_terminal() {
            self.count_finished(task.workstream.as_deref(), task.state, 1);
            self.failures.note(&task);
            return;
        }
        self.by_state[task.state.index()] += 1;
        self.watch_dependencies(&task);
        let counters = self.counters(task.workstream.as_deref());
        counters.n_total += 1;
        counters.n_open += 1;
        match task.state {
            TaskState::Ready => self.enqueue_ready(&task),
            TaskState::Running => {
                self.counters(task.workstream.as_deref()).n_running += 1;
                self.n_running += 1;
            }
            _ => {}
        }
        self.tasks.insert(task.id, task);
    }

    /// Counts `n` finished tasks that are not in memory.
    fn count_finished(&mut self, workstream: Option<&str>, state: TaskState, n: u64) {
        self.by_state[state.index()] += n;
        self.n_finished += n;
        let counters = self.counters(workstream);
        counters.n_total += n;
        if state != TaskState::Succeeded {
            counters.n_unsuccessful += n;
        }
    }

    /// An unfinished task waits on its dependencies: it is among their dependants, and the
    /// outcome of one that ended this turn is kept for it.
    fn watch_dependencies(&mut self, task: &TaskRecord) {
        for dep in &task.depends_on {
            self.dependents.entry(*dep).or_default().push(task.id);
            if !self.tasks.contains_key(dep)
                && !self.settled.contains_key(dep)
                && let Some(ended) = self.ended.get(dep)
            {
                self.settled.insert(*dep, status_of(ended));
            }
        }
    }

    /// A task ended: it no longer waits on its dependencies, and the outcome of one with no
    /// other dependant is forgotten.
    fn unwatch_dependencies(&mut self, id: TaskId, depends_on: &[TaskId]) {
        for dep in depends_on {
            if let Some(dependents) = self.dependents.get_mut(dep) {
                dependents.retain(|dependent| *dependent != id);
                if dependents.is_empty() {
                    self.dependents.remove(dep);
                    self.settled.remove(dep);
                }
            }
        }
    }

    fn counters(&mut self, workstream: Option<&str>) -> &mut WorkstreamState {
        match workstream.and_then(|ws| self.workstreams.get_mut(ws)) {
            Some(ws) => ws,
            None => &mut self.unassigned,
        }
    }

    /// The run's progress per workstream, in phase order.
    pub fn progress(&self) -> Progress {
        let mut workstreams = Vec::with_capacity(self.workstreams.len() + 1);
        let row = |name: Option<String>, phase: u32, ws: &WorkstreamState, started: bool| WorkstreamProgress {
            name,
            phase,
            started,
            n_total: ws.n_total,
            n_finished: ws.n_total - ws.n_open,
            n_running: ws.n_running,
            n_unsuccessful: ws.n_unsuccessful,
        };
        if self.unassigned.n_total > 0 {
            workstreams.push(row(None, 1, &self.unassigned, self.phase >= 1));
        }
        for (idx, phase) in self.plan.phases.iter().enumerate() {
            for name in phase {
                let ws = &self.workstreams[name];
                workstreams.push(row(Some(name.clone()), idx as u32 + 1, ws, ws.started));
            }
        }
        // Finished tasks are not in memory: the unfinished states are recounted, the finished
        // ones checked against the run's and the workstreams' totals.
        let recounted = TaskState::ALL.map(|state| {
            if state.is_terminal() {
                self.by_state[state.index()]
            } else {
                self.tasks.values().filter(|task| task.state == state).count() as u64
            }
        });
        debug_assert_eq!(self.by_state, recounted, "the per-state counts follow every transition");
        debug_assert_eq!(
            TaskState::ALL
                .iter()
                .filter(|state| state.is_terminal())
                .map(|state| self.by_state[state.index()])
                .sum::<u64>(),
            self.n_finished,
            "the finished counts follow every transition"
        );
        debug_assert_eq!(
            self.workstreams.values().chain([&self.unassigned]).map(|ws| ws.n_total).sum::<u64>(),
            self.n_tasks(),
            "every task counts in one workstream"
        );
        debug_assert!(self.ended.values().all(|task| task.state.is_terminal()), "ended tasks are finished");
        Progress {
            phase: self.phase.min(self.plan.phases.len() as u32),
            n_phases: self.plan.phases.len() as u32,
            by_state: self.by_state,
            workstreams,
        }
    }

    fn enqueue_ready(&mut self, task: &TaskRecord) {
        match task.not_before {
            Some(not_before) if not_before > Timestamp::ZERO => {
                self.delayed.insert((not_before, task.id));
            }
            _ => {
                self.ready.insert((task.priority.rank(), task.id));
            }
        }
    }

    /// Tasks of a workstream no longer in the plan (renamed or removed in `baton.toml` since
    /// they were created) can never run: they are cancelled, saying why.
    fn cancel_orphans(&mut self, now: Timestamp, fx: &mut Effects) {
        let mut orphans: Vec<(TaskId, String)> = self
            .tasks
            .values()
            .filter(|task| !task.state.is_terminal())
            .filter_map(|task| {
                let ws = task.workstream.as_deref()?;
                (!self.workstreams.contains_key(ws)).then(|| (task.id, ws.to_string()))
            })
            .collect();
        orphans.sort();
        for (id, ws) in orphans {
            self.cancel_task(id, format!("workstream `{ws}` is no longer in the configuration"), now, fx);
        }
    }

    /// Running tasks of a previous node: their lease is gone with it.
    fn take_back_running(&mut self, now: Timestamp, fx: &mut Effects) {
        let mut running: Vec<TaskId> =
            self.tasks.values().filter(|task| task.state == TaskState::Running).map(|task| task.id).collect();
        running.sort_unstable();
        for id in running {
            let task = &self.tasks[&id];
            let expired =
                EventKind::TaskLeaseExpired { task: id, agent: task.assigned_agent.clone(), attempt: task.attempt };
            let reason = format!(
                "lease expired: the node running attempt {} ({}) stopped",
                task.attempt,
                task.lease_owner.as_deref().unwrap_or("unknown")
            );
            // Retried at once: the attempt did not fail, its node did.
            self.fail_attempt(id, reason, Some(expired), now, Lost::Lease, fx);
        }
    }

    /// Starts the run if it has not started, makes whatever can be ready ready and assigns
    /// what can be assigned. Call after any command; it is cheap when nothing changed.
    pub fn step(&mut self, now: Timestamp, fx: &mut Effects) {
        if self.state != RunState::Running {
            return;
        }
        if self.phase == 0 {
            if self.plan.phases.is_empty() {
                self.phase = 1;
                self.start_shared_agents(fx);
            } else {
                self.enter_phase(1, now, true, fx);
            }
            self.release_unassigned(now, fx);
        }
        self.promote_due(now);
        self.roll_budgets(now, fx);
        // Each pass may finish work that lets the next go further (a cancelled stuck task
        // completes its workstream, which starts the next phase); a pass that writes nothing
        // is the fixed point.
        loop {
            let n_writes = fx.writes.len();
            self.advance_phases(now, fx);
            self.dispatch(now, fx);
            self.finish_if_done(now, fx);
            if fx.writes.len() == n_writes || self.state != RunState::Running {
                break;
            }
        }
        self.flush(now, fx);
    }

    fn start_shared_agents(&mut self, fx: &mut Effects) {
        for idx in 0..self.agents.len() {
            if self.agents[idx].spec.workstream.is_none() {
                self.start_agent(idx, fx);
            }
        }
    }

    fn start_agent(&mut self, idx: usize, fx: &mut Effects) {
        if self.agents[idx].state != AgentState::Waiting {
            return;
        }
        self.set_agent_state(idx, AgentState::Starting, None, fx);
        fx.start_agents.push(self.agents[idx].spec.name.clone());
    }

    fn set_agent_state(&mut self, idx: usize, to: AgentState, reason: Option<String>, fx: &mut Effects) {
        let slot = &mut self.agents[idx];
        if slot.state == to {
            return;
        }
        let from = slot.state;
        slot.state = to;
        let agent = slot.spec.name.clone();
        fx.writes.push(Write::Event(EventKind::AgentStateChanged { agent: agent.clone(), from, to, reason }));
        self.dirty_agents.insert(idx);
        if from.is_started() && !to.is_started() || to == AgentState::Restarting {
            // Its leases end with the process that took them.
            let why = match to {
                AgentState::Restarting => "its agent exited",
                AgentState::Failed => "its agent failed",
                _ => "its agent stopped",
            };
            self.release_leases_of(&agent, why, fx);
        }
    }

    /// Enters phase `number`: starts its agents (critical first) and releases its tasks.
    /// `announce` is false when re-entering a phase after a restart.
    fn enter_phase(&mut self, number: u32, now: Timestamp, announce: bool, fx: &mut Effects) {
        self.phase = number;
        self.run_dirty = true;
        if number == 1 {
            self.start_shared_agents(fx);
            self.release_unassigned(now, fx);
        }
        let names = self.plan.phases[number as usize - 1].clone();
        if announce {
            // A workstream added while the run went on may have started before its phase
            // (`sched/reconfigure.rs`): only the others start now.
            let starting: Vec<String> =
                names.iter().filter(|name| !self.workstreams[name.as_str()].started).cloned().collect();
            if !starting.is_empty() {
                fx.writes.push(Write::Event(EventKind::PhaseStarted { phase: number, workstreams: starting }));
            }
        }
        self.start_workstreams(&names, now, fx);
        if !announce {
            // Re-entered after a restart: a workstream with nothing open had its completion
            // written with its last task; do not announce it twice.
            for name in &names {
                let ws = self.workstreams.get_mut(name).expect("declared");
                if ws.n_open == 0 {
                    ws.done = true;
                    ws.failed = ws.n_unsuccessful > 0;
                    for idx in 0..self.agents.len() {
                        if self.agents[idx].spec.workstream.as_deref() == Some(name.as_str()) {
                            self.agents[idx].state = AgentState::Stopped;
                            self.dirty_agents.insert(idx);
                        }
                    }
                }
            }
        }
    }

    /// Starts workstreams: their agents (critical first) and their tasks; their open tasks are
    /// cancelled when a workstream they depend on failed.
    fn start_workstreams(&mut self, names: &[String], now: Timestamp, fx: &mut Effects) {
        let workstream_timeout = self.plan.settings.workstream_timeout;
        for name in names {
            let upstream_failed = self.plan.workstream(name).and_then(|spec| {
                spec.depends_on
                    .iter()
                    .find(|dep| self.workstreams.get(dep.as_str()).is_some_and(|ws| ws.failed))
                    .cloned()
            });
            let ws = self.workstreams.get_mut(name).expect("phases name declared workstreams");
            ws.started = true;
            if ws.deadline.is_none() {
                ws.deadline = workstream_timeout.map(|timeout| now.plus(timeout));
            }
            if let Some(upstream) = upstream_failed {
                let ids = self.open_tasks_of(Some(name));
                for id in ids {
                    self.cancel_task(id, format!("upstream workstream `{upstream}` failed"), now, fx);
                }
                continue;
            }
        }
        // Critical agents first: the runtime starts them in this order.
        let mut to_start: Vec<usize> = (0..self.agents.len())
            .filter(|&idx| {
                let ws = self.agents[idx].spec.workstream.as_deref();
                !self.agents[idx].removed
                    && ws.is_some_and(|ws| names.iter().any(|name| name == ws))
                    && !self.workstreams.get(ws.unwrap_or_default()).is_some_and(|ws| ws.failed || ws.n_open == 0)
            })
            .collect();
        to_start.sort_by_key(|&idx| (self.agents[idx].spec.priority, idx));
        for idx in to_start {
            self.start_agent(idx, fx);
        }
        for name in names {
            for id in self.pending_tasks_of(Some(name)) {
                self.try_release(id, now, fx);
            }
        }
    }

    fn release_unassigned(&mut self, now: Timestamp, fx: &mut Effects) {
        for id in self.pending_tasks_of(None) {
            self.try_release(id, now, fx);
        }
    }

    fn pending_tasks_of(&self, workstream: Option<&str>) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|task| task.state == TaskState::Pending && task.workstream.as_deref() == workstream)
            .map(|task| task.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn open_tasks_of(&self, workstream: Option<&str>) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|task| !task.state.is_terminal() && task.workstream.as_deref() == workstream)
            .map(|task| task.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn workstream_started(&self, workstream: Option<&str>) -> bool {
        match workstream {
            None => self.phase >= 1,
            Some(ws) => self.workstreams.get(ws).is_some_and(|ws| ws.started),
        }
    }

    /// Makes a pending task ready when its workstream has started and its dependencies have
    /// succeeded; cancels it when a dependency can no longer succeed.
    fn try_release(&mut self, id: TaskId, now: Timestamp, fx: &mut Effects) {
        // A dependant of a list may have ended meanwhile (cancelled with another dependency).
        let Some(task) = self.tasks.get(&id) else { return };
        if task.state != TaskState::Pending || !self.workstream_started(task.workstream.as_deref()) {
            return;
        }
        if self.waits_for_earlier_firing(id) || self.hold_if_downstream_of_an_outage(id, now, fx) {
            return;
        }
        let task = &self.tasks[&id];
        let mut all_done = true;
        let mut cannot_run: Option<String> = None;
        for dep in &task.depends_on {
            match self.dependency(*dep) {
                Some((TaskState::Succeeded, _)) => {}
                Some((state @ (TaskState::Dead | TaskState::Cancelled), key)) => {
                    let dep_name = key.map_or_else(|| dep.to_string(), str::to_string);
                    cannot_run = Some(format!("dependency `{dep_name}` is {state}"));
                    break;
                }
                // A dependency outside this run can never finish here.
                None => {
                    cannot_run = Some(format!("dependency {dep} does not exist in this run"));
                    break;
                }
                Some(_) => all_done = false,
            }
        }
        if let Some(reason) = cannot_run {
            self.cancel_task(id, reason, now, fx);
            return;
        }
        if !all_done {
            return;
        }
        let task = &self.tasks[&id];
        let mut change = task.change();
        change.state = TaskState::Ready;
        change.not_before = None;
        self.transition(id, change, vec![EventKind::TaskReady { task: id }], now, fx);
    }

    /// Writes a task change (compare-and-set on the current state) and applies it in memory,
    /// keeping the queues and counters in step.
    fn transition(&mut self, id: TaskId, change: TaskChange, events: Vec<EventKind>, now: Timestamp, fx: &mut Effects) {
        let mut task = match self.tasks.remove(&id) {
            Some(task) => task,
            None => self.ended.remove(&id).expect("transitions name known tasks"),
        };
        let (from, attempt) = (task.state, task.attempt);
        debug_assert!(!from.is_terminal() || change.state == TaskState::Pending, "terminal tasks leave only by retry");
        let to = change.state;
        fx.writes.push(Write::Task { id, expect_state: from, expect_attempt: attempt, change: change.clone(), events });
        if from == TaskState::Ready {
            self.ready.remove(&(task.priority.rank(), id));
            if let Some(not_before) = task.not_before {
                self.delayed.remove(&(not_before, id));
            }
        }
        task.apply(change, now);
        self.by_state[from.index()] -= 1;
        self.by_state[to.index()] += 1;
        if from == TaskState::Running {
            self.n_running -= 1;
            self.counters(task.workstream.as_deref()).n_running -= 1;
            for resource in &task.resources {
                if self.held.get(resource) == Some(&id) {
                    self.held.remove(resource);
                }
            }
        }
        match to {
            TaskState::Ready => self.enqueue_ready(&task),
            TaskState::Running => {
                self.n_running += 1;
                self.counters(task.workstream.as_deref()).n_running += 1;
            }
            _ => {}
        }
        if to.is_terminal() && !from.is_terminal() {
            self.n_finished += 1;
            self.run_dirty = true;
            let counters = self.counters(task.workstream.as_deref());
            counters.n_open -= 1;
            if to != TaskState::Succeeded {
                counters.n_unsuccessful += 1;
            }
            self.failures.note(&task);
            self.conflicts_reported.remove(&id);
            self.choices.remove(&id);
            self.budget_waits.remove(&id);
            self.budget_needs.remove(&id);
            self.suspended_by.remove(&id);
            self.unwatch_dependencies(id, &task.depends_on);
            let status = status_of(&task);
            // Out of memory once this turn's writes are durable.
            self.ended.insert(id, task);
            let dependents = self.dependents.get(&id).cloned().unwrap_or_default();
            if !dependents.is_empty() {
                self.settled.insert(id, status);
            }
            for dependent in dependents {
                self.try_release(dependent, now, fx);
            }
            self.schedule_task_ended(id, now, fx);
        } else if from.is_terminal() && !to.is_terminal() {
            self.failures.forget(id);
            self.settled.remove(&id);
            self.watch_dependencies(&task);
            self.schedule_task_reopened(id, task.key.as_deref());
            self.n_finished -= 1;
            self.run_dirty = true;
            let counters = self.counters(task.workstream.as_deref());
            counters.n_open += 1;
            if from != TaskState::Succeeded {
                counters.n_unsuccessful -= 1;
            }
            self.tasks.insert(id, task);
        } else {
            self.tasks.insert(id, task);
        }
    }

    fn promote_due(&mut self, now: Timestamp) {
        while let Some(&(not_before, id)) = self.delayed.first() {
            if not_before > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(task) = self.tasks.get(&id)
                && task.state == TaskState::Ready
            {
                self.ready.insert((task.priority.rank(), id));
            }
        }
    }

    /// Keeps the run open when its tasks are done, for tasks added later.
    pub fn stay_open(&mut self, open: bool) {
        self.stays_open = open;
    }

    /// Whether the coordinator chooses among several agents that can take a task: a ready task
    /// without a pinned agent that more than one agent can run waits (as
    /// [`Effects::choose_agent`]) until [`Scheduler::assignment_chosen`] says who takes it.
    pub fn coordinator_assigns(&mut self, assigns: bool) {
        self.coordinator_assigns = assigns;
        if !assigns {
            self.choices.clear();
        }
    }

    /// The coordinator's choice for `task` (`None`: the rules choose). The task is assigned at
    /// the next step, to that agent when it has room.
    pub fn assignment_chosen(&mut self, task: TaskId, agent: Option<String>) {
        if self.choices.contains_key(&task) {
            self.choices.insert(task, agent.map_or(Choice::Rules, Choice::Agent));
        }
    }

    /// The agent the coordinator chose for a ready task, `None` for the rules; `Err(())` while
    /// it must wait (asked, or asked now).
    /// At most `may_ask` questions are asked (one per free slot): the others wait their turn.
    fn coordinator_choice(&mut self, id: TaskId, may_ask: &mut u64, fx: &mut Effects) -> Result<Option<String>, ()> {
        if !self.coordinator_assigns {
            return Ok(None);
        }
        match self.choices.get(&id) {
            Some(Choice::Asking) => return Err(()),
            Some(Choice::Agent(agent)) => return Ok(Some(agent.clone())),
            Some(Choice::Rules) => return Ok(None),
            None => {}
        }
        let task = &self.tasks[&id];
        if task.agent.is_some() {
            return Ok(None);
        }
        let able: Vec<String> = self
            .agents
            .iter()
            .filter(|slot| {
                !slot.removed
                    && !matches!(slot.state, AgentState::Failed | AgentState::Stopped)
                    && slot.spec.can_run(task.workstream.as_deref(), &task.requires, None)
            })
            .map(|slot| slot.spec.name.clone())
            .collect();
        if able.len() < 2 {
            return Ok(None);
        }
        if *may_ask == 0 {
            return Err(());
        }
        *may_ask -= 1;
        self.choices.insert(id, Choice::Asking);
        fx.choose_agent.push((id, able));
        Err(())
    }

    /// Stops assigning tasks; running attempts go on. For a graceful shutdown.
    pub fn hold(&mut self) {
        self.held_back = true;
    }

    /// Puts a running attempt back in the queue without counting it: it was interrupted by a
    /// shutdown, not failed.
    pub fn release(&mut self, id: TaskId, attempt: u32, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let task = self.tasks.get(&id).or_else(|| self.ended.get(&id)).ok_or(Error::UnknownTask(id))?;
        if task.state != TaskState::Running || task.attempt != attempt {
            return Err(Error::Stale {
                task: id,
                attempt,
                reason: format!("the task is {} at attempt {}", task.state, task.attempt),
            });
        }
        if let Some(&agent_idx) = task.assigned_agent.as_ref().and_then(|agent| self.agent_index.get(agent)) {
            let slot = &mut self.agents[agent_idx];
            slot.running = slot.running.saturating_sub(1);
            self.dirty_agents.insert(agent_idx);
        }
        let mut change = task.change();
        change.state = TaskState::Ready;
        change.attempt = attempt - 1;
        change.lease_owner = None;
        change.lease_expires_at = None;
        self.transition(id, change, vec![EventKind::TaskRequeued { task: id, from: TaskState::Running }], now, fx);
        Ok(())
    }

    /// Assigns ready tasks, most urgent first (priority, then age), each to the least-loaded
    /// agent that can run it, within per-agent concurrency and the global limit.
    fn dispatch(&mut self, now: Timestamp, fx: &mut Effects) {
        if self.held_back {
            return;
        }
        let max_running = self.plan.settings.max_concurrent_agents;
        let mut free_slots: u64 = self
            .agents
            .iter()
            .filter(|slot| !slot.removed && matches!(slot.state, AgentState::Idle | AgentState::Active))
            .map(|slot| u64::from(slot.spec.concurrency.saturating_sub(slot.running)))
            .sum();
        let n_dying = self.dying.len() as u32;
        if free_slots == 0 || self.n_running + n_dying >= max_running || self.ready.is_empty() {
            return;
        }
        let candidates: Vec<TaskId> = self.ready.iter().map(|&(_, id)| id).collect();
        // Questions to the coordinator in flight count against the free slots.
        let asking = self.choices.values().filter(|choice| **choice == Choice::Asking).count() as u64;
        let mut may_ask = free_slots.saturating_sub(asking);
        for id in candidates {
            if free_slots == 0 || self.n_running + n_dying >= max_running {
                break;
            }
            let task = &self.tasks[&id];
            if let Some((resource, held, holder)) = self.resource_conflict(&task.resources, None) {
                let policy = task
                    .key
                    .as_ref()
                    .and_then(|key| self.plan.settings.task_conflict_policies.get(key))
                    .copied()
                    .unwrap_or(self.plan.settings.conflict_policy);
                // Said once per task and holder, not at every turn it keeps waiting.
                let first = self.conflicts_reported.entry(id).or_default().insert(holder.clone());
                if first || policy != ConflictPolicy::Wait {
                    fx.writes.push(Write::Event(EventKind::ConflictDeferred {
                        task: id,
                        resource: resource.clone(),
                        holder: self.holder_name(&holder),
                        held: held.clone(),
                        policy: policy.as_str().to_string(),
                    }));
                }
                match policy {
                    ConflictPolicy::Wait => continue,
                    ConflictPolicy::Fail => {
                        let holder = self.holder_name(&holder);
                        let reason = format!("`{resource}` overlaps `{held}` held by {holder} (on_conflict = fail)");
                        self.fail_for_good(id, reason, now, fx);
                        continue;
                    }
                    ConflictPolicy::Warn => {}
                }
            }
            let Ok(preferred) = self.coordinator_choice(id, &mut may_ask, fx) else {
                continue;
            };
            // The coordinator's choice, while that agent is up and may run the task: the task
            // waits while it is only busy; if it is down, gone, or its budget is spent, the
            // rules choose.
            let task = &self.tasks[&id];
            let preferred = preferred.filter(|name| {
                self.agents.iter().any(|slot| {
                    slot.spec.name == *name
                        && !slot.removed
                        && matches!(slot.state, AgentState::Idle | AgentState::Active)
                        && slot.spec.can_run(task.workstream.as_deref(), &task.requires, None)
                        && self.budget_block(&slot.spec, task).is_none()
                })
            });
            let pinned = task.agent.as_deref().or(preferred.as_deref());
            let chosen = self
                .agents
                .iter()
                .enumerate()
                .filter(|(_, slot)| {
                    !slot.removed
                        && matches!(slot.state, AgentState::Idle | AgentState::Active)
                        && slot.running < slot.spec.concurrency
                        && slot.spec.can_run(task.workstream.as_deref(), &task.requires, pinned)
                        && self.budget_block(&slot.spec, task).is_none()
                })
                .min_by_key(|(idx, slot)| (slot.running, slot.spec.priority, *idx))
                .map(|(idx, _)| idx);
            let Some(agent_idx) = chosen else {
                self.note_budget_wait(id, fx);
                continue;
            };
            self.claim(id, agent_idx, now, fx);
            free_slots -= 1;
        }
    }

    /// The first of `wanted` that overlaps a resource held by a running task (globs included):
    /// (wanted key, held key, holder).
    /// `except` is an agent whose own leases do not count (it may use what it holds).
    fn resource_conflict(&self, wanted: &[String], except: Option<&str>) -> Option<(String, String, Holder)> {
        if wanted.is_empty() || (self.held.is_empty() && self.leases.is_empty()) {
            return None;
        }
        let any_glob_held = self.held.keys().chain(self.leases.keys()).any(|key| crate::resources::is_glob(key));
        wanted.iter().find_map(|key| {
            if let Some(holder) = self.held.get(key) {
                return Some((key.clone(), key.clone(), Holder::Task(*holder)));
            }
            let by_tasks = self.held.iter().map(|(held, holder)| (held, Holder::Task(*holder)));
            let by_agents = self
                .leases
                .iter()
                .filter(|(_, lease)| Some(lease.agent.as_str()) != except)
                .map(|(held, lease)| (held, Holder::Agent(lease.agent.clone())));
            let glob = any_glob_held || crate::resources::is_glob(key);
            by_tasks
                .chain(by_agents)
                .find(|(held, _)| *held == key || (glob && crate::resources::overlaps(held, key)))
                .map(|(held, holder)| (key.clone(), held.clone(), holder))
        })
    }

    /// "task analyze-base64ct" (its key, when it has one), or "agent editor".
    fn holder_name(&self, holder: &Holder) -> String {
        match holder {
            Holder::Task(id) => match self.tasks.get(id).and_then(|task| task.key.as_deref()) {
                Some(key) => format!("task {key}"),
                None => holder.to_string(),
            },
            Holder::Agent(_) => holder.to_string(),
        }
    }

    /// Makes a waiting task dead without running it.
    fn fail_for_good(&mut self, id: TaskId, reason: String, now: Timestamp, fx: &mut Effects) {
        let task = &self.tasks[&id];
        let attempts = task.attempt;
        let mut change = task.change();
        change.state = TaskState::Dead;
        change.error = Some(reason.clone());
        change.finished_at = Some(now);
        self.transition(id, change, vec![EventKind::TaskDeadLettered { task: id, attempts, reason }], now, fx);
    }

    fn claim(&mut self, id: TaskId, agent_idx: usize, now: Timestamp, fx: &mut Effects) {
        self.choices.remove(&id);
        let agent = self.agents[agent_idx].spec.name.clone();
        let task = &self.tasks[&id];
        let attempt = task.attempt + 1;
        let mut change = task.change();
        change.state = TaskState::Running;
        change.attempt = attempt;
        change.assigned_agent = Some(agent.clone());
        change.lease_owner = Some(self.node.clone());
        change.lease_expires_at = Some(now.plus(self.plan.settings.lease_ttl));
        change.not_before = None;
        change.error = None;
        let resources = task.resources.clone();
        self.transition(id, change, vec![EventKind::TaskClaimed { task: id, agent: agent.clone(), attempt }], now, fx);
        for resource in resources {
            // A task run despite a conflict (`warn`) does not take the resource from its holder.
            self.held.entry(resource).or_insert(id);
        }
        let slot = &mut self.agents[agent_idx];
        slot.running += 1;
        slot.last_activity = Some(now);
        self.dirty_agents.insert(agent_idx);
        if self.agents[agent_idx].state == AgentState::Idle {
            self.agents[agent_idx].state = AgentState::Active;
        }
        if self.next_lease_renewal.is_none() {
            self.next_lease_renewal = Some(now.plus(self.plan.settings.lease_ttl / 3));
        }
        fx.assignments.push(Assignment { task: self.tasks[&id].clone(), agent });
    }

    /// Records the outcome of a running attempt. A late or duplicate outcome (the attempt no
    /// longer holds the task) is rejected and changes nothing.
    pub fn complete(
        &mut self,
        id: TaskId,
        attempt: u32,
        outcome: Outcome,
        now: Timestamp,
        jitter: f64,
        fx: &mut Effects,
    ) -> Result<(), Error> {
        let Some(task) = self.tasks.get(&id).or_else(|| self.ended.get(&id)) else {
            // Finished tasks are not held: an outcome for one that is not here is late.
            let reason = "the task is not running (it has ended)".to_string();
            return Err(Error::Stale { task: id, attempt, reason });
        };
        if task.state != TaskState::Running || task.attempt != attempt {
            let reason = if task.attempt != attempt {
                format!("the task is on attempt {} now (its lease expired and it was re-queued)", task.attempt)
            } else {
                format!("the task is {} already", task.state)
            };
            return Err(Error::Stale { task: id, attempt, reason });
        }
        let agent = task.assigned_agent.clone().unwrap_or_default();
        if let Some(&agent_idx) = self.agent_index.get(&agent) {
            let slot = &mut self.agents[agent_idx];
            slot.running = slot.running.saturating_sub(1);
            slot.last_activity = Some(now);
            match &outcome {
                Outcome::Succeeded { .. } => {
                    slot.succeeded += 1;
                    slot.consecutive_failures = 0;
                }
                Outcome::Failed { .. } => {
                    slot.failed += 1;
                    slot.consecutive_failures += 1;
                }
            }
            if slot.running == 0 && slot.state == AgentState::Active {
                slot.state = AgentState::Idle;
            }
            self.dirty_agents.insert(agent_idx);
        }
        let agent_idx = self.agent_index.get(&agent).copied();
        match outcome {
            Outcome::Succeeded { result } => {
                let mut change = task.change();
                change.state = TaskState::Succeeded;
                change.result = Some(result);
                change.lease_owner = None;
                change.lease_expires_at = None;
                change.finished_at = Some(now);
                self.transition(id, change, vec![EventKind::TaskCompleted { task: id, agent, attempt }], now, fx);
            }
            Outcome::Failed { reason } => {
                let failed = EventKind::TaskFailed { task: id, agent: Some(agent), attempt, reason: reason.clone() };
                self.fail_attempt(id, reason, Some(failed), now, Lost::Attempt { jitter }, fx);
            }
        }
        if let Some(agent_idx) = agent_idx {
            let slot = &self.agents[agent_idx];
            if slot.running == 0 && slot.state == AgentState::Stalled {
                // A stall is silence while working on a task; with the task over, so is it.
                self.set_agent_state(agent_idx, AgentState::Idle, Some("its task ended".into()), fx);
            }
            self.trip_breaker_if_needed(agent_idx, now, fx);
        }
        Ok(())
    }

    /// Ends a running attempt as failed: back to `ready` while attempts are left, `dead` after
    /// the last. A failed attempt retries after a backoff; an attempt lost with its node retries
    /// at once and may go one attempt over `max_attempts`, so that a crash alone never makes a
    /// task dead (a task that crashes Baton every time still ends).
    fn fail_attempt(
        &mut self,
        id: TaskId,
        reason: String,
        first_event: Option<EventKind>,
        now: Timestamp,
        lost: Lost,
        fx: &mut Effects,
    ) {
        let task = &self.tasks[&id];
        let attempt = task.attempt;
        let mut change = task.change();
        change.lease_owner = None;
        change.lease_expires_at = None;
        change.error = Some(reason.clone());
        let mut events: Vec<EventKind> = first_event.into_iter().collect();
        let attempts_left = match lost {
            Lost::Attempt { .. } | Lost::Agent => attempt < task.max_attempts,
            Lost::Lease => attempt <= task.max_attempts,
        };
        if attempts_left {
            let settings = &self.plan.settings;
            let delay = match lost {
                Lost::Attempt { jitter } => {
                    backoff(attempt, settings.retry_backoff, settings.retry_backoff_max, jitter)
                }
                Lost::Lease | Lost::Agent => Duration::ZERO,
            };
            let not_before = now.plus(delay);
            change.state = TaskState::Ready;
            change.not_before = Some(not_before);
            events.push(EventKind::TaskRetrying { task: id, attempt: attempt + 1, not_before });
        } else {
            change.state = TaskState::Dead;
            change.finished_at = Some(now);
            events.push(EventKind::TaskDeadLettered { task: id, attempts: attempt, reason });
        }
        self.transition(id, change, events, now, fx);
        self.hold_if_downstream_of_an_outage(id, now, fx);
    }

    /// Cancels a task that has not finished; a running attempt is killed.
    pub fn cancel(&mut self, id: TaskId, reason: String, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let task = self.tasks.get(&id).or_else(|| self.ended.get(&id)).ok_or(Error::UnknownTask(id))?;
        if task.state.is_terminal() {
            return Err(Error::WrongState { task: id, state: task.state, wanted: "unfinished", verb: "cancelled" });
        }
        self.cancel_task(id, reason, now, fx);
        Ok(())
    }

    fn cancel_task(&mut self, id: TaskId, reason: String, now: Timestamp, fx: &mut Effects) {
        // A task of a list may have ended meanwhile (cancelled with a dependency).
        let Some(task) = self.tasks.get(&id) else { return };
        let dying = (task.state == TaskState::Running).then(|| {
            fx.kills.push((id, task.attempt));
            let agent_idx = task.assigned_agent.as_ref().and_then(|agent| self.agent_index.get(agent)).copied();
            (task.attempt, Dying { agent_idx, resources: task.resources.clone() })
        });
        let mut change = task.change();
        change.state = TaskState::Cancelled;
        change.lease_owner = None;
        change.lease_expires_at = None;
        change.error = Some(reason.clone());
        change.finished_at = Some(now);
        self.transition(id, change, vec![EventKind::TaskCancelled { task: id, reason }], now, fx);
        // The killed attempt still holds its slot and resources until it has exited.
        if let Some((attempt, dying)) = dying {
            for resource in &dying.resources {
                self.held.insert(resource.clone(), id);
            }
            self.dying.insert((id, attempt), dying);
        }
    }

    /// The runtime reports that a killed attempt has exited: its agent slot and resources are
    /// free again.
    pub fn attempt_ended(&mut self, id: TaskId, attempt: u32, now: Timestamp) {
        let Some(dying) = self.dying.remove(&(id, attempt)) else {
            return;
        };
        for resource in &dying.resources {
            if self.held.get(resource) == Some(&id) {
                self.held.remove(resource);
            }
        }
        if let Some(agent_idx) = dying.agent_idx {
            let slot = &mut self.agents[agent_idx];
            slot.running = slot.running.saturating_sub(1);
            slot.last_activity = Some(now);
            if slot.running == 0 && slot.state == AgentState::Active {
                slot.state = AgentState::Idle;
            }
            self.dirty_agents.insert(agent_idx);
        }
    }

    /// Puts a dead or cancelled task back in the queue with a fresh set of attempts. A task
    /// that finished before the last durable writes is not in memory: the runtime loads it
    /// first ([`Scheduler::restore`], and its dependencies' outcome, [`Scheduler::settle`]).
    pub fn retry(&mut self, id: TaskId, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let task = self.tasks.get(&id).or_else(|| self.ended.get(&id)).ok_or(Error::UnknownTask(id))?;
        if !matches!(task.state, TaskState::Dead | TaskState::Cancelled) {
            return Err(Error::WrongState {
                task: id,
                state: task.state,
                wanted: "dead or cancelled",
                verb: "retried",
            });
        }
        let from = task.state;
        let task_workstream = task.workstream.clone();
        let mut change = task.change();
        change.state = TaskState::Pending;
        change.attempt = 0;
        change.error = None;
        change.finished_at = None;
        if let Some(ws) = task.workstream.as_deref().and_then(|ws| self.workstreams.get_mut(ws)) {
            // The workstream is open again; whether it failed is decided when it completes.
            ws.done = false;
            ws.failed = false;
        }
        let workstream = task_workstream;
        self.transition(id, change, vec![EventKind::TaskRequeued { task: id, from }], now, fx);
        self.try_release(id, now, fx);
        self.wake_agents(workstream.as_deref(), fx);
        Ok(())
    }

    /// The runtime started an agent: it can take tasks.
    pub fn agent_started(&mut self, name: &str, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let idx = *self.agent_index.get(name).ok_or_else(|| Error::UnknownAgent(name.to_string()))?;
        if self.agents[idx].state != AgentState::Starting {
            return Ok(());
        }
        let runtime = self.agents[idx].spec.runtime_summary();
        fx.writes.push(Write::Event(EventKind::AgentSpawned { agent: name.to_string(), runtime }));
        self.agents[idx].last_activity = Some(now);
        self.set_agent_state(idx, AgentState::Idle, None, fx);
        self.resume_suspended(idx, now, fx);
        Ok(())
    }

    /// The runtime could not start an agent. A transient failure is an exit like any other: it
    /// follows the agent's restart policy and crash-loop cap. A permanent one (a command that
    /// does not exist) fails the agent at once, with the reason: restarting would only burn
    /// its restarts. The runtime may have reported the process's exit first (a worker that
    /// died before answering `initialize`): then this failure was decided already.
    pub fn agent_failed(
        &mut self,
        name: &str,
        reason: String,
        kind: FailureKind,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), Error> {
        let idx = *self.agent_index.get(name).ok_or_else(|| Error::UnknownAgent(name.to_string()))?;
        match self.agents[idx].state {
            AgentState::Starting if kind == FailureKind::Permanent => {
                fx.writes
                    .push(Write::Event(EventKind::AgentTerminated { agent: name.to_string(), reason: reason.clone() }));
                self.requeue_attempts_of(idx, &format!("agent `{name}` could not start: {reason}"), now, fx);
                self.fail_agent(
                    idx,
                    format!("{reason}; not restarted: starting it again would fail the same way"),
                    now,
                    fx,
                );
                return Ok(());
            }
            AgentState::Starting => return self.agent_exited(name, reason, false, now, fx),
            AgentState::Restarting | AgentState::Failed | AgentState::Stopped => return Ok(()),
            _ => {}
        }
        self.set_agent_state(idx, AgentState::Failed, Some(reason.clone()), fx);
        fx.writes.push(Write::Event(EventKind::AgentTerminated { agent: name.to_string(), reason }));
        Ok(())
    }

    /// Periodic work: due retries, lease renewal, workstream timeouts, agent restarts,
    /// heartbeats and circuit breakers.
    pub fn tick(&mut self, now: Timestamp, fx: &mut Effects) {
        self.supervise(now, fx);
        self.expire_leases(now, fx);
        self.fire_schedules(now, fx);
        if let Some(renewal) = self.next_lease_renewal
            && renewal <= now
        {
            if self.n_running > 0 {
                let until = now.plus(self.plan.settings.lease_ttl);
                fx.writes.push(Write::RenewLeases { owner: self.node.clone(), until });
                for task in self.tasks.values_mut().filter(|task| task.state == TaskState::Running) {
                    task.lease_expires_at = Some(until);
                }
                self.next_lease_renewal = Some(now.plus(self.plan.settings.lease_ttl / 3));
            } else {
                self.next_lease_renewal = None;
            }
        }
        let expired: Vec<String> = self
            .workstreams
            .iter()
            .filter(|(_, ws)| ws.started && !ws.done && ws.n_open > 0 && ws.deadline.is_some_and(|d| d <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            let timeout = self.plan.settings.workstream_timeout.map(format_duration).unwrap_or_default();
            for id in self.open_tasks_of(Some(&name)) {
                self.cancel_task(id, format!("workstream `{name}` timed out after {timeout}"), now, fx);
            }
        }
        self.step(now, fx);
    }

    /// When the runtime should call [`Scheduler::tick`] next, if anything is waiting on time.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        let retry = self.delayed.first().map(|&(at, _)| at);
        let deadline = self
            .workstreams
            .values()
            .filter(|ws| ws.started && !ws.done && ws.n_open > 0)
            .filter_map(|ws| ws.deadline)
            .min();
        [
            retry,
            self.next_lease_renewal,
            deadline,
            self.next_schedule_due(),
            self.next_supervision(),
            self.next_lease_expiry(),
            self.next_budget_reset(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Completes finished workstreams and phases, and starts the next phase.
    ///
    /// A started workstream completes when nothing of its is open, whatever its phase: a
    /// workstream of an earlier phase may have had work again (a retried or added task), and
    /// one of a later phase may have started early (added while the run went on, with its
    /// dependencies done: `sched/reconfigure.rs`). A later phase that is complete already is
    /// passed over without being announced again.
    fn advance_phases(&mut self, now: Timestamp, fx: &mut Effects) {
        loop {
            if self.phase == 0 {
                return;
            }
            let all_workstreams: Vec<String> = self.plan.phases.concat();
            for name in &all_workstreams {
                let ws = &self.workstreams[name];
                if ws.started && !ws.done && ws.n_open == 0 {
                    self.complete_workstream(name, fx);
                }
            }
            if self.phase as usize > self.plan.phases.len() {
                return;
            }
            let names = &self.plan.phases[self.phase as usize - 1];
            let all_done = names.iter().all(|name| self.workstreams[name].done);
            if !all_done {
                return;
            }
            fx.writes.push(Write::Event(EventKind::PhaseCompleted { phase: self.phase }));
            let mut next = self.phase as usize + 1;
            while next <= self.plan.phases.len()
                && self.plan.phases[next - 1].iter().all(|name| self.workstreams[name].done)
            {
                next += 1;
            }
            if next > self.plan.phases.len() {
                // Past the last phase.
                self.phase = self.plan.phases.len() as u32 + 1;
                self.run_dirty = true;
                return;
            }
            self.enter_phase(next as u32, now, true, fx);
        }
    }

    /// A workstream with nothing open completes: it failed if any of its tasks did not succeed.
    fn complete_workstream(&mut self, name: &str, fx: &mut Effects) {
        let ws = self.workstreams.get_mut(name).expect("declared");
        debug_assert_eq!(ws.n_open, 0, "a workstream completes with nothing open");
        let failed = ws.n_unsuccessful > 0;
        ws.done = true;
        ws.failed = failed;
        let succeeded = !failed;
        fx.writes.push(Write::Event(EventKind::WorkstreamCompleted { workstream: name.to_string(), succeeded }));
        let idxs: Vec<usize> =
            (0..self.agents.len()).filter(|&idx| self.agents[idx].spec.workstream.as_deref() == Some(name)).collect();
        for idx in idxs {
            if self.agents[idx].state.is_started() {
                self.set_agent_state(idx, AgentState::Stopped, Some("its workstream is done".into()), fx);
                fx.stop_agents.push(self.agents[idx].spec.name.clone());
            }
        }
    }

    fn finish_if_done(&mut self, now: Timestamp, fx: &mut Effects) {
        let phases_done = self.phase as usize > self.plan.phases.len() || self.plan.phases.is_empty();
        if !phases_done || self.n_finished < self.n_tasks() {
            if !self.held_back
                && self.n_running == 0
                && self.dying.is_empty()
                && self.delayed.is_empty()
                && !self.agents_starting()
            {
                // Nothing running, nothing waiting on time, nothing starting: any task still
                // ready has no agent that can take it.
                self.cancel_unrunnable(now, fx);
            }
            return;
        }
        if self.stays_open || self.schedules_keep_open() {
            return;
        }
        let count = |state: TaskState| self.by_state[state.index()];
        let counts = (count(TaskState::Succeeded), count(TaskState::Dead), count(TaskState::Cancelled));
        let state = if counts.1 == 0 && counts.2 == 0 { RunState::Succeeded } else { RunState::Failed };
        let error = (state == RunState::Failed).then(|| self.failure_summary());
        self.state = state;
        for idx in 0..self.agents.len() {
            if self.agents[idx].state.is_started() {
                self.set_agent_state(idx, AgentState::Stopped, Some("the run is over".into()), fx);
                fx.stop_agents.push(self.agents[idx].spec.name.clone());
            }
        }
        let completed = EventKind::RunCompleted {
            state,
            n_succeeded: counts.0,
            n_dead: counts.1,
            n_cancelled: counts.2,
            error: error.clone(),
        };
        fx.writes.push(Write::Run {
            change: RunChange {
                state,
                phase: self.phase.min(self.plan.phases.len() as u32),
                n_tasks: self.n_tasks(),
                n_finished: self.n_finished,
                ended_at: Some(now),
                error,
            },
            events: vec![completed],
        });
        self.run_dirty = false;
    }

    /// Whether an agent that is not available now will be (it is starting, restarting, in a
    /// circuit-breaker cooldown, stalled, waiting for someone to answer a prompt, or paused by
    /// an operator): until then no task is given up as unrunnable.
    fn agents_starting(&self) -> bool {
        self.agents.iter().any(|slot| {
            matches!(
                slot.state,
                AgentState::Starting
                    | AgentState::Restarting
                    | AgentState::CircuitOpen
                    | AgentState::Stalled
                    | AgentState::WaitingInput
            ) || (slot.state == AgentState::Stopped && slot.held_by_operator && !slot.removed)
        })
    }

    /// Cancels ready tasks that no live agent can run, so the run ends instead of waiting
    /// forever, and says why.
    fn cancel_unrunnable(&mut self, now: Timestamp, fx: &mut Effects) {
        let stuck: Vec<TaskId> = self.ready.iter().map(|&(_, id)| id).collect();
        for id in stuck {
            let task = &self.tasks[&id];
            let candidates: Vec<&AgentSlot> = self
                .agents
                .iter()
                .filter(|slot| {
                    !slot.removed
                        && slot.spec.can_run(task.workstream.as_deref(), &task.requires, task.agent.as_deref())
                })
                .collect();
            if candidates.iter().any(|slot| matches!(slot.state, AgentState::Idle | AgentState::Active)) {
                continue;
            }
            let reason = if candidates.is_empty() {
                "no agent can run it".to_string()
            } else {
                let names: Vec<String> =
                    candidates.iter().map(|slot| format!("{} is {}", slot.spec.name, slot.state)).collect();
                format!("no agent is available to run it ({})", names.join(", "))
            };
            self.cancel_task(id, reason, now, fx);
        }
    }

    /// "2 task(s) dead: compile (exit status 1); 1 cancelled: test (dependency `compile` is dead)"
    ///
    /// Names the first few of each kind; the counts are the run's.
    pub fn failure_summary(&self) -> String {
        let describe = |n: u64, shown: &BTreeMap<TaskId, String>, what: &str| -> Option<String> {
            if n == 0 {
                return None;
            }
            let names: Vec<&str> = shown.values().map(String::as_str).collect();
            let more = n.saturating_sub(names.len() as u64);
            Some(match (names.is_empty(), more) {
                (true, _) => format!("{n} task(s) {what}"),
                (false, 0) => format!("{n} task(s) {what}: {}", names.join(", ")),
                (false, more) => format!("{n} task(s) {what}: {}, and {more} more", names.join(", ")),
            })
        };
        let parts: Vec<String> = [
            describe(self.by_state[TaskState::Dead.index()], &self.failures.dead, "dead"),
            describe(self.by_state[TaskState::Cancelled.index()], &self.failures.cancelled, "cancelled"),
        ]
        .into_iter()
        .flatten()
        .collect();
        parts.join("; ")
    }

    /// Writes what changed in the run's progress and the agents' records.
    fn flush(&mut self, now: Timestamp, fx: &mut Effects) {
        if self.run_dirty && self.state == RunState::Running {
            fx.writes.push(Write::Run {
                change: RunChange {
                    state: self.state,
                    phase: self.phase.min(self.plan.phases.len() as u32),
                    n_tasks: self.n_tasks(),
                    n_finished: self.n_finished,
                    ended_at: None,
                    error: None,
                },
                events: Vec::new(),
            });
            self.run_dirty = false;
        }
        for idx in std::mem::take(&mut self.dirty_agents) {
            if self.agents[idx].removed {
                continue;
            }
            fx.writes.push(Write::Agent { record: self.agent_record(idx, now), events: Vec::new() });
        }
    }

    fn agent_record(&self, idx: usize, now: Timestamp) -> AgentRecord {
        let slot = &self.agents[idx];
        AgentRecord {
            run_id: self.run_id.clone(),
            name: slot.spec.name.clone(),
            role: slot.spec.role.clone(),
            workstream: slot.spec.workstream.clone(),
            priority: slot.spec.priority,
            capabilities: slot.spec.capabilities.clone(),
            runtime: slot.spec.runtime().as_str().to_string(),
            state: self.shown_state(idx),
            running: slot.running,
            tasks_succeeded: slot.succeeded,
            tasks_failed: slot.failed,
            last_activity: slot.last_activity,
            updated_at: now,
        }
    }

    /// Every agent's record, for writing them all once when a run starts.
    pub fn agent_records(&mut self, now: Timestamp, fx: &mut Effects) {
        for idx in 0..self.agents.len() {
            self.dirty_agents.insert(idx);
        }
        self.flush(now, fx);
    }
}

mod budget;
mod leases;
mod reconfigure;
mod schedules;
mod supervise;

pub use budget::Reservation;
pub use reconfigure::{ReloadSummary, runtime_changed};
pub use supervise::FailureKind;

/// Who holds a resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Task(TaskId),
    Agent(String),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Task(id) => write!(f, "task {id}"),
            Holder::Agent(name) => write!(f, "agent {name}"),
        }
    }
}

#[cfg(test)]
mod tests;
