//! Where a command's data comes from, chosen once per command: a running `baton serve`
//! (through its HTTP API) when one answers, else the store directly. The commands then print
//! the same records the same way, whichever source gave them.

use anyhow::Context as _;

use baton_core::config::{self, Plan};
use baton_core::model::{NewTask, Priority, RunRecord, TaskRef, TaskState};
use std::sync::Arc;

use baton_store::Store;

use super::{Loaded, existing_store, find_run, load};
use crate::client::Client;
use crate::{Cli, Failure, TaskArgs};

pub(super) enum Source {
    /// A running `baton serve` of this plan: it serves one run, its own.
    Server { loaded: Loaded, client: Client },
    /// The store, and the run the command is about.
    Store { loaded: Loaded, store: Arc<dyn Store>, run: RunRecord },
}

impl Source {
    /// The server when one answers (see [`Client::connect`]) and serves the run asked for;
    /// else the store and the run (`run`, or the plan's latest).
    pub(super) async fn open(cli: &Cli, run: Option<&str>) -> Result<Source, Failure> {
        let loaded = load(cli)?;
        if let Some(client) = Client::connect(cli, &loaded.plan).await? {
            let Some(wanted) = run else { return Ok(Source::Server { loaded, client }) };
            let served = client.status().await?.session_id;
            if served == wanted {
                return Ok(Source::Server { loaded, client });
            }
            if cli.url.as_deref().is_some_and(|url| !url.trim().is_empty()) {
                return Err(Failure::usage(format!(
                    "the server at {} serves run {served}, not {wanted}; leave out --url (BATON_URL) to read run {wanted} from the store",
                    client.url()
                )));
            }
        }
        let store = existing_store(cli, &loaded)?;
        let run = find_run(&*store, &loaded.plan, run).await?;
        Ok(Source::Store { loaded, store, run })
    }
}

/// The run a server serves, as the store would record it, for `baton status`.
pub(super) async fn server_run(client: &Client, plan: &Plan) -> Result<RunRecord, Failure> {
    let status = client.status().await?;
    let state = status.state.parse().map_err(Failure::run)?;
    let mut n_tasks = 0;
    let mut n_finished = 0;
    for (name, n) in &status.tasks {
        n_tasks += n;
        if name.parse::<TaskState>().is_ok_and(TaskState::is_terminal) {
            n_finished += n;
        }
    }
    // The run started with its first event.
    let first = client.events(0, None, 1).await?;
    let now = baton_runtime::Clock::system().now();
    let started_at = first.first().map_or(now, |event| event.at);
    Ok(RunRecord {
        id: status.session_id,
        name: plan.name.clone(),
        state,
        phase: status.phase,
        n_phases: status.n_phases,
        n_tasks,
        n_finished,
        started_at,
        ended_at: None,
        error: status.error,
        owner: Some(format!("baton serve at {}", client.url())),
        owner_pid: None,
        // It answered just now: it executes the run.
        owner_until: Some(now.plus(std::time::Duration::from_secs(60))),
    })
}

/// The task `baton task add` describes, checked as the engine would check it.
pub(super) fn new_task(args: &TaskArgs) -> Result<NewTask, Failure> {
    if args.title.trim().is_empty() {
        return Err(Failure::usage("the title must not be empty"));
    }
    let input = match &args.input {
        Some(text) => {
            serde_json::from_str(text).map_err(|error| Failure::usage(format!("--input is not JSON: {error}")))?
        }
        None => serde_json::Value::Null,
    };
    let priority: Priority = match &args.priority {
        Some(text) => serde_json::from_value(serde_json::Value::String(text.clone()))
            .map_err(|_| Failure::usage(format!("unknown priority `{text}`; use critical, high, medium or low")))?,
        None => Priority::default(),
    };
    let key = args.key.clone().or_else(|| Some(config::slug(&args.title))).filter(|key| !key.is_empty());
    Ok(NewTask {
        key,
        workstream: args.workstream.clone(),
        title: args.title.clone(),
        description: args.description.clone().unwrap_or_default(),
        input,
        requires: args.requires.clone(),
        agent: args.agent.clone(),
        depends_on: args.depends_on.iter().map(|text| task_ref(text)).collect(),
        priority,
        max_attempts: args.max_attempts.unwrap_or(3),
        timeout_ms: args.timeout.map(|timeout| timeout.as_millis() as u64),
        resources: args.resources.clone(),
        estimated_tokens: args.estimated_tokens,
    })
}

/// A task named on the command line: a number is an id, anything else a key.
fn task_ref(text: &str) -> TaskRef {
    match text.trim().parse::<i64>() {
        Ok(id) => TaskRef::Id(baton_core::model::TaskId(id)),
        Err(_) => TaskRef::Key(text.trim().to_string()),
    }
}

/// The body of `POST /tasks` for a task: a `[[tasks]]` entry as JSON.
pub(super) fn task_json(task: &NewTask) -> Result<serde_json::Value, Failure> {
    let depends_on = serde_json::to_value(&task.depends_on).context("serializing the task")?;
    Ok(serde_json::json!({
        "key": task.key,
        "title": task.title,
        "description": task.description,
        "workstream": task.workstream,
        "input": task.input,
        "requires": task.requires,
        "agent": task.agent,
        "depends_on": depends_on,
        "priority": task.priority,
        "max_attempts": task.max_attempts,
        "timeout": task.timeout_ms.map(|ms| format!("{ms}ms")),
        "resources": task.resources,
        "estimated_tokens": task.estimated_tokens,
    }))
}

/// Refuses a task the plan cannot run, before it is queued for the engine (which would only
/// log the mistake).
pub(super) fn check_against_plan(task: &NewTask, plan: &Plan, config_path: &std::path::Path) -> Result<(), Failure> {
    if let Some(agent) = &task.agent
        && plan.agent(agent).is_none()
    {
        let known: Vec<&str> = plan.agents.iter().map(|agent| agent.name.as_str()).collect();
        return Err(Failure::usage(format!(
            "no agent `{agent}` in {} (known: {})",
            config_path.display(),
            known.join(", ")
        )));
    }
    if let Some(workstream) = &task.workstream
        && plan.workstream(workstream).is_none()
    {
        let known: Vec<&str> = plan.workstreams.iter().map(|ws| ws.name.as_str()).collect();
        return Err(Failure::usage(format!(
            "no workstream `{workstream}` in {} (known: {})",
            config_path.display(),
            known.join(", ")
        )));
    }
    if let Some(tokens) = task.estimated_tokens
        && let Some(problem) = plan.budget.never_fits(task.workstream.as_deref(), tokens)
    {
        return Err(Failure::usage(format!("{problem} (the budgets of {})", config_path.display())));
    }
    Ok(())
}
