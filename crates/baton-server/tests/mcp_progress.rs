//! MCP's long call, `wait_for_task`, over `POST /mcp` on a real server: a request with a
//! `progressToken` from a client that accepts `text/event-stream` is answered with Server-Sent
//! Events — `notifications/progress` on each change of the task, then the JSON-RPC response,
//! which ends the stream; a client that accepts only JSON gets the response alone. The task is
//! moved by the test, as a remote worker (claim, complete), so every change is of its making.
//! In a session (the 2025-11-25 era), `notifications/cancelled` ends such a call.

mod common;

use serde_json::{Value, json};

use baton_server::Role;
use common::{Options, Server};

fn stateless_meta(progress_token: Option<&str>) -> Value {
    let mut meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    if let Some(token) = progress_token {
        meta["progressToken"] = json!(token);
    }
    meta
}

/// `tools/call wait_for_task` (protocol 2026-07-28), accepting `accept`, with `token`.
fn wait_call(
    server: &Server,
    accept: &str,
    bearer: Option<&str>,
    arguments: Value,
    progress_token: Option<&str>,
) -> reqwest::RequestBuilder {
    let body = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": { "name": "wait_for_task", "arguments": arguments, "_meta": stateless_meta(progress_token) },
    });
    let mut request = server
        .post("/mcp", body)
        .header("accept", accept)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "wait_for_task");
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    request
}

/// Reads Server-Sent Events, one at a time, whatever the chunks' boundaries.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The next event's `event` field and its data as JSON; `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut kind = String::new();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((kind, serde_json::from_str(&data).expect("each event's data is one JSON message")));
            }
            let chunk = self.response.chunk().await.expect("the stream reads")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

