//! The CLI's side of the HTTP API of the process executing a run — `baton serve` at its
//! address, or `baton run` (and `baton serve`) on the Unix socket beside the store: a thin
//! client for the read commands and for every command that changes the run.
//!
//! The answers are deserialized into the same types the store returns (`TaskRecord`,
//! `AgentRecord`, `Event`), so that a command prints the same whichever way its data came.
//! API errors (`{"error": {"code", "message"}}`) become [`Failure`]s with the server's message:
//! exit code 2 for a refused request (4xx), 1 for a server or network failure.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use baton_core::Event;
use baton_core::messages::Delivery;
use baton_core::model::{AgentRecord, TaskId, TaskRecord};
use baton_ops::events::EventFilter;
use baton_ops::messages::MessageQuery;
use baton_ops::schedules::{Budgets, ScheduleView};
use baton_ops::tasks::TaskQuery;
use baton_server::api::{Created, Status, TaskDetail, TaskPage};
use baton_server::chat::ChatResult;

use crate::{Cli, Failure};

/// The query of a request that has none.
const NO_QUERY: &[(&str, &str)] = &[];

/// How long the CLI waits for the configuration's server before it reads the store instead:
/// short, because most of the time no server runs and the store answers at once.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long an explicit `--url` may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `GET /health` may take, once connected; shorter for the configuration's server,
/// which may not be a Baton server at all.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the configuration says its server is, to probe: the plan's name (another project's
/// server may listen there), its address, and the socket beside its store.
pub struct Probe {
    pub name: String,
    pub url: String,
    pub socket: Option<std::path::PathBuf>,
}

/// A connection to the API of a running `baton serve` or `baton run`.
pub struct Client {
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash (`http://localhost` on the local socket).
    base: String,
    /// Where the API is, for people: the URL, or the socket's path.
    shown: String,
    /// Whether this is the local socket beside the store.
    local: bool,
    token: Option<String>,
}

/// An entry of `GET /agents`: only what the CLI shows.
#[derive(Debug, Deserialize)]
struct AgentEntry {
    status: Option<AgentRecord>,
}

/// The part of `GET /plan` the CLI checks.
#[derive(Debug, Deserialize)]
struct PlanName {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    message: String,
}

impl Client {
    /// The API the command should talk to, if any. With `--url` (or `BATON_URL`) that server
    /// must answer; without it, the configuration's server (`probe`) is tried briefly, then the
    /// local socket beside its store, and `None` (read the store) when no process executing
    /// this plan answers at either.
    pub async fn connect(cli: &Cli, probe: Option<&Probe>) -> Result<Option<Client>, Failure> {
        // An empty `BATON_URL` is no URL.
        match cli.url.as_deref().filter(|url| !url.trim().is_empty()) {
            Some(url) => {
                let client = Client::new(url, cli.token.clone(), CONNECT_TIMEOUT)?;
                client.health(HEALTH_TIMEOUT).await.map_err(|error| {
                    Failure::usage(format!(
                        "no Baton server answers at {}: {error}; start one with `baton serve`, or leave out --url (BATON_URL) to read the store",
                        client.base
                    ))
                })?;
                Ok(Some(client))
            }
            None => {
                let Some(probe) = probe else { return Ok(None) };
                if let Ok(client) = Client::new(&probe.url, cli.token.clone(), PROBE_CONNECT_TIMEOUT)
                    && client.serves(&probe.name).await
                {
                    return Ok(Some(client));
                }
                let Some(socket) = probe.socket.as_deref().filter(|socket| socket.exists()) else { return Ok(None) };
                let client = Client::local(socket, cli.token.clone())?;
                Ok(client.serves(&probe.name).await.then_some(client))
            }
        }
    }

