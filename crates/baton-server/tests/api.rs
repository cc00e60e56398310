//! The HTTP API end to end: a real engine, store, agents and server, a real HTTP client.

mod common;

use serde_json::{Value, json};

use baton_core::EventKind;
use common::{Options, Server, wait_event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_status_have_the_documented_shapes() {
    let server = Server::start().await;
    let health = server.get_json("/health").await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["orchestration_status"], "running");
    assert_eq!(health["agent_count"], 3);
    assert!(health["version"].is_string() && health["uptime_seconds"].is_u64(), "{health}");
    assert_eq!(health["problems"], json!([]));

    let status = server.get_json("/status").await;
    assert_eq!(status["session_id"], server.run_id.as_str());
    assert_eq!(status["completed"], false);
    assert_eq!(status["error"], Value::Null);
    assert!(status["progress"].is_f64() && status["running_agents"].is_u64(), "{status}");
    // The agents started in this run, by name, as `baton status --json` gives them.
    let spawned = status["spawned_agents"].as_array().unwrap_or_else(|| panic!("a list: {status}"));
    assert!(spawned.iter().all(|name| ["builder", "writer", "echo"].contains(&name.as_str().unwrap())), "{status}");
    assert!(status["running_agents"].as_u64().unwrap() <= spawned.len() as u64, "{status}");
    assert!(status["current_phase"].is_string(), "{status}");

    let plan = server.get_json("/plan").await;
    assert_eq!(plan["name"], "api-test");
    assert_eq!(plan["phases"], json!([["main"]]));
    assert_eq!(plan["workstreams"][0]["name"], "main");
    server.stop().await;
}

