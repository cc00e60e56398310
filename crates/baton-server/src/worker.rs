//! The agent-side endpoints: what a worker agent anywhere uses instead of stdio. It claims
//! tasks (a long poll), renews its leases with heartbeats, reports progress and usage, and
//! hands in results. An agent token acts only as its own agent, and only on attempts that
//! agent holds; a result for an attempt whose lease has expired is refused with `409` and the
//! reason, so a task completes exactly once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use baton_core::budget::Usage;
use baton_core::model::{TaskId, TaskRecord, TaskState};
use baton_core::{Event, EventKind, Outcome};
use baton_runtime::agent::{AgentEvent, AgentRequest};
use baton_runtime::remote;

use crate::api::{Body, PathParams};
use crate::auth::Caller;
use crate::{ApiError, AppState, json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/agent/claim", post(claim))
        .route("/agent/heartbeat", post(heartbeat))
        .route("/agent/results", post(results))
        .route("/agent/usage", post(usage))
        .route("/agent/resources/acquire", post(acquire))
        .route("/agent/resources/release", post(release))
        .route("/agent/tasks/{id}/progress", post(progress))
        .route("/agent/tasks/{id}/complete", post(complete))
        .route("/agent/tasks/{id}/fail", post(fail))
}

const MAX_WAIT: Duration = Duration::from_secs(60);
const MAX_CLAIM: usize = 1000;
/// How long a result waits to be recorded before the answer says it was only accepted.
const RECORD_WAIT: Duration = Duration::from_secs(10);

fn remote_error(error: remote::Error) -> ApiError {
    match error {
        remote::Error::UnknownAgent(_) => {
            ApiError::new(axum::http::StatusCode::CONFLICT, "not_remote", error.to_string())
        }
        remote::Error::NotRunning(_) => ApiError::conflict(error.to_string()),
        remote::Error::NotHeld { ref reason, .. } if reason.starts_with("lease expired") => {
            ApiError::new(axum::http::StatusCode::CONFLICT, "lease_expired", error.to_string())
        }
        remote::Error::NotHeld { .. } => ApiError::conflict(error.to_string()),
    }
}

/// Checks that `agent` is in the plan and, for a remote agent, that it is one the hub knows.
fn known_agent(state: &AppState, agent: &str) -> Result<(), ApiError> {
    if state.plan().agent(agent).is_none() {
        return Err(ApiError::not_found(format!("no agent `{agent}` in this run")));
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The agent to claim for; agent tokens may leave it out (they act as their own agent).
    pub agent: Option<String>,
    /// At most this many tasks (default 1).
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<usize>,
    /// How long to wait for a first task, in milliseconds (default 0, at most 60000).
    #[schema(maximum = 60000)]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimedTask {
    pub task: TaskRecord,
    pub attempt: u32,
    pub run_id: String,
    /// When the lease runs out unless a heartbeat renews it (ms since the epoch).
    pub lease_expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// Empty when nothing came within `wait_ms`.
    pub tasks: Vec<ClaimedTask>,
}

/// Claims up to `max` of the tasks assigned to a remote agent, waiting up to `wait_ms` for
/// one. Each comes with a lease that heartbeats renew.
#[utoipa::path(post, path = "/agent/claim", tag = "agent-side", request_body = ClaimRequest,
    responses((status = 200, body = ClaimResponse), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "no agent of that name in this run", body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn claim(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(request): Body<ClaimRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    known_agent(&state, &agent)?;
    let max = request.max.unwrap_or(1);
    if !(1..=MAX_CLAIM).contains(&max) {
        return Err(ApiError::bad_request(format!("`max` must be between 1 and {MAX_CLAIM}")));
    }
    let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::bad_request("`wait_ms` must be at most 60000"));
    }
    let claims = state.hub().claim(&agent, max, wait, state.shutdown()).await.map_err(remote_error)?;
    let tasks = claims
        .into_iter()
        .map(|claim| ClaimedTask {
            task: claim.task,
            attempt: claim.attempt,
            run_id: claim.run_id,
            lease_expires_at: claim.lease_expires_at.millis(),
        })
        .collect();
    Ok(json(ClaimResponse { tasks }))
}

