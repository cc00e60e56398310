//! Helpers shared by the runtime's integration tests.

#![allow(dead_code)]

use std::time::Duration;

use baton_core::model::{NewTask, Priority, TaskId, TaskRecord};
use baton_store::Store;
use baton_store::sqlite::SqliteStore;

/// A task that needs the capability `requires`, tried once.
pub fn task(title: &str, requires: &str) -> NewTask {
    NewTask {
        parent: None,
        key: None,
        workstream: None,
        title: title.to_string(),
        description: String::new(),
        input: serde_json::Value::Null,
        requires: vec![requires.to_string()],
        agent: None,
        depends_on: Vec::new(),
        priority: Priority::Medium,
        max_attempts: 1,
        timeout_ms: None,
        resources: Vec::new(),
        estimated_tokens: None,
    }
}

/// Waits (at most 30 s) until the task has ended, and returns it.
pub async fn ended(store: &SqliteStore, id: TaskId) -> TaskRecord {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let task = store.task(id).await.expect("the store answers").expect("the task exists");
            if task.state.is_terminal() {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the task ends within 30 s")
}
