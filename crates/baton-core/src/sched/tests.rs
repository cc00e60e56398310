//! Scheduler tests: examples of each rule, and a property test that drives random plans with
//! random outcomes and restarts through a simulated store.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;
use crate::config::{self, AgentKind, ProcessSpec, RestartPolicy, Settings, WorkstreamSpec};
use crate::graph;
use crate::model::{NewTask, Priority, TaskCount, TaskRef, TaskStatus};
use crate::schedule::{Firing, ScheduleRecord};

mod schedules;

mod budget;

mod reconfigure;

/// A stand-in for the store: applies writes with the same compare-and-set rule.
#[derive(Default)]
struct Store {
    tasks: BTreeMap<TaskId, TaskRecord>,
    events: Vec<EventKind>,
    phase: u32,
    run_state: Option<RunState>,
    schedules: BTreeMap<String, ScheduleRecord>,
    usage: BTreeMap<(Timestamp, crate::budget::Scope), crate::budget::Spent>,
}

impl Store {
    /// Like the store's `fire_schedule`: the task, the cursor (compare-and-set) and the event
    /// at once; `None` when the cursor moved.
    fn fire(&mut self, firing: &Firing, now: Timestamp) -> Option<TaskRecord> {
        let schedule = self.schedules.get_mut(&firing.schedule).expect("written before it fires");
        if schedule.cursor != firing.expect_cursor {
            return None;
        }
        let id = TaskId(self.tasks.keys().last().map_or(1, |last| last.0 + 1));
        schedule.cursor = firing.due;
        schedule.last_fired_due = Some(firing.due);
        schedule.last_fired_at = Some(now);
        schedule.last_task = Some(id);
        let task = record(id, &firing.task, Vec::new(), now);
        self.tasks.insert(id, task.clone());
        self.events.push(EventKind::ScheduleFired {
            schedule: firing.schedule.clone(),
            due: firing.due,
            task: id,
            n_due: firing.n_due,
            late: firing.late,
        });
        Some(task)
    }

    fn apply(&mut self, writes: &[Write], now: Timestamp) {
        for write in writes {
            match write {
                Write::Task { id, expect_state, expect_attempt, change, events } => {
                    let task = self.tasks.get_mut(id).expect("known task");
                    assert_eq!((task.state, task.attempt), (*expect_state, *expect_attempt), "compare-and-set holds");
                    task.apply(change.clone(), now);
                    self.events.extend(events.iter().cloned());
                }
                Write::Run { change, events } => {
                    self.phase = change.phase;
                    if change.state != RunState::Running {
                        self.run_state = Some(change.state);
                    }
                    self.events.extend(events.iter().cloned());
                }
                Write::Agent { events, .. } => self.events.extend(events.iter().cloned()),
                Write::Fence { .. }
                | Write::RenewLeases { .. }
                | Write::RunOwner { .. }
                | Write::RunInterrupted { .. } => {}
                Write::Event(event) => self.events.push(event.clone()),
                Write::Schedule { record, events } => {
                    self.schedules.insert(record.name.clone(), record.clone());
                    self.events.extend(events.iter().cloned());
                }
                Write::Usage { period_start, scope, spent, events } => {
                    let record = self.usage.entry((*period_start, scope.clone())).or_default();
                    record.add(*spent);
                    self.events.extend(events.iter().cloned());
                }
                Write::BudgetLimit { events, .. } => self.events.extend(events.iter().cloned()),
            }
        }
    }

    /// What the runtime loads when it resumes a run: the unfinished tasks, the counts of the
    /// finished ones, the outcome of those the unfinished depend on, the first dead and
    /// cancelled tasks.
    fn stored(&self, phase: u32) -> Stored {
        let unfinished: Vec<TaskRecord> =
            self.tasks.values().filter(|task| !task.state.is_terminal()).cloned().collect();
        let mut counts: BTreeMap<(Option<String>, usize), u64> = BTreeMap::new();
        for task in self.tasks.values().filter(|task| task.state.is_terminal()) {
            *counts.entry((task.workstream.clone(), task.state.index())).or_default() += 1;
        }
        let finished = counts
            .into_iter()
            .map(|((workstream, state), n)| TaskCount { workstream, state: TaskState::ALL[state], n })
            .collect();
        let mut dependencies: Vec<TaskId> = unfinished.iter().flat_map(|task| task.depends_on.clone()).collect();
        dependencies.sort_unstable();
        dependencies.dedup();
        let failures = [TaskState::Dead, TaskState::Cancelled]
            .into_iter()
            .flat_map(|state| self.tasks.values().filter(move |task| task.state == state).take(FAILURES_SHOWN))
            .cloned()
            .collect();
        Stored {
            run_id: "run".into(),
            phase,
            tasks: unfinished,
            finished,
            dependencies: self.statuses(&dependencies),
            failures,
            agents: Vec::new(),
            schedules: self.schedules.values().cloned().collect(),
            usage: self
                .usage
                .iter()
                .map(|((period_start, scope), spent)| crate::budget::UsageRecord {
                    period_start: *period_start,
                    scope: scope.clone(),
                    spent: *spent,
                    limit: None,
                })
                .collect(),
        }
    }

    /// The state of the finished tasks among `ids`, as the store's `task_statuses` answers.
    fn statuses(&self, ids: &[TaskId]) -> Vec<TaskStatus> {
        ids.iter()
            .filter_map(|id| self.tasks.get(id))
            .filter(|task| task.state.is_terminal())
            .map(|task| TaskStatus { id: task.id, key: task.key.clone(), state: task.state })
            .collect()
    }

    /// The run's tasks by key, as the store tells them to `reconfigure`.
    fn keys(&self) -> BTreeMap<String, TaskId> {
        self.tasks.values().filter_map(|task| Some((task.key.clone()?, task.id))).collect()
    }

    fn create(&mut self, plan: &Plan, now: Timestamp) {
        let mut ids: HashMap<String, TaskId> = HashMap::new();
        for (idx, new) in plan.tasks.iter().enumerate() {
            ids.insert(new.key.clone().unwrap(), TaskId(idx as i64 + 1));
        }
        for (idx, new) in plan.tasks.iter().enumerate() {
            let id = TaskId(idx as i64 + 1);
            let depends_on = new
                .depends_on
                .iter()
                .map(|dep| match dep {
                    TaskRef::Id(id) => *id,
                    TaskRef::Key(key) => ids[key],
                })
                .collect();
            self.tasks.insert(id, record(id, new, depends_on, now));
        }
    }
}

