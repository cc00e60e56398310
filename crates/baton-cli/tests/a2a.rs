//! A2A 1.0 with the official SDKs: the real `baton serve` driven by the A2A Python SDK as a
//! client (`tests/a2a/client.py`) and by the JavaScript SDK (`tests/a2a/js/client.mjs`), and a
//! `runtime = "a2a"` agent calling a server made with the Python SDK (`tests/a2a/agent.py`).
//!
//! The SDKs are installed by `.ci/a2a/setup` (a virtual environment under `target/`, `npm ci`
//! in `tests/a2a/js`); `.ci/run` sets `BATON_TEST_A2A_PYTHON` to the Python interpreter and
//! `BATON_TEST_A2A_NODE` to node. Without them these tests say so and pass, as the tests that
//! need PostgreSQL do.

#![allow(clippy::disallowed_methods, reason = "the tests start real processes (baton, Python)")]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::{Lines, Project};

/// The Python interpreter that has `a2a-sdk`, or `None` (and a notice) when it is not set.
fn sdk_python() -> Option<PathBuf> {
    match std::env::var_os("BATON_TEST_A2A_PYTHON") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: BATON_TEST_A2A_PYTHON is not set (run .ci/a2a/setup; .ci/run sets it)"
            );
            None
        }
    }
}

/// The node that runs the JavaScript SDK, or `None` (and a notice) when it is not set.
fn sdk_node() -> Option<PathBuf> {
    match std::env::var_os("BATON_TEST_A2A_NODE") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: BATON_TEST_A2A_NODE is not set (run .ci/a2a/setup; .ci/run sets it)"
            );
            None
        }
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/a2a").join(name)
}

const SECRET: (&str, &str) = ("TEST_JWT_SECRET", "a secret for the a2a tests, 32 bytes or more");

/// `baton serve` on a port of its own; killed when dropped.
struct Served {
    child: Child,
    lines: Lines,
    url: String,
}

