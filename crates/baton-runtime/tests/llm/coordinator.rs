//! The coordinator (`[coordinator] mode = "llm"`) end to end, against the stand-in provider:
//! a workstream's objective decomposed into tasks that then run, and each reason to fall back
//! to the rules (one task routed by capability), with its `CoordinatorFallback` event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use baton_core::budget::Scope;
use baton_core::config::{self, Plan};
use baton_core::model::{RunState, TaskRecord, TaskState};
use baton_core::{Event, EventKind};
use baton_runtime::engine::{self, Engine, EngineOptions, Error, RunSummary};
use baton_store::sqlite::SqliteStore;
use baton_store::{EventQuery, Store};

use super::standin::{self, Reply, Standin};
use super::{KEY, env, process_env};

/// Two process agents (`write`, `review`) in workstream `docs`, whose objective the
/// coordinator of `coordinator` (a TOML table's body) plans.
fn plan(url: &str, coordinator: &str) -> Plan {
    let text = format!(
        r#"
[orchestration]
name = "coord"

[llm.providers.standin]
kind = "anthropic"
base_url = "{url}"
api_key_env = "STANDIN_KEY"

[coordinator]
{coordinator}

[[workstreams]]
name = "docs"
objective = "Release notes for 1.2, reviewed"

[[agents]]
name = "writer"
role = "Writes"
capabilities = ["write"]
command = ["sh", "-c", "echo written"]

[[agents]]
name = "reviewer"
role = "Reviews"
capabilities = ["review"]
command = ["sh", "-c", "echo reviewed"]
"#
    );
    config::load("baton.toml", &text, &env()).unwrap_or_else(|error| panic!("{error}"))
}

const LLM: &str = "mode = \"llm\"\nprovider = \"standin\"\nmodel = \"claude-sonnet-4-5\"\ntimeout = \"5s\"";

struct Ended {
    store: Arc<SqliteStore>,
    summary: RunSummary,
    _dir: tempfile::TempDir,
}

impl Ended {
    async fn tasks(&self) -> Vec<TaskRecord> {
        self.store.tasks(&self.summary.run_id, &Default::default()).await.unwrap()
    }

    async fn coordinator_events(&self) -> Vec<Event> {
        let kinds = vec!["CoordinatorDecision".to_string(), "CoordinatorFallback".to_string()];
        let query = EventQuery { run_id: Some(self.summary.run_id.clone()), kinds, ..EventQuery::default() };
        self.store.events(&query).await.unwrap()
    }
}

/// Runs `plan` to its end (at most 30 s) with the coordinator reading `env`.
async fn run(plan: Plan, env: BTreeMap<String, String>) -> Ended {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let runtimes = engine::process_runtimes(process_env(dir.path()));
    let mut options = EngineOptions::new(plan, Arc::clone(&store) as Arc<dyn Store>, runtimes);
    options.coordinator_env = env;
    let (engine, _handle) = Engine::new(options);
    let ran = tokio::time::timeout(std::time::Duration::from_secs(30), engine.run(CancellationToken::new()));
    let summary = ran.await.expect("the run ends within 30 s").expect("the run ends");
    Ended { store, summary, _dir: dir }
}

fn proposal(tasks: Value) -> Reply {
    Reply::Stream(standin::anthropic_text(&json!({ "tasks": tasks }).to_string(), 700, 120, 0, 0))
}

