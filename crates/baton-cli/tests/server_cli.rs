//! The CLI through a running `baton serve`: `--url` (or the configuration's `server.url`)
//! sends the read commands, `task add|cancel` and `agent stop` to the server's API; without a
//! server, `task add` reaches the running `baton run` through the socket beside the store; a
//! `--url` where nothing answers is a usage error.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Stdio};

use baton_core::model::TaskState;
use baton_store::{Store, TaskFilter};
use common::{Project, stderr, stdout};

const PLAN: &str = r#"
[orchestration]
name = "served"

[[agents]]
name = "echo"
command = ["sh", "-c", "cat"]
capabilities = ["echo"]
"#;

/// A port nothing listens on: bound by the system, then let go.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A child's stdout, read line by line as it comes.
struct StdoutLines {
    reader: BufReader<ChildStdout>,
    seen: Vec<String>,
}

impl StdoutLines {
    fn wait_for(&mut self, needle: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "the command ended before printing `{needle}`; it printed:\n{}", self.seen.join(""));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }
}

fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
}

/// The id in `task 3 added (key)`.
fn added_id(output: &std::process::Output) -> String {
    let text = stdout(output);
    assert_eq!(output.status.code(), Some(0), "{text}\n{}", stderr(output));
    let id = text.strip_prefix("task ").and_then(|rest| rest.split_whitespace().next()).unwrap_or_default();
    assert!(text.contains(" added (") && id.parse::<i64>().is_ok(), "{text}");
    id.to_string()
}

fn tasks_json(project: &Project, args: &[&str]) -> Vec<serde_json::Value> {
    let output = project.baton(args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn state_of<'a>(tasks: &'a [serde_json::Value], key: &str) -> &'a str {
    let task = tasks.iter().find(|task| task["key"] == key).unwrap_or_else(|| panic!("no task {key} in {tasks:?}"));
    task["state"].as_str().unwrap()
}