    /// A client of the local socket at `path`.
    fn local(path: &Path, token: Option<String>) -> Result<Client, Failure> {
        let http = reqwest::Client::builder()
            .unix_socket(path)
            .connect_timeout(PROBE_CONNECT_TIMEOUT)
            .user_agent(concat!("baton-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Failure::run(format!("cannot make an HTTP client: {error}")))?;
        Ok(Client { http, base: "http://localhost".to_string(), shown: path.display().to_string(), local: true, token })
    }

    /// Whether a Baton server executing the plan named `plan` answers (probed briefly):
    /// another project's server may listen at the configured address.
    async fn serves(&self, plan: &str) -> bool {
        if self.health(PROBE_HEALTH_TIMEOUT).await.is_err() {
            return false;
        }
        match self.get::<PlanName>("/plan", NO_QUERY).await {
            Ok(served) if served.name == plan => true,
            Ok(served) => {
                tracing::debug!(at = %self.shown, served = %served.name, "the server there runs another plan; reading the store");
                false
            }
            Err(failure) => {
                tracing::debug!(at = %self.shown, error = %failure.message, "the server there does not answer; reading the store");
                false
            }
        }
    }

    fn new(url: &str, token: Option<String>, connect_timeout: Duration) -> Result<Client, Failure> {
        let base = url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::usage(format!(
                "--url `{url}` is not an HTTP address: write e.g. http://127.0.0.1:8080"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .user_agent(concat!("baton-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Failure::run(format!("cannot make an HTTP client: {error}")))?;
        Ok(Client { http, shown: base.clone(), base, local: false, token })
    }

    /// Where the API is: `http://host:port`, or the local socket's path.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Who executes the run, for `baton status`.
    pub fn served_by(&self) -> String {
        if self.local {
            format!("the process serving {}", self.shown)
        } else {
            format!("baton serve at {}", self.shown)
        }
    }

    /// Whether a Baton server answers: `Err` says why not, for people.
    async fn health(&self, timeout: Duration) -> Result<(), String> {
        let response = self
            .http
            .get(format!("{}/health", self.base))
            .timeout(timeout)
            .send()
            .await
            .map_err(|error| describe(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET /health answered {status}"));
        }
        let health: serde_json::Value =
            response.json().await.map_err(|_| "it answers, but not as Baton does".to_string())?;
        if health.get("orchestration_status").is_none() {
            return Err("it answers, but not as Baton does".into());
        }
        Ok(())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder, what: &str) -> Result<T, Failure> {
        let response = request.send().await.map_err(|error| self.network(what, &error))?;
        let response = check(response).await?;
        response.json::<T>().await.map_err(|error| {
            Failure::run(format!("{what}: the server's answer is not what this `baton` expects: {error}"))
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &(impl serde::Serialize + ?Sized),
    ) -> Result<T, Failure> {
        self.send(self.request(reqwest::Method::GET, path).query(query), &format!("GET {path}")).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Option<&serde_json::Value>) -> Result<T, Failure> {
        let request = self.request(reqwest::Method::POST, path);
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        self.send(request, &format!("POST {path}")).await
    }

    fn network(&self, what: &str, error: &reqwest::Error) -> Failure {
        Failure::run(format!("{what} on {}: {}", self.shown, describe(error)))
    }

    pub async fn status(&self) -> Result<Status, Failure> {
        self.get("/status", NO_QUERY).await
    }

    /// A page of tasks (`GET /tasks`).
    pub async fn tasks(&self, query: &TaskQuery) -> Result<TaskPage, Failure> {
        self.get("/tasks", query).await
    }

    /// Messages and their delivery state (`GET /messages`).
    pub async fn messages(&self, query: &MessageQuery) -> Result<Vec<Delivery>, Failure> {
        self.get("/messages", query).await
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, Failure> {
        self.get("/schedules", NO_QUERY).await
    }

    pub async fn conflicts(&self) -> Result<baton_ops::conflicts::Conflicts, Failure> {
        self.get("/conflicts", NO_QUERY).await
    }

    /// The audit log, newest first (`GET /audit`, for an admin).
    pub async fn audit(
        &self,
        params: &baton_ops::events::AuditParams,
    ) -> Result<Vec<baton_store::AuditEntry>, Failure> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(actor) = &params.actor {
            query.push(("actor", actor.clone()));
        }
        if let Some(limit) = params.limit {
            query.push(("limit", limit.to_string()));
        }
        self.get("/audit", &query).await
    }

    pub async fn budgets(&self) -> Result<Budgets, Failure> {
        self.get("/budgets", NO_QUERY).await
    }

    pub async fn task(&self, id: TaskId) -> Result<TaskDetail, Failure> {
        self.get(&format!("/tasks/{id}"), NO_QUERY).await
    }

    /// The agents the engine has recorded, in the plan's order.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, Failure> {
        let entries: Vec<AgentEntry> = self.get("/agents", NO_QUERY).await?;
        Ok(entries.into_iter().filter_map(|entry| entry.status).collect())
    }

    /// Up to `limit` (at most 1000) events after `since`, oldest first.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, Failure> {
        self.get("/events/history", filter).await
    }

    /// The run's events after `since` as they happen (`GET /events`, Server-Sent Events).
    pub async fn follow_events(&self, filter: &EventFilter) -> Result<EventStream, Failure> {
        let since = filter.since.unwrap_or(0);
        let request = self
            .request(reqwest::Method::GET, "/events")
            .query(filter)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header("Last-Event-ID", since.to_string());
        let response = request.send().await.map_err(|error| self.network("GET /events", &error))?;
        let response = check(response).await?;
        Ok(EventStream { frames: FrameStream::new(response) })
    }

    /// An agent's whole log (`GET /agents/{name}/logs`).
    pub async fn agent_log(&self, name: &str) -> Result<String, Failure> {
        let path = format!("/agents/{name}/logs");
        let request = self.request(reqwest::Method::GET, &path).query(&[("tail_bytes", u64::MAX.to_string())]);
        let response = request.send().await.map_err(|error| self.network(&format!("GET {path}"), &error))?;
        let response = check(response).await?;
        response.text().await.map_err(|error| self.network(&format!("GET {path}"), &error))
    }

    /// An agent's log from its start, then what it writes, line by line
    /// (`GET /agents/{name}/logs?follow=true`).
    pub async fn follow_agent_log(&self, name: &str) -> Result<LogStream, Failure> {
        let path = format!("/agents/{name}/logs");
        let query = [("tail_bytes", u64::MAX.to_string()), ("follow", "true".to_string())];
        let request = self
            .request(reqwest::Method::GET, &path)
            .query(&query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let response = request.send().await.map_err(|error| self.network(&format!("GET {path}"), &error))?;
        let response = check(response).await?;
        Ok(LogStream { frames: FrameStream::new(response) })
    }

    /// Sends one MCP message (`POST /mcp`) as it came, with `headers`; the answer whatever its
    /// status (`baton mcp` passes it on). `Err` only when the server cannot be reached.
    pub async fn mcp_post(&self, body: String, headers: &[(&str, String)]) -> Result<McpAnswer, String> {
        let mut request = self
            .request(reqwest::Method::POST, "/mcp")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json, text/event-stream")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.map_err(|error| describe(&error))?;
        let status = response.status();
        let session = response
            .headers()
            .get(baton_server::mcp::SESSION_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if is_stream {
            let stream = McpStream { frames: FrameStream::new(response) };
            return Ok(McpAnswer { status: status.as_u16(), session, body: String::new(), stream: Some(stream) });
        }
        let body = response.text().await.map_err(|error| describe(&error))?;
        Ok(McpAnswer { status: status.as_u16(), session, body, stream: None })
    }

    /// The notifications of an MCP session (`GET /mcp`, Server-Sent Events), one JSON-RPC
    /// message each.
    pub async fn mcp_stream(&self, session: &str) -> Result<McpStream, Failure> {
        let request = self
            .request(reqwest::Method::GET, "/mcp")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(baton_server::mcp::SESSION_HEADER, session);
        let response = request.send().await.map_err(|error| self.network("GET /mcp", &error))?;
        let response = check(response).await?;
        Ok(McpStream { frames: FrameStream::new(response) })
    }

    /// Creates a task (`POST /tasks`, the body a `[[tasks]]` entry as JSON); its id.
    pub async fn add_task(&self, task: &serde_json::Value) -> Result<TaskId, Failure> {
        let created: Created = self.post("/tasks", Some(task)).await?;
        created.ids.first().copied().ok_or_else(|| Failure::run("POST /tasks: the server created no task"))
    }

    /// Turns an objective into tasks (`POST /objectives`).
    pub async fn plan_objective(
        &self,
        objective: &str,
        workstream: &str,
    ) -> Result<baton_ops::tasks::ObjectivePlan, Failure> {
        let body = serde_json::json!({ "objective": objective, "workstream": workstream });
        self.post("/objectives", Some(&body)).await
    }

    pub async fn cancel_task(&self, id: TaskId, reason: &str) -> Result<TaskRecord, Failure> {
        self.post(&format!("/tasks/{id}/cancel"), Some(&serde_json::json!({ "reason": reason }))).await
    }

    pub async fn retry_task(&self, id: TaskId) -> Result<TaskRecord, Failure> {
        self.post(&format!("/tasks/{id}/retry"), None).await
    }

    /// `start`, `stop` or `restart` an agent; its record after the command, when there is one.
    pub async fn agent_command(&self, name: &str, verb: &str) -> Result<Option<AgentRecord>, Failure> {
        let entry: AgentEntry = self.post(&format!("/agents/{name}/{verb}"), None).await?;
        Ok(entry.status)
    }

    /// `pause` or `resume` a schedule.
    /// The run's MCP servers and tools (`GET /tools`).
    pub async fn tools(&self, query: &baton_ops::tools::ToolQuery) -> Result<baton_ops::tools::ToolList, Failure> {
        self.get("/tools", query).await
    }

    /// Calls a tool (`POST /tools/{server}/{tool}`); `name` is `server/tool`.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: &serde_json::Value,
    ) -> Result<baton_ops::tools::ToolCallResult, Failure> {
        self.post(&format!("/tools/{name}"), Some(arguments)).await
    }

    pub async fn schedule_command(&self, name: &str, verb: &str) -> Result<(), Failure> {
        let _: serde_json::Value = self.post(&format!("/schedules/{name}/{verb}"), None).await?;
        Ok(())
    }

    /// Sets a budget's limit until the next reset.
    pub async fn set_budget(
        &self,
        scope: &str,
        daily_tokens: Option<u64>,
        cost_usd: Option<f64>,
    ) -> Result<(), Failure> {
        let body = serde_json::json!({ "daily_tokens": daily_tokens, "cost_usd": cost_usd });
        let _: serde_json::Value = self.post(&format!("/budgets/{scope}"), Some(&body)).await?;
        Ok(())
    }

    /// Dead letters delivered again (`POST /messages/redeliver`): the ids redelivered.
    pub async fn redeliver(&self, ids: &[i64], dead: bool) -> Result<Vec<i64>, Failure> {
        let body = if dead { serde_json::json!({ "dead": true }) } else { serde_json::json!({ "ids": ids }) };
        let answer: baton_server::chat::Redelivered = self.post("/messages/redeliver", Some(&body)).await?;
        Ok(answer.redelivered)
    }

    /// A client of the server at `url` for `baton agent-host`: no probe, and no health check
    /// here (the host retries until the server answers). Refused when `url` is not an HTTP
    /// address.
    pub fn for_agent_host(url: &str, token: Option<String>) -> Result<Client, Failure> {
        Client::new(url, token, CONNECT_TIMEOUT)
    }

    /// One agent's configuration as the server runs it (`GET /agents/{name}`, its `spec`).
    pub async fn agent_spec(&self, name: &str) -> Result<serde_json::Value, Failure> {
        let mut info: serde_json::Value = self.get(&format!("/agents/{name}"), NO_QUERY).await?;
        Ok(info["spec"].take())
    }

    /// Claims up to `max` tasks of the remote agent `agent`, waiting up to `wait` for the first
    /// (`POST /agent/claim`, a long poll).
    pub async fn claim(
        &self,
        agent: &str,
        max: usize,
        wait: Duration,
    ) -> Result<baton_server::worker::ClaimResponse, Failure> {
        let body = serde_json::json!({ "agent": agent, "max": max, "wait_ms": wait.as_millis() as u64 });
        // Bounded, so that a connection that died silently does not hold the claim forever.
        let request =
            self.request(reqwest::Method::POST, "/agent/claim").json(&body).timeout(wait + CONNECT_TIMEOUT * 6);
        self.send(request, "POST /agent/claim").await
    }

    /// Renews the lease of one attempt `agent` holds (`POST /agent/heartbeat`); refused (a 409)
    /// when it holds it no more, saying what became of it.
    pub async fn heartbeat(
        &self,
        agent: &str,
        task: TaskId,
        attempt: u32,
    ) -> Result<baton_server::worker::HeartbeatResponse, Failure> {
        let body = serde_json::json!({ "agent": agent, "tasks": [{ "task": task, "attempt": attempt }] });
        self.post("/agent/heartbeat", Some(&body)).await
    }

    /// Reports progress on an attempt `agent` holds (`POST /agent/tasks/{id}/progress`).
    pub async fn progress(&self, agent: &str, task: TaskId, attempt: u32, message: &str) -> Result<(), Failure> {
        let body = serde_json::json!({ "agent": agent, "attempt": attempt, "message": message });
        let _: baton_server::worker::Accepted =
            self.post(&format!("/agent/tasks/{task}/progress"), Some(&body)).await?;
        Ok(())
    }

    /// Reports tokens `agent` used for `task` (`POST /agent/usage`).
    pub async fn usage(&self, agent: &str, task: TaskId, usage: &serde_json::Value) -> Result<(), Failure> {
        let body = serde_json::json!({ "agent": agent, "task": task, "usage": usage });
        let _: baton_server::worker::Accepted = self.post("/agent/usage", Some(&body)).await?;
        Ok(())
    }

    /// Hands in how an attempt `agent` holds ended (`POST /agent/tasks/{id}/complete` or
    /// `…/fail`); refused (a 409) when its lease expired, so that a task completes once.
    pub async fn finish(
        &self,
        agent: &str,
        task: TaskId,
        attempt: u32,
        outcome: &baton_core::Outcome,
    ) -> Result<baton_server::worker::ResultRecorded, Failure> {
        match outcome {
            baton_core::Outcome::Succeeded { result } => {
                let body = serde_json::json!({ "agent": agent, "attempt": attempt, "result": result });
                self.post(&format!("/agent/tasks/{task}/complete"), Some(&body)).await
            }
            baton_core::Outcome::Failed { reason } => {
                let body = serde_json::json!({ "agent": agent, "attempt": attempt, "error": reason });
                self.post(&format!("/agent/tasks/{task}/fail"), Some(&body)).await
            }
        }
    }

    /// Chat (`POST /messages`): a message to each mentioned worker, a task for each other agent.
    pub async fn chat(&self, text: &str, data: Option<serde_json::Value>) -> Result<ChatResult, Failure> {
        let body = serde_json::json!({ "text": text, "data": data });
        self.post("/messages", Some(&body)).await
    }
}

/// A successful response, or the API's error as a [`Failure`].
async fn check(response: reqwest::Response) -> Result<reqwest::Response, Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|body| body.error.message)
        .unwrap_or_else(|_| format!("the server answered {status}: {}", text.trim()));
    let message = if status == reqwest::StatusCode::UNAUTHORIZED {
        format!("{message}; the CLI sends the token given with --token (or BATON_TOKEN)")
    } else {
        message
    };
    let code = if status.is_client_error() { 2 } else { 1 };
    Err(Failure { code, message })
}

/// A network error, for people: "cannot connect (Connection refused (os error 111))" rather
/// than reqwest's whole chain, where the kind of failure says it.
fn describe(error: &reqwest::Error) -> String {
    let mut innermost = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        innermost = cause.to_string();
        source = cause.source();
    }
    if error.is_timeout() {
        "no answer in time".to_string()
    } else if error.is_connect() {
        format!("cannot connect ({innermost})")
    } else {
        format!("{error} ({innermost})")
    }
}

/// The frames of a Server-Sent Events response, one at a time.
struct FrameStream {
    response: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<SseFrame>,
}

impl FrameStream {
    fn new(response: reqwest::Response) -> FrameStream {
        FrameStream { response, parser: SseParser::default(), ready: std::collections::VecDeque::new() }
    }

    /// The next frame with data; `None` when the server ended the stream (it is stopping).
    async fn next(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Some(frame);
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.ready.extend(self.parser.push(&bytes)),
                Ok(None) => return None,
                // A connection cut mid-stream ends the stream like a closed one: the caller
                // resumes if it can.
                Err(error) => {
                    tracing::debug!(error = %describe(&error), "the stream broke");
                    return None;
                }
            }
        }
    }
}

/// What `POST /mcp` answered.
pub struct McpAnswer {
    pub status: u16,
    /// `Mcp-Session-Id`, when the answer opened a session.
    pub session: Option<String>,
    /// The JSON answer (empty when the answer is a stream).
    pub body: String,
    /// A stream of Server-Sent Events answering a long call: its notifications, then the
    /// response.
    pub stream: Option<McpStream>,
}

/// The messages of an MCP session's stream (`GET /mcp`), one at a time.
pub struct McpStream {
    frames: FrameStream,
}

impl McpStream {
    /// The next message's text; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<String> {
        self.frames.next().await.map(|frame| frame.data)
    }
}

/// The events of `GET /events`, one at a time.
pub struct EventStream {
    frames: FrameStream,
}

impl EventStream {
    /// The next event; `Ok(None)` when the server ended the stream (it is stopping).
    pub async fn next(&mut self) -> Result<Option<Event>, Failure> {
        while let Some(frame) = self.frames.next().await {
            // Other kinds of frames (none today) are not events of the run.
            if frame.data.is_empty() {
                continue;
            }
            let event: Event = serde_json::from_str(&frame.data).map_err(|error| {
                Failure::run(format!("GET /events: an event the CLI cannot read ({error}): {}", frame.data))
            })?;
            return Ok(Some(event));
        }
        Ok(None)
    }
}

/// The lines an agent writes to its log, as `GET /agents/{name}/logs?follow=true` sends them.
pub struct LogStream {
    frames: FrameStream,
}

impl LogStream {
    /// The next line, without its newline; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<String> {
        self.frames.next().await.map(|frame| frame.data)
    }
}

/// One Server-Sent Event: its `id`, `event` type and `data` (lines joined by `\n`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Cuts a `text/event-stream` byte stream into frames, whatever the chunks' boundaries.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    frame: SseFrame,
    /// Whether the frame has a `data` field yet (an empty `data:` line counts).
    has_data: bool,
}