#[tokio::test]
async fn an_objective_is_decomposed_into_tasks_that_run() {
    let answer = json!([
        {"key": "draft", "title": "Draft the notes", "requires": ["write"], "estimated_tokens": 2000},
        {"key": "review", "title": "Review the notes", "requires": ["review"], "depends_on": ["draft"]}
    ]);
    let standin = Standin::start(vec![proposal(answer)]);
    let ended = run(plan(&standin.url, LLM), env()).await;
    assert_eq!(ended.summary.state, RunState::Succeeded, "{:?}", ended.summary);

    let tasks = ended.tasks().await;
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert!(tasks.iter().all(|task| task.state == TaskState::Succeeded), "{tasks:?}");
    let prefix = baton_core::coordinator::objective_key("docs", "Release notes for 1.2, reviewed");
    let (draft, review) = (&tasks[0], &tasks[1]);
    assert_eq!(draft.key.as_deref(), Some(format!("{prefix}.1").as_str()));
    assert_eq!((draft.requires.clone(), draft.estimated_tokens), (vec!["write".to_string()], Some(2000)));
    assert_eq!(review.requires, vec!["review".to_string()]);
    assert_eq!(review.depends_on, vec![draft.id]);
    assert_eq!(review.workstream.as_deref(), Some("docs"));

    // One decision, with its input, output and usage; the model was asked with the team.
    let events = ended.coordinator_events().await;
    let [Event { kind: EventKind::CoordinatorDecision { decision, workstream, input, output, usage, .. }, .. }] =
        events.as_slice()
    else {
        panic!("one decision: {events:?}")
    };
    assert_eq!((decision.as_str(), workstream.as_deref()), ("decompose", Some("docs")));
    assert_eq!(input["objective"], "Release notes for 1.2, reviewed");
    assert_eq!(output["by"], "llm");
    assert_eq!(output["tasks"][1]["id"], json!(review.id));
    assert_eq!((usage["input_tokens"].as_u64(), usage["output_tokens"].as_u64()), (Some(700), Some(120)));
    let asked = standin.received();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].headers["x-api-key"], KEY);
    assert!(asked[0].body["system"].to_string().contains("capabilities: [review]"), "{}", asked[0].body);

    // The coordinator's tokens count against the global budget.
    let usage = ended.store.usage(&ended.summary.run_id, baton_core::Timestamp(0)).await.unwrap();
    let global = usage.iter().find(|record| record.scope == Scope::Global).expect("global usage");
    assert_eq!(global.spent.tokens, 820);
    // Reported under a name no agent can have.
    let coordinator = Scope::Agent("@coordinator".into());
    let reported = usage.iter().find(|record| record.scope == coordinator).expect("the coordinator's usage");
    assert_eq!(reported.spent.tokens, 820);
}

/// Runs the plan and checks the fallback: one task of the rules that ran, and the reason.
async fn falls_back(plan: Plan, env: BTreeMap<String, String>, reason: &str) {
    let ended = run(plan, env).await;
    assert_eq!(ended.summary.state, RunState::Succeeded, "{:?}", ended.summary);
    let tasks = ended.tasks().await;
    let prefix = baton_core::coordinator::objective_key("docs", "Release notes for 1.2, reviewed");
    let [task] = tasks.as_slice() else { panic!("one task of the rules: {tasks:?}") };
    assert_eq!((task.key.as_deref(), task.state), (Some(prefix.as_str()), TaskState::Succeeded));
    assert!(task.requires.is_empty());
    // The decomposition's fallback (the coordinator is then asked who takes the rules' task,
    // which two agents can: that decision is another test's).
    let mut events = ended.coordinator_events().await;
    events.retain(
        |event| !matches!(&event.kind, EventKind::CoordinatorFallback { decision, .. } if decision == "assign"),
    );
    let [Event { kind: EventKind::CoordinatorFallback { reason: given, task: Some(id), .. }, .. }] = events.as_slice()
    else {
        panic!("one fallback: {events:?}")
    };
    assert_eq!(*id, task.id);
    assert!(given.contains(reason), "{given:?} should say {reason:?}");
}

#[tokio::test]
async fn no_provider_falls_back() {
    falls_back(plan("http://127.0.0.1:9", "mode = \"llm\""), env(), "no provider configured").await;
}

#[tokio::test]
async fn a_missing_key_falls_back() {
    let without_key: BTreeMap<String, String> = env().into_iter().filter(|(name, _)| name != "STANDIN_KEY").collect();
    falls_back(plan("http://127.0.0.1:9", LLM), without_key, "STANDIN_KEY is not set").await;
}

#[tokio::test]
async fn a_provider_that_does_not_answer_in_time_falls_back() {
    let gone = Arc::new(AtomicBool::new(false));
    let standin = Standin::start(vec![Reply::Hang(String::new(), Arc::clone(&gone))]);
    let coordinator = LLM.replace("\"5s\"", "\"300ms\"");
    falls_back(plan(&standin.url, &coordinator), env(), "timeout: provider standin did not answer within 300ms").await;
}

