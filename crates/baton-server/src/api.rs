//! The operator's API: health and status, the plan, tasks, agents, tokens and the audit log —
//! each handler reads its request, calls the operations layer ([`baton_ops::Ops`]) with the
//! caller, and writes the answer. What is checked, allowed and answered is decided there.

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::model::{TaskId, TaskRecord};
use baton_ops::agents::AgentCommand;
pub use baton_ops::agents::AgentInfo;
pub use baton_ops::conflicts::{Conflicts, Held, Waiting};
pub use baton_ops::events::AuditParams;
pub use baton_ops::status::{Health, PlanView, Status, WorkstreamView};
pub use baton_ops::tasks::{
    CancelInput, Created, ObjectiveInput, ObjectivePlan, TaskBatch, TaskDetail, TaskInput, TaskPage, TaskQuery,
};
pub use baton_ops::tools::{ServerView, ToolCallResult, ToolList, ToolQuery, ToolView};

use crate::auth::{Action, Caller, Role};
use crate::{ApiError, AppState, json};

/// JSON in, with errors in the API's shape (a message naming the unknown or bad field).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Body<T>(pub T);

/// A query string, with errors in the API's shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Params<T>(pub T);

/// Path parameters, with errors in the API's shape (axum's own answer to `/tasks/abc` is a
/// bare text body).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathParams<T>(pub T);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/plan", get(plan))
        .route("/tasks", get(list_tasks).post(create_task))
        .route("/tasks/batch", post(create_tasks))
        .route("/objectives", post(plan_objective))
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/tasks/{id}/retry", post(retry_task))
        .route("/conflicts", get(conflicts))
        .route("/agents", get(list_agents).post(create_agent))
        .route("/agents/{name}", get(get_agent).put(update_agent).delete(delete_agent))
        .route("/agents/{name}/start", post(start_agent))
        .route("/agents/{name}/stop", post(stop_agent))
        .route("/agents/{name}/restart", post(restart_agent))
        .route("/agents/{name}/logs", get(agent_logs))
        .route("/tools", get(list_tools))
        .route("/tools/{server}/{tool}", post(call_tool))
        .route("/audit", get(audit))
        .route("/tokens", post(create_token))
}

// ---------------------------------------------------------------------------------------------
// Health and status.

/// Whether the server, its engine and its store are well: `503`, naming what is broken, when
/// the store does not answer or the engine stopped with the run unfinished.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, description = "a subsystem is broken: see `problems`", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Response {
    let health = state.ops().health().await;
    if health.is_healthy() {
        json(health)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(health)).into_response()
    }
}

/// The run: its phase, progress and outcome.
#[utoipa::path(get, path = "/status", tag = "operations", responses((status = 200, body = Status), (status = 401, body = crate::error::ErrorBody)))]
pub async fn status(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    Ok(json(state.ops().status(&caller).await?))
}

/// The run's plan: workstreams, phases and progress.
#[utoipa::path(get, path = "/plan", tag = "operations", responses((status = 200, body = PlanView)))]
pub async fn plan(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    Ok(json(state.ops().plan_view(&caller).await?))
}

// ---------------------------------------------------------------------------------------------
// Tasks.

/// Creates a task.
#[utoipa::path(post, path = "/tasks", tag = "tasks", request_body = TaskInput,
    responses((status = 201, body = Created), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 409, description = "a task with that key exists in the run", body = crate::error::ErrorBody)))]
pub async fn create_task(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(input): Body<TaskInput>,
) -> Result<Response, ApiError> {
    let id = state.ops().create_task(&caller, input).await?;
    Ok((StatusCode::CREATED, axum::Json(Created { ids: vec![id] })).into_response())
}

/// Creates several tasks at once (all or none); they may depend on each other by key.
#[utoipa::path(post, path = "/tasks/batch", tag = "tasks", request_body = TaskBatch,
    responses((status = 201, body = Created), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 409, description = "a task with one of those keys exists in the run", body = crate::error::ErrorBody)))]
pub async fn create_tasks(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(batch): Body<TaskBatch>,
) -> Result<Response, ApiError> {
    let ids = state.ops().create_tasks(&caller, batch.tasks).await?;
    Ok((StatusCode::CREATED, axum::Json(Created { ids })).into_response())
}

/// Turns an objective into tasks of a workstream: the coordinator's model proposes them
/// (checked as a batch), or, in rules mode and on any failure of the model, one task routed
/// by capability is made, with the reason in `fallback_reason` and a `CoordinatorFallback`
/// event.
#[utoipa::path(post, path = "/objectives", tag = "tasks", request_body = ObjectiveInput,
    responses((status = 201, body = ObjectivePlan), (status = 400, description = "an empty objective, an unknown workstream", body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 409, description = "the run planned this objective already", body = crate::error::ErrorBody),
        (status = 503, description = "the run is not executing here", body = crate::error::ErrorBody)))]
