//! The operator's API: health and status, the plan, tasks, agents, tokens and the audit log.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::Event;
use baton_core::config::AgentSpec;
use baton_core::model::{AgentRecord, NewTask, Priority, RunState, TaskId, TaskRecord, TaskState};
use baton_store::{AuditEntry, AuditQuery, EventQuery, TaskFilter};

use crate::auth::{Action, Caller, Grant, Role};
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
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/tasks/{id}/retry", post(retry_task))
        .route("/agents", get(list_agents).post(create_agent))
        .route("/agents/{name}", get(get_agent).put(update_agent).delete(delete_agent))
        .route("/agents/{name}/start", post(start_agent))
        .route("/agents/{name}/stop", post(stop_agent))
        .route("/agents/{name}/restart", post(restart_agent))
        .route("/agents/{name}/logs", get(agent_logs))
        .route("/audit", get(audit))
        .route("/tokens", post(create_token))
}

// ---------------------------------------------------------------------------------------------
// Health and status.

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `healthy` while the engine runs and the store answers; `degraded` otherwise.
    pub status: String,
    pub version: String,
    /// `running`, `succeeded` or `failed`.
    pub orchestration_status: String,
    pub agent_count: u64,
    pub uptime_seconds: u64,
    /// What is broken, one line per subsystem (`store: …`, `engine: …`); empty when nothing
    /// is. The answer is `503` when there is any.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Whether the server, its engine and its store are well: `503`, naming what is broken, when
/// the store does not answer or the engine stopped with the run unfinished.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, description = "a subsystem is broken: see `problems`", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Response {
    let mut problems = Vec::new();
    let run = state.store().run(state.run_id()).await;
    let agent_count = match state.store().agents(state.run_id()).await {
        Ok(agents) => agents.len() as u64,
        Err(error) => {
            problems.push(format!("store: {error}"));
            0
        }
    };
    let engine_stopped = state.engine().is_stopped();
    let orchestration = match &run {
        Ok(Some(run)) => {
            if engine_stopped && run.state == baton_core::model::RunState::Running {
                problems.push(
                    "engine: stopped while the run is unfinished; nothing is claimed or recorded until `baton serve` starts again"
                        .to_string(),
                );
            }
            run.state.as_str().to_string()
        }
        Ok(None) => {
            problems.push(format!("store: run {} is not in the store", state.run_id()));
            "unknown".to_string()
        }
        Err(error) => {
            problems.push(format!("store: {error}"));
            "store unavailable".to_string()
        }
    };
    problems.dedup();
    let healthy = problems.is_empty() && !engine_stopped;
    let health = Health {
        status: if healthy { "healthy" } else { "degraded" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        orchestration_status: orchestration,
        agent_count,
        uptime_seconds: state.uptime().as_secs(),
        problems,
    };
    if health.problems.is_empty() {
        json(health)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(health)).into_response()
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The run's id.
    pub session_id: String,
    /// The workstreams of the current phase, by name.
    pub current_phase: String,
    /// 1-based; 0 before the first phase starts.
    pub phase: u32,
    pub n_phases: u32,
    /// Finished tasks over all tasks, 0 to 1.
    pub progress: f64,
    /// Whether the run has ended.
    pub completed: bool,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// Agents started and not stopped.
    pub spawned_agents: u64,
    /// Tasks per state.
    pub tasks: BTreeMap<String, u64>,
}

