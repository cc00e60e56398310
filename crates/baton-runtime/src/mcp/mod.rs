//! The run's MCP servers (`[mcp_servers.NAME]`) as one [`ToolProvider`]: the [`McpHub`].
//!
//! Each server has a supervisor task: it connects (a stdio server is started through the
//! process module, like an agent; an HTTP server is reached with rmcp's Streamable HTTP client),
//! discovers the tools, and waits. When the server ends (a stdio server exits, a connection
//! breaks) it is connected again after a backoff that doubles up to a limit, like an agent's
//! restart. `notifications/tools/list_changed` makes it discover the tools again.
//!
//! Both protocol eras are spoken, chosen per server by rmcp: `server/discover` first (the
//! stateless 2026-07-28 era), falling back to `initialize` (2025-11-25, with an
//! `Mcp-Session-Id` over HTTP) when the server does not know it.
//!
//! Every exchange with a server is bounded by its `timeout` (default 60s; the handshake gets at
//! least that, since it includes starting the program) and raced with the
//! run's stop: a server that hangs costs a tool error given back to the model (or a failed
//! discovery, then a reconnection), never an attempt or a shutdown held forever.
//!
//! The hub's state is behind a std mutex: it is only read or replaced, never held across an
//! await. Calls clone the server's peer out of it and await without it.

pub mod config;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::{CallToolRequestParams, ClientConfig, Implementation, ProtocolVersion, SubscriptionFilter};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, NotificationContext, Peer, RunningService, Subscription};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use baton_core::config::{McpServerSpec, McpTransport};

use crate::process::ProcessEnv;
use crate::tools::{Tool, ToolError, ToolProvider, ToolResult};

/// How the hub's servers are (re)connected.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay before the first reconnection; doubled for each one that follows.
    pub first: Duration,
    pub max: Duration,
    /// A connection that lasted this long resets the delay to `first`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { first: Duration::from_secs(1), max: Duration::from_secs(60), reset_after: Duration::from_secs(60) }
    }
}

/// How a server is, as `GET /tools` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerStatus {
    pub name: String,
    /// `stdio` or `http`.
    pub transport: &'static str,
    /// `starting`, `up` or `down`.
    pub state: &'static str,
    /// The protocol version agreed with it (`2025-11-25`, `2026-07-28`).
    pub protocol: Option<String>,
    /// Why it is down, when it is.
    pub error: Option<String>,
    /// How many times it was started (or connected) again after the first try.
    pub restarts: u64,
    pub n_tools: usize,
}

/// The run's MCP servers. Cheap to share (`Arc`); started once with [`McpHub::start`].
pub struct McpHub {
    servers: Vec<Arc<Server>>,
    process_env: Option<ProcessEnv>,
    backoff: Backoff,
    /// Bumped on every change of a server's state or tools, for those who wait for one.
    changes: watch::Sender<u64>,
    /// Fires when the hub stops ([`McpHub::start`]'s `cancel`): calls under way end then.
    stop: CancellationToken,
}

struct Server {
    spec: McpServerSpec,
    /// See the module's comment: never held across an await.
    state: Mutex<State>,
    /// `notifications/tools/list_changed` arrived.
    list_changed: Notify,
}

#[derive(Default)]
struct State {
    peer: Option<Peer<RoleClient>>,
    tools: Vec<Tool>,
    protocol: Option<String>,
    error: Option<String>,
    started: bool,
    restarts: u64,
}

impl McpHub {
    /// A hub of `servers`; stdio servers start with `process_env`'s directory and environment
    /// (`None`: only HTTP servers can be reached).
    pub fn new(servers: &[McpServerSpec], process_env: Option<ProcessEnv>) -> Arc<McpHub> {
        McpHub::with_backoff(servers, process_env, Backoff::default())
    }

    pub fn with_backoff(servers: &[McpServerSpec], process_env: Option<ProcessEnv>, backoff: Backoff) -> Arc<McpHub> {
        let servers = servers
            .iter()
            .map(|spec| {
                Arc::new(Server {
                    spec: spec.clone(),
                    state: Mutex::new(State::default()),
                    list_changed: Notify::new(),
                })
            })
            .collect();
        Arc::new(McpHub {
            servers,
            process_env,
            backoff,
            changes: watch::Sender::new(0),
            stop: CancellationToken::new(),
        })
    }

