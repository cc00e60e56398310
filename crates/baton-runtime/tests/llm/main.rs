//! LLM agents end to end, against a stand-in provider speaking the real wire formats: the
//! engine in-process with an LLM agent that calls Baton's tools (a sub-task that then runs),
//! usage in the budgets, the transcript in the store, the API key nowhere it could be read;
//! and, with the agent alone on a paused clock, retries that honour `retry-after`, a budget
//! that runs out between turns, and a cancellation that drops the stream. `mcp`: a real MCP
//! server's tool and a Baton tool in one task (with `BATON_TEST_MCP=1`).

#[path = "../common/mod.rs"]
mod common;
mod coordinator;
mod mcp;
// The one stand-in provider, which lives in the server (it serves HTTP): compiled in here, as
// the runtime cannot depend on the server.
#[path = "../../../baton-server/src/standin.rs"]
#[allow(dead_code, reason = "the benchmark's responder mode is not used here")]
mod standin;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::budget::Scope;
use baton_core::config::{self, AgentKind, Plan};
use baton_core::model::{TaskRecord, TaskState};
use baton_core::transcript::Role;
use baton_runtime::agent::{AgentContext, AgentEvent, AgentRequest, AgentRuntime, Attempt};
use baton_runtime::engine::{self, Engine, EngineOptions};
use baton_runtime::llm::http::RetryPolicy;
use baton_runtime::llm::{LlmAgent, LlmOptions};
use baton_runtime::process::ProcessEnv;
use baton_store::sqlite::SqliteStore;
use baton_store::{EventQuery, Store};

use standin::{Reply, Standin};

const KEY: &str = "sk-standin-secret-0123456789";

fn plan(kind: &str, url: &str, extra: &str) -> Plan {
    let text = format!(
        r#"
[orchestration]
name = "llm"

[llm.providers.standin]
kind = "{kind}"
base_url = "{url}"
api_key_env = "STANDIN_KEY"

[[agents]]
name = "lead"
role = "Team lead"
runtime = "llm"
provider = "standin"
model = "claude-sonnet-4-5"
capabilities = ["lead"]
tools = ["baton/*"]
max_tokens = 1000

[[agents.objectives]]
description = "Split the work"

[[agents]]
name = "worker"
capabilities = ["work"]
command = ["sh", "-c", "echo done"]
{extra}
"#
    );
    config::load("baton.toml", &text, &env()).unwrap_or_else(|error| panic!("{error}"))
}

fn env() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PATH".to_string(), std::env::var("PATH").expect("PATH is set")),
        ("STANDIN_KEY".to_string(), KEY.to_string()),
    ])
}

fn process_env(dir: &std::path::Path) -> ProcessEnv {
    ProcessEnv {
        base_dir: dir.to_path_buf(),
        log_dir: dir.join("logs"),
        env: env(),
        registry: None,
        api: None,
        mcp_servers: Vec::new(),
    }
}

struct Run {
    store: Arc<SqliteStore>,
    handle: engine::EngineHandle,
    shutdown: CancellationToken,
    run_id: String,
    log_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(plan: Plan) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    let runtimes = engine::process_runtimes(process_env(dir.path()));
    let mut options = EngineOptions::new(plan, Arc::clone(&store) as Arc<dyn Store>, runtimes);
    options.keep_open = true;
    let (engine, handle) = Engine::new(options);
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.run(shutdown.clone()));
    let run_id = handle.run_id().wait_for(Option::is_some).await.expect("a run").clone().expect("an id");
    Run { store, handle, shutdown, run_id, log_dir: dir.path().join("logs"), _dir: dir }
}

fn lead_task(title: &str, input: Value) -> baton_core::model::NewTask {
    let mut task = common::task(title, "lead");
    task.input = input;
    task
}