pub async fn plan_objective(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(input): Body<ObjectiveInput>,
) -> Result<Response, ApiError> {
    let planned = state.ops().plan_objective(&caller, input).await?;
    Ok((StatusCode::CREATED, axum::Json(planned)).into_response())
}

/// Lists tasks, with filters and paging by id.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_tasks(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Params(query): Params<TaskQuery>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().tasks(&caller, query).await?))
}

/// A task, with its attempts and events.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path, description = "the task's id")),
    responses((status = 200, body = TaskDetail), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_task(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(id): PathParams<i64>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().task(&caller, TaskId(id)).await?))
}

/// The resources running tasks and agents' leases hold, and the tasks waiting for them.
#[utoipa::path(get, path = "/conflicts", tag = "tasks", responses((status = 200, body = Conflicts)))]
pub async fn conflicts(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    Ok(json(state.ops().conflicts(&caller).await?))
}

/// Parses an optional JSON body: empty or `null` means the defaults.
fn optional_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(bytes)
        .map(Option::unwrap_or_default)
        .map_err(|error| ApiError::bad_request(format!("invalid request body: {error}")))
}

/// Cancels a task that has not ended; a running attempt is stopped.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", params(("id" = i64, Path, description = "the task's id")),
    request_body(content = Option<CancelInput>),
    responses((status = 200, body = TaskRecord), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn cancel_task(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(id): PathParams<i64>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input: CancelInput = optional_body(&body)?;
    Ok(json(state.ops().cancel_task(&caller, TaskId(id), input).await?))
}

/// Retries a dead or cancelled task from a fresh set of attempts.
#[utoipa::path(post, path = "/tasks/{id}/retry", tag = "tasks", params(("id" = i64, Path, description = "the task's id")),
    responses((status = 200, body = TaskRecord), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn retry_task(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(id): PathParams<i64>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().retry_task(&caller, TaskId(id)).await?))
}

// ---------------------------------------------------------------------------------------------
// Agents.

/// The plan's agents, with their state.
#[utoipa::path(get, path = "/agents", tag = "agents", responses((status = 200, body = Vec<AgentInfo>)))]
pub async fn list_agents(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    Ok(json(state.ops().agents(&caller).await?))
}

/// One agent.
#[utoipa::path(get, path = "/agents/{name}", tag = "agents", params(("name" = String, Path, description = "the agent's name")),
    responses((status = 200, body = AgentInfo), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_agent(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().agent(&caller, &name).await?))
}

/// Adds an agent to the running plan: the body is a `[[agents]]` entry of baton.toml, as JSON.
#[utoipa::path(post, path = "/agents", tag = "agents", request_body(content = Object, description = "an [[agents]] entry of baton.toml, as JSON"),
    responses((status = 201, body = AgentInfo), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_agent(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(body): Body<serde_json::Value>,
) -> Result<Response, ApiError> {
    let info = state.ops().create_agent(&caller, &body).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

/// Replaces an agent's configuration; it restarts when how it runs changed.
#[utoipa::path(put, path = "/agents/{name}", tag = "agents", params(("name" = String, Path, description = "the agent's name")),
    request_body(content = Object, description = "an [[agents]] entry of baton.toml, as JSON"),
    responses((status = 200, body = AgentInfo), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn update_agent(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
    Body(body): Body<serde_json::Value>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().update_agent(&caller, &name, body).await?))
}

/// Removes an agent from the running plan; its running tasks go back to the queue.
#[utoipa::path(delete, path = "/agents/{name}", tag = "agents", params(("name" = String, Path, description = "the agent's name")),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_agent(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    state.ops().delete_agent(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

macro_rules! agent_command {
    ($fn_name:ident, $command:expr, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "agents", params(("name" = String, Path, description = "the agent's name")),
            responses((status = 200, body = AgentInfo), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
        pub async fn $fn_name(
            State(state): State<AppState>,
            caller: Extension<Caller>,
            PathParams(name): PathParams<String>,
        ) -> Result<Response, ApiError> {
            Ok(json(state.ops().agent_command(&caller, &name, $command).await?))
        }
    };
}

agent_command!(start_agent, AgentCommand::Start, "/agents/{name}/start", "Starts a stopped agent.");
agent_command!(
    stop_agent,
    AgentCommand::Stop,
    "/agents/{name}/stop",
    "Stops an agent; its running tasks go back to the queue."
);
agent_command!(restart_agent, AgentCommand::Restart, "/agents/{name}/restart", "Restarts an agent.");

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Keep the response open and send what the agent writes, as Server-Sent Events.
    pub follow: Option<bool>,
    /// Only the last this many bytes of what is there already (default 64 KiB).
    pub tail_bytes: Option<u64>,
}

/// An agent's log (its processes' stderr and Baton's notes): text, or followed as SSE.
#[utoipa::path(get, path = "/agents/{name}/logs", tag = "agents", params(("name" = String, Path, description = "the agent's name"), LogQuery),
    responses((status = 200, description = "the log as text, or `text/event-stream` with `follow=true`", content_type = "text/plain", body = String),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn agent_logs(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
    Params(query): Params<LogQuery>,
) -> Result<Response, ApiError> {
    let path = state.ops().agent_log(&caller, &name).await?;
    crate::live::log_response(state.clone(), path, query.tail_bytes.unwrap_or(64 * 1024), query.follow.unwrap_or(false))
        .await
}

// ---------------------------------------------------------------------------------------------
// Tools of the run's MCP servers.

/// The run's MCP servers and their tools; `q` searches names and descriptions, `agent` keeps
/// the tools that agent's `tools` globs allow.
#[utoipa::path(get, path = "/tools", tag = "tools", params(ToolQuery),
    responses((status = 200, body = ToolList), (status = 403, body = crate::error::ErrorBody), (status = 404, description = "no such agent", body = crate::error::ErrorBody)))]
