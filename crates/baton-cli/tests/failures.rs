//! Runs that go wrong: timeouts, dead tasks and what they take with them, cancellation.

mod common;

use baton_core::EventKind;
use baton_core::model::{AgentState, RunState, TaskState};
use baton_store::{EventQuery, Store, TaskFilter};
use common::{Project, stderr, stdout};

const PLAN: &str = r#"
[orchestration]
name = "failing"
retry_backoff = "50ms"

[[workstreams]]
name = "build"
priority = "critical"

[[workstreams]]
name = "deploy"
depends_on = ["build"]

[[agents]]
name = "worker"
command = ["bash", "work.sh", "{task.key}"]
concurrency = 2

[[tasks]]
key = "slow"
title = "Hangs"
workstream = "build"
timeout = "300ms"
max_attempts = 1

[[tasks]]
key = "broken"
title = "Always fails"
workstream = "build"
max_attempts = 2

[[tasks]]
key = "ship"
title = "Ship it"
workstream = "deploy"
"#;

const WORK: &str = r#"#!/usr/bin/env bash
case "$1" in
    slow) sleep 30 & echo $! > grandchild.pid; wait ;;
    broken) echo "cannot find libfoo" >&2; exit 4 ;;
    *) echo ok ;;
esac
"#;

#[tokio::test]
async fn timeouts_and_failures_end_the_run_failed_with_a_report() {
    let project = Project::with(PLAN, &[("work.sh", WORK)]);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", stdout(&run), stderr(&run));
    let report = stdout(&run);
    assert!(report.contains("failed: 0/3 tasks succeeded"), "{report}");
    assert!(report.contains("  slow: dead: timed out after 300ms"), "{report}");
    assert!(report.contains("  broken: dead: exit status 4: cannot find libfoo"), "{report}");
    assert!(report.contains("  ship: cancelled: upstream workstream `build` failed"), "{report}");
    assert!(
        report.contains(
            "see `baton tasks --state dead` (2 tasks), `baton tasks --state cancelled` (1 task), `baton events` and `baton logs AGENT`"
        ),
        "{report}"
    );

    // The timed-out attempt's whole process group was killed, grandchild included.
    let pid: i32 = std::fs::read_to_string(project.path().join("grandchild.pid")).unwrap().trim().parse().unwrap();
    assert!(!common::is_alive(pid), "the grandchild {pid} outlived its attempt");

    let store = project.store();
    let stored = store.latest_run(None).await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Failed);
    assert!(
        stored
            .error
            .as_deref()
            .unwrap()
            .starts_with("2 task(s) dead: slow (timed out after 300ms), broken (exit status 4: cannot find libfoo)")
    );
    let broken = store
        .tasks(&stored.id, &TaskFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.key.as_deref() == Some("broken"))
        .unwrap();
    assert_eq!((broken.state, broken.attempt), (TaskState::Dead, 2));
}

#[tokio::test]
async fn an_operator_cancels_a_running_task_through_the_running_baton_run() {
    let plan = r#"
[orchestration]
name = "cancel"

[[agents]]
name = "worker"
command = ["bash", "-c", "echo started >&2; sleep 30"]

[[tasks]]
key = "long"
title = "Long job"
"#;
    let project = Project::with(plan, &[]);
    let (child, mut lines) = project.spawn(&["run"]);
    let claimed = lines.wait_for("task long claimed");
    assert!(claimed.contains("(attempt 1)"));
    project.wait_for_front_door();
    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let task = store.tasks(&run.id, &TaskFilter::default()).await.unwrap().remove(0);
    let cancel = project.baton(&["task", "cancel", &task.id.to_string(), "--reason", "not needed"]);
    assert_eq!(cancel.status.code(), Some(0), "{}", stderr(&cancel));
    assert_eq!(stdout(&cancel).trim(), format!("task {} (long) is cancelled", task.id));

    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("long: cancelled: not needed"), "{}", stdout(&output));
    // No task is dead: the report points at the cancelled one only.
    assert!(
        stdout(&output).contains("see `baton tasks --state cancelled` (1 task), `baton events`"),
        "{}",
        stdout(&output)
    );
    let rest = lines.rest();
    assert!(rest.contains("task long cancelled: not needed"), "{rest}");
    let task = store.task(task.id).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Cancelled);

    // Commands for a finished run are refused.
    let again = project.baton(&["task", "retry", &task.id.to_string()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("has ended (failed); only a running run takes commands"), "{}", stderr(&again));
}