#[derive(Debug, Deserialize, Serialize, ToSchema, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct AttemptRef {
    #[schema(value_type = i64)]
    pub task: TaskId,
    pub attempt: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub agent: Option<String>,
    /// The attempts to renew; all the agent holds when absent.
    #[serde(default)]
    pub tasks: Vec<AttemptRef>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    #[schema(value_type = i64)]
    pub task: TaskId,
    pub attempt: u32,
    pub lease_expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// The renewed leases (empty for agents Baton starts itself: they hold no leases).
    pub leases: Vec<LeaseView>,
}

/// Says the agent is alive and renews the leases of the attempts it holds.
#[utoipa::path(post, path = "/agent/heartbeat", tag = "agent-side", request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "no agent of that name in this run", body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(request): Body<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    known_agent(&state, &agent)?;
    if !state.hub().is_remote(&agent) {
        state.engine().report(AgentEvent::Activity { agent }).map_err(ApiError::from)?;
        return Ok(json(HeartbeatResponse { leases: Vec::new() }));
    }
    let only: Vec<(TaskId, u32)> = request.tasks.iter().map(|key| (key.task, key.attempt)).collect();
    let leases = state.hub().heartbeat(&agent, &only).map_err(remote_error)?;
    let leases = leases
        .into_iter()
        .map(|lease| LeaseView {
            task: lease.task,
            attempt: lease.attempt,
            lease_expires_at: lease.lease_expires_at.millis(),
        })
        .collect();
    Ok(json(HeartbeatResponse { leases }))
}

/// Why `agent` may not report on `attempt` of `task`: `403` when the task is another agent's,
/// else `409` with what became of the attempt (its lease expired, it was reported already).
async fn refusal(state: &AppState, agent: &str, task: TaskId, error: remote::Error) -> ApiError {
    if let Ok(Some(record)) = state.store().task(task).await
        && let Some(other) = record.assigned_agent.as_deref().or(record.agent.as_deref())
        && other != agent
    {
        return ApiError::forbidden(format!("task {task} is agent `{other}`'s, not `{agent}`'s"));
    }
    remote_error(error)
}