pub async fn list_tools(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Params(query): Params<ToolQuery>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().tools(&caller, query).await?))
}

/// Calls a tool with the JSON object of its arguments (operator). A tool that ran and failed
/// answers `200` with `is_error` set.
#[utoipa::path(post, path = "/tools/{server}/{tool}", tag = "tools",
    params(("server" = String, Path, description = "the MCP server, as named in [mcp_servers]"), ("tool" = String, Path, description = "the tool")),
    request_body(content = Object, description = "the tool's arguments"),
    responses((status = 200, body = ToolCallResult), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "no such tool", body = crate::error::ErrorBody), (status = 503, description = "the server is down, or the run is not executing here", body = crate::error::ErrorBody)))]
pub async fn call_tool(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams((server, tool)): PathParams<(String, String)>,
    Body(arguments): Body<serde_json::Value>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().call_tool(&caller, &format!("{server}/{tool}"), arguments).await?))
}

// ---------------------------------------------------------------------------------------------
// Tokens and the audit log.

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub role: Role,
    /// For `agent` tokens: the agent it acts as.
    pub agent: Option<String>,
    /// Who the token is for (default: the role, or `agent:NAME`).
    pub subject: Option<String>,
    /// How long it is valid, such as `"24h"` (default: `[auth] token_ttl`).
    pub ttl: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub subject: String,
    pub role: Role,
    pub agent: Option<String>,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

/// Issues a token (admin only).
#[utoipa::path(post, path = "/tokens", tag = "admin", request_body = TokenRequest,
    responses((status = 201, body = TokenResponse), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(request): Body<TokenRequest>,
) -> Result<Response, ApiError> {
    caller.require(Action::Administer)?;
    let Some(auth) = state.auth() else {
        return Err(ApiError::bad_request("this server has no [auth] section: it issues no tokens"));
    };
    let ttl = match &request.ttl {
        Some(text) => {
            baton_core::time::parse_duration(text).map_err(|error| ApiError::bad_request(format!("`ttl`: {error}")))?
        }
        None => auth.default_ttl,
    };
    if let Some(agent) = &request.agent
        && state.plan().agent(agent).is_none()
    {
        return Err(ApiError::bad_request(format!("no agent `{agent}` in this run")));
    }
    let subject = request.subject.clone().unwrap_or_else(|| match &request.agent {
        Some(agent) => format!("agent:{agent}"),
        None => request.role.as_str().to_string(),
    });
    let (token, claims) = auth
        .issue(&subject, request.role, request.agent.as_deref(), ttl, crate::auth::unix_now())
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenResponse { token, subject, role: claims.role, agent: claims.agent, expires_at: claims.exp }),
    )
        .into_response())
}

/// The audit log: every mutating request, who made it and how it ended (admin only), newest
/// first.
#[utoipa::path(get, path = "/audit", tag = "admin", params(AuditParams),
    responses((status = 200, body = Vec<Object>), (status = 403, body = crate::error::ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Params(params): Params<AuditParams>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().audit(&caller, params).await?))
}
