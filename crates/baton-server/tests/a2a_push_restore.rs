//! A2A push configs kept in the store are followed after a restart as the client that set
//! them reads the task, not as the server: a config whose token has expired is dropped, one
//! whose owner may no longer read its task (another agent's token, or an endpoint of another
//! agent) is not taken, and one kept by an earlier baton, which did not say who set it, is not
//! taken either. (The webhook hearing a restored config is tested with the Python SDK in
//! `baton-cli/tests/a2a.rs`.)

mod common;

use std::collections::BTreeSet;

use serde_json::{Value, json};

use baton_core::model::TaskId;
use baton_server::Role;
use baton_store::Store;
use common::{Options, PLAN, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_push_configs_are_followed_as_their_owners() {
    let plan = format!("{PLAN}\n[a2a]\npush_hosts = [\"127.0.0.1\"]\n");
    let server = Server::start_with(Options { auth: true, plan, ..Options::default() }).await;
    let operator = server.token(Role::Operator, None);
    // A build task: the remote builder has no worker, so it stays unfinished.
    let made: Value = server
        .post("/tasks", json!({ "title": "compile", "requires": ["build"] }))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = TaskId(made["ids"][0].as_i64().unwrap());
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "CreateTaskPushNotificationConfig",
        "params": { "taskId": task.to_string(), "id": "operator", "url": "http://127.0.0.1:9/hook", "token": "t" },
    });
    let answer: Value = server
        .post("/a2a", body)
        .header("A2A-Version", "1.0")
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["result"]["id"], "operator", "{answer}");

    // What the store holds for it says who set it.
    let kept = server.store.push_configs(Some(task)).await.unwrap();
    assert_eq!(kept.len(), 1);
    let set = kept[0].clone();
    assert_eq!(set.config["reader"]["role"], "operator", "{}", set.config);
    assert_eq!(set.config["reader"]["token_id"], set.owner.as_str());
    assert!(set.config["reader"]["expires_at"].as_u64().is_some(), "{}", set.config);

    // Others, as a store could hold them: each a copy of it with another reader.
    let with = |id: &str, change: &dyn Fn(&mut Value)| {
        let mut record = set.clone();
        record.id = id.to_string();
        change(&mut record.config["reader"]);
        if let Some(token) = record.config["reader"]["token_id"].as_str() {
            record.owner = token.to_string();
        }
        record
    };
    let others = [
        with("another-agent", &|reader| {
            reader["role"] = json!("agent");
            reader["agent"] = json!("writer");
            reader["token_id"] = json!("writer-token");
        }),
        with("expired", &|reader| reader["expires_at"] = json!(baton_server::auth::unix_now() - 1)),
        with("earlier-baton", &|reader| *reader = Value::Null),
        with("another-endpoint", &|reader| reader["scope"] = json!("writer")),
    ];
    for record in others {
        server.store.put_push_config(record).await.unwrap();
    }

    let restarted = server.restarted_state();
    baton_server::a2a::restore_push_configs(&restarted).await;
    let taken: Vec<String> = restarted.a2a_pushes().list(task).into_iter().map(|config| config.id).collect();
    assert_eq!(taken, ["operator"], "only the config whose owner may still read the task is followed");
    let restored = restarted.a2a_pushes().get(task, "operator").unwrap();
    assert_eq!((restored.reader.caller.role, restored.reader.scope.as_deref()), (Role::Operator, None));
    // The expired token's config is gone from the store; the others stay, for an operator to see.
    let stored: BTreeSet<String> =
        server.store.push_configs(Some(task)).await.unwrap().into_iter().map(|record| record.id).collect();
    let expected: BTreeSet<String> =
        ["another-agent", "another-endpoint", "earlier-baton", "operator"].map(str::to_string).into();
    assert_eq!(stored, expected);
    server.stop().await;
}
