//! Schedules and budgets over the API.

mod common;

use serde_json::json;

use baton_core::EventKind;
use common::{Options, Server, wait_event};

fn plan() -> String {
    format!(
        "{}\n[budget]\ndaily_tokens = 1000\n\n[[schedules]]\nname = \"nightly\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"\ntask = {{ title = \"Nightly echo\", requires = [\"echo\"] }}\n",
        common::PLAN
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_listed_paused_and_resumed() {
    let server = Server::start_with(Options { plan: plan(), ..Options::default() }).await;
    let listed = server.get_json("/schedules").await;
    assert_eq!(listed[0]["name"], "nightly");
    assert_eq!(listed[0]["paused"], false);
    assert_eq!(listed[0]["next"].as_array().unwrap().len(), 3);
    let paused = server.post_json("/schedules/nightly/pause", json!({})).await;
    assert_eq!(paused[0]["paused"], true);
    assert_eq!(paused[0]["next"], json!([]));
    let resumed = server.post_json("/schedules/nightly/resume", json!({})).await;
    assert_eq!(resumed[0]["paused"], false);
    let missing = server.post("/schedules/weekly/pause", json!({})).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_show_use_and_an_operator_sets_a_limit() {
    let server = Server::start_with(Options { plan: plan(), ..Options::default() }).await;
    let mut events = server.events();
    let id =
        server.post_json("/tasks", json!({"title": "costly", "requires": ["build"]})).await["ids"][0].as_i64().unwrap();
    server.post_json("/agent/claim", json!({"agent": "builder", "wait_ms": 5000})).await;
    server
        .post_json(
            "/agent/usage",
            json!({"agent": "builder", "task": id, "usage": {"input_tokens": 600, "output_tokens": 100}}),
        )
        .await;
    wait_event(&mut events, |event| matches!(event.kind, EventKind::UsageReported { .. })).await;
    let budgets = server.get_json("/budgets").await;
    let global = budgets["scopes"].as_array().unwrap().iter().find(|scope| scope["scope"] == "global").unwrap().clone();
    assert_eq!(global["used_tokens"], 700, "{budgets}");
    assert_eq!(global["limit_tokens"], 1000);
    assert_eq!(global["exhausted"], false);
    assert!(budgets["next_reset"].as_i64().unwrap() > budgets["period_start"].as_i64().unwrap());

    // Pre-flight: 300 tokens are left, so a task estimated at 400 waits (and says so) while one
    // estimated at 200 runs; one that needs more than the whole day's budget is refused.
    let big = server.post_json("/tasks", json!({"title": "big", "requires": ["build"], "estimated_tokens": 400})).await
        ["ids"][0]
        .as_i64()
        .unwrap();
    let wait = wait_event(&mut events, |event| matches!(event.kind, EventKind::TaskBudgetWait { .. })).await;
    let EventKind::TaskBudgetWait { task, reason, .. } = wait.kind else { unreachable!() };
    assert_eq!(task.0, big);
    assert!(reason.starts_with("estimated_tokens 400 > 300 left"), "{reason}");
    let small = server
        .post_json("/tasks", json!({"title": "small", "requires": ["build"], "estimated_tokens": 200}))
        .await["ids"][0]
        .as_i64()
        .unwrap();
    let claimed = server.post_json("/agent/claim", json!({"agent": "builder", "max": 4, "wait_ms": 5000})).await;
    let titles: Vec<&str> =
        claimed["tasks"].as_array().unwrap().iter().filter_map(|claim| claim["task"]["title"].as_str()).collect();
    assert!(titles.contains(&"small") && !titles.contains(&"big"), "{claimed}");
    let small_task = server.get_json(&format!("/tasks/{small}")).await;
    assert_eq!(small_task["task"]["estimated_tokens"], 200, "{small_task}");
    assert_eq!(server.get_json(&format!("/tasks/{big}")).await["task"]["state"], "ready");
    let never = server
        .post("/tasks", json!({"title": "huge", "requires": ["build"], "estimated_tokens": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(never.status(), 400);
    let body: serde_json::Value = never.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "task `huge`: it estimates 5000 tokens, more than the global daily_tokens (1000): it could never start"
    );
    let zero = server.post("/tasks", json!({"title": "zero", "estimated_tokens": 0})).send().await.unwrap();
    assert_eq!(zero.status(), 400);

    let set = server.post_json("/budgets/global", json!({"daily_tokens": 500})).await;
    let global = set["scopes"].as_array().unwrap().iter().find(|scope| scope["scope"] == "global").unwrap().clone();
    assert_eq!((global["limit_tokens"].as_u64(), global["exhausted"].as_bool()), (Some(500), Some(true)), "{set}");
    let bad = server.post("/budgets/planet:mars", json!({"daily_tokens": 1})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let empty = server.post("/budgets/global", json!({})).send().await.unwrap();
    assert_eq!(empty.status(), 400);
    server.stop().await;
}

/// The attack: `input_tokens = i64::MAX` made SQLite store the budget totals as REAL, and
/// from then on `GET /budgets` (and every start of the plan) failed. Every entry refuses such a
/// report; the largest report allowed, however often, leaves the store readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_report_of_i64_max_is_refused_and_budgets_still_read() {
    let server = Server::start_with(Options { plan: plan(), ..Options::default() }).await;
    let mut events = server.events();
    let refused_with = |body: serde_json::Value| body["error"]["message"].as_str().unwrap_or_default().to_string();
    for _ in 0..2 {
        let huge = json!({"agent": "builder", "usage": {"input_tokens": 9223372036854775807u64}});
        let response = server.post("/agent/usage", huge).send().await.unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(
            refused_with(response.json().await.unwrap()),
            "usage: `input_tokens` must be a whole number of tokens from 0 to 1000000000000, not 9223372036854775807"
        );
    }
    let negative = json!({"agent": "builder", "usage": {"output_tokens": -1}});
    assert_eq!(server.post("/agent/usage", negative).send().await.unwrap().status(), 400);

    // In a result: refused, and the attempt is still held, so an honest result is taken.
    let id =
        server.post_json("/tasks", json!({"title": "costly", "requires": ["build"]})).await["ids"][0].as_i64().unwrap();
    let claimed = server.post_json("/agent/claim", json!({"agent": "builder", "wait_ms": 5000})).await;
    let attempt = claimed["tasks"][0]["attempt"].as_u64().unwrap();
    let huge_result = json!({"agent": "builder", "attempt": attempt, "result": {"usage": {"output_tokens": u64::MAX}}});
    let response = server.post(&format!("/agent/tasks/{id}/complete"), huge_result.clone()).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(refused_with(response.json().await.unwrap()).starts_with("result.usage: `output_tokens` must be"));
    let batch = json!({"agent": "builder", "results": [{"task": id, "attempt": attempt, "status": "succeeded",
        "result": {"usage": {"input_tokens": 1}, "total_cost_usd": 1e300}}]});
    let response = server.post("/agent/results", batch).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        refused_with(response.json().await.unwrap()).starts_with("results[0].result.usage: `total_cost_usd` must be")
    );

    // The largest report allowed, many times over: the totals saturate, they do not overflow.
    let largest = baton_core::budget::MAX_REPORTED_TOKENS;
    for _ in 0..3 {
        let usage = json!({"input_tokens": largest, "output_tokens": 0});
        server.post_json("/agent/usage", json!({"agent": "builder", "task": id, "usage": usage})).await;
        wait_event(&mut events, |event| matches!(event.kind, EventKind::UsageReported { .. })).await;
    }
    let budgets = server.get_json("/budgets").await;
    let global = budgets["scopes"].as_array().unwrap().iter().find(|scope| scope["scope"] == "global").unwrap().clone();
    assert_eq!(global["used_tokens"], 3 * largest, "{budgets}");
    assert_eq!(global["exhausted"], true);
    server.post_json(&format!("/agent/tasks/{id}/complete"), json!({"agent": "builder", "attempt": attempt})).await;

    // What a restart reads: the plan's usage, from the file, by another connection.
    let reopened =
        baton_store::SqliteStore::open(&server.dir.path().join("baton.db"), baton_store::sqlite::Options::default())
            .unwrap();
    let stored = baton_store::Store::usage(&reopened, &server.run_id, baton_core::Timestamp::ZERO).await.unwrap();
    assert!(stored.iter().any(|record| record.spent.tokens == 3 * largest), "{stored:?}");
    server.stop().await;
}