#[tokio::test]
async fn a_task_waits_for_a_resource_and_baton_conflicts_shows_why() {
    let plan = r#"
[orchestration]
name = "conflicts"

[[agents]]
name = "worker"
concurrency = 2
command = ["bash", "work.sh", "{task.key}"]

[[tasks]]
key = "edit-storage"
title = "Edit the storage module"
resources = ["file:src/storage/**"]

[[tasks]]
key = "edit-wal"
title = "Edit the WAL"
resources = ["file:src/storage/wal.rs"]
"#;
    // The first task holds its resource until the test lets it go.
    let work = r#"#!/usr/bin/env bash
if [ "$1" = edit-storage ]; then
    while [ ! -e release ]; do sleep 0.05; done
fi
echo done
"#;
    let project = Project::with(plan, &[("work.sh", work)]);
    let (child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task edit-wal waits: `file:src/storage/wal.rs` overlaps `file:src/storage/**` held by task");
    let shown = project.baton(&["conflicts", "--json"]);
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["held"][0]["resource"], "file:src/storage/**");
    assert_eq!(shown["held"][0]["task"], "edit-storage");
    assert_eq!(shown["waiting"][0]["task"], "edit-wal");
    assert_eq!(shown["waiting"][0]["holder"], "edit-storage");
    std::fs::write(project.path().join("release"), "").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[tokio::test]
async fn an_idle_agent_not_heard_from_shows_as_offline() {
    let plan = r#"
[orchestration]
name = "offline"
offline_after = "1s"

[[agents]]
name = "busy"
command = ["bash", "-c", "while [ ! -e release ]; do sleep 0.05; done; echo done"]
capabilities = ["long"]

[[agents]]
name = "quick"
command = ["bash", "-c", "echo done"]
capabilities = ["short"]

[[tasks]]
key = "long"
title = "Long"
requires = ["long"]

[[tasks]]
key = "short"
title = "Short"
requires = ["short"]
"#;
    let project = Project::with(plan, &[]);
    let (child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task short completed by quick");
    // `quick` is idle from now on; once a second has passed without a word from it, it is
    // shown offline (the run itself is alive: `busy` still works).
    let started = std::time::Instant::now();
    let state = loop {
        let agents: serde_json::Value = serde_json::from_slice(&project.baton(&["agents", "--json"]).stdout).unwrap();
        let quick = agents.as_array().unwrap().iter().find(|a| a["name"] == "quick").unwrap()["state"].clone();
        let busy = agents.as_array().unwrap().iter().find(|a| a["name"] == "busy").unwrap()["state"].clone();
        assert_eq!(busy, "active");
        if quick == "offline" || started.elapsed() > std::time::Duration::from_secs(10) {
            break quick;
        }
        std::thread::yield_now();
    };
    assert_eq!(state, "offline");
    std::fs::write(project.path().join("release"), "").unwrap();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));
}

/// An agent whose command is gone when its phase comes (the first phase deletes it) cannot
/// start, and never will: it is failed at once, with the reason, instead of being restarted
/// until its crash-loop cap; the tasks only it could run are cancelled with the cause.
#[tokio::test]
async fn an_agent_whose_command_is_missing_is_failed_at_once_without_restarts() {
    const PLAN: &str = r#"
[orchestration]
name = "missing"

[[workstreams]]
name = "prepare"

[[workstreams]]
name = "later"
depends_on = ["prepare"]

[[agents]]
name = "janitor"
workstream = "prepare"
command = ["bash", "clean.sh"]

[[agents]]
name = "latecomer"
workstream = "later"
priority = "critical"
mode = "worker"
command = ["./later.sh"]
max_restarts = 5

[[tasks]]
title = "Delete the latecomer's program"
workstream = "prepare"

[[tasks]]
title = "Too late"
workstream = "later"
"#;
    let project = Project::with(PLAN, &[("later.sh", "#!/usr/bin/env bash\nexit 0\n"), ("clean.sh", "rm later.sh\n")]);
    let later = project.path().join("later.sh");
    std::fs::set_permissions(&later, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", stdout(&run), stderr(&run));

    let store = project.store();
    let stored = store.latest_run(None).await.unwrap().unwrap();
    let events = store.events(&EventQuery { run_id: Some(stored.id.clone()), ..Default::default() }).await.unwrap();
    let states: Vec<(AgentState, String)> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::AgentStateChanged { agent, to, reason: Some(reason), .. }
                if agent == "latecomer" && matches!(to, AgentState::Restarting | AgentState::Failed) =>
            {
                Some((*to, reason.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(states.len(), 1, "failed once, never restarting: {states:?}");
    assert_eq!(states[0].0, AgentState::Failed);
    assert!(
        states[0].1.starts_with("command `./later.sh` not found")
            && states[0].1.ends_with("; not restarted: starting it again would fail the same way"),
        "{}",
        states[0].1
    );
    let agent = store.agents(&stored.id).await.unwrap().into_iter().find(|agent| agent.name == "latecomer").unwrap();
    assert_eq!(agent.state, AgentState::Failed);
}
