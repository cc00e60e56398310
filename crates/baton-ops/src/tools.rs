//! Tools: the tools of the run's MCP servers (`[mcp_servers]`), listed, searched and called.
//! Listing is reading (`ReadTools`); a call may change the world (`CallTools`), and the
//! interfaces write it to the audit log as they do every mutating request.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_runtime::mcp::ServerStatus;
use baton_runtime::tools::{ToolError, ToolProvider, allowed};

use crate::{Action, Caller, Error, Ops, Result};

/// Serialized as the query string a client sends (absent fields left out).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ToolQuery {
    /// Words that must all appear (case-insensitive) in a tool's name or description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Only the tools this agent's `tools` globs allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolView {
    /// `server/tool`.
    pub name: String,
    pub server: String,
    pub description: String,
    /// The JSON Schema of its arguments.
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerView {
    pub name: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// `starting`, `up`, `down`, or `stopped` when nothing executes the run here.
    pub state: String,
    /// The protocol version agreed with the server: `2025-11-25`, `2026-07-28`.
    pub protocol: Option<String>,
    pub error: Option<String>,
    pub restarts: u64,
    pub n_tools: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolList {
    pub servers: Vec<ServerView>,
    pub tools: Vec<ToolView>,
}

/// What a call returned; a tool that ran and failed has `is_error` set (still `200`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolCallResult {
    /// MCP content blocks: `{"type": "text", "text": …}`, images, resources.
    #[schema(value_type = Vec<Object>)]
    pub content: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub structured: Option<serde_json::Value>,
    pub is_error: bool,
}

impl From<ServerStatus> for ServerView {
    fn from(status: ServerStatus) -> ServerView {
        ServerView {
            name: status.name,
            transport: status.transport.to_string(),
            state: status.state.to_string(),
            protocol: status.protocol,
            error: status.error,
            restarts: status.restarts,
            n_tools: status.n_tools,
        }
    }
}

/// Whether every word of `query` is in the tool's name or description.
fn matches(tool: &ToolView, query: &str) -> bool {
    let haystack = format!("{} {}", tool.name, tool.description).to_lowercase();
    query.split_whitespace().all(|word| haystack.contains(&word.to_lowercase()))
}

impl Ops {
    /// The run's MCP servers and their tools, searched with `q`, for one agent with `agent`.
    pub async fn tools(&self, caller: &Caller, query: ToolQuery) -> Result<ToolList> {
        caller.require(Action::ReadTools)?;
        let plan = self.plan();
        let globs = match &query.agent {
            Some(name) => Some(
                plan.agent(name)
                    .ok_or_else(|| Error::not_found(format!("no agent `{name}` in this run")))?
                    .tools
                    .clone(),
            ),
            None => None,
        };
        let Some(engine) = self.engine().ok().filter(|_| self.is_running()) else {
            let servers = plan
                .mcp_servers
                .iter()
                .map(|server| ServerView {
                    name: server.name.clone(),
                    transport: match server.transport {
                        baton_core::config::McpTransport::Stdio { .. } => "stdio".into(),
                        baton_core::config::McpTransport::Http { .. } => "http".into(),
                    },
                    state: "stopped".into(),
                    protocol: None,
                    error: None,
                    restarts: 0,
                    n_tools: 0,
                })
                .collect();
            return Ok(ToolList { servers, tools: Vec::new() });
        };
        let hub = engine.tools();
        let tools = hub
            .list()
            .await
            .into_iter()
            .map(|tool| ToolView {
                server: tool.server().to_string(),
                name: tool.name,
                description: tool.description,
                input_schema: tool.input_schema,
            })
            .filter(|tool| globs.as_ref().is_none_or(|globs| allowed(globs, &tool.name)))
            .filter(|tool| query.q.as_deref().is_none_or(|q| matches(tool, q)))
            .collect();
        let servers = hub.statuses().into_iter().map(ServerView::from).collect();
        Ok(ToolList { servers, tools })
    }

    /// Calls the tool `name` (`server/tool`) with `arguments` (a JSON object).
    pub async fn call_tool(&self, caller: &Caller, name: &str, arguments: serde_json::Value) -> Result<ToolCallResult> {
        caller.require(Action::CallTools)?;
        let hub = self.engine()?.tools();
        let result = hub.call(name, arguments).await.map_err(|error| match error {
            ToolError::NotFound(_) => Error::not_found(format!("{error}; `baton tools` lists the run's tools")),
            ToolError::Invalid(message) => Error::invalid(message),
            ToolError::Unavailable(message) => Error::unavailable(message),
        })?;
        Ok(ToolCallResult { content: result.content, structured: result.structured, is_error: result.is_error })
    }
}
