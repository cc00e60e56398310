//! Opening a run: finding it (the plan's unfinished run, resumed, or a new one), taking the
//! claim on it, and loading what the scheduler needs to know of it. Only the unfinished tasks
//! are loaded; of the finished ones, the counts, the outcome of those the unfinished depend on,
//! and the first few that failed.

use baton_core::config::Plan;
use baton_core::model::{NewTask, RunRecord, RunState, TaskId, TaskRecord, TaskState};
use baton_core::sched::{RunChange, Stored, Write};
use baton_core::{EventKind, Timestamp};
use baton_store::{Applied, NewRun, Store, TaskFilter};

use super::{EngineOptions, Error};

/// Who is executing a run: written on the run so that a second `baton run` can tell whether
/// the first is still alive.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub host: String,
    pub pid: u32,
}

impl Node {
    /// This node's claim on a run, from `now` for `lease_ttl`, taken only from `expect_owner`
    /// (or from nobody, or from an expired claim): a takeover, or a renewal of its own.
    pub(super) fn claim(&self, now: Timestamp, lease_ttl: std::time::Duration, expect_owner: Option<String>) -> Write {
        Write::RunOwner {
            owner: Some(self.id.clone()),
            pid: Some(self.pid),
            until: Some(now.plus(lease_ttl)),
            expect_owner,
        }
    }

    pub fn this_process() -> Node {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let pid = std::process::id();
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        Node { id: format!("{host}:{pid}:{}", &suffix[suffix.len() - 6..]), host, pid }
    }

    /// Whether the node that wrote `owner` with `pid` is certainly gone: it ran on this host
    /// and its process no longer exists.
    fn is_dead(&self, owner: &str, pid: Option<u32>) -> bool {
        let same_host = owner.split(':').next() == Some(self.host.as_str());
        let Some(pid) = pid else { return false };
        same_host && pid != self.pid && !is_running(pid)
    }
}

/// Whether process `pid` exists and is not a zombie (a killed process its parent has not
/// reaped yet is as dead as one that is gone).
fn is_running(pid: u32) -> bool {
    if matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None), Err(nix::errno::Errno::ESRCH)) {
        return false;
    }
    crate::process::proc_stat(pid as i32).is_none_or(|fields| !fields.starts_with('Z'))
}

/// How many dead (and cancelled) tasks a restart reads for the failure report.
const FAILURES_SHOWN: u64 = 5;

