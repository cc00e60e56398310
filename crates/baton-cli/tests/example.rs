//! The bundled example, run by the real binary from `baton init` to the end, and read back
//! through every read command.

#![allow(clippy::disallowed_methods, reason = "the tests start the real `baton` binary")]

mod common;

use std::collections::HashMap;

use baton_core::EventKind;
use baton_core::model::{RunState, TaskState};
use baton_store::{EventQuery, Store, TaskFilter};
use common::{Project, stderr, stdout};

#[tokio::test]
async fn the_example_runs_to_completion_with_a_retry() {
    let project = Project::example();
    let check = project.baton(&["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let plan = stdout(&check);
    assert!(
        plan.contains("phase 1:\n  build-system-stabilization [critical]: 4 task(s); agents: build-agent"),
        "{plan}"
    );
    assert!(plan.contains("phase 2:\n  testing-infrastructure [high, after build-system-stabilization]"), "{plan}");
    assert!(
        plan.contains("performance-observability [medium, after build-system-stabilization, testing-infrastructure]"),
        "{plan}"
    );

    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", stdout(&run), stderr(&run));
    assert!(stdout(&run).contains("succeeded: 15/15 tasks"), "{}", stdout(&run));
    let lines = stderr(&run);
    assert!(
        lines.contains(
            "task property-tests failed on test-agent (attempt 1): exit status 1: [test-agent] proptest: seed 0x5eed"
        ),
        "{lines}"
    );
    assert!(lines.contains("task property-tests will retry (attempt 2)"), "{lines}");

    let store = project.store();
    let run = store.latest_run(Some("roadmap-v0.3.0")).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!((run.n_tasks, run.n_finished, run.phase), (15, 15, 3));
    let tasks = store.tasks(&run.id, &TaskFilter::default()).await.unwrap();
    assert!(tasks.iter().all(|task| task.state == TaskState::Succeeded));
    let flaky = tasks.iter().find(|task| task.key.as_deref() == Some("property-tests")).unwrap();
    assert_eq!(flaky.attempt, 2);
    assert_eq!(flaky.result.as_ref().unwrap()["summary"], "40 properties, 10000 cases each");

    // Phases in order, every task completed exactly once, and no task claimed before its
    // dependencies completed.
    let events = store.events(&EventQuery { run_id: Some(run.id.clone()), ..Default::default() }).await.unwrap();
    let phases: Vec<u32> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::PhaseStarted { phase, .. } => Some(*phase),
            _ => None,
        })
        .collect();
    assert_eq!(phases, vec![1, 2, 3]);
    let mut completed_at: HashMap<i64, i64> = HashMap::new();
    for event in &events {
        if let EventKind::TaskCompleted { task, .. } = event.kind {
            assert!(completed_at.insert(task.0, event.seq).is_none(), "task {task} completed twice");
        }
    }
    assert_eq!(completed_at.len(), 15);
    for event in &events {
        if let EventKind::TaskClaimed { task, .. } = event.kind {
            let record = tasks.iter().find(|t| t.id == task).unwrap();
            for dep in &record.depends_on {
                assert!(completed_at[&dep.0] < event.seq, "task {task} claimed before dependency {dep} completed");
            }
        }
    }
}

