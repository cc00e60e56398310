//! Schedules and budgets: read them, pause and resume a schedule, set a budget's limit until
//! its reset.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use std::collections::BTreeMap;

use baton_core::budget::{Scope, UsageRecord};
use baton_core::config::Plan;
use baton_core::model::{TaskId, TaskState};
use baton_core::schedule::ScheduleRecord;
use baton_core::{EventKind, Timestamp};
use baton_store::EventQuery;

use crate::{Action, Caller, Error, Ops, Result};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub name: String,
    /// The cron expression and its time zone.
    pub cron: String,
    pub timezone: String,
    /// What happens to a due time while the schedule's previous task is unfinished: `skip`,
    /// `queue` or `allow`.
    pub overlap: String,
    /// What happens to due times missed while nothing executed the run: `skip`, `fire-once`
    /// or `fire-all`.
    pub missed: String,
    pub paused: bool,
    /// The next due times (ms since the epoch), up to 3; none while paused.
    pub next: Vec<i64>,
    /// The due time of the latest firing, and when it fired (ms since the epoch).
    pub last_fired_due: Option<i64>,
    pub last_fired_at: Option<i64>,
    pub last_task: Option<i64>,
}

/// The plan's schedules as they stand at `now`, given the run's records of them (none before
/// anything ran: the file alone says when they fire).
pub fn schedule_views(plan: &Plan, stored: &[ScheduleRecord], now: Timestamp) -> Vec<ScheduleView> {
    plan.schedules
        .iter()
        .map(|spec| {
            let record = stored.iter().find(|record| record.name == spec.name);
            let paused = record.map_or(spec.paused, |record| record.paused);
            let next = if paused {
                Vec::new()
            } else {
                spec.timetable().upcoming(now, 3).into_iter().map(|at| at.millis()).collect()
            };
            ScheduleView {
                name: spec.name.clone(),
                cron: spec.cron.clone(),
                timezone: spec.timezone.clone(),
                overlap: spec.overlap.to_string(),
                missed: spec.missed.to_string(),
                paused,
                next,
                last_fired_due: record.and_then(|record| record.last_fired_due).map(|at| at.millis()),
                last_fired_at: record.and_then(|record| record.last_fired_at).map(|at| at.millis()),
                last_task: record.and_then(|record| record.last_task).map(|task| task.0),
            }
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetView {
    /// `global`, `workstream:NAME`, `agent:NAME` or `task:ID`.
    pub scope: String,
    /// `global`, `workstream`, `agent` or `task`, and the name (empty for `global`).
    pub kind: String,
    pub name: String,
    pub used_tokens: u64,
    pub used_cost_usd: f64,
    /// The limit in force: an operator's for this period, else the configured one.
    pub limit_tokens: Option<u64>,
    pub limit_cost_usd: Option<f64>,
    /// How much of its limit the scope has used (the larger of tokens and cost); absent
    /// without a limit.
    pub percent: Option<f64>,
    /// The thresholds (and 100) the scope has reached this period.
    pub thresholds_crossed: Vec<u8>,
    pub exhausted: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Budgets {
    /// When the current period started, and when it resets (ms since the epoch).
    pub period_start: i64,
    pub next_reset: Option<i64>,
    /// The reset's cron expression and time zone (`[budget] reset`, `timezone`), in which
    /// the period's times are shown.
    pub reset: String,
    pub timezone: String,
    pub thresholds: Vec<u8>,
    /// `global` first, then every scope with usage or a limit this period.
    pub scopes: Vec<BudgetView>,
    /// Ready tasks that a budget holds back this period, with why.
    pub waiting_tasks: Vec<BudgetWait>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetWait {
    #[schema(value_type = i64)]
    pub task: TaskId,
    /// The scope and why: `global: exhausted (…)`.
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitInput {
    pub daily_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
}

impl Ops {
    /// The plan's schedules: cron, zone, state, next due times, last firing.
    pub async fn schedules(&self, caller: &Caller) -> Result<Vec<ScheduleView>> {
        caller.require(Action::ReadSchedules)?;
        let stored = self.store().schedules(self.run_id()).await?;
        Ok(schedule_views(&self.plan(), &stored, self.clock().now()))
    }

    /// Pauses (its due times pass without firing) or resumes a schedule; the schedules as
    /// they are now.
    pub async fn set_schedule_paused(&self, caller: &Caller, name: &str, paused: bool) -> Result<Vec<ScheduleView>> {
        caller.require(Action::ControlSchedules)?;
        if !self.plan().schedules.iter().any(|spec| spec.name == name) {
            return Err(Error::not_found(format!("no schedule `{name}` in this plan")));
        }
        let engine = self.engine()?;
        if paused {
            engine.pause_schedule(name.to_string()).await?;
        } else {
            engine.resume_schedule(name.to_string()).await?;
        }
        self.schedules(caller).await
    }

    /// Token budgets of the current period: use and limits per scope, thresholds reached,
    /// and the tasks they hold back.
    pub async fn budgets(&self, caller: &Caller) -> Result<Budgets> {
        caller.require(Action::ReadBudgets)?;
        let plan = self.plan();
        let now = self.clock().now();
        let period_start = plan.budget.schedule().period_start(now);
        let stored: Vec<UsageRecord> = self.store().usage(self.run_id(), period_start).await?;
        let budgets = baton_core::budget::Budgets::new(plan.budget.clone(), &stored, now);
        let mut scopes = budgets.scopes();
        if !scopes.contains(&Scope::Global) {
            scopes.insert(0, Scope::Global);
        }
        let levels: Vec<u8> = plan.budget.thresholds.iter().copied().chain([100]).collect();
        let views = scopes
            .into_iter()
            .map(|scope| {
                let used = budgets.used(&scope);
                let limit = budgets.limit(&scope);
                let reached = budgets.reported(&scope).unwrap_or(0);
                BudgetView {
                    scope: scope.to_string(),
                    kind: scope.kind().to_string(),
                    name: scope.name(),
                    used_tokens: used.tokens,
                    used_cost_usd: used.cost_usd,
                    limit_tokens: limit.daily_tokens,
                    limit_cost_usd: limit.cost_usd,
                    percent: budgets.percent(&scope),
                    thresholds_crossed: levels.iter().copied().filter(|level| *level <= reached).collect(),
                    exhausted: budgets.exhausted(&scope),
                }
            })
            .collect();
        Ok(Budgets {
            period_start: budgets.period_start().millis(),
            next_reset: budgets.next_reset().map(|at| at.millis()),
            reset: plan.budget.reset.clone(),
            timezone: plan.budget.timezone.clone(),
            thresholds: plan.budget.thresholds.clone(),
            scopes: views,
            waiting_tasks: self.budget_waits(budgets.period_start()).await?,
        })
    }

    /// The tasks that said since `since` that a budget holds them back and are still ready.
    async fn budget_waits(&self, since: Timestamp) -> Result<Vec<BudgetWait>> {
        let query = EventQuery {
            run_id: Some(self.run_id().to_string()),
            kinds: vec!["TaskBudgetWait".to_string()],
            ..Default::default()
        };
        let mut latest: BTreeMap<TaskId, String> = BTreeMap::new();
        for event in self.store().events(&query).await?.into_iter().filter(|event| event.at >= since) {
            if let EventKind::TaskBudgetWait { task, scope, reason } = event.kind {
                latest.insert(task, format!("{scope}: {reason}"));
            }
        }
        if latest.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<TaskId> = latest.keys().copied().collect();
        let ready: Vec<TaskId> = self
            .store()
            .task_statuses(self.run_id(), &ids)
            .await?
            .into_iter()
            .filter(|status| status.state == TaskState::Ready)
            .map(|status| status.id)
            .collect();
        Ok(latest
            .into_iter()
            .filter(|(task, _)| ready.contains(task))
            .map(|(task, reason)| BudgetWait { task, reason })
            .collect())
    }

    /// Sets a budget's limit until the next reset (raising it lets the agents it blocked work
    /// again); `scope` is `global`, `workstream:NAME` or `agent:NAME`. The budgets as they are
    /// now.
    pub async fn set_budget(&self, caller: &Caller, scope: &str, input: LimitInput) -> Result<Budgets> {
        caller.require(Action::SetBudgets)?;
        if input.daily_tokens.is_none() && input.cost_usd.is_none() {
            return Err(Error::invalid("give `daily_tokens`, `cost_usd` or both"));
        }
        if input.cost_usd.is_some_and(|cost| !cost.is_finite() || cost < 0.0) {
            return Err(Error::invalid("`cost_usd` must be a number of dollars, 0 or more"));
        }
        self.engine()?.set_budget(scope.to_string(), input.daily_tokens, input.cost_usd).await?;
        self.budgets(caller).await
    }
}