impl Served {
    fn start(project: &Project) -> Served {
        let mut child = project
            .command(&["serve", "--listen", "127.0.0.1:0"])
            .envs([SECRET])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Lines::new(child.stderr.take().unwrap());
        let line = lines.wait_for("API on ");
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        Served { child, lines, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(project: &Project, role: &str) -> String {
    let output = project.command(&["token", "create", "--role", role]).envs([SECRET]).output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    common::stdout(&output).trim().to_string()
}

const SERVED: &str = r#"
[orchestration]
name = "a2a-served"

[auth]
secret_env = "TEST_JWT_SECRET"

[[agents]]
name = "echo"
role = "Echoes the task it is given"
capabilities = ["echo"]
command = ["sh", "-c", "cat"]

[[agents]]
name = "sleeper"
role = "Works until it is cancelled"
capabilities = ["sleep"]
command = ["sleep", "600"]
"#;

#[test]
fn the_python_sdk_is_a_client_of_baton() {
    let Some(python) = sdk_python() else { return };
    let project = Project::with(SERVED, &[]);
    let operator = token(&project, "operator");
    let viewer = token(&project, "viewer");
    let output =
        project.command(&["token", "create", "--role", "agent", "--agent", "sleeper"]).envs([SECRET]).output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let sleeper = common::stdout(&output).trim().to_string();
    let served = Served::start(&project);
    let output = Command::new(python)
        .arg(script("client.py"))
        .args([&served.url, &operator, &viewer, &sleeper])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}\n{}", common::stdout(&output), common::stderr(&output));
    assert!(output.status.success(), "the SDK client failed:\n{said}\nbaton:\n{}", served.lines.seen.join(""));
    assert!(said.contains("all A2A client checks passed"), "{said}");
}

/// Push configs outlive the server: one set before a restart (`push.py --restart`) is listed by
/// the server started again on the same store, and its webhook hears the task's cancel.
#[test]
fn push_configs_survive_a_restart() {
    use std::io::{BufRead, BufReader};
    let Some(python) = sdk_python() else { return };
    let plan = format!("{SERVED}\n[a2a]\npush_hosts = [\"127.0.0.1\"]\n");
    let project = Project::with(&plan, &[]);
    let operator = token(&project, "operator");
    let served = Served::start(&project);
    let mut client = Command::new(python)
        .arg(script("push.py"))
        .args([&served.url, &operator, "--restart"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = Vec::new();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "push.py ended before the restart: {said:?}");
        said.push(line.clone());
        if line.trim() == "restart now" {
            break;
        }
    }
    drop(served);
    let served = Served::start(&project);
    writeln!(client.stdin.as_mut().unwrap(), "{}", served.url).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let output = client.wait_with_output().unwrap();
    let said = format!("{}{rest}\n{}", said.join(""), common::stderr(&output));
    assert!(output.status.success(), "the restart checks failed:\n{said}\nbaton:\n{}", served.lines.seen.join(""));
    assert!(said.contains("all A2A push restart checks passed"), "{said}");
}

/// A terminal agent that asks before it goes on: the task of a message for it.
const ASKER: &str = r#"
[orchestration]
name = "a2a-served"

[auth]
secret_env = "TEST_JWT_SECRET"

[[agents]]
name = "asker"
role = "Asks before it deploys"
capabilities = ["ask"]
mode = "pty"
command = ["./ask.sh"]
done_when = { output = "DONE" }
"#;

const ASK: &str = r#"#!/usr/bin/env bash
while read -r line; do
  printf 'Continue? [y/N] '
  read -r answer
  if [ "$answer" = y ]; then echo "proceeding with $line"; echo DONE; else echo aborted; fi
done
"#;

/// Follow-up messages (`tests/a2a/followup.py`): a task whose terminal agent asks a question is
/// input-required; a message with its `taskId` answers it (an operator's; a viewer's is
/// refused), and the task goes on to complete; then a follow-up is refused as the task ended.
#[test]
fn a_follow_up_message_answers_a_task_that_waits_for_input() {
    let Some(python) = sdk_python() else { return };
    let project = Project::with(ASKER, &[("ask.sh", ASK)]);
    let operator = token(&project, "operator");
    let viewer = token(&project, "viewer");
    let served = Served::start(&project);
    let run = |args: &[&str]| {
        let output = Command::new(&python).arg(script("followup.py")).args(args).stdin(Stdio::null()).output().unwrap();
        let said = format!("{}\n{}", common::stdout(&output), common::stderr(&output));
        assert!(output.status.success(), "followup.py {}:\n{said}", args[0]);
        said
    };
    let said = run(&["create", &served.url, &operator]);
    let id = said.lines().find_map(|line| line.strip_prefix("task ")).expect("the task's id").trim().to_string();
    let said = run(&["answer", &served.url, &operator, &viewer, &id]);
    assert!(said.contains("all follow-up checks passed"), "{said}\nbaton:\n{}", served.lines.seen.join(""));
}

/// Push notifications (`tests/a2a/push.py`): a webhook on an allowed host hears a task through
/// to its end, with the config's token and authentication; configs are read, listed and
/// deleted; a webhook on another host is refused.
#[test]
fn push_notifications_reach_an_allowed_webhook() {
    let Some(python) = sdk_python() else { return };
    let plan = format!("{SERVED}\n[a2a]\npush_hosts = [\"127.0.0.1\"]\n");
    let project = Project::with(&plan, &[]);
    let operator = token(&project, "operator");
    let served = Served::start(&project);
    let output = Command::new(python)
        .arg(script("push.py"))
        .args([&served.url, &operator])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}\n{}", common::stdout(&output), common::stderr(&output));
    assert!(output.status.success(), "the push checks failed:\n{said}\nbaton:\n{}", served.lines.seen.join(""));
    assert!(said.contains("all A2A push checks passed"), "{said}");
}

#[test]
fn the_js_sdk_is_a_client_of_baton() {
    let Some(node) = sdk_node() else { return };
    let project = Project::with(SERVED, &[]);
    let operator = token(&project, "operator");
    let served = Served::start(&project);
    let output = Command::new(node)
        .arg(script("js/client.mjs"))
        .args([&served.url, &operator])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}\n{}", common::stdout(&output), common::stderr(&output));
    assert!(output.status.success(), "the JS SDK client failed:\n{said}\nbaton:\n{}", served.lines.seen.join(""));
    assert!(said.contains("all A2A JS client checks passed"), "{said}");
}

