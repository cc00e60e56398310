//! The MCP server's tools and resources: each is one call of the operations layer
//! ([`baton_ops::Ops`]) with the caller, its arguments read into the operation's own types and
//! its answer rendered as JSON. What a tool checks, allows and answers is decided there, as for
//! the HTTP API; this module only names the calls, describes them to a model (a JSON Schema
//! and a description each) and turns an operation's error into a tool error that says what to
//! do next.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use baton_core::model::{TaskId, TaskState};
use baton_ops::messages::ChatMessage;
use baton_ops::tasks::{CancelInput, TaskInput, TaskQuery};
use baton_ops::{Action, Caller, Error, ErrorKind, Grant, Ops};

/// One tool: what the model sees of it and the action of the authorization table it needs.
pub struct Tool {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// The action the operation requires; `tools/list` shows a caller only the tools whose
    /// action its role is granted.
    pub action: Action,
    /// Whether it only reads (the `readOnlyHint` annotation).
    pub read_only: bool,
    pub input_schema: fn() -> Value,
    /// Whether a call may last long and sends `notifications/progress` while it runs (to a
    /// request with a `progressToken`).
    pub progress: bool,
}

/// Every tool, in the order `tools/list` shows them.
pub const TOOLS: &[Tool] = &[
    Tool {
        name: "plan_status",
        title: "Plan status",
        description: "The run's status (phase, progress, outcome, tasks per state) and its plan: the workstreams \
            per phase with their progress. Start here to see what the team is doing.",
        action: Action::ReadStatus,
        read_only: true,
        input_schema: no_arguments,
        progress: false,
    },
    Tool {
        name: "list_tasks",
        title: "List or search tasks",
        description: "The run's tasks, oldest first, filtered by state, workstream or agent, and by `search` \
            (words in the title, description or key). Pages by id: pass `next_after` of one answer as `after` \
            for the next. Use get_task for a task's result and events.",
        action: Action::ReadTasks,
        read_only: true,
        input_schema: list_tasks_schema,
        progress: false,
    },
    Tool {
        name: "get_task",
        title: "Get a task",
        description: "One task with its result (or error), its attempts and its events.",
        action: Action::ReadTasks,
        read_only: true,
        input_schema: task_id_schema,
        progress: false,
    },
    Tool {
        name: "wait_for_task",
        title: "Wait for a task",
        description: "Waits until a task has ended (succeeded, dead or cancelled) or `timeout_seconds` have \
            passed (default 60, at most 300), then answers the task with its result (or error) and whether it \
            ended. Sends a progress notification on each change of the task while it waits, to a request with a \
            progressToken. Call again to wait longer.",
        action: Action::ReadTasks,
        read_only: true,
        input_schema: wait_for_task_schema,
        progress: true,
    },
    Tool {
        name: "create_tasks",
        title: "Create tasks",
        description: "Creates one task or a batch (all or none). A task is routed to an agent that has the \
            capabilities it `requires` (or to the pinned `agent`) once the tasks it `depends_on` have \
            succeeded; tasks of one batch may depend on each other by `key`. Answers the new tasks' ids.",
        action: Action::CreateTasks,
        read_only: false,
        input_schema: create_tasks_schema,
        progress: false,
    },
    Tool {
        name: "cancel_task",
        title: "Cancel a task",
        description: "Cancels a task that has not ended; a running attempt is stopped. Answers the task as it is now.",
        action: Action::ControlTasks,
        read_only: false,
        input_schema: cancel_task_schema,
        progress: false,
    },
    Tool {
        name: "retry_task",
        title: "Retry a task",
        description: "Retries a dead or cancelled task from a fresh set of attempts. Answers the task as it is now.",
        action: Action::ControlTasks,
        read_only: false,
        input_schema: task_id_schema,
        progress: false,
    },
    Tool {
        name: "list_agents",
        title: "List agents",
        description: "The run's agents: name, role, capabilities, priority, runtime, and their state (active, idle, \
            offline; the task each runs).",
        action: Action::ReadAgents,
        read_only: true,
        input_schema: no_arguments,
        progress: false,
    },
    Tool {
        name: "send_message",
        title: "Send a message",
        description: "Sends a chat message to the agents it @mentions (`@reviewer please look at the storage \
            change`), or to the agents named in `to`. A long-running agent gets it in its inbox; an agent that runs \
            once per task gets a task made of the message.",
        action: Action::SendMessages,
        read_only: false,
        input_schema: send_message_schema,
        progress: false,
    },
    Tool {
        name: "agent_log",
        title: "Read an agent's log",
        description: "The end of an agent's log: what its processes wrote to stderr and Baton's notes about it.",
        action: Action::ReadAgentLogs,
        read_only: true,
        input_schema: agent_log_schema,
        progress: false,
    },
    Tool {
        name: "budgets",
        title: "Budgets",
        description: "Token and cost budgets: used and limit per scope (global, workstream, agent), thresholds \
            crossed, the next reset, and tasks waiting for budget.",
        action: Action::ReadBudgets,
        read_only: true,
        input_schema: no_arguments,
        progress: false,
    },
    Tool {
        name: "list_schedules",
        title: "List schedules",
        description: "The schedules (cron with time zone) that create tasks: whether paused, next fire times, last firing.",
        action: Action::ReadSchedules,
        read_only: true,
        input_schema: no_arguments,
        progress: false,
    },
    Tool {
        name: "pause_schedule",
        title: "Pause a schedule",
        description: "Pauses a schedule: it creates no tasks until resumed. Answers the schedules.",
        action: Action::ControlSchedules,
        read_only: false,
        input_schema: schedule_schema,
        progress: false,
    },
    Tool {
        name: "resume_schedule",
        title: "Resume a schedule",
        description: "Resumes a paused schedule. Answers the schedules.",
        action: Action::ControlSchedules,
        read_only: false,
        input_schema: schedule_schema,
        progress: false,
    },
];

