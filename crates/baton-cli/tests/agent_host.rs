//! `baton agent-host` as users run it: a real `baton serve` on a free port with a remote agent,
//! and real `baton agent-host` processes on the same machine (as they would be on others)
//! running a shell command per task. Every task completes once, with the command's stdout as
//! its result; a failing command fails its task with its stderr; bad input is refused saying
//! what is wrong; an agent token acts only as its own agent.

#![allow(clippy::disallowed_methods, reason = "the tests start real `baton` processes")]

mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use common::{Lines, Project};

const PLAN: &str = r#"
[orchestration]
name = "hosted"

[[agents]]
name = "far"
runtime = "remote"
capabilities = ["far"]
concurrency = 4
heartbeat_timeout = "1m"

[[agents]]
name = "other"
runtime = "remote"
capabilities = ["other"]

[[agents]]
name = "local"
command = ["true"]
capabilities = ["local"]
"#;

/// The command each host runs per task: it reads the task from stdin, says what it does on
/// stderr, and prints its result; a task whose input says `boom` fails.
const SCRIPT: &str = r#"read -r task
case "$BATON_TASK_INPUT" in *boom*) echo "it went boom" >&2; exit 3;; esac
case "$task" in *'"title":"{task.title}"'*) ;; *) echo "the task on stdin is not {task.title}" >&2; exit 4;; esac
echo "working on {task.title}" >&2
printf '%s' "done $BATON_TASK_TITLE by $HOST_MARK""#;

const SECRET: (&str, &str) = ("TEST_JWT_SECRET", "a secret for the agent-host tests, 32 bytes or more");

struct Served {
    child: Child,
    url: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    token: Option<String>,
}

impl Served {
    fn start(project: &Project, envs: &[(&str, &str)]) -> Served {
        let mut command = project.command(&["serve", "--listen", "127.0.0.1:0"]);
        command.envs(envs.iter().copied());
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = Lines::new(child.stderr.take().unwrap());
        let line = lines.wait_for("API on ");
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        // The rest of the server's output is read (and dropped), so that it never blocks on it.
        std::thread::spawn(move || lines.rest());
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Served { child, url, runtime, client: reqwest::Client::new(), token: None }
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }

    /// Follows `/events` from the start until `done` says the events so far are enough (the
    /// test fails after 60 s); returns them.
    fn events_until(&self, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let request = self.client.get(format!("{}/events?since=0", self.url));
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let mut stream = response.bytes_stream();
            let mut buffer = String::new();
            let mut events = Vec::new();
            let wait = async {
                loop {
                    let chunk = stream.next().await.expect("the stream stays open").unwrap();
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find("\n\n") {
                        let frame: String = buffer.drain(..end + 2).collect();
                        if let Some(data) = frame.lines().find_map(|line| line.strip_prefix("data:")) {
                            events.push(serde_json::from_str::<Value>(data.trim()).unwrap());
                            if done(&events) {
                                return;
                            }
                        }
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(60), wait).await.expect("the events came within 60 s");
            events
        })
    }
}

impl Drop for Served {
    /// A failed test does not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `baton agent-host` and its stderr.
struct Host {
    child: Child,
    lines: Option<Lines>,
}

impl Host {
    fn start(project: &Project, args: &[&str], envs: &[(&str, &str)]) -> Host {
        let mut command = project.command(&[&["agent-host"], args].concat());
        command.envs(envs.iter().copied());
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = Lines::new(child.stderr.take().unwrap());
        Host { child, lines: Some(lines) }
    }

    fn lines(&mut self) -> &mut Lines {
        self.lines.as_mut().unwrap()
    }

    /// Sends SIGTERM and waits for the host to end: its exit code and all it printed.
    fn stop(mut self) -> (i32, String) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), self.lines.take().map(Lines::rest).unwrap_or_default())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `baton agent-host ARGS` to its end: its exit code and stderr.
fn host_output(project: &Project, args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = project.command(&[&["agent-host"], args].concat()).envs(envs.iter().copied()).output().unwrap();
    (output.status.code(), common::stderr(&output))
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|event| event["type"] == kind).count()
}