fn record(id: TaskId, new: &NewTask, depends_on: Vec<TaskId>, now: Timestamp) -> TaskRecord {
    TaskRecord {
        parent: None,
        id,
        run_id: "run".into(),
        key: new.key.clone(),
        workstream: new.workstream.clone(),
        title: new.title.clone(),
        description: new.description.clone(),
        input: new.input.clone(),
        requires: new.requires.clone(),
        agent: new.agent.clone(),
        depends_on,
        priority: new.priority,
        max_attempts: new.max_attempts,
        timeout_ms: new.timeout_ms,
        resources: new.resources.clone(),
        estimated_tokens: new.estimated_tokens,
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

/// Drives a scheduler as the runtime would: makes writes durable, starts agents at once,
/// collects assignments as running attempts.
struct Harness {
    plan: Plan,
    store: Store,
    sched: Scheduler,
    now: Timestamp,
    running: Vec<(TaskId, u32)>,
    claims: Vec<(TaskId, u32)>,
    /// The plan changed while the run went on (`tests/reconfigure.rs`): a workstream added
    /// with its dependencies done may start before its phase.
    reconfigured: bool,
    /// Starts of these agents that fail (as a worker that exits before answering
    /// `initialize`), counted down.
    failing_starts: BTreeMap<String, u32>,
    /// Agents whose starts fail for good (as one whose command does not exist).
    broken_starts: BTreeSet<String>,
}

impl Harness {
    fn new(plan: Plan) -> Harness {
        Harness::new_at(plan, Timestamp(1_000_000))
    }

    fn new_at(plan: Plan, now: Timestamp) -> Harness {
        let mut store = Store::default();
        store.create(&plan, now);
        let mut fx = Effects::default();
        let sched = Scheduler::new(
            plan.clone(),
            "node-1".into(),
            Stored { run_id: "run".into(), ..Stored::default() },
            now,
            &mut fx,
        );
        let mut harness = Harness {
            plan,
            store,
            sched,
            now,
            running: Vec::new(),
            claims: Vec::new(),
            reconfigured: false,
            failing_starts: BTreeMap::new(),
            broken_starts: BTreeSet::new(),
        };
        // What the scheduler wrote when it was built (the schedules' records).
        harness.store.apply(&fx.writes, now);
        // Like the runtime: tasks created by the store, then added.
        let tasks: Vec<TaskRecord> = harness.store.tasks.values().cloned().collect();
        let mut fx = Effects::default();
        for task in tasks {
            harness.sched.add_task(task, now, &mut fx);
        }
        harness.apply(fx);
        harness.step();
        harness
    }

    fn apply(&mut self, mut fx: Effects) {
        loop {
            self.store.apply(&fx.writes, self.now);
            // Like the runtime after each commit: ended tasks leave memory.
            self.sched.writes_durable();
            // Checks, in debug builds, that the per-state counts follow every transition; the
            // finished tasks are not in memory, so the counts are checked against the store.
            self.check_counts();
            for assignment in &fx.assignments {
                let task = &self.store.tasks[&assignment.task.id];
                for dep in &task.depends_on {
                    assert_eq!(
                        self.store.tasks[dep].state,
                        TaskState::Succeeded,
                        "a task starts only after its dependencies"
                    );
                }
                let phase = self.sched.plan().phase_of(task.workstream.as_deref());
                let started_early = self.reconfigured && self.sched.workstream_started(task.workstream.as_deref());
                assert!(phase <= self.sched.phase() || started_early, "a task starts only in its phase");
                self.running.push((assignment.task.id, assignment.task.attempt));
                self.claims.push((assignment.task.id, assignment.task.attempt));
            }
            for (id, attempt) in &fx.kills {
                self.running.retain(|running| running != &(*id, *attempt));
            }
            let mut next = Effects::default();
            for firing in &fx.fire {
                let created = self.store.fire(firing, self.now);
                self.sched.schedule_fired(firing, created, self.now, &mut next);
            }
            for agent in &fx.start_agents {
                if self.broken_starts.contains(agent) {
                    let reason = "command `missing-agent` not found in PATH".to_string();
                    self.sched.agent_failed(agent, reason, FailureKind::Permanent, self.now, &mut next).unwrap();
                    continue;
                }
                match self.failing_starts.get_mut(agent) {
                    Some(n_failing) if *n_failing > 0 => {
                        *n_failing -= 1;
                        // As a worker runtime reports it: the process's exit, then the failed start.
                        self.sched.agent_exited(agent, "exit status 3".into(), false, self.now, &mut next).unwrap();
                        let reason = "exited before answering `initialize`: exit status 3".to_string();
                        self.sched.agent_failed(agent, reason, FailureKind::Transient, self.now, &mut next).unwrap();
                    }
                    _ => self.sched.agent_started(agent, self.now, &mut next).unwrap(),
                }
            }
            // Killed attempts exit at once here.
            for &(id, attempt) in &fx.kills {
                self.sched.attempt_ended(id, attempt, self.now);
                self.sched.step(self.now, &mut next);
            }
            if next.is_empty() {
                return;
            }
            self.sched.step(self.now, &mut next);
            fx = next;
        }
    }

    /// Finishes every task that runs, successfully, until the run ends or nothing is left.
    fn finish_all_tasks(&mut self) {
        for _ in 0..1000 {
            while !self.running.is_empty() {
                self.finish(0, true);
            }
            if !self.wait() || self.sched.state() != RunState::Running {
                return;
            }
        }
        panic!("the run never settles");
    }

    /// The scheduler's counts (per state, per workstream) are the store's.
    fn check_counts(&self) {
        let progress = self.sched.progress();
        let tasks = || self.store.tasks.values();
        let by_state = TaskState::ALL.map(|state| tasks().filter(|task| task.state == state).count() as u64);
        assert_eq!(progress.by_state, by_state, "the per-state counts are the store's");
        for ws in &progress.workstreams {
            let name = ws.name.as_deref();
            let mine: Vec<&TaskRecord> = tasks()
                .filter(|task| match name {
                    Some(name) => task.workstream.as_deref() == Some(name),
                    None => task.workstream.as_deref().is_none_or(|ws| self.sched.plan().workstream(ws).is_none()),
                })
                .collect();
            let finished = mine.iter().filter(|task| task.state.is_terminal()).count() as u64;
            let unsuccessful =
                mine.iter().filter(|task| task.state.is_terminal() && task.state != TaskState::Succeeded);
            assert_eq!(
                (ws.n_total, ws.n_finished, ws.n_unsuccessful),
                (mine.len() as u64, finished, unsuccessful.count() as u64),
                "the counts of workstream {name:?} are the store's"
            );
        }
        assert!(self.sched.tasks().all(|task| !task.state.is_terminal()), "only unfinished tasks are in memory");
        assert_eq!(
            self.sched.tasks().count(),
            tasks().filter(|task| !task.state.is_terminal()).count(),
            "every unfinished task is in memory"
        );
    }

    fn step(&mut self) {
        let mut fx = Effects::default();
        self.sched.step(self.now, &mut fx);
        self.apply(fx);
    }

    fn finish(&mut self, idx: usize, success: bool) {
        let (id, attempt) = self.running.remove(idx);
        let outcome = if success {
            Outcome::Succeeded { result: serde_json::json!({"ok": true}) }
        } else {
            Outcome::Failed { reason: "exit status 1".into() }
        };
        let mut fx = Effects::default();
        self.sched.complete(id, attempt, outcome, self.now, 0.5, &mut fx).unwrap();
        self.sched.step(self.now, &mut fx);
        self.apply(fx);
    }

    /// Advances the clock to the next wake-up and ticks.
    fn wait(&mut self) -> bool {
        let Some(at) = self.sched.next_wakeup() else {
            return false;
        };
        self.now = self.now.max(at);
        let mut fx = Effects::default();
        self.sched.tick(self.now, &mut fx);
        self.apply(fx);
        true
    }

    /// Simulates a crash: the in-memory scheduler and running attempts are lost; a new one is
    /// built from the store.
    fn crash_and_resume(&mut self) {
        self.running.clear();
        self.now = self.now.plus(Duration::from_secs(1));
        let mut fx = Effects::default();
        self.sched =
            Scheduler::new(self.plan.clone(), "node-2".into(), self.store.stored(self.store.phase), self.now, &mut fx);
        self.sched.agent_records(self.now, &mut fx);
        self.sched.step(self.now, &mut fx);
        self.apply(fx);
    }

    /// Adds tasks the store has just created, as the runtime does: the outcome of their
    /// finished dependencies first, from the store.
    fn add(&mut self, tasks: Vec<TaskRecord>, fx: &mut Effects) {
        let unknown = self.sched.unknown_dependencies(&tasks);
        self.sched.settle(self.store.statuses(&unknown));
        self.sched.add_tasks(tasks, self.now, fx);
    }

    /// An operator's retry, as the runtime does it: a finished task is loaded from the store
    /// first, with the outcome of its dependencies.
    fn retry(&mut self, id: TaskId, fx: &mut Effects) -> Result<(), Error> {
        if self.sched.task(id).is_none()
            && let Some(task) = self.store.tasks.get(&id).cloned()
        {
            let unknown = self.sched.unknown_dependencies([&task]);
            self.sched.settle(self.store.statuses(&unknown));
            self.sched.restore(task);
        }
        self.sched.retry(id, self.now, fx)
    }

    fn events(&self, name: &str) -> Vec<&EventKind> {
        self.store.events.iter().filter(|event| event.name() == name).collect()
    }

    fn state_of(&self, key: &str) -> TaskState {
        self.store.tasks.values().find(|task| task.key.as_deref() == Some(key)).unwrap().state
    }
}

const ROADMAP: &str = r#"
[orchestration]
name = "roadmap"
max_concurrent_agents = 4
retry_backoff = "1s"

[[workstreams]]
name = "build"
priority = "critical"

[[workstreams]]
name = "testing"
priority = "high"
depends_on = ["build"]

[[workstreams]]
name = "storage"
depends_on = ["build"]

[[workstreams]]
name = "perf"
depends_on = ["build", "testing"]

[[agents]]
name = "builder"
workstream = "build"
capabilities = ["rust"]
command = ["true"]

[[agents]]
name = "tester"
workstream = "testing"
capabilities = ["test"]
command = ["true"]

[[agents]]
name = "dev"
capabilities = ["rust", "test"]
concurrency = 2
command = ["true"]

[[tasks]]
key = "analyze"
title = "Analyze"
workstream = "build"
requires = ["rust"]

[[tasks]]
key = "fix"
title = "Fix"
workstream = "build"
depends_on = ["analyze"]
max_attempts = 2

[[tasks]]
key = "harness"
title = "Harness"
workstream = "testing"
requires = ["test"]

[[tasks]]
key = "store"
title = "Store"
workstream = "storage"

[[tasks]]
key = "bench"
title = "Bench"
workstream = "perf"
depends_on = ["harness"]
"#;

fn roadmap() -> Plan {
    config::load("baton.toml", ROADMAP, &BTreeMap::new()).unwrap()
}

#[test]
fn phases_run_in_order_and_the_run_succeeds() {
    let mut h = Harness::new(roadmap());
    assert_eq!(h.sched.phase(), 1);
    assert_eq!(h.running.len(), 1, "only `analyze` is ready in phase 1");
    assert_eq!(h.state_of("fix"), TaskState::Pending);
    assert_eq!(h.state_of("store"), TaskState::Pending, "phase 3 waits");
    while !h.running.is_empty() {
        h.finish(0, true);
    }
    assert_eq!(h.sched.state(), RunState::Succeeded);
    assert_eq!(h.store.run_state, Some(RunState::Succeeded));
    let phases: Vec<u32> = h
        .events("PhaseStarted")
        .iter()
        .map(|event| match event {
            EventKind::PhaseStarted { phase, .. } => *phase,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(phases, vec![1, 2, 3]);
    assert_eq!(h.events("TaskCompleted").len(), 5);
    assert_eq!(h.events("RunCompleted").len(), 1);
    // Agents of a workstream stop when it is done.
    assert!(h.store.events.iter().any(|event| matches!(event,
        EventKind::AgentStateChanged { agent, to: AgentState::Stopped, .. } if agent == "builder")));
}

#[test]
fn a_failure_retries_after_a_backoff_then_dies() {
    let mut h = Harness::new(roadmap());
    h.finish(0, true); // analyze
    assert_eq!(h.running.len(), 1);
    h.finish(0, false); // fix, attempt 1
    assert!(h.running.is_empty(), "the retry waits for its backoff");
    let retry_at = h.sched.next_wakeup().unwrap();
    assert!(retry_at >= h.now.plus(Duration::from_millis(500)) && retry_at <= h.now.plus(Duration::from_secs(1)));
    assert!(h.wait());
    assert_eq!(h.running.len(), 1);
    assert_eq!(h.running[0].1, 2, "second attempt");
    h.finish(0, false);
    assert_eq!(h.state_of("fix"), TaskState::Dead);
    // build failed: everything downstream is cancelled, with the reason.
    assert_eq!(h.sched.state(), RunState::Failed);
    let summary = h.sched.failure_summary();
    assert!(summary.starts_with("1 task(s) dead: fix (exit status 1)"), "{summary}");
    assert!(summary.contains("harness (upstream workstream `build` failed)"), "{summary}");
    assert_eq!(h.events("TaskRetrying").len(), 1);
    assert_eq!(h.events("TaskDeadLettered").len(), 1);
}

#[test]
fn late_and_duplicate_outcomes_are_rejected() {
    let mut h = Harness::new(roadmap());
    let (id, attempt) = h.running[0];
    h.finish(0, true);
    let mut fx = Effects::default();
    let error =
        h.sched.complete(id, attempt, Outcome::Failed { reason: "late".into() }, h.now, 0.5, &mut fx).unwrap_err();
    // Its record has left memory with the commit: the scheduler knows it is not running.
    assert_eq!(
        error.to_string(),
        format!("outcome for task {id} attempt 1 rejected: the task is not running (it has ended)")
    );
    assert!(fx.writes.is_empty());
    // Within the turn it ended in, the record is still there and says what became of it.
    let (id, attempt) = h.running[0];
    let mut fx = Effects::default();
    let done = Outcome::Succeeded { result: serde_json::json!({}) };
    h.sched.complete(id, attempt, done.clone(), h.now, 0.5, &mut fx).unwrap();
    let error = h.sched.complete(id, attempt, done, h.now, 0.5, &mut fx).unwrap_err();
    assert_eq!(error.to_string(), format!("outcome for task {id} attempt 1 rejected: the task is succeeded already"));
}

#[test]
fn a_crash_requeues_running_tasks_and_counts_the_attempt() {
    let mut h = Harness::new(roadmap());
    h.finish(0, true); // analyze
    let (fix, attempt) = h.running[0];
    assert_eq!(attempt, 1);
    h.crash_and_resume();
    assert_eq!(h.running, vec![(fix, 2)], "re-run at once as attempt 2");
    assert_eq!(h.events("TaskLeaseExpired").len(), 1);
    // The old attempt's outcome is rejected: it lost its lease.
    let mut fx = Effects::default();
    let error = h.sched.complete(fix, 1, Outcome::Succeeded { result: serde_json::Value::Null }, h.now, 0.5, &mut fx);
    assert!(error.unwrap_err().to_string().contains("the task is on attempt 2 now"));
    while !h.running.is_empty() {
        h.finish(0, true);
    }
    assert_eq!(h.sched.state(), RunState::Succeeded);
    assert_eq!(h.events("PhaseStarted").len(), 3, "no phase announced twice");
    assert_eq!(h.events("TaskCompleted").len(), 5, "each task completed once");
}

#[test]
fn tasks_added_to_a_running_plan_are_assigned() {
    let mut h = Harness::new(roadmap());
    while !h.running.is_empty() {
        h.finish(0, true);
        if h.sched.phase() == 3 {
            break;
        }
    }
    let id = TaskId(100);
    let mut new = h.plan.tasks[0].clone();
    new.key = Some("late".into());
    new.workstream = Some("storage".into());
    new.requires = Vec::new();
    new.depends_on = Vec::new();
    let task = record(id, &new, Vec::new(), h.now);
    h.store.tasks.insert(id, task.clone());
    let mut fx = Effects::default();
    h.add(vec![task], &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert_eq!(h.store.tasks[&id].state, TaskState::Ready, "ready at once: its phase has started");
    // `dev`, the only agent that can run it, is busy; the task waits for a free slot.
    while !h.running.iter().any(|(running, _)| *running == id) {
        assert!(!h.running.is_empty(), "the new task was never assigned");
        h.finish(0, true);
    }
    let progress = h.sched.progress();
    let storage = progress.workstreams.iter().find(|ws| ws.name.as_deref() == Some("storage")).unwrap();
    assert_eq!((storage.n_total, storage.phase, storage.started), (2, 3, true));
}

/// A batch whose first task depends on its second: the first waits for the second, instead of
/// being cancelled because its dependency was not known yet when it was added.
#[test]
fn a_batch_task_depending_on_a_later_task_of_its_batch_waits_for_it() {
    let mut h = Harness::new(roadmap());
    while !h.running.is_empty() {
        h.finish(0, true);
        if h.sched.phase() == 3 {
            break;
        }
    }
    let (first, second) = (TaskId(100), TaskId(101));
    let mut new = h.plan.tasks[0].clone();
    new.workstream = Some("storage".into());
    new.requires = Vec::new();
    new.depends_on = Vec::new();
    new.key = Some("depends-on-the-next".into());
    let waiting = record(first, &new, vec![second], h.now);
    new.key = Some("the-next".into());
    let next = record(second, &new, Vec::new(), h.now);
    for task in [&waiting, &next] {
        h.store.tasks.insert(task.id, task.clone());
    }
    let mut fx = Effects::default();
    h.add(vec![waiting, next], &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert_eq!(h.store.tasks[&first].state, TaskState::Pending, "{:?}", h.store.tasks[&first].error);
    assert_eq!(h.store.tasks[&second].state, TaskState::Ready);
    while h.store.tasks[&first].state != TaskState::Succeeded {
        assert!(!h.running.is_empty(), "the batch never finished");
        h.finish(0, true);
    }
    assert_eq!(h.store.tasks[&second].state, TaskState::Succeeded);
}

#[test]
fn cancel_kills_and_skips_dependents() {
    let mut h = Harness::new(roadmap());
    let (analyze, attempt) = h.running[0];
    let mut fx = Effects::default();
    h.sched.cancel(analyze, "operator".into(), h.now, &mut fx).unwrap();
    assert_eq!(fx.kills, vec![(analyze, attempt)]);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert_eq!(h.state_of("fix"), TaskState::Cancelled);
    assert_eq!(h.sched.state(), RunState::Failed);
    let mut fx = Effects::default();
    assert!(h.sched.cancel(analyze, "again".into(), h.now, &mut fx).is_err());
}

#[test]
fn unrunnable_tasks_are_cancelled_when_their_agent_fails() {
    let mut h = Harness::new(
        config::load(
            "baton.toml",
            r#"
[orchestration]
name = "x"
[[agents]]
name = "a"
command = ["true"]
[[tasks]]
title = "one"
"#,
            &BTreeMap::new(),
        )
        .unwrap(),
    );
    // The harness started the agent; fail it and finish the running attempt as failed.
    let mut fx = Effects::default();
    h.sched.agent_failed("a", "could not start".into(), FailureKind::Transient, h.now, &mut fx).unwrap();
    h.apply(fx);
    h.finish(0, false);
    h.wait();
    assert_eq!(h.sched.state(), RunState::Failed);
    assert!(
        h.sched.failure_summary().contains("no agent is available to run it (a is failed)"),
        "{}",
        h.sched.failure_summary()
    );
}

#[test]
fn a_task_retried_after_its_workstream_completed_runs_again() {
    // storage does not wait for build here, so the run goes on after `fix` dies.
    let text =
        ROADMAP.replace("name = \"storage\"\ndepends_on = [\"build\"]", "name = \"storage\"\npriority = \"critical\"");
    let mut h = Harness::new(config::load("baton.toml", &text, &BTreeMap::new()).unwrap());
    let store_id = h.store.tasks.values().find(|t| t.key.as_deref() == Some("store")).unwrap().id;
    // Finish analyze, keep `store` running, fail `fix` twice.
    while h.state_of("fix") != TaskState::Dead {
        let idx = h.running.iter().position(|(id, _)| *id != store_id);
        match idx {
            Some(idx) => {
                let is_fix = h.store.tasks[&h.running[idx].0].key.as_deref() == Some("fix");
                h.finish(idx, !is_fix);
            }
            None => assert!(h.wait()),
        }
    }
    assert_eq!(h.sched.state(), RunState::Running, "`store` still runs");
    let fix = h.store.tasks.values().find(|t| t.key.as_deref() == Some("fix")).unwrap().id;
    let mut fx = Effects::default();
    h.retry(fix, &mut fx).unwrap();
    h.sched.step(h.now, &mut fx);
    assert!(fx.start_agents.contains(&"builder".to_string()), "the stopped builder starts again: {fx:?}");
    h.apply(fx);
    assert!(h.running.iter().any(|(id, _)| *id == fix), "the retried task runs: {:?}", h.running);
}

#[test]
fn a_crash_on_the_last_attempt_does_not_make_the_task_dead() {
    let text = ROADMAP.replace("key = \"analyze\"", "key = \"analyze\"\nmax_attempts = 1");
    let mut h = Harness::new(config::load("baton.toml", &text, &BTreeMap::new()).unwrap());
    h.crash_and_resume();
    assert_eq!(h.state_of("analyze"), TaskState::Running);
    assert_eq!(h.running.len(), 1);
    assert_eq!(h.running[0].1, 2, "one attempt over max_attempts for a lost lease");
    // A second crash on that attempt ends it.
    h.crash_and_resume();
    assert_eq!(h.state_of("analyze"), TaskState::Dead);
}

#[test]
fn tasks_of_a_removed_workstream_are_cancelled_on_resume() {
    let mut h = Harness::new(roadmap());
    let renamed = ROADMAP
        .replace("name = \"storage\"", "name = \"persistence\"")
        .replace("workstream = \"storage\"", "workstream = \"persistence\"");
    h.plan = config::load("baton.toml", &renamed, &BTreeMap::new()).unwrap();
    h.crash_and_resume();
    let store = h.store.tasks.values().find(|t| t.key.as_deref() == Some("store")).unwrap();
    assert_eq!(store.state, TaskState::Cancelled);
    assert_eq!(store.error.as_deref(), Some("workstream `storage` is no longer in the configuration"));
}

#[test]
fn a_killed_attempt_keeps_its_resources_until_it_has_exited() {
    let text = r#"
[orchestration]
name = "x"
[[agents]]
name = "a"
concurrency = 2
command = ["true"]
[[tasks]]
key = "one"
title = "one"
resources = ["file:x"]
[[tasks]]
key = "two"
title = "two"
resources = ["file:x"]
"#;
    let mut h = Harness::new(config::load("baton.toml", text, &BTreeMap::new()).unwrap());
    assert_eq!(h.running.len(), 1, "the two tasks share a resource");
    let (one, attempt) = h.running[0];
    let mut fx = Effects::default();
    h.sched.cancel(one, "operator".into(), h.now, &mut fx).unwrap();
    h.sched.step(h.now, &mut fx);
    assert!(fx.assignments.is_empty(), "`two` waits while `one` is being killed");
    h.sched.attempt_ended(one, attempt, h.now);
    let mut fx = Effects::default();
    h.sched.step(h.now, &mut fx);
    assert_eq!(fx.assignments.len(), 1, "`two` runs once `one` has exited");
}

#[test]
fn backoff_doubles_with_jitter_and_caps() {
    let base = Duration::from_secs(1);
    let max = Duration::from_secs(10);
    assert_eq!(backoff(1, base, max, 0.0), Duration::from_millis(500));
    assert_eq!(backoff(1, base, max, 1.0), Duration::from_secs(1));
    assert_eq!(backoff(3, base, max, 1.0), Duration::from_secs(4));
    assert_eq!(backoff(30, base, max, 1.0), max);
}

// ---------------------------------------------------------------------------------------------
// Property test: random plans, random outcomes, random crashes.

#[derive(Debug, Clone)]
struct RandomPlan {
    plan: Plan,
}

fn random_plan() -> impl Strategy<Value = RandomPlan> {
    let workstreams = (1usize..5).prop_flat_map(|n_ws| {
        (0..n_ws)
            .map(|idx| {
                let deps =
                    if idx == 0 { Just(Vec::new()).boxed() } else { proptest::collection::vec(0..idx, 0..2).boxed() };
                (0i64..4, deps)
            })
            .collect::<Vec<_>>()
    });
    (
        workstreams,
        1usize..14,
        proptest::collection::vec((0usize..100, proptest::collection::vec(0usize..100, 0..3), 1u32..4), 14),
        1u32..4,
        1u32..3,
    )
        .prop_map(|(ws_raw, n_tasks, task_raw, concurrency, n_agents)| {
            let nodes: Vec<graph::Node> = ws_raw
                .iter()
                .map(|(rank, deps)| {
                    let mut deps = deps.clone();
                    deps.sort_unstable();
                    deps.dedup();
                    graph::Node { priority: Priority::from_rank(*rank), depends_on: deps }
                })
                .collect();
            let phases_idx = graph::phases(&nodes).unwrap();
            let names: Vec<String> = (0..nodes.len()).map(|idx| format!("ws{idx}")).collect();
            let phase_of_ws = |ws: usize| phases_idx.iter().position(|phase| phase.contains(&ws)).unwrap();
            // Tasks sorted by phase so that depending on a lower index never means a later phase.
            let mut task_ws: Vec<usize> = task_raw.iter().take(n_tasks).map(|(ws, _, _)| ws % nodes.len()).collect();
            task_ws.sort_by_key(|&ws| phase_of_ws(ws));
            let tasks: Vec<NewTask> = (0..n_tasks)
                .map(|idx| {
                    let (_, deps, max_attempts) = &task_raw[idx];
                    let mut deps: Vec<usize> =
                        if idx == 0 { Vec::new() } else { deps.iter().map(|d| d % idx).collect() };
                    deps.sort_unstable();
                    deps.dedup();
                    NewTask {
                        parent: None,
                        key: Some(format!("t{idx}")),
                        workstream: Some(names[task_ws[idx]].clone()),
                        title: format!("task {idx}"),
                        description: String::new(),
                        input: serde_json::json!({}),
                        requires: Vec::new(),
                        agent: None,
                        depends_on: deps.into_iter().map(|d| TaskRef::Key(format!("t{d}"))).collect(),
                        priority: nodes[task_ws[idx]].priority,
                        max_attempts: *max_attempts,
                        timeout_ms: None,
                        resources: if idx % 3 == 0 { vec!["file:shared".into()] } else { Vec::new() },
                        estimated_tokens: None,
                    }
                })
                .collect();
            let agents = (0..n_agents)
                .map(|idx| AgentSpec {
                    name: format!("agent{idx}"),
                    role: String::new(),
                    workstream: None,
                    priority: Priority::Medium,
                    capabilities: Vec::new(),
                    kind: AgentKind::Process(ProcessSpec::per_task(vec!["true".into()])),
                    restart: RestartPolicy::OnFailure,
                    max_restarts: 1,
                    restart_window: Duration::from_secs(600),
                    restart_backoff: Duration::from_secs(1),
                    heartbeat_timeout: Duration::from_secs(30),
                    circuit_breaker: config::CircuitBreaker { failures: 100, cooldown: Duration::from_secs(1) },
                    concurrency,
                    runbook: None,
                    objectives: Vec::new(),
                    tools: Vec::new(),
                    log_rotation: Default::default(),
                })
                .collect();
            let workstreams = nodes
                .iter()
                .enumerate()
                .map(|(idx, node)| WorkstreamSpec {
                    name: names[idx].clone(),
                    description: String::new(),
                    priority: node.priority,
                    depends_on: node.depends_on.iter().map(|d| names[*d].clone()).collect(),
                    objective: None,
                })
                .collect();
            let phases = phases_idx.iter().map(|phase| phase.iter().map(|idx| names[*idx].clone()).collect()).collect();
            let plan = Plan {
                name: "random".into(),
                settings: Settings { max_concurrent_agents: 3, ..Settings::default() },
                store_url: String::new(),
                listen: String::new(),
                server: Default::default(),
                auth: None,
                workstreams,
                phases,
                agents,
                tasks,
                schedules: Vec::new(),
                budget: Default::default(),
                mcp_servers: Vec::new(),
                llm: Default::default(),
                a2a: Default::default(),
                coordinator: Default::default(),
            };
            RandomPlan { plan }
        })
}

/// What happens next in a simulation: finish a running attempt, or crash.
#[derive(Debug, Clone)]
enum Step {
    Finish { pick: usize, success: bool },
    Crash,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            8 => (0usize..100, proptest::bool::weighted(0.7)).prop_map(|(pick, success)| Step::Finish { pick, success }),
            1 => Just(Step::Crash),
        ],
        0..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_task_ends_exactly_once_and_never_before_its_dependencies(plan in random_plan(), steps in steps()) {
        let n_tasks = plan.plan.tasks.len();
        let mut h = Harness::new(plan.plan);
        let mut steps = steps.into_iter();
        // Bounded: each task runs at most max_attempts (< 4) times per crash.
        for _ in 0..5_000 {
            if h.sched.state() != RunState::Running {
                break;
            }
            match steps.next() {
                Some(Step::Crash) => h.crash_and_resume(),
                Some(Step::Finish { pick, success }) if !h.running.is_empty() => {
                    let idx = pick % h.running.len();
                    h.finish(idx, success);
                }
                _ if !h.running.is_empty() => h.finish(0, true),
                _ => {
                    prop_assert!(h.wait(), "a run with nothing running must be waiting on time");
                }
            }
        }
        prop_assert_ne!(h.sched.state(), RunState::Running, "the run ends");
        for task in h.store.tasks.values() {
            prop_assert!(task.state.is_terminal(), "task {} ends terminal, is {}", task.id, task.state);
            let n_terminal_events = h.store.events.iter().filter(|event| match event {
                EventKind::TaskCompleted { task: id, .. }
                | EventKind::TaskDeadLettered { task: id, .. }
                | EventKind::TaskCancelled { task: id, .. } => *id == task.id,
                _ => false,
            }).count();
            prop_assert_eq!(n_terminal_events, 1, "task {} ends exactly once", task.id);
        }
        prop_assert_eq!(h.store.tasks.len(), n_tasks);
        // No two tasks sharing a resource ever ran at once: checked through claims order is
        // not enough, so the scheduler's own held map is checked by construction; here check
        // that the run recorded exactly one RunCompleted.
        prop_assert_eq!(h.events("RunCompleted").len(), 1);
        let succeeded = h.store.tasks.values().all(|task| task.state == TaskState::Succeeded);
        prop_assert_eq!(h.sched.state() == RunState::Succeeded, succeeded);
    }
}

// ---------------------------------------------------------------------------------------------
// Supervision.

const WORKERS: &str = r#"
[orchestration]
name = "workers"
retry_backoff = "1s"

[[workstreams]]
name = "build"
priority = "critical"

[[workstreams]]
name = "test"
depends_on = ["build"]

[[agents]]
name = "builder"
workstream = "build"
mode = "worker"
command = ["python3", "worker.py"]
max_restarts = 2
restart_window = "10m"
restart_backoff = "1s"
heartbeat_timeout = "30s"
circuit_breaker = { failures = 2, cooldown = "1m" }

[[agents]]
name = "tester"
workstream = "test"
command = ["true"]

[[tasks]]
key = "compile"
title = "Compile"
workstream = "build"
max_attempts = 5

[[tasks]]
key = "check"
title = "Check"
workstream = "build"
max_attempts = 5

[[tasks]]
key = "unit"
title = "Unit"
workstream = "test"
"#;

fn workers() -> Harness {
    Harness::new(config::load("baton.toml", WORKERS, &BTreeMap::new()).unwrap())
}

fn agent_state(h: &Harness, name: &str) -> Option<AgentState> {
    h.store.events.iter().rev().find_map(|event| match event {
        EventKind::AgentStateChanged { agent, to, .. } if agent == name => Some(*to),
        _ => None,
    })
}

fn exit(h: &mut Harness, agent: &str, reason: &str) {
    let mut fx = Effects::default();
    h.sched.agent_exited(agent, reason.into(), false, h.now, &mut fx).unwrap();
    // Its attempts fail with it, as the runtime reports them.
    let running: Vec<(TaskId, u32)> = h
        .running
        .iter()
        .copied()
        .filter(|(id, _)| h.store.tasks[id].assigned_agent.as_deref() == Some(agent))
        .collect();
    h.running.retain(|entry| !running.contains(entry));
    for (id, attempt) in running {
        // The scheduler gave the attempt up with the agent; the runtime's report comes late.
        let failed = Outcome::Failed { reason: format!("agent exited: {reason}") };
        assert!(h.sched.complete(id, attempt, failed, h.now, 0.5, &mut fx).is_err(), "already given up");
    }
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
}

#[test]
fn a_worker_that_crashes_before_initialize_is_restarted_by_its_policy() {
    let mut h = workers();
    // The first start after the crash fails, the next succeeds.
    h.failing_starts.insert("builder".into(), 1);
    exit(&mut h, "builder", "exit status 1");
    while agent_state(&h, "builder") != Some(AgentState::Idle) {
        assert_ne!(agent_state(&h, "builder"), Some(AgentState::Failed), "{:#?}", h.store.events);
        assert!(h.wait(), "the builder is started again");
    }
    let reasons: Vec<&str> = h
        .store
        .events
        .iter()
        .filter_map(|event| match event {
            EventKind::AgentStateChanged { agent, to: AgentState::Restarting, reason: Some(reason), .. }
                if agent == "builder" =>
            {
                Some(reason.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec!["exit status 1; restart 1/2 in 1s", "exit status 3; restart 2/2 in 2s"],
        "the failed start is a restart like the crash, counted once"
    );
}

#[test]
fn a_worker_whose_starts_keep_failing_is_failed_by_the_crash_loop_cap() {
    let mut h = workers();
    h.failing_starts.insert("builder".into(), u32::MAX);
    exit(&mut h, "builder", "exit status 1");
    while agent_state(&h, "builder") != Some(AgentState::Failed) {
        assert!(h.wait(), "the builder is started again");
    }
    let states: Vec<(AgentState, String)> = h
        .store
        .events
        .iter()
        .filter_map(|event| match event {
            EventKind::AgentStateChanged { agent, to, reason: Some(reason), .. }
                if agent == "builder" && matches!(to, AgentState::Restarting | AgentState::Failed) =>
            {
                Some((*to, reason.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (AgentState::Restarting, "exit status 1; restart 1/2 in 1s".to_string()),
            (AgentState::Restarting, "exit status 3; restart 2/2 in 2s".to_string()),
            (AgentState::Failed, "exit status 3; crash loop: 2 restarts within 10m".to_string()),
        ]
    );
}

/// A start that fails for good (the command does not exist) fails the agent at once, with the
/// reason, without burning its restarts; a transient one is retried with backoff (above).
#[test]
fn a_worker_that_cannot_start_for_good_is_failed_at_once() {
    let mut h = workers();
    h.broken_starts.insert("builder".into());
    exit(&mut h, "builder", "exit status 1");
    while agent_state(&h, "builder") != Some(AgentState::Failed) {
        assert!(h.wait(), "the builder is started again after its first exit");
    }
    let states: Vec<(AgentState, String)> = h
        .store
        .events
        .iter()
        .filter_map(|event| match event {
            EventKind::AgentStateChanged { agent, to, reason: Some(reason), .. }
                if agent == "builder" && matches!(to, AgentState::Restarting | AgentState::Failed) =>
            {
                Some((*to, reason.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (AgentState::Restarting, "exit status 1; restart 1/2 in 1s".to_string()),
            (
                AgentState::Failed,
                "command `missing-agent` not found in PATH; not restarted: starting it again would fail the same way"
                    .to_string()
            ),
        ]
    );
    let terminated = h.store.events.iter().any(|event| {
        matches!(event, EventKind::AgentTerminated { agent, reason }
            if agent == "builder" && reason == "command `missing-agent` not found in PATH")
    });
    assert!(terminated, "the reason is in the events");
    assert!(!h.wait() || agent_state(&h, "builder") == Some(AgentState::Failed), "and it stays failed");
}

/// Adds a task to `workstream` as the store would create it (API, worker `task/create`).
fn add_task_to(h: &mut Harness, id: TaskId, key: &str, workstream: &str) {
    let mut new = h.plan.tasks[2].clone();
    new.key = Some(key.into());
    new.workstream = Some(workstream.into());
    new.depends_on = Vec::new();
    let task = record(id, &new, Vec::new(), h.now);
    h.store.tasks.insert(id, task.clone());
    let mut fx = Effects::default();
    h.add(vec![task], &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
}

#[test]
fn tasks_created_while_a_critical_agent_is_down_are_held_with_its_dependants() {
    let mut h = workers();
    // The build is done and `test` has started: `unit` runs.
    while h.state_of("unit") != TaskState::Running {
        h.finish(0, true);
    }
    // More build work wakes the builder up; it crashes on it.
    add_task_to(&mut h, TaskId(100), "rebuild", "build");
    assert_eq!(h.state_of("rebuild"), TaskState::Running);
    exit(&mut h, "builder", "exit status 1");
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::Restarting));
    add_task_to(&mut h, TaskId(101), "late", "test");
    assert_eq!(h.state_of("late"), TaskState::Suspended, "held like the dependants that were there");
    // A dependant that was running on another agent and fails is held too, not retried.
    let unit = h.running.iter().position(|(id, _)| h.store.tasks[id].key.as_deref() == Some("unit")).unwrap();
    h.finish(unit, false);
    assert_eq!(h.state_of("unit"), TaskState::Suspended, "a retry waits for the critical agent");
    // Healthy again: it is released.
    while agent_state(&h, "builder") != Some(AgentState::Idle) {
        assert!(h.wait());
    }
    assert_eq!(h.state_of("late"), TaskState::Ready);
    // Down for good: a task created then is cancelled with the cause, as the held ones are.
    h.failing_starts.insert("builder".into(), u32::MAX);
    exit(&mut h, "builder", "exit status 1");
    add_task_to(&mut h, TaskId(102), "later", "test");
    assert_eq!(h.state_of("later"), TaskState::Suspended);
    while agent_state(&h, "builder") != Some(AgentState::Failed) {
        assert!(h.wait());
    }
    add_task_to(&mut h, TaskId(103), "last", "test");
    for key in ["later", "last"] {
        assert_eq!(h.state_of(key), TaskState::Cancelled, "{key}");
        let error = h.store.tasks.values().find(|t| t.key.as_deref() == Some(key)).unwrap().error.clone().unwrap();
        assert!(error.starts_with("critical agent `builder` failed: "), "{key}: {error}");
    }
}

#[test]
fn a_crashing_worker_restarts_with_backoff_until_its_cap_then_fails() {
    let mut h = workers();
    assert_eq!(h.running.len(), 1);
    exit(&mut h, "builder", "exit status 1");
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::Restarting));
    assert_eq!(h.state_of("unit"), TaskState::Suspended, "the critical agent's dependants are held");
    // First restart after 1s, second after 2s.
    let crashed_at = h.now;
    while agent_state(&h, "builder") == Some(AgentState::Restarting) {
        assert!(h.wait());
    }
    assert_eq!(h.now, crashed_at.plus(Duration::from_secs(1)), "restarted after 1s");
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::Idle), "restarted");
    assert_eq!(h.state_of("unit"), TaskState::Pending, "resumed once healthy");
    exit(&mut h, "builder", "exit status 1");
    let crashed_at = h.now;
    while agent_state(&h, "builder") == Some(AgentState::Restarting) {
        assert!(h.wait());
    }
    assert_eq!(h.now, crashed_at.plus(Duration::from_secs(2)), "backoff doubles");
    // A third crash within the window is one too many.
    exit(&mut h, "builder", "exit status 1");
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::Failed));
    assert!(h.store.events.iter().any(|event| matches!(event,
        EventKind::AgentStateChanged { agent, to: AgentState::Failed, reason: Some(reason), .. }
            if agent == "builder" && reason == "exit status 1; crash loop: 2 restarts within 10m")));
    // The run ends failed, naming the cause.
    while h.sched.state() == RunState::Running {
        if !h.wait() {
            break;
        }
    }
    assert_eq!(h.sched.state(), RunState::Failed);
    let summary = h.sched.failure_summary();
    assert!(summary.contains("unit (critical agent `builder` failed: exit status 1; crash loop"), "{summary}");
    assert!(summary.contains("compile (no agent is available to run it (builder is failed))"), "{summary}");
}

#[test]
fn a_silent_worker_is_restarted_and_its_task_retried() {
    let mut h = workers();
    let (compile, _) = h.running[0];
    h.now = h.now.plus(Duration::from_secs(29));
    h.sched.agent_activity("builder", h.now, &mut Effects::default()); // a heartbeat
    h.now = h.now.plus(Duration::from_secs(29));
    let mut fx = Effects::default();
    h.sched.tick(h.now, &mut fx);
    assert!(fx.stop_agents.is_empty(), "heard from 29s ago: alive");
    h.apply(fx);
    h.now = h.now.plus(Duration::from_secs(1));
    let mut fx = Effects::default();
    h.sched.tick(h.now, &mut fx);
    assert!(fx.stop_agents.contains(&"builder".to_string()), "the silent worker is killed");
    h.apply(fx);
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::Restarting));
    assert!(h.store.events.iter().any(|event| matches!(event,
        EventKind::AgentTerminated { agent, reason } if agent == "builder" && reason == "no heartbeat for 30s")));
    // Its attempt was given up with it, and the task is retried after the restart.
    h.running.retain(|(id, _)| *id != compile);
    assert_eq!(h.state_of("compile"), TaskState::Ready);
    while !h.running.iter().any(|(id, _)| *id == compile) {
        assert!(h.wait());
    }
}

#[test]
fn the_circuit_breaker_opens_after_failures_in_a_row_and_half_opens_after_the_cooldown() {
    let mut h = workers();
    h.finish(0, false);
    h.wait();
    h.finish(0, false);
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::CircuitOpen));
    // Retries are due after 2s but the agent takes nothing for a minute.
    h.now = h.now.plus(Duration::from_secs(5));
    let mut fx = Effects::default();
    h.sched.tick(h.now, &mut fx);
    h.apply(fx);
    assert!(h.running.is_empty(), "no task while the circuit is open");
    while agent_state(&h, "builder") == Some(AgentState::CircuitOpen) {
        assert!(h.wait());
    }
    assert_eq!(h.running.len(), 1, "one trial task after the cooldown");
    h.finish(0, false);
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::CircuitOpen), "one more failure opens it again");
}

#[test]
fn an_operator_stopped_agent_holds_its_tasks_until_started() {
    let mut h = workers();
    let mut fx = Effects::default();
    h.sched.stop_agent("builder", h.now, &mut fx).unwrap();
    assert_eq!(fx.stop_agents, vec!["builder".to_string()]);
    h.apply(fx);
    // Its running attempt was given up at once; the runtime's late report of it is stale.
    let (compile, attempt) = h.running.remove(0);
    assert_eq!(h.state_of("compile"), TaskState::Ready);
    let mut fx = Effects::default();
    let late =
        h.sched.complete(compile, attempt, Outcome::Failed { reason: "killed by SIGKILL".into() }, h.now, 0.5, &mut fx);
    assert!(late.is_err());
    while h.wait() {}
    assert_eq!(h.sched.state(), RunState::Running, "the tasks wait for the stopped agent");
    assert!(h.running.is_empty());
    let mut fx = Effects::default();
    h.sched.start_agent_again("builder", h.now, &mut fx).unwrap();
    h.apply(fx);
    assert_eq!(h.running.len(), 1, "started again, it takes work");
}

// ---------------------------------------------------------------------------------------------
// Terminal agents: stalled and waiting for input.

const TERMINAL: &str = r#"
[orchestration]
name = "terminal"
retry_backoff = "1s"

[[agents]]
name = "term"
mode = "pty"
command = ["bash", "repl.sh"]
stall_after = "1m"

[[tasks]]
key = "first"
title = "First"

[[tasks]]
key = "second"
title = "Second"
"#;

fn terminal() -> Harness {
    Harness::new(config::load("baton.toml", TERMINAL, &BTreeMap::new()).unwrap())
}

/// Runs one scheduler command as the engine does: the command, a step, the effects applied.
fn command(h: &mut Harness, run: impl FnOnce(&mut Scheduler, Timestamp, &mut Effects)) -> Effects {
    let mut fx = Effects::default();
    run(&mut h.sched, h.now, &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx.clone());
    fx
}

fn last_reason(h: &Harness, name: &str) -> Option<String> {
    h.store.events.iter().rev().find_map(|event| match event {
        EventKind::AgentStateChanged { agent, reason, .. } if agent == name => reason.clone(),
        _ => None,
    })
}

#[test]
fn a_stalled_terminal_agent_keeps_its_task_and_comes_back_when_it_prints() {
    let mut h = terminal();
    assert_eq!(h.running.len(), 1, "one task at a time");
    let fx = command(&mut h, |sched, _, fx| sched.agent_stalled("term", "no output for 1m".into(), fx).unwrap());
    assert!(fx.kills.is_empty() && fx.stop_agents.is_empty(), "a stalled agent is not killed: {fx:?}");
    assert_eq!(agent_state(&h, "term"), Some(AgentState::Stalled));
    assert_eq!(last_reason(&h, "term").as_deref(), Some("no output for 1m"));
    assert_eq!(h.running.len(), 1, "it keeps its task");
    // An hour of silence later nothing has been given up.
    h.now = h.now.plus(Duration::from_secs(3600));
    command(&mut h, |sched, now, fx| sched.tick(now, fx));
    assert_eq!(h.sched.state(), RunState::Running);
    assert_eq!(h.state_of("second"), TaskState::Ready, "waits for the agent instead of being cancelled");
    command(&mut h, |sched, now, fx| sched.agent_activity("term", now, fx));
    assert_eq!(agent_state(&h, "term"), Some(AgentState::Active));
    assert_eq!(last_reason(&h, "term").as_deref(), Some("output resumed"));
    // Stalled again, then the task ends: so does the stall, and the next task goes out.
    command(&mut h, |sched, _, fx| sched.agent_stalled("term", "no output for 1m".into(), fx).unwrap());
    h.finish(0, true);
    assert!(h.store.events.iter().any(|event| matches!(event,
        EventKind::AgentStateChanged { agent, from: AgentState::Stalled, to: AgentState::Idle, reason: Some(reason) }
            if agent == "term" && reason == "its task ended")));
    assert_eq!(h.state_of("second"), TaskState::Running);
    assert_eq!(agent_state(&h, "term"), Some(AgentState::Idle), "then busy again, without an event");
}

#[test]
fn a_terminal_agent_waiting_for_input_takes_no_new_task_until_answered() {
    let mut h = terminal();
    command(&mut h, |sched, _, fx| sched.agent_waiting_input("term", "Continue? [y/N]", fx).unwrap());
    assert_eq!(agent_state(&h, "term"), Some(AgentState::WaitingInput));
    assert_eq!(last_reason(&h, "term").as_deref(), Some("prompt: Continue? [y/N]"));
    // Its task ends, but the question is still on the screen: no new task.
    h.finish(0, true);
    assert_eq!(agent_state(&h, "term"), Some(AgentState::WaitingInput));
    assert!(h.running.is_empty(), "no new task while a question waits");
    h.now = h.now.plus(Duration::from_secs(3600));
    command(&mut h, |sched, now, fx| sched.tick(now, fx));
    assert_eq!(h.state_of("second"), TaskState::Ready, "waits for the agent instead of being cancelled");
    command(&mut h, |sched, now, fx| sched.agent_activity("term", now, fx));
    assert_eq!(h.state_of("second"), TaskState::Running, "answered, it takes the next task");
    // A waiting agent whose program exits is restarted like any other.
    command(&mut h, |sched, _, fx| sched.agent_waiting_input("term", "Continue? [y/N]", fx).unwrap());
    exit(&mut h, "term", "exit status 1");
    assert_eq!(agent_state(&h, "term"), Some(AgentState::Restarting));
}

#[test]
fn a_worker_that_exits_cleanly_stays_down_under_on_failure_and_restarts_under_always() {
    let mut h = workers();
    let mut fx = Effects::default();
    h.sched.agent_exited("builder", "exit status 0".into(), true, h.now, &mut fx).unwrap();
    h.apply(fx);
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::Stopped));
    let always = WORKERS.replace("max_restarts = 2", "max_restarts = 2\nrestart = \"always\"");
    let mut h = Harness::new(config::load("baton.toml", &always, &BTreeMap::new()).unwrap());
    let mut fx = Effects::default();
    h.sched.agent_exited("builder", "exit status 0".into(), true, h.now, &mut fx).unwrap();
    h.apply(fx);
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::Restarting));
}