async fn create_build_task(server: &Server) -> i64 {
    server.post_json("/tasks", json!({"title": "compile", "requires": ["build"]})).await["ids"][0].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_task_streams_progress_then_the_answer() {
    let server = Server::start().await;
    let id = create_build_task(&server).await;

    let response = wait_call(&server, "application/json, text/event-stream", None, json!({ "id": id }), Some("p-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events { response, buffer: String::new() };

    // At once: where the task stands.
    let (kind, first) = events.next().await.unwrap();
    assert_eq!(kind, "message");
    assert_eq!(first["method"], "notifications/progress", "{first}");
    assert_eq!(first["params"]["progressToken"], "p-1");
    assert_eq!(first["params"]["progress"], 0);
    assert!(first.get("id").is_none(), "a notification has no id: {first}");
    let message = first["params"]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("task {id} is ")), "{message}");

    // The worker claims it (the hub may have handed it to the worker already: then it runs).
    let claimed = server.post_json("/agent/claim", json!({"agent": "builder", "max": 1, "wait_ms": 5000})).await;
    assert_eq!(claimed["tasks"][0]["task"]["id"], id, "{claimed}");
    let mut heard = Vec::new();
    let mut messages = Vec::new();

    // It completes: the last notification, then the response, then the end of the stream.
    server
        .post_json(
            &format!("/agent/tasks/{id}/complete"),
            json!({"agent": "builder", "attempt": 1, "result": {"binary": "ok"}}),
        )
        .await;
    let answer = loop {
        let (_, message) = events.next().await.unwrap();
        if message.get("id").is_some() {
            break message;
        }
        assert_eq!(message["method"], "notifications/progress", "{message}");
        heard.push(message["params"]["progress"].as_u64().unwrap());
        messages.push(message["params"]["message"].as_str().unwrap().to_string());
    };
    assert!(messages.iter().any(|message| message.contains("running -> succeeded")), "{messages:?}");
    assert!(heard.windows(2).all(|pair| pair[0] < pair[1]) && heard[0] > 0, "progress increases: {heard:?}");
    assert_eq!(answer["id"], 7);
    let result = &answer["result"];
    assert_eq!(result["resultType"], "complete", "{answer}");
    assert_eq!(result["isError"], false, "{answer}");
    assert_eq!(result["structuredContent"]["ended"], true);
    assert_eq!(result["structuredContent"]["task"]["state"], "succeeded");
    assert_eq!(result["structuredContent"]["task"]["result"], json!({"binary": "ok"}));
    assert!(events.next().await.is_none(), "the response ends the stream");

    // A client that accepts only JSON gets the answer alone, as JSON.
    let response = wait_call(&server, "application/json", None, json!({ "id": id }), Some("p-2")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["result"]["structuredContent"]["ended"], true, "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_task_answers_at_its_timeout_and_checks_its_arguments() {
    let server = Server::start().await;
    let id = create_build_task(&server).await;
    // A timeout of nothing answers the task as it is: not ended.
    let answer: Value = wait_call(&server, "application/json", None, json!({ "id": id, "timeout_seconds": 0 }), None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let content = &answer["result"]["structuredContent"];
    assert_eq!((&content["ended"], &content["timed_out"]), (&json!(false), &json!(true)), "{answer}");
    // Over an event stream too: the first notification, then the answer.
    let response = wait_call(
        &server,
        "application/json, text/event-stream",
        None,
        json!({ "id": id, "timeout_seconds": 0 }),
        Some("p-3"),
    )
    .send()
    .await
    .unwrap();
    let mut events = Events { response, buffer: String::new() };
    assert_eq!(events.next().await.unwrap().1["method"], "notifications/progress");
    assert_eq!(events.next().await.unwrap().1["result"]["structuredContent"]["timed_out"], true);
    assert!(events.next().await.is_none());

    for (arguments, needle) in [
        (json!({ "id": id, "timeout_seconds": 301 }), "at most 300"),
        (json!({ "id": 999_999 }), "no task 999999"),
        (json!({ "id": id, "later": true }), "unknown field `later`"),
    ] {
        let response =
            wait_call(&server, "application/json, text/event-stream", None, arguments, Some("p")).send().await.unwrap();
        let text = response.text().await.unwrap();
        assert!(text.contains("\"isError\":true") && text.contains(needle), "{needle}: {text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_may_wait_for_a_task_and_an_agent_only_for_its_own() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let admin = server.token(Role::Admin, None);
    let created: Value = server
        .post("/tasks", json!({"title": "compile", "requires": ["build"]}))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["ids"][0].as_i64().unwrap();
    let arguments = json!({ "id": id, "timeout_seconds": 0 });

    let viewer = server.token(Role::Viewer, None);
    let response =
        wait_call(&server, "application/json, text/event-stream", Some(&viewer), arguments.clone(), Some("v"))
            .send()
            .await
            .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(text.contains("notifications/progress") && text.contains("\"timed_out\":true"), "{text}");

    // The writer's token may not read the builder's task: refused, with no notification.
    let writer = server.token(Role::Agent, Some("writer"));
    let response = wait_call(&server, "application/json, text/event-stream", Some(&writer), arguments, Some("w"))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.contains("\"isError\":true") && text.contains("not agent `writer`'s"), "{text}");
    assert!(!text.contains("notifications/progress"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_s_client_cancels_a_call_in_progress() {
    let server = Server::start().await;
    let id = create_build_task(&server).await;
    let post = |body: Value, session: Option<&str>| {
        let mut request = server
            .post("/mcp", body)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let opened = post(
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "test", "version": "1" },
        } }),
        None,
    )
    .await
    .unwrap();
    let session = opened.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let call = json!({ "jsonrpc": "2.0", "id": "wait-1", "method": "tools/call", "params": {
        "name": "wait_for_task", "arguments": { "id": id, "timeout_seconds": 300 }, "_meta": { "progressToken": "p" },
    } });
    let response = post(call, Some(&session)).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events { response, buffer: String::new() };
    let (_, first) = events.next().await.unwrap();
    assert_eq!(first["method"], "notifications/progress", "{first}");

    // Another session's cancel, or one of another request id, is not this call's.
    let cancel = |request: Value| json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": request } });
    let other = post(
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "other", "version": "1" },
        } }),
        None,
    )
    .await
    .unwrap();
    let other = other.headers()["mcp-session-id"].to_str().unwrap().to_string();
    assert_eq!(post(cancel(json!("wait-1")), Some(&other)).await.unwrap().status(), 202);
    assert_eq!(post(cancel(json!("wait-2")), Some(&session)).await.unwrap().status(), 202);
    // The call is still waiting: the task's next change is heard.
    server.post_json("/agent/claim", json!({"agent": "builder", "max": 1, "wait_ms": 5000})).await;
    let (_, heard) = events.next().await.unwrap();
    assert_eq!(heard["method"], "notifications/progress", "{heard}");

    // Its own cancel ends it: the stream closes without an answer.
    assert_eq!(post(cancel(json!("wait-1")), Some(&session)).await.unwrap().status(), 202);
    while let Some((_, message)) = events.next().await {
        assert!(message.get("id").is_none(), "a cancelled call is not answered: {message}");
    }
    server.stop().await;
}

/// `subscriptions/listen` (2026-07-28, stateless): the stream starts with the acknowledgement
/// of what the server honours, then says when a listened resource changes; a request without
/// a filter is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_client_listens_for_resource_changes() {
    let server = Server::start().await;
    let id = create_build_task(&server).await;
    let listen = |params: Value| {
        server
            .post(
                "/mcp",
                json!({ "jsonrpc": "2.0", "id": "listen-1", "method": "subscriptions/listen", "params": params }),
            )
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .send()
    };
    let refused = listen(json!({ "_meta": stateless_meta(None) })).await.unwrap();
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], -32602, "{refused}");

    let uri = format!("baton://tasks/{id}");
    let response = listen(json!({
        "_meta": stateless_meta(None),
        "notifications": { "resourceSubscriptions": [uri], "toolsListChanged": true },
    }))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events { response, buffer: String::new() };
    let (_, ack) = events.next().await.unwrap();
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged", "{ack}");
    assert_eq!(ack["params"]["notifications"], json!({ "resourceSubscriptions": [uri] }), "only what it honours");
    assert_eq!(ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen-1");

    // The worker claims the task: its resource changed.
    server.post_json("/agent/claim", json!({"agent": "builder", "max": 1, "wait_ms": 5000})).await;
    let (_, updated) = events.next().await.unwrap();
    assert_eq!(updated["method"], "notifications/resources/updated", "{updated}");
    assert_eq!(updated["params"]["uri"], uri.as_str());
    assert_eq!(updated["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen-1");
    server.stop().await;
}