/// Checks that `agent` holds `attempt` of `task`: a remote agent through its lease, an agent
/// Baton started through the task's record.
async fn check_holds(state: &AppState, agent: &str, task: TaskId, attempt: u32) -> Result<(), ApiError> {
    if state.hub().is_remote(agent) {
        return match state.hub().holds(agent, task, attempt) {
            Ok(()) => Ok(()),
            Err(error) => Err(refusal(state, agent, task, error).await),
        };
    }
    let record = state
        .store()
        .task(task)
        .await?
        .filter(|record| record.run_id == state.run_id())
        .ok_or_else(|| ApiError::not_found(format!("no task {task} in this run")))?;
    let holds = record.state == TaskState::Running
        && record.attempt == attempt
        && record.assigned_agent.as_deref() == Some(agent);
    if !holds {
        return Err(ApiError::forbidden(format!("task {task} attempt {attempt} is not held by agent `{agent}`")));
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    pub agent: Option<String>,
    pub attempt: u32,
    /// 0 to 1.
    pub fraction: Option<f64>,
    pub message: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub accepted: bool,
}

/// Reports progress on a task the agent holds.
#[utoipa::path(post, path = "/agent/tasks/{id}/progress", tag = "agent-side", params(("id" = i64, Path, description = "the task's id")),
    request_body = ProgressRequest,
    responses((status = 200, body = Accepted), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "no agent of that name in this run", body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn progress(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(id): PathParams<i64>,
    Body(request): Body<ProgressRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    known_agent(&state, &agent)?;
    if request.fraction.is_some_and(|fraction| !(0.0..=1.0).contains(&fraction)) {
        return Err(ApiError::bad_request("`fraction` must be between 0 and 1"));
    }
    check_holds(&state, &agent, TaskId(id), request.attempt).await?;
    if state.hub().is_remote(&agent) {
        // A sign of life as good as a heartbeat.
        let _ = state.hub().heartbeat(&agent, &[(TaskId(id), request.attempt)]);
    }
    let event = AgentEvent::Progress { agent, task: TaskId(id), fraction: request.fraction, message: request.message };
    state.engine().report(event).map_err(ApiError::from)?;
    Ok(json(Accepted { accepted: true }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub agent: Option<String>,
    pub attempt: u32,
    /// The task's result: any JSON (a `usage` field counts against budgets).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub agent: Option<String>,
    pub attempt: u32,
    /// Why it failed.
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResultRecorded {
    #[schema(value_type = i64)]
    pub task: TaskId,
    pub attempt: u32,
    /// The task's state once the result was recorded (`succeeded`, `ready` for a retry,
    /// `dead`…), or `accepted` when recording took longer than the server waits.
    pub state: String,
}

/// Hands in a successful result for an attempt the agent holds.
#[utoipa::path(post, path = "/agent/tasks/{id}/complete", tag = "agent-side", params(("id" = i64, Path, description = "the task's id")),
    request_body = CompleteRequest,
    responses((status = 200, body = ResultRecorded), (status = 400, description = "the result's `usage` is refused, as in `/agent/usage`", body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "no agent of that name in this run", body = crate::error::ErrorBody), (status = 409, description = "the lease expired, or the attempt is not held", body = crate::error::ErrorBody)))]
pub async fn complete(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(id): PathParams<i64>,
    Body(request): Body<CompleteRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    let result = request.result.unwrap_or(serde_json::Value::Null);
    Usage::from_result(&result).map_err(|error| ApiError::bad_request(format!("result.usage: {error}")))?;
    let outcome = Outcome::Succeeded { result };
    finish_one(&state, &agent, TaskId(id), request.attempt, outcome).await
}

/// Hands in a failure for an attempt the agent holds; the task is retried if it has attempts
/// left.
#[utoipa::path(post, path = "/agent/tasks/{id}/fail", tag = "agent-side", params(("id" = i64, Path, description = "the task's id")),
    request_body = FailRequest,
    responses((status = 200, body = ResultRecorded), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "no agent of that name in this run", body = crate::error::ErrorBody), (status = 409, description = "the lease expired, or the attempt is not held", body = crate::error::ErrorBody)))]