/// The most of a log `agent_log` answers.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;
/// What `agent_log` answers by default, and what the log resource holds.
pub const DEFAULT_LOG_BYTES: u64 = 16 * 1024;

pub fn find(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|tool| tool.name == name)
}

/// Whether `caller`'s role may call `tool` (of anything, under [`Grant::Own`]).
pub fn allowed(caller: &Caller, tool: &Tool) -> bool {
    tool.action.grant(caller.role) != Grant::None
}

/// A tool as `tools/list` describes it.
pub fn describe(tool: &Tool) -> Value {
    json!({
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "inputSchema": (tool.input_schema)(),
        "annotations": {
            "title": tool.title,
            "readOnlyHint": tool.read_only,
            "destructiveHint": matches!(tool.name, "cancel_task"),
            "idempotentHint": tool.read_only,
            "openWorldHint": false,
        },
    })
}

/// What a tool call failed with: the operation's error, or arguments that do not fit.
#[derive(Debug)]
pub struct ToolError {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<Error> for ToolError {
    fn from(error: Error) -> ToolError {
        ToolError { kind: error.kind(), message: error.message().to_string() }
    }
}

impl ToolError {
    /// The error as a model reads it: its kind, the message, and what to do next.
    pub fn text(&self) -> String {
        let next = match self.kind {
            ErrorKind::Invalid => "fix the arguments (see the tool's inputSchema) and call again",
            ErrorKind::Forbidden => {
                "this token's role may not do this: ask the run's admin for a token of a role that may (`baton token create`)"
            }
            ErrorKind::NotFound => "check the id or name with list_tasks, list_agents or list_schedules",
            ErrorKind::Conflict => "read the current state (get_task, plan_status) before trying again",
            ErrorKind::Full => "no room now: try again later",
            ErrorKind::Unavailable => "Baton cannot do this now: try again later, or start the run (`baton run`)",
            ErrorKind::Internal => "a fault of Baton's own: see the server's log",
        };
        format!("{}: {}; {next}", self.kind.as_str(), self.message)
    }
}

/// Where a long call's progress goes: `notifications/progress` messages for the request's
/// `progressToken`, to the stream that answers the request.
pub struct Progress {
    token: Value,
    sender: mpsc::Sender<Value>,
}

impl Progress {
    pub fn new(token: Value, sender: mpsc::Sender<Value>) -> Progress {
        Progress { token, sender }
    }

