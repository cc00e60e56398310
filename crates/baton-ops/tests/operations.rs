//! The operations layer on its own: on the in-memory store, without an engine (the run is not
//! executing here). Authorization is decided by the one table for every operation, whatever
//! the interface; queries answer from the store; commands say that no `baton run` executes
//! the run.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use baton_core::Timestamp;
use baton_core::model::TaskId;
use baton_ops::agents::AgentCommand;
use baton_ops::auth::TABLE;
use baton_ops::events::{AuditParams, EventFilter};
use baton_ops::messages::{ChatMessage, MessageQuery};
use baton_ops::schedules::LimitInput;
use baton_ops::tasks::{CancelInput, ObjectiveInput, TaskInput, TaskQuery};
use baton_ops::{Action, Caller, ErrorKind, Grant, Ops, OpsOptions, Role};
use baton_store::{NewRun, Store};

const PLAN: &str = r#"
[orchestration]
name = "ops-test"

[[workstreams]]
name = "main"

[[agents]]
name = "builder"
role = "builds"
command = ["true"]

[[agents]]
name = "reviewer"
role = "reviews"
command = ["true"]

[[schedules]]
name = "nightly"
cron = "0 0 3 * * *"
task = { title = "nightly build" }
"#;

async fn ops() -> Ops {
    let plan = baton_core::config::load("baton.toml", PLAN, &BTreeMap::new()).expect("the test plan is valid");
    let store: Arc<dyn Store> = baton_store::open("sqlite::memory:", std::path::Path::new(".")).await.unwrap();
    let run = NewRun {
        id: "run-1".into(),
        name: plan.name.clone(),
        n_phases: plan.phases.len() as u32,
        owner: "test".into(),
        owner_pid: 1,
        owner_until: Timestamp(1_000),
    };
    store.create_run(run, Timestamp(0)).await.unwrap();
    Ops::new(OpsOptions {
        store,
        engine: None,
        run_id: "run-1".into(),
        plan,
        log_dir: std::env::temp_dir(),
        clock: baton_runtime::Clock::system(),
    })
}

fn caller(role: Role) -> Caller {
    Caller {
        subject: format!("test-{}", role.as_str()),
        role,
        agent: (role == Role::Agent).then(|| "builder".to_string()),
        token_id: "t".into(),
        expires_at: None,
    }
}

type Call = Box<dyn Fn(Ops, Caller) -> Pin<Box<dyn Future<Output = Result<(), baton_ops::Error>>>>>;

fn call<F, Fut, T>(f: F) -> Call
where
    F: Fn(Ops, Caller) -> Fut + 'static,
    Fut: Future<Output = Result<T, baton_ops::Error>> + 'static,
{
    Box::new(move |ops, caller| {
        let fut = f(ops, caller);
        Box::pin(async move { fut.await.map(|_| ()) })
    })
}

