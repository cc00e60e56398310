//! Who may do what: every role against every endpoint, agent tokens kept to their own agent,
//! the audit log, rate limits.

mod common;

use serde_json::{Value, json};

use baton_server::auth::TABLE;
use baton_server::{Action, Grant, Role};
use common::{Options, Server};
use strum::IntoEnumIterator;

/// Whose things a request reaches, for the cells that grant an agent token its own only.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Whose {
    /// Not about one agent (or filtered to the caller's own).
    Any,
    /// Agent `builder`'s (the agent token of the test acts as `builder`).
    Builders,
    /// Agent `writer`'s or `echo`'s.
    Others,
}

/// The authorization table as the README documents it: action → grants per role.
fn documented_table() -> Vec<(String, [Grant; 4])> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let grant = |cell: &str| match cell.trim() {
        "all" => Grant::All,
        "own" => Grant::Own,
        "none" => Grant::None,
        other => panic!("README: unknown grant `{other}`"),
    };
    readme
        .lines()
        // `\|` is a `|` inside a cell.
        .map(|line| line.replace("\\|", "/"))
        .filter(|line| line.starts_with("| `") && line.split('|').count() == 8)
        .map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            let action = cells[1].trim().trim_matches('`').to_string();
            (action, [grant(cells[3]), grant(cells[4]), grant(cells[5]), grant(cells[6])])
        })
        .collect()
}

#[test]
fn the_readme_documents_the_authorization_table_the_server_uses() {
    let in_code: Vec<(String, [Grant; 4])> =
        TABLE.iter().map(|(action, grants)| (action.name().to_string(), *grants)).collect();
    assert_eq!(documented_table(), in_code);
    let actions: Vec<Action> = Action::iter().collect();
    assert_eq!(actions.len(), TABLE.len(), "every action has a row");
}

fn role_index(role: Role) -> usize {
    match role {
        Role::Admin => 0,
        Role::Operator => 1,
        Role::Viewer => 2,
        Role::Agent => 3,
    }
}