    /// Sends one notification: `progress` (increasing with each), `total` when known, and a
    /// message. `Err` when the client has gone away: the call ends.
    async fn send(&self, progress: u64, total: Option<u64>, message: String) -> Result<(), ToolError> {
        let mut params = json!({ "progressToken": self.token, "progress": progress, "message": message });
        if let Some(total) = total {
            params["total"] = json!(total);
        }
        let notification = json!({ "jsonrpc": "2.0", "method": "notifications/progress", "params": params });
        self.sender
            .send(notification)
            .await
            .map_err(|_| ToolError { kind: ErrorKind::Unavailable, message: "the client went away".to_string() })
    }

    /// Resolves when the client has gone away.
    async fn gone(&self) {
        self.sender.closed().await;
    }
}

/// What a call runs with beside its arguments.
pub struct Context {
    /// Where a long call's progress goes (`None`: the request asked for none, or its answer
    /// cannot carry notifications).
    pub progress: Option<Progress>,
    /// Fires when the server stops: a long call ends.
    pub stop: CancellationToken,
    /// When the caller's token expires: a long call ends then.
    pub until: Option<tokio::time::Instant>,
}

impl Context {
    /// A call that sends no progress and ends only with the server.
    pub fn plain(stop: CancellationToken) -> Context {
        Context { progress: None, stop, until: None }
    }
}

/// Calls the tool `name` for `caller`: its answer as a JSON object, or what went wrong.
/// `None`: there is no such tool.
pub async fn call(
    ops: &Ops,
    caller: &Caller,
    name: &str,
    arguments: Value,
    context: Context,
) -> Option<Result<Value, ToolError>> {
    let tool = find(name)?;
    if tool.name == "wait_for_task" {
        if let Err(error) = caller.require(tool.action) {
            return Some(Err(error.into()));
        }
        return Some(match args(arguments) {
            Ok(arguments) => wait_for_task(ops, caller, arguments, context).await,
            Err(error) => Err(error),
        });
    }
    Some(run(ops, caller, tool, arguments).await)
}

/// What `wait_for_task` waits at most, and by default.
pub const MAX_WAIT_SECONDS: u64 = 300;
pub const DEFAULT_WAIT_SECONDS: u64 = 60;

/// Waits until task `id` has ended or the timeout passes, sending a progress notification on
/// each change of the task; the task as it is then, and whether it ended. Ends early, with an
/// error, when the client goes away, the server stops or the caller's token expires.
async fn wait_for_task(ops: &Ops, caller: &Caller, arguments: WaitArgs, context: Context) -> Result<Value, ToolError> {
    use tokio_stream::StreamExt as _;
    let WaitArgs { id, timeout_seconds } = arguments;
    let timeout_seconds = timeout_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    if timeout_seconds > MAX_WAIT_SECONDS {
        return Err(invalid(format!("`timeout_seconds` must be at most {MAX_WAIT_SECONDS}")));
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout_seconds);
    let (mut task, events) = ops.follow_task(caller, TaskId(id), context.stop.clone(), context.until).await?;
    tokio::pin!(events);
    let mut sent = 0;
    let progress = context.progress.as_ref();
    if let Some(progress) = progress {
        progress.send(sent, None, format!("task {id} is {}", task.state)).await?;
    }
    let gone = async {
        match progress {
            Some(progress) => progress.gone().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(gone);
    while !task.state.is_terminal() {
        let event = tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = &mut gone => return Err(ToolError { kind: ErrorKind::Unavailable, message: "the client went away".into() }),
            event = events.next() => event,
        };
        let Some(event) = event else {
            // The stream ended: the server is stopping or the token expired.
            let message = if context.stop.is_cancelled() {
                "the server is stopping".to_string()
            } else {
                "the token expired while waiting".to_string()
            };
            return Err(ToolError {
                kind: ErrorKind::Unavailable,
                message: format!("stopped waiting for task {id}: {message}"),
            });
        };
        let previous = task.state;
        task = ops.task_record(caller, TaskId(id)).await?;
        if let Some(progress) = progress {
            sent += 1;
            let change = if previous == task.state {
                format!("task {id} is {} ({})", task.state, event.kind.name())
            } else {
                format!("task {id}: {previous} -> {} ({})", task.state, event.kind.name())
            };
            progress.send(sent, None, change).await?;
        }
    }
    let ended = task.state.is_terminal();
    Ok(json!({ "task": task, "ended": ended, "timed_out": !ended }))
}

async fn run(ops: &Ops, caller: &Caller, tool: &Tool, arguments: Value) -> Result<Value, ToolError> {
    // Refused before the arguments are read, so that a role that may not call a tool hears
    // that, not about its arguments.
    caller.require(tool.action)?;
    match tool.name {
        "plan_status" => {
            args::<NoArguments>(arguments)?;
            let status = ops.status(caller).await?;
            let plan = ops.plan_view(caller).await?;
            Ok(json!({ "status": status, "plan": plan }))
        }
        "list_tasks" => list_tasks(ops, caller, args(arguments)?).await,
        "get_task" => {
            let TaskIdArgs { id } = args(arguments)?;
            Ok(to_value(ops.task(caller, TaskId(id)).await?))
        }
        "create_tasks" => {
            let CreateTasksArgs { tasks } = args(arguments)?;
            let ids = ops.create_tasks(caller, tasks).await?;
            Ok(json!({ "ids": ids }))
        }
        "cancel_task" => {
            let CancelArgs { id, reason } = args(arguments)?;
            Ok(json!({ "task": ops.cancel_task(caller, TaskId(id), CancelInput { reason }).await? }))
        }
        "retry_task" => {
            let TaskIdArgs { id } = args(arguments)?;
            Ok(json!({ "task": ops.retry_task(caller, TaskId(id)).await? }))
        }
        "list_agents" => {
            args::<NoArguments>(arguments)?;
            Ok(json!({ "agents": ops.agents(caller).await? }))
        }
        "send_message" => {
            let SendArgs { text, to, data } = args(arguments)?;
            let mentions: String = to.iter().map(|name| format!("@{name} ")).collect();
            let message = ChatMessage { text: format!("{mentions}{text}"), data };
            Ok(to_value(ops.chat(caller, message).await?))
        }
        "agent_log" => {
            let LogArgs { agent, tail_bytes } = args(arguments)?;
            let tail_bytes = tail_bytes.unwrap_or(DEFAULT_LOG_BYTES);
            if !(1..=MAX_LOG_BYTES).contains(&tail_bytes) {
                return Err(invalid(format!("`tail_bytes` must be between 1 and {MAX_LOG_BYTES}")));
            }
            let log = read_log(ops, caller, &agent, tail_bytes).await?;
            Ok(json!({ "agent": agent, "log": log }))
        }
        "budgets" => {
            args::<NoArguments>(arguments)?;
            Ok(to_value(ops.budgets(caller).await?))
        }
        "list_schedules" => {
            args::<NoArguments>(arguments)?;
            Ok(json!({ "schedules": ops.schedules(caller).await? }))
        }
        "pause_schedule" | "resume_schedule" => {
            let ScheduleArgs { name } = args(arguments)?;
            let paused = tool.name == "pause_schedule";
            Ok(json!({ "schedules": ops.set_schedule_paused(caller, &name, paused).await? }))
        }
        other => Err(ToolError { kind: ErrorKind::Internal, message: format!("tool `{other}` has no implementation") }),
    }
}

/// The last `tail_bytes` of an agent's log, as text (empty before the agent wrote anything).
pub async fn read_log(ops: &Ops, caller: &Caller, agent: &str, tail_bytes: u64) -> Result<String, ToolError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let path = ops.agent_log(caller, agent).await?;
    let Ok(mut file) = tokio::fs::File::open(&path).await else { return Ok(String::new()) };
    let len = file.metadata().await.map_or(0, |meta| meta.len());
    let start = len.saturating_sub(tail_bytes);
    let mut bytes = Vec::new();
    let read = async {
        file.seek(std::io::SeekFrom::Start(start)).await?;
        file.take(tail_bytes).read_to_end(&mut bytes).await
    };
    read.await.map_err(|error| ToolError {
        kind: ErrorKind::Unavailable,
        message: format!("cannot read the log of agent `{agent}`: {error}"),
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The most pages of 1000 tasks `list_tasks` reads looking for `search`'s matches.
const SEARCH_PAGES: usize = 20;

async fn list_tasks(ops: &Ops, caller: &Caller, arguments: ListTasksArgs) -> Result<Value, ToolError> {
    let ListTasksArgs { state, workstream, agent, limit, after, search } = arguments;
    let Some(search) = search.filter(|text| !text.trim().is_empty()) else {
        let page = ops.tasks(caller, TaskQuery { state, workstream, agent, limit, after }).await?;
        return Ok(to_value(page));
    };
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("`limit` must be between 1 and 1000"));
    }
    let words: Vec<String> = search.split_whitespace().map(str::to_lowercase).collect();
    let mut found = Vec::new();
    let mut cursor = after;
    let mut next_after = None;
    for _ in 0..SEARCH_PAGES {
        let query =
            TaskQuery { state, workstream: workstream.clone(), agent: agent.clone(), limit: Some(1000), after: cursor };
        let page = ops.tasks(caller, query).await?;
        for task in page.tasks {
            let text = format!("{} {} {}", task.title, task.description, task.key.as_deref().unwrap_or(""));
            let text = text.to_lowercase();
            if words.iter().all(|word| text.contains(word)) {
                found.push(task);
            }
            if found.len() as u64 == limit {
                next_after = found.last().map(|task| task.id.0);
                break;
            }
        }
        if next_after.is_some() || page.next_after.is_none() {
            break;
        }
        cursor = page.next_after;
    }
    Ok(json!({ "tasks": found, "next_after": next_after }))
}

fn to_value<T: serde::Serialize>(value: T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|error| json!({ "error": error.to_string() }))
}

fn invalid(message: impl Into<String>) -> ToolError {
    ToolError { kind: ErrorKind::Invalid, message: message.into() }
}

/// A tool's arguments (absent or `null`: none) as its argument type.
fn args<T: DeserializeOwned>(arguments: Value) -> Result<T, ToolError> {
    let arguments = if arguments.is_null() { json!({}) } else { arguments };
    serde_json::from_value(arguments).map_err(|error| invalid(format!("invalid arguments: {error}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListTasksArgs {
    state: Option<TaskState>,
    workstream: Option<String>,
    agent: Option<String>,
    limit: Option<u64>,
    after: Option<i64>,
    search: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskIdArgs {
    id: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    id: i64,
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTasksArgs {
    tasks: Vec<TaskInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelArgs {
    id: i64,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendArgs {
    text: String,
    #[serde(default)]
    to: Vec<String>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogArgs {
    agent: String,
    tail_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleArgs {
    name: String,
}

// ---------------------------------------------------------------------------------------------
// Input schemas (JSON Schema 2020-12, as MCP asks), written beside the argument types above;
// a test checks the task's against the API's description of `TaskInput`.

fn no_arguments() -> Value {
    json!({ "type": "object", "properties": {}, "additionalProperties": false })
}

fn task_id_schema() -> Value {
    json!({
        "type": "object",
        "properties": { "id": { "type": "integer", "description": "The task's id." } },
        "required": ["id"],
        "additionalProperties": false,
    })
}

fn wait_for_task_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": { "type": "integer", "description": "The task's id." },
            "timeout_seconds": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_WAIT_SECONDS,
                "description": "Answer after this many seconds even if the task has not ended (default 60).",
            },
        },
        "required": ["id"],
        "additionalProperties": false,
    })
}

fn list_tasks_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "state": {
                "type": "string",
                "enum": ["pending", "ready", "running", "succeeded", "dead", "cancelled", "suspended"],
                "description": "Only tasks in this state.",
            },
            "workstream": { "type": "string", "description": "Only tasks of this workstream." },
            "agent": { "type": "string", "description": "Only tasks assigned or pinned to this agent." },
            "search": { "type": "string", "description": "Only tasks whose title, description or key holds all these words (any case)." },
            "limit": { "type": "integer", "minimum": 1, "maximum": 1000, "description": "At most this many (default 100)." },
            "after": { "type": "integer", "description": "Only tasks with a greater id: the previous answer's `next_after`." },
        },
        "additionalProperties": false,
    })
}

/// A `[[tasks]]` entry of baton.toml, as JSON.
pub fn task_input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "title": { "type": "string", "minLength": 1, "description": "What to do, in a line." },
            "description": { "type": "string", "description": "The details: what done looks like." },
            "key": { "type": "string", "description": "Identity within the run (default: from the title); a second task with the same key is refused. Other tasks of a batch depend on it by this key." },
            "workstream": { "type": "string", "description": "The workstream it belongs to (see plan_status)." },
            "input": { "description": "Any JSON, handed to the agent." },
            "requires": { "type": "array", "items": { "type": "string" }, "description": "Capabilities the agent must have (see list_agents)." },
            "agent": { "type": "string", "description": "Pin the task to this agent." },
            "depends_on": {
                "type": "array",
                "items": { "type": ["integer", "string"] },
                "description": "Tasks that must succeed first: ids (numbers) or keys (strings).",
            },
            "priority": { "type": "string", "enum": ["critical", "high", "medium", "low"], "description": "Default: the workstream's, else medium." },
            "max_attempts": { "type": "integer", "minimum": 1, "maximum": 100, "description": "Default 3." },
            "timeout": { "type": "string", "description": "A duration such as \"30s\" or \"10m\"; default: the agent's limit." },
            "resources": { "type": "array", "items": { "type": "string" }, "description": "Keys or globs (`file:src/**`): two tasks whose resources overlap never run at once." },
            "estimated_tokens": { "type": "integer", "minimum": 1, "description": "Tokens it expects to use: it waits while a budget that covers it has less left." },
        },
        "required": ["title"],
        "additionalProperties": false,
    })
}