#[tokio::test]
async fn an_llm_agent_creates_a_sub_task_which_runs_then_answers() {
    let standin = Standin::start(vec![
        Reply::Stream(standin::anthropic_tools(
            &[("toolu_1", "baton__create_tasks", json!({"tasks": [{"title": "Sub", "requires": ["work"]}]}))],
            500,
            40,
        )),
        Reply::Stream(standin::anthropic_text("All planned.", 600, 10, 300, 20)),
    ]);
    let plan = plan("anthropic", &standin.url, "");
    let shown_plan = serde_json::to_string(&plan).unwrap();
    let run = start(plan).await;
    let ids = run.handle.create_tasks(vec![lead_task("Plan the release", json!({"version": "1.2"}))]).await.unwrap();
    let task = common::ended(&run.store, ids[0]).await;
    assert_eq!((task.state, task.result.clone()), (TaskState::Succeeded, Some(json!("All planned."))), "{task:?}");

    // The sub-task joined the run and ran on the process agent.
    let tasks = run.store.tasks(&run.run_id, &Default::default()).await.unwrap();
    let sub = tasks.iter().find(|task| task.title == "Sub").expect("the sub-task");
    assert_eq!(common::ended(&run.store, sub.id).await.state, TaskState::Succeeded);

    // The provider was asked as documented, with the key in its header only.
    let received = standin.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].path, "/v1/messages");
    assert_eq!(received[0].headers["x-api-key"], KEY);
    assert_eq!(received[0].headers["anthropic-version"], "2023-06-01");
    let first = &received[0].body;
    assert_eq!((first["model"].as_str(), first["stream"].as_bool()), (Some("claude-sonnet-4-5"), Some(true)));
    let system = first["system"].as_str().unwrap();
    assert!(system.contains("Role: Team lead") && system.contains("- Split the work"), "{system}");
    let user = first["messages"][0]["content"].as_str().unwrap();
    assert!(user.contains("Plan the release") && user.contains("\"version\": \"1.2\""), "{user}");
    let tool_names: Vec<&str> =
        first["tools"].as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    assert!(tool_names.contains(&"baton__create_tasks") && tool_names.contains(&"baton__get_task"), "{tool_names:?}");
    let second = &received[1].body["messages"];
    assert_eq!(second[2]["content"][0]["tool_use_id"], "toolu_1");
    assert!(second[2]["content"][0]["content"].as_str().unwrap().starts_with("created tasks"), "{second}");

    // Usage: exact counts, in the budgets of the agent and the task, with their cost.
    let usage = run.store.usage(&run.run_id, baton_core::Timestamp(0)).await.unwrap();
    let lead = usage.iter().find(|record| record.scope == Scope::Agent("lead".into())).expect("the agent's usage");
    assert_eq!(lead.spent.tokens, 500 + 40 + 600 + 10 + 300 + 20);
    let expected_cost = (500.0 * 3.0 + 40.0 * 15.0 + 600.0 * 3.0 + 10.0 * 15.0 + 300.0 * 0.3 + 20.0 * 3.75) / 1e6;
    assert!((lead.spent.cost_usd - expected_cost).abs() < 1e-12, "{} != {expected_cost}", lead.spent.cost_usd);

    // The transcript, durable, in order.
    let transcript = run.store.transcript(ids[0]).await.unwrap();
    let roles: Vec<Role> = transcript.iter().map(|entry| entry.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool, Role::Assistant]);
    assert_eq!(transcript[2].tool_calls[0].name, "baton/create_tasks");
    assert_eq!(transcript[2].usage.as_ref().unwrap()["input_tokens"], 500);
    assert_eq!(transcript[3].tool_call_id.as_deref(), Some("toolu_1"));
    assert_eq!(transcript[4].content, "All planned.");
    assert!(transcript.iter().all(|entry| entry.attempt == 1));
    let log = std::fs::read_to_string(run.log_dir.join("lead.log")).expect("the agent's log");
    assert!(log.starts_with(&format!("--- task {} `Plan the release` attempt 1\n[system] ", ids[0])), "{log}");
    assert!(log.contains("[assistant] Let me do that.\n  -> baton/create_tasks"), "{log}");

    // The key is in none of what Baton shows.
    let events =
        run.store.events(&EventQuery { run_id: Some(run.run_id.clone()), ..Default::default() }).await.unwrap();
    let shown = [serde_json::to_string(&events).unwrap(), serde_json::to_string(&transcript).unwrap(), shown_plan];
    for text in shown {
        assert!(!text.contains(KEY), "the API key leaked: {text}");
    }
    run.shutdown.cancel();
}

