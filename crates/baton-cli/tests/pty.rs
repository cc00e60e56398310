//! Terminal agents (`mode = "pty"`) with real programs in real pseudo-terminals: tasks typed
//! in and recognised as done by output, by a marker file or by the program exiting; a question
//! on the screen answered through `baton attach`; a silent program reported as stalled. Tests
//! wait on what `baton run` prints and on the programs' output, never on the clock.

mod common;

use std::io::{Read, Write};
use std::process::{Child, ChildStdout, Stdio};

use baton_core::EventKind;
use baton_core::model::{AgentState, TaskRecord, TaskState};
use baton_store::{EventQuery, Store, TaskFilter};
use common::{Project, stderr, stdout};

/// A line-by-line program: answers each line, then says it is done.
const REPL: &str = r#"#!/usr/bin/env bash
while read -r line; do
  echo "got: $line"
  echo DONE
done
"#;

async fn tasks(project: &Project) -> Vec<TaskRecord> {
    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    store.tasks(&run.id, &TaskFilter::default()).await.unwrap()
}

fn task<'a>(tasks: &'a [TaskRecord], key: &str) -> &'a TaskRecord {
    tasks.iter().find(|task| task.key.as_deref() == Some(key)).unwrap()
}

fn output(task: &TaskRecord) -> &str {
    task.result.as_ref().and_then(|result| result["output"].as_str()).unwrap_or_default()
}

async fn events(project: &Project) -> Vec<EventKind> {
    let store = project.store();
    store.events(&EventQuery::default()).await.unwrap().into_iter().map(|event| event.kind).collect()
}

#[tokio::test]
async fn a_terminal_agent_is_typed_its_tasks_and_done_when_its_output_says_so() {
    let config = r#"
[orchestration]
name = "repl"

[[agents]]
name = "repl"
mode = "pty"
command = ["./repl.sh"]
done_when = { output = "(?m)^DONE" }

[[tasks]]
key = "first"
title = "First"
description = "DONE is what this does not say"
timeout = "30s"

[[tasks]]
key = "second"
title = "Second"
description = "second task"
depends_on = ["first"]
timeout = "30s"
"#;
    let project = Project::with(config, &[("repl.sh", REPL)]);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    let tasks = tasks(&project).await;
    // The echo of the typed line (which starts with DONE) is neither the output nor its end.
    assert_eq!(output(task(&tasks, "first")), "got: DONE is what this does not say\nDONE\n");
    assert_eq!(output(task(&tasks, "second")), "got: second task\nDONE\n");
    let log = std::fs::read_to_string(project.log_path("repl")).unwrap();
    for expected in [
        "--- terminal repl started",
        "got: DONE is what this does not say",
        "got: second task",
        "--- task 2 attempt 1 succeeded",
    ] {
        assert!(log.contains(expected), "`{expected}` not in the log:\n{log}");
    }
    let logs = stdout(&project.baton(&["logs", "repl"]));
    assert!(logs.contains("got: second task"), "{logs}");
}

#[tokio::test]
async fn with_the_exit_rule_the_program_ends_each_task_and_is_started_again() {
    let config = r#"
[orchestration]
name = "exit"

[[agents]]
name = "once"
mode = "pty"
command = ["./once.sh"]
input_template = "{task.input.word}\n"

[[tasks]]
key = "one"
title = "One"
input = { word = "hello" }
timeout = "30s"

[[tasks]]
key = "two"
title = "Two"
input = { word = "fail" }
depends_on = ["one"]
max_attempts = 1
timeout = "30s"
"#;
    let once = "#!/usr/bin/env bash\nread -r word\necho \"read: $word\"\n[ \"$word\" = fail ] && exit 3\nexit 0\n";
    let project = Project::with(config, &[("once.sh", once)]);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", stdout(&run), stderr(&run));
    let tasks = tasks(&project).await;
    let one = task(&tasks, "one");
    assert_eq!((one.state, output(one)), (TaskState::Succeeded, "read: hello\n"));
    let two = task(&tasks, "two");
    assert_eq!(two.state, TaskState::Dead, "ran on the program started again after `one`");
    assert_eq!(two.error.as_deref(), Some("exit status 3: read: fail"));
    let log = std::fs::read_to_string(project.log_path("once")).unwrap();
    assert!(log.contains("--- terminal once started again for the next task"), "{log}");
    let events = events(&project).await;
    assert!(
        !events.iter().any(|event| matches!(event, EventKind::AgentTerminated { .. })),
        "an exit that ends a task is no crash: {events:?}"
    );
}