fn create_tasks_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "tasks": {
                "type": "array",
                "minItems": 1,
                "items": task_input_schema(),
                "description": "The tasks: one, or a batch created all or none.",
            },
        },
        "required": ["tasks"],
        "additionalProperties": false,
    })
}

fn cancel_task_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": { "type": "integer", "description": "The task's id." },
            "reason": { "type": "string", "description": "Why; shown in the task's events." },
        },
        "required": ["id"],
        "additionalProperties": false,
    })
}

fn send_message_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "text": { "type": "string", "minLength": 1, "description": "The message; `@name` mentions route it to those agents." },
            "to": { "type": "array", "items": { "type": "string" }, "description": "Agents to send it to, besides those it @mentions." },
            "data": { "description": "JSON sent along." },
        },
        "required": ["text"],
        "additionalProperties": false,
    })
}

fn agent_log_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "agent": { "type": "string", "description": "The agent's name (see list_agents)." },
            "tail_bytes": { "type": "integer", "minimum": 1, "maximum": MAX_LOG_BYTES, "description": "Only the last this many bytes (default 16384)." },
        },
        "required": ["agent"],
        "additionalProperties": false,
    })
}

fn schedule_schema() -> Value {
    json!({
        "type": "object",
        "properties": { "name": { "type": "string", "description": "The schedule's name (see list_schedules)." } },
        "required": ["name"],
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task schema offers exactly the fields a task takes: every property is accepted by
    /// `TaskInput` (which refuses unknown fields), and the API's description of `TaskInput`
    /// has no property the schema lacks.
    #[test]
    fn the_task_schema_matches_task_input() {
        use utoipa::OpenApi;
        let schema = task_input_schema();
        let properties = schema["properties"].as_object().unwrap();
        let openapi = serde_json::to_value(crate::openapi::ApiDoc::openapi()).unwrap();
        let described = openapi["components"]["schemas"]["TaskInput"]["properties"].as_object().unwrap();
        let mut ours: Vec<&String> = properties.keys().collect();
        let mut theirs: Vec<&String> = described.keys().collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn every_tool_has_an_object_schema_and_a_unique_name() {
        for tool in TOOLS {
            let schema = (tool.input_schema)();
            assert_eq!(schema["type"], "object", "{}", tool.name);
            assert_eq!(TOOLS.iter().filter(|other| other.name == tool.name).count(), 1, "{}", tool.name);
        }
    }

    /// An operations layer on an in-memory store, without an engine, with one pending task.
    async fn ops_with_a_task() -> (Ops, i64) {
        let plan = "[orchestration]\nname = \"t\"\n\n[[agents]]\nname = \"a\"\ncommand = [\"true\"]\n";
        let plan = baton_core::config::load("baton.toml", plan, &std::collections::BTreeMap::new()).unwrap();
        let store: std::sync::Arc<dyn baton_store::Store> =
            baton_store::open("sqlite::memory:", std::path::Path::new(".")).await.unwrap();
        let run = baton_store::NewRun {
            id: "run-1".into(),
            name: "t".into(),
            n_phases: 1,
            owner: "test".into(),
            owner_pid: 1,
            owner_until: baton_core::Timestamp(1_000),
        };
        store.create_run(run, baton_core::Timestamp(0)).await.unwrap();
        let task = baton_core::model::NewTask {
            parent: None,
            key: Some("k".into()),
            workstream: None,
            title: "Wait for me".into(),
            description: String::new(),
            input: json!({}),
            requires: Vec::new(),
            agent: None,
            depends_on: Vec::new(),
            priority: baton_core::model::Priority::Medium,
            max_attempts: 1,
            timeout_ms: None,
            resources: Vec::new(),
            estimated_tokens: None,
        };
        let tasks = store.create_tasks("run-1", vec![task], baton_core::Timestamp(0)).await.unwrap();
        let ops = Ops::new(baton_ops::OpsOptions {
            store,
            engine: None,
            run_id: "run-1".into(),
            plan,
            log_dir: std::env::temp_dir(),
            clock: baton_runtime::Clock::system(),
        });
        (ops, tasks[0].id.0)
    }

    /// The client going away (the receiver of its notifications dropped) ends a wait at
    /// once, not at its timeout.
    #[tokio::test]
    async fn a_wait_ends_when_its_client_goes_away() {
        let (ops, id) = ops_with_a_task().await;
        let (sender, mut receiver) = mpsc::channel(1);
        let context =
            Context { progress: Some(Progress::new(json!("p"), sender)), stop: CancellationToken::new(), until: None };
        let arguments = WaitArgs { id, timeout_seconds: Some(MAX_WAIT_SECONDS) };
        let waiting = tokio::spawn(async move { wait_for_task(&ops, &Caller::local(), arguments, context).await });
        let first = receiver.recv().await.unwrap();
        assert_eq!(first["params"]["progress"], 0, "{first}");
        assert!(first["params"]["message"].as_str().unwrap().starts_with(&format!("task {id} is ")), "{first}");
        drop(receiver);
        // A guard against a hang, far below the wait's own timeout.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), waiting).await.expect("the wait ended");
        let error = ended.unwrap().unwrap_err();
        assert!(error.message.contains("the client went away"), "{}", error.message);
    }

    /// A server that stops ends a wait too.
    #[tokio::test]
    async fn a_wait_ends_when_the_server_stops() {
        let (ops, id) = ops_with_a_task().await;
        let stop = CancellationToken::new();
        let context = Context::plain(stop.clone());
        let arguments = WaitArgs { id, timeout_seconds: Some(MAX_WAIT_SECONDS) };
        let waiting = tokio::spawn(async move { wait_for_task(&ops, &Caller::local(), arguments, context).await });
        stop.cancel();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), waiting).await.expect("the wait ended");
        let error = ended.unwrap().unwrap_err();
        assert!(error.message.contains("the server is stopping"), "{}", error.message);
    }

    #[test]
    fn bad_arguments_are_invalid_with_the_reason() {
        let error = args::<TaskIdArgs>(json!({ "id": "seven" })).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid);
        assert!(error.text().contains("invalid type"), "{}", error.text());
        let error = args::<TaskIdArgs>(json!({ "id": 1, "extra": true })).unwrap_err();
        assert!(error.text().contains("unknown field `extra`"), "{}", error.text());
        assert!(args::<NoArguments>(Value::Null).is_ok());
    }
}
