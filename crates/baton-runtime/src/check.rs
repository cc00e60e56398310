//! Checks of a plan against the machine it will run on: do the agents' commands, scripts and
//! working directories exist? These need IO, so they live here rather than in the core; each
//! error names the place in `baton.toml` it is about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_core::config::{Diagnostic, McpTransport, Plan};

/// Finds the program to run: a path (relative to `workdir`) when it has a `/`, else a name
/// looked up in `path_var`.
pub fn resolve_program(program: &str, workdir: &Path, path_var: Option<&str>) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = workdir.join(program);
        return if is_executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("`{program}` is not executable (chmod +x it, or run it through an interpreter)"))
        } else {
            Err(format!("command `{program}` not found (looked in {})", workdir.display()))
        };
    }
    let path_var = path_var.unwrap_or_default();
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("command `{program}` not found in PATH"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

const SCRIPT_EXTENSIONS: &[&str] = &["sh", "bash", "py", "js", "mjs", "rb", "pl", "ts"];

/// What the coordinator lacks to ask its model (`[coordinator] mode = "llm"`): no provider, or
/// its key is not set. Not errors: the rules plan objectives then, and the run says so with a
/// `CoordinatorFallback` event.
pub fn coordinator_notes(plan: &Plan, env: &BTreeMap<String, String>) -> Vec<Diagnostic> {
    let spec = &plan.coordinator;
    if !spec.is_llm() {
        return Vec::new();
    }
    let message = match &spec.provider {
        None => Some(
            "coordinator: mode = \"llm\" names no provider; objectives will be planned by the rules (one task each): set [coordinator] provider and model"
                .to_string(),
        ),
        Some(provider) => provider.api_key_env.as_ref().filter(|var| env.get(*var).is_none_or(|key| key.is_empty())).map(|var| {
            format!(
                "coordinator: provider `{}` reads its API key from {var}, which is not set; objectives will be planned by the rules (one task each) until you export {var}",
                provider.name
            )
        }),
    };
    message.map(|message| Diagnostic { location: spec.location.clone(), message }).into_iter().collect()
}

/// Checks every agent's command and working directory. `base_dir` is the configuration file's
/// directory; `env` is Baton's environment.
pub fn check_environment(plan: &Plan, base_dir: &Path, env: &BTreeMap<String, String>) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for agent in &plan.agents {
        // Every kind of agent is handed its runbook: it must be there to be read.
        if let Some(runbook) = &agent.runbook {
            let path = base_dir.join(runbook);
            if !path.is_file() {
                diagnostics.push(Diagnostic {
                    location: agent.process().map(|process| process.command_location.clone()).unwrap_or_default(),
                    message: format!(
                        "agent `{}`: runbook `{runbook}` not found (looked for {})",
                        agent.name,
                        path.display()
                    ),
                });
            }
        }
        // An LLM agent needs its provider's key (its value is never shown, only its name).
        if let baton_core::config::AgentKind::Llm(llm) = &agent.kind
            && let Some(var) = &llm.provider.api_key_env
            && env.get(var).is_none_or(|key| key.is_empty())
        {
            diagnostics.push(Diagnostic {
                location: llm.provider_location.clone(),
                message: format!(
                    "agent `{}`: provider `{}` reads its API key from {var}, which is not set; export {var}, or point the agent at another provider",
                    agent.name, llm.provider.name
                ),
            });
        }
        // Only process agents run a program here.
        let Some(process) = agent.process() else {
            continue;
        };
        let workdir = process.workdir.as_ref().map_or_else(|| base_dir.to_path_buf(), |dir| base_dir.join(dir));
        if !workdir.is_dir() {
            diagnostics.push(Diagnostic {
                location: process.command_location.clone(),
                message: format!("agent `{}`: working directory {} does not exist", agent.name, workdir.display()),
            });
            continue;
        }
        let Some(program) = process.command.first() else {
            continue;
        };
        if let Err(message) = resolve_program(program, &workdir, env.get("PATH").map(String::as_str)) {
            diagnostics.push(Diagnostic {
                location: process.command_location.clone(),
                message: format!("agent `{}`: {message}", agent.name),
            });
            continue;
        }
        // A script handed to an interpreter (`bash agents/build.sh`) must exist too.
        for arg in &process.command[1..] {
            let is_script = Path::new(arg)
                .extension()
                .and_then(|ext| ext.to_str())
                .is_some_and(|ext| SCRIPT_EXTENSIONS.contains(&ext));
            if is_script && !arg.contains('{') && !arg.starts_with('-') && !workdir.join(arg).exists() {
                diagnostics.push(Diagnostic {
                    location: process.command_location.clone(),
                    message: format!("agent `{}`: script `{arg}` not found in {}", agent.name, workdir.display()),
                });
            }
        }
    }
    // A stdio MCP server's program, looked for as it will be started: in the configuration's
    // directory, on the PATH it is given.
    for server in &plan.mcp_servers {
        let McpTransport::Stdio { command, env: server_env } = &server.transport else { continue };
        let Some(program) = command.first() else { continue };
        let path = server_env.get("PATH").or_else(|| env.get("PATH")).map(String::as_str);
        if let Err(message) = resolve_program(program, base_dir, path) {
            diagnostics.push(Diagnostic {
                location: server.location.clone(),
                message: format!("MCP server `{}`: {message}", server.name),
            });
        }
    }
    diagnostics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runbook_is_reported_with_the_path_looked_for() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let env = BTreeMap::from([("PATH".to_string(), std::env::var("PATH").unwrap_or_default())]);
        let text = "[orchestration]\nname = \"t\"\n\n[[agents]]\nname = \"a\"\ncommand = [\"true\"]\nrunbook = \"runbooks/a.md\"\n";
        let plan = baton_core::config::load("baton.toml", text, &env).expect("a valid configuration");

        let problems = check_environment(&plan, dir.path(), &env);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let looked = dir.path().join("runbooks/a.md").display().to_string();
        assert_eq!(problems[0].message, format!("agent `a`: runbook `runbooks/a.md` not found (looked for {looked})"));
        assert_eq!(problems[0].location.line, 6);

        std::fs::create_dir(dir.path().join("runbooks")).expect("mkdir");
        std::fs::write(dir.path().join("runbooks/a.md"), "# Runbook\n").expect("write the runbook");
        assert!(check_environment(&plan, dir.path(), &env).is_empty());
    }

    #[test]
    fn a_missing_mcp_server_program_is_reported_where_it_is_written() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let env = BTreeMap::from([("PATH".to_string(), std::env::var("PATH").unwrap_or_default())]);
        let text = "[orchestration]\nname = \"t\"\n\n[mcp_servers.fs]\ncommand = [\"no-such-mcp-server\", \".\"]\n\n[mcp_servers.web]\nurl = \"https://example.com/mcp\"\n\n[mcp_servers.ok]\ncommand = [\"true\"]\n";
        let plan = baton_core::config::load("baton.toml", text, &env).expect("a valid configuration");
        let problems = check_environment(&plan, dir.path(), &env);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.starts_with("MCP server `fs`: "), "{}", problems[0].message);
        assert!(problems[0].message.contains("no-such-mcp-server"), "{}", problems[0].message);
        assert_eq!((problems[0].location.line, problems[0].location.column), (5, 11));
    }

    #[test]
    fn an_llm_agent_whose_key_is_not_set_is_reported_without_a_key() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let text = "[orchestration]\nname = \"t\"\n[llm.providers.claude]\nkind = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\n[[agents]]\nname = \"a\"\nruntime = \"llm\"\nprovider = \"claude\"\nmodel = \"claude-sonnet-4-5\"\n";
        let mut env = BTreeMap::new();
        let plan = baton_core::config::load("baton.toml", text, &env).expect("a valid configuration");
        let problems = check_environment(&plan, dir.path(), &env);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].location.line, 9);
        assert_eq!(
            problems[0].message,
            "agent `a`: provider `claude` reads its API key from ANTHROPIC_API_KEY, which is not set; export ANTHROPIC_API_KEY, or point the agent at another provider"
        );
        env.insert("ANTHROPIC_API_KEY".to_string(), "sk-1".to_string());
        assert!(check_environment(&plan, dir.path(), &env).is_empty());
    }
}