    /// A hub without servers.
    pub fn empty() -> Arc<McpHub> {
        McpHub::new(&[], None)
    }

    /// Starts every server's supervisor on `tasks`; they stop when `cancel` fires.
    pub fn start(self: &Arc<Self>, cancel: &CancellationToken, tasks: &TaskTracker) {
        tasks.spawn({
            let (cancel, stop) = (cancel.clone(), self.stop.clone());
            async move {
                cancel.cancelled().await;
                stop.cancel();
            }
        });
        for server in &self.servers {
            let hub = Arc::clone(self);
            let server = Arc::clone(server);
            let cancel = cancel.clone();
            tasks.spawn(async move { hub.supervise(server, cancel).await });
        }
    }

    /// A receiver that sees a new value whenever a server's state or tools change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until every server has been tried once (it is up, or it said why it is down).
    pub async fn ready(&self) {
        let mut changes = self.changes();
        let _ = changes.wait_for(|_| self.servers.iter().all(|server| lock(&server.state).started)).await;
    }

    pub fn statuses(&self) -> Vec<ServerStatus> {
        self.servers
            .iter()
            .map(|server| {
                let state = lock(&server.state);
                ServerStatus {
                    name: server.spec.name.clone(),
                    transport: match server.spec.transport {
                        McpTransport::Stdio { .. } => "stdio",
                        McpTransport::Http { .. } => "http",
                    },
                    state: match (&state.peer, state.started) {
                        (Some(_), _) => "up",
                        (None, false) => "starting",
                        (None, true) => "down",
                    },
                    protocol: state.protocol.clone(),
                    error: state.error.clone(),
                    restarts: state.restarts,
                    n_tools: state.tools.len(),
                }
            })
            .collect()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    async fn supervise(&self, server: Arc<Server>, cancel: CancellationToken) {
        let mut delay = self.backoff.first;
        let mut first = true;
        while !cancel.is_cancelled() {
            if !first {
                lock(&server.state).restarts += 1;
            }
            first = false;
            let connected_at = tokio::time::Instant::now();
            let ended = match self.connect(&server, &cancel).await {
                Ok(running) => self.serve(&server, running, &cancel).await,
                Err(error) => error,
            };
            {
                let mut state = lock(&server.state);
                state.peer = None;
                state.tools.clear();
                state.started = true;
                state.error = Some(ended.clone());
            }
            self.changed();
            if cancel.is_cancelled() {
                break;
            }
            tracing::warn!(server = %server.spec.name, error = %ended, "MCP server is down; connecting again in {delay:?}");
            if connected_at.elapsed() >= self.backoff.reset_after {
                delay = self.backoff.first;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.backoff.max);
        }
    }

    /// Starts or reaches the server and agrees on a protocol.
    async fn connect(
        &self,
        server: &Arc<Server>,
        cancel: &CancellationToken,
    ) -> Result<RunningService<RoleClient, Handler>, String> {
        let handler = Handler { server: Arc::clone(server) };
        let lifecycle = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        };
        let connecting = async {
            match &server.spec.transport {
                McpTransport::Stdio { command, env } => {
                    let process_env =
                        self.process_env.as_ref().ok_or("stdio MCP servers are not started here".to_string())?;
                    let command = crate::process::mcp_server_command(command, env, process_env)?;
                    let log_path = process_env.log_dir.join(format!("mcp-{}.log", server.spec.name));
                    let (transport, stderr) = TokioChildProcess::builder(command)
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .map_err(|error| format!("cannot start `{}`: {error}", command_name(command_of(server))))?;
                    // Not awaited on purpose: it ends when the server's stderr closes, which a
                    // descendant of the server may hold open after the run has stopped.
                    if let Some(stderr) = stderr {
                        tokio::spawn(copy_to_log(stderr, log_path));
                    }
                    handler
                        .serve_with_lifecycle(transport, lifecycle)
                        .await
                        .map_err(|error| format!("cannot connect: {error}"))
                }
                McpTransport::Http { url, headers } => {
                    let mut custom = std::collections::HashMap::new();
                    for (key, value) in headers {
                        let name = reqwest_header_name(key)?;
                        let value =
                            value.parse().map_err(|_| format!("header `{key}` has a value HTTP cannot carry"))?;
                        custom.insert(name, value);
                    }
                    let config = StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(custom);
                    let transport = StreamableHttpClientTransport::from_config(config);
                    handler.serve_with_lifecycle(transport, lifecycle).await.map_err(|error| {
                        // Said with the URL as written: the expanded one may hold a secret
                        // (`?key=${TOKEN}`), and the HTTP client's errors name it.
                        let written = match &server.spec.written {
                            McpTransport::Http { url, .. } => url.as_str(),
                            McpTransport::Stdio { .. } => "",
                        };
                        let said = format!("cannot connect to {url}: {error}");
                        if url.is_empty() { said } else { said.replace(url.as_str(), written) }
                    })
                }
            }
        };
        // Starting a program (an interpreter loading its libraries) may take longer than a
        // call is allowed: the handshake gets at least the default.
        let timeout = server.spec.timeout.max(baton_core::config::DEFAULT_MCP_TIMEOUT);
        tokio::select! {
            _ = cancel.cancelled() => Err("the run is stopping".to_string()),
            result = tokio::time::timeout(timeout, connecting) => result.unwrap_or_else(|_| {
                Err(format!("cannot connect: no answer within {} (its `timeout`)", baton_core::time::format_duration(timeout)))
            }),
        }
    }