#[tokio::test]
async fn an_openai_compatible_agent_calls_tools_in_parallel_and_answers_json() {
    let standin = Standin::start(vec![
        Reply::Stream(standin::openai_tools(
            &[
                ("call_a", "baton__report_progress", json!({"fraction": 0.5, "message": "halfway"})),
                ("call_b", "baton__get_task", json!({"id": 1})),
            ],
            100,
            20,
        )),
        Reply::Stream(standin::openai_text("```json\n{\"verdict\": \"ship\"}\n```", 200, 5, 50)),
    ]);
    let run = start(plan("openai", &standin.url, "")).await;
    let mut prep = common::task("Prepare", "work");
    prep.key = Some("prep".into());
    let mut review = lead_task("Review", json!({"response_format": "json"}));
    review.depends_on = vec![baton_core::model::TaskRef::Key("prep".into())];
    let ids = run.handle.create_tasks(vec![review, prep]).await.unwrap();
    let task = common::ended(&run.store, ids[0]).await;
    assert_eq!((task.state, task.result.clone()), (TaskState::Succeeded, Some(json!({"verdict": "ship"}))), "{task:?}");
    let received = standin.received();
    assert_eq!(received[0].path, "/chat/completions");
    assert_eq!(received[0].headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(received[0].body["stream_options"], json!({"include_usage": true}));
    let user = received[0].body["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains(&format!("Result of task {} (Prepare), which this task depends on:\ndone", ids[1])),
        "{user}"
    );
    let tool_messages: Vec<&Value> =
        received[1].body["messages"].as_array().unwrap().iter().filter(|message| message["role"] == "tool").collect();
    assert_eq!(tool_messages.len(), 2);
    assert_eq!(tool_messages[0]["content"], "noted");
    let read: Value = serde_json::from_str(tool_messages[1]["content"].as_str().unwrap()).unwrap();
    assert_eq!((read["id"].as_i64(), read["state"].as_str()), (Some(ids[0].0), Some("running")));
    let usage = run.store.usage(&run.run_id, baton_core::Timestamp(0)).await.unwrap();
    let spent = usage.iter().find(|record| record.scope == Scope::Task(ids[0])).expect("the task's usage").spent;
    assert_eq!(spent.tokens, 100 + 20 + 200 + 5);
    let events = run.store.events(&EventQuery { task: Some(ids[0]), ..Default::default() }).await.unwrap();
    assert!(
        events.iter().any(|event| matches!(&event.kind, baton_core::EventKind::TaskProgress { message: Some(message), .. } if message == "halfway")),
        "progress reported"
    );
    run.shutdown.cancel();
}

#[tokio::test]
async fn get_task_reads_the_agents_own_tasks_its_sub_tasks_and_dependencies_only() {
    // In a fresh store the tasks are 1 (the lead's), 2 (its dependency), 3 (another's), and
    // the sub-task the lead creates is 4.
    let get = |id: i64| (format!("get_{id}"), json!({"id": id}));
    let reads: Vec<(String, Value)> = [1, 2, 3, 4, 99].into_iter().map(get).collect();
    let calls: Vec<(&str, &str, Value)> =
        reads.iter().map(|(id, args)| (id.as_str(), "baton__get_task", args.clone())).collect();
    let standin = Standin::start(vec![
        Reply::Stream(standin::anthropic_tools(
            &[
                ("toolu_sub", "baton__create_tasks", json!({"tasks": [{"title": "Sub", "requires": ["work"]}]})),
                // A dependency's result would reach the new task's prompt: refused for task 3.
                (
                    "toolu_peek",
                    "baton__create_tasks",
                    json!({"tasks": [{"title": "Peek", "requires": ["work"], "agent": "lead", "depends_on": [3]}]}),
                ),
            ],
            100,
            10,
        )),
        Reply::Stream(standin::anthropic_tools(&calls, 100, 10)),
        Reply::Stream(standin::anthropic_text("Read what I may.", 100, 5, 0, 0)),
    ]);
    let run = start(plan("anthropic", &standin.url, "")).await;
    let mut prep = common::task("Prepare", "work");
    prep.key = Some("prep".into());
    let mut review = lead_task("Review", Value::Null);
    review.depends_on = vec![baton_core::model::TaskRef::Key("prep".into())];
    let other = common::task("Someone else's", "work");
    let ids = run.handle.create_tasks(vec![review, prep, other]).await.unwrap();
    assert_eq!(ids.iter().map(|id| id.0).collect::<Vec<_>>(), [1, 2, 3]);
    let task = common::ended(&run.store, ids[0]).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let tasks = run.store.tasks(&run.run_id, &Default::default()).await.unwrap();
    let sub = tasks.iter().find(|task| task.title == "Sub").expect("the sub-task");
    assert_eq!((sub.id.0, sub.parent), (4, Some(ids[0])), "a sub-task records its parent");
    assert_eq!(tasks.iter().find(|task| task.id == ids[2]).unwrap().parent, None);

    let received = standin.received();
    let results = received[2].body["messages"][4]["content"].as_array().unwrap().clone();
    let said: Vec<(bool, String)> = results
        .iter()
        .map(|result| (result["is_error"].as_bool().unwrap_or(false), result["content"].as_str().unwrap().to_string()))
        .collect();
    for (idx, id) in [1, 2, 4].into_iter().enumerate() {
        let (is_error, text) = &said[[0, 1, 3][idx]];
        assert!(!is_error, "task {id} is readable: {text}");
        assert_eq!(serde_json::from_str::<Value>(text).unwrap()["id"], id);
    }
    // Refused as a task that is not there: which tasks exist is not the agent's to know.
    assert_eq!(said[2], (true, "invalid: no task 3 in this run".to_string()));
    let created = received[1].body["messages"][2]["content"].as_array().unwrap().clone();
    assert_eq!(created[1]["is_error"], true, "{created:?}");
    let refusal = created[1]["content"].as_str().unwrap();
    assert!(
        refusal.starts_with("refused: a task you create may depend on task 3 only if you may read it"),
        "{refusal}"
    );
    assert!(!tasks.iter().any(|task| task.title == "Peek"));
    assert_eq!(said[4], (true, "invalid: no task 99 in this run".to_string()));
    run.shutdown.cancel();
}

#[tokio::test]
async fn a_budget_that_runs_out_stops_the_conversation_between_turns() {
    // The first turn spends 2 600 of 4 000 tokens: what is left cannot hold the second turn
    // (1 000 output tokens and the prompt).
    let standin = Standin::start(vec![Reply::Stream(standin::anthropic_tools(
        &[("toolu_1", "baton__report_progress", json!({"message": "working"}))],
        2500,
        100,
    ))]);
    let run = start(plan("anthropic", &standin.url, "[budget]\ndaily_tokens = 4000\n")).await;
    let ids = run.handle.create_tasks(vec![lead_task("Plan", Value::Null)]).await.unwrap();
    let task = common::ended(&run.store, ids[0]).await;
    assert_eq!(task.state, TaskState::Dead, "{task:?}");
    let error = task.error.unwrap_or_default();
    assert!(error.starts_with("stopped before turn 2: "), "{error}");
    assert!(error.contains("global"), "says which budget: {error}");
    assert_eq!(standin.received().len(), 1, "no second call");
    run.shutdown.cancel();
}

#[tokio::test]
async fn a_budget_that_refuses_the_first_turn_makes_the_task_wait_without_losing_an_attempt() {
    let standin = Standin::start(vec![Reply::Stream(standin::anthropic_text("Done at last.", 100, 5, 0, 0))]);
    let run = start(plan("anthropic", &standin.url, "")).await;
    // Less than one turn asks for (max_tokens = 1000, and the prompt), yet within a period's
    // global budget: the task can run once the limit is raised (or at the reset).
    run.handle.set_budget("agent:lead".into(), Some(1000), None).await.unwrap();
    let ids = run.handle.create_tasks(vec![lead_task("Plan", Value::Null)]).await.unwrap();
    let query = EventQuery { task: Some(ids[0]), ..Default::default() };
    let wait = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let events = run.store.events(&query).await.unwrap();
            let said = events.iter().find_map(|event| match &event.kind {
                baton_core::EventKind::TaskBudgetWait { scope, reason, .. } => Some((scope.clone(), reason.clone())),
                _ => None,
            });
            if let Some(said) = said {
                return said;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the task says it waits for budget");
    assert_eq!(wait.0, "agent:lead");
    assert!(wait.1.starts_with("its first model call needs "), "{}", wait.1);
    let waiting = run.store.task(ids[0]).await.unwrap().unwrap();
    assert_eq!((waiting.state, waiting.attempt), (TaskState::Ready, 0), "the attempt was not counted: {waiting:?}");
    assert!(standin.received().is_empty(), "the provider was not called");
    assert!(run.store.transcript(ids[0]).await.unwrap().is_empty(), "nothing was said");

    run.handle.set_budget("agent:lead".into(), Some(100_000), None).await.unwrap();
    let task = common::ended(&run.store, ids[0]).await;
    assert_eq!((task.state, task.attempt), (TaskState::Succeeded, 1), "{task:?}");
    let roles: Vec<Role> = run.store.transcript(ids[0]).await.unwrap().iter().map(|entry| entry.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant]);
    run.shutdown.cancel();
}

#[tokio::test]
async fn a_first_turn_larger_than_a_whole_periods_budget_fails_the_attempt_saying_so() {
    let standin = Standin::start(Vec::new());
    let run = start(plan("anthropic", &standin.url, "[budget]\ndaily_tokens = 1000\n")).await;
    let ids = run.handle.create_tasks(vec![lead_task("Plan", Value::Null)]).await.unwrap();
    let task = common::ended(&run.store, ids[0]).await;
    assert_eq!(task.state, TaskState::Dead, "{task:?}");
    let error = task.error.unwrap_or_default();
    assert!(error.starts_with("stopped before turn 1: budget `global`"), "{error}");
    assert!(error.contains("its first model call needs") && error.contains("could never start"), "{error}");
    run.shutdown.cancel();
}

/// The agent alone, its requests answered at once (budget granted, transcripts taken).
struct Alone {
    agent: LlmAgent,
    usage: mpsc::UnboundedReceiver<AgentEvent>,
}

fn agent_alone(standin: &Standin, retry: RetryPolicy) -> Alone {
    let plan = plan("anthropic", &standin.url, "");
    let spec = plan.agent("lead").unwrap().clone();
    let AgentKind::Llm(llm) = spec.kind.clone() else { panic!("an LLM agent") };
    let dir = std::env::temp_dir();
    let options = LlmOptions {
        retry,
        clock: baton_runtime::Clock::starting_at(baton_core::Timestamp(1_700_000_000_000)),
        // On the paused clock a read timeout would fire while the stand-in's bytes are on
        // their way.
        read_timeout: None,
    };
    let agent = LlmAgent::new(&spec, llm, &process_env(&dir), None, options);
    let (events, usage) = mpsc::unbounded_channel();
    let (requests, mut asked) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(request) = asked.recv().await {
            match request {
                AgentRequest::ReserveBudget { tokens, reply, .. } => {
                    let _ = reply.send(Ok(baton_core::sched::Reservation { tokens, remaining: None }));
                }
                AgentRequest::Transcript { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                _ => {}
            }
        }
    });
    let context = AgentContext { run_id: "r".into(), events, requests };
    let started = futures::executor::block_on(agent.start(context));
    assert_eq!(started, Ok(()));
    Alone { agent, usage }
}

