//! Changing the running plan without a restart: agents added, updated and removed,
//! workstreams added, and a whole changed configuration diffed and applied
//! ([`Scheduler::reconfigure`], for the HTTP API and the hot reload of `baton.toml`).
//!
//! - An added agent starts like the others: at once when it is shared or its workstream has
//!   started (and still has work), else with its workstream's phase.
//! - An updated agent whose runtime changed (command, mode, environment, working directory,
//!   limits, terminal, heartbeat, runtime kind) is restarted when it runs, its running attempts re-queued
//!   as an operator's restart does; any other change applies to its next task.
//! - A removed agent is stopped (its attempts re-queued to other agents) and its slot is kept
//!   as a tombstone (`AgentSlot::removed`), so that no index moves. Tasks only it could run
//!   are then cancelled by the usual rule for unrunnable tasks. Its name may be added again
//!   later: that takes a new slot.
//! - An added workstream may only depend on existing ones; the phases are computed again with
//!   [`crate::graph`]. Workstreams that started keep running; the new one starts at once when
//!   its dependencies are done (even when its phase number is below the current one), and
//!   otherwise when the run reaches its phase. The current phase becomes the lowest phase with
//!   unfinished work.
//! - What cannot change live (a workstream removed or its dependencies or priority changed,
//!   schedules, budgets, the store, the server) is listed in [`ReloadSummary::not_applied`],
//!   each with why: a reload never fails because of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::{AgentSlot, Effects, Error, Scheduler, WorkstreamState, Write};
use crate::config::{AgentKind, AgentSpec, Plan, WorkstreamSpec};
use crate::event::EventKind;
use crate::graph;
use crate::model::{AgentState, NewTask, TaskId};
use crate::time::Timestamp;

/// What [`Scheduler::reconfigure`] did. The short names read "agent reviewer", "workstream
/// docs", "task write-docs", "setting lease_ttl".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
    /// Changes that need a restart, each with why.
    pub not_applied: Vec<String>,
    /// Tasks of the file that were not added, each with why: their key is taken by a task of
    /// the run that the file did not make (one made through the API, by a worker or by chat).
    pub not_added: Vec<String>,
    /// Agents restarted because their runtime changed.
    pub restarted: Vec<String>,
    /// Tasks of the new configuration that the run does not have yet. The scheduler does not
    /// create tasks: the caller creates them in the store and hands them back with
    /// [`Scheduler::add_task`], as for any new task.
    pub new_tasks: Vec<NewTask>,
}

impl ReloadSummary {
    /// Whether the new configuration changed nothing that was applied.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty() && self.new_tasks.is_empty()
    }

    /// Whether the reload is no news: nothing applied, nothing that needs a restart, nothing
    /// refused (an editor touching the file). Such a reload writes no event and logs at debug.
    pub fn is_unchanged(&self) -> bool {
        self.is_empty() && self.not_applied.is_empty() && self.not_added.is_empty()
    }
}

/// Whether two specs of an agent differ in what its runtime was built from: such a change
/// needs a new runtime, so a running agent is restarted. The engine builds the new runtime
/// exactly when this says so.
pub fn runtime_changed(old: &AgentSpec, new: &AgentSpec) -> bool {
    // The tools an agent may call are in its `{mcp.config}` file, written when it starts.
    old.kind.runtime_differs(&new.kind) || old.heartbeat_timeout != new.heartbeat_timeout || old.tools != new.tools
}

/// Whether two specs of an agent say the same, wherever in the file they are written (lines
/// added above an agent move its `command`).
fn same_spec(old: &AgentSpec, new: &AgentSpec) -> bool {
    let mut moved = new.clone();
    if let (AgentKind::Process(old), AgentKind::Process(moved)) = (&old.kind, &mut moved.kind) {
        moved.command_location = old.command_location.clone();
    }
    *old == moved
}

