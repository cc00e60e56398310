//! Supervision: what the scheduler decides when a long-running agent exits, falls silent, keeps
//! failing tasks, or is stopped and started by an operator.
//!
//! - An agent that exits is restarted after a backoff that doubles with each restart, unless
//!   its policy is `never` or it restarted `max_restarts` times within `restart_window` (a
//!   crash loop): then it is `failed`.
//! - A worker that sends nothing for `heartbeat_timeout` is treated as exited: it is killed and
//!   restarted, and its attempts fail (and are retried, on it or on another agent).
//! - While a critical agent is down, the tasks of the workstreams that depend on its
//!   workstream are `suspended`; they resume when it is healthy again, and are cancelled with
//!   the cause when it fails for good.
//! - After `circuit_breaker.failures` task failures in a row an agent gets no new task for
//!   `cooldown`; then it gets one trial task, and one more failure opens the circuit again.
//! - A terminal agent that falls silent during a task is `stalled`, and one whose screen asks a
//!   question is `waiting-input`. Neither is killed: each keeps its task, gets no new one, and
//!   counts as coming back (its tasks are not cancelled as unrunnable). The next output makes
//!   it `active` (or `idle`) again; a stall also ends with its task.

use std::collections::BTreeSet;

use super::{Effects, Error, Lost, Scheduler, Write, backoff};
use crate::config::RestartPolicy;
use crate::event::EventKind;
use crate::model::{AgentState, Priority, TaskId, TaskState};
use crate::time::{Timestamp, format_duration};

/// Why tasks downstream of a critical agent that is down do not run.
#[derive(Debug, Clone)]
pub(super) enum Outage {
    /// Restarting: they are suspended, with this reason, until it is back.
    Down { reason: String },
    /// Failed for good: they are cancelled with this cause.
    Failed { cause: String },
}

/// Whether a failure to start an agent (or to reach it) may go away by trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// It may (a process that died early, a timeout, a resource short for a moment): the
    /// agent is restarted with backoff, and the failure counts toward its crash-loop cap.
    Transient,
    /// It will not (a command that does not exist, a working directory that is missing,
    /// credentials refused): the agent is failed at once, with the reason.
    Permanent,
}

/// The longest delay between restarts, however many there were.
const MAX_RESTART_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

impl Scheduler {
    pub(super) fn agent_idx(&self, name: &str) -> Result<usize, Error> {
        self.agent_index.get(name).copied().ok_or_else(|| Error::UnknownAgent(name.to_string()))
    }

