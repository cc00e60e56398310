//! Worker agents and their supervision, with real worker processes: the Python and shell
//! examples of `examples/workers/`, driven into crashes, silence and protocol errors.

mod common;

use baton_core::EventKind;
use baton_core::model::{AgentState, RunState, TaskState};
use baton_store::{EventQuery, Store, TaskFilter};
use common::{Project, stderr, stdout};

const WORKER_PY: &str = include_str!("../../../examples/workers/worker.py");
const WORKER_SH: &str = include_str!("../../../examples/workers/worker.sh");

fn project(config: &str) -> Project {
    Project::with(config, &[("worker.py", WORKER_PY), ("worker.sh", WORKER_SH)])
}

async fn events(project: &Project) -> Vec<EventKind> {
    let store = project.store();
    store.events(&EventQuery::default()).await.unwrap().into_iter().map(|event| event.kind).collect()
}

fn agent_went(events: &[EventKind], name: &str, state: AgentState) -> Vec<Option<String>> {
    events
        .iter()
        .filter_map(|event| match event {
            EventKind::AgentStateChanged { agent, to, reason, .. } if agent == name && *to == state => {
                Some(reason.clone())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_worker_example_runs_python_and_shell_workers() {
    let config = include_str!("../../../examples/workers/baton.toml");
    let project = project(config);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    assert!(stdout(&run).contains("succeeded: 5/5 tasks"), "{}", stdout(&run));
    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let tasks = store.tasks(&run.id, &TaskFilter::default()).await.unwrap();
    let subtasks: Vec<_> = tasks.iter().filter(|task| task.title.starts_with("Validate batch")).collect();
    assert_eq!(subtasks.len(), 2, "the worker created two sub-tasks");
    assert!(
        subtasks
            .iter()
            .all(|task| task.workstream.as_deref() == Some("pipeline") && task.state == TaskState::Succeeded)
    );
    let summary = tasks.iter().find(|task| task.key.as_deref() == Some("summary")).unwrap();
    assert_eq!(summary.result.as_ref().unwrap()["by"], "worker.sh");
    let events = events(&project).await;
    let progress = events.iter().filter(|event| matches!(event, EventKind::TaskProgress { .. })).count();
    assert!(progress >= 7, "4 + 3 steps of progress and the sub-tasks', got {progress}");
    assert!(events.iter().any(|event| matches!(event,
        EventKind::UsageReported { agent, usage, .. } if agent == "python-worker" && usage["input_tokens"] == 1200)));
    let logs = stdout(&project.baton(&["logs", "python-worker"]));
    assert!(logs.contains("shutting down"), "workers are shut down gracefully at the end:\n{logs}");
}

const CRASHY: &str = r#"
[orchestration]
name = "crashy"
retry_backoff = "50ms"

[[workstreams]]
name = "build"
priority = "critical"

[[workstreams]]
name = "test"
depends_on = ["build"]

[[agents]]
name = "builder"
workstream = "build"
mode = "worker"
command = ["python3", "worker.py", "CRASH_FLAG"]
max_restarts = 2
restart_backoff = "50ms"

[[agents]]
name = "tester"
workstream = "test"
command = ["true"]

[[tasks]]
key = "compile"
title = "Compile"
workstream = "build"
max_attempts = 10

[[tasks]]
key = "unit"
title = "Unit tests"
workstream = "test"
"#;

#[tokio::test]
async fn a_crash_loop_reaches_its_cap_and_the_run_fails_naming_the_cause() {
    let project = project(&CRASHY.replace("\"CRASH_FLAG\"", "\"--crash-on-start\""));
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", stdout(&run), stderr(&run));
    let report = stdout(&run);
    assert!(
        report.contains("unit: cancelled: critical agent `builder` failed: exit status 3: [worker builder] crashing on purpose; crash loop: 2 restarts within 10m"),
        "{report}"
    );
    let events = events(&project).await;
    let restarts = agent_went(&events, "builder", AgentState::Restarting);
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    assert!(restarts[0].as_deref().unwrap().ends_with("restart 1/2 in 50ms"), "{restarts:?}");
    assert!(restarts[1].as_deref().unwrap().ends_with("restart 2/2 in 100ms"), "backoff doubles: {restarts:?}");
    assert_eq!(agent_went(&events, "builder", AgentState::Failed).len(), 1);
    let agents = stdout(&project.baton(&["agents"]));
    assert!(agents.contains("failed"), "{agents}");
}

#[tokio::test]
async fn a_critical_agent_that_recovers_suspends_then_resumes_its_dependants() {
    let project = project(&CRASHY.replace("\"CRASH_FLAG\"", "\"--crash-once\", \"crashed-once\""));
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    let events = events(&project).await;
    let suspended = events.iter().position(|event| {
        matches!(event, EventKind::TaskSuspended { reason, .. }
        if reason.starts_with("critical agent `builder` is restarting (exit status 3"))
    });
    let resumed = events.iter().position(|event| matches!(event, EventKind::TaskResumed { .. }));
    assert!(suspended.is_some() && resumed > suspended, "suspended, then resumed: {suspended:?} {resumed:?}");
    assert_eq!(agent_went(&events, "builder", AgentState::Restarting).len(), 1);
}

#[tokio::test]
async fn a_silent_worker_is_killed_and_restarted_and_its_task_finishes() {
    let config = r#"
[orchestration]
name = "silent"
retry_backoff = "50ms"

[[agents]]
name = "worker"
mode = "worker"
command = ["python3", "worker.py", "--go-silent-after", "1"]
env = { WORKER_HEARTBEAT_SECONDS = "0.1" }
heartbeat_timeout = "1s"
restart_backoff = "50ms"

[[tasks]]
key = "first"
title = "First"

[[tasks]]
key = "second"
title = "Second"
depends_on = ["first"]
"#;
    let project = project(config);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    let events = events(&project).await;
    assert!(events.iter().any(|event| matches!(event,
        EventKind::AgentTerminated { agent, reason } if agent == "worker" && reason == "no heartbeat for 1s")));
    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let second = store
        .tasks(&run.id, &TaskFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.key.as_deref() == Some("second"))
        .unwrap();
    assert_eq!((second.state, second.attempt), (TaskState::Succeeded, 2), "retried on the restarted worker");
}

#[tokio::test]
async fn protocol_garbage_is_answered_and_logged_and_the_task_still_runs() {
    let config = r#"
[orchestration]
name = "garbage"

[[agents]]
name = "worker"
mode = "worker"
command = ["python3", "worker.py", "--garbage"]

[[tasks]]
key = "job"
title = "Job"
"#;
    let project = project(config);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    let log = stdout(&project.baton(&["logs", "worker"]));
    for expected in [
        "--- protocol error (-32700): parse error: expected ident at line 1 column 2",
        "--- protocol error (-32601): unknown method `no/such/method`",
        "--- protocol error: response to unknown id 99999 ignored",
        "--- protocol error (-32602): usage/report: `input_tokens` must be a whole number of tokens from 0 to 1000000000000, not 9223372036854775807",
        "--- protocol error (-32600): message over 1048576 bytes dropped",
        "baton says: parse error",
        "protocol error(s) in this run of it",
    ] {
        assert!(log.contains(expected), "`{expected}` not in the log:\n{log}");
    }
    let budget = project.baton(&["budget"]);
    assert_eq!(budget.status.code(), Some(0), "the refused report left the budgets readable: {}", stderr(&budget));
}

#[tokio::test]
async fn a_non_critical_agent_that_dies_has_its_task_moved_to_another() {
    let config = r#"
[orchestration]
name = "reassign"
retry_backoff = "50ms"

[[agents]]
name = "flaky"
mode = "worker"
command = ["python3", "worker.py", "--crash-on-start"]
capabilities = ["x"]
restart = "never"

[[agents]]
name = "steady"
mode = "worker"
command = ["python3", "worker.py"]
capabilities = ["x"]

[[tasks]]
key = "job"
title = "Job"
requires = ["x"]
input = { steps = 2, step_seconds = 0.2 }
"#;
    let project = project(config);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let job = store.tasks(&run.id, &TaskFilter::default()).await.unwrap().remove(0);
    assert_eq!(job.assigned_agent.as_deref(), Some("steady"));
    let events = events(&project).await;
    assert_eq!(
        agent_went(&events, "flaky", AgentState::Failed),
        vec![Some("exit status 3: [worker flaky] crashing on purpose; restart = \"never\"".to_string())]
    );
}

#[tokio::test]
async fn an_operator_restarts_a_worker_mid_task_and_the_task_is_retried() {
    let config = r#"
[orchestration]
name = "operator"
retry_backoff = "50ms"

[[agents]]
name = "worker"
mode = "worker"
command = ["python3", "worker.py"]

[[tasks]]
key = "long"
title = "Long"
input = { steps = 20, step_seconds = 0.1 }
"#;
    let project = project(config);
    let (child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task long claimed by worker (attempt 1)");
    project.wait_for_front_door();
    let restart = project.baton(&["agent", "restart", "worker"]);
    assert_eq!(restart.status.code(), Some(0), "{}", stderr(&restart));
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let rest = lines.rest();
    assert!(rest.contains("task long claimed by worker (attempt 2)"), "{rest}");
    let events = events(&project).await;
    assert_eq!(
        agent_went(&events, "worker", AgentState::Restarting),
        vec![Some("restarted by an operator".to_string())]
    );
    let unknown = project.baton(&["agent", "stop", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[tokio::test]
async fn workers_die_with_a_killed_baton() {
    let config = r#"
[orchestration]
name = "orphans"

[[agents]]
name = "worker"
mode = "worker"
command = ["python3", "worker.py"]

[[tasks]]
key = "long"
title = "Long"
input = { steps = 100, step_seconds = 0.1 }
"#;
    let project = project(config);
    let (mut child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task long claimed");
    let log = std::fs::read_to_string(project.log_path("worker")).unwrap();
    let pgid: i32 = log.split("pid group ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The parent-death signal is sent as Baton dies; the worker may take a moment to go.
    let mut spins = 0u64;
    while common::is_alive(pgid) {
        spins += 1;
        assert!(spins < 50_000_000, "worker {pgid} outlived baton");
        std::thread::yield_now();
    }
    let store = project.store();
    assert_eq!(store.latest_run(None).await.unwrap().unwrap().state, RunState::Running);
}

#[tokio::test]
async fn a_worker_that_dies_before_initialize_is_restarted_by_its_policy_and_its_huge_stderr_is_cut() {
    let config =
        CRASHY.replace(r#"command = ["python3", "worker.py", "CRASH_FLAG"]"#, r#"command = ["bash", "dies.sh"]"#);
    // 8 MiB of stderr on one line, then an exit before answering `initialize`.
    let dies = "#!/usr/bin/env bash\nhead -c 8388608 /dev/zero | tr '\\0' x >&2\nexit 3\n";
    let project = Project::with(&config, &[("dies.sh", dies)]);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", stdout(&run), stderr(&run));
    let events = events(&project).await;
    let restarts = agent_went(&events, "builder", AgentState::Restarting);
    assert_eq!(restarts.len(), 2, "start failures follow the restart policy: {restarts:?}");
    assert!(restarts[0].as_deref().unwrap().ends_with("restart 1/2 in 50ms"), "{restarts:?}");
    assert!(restarts[1].as_deref().unwrap().ends_with("restart 2/2 in 100ms"), "{restarts:?}");
    let failed = agent_went(&events, "builder", AgentState::Failed);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let reason = failed[0].as_deref().unwrap();
    assert!(reason.contains("bytes cut]") && reason.ends_with("; crash loop: 2 restarts within 10m"), "{reason}");
    for event in &events {
        let size = serde_json::to_string(event).unwrap().len();
        assert!(size < 16 * 1024, "every stored event is small, {size} bytes: {}", &format!("{event:?}")[..200]);
    }
    let log = std::fs::read_to_string(project.log_path("builder")).unwrap();
    assert!(log.len() < 1024 * 1024, "the log holds the lines cut: {} bytes", log.len());
    assert!(log.contains(&format!("… [{} bytes cut]", 8388608 - 64 * 1024)));
}
