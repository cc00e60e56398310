//! Token budgets end to end: per-task agents print claude-shaped JSON results with `usage`; a
//! small daily budget stops the agent mid-plan, `baton run` says it is blocked until the reset,
//! SIGTERM leaves the run resumable, `baton budget` shows the use, a fresh run of the plan is
//! held by the same day's budget, and a raised limit lets it finish.

mod common;

use baton_core::EventKind;
use baton_core::model::RunState;
use baton_store::{EventQuery, Store};
use common::{Project, stderr, stdout};

const PLAN: &str = r#"
[orchestration]
name = "budgeted"

[budget]
daily_tokens = 3000
timezone = "Europe/Paris"

[[agents]]
name = "claude"
command = ["bash", "claude.sh", "{task.key}"]

[[tasks]]
key = "a"
title = "A"

[[tasks]]
key = "b"
title = "B"
depends_on = ["a"]

[[tasks]]
key = "c"
title = "C"
depends_on = ["b"]

[[tasks]]
key = "d"
title = "D"
depends_on = ["c"]

[[tasks]]
key = "e"
title = "E"
depends_on = ["d"]
"#;

/// What `claude -p --output-format json` prints, with 1000 tokens of usage.
const CLAUDE: &str = r#"#!/usr/bin/env bash
echo '{"type":"result","subtype":"success","is_error":false,"result":"did '"$1"'","total_cost_usd":0.01,"usage":{"input_tokens":100,"cache_creation_input_tokens":300,"cache_read_input_tokens":400,"output_tokens":200}}'
"#;

