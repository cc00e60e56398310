//! Schedules and budgets over the API: read them, pause and resume a schedule, set a budget's
//! limit until its reset — what `baton schedules`, `baton schedule` and `baton budget` do.

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
pub use baton_ops::schedules::{BudgetView, Budgets, LimitInput, ScheduleView};

use crate::api::{Body, PathParams};
use crate::auth::Caller;
use crate::{ApiError, AppState, json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/schedules", get(schedules))
        .route("/schedules/{name}/pause", post(pause_schedule))
        .route("/schedules/{name}/resume", post(resume_schedule))
        .route("/budgets", get(budgets))
        .route("/budgets/{scope}", post(set_budget))
}

/// The plan's schedules: cron, zone, state, next due times, last firing.
#[utoipa::path(get, path = "/schedules", tag = "schedules", responses((status = 200, body = Vec<ScheduleView>)))]
pub async fn schedules(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    Ok(json(state.ops().schedules(&caller).await?))
}

/// Pauses a schedule: its due times pass without firing until it is resumed.
#[utoipa::path(post, path = "/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path, description = "the schedule's name")),
    responses((status = 200, body = Vec<ScheduleView>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn pause_schedule(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().set_schedule_paused(&caller, &name, true).await?))
}

/// Resumes a paused schedule: it fires from its next due time on.
#[utoipa::path(post, path = "/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path, description = "the schedule's name")),
    responses((status = 200, body = Vec<ScheduleView>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn resume_schedule(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().set_schedule_paused(&caller, &name, false).await?))
}

/// Token budgets of the current period: use and limits per scope.
#[utoipa::path(get, path = "/budgets", tag = "budgets", responses((status = 200, body = Budgets)))]
pub async fn budgets(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    Ok(json(state.ops().budgets(&caller).await?))
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
    Ok(json(state.ops().set_budget(&caller, &scope, input).await?))
}
