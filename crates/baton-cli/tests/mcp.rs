//! Baton as an MCP server, as coding agents use it: the real `baton` binary (`baton serve` on
//! port 0, `baton run` with `baton mcp` over stdio) and real clients.
//!
//! - The transport's rules over raw HTTP (always run): sessions, the stateless era's headers,
//!   the `Origin` check, bad input.
//! - The official Python SDK (`mcp` on PyPI) in both protocol eras, over HTTP and over stdio,
//!   and the roles of `[auth]` (a viewer cannot create tasks, an operator can). Needs
//!   `BATON_TEST_MCP_PYTHON`, a Python with the SDK (`.ci/mcp-server/setup` makes one).
//! - The official conformance suite's server scenarios. Needs `BATON_TEST_MCP_CONFORMANCE`,
//!   the suite's command (`.ci/mcp-server/setup` installs it).
//! - The MCP Inspector's CLI mode listing and calling tools, over HTTP and over stdio. Needs
//!   `BATON_TEST_MCP_INSPECTOR`, its command (`.ci/mcp-server/setup` installs it).
//!
//! A test whose client is not installed says so once and passes.

#![allow(clippy::disallowed_methods, reason = "the tests start the real `baton` binary, Python and Node")]

mod common;

use std::io::Write as _;

use std::path::PathBuf;
use std::process::{Child, Stdio};

use serde_json::{Value, json};

use common::{Lines, Project};

const PLAN: &str = r#"
[orchestration]
name = "mcp-test"

[[workstreams]]
name = "main"

[[agents]]
name = "echo"
command = ["sh", "-c", "cat"]
capabilities = ["echo"]

[[agents]]
name = "holder"
command = ["sh", "-c", "while [ ! -e release ]; do sleep 0.05; done; echo ok"]
capabilities = ["hold"]

[[agents]]
name = "gate"
command = ["sh", "-c", "while [ ! -e gate-open ]; do sleep 0.05; done; cat"]
capabilities = ["gate"]

[[tasks]]
key = "hold"
title = "Keep the run open until the test says so"
requires = ["hold"]
"#;

const SECRET: (&str, &str) = ("TEST_JWT_SECRET", "a secret for the mcp tests, 32 bytes or more");

