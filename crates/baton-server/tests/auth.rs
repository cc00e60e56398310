//! Who may do what: every role against every endpoint, agent tokens kept to their own agent,
//! the audit log, rate limits.

mod common;

use serde_json::{Value, json};

use baton_server::Role;
use common::{Options, Server};

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Needs {
    Open,
    Read,
    CreateTasks,
    Operate,
    Admin,
    /// The agent-side endpoints, as agent `builder`.
    AsBuilder,
}

fn allowed(role: Role, needs: Needs) -> bool {
    match needs {
        Needs::Open | Needs::Read => true,
        Needs::CreateTasks => role != Role::Viewer,
        Needs::Operate => matches!(role, Role::Admin | Role::Operator),
        Needs::Admin => role == Role::Admin,
        Needs::AsBuilder => role != Role::Viewer,
    }
}

/// Every endpoint, with a request that gets past the authorization check without changing
/// anything that matters (unknown names give 404 once authorized).
fn endpoints(task: i64) -> Vec<(&'static str, String, Option<Value>, Needs)> {
    vec![
        ("GET", "/health".into(), None, Needs::Open),
        ("GET", "/openapi.json".into(), None, Needs::Open),
        ("GET", "/status".into(), None, Needs::Read),
        ("GET", "/plan".into(), None, Needs::Read),
        ("GET", "/tasks".into(), None, Needs::Read),
        ("GET", format!("/tasks/{task}"), None, Needs::Read),
        ("GET", "/agents".into(), None, Needs::Read),
        ("GET", "/agents/builder".into(), None, Needs::Read),
        ("GET", "/agents/echo/logs".into(), None, Needs::Read),
        ("GET", "/events/history".into(), None, Needs::Read),
        ("GET", "/metrics".into(), None, Needs::Read),
        ("GET", "/messages".into(), None, Needs::Read),
        ("GET", "/schedules".into(), None, Needs::Read),
        ("GET", "/budgets".into(), None, Needs::Read),
        ("POST", "/schedules/nope/pause".into(), None, Needs::Operate),
        ("POST", "/schedules/nope/resume".into(), None, Needs::Operate),
        ("POST", "/budgets/global".into(), Some(json!({})), Needs::Operate),
        ("POST", "/messages".into(), Some(json!({"text": "@ghost hello"})), Needs::CreateTasks),
        (
            "POST",
            "/tasks".into(),
            Some(json!({"title": "from the matrix", "requires": ["nobody"]})),
            Needs::CreateTasks,
        ),
        (
            "POST",
            "/tasks/batch".into(),
            Some(json!({"tasks": [{"title": "batch", "requires": ["nobody"]}]})),
            Needs::CreateTasks,
        ),
        ("POST", "/tasks/999999/cancel".into(), Some(json!({})), Needs::Operate),
        ("POST", "/tasks/999999/retry".into(), Some(json!({})), Needs::Operate),
        ("POST", "/agents".into(), Some(json!({"name": "builder"})), Needs::Operate),
        ("PUT", "/agents/nobody".into(), Some(json!({"command": ["true"]})), Needs::Operate),
        ("DELETE", "/agents/nobody".into(), None, Needs::Operate),
        ("POST", "/agents/nobody/start".into(), None, Needs::Operate),
        ("POST", "/agents/nobody/stop".into(), None, Needs::Operate),
        ("POST", "/agents/nobody/restart".into(), None, Needs::Operate),
        ("GET", "/audit".into(), None, Needs::Admin),
        ("POST", "/tokens".into(), Some(json!({"role": "viewer"})), Needs::Admin),
        ("POST", "/agent/claim".into(), Some(json!({"agent": "builder"})), Needs::AsBuilder),
        ("POST", "/agent/heartbeat".into(), Some(json!({"agent": "builder"})), Needs::AsBuilder),
        (
            "POST",
            "/agent/usage".into(),
            Some(json!({"agent": "builder", "usage": {"input_tokens": 1}})),
            Needs::AsBuilder,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_endpoint() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let admin = server.token(Role::Admin, None);
    let task = server
        .post("/tasks", json!({"title": "seen by all", "requires": ["nobody"]}))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["ids"][0]
        .as_i64()
        .unwrap();
    let roles = [
        (Role::Admin, server.token(Role::Admin, None)),
        (Role::Operator, server.token(Role::Operator, None)),
        (Role::Viewer, server.token(Role::Viewer, None)),
        (Role::Agent, server.token(Role::Agent, Some("builder"))),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, needs) in endpoints(task) {
        for (role, token) in &roles {
            let mut request =
                server.client.request(method.parse().unwrap(), format!("{}{path}", server.url)).bearer_auth(token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let status = request.send().await.unwrap().status().as_u16();
            let was_allowed = status != 401 && status != 403;
            if was_allowed != allowed(*role, needs) {
                wrong.push(format!("{method} {path} as {}: {status}", role.as_str()));
            }
        }
        // Without a token only the open endpoints answer.
        let mut request = server.client.request(method.parse().unwrap(), format!("{}{path}", server.url));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let status = request.send().await.unwrap().status().as_u16();
        if (status == 401) == (needs == Needs::Open) {
            wrong.push(format!("{method} {path} without a token: {status}"));
        }
    }
    assert!(wrong.is_empty(), "authorization is wrong for:\n{}", wrong.join("\n"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_acts_only_as_its_agent_and_only_on_its_tasks() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let admin = server.token(Role::Admin, None);
    let builder = server.token(Role::Agent, Some("builder"));
    let writer = server.token(Role::Agent, Some("writer"));
    let docs: Value = server
        .post("/tasks", json!({"title": "docs", "requires": ["docs"]}))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let docs = docs["ids"][0].as_i64().unwrap();

    // Claiming as another agent is refused.
    let as_other = server.post("/agent/claim", json!({"agent": "writer"})).bearer_auth(&builder).send().await.unwrap();
    assert_eq!(as_other.status(), 403);
    let body: Value = as_other.json().await.unwrap();
    assert_eq!(body["error"]["message"], "this token acts as agent `builder` only, not as `writer`");

    // The builder's claim never sees the docs task: its capabilities do not allow it.
    let claimed: Value = server
        .post("/agent/claim", json!({"max": 10}))
        .bearer_auth(&builder)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claimed["tasks"], json!([]));

    // The writer claims it; the builder cannot report on it, nor complete it.
    let claimed: Value = server
        .post("/agent/claim", json!({"wait_ms": 5000}))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claimed["tasks"][0]["task"]["id"], docs);
    for path in [format!("/agent/tasks/{docs}/complete"), format!("/agent/tasks/{docs}/progress")] {
        let response = server.post(&path, json!({"attempt": 1})).bearer_auth(&builder).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["message"], format!("task {docs} is agent `writer`'s, not `builder`'s"));
    }
    let usage = server
        .post("/agent/usage", json!({"task": docs, "usage": {"input_tokens": 5}}))
        .bearer_auth(&builder)
        .send()
        .await
        .unwrap();
    assert_eq!(usage.status(), 403);
    // Its own agent completes it.
    let done = server
        .post(&format!("/agent/tasks/{docs}/complete"), json!({"attempt": 1}))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_the_reason() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let none = server.get("/status").send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert!(none.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().contains("needs a bearer token"));
    let garbage = server.get("/status").bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(garbage.status(), 401);
    let other = baton_server::Auth::new(b"some other secret", std::time::Duration::from_secs(60)).unwrap();
    let (forged, _) = other
        .issue("mallory", Role::Admin, None, std::time::Duration::from_secs(60), baton_server::auth::unix_now())
        .unwrap();
    let forged = server.get("/status").bearer_auth(forged).send().await.unwrap();
    assert_eq!(forged.status(), 401);
    assert_eq!(
        forged.json::<Value>().await.unwrap()["error"]["message"],
        "the token's signature does not match this server's secret"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_requests_are_audited_with_who_what_and_the_outcome() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let admin = server.token(Role::Admin, None);
    let viewer = server.token(Role::Viewer, None);
    let operator = server.token(Role::Operator, None);
    server
        .post("/tasks", json!({"title": "audited", "requires": ["nobody"]}))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    server.post("/tasks", json!({"title": "denied"})).bearer_auth(&viewer).send().await.unwrap();
    server.post("/tasks/424242/cancel", json!({})).bearer_auth(&operator).send().await.unwrap();
    // Reads are not audited.
    server.get("/tasks").bearer_auth(&operator).send().await.unwrap();

    let entries: Value = server.get("/audit").bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let entries = entries.as_array().unwrap();
    let summary: Vec<String> = entries
        .iter()
        .map(|entry| {
            format!(
                "{} {} {} {} {}",
                entry["actor"].as_str().unwrap(),
                entry["role"].as_str().unwrap(),
                entry["action"].as_str().unwrap(),
                entry["status"],
                entry["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "operator operator POST /tasks/{id}/cancel 404 error 404",
            "viewer viewer POST /tasks 403 denied",
            "operator operator POST /tasks 201 ok",
        ],
        "{entries:?}"
    );
    assert_eq!(entries[0]["target"], "/tasks/424242/cancel");
    assert!(entries[0]["at"].as_i64().unwrap() > 0);
    // Only admins read it.
    let as_operator = server.get("/audit").bearer_auth(&operator).send().await.unwrap();
    assert_eq!(as_operator.status(), 403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_has_its_own_rate_limit_and_429_says_when_to_retry() {
    let server = Server::start_with(Options { auth: true, rate_limit: Some((1, 3)), ..Options::default() }).await;
    let busy = server.token(Role::Viewer, None);
    let other = server.token(Role::Viewer, None);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(server.get("/status").bearer_auth(&busy).send().await.unwrap());
    }
    assert_eq!(statuses.iter().map(|r| r.status().as_u16()).collect::<Vec<_>>(), [200, 200, 200, 429]);
    let limited = statuses.pop().unwrap();
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(limited.json::<Value>().await.unwrap()["error"]["code"], "rate_limited");
    // Another token is not held back by the first one's use.
    assert_eq!(server.get("/status").bearer_auth(&other).send().await.unwrap().status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_issue_tokens_that_work() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let admin = server.token(Role::Admin, None);
    let issued: Value = server
        .post("/tokens", json!({"role": "agent", "agent": "builder", "ttl": "1h"}))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(issued["subject"], "agent:builder");
    let token = issued["token"].as_str().unwrap();
    let claim = server.post("/agent/claim", json!({})).bearer_auth(token).send().await.unwrap();
    assert_eq!(claim.status(), 200);
    let refused = server.post("/tokens", json!({"role": "agent"})).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    server.stop().await;
}