#[test]
fn the_cli_goes_through_a_running_server() {
    let project = Project::with(PLAN, &[]);
    let (server, mut lines) = project.spawn(&["serve", "--listen", "127.0.0.1:0"]);
    let line = lines.wait_for("API on ");
    let url = line.split("API on ").nth(1).unwrap().trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    // Another configuration of the same plan whose `server.url` is this server: the CLI finds
    // the server without --url.
    std::fs::write(project.path().join("client.toml"), format!("{PLAN}\n[server]\nurl = \"{url}\"\n")).unwrap();

    let mut follower = project
        .command(&["--url", &url, "events", "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = StdoutLines { reader: BufReader::new(follower.stdout.take().unwrap()), seen: Vec::new() };

    // A task added through the API runs at once.
    let added = project.baton(&[
        "--url",
        &url,
        "task",
        "add",
        "Say hello",
        "--agent",
        "echo",
        "--input",
        r#"{"greeting":"hello"}"#,
    ]);
    let hello = added_id(&added);
    assert!(stdout(&added).contains("(say-hello)"), "{}", stdout(&added));
    events.wait_for("task say-hello completed by echo");
    let tasks = tasks_json(&project, &["--url", &url, "tasks", "--json"]);
    assert_eq!(state_of(&tasks, "say-hello"), "succeeded");
    assert_eq!(tasks.len(), 1, "{tasks:?}");

    let status = project.baton(&["--url", &url, "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let text = stdout(&status);
    assert!(text.contains("state     running"), "{text}");
    assert!(text.contains("(1/1 tasks finished)"), "{text}");
    assert!(text.contains(&format!("executed by baton serve at {url}")), "{text}");

    // The agent's log, from the server.
    let log = project.baton(&["--url", &url, "logs", "echo"]);
    assert_eq!(log.status.code(), Some(0), "{}", stderr(&log));
    assert!(stdout(&log).contains("`Say hello` attempt 1"), "{}", stdout(&log));
    let unknown = project.baton(&["--url", &url, "logs", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stdout(&unknown));
    assert!(stderr(&unknown).contains("no agent `nobody` in this run (known: echo)"), "{}", stderr(&unknown));

    let shown = project.baton(&["--url", &url, "task", "show", &hello]);
    assert!(stdout(&shown).contains("state     succeeded (attempt 1/3)"), "{}", stdout(&shown));

    // A stopped agent takes no work: its task waits, and is cancelled at once, through the
    // server found by `server.url`.
    let stopped = project.baton(&["--url", &url, "agent", "stop", "echo"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));
    assert_eq!(stdout(&stopped).trim(), "agent echo is stopped");
    let agents = project.baton(&["--url", &url, "agents", "--json"]);
    let agents: Vec<serde_json::Value> = serde_json::from_str(&stdout(&agents)).unwrap();
    assert_eq!(agents[0]["name"], "echo");
    assert_eq!(agents[0]["state"], "stopped");
    // `spawned_agents` (as `GET /status` gives it) names the agents started in this run, the
    // stopped one too; `running_agents` counts those running now.
    let status = project.baton(&["--url", &url, "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(
        (&status["spawned_agents"], &status["running_agents"]),
        (&serde_json::json!(["echo"]), &serde_json::json!(0))
    );

    let waiting = added_id(&project.baton(&["--url", &url, "task", "add", "Wait for echo", "--agent", "echo"]));
    events.wait_for("task wait-for-echo ready");
    let cancelled = project.baton(&["-c", "client.toml", "task", "cancel", &waiting]);
    assert_eq!(cancelled.status.code(), Some(0), "{}", stderr(&cancelled));
    assert_eq!(stdout(&cancelled).trim(), format!("task {waiting} (wait-for-echo) is cancelled"));
    events.wait_for("task wait-for-echo cancelled");
    let tasks = tasks_json(&project, &["-c", "client.toml", "tasks", "--state", "cancelled", "--json"]);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(state_of(&tasks, "wait-for-echo"), "cancelled");

    // The server's refusals are usage errors with its message.
    let refused = project.baton(&["--url", &url, "task", "cancel", &waiting]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    assert!(!stderr(&refused).trim().is_empty());
    let missing = project.baton(&["--url", &url, "task", "show", "999"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no task 999"), "{}", stderr(&missing));

    sigterm(&server);
    let output = server.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", lines.rest());
    // The follower ends when the server has gone.
    let followed = follower.wait().unwrap();
    assert_eq!(followed.code(), Some(0));
    // From the store, the same shape: the names of the agents the run started.
    let status = project.baton(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(
        (&status["spawned_agents"], &status["running_agents"]),
        (&serde_json::json!(["echo"]), &serde_json::json!(0))
    );
}

/// Through a server the CLI needs no valid local configuration: what it shows comes from the
/// server. An invalid file does not stop the read commands with --url, nor without it when the
/// file still says where the server is; with no server, the configuration's error stands.
#[test]
fn through_a_server_an_invalid_local_file_is_not_needed() {
    let project = Project::with(PLAN, &[]);
    let (server, mut lines) = project.spawn(&["serve", "--listen", "127.0.0.1:0"]);
    let line = lines.wait_for("API on ");
    let url = line.split("API on ").nth(1).unwrap().trim().to_string();
    let invalid = PLAN.replace("name = \"served\"", "name = \"served\"\nnot_a_setting = true");
    std::fs::write(project.path().join("broken.toml"), &invalid).unwrap();
    // Elsewhere, so that the store beside it (and its socket) is not the server's.
    let elsewhere = tempfile::tempdir().unwrap();
    let remote = elsewhere.path().join("remote.toml");
    std::fs::write(&remote, format!("{invalid}\n[server]\nurl = \"{url}\"\n")).unwrap();
    let remote = remote.display().to_string();
    let unserved = elsewhere.path().join("baton.toml");
    std::fs::write(&unserved, &invalid).unwrap();
    let unserved = unserved.display().to_string();

    let reads: [&[&str]; 9] = [
        &["status"],
        &["tasks"],
        &["agents"],
        &["events"],
        &["messages"],
        &["schedules"],
        &["conflicts"],
        &["budget"],
        &["audit"],
    ];
    for args in reads {
        let through_url = project.baton(&[&["-c", "broken.toml", "--url", &url][..], args].concat());
        assert_eq!(through_url.status.code(), Some(0), "{args:?} with --url: {}", stderr(&through_url));
        // The server the file names, found without --url.
        let found = project.baton(&[&["-c", &remote][..], args].concat());
        assert_eq!(found.status.code(), Some(0), "{args:?} through server.url: {}", stderr(&found));
    }
    let status = stdout(&project.baton(&["-c", &remote, "status"]));
    assert!(status.contains("run ") && status.contains("(served)"), "{status}");
    assert!(status.contains(&format!("executed by baton serve at {url}")), "{status}");

    // No server given, none at the file's address: the file's error, as without a server.
    let refused = project.baton(&["-c", &unserved, "status"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    assert!(
        stderr(&refused).contains("not_a_setting") && stderr(&refused).contains("is not valid"),
        "{}",
        stderr(&refused)
    );

    sigterm(&server);
    let output = server.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", lines.rest());
}

#[test]
fn a_url_where_no_server_answers_is_a_usage_error() {
    let project = Project::with(PLAN, &[]);
    let url = format!("http://127.0.0.1:{}", closed_port());
    let output = project.baton(&["--url", &url, "tasks"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains(&format!("no Baton server answers at {url}")), "{}", stderr(&output));
}

#[tokio::test]
async fn without_a_server_task_add_reaches_the_running_baton_run_through_its_socket() {
    // `server.url` where nothing answers: the CLI finds the socket beside the store.
    let plan = format!(
        r#"{PLAN}
[[agents]]
name = "holder"
command = ["sh", "-c", "while [ ! -e release ]; do sleep 0.05; done; echo ok"]
capabilities = ["hold"]

[[tasks]]
key = "hold"
title = "Keep the run open until the test says so"
requires = ["hold"]

[budget]
daily_tokens = 100000

[server]
url = "http://127.0.0.1:{}"
"#,
        closed_port()
    );
    let project = Project::with(&plan, &[]);
    let (child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task hold claimed by holder");
    project.wait_for_front_door();

    let added = project.baton(&[
        "task",
        "add",
        "Echo this",
        "--agent",
        "echo",
        "--input",
        "[1, 2]",
        "--estimated-tokens",
        "1500",
        "--resource",
        "file:notes/*.md,customer:7",
    ]);
    // Added at once, by the engine, which says what it created.
    let id = added_id(&added);
    assert!(stdout(&added).contains("(echo-this)"), "{}", stdout(&added));
    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let created = store.task(baton_core::model::TaskId(id.parse().unwrap())).await.unwrap();
    assert_eq!(created.map(|task| task.run_id), Some(run.id.clone()));
    let unknown = project.baton(&["task", "add", "Nobody", "--agent", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    // The same message as `POST /tasks` and `[[tasks]]` give (it said "no agent `nobody` in
    // baton.toml" before tasks were made in one place).
    assert!(stderr(&unknown).contains("unknown agent `nobody` (known: echo, holder)"), "{}", stderr(&unknown));
    let huge = project.baton(&["task", "add", "Huge", "--agent", "echo", "--estimated-tokens", "200000"]);
    assert_eq!(huge.status.code(), Some(2));
    assert!(
        stderr(&huge)
            .contains("it estimates 200000 tokens, more than the global daily_tokens (100000): it could never start"),
        "{}",
        stderr(&huge)
    );
    lines.wait_for("task echo-this completed by echo");

    std::fs::write(project.path().join("release"), "").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let tasks = store.tasks(&run.id, &TaskFilter::default()).await.unwrap();
    let echoed = tasks.iter().find(|task| task.key.as_deref() == Some("echo-this")).unwrap();
    assert_eq!(echoed.state, TaskState::Succeeded);
    assert_eq!(echoed.input, serde_json::json!([1, 2]));
    assert_eq!(echoed.agent.as_deref(), Some("echo"));
    assert_eq!(echoed.estimated_tokens, Some(1500));
    assert_eq!(echoed.resources, vec!["file:notes/*.md".to_string(), "customer:7".to_string()]);
}
