//! Live events: Server-Sent Events resumed with `Last-Event-ID` without a gap or a duplicate,
//! filters, and the same events over a WebSocket.

mod common;

use futures::StreamExt;
use serde_json::{Value, json};

use baton_core::EventKind;
use common::{Server, wait_event};

/// One parsed Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: i64,
    kind: String,
    data: Value,
}

/// Reads SSE frames from a response until `n` events have come.
async fn read_sse(response: reqwest::Response, n: usize) -> Vec<Sse> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut out = Vec::new();
    let read = async {
        while out.len() < n {
            let chunk = stream.next().await.expect("the stream stays open").expect("bytes");
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in frame.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().parse().ok();
                    } else if let Some(value) = line.strip_prefix("event:") {
                        kind = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                // Keep-alive comments carry no id.
                if let Some(id) = id {
                    out.push(Sse { id, kind, data: serde_json::from_str(&data).expect("JSON data") });
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read).await.expect("the events came within 20 s");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_from_last_event_id_without_gaps_or_duplicates() {
    let server = Server::start().await;
    let mut events = server.events();
    let batch: Vec<Value> = (0..20).map(|n| json!({"title": format!("echo {n}"), "requires": ["echo"]})).collect();
    let ids = server.post_json("/tasks/batch", json!({"tasks": batch})).await["ids"].as_array().unwrap().clone();
    // Every task has completed (with two at a time, the last created may finish first).
    let mut unfinished: std::collections::BTreeSet<i64> = ids.iter().map(|id| id.as_i64().unwrap()).collect();
    while !unfinished.is_empty() {
        let event = wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { .. })).await;
        if let EventKind::TaskCompleted { task, .. } = event.kind {
            unfinished.remove(&task.0);
        }
    }
    let history: Vec<Value> = server.get_json("/events/history?limit=1000").await.as_array().unwrap().clone();
    let all: Vec<i64> = history.iter().map(|event| event["seq"].as_i64().unwrap()).collect();
    assert!(all.len() > 40, "{}", all.len());
    let completed = server.get_json("/events/history?limit=1000&type=TaskCompleted,TaskCreated").await;
    assert_eq!(completed.as_array().unwrap().len(), 40, "20 created, 20 completed");
    // A type no event has is a mistake, not an empty stream.
    for path in ["/events/history?type=TaskCompleted,TaskComplete", "/events?type=TaskComplete"] {
        let typo = server.get(path).send().await.unwrap();
        assert_eq!(typo.status(), 400, "{path}");
        let body: Value = typo.json().await.unwrap();
        assert_eq!(
            body["error"]["message"], "`type`: unknown event type `TaskComplete` (did you mean `TaskCompleted`?)",
            "{path}"
        );
    }

    // First connection: read part of the stream, then drop it.
    let first = server.get("/events?since=0").send().await.unwrap();
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    let part = read_sse(first, 15).await;
    let resume_at = part.last().unwrap().id;

    // Meanwhile more happens.
    let more = server.post_json("/tasks", json!({"title": "one more", "requires": ["echo"]})).await["ids"][0]
        .as_i64()
        .unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == more))
        .await;
    let total = server.get_json("/events/history?limit=1000").await.as_array().unwrap().len();

    // Reconnect as a browser does, with the last id seen.
    let second = server.get("/events").header("Last-Event-ID", resume_at.to_string()).send().await.unwrap();
    let rest = read_sse(second, total - part.len()).await;
    let seen: Vec<i64> = part.iter().chain(rest.iter()).map(|event| event.id).collect();
    let expected: Vec<i64> = (1..=total as i64).map(|n| all[0] + n - 1).collect();
    assert_eq!(seen, expected, "every event once, in order");
    let kinds_match = part
        .iter()
        .chain(rest.iter())
        .all(|event| event.data["type"] == event.kind.as_str() && event.data["seq"] == event.id);
    assert!(kinds_match);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_filters_by_type_agent_and_task_and_keeps_following() {
    let server = Server::start().await;
    let stream = server.get("/events?type=TaskCompleted,TaskCreated&agent=echo").send().await.unwrap();
    let reading = tokio::spawn(read_sse(stream, 2));
    let first =
        server.post_json("/tasks", json!({"title": "a", "requires": ["echo"]})).await["ids"][0].as_i64().unwrap();
    let second =
        server.post_json("/tasks", json!({"title": "b", "requires": ["echo"]})).await["ids"][0].as_i64().unwrap();
    let got = reading.await.unwrap();
    // TaskCreated names no agent: only completions by echo pass.
    assert!(got.iter().all(|event| event.kind == "TaskCompleted"), "{got:?}");
    let tasks: std::collections::BTreeSet<i64> = got.iter().map(|event| event.data["task"].as_i64().unwrap()).collect();
    assert_eq!(tasks, [first, second].into_iter().collect());

    let bad = server.get("/events").header("Last-Event-ID", "yesterday").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_carries_the_same_events() {
    let server = Server::start().await;
    let ws_url = format!("{}/ws?since=0&type=TaskCompleted", server.url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.expect("a websocket");
    let id =
        server.post_json("/tasks", json!({"title": "over ws", "requires": ["echo"]})).await["ids"][0].as_i64().unwrap();
    let message =
        tokio::time::timeout(std::time::Duration::from_secs(20), socket.next()).await.unwrap().unwrap().unwrap();
    let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(event["type"], "TaskCompleted");
    assert_eq!(event["task"], id);
    server.stop().await;
}

/// A WebSocket follows what happens from when it opens; `since=0` asks for the past too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_without_since_starts_live_and_since_0_replays() {
    let server = Server::start().await;
    let mut events = server.events();
    let first =
        server.post_json("/tasks", json!({"title": "before", "requires": ["echo"]})).await["ids"][0].as_i64().unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task, .. } if task.0 == first))
        .await;
    let base = server.url.replacen("http", "ws", 1);
    let (mut live, _) = tokio_tungstenite::connect_async(format!("{base}/ws?type=TaskCreated")).await.unwrap();
    let (mut replay, _) =
        tokio_tungstenite::connect_async(format!("{base}/ws?type=TaskCreated&since=0")).await.unwrap();
    let second =
        server.post_json("/tasks", json!({"title": "after", "requires": ["echo"]})).await["ids"][0].as_i64().unwrap();
    assert_eq!(next(&mut live).await["task"], second, "the live socket's first event is the new task");
    assert_eq!(next(&mut replay).await["task"], first, "since=0 replays the first task's creation");
    assert_eq!(next(&mut replay).await["task"], second);
    server.stop().await;
}

/// The next event a WebSocket sends, as JSON.
async fn next<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let message =
        tokio::time::timeout(std::time::Duration::from_secs(20), socket.next()).await.unwrap().unwrap().unwrap();
    serde_json::from_str(message.to_text().unwrap()).unwrap()
}
