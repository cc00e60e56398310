//! Schedules and budgets over the API: read them, pause and resume a schedule, set a budget's
//! limit until its reset — what `baton schedules`, `baton schedule` and `baton budget` do.

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::budget::{Scope, UsageRecord};

use crate::api::{Body, PathParams};
use crate::auth::{Action, Caller};
use crate::{ApiError, AppState, json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/schedules", get(schedules))
        .route("/schedules/{name}/pause", post(pause_schedule))
        .route("/schedules/{name}/resume", post(resume_schedule))
        .route("/budgets", get(budgets))
        .route("/budgets/{scope}", post(set_budget))
}

#[derive(Debug, Serialize, ToSchema)]
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

/// The plan's schedules: cron, zone, state, next due times, last firing.
#[utoipa::path(get, path = "/schedules", tag = "schedules", responses((status = 200, body = Vec<ScheduleView>)))]
pub async fn schedules(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Action::ReadSchedules)?;
    let stored = state.store().schedules(state.run_id()).await?;
    let now = state.clock().now();
    let plan = state.plan();
    let views = plan
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
        .collect::<Vec<_>>();
    Ok(json(views))
}

async fn find_schedule(state: &AppState, name: &str) -> Result<(), ApiError> {
    if state.plan().schedules.iter().any(|spec| spec.name == name) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no schedule `{name}` in this plan")))
    }
}

/// Pauses a schedule: its due times pass without firing until it is resumed.
#[utoipa::path(post, path = "/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path, description = "the schedule's name")),
    responses((status = 200, body = Vec<ScheduleView>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn pause_schedule(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    set_paused(state, caller, name, true).await
}

/// Resumes a paused schedule: it fires from its next due time on.
#[utoipa::path(post, path = "/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path, description = "the schedule's name")),
    responses((status = 200, body = Vec<ScheduleView>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn resume_schedule(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    set_paused(state, caller, name, false).await
}

async fn set_paused(
    state: AppState,
    caller: Extension<Caller>,
    name: String,
    paused: bool,
) -> Result<Response, ApiError> {
    caller.require(Action::ControlSchedules)?;
    find_schedule(&state, &name).await?;
    if paused {
        state.engine().pause_schedule(name).await?;
    } else {
        state.engine().resume_schedule(name).await?;
    }
    schedules(State(state), caller).await
}

#[derive(Debug, Serialize, ToSchema)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct Budgets {
    /// When the current period started, and when it resets (ms since the epoch).
    pub period_start: i64,
    pub next_reset: Option<i64>,
    pub thresholds: Vec<u8>,
    pub scopes: Vec<BudgetView>,
}

/// Token budgets of the current period: use and limits per scope.
#[utoipa::path(get, path = "/budgets", tag = "budgets", responses((status = 200, body = Budgets)))]
pub async fn budgets(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Action::ReadBudgets)?;
    let plan = state.plan();
    let now = state.clock().now();
    let reset = plan.budget.schedule();
    let period_start = reset.period_start(now);
    let stored: Vec<UsageRecord> = state.store().usage(state.run_id(), period_start).await?;
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
            let exhausted =
                limit.daily_tokens.is_some_and(|max| tokens >= max) || limit.cost_usd.is_some_and(|max| cost >= max);
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
    Ok(json(Budgets {
        period_start: period_start.millis(),
        next_reset: reset.next_after(now).map(|at| at.millis()),
        thresholds: plan.budget.thresholds.clone(),
        scopes: views,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitInput {
    pub daily_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
}

/// Sets a budget's limit until the next reset (raising it lets the agents it blocked work
/// again); `scope` is `global`, `workstream:NAME` or `agent:NAME`.
#[utoipa::path(post, path = "/budgets/{scope}", tag = "budgets", params(("scope" = String, Path, description = "global, workstream:NAME or agent:NAME")),
    request_body = LimitInput,
    responses((status = 200, body = Budgets), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn set_budget(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(scope): PathParams<String>,
    Body(input): Body<LimitInput>,
) -> Result<Response, ApiError> {
    caller.require(Action::SetBudgets)?;
    if input.daily_tokens.is_none() && input.cost_usd.is_none() {
        return Err(ApiError::bad_request("give `daily_tokens`, `cost_usd` or both"));
    }
    if input.cost_usd.is_some_and(|cost| !cost.is_finite() || cost < 0.0) {
        return Err(ApiError::bad_request("`cost_usd` must be a number of dollars, 0 or more"));
    }
    state.engine().set_budget(scope, input.daily_tokens, input.cost_usd).await?;
    budgets(State(state), caller).await
}