#[tokio::test]
async fn an_exhausted_budget_blocks_the_agent_until_an_operator_raises_the_limit() {
    let project = Project::with(PLAN, &[("claude.sh", CLAUDE)]);
    let (child, mut lines) = project.spawn(&["run"]);
    let blocked = lines.wait_for("blocked");
    assert!(blocked.contains("budget global exhausted (3000/3000 tokens)"), "{blocked}");
    assert!(blocked.contains("until the reset at") && blocked.contains("Europe/Paris"), "{blocked}");
    lines.wait_for("task d waits for budget global: exhausted");

    let status = project.baton(&["status"]);
    assert!(stdout(&status).contains("budget    exhausted: global"), "{}", stdout(&status));
    let status: serde_json::Value = serde_json::from_str(&stdout(&project.baton(&["status", "--json"]))).unwrap();
    assert_eq!(status["budgets_exhausted"], serde_json::json!(["global"]));
    assert_eq!(status["agents"]["blocked-budget"], serde_json::json!(["claude"]));
    let agents = project.baton(&["agents"]);
    assert!(stdout(&agents).contains("blocked-budget"), "{}", stdout(&agents));

    // Waiting for tomorrow: Ctrl-C (here SIGTERM) stops it, resumably.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("stopped before the end (3/5 tasks done)"), "{}", stdout(&output));

    let budget = project.baton(&["budget", "--json"]);
    assert_eq!(budget.status.code(), Some(0), "{}", stderr(&budget));
    let budget: serde_json::Value = serde_json::from_str(&stdout(&budget)).unwrap();
    let global = budget["scopes"].as_array().unwrap().iter().find(|scope| scope["scope"] == "global").unwrap();
    assert_eq!(global["used_tokens"], 3000);
    assert_eq!(global["limit_tokens"], 3000);
    assert_eq!(global["exhausted"], true);
    assert_eq!(global["thresholds_crossed"], serde_json::json!([50, 75, 90, 100]));
    assert!((global["used_cost_usd"].as_f64().unwrap() - 0.03).abs() < 1e-9);
    let agent = budget["scopes"].as_array().unwrap().iter().find(|scope| scope["scope"] == "agent:claude").unwrap();
    assert_eq!(agent["used_tokens"], 3000, "stored per agent");
    assert_eq!(budget["scopes"].as_array().unwrap().iter().filter(|scope| scope["kind"] == "task").count(), 3);
    assert_eq!(budget["waiting_tasks"][0][0], "4");
    let table = project.baton(&["budget"]);
    assert!(stdout(&table).contains("exhausted"), "{}", stdout(&table));

    let store = project.store();
    let run = store.latest_run(None).await.unwrap().unwrap();
    let events = store.events(&EventQuery { run_id: Some(run.id.clone()), ..Default::default() }).await.unwrap();
    let thresholds: Vec<u8> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::BudgetThreshold { scope, percent, .. } if scope == "global" => Some(*percent),
            _ => None,
        })
        .collect();
    assert_eq!(thresholds, vec![50, 75, 90, 100], "each threshold once");
    let reported = events.iter().filter(|event| matches!(event.kind, EventKind::UsageReported { .. })).count();
    assert_eq!(reported, 3);

    // The budget is the plan's, not the run's: a fresh run does not start the day anew.
    let (child, mut lines) = project.spawn(&["run", "--fresh"]);
    lines.wait_for("task a waits for budget global: exhausted");
    let status: serde_json::Value = serde_json::from_str(&stdout(&project.baton(&["status", "--json"]))).unwrap();
    assert_eq!(status["budgets_exhausted"], serde_json::json!(["global"]));
    assert_eq!(status["agents"]["blocked-budget"], serde_json::json!(["claude"]));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("stopped before the end (0/5 tasks done)"), "{}", stdout(&output));
    let fresh = store.latest_run(None).await.unwrap().unwrap();
    assert_ne!(fresh.id, run.id);

    // A limit is set by the process executing the run: with none, the command says so (it used
    // to leave the command in the store for the next `baton run`).
    let refused = project.baton(&["budget", "set", "global", "--daily-tokens", "10000"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("no `baton run` is executing run"), "{}", stderr(&refused));
    // An operator raises the limit of the resumed (fresh) run, which then finishes the plan
    // within it.
    let (child, mut lines) = project.spawn(&["run"]);
    lines.wait_for("run resumed");
    project.wait_for_front_door();
    let set = project.baton(&["budget", "set", "global", "--daily-tokens", "10000"]);
    assert_eq!(set.status.code(), Some(0), "{}", stderr(&set));
    let resumed = child.wait_with_output().unwrap();
    assert_eq!(resumed.status.code(), Some(0), "{}\n{}", stdout(&resumed), stderr(&resumed));
    assert!(stdout(&resumed).contains("succeeded: 5/5 tasks"), "{}", stdout(&resumed));
    let fresh = store.run(&fresh.id).await.unwrap().unwrap();
    assert_eq!(fresh.state, RunState::Succeeded);
    let usage = store.usage(&fresh.id, baton_core::Timestamp::ZERO).await.unwrap();
    let global: Vec<u64> = usage
        .iter()
        .filter(|record| record.scope == baton_core::budget::Scope::Global)
        .map(|record| record.spent.tokens)
        .collect();
    assert_eq!(global, vec![8000], "the day's use of both runs: 3000, then 5000");
    let budget: serde_json::Value = serde_json::from_str(&stdout(&project.baton(&["budget", "--json"]))).unwrap();
    let global = budget["scopes"].as_array().unwrap().iter().find(|scope| scope["scope"] == "global").unwrap();
    assert_eq!((global["used_tokens"].as_u64(), global["limit_tokens"].as_u64()), (Some(8000), Some(10000)));
    let bad = project.baton(&["budget", "set", "agent:nobody", "--daily-tokens", "1"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn tokens_a_failed_attempt_reports_count_too() {
    // A CLI coding agent that used tokens and then failed: its output still says what it used.
    let failing = r#"#!/usr/bin/env bash
echo '{"type":"result","subtype":"error_during_execution","is_error":true,"total_cost_usd":0.02,"usage":{"input_tokens":600,"output_tokens":100}}'
exit 1
"#;
    let plan = "[orchestration]\nname = \"spent\"\nretry_backoff = \"10ms\"\n\n[[agents]]\nname = \"claude\"\ncommand = [\"bash\", \"claude.sh\"]\n\n[[tasks]]\nkey = \"a\"\ntitle = \"A\"\nmax_attempts = 2\n";
    let project = Project::with(plan, &[("claude.sh", failing)]);
    let output = project.baton(&["run"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let budget: serde_json::Value = serde_json::from_str(&stdout(&project.baton(&["budget", "--json"]))).unwrap();
    let global = budget["scopes"].as_array().unwrap().iter().find(|scope| scope["scope"] == "global").unwrap();
    assert_eq!(global["used_tokens"], 1400, "700 tokens for each of the two failed attempts: {budget}");
    assert!((global["used_cost_usd"].as_f64().unwrap() - 0.04).abs() < 1e-9, "{budget}");
}