#[tokio::test]
async fn an_api_error_falls_back() {
    let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"model: unknown model"}}"#;
    let standin = Standin::start(vec![Reply::Status(400, Vec::new(), body.into())]);
    falls_back(plan(&standin.url, LLM), env(), "API error: provider standin: 400 bad request: model: unknown model")
        .await;
}

#[tokio::test]
async fn an_answer_that_is_not_json_falls_back() {
    let standin = Standin::start(vec![Reply::Stream(standin::anthropic_text("Sure! First, draft.", 10, 5, 0, 0))]);
    falls_back(plan(&standin.url, LLM), env(), "invalid JSON in the model's answer").await;
}

#[tokio::test]
async fn a_proposal_needing_an_unknown_capability_falls_back() {
    let standin = Standin::start(vec![proposal(json!([{"key": "fly", "title": "Fly", "requires": ["fly"]}]))]);
    let reason =
        "invalid proposal: proposed task 1 `fly` cannot be assigned: no agent of workstream `docs` or shared has [fly]";
    falls_back(plan(&standin.url, LLM), env(), reason).await;
}

#[tokio::test]
async fn a_proposal_with_a_cycle_falls_back() {
    let answer = json!([
        {"key": "a", "title": "A", "requires": ["write"], "depends_on": ["b"]},
        {"key": "b", "title": "B", "requires": ["review"], "depends_on": ["a"]}
    ]);
    let standin = Standin::start(vec![proposal(answer)]);
    falls_back(plan(&standin.url, LLM), env(), "cycle").await;
}

#[tokio::test]
async fn the_rules_plan_an_objective_as_one_task_without_a_fallback() {
    let ended = run(plan("http://127.0.0.1:9", "mode = \"rules\""), env()).await;
    assert_eq!(ended.summary.state, RunState::Succeeded, "{:?}", ended.summary);
    assert_eq!(ended.tasks().await.len(), 1);
    let events = ended.coordinator_events().await;
    let [Event { kind: EventKind::CoordinatorDecision { output, usage, .. }, .. }] = events.as_slice() else {
        panic!("one decision of the rules: {events:?}")
    };
    assert_eq!((output["by"].as_str(), usage), (Some("rules"), &Value::Null));
}

#[tokio::test]
async fn an_objective_is_planned_once_per_run() {
    let answer = json!([{"key": "draft", "title": "Draft", "requires": ["write"]}]);
    let standin = Standin::start(vec![proposal(answer.clone()), proposal(answer)]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let mut plan = plan(&standin.url, LLM);
    plan.workstreams[0].objective = None;
    let runtimes = engine::process_runtimes(process_env(dir.path()));
    let mut options = EngineOptions::new(plan, Arc::clone(&store) as Arc<dyn Store>, runtimes);
    options.coordinator_env = env();
    options.keep_open = true;
    let (engine, handle) = Engine::new(options);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));

    let objective = "Write the 1.3 notes".to_string();
    let planned = handle.plan_objective("docs".into(), objective.clone()).await.unwrap();
    assert_eq!((planned.tasks.len(), planned.by.as_str(), planned.fallback_reason), (1, "llm", None));
    let again = handle.plan_objective("docs".into(), objective).await;
    assert!(matches!(&again, Err(Error::AlreadyPlanned(message)) if message.contains("planned already")), "{again:?}");
    let unknown = handle.plan_objective("doc".into(), "Anything".into()).await;
    assert!(matches!(&unknown, Err(Error::Invalid(message)) if message.contains("did you mean `docs`")), "{unknown:?}");
    assert_eq!(standin.received().len(), 1, "asked once");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A plan whose task `build` fails on `flaky`; `steady` can do the same work.
fn failing_plan(url: &str) -> Plan {
    let text = format!(
        r#"
[orchestration]
name = "triage"

[llm.providers.standin]
kind = "anthropic"
base_url = "{url}"
api_key_env = "STANDIN_KEY"

[coordinator]
{LLM}

[[agents]]
name = "flaky"
capabilities = ["build"]
command = ["sh", "-c", "exit 3"]

[[agents]]
name = "steady"
capabilities = ["check"]
command = ["sh", "-c", "echo built"]

[[tasks]]
key = "build"
title = "Build"
agent = "flaky"
max_attempts = 1
"#
    );
    config::load("baton.toml", &text, &env()).unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test]
