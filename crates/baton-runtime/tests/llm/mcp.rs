//! An LLM agent that calls an MCP tool and a Baton tool in one turn, end to end: the engine
//! with the SQLite store, the stand-in provider scripting the calls, and a real MCP server
//! (`tests/mcp/server.py`, on the Python `mcp` SDK that `.ci/mcp/setup` installs). Skipped,
//! saying so, unless `BATON_TEST_MCP=1`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use baton_core::config::{self, Plan};
use baton_core::model::TaskState;
use baton_core::transcript::Role;
use baton_runtime::engine::{self, Engine, EngineOptions};
use baton_runtime::llm::LlmOptions;
use baton_runtime::mcp::McpHub;
use baton_runtime::tools::ToolProvider;
use baton_store::Store;
use baton_store::sqlite::SqliteStore;

use super::standin::{self, Reply, Standin};
use super::{common, env, lead_task, process_env};

/// The Python with the `mcp` SDK, or `None` (with a notice) when `BATON_TEST_MCP` is not set.
pub(crate) fn python() -> Option<PathBuf> {
    if std::env::var_os("BATON_TEST_MCP").is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: set BATON_TEST_MCP=1 after .ci/mcp/setup to run the LLM agent against a real MCP server"
        );
        return None;
    }
    let python = std::env::var_os("BATON_TEST_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/mcp-venv/bin/python"));
    assert!(python.exists(), "{} is missing: run .ci/mcp/setup", python.display());
    Some(python)
}

/// The test MCP server's script.
pub(crate) fn server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/server.py")
}

fn plan(url: &str, python: &Path) -> Plan {
    let text = format!(
        r#"
[orchestration]
name = "llm-mcp"

[llm.providers.standin]
kind = "anthropic"
base_url = "{url}"
api_key_env = "STANDIN_KEY"

[mcp_servers.py]
command = ["{python}", "{script}", "stdio"]

[[agents]]
name = "lead"
role = "Team lead"
runtime = "llm"
provider = "standin"
model = "claude-sonnet-4-5"
capabilities = ["lead"]
tools = ["baton/*", "py/echo"]
max_tokens = 1000

[[agents]]
name = "worker"
capabilities = ["work"]
command = ["sh", "-c", "echo done"]
"#,
        python = python.display(),
        script = server_script().display(),
    );
    config::load("baton.toml", &text, &env()).unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test]
async fn an_llm_agent_calls_an_mcp_tool_and_a_baton_tool_in_one_task() {
    let Some(python) = python() else { return };
    let standin = Standin::start(vec![
        Reply::Stream(standin::anthropic_tools(
            &[
                ("toolu_echo", "py__echo", json!({"text": "echoed by a real MCP server"})),
                ("toolu_sub", "baton__create_tasks", json!({"tasks": [{"title": "Sub", "requires": ["work"]}]})),
            ],
            500,
            40,
        )),
        Reply::Stream(standin::anthropic_text("Both tools worked.", 600, 10, 0, 0)),
    ]);
    let plan = plan(&standin.url, &python);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let mut process_env = process_env(dir.path());
    process_env.mcp_servers = plan.mcp_servers.clone();
    let hub = McpHub::new(&plan.mcp_servers, Some(process_env.clone()));
    let external = Arc::clone(&hub) as Arc<dyn ToolProvider>;
    let runtimes = engine::agent_runtimes(process_env, Some(external), LlmOptions::default());
    let mut options = EngineOptions::new(plan, Arc::clone(&store) as Arc<dyn Store>, runtimes);
    options.keep_open = true;
    options.tools = Arc::clone(&hub);
    let (engine, handle) = Engine::new(options);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));
    let run_id = handle.run_id().wait_for(Option::is_some).await.expect("a run").clone().expect("an id");
    tokio::time::timeout(std::time::Duration::from_secs(60), hub.ready()).await.expect("the MCP server was tried");
    assert_eq!(hub.statuses()[0].state, "up", "{:?}", hub.statuses());

    let ids = handle.create_tasks(vec![lead_task("Use both tools", Value::Null)]).await.unwrap();
    let task = common::ended(store.as_ref(), ids[0]).await;
    assert_eq!(
        (task.state, task.result.clone()),
        (TaskState::Succeeded, Some(json!("Both tools worked."))),
        "{task:?}"
    );

    // The model was offered both tools, and heard back from both.
    let received = standin.received();
    assert_eq!(received.len(), 2);
    let offered: Vec<&str> =
        received[0].body["tools"].as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    assert!(offered.contains(&"py__echo") && offered.contains(&"baton__create_tasks"), "{offered:?}");
    assert!(!offered.contains(&"py__fail"), "only what the globs pick: {offered:?}");
    let results = &received[1].body["messages"][2]["content"];
    assert_eq!(results[0]["tool_use_id"], "toolu_echo");
    assert_eq!(results[0]["content"], "echoed by a real MCP server", "{results}");
    assert_eq!(results[1]["tool_use_id"], "toolu_sub");
    assert!(results[1]["content"].as_str().unwrap().starts_with("created tasks"), "{results}");

    // The Baton tool acted: the sub-task joined the run and ran.
    let tasks = store.tasks(&run_id, &Default::default()).await.unwrap();
    let sub = tasks.iter().find(|task| task.title == "Sub").expect("the sub-task");
    assert_eq!(common::ended(store.as_ref(), sub.id).await.state, TaskState::Succeeded);

    // The transcript is stored, the MCP tool's call and result in it.
    let transcript = store.transcript(ids[0]).await.unwrap();
    let roles: Vec<Role> = transcript.iter().map(|entry| entry.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool, Role::Tool, Role::Assistant]);
    let called: Vec<&str> = transcript[2].tool_calls.iter().map(|call| call.name.as_str()).collect();
    assert_eq!(called, ["py/echo", "baton/create_tasks"]);
    assert_eq!(transcript[3].tool_call_id.as_deref(), Some("toolu_echo"));
    assert!(transcript[3].content.to_string().contains("echoed by a real MCP server"), "{:?}", transcript[3]);

    shutdown.cancel();
    let _ = running.await;
}
