//! Changing the plan of a running engine through its handle, with real per-task processes on a
//! SQLite store: an agent added runs the task only it can run, a removed one no longer runs
//! anything, and a reloaded configuration brings agents back and creates its new tasks.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use baton_core::config::{self, AgentSpec, Plan};
use baton_core::model::TaskState;
use baton_runtime::engine::{self, Engine, EngineOptions};
use baton_runtime::process::ProcessEnv;
use baton_store::sqlite::SqliteStore;
use baton_store::{EventQuery, Store};
use common::{ended, task};

const PLAN: &str = r#"
[orchestration]
name = "reconfigure"

[[agents]]
name = "base"
capabilities = ["base"]
command = ["sh", "-c", "echo ok"]
"#;

const RELOADED: &str = r#"
[orchestration]
name = "reconfigure"
max_concurrent_agents = 3

[[agents]]
name = "base"
capabilities = ["base"]
command = ["sh", "-c", "echo ok"]

[[agents]]
name = "extra"
capabilities = ["extra"]
command = ["sh", "-c", "echo reloaded"]

[[tasks]]
key = "from-file"
title = "From the file"
requires = ["extra"]
"#;

fn load(text: &str, env: &BTreeMap<String, String>) -> Plan {
    config::load("baton.toml", text, env).unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test]
async fn agents_added_removed_and_reloaded_while_the_engine_runs() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let env = BTreeMap::from([
        ("PATH".to_string(), std::env::var("PATH").expect("PATH is set")),
        ("HOME".to_string(), dir.path().display().to_string()),
    ]);
    let plan = load(PLAN, &env);
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let runtimes = engine::process_runtimes(ProcessEnv {
        base_dir: dir.path().to_path_buf(),
        log_dir: dir.path().join("logs"),
        env: env.clone(),
        registry: None,
        api: None,
        mcp_servers: Vec::new(),
    });
    let mut options = EngineOptions::new(plan.clone(), Arc::clone(&store) as Arc<dyn Store>, runtimes);
    options.keep_open = true;
    options.shutdown_grace = Duration::from_secs(2);
    let (engine, handle) = Engine::new(options);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));

    // An added agent runs the task only it can run.
    let mut extra: AgentSpec = plan.agents[0].clone();
    extra.name = "extra".into();
    extra.capabilities = vec!["extra".into()];
    handle.add_agent(extra.clone()).await.expect("the agent is added");
    let refused = handle.add_agent(extra).await.expect_err("the name is taken");
    assert!(refused.to_string().contains("agent `extra` exists already"), "{refused}");
    assert!(handle.plan().expect("the run is open").agent("extra").is_some());
    let ids = handle.create_tasks(vec![task("only extra", "extra")]).await.expect("created");
    let done = ended(&store, ids[0]).await;
    assert_eq!(done.state, TaskState::Succeeded, "{:?}", done.error);
    assert_eq!(done.assigned_agent.as_deref(), Some("extra"));
    assert_eq!(done.result, Some(serde_json::json!("ok")));

    // Removed, it runs nothing more: a task only it could run is cancelled.
    handle.remove_agent("extra".into()).await.expect("the agent is removed");
    assert!(handle.plan().expect("the run is open").agent("extra").is_none());
    let ids = handle.create_tasks(vec![task("nobody", "extra")]).await.expect("created");
    let cancelled = ended(&store, ids[0]).await;
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert_eq!(cancelled.error.as_deref(), Some("no agent can run it"));

    // A reloaded configuration brings it back (with another command) and creates the file's
    // new task, which it runs.
    let summary = handle.reconfigure(load(RELOADED, &env)).await.expect("reconfigured");
    assert_eq!(summary.added, vec!["agent extra", "task from-file"]);
    assert_eq!(summary.updated, vec!["setting max_concurrent_agents"]);
    let run_id = handle.run_id().borrow().clone().expect("a run");
    let from_file = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let tasks = store.tasks(&run_id, &Default::default()).await.expect("the store answers");
            if let Some(task) = tasks.into_iter().find(|task| task.key.as_deref() == Some("from-file"))
                && task.state.is_terminal()
            {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the file's task ends within 30 s");
    assert_eq!(from_file.state, TaskState::Succeeded, "{:?}", from_file.error);
    assert_eq!(from_file.result, Some(serde_json::json!("reloaded")));

    handle.reject_config("baton.toml:3:1: unknown field `agnets`".into()).await.expect("recorded");
    let query = EventQuery {
        run_id: Some(run_id.clone()),
        kinds: vec!["AgentAdded".into(), "AgentRemoved".into(), "ConfigReloaded".into(), "ConfigRejected".into()],
        ..Default::default()
    };
    let names: Vec<&'static str> =
        store.events(&query).await.expect("events").iter().map(|event| event.kind.name()).collect();
    assert_eq!(names, vec!["AgentAdded", "AgentRemoved", "AgentAdded", "ConfigReloaded", "ConfigRejected"]);

    shutdown.cancel();
    running.await.expect("the engine task").expect("the engine stops cleanly");
}