#[tokio::test]
async fn a_marker_file_ends_a_task_and_a_stale_one_does_not() {
    let config = r#"
[orchestration]
name = "marker"

[[agents]]
name = "maker"
mode = "pty"
command = ["./maker.sh"]
input_template = "{task.key}\n"
done_when = { file = "out/{task.key}.done" }
restart_backoff = "50ms"

[[tasks]]
key = "fresh"
title = "Fresh"
timeout = "30s"

[[tasks]]
key = "stale"
title = "Stale"
depends_on = ["fresh"]
timeout = "1s"
max_attempts = 1
"#;
    // Works on each key, and leaves the marker, except for `stale`, whose marker is left over
    // from before.
    let maker = r#"#!/usr/bin/env bash
while read -r key; do
  echo "working on $key"
  [ "$key" = stale ] && continue
  mkdir -p out && touch "out/$key.done"
done
"#;
    let project = Project::with(config, &[("maker.sh", maker), ("out/stale.done", "")]);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", stdout(&run), stderr(&run));
    let tasks = tasks(&project).await;
    let fresh = task(&tasks, "fresh");
    assert_eq!((fresh.state, output(fresh)), (TaskState::Succeeded, "working on fresh\n"));
    let stale = task(&tasks, "stale");
    assert_eq!((stale.state, stale.error.as_deref()), (TaskState::Dead, Some("timed out after 1s")));
    let log = std::fs::read_to_string(project.log_path("maker")).unwrap();
    assert!(log.contains("^C"), "Ctrl-C is typed into a task that timed out:\n{log}");
}

#[tokio::test]
async fn a_program_that_exits_mid_task_is_restarted_and_the_task_retried() {
    let config = r#"
[orchestration]
name = "crash"
retry_backoff = "50ms"

[[agents]]
name = "flaky"
mode = "pty"
command = ["./flaky.sh"]
done_when = { output = "DONE" }
restart_backoff = "50ms"

[[tasks]]
key = "job"
title = "Job"
description = "the job"
timeout = "30s"
"#;
    // Crashes on its first task, then behaves.
    let flaky = r#"#!/usr/bin/env bash
if [ ! -e crashed ]; then
  touch crashed
  read -r line
  echo "crashing on $line"
  exit 4
fi
while read -r line; do echo "did $line"; echo DONE; done
"#;
    let project = Project::with(config, &[("flaky.sh", flaky)]);
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    let tasks = tasks(&project).await;
    let job = task(&tasks, "job");
    assert_eq!((job.state, job.attempt, output(job)), (TaskState::Succeeded, 2, "did the job\nDONE\n"));
    let events = events(&project).await;
    assert!(
        events.iter().any(|event| matches!(event,
            EventKind::AgentTerminated { agent, reason } if agent == "flaky" && reason == "exit status 4")),
        "{events:?}"
    );
    assert!(events.iter().any(|event| matches!(event,
        EventKind::AgentStateChanged { agent, to: AgentState::Restarting, .. } if agent == "flaky")));
}

