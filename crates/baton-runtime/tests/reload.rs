//! Hot reload with real file writes: a configuration saved the way editors save it (a new
//! file renamed over the old one) is applied to the running engine; one that does not load is
//! rejected with an event, and the running configuration stays.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use baton_core::config::{self, Plan};
use baton_runtime::engine::{self, Engine, EngineHandle, EngineOptions};
use baton_runtime::process::ProcessEnv;
use baton_store::sqlite::SqliteStore;
use baton_store::{EventQuery, Store};

const PLAN: &str = r#"
[orchestration]
name = "reload"

[[agents]]
name = "base"
command = ["sh", "-c", "echo ok"]
"#;

/// Saves `text` as an editor does: written to a temporary file, renamed over the old one.
fn save(path: &Path, text: &str) {
    let temporary = path.with_extension("toml.tmp");
    std::fs::write(&temporary, text).expect("write the new file");
    std::fs::rename(&temporary, path).expect("rename it over the old one");
}

/// Waits (at most 30 s) until `ready` holds.
async fn until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !ready().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} within 30 s");
}

fn has_agent(handle: &EngineHandle, name: &str) -> bool {
    handle.plan().is_some_and(|plan| plan.agent(name).is_some())
}

#[tokio::test]
async fn a_saved_configuration_is_applied_and_a_broken_one_rejected() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("baton.toml");
    std::fs::write(&path, PLAN).expect("write baton.toml");
    let env = BTreeMap::from([
        ("PATH".to_string(), std::env::var("PATH").expect("PATH is set")),
        ("HOME".to_string(), dir.path().display().to_string()),
    ]);
    let load = {
        let path = path.clone();
        let env = env.clone();
        move || -> Result<Plan, String> {
            let text = std::fs::read_to_string(&path).map_err(|error| error.to_string())?;
            config::load("baton.toml", &text, &env).map_err(|error| error.to_string())
        }
    };
    let plan = load().expect("a valid configuration");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let runtimes = engine::process_runtimes(ProcessEnv {
        base_dir: dir.path().to_path_buf(),
        log_dir: dir.path().join("logs"),
        env,
        registry: None,
        api: None,
        mcp_servers: Vec::new(),
    });
    let mut options = EngineOptions::new(plan, Arc::clone(&store) as Arc<dyn Store>, runtimes);
    options.keep_open = true;
    options.shutdown_grace = Duration::from_secs(2);
    let (engine, handle) = Engine::new(options);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));
    let mut run_id = handle.run_id();
    let run_id = run_id.wait_for(Option::is_some).await.expect("a run").clone().expect("a run id");

    let watching = tokio::spawn(baton_runtime::reload::watch_config(
        path.clone(),
        load,
        handle.clone(),
        Arc::clone(&store) as Arc<dyn Store>,
        run_id.clone(),
        shutdown.clone(),
    ));

    // A new agent, saved: applied. Saved again until seen, since the watch may start just
    // after the first save.
    let added = format!("{PLAN}\n[[agents]]\nname = \"extra\"\ncommand = [\"sh\", \"-c\", \"echo ok\"]\n");
    until("the new agent is applied", async || {
        if !has_agent(&handle, "extra") {
            save(&path, &added);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        has_agent(&handle, "extra")
    })
    .await;

    // A broken configuration: rejected, with an event; the running one stays.
    save(&path, &format!("{added}\n[[agnets]]\nname = \"typo\"\n"));
    let rejected =
        EventQuery { run_id: Some(run_id.clone()), kinds: vec!["ConfigRejected".into()], ..Default::default() };
    until("the broken configuration is rejected", async || !store.events(&rejected).await.expect("events").is_empty())
        .await;
    let events = store.events(&rejected).await.expect("events");
    let baton_core::EventKind::ConfigRejected { errors } = &events[0].kind else { unreachable!() };
    assert!(errors.contains("agnets"), "{errors}");
    assert!(has_agent(&handle, "extra"), "the running configuration stays");

    // A profile file counts too; the fixed file removes the agent again.
    save(&dir.path().join("baton.prod.toml"), "");
    save(&path, PLAN);
    until("the agent is removed", async || !has_agent(&handle, "extra")).await;
    let reloaded = EventQuery { run_id: Some(run_id), kinds: vec!["ConfigReloaded".into()], ..Default::default() };
    until("both reloads are recorded", async || store.events(&reloaded).await.expect("events").len() >= 2).await;

    shutdown.cancel();
    watching.await.expect("the watcher task").expect("the watch ends cleanly");
    running.await.expect("the engine task").expect("the engine stops cleanly");
}
