//! `baton serve` as users run it: the real binary, a real port, real agent processes; hot
//! reload of baton.toml, refusing an open API on the network, agent tokens, TLS, and a graceful
//! stop that lets a remote worker hand its result in.

#![allow(clippy::disallowed_methods, reason = "the tests start real processes (a Python worker)")]

mod common;

use std::process::Child;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use common::{Lines, Project};

const PLAN: &str = r#"
[orchestration]
name = "served"

[[workstreams]]
name = "main"

[[agents]]
name = "echo"
command = ["sh", "-c", "cat"]
capabilities = ["echo"]

[[agents]]
name = "remote"
runtime = "remote"
capabilities = ["far"]
heartbeat_timeout = "1m"
"#;

struct Served {
    child: Child,
    lines: Option<Lines>,
    url: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    token: Option<String>,
}

impl Served {
    fn start(project: &Project, args: &[&str], envs: &[(&str, &str)]) -> Served {
        let mut command = project.command(&[&["serve", "--listen", "127.0.0.1:0"], args].concat());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Lines::new(child.stderr.take().unwrap());
        let line = lines.wait_for("API on ");
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Served { child, lines: Some(lines), url, runtime, client: reqwest::Client::new(), token: None }
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

    /// Follows `/events` until an event `pred` accepts comes (the test fails after 30 s).
    fn wait_event(&self, since: i64, pred: impl Fn(&Value) -> bool) -> Value {
        let mut request = self.client.get(format!("{}/events?since={since}", self.url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let mut stream = response.bytes_stream();
            let mut buffer = String::new();
            let wait = async {
                loop {
                    let chunk = stream.next().await.expect("the stream stays open").unwrap();
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find("\n\n") {
                        let frame: String = buffer.drain(..end + 2).collect();
                        if let Some(data) = frame.lines().find_map(|line| line.strip_prefix("data:")) {
                            let event: Value = serde_json::from_str(data.trim()).unwrap();
                            if pred(&event) {
                                return event;
                            }
                        }
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(30), wait).await.expect("the event came within 30 s")
        })
    }

    fn stop(mut self) -> (i32, String) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), self.lines.take().map(Lines::rest).unwrap_or_default())
    }
}

impl Drop for Served {
    /// A failed test does not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_api_beyond_loopback_needs_auth() {
    let project = Project::with(PLAN, &[]);
    let output = project.baton(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = common::stderr(&output);
    assert!(stderr.contains("refusing to serve on 0.0.0.0:0 without [auth]"), "{stderr}");
}

#[test]
fn edits_of_baton_toml_apply_while_serving_and_bad_ones_are_refused() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[], &[]);
    let (_, agents) = served.request("GET", "/agents", None);
    assert_eq!(agents.as_array().unwrap().len(), 2);

    // A valid edit: a new agent and a task only it can run.
    let edited = format!(
        "{PLAN}\n[[agents]]\nname = \"shouter\"\ncommand = [\"sh\", \"-c\", \"echo LOUD\"]\ncapabilities = [\"shout\"]\n\n[[tasks]]\nkey = \"shout\"\ntitle = \"Shout\"\nrequires = [\"shout\"]\n"
    );
    std::fs::write(project.path().join("baton.toml"), &edited).unwrap();
    let reloaded = served.wait_event(0, |event| event["type"] == "ConfigReloaded");
    assert!(reloaded["added"].to_string().contains("shouter"), "{reloaded}");
    served.wait_event(0, |event| event["type"] == "TaskCompleted" && event["agent"] == "shouter");
    let (_, agents) = served.request("GET", "/agents", None);
    assert_eq!(agents.as_array().unwrap().len(), 3);

    // An invalid edit: refused, said where, and the running configuration stays.
    std::fs::write(
        project.path().join("baton.toml"),
        edited.replace("capabilities = [\"shout\"]", "capabilites = [\"shout\"]"),
    )
    .unwrap();
    let rejected = served.wait_event(reloaded["seq"].as_i64().unwrap(), |event| event["type"] == "ConfigRejected");
    let errors = rejected["errors"].as_str().unwrap();
    assert!(errors.contains("baton.toml:") && errors.contains("capabilites"), "{errors}");
    let (_, agents) = served.request("GET", "/agents", None);
    assert_eq!(agents.as_array().unwrap().len(), 3);
    let (status, health) = served.request("GET", "/health", None);
    assert_eq!((status, health["status"].as_str()), (200, Some("healthy")));

    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("capabilites"), "the refused edit is logged: {stderr}");
}

