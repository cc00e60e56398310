//! Tools an agent can call: the seam between those who call tools (LLM agents; the API's
//! `POST /tools/{server}/{tool}`) and those who provide them (MCP servers; Baton's own tools).
//!
//! A tool is named `server/tool`: `fs/read_file` is the tool `read_file` of the MCP server
//! configured as `[mcp_servers.fs]`; Baton's own tools are under `baton/`. An agent's
//! `tools = ["fs/*", "baton/*"]` globs pick from these names.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A tool as its provider describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// `server/tool`.
    pub name: String,
    /// What it does, for a model (and a person) choosing a tool.
    pub description: String,
    /// The JSON Schema of its arguments (an object schema).
    pub input_schema: Value,
}

impl Tool {
    /// The server part of the name (`fs` of `fs/read_file`).
    pub fn server(&self) -> &str {
        self.name.split_once('/').map_or(self.name.as_str(), |(server, _)| server)
    }
}

/// What a call returned. A tool that ran and failed (`isError` in MCP) is a result with
/// `is_error` set, given back to the model to act on, not an error of the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The content blocks as the provider gave them (MCP content: `{"type": "text", …}`).
    pub content: Vec<Value>,
    /// Structured output, when the tool gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<Value>,
    #[serde(default)]
    pub is_error: bool,
}

impl ToolResult {
    /// A result of one text block.
    pub fn text(text: impl Into<String>, is_error: bool) -> ToolResult {
        ToolResult {
            content: vec![serde_json::json!({"type": "text", "text": text.into()})],
            structured: None,
            is_error,
        }
    }
}

/// Why a call could not be made at all (no such tool, its server is down, bad arguments).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("no tool `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Those who provide tools: the MCP servers of a run, Baton's own tools.
#[async_trait]
pub trait ToolProvider: Send + Sync + 'static {
    /// The tools there are now.
    async fn list(&self) -> Vec<Tool>;

    /// Calls the tool named `name` (`server/tool`) with `arguments` (a JSON object).
    async fn call(&self, name: &str, arguments: Value) -> Result<ToolResult, ToolError>;
}

/// Whether `name` (`server/tool`) matches `glob`, where `*` matches any run of characters
/// (also `/`): `fs/*`, `*/read_*`, `search/query`. The one place an agent's `tools` globs are
/// matched: the MCP hub's listing for an agent, `{mcp.config}` and LLM agents use it.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole name.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(idx) => rest = &rest[idx + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether an agent with these `tools` globs may call the tool `name`.
pub fn allowed(globs: &[String], name: &str) -> bool {
    globs.iter().any(|glob| glob_matches(glob, name))
}

/// Whether an agent with these `tools` globs may call some tool of `server`: a glob's server
/// part matches it. (`{mcp.config}` hands a CLI agent whole servers.)
pub fn server_allowed(globs: &[String], server: &str) -> bool {
    globs.iter().any(|glob| {
        let server_glob = glob.split_once('/').map_or(glob.as_str(), |(server, _)| server);
        glob_matches(server_glob, server)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        let cases = [
            ("fs/*", "fs/read_file", true),
            ("fs/*", "fsx/read_file", false),
            ("fs/read_file", "fs/read_file", true),
            ("fs/read", "fs/read_file", false),
            ("*/read_*", "fs/read_file", true),
            ("*/read_*", "fs/write_file", false),
            ("*", "any/thing", true),
            ("s*/*y", "search/query", true),
            ("a*a", "a", false),
            ("a*a", "aa", true),
        ];
        for (glob, name, expected) in cases {
            assert_eq!(glob_matches(glob, name), expected, "{glob} ~ {name}");
        }
        assert!(allowed(&["fs/*".into(), "baton/*".into()], "baton/create_task"));
        assert!(!allowed(&[], "fs/read_file"));
        assert!(server_allowed(&["fs/read_file".into()], "fs"));
        assert!(server_allowed(&["*/x".into()], "search"));
        assert!(!server_allowed(&["fs/*".into()], "search"));
    }
}