/// Reads a child's stdout until it has printed `needle`; returns everything read.
fn read_until(stdout: &mut ChildStdout, seen: &mut String, needle: &str) {
    let mut buffer = [0u8; 1024];
    while !seen.contains(needle) {
        let n = stdout.read(&mut buffer).unwrap();
        assert!(n > 0, "ended before printing `{needle}`; it printed:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
}

#[tokio::test]
async fn a_question_on_the_screen_is_reported_and_answered_through_attach() {
    let config = r#"
[orchestration]
name = "asker"

[[agents]]
name = "asker"
mode = "pty"
command = ["./ask.sh"]
done_when = { output = "DONE" }

[[tasks]]
key = "deploy"
title = "Deploy"
description = "deploy it"
timeout = "60s"

# Keeps the run going until the test is done with attach.
[[tasks]]
key = "hold"
title = "Hold"
description = "hold"
depends_on = ["deploy"]
timeout = "60s"
"#;
    let ask = r#"#!/usr/bin/env bash
while read -r line; do
  if [ "$line" = hold ]; then
    while [ ! -e release ]; do sleep 0.05; done
    echo DONE
    continue
  fi
  printf 'Continue? [y/N] '
  read -r answer
  if [ "$answer" = y ]; then echo "proceeding with $line"; echo DONE; else echo aborted; fi
done
"#;
    let project = Project::with(config, &[("ask.sh", ask)]);
    let (run, mut lines) = project.spawn(&["run"]);
    lines.wait_for("agent asker: active -> waiting-input (prompt: Continue? [y/N])");

    let mut attach: Child = project
        .command(&["attach", "asker"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut screen = String::new();
    let mut attach_stdout = attach.stdout.take().unwrap();
    read_until(&mut attach_stdout, &mut screen, "Continue? [y/N]");
    assert!(screen.contains("deploy it"), "the screen so far is replayed: {screen}");
    let mut keys = attach.stdin.take().unwrap();
    keys.write_all(b"y\n").unwrap();
    read_until(&mut attach_stdout, &mut screen, "DONE");
    assert!(screen.contains("proceeding with deploy it"), "{screen}");
    keys.write_all(&[0x1d]).unwrap();
    let detached = attach.wait_with_output().unwrap();
    assert_eq!(detached.status.code(), Some(0), "{}", stderr(&detached));
    assert!(stderr(&detached).contains("detached from asker; it keeps running"), "{}", stderr(&detached));

    lines.wait_for("agent asker: waiting-input -> active (output resumed)");
    std::fs::write(project.path().join("release"), "").unwrap();
    let run = run.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stdout(&run));
    let tasks = tasks(&project).await;
    assert!(output(task(&tasks, "deploy")).contains("proceeding with deploy it"), "{:?}", tasks[0].result);
    let events = events(&project).await;
    assert!(events.iter().any(|event| matches!(event,
        EventKind::AgentStateChanged { agent, to: AgentState::WaitingInput, reason: Some(reason), .. }
            if agent == "asker" && reason == "prompt: Continue? [y/N]")));
}

#[tokio::test]
async fn a_silent_terminal_agent_is_reported_stalled_until_it_prints_again() {
    let config = r#"
[orchestration]
name = "staller"

[[agents]]
name = "thinker"
mode = "pty"
command = ["./think.sh"]
done_when = { output = "DONE" }
stall_after = "1s"

[[tasks]]
key = "think"
title = "Think"
description = "hard"
timeout = "60s"
"#;
    // Goes quiet until the test lets it go on (by creating `go`).
    let think = r#"#!/usr/bin/env bash
while read -r line; do
  echo "thinking $line"
  while [ ! -e go ]; do sleep 0.05; done
  echo "resumed"
  echo DONE
done
"#;
    let project = Project::with(config, &[("think.sh", think)]);
    let (run, mut lines) = project.spawn(&["run"]);
    lines.wait_for("agent thinker: active -> stalled (no output for 1s)");
    let agents = stdout(&project.baton(&["agents"]));
    assert!(agents.contains("stalled"), "{agents}");
    std::fs::write(project.path().join("go"), "").unwrap();
    lines.wait_for("agent thinker: stalled -> active (output resumed)");
    let run = run.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stdout(&run));
    let tasks = tasks(&project).await;
    assert_eq!(output(task(&tasks, "think")), "thinking hard\nresumed\nDONE\n");
}

#[test]
fn attach_says_clearly_why_it_cannot() {
    let config = r#"
[orchestration]
name = "attach"

[[agents]]
name = "term"
mode = "pty"
command = ["./repl.sh"]

[[agents]]
name = "plain"
command = ["./repl.sh"]
"#;
    let project = Project::with(config, &[("repl.sh", REPL)]);
    let unknown = project.baton(&["attach", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).starts_with("no agent `nobody` in baton.toml (known: term, plain)"),
        "{}",
        stderr(&unknown)
    );
    let plain = project.baton(&["attach", "plain"]);
    assert_eq!(plain.status.code(), Some(2));
    assert_eq!(
        stderr(&plain).trim(),
        "agent `plain` is not a terminal agent (its mode is \"per-task\"); only agents with mode = \"pty\" can be attached"
    );
    let not_running = project.baton(&["attach", "term"]);
    assert_eq!(not_running.status.code(), Some(1));
    assert!(
        stderr(&not_running).starts_with("no running `baton run` serves agent term (cannot connect to "),
        "{}",
        stderr(&not_running)
    );
}

#[tokio::test]
async fn terminal_programs_die_with_a_killed_baton() {
    let config = r#"
[orchestration]
name = "orphans"

[[agents]]
name = "repl"
mode = "pty"
command = ["./repl.sh"]
done_when = { output = "never printed" }

[[tasks]]
key = "long"
title = "Long"
"#;
    let project = Project::with(config, &[("repl.sh", REPL)]);
    let (mut child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task long claimed");
    let log = std::fs::read_to_string(project.log_path("repl")).unwrap();
    let pgid: i32 = log.split("pid group ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    assert!(common::is_alive(pgid));
    child.kill().unwrap();
    child.wait().unwrap();
    // Baton's end of the terminal closes as it dies, which hangs the program up.
    let mut spins = 0u64;
    while common::is_alive(pgid) {
        spins += 1;
        assert!(spins < 50_000_000, "the program {pgid} outlived baton");
        std::thread::yield_now();
    }
}
