//! `baton tools` (the run's MCP servers and their tools) and `baton tool call`.

use anyhow::Context as _;

use baton_ops::tools::{ToolList, ToolQuery};

use super::source::Source;
use crate::output;
use crate::{Cli, Failure, ToolAction};

pub(super) async fn tools(
    cli: &Cli,
    query: Option<String>,
    agent: Option<String>,
    json: bool,
    run: Option<&str>,
) -> Result<u8, Failure> {
    let source = Source::open(cli, run).await?;
    let list: ToolList = source.reader().tools(ToolQuery { q: query, agent }).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&list).context("serializing")?);
        return Ok(0);
    }
    if list.servers.is_empty() {
        outln!("no MCP servers in the plan: add [mcp_servers.NAME] to baton.toml");
        return Ok(0);
    }
    let mut servers = output::table(&["server", "transport", "state", "protocol", "tools", "restarts", "error"]);
    for server in &list.servers {
        servers.add_row(vec![
            server.name.clone(),
            server.transport.clone(),
            server.state.clone(),
            server.protocol.clone().unwrap_or_else(|| "-".into()),
            server.n_tools.to_string(),
            server.restarts.to_string(),
            server.error.clone().unwrap_or_default(),
        ]);
    }
    outln!("{servers}");
    if list.tools.is_empty() {
        outln!(
            "no tools{}",
            if list.servers.iter().any(|server| server.state == "stopped") {
                " (the run is not executing: its servers start with `baton run` or `baton serve`)"
            } else {
                ""
            }
        );
        return Ok(0);
    }
    let mut tools = output::table(&["tool", "description"]);
    for tool in &list.tools {
        tools.add_row(vec![tool.name.clone(), first_line(&tool.description)]);
    }
    outln!("{tools}");
    Ok(0)
}

pub(super) async fn tool(cli: &Cli, action: &ToolAction) -> Result<u8, Failure> {
    let ToolAction::Call { name, arguments, json, run } = action;
    if name.split_once('/').is_none_or(|(server, tool)| server.is_empty() || tool.is_empty()) {
        return Err(Failure::usage(format!("a tool is named SERVER/TOOL (e.g. fs/read_file), not `{name}`")));
    }
    let arguments: serde_json::Value = serde_json::from_str(arguments).map_err(|error| {
        Failure::usage(format!("--args is not JSON: {error}; e.g. --args '{{\"path\": \"README.md\"}}'"))
    })?;
    if !arguments.is_object() {
        return Err(Failure::usage("--args must be a JSON object, e.g. '{\"path\": \"README.md\"}'"));
    }
    let client = super::source::front_door(cli, run.as_deref()).await?;
    let result = client.call_tool(name, &arguments).await?;
    if *json {
        outln!("{}", serde_json::to_string_pretty(&result).context("serializing")?);
    } else {
        for block in &result.content {
            match block.get("text").and_then(serde_json::Value::as_str) {
                Some(text) => outln!("{text}"),
                None => outln!("{block}"),
            }
        }
    }
    Ok(if result.is_error { 1 } else { 0 })
}

/// A description's first line, cut to fit a table (`--json` has it whole).
fn first_line(description: &str) -> String {
    const MAX: usize = 100;
    let line = description.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}