/// `baton serve` on a free port.
struct Served {
    child: Child,
    url: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Served {
    fn start(project: &Project, envs: &[(&str, &str)]) -> Served {
        let mut command = project.command(&["serve", "--listen", "127.0.0.1:0"]);
        command.envs(envs.iter().copied());
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = Lines::new(child.stderr.take().unwrap());
        let line = lines.wait_for("API on ");
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Served { child, url, runtime, client: reqwest::Client::new() }
    }

    /// `METHOD /mcp` with `headers` and `body`: the status, the session header, the JSON body.
    fn mcp(&self, method: &str, headers: &[(&str, &str)], body: Option<Value>) -> (u16, Option<String>, Value) {
        let mut request = self.client.request(method.parse().unwrap(), format!("{}/mcp", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let session = response.headers().get("mcp-session-id").map(|value| value.to_str().unwrap().to_string());
            let text = response.text().await.unwrap();
            (status, session, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stateless_meta() -> Value {
    json!({ "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {} })
}

#[test]
fn the_transport_keeps_sessions_checks_headers_and_refuses_bad_input() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);

    // The handshake era: `initialize` opens a session; later requests need it.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (status, session, answer) = served.mcp("POST", &[], Some(initialize.clone()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["protocolVersion"], "2025-11-25");
    let session = session.expect("initialize opens a session");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = served.mcp("POST", &[("mcp-session-id", &session)], Some(initialized));
    assert_eq!(status, 202);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, answer) = served.mcp("POST", &[("mcp-session-id", &session)], Some(list.clone()));
    assert_eq!(status, 200);
    assert!(answer["result"]["tools"].as_array().unwrap().iter().any(|tool| tool["name"] == "create_tasks"));
    let (status, _, answer) = served.mcp("POST", &[], Some(list.clone()));
    assert_eq!(status, 400);
    assert!(answer["error"]["message"].as_str().unwrap().contains("send `initialize` first"), "{answer}");
    // An older version asked for is answered; an unknown one gets the newest.
    let mut older = initialize.clone();
    older["params"]["protocolVersion"] = json!("2025-06-18");
    assert_eq!(served.mcp("POST", &[], Some(older)).2["result"]["protocolVersion"], "2025-06-18");
    let mut unknown = initialize;
    unknown["params"]["protocolVersion"] = json!("1999-01-01");
    assert_eq!(served.mcp("POST", &[], Some(unknown)).2["result"]["protocolVersion"], "2025-11-25");
    // DELETE ends the session.
    assert_eq!(served.mcp("DELETE", &[("mcp-session-id", &session)], None).0, 200);
    let (status, _, _) = served.mcp("POST", &[("mcp-session-id", &session)], Some(list));
    assert_eq!(status, 404, "a session that ended is not found: the client initializes again");
    assert_eq!(served.mcp("GET", &[], None).0, 405);

    // The stateless era: `_meta` and the headers that mirror it.
    let discover =
        json!({"jsonrpc": "2.0", "id": 3, "method": "server/discover", "params": {"_meta": stateless_meta()}});
    let routed = [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "server/discover")];
    let (status, session, answer) = served.mcp("POST", &routed, Some(discover.clone()));
    assert_eq!((status, session), (200, None), "{answer}");
    assert_eq!(answer["result"]["resultType"], "complete");
    assert!(answer["result"]["supportedVersions"].as_array().unwrap().contains(&json!("2026-07-28")));
    let (status, _, answer) = served.mcp("POST", &[("mcp-protocol-version", "2026-07-28")], Some(discover.clone()));
    assert_eq!((status, &answer["error"]["code"]), (400, &json!(-32020)), "no Mcp-Method: {answer}");
    let mut future = discover;
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let (status, _, answer) =
        served.mcp("POST", &[("mcp-protocol-version", "2099-01-01"), ("mcp-method", "server/discover")], Some(future));
    assert_eq!((status, &answer["error"]["code"]), (400, &json!(-32022)), "{answer}");
    assert_eq!(answer["error"]["data"]["requested"], "2099-01-01");
    let call = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "list_agents", "arguments": {}, "_meta": stateless_meta()}});
    let call_headers =
        [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "plan_status")];
    let (status, _, answer) = served.mcp("POST", &call_headers, Some(call));
    assert_eq!((status, &answer["error"]["code"]), (400, &json!(-32020)), "Mcp-Name differs from the tool: {answer}");