#[test]
fn tasks_whose_resource_globs_overlap_never_run_together() {
    let text = r#"
[orchestration]
name = "x"
[[agents]]
name = "a"
concurrency = 3
command = ["true"]
[[tasks]]
key = "storage"
title = "storage"
resources = ["file:src/storage/**"]
[[tasks]]
key = "wal"
title = "wal"
resources = ["file:src/storage/wal.rs"]
[[tasks]]
key = "docs"
title = "docs"
resources = ["file:docs/*.md"]
"#;
    let mut h = Harness::new(config::load("baton.toml", text, &BTreeMap::new()).unwrap());
    let running: Vec<&str> = h.running.iter().map(|(id, _)| h.store.tasks[id].key.as_deref().unwrap()).collect();
    assert_eq!(running, vec!["storage", "docs"], "`wal` overlaps `storage/**` and waits");
    let storage = h.running.iter().position(|(id, _)| h.store.tasks[id].key.as_deref() == Some("storage")).unwrap();
    h.finish(storage, true);
    assert!(h.running.iter().any(|(id, _)| h.store.tasks[id].key.as_deref() == Some("wal")));
}

#[test]
fn conflict_policies_wait_fail_or_warn_and_say_so_once() {
    let text = r#"
[orchestration]
name = "x"
[conflicts]
policy = "wait"
[[agents]]
name = "a"
concurrency = 4
command = ["true"]
[[tasks]]
key = "holder"
title = "holder"
resources = ["customer:*"]
[[tasks]]
key = "waits"
title = "waits"
resources = ["customer:456"]
[[tasks]]
key = "fails"
title = "fails"
resources = ["customer:457"]
on_conflict = "fail"
[[tasks]]
key = "warns"
title = "warns"
resources = ["customer:458"]
on_conflict = "warn"
"#;
    let mut h = Harness::new(config::load("baton.toml", text, &BTreeMap::new()).unwrap());
    let running: Vec<&str> = h.running.iter().map(|(id, _)| h.store.tasks[id].key.as_deref().unwrap()).collect();
    assert_eq!(running, vec!["holder", "warns"]);
    assert_eq!(h.state_of("fails"), TaskState::Dead);
    assert_eq!(h.state_of("waits"), TaskState::Ready);
    let conflicts: Vec<String> = h
        .store
        .events
        .iter()
        .filter(|event| matches!(event, EventKind::ConflictDeferred { .. }))
        .map(|event| event.describe())
        .collect();
    assert_eq!(conflicts.len(), 3, "{conflicts:?}");
    assert!(
        conflicts.iter().any(|line| line.ends_with("waits: `customer:456` overlaps `customer:*` held by task holder")),
        "{conflicts:?}"
    );
    // Another turn while `waits` still waits says nothing more.
    let mut fx = Effects::default();
    h.sched.step(h.now, &mut fx);
    assert!(fx.writes.iter().all(|write| !matches!(write, Write::Event(EventKind::ConflictDeferred { .. }))));
    let holder = h.running.iter().position(|(id, _)| h.store.tasks[id].key.as_deref() == Some("holder")).unwrap();
    h.finish(holder, true);
    assert_eq!(h.state_of("waits"), TaskState::Running);
}