    /// Discovers the tools of a connected server and serves calls until the connection ends or
    /// the run stops; rediscovers on `list_changed`. Returns why it ended.
    async fn serve(
        &self,
        server: &Arc<Server>,
        running: RunningService<RoleClient, Handler>,
        cancel: &CancellationToken,
    ) -> String {
        let peer = running.peer().clone();
        let protocol = running.peer().peer_info().map(|info| info.protocol_version.as_str().to_string());
        // On the stateless era, list changes come on a subscription, not as free notifications.
        let mut subscription = if protocol.as_deref() == Some(ProtocolVersion::V_2026_07_28.as_str()) {
            let filter = SubscriptionFilter::builder().tools_list_changed().build();
            match tokio::time::timeout(server.spec.timeout, peer.listen(filter)).await {
                Ok(Ok(subscription)) => Some(subscription),
                Err(_) => {
                    tracing::debug!(server = %server.spec.name, "no tools list subscription: no answer in time");
                    None
                }
                Ok(Err(error)) => {
                    tracing::debug!(server = %server.spec.name, %error, "no tools list subscription");
                    None
                }
            }
        } else {
            None
        };
        let discovered = tokio::select! {
            _ = cancel.cancelled() => Err("the run stopped".to_string()),
            discovered = self.discover(server, &peer) => discovered,
        };
        if let Err(error) = discovered {
            let _ = running.cancel().await;
            return error;
        }
        {
            let mut state = lock(&server.state);
            state.peer = Some(peer.clone());
            state.protocol = protocol;
            state.started = true;
            state.error = None;
        }
        self.changed();
        let token = running.cancellation_token();
        let mut waiting = std::pin::pin!(running.waiting());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    token.cancel();
                    let _ = waiting.await;
                    return "the run stopped".to_string();
                }
                quit = &mut waiting => {
                    return match quit {
                        Ok(reason) => format!("the connection ended ({reason:?})"),
                        Err(error) => format!("the connection failed: {error}"),
                    };
                }
                // A subscription's notifications wait in it while the tools are listed.
                next = next_notification(&mut subscription) => {
                    match next {
                        Some(_) => server.list_changed.notify_one(),
                        None => subscription = None,
                    }
                }
                _ = server.list_changed.notified() => {
                    let discovered = tokio::select! {
                        _ = cancel.cancelled() => continue,
                        discovered = self.discover(server, &peer) => discovered,
                    };
                    if let Err(error) = discovered {
                        tracing::warn!(server = %server.spec.name, %error, "cannot list the tools again");
                    }
                    self.changed();
                }
            }
        }
    }

    /// `tools/list`, every page, into the server's state.
    async fn discover(&self, server: &Server, peer: &Peer<RoleClient>) -> Result<(), String> {
        let timeout = server.spec.timeout;
        let listed = tokio::time::timeout(timeout, peer.list_all_tools())
            .await
            .map_err(|_| {
                format!(
                    "cannot list its tools: no answer within {} (its `timeout`)",
                    baton_core::time::format_duration(timeout)
                )
            })?
            .map_err(|error| format!("cannot list its tools: {error}"))?;
        let tools = listed
            .into_iter()
            .map(|tool| Tool {
                name: format!("{}/{}", server.spec.name, tool.name),
                description: tool.description.map(|text| text.to_string()).unwrap_or_default(),
                input_schema: Value::Object((*tool.input_schema).clone()),
            })
            .collect();
        lock(&server.state).tools = tools;
        Ok(())
    }

    fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|server| server.spec.name == name)
    }
}

