//! `baton run`'s front door: the HTTP API on a Unix socket beside the store. Commands that
//! change the run (`task add`, `agent stop`, `send`, …) reach the engine there and act at once;
//! `status` reads through it; the socket is private (0600), replaces a stale one and goes with
//! the run. Without a `baton run` executing the run, such commands fail with exit 2, and the
//! read commands still read the store.

mod common;

use std::os::unix::fs::PermissionsExt;

use baton_core::model::TaskState;
use baton_store::{Store, TaskFilter};
use common::{Project, stderr, stdout};

const PLAN: &str = r#"
[orchestration]
name = "front"

[[agents]]
name = "echo"
command = ["sh", "-c", "cat"]
capabilities = ["echo"]

[[agents]]
name = "holder"
command = ["sh", "-c", "while [ ! -e release ]; do sleep 0.05; done; echo ok"]
capabilities = ["hold"]

[[tasks]]
key = "hold"
title = "Keep the run open until the test says so"
requires = ["hold"]
"#;

fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
}

/// The id in `task 3 added (key)`.
fn added_id(output: &std::process::Output) -> i64 {
    let text = stdout(output);
    assert_eq!(output.status.code(), Some(0), "{text}\n{}", stderr(output));
    text.strip_prefix("task ").and_then(|rest| rest.split_whitespace().next()).unwrap_or_default().parse().unwrap()
}

