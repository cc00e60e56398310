//! A2A 1.0 over the operations layer: the plan served as an A2A agent (its Agent Card at
//! `/.well-known/agent-card.json`, the JSON-RPC binding at `POST /a2a`), and each agent of the
//! plan served alone (`/a2a/agents/{name}/.well-known/agent-card.json`, `POST
//! /a2a/agents/{name}`: its messages become tasks pinned to that agent, and it sees only its
//! tasks).
//!
//! An A2A message is a Baton task: its text parts give the title (the first line) and the
//! description, its data parts the input, and the plan's routing picks the agent (or the
//! agent the endpoint serves). An A2A task *is* the Baton task (its id is the task's id);
//! its state, result (an artifact) and failure (the status message) are read from the store,
//! and the streams follow the run's events ([`baton_ops::Ops::follow_events`]). Who may do
//! what is the operations layer's table: `SendMessage` needs `CreateTasks`, `GetTask`,
//! `ListTasks` and the streams `ReadTasks`, `CancelTask` `ControlTasks`. A follow-up message
//! (with the `taskId` of a task whose terminal agent waits for input, `INPUT_REQUIRED`) is
//! typed into that agent's terminal ([`baton_ops::Ops::answer_task_input`], `ManageAgents`).
//!
//! The wire shapes are ProtoJSON of the A2A 1.0 proto (`camelCase` fields, enums by their
//! proto names such as `TASK_STATE_COMPLETED`), written here as `serde_json` values: the
//! protocol is data we translate at the edge, not a model of our own.

pub mod push;

use std::convert::Infallible;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use baton_core::EventKind;
use baton_core::config::{AgentSpec, Plan};
use baton_core::model::{TaskId, TaskRecord, TaskState};
use baton_ops::events::EventFilter;
use baton_ops::tasks::{CancelInput, TaskInput, TaskQuery};
use baton_ops::{ErrorKind, Ops};

use crate::auth::Caller;
use crate::live::token_expiry;
use crate::{ApiError, AppState};

/// The protocol version served, as the card's interfaces and the `A2A-Version` header say it.
pub const PROTOCOL_VERSION: &str = "1.0";
/// The header (or query parameter) in which a client names the protocol version it speaks.
pub const VERSION_HEADER: &str = "A2A-Version";

/// The routes: the cards are open to all (a client reads them before it has a token, as the
/// spec has it); the JSON-RPC endpoints are behind the gate like every other endpoint.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/agent-card.json", get(plan_card))
        .route("/a2a", post(plan_rpc))
        .route("/a2a/agents/{name}/.well-known/agent-card.json", get(agent_card))
        .route("/a2a/agents/{name}", post(agent_rpc))
}

/// Whether `path` is an Agent Card, which a client may read without a token.
pub fn is_card_path(path: &str) -> bool {
    path == "/.well-known/agent-card.json"
        || path.strip_prefix("/a2a/agents/").is_some_and(|rest| rest.ends_with("/.well-known/agent-card.json"))
}

// ---------------------------------------------------------------------------------------------
// Agent Cards.

/// The URL clients reach this server at: the host they asked for, with the scheme of the
/// server's url (`server.url` may name port 0 when the server picked its port).
fn base_url(plan: &Plan, headers: &HeaderMap) -> String {
    let scheme = if plan.server.url.starts_with("https://") { "https" } else { "http" };
    match headers.get(header::HOST).and_then(|host| host.to_str().ok()) {
        Some(host) if !host.is_empty() => format!("{scheme}://{host}"),
        _ => plan.server.url.trim_end_matches('/').to_string(),
    }
}

fn skill(agent: &AgentSpec) -> Value {
    let mut description =
        if agent.role.is_empty() { format!("Baton agent `{}`", agent.name) } else { agent.role.clone() };
    for objective in &agent.objectives {
        description.push_str("\n- ");
        description.push_str(&objective.description);
    }
    let tags = if agent.capabilities.is_empty() { vec![agent.name.clone()] } else { agent.capabilities.clone() };
    json!({ "id": agent.name, "name": agent.name, "description": description, "tags": tags })
}

fn card(plan: &Plan, name: &str, description: String, url: String, skills: Vec<Value>) -> Value {
    let mut card = json!({
        "name": name,
        "description": description,
        "version": env!("CARGO_PKG_VERSION"),
        "supportedInterfaces": [{ "url": url, "protocolBinding": "JSONRPC", "protocolVersion": PROTOCOL_VERSION }],
        "provider": { "organization": "Baton", "url": "https://github.com/baton-rs/baton" },
        "capabilities": { "streaming": true, "pushNotifications": !plan.a2a.push_hosts.is_empty() },
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": skills,
    });
    if plan.auth.is_some() {
        card["securitySchemes"] = json!({
            "bearer": { "httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "bearerFormat": "JWT",
                "description": "a Baton token (`baton token create --role operator`)",
            } }
        });
        card["securityRequirements"] = json!([{ "schemes": { "bearer": { "list": [] } } }]);
    }
    card
}

/// `GET /.well-known/agent-card.json`: the plan as one A2A agent, a skill per agent.
#[utoipa::path(get, path = "/.well-known/agent-card.json", tag = "a2a", security(()),
    responses((status = 200, description = "the plan's A2A Agent Card (A2A 1.0, ProtoJSON)", body = Object)))]
pub async fn plan_card(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let plan = state.plan();
    let skills = plan.agents.iter().map(skill).collect();
    let description = format!(
        "Baton plan `{}`: a message becomes a task, routed to an agent with the capabilities it needs",
        plan.name
    );
    let url = format!("{}/a2a", base_url(&plan, &headers));
    axum::Json(card(&plan, &plan.name, description, url, skills)).into_response()
}

/// `GET /a2a/agents/{name}/.well-known/agent-card.json`: one agent of the plan alone.
#[utoipa::path(get, path = "/a2a/agents/{name}/.well-known/agent-card.json", tag = "a2a", security(()),
    params(("name" = String, Path, description = "an agent of the plan")),
    responses((status = 200, description = "the agent's A2A Agent Card", body = Object),
        (status = 404, description = "no such agent in the plan", body = crate::error::ErrorBody)))]
pub async fn agent_card(State(state): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let plan = state.plan();
    let Some(agent) = plan.agent(&name) else {
        return ApiError::not_found(format!("no agent `{name}` in this plan")).into_response();
    };
    let description = if agent.role.is_empty() { format!("Baton agent `{name}`") } else { agent.role.clone() };
    let url = format!("{}/a2a/agents/{name}", base_url(&plan, &headers));
    axum::Json(card(&plan, &name, description, url, vec![skill(agent)])).into_response()
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC.

/// JSON-RPC and A2A error codes (A2A 1.0, section 5.4).
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
    /// The JSON-RPC server-error code A2A leaves to implementations: Baton answers a refused
    /// caller, a full store and an unavailable engine with it, the reason in `data`.
    pub const SERVER: i64 = -32000;
    pub const TASK_NOT_FOUND: i64 = -32001;
    pub const TASK_NOT_CANCELABLE: i64 = -32002;
    pub const PUSH_NOTIFICATION_NOT_SUPPORTED: i64 = -32003;
    pub const UNSUPPORTED_OPERATION: i64 = -32004;
    pub const CONTENT_TYPE_NOT_SUPPORTED: i64 = -32005;
    pub const EXTENDED_CARD_NOT_CONFIGURED: i64 = -32007;
    pub const VERSION_NOT_SUPPORTED: i64 = -32009;
}

