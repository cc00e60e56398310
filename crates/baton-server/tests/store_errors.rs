//! Store errors answer by their kind, through the one table in the server's error module.

mod common;

use serde_json::json;

use common::Server;

/// A key already taken is a conflict with the store's state (`409`); a dependency on an unknown
/// task is a refusal of the request (`400`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refusals_answer_by_kind() {
    let server = Server::start().await;
    let task = json!({"key": "once", "title": "once", "requires": ["build"]});
    server.post_json("/tasks", task.clone()).await;
    let again = server.post("/tasks", task).send().await.unwrap();
    assert_eq!(again.status(), 409);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict", "{body}");

    let unknown = json!({"title": "later", "requires": ["build"], "depends_on": ["nothing"]});
    let refused = server.post("/tasks", unknown).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    server.stop().await;
}