pub async fn fail(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(id): PathParams<i64>,
    Body(request): Body<FailRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    let outcome = Outcome::Failed { reason: request.error };
    finish_one(&state, &agent, TaskId(id), request.attempt, outcome).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultItem {
    #[schema(value_type = i64)]
    pub task: TaskId,
    pub attempt: u32,
    /// `succeeded` or `failed`.
    pub status: String,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed (for `failed`).
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultsRequest {
    pub agent: Option<String>,
    pub results: Vec<ResultItem>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResultOutcome {
    #[schema(value_type = i64)]
    pub task: TaskId,
    pub attempt: u32,
    /// As in [`ResultRecorded`], or `refused`.
    pub state: String,
    /// Why a result was refused (`lease_expired`, `conflict`…).
    pub code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResultsResponse {
    pub results: Vec<ResultOutcome>,
}

/// Hands in several results at once; each is recorded or refused on its own.
#[utoipa::path(post, path = "/agent/results", tag = "agent-side", request_body = ResultsRequest,
    responses((status = 200, body = ResultsResponse), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "no agent of that name in this run", body = crate::error::ErrorBody),
        (status = 409, description = "the agent is not a remote agent: its results come from its process", body = crate::error::ErrorBody)))]
pub async fn results(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(request): Body<ResultsRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    if request.results.len() > MAX_CLAIM {
        return Err(ApiError::bad_request(format!("at most {MAX_CLAIM} results at once")));
    }
    let mut items = Vec::with_capacity(request.results.len());
    for (idx, item) in request.results.into_iter().enumerate() {
        let outcome = match item.status.as_str() {
            "succeeded" => {
                let result = item.result.unwrap_or(serde_json::Value::Null);
                Usage::from_result(&result)
                    .map_err(|error| ApiError::bad_request(format!("results[{idx}].result.usage: {error}")))?;
                Outcome::Succeeded { result }
            }
            "failed" => Outcome::Failed { reason: item.error.unwrap_or_else(|| "failed".into()) },
            other => {
                return Err(ApiError::bad_request(format!(
                    "results[{idx}].status: `{other}` is not `succeeded` or `failed`"
                )));
            }
        };
        items.push((item.task, item.attempt, outcome));
    }
    let keys: Vec<(TaskId, u32)> = items.iter().map(|(task, attempt, _)| (*task, *attempt)).collect();
    let recorded = finish(&state, &agent, items).await?;
    let results = keys
        .into_iter()
        .zip(recorded)
        .map(|((task, attempt), result)| match result {
            Ok(recorded) => ResultOutcome { task, attempt, state: recorded.state, code: None, message: None },
            Err(error) => ResultOutcome {
                task,
                attempt,
                state: "refused".into(),
                code: Some(error.code.to_string()),
                message: Some(error.message),
            },
        })
        .collect();
    Ok(json(ResultsResponse { results }))
}

async fn finish_one(
    state: &AppState,
    agent: &str,
    task: TaskId,
    attempt: u32,
    outcome: Outcome,
) -> Result<Response, ApiError> {
    let recorded = finish(state, agent, vec![(task, attempt, outcome)]).await?;
    recorded.into_iter().next().unwrap_or_else(|| Err(ApiError::internal("no result"))).map(json)
}

/// Hands outcomes to the engine and waits until each is recorded (its event committed), so
/// that a `200` means durable.
async fn finish(
    state: &AppState,
    agent: &str,
    items: Vec<(TaskId, u32, Outcome)>,
) -> Result<Vec<Result<ResultRecorded, ApiError>>, ApiError> {
    known_agent(state, agent)?;
    if !state.hub().is_remote(agent) {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "not_remote",
            format!("agent `{agent}` is started by Baton: its results come from its process, not from the API"),
        ));
    }
    // Subscribed before handing in, so that no event is missed.
    let events = state.store().subscribe();
    let mut handed_in: Vec<Result<(TaskId, u32), ApiError>> = Vec::with_capacity(items.len());
    for (task, attempt, outcome) in items {
        handed_in.push(match state.hub().finish(agent, task, attempt, outcome) {
            Ok(()) => Ok((task, attempt)),
            Err(error) => Err(refusal(state, agent, task, error).await),
        });
    }
    let waiting: HashSet<(TaskId, u32)> = handed_in.iter().filter_map(|key| key.as_ref().ok().copied()).collect();
    let states = wait_recorded(state, events, waiting).await;
    Ok(handed_in
        .into_iter()
        .map(|key| {
            key.map(|(task, attempt)| ResultRecorded {
                task,
                attempt,
                state: states.get(&(task, attempt)).cloned().unwrap_or_else(|| "accepted".into()),
            })
        })
        .collect())
}

