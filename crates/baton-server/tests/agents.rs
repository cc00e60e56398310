//! Agents over the API: create one with the same schema as baton.toml, see it run a task,
//! update it, stop and start it, delete it; and the errors that name what is wrong.

mod common;

use serde_json::json;

use baton_core::EventKind;
use common::{Server, wait_event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_created_over_http_runs_tasks_and_can_be_changed_and_removed() {
    let server = Server::start().await;
    let mut events = server.events();
    let created = server
        .post("/agents", json!({"name": "shouter", "command": ["sh", "-c", "echo LOUD"], "capabilities": ["shout"], "workstream": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let info: serde_json::Value = created.json().await.unwrap();
    assert_eq!(info["spec"]["capabilities"], json!(["shout"]));

    let id =
        server.post_json("/tasks", json!({"title": "shout", "requires": ["shout"], "workstream": "main"})).await["ids"]
            [0]
        .as_i64()
        .unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == id)).await;
    assert_eq!(server.get_json(&format!("/tasks/{id}")).await["task"]["result"], "LOUD");

    // Update: another command; the next task uses it.
    let updated = server
        .client
        .put(format!("{}/agents/shouter", server.url))
        .json(&json!({"command": ["sh", "-c", "echo QUIET"], "capabilities": ["shout"], "workstream": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200, "{:?}", updated.text().await);
    let id = server
        .post_json("/tasks", json!({"title": "shout again", "requires": ["shout"], "workstream": "main"}))
        .await["ids"][0]
        .as_i64()
        .unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == id)).await;
    assert_eq!(server.get_json(&format!("/tasks/{id}")).await["task"]["result"], "QUIET");

    // Stop, then start again.
    let stopped = server.post_json("/agents/shouter/stop", json!({})).await;
    assert_eq!(stopped["status"]["state"], "stopped");
    let started = server.post_json("/agents/shouter/start", json!({})).await;
    assert_ne!(started["status"]["state"], "stopped");

    // Delete: gone from the list.
    let deleted = server.client.delete(format!("{}/agents/shouter", server.url)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let agents = server.get_json("/agents").await;
    assert!(agents.as_array().unwrap().iter().all(|agent| agent["name"] != "shouter"), "{agents}");
    assert_eq!(server.get("/agents/shouter").send().await.unwrap().status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agents_are_refused_with_what_is_wrong() {
    let server = Server::start().await;
    let cases = [
        (json!({"name": "x", "comand": ["true"]}), 400, "comand"),
        (json!({"name": "x", "command": ["true"], "workstream": "nowhere"}), 400, "nowhere"),
        (json!({"name": "echo", "command": ["true"]}), 409, "exists already"),
        (json!({"name": "x"}), 400, "command"),
    ];
    for (body, status, needle) in cases {
        let response = server.post("/agents", body.clone()).send().await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let renamed = server
        .client
        .put(format!("{}/agents/echo", server.url))
        .json(&json!({"name": "other", "command": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 400);
    server.stop().await;
}
