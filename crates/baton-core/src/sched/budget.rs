//! Budgets in the scheduler: usage reported by agents is added to the agent's, its
//! workstream's, its task's and the global totals of the period (durably, with the threshold
//! events it triggers); dispatch skips agents a budget covers once it is exhausted, and tasks
//! whose `estimated_tokens` exceed what is left. Such tasks stay `ready` and are never given up
//! as unrunnable: the next reset (a wake-up) or a raised limit makes them runnable again.
//!
//! An agent that spends tokens as it goes (an LLM loop) asks before each model call:
//! `reserve_budget` grants tokens only when every budget covering the agent has them left,
//! counting what other calls reserved and have not reported yet. A reservation is held in
//! memory until the agent reports usage for the same task (the usage then counts instead), or
//! until the budgets reset; it is not durable — after a restart, only reported usage counts.

use std::collections::HashMap;

use serde::Serialize;

use super::{Effects, Error, Scheduler, Write};
use crate::budget::{Crossing, Limit, Scope, Usage};
use crate::config::AgentSpec;
use crate::event::EventKind;
use crate::model::{AgentState, TaskId, TaskRecord};
use crate::time::Timestamp;

impl Scheduler {
    pub fn budgets(&self) -> &crate::budget::Budgets {
        &self.budgets
    }

    /// An agent used tokens, for a task or not. `report` is what it reported, kept in the
    /// `UsageReported` event.
    pub fn record_usage(
        &mut self,
        agent: &str,
        task: Option<TaskId>,
        usage: Usage,
        report: serde_json::Value,
        now: Timestamp,
        fx: &mut Effects,
    ) {
        self.roll_budgets(now, fx);
        let agent_workstream = self.agent_index.get(agent).and_then(|&idx| self.agents[idx].spec.workstream.clone());
        let task_workstream = task.and_then(|id| self.task(id)).and_then(|task| task.workstream.clone());
        let mut scopes = vec![Scope::Global, Scope::Agent(agent.to_string())];
        if let Some(workstream) = task_workstream.or(agent_workstream) {
            scopes.push(Scope::Workstream(workstream));
        }
        if let Some(id) = task {
            scopes.push(Scope::Task(id));
        }
        self.reservations.held.remove(&(agent.to_string(), task));
        let spent = usage.spent();
        let crossings = self.budgets.add(&scopes, spent);
        let period_start = self.budgets.period_start();
        let mut events = vec![EventKind::UsageReported { agent: agent.to_string(), task, usage: report }];
        let exhausted = crossings.iter().any(|crossing| crossing.percent >= 100);
        events.extend(crossings.into_iter().map(|crossing| self.threshold_event(crossing)));
        // The events go with the last write: all of it is one transaction anyway.
        let n_scopes = scopes.len();
        for (idx, scope) in scopes.into_iter().enumerate() {
            let events = if idx + 1 == n_scopes { std::mem::take(&mut events) } else { Vec::new() };
            fx.writes.push(Write::Usage { period_start, scope, spent, events });
        }
        if exhausted {
            self.budget_changed();
        }
    }

    fn threshold_event(&self, crossing: Crossing) -> EventKind {
        let Crossing { scope, percent, spent, limit } = crossing;
        EventKind::BudgetThreshold {
            scope: scope.to_string(),
            percent,
            used_tokens: spent.tokens,
            limit_tokens: limit.daily_tokens,
            used_cost_usd: spent.cost_usd,
            limit_cost_usd: limit.cost_usd,
            resets_at: self.budgets.next_reset().map(|at| self.budgets.schedule().show(at)),
        }
    }

    /// An operator sets a budget's limit for the current period (`baton budget set`): raising
    /// it lets the agents it held back work again.
    pub fn set_budget_limit(
        &mut self,
        scope: Scope,
        limit: Limit,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), Error> {
        match &scope {
            Scope::Agent(name) if !self.agent_index.contains_key(name) => {
                return Err(Error::UnknownAgent(name.clone()));
            }
            Scope::Workstream(name) if !self.workstreams.contains_key(name) => {
                return Err(Error::UnknownScope(scope.to_string()));
            }
            Scope::Task(_) => return Err(Error::UnknownScope(scope.to_string())),
            _ => {}
        }
        self.roll_budgets(now, fx);
        self.budgets.set_limit(scope.clone(), limit);
        let event = EventKind::BudgetLimitSet {
            scope: scope.to_string(),
            daily_tokens: limit.daily_tokens,
            cost_usd: limit.cost_usd,
        };
        let period_start = self.budgets.period_start();
        fx.writes.push(Write::BudgetLimit { period_start, scope, limit, events: vec![event] });
        self.budget_waits.clear();
        self.budget_changed();
        Ok(())
    }

