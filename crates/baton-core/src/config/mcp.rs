//! `[mcp_servers.NAME]`: the MCP servers whose tools the run's agents may call, and an agent's
//! `tools = [...]` globs that pick from them.
//!
//! A server is a command started over stdio (`command`, optional `env`) or a Streamable HTTP
//! endpoint (`url`, optional `headers`); exactly one of the two. `${VAR}` in any of these is
//! expanded from the environment, an unset one being an error at its place. The expanded values
//! may hold secrets (a bearer token), so a [`McpServerSpec`] shows and serializes only what was
//! written. `timeout` bounds discovery and each tool call (default 60s).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::Validator;
use super::diagnostics::{Location, unknown};
use crate::time::DurationStr;

/// The server part of `baton/...`: Baton's own tools, never a configured server.
pub const RESERVED_SERVER: &str = "baton";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcpServer {
    command: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    /// How long discovery (`tools/list`) and a tool call may take (default [`DEFAULT_TIMEOUT`]).
    timeout: Option<Spanned<DurationStr>>,
}

/// How long an MCP server gets to list its tools or answer a call, when its `timeout` is not
/// set: a hung server costs the model a tool error, never a held attempt or shutdown.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How Baton reaches an MCP server.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum McpTransport {
    /// A program started by Baton, speaking JSON-RPC on its stdin and stdout.
    Stdio { command: Vec<String>, env: BTreeMap<String, String> },
    /// A Streamable HTTP endpoint.
    Http { url: String, headers: BTreeMap<String, String> },
}

/// A configured MCP server. `transport` is expanded (it may hold secrets) and is neither
/// serialized nor shown by `Debug`; `written` is the same as written in the file.
#[derive(Clone, PartialEq, Serialize)]
pub struct McpServerSpec {
    pub name: String,
    #[serde(skip)]
    pub transport: McpTransport,
    #[serde(flatten)]
    pub written: McpTransport,
    /// Where its `command` or `url` is written, for the checks that need the machine.
    #[serde(skip)]
    pub location: Location,
    /// How long discovery and a tool call may take (`timeout`): then the call is a tool error.
    #[serde(with = "crate::time::humane")]
    pub timeout: Duration,
}

impl fmt::Debug for McpServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(shown) => write!(f, "McpServerSpec {shown}"),
            Err(_) => write!(f, "McpServerSpec {{ name: {:?}, .. }}", self.name),
        }
    }
}