impl SseParser {
    /// The frames that `bytes` completes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseFrame> {
        let mut frames = Vec::new();
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                if self.has_data {
                    frames.push(std::mem::take(&mut self.frame));
                } else {
                    self.frame = SseFrame::default();
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment: the server's keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "id" => self.frame.id = Some(value.to_string()),
                "event" => self.frame.event = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.frame.data.push('\n');
                    }
                    self.frame.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: &str, event: &str, data: &str) -> SseFrame {
        SseFrame { id: Some(id.into()), event: Some(event.into()), data: data.into() }
    }

    #[test]
    fn frames_are_cut_at_blank_lines_whatever_the_chunks() {
        let text = "id: 1\nevent: TaskCreated\ndata: {\"a\":1}\n\n: keep-alive\n\nid: 2\r\nevent: TaskReady\r\ndata: x\r\ndata: y\r\n\r\n";
        let whole = SseParser::default().push(text.as_bytes());
        let expected = vec![frame("1", "TaskCreated", "{\"a\":1}"), frame("2", "TaskReady", "x\ny")];
        assert_eq!(whole, expected);
        let mut parser = SseParser::default();
        let mut by_byte = Vec::new();
        for byte in text.as_bytes() {
            by_byte.extend(parser.push(std::slice::from_ref(byte)));
        }
        assert_eq!(by_byte, expected);
    }

    #[test]
    fn a_frame_without_data_is_no_event() {
        let frames = SseParser::default().push(b"id: 3\nevent: x\n\n");
        assert!(frames.is_empty(), "{frames:?}");
        let frames = SseParser::default().push(b"data:\n\n");
        assert_eq!(frames, vec![SseFrame::default()]);
    }

    #[test]
    fn an_unfinished_frame_waits_for_its_blank_line() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"id: 4\ndata: {}").is_empty());
        assert_eq!(parser.push(b"\n\n"), vec![SseFrame { id: Some("4".into()), event: None, data: "{}".into() }]);
    }
}