#[test]
fn agent_processes_get_their_own_scoped_token() {
    // The agent calls the API with what Baton gave it: its own task is its to report on; acting
    // as another agent is refused.
    let agent = r#"#!/usr/bin/env python3
import json, os, urllib.request, urllib.error
def post(path, body):
    request = urllib.request.Request(os.environ["BATON_URL"] + path, data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer " + os.environ["BATON_TOKEN"]})
    try:
        return urllib.request.urlopen(request).status
    except urllib.error.HTTPError as error:
        return error.code
task, attempt = os.environ["BATON_TASK_ID"], int(os.environ["BATON_TASK_ATTEMPT"])
print(json.dumps({
    "own": post(f"/agent/tasks/{task}/progress", {"attempt": attempt, "fraction": 0.5}),
    "as_other": post("/agent/claim", {"agent": "remote"}),
    "cancel": post(f"/tasks/{task}/cancel", {}),
}))
"#;
    let plan = format!(
        "{PLAN}\n[auth]\nsecret_env = \"TEST_JWT_SECRET\"\n\n[[agents]]\nname = \"caller\"\ncommand = [\"python3\", \"caller.py\"]\ncapabilities = [\"call\"]\n\n[[tasks]]\nkey = \"call\"\ntitle = \"Call the API\"\nrequires = [\"call\"]\n"
    );
    let project = Project::with(&plan, &[("caller.py", agent)]);
    let secret = [("TEST_JWT_SECRET", "a secret for the serve tests, 32 bytes or more")];
    let token = project.command(&["token", "create", "--role", "viewer"]).envs(secret).output().unwrap();
    assert!(token.status.success(), "{}", common::stderr(&token));
    let mut served = Served::start(&project, &[], &secret);
    served.token = Some(common::stdout(&token).trim().to_string());
    let done = served.wait_event(0, |event| event["type"] == "TaskCompleted" && event["agent"] == "caller");
    let (_, task) = served.request("GET", &format!("/tasks/{}", done["task"]), None);
    assert_eq!(task["task"]["result"], json!({"own": 200, "as_other": 403, "cancel": 403}), "{task}");
    let (status, _) = served.request("POST", "/tasks", Some(json!({"title": "a viewer may not"})));
    assert_eq!(status, 403);
    // The audit log has both the agent's refused cancel and the viewer's refused create.
    let audit = project.baton(&["audit", "--json"]);
    assert!(audit.status.success(), "{}", common::stderr(&audit));
    let entries: Vec<Value> = common::stdout(&audit).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(entries[0]["actor"], "viewer");
    assert_eq!((entries[0]["action"].as_str(), entries[0]["outcome"].as_str()), (Some("POST /tasks"), Some("denied")));
    assert!(
        entries.iter().any(|entry| entry["actor"] == "agent:caller" && entry["action"] == "POST /tasks/{id}/cancel"),
        "{entries:?}"
    );
    let table = project.baton(&["audit", "--actor", "viewer"]);
    assert!(common::stdout(&table).contains("denied"), "{}", common::stdout(&table));
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn sigterm_lets_a_remote_worker_hand_its_result_in_before_stopping() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &["--grace", "30s"], &[]);
    let (status, created) = served.request("POST", "/tasks", Some(json!({"title": "far away", "requires": ["far"]})));
    assert_eq!(status, 201, "{created}");
    let id = created["ids"][0].as_i64().unwrap();
    let (_, claimed) = served.request("POST", "/agent/claim", Some(json!({"agent": "remote", "wait_ms": 10000})));
    assert_eq!(claimed["tasks"][0]["task"]["id"], id);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(served.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let mut served = served;
    served.lines.as_mut().unwrap().wait_for("stopping");
    // The API keeps serving while running tasks finish: the result is taken.
    let (status, done) = served.request(
        "POST",
        &format!("/agent/tasks/{id}/complete"),
        Some(json!({"agent": "remote", "attempt": 1, "result": "ok"})),
    );
    assert_eq!((status, done["state"].as_str()), (200, Some("succeeded")), "{done}");
    let status = served.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let store = project.store();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let task = runtime.block_on(baton_store::Store::task(&store, baton_core::model::TaskId(id))).unwrap().unwrap();
    assert_eq!(task.state, baton_core::model::TaskState::Succeeded);
}

#[test]
fn tls_serves_https_with_the_configured_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let plan = format!("{PLAN}\n[server]\ntls = {{ cert = \"tls/cert.pem\", key = \"tls/key.pem\" }}\n");
    let project = Project::with(&plan, &[]);
    std::fs::create_dir_all(project.path().join("tls")).unwrap();
    std::fs::write(project.path().join("tls/cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(project.path().join("tls/key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let mut served = Served::start(&project, &[], &[]);
    assert!(served.url.starts_with("https://127.0.0.1:"), "{}", served.url);
    let root = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    served.client = reqwest::Client::builder().add_root_certificate(root).build().unwrap();
    let (status, health) = served.request("GET", "/health", None);
    assert_eq!((status, health["status"].as_str()), (200, Some("healthy")));
    // Plain HTTP is not answered as HTTP.
    let plain = served.runtime.block_on(reqwest::get(served.url.replace("https", "http") + "/health"));
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn the_remote_example_runs_with_its_python_worker() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/remote");
    let config = std::fs::read_to_string(format!("{dir}/baton.toml")).unwrap();
    let worker = std::fs::read_to_string(format!("{dir}/worker.py")).unwrap();
    let project = Project::with(&config, &[("worker.py", &worker)]);
    let served = Served::start(&project, &[], &[]);
    let output = std::process::Command::new("python3")
        .arg(project.path().join("worker.py"))
        .arg("--once")
        .env("BATON_URL", &served.url)
        .env("BATON_AGENT", "summarizer")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{said}");
    assert_eq!(said.matches(": succeeded").count(), 3, "{said}");
    let (_, status) = served.request("GET", "/status", None);
    assert_eq!(status["tasks"]["succeeded"], 3, "{status}");
    let (_, year) = served.request("GET", "/tasks?workstream=reports&state=succeeded", None);
    let year = year["tasks"].as_array().unwrap().iter().find(|task| task["key"] == "year").cloned().unwrap();
    assert_eq!(year["result"], json!({"count": 7, "total": 695, "mean": 99.29}));
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn baton_run_refuses_remote_agents_and_says_to_serve() {
    let project = Project::with(PLAN, &[]);
    let output = project.baton(&["run"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(common::stderr(&output).contains("agent `remote` is remote"), "{}", common::stderr(&output));
    assert!(common::stderr(&output).contains("run this plan with `baton serve`"));
}