#[async_trait]
impl ToolProvider for McpHub {
    async fn list(&self) -> Vec<Tool> {
        self.servers.iter().flat_map(|server| lock(&server.state).tools.clone()).collect()
    }

    async fn call(&self, name: &str, arguments: Value) -> Result<ToolResult, ToolError> {
        let Some((server_name, tool)) = name.split_once('/') else {
            return Err(ToolError::Invalid(format!("a tool is named `server/tool`, not `{name}`")));
        };
        let server = self.server(server_name).ok_or_else(|| ToolError::NotFound(name.to_string()))?;
        let peer = {
            let state = lock(&server.state);
            let Some(peer) = state.peer.clone() else {
                let why = state.error.clone().unwrap_or_else(|| "it is starting".to_string());
                return Err(ToolError::Unavailable(format!("MCP server `{server_name}` is down: {why}")));
            };
            if !state.tools.iter().any(|known| known.name == name) {
                return Err(ToolError::NotFound(name.to_string()));
            }
            peer
        };
        let arguments = match arguments {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => return Err(ToolError::Invalid(format!("the arguments must be a JSON object, not {other}"))),
        };
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = arguments;
        let timeout = server.spec.timeout;
        // Bounded, and raced with the hub's stop: a hung server is a tool error for the model.
        let answered = tokio::select! {
            answered = tokio::time::timeout(timeout, peer.call_tool(params)) => answered,
            () = self.stop.cancelled() => {
                return Err(ToolError::Unavailable(format!("MCP server `{server_name}`: the run is stopping")));
            }
        };
        let Ok(answered) = answered else {
            let waited = baton_core::time::format_duration(timeout);
            return Ok(ToolResult::text(
                format!(
                    "{name}: MCP server `{server_name}` did not answer within {waited} (its `timeout`); the call was given up"
                ),
                true,
            ));
        };
        let result = answered.map_err(|error| match error {
            rmcp::ServiceError::McpError(error) if error.code == rmcp::model::ErrorCode::INVALID_PARAMS => {
                ToolError::Invalid(error.message.to_string())
            }
            rmcp::ServiceError::McpError(error) => ToolError::Invalid(format!("{name}: {}", error.message)),
            other => ToolError::Unavailable(format!("MCP server `{server_name}`: {other}")),
        })?;
        Ok(ToolResult {
            content: result.content.iter().map(|block| serde_json::to_value(block).unwrap_or(Value::Null)).collect(),
            structured: result.structured_content,
            is_error: result.is_error.unwrap_or(false),
        })
    }
}

/// What the hub's client says and hears: it is Baton, and a server's tools changed.
struct Handler {
    server: Arc<Server>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("baton", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.server.list_changed.notify_one();
    }
}

/// The next notification of a subscription; `None` when it ended (or there is none: then it
/// never answers).
async fn next_notification(subscription: &mut Option<Subscription>) -> Option<()> {
    match subscription {
        Some(subscription) => subscription.next().await.ok().flatten().map(|_| ()),
        None => std::future::pending().await,
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn command_of(server: &Server) -> &[String] {
    match &server.spec.transport {
        McpTransport::Stdio { command, .. } => command,
        McpTransport::Http { .. } => &[],
    }
}

fn command_name(command: &[String]) -> &str {
    command.first().map_or("", String::as_str)
}

fn reqwest_header_name(key: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(key.as_bytes()).map_err(|_| format!("`{key}` is not a valid HTTP header name"))
}

/// Copies a stdio server's stderr into its log file, `mcp-NAME.log` in the agents' log
/// directory.
async fn copy_to_log(mut stderr: tokio::process::ChildStderr, path: std::path::PathBuf) {
    let _ = tokio::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new("."))).await;
    let Ok(mut file) = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await else {
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        return;
    };
    let _ = tokio::io::copy(&mut stderr, &mut file).await;
}