#[tokio::test]
async fn commands_reach_a_running_baton_run_through_its_socket() {
    let project = Project::with(PLAN, &[]);
    let (child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task hold claimed by holder");
    project.wait_for_front_door();
    let mode = std::fs::metadata(project.socket_path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is its owner's only: {mode:o}");
    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();

    // A task added is in the run when the command returns: the engine created it.
    let added = project.baton(&["task", "add", "Echo this", "--agent", "echo", "--input", "[1, 2]"]);
    let id = added_id(&added);
    assert!(stdout(&added).contains("(echo-this)"), "{}", stdout(&added));
    let task = store.task(baton_core::model::TaskId(id)).await.unwrap().expect("the task exists at once");
    assert_eq!((task.run_id.as_str(), task.input.clone()), (run.id.as_str(), serde_json::json!([1, 2])));
    lines.wait_for("task echo-this completed by echo");
    // The engine's checks answer, with exit code 2.
    let unknown = project.baton(&["task", "add", "Nobody", "--agent", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("unknown agent `nobody` (known: echo, holder)"), "{}", stderr(&unknown));

    // A stopped agent is stopped when the command returns.
    let stopped = project.baton(&["agent", "stop", "echo"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));
    assert_eq!(stdout(&stopped).trim(), "agent echo is stopped");
    let agents = store.agents(&run.id).await.unwrap();
    let echo = agents.iter().find(|agent| agent.name == "echo").unwrap();
    assert_eq!(echo.state, baton_core::model::AgentState::Stopped);
    let started = project.baton(&["agent", "start", "echo"]);
    assert_eq!(started.status.code(), Some(0), "{}", stderr(&started));

    // Chat: a per-task agent gets a task, made by the engine before the command returns.
    let sent = project.baton(&["send", "@echo ping"]);
    assert_eq!(sent.status.code(), Some(0), "{}", stderr(&sent));
    let redelivered = project.baton(&["messages", "redeliver", "--dead"]);
    assert_eq!(redelivered.status.code(), Some(0), "{}", stderr(&redelivered));
    assert_eq!(stdout(&redelivered).trim(), "no dead letter to redeliver");
    assert!(stdout(&sent).contains("@echo: sent as a task"), "{}", stdout(&sent));
    // It names the process that took it: the run's, on its socket.
    assert!(
        stdout(&sent).contains("created by the process serving ") && stdout(&sent).contains("api.sock"),
        "{}",
        stdout(&sent)
    );
    let tasks = store.tasks(&run.id, &TaskFilter { agent: Some("echo".into()), ..Default::default() }).await.unwrap();
    assert_eq!(tasks.len(), 2, "echo-this and the chat task: {tasks:?}");

    // The status is read through the socket.
    let status = project.baton(&["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let text = stdout(&status);
    assert!(text.contains("state     running"), "{text}");
    assert!(text.contains("executed by the process serving ") && text.contains(".baton/api.sock"), "{text}");

    std::fs::write(project.path().join("release"), "").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(!project.socket_path().exists(), "the socket goes with the run");
    let tasks = store.tasks(&run.id, &TaskFilter::default()).await.unwrap();
    assert!(tasks.iter().all(|task| task.state == TaskState::Succeeded), "{tasks:?}");

    let ended = project.baton(&["task", "add", "Too late", "--agent", "echo"]);
    assert_eq!(ended.status.code(), Some(2));
    assert!(
        stderr(&ended).contains(&format!("run {} has ended (succeeded); only a running run takes commands", run.id)),
        "{}",
        stderr(&ended)
    );
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_commands_need_a_running_baton_run() {
    let project = Project::with(PLAN, &[]);
    // What a killed `baton run` leaves: a socket file nothing listens on.
    std::fs::create_dir_all(project.path().join(".baton")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(project.socket_path()).unwrap());

    let (child, mut lines) = project.spawn(&["run", "--grace", "0s"]);
    lines.wait_for("task hold claimed by holder");
    project.wait_for_front_door();
    let tasks = project.baton(&["tasks", "--json"]);
    assert_eq!(tasks.status.code(), Some(0), "{}", stderr(&tasks));
    sigterm(&child);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "stopped before the end: {}", stdout(&output));
    assert!(!project.socket_path().exists(), "the socket goes with the run");

    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let message =
        format!("no `baton run` is executing run {}: start it with `baton run`; commands change a running run", run.id);
    let commands: [&[&str]; 6] = [
        &["task", "add", "Echo this", "--agent", "echo"],
        &["task", "cancel", "1"],
        &["agent", "stop", "echo"],
        &["send", "@echo ping"],
        &["budget", "set", "global", "--daily-tokens", "1000"],
        &["messages", "redeliver", "--dead"],
    ];
    for args in commands {
        let output = project.baton(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stdout(&output));
        assert!(stderr(&output).contains(&message), "{args:?}: {}", stderr(&output));
    }
    assert_eq!(store.tasks(&run.id, &TaskFilter::default()).await.unwrap().len(), 1, "nothing was written");
    // Reading needs no running run.
    for args in [&["status"][..], &["tasks"], &["agents"], &["events"], &["messages"], &["budget"]] {
        let output = project.baton(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", stderr(&output));
    }
}

/// With `[auth]`, the socket still lets its owner in without a token, as the local admin: the
/// file mode is the access control. A token, when given, is the caller it names.
#[test]
fn through_the_socket_the_local_user_needs_no_token() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";
    let plan = format!("{PLAN}\n[auth]\nsecret_env = \"FRONT_DOOR_SECRET\"\n");
    let project = Project::with(&plan, &[]);
    let mut child = project
        .command(&["run"])
        .env("FRONT_DOOR_SECRET", SECRET)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = common::Lines::new(child.stderr.take().unwrap());
    lines.wait_for("task hold claimed by holder");
    project.wait_for_front_door();

    let added = project.baton(&["task", "add", "Echo this", "--agent", "echo"]);
    added_id(&added);
    let viewer =
        project.command(&["token", "create", "--role", "viewer"]).env("FRONT_DOOR_SECRET", SECRET).output().unwrap();
    let token = stdout(&viewer).trim().to_string();
    let refused = project.baton(&["--token", &token, "task", "add", "Not as a viewer", "--agent", "echo"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    let audit = project.baton(&["audit", "--json"]);
    let actors: Vec<String> = stdout(&audit)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["actor"].as_str().unwrap().to_string())
        .collect();
    assert!(actors.contains(&"local".to_string()) && actors.contains(&"viewer".to_string()), "{actors:?}");

    std::fs::write(project.path().join("release"), "").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

/// `baton plan` reaches the running run's coordinator: with `mode = "llm"` and no provider it
/// falls back to the rules and says why; the same objective again is refused (exit 2).
#[tokio::test]
async fn baton_plan_turns_an_objective_into_tasks_through_the_socket() {
    let plan = format!("{PLAN}\n[coordinator]\nmode = \"llm\"\n\n[[workstreams]]\nname = \"ops\"\n");
    let project = Project::with(&plan, &[]);
    let check = project.baton(&["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    assert!(stderr(&check).contains("note: baton.toml:"), "{}", stderr(&check));
    assert!(stderr(&check).contains("names no provider"), "{}", stderr(&check));

    let (child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task hold claimed by holder");
    project.wait_for_front_door();
    let planned = project.baton(&["plan", "Say hello", "--workstream", "ops"]);
    assert_eq!(planned.status.code(), Some(0), "{}", stderr(&planned));
    let text = stdout(&planned);
    assert!(text.contains("the coordinator fell back to the rules: no provider configured"), "{text}");
    assert!(text.contains("1 task(s) created by the rules: "), "{text}");
    let again = project.baton(&["plan", "Say hello", "--workstream", "ops"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("planned already"), "{}", stderr(&again));

    std::fs::write(project.path().join("release"), "").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let tasks =
        store.tasks(&run.id, &TaskFilter { workstream: Some("ops".into()), ..Default::default() }).await.unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].state, TaskState::Succeeded);
}