/// A JSON-RPC error: a code, a message and, for Baton's own reasons, a `google.rpc.ErrorInfo`.
#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
    reason: Option<&'static str>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into(), reason: None }
    }

    fn invalid(message: impl Into<String>) -> RpcError {
        RpcError::new(code::INVALID_PARAMS, message)
    }

    fn task_not_found(id: &str) -> RpcError {
        RpcError::new(code::TASK_NOT_FOUND, format!("no task `{id}` here"))
    }

    fn body(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(reason) = self.reason {
            error["data"] = json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "baton",
            }]);
        }
        error
    }
}

/// The one table from an operation's error kind to a JSON-RPC error.
impl From<baton_ops::Error> for RpcError {
    fn from(error: baton_ops::Error) -> RpcError {
        let message = error.message().to_string();
        let (code, reason) = match error.kind() {
            ErrorKind::Invalid | ErrorKind::Conflict => (code::INVALID_PARAMS, None),
            ErrorKind::NotFound => (code::TASK_NOT_FOUND, None),
            ErrorKind::Forbidden => (code::SERVER, Some("PERMISSION_DENIED")),
            ErrorKind::Full => (code::SERVER, Some("RESOURCE_EXHAUSTED")),
            ErrorKind::Unavailable => (code::SERVER, Some("UNAVAILABLE")),
            ErrorKind::Internal => (code::INTERNAL, None),
        };
        RpcError { code, message, reason }
    }
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

fn rpc_error(id: &Value, error: &RpcError) -> Response {
    axum::Json(json!({ "jsonrpc": "2.0", "id": id, "error": error.body() })).into_response()
}

/// Which agent an endpoint serves: the whole plan, or one agent alone.
#[derive(Clone)]
struct Scope {
    agent: Option<String>,
}

/// `POST /a2a`: A2A 1.0's JSON-RPC binding for the plan: `SendMessage`,
/// `SendStreamingMessage`, `GetTask`, `ListTasks`, `CancelTask`, `SubscribeToTask` and the push
/// notification config methods. Every answer is `200`, a JSON-RPC response (errors included),
/// or for the streaming methods Server-Sent Events each holding one; the request must say
/// `A2A-Version: 1.0`.
#[utoipa::path(post, path = "/a2a", tag = "a2a",
    params(("A2A-Version" = Option<String>, Header, description = "the protocol version the client speaks: `1.0`")),
    request_body(content = Object, content_type = "application/json", description = "a JSON-RPC 2.0 request"),
    responses((status = 200, description = "a JSON-RPC response, or for a streaming method `text/event-stream` of them",
            content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 403, description = "sent from a page of another site (`Origin`)", body = Object)))]
pub async fn plan_rpc(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    rpc(state, caller.0, Scope { agent: None }, &headers, &uri, &body).await
}

/// `POST /a2a/agents/{name}`: the JSON-RPC binding for one agent: its messages become tasks
/// pinned to it, and it sees only its tasks.
#[utoipa::path(post, path = "/a2a/agents/{name}", tag = "a2a",
    params(("name" = String, Path, description = "an agent of the plan"),
        ("A2A-Version" = Option<String>, Header, description = "the protocol version the client speaks: `1.0`")),
    request_body(content = Object, content_type = "application/json", description = "a JSON-RPC 2.0 request"),
    responses((status = 200, description = "a JSON-RPC response, or for a streaming method `text/event-stream` of them",
            content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 403, description = "sent from a page of another site (`Origin`)", body = Object),
        (status = 404, description = "no such agent in the plan", body = crate::error::ErrorBody)))]
pub async fn agent_rpc(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if state.plan().agent(&name).is_none() {
        return ApiError::not_found(format!("no agent `{name}` in this plan")).into_response();
    }
    rpc(state, caller.0, Scope { agent: Some(name) }, &headers, &uri, &body).await
}

/// The protocol version the client speaks: the header, else the query parameter; none means
/// 0.3 (the spec's rule for clients that predate the header).
fn check_version(headers: &HeaderMap, uri: &Uri) -> Result<(), RpcError> {
    let from_query = uri.query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            key.eq_ignore_ascii_case(VERSION_HEADER).then(|| value.to_string())
        })
    });
    let version = headers
        .get(VERSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_string())
        .or(from_query)
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| "0.3".to_string());
    let mut numbers = version.split('.');
    if numbers.next() == Some("1") && numbers.next().is_none_or(|minor| minor == "0") {
        return Ok(());
    }
    Err(RpcError::new(
        code::VERSION_NOT_SUPPORTED,
        format!(
            "A2A version {version} is not supported: this agent speaks {PROTOCOL_VERSION}; send `{VERSION_HEADER}: {PROTOCOL_VERSION}`"
        ),
    ))
}