/// Whether `name` may be the server part of `server/tool`: letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit (no `/`, no `*`).
pub fn is_server_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Validator<'_> {
    pub(super) fn mcp_servers(&mut self, raw: &BTreeMap<Spanned<String>, Spanned<RawMcpServer>>) -> Vec<McpServerSpec> {
        let mut specs = Vec::with_capacity(raw.len());
        for (name, server) in raw {
            let text = name.get_ref();
            if !is_server_name(text) {
                self.error(
                    name.span(),
                    format!(
                        "invalid MCP server name `{text}`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit (it is the server part of `server/tool`)"
                    ),
                );
            } else if text == RESERVED_SERVER {
                self.error(
                    name.span(),
                    format!(
                        "the MCP server name `{RESERVED_SERVER}` is reserved for Baton's own tools; choose another"
                    ),
                );
            }
            let server_span = server.span();
            let server = server.get_ref();
            let transport = match (&server.command, &server.url) {
                (Some(_), Some(url)) => {
                    self.error(url.span(), format!("MCP server `{text}` has both `command` and `url`; keep one"));
                    None
                }
                (None, None) => {
                    self.error(
                        server_span.clone(),
                        format!(
                            "MCP server `{text}` needs `command = [\"program\", \"arg\"…]` (stdio) or `url = \"https://…\"` (Streamable HTTP)"
                        ),
                    );
                    None
                }
                (Some(command), None) => Some(self.mcp_stdio(text, command, server)),
                (None, Some(url)) => Some(self.mcp_http(text, url, server)),
            };
            let written_at = match (&server.command, &server.url) {
                (Some(command), _) => command.span(),
                (None, Some(url)) => url.span(),
                (None, None) => server_span,
            };
            if let Some((transport, written)) = transport {
                let location = self.locator.locate(written_at);
                let timeout = match &server.timeout {
                    Some(timeout) if timeout.get_ref().0.is_zero() => {
                        self.error(timeout.span(), format!("MCP server `{text}`: `timeout` must be more than 0s"));
                        DEFAULT_TIMEOUT
                    }
                    Some(timeout) => timeout.get_ref().0,
                    None => DEFAULT_TIMEOUT,
                };
                specs.push(McpServerSpec { name: text.clone(), transport, written, location, timeout });
            }
        }
        specs
    }

    fn mcp_stdio(
        &mut self,
        name: &str,
        command: &Spanned<Vec<Spanned<String>>>,
        server: &RawMcpServer,
    ) -> (McpTransport, McpTransport) {
        if let Some(headers) = server.headers.values().next() {
            self.error(headers.span(), format!("MCP server `{name}` runs a `command`: `headers` are for a `url`"));
        }
        if command.get_ref().is_empty() || command.get_ref()[0].get_ref().trim().is_empty() {
            self.error(command.span(), format!("MCP server `{name}`: `command` must name a program"));
        }
        let expanded = command.get_ref().iter().map(|arg| self.expand(arg)).collect();
        let env = server.env.iter().map(|(key, value)| (key.clone(), self.expand(value))).collect();
        let written = McpTransport::Stdio {
            command: command.get_ref().iter().map(|arg| arg.get_ref().clone()).collect(),
            env: server.env.iter().map(|(key, value)| (key.clone(), value.get_ref().clone())).collect(),
        };
        (McpTransport::Stdio { command: expanded, env }, written)
    }

    fn mcp_http(&mut self, name: &str, url: &Spanned<String>, server: &RawMcpServer) -> (McpTransport, McpTransport) {
        if let Some(env) = server.env.values().next() {
            self.error(env.span(), format!("MCP server `{name}` is reached at a `url`: `env` is for a `command`"));
        }
        let expanded = self.expand(url);
        if !(expanded.starts_with("http://") || expanded.starts_with("https://")) {
            self.error(url.span(), format!("MCP server `{name}`: `url` must start with http:// or https://"));
        }
        let headers = server.headers.iter().map(|(key, value)| (key.clone(), self.expand(value))).collect();
        let written = McpTransport::Http {
            url: url.get_ref().clone(),
            headers: server.headers.iter().map(|(key, value)| (key.clone(), value.get_ref().clone())).collect(),
        };
        (McpTransport::Http { url: expanded, headers }, written)
    }

    /// An agent's `tools` globs: each `SERVER/TOOL`, `*` matching any run of characters; a
    /// server part without `*` must be a configured server (or `baton`).
    pub(super) fn tool_globs(&mut self, globs: &[Spanned<String>]) -> Vec<String> {
        for glob in globs {
            let text = glob.get_ref();
            let Some((server, tool)) = text.split_once('/') else {
                self.error(
                    glob.span(),
                    format!("tool glob `{text}` must be `SERVER/TOOL` (e.g. \"fs/*\", \"search/query\", \"*/*\")"),
                );
                continue;
            };
            let server_ok = server == "*" || is_server_name(&server.replace('*', "x"));
            if !server_ok || tool.is_empty() {
                self.error(
                    glob.span(),
                    format!("tool glob `{text}` must be `SERVER/TOOL` (e.g. \"fs/*\", \"search/query\", \"*/*\")"),
                );
                continue;
            }
            if !server.contains('*')
                && server != RESERVED_SERVER
                && !self.mcp_server_names.iter().any(|known| known == server)
            {
                let mut known: Vec<&str> = self.mcp_server_names.iter().map(String::as_str).collect();
                known.push(RESERVED_SERVER);
                self.error(glob.span(), unknown("MCP server", server, &known));
            }
        }
        globs.iter().map(|glob| glob.get_ref().clone()).collect()
    }
}