#[test]
fn agent_leases_hold_resources_until_released_expired_or_the_agent_goes() {
    let text = r#"
[orchestration]
name = "x"
[[agents]]
name = "editor"
mode = "worker"
command = ["true"]
heartbeat_timeout = "1h"
[[agents]]
name = "other"
mode = "worker"
command = ["true"]
heartbeat_timeout = "1h"
[[tasks]]
key = "keep"
title = "keeps the run open"
agent = "other"
"#;
    let mut h = Harness::new(config::load("baton.toml", text, &BTreeMap::new()).unwrap());
    let mut fx = Effects::default();
    let until = h.sched.acquire_resource("editor", "file:*.toml", Duration::from_secs(60), h.now, &mut fx).unwrap();
    assert_eq!(until, h.now.plus(Duration::from_secs(60)));
    let refused = h.sched.acquire_resource("other", "file:Cargo.toml", Duration::from_secs(60), h.now, &mut fx);
    assert_eq!(refused.unwrap_err(), "`file:Cargo.toml` overlaps `file:*.toml` held by agent editor");
    assert!(h.sched.release_resource("other", "file:*.toml", &mut fx).is_err(), "only its holder releases it");
    h.apply(fx);
    // It expires.
    h.now = h.now.plus(Duration::from_secs(61));
    let mut fx = Effects::default();
    h.sched.tick(h.now, &mut fx);
    assert!(fx.writes.iter().any(|write| matches!(write,
        Write::Event(EventKind::ResourceReleased { reason, .. }) if reason == "expired")));
    h.apply(fx);
    let mut fx = Effects::default();
    h.sched.acquire_resource("other", "file:Cargo.toml", Duration::from_secs(60), h.now, &mut fx).unwrap();
    // The agent goes: its leases go with it.
    h.sched.agent_exited("other", "exit status 1".into(), false, h.now, &mut fx).unwrap();
    assert!(fx.writes.iter().any(|write| matches!(write,
        Write::Event(EventKind::ResourceReleased { reason, .. }) if reason == "its agent exited")));
}

