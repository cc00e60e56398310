//! Hostile callers: an agent after another agent's secrets, a client that fills the audit log
//! with failed requests, connections that never finish a request, a WebSocket kept open past
//! its token. Each test is an attack that once worked.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use baton_server::{ConnectionLimits, Role};
use common::{Options, Server};

const SECRET_VALUE: &str = "sk-ant-the-real-key-0123456789";

const PLAN_WITH_SECRETS: &str = r#"
[orchestration]
name = "secrets"

[[agents]]
name = "builder"
runtime = "remote"
capabilities = ["build"]

[[agents]]
name = "llm"
command = ["sh", "-c", "cat", "--key=${ANTHROPIC_API_KEY}"]
capabilities = ["write"]
env = { ANTHROPIC_API_KEY = "${ANTHROPIC_API_KEY}", LEVEL = "info" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_reads_an_expanded_secret() {
    let server = Server::start_with(Options {
        auth: true,
        plan: PLAN_WITH_SECRETS.into(),
        env: vec![("ANTHROPIC_API_KEY".into(), SECRET_VALUE.into())],
        ..Options::default()
    })
    .await;
    let tokens = [
        server.token(Role::Admin, None),
        server.token(Role::Operator, None),
        server.token(Role::Viewer, None),
        server.token(Role::Agent, Some("builder")),
    ];
    for token in &tokens {
        for path in ["/agents", "/agents/llm", "/plan", "/events/history?limit=1000"] {
            let body = server.get(path).bearer_auth(token).send().await.unwrap().text().await.unwrap();
            assert!(!body.contains(SECRET_VALUE), "{path} leaks the secret: {body}");
        }
    }
    let agent: Value = server.get("/agents/llm").bearer_auth(&tokens[0]).send().await.unwrap().json().await.unwrap();
    assert_eq!(agent["spec"]["env"], json!({"ANTHROPIC_API_KEY": "${ANTHROPIC_API_KEY}", "LEVEL": "info"}));
    assert_eq!(agent["spec"]["command"][3], "--key=${ANTHROPIC_API_KEY}");
    // The agent itself still gets the value: it is what it runs with.
    let spec = server.state.plan().agent("llm").unwrap().clone();
    assert_eq!(spec.process().unwrap().env["ANTHROPIC_API_KEY"], SECRET_VALUE);
    assert!(!format!("{spec:?}").contains(SECRET_VALUE), "Debug shows the template");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cannot_hand_the_token_secret_to_an_agent_it_creates() {
    let mut plan = common::PLAN.to_string();
    plan.push_str("\n[auth]\nsecret_env = \"BATON_JWT_SECRET\"\n");
    let server = Server::start_with(Options { auth: true, plan, ..Options::default() }).await;
    let operator = server.token(Role::Operator, None);
    let response = server
        .post("/agents", json!({"name": "thief", "command": ["env"], "env_passthrough": ["BATON_JWT_SECRET"]}))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("may not name `BATON_JWT_SECRET`"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited_per_address_and_its_audit_entries_are_bounded() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let long_path = format!("/tasks/{}", "x".repeat(60 * 1024));
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..60 {
        statuses.push(server.post(&long_path, json!({})).send().await.unwrap().status().as_u16());
    }
    // The limit refills at 2 per second: a slow machine lets a few more through.
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    let n_unauthorized = statuses.iter().filter(|status| **status == 401).count();
    let n_limited = statuses.iter().filter(|status| **status == 429).count();
    assert!((30..=30 + refilled).contains(&n_unauthorized), "a burst of 30 gets 401 (+{refilled}): {statuses:?}");
    assert_eq!(n_unauthorized + n_limited, 60, "{statuses:?}");
    assert!(n_limited > 0, "the burst is held back: {statuses:?}");

    // A client with a token, from the same address, is not held back by the one without.
    let admin = server.token(Role::Admin, None);
    assert_eq!(server.get("/status").bearer_auth(&admin).send().await.unwrap().status(), 200);

    let entries: Value =
        server.get("/audit?limit=1000").bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let entries = entries.as_array().unwrap();
    let failed: Vec<&Value> = entries.iter().filter(|entry| entry["actor"] == "unauthenticated").collect();
    assert_eq!(failed.len(), n_unauthorized, "the 429s are not audited");
    for entry in failed {
        let target = entry["target"].as_str().unwrap();
        assert!(target.len() < 600, "the path is cut: {} bytes", target.len());
        assert!(target.ends_with("bytes cut]"), "{target}");
    }
    server.stop().await;
}

/// Reads from `stream` until the server closes it; `Err` if it stays open for `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let mut received = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    match tokio::time::timeout(within, read_all).await {
        Ok(()) => Ok(received),
        Err(_) => Err("the connection is still open".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_idle_connections_are_closed_and_the_cap_holds() {
    let limits = ConnectionLimits {
        max_connections: 3,
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(800),
    };
    let server = Server::start_with(Options { limits, ..Options::default() }).await;
    let addr = server.url.trim_start_matches("http://").to_string();

    // Half a request: the headers never end.
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"POST /tasks HTTP/1.1\r\nHost: baton\r\nContent-Type: application/json\r\n").await.unwrap();
    // Headers, then a body that never comes.
    let mut no_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    no_body
        .write_all(
            b"POST /tasks HTTP/1.1\r\nHost: baton\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();

    // The cap is 3: a fourth connection waits until one of those is closed (the first goes after
    // `header_timeout`), then is served.
    let asked_at = tokio::time::Instant::now();
    let fourth = tokio::spawn({
        let url = server.url.clone();
        async move {
            let answered = reqwest::get(format!("{url}/health")).await.map(|response| response.status().as_u16());
            (answered, tokio::time::Instant::now())
        }
    });

    let bounded = Duration::from_secs(10);
    closed_within(&mut half, bounded).await.expect("a half-sent request is cut off");
    let answer = closed_within(&mut no_body, bounded).await.expect("a body that never comes is cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || !answer.starts_with("HTTP/1.1 2"), "{answer}");
    closed_within(&mut silent, bounded).await.expect("a silent connection is closed when idle");
    let (answered, at) = tokio::time::timeout(bounded, fourth).await.expect("the fourth is served").unwrap();
    assert_eq!(answered.unwrap(), 200);
    // Served only once a slot was free: not before a stalled connection could be closed.
    let waited = at.duration_since(asked_at);
    assert!(waited >= Duration::from_millis(250), "the fourth connection was served after {waited:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_closed_when_its_token_expires() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let auth = server.auth.as_ref().unwrap();
    // Expiry is in whole seconds: a token of 1 s issued late in a second could expire before the
    // socket opens; 3 s leaves the connection time on a loaded machine.
    let (token, claims) =
        auth.issue("short", Role::Operator, None, Duration::from_secs(3), baton_server::auth::unix_now()).unwrap();
    let url = format!("{}/ws", server.url.replace("http://", "ws://"));
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = socket.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame;
            }
        }
        None
    })
    .await
    .expect("the socket is closed within 10 s");
    let frame = close.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1008);
    assert!(baton_server::auth::unix_now() >= claims.exp, "not before the token expired");
    // Nothing sent after that is taken.
    let _ = socket.send(Message::Text(json!({"type": "chat", "text": "@writer hello"}).to_string().into())).await;
    let tasks: Value =
        server.get("/tasks").bearer_auth(server.token(Role::Admin, None)).send().await.unwrap().json().await.unwrap();
    assert_eq!(tasks["tasks"], json!([]));
    server.stop().await;
}
