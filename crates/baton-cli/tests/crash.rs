//! Durability: `kill -9` of `baton run` mid-run, then `baton run` again, must finish the plan
//! with every task completed exactly once and nothing acknowledged lost.

mod common;

use std::collections::HashMap;

use baton_core::EventKind;
use baton_core::model::{RunState, TaskState};
use baton_store::{EventQuery, Store, TaskFilter};
use common::{Project, stderr, stdout};

#[tokio::test]
async fn a_killed_run_resumes_and_completes_every_task_exactly_once() {
    let project = Project::example();
    let (mut child, mut lines) = project.spawn(&["run"]);
    // Mid-run: phase 2 has started and its tasks are running.
    lines.wait_for("task integration-harness claimed by test-agent");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let store = project.store();
    let killed = store.latest_run(None).await.unwrap().unwrap();
    assert_eq!(killed.state, RunState::Running);
    let before = store.tasks(&killed.id, &TaskFilter::default()).await.unwrap();
    let running_at_kill: Vec<String> =
        before.iter().filter(|task| task.state == TaskState::Running).map(|task| task.key.clone().unwrap()).collect();
    assert!(running_at_kill.contains(&"integration-harness".to_string()), "{running_at_kill:?}");
    let done_before: Vec<i64> =
        before.iter().filter(|task| task.state == TaskState::Succeeded).map(|task| task.id.0).collect();
    assert!(done_before.len() >= 4, "phase 1 was done");

    // `baton status` reads the interrupted run.
    let status = stdout(&project.baton(&["status"]));
    assert!(status.contains("state     running"), "{status}");

    let resumed = project.baton(&["run"]);
    assert_eq!(resumed.status.code(), Some(0), "{}\n{}", stdout(&resumed), stderr(&resumed));
    assert!(
        stdout(&resumed).contains(&format!("run {} (resumed) succeeded: 15/15 tasks", killed.id)),
        "{}",
        stdout(&resumed)
    );

    let run = store.run(&killed.id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let tasks = store.tasks(&run.id, &TaskFilter::default()).await.unwrap();
    assert_eq!(tasks.len(), 15, "no task created twice");
    assert!(tasks.iter().all(|task| task.state == TaskState::Succeeded));
    for task in &tasks {
        let key = task.key.clone().unwrap();
        if running_at_kill.contains(&key) {
            assert!(
                task.attempt >= 2,
                "{key} was running at the kill: its attempt counts, so it is on attempt {}",
                task.attempt
            );
        }
    }
    let events = store.events(&EventQuery { run_id: Some(run.id.clone()), ..Default::default() }).await.unwrap();
    let mut completions: HashMap<i64, usize> = HashMap::new();
    let mut claims_after_resume: Vec<i64> = Vec::new();
    let mut resumed_seen = false;
    for event in &events {
        match &event.kind {
            EventKind::TaskCompleted { task, .. } => *completions.entry(task.0).or_default() += 1,
            EventKind::RunResumed { requeued, .. } => {
                resumed_seen = true;
                assert_eq!(*requeued as usize, running_at_kill.len());
            }
            EventKind::TaskClaimed { task, .. } if resumed_seen => claims_after_resume.push(task.0),
            _ => {}
        }
    }
    assert!(resumed_seen);
    assert_eq!(completions.len(), 15);
    assert!(completions.values().all(|&n| n == 1), "every task completed exactly once: {completions:?}");
    for id in done_before {
        assert!(!claims_after_resume.contains(&id), "task {id} was done before the kill and ran again");
    }
    let expired = events.iter().filter(|event| matches!(event.kind, EventKind::TaskLeaseExpired { .. })).count();
    assert_eq!(expired, running_at_kill.len());
}

#[tokio::test]
async fn fresh_abandons_the_unfinished_run_and_starts_anew() {
    let project = Project::example();
    let (mut child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task analyze-base64ct claimed");
    child.kill().unwrap();
    child.wait().unwrap();
    let store = project.store();
    let first = store.latest_run(None).await.unwrap().unwrap();

    let fresh = project.baton(&["run", "--fresh"]);
    assert_eq!(fresh.status.code(), Some(0), "{}", stderr(&fresh));
    let second = store.latest_run(None).await.unwrap().unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(second.state, RunState::Succeeded);
    let abandoned = store.run(&first.id).await.unwrap().unwrap();
    assert_eq!(abandoned.state, RunState::Failed);
    assert_eq!(abandoned.error.as_deref(), Some("abandoned: a fresh run was started"));
}

#[tokio::test]
async fn a_second_baton_run_refuses_while_the_first_works_and_sigterm_stops_gracefully() {
    let project = Project::example();
    let (child, mut lines) = project.spawn(&["run", "--grace", "30s"]);
    lines.wait_for("task analyze-base64ct claimed");

    let second = project.baton(&["run"]);
    assert_eq!(second.status.code(), Some(2));
    let pid = child.id();
    assert!(
        stderr(&second).contains(&format!("the plan `roadmap-v0.3.0` is being run by process {pid} on ")),
        "{}",
        stderr(&second)
    );

    // SIGTERM: no new claims, the running attempt finishes, the run stays resumable.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("stopped before the end"), "{}", stdout(&output));
    let rest = lines.rest();
    assert!(rest.contains("task analyze-base64ct completed"), "the running attempt finished:\n{rest}");
    assert!(!rest.contains("research-edition2024 claimed"), "nothing new was claimed:\n{rest}");

    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Interrupted, "a stopped run says so");
    assert_eq!(run.owner, None, "a stopped run is left for anyone to resume");
    let status = project.baton(&["status"]);
    assert!(stdout(&status).contains("state     interrupted"), "{}", stdout(&status));
    assert!(stdout(&status).contains("not being executed: `baton run` resumes it"), "{}", stdout(&status));
    let resumed = project.baton(&["run"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert_eq!(store.run(&run.id).await.unwrap().unwrap().state, RunState::Succeeded, "resumed to its end");
    let research = store
        .tasks(&run.id, &TaskFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.key.as_deref() == Some("research-edition2024"))
        .unwrap();
    assert_eq!(research.attempt, 1);
}

#[tokio::test]
async fn what_a_killed_run_left_running_is_killed_when_it_resumes() {
    let plan = r#"
[orchestration]
name = "leftovers"

[[agents]]
name = "worker"
command = ["bash", "work.sh"]

[[tasks]]
key = "job"
title = "A job that starts a helper process"
"#;
    // The first attempt starts a long-lived grandchild and waits; the second finishes at once.
    let work = r#"#!/usr/bin/env bash
if [ "$BATON_TASK_ATTEMPT" = 1 ]; then
    sleep 300 &
    echo $! > grandchild.pid
    echo "helper started" >&2
    wait
fi
echo done
"#;
    let project = Project::with(plan, &[("work.sh", work)]);
    let (mut child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task job claimed");
    // The grandchild's pid file appears once the attempt is under way; the log line is written
    // after it.
    let log = project.log_path("worker");
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("helper started") {
        std::thread::yield_now();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let pid: i32 = std::fs::read_to_string(project.path().join("grandchild.pid")).unwrap().trim().parse().unwrap();
    assert!(
        common::eventually(|| !common::is_alive(pid)),
        "the agent's supervisor kills what the agent started when baton dies"
    );

    let resumed = project.baton(&["run"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert!(!common::is_alive(pid), "the resumed run killed the helper left by the killed one");
}

#[test]
fn sigterm_stops_a_run_whose_output_pipe_was_closed() {
    let project = Project::example();
    let (child, mut lines) = project.spawn(&["run", "--grace", "5s"]);
    lines.wait_for("task analyze-base64ct claimed");
    // The reader goes away (`baton run | head` that has seen enough): later writes fail.
    drop(lines);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = done_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("baton stopped on SIGTERM although nobody reads its stderr")
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "stopped before the end, resumable");
}

const RACE: &str = r#"
[orchestration]
name = "race"

[[agents]]
name = "worker"
command = ["sh", "-c", "sleep 0.2"]

[[tasks]]
key = "job"
title = "Job"
"#;

/// Two `baton run` started at the same instant — on a new store, then on a finished one, with
/// and without `--fresh` — never both run the plan: the store takes the claim with the new run,
/// and the loser exits 2 naming the process that holds the plan. Each round races two real
/// processes; before the claim was atomic both ran the plan in about a quarter of the rounds.
#[tokio::test]
async fn two_baton_runs_started_at_once_never_both_run_the_plan() {
    const ROUNDS: usize = 16;
    let project = Project::with(RACE, &[]);
    let mut n_refused = 0;
    for round in 0..ROUNDS {
        let args: &[&str] = if round % 2 == 0 { &["run"] } else { &["run", "--fresh"] };
        let children: Vec<std::process::Child> = (0..2)
            .map(|_| {
                project
                    .command(args)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let pid = child.id();
            let output = child.wait_with_output().unwrap();
            match output.status.code() {
                Some(0) => assert!(stdout(&output).contains("succeeded: 1/1 tasks"), "{}", stdout(&output)),
                Some(2) => {
                    n_refused += 1;
                    let message = stderr(&output);
                    assert!(message.contains("error: the plan `race` is being run by process "), "{message}");
                    assert!(!message.contains(&format!("process {pid} ")), "it names the other process: {message}");
                }
                other => panic!("round {round}: exit {other:?}\n{}\n{}", stdout(&output), stderr(&output)),
            }
        }
    }
    // Runs of the plan, in the order of the store's events: each starts after the previous ended.
    let events = project.store().events(&EventQuery::default()).await.unwrap();
    let mut running: Option<String> = None;
    let mut n_runs = 0;
    for event in events {
        match event.kind {
            EventKind::RunStarted { .. } => {
                assert!(running.is_none(), "run {} started while {running:?} was running", event.run_id);
                running = Some(event.run_id);
                n_runs += 1;
            }
            EventKind::RunCompleted { .. } => {
                assert_eq!(running.as_deref(), Some(event.run_id.as_str()));
                running = None;
            }
            _ => {}
        }
    }
    assert_eq!(n_runs + n_refused, 2 * ROUNDS, "every process ran the plan or was refused");
}

/// A daemon the agent started with `setsid` (its own session and process group) and exited.
const DAEMON: &str = r#"setsid bash -c 'exec -a "$0" sleep 300' "$PWD/daemon-marker" </dev/null >/dev/null 2>&1 &"#;

#[test]
fn a_daemon_an_attempt_leaves_behind_is_killed_when_the_attempt_ends() {
    let plan = r#"
[orchestration]
name = "daemons"

[[agents]]
name = "worker"
command = ["bash", "work.sh"]

[[tasks]]
key = "job"
title = "A job that starts a daemon and exits"
"#;
    let work = format!("#!/usr/bin/env bash\n{DAEMON}\necho done\n");
    let project = Project::with(plan, &[("work.sh", &work)]);
    let marker = project.path().join("daemon-marker").display().to_string();
    let output = project.baton(&["run"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let gone = common::eventually(|| common::processes_with(&marker).is_empty());
    let left = common::processes_with(&marker);
    common::kill_all(&left);
    assert!(gone, "the daemon outlived its attempt: {left:?}");
}

#[test]
fn an_agents_children_and_daemons_die_with_a_killed_baton() {
    let plan = r#"
[orchestration]
name = "orphans"

[[agents]]
name = "worker"
command = ["bash", "work.sh"]

[[tasks]]
key = "job"
title = "A job that starts a child and a daemon and waits"
"#;
    let work =
        format!("#!/usr/bin/env bash\nbash -c 'exec -a \"$0\" sleep 300' \"$PWD/child-marker\" &\n{DAEMON}\nwait\n");
    let project = Project::with(plan, &[("work.sh", &work)]);
    let child_marker = project.path().join("child-marker").display().to_string();
    let daemon_marker = project.path().join("daemon-marker").display().to_string();
    let (mut baton, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task job claimed");
    let started = common::eventually(|| {
        !common::processes_with(&child_marker).is_empty() && !common::processes_with(&daemon_marker).is_empty()
    });
    assert!(started, "the agent started its child and its daemon");
    baton.kill().unwrap(); // SIGKILL
    baton.wait().unwrap();
    let gone = common::eventually(|| {
        common::processes_with(&child_marker).is_empty() && common::processes_with(&daemon_marker).is_empty()
    });
    let left: Vec<i32> = [common::processes_with(&child_marker), common::processes_with(&daemon_marker)].concat();
    common::kill_all(&left);
    assert!(gone, "processes of the agent outlived baton: {left:?}");
}