#[test]
fn two_hosts_serve_one_agent_and_every_task_completes_once() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    let mut hosts: Vec<Host> = ["a", "b"]
        .iter()
        .map(|mark| {
            let log_dir = format!("host-{mark}/logs");
            let args = [
                "--url",
                &served.url,
                "--agent",
                "far",
                "--concurrency",
                "2",
                "--env-passthrough",
                "HOST_MARK",
                "--log-dir",
                &log_dir,
                "--",
                "sh",
                "-c",
                SCRIPT,
            ];
            Host::start(&project, &args, &[("HOST_MARK", mark)])
        })
        .collect();
    for host in &mut hosts {
        host.lines().wait_for("agent-host: serving agent `far`");
    }

    let mut ids = HashMap::new();
    for n in 1..=6 {
        let title = format!("t{n}");
        let (status, created) =
            served.request("POST", "/tasks", Some(json!({"title": title, "requires": ["far"], "input": {"n": n}})));
        assert_eq!(status, 201, "{created}");
        ids.insert(created["ids"][0].as_i64().unwrap(), title);
    }
    let (status, created) = served.request(
        "POST",
        "/tasks",
        Some(json!({"title": "doomed", "requires": ["far"], "input": {"boom": true}, "max_attempts": 1})),
    );
    assert_eq!(status, 201, "{created}");
    let doomed = created["ids"][0].as_i64().unwrap();

    let events = served.events_until(|events| {
        count(events, "TaskCompleted") == 6
            && events.iter().any(|event| event["type"] == "TaskDeadLettered")
            && events.iter().any(|event| {
                event["type"] == "TaskProgress"
                    && event["message"].as_str().is_some_and(|message| message.contains("working on t1"))
            })
    });

    // Each task completed exactly once, in its first attempt, with the command's stdout.
    let mut n_completed: HashMap<i64, usize> = HashMap::new();
    for event in events.iter().filter(|event| event["type"] == "TaskCompleted") {
        assert_eq!(event["agent"], "far");
        *n_completed.entry(event["task"].as_i64().unwrap()).or_default() += 1;
    }
    assert_eq!(n_completed.len(), 6, "{n_completed:?}");
    assert!(n_completed.values().all(|n| *n == 1), "{n_completed:?}");
    for (id, title) in &ids {
        let (_, task) = served.request("GET", &format!("/tasks/{id}"), None);
        let task = &task["task"];
        assert_eq!((task["state"].as_str(), task["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{task}");
        let result = task["result"].as_str().unwrap();
        assert!(
            result == format!("done {title} by a") || result == format!("done {title} by b"),
            "the result is the command's stdout: {result}"
        );
    }
    // The command's stderr came back as the task's progress.
    assert!(
        events.iter().any(|event| event["type"] == "TaskProgress"
            && event["message"].as_str().is_some_and(|message| message.contains("working on t1"))),
        "{events:?}"
    );

    // The failing command failed its task, its stderr in the reason.
    let (_, task) = served.request("GET", &format!("/tasks/{doomed}"), None);
    assert_eq!(task["task"]["state"], "dead", "{task}");
    let reason = task["task"]["error"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("exit status 3: it went boom"), "{reason}");

    // Both hosts stop at SIGTERM, having reported every task once between them.
    let mut said = String::new();
    for host in hosts {
        let (code, stderr) = host.stop();
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.contains("agent-host: stopped"), "{stderr}");
        said.push_str(&stderr);
    }
    for id in ids.keys() {
        let line = format!("agent-host: task {id} attempt 1 succeeded (recorded: succeeded)");
        assert_eq!(said.matches(&line).count(), 1, "{line} in:\n{said}");
    }
    assert!(said.contains(&format!("task {doomed} attempt 1 failed: exit status 3: it went boom")), "{said}");
    assert!(!said.contains("refused"), "{said}");
    // Each host kept the commands' stderr in its own log.
    let logs: String = ["a", "b"]
        .iter()
        .map(|mark| {
            std::fs::read_to_string(project.path().join(format!("host-{mark}/logs/far.log"))).unwrap_or_default()
        })
        .collect();
    assert!(logs.contains("working on t1") && logs.contains("it went boom"), "{logs}");
}

