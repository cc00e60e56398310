//! Chat over the API and the WebSocket: a message to a worker agent is stored and delivered; a
//! message to a per-task agent becomes its task.

mod common;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

use baton_core::EventKind;
use common::{Options, Server, wait_event};

fn plan_with_worker() -> String {
    let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/workers/worker.py");
    format!(
        "{}\n[[agents]]\nname = \"pyworker\"\nmode = \"worker\"\ncommand = [\"python3\", \"{worker}\"]\ncapabilities = [\"py\"]\n",
        common::PLAN
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_workers_as_messages_and_per_task_agents_as_tasks() {
    let server = Server::start_with(Options { plan: plan_with_worker(), ..Options::default() }).await;
    let mut events = server.events();
    let sent = server.post_json("/messages", json!({"text": "@pyworker @echo please report", "data": {"n": 1}})).await;
    let sent = sent["sent"].as_array().unwrap();
    let worker = sent.iter().find(|s| s["agent"] == "pyworker").unwrap();
    assert!(worker["message_id"].is_string(), "{worker}");
    let echo = sent.iter().find(|s| s["agent"] == "echo").unwrap();
    let task = echo["task"].as_i64().unwrap();
    wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskCompleted { task: id, .. } if id.0 == task))
        .await;
    let detail = server.get_json(&format!("/tasks/{task}")).await;
    assert_eq!(detail["task"]["input"]["message"], "@pyworker @echo please report");
    assert_eq!(detail["task"]["input"]["from"], "operator");

    let bad = server.post("/messages", json!({"text": "hello nobody"})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let unknown = server.post("/messages", json!({"text": "@ghost boo"})).send().await.unwrap();
    assert_eq!(unknown.status(), 400);
    let listed = server.get_json("/messages?agent=pyworker").await;
    assert_eq!(listed[0]["to"], "pyworker");
    assert_eq!(listed[0]["body"], "@pyworker @echo please report");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_the_websocket() {
    let server = Server::start().await;
    let url = format!("{}/ws?type=TaskCompleted", server.url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(json!({"type": "chat", "text": "@echo hi"}).to_string()))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let message =
            tokio::time::timeout(std::time::Duration::from_secs(20), socket.next()).await.unwrap().unwrap().unwrap();
        got.push(serde_json::from_str::<Value>(message.to_text().unwrap()).unwrap());
    }
    let result = got.iter().find(|m| m["type"] == "chat_result").expect("an answer to the chat message");
    let task = result["sent"][0]["task"].as_i64().unwrap();
    assert!(got.iter().any(|m| m["type"] == "TaskCompleted" && m["task"] == task), "{got:?}");
    socket.send(tokio_tungstenite::tungstenite::Message::text("{\"type\": \"shout\"}")).await.unwrap();
    let message =
        tokio::time::timeout(std::time::Duration::from_secs(20), socket.next()).await.unwrap().unwrap().unwrap();
    let error: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(error["type"], "error");
    server.stop().await;
}

/// A dead letter is delivered again when an operator asks: pending, due now, its tries counted
/// afresh, with a `MessageRedelivered` event; a request naming nothing is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_redelivered_on_request() {
    use baton_core::messages::{NewMessage, Recipient};
    use baton_store::{DeliveryOutcome, Store};
    let server = Server::start().await;
    let mut events = server.events();
    // A message to the per-task agent waits in the store for its next task; it is made dead
    // here, as five unanswered tries would.
    let now = baton_runtime::Clock::system().now();
    let message = NewMessage {
        from: "operator".into(),
        to: Recipient::Agent("echo".into()),
        body: "hello".into(),
        data: Value::Null,
        task: None,
        correlation_id: None,
    };
    let ids =
        server.store.send_message(&server.run_id, "m-dead".into(), message, vec!["echo".into()], now).await.unwrap();
    let pending = server.store.deliveries(&server.run_id, Some("echo"), 10).await.unwrap();
    let dead = DeliveryOutcome::Dead { error: "no answer".into() };
    server.store.settle_deliveries(&server.run_id, vec![(pending[0].clone(), dead)], now).await.unwrap();
    assert_eq!(server.get_json("/messages?agent=echo").await[0]["state"], "dead");

    for (body, why) in
        [(json!({}), "give `ids`"), (json!({"ids": [1], "dead": true}), "not both"), (json!({"ids": []}), "empty")]
    {
        let response = server.post("/messages/redeliver", body).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].as_str().unwrap().contains(why), "{error}");
    }
    let answer = server.post_json("/messages/redeliver", json!({"dead": true})).await;
    assert_eq!(answer["redelivered"], json!(ids));
    wait_event(
        &mut events,
        |event| matches!(&event.kind, EventKind::MessageRedelivered { message, .. } if message == "m-dead"),
    )
    .await;
    let listed = server.get_json("/messages?agent=echo").await;
    assert_eq!((listed[0]["state"].as_str(), listed[0]["attempts"].as_u64()), (Some("pending"), Some(0)), "{listed}");
    let again = server.post_json("/messages/redeliver", json!({"ids": ids})).await;
    assert_eq!(again["redelivered"], json!([]), "it is not dead any more");
    server.stop().await;
}

/// A message to an agent whose inbox is full is refused as such: 429 with the code `full`
/// (asking again later may work), not a bad request; nothing already stored is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_full_inbox_is_refused_as_full() {
    use baton_core::messages::{INBOX_LIMIT, NewMessage, Recipient};
    use baton_store::Store;
    // A worker that never answers `initialize`: it takes no message, so its inbox fills.
    let plan =
        format!("{}\n[[agents]]\nname = \"mute\"\nmode = \"worker\"\ncommand = [\"sleep\", \"600\"]\n", common::PLAN);
    let server = Server::start_with(Options { plan, ..Options::default() }).await;
    let now = baton_runtime::Clock::system().now();
    for n in 0..INBOX_LIMIT {
        let message = NewMessage {
            from: "operator".into(),
            to: Recipient::Agent("mute".into()),
            body: format!("message {n}"),
            data: Value::Null,
            task: None,
            correlation_id: None,
        };
        server.store.send_message(&server.run_id, format!("m-{n}"), message, vec!["mute".into()], now).await.unwrap();
    }
    let response = server.post("/messages", json!({"text": "@mute one more"})).send().await.unwrap();
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "full", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("full"), "{error}");
    let stored = server.store.deliveries(&server.run_id, Some("mute"), INBOX_LIMIT + 10).await.unwrap();
    assert_eq!(stored.len() as u64, INBOX_LIMIT);
    server.stop().await;
}