/// A server whose engine stopped while its run is unfinished takes no result and changes
/// nothing: `/health` says so with `503` and what is broken, instead of `healthy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_naming_the_broken_subsystem_when_the_engine_stopped() {
    let mut server = Server::start().await;
    server.stop_engine().await;
    let response = server.get("/health").send().await.unwrap();
    assert_eq!(response.status(), 503);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["orchestration_status"], "interrupted", "the stopped engine recorded it");
    assert_eq!(
        health["problems"],
        json!([
            "engine: stopped while the run is unfinished; nothing is claimed or recorded until `baton run` or `baton serve` starts again"
        ])
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_over_http_runs_and_shows_its_attempts_and_events() {
    let server = Server::start().await;
    let mut events = server.events();
    let created = server
        .post_json("/tasks", json!({"title": "say hello", "requires": ["echo"], "input": {"greeting": "hi"}}))
        .await;
    let id = created["ids"][0].as_i64().expect("an id");
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == id)).await;

    let detail = server.get_json(&format!("/tasks/{id}")).await;
    assert_eq!(detail["task"]["state"], "succeeded");
    assert_eq!(detail["task"]["assigned_agent"], "echo");
    assert_eq!(detail["attempts"][0]["attempt"], 1);
    assert_eq!(detail["attempts"][0]["outcome"], "succeeded");
    let types: Vec<&str> = detail["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"TaskCreated") && types.contains(&"TaskClaimed") && types.contains(&"TaskCompleted"),
        "{types:?}"
    );

    let page = server.get_json("/tasks?state=succeeded&agent=echo").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after"], Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_with_filters_and_pages() {
    let server = Server::start().await;
    let batch: Vec<Value> = (0..5).map(|n| json!({"title": format!("build {n}"), "requires": ["build"]})).collect();
    let created = server.post_json("/tasks/batch", json!({"tasks": batch})).await;
    assert_eq!(created["ids"].as_array().unwrap().len(), 5);
    server.post_json("/tasks", json!({"title": "write docs", "requires": ["docs"], "workstream": "main"})).await;

    let first = server.get_json("/tasks?limit=2").await;
    assert_eq!(first["tasks"].as_array().unwrap().len(), 2);
    let after = first["next_after"].as_i64().expect("a next page");
    let second = server.get_json(&format!("/tasks?limit=10&after={after}")).await;
    assert_eq!(second["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(second["next_after"], Value::Null);
    let docs = server.get_json("/tasks?workstream=main").await;
    assert_eq!(docs["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(docs["tasks"][0]["title"], "write docs");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_claims_only_what_its_capabilities_allow_and_completes_it() {
    let server = Server::start().await;
    let build = server.post_json("/tasks", json!({"title": "compile", "requires": ["build"]})).await["ids"][0]
        .as_i64()
        .unwrap();
    let docs = server.post_json("/tasks", json!({"title": "document", "requires": ["docs"]})).await["ids"][0]
        .as_i64()
        .unwrap();

    let claimed = server.post_json("/agent/claim", json!({"agent": "builder", "max": 10, "wait_ms": 5000})).await;
    let tasks = claimed["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{claimed}");
    assert_eq!(tasks[0]["task"]["id"], build);
    assert_eq!(tasks[0]["attempt"], 1);
    assert!(tasks[0]["lease_expires_at"].as_i64().unwrap() > 0);
    // Nothing more for the builder: the docs task is the writer's.
    let none = server.post_json("/agent/claim", json!({"agent": "builder", "max": 10})).await;
    assert_eq!(none["tasks"], json!([]));

    server
        .post_json(
            &format!("/agent/tasks/{build}/progress"),
            json!({"agent": "builder", "attempt": 1, "fraction": 0.5, "message": "halfway"}),
        )
        .await;
    let leases = server.post_json("/agent/heartbeat", json!({"agent": "builder"})).await;
    assert_eq!(leases["leases"][0]["task"], build);
    let done = server
        .post_json(
            &format!("/agent/tasks/{build}/complete"),
            json!({"agent": "builder", "attempt": 1, "result": {"binary": "ok"}}),
        )
        .await;
    assert_eq!(done["state"], "succeeded");
    let task = server.get_json(&format!("/tasks/{build}")).await;
    assert_eq!(task["task"]["state"], "succeeded");
    assert_eq!(task["task"]["result"], json!({"binary": "ok"}));

    // A second completion of the same attempt is refused: exactly once.
    let again = server
        .post(&format!("/agent/tasks/{build}/complete"), json!({"agent": "builder", "attempt": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    let writer = server.post_json("/agent/claim", json!({"agent": "writer", "max": 5, "wait_ms": 5000})).await;
    assert_eq!(writer["tasks"][0]["task"]["id"], docs);
    let failed = server
        .post_json("/agent/results", json!({"agent": "writer", "results": [{"task": docs, "attempt": 1, "status": "failed", "error": "no ink"}]}))
        .await;
    assert_eq!(failed["results"][0]["state"], "ready", "{failed}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waits_for_a_task_that_arrives_later() {
    let server = Server::start().await;
    let claim = server.post("/agent/claim", json!({"agent": "builder", "wait_ms": 20000})).send();
    let waiting = tokio::spawn(claim);
    server.post_json("/tasks", json!({"title": "late", "requires": ["build"]})).await;
    let claimed: Value = waiting.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(claimed["tasks"][0]["task"]["title"], "late");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_the_lease_expired_is_refused_with_409_and_the_reason() {
    let server = Server::start().await;
    let mut events = server.events();
    let id =
        server.post_json("/tasks", json!({"title": "slow", "requires": ["build"]})).await["ids"][0].as_i64().unwrap();
    let claimed = server.post_json("/agent/claim", json!({"agent": "builder", "wait_ms": 5000})).await;
    assert_eq!(claimed["tasks"][0]["task"]["id"], id);
    // No heartbeat: the lease (heartbeat_timeout = 1s) runs out and the attempt fails.
    let failed =
        wait_event(&mut events, |event| matches!(&event.kind, EventKind::TaskFailed { task, .. } if task.0 == id))
            .await;
    let EventKind::TaskFailed { reason, .. } = failed.kind else { unreachable!() };
    assert!(reason.starts_with("lease expired: no heartbeat from agent `builder`"), "{reason}");

    let late = server
        .post(&format!("/agent/tasks/{id}/complete"), json!({"agent": "builder", "attempt": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 409);
    let body: Value = late.json().await.unwrap();
    assert_eq!(body["error"]["code"], "lease_expired");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("lease expired") && message.contains("given back to the queue"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_that_say_what_is_wrong() {
    let server = Server::start_with(Options { max_request_size: 4096, ..Options::default() }).await;
    let unknown = server.post("/tasks", json!({"title": "x", "prority": "high"})).send().await.unwrap();
    assert_eq!(unknown.status(), 400);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown field `prority`"), "{body}");

    let syntax = server
        .client
        .post(format!("{}/tasks", server.url))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(syntax.status(), 400);
    let body: Value = syntax.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().starts_with("the request body is not valid JSON"), "{body}");

    let plain = server.client.post(format!("{}/tasks", server.url)).body(r#"{"title": "t"}"#).send().await.unwrap();
    assert_eq!(plain.status(), 415);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("Content-Type: application/json"), "{body}");

    let big = server.post("/tasks", json!({"title": "x".repeat(10_000)})).send().await.unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(big.json::<Value>().await.unwrap()["error"]["code"], "payload_too_large");

    let missing = server.get("/tasks/999999").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["message"], "no task 999999 in this run");

    let nowhere = server.get("/nowhere").send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    assert_eq!(nowhere.json::<Value>().await.unwrap()["error"]["code"], "not_found");

    let query = server.get("/tasks?state=sleeping").send().await.unwrap();
    assert_eq!(query.status(), 400);
    assert!(query.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().contains("sleeping"));

    let workstream = server.post("/tasks", json!({"title": "x", "workstream": "nope"})).send().await.unwrap();
    assert_eq!(workstream.status(), 400);
    assert!(
        workstream.json::<Value>().await.unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown workstream `nope`")
    );

    let retry_live =
        server.post_json("/tasks", json!({"title": "wait", "requires": ["build"]})).await["ids"][0].as_i64().unwrap();
    let refused = server.post(&format!("/tasks/{retry_live}/retry"), json!({})).send().await.unwrap();
    assert_eq!(refused.status(), 409, "{:?}", refused.text().await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_task_and_retry_brings_it_back() {
    let server = Server::start().await;
    let id = server.post_json("/tasks", json!({"title": "wait for a builder", "requires": ["build"]})).await["ids"][0]
        .as_i64()
        .unwrap();
    let cancelled = server.post_json(&format!("/tasks/{id}/cancel"), json!({"reason": "not needed"})).await;
    assert_eq!(cancelled["state"], "cancelled");
    let retried = server.client.post(format!("{}/tasks/{id}/retry", server.url)).send().await.unwrap();
    let retried_status = retried.status();
    let task: Value = retried.json().await.unwrap();
    assert_eq!(retried_status, 200, "{task}");
    assert!(matches!(task["state"].as_str(), Some("ready" | "running")), "{task}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_tasks_agents_events_the_store_and_http() {
    let server = Server::start().await;
    let mut events = server.events();
    let id = server.post_json("/tasks", json!({"title": "count me", "requires": ["echo"]})).await["ids"][0]
        .as_i64()
        .unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == id)).await;
    let needles = [
        "baton_tasks{state=\"succeeded\"} 1",
        "baton_agents{state=",
        "baton_task_queue_wait_seconds_bucket",
        "baton_task_run_seconds_bucket",
        "baton_events_total{type=\"TaskCompleted\"}",
        "baton_store_commit_seconds_bucket",
        "baton_http_requests_total{method=\"POST\",route=\"/tasks\",status=\"201\"}",
        "baton_http_request_duration_seconds_bucket",
    ];
    // The metrics follow the committed events on their own subscription, which may not have
    // reached the completion this test saw on its own yet: scrape until it has (at most 10 s).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = server.get("/metrics").send().await.unwrap().text().await.unwrap();
        let missing: Vec<&str> = needles.iter().copied().filter(|needle| !text.contains(needle)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {missing:?} in:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The Grafana dashboard and the Prometheus alert rules shipped in deploy/ query only
    // metrics that Baton exports.
    let text = server.get("/metrics").send().await.unwrap().text().await.unwrap();
    let exported: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join("grafana/dashboards/baton.json")).unwrap()).unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    queries.push(dashboard["templating"]["list"][0]["definition"].as_str().unwrap().to_string());
    let alerts = std::fs::read_to_string(deploy.join("prometheus/alerts.yml")).unwrap();
    queries.extend(alerts.lines().filter(|line| !line.trim_start().starts_with('#')).map(str::to_string));
    let mut named = std::collections::BTreeSet::new();
    for query in &queries {
        for (start, _) in query.match_indices("baton_") {
            let name: String = query[start..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            named.insert(name);
        }
    }
    assert!(named.len() >= 10, "the dashboard and the alerts query {named:?}");
    for name in &named {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|family| exported.contains(family)))
            .unwrap_or(name);
        assert!(exported.contains(family), "deploy/ queries `{name}`, which /metrics does not export: {exported:?}");
    }
    server.stop().await;
}

/// A batch task may depend on a later task of the same batch by key: it waits for it (it used
/// to be cancelled at once, "dependency 3 does not exist").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_task_depending_on_a_later_one_of_its_batch_waits_for_it() {
    let server = Server::start().await;
    let batch = json!({"tasks": [
        {"key": "second", "title": "second", "requires": ["build"], "depends_on": ["first"]},
        {"key": "first", "title": "first", "requires": ["build"]},
    ]});
    let ids = server.post_json("/tasks/batch", batch).await["ids"].clone();
    let (second, first) = (ids[0].as_i64().unwrap(), ids[1].as_i64().unwrap());
    let claim = json!({"agent": "builder", "max": 4, "wait_ms": 5000});
    let claimed = server.post_json("/agent/claim", claim.clone()).await;
    assert_eq!(claimed["tasks"].as_array().unwrap().len(), 1, "{claimed}");
    assert_eq!(claimed["tasks"][0]["task"]["id"], first);
    assert_eq!(server.get_json(&format!("/tasks/{second}")).await["task"]["state"], "pending");
    let attempt = claimed["tasks"][0]["attempt"].clone();
    server.post_json(&format!("/agent/tasks/{first}/complete"), json!({"agent": "builder", "attempt": attempt})).await;
    let claimed = server.post_json("/agent/claim", claim).await;
    assert_eq!(claimed["tasks"][0]["task"]["id"], second, "{claimed}");
    server.stop().await;
}

/// A task that depends on itself (by key, or by the id it is about to get) or a cycle within a
/// batch would stay pending forever: refused with `400`, and nothing of the batch is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_depending_on_themselves_or_in_a_cycle_are_refused() {
    let server = Server::start().await;
    let refused = |body: Value| {
        let server = &server;
        async move {
            let path = if body.get("tasks").is_some() { "/tasks/batch" } else { "/tasks" };
            let response = server.post(path, body).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 400, "{body}");
            body["error"]["message"].as_str().unwrap().to_string()
        }
    };
    let myself = json!({"key": "loop", "title": "loop", "requires": ["build"], "depends_on": ["loop"]});
    assert_eq!(refused(myself).await, "task `loop` depends on itself");
    // The id the next task gets: one more than the last one created.
    let last =
        server.post_json("/tasks", json!({"title": "first", "requires": ["build"]})).await["ids"][0].as_i64().unwrap();
    let by_id = json!({"title": "by id", "requires": ["build"], "depends_on": [last + 1]});
    assert_eq!(refused(by_id).await, "task `by id` depends on itself");
    let cycle = json!({"tasks": [
        {"key": "a", "title": "a", "requires": ["build"], "depends_on": ["c"]},
        {"key": "b", "title": "b", "requires": ["build"], "depends_on": ["a"]},
        {"key": "c", "title": "c", "requires": ["build"], "depends_on": ["b"]},
    ]});
    assert_eq!(refused(cycle).await, "task dependency cycle: a -> c -> b -> a");
    let tasks = server.get_json("/tasks").await;
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(1), "only `first` was created: {tasks}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let server = Server::start().await;
    let doc = server.get_json("/openapi.json").await;
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/health",
        "/status",
        "/plan",
        "/tasks",
        "/tasks/batch",
        "/tasks/{id}",
        "/tasks/{id}/cancel",
        "/tasks/{id}/retry",
        "/conflicts",
        "/agents",
        "/agents/{name}",
        "/agents/{name}/start",
        "/agents/{name}/stop",
        "/agents/{name}/restart",
        "/agents/{name}/logs",
        "/agent/claim",
        "/agent/heartbeat",
        "/agent/results",
        "/agent/usage",
        "/agent/tasks/{id}/progress",
        "/agent/tasks/{id}/complete",
        "/agent/tasks/{id}/fail",
        "/events",
        "/events/history",
        "/ws",
        "/metrics",
        "/openapi.json",
        "/audit",
        "/tokens",
    ] {
        assert!(paths.contains_key(path), "{path} is not in /openapi.json");
    }
    server.stop().await;
}

/// What schemathesis (.ci/schemathesis/run) found: bad path parameters answered with a bare
/// text body, query parameters documented as path parameters, a `null` body the document
/// allows refused, and error statuses the document did not list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_answers_match_the_openapi_document() {
    let server = Server::start().await;
    let bad_id = server.get("/tasks/abc").send().await.unwrap();
    assert_eq!(bad_id.status(), 400);
    assert_eq!(bad_id.json::<Value>().await.unwrap()["error"]["code"], "bad_request");

    let id = server.post_json("/tasks", json!({"title": "cancel me", "requires": ["build"]})).await["ids"][0]
        .as_i64()
        .unwrap();
    let cancelled = server
        .client
        .post(format!("{}/tasks/{id}/cancel", server.url))
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);

    let doc = server.get_json("/openapi.json").await;
    for (path, name) in
        [("/tasks", "state"), ("/audit", "limit"), ("/events/history", "since"), ("/agents/{name}/logs", "follow")]
    {
        let parameters = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let parameter = parameters.iter().find(|parameter| parameter["name"] == name).unwrap();
        assert_eq!(parameter["in"], "query", "{path} {name}");
        assert_eq!(parameter["required"], false, "{path} {name}");
    }
    let create = &doc["paths"]["/tasks"]["post"]["responses"];
    for status in ["400", "401", "413", "415", "429"] {
        assert!(create.get(status).is_some(), "POST /tasks does not document {status}");
    }
    assert!(doc["paths"]["/agent/claim"]["post"]["responses"].get("404").is_some());
    let required = doc["components"]["schemas"]["TaskInput"]["required"].as_array().unwrap();
    assert_eq!(required, &vec![json!("title")], "only `title` is required");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_log_is_read_and_followed() {
    use futures::StreamExt;
    let server = Server::start().await;
    let mut events = server.events();
    let follow = server.get("/agents/echo/logs?follow=true&tail_bytes=0").send().await.unwrap();
    assert_eq!(follow.headers()["content-type"], "text/event-stream");
    let id =
        server.post_json("/tasks", json!({"title": "log me", "requires": ["echo"]})).await["ids"][0].as_i64().unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == id)).await;

    let text = server.get("/agents/echo/logs").send().await.unwrap().text().await.unwrap();
    assert!(text.contains(&format!("--- task {id} `log me` attempt 1")), "{text}");
    let mut stream = follow.bytes_stream();
    let mut seen = String::new();
    let needle = format!("data: --- task {id} `log me` attempt 1");
    let read = async {
        while !seen.contains(&needle) {
            seen.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read).await.expect("the log line was followed");
    let missing = server.get("/agents/nobody/logs").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_lease_resources_over_http_and_tasks_wait_for_them() {
    let server = Server::start().await;
    let mut events = server.events();
    let leased = server
        .post_json(
            "/agent/resources/acquire",
            json!({"agent": "builder", "resource": "file:Cargo.toml", "ttl_ms": 60000}),
        )
        .await;
    assert_eq!(leased["resource"], "file:Cargo.toml");
    assert!(leased["until"].as_i64().unwrap() > 0);
    let forever = json!({"agent": "writer", "resource": "file:other", "ttl_ms": u64::MAX});
    let refused = server.post("/agent/resources/acquire", forever).send().await.unwrap();
    assert_eq!(refused.status(), 400, "a lease longer than any duration Baton takes");
    let taken = server
        .post("/agent/resources/acquire", json!({"agent": "writer", "resource": "file:*.toml"}))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 409);
    let body: Value = taken.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("builder"), "{body}");

    // A task on the same file waits for the lease, and runs once it is given back.
    let id = server
        .post_json(
            "/tasks",
            json!({"title": "edit the manifest", "requires": ["echo"], "resources": ["file:Cargo.toml"]}),
        )
        .await["ids"][0]
        .as_i64()
        .unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::ConflictDeferred { task, .. } if task.0 == id))
        .await;
    // `/conflicts` shows the lease, from the events since the run started.
    let conflicts: Value = server.get("/conflicts").send().await.unwrap().json().await.unwrap();
    let held = conflicts["held"].as_array().unwrap();
    assert!(held.iter().any(|held| held["resource"] == "file:Cargo.toml" && held["agent"] == "builder"), "{conflicts}");
    server.post_json("/agent/resources/release", json!({"agent": "builder", "resource": "file:Cargo.toml"})).await;
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == id)).await;
    let conflicts: Value = server.get("/conflicts").send().await.unwrap().json().await.unwrap();
    assert_eq!(conflicts["held"], json!([]), "the lease given back is gone");
    server.stop().await;
}