async fn a_failed_task_is_retried_elsewhere_when_the_coordinator_says_so() {
    let answer = json!({"action": "retry", "agent": "steady", "reason": "flaky keeps failing"}).to_string();
    let standin = Standin::start(vec![Reply::Stream(standin::anthropic_text(&answer, 300, 40, 0, 0))]);
    let ended = run(failing_plan(&standin.url), env()).await;
    let tasks = ended.tasks().await;
    let [build, retry] = tasks.as_slice() else { panic!("the task and its retry: {tasks:?}") };
    assert_eq!(build.state, TaskState::Dead);
    assert_eq!((retry.agent.as_deref(), retry.state), (Some("steady"), TaskState::Succeeded), "{retry:?}");
    assert_eq!(retry.key.as_deref(), Some("build.triage-1"));
    let events = ended.coordinator_events().await;
    let [Event { kind: EventKind::CoordinatorDecision { decision, task, output, .. }, .. }] = events.as_slice() else {
        panic!("one decision: {events:?}")
    };
    assert_eq!((decision.as_str(), *task), ("triage", Some(build.id)));
    assert_eq!((output["action"].as_str(), output["agent"].as_str()), (Some("retry"), Some("steady")));
    let asked = standin.received()[0].body.to_string();
    assert!(asked.contains("Why it failed: ") && asked.contains("(last agent: flaky)"), "{asked}");
}

#[tokio::test]
async fn a_triage_that_is_not_understood_leaves_the_task_failed() {
    let standin = Standin::start(vec![Reply::Stream(standin::anthropic_text("{\"action\": \"pray\"}", 10, 5, 0, 0))]);
    let ended = run(failing_plan(&standin.url), env()).await;
    assert_eq!(ended.summary.state, RunState::Failed);
    let tasks = ended.tasks().await;
    assert_eq!(tasks.len(), 1);
    let events = ended.coordinator_events().await;
    let [Event { kind: EventKind::CoordinatorFallback { decision, reason, .. }, .. }] = events.as_slice() else {
        panic!("one fallback: {events:?}")
    };
    assert_eq!(decision, "triage");
    assert!(reason.contains("not a triage"), "{reason}");
}