async fn rpc(state: AppState, caller: Caller, scope: Scope, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Response {
    // A page of another site may not send messages or cancel tasks through the visitor's
    // browser (the body is read whatever its content type, so no preflight stops it).
    if let Some(origin) = crate::mcp::foreign_origin(&state, headers) {
        let error = RpcError::new(
            code::INVALID_REQUEST,
            format!(
                "Origin `{origin}` is not this server's: /a2a serves pages of localhost and of server.url's host only"
            ),
        );
        let mut response = rpc_error(&Value::Null, &error);
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            return rpc_error(&Value::Null, &RpcError::new(code::PARSE_ERROR, format!("invalid JSON: {error}")));
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let valid_id = matches!(id, Value::Null | Value::String(_) | Value::Number(_));
    let method = request.get("method").and_then(Value::as_str);
    let (Some(method), true, Some("2.0")) = (method, valid_id, request.get("jsonrpc").and_then(Value::as_str)) else {
        let error = RpcError::new(
            code::INVALID_REQUEST,
            "not a JSON-RPC 2.0 request: it needs `\"jsonrpc\": \"2.0\"`, a string `method` and a string or number `id`",
        );
        return rpc_error(if valid_id { &id } else { &Value::Null }, &error);
    };
    if let Err(error) = check_version(headers, uri) {
        return rpc_error(&id, &error);
    }
    let params = match request.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params.clone(),
        Some(_) => return rpc_error(&id, &RpcError::invalid("`params` must be an object")),
    };
    let handler = Handler { ops: state.ops().clone(), caller, scope, shutdown: state.shutdown().clone(), state };
    let answer = match method {
        "SendMessage" => handler.send_message(&params).await,
        "GetTask" => handler.get_task(&params).await,
        "ListTasks" => handler.list_tasks(&params).await,
        "CancelTask" => handler.cancel_task(&params).await,
        "SendStreamingMessage" => {
            return match handler.send_streaming_message(&params).await {
                Ok(stream) => sse(id, stream),
                Err(error) => rpc_error(&id, &error),
            };
        }
        "SubscribeToTask" => {
            return match handler.subscribe(&params).await {
                Ok(stream) => sse(id, stream),
                Err(error) => rpc_error(&id, &error),
            };
        }
        "CreateTaskPushNotificationConfig" => handler.create_push_config(&params).await,
        "GetTaskPushNotificationConfig" => handler.get_push_config(&params).await,
        "ListTaskPushNotificationConfigs" => handler.list_push_configs(&params).await,
        "DeleteTaskPushNotificationConfig" => handler.delete_push_config(&params).await,
        "GetExtendedAgentCard" => Err(RpcError::new(
            code::EXTENDED_CARD_NOT_CONFIGURED,
            "this agent has no extended card: its card is at /.well-known/agent-card.json",
        )),
        other => Err(RpcError::new(code::METHOD_NOT_FOUND, format!("no method `{other}` in A2A {PROTOCOL_VERSION}"))),
    };
    let mut response = match answer {
        Ok(result) => axum::Json(rpc_result(&id, result)).into_response(),
        Err(error) => rpc_error(&id, &error),
    };
    let method: String = method.chars().take(100).collect();
    response.extensions_mut().insert(crate::AuditDetail(json!({ "a2a": method })));
    response
}

/// A stream of `StreamResponse`s as Server-Sent Events, each a JSON-RPC response.
fn sse(id: Value, stream: ReceiverStream<Value>) -> Response {
    let events = stream.map(move |result| {
        let data = serde_json::to_string(&rpc_result(&id, result)).unwrap_or_default();
        Ok::<_, Infallible>(SseEvent::default().data(data))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// Deletes from the store the configs of the tasks that made room in the registry.
async fn forget_evicted(ops: &Ops, registry: &push::Registry) {
    for task in registry.take_evicted() {
        let configs = ops.store().push_configs(Some(task)).await.unwrap_or_default();
        for config in configs {
            if let Err(error) = ops.store().delete_push_config(task, &config.id).await {
                tracing::warn!(%task, %error, "an evicted A2A push config stays in the store");
            }
        }
    }
}

/// Loads the push configs the store kept (a restart) for the run's tasks, once per server:
/// each webhook is checked against `[a2a] push_hosts` again (one no longer allowed is left
/// out, with a warning), and each unfinished task with configs is followed from now on as the
/// client that set its first config reads it (its role, agent and endpoint, until its token
/// expires), as it was while the server ran. A config whose token has expired is dropped; one
/// whose owner may no longer read its task is left out. The configs of finished tasks are
/// dropped.
pub async fn restore_push_configs(state: &AppState) {
    let registry = std::sync::Arc::clone(state.a2a_pushes());
    if !registry.start_restoring() {
        return;
    }
    let ops = state.ops().clone();
    let records = match ops.store().push_configs(None).await {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!(%error, "cannot read the A2A push configs kept in the store");
            return;
        }
    };
    let plan = state.plan();
    let check = |url: &str| {
        baton_runtime::a2a::push::check_url(url, |host, port| plan.a2a.allows_push(host, port), &plan.a2a.push_hosts)
            .map_err(|error| error.to_string())
    };
    let discard = |task: TaskId, id: String, why: &'static str| {
        let ops = ops.clone();
        async move {
            if let Err(error) = ops.store().delete_push_config(task, &id).await {
                tracing::warn!(%task, config = %id, %error, why, "cannot drop a kept A2A push config");
            }
        }
    };
    let mut n = 0;
    for record in records {
        let task = record.task;
        match ops.store().task(task).await {
            // A finished task's webhooks had its last update: they are not sent it again, and
            // its configs are dropped from the store.
            Ok(Some(found)) if found.run_id == ops.run_id() && found.state.is_terminal() => {
                discard(task, record.id, "its task has ended").await;
                continue;
            }
            Ok(Some(found)) if found.run_id == ops.run_id() => {}
            // Another run's task: its configs are that run's.
            _ => continue,
        }
        let id = record.id.clone();
        let config = match push::Config::from_record(record, check) {
            Ok(config) => config,
            Err(why) => {
                tracing::warn!(%task, config = %id, why, "a kept A2A push config is not taken");
                continue;
            }
        };
        if config.reader.expired(crate::auth::unix_now()) {
            tracing::info!(%task, config = %id, "a kept A2A push config is dropped: the token that set it has expired");
            discard(task, id, "its token has expired").await;
            continue;
        }
        // Read as its owner: a webhook hears no more than the client that set it may read now.
        let handler = Handler {
            ops: ops.clone(),
            caller: config.reader.caller.clone(),
            scope: Scope { agent: config.reader.scope.clone() },
            shutdown: state.shutdown().clone(),
            state: state.clone(),
        };
        if let Err(error) = handler.read(task).await {
            tracing::warn!(%task, config = %id, error = %error.message,
                "a kept A2A push config is not taken: the client that set it may no longer read its task");
            continue;
        }
        let Ok(since) = ops.latest_event().await else { return };
        match registry.set(config, true) {
            Ok(true) => match handler.stream(task, since).await {
                Ok(updates) => {
                    let (registry, shutdown) = (std::sync::Arc::clone(&registry), state.shutdown().clone());
                    tokio::spawn(async move { registry.follow(task, updates, shutdown).await });
                }
                Err(error) => {
                    registry.follow(task, futures::stream::empty(), state.shutdown().clone()).await;
                    tracing::warn!(%task, error = %error.message, "cannot follow a task for its push configs")
                }
            },
            Ok(false) => {}
            Err(refused) => tracing::warn!(%task, config = %id, ?refused, "a kept A2A push config is not taken"),
        }
        n += 1;
    }
    forget_evicted(&ops, &registry).await;
    if n > 0 {
        tracing::info!(configs = n, "A2A push configs loaded from the store");
    }
}

// ---------------------------------------------------------------------------------------------
// Methods.

struct Handler {
    ops: Ops,
    caller: Caller,
    scope: Scope,
    shutdown: tokio_util::sync::CancellationToken,
    state: AppState,
}

/// At most this many tasks in a `ListTasks` page (the spec's default is 50).
const MAX_PAGE_SIZE: usize = 100;
const DEFAULT_PAGE_SIZE: usize = 50;

impl Handler {
    async fn send_message(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let return_immediately =
            params.get("configuration").and_then(|c| c.get("returnImmediately")).and_then(Value::as_bool) == Some(true);
        let history_length = history_length(params.get("configuration").and_then(|c| c.get("historyLength")))?;
        if let Some((task_id, text)) = follow_up(params)? {
            let task = self.answer(&task_id, &text).await?;
            return Ok(json!({ "task": self.shown(&task, history_length).await }));
        }
        let push = self.message_push_config(params)?;
        let since = self.ops.latest_event().await?;
        let id = self.create(params).await?;
        if let Some(push) = push {
            self.set_push_config(id, &push, since).await?;
        }
        // An agent's token may make a task that another agent runs, and not read it: it gets
        // the task as made, at once (waiting would follow events it may not see).
        match self.read(id).await {
            Err(error) if error.reason == Some("PERMISSION_DENIED") => {
                return Ok(json!({ "task": self.made_only(id, params) }));
            }
            Err(error) => return Err(error),
            Ok(_) => {}
        }
        if !return_immediately {
            // Blocking by default: the answer is the task once it has ended, or once it waits
            // for input (an interrupted state, as the specification has it).
            let mut updates = self.follow(id, since).await?;
            if !updates.waiting {
                while let Some(update) = updates.next().await {
                    if update.waiting {
                        break;
                    }
                }
            }
        }
        let task = self.read(id).await?;
        Ok(json!({ "task": self.shown(&task, history_length).await }))
    }

    /// A task as an A2A `Task`, with its artifacts; a task whose terminal agent waits for an
    /// answer is `TASK_STATE_INPUT_REQUIRED`, its question in the status message.
    async fn shown(&self, task: &TaskRecord, history_length: Option<usize>) -> Value {
        let waits = self.ops.task_waits_for_input(task).await.unwrap_or(false);
        task_shown(task, history_length, true, waits)
    }

    /// A follow-up message to task `task_id`: its text answers the question the task waits on
    /// (typed into its terminal agent, [`Ops::answer_task_input`]). A task the caller cannot
    /// read is not found; one that has ended, or does not wait for input, takes no message.
    async fn answer(&self, task_id: &str, text: &str) -> Result<TaskRecord, RpcError> {
        let id = self.task_id(Some(&json!(task_id)))?;
        let task = self.read(id).await.map_err(|error| {
            if error.reason == Some("PERMISSION_DENIED") { RpcError::task_not_found(task_id) } else { error }
        })?;
        if is_terminal(task.state) {
            return Err(RpcError::new(
                code::UNSUPPORTED_OPERATION,
                format!(
                    "task {id} has ended ({}): it takes no more messages; send a new message without `taskId`",
                    state_name(task.state)
                ),
            ));
        }
        self.ops.answer_task_input(&self.caller, id, text).await.map_err(|error| match error.kind() {
            ErrorKind::Conflict => RpcError::new(
                code::UNSUPPORTED_OPERATION,
                format!(
                    "{}: a Baton task takes a message only while it waits for input (TASK_STATE_INPUT_REQUIRED)",
                    error.message()
                ),
            ),
            _ => RpcError::from(error),
        })
    }

    /// A task the caller made but may not read, as much as it knows of it.
    fn made_only(&self, id: TaskId, params: &Map<String, Value>) -> Value {
        let context = params
            .get("message")
            .and_then(|message| message.get("contextId"))
            .and_then(Value::as_str)
            .filter(|context| !context.is_empty())
            .map_or_else(|| self.ops.run_id().to_string(), str::to_string);
        json!({ "id": id.to_string(), "contextId": context, "status": { "state": "TASK_STATE_SUBMITTED" } })
    }

    async fn send_streaming_message(&self, params: &Map<String, Value>) -> Result<ReceiverStream<Value>, RpcError> {
        if let Some((task_id, text)) = follow_up(params)? {
            let since = self.ops.latest_event().await?;
            let task = self.answer(&task_id, &text).await?;
            return self.stream(task.id, since).await;
        }
        let push = self.message_push_config(params)?;
        let since = self.ops.latest_event().await?;
        let id = self.create(params).await?;
        if let Some(push) = push {
            self.set_push_config(id, &push, since).await?;
        }
        self.stream(id, since).await
    }

    async fn subscribe(&self, params: &Map<String, Value>) -> Result<ReceiverStream<Value>, RpcError> {
        let id = self.task_id(params.get("id"))?;
        let since = self.ops.latest_event().await?;
        let task = self.read(id).await?;
        if is_terminal(task.state) {
            return Err(RpcError::new(
                code::UNSUPPORTED_OPERATION,
                format!("task {id} has ended ({}); read it with GetTask", state_name(task.state)),
            ));
        }
        self.stream(id, since).await
    }

    async fn get_task(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let id = self.task_id(params.get("id"))?;
        let history_length = history_length(params.get("historyLength"))?;
        Ok(self.shown(&self.read(id).await?, history_length).await)
    }

    async fn cancel_task(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let id = self.task_id(params.get("id"))?;
        // Who may cancel is decided before whether the task can be: a viewer learns nothing
        // of a task's state from a refusal.
        self.caller.require(baton_ops::Action::ControlTasks)?;
        let task = self.read(id).await?;
        if is_terminal(task.state) {
            return Err(RpcError::new(
                code::TASK_NOT_CANCELABLE,
                format!("task {id} has ended ({}) and cannot be canceled", state_name(task.state)),
            ));
        }
        let reason = Some(format!("canceled over A2A by {}", self.caller.subject));
        let task = self.ops.cancel_task(&self.caller, id, CancelInput { reason }).await?;
        Ok(task_json(&task, None, true))
    }

    /// `ListTasks`: the run's tasks (the endpoint's agent's only), newest first, filtered by
    /// context and state, a page at a time; `pageToken` is the last id of the previous page.
    async fn list_tasks(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let context = params.get("contextId").and_then(Value::as_str).filter(|context| !context.is_empty());
        let status = match params.get("status").and_then(Value::as_str) {
            None | Some("TASK_STATE_UNSPECIFIED") => None,
            Some(status) if STATE_NAMES.contains(&status) => Some(status),
            Some(other) => {
                return Err(RpcError::invalid(format!(
                    "`status`: unknown state `{other}`; expected one of {}",
                    STATE_NAMES.join(", ")
                )));
            }
        };
        let page_size = match params.get("pageSize") {
            None => DEFAULT_PAGE_SIZE,
            Some(size) => match size.as_u64() {
                Some(size @ 1..) => (size as usize).min(MAX_PAGE_SIZE),
                _ => return Err(RpcError::invalid("`pageSize` must be a number from 1 to 100")),
            },
        };
        let before = match params.get("pageToken").and_then(Value::as_str).filter(|token| !token.is_empty()) {
            None => None,
            Some(token) => {
                Some(token.parse::<i64>().map_err(|_| RpcError::invalid("`pageToken` is not one this server gave"))?)
            }
        };
        let history_length = history_length(params.get("historyLength"))?;
        let include_artifacts = params.get("includeArtifacts").and_then(Value::as_bool).unwrap_or(false);

        let mut matching = self.all_tasks().await?;
        // A running task whose terminal agent waits for an answer is input-required.
        let waiting = self.ops.agents_waiting_for_input().await?;
        let waits = |task: &TaskRecord| {
            task.state == TaskState::Running
                && task.assigned_agent.as_ref().is_some_and(|agent| waiting.contains(agent))
        };
        let shown_state = |task: &TaskRecord| if waits(task) { INPUT_REQUIRED } else { state_name(task.state) };
        matching.retain(|task| {
            context.is_none_or(|context| context_id(task) == context)
                && status.is_none_or(|status| shown_state(task) == status)
        });
        matching.sort_by_key(|task| std::cmp::Reverse(task.id));
        let total_size = matching.len();
        let page: Vec<&TaskRecord> =
            matching.iter().filter(|task| before.is_none_or(|before| task.id.0 < before)).take(page_size).collect();
        let next_page_token = match page.last() {
            Some(last) if matching.iter().any(|task| task.id.0 < last.id.0) => last.id.0.to_string(),
            _ => String::new(),
        };
        let tasks: Vec<Value> =
            page.iter().map(|task| task_shown(task, history_length, include_artifacts, waits(task))).collect();
        Ok(json!({ "tasks": tasks, "nextPageToken": next_page_token, "pageSize": page_size, "totalSize": total_size }))
    }

    // -----------------------------------------------------------------------------------------
    // Push notifications (see [`push`]).

    /// `configuration.taskPushNotificationConfig` of a message (`pushNotificationConfig`, its
    /// name before 1.0, is read too), checked before the task is made.
    fn message_push_config(&self, params: &Map<String, Value>) -> Result<Option<Map<String, Value>>, RpcError> {
        let configuration = params.get("configuration");
        let config =
            configuration.and_then(|c| c.get("taskPushNotificationConfig").or_else(|| c.get("pushNotificationConfig")));
        match config {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(config)) => {
                self.webhook(config)?;
                Ok(Some(config.clone()))
            }
            Some(_) => Err(RpcError::invalid("`configuration.taskPushNotificationConfig` must be an object")),
        }
    }

    /// The webhook a config names, if this server may post to it.
    fn webhook(&self, config: &Map<String, Value>) -> Result<baton_runtime::a2a::push::Webhook, RpcError> {
        let plan = self.state.plan();
        let hosts = &plan.a2a.push_hosts;
        if hosts.is_empty() {
            return Err(RpcError::new(
                code::PUSH_NOTIFICATION_NOT_SUPPORTED,
                "this server sends no push notifications ([a2a] push_hosts is empty): follow the task with SubscribeToTask or poll GetTask",
            ));
        }
        let url =
            push::string(config, "url").ok_or_else(|| RpcError::invalid("the push config's `url` is required"))?;
        let url = baton_runtime::a2a::push::check_url(&url, |host, port| plan.a2a.allows_push(host, port), hosts)
            .map_err(|error| RpcError::invalid(error.to_string()))?;
        let authentication = config.get("authentication");
        let scheme =
            authentication.and_then(|auth| auth.get("scheme")).and_then(Value::as_str).filter(|s| !s.is_empty());
        let credentials =
            authentication.and_then(|auth| auth.get("credentials")).and_then(Value::as_str).filter(|c| !c.is_empty());
        let authorization = scheme.zip(credentials).map(|(scheme, credentials)| format!("{scheme} {credentials}"));
        Ok(baton_runtime::a2a::push::Webhook { url, token: push::string(config, "token"), authorization })
    }

    /// Keeps a config for task `id` and, if the task is not followed yet, follows it from the
    /// event after `since`.
    async fn set_push_config(&self, id: TaskId, config: &Map<String, Value>, since: i64) -> Result<Value, RpcError> {
        // Only those who may make tasks may make the server post to a webhook.
        self.caller.require(baton_ops::Action::CreateTasks)?;
        let webhook = self.webhook(config)?;
        let scheme = config
            .get("authentication")
            .and_then(|auth| auth.get("scheme"))
            .and_then(Value::as_str)
            .filter(|scheme| !scheme.is_empty())
            .map(str::to_string);
        let config_id = push::string(config, "id").unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let owner = self.caller.token_id.clone();
        let reader = push::Reader { caller: self.caller.clone(), scope: self.scope.agent.clone() };
        let config = push::Config { id: config_id, task_id: id, webhook, scheme, owner, reader };
        let answer = config.to_json(true);
        let registry = std::sync::Arc::clone(self.state.a2a_pushes());
        let record = config.to_record();
        let owner = record.owner.clone();
        let start = registry.set(config, self.is_admin()).map_err(|refused| self.push_refusal(id, refused))?;
        // Kept in the store too, so that a restarted server still delivers to it.
        forget_evicted(&self.ops, &registry).await;
        let config_id = record.id.clone();
        if let Err(error) = self.ops.store().put_push_config(record).await {
            let _ = registry.delete(id, &config_id, &owner, true);
            return Err(RpcError::from(baton_ops::Error::from(error)));
        }
        if start {
            match self.stream(id, since).await {
                Ok(updates) => {
                    let shutdown = self.shutdown.clone();
                    tokio::spawn(async move { registry.follow(id, updates, shutdown).await });
                }
                Err(error) => {
                    registry.follow(id, futures::stream::empty(), self.shutdown.clone()).await;
                    return Err(error);
                }
            }
        }
        Ok(answer)
    }

    fn is_admin(&self) -> bool {
        self.caller.role == baton_ops::Role::Admin
    }

    /// Whether the caller set `config` (or is an admin): only then is its `token` shown.
    fn owns(&self, config: &push::Config) -> bool {
        self.is_admin() || config.owner == self.caller.token_id
    }

    fn push_refusal(&self, id: TaskId, refused: push::Refused) -> RpcError {
        let message = match refused {
            push::Refused::TooManyForTask => {
                format!("task {id} has {} push configs already: delete one first", push::MAX_PER_TASK)
            }
            push::Refused::TooManyForOwner => {
                format!("your token has {} push configs already: delete some first", push::MAX_PER_OWNER)
            }
            push::Refused::Full => "this server holds as many push configs as it can: try again later".to_string(),
            push::Refused::NotYours => {
                return RpcError {
                    code: code::SERVER,
                    message:
                        "this push config was set by another client: only it, or an admin, may change or delete it"
                            .into(),
                    reason: Some("PERMISSION_DENIED"),
                };
            }
        };
        RpcError { code: code::SERVER, message, reason: Some("RESOURCE_EXHAUSTED") }
    }

    /// The task a push config request names (`taskId`), if the caller may read it.
    async fn push_task(&self, params: &Map<String, Value>) -> Result<TaskId, RpcError> {
        let id = self.task_id(params.get("taskId"))?;
        self.read(id).await?;
        Ok(id)
    }

    async fn create_push_config(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        // 0.3 clients wrapped the config; 1.0 sends it as the params.
        let config = match params.get("pushNotificationConfig") {
            Some(Value::Object(inner)) => inner.clone(),
            _ => params.clone(),
        };
        // A server that pushes nothing says so before it looks for the task.
        self.webhook(&config)?;
        let since = self.ops.latest_event().await?;
        let id = self.push_task(params).await?;
        self.set_push_config(id, &config, since).await
    }

    async fn get_push_config(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let task_id = self.push_task(params).await?;
        let id = push::string(params, "id").ok_or_else(|| RpcError::invalid("`id` (the config's) is required"))?;
        let config = self
            .state
            .a2a_pushes()
            .get(task_id, &id)
            .ok_or_else(|| RpcError::invalid(format!("task {task_id} has no push config `{id}`")))?;
        Ok(config.to_json(self.owns(&config)))
    }

    async fn list_push_configs(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let task_id = self.push_task(params).await?;
        let configs: Vec<Value> =
            self.state.a2a_pushes().list(task_id).iter().map(|config| config.to_json(self.owns(config))).collect();
        Ok(json!({ "configs": configs, "nextPageToken": "" }))
    }

    async fn delete_push_config(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let task_id = self.push_task(params).await?;
        self.caller.require(baton_ops::Action::CreateTasks)?;
        let id = push::string(params, "id").ok_or_else(|| RpcError::invalid("`id` (the config's) is required"))?;
        let deleted = self
            .state
            .a2a_pushes()
            .delete(task_id, &id, &self.caller.token_id, self.is_admin())
            .map_err(|refused| self.push_refusal(task_id, refused))?;
        if !deleted {
            return Err(RpcError::invalid(format!("task {task_id} has no push config `{id}`")));
        }
        self.ops.store().delete_push_config(task_id, &id).await.map_err(baton_ops::Error::from)?;
        Ok(Value::Null)
    }

    // -----------------------------------------------------------------------------------------

    /// Every task of the run the caller may list (the endpoint's agent's only).
    async fn all_tasks(&self) -> Result<Vec<TaskRecord>, RpcError> {
        let mut tasks = Vec::new();
        let mut after = None;
        loop {
            let query = TaskQuery { agent: self.scope.agent.clone(), limit: Some(1000), after, ..TaskQuery::default() };
            let page = self.ops.tasks(&self.caller, query).await?;
            tasks.extend(page.tasks);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(tasks),
            }
        }
    }

    /// A task id of the request: a Baton task's id, as a string.
    fn task_id(&self, id: Option<&Value>) -> Result<TaskId, RpcError> {
        let Some(text) = id.and_then(Value::as_str) else {
            return Err(RpcError::invalid("`id` must be a task id (a string)"));
        };
        text.trim().parse::<i64>().map(TaskId).map_err(|_| RpcError::task_not_found(text))
    }

    /// The task, if the caller may read it and it is the endpoint's.
    async fn read(&self, id: TaskId) -> Result<TaskRecord, RpcError> {
        let task = self.ops.task(&self.caller, id).await.map_err(|error| match error.kind() {
            ErrorKind::NotFound => RpcError::task_not_found(&id.to_string()),
            _ => RpcError::from(error),
        })?;
        let task = task.task;
        if let Some(agent) = &self.scope.agent
            && task.agent.as_deref() != Some(agent)
            && task.assigned_agent.as_deref() != Some(agent)
        {
            return Err(RpcError::task_not_found(&id.to_string()));
        }
        Ok(task)
    }

    /// The task a message asks for.
    async fn create(&self, params: &Map<String, Value>) -> Result<TaskId, RpcError> {
        let message = params.get("message").ok_or_else(|| RpcError::invalid("`message` is required"))?;
        let mut input = task_input(message)?;
        input.requires = requires(params.get("metadata"))?;
        if let Some(agent) = &self.scope.agent {
            input.agent = Some(agent.clone());
        }
        Ok(self.ops.create_task(&self.caller, input).await?)
    }

    /// The events about task `id` after `since`, if the caller may read the task. Then it may
    /// read all of the task's events (`Ops::task` gives them), so they are followed whoever
    /// they name: an agent token's own-events filter would hide a cancel, or another agent's
    /// completion, and leave a blocking call waiting for them. The state changes of the agent
    /// that runs the task are followed too: they say when it waits for input.
    async fn follow(&self, id: TaskId, since: i64) -> Result<Updates, RpcError> {
        self.caller.require(baton_ops::Action::ReadEvents)?;
        let task = self.read(id).await?;
        let waiting = self.ops.task_waits_for_input(&task).await.unwrap_or(false);
        // Two filtered follows, not every event of the run: the task's events, and agents'
        // state changes (few), of which `Updates` keeps its agent's.
        let expiry = token_expiry(&self.caller);
        let about_task = EventFilter { task: Some(id.0), ..EventFilter::default() };
        let agent_states = EventFilter { kinds: Some("AgentStateChanged".into()), ..EventFilter::default() };
        let events = futures::stream::select(
            self.ops.follow_events(about_task, since, self.shutdown.clone(), expiry),
            self.ops.follow_events(agent_states, since, self.shutdown.clone(), expiry),
        );
        Ok(Updates {
            ops: self.ops.clone(),
            caller: self.caller.clone(),
            id,
            agent: task.assigned_agent,
            waiting,
            events: Box::pin(events),
            done: false,
        })
    }

    /// The stream of a task: the task, then a status update per change of state (and per
    /// progress report), the result as an artifact before the final status; it closes when the
    /// task ends.
    async fn stream(&self, id: TaskId, since: i64) -> Result<ReceiverStream<Value>, RpcError> {
        let mut updates = self.follow(id, since).await?;
        let first = self.read(id).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let first_json = task_shown(&first, None, true, updates.waiting && first.state == TaskState::Running);
            let mut sent_state = first_json["status"]["state"].as_str().unwrap_or_default().to_string();
            let mut sent_result = first.result.is_some();
            if tx.send(json!({ "task": first_json })).await.is_err() {
                return;
            }
            if is_terminal(first.state) {
                return;
            }
            while let Some(Update { task, progress, waiting }) = updates.next().await {
                let context = context_id(&task);
                if !sent_result && let Some(artifact) = artifact(&task) {
                    sent_result = true;
                    let update = json!({ "artifactUpdate": {
                        "taskId": task.id.to_string(), "contextId": context, "artifact": artifact, "lastChunk": true,
                    } });
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
                let mut status = if waiting { input_required_status(&task) } else { status_json(&task) };
                let state = status["state"].as_str().unwrap_or_default();
                if state != sent_state || progress.is_some() {
                    sent_state = state.to_string();
                    if let Some(text) = progress {
                        status["message"] = agent_message(&task, "progress", &text);
                    }
                    let update = json!({ "statusUpdate": {
                        "taskId": task.id.to_string(), "contextId": context, "status": status,
                    } });
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// A task as its events change it: after each event about it (or about the state of the
/// agent that runs it), the task as it is then, the progress message for a progress report,
/// and whether it waits for input; ends after the task has ended.
struct Updates {
    ops: Ops,
    caller: Caller,
    id: TaskId,
    /// The agent the task was last seen assigned to: its state changes are the task's too.
    agent: Option<String>,
    /// Whether the task waits for input: it runs on a terminal agent that asked a question.
    waiting: bool,
    events: std::pin::Pin<Box<dyn futures::Stream<Item = baton_core::Event> + Send>>,
    done: bool,
}

struct Update {
    task: TaskRecord,
    progress: Option<String>,
    waiting: bool,
}

impl Updates {
    async fn next(&mut self) -> Option<Update> {
        if self.done {
            return None;
        }
        let event = loop {
            let Some(event) = self.events.next().await else {
                self.done = true;
                return None;
            };
            match &event.kind {
                EventKind::AgentStateChanged { agent, to, .. } if self.agent.as_ref() == Some(agent) => {
                    self.waiting = *to == baton_core::model::AgentState::WaitingInput;
                    break event;
                }
                _ if event.kind.task() == Some(self.id) => break event,
                _ => {}
            }
        };
        let progress = match &event.kind {
            EventKind::TaskProgress { message: Some(message), .. } => Some(message.clone()),
            _ => None,
        };
        // The task as it is now: it may have moved on since the event, never back.
        let Ok(detail) = self.ops.task(&self.caller, self.id).await else {
            self.done = true;
            return None;
        };
        let task = detail.task;
        if is_terminal(task.state) {
            self.done = true;
        }
        if task.assigned_agent != self.agent {
            // Another attempt, on another agent (or none). The agent's own state changes come
            // on a stream of their own, and one may have come before this: its state is read.
            self.agent.clone_from(&task.assigned_agent);
            self.waiting = self.ops.task_waits_for_input(&task).await.unwrap_or(false);
        }
        let waiting = self.waiting && task.state == TaskState::Running;
        Some(Update { task, progress, waiting })
    }
}

// ---------------------------------------------------------------------------------------------
// Baton's tasks as A2A's.

/// The A2A states, as ProtoJSON names them.
pub const STATE_NAMES: &[&str] = &[
    "TASK_STATE_SUBMITTED",
    "TASK_STATE_WORKING",
    "TASK_STATE_COMPLETED",
    "TASK_STATE_FAILED",
    "TASK_STATE_CANCELED",
    "TASK_STATE_INPUT_REQUIRED",
    "TASK_STATE_REJECTED",
    "TASK_STATE_AUTH_REQUIRED",
];

/// Baton's task state as A2A's: waiting (pending, ready, and suspended — held until what it
/// waits for upstream recovers) is submitted; the Baton state is in the task's metadata.
pub fn a2a_state(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending | TaskState::Ready | TaskState::Suspended => "TASK_STATE_SUBMITTED",
        TaskState::Running => "TASK_STATE_WORKING",
        TaskState::Succeeded => "TASK_STATE_COMPLETED",
        TaskState::Dead => "TASK_STATE_FAILED",
        TaskState::Cancelled => "TASK_STATE_CANCELED",
    }
}

fn state_name(state: TaskState) -> &'static str {
    a2a_state(state)
}

fn is_terminal(state: TaskState) -> bool {
    matches!(state, TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled)
}

/// What the server keeps of the A2A message in the task's input, under this key: the
/// message's id and its context's.
pub const INPUT_KEY: &str = "a2a";

/// A task's context: the one its message named, else the run's (every task of a run shares
/// it, as the run is the conversation).
fn context_id(task: &TaskRecord) -> String {
    task.input
        .get(INPUT_KEY)
        .and_then(|a2a| a2a.get("contextId"))
        .and_then(Value::as_str)
        .map_or_else(|| task.run_id.clone(), str::to_string)
}

fn timestamp(millis: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

fn agent_message(task: &TaskRecord, what: &str, text: &str) -> Value {
    json!({
        "messageId": format!("baton-task-{}-{what}-{}", task.id, task.updated_at.millis()),
        "contextId": context_id(task),
        "taskId": task.id.to_string(),
        "role": "ROLE_AGENT",
        "parts": [{ "text": text }],
    })
}

/// The state of a running task whose terminal agent waits for an answer.
const INPUT_REQUIRED: &str = "TASK_STATE_INPUT_REQUIRED";

/// The status of a task that waits for input: the state, and what to do as its message.
fn input_required_status(task: &TaskRecord) -> Value {
    json!({
        "state": INPUT_REQUIRED,
        "timestamp": timestamp(task.updated_at.millis()),
        "message": agent_message(task, "input", "the agent waits for an answer: send it as a message with this taskId"),
    })
}

/// A task as an A2A `Task` ([`task_json`]), `TASK_STATE_INPUT_REQUIRED` when it `waits` for
/// an answer.
fn task_shown(task: &TaskRecord, history_length: Option<usize>, with_artifacts: bool, waits: bool) -> Value {
    let mut value = task_json(task, history_length, with_artifacts);
    if waits {
        value["status"] = input_required_status(task);
    }
    value
}

fn status_json(task: &TaskRecord) -> Value {
    let mut status = json!({ "state": a2a_state(task.state), "timestamp": timestamp(task.updated_at.millis()) });
    if let Some(error) = &task.error
        && matches!(task.state, TaskState::Dead | TaskState::Cancelled | TaskState::Suspended)
    {
        status["message"] = agent_message(task, "status", error);
    }
    status
}

/// A value as a part: a string as text, anything else as data.
pub fn part(value: &Value) -> Value {
    match value {
        Value::String(text) => json!({ "text": text }),
        other => json!({ "data": other, "mediaType": "application/json" }),
    }
}

fn artifact(task: &TaskRecord) -> Option<Value> {
    let result = task.result.as_ref()?;
    Some(json!({ "artifactId": format!("baton-task-{}-result", task.id), "name": "result", "parts": [part(result)] }))
}

/// The message that made the task, as the task keeps it: its text, its data.
fn user_message(task: &TaskRecord) -> Value {
    let text = if task.description.is_empty() { task.title.clone() } else { task.description.clone() };
    let mut parts = vec![json!({ "text": text })];
    let mut data = task.input.clone();
    if let Value::Object(fields) = &mut data {
        fields.remove(INPUT_KEY);
    }
    if data != json!({}) && !data.is_null() {
        parts.push(json!({ "data": data, "mediaType": "application/json" }));
    }
    let message_id = task
        .input
        .get(INPUT_KEY)
        .and_then(|a2a| a2a.get("messageId"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("baton-task-{}", task.id), str::to_string);
    json!({
        "messageId": message_id,
        "contextId": context_id(task),
        "taskId": task.id.to_string(),
        "role": "ROLE_USER",
        "parts": parts,
    })
}

fn task_json(task: &TaskRecord, history_length: Option<usize>, with_artifacts: bool) -> Value {
    let history = if history_length == Some(0) { vec![] } else { vec![user_message(task)] };
    let mut value = json!({
        "id": task.id.to_string(),
        "contextId": context_id(task),
        "status": status_json(task),
        "history": history,
        "metadata": { "baton": {
            "state": task.state,
            "attempt": task.attempt,
            "agent": task.assigned_agent.as_ref().or(task.agent.as_ref()),
            "workstream": task.workstream,
            "title": task.title,
        } },
    });
    if with_artifacts && let Some(artifact) = artifact(task) {
        value["artifacts"] = json!([artifact]);
    }
    value
}

fn history_length(value: Option<&Value>) -> Result<Option<usize>, RpcError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_i64() {
            Some(length) if length >= 0 => Ok(Some(length as usize)),
            _ => Err(RpcError::invalid("`historyLength` must be a number, 0 or more")),
        },
    }
}

/// The capabilities a task needs, from the request's `metadata.requires` (a list of strings):
/// the plan's routing then picks an agent that has them.
fn requires(metadata: Option<&Value>) -> Result<Vec<String>, RpcError> {
    let Some(requires) = metadata.and_then(|metadata| metadata.get("requires")) else { return Ok(Vec::new()) };
    let refused = || RpcError::invalid("`metadata.requires` must be a list of capability names");
    let list = requires.as_array().ok_or_else(refused)?;
    list.iter().map(|name| name.as_str().map(str::to_string).ok_or_else(refused)).collect()
}

/// A follow-up message (one with a `taskId`): the task it is for and its text (its text parts
/// joined by newlines); `None` for a message that asks for a new task.
fn follow_up(params: &Map<String, Value>) -> Result<Option<(String, String)>, RpcError> {
    let Some(message) = params.get("message").and_then(Value::as_object) else { return Ok(None) };
    let Some(task_id) = message.get("taskId").and_then(Value::as_str).filter(|id| !id.is_empty()) else {
        return Ok(None);
    };
    if message.get("messageId").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(RpcError::invalid("`message.messageId` is required"));
    }
    if message.get("role").and_then(Value::as_str) != Some("ROLE_USER") {
        return Err(RpcError::invalid("`message.role` must be `ROLE_USER`"));
    }
    let parts = message.get("parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let texts: Vec<&str> = parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect();
    if texts.is_empty() || texts.len() != parts.len() {
        return Err(RpcError::new(
            code::CONTENT_TYPE_NOT_SUPPORTED,
            format!("a message to task `{task_id}` answers its question: send text parts only"),
        ));
    }
    Ok(Some((task_id.to_string(), texts.join("\n"))))
}

/// The longest title taken from a message's first line.
const TITLE_MAX: usize = 120;

/// What task a message asks for: the first line of its text is the title, the whole text the
/// description, its data parts the input (one object as it is; several merged, or kept in a
/// list when they are not objects). The message's id keys the task, so that a message sent
/// twice makes one task.
fn task_input(message: &Value) -> Result<TaskInput, RpcError> {
    let Some(message) = message.as_object() else { return Err(RpcError::invalid("`message` must be an object")) };
    let message_id = message
        .get("messageId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| RpcError::invalid("`message.messageId` is required"))?;
    match message.get("role").and_then(Value::as_str) {
        Some("ROLE_USER") => {}
        other => {
            return Err(RpcError::invalid(format!(
                "`message.role` must be `ROLE_USER`, not {}",
                other.map_or_else(|| "absent".to_string(), |role| format!("`{role}`"))
            )));
        }
    }
    let parts = message.get("parts").and_then(Value::as_array).filter(|parts| !parts.is_empty());
    let Some(parts) = parts else {
        return Err(RpcError::invalid("`message.parts` must be a list of parts, not empty"));
    };
    let mut texts = Vec::new();
    let mut data = Vec::new();
    for (idx, part) in parts.iter().enumerate() {
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            texts.push(text.to_string());
        } else if let Some(value) = part.get("data") {
            data.push(value.clone());
        } else if part.get("url").is_some() || part.get("raw").is_some() {
            return Err(RpcError::new(
                code::CONTENT_TYPE_NOT_SUPPORTED,
                format!("`message.parts[{idx}]`: files are not taken; send text or data parts"),
            ));
        } else {
            return Err(RpcError::invalid(format!("`message.parts[{idx}]` has no `text`, `data`, `url` or `raw`")));
        }
    }
    let description = texts.join("\n\n");
    let first_line = description.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
    let title = if first_line.is_empty() {
        format!("A2A message {message_id}")
    } else if first_line.chars().count() > TITLE_MAX {
        format!("{}…", first_line.chars().take(TITLE_MAX).collect::<String>())
    } else {
        first_line.to_string()
    };
    let mut input = match data.len() {
        0 => Map::new(),
        1 if data[0].is_object() => data[0].as_object().cloned().unwrap_or_default(),
        _ if data.iter().all(Value::is_object) => {
            data.iter().filter_map(Value::as_object).flat_map(|fields| fields.clone()).collect()
        }
        _ => Map::from_iter([("data".to_string(), Value::Array(data))]),
    };
    let mut a2a = Map::new();
    a2a.insert("messageId".into(), json!(message_id));
    if let Some(context) = message.get("contextId").and_then(Value::as_str).filter(|context| !context.is_empty()) {
        a2a.insert("contextId".into(), json!(context));
    }
    input.insert(INPUT_KEY.into(), Value::Object(a2a));
    Ok(TaskInput {
        key: Some(task_key(message_id)),
        title,
        description,
        input: Some(Value::Object(input)),
        ..TaskInput::default()
    })
}

/// A task key from a message id: the characters a key may not hold become `_`, and a long id
/// is cut (keys stay unique in practice: message ids are UUIDs).
fn task_key(message_id: &str) -> String {
    let cleaned: String = message_id
        .chars()
        .take(100)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    format!("a2a-{cleaned}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_becomes_a_task() {
        let message = json!({
            "messageId": "m-1", "role": "ROLE_USER", "contextId": "c-9",
            "parts": [{ "text": "Fix the build\nit fails on CI" }, { "data": { "branch": "main" } }],
        });
        let input = task_input(&message).unwrap();
        assert_eq!(input.title, "Fix the build");
        assert_eq!(input.description, "Fix the build\nit fails on CI");
        assert_eq!(input.key.as_deref(), Some("a2a-m-1"));
        assert_eq!(input.input, Some(json!({ "branch": "main", "a2a": { "messageId": "m-1", "contextId": "c-9" } })));
    }

    #[test]
    fn bad_messages_are_refused_with_their_code() {
        let cases = [
            (json!("text"), code::INVALID_PARAMS),
            (json!({ "role": "ROLE_USER", "parts": [{ "text": "x" }] }), code::INVALID_PARAMS),
            (json!({ "messageId": "m", "role": "ROLE_AGENT", "parts": [{ "text": "x" }] }), code::INVALID_PARAMS),
            (json!({ "messageId": "m", "role": "ROLE_USER", "parts": [] }), code::INVALID_PARAMS),
            (
                json!({ "messageId": "m", "role": "ROLE_USER", "parts": [{ "url": "http://x" }] }),
                code::CONTENT_TYPE_NOT_SUPPORTED,
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(task_input(&message).unwrap_err().code, expected, "{message}");
        }
    }

    #[test]
    fn a_message_with_a_task_id_is_a_follow_up_of_text() {
        let params = |message: Value| json!({ "message": message }).as_object().cloned().unwrap();
        let answer = params(json!({ "messageId": "m", "role": "ROLE_USER", "taskId": "3",
            "parts": [{ "text": "y" }, { "text": "and go on" }] }));
        assert_eq!(follow_up(&answer).unwrap(), Some(("3".to_string(), "y\nand go on".to_string())));
        let new_task =
            params(json!({ "messageId": "m", "role": "ROLE_USER", "contextId": "c", "parts": [{ "text": "x" }] }));
        assert_eq!(follow_up(&new_task).unwrap(), None);
        let data = params(json!({ "messageId": "m", "role": "ROLE_USER", "taskId": "3", "parts": [{ "data": {} }] }));
        assert_eq!(follow_up(&data).unwrap_err().code, code::CONTENT_TYPE_NOT_SUPPORTED);
        let agent =
            params(json!({ "messageId": "m", "role": "ROLE_AGENT", "taskId": "3", "parts": [{ "text": "y" }] }));
        assert_eq!(follow_up(&agent).unwrap_err().code, code::INVALID_PARAMS);
    }

    #[test]
    fn versions() {
        let uri: Uri = "/a2a".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(check_version(&headers, &uri).unwrap_err().code, code::VERSION_NOT_SUPPORTED);
        headers.insert(VERSION_HEADER, "1.0".parse().unwrap());
        assert!(check_version(&headers, &uri).is_ok());
        headers.insert(VERSION_HEADER, "0.3".parse().unwrap());
        assert!(check_version(&headers, &uri).is_err());
        let uri: Uri = "/a2a?A2A-Version=1.0".parse().unwrap();
        assert!(check_version(&HeaderMap::new(), &uri).is_ok());
    }

    #[test]
    fn card_paths_are_open() {
        assert!(is_card_path("/.well-known/agent-card.json"));
        assert!(is_card_path("/a2a/agents/echo/.well-known/agent-card.json"));
        assert!(!is_card_path("/a2a"));
        assert!(!is_card_path("/a2a/agents/echo"));
    }
}