#[tokio::test]
async fn read_commands_print_tables_and_json() {
    let project = Project::example();
    assert_eq!(project.baton(&["run", "--plain"]).status.code(), Some(0));

    let status = project.baton(&["status"]);
    assert_eq!(status.status.code(), Some(0));
    let text = stdout(&status);
    assert!(text.contains("state     succeeded"), "{text}");
    assert!(text.contains("progress  100% (15/15 tasks finished)"), "{text}");

    let status: serde_json::Value = serde_json::from_slice(&project.baton(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["progress"], 1.0);
    assert_eq!(status["completed"], true);
    assert_eq!(status["current_phase"], 3);
    assert_eq!(status["workstreams"]["testing-infrastructure"]["succeeded"], 3);

    let tasks: serde_json::Value =
        serde_json::from_slice(&project.baton(&["tasks", "--json", "--workstream", "testing-infrastructure"]).stdout)
            .unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 3);
    let table = stdout(&project.baton(&["tasks", "--state", "succeeded"]));
    assert!(table.contains("property-tests") && table.contains("2/3"), "{table}");
    let bad_state = project.baton(&["tasks", "--state", "finished"]);
    assert_eq!(bad_state.status.code(), Some(2));
    assert!(stderr(&bad_state).contains(
        "unknown task state `finished` (one of: pending, ready, running, succeeded, dead, cancelled, suspended)"
    ));

    let agents: serde_json::Value = serde_json::from_slice(&project.baton(&["agents", "--json"]).stdout).unwrap();
    let test_agent = agents.as_array().unwrap().iter().find(|a| a["name"] == "test-agent").unwrap();
    assert_eq!(test_agent["tasks_succeeded"], 3);
    assert_eq!(test_agent["tasks_failed"], 1);
    assert_eq!(test_agent["state"], "stopped");

    let events = stdout(&project.baton(&["events", "--json"]));
    let types: Vec<String> = events
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("RunStarted"));
    assert_eq!(types.last().map(String::as_str), Some("RunCompleted"));
    let since: Vec<&str> = events.lines().collect();
    let tenth: serde_json::Value = serde_json::from_str(since[9]).unwrap();
    let after = stdout(&project.baton(&["events", "--json", "--since", &tenth["seq"].to_string()]));
    assert_eq!(after.lines().count(), since.len() - 10);
    // --type and --agent narrow it, as the API's filters do.
    let failed = stdout(&project.baton(&["events", "--type", "TaskFailed,TaskRetrying", "--agent", "test-agent"]));
    assert_eq!(failed.lines().count(), 1, "the flaky task's failure (a retry is about no agent):\n{failed}");
    assert!(failed.contains("task property-tests failed on test-agent (attempt 1)"), "{failed}");
    let retries = stdout(&project.baton(&["events", "--type", "TaskRetrying"]));
    assert!(retries.lines().count() == 1 && retries.contains("will retry (attempt 2)"), "{retries}");
    let typo = project.baton(&["events", "--type", "TaskFailled"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(stderr(&typo).contains("unknown event type `TaskFailled`"), "{}", stderr(&typo));
    // --follow on a finished run prints everything and ends.
    let follow = project.baton(&["events", "--follow"]);
    assert_eq!(follow.status.code(), Some(0));
    assert!(stdout(&follow).trim_end().ends_with("run succeeded: 15 succeeded, 0 dead, 0 cancelled"));

    let logs = stdout(&project.baton(&["logs", "test-agent"]));
    assert!(logs.contains("[test-agent] proptest: seed 0x5eed hit a flaky timing assertion"), "{logs}");
    assert!(logs.contains("attempt 1 failed in"), "{logs}");
    let unknown = project.baton(&["logs", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("no agent `nobody` in this run (known: build-agent, test-agent"),
        "{}",
        stderr(&unknown)
    );

    let id = tasks[0]["id"].to_string();
    let show = stdout(&project.baton(&["task", "show", &id]));
    assert!(show.contains("state     succeeded"), "{show}");
}

/// `--log-format json`: every line on stderr is a JSON object, the event lines among them with
/// their event; text logs that go to a file or a pipe carry no colour escapes.
#[test]
fn json_logs_carry_the_events_and_text_logs_off_a_terminal_have_no_escapes() {
    let project = Project::example();
    let run = project.baton(&["run", "--log-format", "json", "--log-level", "debug"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let mut kinds = Vec::new();
    for line in stderr(&run).lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(object["level"].is_string() && object["fields"]["message"].is_string(), "{line}");
        if let Some(kind) = object["event"]["type"].as_str() {
            kinds.push(kind.to_string());
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("RunStarted"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("RunCompleted"), "{kinds:?}");
    assert!(kinds.iter().any(|kind| kind == "TaskFailed"), "the flaky task's failure is a line: {kinds:?}");

    let text = project.baton(&["run", "--log-level", "debug"]);
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    assert!(stderr(&text).contains("DEBUG"), "debug lines are written: {}", stderr(&text));
    assert!(!stderr(&text).contains('\u{1b}'), "escapes in a log off a terminal:\n{}", stderr(&text));
}

#[test]
fn a_second_run_of_a_finished_plan_starts_a_new_run() {
    let project = Project::example();
    assert_eq!(project.baton(&["run"]).status.code(), Some(0));
    let second = project.baton(&["run"]);
    assert_eq!(second.status.code(), Some(0));
    assert!(!stdout(&second).contains("resumed"), "{}", stdout(&second));
}

#[test]
fn read_commands_before_any_run_say_what_to_do() {
    let project = Project::example();
    let status = project.baton(&["status"]);
    assert_eq!(status.status.code(), Some(2));
    assert!(stderr(&status).contains("nothing has run yet; start with `baton run`"), "{}", stderr(&status));
    let empty = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("check")
        .current_dir(empty.path())
        .env_remove("BATON_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr(&output).trim(), "baton.toml not found; run `baton init` to write an example, or pass -c FILE");
}

#[test]
fn a_closed_stdout_ends_a_read_command_quietly() {
    // `baton events | head -1`: the reader goes away. Here it is gone before baton writes
    // anything, so every write to stdout fails with a broken pipe.
    let project = Project::example();
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    for args in [&["events"][..], &["tasks"], &["agents", "--json"], &["status"]] {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let output = project.command(args).stdin(std::process::Stdio::null()).stdout(writer).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "baton {args:?}: {}", stderr(&output));
        assert!(!stderr(&output).contains("panicked"), "baton {args:?}: {}", stderr(&output));
    }
}