#[test]
fn bad_input_is_refused_saying_what_is_wrong_and_tokens_act_as_their_agent_only() {
    let plan = format!("{PLAN}\n[auth]\nsecret_env = \"{}\"\n", SECRET.0);
    let project = Project::with(&plan, &[]);
    let token = project
        .command(&["token", "create", "--role", "agent", "--agent", "other"])
        .env(SECRET.0, SECRET.1)
        .output()
        .unwrap();
    assert!(token.status.success(), "{}", common::stderr(&token));
    let token = common::stdout(&token).trim().to_string();
    let served = Served::start(&project, &[SECRET]);
    let url = served.url.as_str();

    // An agent token for `other` may not claim `far`'s tasks.
    let (code, stderr) = host_output(
        &project,
        &["--url", url, "--agent", "far", "--token-env", "OTHER_TOKEN", "--", "true"],
        &[("OTHER_TOKEN", &token)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the server refuses the claim: this token acts as agent `other` only, not as `far`"),
        "{stderr}"
    );

    // Without a token at all: the server says a token is needed.
    let (code, stderr) = host_output(&project, &["--url", url, "--agent", "other", "--", "true"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("token"), "{stderr}");

    let with_token = |args: &[&str]| host_output(&project, args, &[("BATON_TOKEN", &token)]);
    let (code, stderr) = with_token(&["--url", url, "--agent", "nope", "--", "true"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("agent `nope`") && stderr.contains("nope"), "{stderr}");

    let (code, stderr) = with_token(&["--url", url, "--agent", "local", "--", "true"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("agent `local`") && stderr.contains("runtime = \"process\""), "{stderr}");
    assert!(stderr.contains("serves agents declared with runtime = \"remote\""), "{stderr}");

    let (code, stderr) = with_token(&["--url", "ftp://127.0.0.1:1", "--agent", "other", "--", "true"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not an HTTP address"), "{stderr}");

    let (code, stderr) = with_token(&["--url", url, "--agent", "other"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the command to run per task is missing"), "{stderr}");

    let (code, stderr) = with_token(&["--url", url, "--agent", "other", "--", "no-such-program-anywhere"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot run `no-such-program-anywhere`"), "{stderr}");

    let (code, stderr) = with_token(&["--agent", "other", "--", "true"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--url is missing"), "{stderr}");

    // Its own agent's token: served, and stopped at SIGTERM.
    let mut host = Host::start(&project, &["--url", url, "--agent", "other", "--", "true"], &[("BATON_TOKEN", &token)]);
    host.lines().wait_for("agent-host: serving agent `other`");
    let (code, stderr) = host.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_stopped_host_lets_its_running_task_finish_and_reports_it() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    // The command says it started, then works for a while (its work, not a wait of the test).
    let script = "echo started >&2; sleep 1; printf finished";
    let mut host = Host::start(&project, &["--url", &served.url, "--agent", "far", "--", "sh", "-c", script], &[]);
    host.lines().wait_for("agent-host: serving agent `far`");
    let (status, created) = served.request("POST", "/tasks", Some(json!({"title": "slow", "requires": ["far"]})));
    assert_eq!(status, 201, "{created}");
    let id = created["ids"][0].as_i64().unwrap();
    served.events_until(|events| {
        events.iter().any(|event| event["type"] == "TaskProgress" && event["message"] == "started")
    });
    let (code, stderr) = host.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("task {id} attempt 1 succeeded (recorded: succeeded)")), "{stderr}");
    let (_, task) = served.request("GET", &format!("/tasks/{id}"), None);
    assert_eq!(
        (task["task"]["state"].as_str(), task["task"]["result"].as_str()),
        (Some("succeeded"), Some("finished"))
    );
}

#[test]
fn an_unreachable_server_is_waited_for_with_a_clear_message() {
    let project = Project::with(PLAN, &[]);
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let mut host = Host::start(&project, &["--url", &url, "--agent", "far", "--", "true"], &[]);
    let line = host.lines().wait_for("agent-host: the server does not answer");
    assert!(line.contains("cannot connect") && line.contains("trying again in"), "{line}");
    let (code, stderr) = host.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_result_after_the_lease_expired_is_refused_and_the_task_completes_once_on_its_retry() {
    let plan = PLAN
        .replace("heartbeat_timeout = \"1m\"", "heartbeat_timeout = \"3s\"")
        .replace("name = \"hosted\"", "name = \"hosted\"\nretry_backoff = \"50ms\"");
    let project = Project::with(&plan, &[]);
    let served = Served::start(&project, &[]);
    let script = "echo \"started $BATON_TASK_ATTEMPT\" >&2; sleep 1; printf \"done in $BATON_TASK_ATTEMPT\"";
    let mut host = Host::start(&project, &["--url", &served.url, "--agent", "far", "--", "sh", "-c", script], &[]);
    host.lines().wait_for("agent-host: serving agent `far`");
    let (status, created) = served.request("POST", "/tasks", Some(json!({"title": "late", "requires": ["far"]})));
    assert_eq!(status, 201, "{created}");
    let id = created["ids"][0].as_i64().unwrap();
    served.events_until(|events| {
        events.iter().any(|event| event["type"] == "TaskProgress" && event["message"] == "started 1")
    });
    // The host is frozen (its command runs on): no heartbeat, and the lease runs out.
    let pid = nix::unistd::Pid::from_raw(host.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    served.events_until(|events| {
        events.iter().any(|event| {
            event["type"] == "TaskFailed"
                && event["reason"].as_str().is_some_and(|reason| reason.starts_with("lease expired"))
        })
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let events = served.events_until(|events| count(events, "TaskCompleted") == 1);
    let completed = events.iter().find(|event| event["type"] == "TaskCompleted").unwrap();
    // A later attempt (the second, unless a busy machine cost it its lease too) completes it.
    let attempt = completed["attempt"].as_i64().unwrap_or(0);
    assert!(completed["task"].as_i64() == Some(id) && attempt >= 2, "{completed}");
    let (_, task) = served.request("GET", &format!("/tasks/{id}"), None);
    let expected = format!("done in {attempt}");
    assert_eq!(
        (task["task"]["state"].as_str(), task["task"]["result"].as_str()),
        (Some("succeeded"), Some(expected.as_str()))
    );
    let (code, stderr) = host.stop();
    assert_eq!(code, 0, "{stderr}");
    // Attempt 1 was not reported as done: the host said why and moved on.
    assert!(
        stderr.contains(&format!("task {id} attempt 1: the lease is lost"))
            || stderr.contains(&format!("task {id} attempt 1 succeeded, but the server refused the result")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("task {id} attempt 2 succeeded (recorded: succeeded)")), "{stderr}");
}

#[test]
fn a_command_over_its_timeout_is_stopped_and_fails_its_task() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    let args = ["--url", &served.url, "--agent", "far", "--timeout", "300ms", "--", "sh", "-c", "sleep 30"];
    let host = Host::start(&project, &args, &[]);
    let (status, created) =
        served.request("POST", "/tasks", Some(json!({"title": "endless", "requires": ["far"], "max_attempts": 1})));
    assert_eq!(status, 201, "{created}");
    let id = created["ids"][0].as_i64().unwrap();
    let events = served.events_until(|events| events.iter().any(|event| event["type"] == "TaskDeadLettered"));
    let failed = events.iter().find(|event| event["type"] == "TaskFailed").unwrap();
    assert_eq!((failed["task"].as_i64(), failed["reason"].as_str()), (Some(id), Some("timed out after 300ms")));
    let (code, stderr) = host.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn the_usage_a_failed_command_printed_is_counted() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    let script = r#"printf '{"usage": {"input_tokens": 7, "output_tokens": 3}}'; exit 1"#;
    let host = Host::start(&project, &["--url", &served.url, "--agent", "far", "--", "sh", "-c", script], &[]);
    let (status, created) =
        served.request("POST", "/tasks", Some(json!({"title": "spender", "requires": ["far"], "max_attempts": 1})));
    assert_eq!(status, 201, "{created}");
    let events = served.events_until(|events| {
        events.iter().any(|event| event["type"] == "TaskDeadLettered")
            && events.iter().any(|event| event["type"] == "UsageReported")
    });
    let usage = events.iter().find(|event| event["type"] == "UsageReported").unwrap();
    assert_eq!((usage["agent"].as_str(), usage["task"].as_i64()), (Some("far"), created["ids"][0].as_i64()));
    assert_eq!(usage["usage"]["input_tokens"], 7, "{usage}");
    let (code, stderr) = host.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_command_still_running_after_the_grace_period_is_stopped_and_its_task_failed_for_a_retry() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    let args =
        ["--url", &served.url, "--agent", "far", "--grace", "200ms", "--", "sh", "-c", "echo started >&2; sleep 30"];
    let mut host = Host::start(&project, &args, &[]);
    host.lines().wait_for("agent-host: serving agent `far`");
    let (status, created) =
        served.request("POST", "/tasks", Some(json!({"title": "too long", "requires": ["far"], "max_attempts": 1})));
    assert_eq!(status, 201, "{created}");
    let id = created["ids"][0].as_i64().unwrap();
    served.events_until(|events| {
        events.iter().any(|event| event["type"] == "TaskProgress" && event["message"] == "started")
    });
    let (code, stderr) = host.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("agent-host: the grace period is over: stopping 1 command(s)"), "{stderr}");
    let (_, task) = served.request("GET", &format!("/tasks/{id}"), None);
    assert_eq!(task["task"]["state"], "dead", "{task}");
    assert_eq!(task["task"]["error"], "cancelled: `baton agent-host` stopped before the command finished", "{task}");
}