/// The SDK's agent (`tests/a2a/agent.py`) on a port of its own; killed when dropped.
struct FarAgent {
    child: Child,
    lines: Lines,
    url: String,
}

impl FarAgent {
    fn start(python: &std::path::Path, mode: &str) -> FarAgent {
        let mut child = Command::new(python)
            .arg(script("agent.py"))
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = Lines::new(child.stdout.take().unwrap());
        let line = lines.wait_for("listening on ");
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        FarAgent { child, lines, url }
    }
}

impl Drop for FarAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `baton ARGS` in a project whose plan reads the A2A agent's credentials from `FAR_AUTH`.
fn far_baton(project: &Project, args: &[&str]) -> std::process::Output {
    project.command(args).env("FAR_AUTH", "Bearer far-secret").stdin(Stdio::null()).output().unwrap()
}

fn tasks_by_key(project: &Project) -> std::collections::HashMap<String, serde_json::Value> {
    let output = far_baton(project, &["tasks", "--json"]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let tasks: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tasks = tasks.as_array().cloned().or_else(|| tasks["tasks"].as_array().cloned()).unwrap();
    tasks.into_iter().map(|task| (task["key"].as_str().unwrap().to_string(), task)).collect()
}

/// A `runtime = "a2a"` agent calls the SDK's agent: a task's result is the remote artifact, a
/// remote failure fails the task with the remote's words, a task cancelled in Baton is
/// cancelled remotely, and the usage the remote reports is recorded.
fn calls_an_sdk_agent(mode: &str) {
    let Some(python) = sdk_python() else { return };
    let mut far = FarAgent::start(&python, mode);
    let plan = format!(
        r#"
[orchestration]
name = "a2a-calls"

[[agents]]
name = "far"
runtime = "a2a"
url = "{url}"
auth_header_env = "FAR_AUTH"
capabilities = ["echo"]
concurrency = 3

[[tasks]]
key = "echo"
title = "hello"
input = {{ n = 1 }}

[[tasks]]
key = "fail"
title = "fail now"
max_attempts = 1

[[tasks]]
key = "sleep"
title = "sleep until cancelled"
max_attempts = 1
"#,
        url = far.url
    );
    let project = Project::with(&plan, &[]);
    let mut command = project.command(&["run", "--grace", "0s"]);
    command.env("FAR_AUTH", "Bearer far-secret");
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = Lines::new(child.stderr.take().unwrap());
    lines.wait_for("task sleep claimed by far");
    project.wait_for_front_door();
    let sleeping = tasks_by_key(&project)["sleep"]["id"].to_string();
    let cancel = far_baton(&project, &["task", "cancel", &sleeping]);
    assert!(cancel.status.success(), "{}", common::stderr(&cancel));
    far.lines.wait_for("canceled ");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "a task failed, so the run did: {}", lines.seen.join(""));

    let tasks = tasks_by_key(&project);
    let echo = &tasks["echo"];
    assert_eq!(echo["state"], "succeeded", "{echo}");
    assert_eq!(echo["result"]["echo"], "hello", "{echo}");
    assert_eq!(echo["result"]["input"]["n"].as_f64(), Some(1.0), "{echo}");
    let fail = &tasks["fail"];
    assert_eq!(fail["state"], "dead", "{fail}");
    assert!(fail["error"].as_str().unwrap().contains("the remote agent failed the task: asked to fail"), "{fail}");
    assert_eq!(tasks["sleep"]["state"], "cancelled");

    let events = far_baton(&project, &["events", "--json", "--type", "UsageReported"]);
    let events = common::stdout(&events);
    assert!(events.contains("\"input_tokens\":11") && events.contains("\"agent\":\"far\""), "{events}");
}