/// The phases of a list of workstreams, or the cycle that prevents them.
fn compute_phases(workstreams: &[WorkstreamSpec]) -> Result<Vec<Vec<String>>, Error> {
    let index: HashMap<&str, usize> = workstreams.iter().enumerate().map(|(idx, ws)| (ws.name.as_str(), idx)).collect();
    let mut depends_on: Vec<Vec<usize>> = Vec::with_capacity(workstreams.len());
    for ws in workstreams {
        let mut deps = Vec::with_capacity(ws.depends_on.len());
        for dep in &ws.depends_on {
            deps.push(*index.get(dep.as_str()).ok_or_else(|| Error::UnknownWorkstream(dep.clone()))?);
        }
        depends_on.push(deps);
    }
    if let Some(cycle) = graph::find_cycle(&depends_on) {
        let path: Vec<&str> = cycle.iter().map(|&idx| workstreams[idx].name.as_str()).collect();
        return Err(Error::WorkstreamCycle(path.join(" -> ")));
    }
    let nodes: Vec<graph::Node> = workstreams
        .iter()
        .zip(depends_on)
        .map(|(ws, depends_on)| graph::Node { priority: ws.priority, depends_on })
        .collect();
    let phases = graph::phases(&nodes).ok_or_else(|| Error::WorkstreamCycle("no phases can be computed".into()))?;
    Ok(phases.into_iter().map(|phase| phase.into_iter().map(|idx| workstreams[idx].name.clone()).collect()).collect())
}

impl Scheduler {
    /// Adds an agent to the running plan. Its name must be new (a removed agent's name may be
    /// used again) and its workstream, if any, must exist. It starts at once when it is shared
    /// or its workstream has started; ready tasks it can run are dispatched.
    pub fn add_agent(&mut self, spec: AgentSpec, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        self.check_new_agent(&spec)?;
        self.insert_agent(spec, fx);
        self.step(now, fx);
        Ok(())
    }

    fn check_new_agent(&self, spec: &AgentSpec) -> Result<(), Error> {
        if self.agent_index.contains_key(&spec.name) {
            return Err(Error::AgentExists(spec.name.clone()));
        }
        Self::check_agent_spec(spec)?;
        if let Some(ws) = &spec.workstream
            && !self.workstreams.contains_key(ws)
        {
            return Err(Error::UnknownWorkstream(ws.clone()));
        }
        Ok(())
    }

    fn check_agent_spec(spec: &AgentSpec) -> Result<(), Error> {
        let invalid = |reason: &str| Error::InvalidAgent { name: spec.name.clone(), reason: reason.to_string() };
        if spec.name.trim().is_empty() {
            return Err(invalid("the name is empty"));
        }
        if spec.concurrency == 0 {
            return Err(invalid("concurrency must be at least 1"));
        }
        Ok(())
    }

    /// A new slot for a checked spec, started if its workstream runs. Does not step.
    fn insert_agent(&mut self, spec: AgentSpec, fx: &mut Effects) {
        let name = spec.name.clone();
        let workstream = spec.workstream.clone();
        self.plan.agents.push(spec.clone());
        let idx = self.agents.len();
        self.agents.push(AgentSlot {
            spec,
            state: AgentState::Waiting,
            running: 0,
            succeeded: 0,
            failed: 0,
            last_activity: None,
            restarts: Vec::new(),
            restart_at: None,
            consecutive_failures: 0,
            circuit_until: None,
            held_by_operator: false,
            removed: false,
        });
        self.agent_index.insert(name.clone(), idx);
        self.dirty_agents.insert(idx);
        fx.writes.push(Write::Event(EventKind::AgentAdded { agent: name }));
        if self.state != crate::model::RunState::Running || self.phase == 0 {
            // Started with the run, like the others.
            return;
        }
        match workstream.as_deref() {
            None => self.start_agent(idx, fx),
            Some(ws) => {
                let state = &self.workstreams[ws];
                if state.started && !state.failed && state.n_open > 0 {
                    self.start_agent(idx, fx);
                } else if state.started {
                    // Its workstream has nothing to do now: it is woken with its next task.
                    self.set_agent_state(idx, AgentState::Stopped, Some("its workstream is done".into()), fx);
                }
            }
        }
    }