/// Waits (within [`RECORD_WAIT`]) for the events that record each attempt's result; returns
/// the state each task was left in (`accepted` for those not recorded in time). A completion
/// says `succeeded` by itself; after a failure the task is read back, since the same commit
/// decided whether it is retried or dead.
async fn wait_recorded(
    state: &AppState,
    mut events: broadcast::Receiver<std::sync::Arc<Event>>,
    mut waiting: HashSet<(TaskId, u32)>,
) -> HashMap<(TaskId, u32), String> {
    let mut states = HashMap::new();
    let mut failed = Vec::new();
    let give_up = tokio::time::Instant::now() + RECORD_WAIT;
    while !waiting.is_empty() {
        let event = tokio::select! {
            event = events.recv() => event,
            () = tokio::time::sleep_until(give_up) => break,
        };
        match event {
            Ok(event) => match &event.kind {
                EventKind::TaskCompleted { task, attempt, .. } if waiting.remove(&(*task, *attempt)) => {
                    states.insert((*task, *attempt), TaskState::Succeeded.as_str().to_string());
                }
                EventKind::TaskFailed { task, attempt, .. } if waiting.remove(&(*task, *attempt)) => {
                    failed.push((*task, *attempt));
                }
                _ => {}
            },
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Some events were missed: what the store says now decides.
                for key in waiting.clone() {
                    if let Ok(Some(task)) = state.store().task(key.0).await
                        && (task.attempt != key.1 || task.state != TaskState::Running)
                    {
                        waiting.remove(&key);
                        failed.push(key);
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    for key in failed {
        let task_state = match state.store().task(key.0).await {
            Ok(Some(task)) => task.state.as_str().to_string(),
            _ => "recorded".to_string(),
        };
        states.insert(key, task_state);
    }
    states
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    pub agent: Option<String>,
    /// The task the tokens were used for, if one.
    #[schema(value_type = Option<i64>)]
    pub task: Option<TaskId>,
    /// `{"input_tokens", "output_tokens", "cost_usd"}`, as `usage/report` in the worker protocol:
    /// whole numbers of tokens, at most 10^12 in one report, and a cost of at most $10^6.
    #[schema(value_type = Object)]
    pub usage: serde_json::Value,
}

/// Reports tokens the agent used; they count against its budgets.
#[utoipa::path(post, path = "/agent/usage", tag = "agent-side", request_body = UsageRequest,
    responses((status = 200, body = Accepted), (status = 400, description = "a count that is not a whole number of tokens, or beyond the bound of one report", body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "no agent of that name in this run", body = crate::error::ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(request): Body<UsageRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    known_agent(&state, &agent)?;
    if !request.usage.is_object() {
        return Err(ApiError::bad_request(
            "`usage` must be an object such as {\"input_tokens\": 120, \"output_tokens\": 40}",
        ));
    }
    Usage::from_report(&request.usage).map_err(|error| ApiError::bad_request(format!("usage: {error}")))?;
    if let Some(task) = request.task {
        let record = state.store().task(task).await?.filter(|record| record.run_id == state.run_id());
        let own = record.is_some_and(|record| record.assigned_agent.as_deref() == Some(agent.as_str()));
        if !own {
            return Err(ApiError::forbidden(format!("task {task} is not agent `{agent}`'s")));
        }
    }
    state
        .engine()
        .report(AgentEvent::Usage { agent, task: request.task, usage: request.usage })
        .map_err(ApiError::from)?;
    Ok(json(Accepted { accepted: true }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    pub agent: Option<String>,
    /// The resource key, as tasks name them (`file:Cargo.toml`, `customer:456`).
    #[schema(min_length = 1)]
    pub resource: String,
    /// How long the lease lasts unless taken again (default 60000).
    #[schema(minimum = 1)]
    pub ttl_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Leased {
    pub resource: String,
    /// When the lease runs out (ms since the epoch).
    pub until: i64,
}

/// Takes (or renews) a lease on a resource: while it lasts, no task whose resources overlap
/// it runs and no other agent gets an overlapping lease. `409` says who holds it.
#[utoipa::path(post, path = "/agent/resources/acquire", tag = "agent-side", request_body = AcquireRequest,
    responses((status = 200, body = Leased), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn acquire(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(request): Body<AcquireRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    known_agent(&state, &agent)?;
    if request.resource.trim().is_empty() {
        return Err(ApiError::bad_request("`resource` must not be empty"));
    }
    let ttl = Duration::from_millis(request.ttl_ms.unwrap_or(60_000).max(1));
    if ttl > baton_core::time::MAX_DURATION {
        return Err(ApiError::bad_request(format!(
            "`ttl_ms` must be at most {} (3650 days)",
            baton_core::time::MAX_DURATION.as_millis()
        )));
    }
    let resource = request.resource.clone();
    let until = state
        .engine()
        .ask(|reply| AgentRequest::AcquireResource { agent, resource: request.resource, ttl, reply })
        .await?;
    Ok(json(Leased { resource, until: until.millis() }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub agent: Option<String>,
    #[schema(min_length = 1)]
    pub resource: String,
}

/// Gives a lease back.
#[utoipa::path(post, path = "/agent/resources/release", tag = "agent-side", request_body = ReleaseRequest,
    responses((status = 200, body = Accepted), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(request): Body<ReleaseRequest>,
) -> Result<Response, ApiError> {
    let agent = caller.acting_as(request.agent.as_deref())?;
    known_agent(&state, &agent)?;
    state.engine().ask(|reply| AgentRequest::ReleaseResource { agent, resource: request.resource, reply }).await?;
    Ok(json(Accepted { accepted: true }))
}