fn attempt() -> Attempt {
    let task: TaskRecord = serde_json::from_value(json!({
        "id": 1, "run_id": "r", "key": "t", "workstream": null, "title": "Answer", "description": "", "input": {},
        "requires": [], "agent": null, "depends_on": [], "priority": "medium", "max_attempts": 1, "timeout_ms": null,
        "resources": [], "state": "running", "attempt": 1, "assigned_agent": "lead", "lease_owner": null,
        "lease_expires_at": null, "not_before": null, "result": null, "error": null, "created_at": 0, "updated_at": 0,
        "finished_at": null
    }))
    .expect("a task record");
    Attempt { run_id: "r".into(), agent: "lead".into(), task }
}

#[tokio::test(start_paused = true)]
async fn retries_honour_retry_after_then_give_up_after_a_bounded_time() {
    let overloaded = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_string();
    let text = standin::anthropic_text("fine", 10, 2, 0, 0);
    let standin = Standin::start(vec![
        Reply::Status(
            429,
            vec![("retry-after", "30".into())],
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#.into(),
        ),
        Reply::Status(529, Vec::new(), overloaded.clone()),
        Reply::Cut(text[..text.len() / 2].to_string()),
        Reply::Stream(text),
    ]);
    let mut alone = agent_alone(&standin, RetryPolicy::default());
    let started = tokio::time::Instant::now();
    let outcome = alone.agent.run(attempt(), CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Succeeded { result: json!("fine") });
    // The backoff doubles with each failure (1 s, 2 s, 4 s); the 429's `retry-after` replaces
    // the first wait: 30 s, then 2 s after the 529 and 4 s after the cut stream. (At least:
    // a paused clock also jumps to other timers while a request is under way.)
    assert!(started.elapsed() >= Duration::from_secs(36), "{:?}", started.elapsed());
    assert_eq!(standin.received().len(), 4);
    let Some(AgentEvent::Usage { usage, .. }) = alone.usage.recv().await else { panic!("usage reported") };
    assert_eq!((usage["input_tokens"].as_u64(), usage["output_tokens"].as_u64()), (Some(10), Some(2)));

    let always_overloaded = (0..20).map(|_| Reply::Status(529, Vec::new(), overloaded.clone())).collect();
    let standin = Standin::start(always_overloaded);
    let alone = agent_alone(&standin, RetryPolicy::default());
    let started = tokio::time::Instant::now();
    let outcome = alone.agent.run(attempt(), CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Failed { reason: "provider standin: 529 overloaded for 2m, gave up".into() });
    assert!(started.elapsed() >= Duration::from_secs(120), "{:?}", started.elapsed());

    let standin = Standin::start(vec![Reply::Status(
        401,
        Vec::new(),
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#.into(),
    )]);
    let outcome = agent_alone(&standin, RetryPolicy::default()).agent.run(attempt(), CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Failed { reason: "provider standin: 401 unauthorized: invalid x-api-key".into() });
    assert_eq!(standin.received().len(), 1, "not retried");
}