/// Every endpoint, with a request that gets past the authorization check without changing
/// anything that matters (unknown names give 404 once authorized). `None`: open to all.
/// A request of the matrix: method, path, body, the action it is (`None`: open), whose.
type Endpoint = (&'static str, String, Option<Value>, Option<Action>, Whose);

fn endpoints(builders: i64, writers: i64) -> Vec<Endpoint> {
    use Action::*;
    use Whose::*;
    let post = |path: &str, body: Value, action: Action, whose: Whose| {
        ("POST", path.to_string(), Some(body), Some(action), whose)
    };
    let get = |path: &str, action: Action, whose: Whose| ("GET", path.to_string(), None, Some(action), whose);
    vec![
        ("GET", "/health".into(), None, None, Any),
        ("GET", "/openapi.json".into(), None, None, Any),
        get("/status", ReadStatus, Any),
        get("/plan", ReadStatus, Any),
        get("/tasks", ReadTasks, Any),
        get("/tasks?agent=builder", ReadTasks, Builders),
        get("/tasks?agent=writer", ReadTasks, Others),
        get(&format!("/tasks/{builders}"), ReadTasks, Builders),
        get(&format!("/tasks/{writers}"), ReadTasks, Others),
        get("/conflicts", ReadTasks, Any),
        get("/agents", ReadAgents, Any),
        get("/agents/writer", ReadAgents, Any),
        get("/agents/builder/logs", ReadAgentLogs, Builders),
        get("/agents/echo/logs", ReadAgentLogs, Others),
        // Not WebSocket requests, nor terminal agents: 400 once authorized.
        get("/agents/builder/terminal", ReadAgentLogs, Builders),
        get("/agents/echo/terminal", ReadAgentLogs, Others),
        get("/events/history", ReadEvents, Any),
        get("/events/history?agent=builder", ReadEvents, Builders),
        get("/events/history?agent=writer", ReadEvents, Others),
        get("/metrics", ReadMetrics, Any),
        get("/messages", ReadMessages, Any),
        get("/messages?agent=writer", ReadMessages, Others),
        get("/schedules", ReadSchedules, Any),
        get("/budgets", ReadBudgets, Any),
        get("/tools", ReadTools, Any),
        post("/tools/nope/nothing", json!({}), CallTools, Any),
        post("/schedules/nope/pause", json!({}), ControlSchedules, Any),
        post("/schedules/nope/resume", json!({}), ControlSchedules, Any),
        post("/budgets/global", json!({}), SetBudgets, Any),
        post("/messages", json!({"text": "@ghost hello"}), SendMessages, Any),
        post("/messages/redeliver", json!({"ids": [999999]}), ControlMessages, Any),
        post("/tasks", json!({"title": "from the matrix", "requires": ["nobody"]}), CreateTasks, Any),
        post("/tasks/batch", json!({"tasks": [{"title": "batch", "requires": ["nobody"]}]}), CreateTasks, Any),
        post("/objectives", json!({"objective": "from the matrix", "workstream": "nope"}), PlanObjectives, Any),
        post("/tasks/999999/cancel", json!({}), ControlTasks, Any),
        post("/tasks/999999/retry", json!({}), ControlTasks, Any),
        post("/agents", json!({"name": "builder"}), ManageAgents, Any),
        ("PUT", "/agents/nobody".into(), Some(json!({"command": ["true"]})), Some(ManageAgents), Any),
        ("DELETE", "/agents/nobody".into(), None, Some(ManageAgents), Any),
        post("/agents/nobody/start", json!({}), ManageAgents, Any),
        post("/agents/nobody/stop", json!({}), ManageAgents, Any),
        post("/agents/nobody/restart", json!({}), ManageAgents, Any),
        get("/audit", Administer, Any),
        post("/tokens", json!({"role": "viewer"}), Administer, Any),
        post("/agent/claim", json!({"agent": "builder"}), ActAsAgent, Builders),
        post("/agent/claim", json!({"agent": "writer"}), ActAsAgent, Others),
        post("/agent/heartbeat", json!({"agent": "builder"}), ActAsAgent, Builders),
        post("/agent/usage", json!({"agent": "builder", "usage": {"input_tokens": 1}}), ActAsAgent, Builders),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_endpoint() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let admin = server.token(Role::Admin, None);
    let mut ids = Vec::new();
    for agent in ["builder", "writer"] {
        let created: Value = server
            .post("/tasks", json!({"title": format!("{agent}'s"), "agent": agent}))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(created["ids"][0].as_i64().unwrap());
    }
    let roles = [
        (Role::Admin, server.token(Role::Admin, None)),
        (Role::Operator, server.token(Role::Operator, None)),
        (Role::Viewer, server.token(Role::Viewer, None)),
        (Role::Agent, server.token(Role::Agent, Some("builder"))),
    ];
    let table = documented_table();
    let mut wrong = Vec::new();
    let mut n_cells = 0;
    for (method, path, body, action, whose) in endpoints(ids[0], ids[1]) {
        let send = |token: Option<&str>| {
            let mut request = server.client.request(method.parse().unwrap(), format!("{}{path}", server.url));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            request.send()
        };
        for (role, token) in &roles {
            let expected = match action {
                None => true,
                Some(action) => {
                    let grants = table.iter().find(|(name, _)| name == action.name()).expect("a documented row").1;
                    match grants[role_index(*role)] {
                        Grant::All => true,
                        Grant::Own => whose != Whose::Others,
                        Grant::None => false,
                    }
                }
            };
            let status = send(Some(token)).await.unwrap().status().as_u16();
            let was_allowed = status != 401 && status != 403;
            n_cells += 1;
            if was_allowed != expected {
                wrong.push(format!("{method} {path} as {}: {status}", role.as_str()));
            }
        }
        // Without a token only the open endpoints answer (after a burst of refusals, the
        // refusal is 429: requests without a token are rate-limited per address).
        let status = send(None).await.unwrap().status().as_u16();
        if matches!(status, 401 | 429) == action.is_none() {
            wrong.push(format!("{method} {path} without a token: {status}"));
        }
    }
    assert!(wrong.is_empty(), "authorization is wrong for:\n{}", wrong.join("\n"));
    assert!(n_cells > 150, "{n_cells} cells checked");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_sees_only_its_own_tasks_messages_and_events() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let admin = server.token(Role::Admin, None);
    let builder = server.token(Role::Agent, Some("builder"));
    for (title, agent) in [("mine", "builder"), ("theirs", "writer")] {
        server
            .post("/tasks", json!({"title": title, "agent": agent, "input": {"secret": title}}))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
    }
    let claimed: Value = server
        .post("/agent/claim", json!({"wait_ms": 5000}))
        .bearer_auth(&builder)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claimed["tasks"][0]["task"]["title"], "mine");
    let listed: Value = server.get("/tasks").bearer_auth(&builder).send().await.unwrap().json().await.unwrap();
    let titles: Vec<&str> =
        listed["tasks"].as_array().unwrap().iter().map(|task| task["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["mine"], "an agent lists its own tasks only");
    let events: Value = server.get("/events/history").bearer_auth(&builder).send().await.unwrap().json().await.unwrap();
    let events = events.as_array().unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|event| event.to_string().contains("builder")), "{events:?}");
    assert!(!events.iter().any(|event| event.to_string().contains("theirs")), "{events:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_an_agent_not_in_the_run_is_refused() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let ghost = server.token(Role::Agent, Some("ghost"));
    for path in ["/status", "/tasks", "/agents"] {
        let response = server.get(path).bearer_auth(&ghost).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("`ghost`, which is not in this run"), "{body}");
    }
    let claim = server.post("/agent/claim", json!({})).bearer_auth(&ghost).send().await.unwrap();
    assert_eq!(claim.status(), 403);
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
    let other =
        baton_server::Auth::new(b"some other secret, long enough to be accepted", std::time::Duration::from_secs(60))
            .unwrap();
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

/// An MCP request's entry says more than `POST /mcp`: the method, and a tool call's tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_tool_call_is_audited_with_its_tool() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let admin = server.token(Role::Admin, None);
    let viewer = server.token(Role::Viewer, None);
    for (token, tool, arguments) in
        [(&admin, "plan_status", json!({})), (&viewer, "create_tasks", json!({ "tasks": [{ "title": "no" }] }))]
    {
        let meta = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        });
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": tool, "arguments": arguments, "_meta": meta },
        });
        let answer = server
            .post("/mcp", body)
            .bearer_auth(token)
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "tools/call")
            .header("Mcp-Name", tool)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    }
    let entries: Value = server.get("/audit").bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let details: Vec<&Value> = entries.as_array().unwrap().iter().map(|entry| &entry["detail"]).collect();
    assert_eq!(
        details,
        [
            &json!({ "mcp": "tools/call", "tool": "create_tasks", "isError": true }),
            &json!({ "mcp": "tools/call", "tool": "plan_status", "isError": false }),
        ],
        "{entries}"
    );
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