#[test]
fn a_baton_agent_calls_a_streaming_sdk_agent() {
    calls_an_sdk_agent("streaming");
}

#[test]
fn a_baton_agent_polls_an_sdk_agent_that_does_not_stream() {
    calls_an_sdk_agent("polling");
}

/// An A2A agent without `capabilities` takes its card's skills (ids and tags): the config
/// accepts tasks that need them, routing gives them to it, and a task that needs what the card
/// does not offer is cancelled as unrunnable once the card is read.
#[test]
fn a_card_s_skills_are_the_capabilities_of_an_agent_without_them() {
    let Some(python) = sdk_python() else { return };
    let far = FarAgent::start(&python, "streaming");
    let plan = format!(
        r#"
[orchestration]
name = "a2a-skills"

[[agents]]
name = "far"
runtime = "a2a"
url = "{url}"
auth_header_env = "FAR_AUTH"

[[tasks]]
key = "by-id"
title = "by its skill's id"
requires = ["echo"]

[[tasks]]
key = "by-tag"
title = "by its skill's tag"
requires = ["words"]

[[tasks]]
key = "not-offered"
title = "nobody can"
requires = ["painting"]
"#,
        url = far.url
    );
    let project = Project::with(&plan, &[]);
    let checked = far_baton(&project, &["check"]);
    assert!(checked.status.success(), "the config accepts tasks for the card's skills: {}", common::stderr(&checked));
    let output = far_baton(&project, &["run", "--grace", "0s"]);
    assert_eq!(output.status.code(), Some(1), "one task cannot run: {}", common::stderr(&output));
    let tasks = tasks_by_key(&project);
    assert_eq!(tasks["by-id"]["state"], "succeeded", "{}", tasks["by-id"]);
    assert_eq!(tasks["by-tag"]["state"], "succeeded", "{}", tasks["by-tag"]);
    let not_offered = &tasks["not-offered"];
    assert_eq!(not_offered["state"], "cancelled", "{not_offered}");
    assert!(not_offered["error"].as_str().unwrap_or_default().contains("no agent can run it"), "{not_offered}");
    let agents = far_baton(&project, &["agents", "--json"]);
    let agents = common::stdout(&agents);
    assert!(agents.contains("\"echo\"") && agents.contains("\"words\""), "{agents}");
}

/// The credentials go to the card's own origin only: a card whose JSON-RPC interface is on
/// another host (`localhost` for a card read at `127.0.0.1`) is called without them, and that
/// agent, which wants them, refuses.
#[test]
fn credentials_stay_with_the_card_s_origin() {
    let Some(python) = sdk_python() else { return };
    let far = FarAgent::start(&python, "elsewhere");
    let plan = format!(
        r#"
[orchestration]
name = "a2a-elsewhere"

[[agents]]
name = "far"
runtime = "a2a"
url = "{url}"
auth_header_env = "FAR_AUTH"
capabilities = ["echo"]

[[tasks]]
key = "echo"
title = "hello"
max_attempts = 1
"#,
        url = far.url
    );
    let project = Project::with(&plan, &[]);
    let output = far_baton(&project, &["run", "--grace", "0s"]);
    assert_eq!(output.status.code(), Some(1), "{}", common::stderr(&output));
    let echo = &tasks_by_key(&project)["echo"];
    assert_eq!(echo["state"], "dead", "{echo}");
    assert!(echo["error"].as_str().unwrap_or_default().contains("401"), "{echo}");
}

/// An A2A agent whose card cannot be read does not start, and says why.
#[test]
fn an_unreachable_card_is_reported() {
    let plan = r#"
[orchestration]
name = "a2a-nowhere"

[[agents]]
name = "far"
runtime = "a2a"
url = "http://127.0.0.1:9/"
restart = "never"

[[tasks]]
title = "never sent"
max_attempts = 1
"#;
    let project = Project::with(plan, &[]);
    let output = project.command(&["run", "--grace", "0s"]).stdin(Stdio::null()).output().unwrap();
    let said = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("cannot read the agent card at http://127.0.0.1:9/.well-known/agent-card.json"), "{said}");
}
