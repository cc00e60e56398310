//! Agent messages with real workers: a task's agent messages another, an operator @mentions
//! agents with `baton send` (a worker gets a message and replies; a per-task agent gets a task),
//! and `baton messages` shows what went where.

mod common;

use baton_core::messages::DeliveryState;
use baton_store::Store;
use common::{Project, stderr, stdout};

const WORKER_PY: &str = include_str!("../../../examples/workers/worker.py");

const PLAN: &str = r#"
[orchestration]
name = "chat"

[[agents]]
name = "writer"
mode = "worker"
command = ["python3", "worker.py"]
capabilities = ["write"]

[[agents]]
name = "reviewer"
mode = "worker"
command = ["python3", "worker.py"]
capabilities = ["review"]

[[agents]]
name = "notifier"
command = ["bash", "notify.sh"]
capabilities = ["notify"]
concurrency = 2

[[tasks]]
key = "draft"
title = "Draft the reply"
requires = ["write"]
input = { send = { to = "reviewer", body = "please review the draft (ping)" } }

[[tasks]]
key = "wait"
title = "Keep the run open until the test says so"
requires = ["notify"]
"#;

/// A per-task agent that prints the messages it was handed with its task; the `wait` task
/// holds the run open until the test creates `release`.
const NOTIFY: &str = r#"#!/usr/bin/env bash
input=$(cat)
echo "$input" >> handed.jsonl
if [ "$BATON_TASK_KEY" = wait ]; then
    while [ ! -e release ]; do sleep 0.05; done
fi
echo '{"ok":true}'
"#;

#[tokio::test]
async fn agents_and_operators_exchange_messages() {
    let project = Project::with(PLAN, &[("worker.py", WORKER_PY), ("notify.sh", NOTIFY)]);
    let (child, mut lines) = project.spawn(&["run"]);
    // The writer's message reached the reviewer, who answered "pong" to the writer.
    lines.wait_for("message from writer to reviewer: please review the draft (ping)");
    lines.wait_for("message from reviewer to writer: pong");
    project.wait_for_front_door();

    // An operator mentions a worker and a per-task agent; an unknown name is refused.
    let unknown = project.baton(&["send", "@reviewr are you there?"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no agent @reviewr (closest: @reviewer"), "{}", stderr(&unknown));
    let sent = project.baton(&["send", "@reviewer @notifier ping: the release is at 5"]);
    assert_eq!(sent.status.code(), Some(0), "{}", stderr(&sent));
    assert!(stdout(&sent).contains("@notifier: sent as a task"), "{}", stdout(&sent));
    lines.wait_for_all(&["message from reviewer to operator: pong", "completed by notifier"]);

    std::fs::write(project.path().join("release"), "").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));

    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let all = store.deliveries(&run.id, None, 100).await.unwrap();
    let to_operator: Vec<_> = all.iter().filter(|d| d.to == "operator").collect();
    assert_eq!(to_operator.len(), 1, "{all:?}");
    assert_eq!(to_operator[0].body, "pong");
    assert!(to_operator[0].correlation_id.is_some(), "a reply names the message it answers");
    let to_reviewer: Vec<_> = all.iter().filter(|d| d.to == "reviewer").collect();
    assert_eq!(to_reviewer.len(), 2);
    assert!(to_reviewer.iter().all(|d| d.state == DeliveryState::Acked), "{to_reviewer:?}");
    let handed = std::fs::read_to_string(project.path().join("handed.jsonl")).unwrap();
    assert!(handed.contains("ping: the release is at 5"), "{handed}");
    let table = stdout(&project.baton(&["messages", "--agent", "reviewer"]));
    assert!(table.contains("please review the draft") && table.contains("acked"), "{table}");
}

#[tokio::test]
async fn a_worker_leases_a_resource_and_a_task_waits_for_it() {
    let plan = r#"
[orchestration]
name = "lease"

[[agents]]
name = "editor"
mode = "worker"
command = ["python3", "worker.py"]
capabilities = ["edit"]

[[agents]]
name = "builder"
command = ["bash", "-c", "echo built"]
capabilities = ["build"]

# While it holds the lease, the editor creates the build task, which must wait for it. The
# editor works a second, so that the builder has started (only a started agent is dispatched
# to, and the wait is said when a dispatch finds the resource held) on a busy machine too.
[[tasks]]
key = "edit"
title = "Edit Cargo.toml"
requires = ["edit"]
input = { lease = "file:Cargo.toml", steps = 2, step_seconds = 0.5, subtasks = [{ key = "build", title = "Build", requires = ["build"], resources = ["file:Cargo.*"] }] }
"#;
    let project = Project::with(plan, &[("worker.py", WORKER_PY)]);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    let lines = stderr(&run);
    let leased = lines.find("agent editor leased `file:Cargo.toml`");
    let waits = lines.find("task build waits: `file:Cargo.*` overlaps `file:Cargo.toml` held by agent editor");
    let released = lines.find("agent editor released `file:Cargo.toml` (released)");
    let built = lines.find("task build completed");
    assert!(leased.is_some() && waits.is_some() && released.is_some() && built.is_some(), "{lines}");
    assert!(leased < waits && waits < released && released < built, "in that order:\n{lines}");
}
