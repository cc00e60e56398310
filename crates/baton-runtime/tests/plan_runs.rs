//! Schedules belong to the plan, not to one run: a fresh run (`baton run --fresh`) goes on from
//! the previous run's cursors and pauses, so a due time is fired at most once across the plan's
//! runs and a downtime between two runs counts as one. Each engine here starts on a controlled
//! clock (hours apart), on one SQLite store, with a real per-task process running the tasks.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use baton_core::config::{self, Plan};
use baton_core::model::TaskState;
use baton_core::{EventKind, Timestamp};
use baton_runtime::Clock;
use baton_runtime::engine::Error;
use baton_runtime::engine::{self, Engine, EngineHandle, EngineOptions, RunSummary};
use baton_runtime::process::ProcessEnv;
use baton_store::sqlite::SqliteStore;
use baton_store::{EventQuery, Store};

const PLAN: &str = r#"
[orchestration]
name = "hourly"

[[agents]]
name = "runner"
capabilities = ["job"]
command = ["sh", "-c", "echo ok"]

[[schedules]]
name = "report"
cron = "0 * * * *"
missed = "run-once"
task = { title = "Report", requires = ["job"] }
"#;

/// 2026-03-02 10:00:30 UTC, and later times that day.
const AT_10_00_30: Timestamp = Timestamp(1_772_445_630_000);
const AT_12_00: Timestamp = Timestamp(1_772_452_800_000);
const AT_12_30: Timestamp = Timestamp(1_772_454_600_000);
const AT_15_30: Timestamp = Timestamp(1_772_465_400_000);

struct Running {
    handle: EngineHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<RunSummary, Error>>,
}

impl Running {
    async fn stop(self) -> RunSummary {
        self.shutdown.cancel();
        self.task.await.expect("the engine does not panic").expect("the engine stops cleanly")
    }

    async fn run_id(&self) -> String {
        let mut run_id = self.handle.run_id();
        let id = run_id.wait_for(Option::is_some).await.expect("the engine opens its run");
        id.clone().expect("a run id")
    }
}

fn start(dir: &std::path::Path, store: &Arc<SqliteStore>, plan: &Plan, at: Timestamp, fresh: bool) -> Running {
    let env = BTreeMap::from([("PATH".to_string(), std::env::var("PATH").expect("PATH is set"))]);
    let runtimes = engine::process_runtimes(ProcessEnv {
        base_dir: dir.to_path_buf(),
        log_dir: dir.join("logs"),
        env,
        registry: None,
        api: None,
        mcp_servers: Vec::new(),
    });
    let mut options = EngineOptions::new(plan.clone(), Arc::clone(store) as Arc<dyn Store>, runtimes);
    options.clock = Clock::starting_at(at);
    options.fresh = fresh;
    options.keep_open = true;
    options.shutdown_grace = Duration::from_secs(2);
    let (engine, handle) = Engine::new(options);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine.run(shutdown.clone()));
    Running { handle, shutdown, task }
}

/// Waits (at most 30 s) until the run has a task in a terminal state, and returns it.
async fn a_finished_task(store: &SqliteStore, run_id: &str) -> baton_core::model::TaskRecord {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let tasks = store.tasks(run_id, &Default::default()).await.expect("the store answers");
            if let Some(task) = tasks.into_iter().find(|task| task.state.is_terminal()) {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a task ends within 30 s")
}

async fn firings(store: &SqliteStore, run_id: &str) -> Vec<(Timestamp, u32)> {
    let events = store.events(&EventQuery { run_id: Some(run_id.to_string()), ..Default::default() }).await.unwrap();
    events
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::ScheduleFired { due, n_due, .. } => Some((due, n_due)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_fresh_run_goes_on_from_the_previous_runs_schedules() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let plan = config::load("baton.toml", PLAN, &BTreeMap::new()).unwrap_or_else(|error| panic!("{error}"));
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );

    // The first run starts at 10:00:30: nothing is owed yet, and it stops before 11:00.
    let first = start(dir.path(), &store, &plan, AT_10_00_30, false);
    let first_id = first.run_id().await;
    let ids = first.handle.create_tasks(vec![common::task("warm up", "job")]).await.expect("created");
    assert_eq!(common::ended(&store, ids[0]).await.state, TaskState::Succeeded);
    first.stop().await;
    let stored = store.schedules(&first_id).await.unwrap();
    let first_cursor = stored[0].cursor;
    // The cursor is the run's first tick: 10:00:30 and the few milliseconds the engine took to
    // start on the clock that runs from there (anything before 11:00 owes nothing).
    assert_eq!(stored.len(), 1);
    let started_within = stored[0].cursor.since(AT_10_00_30);
    assert!(stored[0].cursor >= AT_10_00_30 && started_within < Duration::from_secs(60), "{:?}", stored[0].cursor);
    assert!(firings(&store, &first_id).await.is_empty());

    // A fresh run at 12:30: 11:00 and 12:00 passed while nothing ran, and `missed = "run-once"`
    // owes one firing for them (for 12:00), as a resumed run would.
    let second = start(dir.path(), &store, &plan, AT_12_30, true);
    let second_id = second.run_id().await;
    assert_ne!(second_id, first_id, "--fresh starts a new run");
    let report = a_finished_task(&store, &second_id).await;
    assert_eq!((report.title.as_str(), report.state), ("Report", TaskState::Succeeded));
    assert_eq!(firings(&store, &second_id).await, vec![(AT_12_00, 2)]);
    second.handle.pause_schedule("report".into()).await.expect("paused");
    second.stop().await;
    let stored = store.schedules(&second_id).await.unwrap();
    assert_eq!(stored[0].run_id, second_id, "the new run writes the schedule as its own");
    assert!(stored[0].paused);
    assert_eq!(store.schedules(&first_id).await.unwrap()[0].cursor, first_cursor, "the first run's is left as it was");

    // Another fresh run at 15:30: the pause carries over, so nothing fires.
    let third = start(dir.path(), &store, &plan, AT_15_30, true);
    let third_id = third.run_id().await;
    let ids = third.handle.create_tasks(vec![common::task("after the first step", "job")]).await.expect("created");
    assert_eq!(common::ended(&store, ids[0]).await.state, TaskState::Succeeded);
    third.stop().await;
    assert!(firings(&store, &third_id).await.is_empty(), "a paused schedule stays paused in a fresh run");
    let stored = store.schedules(&third_id).await.unwrap();
    assert!(stored[0].paused);
}

/// The engine renews its claim on the run on its own timer (a third of `lease_ttl`), with
/// nothing else going on: no poll of the store wakes it any more.
#[tokio::test]
async fn an_idle_engine_renews_its_claim_on_the_run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let text = PLAN.replace("name = \"hourly\"", "name = \"hourly\"\nlease_ttl = \"1s\"");
    let plan = config::load("baton.toml", &text, &BTreeMap::new()).unwrap_or_else(|error| panic!("{error}"));
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let running = start(dir.path(), &store, &plan, AT_10_00_30, false);
    let run_id = running.run_id().await;
    let owner_until = || async { store.run(&run_id).await.unwrap().and_then(|run| run.owner_until).expect("a claim") };
    let claimed_until = owner_until().await;
    // Renewed twice at least: the claim then reaches past the first one by more than a third
    // of the lease. The schedule's first due time (11:00) is far off: nothing else wakes it.
    let renewed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let until = owner_until().await;
            if until > claimed_until.plus(Duration::from_millis(400)) {
                return until;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(renewed.is_ok(), "the claim, first until {claimed_until:?}, was not renewed");
    running.stop().await;
}