/// `POST /tasks` gives a task the defaults of a `[[tasks]]` entry (input `{}`, the
/// workstream's priority, 3 attempts) and refuses what baton.toml refuses, with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_tasks_get_the_defaults_and_errors_of_baton_toml() {
    let plan = common::PLAN.replace("name = \"main\"", "name = \"main\"\npriority = \"high\"");
    let server = Server::start_with(Options { plan, ..Options::default() }).await;
    let body = json!({"title": "Build it", "workstream": "main", "requires": ["build"]});
    let id = server.post_json("/tasks", body).await["ids"][0].as_i64().unwrap();
    let task = &server.get_json(&format!("/tasks/{id}")).await["task"];
    assert_eq!(task["key"], "build-it");
    assert_eq!(task["input"], json!({}), "{task}");
    assert_eq!(task["priority"], "high", "the workstream's: {task}");
    assert_eq!(task["max_attempts"], 3);
    let refused = |body: Value| {
        let server = &server;
        async move {
            let response = server.post("/tasks/batch", json!({"tasks": [body]})).send().await.unwrap();
            assert_eq!(response.status(), 400);
            let body: Value = response.json().await.unwrap();
            body["error"]["message"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(
        refused(json!({"title": "t", "agent": "buildr"})).await,
        "tasks[0]: unknown agent `buildr` (did you mean `builder`?)"
    );
    assert_eq!(
        refused(json!({"title": "t", "max_attempts": 500})).await,
        "tasks[0]: `max_attempts` must be at most 100, not 500"
    );
    assert_eq!(
        refused(json!({"title": "t", "key": "a key"})).await,
        "tasks[0]: invalid task key name `a key`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
    );
    server.stop().await;
}

/// Users bring endpoints from the orchestrators they used; Baton says where its equivalent is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orchestrators_endpoint_names_batons_equivalent() {
    let server = Server::start().await;
    let response = server.post("/agents/start", json!({"name": "echo"})).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Baton has no `POST /agents/start`: start an agent with `POST /agents/{name}/start`"
    );
    let response = server.get("/agents/runbooks").send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("`spec.runbook` in `GET /agents`"), "{body}");
    let response = server.get("/api/squad?action=orchestrator-status").send().await.unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await;
}

