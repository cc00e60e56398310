//! Schedules and budgets: read them, pause and resume a schedule, set a budget's limit until
//! its reset.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::budget::{Scope, UsageRecord};

use crate::{Action, Caller, Error, Ops, Result};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub name: String,
    /// The cron expression and its time zone.
    pub cron: String,
    pub timezone: String,
    pub paused: bool,
    /// The next due times (ms since the epoch), up to 3.
    pub next: Vec<i64>,
    pub last_fired_at: Option<i64>,
    pub last_task: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetView {
    /// `global`, `workstream:NAME`, `agent:NAME` or `task:ID`.
    pub scope: String,
    pub used_tokens: u64,
    pub used_cost_usd: f64,
    /// The limit in force: an operator's for this period, else the configured one.
    pub limit_tokens: Option<u64>,
    pub limit_cost_usd: Option<f64>,
    pub exhausted: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Budgets {
    /// When the current period started, and when it resets (ms since the epoch).
    pub period_start: i64,
    pub next_reset: Option<i64>,
    pub thresholds: Vec<u8>,
    pub scopes: Vec<BudgetView>,
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
        let now = self.clock().now();
        let plan = self.plan();
        Ok(plan
            .schedules
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
                    paused,
                    next,
                    last_fired_at: record.and_then(|record| record.last_fired_at).map(|at| at.millis()),
                    last_task: record.and_then(|record| record.last_task).map(|task| task.0),
                }
            })
            .collect())
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

    /// Token budgets of the current period: use and limits per scope.
    pub async fn budgets(&self, caller: &Caller) -> Result<Budgets> {
        caller.require(Action::ReadBudgets)?;
        let plan = self.plan();
        let now = self.clock().now();
        let reset = plan.budget.schedule();
        let period_start = reset.period_start(now);
        let stored: Vec<UsageRecord> = self.store().usage(self.run_id(), period_start).await?;
        let mut scopes: Vec<Scope> = vec![Scope::Global];
        scopes.extend(plan.budget.workstreams.keys().map(|name| Scope::Workstream(name.clone())));
        scopes.extend(plan.budget.agents.keys().map(|name| Scope::Agent(name.clone())));
        for record in &stored {
            if !scopes.contains(&record.scope) {
                scopes.push(record.scope.clone());
            }
        }
        let views = scopes
            .into_iter()
            .map(|scope| {
                let record = stored.iter().find(|record| record.scope == scope);
                let limit = record.and_then(|record| record.limit).unwrap_or_else(|| plan.budget.limit(&scope));
                let (tokens, cost) = record.map_or((0, 0.0), |record| (record.spent.tokens, record.spent.cost_usd));
                let exhausted = limit.daily_tokens.is_some_and(|max| tokens >= max)
                    || limit.cost_usd.is_some_and(|max| cost >= max);
                BudgetView {
                    scope: scope.to_string(),
                    used_tokens: tokens,
                    used_cost_usd: cost,
                    limit_tokens: limit.daily_tokens,
                    limit_cost_usd: limit.cost_usd,
                    exhausted,
                }
            })
            .collect();
        Ok(Budgets {
            period_start: period_start.millis(),
            next_reset: reset.next_after(now).map(|at| at.millis()),
            thresholds: plan.budget.thresholds.clone(),
            scopes: views,
        })
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
