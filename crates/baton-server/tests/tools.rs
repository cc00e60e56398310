//! `GET /tools` and `POST /tools/{server}/{tool}` against a real MCP server (the Python SDK's,
//! `crates/baton-runtime/tests/mcp/server.py`, over stdio): who may list and call, search,
//! an agent's view through its globs, a tool error as a result, and the audit entry of a call.
//! Needs `.ci/mcp/setup` and `BATON_TEST_MCP=1`; says so and passes without them.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use baton_server::Role;
use common::{Options, Server};

fn python_server() -> Option<(PathBuf, PathBuf)> {
    if std::env::var_os("BATON_TEST_MCP").is_none() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: set BATON_TEST_MCP=1 after .ci/mcp/setup to run the tools API tests against a real MCP server"
            );
        });
        return None;
    }
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("../baton-runtime");
    let python = std::env::var_os("BATON_TEST_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| runtime.join("../../target/mcp-venv/bin/python"));
    Some((python, runtime.join("tests/mcp/server.py")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_list_and_search_tools_operators_call_them_and_calls_are_audited() {
    let Some((python, script)) = python_server() else { return };
    let plan = format!(
        r#"
[orchestration]
name = "tools-test"

[mcp_servers.py]
command = [{python:?}, {script:?}, "stdio"]

[[agents]]
name = "coder"
runtime = "remote"
tools = ["py/echo", "py/fa*"]
"#,
        python = python.display().to_string(),
        script = script.display().to_string(),
    );
    let server = Server::start_with(Options { plan, auth: true, ..Options::default() }).await;
    server.state.ops().engine().unwrap().tools().ready().await;
    let (admin, operator, viewer) =
        (server.token(Role::Admin, None), server.token(Role::Operator, None), server.token(Role::Viewer, None));

    // Listing is reading: a viewer may.
    let listed: Value = server.get("/tools").bearer_auth(&viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["servers"][0]["name"], "py");
    assert_eq!(listed["servers"][0]["state"], "up", "{listed}");
    assert_eq!(listed["servers"][0]["protocol"], "2026-07-28");
    let tools = listed["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 64);
    let echo = tools.iter().find(|tool| tool["name"] == "py/echo").unwrap();
    assert_eq!(echo["server"], "py");
    assert_eq!(echo["input_schema"]["properties"]["text"]["type"], "string", "{echo}");

    // Search: every word, in the name or the description, whatever the case.
    let names = |value: &Value| -> Vec<String> {
        value["tools"].as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap().to_string()).collect()
    };
    let found: Value =
        server.get("/tools?q=ECHOES+back").bearer_auth(&viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(names(&found), ["py/echo"]);
    let found: Value =
        server.get("/tools?q=tool+error").bearer_auth(&viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(names(&found), ["py/fail"]);
    // An agent's view, through its `tools` globs (shown in GET /agents too).
    let mine: Value = server.get("/tools?agent=coder").bearer_auth(&viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(names(&mine), ["py/echo", "py/fail"]);
    let agents: Value = server.get("/agents").bearer_auth(&viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(agents[0]["spec"]["tools"], json!(["py/echo", "py/fa*"]), "{agents}");
    let unknown = server.get("/tools?agent=ghost").bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(unknown.status(), 404);

    // Calling is the operator's.
    let refused = server.post("/tools/py/echo", json!({"text": "hi"})).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let called = server.post("/tools/py/echo", json!({"text": "hi"})).bearer_auth(&operator).send().await.unwrap();
    assert_eq!(called.status(), 200);
    let called: Value = called.json().await.unwrap();
    assert_eq!(
        called,
        json!({"content": [{"type": "text", "text": "hi"}], "structured": {"result": "hi"}, "is_error": false})
    );
    // A tool that fails answers 200, with `is_error`.
    let failed: Value = server
        .post("/tools/py/fail", json!({"reason": "disk full"}))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(failed["is_error"], true, "{failed}");
    assert!(failed["content"][0]["text"].as_str().unwrap().contains("disk full"), "{failed}");
    let missing = server.post("/tools/py/nope", json!({})).bearer_auth(&operator).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let not_an_object = server.post("/tools/py/echo", json!("text")).bearer_auth(&operator).send().await.unwrap();
    assert_eq!(not_an_object.status(), 400);

    // Every call is in the audit log, who and how it ended.
    let entries: Value = server.get("/audit").bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let summary: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            format!(
                "{} {} {} {}",
                entry["actor"].as_str().unwrap(),
                entry["target"].as_str().unwrap_or_default(),
                entry["status"],
                entry["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "operator /tools/py/echo 400 error 400",
            "operator /tools/py/nope 404 error 404",
            "operator /tools/py/fail 200 ok",
            "operator /tools/py/echo 200 ok",
            "viewer /tools/py/echo 403 denied",
        ],
        "{entries}"
    );
    server.stop().await;
}
