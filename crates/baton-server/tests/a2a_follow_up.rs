//! A2A follow-up messages (a `SendMessage` with a `taskId`) refused as the specification and
//! the authorization table say, on a real server: a task that has ended, a task that does not
//! wait for input, a task that is not there, a caller who may not type into a terminal. (A
//! follow-up that answers a terminal agent's question is tested with the Python SDK in
//! `baton-cli/tests/a2a.rs`.)

mod common;

use serde_json::{Value, json};

use baton_core::EventKind;
use baton_server::Role;
use common::{Options, Server, wait_event};

async fn follow_up(server: &Server, token: &str, task_id: &str) -> Value {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "SendMessage",
        "params": { "message": {
            "messageId": "follow-up", "role": "ROLE_USER", "taskId": task_id, "parts": [{ "text": "y" }],
        } },
    });
    let response = server.post("/a2a", body).header("A2A-Version", "1.0").bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_are_refused_unless_a_task_waits_for_input() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let operator = server.token(Role::Operator, None);
    let viewer = server.token(Role::Viewer, None);
    let mut events = server.events();
    let create = |title: &str, requires: &str| {
        server.post("/tasks", json!({ "title": title, "requires": [requires] })).bearer_auth(&operator).send()
    };
    let echo: Value = create("echo", "echo").await.unwrap().json().await.unwrap();
    let echo = echo["ids"][0].as_i64().unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == echo))
        .await;
    let build: Value = create("compile", "build").await.unwrap().json().await.unwrap();
    let build = build["ids"][0].as_i64().unwrap().to_string();

    // A task that has ended takes no message: UnsupportedOperationError.
    let answer = follow_up(&server, &operator, &echo.to_string()).await;
    assert_eq!(answer["error"]["code"], -32004, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("has ended"), "{answer}");
    // Nor does one that does not wait for input (its agent asks nothing).
    let answer = follow_up(&server, &operator, &build).await;
    assert_eq!(answer["error"]["code"], -32004, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("not waiting for input"), "{answer}");
    // A task that is not there, or not a task id: TaskNotFoundError.
    for missing in ["999999", "not-a-number"] {
        let answer = follow_up(&server, &operator, missing).await;
        assert_eq!(answer["error"]["code"], -32001, "{answer}");
    }
    // A viewer may read the task but not type into a terminal.
    let answer = follow_up(&server, &viewer, &build).await;
    assert_eq!(answer["error"]["code"], -32000, "{answer}");
    assert_eq!(answer["error"]["data"][0]["reason"], "PERMISSION_DENIED", "{answer}");
    // An agent token that may not read the task hears of no such task.
    let writer = server.token(Role::Agent, Some("writer"));
    let answer = follow_up(&server, &writer, &build).await;
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    server.stop().await;
}