#[tokio::test]
async fn cancelling_an_attempt_drops_its_stream_at_once() {
    let gone = Arc::new(AtomicBool::new(false));
    let text = standin::anthropic_text("never finished", 10, 2, 0, 0);
    let standin = Standin::start(vec![Reply::Hang(text[..text.len() / 2].to_string(), Arc::clone(&gone))]);
    let alone = agent_alone(&standin, RetryPolicy::default());
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let cancel = cancel.clone();
        async move { alone.agent.run(attempt(), cancel).await }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while standin.received().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the call is made");
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), running).await.expect("it ends at once").unwrap();
    assert_eq!(outcome, Outcome::Failed { reason: "cancelled".into() });
    tokio::time::timeout(Duration::from_secs(10), async {
        while !gone.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the provider sees the connection closed");
}

#[test]
fn a_missing_key_fails_the_start_saying_which_variable() {
    let plan = plan("anthropic", "http://127.0.0.1:9", "");
    let spec = plan.agent("lead").unwrap().clone();
    let AgentKind::Llm(llm) = spec.kind.clone() else { panic!("an LLM agent") };
    let mut env = process_env(&std::env::temp_dir());
    env.env.remove("STANDIN_KEY");
    let agent = LlmAgent::new(&spec, llm, &env, None, LlmOptions::default());
    let (events, _) = mpsc::unbounded_channel();
    let (requests, _) = mpsc::unbounded_channel();
    let error = futures::executor::block_on(agent.start(AgentContext { run_id: "r".into(), events, requests }))
        .expect_err("no key");
    assert!(error.is_permanent());
    assert_eq!(
        error.message,
        "provider standin: the API key variable STANDIN_KEY is not set; export it, or point agent `lead` at another provider"
    );
}