/// The run: its phase, progress and outcome.
#[utoipa::path(get, path = "/status", tag = "operations", responses((status = 200, body = Status), (status = 401, body = crate::error::ErrorBody)))]
pub async fn status(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Action::ReadStatus)?;
    let run =
        state.store().run(state.run_id()).await?.ok_or_else(|| ApiError::unavailable("the run is not in the store"))?;
    let counts = state.task_counts().await?;
    let agents = state.store().agents(state.run_id()).await?;
    let plan = state.plan();
    let current_phase = match run.phase {
        0 => String::new(),
        phase => plan.phases.get(phase as usize - 1).map(|names| names.join(", ")).unwrap_or_default(),
    };
    let tasks: BTreeMap<String, u64> = counts.iter().map(|(state, n)| (state.as_str().to_string(), *n)).collect();
    let n_tasks: u64 = counts.iter().map(|(_, n)| n).sum();
    let n_finished: u64 = counts.iter().filter(|(state, _)| state.is_terminal()).map(|(_, n)| n).sum();
    let progress = if n_tasks == 0 { run.progress() } else { n_finished as f64 / n_tasks as f64 };
    Ok(json(Status {
        session_id: run.id.clone(),
        current_phase,
        phase: run.phase,
        n_phases: plan.phases.len() as u32,
        progress,
        completed: run.state != RunState::Running,
        state: run.state.as_str().into(),
        error: run.error.clone(),
        spawned_agents: agents.iter().filter(|agent| agent.state.is_started()).count() as u64,
        tasks,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    pub name: String,
    pub run_id: String,
    pub phase: u32,
    /// Workstream names per phase, in order.
    pub phases: Vec<Vec<String>>,
    pub workstreams: Vec<WorkstreamView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkstreamView {
    pub name: String,
    pub description: String,
    pub priority: Priority,
    pub depends_on: Vec<String>,
    pub phase: u32,
    pub n_tasks: u64,
    pub n_finished: u64,
    pub n_running: u64,
    /// Dead or cancelled.
    pub n_unsuccessful: u64,
    pub progress: f64,
}

/// The run's plan: workstreams, phases and progress.
#[utoipa::path(get, path = "/plan", tag = "operations", responses((status = 200, body = PlanView)))]
pub async fn plan(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Action::ReadStatus)?;
    let plan = state.plan();
    let run = state.store().run(state.run_id()).await?;
    let tasks = state.store().tasks(state.run_id(), &TaskFilter::default()).await?;
    let workstreams = plan
        .workstreams
        .iter()
        .map(|ws| {
            let own = tasks.iter().filter(|task| task.workstream.as_deref() == Some(ws.name.as_str()));
            let (mut n_tasks, mut n_finished, mut n_running, mut n_unsuccessful) = (0, 0, 0, 0);
            for task in own {
                n_tasks += 1;
                n_finished += u64::from(task.state.is_terminal());
                n_running += u64::from(task.state == TaskState::Running);
                n_unsuccessful += u64::from(matches!(task.state, TaskState::Dead | TaskState::Cancelled));
            }
            WorkstreamView {
                name: ws.name.clone(),
                description: ws.description.clone(),
                priority: ws.priority,
                depends_on: ws.depends_on.clone(),
                phase: plan.phase_of(Some(&ws.name)),
                n_tasks,
                n_finished,
                n_running,
                n_unsuccessful,
                progress: if n_tasks == 0 { 0.0 } else { n_finished as f64 / n_tasks as f64 },
            }
        })
        .collect();
    Ok(json(PlanView {
        name: plan.name.clone(),
        run_id: state.run_id().to_string(),
        phase: run.map_or(0, |run| run.phase),
        phases: plan.phases.clone(),
        workstreams,
    }))
}

// ---------------------------------------------------------------------------------------------
// Tasks.

/// A task to create: the fields of a `[[tasks]]` entry of baton.toml, checked and given their
/// defaults by [`baton_core::task::new_task`], as every source of tasks is.
pub use baton_core::task::TaskInput;

/// `input` as a task of the running plan, or a `400` naming the problem (and the task's place
/// in a batch).
fn new_task(state: &AppState, input: TaskInput, index: Option<usize>) -> Result<NewTask, ApiError> {
    let plan = state.plan();
    baton_core::task::new_task(input, (&*plan).into()).map_err(|error| {
        let at = index.map_or_else(String::new, |idx| format!("tasks[{idx}]: "));
        ApiError::bad_request(format!("{at}{error}"))
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBatch {
    #[schema(min_items = 1)]
    pub tasks: Vec<TaskInput>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    #[schema(value_type = Vec<i64>)]
    pub ids: Vec<TaskId>,
}

/// Creates a task.
#[utoipa::path(post, path = "/tasks", tag = "tasks", request_body = TaskInput,
    responses((status = 201, body = Created), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 409, description = "a task with that key exists in the run", body = crate::error::ErrorBody)))]
pub async fn create_task(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(input): Body<TaskInput>,
) -> Result<Response, ApiError> {
    caller.require(Action::CreateTasks)?;
    let task = new_task(&state, input, None)?;
    let ids = state.engine().create_tasks(vec![task]).await?;
    Ok((StatusCode::CREATED, axum::Json(Created { ids })).into_response())
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
    caller.require(Action::CreateTasks)?;
    if batch.tasks.is_empty() {
        return Err(ApiError::bad_request("`tasks` is empty"));
    }
    let tasks = batch
        .tasks
        .into_iter()
        .enumerate()
        .map(|(idx, task)| new_task(&state, task, Some(idx)))
        .collect::<Result<_, _>>()?;
    let ids = state.engine().create_tasks(tasks).await?;
    Ok((StatusCode::CREATED, axum::Json(Created { ids })).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// `pending`, `ready`, `running`, `succeeded`, `dead`, `cancelled` or `suspended`.
    pub state: Option<TaskState>,
    pub workstream: Option<String>,
    /// The agent a task is assigned or pinned to.
    pub agent: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// Only tasks with a greater id: pass the previous page's `next_after`.
    pub after: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// Lists tasks, with filters and paging by id.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_tasks(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Params(query): Params<TaskQuery>,
) -> Result<Response, ApiError> {
    let agent = match caller.require(Action::ReadTasks)? {
        Grant::Own => Some(own_only(&caller, query.agent.as_deref(), "tasks")?),
        _ => query.agent,
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let filter = TaskFilter {
        state: query.state,
        workstream: query.workstream,
        agent,
        limit: Some(limit + 1),
        after: query.after.map(TaskId),
    };
    let mut tasks = state.store().tasks(state.run_id(), &filter).await?;
    let next_after = if tasks.len() as u64 > limit {
        tasks.truncate(limit as usize);
        tasks.last().map(|task| task.id.0)
    } else {
        None
    };
    Ok(json(TaskPage { tasks, next_after }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskDetail {
    pub task: TaskRecord,
    #[schema(value_type = Vec<Object>)]
    pub attempts: Vec<baton_store::AttemptRecord>,
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Event>,
}

/// Under [`Grant::Own`]: the caller's own agent, refusing a filter that names another.
pub(crate) fn own_only(caller: &Caller, named: Option<&str>, what: &str) -> Result<String, ApiError> {
    let own = caller.own_agent()?;
    match named {
        Some(named) if named != own => {
            Err(ApiError::forbidden(format!("this token reads the {what} of agent `{own}` only, not of `{named}`")))
        }
        _ => Ok(own.to_string()),
    }
}

/// Under [`Grant::Own`], an agent reads a task that is its own (assigned or pinned to it) or
/// that one of its unfinished tasks depends on: what its work needs.
async fn check_task_is_own(state: &AppState, caller: &Caller, task: &TaskRecord) -> Result<(), ApiError> {
    let own = caller.own_agent()?;
    if task.agent.as_deref() == Some(own) || task.assigned_agent.as_deref() == Some(own) {
        return Ok(());
    }
    let filter = TaskFilter { state: Some(TaskState::Running), agent: Some(own.to_string()), ..TaskFilter::default() };
    let running = state.store().tasks(state.run_id(), &filter).await?;
    if running.iter().any(|mine| mine.depends_on.contains(&task.id)) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "task {} is not agent `{own}`'s: an agent token reads its own tasks and what they depend on",
        task.id
    )))
}

async fn find_task(state: &AppState, id: i64) -> Result<TaskRecord, ApiError> {
    state
        .store()
        .task(TaskId(id))
        .await?
        .filter(|task| task.run_id == state.run_id())
        .ok_or_else(|| ApiError::not_found(format!("no task {id} in this run")))
}

/// A task, with its attempts and events.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path, description = "the task's id")),
    responses((status = 200, body = TaskDetail), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_task(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(id): PathParams<i64>,
) -> Result<Response, ApiError> {
    let grant = caller.require(Action::ReadTasks)?;
    let task = find_task(&state, id).await?;
    if grant == Grant::Own {
        check_task_is_own(&state, &caller, &task).await?;
    }
    let events = state
        .store()
        .events(&EventQuery {
            run_id: Some(state.run_id().to_string()),
            task: Some(task.id),
            limit: Some(1000),
            ..Default::default()
        })
        .await?;
    let attempts = state.store().attempts(task.id).await?;
    Ok(json(TaskDetail { task, attempts, events }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelInput {
    /// Why; shown in the task's events.
    pub reason: Option<String>,
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
    caller.require(Action::ControlTasks)?;
    let input: CancelInput = optional_body(&body)?;
    find_task(&state, id).await?;
    let reason = input.reason.unwrap_or_else(|| format!("cancelled by {}", caller.subject));
    state.engine().cancel(TaskId(id), reason).await?;
    Ok(json(find_task(&state, id).await?))
}

/// Retries a dead or cancelled task from a fresh set of attempts.
#[utoipa::path(post, path = "/tasks/{id}/retry", tag = "tasks", params(("id" = i64, Path, description = "the task's id")),
    responses((status = 200, body = TaskRecord), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn retry_task(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(id): PathParams<i64>,
) -> Result<Response, ApiError> {
    caller.require(Action::ControlTasks)?;
    find_task(&state, id).await?;
    state.engine().retry(TaskId(id)).await?;
    Ok(json(find_task(&state, id).await?))
}

// ---------------------------------------------------------------------------------------------
// Agents.

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentInfo {
    pub name: String,
    /// As last recorded; absent until the engine has written the agent.
    pub status: Option<AgentRecord>,
    /// The agent's configuration, as in baton.toml.
    #[schema(value_type = Object)]
    pub spec: AgentSpec,
}

async fn agent_infos(state: &AppState) -> Result<Vec<AgentInfo>, ApiError> {
    let plan = state.plan();
    let mut records: BTreeMap<String, AgentRecord> =
        state.store().agents(state.run_id()).await?.into_iter().map(|record| (record.name.clone(), record)).collect();
    Ok(plan
        .agents
        .iter()
        .map(|spec| AgentInfo { name: spec.name.clone(), status: records.remove(&spec.name), spec: spec.clone() })
        .collect())
}

/// The plan's agents, with their state.
#[utoipa::path(get, path = "/agents", tag = "agents", responses((status = 200, body = Vec<AgentInfo>)))]
pub async fn list_agents(State(state): State<AppState>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Action::ReadAgents)?;
    Ok(json(agent_infos(&state).await?))
}

async fn find_agent(state: &AppState, name: &str) -> Result<AgentInfo, ApiError> {
    agent_infos(state)
        .await?
        .into_iter()
        .find(|info| info.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no agent `{name}` in this run")))
}

/// One agent.
#[utoipa::path(get, path = "/agents/{name}", tag = "agents", params(("name" = String, Path, description = "the agent's name")),
    responses((status = 200, body = AgentInfo), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_agent(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    caller.require(Action::ReadAgents)?;
    Ok(json(find_agent(&state, &name).await?))
}

fn config_error(error: baton_core::config::Error) -> ApiError {
    ApiError::bad_request(error.to_string().trim().to_string())
}

/// Adds an agent to the running plan: the body is a `[[agents]]` entry of baton.toml, as JSON.
#[utoipa::path(post, path = "/agents", tag = "agents", request_body(content = Object, description = "an [[agents]] entry of baton.toml, as JSON"),
    responses((status = 201, body = AgentInfo), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_agent(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(body): Body<serde_json::Value>,
) -> Result<Response, ApiError> {
    caller.require(Action::ManageAgents)?;
    let plan = state.plan();
    if let Some(name) = body.get("name").and_then(|name| name.as_str())
        && plan.agent(name).is_some()
    {
        return Err(ApiError::conflict(format!("agent `{name}` exists already; PUT /agents/{name} updates it")));
    }
    let spec = baton_core::config::agent_from_json(&plan, &body).map_err(config_error)?;
    let name = spec.name.clone();
    state.engine().add_agent(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(find_agent(&state, &name).await?)).into_response())
}

/// Replaces an agent's configuration; it restarts when how it runs changed.
#[utoipa::path(put, path = "/agents/{name}", tag = "agents", params(("name" = String, Path, description = "the agent's name")),
    request_body(content = Object, description = "an [[agents]] entry of baton.toml, as JSON"),
    responses((status = 200, body = AgentInfo), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn update_agent(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
    Body(mut body): Body<serde_json::Value>,
) -> Result<Response, ApiError> {
    caller.require(Action::ManageAgents)?;
    let plan = state.plan();
    if plan.agent(&name).is_none() {
        return Err(ApiError::not_found(format!("no agent `{name}` in this run")));
    }
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    match fields.get("name") {
        None => {
            fields.insert("name".into(), serde_json::Value::String(name.clone()));
        }
        Some(serde_json::Value::String(given)) if *given == name => {}
        Some(_) => return Err(ApiError::bad_request(format!("`name` must be `{name}`, as in the path, or absent"))),
    }
    let spec = baton_core::config::agent_update_from_json(&plan, &body).map_err(config_error)?;
    state.engine().update_agent(spec).await?;
    Ok(json(find_agent(&state, &name).await?))
}

/// Removes an agent from the running plan; its running tasks go back to the queue.
#[utoipa::path(delete, path = "/agents/{name}", tag = "agents", params(("name" = String, Path, description = "the agent's name")),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_agent(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    caller.require(Action::ManageAgents)?;
    find_agent(&state, &name).await?;
    state.engine().remove_agent(name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

macro_rules! agent_command {
    ($fn_name:ident, $method:ident, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "agents", params(("name" = String, Path, description = "the agent's name")),
            responses((status = 200, body = AgentInfo), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
        pub async fn $fn_name(
            State(state): State<AppState>,
            caller: Extension<Caller>,
            PathParams(name): PathParams<String>,
        ) -> Result<Response, ApiError> {
            caller.require(Action::ManageAgents)?;
            find_agent(&state, &name).await?;
            state.engine().$method(name.clone()).await?;
            Ok(json(find_agent(&state, &name).await?))
        }
    };
}

agent_command!(start_agent, start_agent, "/agents/{name}/start", "Starts a stopped agent.");
agent_command!(
    stop_agent,
    stop_agent,
    "/agents/{name}/stop",
    "Stops an agent; its running tasks go back to the queue."
);
agent_command!(restart_agent, restart_agent, "/agents/{name}/restart", "Restarts an agent.");

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
    if caller.require(Action::ReadAgentLogs)? == Grant::Own {
        own_only(&caller, Some(&name), "log")?;
    }
    find_agent(&state, &name).await?;
    let path = state.log_dir().join(format!("{name}.log"));
    crate::live::log_response(state.clone(), path, query.tail_bytes.unwrap_or(64 * 1024), query.follow.unwrap_or(false))
        .await
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only entries with a greater id.
    pub since_id: Option<i64>,
    pub actor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
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
    caller.require(Action::Administer)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let entries: Vec<AuditEntry> = state
        .store()
        .audit(&AuditQuery { since_id: params.since_id, actor: params.actor, limit: Some(limit), newest_first: true })
        .await?;
    Ok(json(entries))
}