    /// Replaces an agent's spec. When its runtime changed and it runs, it is restarted (its
    /// running attempts are re-queued, as for an operator's restart); any other change applies
    /// from its next task. Its name and workstream's existence are checked as for a new agent.
    pub fn update_agent(&mut self, spec: AgentSpec, now: Timestamp, fx: &mut Effects) -> Result<bool, Error> {
        let idx = self.agent_idx(&spec.name)?;
        Self::check_agent_spec(&spec)?;
        if let Some(ws) = &spec.workstream
            && !self.workstreams.contains_key(ws)
        {
            return Err(Error::UnknownWorkstream(ws.clone()));
        }
        let old = std::mem::replace(&mut self.agents[idx].spec, spec.clone());
        if let Some(planned) = self.plan.agents.iter_mut().find(|planned| planned.name == spec.name) {
            *planned = spec.clone();
        }
        self.dirty_agents.insert(idx);
        let mut restarted = false;
        if runtime_changed(&old, &spec) {
            if self.agents[idx].state == AgentState::Starting {
                // Being started with the old runtime: started again with the new one.
                fx.stop_agents.push(spec.name.clone());
                self.agents[idx].restart_at = Some(now);
                self.set_agent_state(idx, AgentState::Restarting, Some("restarted by an update".into()), fx);
                restarted = true;
            } else {
                restarted = self.restart_if_running(idx, "restarted by an update", now, fx);
            }
        }
        fx.writes.push(Write::Event(EventKind::AgentUpdated { agent: spec.name.clone(), restarted }));
        self.step(now, fx);
        Ok(restarted)
    }

    /// Removes an agent from the running plan: it is stopped, its running attempts are
    /// re-queued for other agents, and tasks that only it could run are cancelled as
    /// unrunnable (unless another agent that can run them is coming).
    pub fn remove_agent(&mut self, name: &str, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        self.remove_agent_unstepped(name, now, fx)?;
        self.step(now, fx);
        Ok(())
    }

    fn remove_agent_unstepped(&mut self, name: &str, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let idx = self.agent_idx(name)?;
        let slot = &mut self.agents[idx];
        slot.held_by_operator = false;
        slot.restart_at = None;
        if slot.state.is_started() || slot.state == AgentState::Restarting {
            fx.stop_agents.push(name.to_string());
        }
        self.set_agent_state(idx, AgentState::Stopped, Some("removed from the plan".into()), fx);
        self.requeue_attempts_of(idx, &format!("agent `{name}` was removed"), now, fx);
        // Its record is written once more, as stopped; after that it is skipped.
        fx.writes.push(Write::Agent { record: self.agent_record(idx, now), events: Vec::new() });
        self.dirty_agents.remove(&idx);
        self.agents[idx].removed = true;
        self.agent_index.remove(name);
        self.plan.agents.retain(|spec| spec.name != name);
        self.suspended_by.retain(|_, agent| *agent != idx);
        self.outages.remove(&idx);
        fx.writes.push(Write::Event(EventKind::AgentRemoved { agent: name.to_string() }));
        Ok(())
    }

    /// Adds a workstream to the running plan and computes the phases again. Its dependencies
    /// must exist. It starts at once when they are all done, else when the run reaches its
    /// phase; workstreams that started keep running.
    pub fn add_workstream(&mut self, spec: WorkstreamSpec, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        self.add_workstream_unstepped(spec, now, fx)?;
        self.step(now, fx);
        Ok(())
    }

    fn add_workstream_unstepped(
        &mut self,
        spec: WorkstreamSpec,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), Error> {
        if self.workstreams.contains_key(&spec.name) {
            return Err(Error::WorkstreamExists(spec.name.clone()));
        }
        let mut workstreams = self.plan.workstreams.clone();
        workstreams.push(spec.clone());
        let phases = compute_phases(&workstreams)?;
        let name = spec.name.clone();
        self.plan.workstreams = workstreams;
        self.plan.phases = phases;
        self.workstreams.insert(name.clone(), WorkstreamState::default());
        self.run_dirty = true;
        fx.writes.push(Write::Event(EventKind::WorkstreamAdded { workstream: name.clone() }));
        if self.state != crate::model::RunState::Running || self.phase == 0 {
            // The run has not started: its phases start in order.
            return Ok(());
        }
        let dependencies_done = spec.depends_on.iter().all(|dep| self.workstreams[dep.as_str()].done);
        if dependencies_done {
            self.start_workstreams(std::slice::from_ref(&name), now, fx);
        }
        self.renumber_phase(now, fx);
        Ok(())
    }