#[test]
fn a_task_waits_for_a_resource_an_agent_leases() {
    let text = r#"
[orchestration]
name = "x"
[[agents]]
name = "editor"
mode = "worker"
command = ["true"]
heartbeat_timeout = "1h"
[[tasks]]
key = "a"
title = "a"
[[tasks]]
key = "touch"
title = "touch Cargo.toml"
depends_on = ["a"]
resources = ["file:Cargo.toml"]
"#;
    let mut h = Harness::new(config::load("baton.toml", text, &BTreeMap::new()).unwrap());
    let mut fx = Effects::default();
    h.sched.acquire_resource("editor", "file:Cargo.toml", Duration::from_secs(60), h.now, &mut fx).unwrap();
    h.apply(fx);
    h.finish(0, true); // `a`
    assert_eq!(h.state_of("touch"), TaskState::Ready, "it waits for the lease");
    assert!(h.store.events.iter().any(|event| event.describe().ends_with("held by agent editor")));
    let mut fx = Effects::default();
    h.sched.release_resource("editor", "file:Cargo.toml", &mut fx).unwrap();
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert_eq!(h.state_of("touch"), TaskState::Running);
}

/// Bounded memory: a task's record leaves the scheduler once it has ended and the commit is
/// durable; what the run needs of it stays in the counts.
#[test]
fn a_task_record_leaves_memory_when_it_ends() {
    let mut h = Harness::new(roadmap());
    let (analyze, attempt) = h.running.remove(0);
    let mut fx = Effects::default();
    let done = Outcome::Succeeded { result: serde_json::json!({"big": "x".repeat(1 << 16)}) };
    h.sched.complete(analyze, attempt, done, h.now, 0.5, &mut fx).unwrap();
    assert!(h.sched.task(analyze).is_some(), "held until its write is durable");
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert!(h.sched.task(analyze).is_none(), "gone once durable");
    assert!(h.sched.tasks().all(|task| task.id != analyze));
    let progress = h.sched.progress();
    assert_eq!(progress.by_state[TaskState::Succeeded.index()], 1);
    assert_eq!(h.state_of("fix"), TaskState::Running, "its dependant was released");
    h.finish_all_tasks();
    assert_eq!(h.sched.state(), RunState::Succeeded);
    assert_eq!(h.sched.tasks().count(), 0, "a finished run holds no task");
    assert_eq!(h.sched.n_tasks(), h.store.tasks.len() as u64);
}