/// One call of every operation that takes a caller, with the action it needs; the agent
/// caller names its own agent where an operation is about an agent.
fn operations() -> Vec<(Action, &'static str, Call)> {
    fn input() -> TaskInput {
        serde_json::from_value(serde_json::json!({"title": "t"})).unwrap()
    }
    vec![
        (Action::ReadStatus, "status", call(|ops: Ops, c: Caller| async move { ops.status(&c).await })),
        (Action::ReadStatus, "plan", call(|ops: Ops, c: Caller| async move { ops.plan_view(&c).await })),
        (
            Action::ReadTasks,
            "tasks",
            call(|ops: Ops, c: Caller| async move { ops.tasks(&c, TaskQuery::default()).await }),
        ),
        (
            Action::CreateTasks,
            "create task",
            call(|ops: Ops, c: Caller| async move { ops.create_task(&c, input()).await }),
        ),
        (
            Action::CreateTasks,
            "create tasks",
            call(|ops: Ops, c: Caller| async move { ops.create_tasks(&c, vec![input()]).await }),
        ),
        (
            Action::ControlTasks,
            "cancel",
            call(|ops: Ops, c: Caller| async move { ops.cancel_task(&c, TaskId(1), CancelInput::default()).await }),
        ),
        (
            Action::PlanObjectives,
            "plan objective",
            call(|ops: Ops, c: Caller| async move {
                let input = ObjectiveInput { objective: "Ship it".into(), workstream: "build".into() };
                ops.plan_objective(&c, input).await
            }),
        ),
        (Action::ControlTasks, "retry", call(|ops: Ops, c: Caller| async move { ops.retry_task(&c, TaskId(1)).await })),
        (Action::ReadTasks, "conflicts", call(|ops: Ops, c: Caller| async move { ops.conflicts(&c).await })),
        (Action::ReadAgents, "agents", call(|ops: Ops, c: Caller| async move { ops.agents(&c).await })),
        (Action::ReadAgents, "agent", call(|ops: Ops, c: Caller| async move { ops.agent(&c, "builder").await })),
        (
            Action::ManageAgents,
            "create agent",
            call(|ops: Ops, c: Caller| async move {
                ops.create_agent(&c, &serde_json::json!({"name": "x", "role": "r", "command": ["true"]})).await
            }),
        ),
        (
            Action::ManageAgents,
            "update agent",
            call(|ops: Ops, c: Caller| async move {
                ops.update_agent(&c, "builder", serde_json::json!({"role": "r", "command": ["true"]})).await
            }),
        ),
        (
            Action::ManageAgents,
            "delete agent",
            call(|ops: Ops, c: Caller| async move { ops.delete_agent(&c, "builder").await }),
        ),
        (
            Action::ManageAgents,
            "stop agent",
            call(|ops: Ops, c: Caller| async move { ops.agent_command(&c, "builder", AgentCommand::Stop).await }),
        ),
        (
            Action::ReadAgentLogs,
            "agent log",
            call(|ops: Ops, c: Caller| async move { ops.agent_log(&c, "builder").await }),
        ),
        (
            Action::ReadAgentLogs,
            "agent terminal",
            // Not a terminal agent: invalid, once the caller may read it.
            call(|ops: Ops, c: Caller| async move { ops.agent_terminal(&c, "builder").await }),
        ),
        (
            Action::ReadMessages,
            "messages",
            call(|ops: Ops, c: Caller| async move { ops.messages(&c, MessageQuery::default()).await }),
        ),
        (
            Action::SendMessages,
            "chat",
            call(|ops: Ops, c: Caller| async move {
                ops.chat(&c, ChatMessage { text: "@reviewer hello".into(), data: None }).await
            }),
        ),
        (
            Action::ControlMessages,
            "redeliver",
            call(|ops: Ops, c: Caller| async move {
                ops.redeliver(&c, baton_ops::messages::RedeliverInput { ids: None, dead: true }).await
            }),
        ),
        (
            Action::ReadEvents,
            "events",
            call(|ops: Ops, c: Caller| async move { ops.events(&c, EventFilter::default()).await }),
        ),
        (Action::ReadBudgets, "budgets", call(|ops: Ops, c: Caller| async move { ops.budgets(&c).await })),
        (
            Action::SetBudgets,
            "set budget",
            call(|ops: Ops, c: Caller| async move {
                ops.set_budget(&c, "global", LimitInput { daily_tokens: Some(10), cost_usd: None }).await
            }),
        ),
        (Action::ReadSchedules, "schedules", call(|ops: Ops, c: Caller| async move { ops.schedules(&c).await })),
        (
            Action::ReadTools,
            "tools",
            call(|ops: Ops, c: Caller| async move { ops.tools(&c, baton_ops::tools::ToolQuery::default()).await }),
        ),
        (
            Action::CallTools,
            "call tool",
            call(|ops: Ops, c: Caller| async move { ops.call_tool(&c, "fs/read_file", serde_json::json!({})).await }),
        ),
        (
            Action::ControlSchedules,
            "pause schedule",
            call(|ops: Ops, c: Caller| async move { ops.set_schedule_paused(&c, "nightly", true).await }),
        ),
        (
            Action::Administer,
            "audit",
            call(|ops: Ops, c: Caller| async move { ops.audit(&c, AuditParams::default()).await }),
        ),
    ]
}