    // Browsers of other sites are refused; this server's own pages and localhost are not.
    let ping = json!({"jsonrpc": "2.0", "id": 5, "method": "server/discover", "params": {"_meta": stateless_meta()}});
    let from = |origin: &'static str| {
        let headers = [("origin", origin), ("mcp-protocol-version", "2026-07-28"), ("mcp-method", "server/discover")];
        served.mcp("POST", &headers, Some(ping.clone())).0
    };
    assert_eq!(from("https://evil.example"), 403);
    assert_eq!(from("http://localhost:5173"), 200);

    // Bad input: clear JSON-RPC errors.
    let raw = |body: &str| {
        served.runtime.block_on(async {
            let response =
                served.client.post(format!("{}/mcp", served.url)).body(body.to_string()).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        })
    };
    let (status, answer) = raw("{not json");
    assert_eq!((status, &answer["error"]["code"]), (400, &json!(-32700)), "{answer}");
    let (status, answer) = raw(r#"[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]"#);
    assert_eq!((status, &answer["error"]["code"]), (400, &json!(-32600)), "{answer}");
    let (status, answer) = raw(r#"{"jsonrpc": "1.0", "id": 1, "method": "ping"}"#);
    assert_eq!((status, &answer["error"]["code"]), (400, &json!(-32600)), "{answer}");
    let (status, answer) = raw(r#"{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}"#);
    assert_eq!((status, &answer["error"]["code"]), (400, &json!(-32602)), "{answer}");
}

#[test]
fn a_session_hears_about_the_resources_it_subscribed_to() {
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (_, session, answer) = served.mcp("POST", &[], Some(initialize));
    assert_eq!(answer["result"]["capabilities"]["resources"]["subscribe"], true);
    let session = session.unwrap();
    let call = |id: i64, name: &str, arguments: Value| {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}});
        served.mcp("POST", &[("mcp-session-id", &session)], Some(request)).2["result"].clone()
    };
    // A task that waits: the holder agent is busy until the test ends.
    let created = call(2, "create_tasks", json!({"tasks": [{"title": "Wait for the holder", "requires": ["hold"]}]}));
    let id = created["structuredContent"]["ids"][0].as_i64().unwrap();
    let uri = format!("baton://tasks/{id}");

    // The stream is the session's once its answer has begun; then the subscription.
    let mut stream = served
        .runtime
        .block_on(served.client.get(format!("{}/mcp", served.url)).header("mcp-session-id", &session).send())
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let subscribe = json!({"jsonrpc": "2.0", "id": 3, "method": "resources/subscribe", "params": {"uri": uri}});
    let (status, _, answer) = served.mcp("POST", &[("mcp-session-id", &session)], Some(subscribe));
    assert_eq!((status, &answer["result"]), (200, &json!({})), "{answer}");
    let cancelled = call(4, "cancel_task", json!({"id": id, "reason": "the test is done with it"}));
    assert_eq!(cancelled["structuredContent"]["task"]["state"], "cancelled", "{cancelled}");

    let notification = served.runtime.block_on(async {
        let wait = async {
            let mut buffer = String::new();
            loop {
                let chunk = stream.chunk().await.unwrap().expect("the stream stays open");
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                if let Some(data) = buffer.lines().find_map(|line| line.strip_prefix("data:")) {
                    return serde_json::from_str::<Value>(data.trim()).unwrap();
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), wait).await.expect("a notification within 30 s")
    });
    assert_eq!(
        notification,
        json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}})
    );
}

// ---------------------------------------------------------------------------------------------
// Real clients.

/// The Python with the MCP SDK, or `None` (and a notice) when it is not installed.
fn python() -> Option<PathBuf> {
    match std::env::var_os("BATON_TEST_MCP_PYTHON") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: BATON_TEST_MCP_PYTHON is not set (a Python with the `mcp` SDK; .ci/mcp-server/setup makes one)"
            );
            None
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py")
}