    /// After the phases changed: the current phase is the lowest one with unfinished work
    /// (past the last when there is none). Its workstreams that have not started start now, so
    /// that every phase up to the current one has been entered, as `advance_phases` expects.
    fn renumber_phase(&mut self, now: Timestamp, fx: &mut Effects) {
        let n_phases = self.plan.phases.len();
        let lowest_unfinished = self
            .plan
            .phases
            .iter()
            .position(|names| names.iter().any(|name| !self.workstreams[name.as_str()].done))
            .map_or(n_phases + 1, |idx| idx + 1);
        self.phase = lowest_unfinished as u32;
        self.run_dirty = true;
        if lowest_unfinished <= n_phases {
            let waiting =
                self.plan.phases[lowest_unfinished - 1].iter().any(|name| !self.workstreams[name.as_str()].started);
            if waiting {
                self.enter_phase(lowest_unfinished as u32, now, true, fx);
            }
        }
    }

    /// Applies a changed configuration to the running run: agents added, removed and updated,
    /// workstreams added, settings that can change live (`max_concurrent_agents`, retry
    /// backoff, `lease_ttl`, `offline_after`, conflict policies). The file's tasks the run does
    /// not have are returned in [`ReloadSummary::new_tasks`] for the caller to create. What
    /// cannot change live is listed in [`ReloadSummary::not_applied`]. Nothing is changed when
    /// an error is returned.
    ///
    /// `existing` are the new plan's tasks that the run has already, by key, finished tasks
    /// included: the store knows them, the scheduler holds only unfinished tasks. A task of
    /// the file whose key is taken by a task the file did not make (made through the API, by a
    /// worker or by chat) is not added, and [`ReloadSummary::not_added`] says so; it stays out
    /// of the running plan, so that every reload says it again until the clash is resolved.
    pub fn reconfigure(
        &mut self,
        new_plan: Plan,
        existing: &BTreeMap<String, TaskId>,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<ReloadSummary, Error> {
        let mut summary = ReloadSummary::default();
        let old = self.plan.clone();

        // Workstreams: added ones in an order where each one's dependencies exist first.
        let mut to_add: Vec<WorkstreamSpec> = Vec::new();
        for ws in &new_plan.workstreams {
            match old.workstream(&ws.name) {
                None => to_add.push(ws.clone()),
                Some(current) => {
                    if current.depends_on != ws.depends_on {
                        summary.not_applied.push(format!(
                            "workstream {}: its depends_on changed; dependencies change at the next run",
                            ws.name
                        ));
                    } else if current.priority != ws.priority {
                        summary.not_applied.push(format!(
                            "workstream {}: its priority changed; phases change at the next run",
                            ws.name
                        ));
                    }
                }
            }
        }
        for ws in &old.workstreams {
            if new_plan.workstream(&ws.name).is_none() {
                summary.not_applied.push(format!(
                    "workstream {}: removing a workstream needs a restart (its tasks are left as they are)",
                    ws.name
                ));
            }
        }
        let mut ordered: Vec<WorkstreamSpec> = Vec::with_capacity(to_add.len());
        let mut known: BTreeSet<String> = old.workstreams.iter().map(|ws| ws.name.clone()).collect();
        while !to_add.is_empty() {
            let n_before = to_add.len();
            let (ready, waiting): (Vec<WorkstreamSpec>, Vec<WorkstreamSpec>) =
                to_add.into_iter().partition(|ws| ws.depends_on.iter().all(|dep| known.contains(dep)));
            for ws in ready {
                known.insert(ws.name.clone());
                ordered.push(ws);
            }
            to_add = waiting;
            if to_add.len() == n_before {
                let ws = &to_add[0];
                let missing = ws.depends_on.iter().find(|dep| !known.contains(*dep)).cloned().unwrap_or_default();
                return Err(Error::UnknownWorkstream(missing));
            }
        }
        if !ordered.is_empty() {
            let mut all = old.workstreams.clone();
            all.extend(ordered.iter().cloned());
            compute_phases(&all)?;
        }

        // Agents: checked before anything changes.
        let mut added_agents: Vec<AgentSpec> = Vec::new();
        let mut updated_agents: Vec<AgentSpec> = Vec::new();
        for spec in &new_plan.agents {
            Self::check_agent_spec(spec)?;
            if let Some(ws) = &spec.workstream
                && !known.contains(ws)
            {
                return Err(Error::UnknownWorkstream(ws.clone()));
            }
            match old.agent(&spec.name) {
                None => added_agents.push(spec.clone()),
                Some(current) if !same_spec(current, spec) => updated_agents.push(spec.clone()),
                Some(_) => {}
            }
        }
        let removed_agents: Vec<String> = old
            .agents
            .iter()
            .filter(|spec| new_plan.agent(&spec.name).is_none())
            .map(|spec| spec.name.clone())
            .collect();

        // Settings.
        let settings = &mut self.plan.settings;
        let new_settings = &new_plan.settings;
        let mut changed_settings: Vec<&str> = Vec::new();
        if settings.max_concurrent_agents != new_settings.max_concurrent_agents {
            settings.max_concurrent_agents = new_settings.max_concurrent_agents;
            changed_settings.push("max_concurrent_agents");
        }
        if settings.retry_backoff != new_settings.retry_backoff
            || settings.retry_backoff_max != new_settings.retry_backoff_max
        {
            settings.retry_backoff = new_settings.retry_backoff;
            settings.retry_backoff_max = new_settings.retry_backoff_max;
            changed_settings.push("retry_backoff");
        }
        if settings.lease_ttl != new_settings.lease_ttl {
            settings.lease_ttl = new_settings.lease_ttl;
            changed_settings.push("lease_ttl");
        }
        if settings.offline_after != new_settings.offline_after {
            settings.offline_after = new_settings.offline_after;
            changed_settings.push("offline_after");
        }
        if settings.conflict_policy != new_settings.conflict_policy
            || settings.task_conflict_policies != new_settings.task_conflict_policies
        {
            settings.conflict_policy = new_settings.conflict_policy;
            settings.task_conflict_policies = new_settings.task_conflict_policies.clone();
            changed_settings.push("conflict policy");
        }
        for setting in changed_settings {
            summary.updated.push(format!("setting {setting}"));
        }
        let current = &self.plan.settings;
        if current.agent_spawn_timeout != new_settings.agent_spawn_timeout {
            summary.not_applied.push("setting agent_spawn_timeout: applies at the next start".into());
        }
        if current.workstream_timeout != new_settings.workstream_timeout {
            summary.not_applied.push("setting workstream_timeout: applies at the next start".into());
        }
        if current.coordinator != new_settings.coordinator || old.coordinator != new_plan.coordinator {
            summary.not_applied.push("[coordinator]: applies at the next start".into());
        }
        for ws in &new_plan.workstreams {
            let before = old.workstream(&ws.name).and_then(|old_ws| old_ws.objective.as_ref());
            if ws.objective.is_some() && ws.objective.as_ref() != before {
                summary.not_applied.push(format!(
                    "workstream `{}` objective: planned at the next start, or now with `baton plan`",
                    ws.name
                ));
            }
        }
        if old.name != new_plan.name {
            summary.not_applied.push("name: a plan with another name is another run; restart to start it".into());
        }
        if old.store_url != new_plan.store_url {
            summary.not_applied.push("store url: the store is opened at start; restart to use another".into());
        }
        if old.listen != new_plan.listen {
            summary.not_applied.push("server listen: the server binds at start; restart to listen elsewhere".into());
        }
        if old.schedules != new_plan.schedules {
            summary.not_applied.push("schedules: schedules change at the next start".into());
        }
        if old.budget != new_plan.budget {
            summary.not_applied.push("budget: budgets change at the next start".into());
        }
        summary.not_applied.extend(other_sections_changed(&old, &new_plan));

        // Applied in an order where each step finds what it needs: workstreams before the
        // agents that serve them, removals before additions (a name may move).
        for ws in ordered {
            let name = ws.name.clone();
            self.add_workstream_unstepped(ws, now, fx)?;
            summary.added.push(format!("workstream {name}"));
        }
        for name in &removed_agents {
            self.remove_agent_unstepped(name, now, fx)?;
            summary.removed.push(format!("agent {name}"));
        }
        for spec in added_agents {
            summary.added.push(format!("agent {}", spec.name));
            self.insert_agent(spec, fx);
        }
        for spec in updated_agents {
            let name = spec.name.clone();
            if self.update_agent(spec, now, fx)? {
                summary.restarted.push(name.clone());
            }
            summary.updated.push(format!("agent {name}"));
        }

        // Tasks: those of the file the run does not have are for the caller to create. A key
        // the run has from elsewhere than the file (the running plan's tasks are the file's)
        // is taken: that task of the file is not added, and left out of the running plan.
        let mut known: BTreeMap<&str, TaskId> =
            self.tasks.values().filter_map(|task| Some((task.key.as_deref()?, task.id))).collect();
        known.extend(existing.iter().map(|(key, id)| (key.as_str(), *id)));
        let files_keys: BTreeSet<&str> = old.tasks.iter().filter_map(|task| task.key.as_deref()).collect();
        let mut taken_keys: BTreeSet<String> = BTreeSet::new();
        for task in &new_plan.tasks {
            let Some(key) = task.key.as_deref() else { continue };
            match known.get(key) {
                None => {
                    summary.added.push(format!("task {key}"));
                    summary.new_tasks.push(task.clone());
                }
                Some(id) if !files_keys.contains(key) => {
                    summary.not_added.push(format!(
                        "task {key}: key `{key}` is taken by task {id}, which the file did not make (made through \
                         the API, by a worker or by chat); give the file's task another key"
                    ));
                    taken_keys.insert(key.to_string());
                }
                Some(_) => {}
            }
        }
        let new_keys: BTreeSet<&str> = new_plan.tasks.iter().filter_map(|task| task.key.as_deref()).collect();
        for task in &old.tasks {
            if let Some(key) = task.key.as_deref()
                && !new_keys.contains(key)
            {
                summary.not_applied.push(format!(
                    "task {key}: removing a task from the file does not cancel it; use `baton task cancel`"
                ));
            }
        }
        self.plan.tasks = new_plan
            .tasks
            .iter()
            .filter(|task| task.key.as_ref().is_none_or(|key| !taken_keys.contains(key)))
            .cloned()
            .collect();

        // A save that changed nothing (an editor touching the file) is not news.
        if !summary.is_unchanged() {
            fx.writes.push(Write::Event(EventKind::ConfigReloaded {
                added: summary.added.clone(),
                removed: summary.removed.clone(),
                updated: summary.updated.clone(),
                not_applied: summary.not_applied.clone(),
                not_added: summary.not_added.clone(),
            }));
        }
        self.step(now, fx);
        Ok(summary)
    }
}

/// Sections of the plan this module does not know (added since, such as `[server]` or
/// `[auth]`): when one changed, it is reported as needing a restart rather than ignored.
fn other_sections_changed(old: &Plan, new: &Plan) -> Vec<String> {
    const KNOWN: [&str; 10] =
        ["name", "settings", "store_url", "listen", "workstreams", "phases", "agents", "tasks", "schedules", "budget"];
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys: BTreeSet<&String> = old.keys().collect();
    keys.extend(new.keys());
    keys.into_iter()
        .filter(|key| !KNOWN.contains(&key.as_str()))
        .filter(|key| old.get(*key) != new.get(*key))
        .map(|key| format!("{key}: changes to this section apply at the next start"))
        .collect()
}