/// An LLM agent's provider key is in none of what the API shows (its variable's name is), and
/// a task's transcript comes with the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_agents_key_is_never_shown_and_its_transcript_is() {
    use baton_core::transcript::{Entry, Role};
    use baton_store::Store;
    const KEY: &str = "sk-ant-never-shown-0123456789";
    let plan = format!(
        "{}\n[llm.providers.claude]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\napi_key_env = \"ANTHROPIC_API_KEY\"\n\n[[agents]]\nname = \"reviewer\"\nruntime = \"llm\"\nprovider = \"claude\"\nmodel = \"claude-sonnet-4-5\"\ncapabilities = [\"review\"]\n",
        common::PLAN
    );
    let env = vec![("ANTHROPIC_API_KEY".to_string(), KEY.to_string())];
    let server = Server::start_with(Options { plan, env, ..Options::default() }).await;
    for path in ["/plan", "/agents", "/agents/reviewer", "/openapi.json"] {
        let text = server.get(path).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains(KEY), "GET {path} shows the key: {text}");
    }
    let agent = server.get("/agents/reviewer").send().await.unwrap().text().await.unwrap();
    assert!(agent.contains("\"provider\":\"claude\""), "the provider is named as in baton.toml: {agent}");

    let id = server.post_json("/tasks", json!({"title": "build it", "requires": ["build"]})).await["ids"][0]
        .as_i64()
        .unwrap();
    let entries = vec![
        Entry::new(Role::User, "build it", baton_core::Timestamp(1)),
        Entry::new(Role::Assistant, "built", baton_core::Timestamp(2)),
    ];
    server.store.append_transcript(&server.run_id, baton_core::model::TaskId(id), 1, entries).await.unwrap();
    let detail = server.get_json(&format!("/tasks/{id}")).await;
    assert_eq!(detail["transcript"][1], json!({"attempt": 1, "role": "assistant", "content": "built", "at": 2}));
    let doc = server.get_json("/openapi.json").await;
    assert!(doc["components"]["schemas"]["TaskDetail"]["properties"].get("transcript").is_some());
    server.stop().await;
}