/// A restart loads only the unfinished tasks, with the counts of the finished ones and the
/// outcome of those they depend on: progress, phases, dependencies, retries and the failure
/// report come out as if every task had been loaded.
#[test]
fn a_restart_loads_only_unfinished_tasks_and_keeps_counts_phases_and_dependencies() {
    let mut h = Harness::new(roadmap());
    let mut new = h.plan.tasks[0].clone();
    new.workstream = None;
    new.max_attempts = 1;
    let task = |key: &str, id: TaskId, depends_on: Vec<TaskId>, h: &mut Harness| {
        let mut new = new.clone();
        new.key = Some(key.into());
        let task = record(id, &new, depends_on, h.now);
        h.store.tasks.insert(id, task.clone());
        task
    };
    let doomed = task("doomed", TaskId(100), Vec::new(), &mut h);
    let mut fx = Effects::default();
    h.add(vec![doomed], &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    // `analyze` succeeds, `doomed` dies (it has no workstream: no workstream fails with it).
    while h.state_of("doomed") != TaskState::Dead || h.state_of("analyze") != TaskState::Succeeded {
        let (id, _) = h.running[0];
        let success = h.store.tasks[&id].key.as_deref() != Some("doomed");
        h.finish(0, success);
    }
    let phase = h.sched.phase();
    let before = h.sched.progress();
    h.crash_and_resume();
    let stored = h.store.stored(h.store.phase);
    assert!(stored.tasks.iter().all(|task| !task.state.is_terminal()), "only unfinished tasks are loaded");
    assert!(stored.tasks.len() < h.store.tasks.len());
    assert_eq!(h.sched.tasks().count(), stored.tasks.len());
    assert_eq!(h.sched.phase(), phase);
    let after = h.sched.progress();
    for state in [TaskState::Succeeded, TaskState::Dead] {
        assert_eq!(after.by_state[state.index()], before.by_state[state.index()], "{state} tasks are counted");
    }
    assert_eq!(after.workstreams, before.workstreams, "the workstreams' counts survive the restart");

    // New tasks depending on finished ones: the store answers for those.
    let analyze = h.store.tasks.values().find(|task| task.key.as_deref() == Some("analyze")).unwrap().id;
    let after_analyze = task("after-analyze", TaskId(101), vec![analyze], &mut h);
    let after_doomed = task("after-doomed", TaskId(102), vec![TaskId(100)], &mut h);
    // `analyze`'s outcome is in memory (unfinished `fix` depends on it); `doomed`'s is not.
    assert_eq!(h.sched.unknown_dependencies([&after_analyze, &after_doomed]), vec![TaskId(100)]);
    let mut fx = Effects::default();
    h.add(vec![after_analyze, after_doomed], &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert_ne!(h.state_of("after-analyze"), TaskState::Cancelled, "its dependency succeeded");
    assert_eq!(h.state_of("after-doomed"), TaskState::Cancelled);
    assert_eq!(h.store.tasks[&TaskId(102)].error.as_deref(), Some("dependency `doomed` is dead"));

    // An operator retries the dead task: it is loaded from the store.
    assert!(h.sched.task(TaskId(100)).is_none());
    let mut fx = Effects::default();
    h.retry(TaskId(100), &mut fx).unwrap();
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert!(!h.state_of("doomed").is_terminal(), "retried");
    h.finish_all_tasks();
    assert_eq!(h.state_of("doomed"), TaskState::Succeeded);
    assert_eq!(h.sched.state(), RunState::Failed, "`after-doomed` stays cancelled");
    assert_eq!(h.sched.failure_summary(), "1 task(s) cancelled: after-doomed (dependency `doomed` is dead)");
}

/// The failure report names the first dead tasks and counts them all, also after a restart
/// that loaded none of them.
#[test]
fn the_failure_report_counts_every_dead_task_and_names_the_first() {
    let mut h = Harness::new(roadmap());
    let mut fx = Effects::default();
    let mut new = h.plan.tasks[2].clone();
    new.workstream = None;
    new.requires = vec!["nobody-has-this".into()];
    let first = TaskId(100);
    let tasks: Vec<TaskRecord> = (0..8)
        .map(|n| {
            new.key = Some(format!("orphan-{n}"));
            record(TaskId(first.0 + n), &new, Vec::new(), h.now)
        })
        .collect();
    for task in &tasks {
        h.store.tasks.insert(task.id, task.clone());
    }
    h.add(tasks, &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    h.finish_all_tasks();
    assert_eq!(h.sched.state(), RunState::Failed);
    let expected = "8 task(s) cancelled: orphan-0 (no agent can run it), orphan-1 (no agent can run it), \
         orphan-2 (no agent can run it), orphan-3 (no agent can run it), orphan-4 (no agent can run it), and 3 more";
    assert_eq!(h.sched.failure_summary(), expected);
    // Rebuilt from what the store gives a restart: the first few of them, and the counts.
    let mut fx = Effects::default();
    let rebuilt = Scheduler::new(h.plan.clone(), "node-2".into(), h.store.stored(h.store.phase), h.now, &mut fx);
    assert_eq!(rebuilt.tasks().count(), 0);
    assert_eq!(rebuilt.failure_summary(), expected);
}

/// With the coordinator choosing agents, a task that several agents can take waits for its
/// choice (asked once, as an effect) and goes to the agent chosen; a task that one agent can
/// take, or that is pinned, is assigned by the rules at once; a fallback lets the rules choose.
#[test]
fn the_coordinator_chooses_among_agents_that_can_take_a_task() {
    let text = r#"
[orchestration]
name = "x"
[[agents]]
name = "a"
capabilities = ["write"]
command = ["true"]
[[agents]]
name = "b"
capabilities = ["write"]
command = ["true"]
[[agents]]
name = "c"
capabilities = ["test"]
concurrency = 2
command = ["true"]
[[tasks]]
key = "seed"
title = "seed"
requires = ["test"]
"#;
    // `seed` keeps the run going.
    let mut h = Harness::new(config::load("baton.toml", text, &BTreeMap::new()).unwrap());
    h.sched.coordinator_assigns(true);
    let add = |h: &mut Harness, id: i64, key: &str, requires: &[&str], agent: Option<&str>| {
        let mut new = h.plan.tasks[0].clone();
        new.key = Some(key.into());
        new.requires = requires.iter().map(|cap| cap.to_string()).collect();
        new.agent = agent.map(str::to_string);
        let task = record(TaskId(id), &new, Vec::new(), h.now);
        h.store.tasks.insert(TaskId(id), task.clone());
        let mut fx = Effects::default();
        h.add(vec![task], &mut fx);
        h.sched.step(h.now, &mut fx);
        let asked = fx.choose_agent.clone();
        h.apply(fx);
        asked
    };
    let agent_of = |h: &Harness, id: i64| h.store.tasks[&TaskId(id)].assigned_agent.clone();

    let asked = add(&mut h, 10, "draft", &["write"], None);
    assert_eq!(asked, vec![(TaskId(10), vec!["a".to_string(), "b".to_string()])]);
    assert_eq!(h.store.tasks[&TaskId(10)].state, TaskState::Ready, "held for the choice");
    // Asked once: later steps do not ask again while the answer is out.
    let fx = command(&mut h, |_, _, _| {});
    assert!(fx.choose_agent.is_empty() && fx.assignments.is_empty());

    assert!(add(&mut h, 11, "pinned", &["write"], Some("a")).is_empty());
    assert_eq!(agent_of(&h, 11).as_deref(), Some("a"), "a pinned task is not asked about");
    assert!(add(&mut h, 12, "check", &["test"], None).is_empty());
    assert_eq!(agent_of(&h, 12).as_deref(), Some("c"), "one agent can take it");

    // `a` is busy (concurrency 1) but chosen anyway for `draft`: it waits for `a`.
    let fx = command(&mut h, |sched, _, _| sched.assignment_chosen(TaskId(10), Some("a".into())));
    assert!(fx.assignments.is_empty(), "`b` is free, but `a` was chosen");
    let pinned = h.running.iter().position(|(id, _)| *id == TaskId(11)).unwrap();
    h.finish(pinned, true);
    assert_eq!(agent_of(&h, 10).as_deref(), Some("a"));

    // A fallback: the rules choose (the least busy agent).
    let asked = add(&mut h, 13, "more", &["write"], None);
    assert_eq!(asked.len(), 1);
    command(&mut h, |sched, _, _| sched.assignment_chosen(TaskId(13), None));
    assert_eq!(agent_of(&h, 13).as_deref(), Some("b"));

    // The agent chosen is stopped while the task waits for it: the rules choose another. (A
    // question is asked only when some agent has room: `b` is freed first.)
    let on_b = h.running.iter().position(|(id, _)| *id == TaskId(13)).unwrap();
    h.finish(on_b, true);
    assert_eq!(add(&mut h, 14, "last", &["write"], None).len(), 1);
    command(&mut h, |sched, now, fx| {
        sched.assignment_chosen(TaskId(14), Some("b".into()));
        sched.stop_agent("b", now, fx).unwrap();
    });
    let running_on_a = h.running.iter().position(|(id, _)| *id == TaskId(10)).unwrap();
    h.finish(running_on_a, true);
    assert_eq!(agent_of(&h, 14).as_deref(), Some("a"), "`b` is stopped: not waited for");
}