/// Every operation, for every role: refused (forbidden) exactly where the table says `None`;
/// otherwise a query answers from the store and a command says no engine executes the run.
#[tokio::test]
async fn every_operation_is_authorized_by_the_table_for_every_role() {
    let ops = ops().await;
    let mut checked = std::collections::BTreeSet::new();
    for (action, name, op) in operations() {
        checked.insert(action.name());
        for role in [Role::Admin, Role::Operator, Role::Viewer, Role::Agent] {
            let result = op(ops.clone(), caller(role)).await;
            match action.grant(role) {
                Grant::None => {
                    let error = result.expect_err(&format!("{name} as {}: refused", role.as_str()));
                    assert_eq!(error.kind(), ErrorKind::Forbidden, "{name} as {}: {error}", role.as_str());
                }
                Grant::All | Grant::Own => {
                    if let Err(error) = result {
                        assert_ne!(error.kind(), ErrorKind::Forbidden, "{name} as {}: {error}", role.as_str());
                    }
                }
            }
        }
    }
    // `ActAsAgent` is the agent-side protocol's, checked by `Caller::acting_as`;
    // `ReadMetrics` is the process's Prometheus exposition, which the server renders.
    let untested: Vec<&str> = TABLE
        .iter()
        .map(|(action, _)| action.name())
        .filter(|name| !checked.contains(name) && !["ActAsAgent", "ReadMetrics"].contains(name))
        .collect();
    assert!(untested.is_empty(), "actions without an operation in this test: {untested:?}");
}

/// Without an engine, queries read the store and every command names what to do.
#[tokio::test]
async fn without_an_engine_queries_answer_and_commands_say_no_run_executes() {
    let ops = ops().await;
    let admin = caller(Role::Admin);
    let status = ops.status(&admin).await.unwrap();
    assert_eq!((status.session_id.as_str(), status.state.as_str()), ("run-1", "running"));
    assert_eq!(ops.agents(&admin).await.unwrap().len(), 2);
    assert!(ops.tasks(&admin, TaskQuery::default()).await.unwrap().tasks.is_empty());
    let error = ops.create_task(&admin, serde_json::from_value(serde_json::json!({"title": "t"})).unwrap()).await;
    let error = error.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert_eq!(
        error.message(),
        "no `baton run` is executing run run-1 here: start it with `baton run`; commands change a running run"
    );
    let health = ops.health().await;
    assert!(!health.is_healthy(), "no engine executes the unfinished run: {health:?}");
}

/// An agent caller reads its own things only, whichever operation it asks.
#[tokio::test]
async fn an_agent_reads_its_own_things_only() {
    let ops = ops().await;
    let agent = caller(Role::Agent);
    let other = |error: baton_ops::Error| (error.kind(), error.message().to_string());
    let query = TaskQuery { agent: Some("reviewer".into()), ..TaskQuery::default() };
    assert_eq!(
        other(ops.tasks(&agent, query).await.unwrap_err()),
        (ErrorKind::Forbidden, "this token reads the tasks of agent `builder` only, not of `reviewer`".into())
    );
    let query = MessageQuery { agent: Some("reviewer".into()), ..MessageQuery::default() };
    assert_eq!(ops.messages(&agent, query).await.unwrap_err().kind(), ErrorKind::Forbidden);
    let filter = EventFilter { agent: Some("reviewer".into()), ..EventFilter::default() };
    assert_eq!(ops.events(&agent, filter).await.unwrap_err().kind(), ErrorKind::Forbidden);
    assert_eq!(ops.agent_log(&agent, "reviewer").await.unwrap_err().kind(), ErrorKind::Forbidden);
    assert!(ops.agent_log(&agent, "builder").await.is_ok());
    // Bad input is the caller's, whoever it is: a typo in an event type.
    let filter = EventFilter { kinds: Some("TaskCompletd".into()), ..EventFilter::default() };
    assert_eq!(ops.events(&caller(Role::Admin), filter).await.unwrap_err().kind(), ErrorKind::Invalid);
}