/// A page of another site cannot send a message (and so make a task) through `/a2a` in its
/// visitor's browser: the endpoint reads bodies of any content type, so it checks `Origin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2a_refuses_pages_of_other_sites() {
    let server = Server::start().await;
    let message = json!({
        "jsonrpc": "2.0", "id": 1, "method": "SendMessage",
        "params": { "message": { "messageId": "m-1", "role": "ROLE_USER", "parts": [{ "text": "rm -rf" }] }, "configuration": { "returnImmediately": true } },
    });
    let refused = server
        .post("/a2a", message.clone())
        .header("origin", "https://evil.example")
        .header("a2a-version", "1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("evil.example"), "{body}");
    let tasks: Value = server.get("/tasks").send().await.unwrap().json().await.unwrap();
    assert_eq!(tasks["tasks"], json!([]), "no task was made");
    let local = server
        .post("/a2a", message)
        .header("origin", "http://localhost:3000")
        .header("a2a-version", "1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200, "a page of localhost is served");
    server.stop().await;
}

/// `POST /objectives` with the rules as the coordinator: one task for the objective, answered
/// `201` with who made it; the same objective again is a conflict, an unknown workstream a
/// `400` naming the known ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objective_posted_becomes_a_task_of_the_rules_once() {
    let server = Server::start().await;
    let body = json!({"objective": "Tidy the changelog", "workstream": "main"});
    let planned = server.post("/objectives", body.clone()).send().await.unwrap();
    assert_eq!(planned.status(), 201);
    let planned: Value = planned.json().await.unwrap();
    assert_eq!(planned["by"], "rules", "{planned}");
    assert!(planned.get("fallback_reason").is_none(), "{planned}");
    let id = planned["tasks"][0].as_i64().unwrap_or_else(|| panic!("a task id: {planned}"));
    let task = server.get_json(&format!("/tasks/{id}")).await;
    assert_eq!(task["task"]["workstream"], "main", "{task}");
    assert!(task["task"]["key"].as_str().unwrap().starts_with("main.objective-"), "{task}");

    let again = server.post("/objectives", body).send().await.unwrap();
    assert_eq!(again.status(), 409);
    let unknown = server.post("/objectives", json!({"objective": "x", "workstream": "mian"})).send().await.unwrap();
    assert_eq!(unknown.status(), 400);
    assert!(unknown.text().await.unwrap().contains("did you mean `main`"));
    server.stop().await;
}