/// A run stopped after its objective was planned, then resumed, asks no one again: the
/// objective's tasks are found by their keys.
#[tokio::test]
async fn a_resumed_run_does_not_plan_its_objective_again() {
    let answer = json!([{"key": "draft", "title": "Draft", "requires": ["write"]}]);
    let standin = Standin::start(vec![proposal(answer)]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let start = |plan: Plan| {
        let runtimes = engine::process_runtimes(process_env(dir.path()));
        let mut options = EngineOptions::new(plan, Arc::clone(&store) as Arc<dyn Store>, runtimes);
        options.coordinator_env = env();
        options.keep_open = true;
        let (engine, handle) = Engine::new(options);
        let shutdown = CancellationToken::new();
        (tokio::spawn(engine.run(shutdown.clone())), handle, shutdown)
    };
    let (first, handle, shutdown) = start(plan(&standin.url, LLM));
    let run_id = handle.run_id().wait_for(Option::is_some).await.unwrap().clone().unwrap();
    let task = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Some(task) = store.tasks(&run_id, &Default::default()).await.unwrap().into_iter().next() {
                return task;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the objective is planned within 30 s");
    super::common::ended(&store, task.id).await;
    shutdown.cancel();
    assert_eq!(first.await.unwrap().unwrap().state, RunState::Interrupted);

    let (second, handle, shutdown) = start(plan(&standin.url, LLM));
    let resumed = handle.run_id().wait_for(Option::is_some).await.unwrap().clone().unwrap();
    assert_eq!(resumed, run_id, "the same run, resumed");
    // A command answered after the open: the objectives were looked at by then.
    let again = handle.plan_objective("docs".into(), "Release notes for 1.2, reviewed".into()).await;
    assert!(matches!(again, Err(Error::AlreadyPlanned(_))), "{again:?}");
    shutdown.cancel();
    second.await.unwrap().unwrap();
    assert_eq!(standin.received().len(), 1, "asked once, by the first start");
    assert_eq!(store.tasks(&run_id, &Default::default()).await.unwrap().len(), 1);
}

/// Once the global budget is spent (here by the coordinator itself), the model is not asked:
/// the rules plan the next objective, saying why.
#[tokio::test]
async fn a_spent_budget_falls_back_without_asking() {
    let answer = json!([{"key": "draft", "title": "Draft", "requires": ["write"]}]);
    let standin = Standin::start(vec![proposal(answer)]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let text = format!("{LLM}\n\n[budget]\ndaily_tokens = 500\n");
    let mut plan = plan(&standin.url, &text);
    plan.workstreams[0].objective = None;
    let runtimes = engine::process_runtimes(process_env(dir.path()));
    let mut options = EngineOptions::new(plan, Arc::clone(&store) as Arc<dyn Store>, runtimes);
    options.coordinator_env = env();
    options.keep_open = true;
    let (engine, handle) = Engine::new(options);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));

    let first = handle.plan_objective("docs".into(), "Write the notes".into()).await.unwrap();
    assert_eq!(first.by, "llm", "820 tokens spent of 500");
    let second = handle.plan_objective("docs".into(), "Review the notes".into()).await.unwrap();
    assert_eq!(second.by, "rules");
    assert_eq!(second.fallback_reason.as_deref(), Some("budget: the global budget is spent until its reset"));
    assert_eq!(standin.received().len(), 1, "not asked the second time");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// Two agents that can both write, and a task that needs writing: the coordinator chooses.
fn choosing_plan(url: &str) -> Plan {
    let text = format!(
        r#"
[orchestration]
name = "assign"

[llm.providers.standin]
kind = "anthropic"
base_url = "{url}"
api_key_env = "STANDIN_KEY"

[coordinator]
{LLM}

[[agents]]
name = "first"
role = "Writes quickly"
capabilities = ["write"]
command = ["sh", "-c", "echo first"]

[[agents]]
name = "second"
role = "Writes about releases"
capabilities = ["write"]
command = ["sh", "-c", "echo second"]

[[tasks]]
key = "notes"
title = "Release notes for 1.2"
requires = ["write"]
"#
    );
    config::load("baton.toml", &text, &env()).unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test]
async fn the_coordinator_chooses_among_agents_that_can_take_a_task() {
    let answer = json!({"agent": "second", "reason": "it writes about releases"}).to_string();
    let standin = Standin::start(vec![Reply::Stream(standin::anthropic_text(&answer, 200, 20, 0, 0))]);
    let ended = run(choosing_plan(&standin.url), env()).await;
    assert_eq!(ended.summary.state, RunState::Succeeded, "{:?}", ended.summary);
    let tasks = ended.tasks().await;
    let [task] = tasks.as_slice() else { panic!("one task: {tasks:?}") };
    // The rules would have chosen `first` (declared first, equally idle).
    assert_eq!(task.assigned_agent.as_deref(), Some("second"));
    let events = ended.coordinator_events().await;
    let [Event { kind: EventKind::CoordinatorDecision { decision, task: id, input, output, usage, .. }, .. }] =
        events.as_slice()
    else {
        panic!("one decision: {events:?}")
    };
    assert_eq!((decision.as_str(), *id), ("assign", Some(task.id)));
    assert_eq!(input["candidates"], json!(["first", "second"]));
    assert_eq!(output["reason"], "it writes about releases");
    assert_eq!(usage["input_tokens"], 200);
    let asked = standin.received()[0].body.to_string();
    assert!(asked.contains("Writes about releases") && asked.contains("Release notes for 1.2"), "{asked}");
}

#[tokio::test]
async fn a_choice_of_an_agent_that_cannot_take_the_task_falls_back_to_the_rules() {
    let answer = json!({"agent": "nobody", "reason": "?"}).to_string();
    let standin = Standin::start(vec![Reply::Stream(standin::anthropic_text(&answer, 10, 5, 0, 0))]);
    let ended = run(choosing_plan(&standin.url), env()).await;
    assert_eq!(ended.summary.state, RunState::Succeeded, "{:?}", ended.summary);
    let tasks = ended.tasks().await;
    assert_eq!(tasks[0].assigned_agent.as_deref(), Some("first"));
    let events = ended.coordinator_events().await;
    let [Event { kind: EventKind::CoordinatorFallback { decision, reason, .. }, .. }] = events.as_slice() else {
        panic!("one fallback: {events:?}")
    };
    assert_eq!(decision, "assign");
    assert!(reason.contains("`nobody`, which is not one of the agents"), "{reason}");
}