/// Runs the Python SDK's client (`tests/mcp/client.py`) with `args`: its report.
fn run_client(python: &PathBuf, project: &Project, args: &[&str]) -> Value {
    let output = std::process::Command::new(python)
        .arg(script())
        .args(args)
        .current_dir(project.path())
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_URL")
        .env_remove("BATON_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "client.py {args:?}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

/// What `client.py --wait` heard: progress notifications while the task waited, ran and
/// ended (their `progress` increasing), then the task with its result.
fn check_wait_report(report: &Value) {
    let wait = &report["wait"];
    assert_eq!(wait["is_error"], false, "{report}");
    assert_eq!(wait["ended"], true, "{report}");
    assert_eq!(wait["state"], "succeeded", "{report}");
    assert_eq!(wait["result"]["input"], json!({ "via": "wait" }), "the agent's result: {report}");
    let heard = wait["progress"].as_array().unwrap();
    let id = wait["id"].as_i64().unwrap();
    assert!(heard.len() >= 2, "a notification at the start and on each change: {report}");
    assert!(heard[0]["message"].as_str().unwrap().starts_with(&format!("task {id} is ")), "{report}");
    assert!(heard.iter().any(|note| note["message"].as_str().unwrap().contains("running")), "{report}");
    assert!(heard.iter().any(|note| note["message"].as_str().unwrap().contains("-> succeeded")), "{report}");
    let values: Vec<f64> = heard.iter().map(|note| note["progress"].as_f64().unwrap()).collect();
    assert!(values.windows(2).all(|pair| pair[0] < pair[1]), "progress increases: {values:?}");
}

/// What every era and transport answers alike, for a caller that may create tasks.
fn check_operator_report(report: &Value, title: &str) {
    assert_eq!(report["plan_name"], "mcp-test", "{report}");
    assert_eq!(report["status_error"], false, "{report}");
    assert!(report["tools"].as_array().unwrap().contains(&json!("create_tasks")), "{report}");
    assert_eq!(report["create_schema_has_title"], true, "{report}");
    assert_eq!(report["create"]["is_error"], false, "{report}");
    assert_eq!(report["task_title"], title, "{report}");
    assert_eq!(report["task_resource_title"], title, "{report}");
    assert_eq!(report["search_found"], json!([report["created_id"]]), "{report}");
    assert_eq!(report["bad_arguments"]["is_error"], true, "{report}");
    assert!(report["bad_arguments"]["text"].as_str().unwrap().contains("fix the arguments"), "{report}");
    assert!(report["unknown_tool"].as_str().unwrap().contains("no tool `no_such_tool`"), "{report}");
    assert_eq!(
        report["resources"],
        json!(["baton://agents/echo/log", "baton://agents/gate/log", "baton://agents/holder/log", "baton://status"])
    );
    assert_eq!(report["status_resource_has_plan"], true, "{report}");
}

#[test]
fn the_python_sdk_speaks_both_eras_over_http() {
    let Some(python) = python() else { return };
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    let url = format!("{}/mcp", served.url);
    for (mode, version) in [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28"), ("auto", "2026-07-28")] {
        let title = format!("Echo over HTTP in mode {mode}");
        let report = run_client(&python, &project, &["--url", &url, "--mode", mode, "--title", &title, "--wait"]);
        assert_eq!(report["protocol_version"], version, "{report}");
        check_operator_report(&report, &title);
        check_wait_report(&report);
    }
}

#[test]
fn the_python_sdk_speaks_both_eras_over_stdio_to_baton_run() {
    let Some(python) = python() else { return };
    let project = Project::with(PLAN, &[]);
    let (mut child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("task hold claimed by holder");
    project.wait_for_front_door();
    let baton = env!("CARGO_BIN_EXE_baton");
    let cwd = project.path().to_str().unwrap();
    for (mode, version) in [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28")] {
        let title = format!("Echo over stdio in mode {mode}");
        let report = run_client(
            &python,
            &project,
            &["--stdio", baton, "--cwd", cwd, "--mode", mode, "--title", &title, "--wait"],
        );
        assert_eq!(report["protocol_version"], version, "{report}");
        check_operator_report(&report, &title);
        check_wait_report(&report);
        // The engine of `baton run` ran the task the MCP client created.
        lines.wait_for("completed by echo");
    }
    std::fs::write(project.path().join("release"), "").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", lines.rest());
}

#[test]
fn a_viewer_cannot_create_tasks_over_mcp_and_an_operator_can() {
    let Some(python) = python() else { return };
    let project = Project::with(&format!("{PLAN}\n[auth]\nsecret_env = \"{}\"\n", SECRET.0), &[]);
    let token = |role: &str| {
        let output = project.command(&["token", "create", "--role", role]).env(SECRET.0, SECRET.1).output().unwrap();
        assert!(output.status.success(), "{}", common::stderr(&output));
        common::stdout(&output).trim().to_string()
    };
    let (viewer, operator) = (token("viewer"), token("operator"));
    let served = Served::start(&project, &[SECRET]);
    let url = format!("{}/mcp", served.url);
    for mode in ["legacy", "2026-07-28"] {
        let report = run_client(&python, &project, &["--url", &url, "--mode", mode, "--token", &viewer]);
        let tools = report["tools"].as_array().unwrap();
        assert!(tools.contains(&json!("plan_status")) && tools.contains(&json!("list_tasks")), "{report}");
        assert!(tools.contains(&json!("wait_for_task")), "a viewer may wait for a task: {report}");
        for refused in ["create_tasks", "cancel_task", "send_message", "pause_schedule"] {
            assert!(!tools.contains(&json!(refused)), "a viewer is not offered {refused}: {report}");
        }
        assert_eq!(report["create"]["is_error"], true, "{report}");
        let text = report["create"]["text"].as_str().unwrap();
        assert!(text.contains("has the viewer role") && text.contains("CreateTasks needs"), "{text}");

        let title = format!("An operator's task in mode {mode}");
        let report =
            run_client(&python, &project, &["--url", &url, "--mode", mode, "--token", &operator, "--title", &title]);
        check_operator_report(&report, &title);
    }
    // Without a token, the gate refuses before MCP.
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": stateless_meta()}});
    let (status, _, _) =
        served.mcp("POST", &[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "server/discover")], Some(list));
    assert_eq!(status, 401);
}

/// The conformance suite's server scenarios that the 2025-11-25 and the 2026-07-28 revisions
/// require, each on its revision's wire, against `baton serve`. The scenarios that need the
/// suite's own reference server (its test_* tools, test:// resources, prompts) are listed, with
/// why, in `tests/mcp/conformance-baseline.yml`; every other failure fails the test.
#[test]
fn the_conformance_suite_passes_its_server_scenarios() {
    let Some(conformance) = std::env::var_os("BATON_TEST_MCP_CONFORMANCE").map(PathBuf::from) else {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: BATON_TEST_MCP_CONFORMANCE is not set (the MCP conformance suite's command; .ci/mcp-server/setup installs it)"
        );
        return;
    };
    // The suite needs Node 22, installed beside it (npm `node`).
    let path = path_with_dir_of(&conformance);
    let baseline = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/conformance-baseline.yml");
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    let url = format!("{}/mcp", served.url);
    for revision in ["2025-11-25", "2026-07-28"] {
        let output = std::process::Command::new(&conformance)
            .args(["server", "--url", &url, "--requirements", revision, "--expected-failures"])
            .arg(&baseline)
            .current_dir(project.path())
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let summary = stdout.split("=== SUMMARY ===").nth(1).unwrap_or(&stdout);
        let _ = writeln!(std::io::stderr(), "conformance {revision}:{summary}");
        assert!(output.status.success(), "the conformance suite ({revision}) failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("Baseline check passed"), "{stdout}");
    }
}

/// `PATH` with `command`'s directory first: the npm packages' commands run on the Node 22
/// installed beside them.
fn path_with_dir_of(command: &std::path::Path) -> std::ffi::OsString {
    let bin = command.parent().unwrap().to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&rest))).unwrap()
}