    /// Starts the next budget period when its reset is due.
    pub(super) fn roll_budgets(&mut self, now: Timestamp, fx: &mut Effects) {
        if !self.budgets.roll(now) {
            return;
        }
        self.budget_waits.clear();
        self.reservations.held.clear();
        if self.budgets.any_limit() {
            fx.writes.push(Write::Event(EventKind::BudgetReset {
                period_start: self.budgets.period_start(),
                resets_at: self.budgets.next_reset().map(|at| self.budgets.schedule().show(at)),
            }));
            self.budget_changed();
        }
    }

    /// The agents' shown states may have changed (`blocked-budget`).
    fn budget_changed(&mut self) {
        for idx in 0..self.agents.len() {
            self.dirty_agents.insert(idx);
        }
    }

    /// The next reset, when a budget has a limit: it may let waiting tasks run.
    pub(super) fn next_budget_reset(&self) -> Option<Timestamp> {
        if self.budgets.any_limit() { self.budgets.next_reset() } else { None }
    }

    /// An agent asks to spend `tokens` now, for `task` (a model call): granted when every
    /// budget that covers it has that many tokens left beyond what is reserved already, and
    /// then held until the agent reports usage for the task. A new reservation for the same
    /// agent and task replaces the previous one.
    pub fn reserve_budget(
        &mut self,
        agent: &str,
        task: Option<TaskId>,
        tokens: u64,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<Reservation, Error> {
        let idx = *self.agent_index.get(agent).ok_or_else(|| Error::UnknownAgent(agent.to_string()))?;
        if tokens == 0 {
            return Err(Error::InvalidRequest("reserve at least 1 token".into()));
        }
        let workstream = match task {
            Some(id) => {
                let record = self.tasks.get(&id).ok_or(Error::UnknownTask(id))?;
                if record.assigned_agent.as_deref() != Some(agent) {
                    return Err(Error::InvalidRequest(format!("task {id} is not agent `{agent}`'s")));
                }
                record.workstream.clone()
            }
            None => None,
        };
        self.roll_budgets(now, fx);
        let key = (agent.to_string(), task);
        // A new reservation for the same call site replaces the previous one.
        let previous = self.reservations.held.remove(&key);
        let scopes: Vec<Scope> =
            Self::covering(&self.agents[idx].spec, workstream.as_deref()).into_iter().flatten().collect();
        let mut remaining: Option<u64> = None;
        for scope in &scopes {
            let refusal = |reason: String| Error::OverBudget { scope: scope.to_string(), tokens, reason };
            if self.budgets.exhausted(scope) {
                let until = self.budgets.next_reset().map(|at| self.budgets.schedule().show(at));
                let reason = match until {
                    Some(until) => format!("exhausted until the reset at {until}"),
                    None => "exhausted".to_string(),
                };
                if let Some(previous) = previous {
                    self.reservations.held.insert(key, previous);
                }
                return Err(refusal(reason));
            }
            let Some(left) = self.budgets.remaining_tokens(scope) else { continue };
            let reserved = self.reservations.reserved(scope);
            let available = left.saturating_sub(reserved);
            if tokens > available {
                if let Some(previous) = previous {
                    self.reservations.held.insert(key, previous);
                }
                return Err(refusal(format!("{left} left, {reserved} of them reserved by calls in flight")));
            }
            let after = available - tokens;
            remaining = Some(remaining.map_or(after, |fewest| fewest.min(after)));
        }
        self.reservations.held.insert(key, Held { tokens, scopes });
        if let Some(id) = task {
            self.budget_needs.remove(&id);
        }
        Ok(Reservation { tokens, remaining })
    }

    /// A running attempt gives its task back before doing anything, because the budget refused
    /// its first model call (`tokens`): the task goes back to the queue without counting the
    /// attempt, as a task whose `estimated_tokens` do not fit waits before it starts, and it
    /// waits the same way (until the reset or a raised limit) for `tokens` to fit. Refused when
    /// they never can (more than a whole period's budget): then the attempt fails.
    pub fn wait_for_budget(
        &mut self,
        id: TaskId,
        attempt: u32,
        tokens: u64,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), Error> {
        let task = self.tasks.get(&id).ok_or(Error::UnknownTask(id))?;
        if let Some(problem) = self.budgets.never_fits(task.workstream.as_deref(), tokens) {
            let problem = problem.replace(
                &format!("it estimates {tokens} tokens"),
                &format!("its first model call needs {tokens} tokens"),
            );
            return Err(Error::InvalidRequest(problem));
        }
        self.release(id, attempt, now, fx)?;
        let need = self.budget_needs.entry(id).or_default();
        *need = (*need).max(tokens);
        Ok(())
    }

    /// The budgets that cover an agent running a task: the global one, the agent's, and the
    /// workstream's (the task's, or the agent's own).
    fn covering(agent: &AgentSpec, workstream: Option<&str>) -> [Option<Scope>; 3] {
        [
            Some(Scope::Global),
            Some(Scope::Agent(agent.name.clone())),
            workstream.or(agent.workstream.as_deref()).map(|ws| Scope::Workstream(ws.to_string())),
        ]
    }

    /// Why a budget keeps `agent` from starting `task`, if one does: (scope, reason).
    pub(super) fn budget_block(&self, agent: &AgentSpec, task: &TaskRecord) -> Option<(Scope, String)> {
        if !self.budgets.any_limit() {
            return None;
        }
        let learnt = self.budget_needs.get(&task.id).copied();
        let estimate = task.estimated_tokens.max(learnt);
        for scope in Self::covering(agent, task.workstream.as_deref()).into_iter().flatten() {
            if self.budgets.exhausted(&scope) {
                return Some((scope, "exhausted".to_string()));
            }
            let Some(left) = self.budgets.remaining_tokens(&scope) else { continue };
            let Some(estimate) = estimate else { continue };
            if estimate > left {
                let named = if learnt == Some(estimate) { "its first model call needs" } else { "estimated_tokens" };
                return Some((scope, format!("{named} {estimate} > {left} left")));
            }
            // Tokens reserved by calls in flight are not there to take either: a task that
            // waited for them waits until they are reported.
            let reserved = self.reservations.reserved(&scope);
            if learnt.is_some() && estimate > left.saturating_sub(reserved) {
                return Some((
                    scope,
                    format!(
                        "its first model call needs {estimate}: {left} left, {reserved} of them reserved by calls in flight"
                    ),
                ));
            }
        }
        None
    }

    /// A ready task found no agent: if a budget is what holds it back, say so once per period.
    pub(super) fn note_budget_wait(&mut self, id: TaskId, fx: &mut Effects) {
        if !self.budgets.any_limit() || self.budget_waits.contains(&id) {
            return;
        }
        let task = &self.tasks[&id];
        let blocked = self
            .agents
            .iter()
            .filter(|slot| {
                matches!(slot.state, AgentState::Idle | AgentState::Active)
                    && slot.running < slot.spec.concurrency
                    && slot.spec.can_run(task.workstream.as_deref(), &task.requires, task.agent.as_deref())
            })
            .find_map(|slot| self.budget_block(&slot.spec, task));
        if let Some((scope, reason)) = blocked {
            let until = self.budgets.next_reset().map(|at| self.budgets.schedule().show(at));
            let reason = match until {
                Some(until) => format!("{reason}; waits for the reset at {until} or a raised limit"),
                None => format!("{reason}; waits for a raised limit"),
            };
            fx.writes.push(Write::Event(EventKind::TaskBudgetWait { task: id, scope: scope.to_string(), reason }));
            self.budget_waits.insert(id);
        }
    }

    /// The state shown for an agent: an idle agent that an exhausted budget covers is
    /// `blocked-budget`.
    pub(super) fn shown_state(&self, idx: usize) -> AgentState {
        let slot = &self.agents[idx];
        if slot.state == AgentState::Idle && self.budgets.any_limit() {
            let blocked =
                Self::covering(&slot.spec, None).into_iter().flatten().any(|scope| self.budgets.exhausted(&scope));
            if blocked {
                return AgentState::BlockedBudget;
            }
        }
        slot.state
    }
}

/// A granted [`Scheduler::reserve_budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reservation {
    pub tokens: u64,
    /// The fewest tokens left (beyond every reservation, this one included) in the budgets
    /// covering the agent that have a limit; `None` when none has.
    pub remaining: Option<u64>,
}

/// Reservations not reported yet, by agent and task.
#[derive(Debug, Clone, Default)]
pub(super) struct Reservations {
    held: HashMap<(String, Option<TaskId>), Held>,
}

#[derive(Debug, Clone)]
struct Held {
    tokens: u64,
    /// The budgets it counts against.
    scopes: Vec<Scope>,
}

impl Reservations {
    /// Tokens reserved against `scope`.
    fn reserved(&self, scope: &Scope) -> u64 {
        self.held
            .values()
            .filter(|held| held.scopes.contains(scope))
            .fold(0u64, |sum, held| sum.saturating_add(held.tokens))
    }
}
