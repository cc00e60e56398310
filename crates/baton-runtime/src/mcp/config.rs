//! `{mcp.config}`: the MCP servers an agent may use, as the JSON file coding-agent CLIs read
//! (`--mcp-config FILE`):
//! `{"mcpServers": {"fs": {"command": "npx", "args": [...], "env": {...}},
//! "search": {"type": "http", "url": "...", "headers": {...}}}}`.
//!
//! Only the servers the agent's `tools` globs reach are in it (a glob's server part matches the
//! server's name). It holds expanded values (tokens in headers), so it is written readable by
//! its owner only (0600), in the run's directory, never in the agent's working directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use baton_core::config::{McpServerSpec, McpTransport};

/// The `mcpServers` document for an agent with these `tools` globs.
pub fn document(servers: &[McpServerSpec], globs: &[String]) -> Value {
    let mut entries = Map::new();
    for server in servers.iter().filter(|server| crate::tools::server_allowed(globs, &server.name)) {
        let entry = match &server.transport {
            McpTransport::Stdio { command, env } => {
                let (program, args) = command.split_first().map_or(("", &[][..]), |(program, args)| (program, args));
                json!({"command": program, "args": args, "env": env})
            }
            McpTransport::Http { url, headers } => json!({"type": "http", "url": url, "headers": headers}),
        };
        entries.insert(server.name.clone(), entry);
    }
    json!({ "mcpServers": entries })
}

/// Where an agent's file is: `mcp/AGENT.json` in the run's state directory.
pub fn path(state_dir: &Path, agent: &str) -> PathBuf {
    state_dir.join("mcp").join(format!("{agent}.json"))
}

/// Writes an agent's file at `path` (mode 0600, replacing an older one).
pub fn write(path: &Path, servers: &[McpServerSpec], globs: &[String]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_vec_pretty(&document(servers, globs)).map_err(std::io::Error::other)?;
    // Written beside, then renamed: a reader never sees half a file, and the mode is set
    // before any byte is written.
    let partial = dir.join(format!(".{file_name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}