#[test]
fn the_mcp_inspector_lists_and_calls_tools() {
    let Some(inspector) = std::env::var_os("BATON_TEST_MCP_INSPECTOR").map(PathBuf::from) else {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: BATON_TEST_MCP_INSPECTOR is not set (the MCP Inspector's command; .ci/mcp-server/setup installs it)"
        );
        return;
    };
    let project = Project::with(PLAN, &[]);
    let served = Served::start(&project, &[]);
    let inspect = |target: &[&str], method: &[&str]| -> Value {
        let output = std::process::Command::new(&inspector)
            .arg("--cli")
            .args(target)
            .args(method)
            .current_dir(project.path())
            .env("PATH", path_with_dir_of(&inspector))
            // Its catalog of servers goes in the project, not in the home directory.
            .env("MCP_CATALOG_PATH", project.path().join("inspector-catalog.json"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "inspector {target:?} {method:?}: {stdout}\n{}", common::stderr(&output));
        serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
    };
    let url = format!("{}/mcp", served.url);
    let listed = inspect(&[&url], &["--method", "tools/list"]);
    let names: Vec<&str> =
        listed["tools"].as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"create_tasks") && names.contains(&"plan_status"), "{names:?}");
    let created = inspect(
        &[&url],
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "create_tasks",
            "--tool-arg",
            r#"tasks=[{"title": "From the inspector", "requires": ["echo"]}]"#,
        ],
    );
    assert_eq!(created["isError"], false, "{created}");
    assert_eq!(created["structuredContent"]["ids"], json!([2]), "{created}");
    // Over stdio: `baton mcp`, started by the inspector, reaches the same server.
    let baton = env!("CARGO_BIN_EXE_baton");
    let cwd = project.path().to_str().unwrap();
    let status = inspect(&[baton, "mcp", "--cwd", cwd], &["--method", "tools/call", "--tool-name", "plan_status"]);
    assert_eq!(status["structuredContent"]["plan"]["name"], "mcp-test", "{status}");
}