/// Finds the run to execute: the unfinished run of this plan (resumed), or a new one. Takes
/// the claim on it.
pub(super) async fn open_run(options: &EngineOptions, now: Timestamp) -> Result<OpenedRun, Error> {
    let store = options.store.as_ref();
    let plan = &options.plan;
    let node = &options.node;
    let lease_ttl = options.plan.settings.lease_ttl;
    let latest = store.latest_run(Some(&plan.name)).await?;
    let previous = latest.as_ref().map(|run| run.id.clone());
    // A run that is running (its process may have died) or was interrupted is resumed.
    if let Some(run) = latest.filter(|run| !run.state.is_finished()) {
        let held = run
            .owner
            .as_ref()
            .is_some_and(|owner| owner != &node.id && run.owner_until.is_some_and(|until| until > now));
        if held {
            let owner = run.owner.clone().unwrap_or_default();
            if !node.is_dead(&owner, run.owner_pid) {
                return Err(busy(&plan.name, &run.id, &owner, run.owner_pid, run.owner_until));
            }
        }
        // The previous owner is gone (or its claim expired): take the run over.
        let claim = node.claim(now, lease_ttl, run.owner.clone());
        let applied = store.apply(&run.id, now, vec![claim]).await?;
        if let Some(Applied::Conflict(reason)) = applied.first() {
            // Another process took it over first: it holds the plan now.
            let taken = store.run(&run.id).await?;
            return Err(match taken.as_ref().and_then(|run| Some((run.owner.as_deref()?, run))) {
                Some((owner, taken)) => busy(&plan.name, &taken.id, owner, taken.owner_pid, taken.owner_until),
                None => Error::Conflict(reason.clone()),
            });
        }
        if !options.fresh {
            if run.state == RunState::Interrupted {
                // Executed again: it is running, as a run resumed after a crash always was.
                let change = RunChange {
                    state: RunState::Running,
                    phase: run.phase,
                    n_tasks: run.n_tasks,
                    n_finished: run.n_finished,
                    ended_at: None,
                    error: None,
                };
                store.apply(&run.id, now, vec![Write::Run { change, events: Vec::new() }]).await?;
            }
            return Ok(OpenedRun { run, resumed: true, previous: None });
        }
        // `--fresh`: the unfinished run is closed as abandoned, and a new one starts.
        let reason = "abandoned: a fresh run was started".to_string();
        let change = RunChange {
            state: RunState::Failed,
            phase: run.phase,
            n_tasks: run.n_tasks,
            n_finished: run.n_finished,
            ended_at: Some(now),
            error: Some(reason.clone()),
        };
        // Counted by the store, not loaded: the run may have millions of tasks.
        let counts = store.task_counts(&run.id).await?;
        let count = |state: TaskState| counts.iter().find(|(counted, _)| *counted == state).map_or(0, |(_, n)| *n);
        let completed = EventKind::RunCompleted {
            state: RunState::Failed,
            n_succeeded: count(TaskState::Succeeded),
            n_dead: count(TaskState::Dead),
            n_cancelled: count(TaskState::Cancelled),
            error: Some(reason),
        };
        store.apply(&run.id, now, vec![Write::Run { change, events: vec![completed] }]).await?;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let new_run = NewRun {
        id,
        name: plan.name.clone(),
        n_phases: plan.phases.len() as u32,
        owner: node.id.clone(),
        owner_pid: node.pid,
        owner_until: now.plus(lease_ttl),
    };
    match store.create_run(new_run, now).await {
        Ok(run) => Ok(OpenedRun { run, resumed: false, previous }),
        // Another process created a run of the plan since we looked.
        Err(baton_store::Error::RunHeld { plan, run, owner, pid, until }) => {
            Err(busy(&plan, &run, &owner, Some(pid), Some(until)))
        }
        Err(error) => Err(error.into()),
    }
}

/// [`Error::Busy`] for the run `run` of `plan`, held by `owner` (`host:pid:suffix`).
fn busy(plan: &str, run: &str, owner: &str, pid: Option<u32>, until: Option<Timestamp>) -> Error {
    let mut parts = owner.split(':');
    let host = parts.next().unwrap_or(owner).to_string();
    let pid = pid.or_else(|| parts.next()?.parse().ok()).unwrap_or_default();
    Error::Busy {
        plan: plan.to_string(),
        run: run.to_string(),
        host,
        pid,
        until: until.map_or_else(|| "an unknown time".to_string(), baton_core::schedule::format_utc),
    }
}

/// The run an engine works on ([`open_run`]).
pub(super) struct OpenedRun {
    pub(super) run: RunRecord,
    /// An unfinished run taken over (resumed), not a new one.
    pub(super) resumed: bool,
    /// For a new run, the plan's run before it: its schedules' cursors carry over.
    pub(super) previous: Option<String>,
}

/// Loads the run's unfinished tasks, creating those of the plan that the run does not have yet
/// (a new run, or tasks added to `baton.toml` since).
async fn sync_tasks(store: &dyn Store, plan: &Plan, run_id: &str, now: Timestamp) -> Result<Vec<TaskRecord>, Error> {
    let mut stored = store.unfinished_tasks(run_id).await?;
    let keys: Vec<String> = plan.tasks.iter().filter_map(|task| task.key.clone()).collect();
    let existing = store.tasks_by_key(run_id, &keys).await?;
    let known: std::collections::HashSet<&str> = existing.iter().filter_map(|task| task.key.as_deref()).collect();
    let missing: Vec<NewTask> =
        plan.tasks.iter().filter(|task| task.key.as_deref().is_none_or(|key| !known.contains(key))).cloned().collect();
    if !missing.is_empty() {
        stored.extend(store.create_tasks(run_id, missing, now).await?);
    }
    Ok(stored)
}

/// Kills what the previous node's attempts left running on this host (a resumed run's first
/// duty).
pub(super) async fn kill_leftovers(store: &dyn Store, run_id: &str, node: &Node) -> Result<(), Error> {
    let leftovers: Vec<i32> = store
        .take_processes(run_id)
        .await?
        .into_iter()
        .filter(|process| process.host == node.host)
        .map(|process| process.pgid)
        .collect();
    let n_killed = crate::process::kill_leftovers(run_id, &leftovers);
    if n_killed > 0 {
        tracing::warn!(n_killed, "killed processes left running by the previous node");
    }
    Ok(())
}

/// What the scheduler starts from, and how many attempts the previous node left running.
pub(super) struct Loaded {
    pub(super) stored: Stored,
    pub(super) n_requeued: u32,
}

/// Loads the run for the scheduler: its unfinished tasks (creating the plan's tasks it does not
/// have yet), the counts of the finished ones, the outcome of those the unfinished depend on,
/// the first few that failed, its agents, schedules and the current period's usage.
pub(super) async fn load(store: &dyn Store, plan: &Plan, opened: &OpenedRun, now: Timestamp) -> Result<Loaded, Error> {
    let run_id = &opened.run.id;
    let tasks = sync_tasks(store, plan, run_id, now).await?;
    let finished = store.task_counts_by_workstream(run_id).await?;
    let mut depended_on: Vec<TaskId> = tasks.iter().flat_map(|task| task.depends_on.iter().copied()).collect();
    depended_on.sort_unstable();
    depended_on.dedup();
    let dependencies = store.task_statuses(run_id, &depended_on).await?;
    let mut failures = Vec::new();
    for state in [TaskState::Dead, TaskState::Cancelled] {
        let filter = TaskFilter { state: Some(state), limit: Some(FAILURES_SHOWN), ..TaskFilter::default() };
        failures.extend(store.tasks(run_id, &filter).await?);
    }
    let n_requeued = tasks.iter().filter(|task| task.state == TaskState::Running).count() as u32;
    let agents = store.agents(run_id).await?;
    // A schedule fires at most once per due time across the plan's runs: a new run goes on
    // from the previous run's cursors (and pauses), and does not owe what it fired.
    let mut schedules = store.schedules(run_id).await?;
    if schedules.is_empty()
        && let Some(previous) = &opened.previous
    {
        schedules = store.schedules(previous).await?;
    }
    // The budgets' usage of the current period: earlier periods no longer count.
    let usage = store.usage(run_id, plan.budget.schedule().period_start(now)).await?;
    let stored = Stored {
        run_id: run_id.clone(),
        phase: opened.run.phase,
        tasks,
        finished,
        dependencies,
        failures,
        agents,
        schedules,
        usage,
    };
    Ok(Loaded { stored, n_requeued })
}
