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

/// A service fed through the API: a workstream served by a remote agent, and no `[[tasks]]`.
const SERVICE: &str = r#"
[orchestration]
name = "service"

[[workstreams]]
name = "w"

[[agents]]
name = "r"
runtime = "remote"
workstream = "w"
concurrency = 2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_added_to_a_plan_without_tasks_wait_for_its_remote_agent_and_reach_it() {
    let server = Server::start_with(common::Options { plan: SERVICE.to_string(), ..Default::default() }).await;
    // Its workers may poll from the first moment, before there is any work.
    let early = server.post_json("/agent/claim", json!({"agent": "r", "wait_ms": 0})).await;
    assert_eq!(early["tasks"], json!([]));
    let created = server
        .post_json(
            "/tasks/batch",
            json!({"tasks": [{"title": "one", "workstream": "w"}, {"title": "two", "workstream": "w"}]}),
        )
        .await;
    let ids: Vec<i64> = created["ids"].as_array().unwrap().iter().map(|id| id.as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{created}");
    let mut claimed: Vec<i64> = Vec::new();
    while claimed.len() < 2 {
        let response =
            server.post("/agent/claim", json!({"agent": "r", "max": 2, "wait_ms": 5000})).send().await.unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        for claim in body["tasks"].as_array().unwrap() {
            claimed.push(claim["task"]["id"].as_i64().unwrap());
        }
        for id in &ids {
            let task = server.get_json(&format!("/tasks/{id}")).await;
            assert_ne!(task["task"]["state"], "cancelled", "{task}");
        }
    }
    claimed.sort_unstable();
    assert_eq!(claimed, ids);
    for id in &ids {
        let done = server
            .post_json(&format!("/agent/tasks/{id}/complete"), json!({"agent": "r", "attempt": 1, "result": "ok"}))
            .await;
        assert_eq!(done["state"], "succeeded");
    }
    server.stop().await;
}

/// `GET /agents` shows durations as baton.toml writes them and a command's place as
/// `file:line:column`; an agent added through the API, whose command has no line, shows none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_show_durations_and_places_as_written() {
    let server = Server::start().await;
    let created = server
        .post("/agents", json!({"name": "added", "command": ["true"], "restart_window": "90s", "workstream": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let agents = server.get_json("/agents").await;
    let agent = |name: &str| {
        agents.as_array().unwrap().iter().find(|agent| agent["name"] == name).unwrap_or_else(|| panic!("{agents}"))["spec"]
            .clone()
    };
    let echo = agent("echo");
    assert_eq!(echo["restart_window"], "10m", "{echo}");
    assert_eq!(echo["restart_backoff"], "1s", "{echo}");
    assert_eq!(echo["heartbeat_timeout"], "30s", "{echo}");
    assert_eq!(echo["circuit_breaker"]["cooldown"], "1m", "{echo}");
    assert_eq!(echo["command_location"], "baton.toml:23:12", "{echo}");
    assert_eq!(agent("builder")["heartbeat_timeout"], "1s");
    let added = agent("added");
    assert_eq!(added["restart_window"], "1m 30s", "{added}");
    assert!(added.get("command_location").is_none(), "{added}");
    server.stop().await;
}