    /// A long-running agent's process exited, or was found silent. Decides on a restart.
    /// `clean` when it exited with status 0: `restart = "on-failure"` then lets it stay down.
    pub fn agent_exited(
        &mut self,
        name: &str,
        reason: String,
        clean: bool,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), Error> {
        let idx = self.agent_idx(name)?;
        let slot = &self.agents[idx];
        if !matches!(
            slot.state,
            AgentState::Starting
                | AgentState::Idle
                | AgentState::Active
                | AgentState::CircuitOpen
                | AgentState::Stalled
                | AgentState::WaitingInput
        ) {
            // Already stopped, failed or restarting: this exit was expected.
            return Ok(());
        }
        fx.writes.push(Write::Event(EventKind::AgentTerminated { agent: name.to_string(), reason: reason.clone() }));
        // Whatever is left of it goes: a silent worker may still be running.
        fx.stop_agents.push(name.to_string());
        self.requeue_attempts_of(idx, &format!("agent `{name}` exited: {reason}"), now, fx);
        let slot = &mut self.agents[idx];
        let window_start = now.minus(slot.spec.restart_window);
        slot.restarts.retain(|at| *at > window_start);
        let n_recent = slot.restarts.len() as u32;
        let policy_restarts = match slot.spec.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Always => true,
        };
        if !policy_restarts && clean {
            // It finished on its own, and its policy lets it: stopped, not failed.
            let why = format!("{reason}; it exited cleanly and restart = \"on-failure\"");
            self.set_agent_state(idx, AgentState::Stopped, Some(why), fx);
            return Ok(());
        }
        let may_restart = policy_restarts && n_recent < slot.spec.max_restarts;
        if may_restart {
            slot.restarts.push(now);
            let delay = backoff(n_recent + 1, slot.spec.restart_backoff, MAX_RESTART_DELAY, 1.0);
            slot.restart_at = Some(now.plus(delay));
            let why =
                format!("{reason}; restart {}/{} in {}", n_recent + 1, slot.spec.max_restarts, format_duration(delay));
            self.set_agent_state(idx, AgentState::Restarting, Some(why.clone()), fx);
            self.suspend_dependants(idx, format!("critical agent `{name}` is restarting ({reason})"), now, fx);
        } else {
            let why = if slot.spec.restart == RestartPolicy::Never {
                format!("{reason}; restart = \"never\"")
            } else {
                format!(
                    "{reason}; crash loop: {} restarts within {}",
                    slot.spec.max_restarts,
                    format_duration(slot.spec.restart_window)
                )
            };
            self.fail_agent(idx, why, now, fx);
        }
        Ok(())
    }

    /// The agent is `failed` for good (`why`): the tasks downstream of it, when it is critical,
    /// are cancelled with the cause.
    pub(super) fn fail_agent(&mut self, idx: usize, why: String, now: Timestamp, fx: &mut Effects) {
        let name = self.agents[idx].spec.name.clone();
        self.agents[idx].restart_at = None;
        self.set_agent_state(idx, AgentState::Failed, Some(why.clone()), fx);
        let cause = format!("critical agent `{name}` failed: {why}");
        self.suspend_dependants(idx, cause.clone(), now, fx);
        self.fail_dependants(idx, cause, now, fx);
    }

    /// Something was heard from an agent (a heartbeat, a log line, progress, terminal output):
    /// it is alive. A stalled agent, or one waiting for input, is back at work.
    pub fn agent_activity(&mut self, name: &str, now: Timestamp, fx: &mut Effects) {
        let Some(&idx) = self.agent_index.get(name) else { return };
        let slot = &mut self.agents[idx];
        slot.last_activity = Some(now);
        if matches!(slot.state, AgentState::Stalled | AgentState::WaitingInput) {
            let next = if slot.running > 0 { AgentState::Active } else { AgentState::Idle };
            self.set_agent_state(idx, next, Some("output resumed".into()), fx);
        }
    }

    /// A terminal agent printed nothing for a while during a task; `reason` says how long. It
    /// keeps its task and gets no new one until it prints again.
    pub fn agent_stalled(&mut self, name: &str, reason: String, fx: &mut Effects) -> Result<(), Error> {
        let idx = self.agent_idx(name)?;
        if matches!(self.agents[idx].state, AgentState::Idle | AgentState::Active) {
            self.set_agent_state(idx, AgentState::Stalled, Some(reason), fx);
        }
        Ok(())
    }

    /// A terminal agent's screen ends in a question (`prompt`, the line that asks it). It keeps
    /// its task and gets no new one until it prints again, normally because someone answered.
    pub fn agent_waiting_input(&mut self, name: &str, prompt: &str, fx: &mut Effects) -> Result<(), Error> {
        let idx = self.agent_idx(name)?;
        if matches!(self.agents[idx].state, AgentState::Idle | AgentState::Active | AgentState::Stalled) {
            self.set_agent_state(idx, AgentState::WaitingInput, Some(format!("prompt: {prompt}")), fx);
        }
        Ok(())
    }

    /// An operator stops an agent. Its running attempts are killed (and retried); it takes no
    /// task until started again, and tasks only it can run wait for it.
    pub fn stop_agent(&mut self, name: &str, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let idx = self.agent_idx(name)?;
        if matches!(self.agents[idx].state, AgentState::Stopped | AgentState::Waiting) {
            self.agents[idx].held_by_operator = true;
            return Ok(());
        }
        self.agents[idx].held_by_operator = true;
        self.agents[idx].restart_at = None;
        self.set_agent_state(idx, AgentState::Stopped, Some("stopped by an operator".into()), fx);
        fx.stop_agents.push(name.to_string());
        self.requeue_attempts_of(idx, &format!("agent `{name}` was stopped by an operator"), now, fx);
        Ok(())
    }

    /// An operator starts a stopped or failed agent, with a fresh restart budget.
    pub fn start_agent_again(&mut self, name: &str, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let idx = self.agent_idx(name)?;
        let slot = &mut self.agents[idx];
        slot.held_by_operator = false;
        slot.restarts.clear();
        slot.consecutive_failures = 0;
        slot.circuit_until = None;
        let workstream = slot.spec.workstream.clone();
        match slot.state {
            AgentState::Stopped | AgentState::Failed | AgentState::Restarting | AgentState::CircuitOpen => {
                let in_phase = workstream.as_deref().is_none_or(|ws| self.workstream_started(Some(ws)));
                if in_phase {
                    self.set_agent_state(idx, AgentState::Waiting, Some("started by an operator".into()), fx);
                    self.start_agent(idx, fx);
                }
            }
            _ => {}
        }
        self.step(now, fx);
        Ok(())
    }

    /// An operator restarts an agent: stopped, then started at once.
    pub fn restart_agent(&mut self, name: &str, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let idx = self.agent_idx(name)?;
        if self.restart_if_running(idx, "restarted by an operator", now, fx) {
            return Ok(());
        }
        self.start_agent_again(name, now, fx)
    }

    /// Stops a running agent and has it started again at once (the next tick), its running
    /// attempts re-queued. `why` ends "restarted by …". Returns false, doing nothing, when the
    /// agent is not running.
    pub(super) fn restart_if_running(&mut self, idx: usize, why: &str, now: Timestamp, fx: &mut Effects) -> bool {
        if !matches!(
            self.agents[idx].state,
            AgentState::Idle
                | AgentState::Active
                | AgentState::CircuitOpen
                | AgentState::Stalled
                | AgentState::WaitingInput
        ) {
            return false;
        }
        let name = self.agents[idx].spec.name.clone();
        fx.stop_agents.push(name.clone());
        self.agents[idx].restart_at = Some(now);
        self.set_agent_state(idx, AgentState::Restarting, Some(why.to_string()), fx);
        self.requeue_attempts_of(idx, &format!("agent `{name}` was {why}"), now, fx);
        true
    }

    /// The attempts an agent was running when it went away fail now, and their tasks are
    /// retried at once on any capable agent: the agent failed, not the task. The attempts'
    /// late outcomes are rejected as stale.
    pub(super) fn requeue_attempts_of(&mut self, idx: usize, reason: &str, now: Timestamp, fx: &mut Effects) {
        let name = self.agents[idx].spec.name.clone();
        let mut running: Vec<(TaskId, u32)> = self
            .tasks
            .values()
            .filter(|task| task.state == TaskState::Running && task.assigned_agent.as_deref() == Some(name.as_str()))
            .map(|task| (task.id, task.attempt))
            .collect();
        running.sort_unstable();
        for (id, attempt) in running {
            let slot = &mut self.agents[idx];
            slot.running = slot.running.saturating_sub(1);
            slot.failed += 1;
            self.dirty_agents.insert(idx);
            let failed =
                EventKind::TaskFailed { task: id, agent: Some(name.clone()), attempt, reason: reason.to_string() };
            self.fail_attempt(id, reason.to_string(), Some(failed), now, Lost::Agent, fx);
        }
    }

    /// Restarts that are due, silent workers, circuit breakers whose cooldown is over.
    pub(super) fn supervise(&mut self, now: Timestamp, fx: &mut Effects) {
        for idx in 0..self.agents.len() {
            let slot = &self.agents[idx];
            match slot.state {
                AgentState::Restarting if slot.restart_at.is_some_and(|at| at <= now) => {
                    self.agents[idx].restart_at = None;
                    self.set_agent_state(idx, AgentState::Starting, None, fx);
                    fx.start_agents.push(self.agents[idx].spec.name.clone());
                }
                AgentState::CircuitOpen if slot.circuit_until.is_some_and(|at| at <= now) => {
                    let slot = &mut self.agents[idx];
                    slot.circuit_until = None;
                    // Half open: one more failure opens the circuit again.
                    slot.consecutive_failures = slot.spec.circuit_breaker.failures.saturating_sub(1);
                    let next = if slot.running > 0 { AgentState::Active } else { AgentState::Idle };
                    self.set_agent_state(idx, next, Some("cooldown over: one trial task".into()), fx);
                }
                AgentState::Idle | AgentState::Active | AgentState::CircuitOpen
                    if slot.spec.is_worker()
                        && slot.last_activity.is_some_and(|at| at.plus(slot.spec.heartbeat_timeout) <= now) =>
                {
                    let name = slot.spec.name.clone();
                    let reason = format!("no heartbeat for {}", format_duration(slot.spec.heartbeat_timeout));
                    let _ = self.agent_exited(&name, reason, false, now, fx);
                }
                _ => {}
            }
        }
    }

    /// The next time supervision has something to do.
    pub(super) fn next_supervision(&self) -> Option<Timestamp> {
        self.agents
            .iter()
            .filter_map(|slot| match slot.state {
                AgentState::Restarting => slot.restart_at,
                AgentState::CircuitOpen => slot.circuit_until,
                AgentState::Idle | AgentState::Active if slot.spec.is_worker() => {
                    slot.last_activity.map(|at| at.plus(slot.spec.heartbeat_timeout))
                }
                _ => None,
            })
            .min()
    }

    pub(super) fn trip_breaker_if_needed(&mut self, idx: usize, now: Timestamp, fx: &mut Effects) {
        let slot = &self.agents[idx];
        let breaker = slot.spec.circuit_breaker;
        if slot.consecutive_failures < breaker.failures || !matches!(slot.state, AgentState::Idle | AgentState::Active)
        {
            return;
        }
        let why = format!(
            "{} task failures in a row; no new tasks for {}",
            slot.consecutive_failures,
            format_duration(breaker.cooldown)
        );
        self.agents[idx].circuit_until = Some(now.plus(breaker.cooldown));
        self.set_agent_state(idx, AgentState::CircuitOpen, Some(why), fx);
    }

    /// The workstreams that depend, directly or not, on `workstream`.
    fn dependants_of(&self, workstream: &str) -> BTreeSet<String> {
        let mut found: BTreeSet<String> = BTreeSet::new();
        let mut frontier = vec![workstream.to_string()];
        while let Some(current) = frontier.pop() {
            for ws in &self.plan.workstreams {
                if ws.depends_on.contains(&current) && found.insert(ws.name.clone()) {
                    frontier.push(ws.name.clone());
                }
            }
        }
        found
    }

    /// Holds the tasks downstream of a critical agent while it is down, and those created
    /// downstream until it is back ([`Scheduler::hold_if_downstream_of_an_outage`]).
    fn suspend_dependants(&mut self, idx: usize, reason: String, now: Timestamp, fx: &mut Effects) {
        let slot = &self.agents[idx];
        if slot.spec.priority != Priority::Critical {
            return;
        }
        let Some(workstream) = slot.spec.workstream.clone() else { return };
        let dependants = self.dependants_of(&workstream);
        let mut held: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|task| matches!(task.state, TaskState::Pending | TaskState::Ready))
            .filter(|task| task.workstream.as_ref().is_some_and(|ws| dependants.contains(ws)))
            .map(|task| task.id)
            .collect();
        held.sort_unstable();
        for id in held {
            self.suspend(id, idx, reason.clone(), now, fx);
        }
        self.outages.insert(idx, Outage::Down { reason });
    }

    fn suspend(&mut self, id: TaskId, idx: usize, reason: String, now: Timestamp, fx: &mut Effects) {
        let mut change = self.tasks[&id].change();
        change.state = TaskState::Suspended;
        let event = EventKind::TaskSuspended { task: id, reason };
        self.transition(id, change, vec![event], now, fx);
        self.suspended_by.insert(id, idx);
    }

    /// A task that would wait for its turn (`pending`, or `ready` again after a failed attempt)
    /// downstream of a critical agent that is down is held like the tasks that were there when
    /// it went down — or cancelled with the cause, when it failed for good. True if it was.
    pub(super) fn hold_if_downstream_of_an_outage(&mut self, id: TaskId, now: Timestamp, fx: &mut Effects) -> bool {
        // A finished task is not in memory, and is not held.
        let Some(task) = self.tasks.get(&id) else { return false };
        if self.outages.is_empty() || !matches!(task.state, TaskState::Pending | TaskState::Ready) {
            return false;
        }
        let Some(workstream) = task.workstream.clone() else { return false };
        let mut outages: Vec<(usize, Outage)> =
            self.outages.iter().map(|(idx, outage)| (*idx, outage.clone())).collect();
        outages.sort_by_key(|(idx, _)| *idx);
        for (idx, outage) in outages {
            let slot = &self.agents[idx];
            if slot.removed {
                continue;
            }
            let Some(upstream) = slot.spec.workstream.as_deref() else { continue };
            if !self.dependants_of(upstream).contains(&workstream) {
                continue;
            }
            match outage {
                Outage::Down { reason } => self.suspend(id, idx, reason, now, fx),
                Outage::Failed { cause } => self.cancel_task(id, cause, now, fx),
            }
            return true;
        }
        false
    }

    fn suspended_by_agent(&self, idx: usize) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> =
            self.suspended_by.iter().filter(|(_, agent)| **agent == idx).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// The critical agent is healthy again: its dependants' tasks go back to waiting.
    pub(super) fn resume_suspended(&mut self, idx: usize, now: Timestamp, fx: &mut Effects) {
        self.outages.remove(&idx);
        for id in self.suspended_by_agent(idx) {
            self.suspended_by.remove(&id);
            if self.tasks.get(&id).is_none_or(|task| task.state != TaskState::Suspended) {
                continue;
            }
            let mut change = self.tasks[&id].change();
            change.state = TaskState::Pending;
            self.transition(id, change, vec![EventKind::TaskResumed { task: id }], now, fx);
            self.try_release(id, now, fx);
        }
    }

    /// The critical agent will not come back: what it held is cancelled, naming it, and so is
    /// what is created downstream until an operator starts it again.
    fn fail_dependants(&mut self, idx: usize, reason: String, now: Timestamp, fx: &mut Effects) {
        if self.outages.contains_key(&idx) {
            self.outages.insert(idx, Outage::Failed { cause: reason.clone() });
        }
        for id in self.suspended_by_agent(idx) {
            self.suspended_by.remove(&id);
            self.cancel_task(id, reason.clone(), now, fx);
        }
    }
}
