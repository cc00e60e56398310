//! Where a command's data comes from, chosen once per command: a running `baton serve`
//! (through its HTTP API) when one answers, else the store directly. The commands then print
//! the same records the same way, whichever source gave them.

use baton_core::config::{self, Plan};
use baton_core::model::{NewTask, Priority, RunRecord, TaskRef, TaskState};
use std::sync::Arc;

use baton_core::task::TaskInput;
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

/// The task `baton task add` describes, as every source of tasks describes one: a server
/// checks it against its plan, else [`new_task`] does against the loaded one.
pub(super) fn task_input(args: &TaskArgs) -> Result<TaskInput, Failure> {
    let input = match &args.input {
        Some(text) => {
            Some(serde_json::from_str(text).map_err(|error| Failure::usage(format!("--input is not JSON: {error}")))?)
        }
        None => None,
    };
    let priority: Option<Priority> = match &args.priority {
        Some(text) => Some(
            serde_json::from_value(serde_json::Value::String(text.clone()))
                .map_err(|_| Failure::usage(format!("unknown priority `{text}`; use critical, high, medium or low")))?,
        ),
        None => None,
    };
    Ok(TaskInput {
        key: args.key.clone(),
        title: args.title.clone(),
        description: args.description.clone().unwrap_or_default(),
        workstream: args.workstream.clone(),
        input,
        requires: args.requires.clone(),
        agent: args.agent.clone(),
        depends_on: args.depends_on.iter().map(|text| task_ref(text)).collect(),
        priority,
        max_attempts: args.max_attempts,
        timeout: args.timeout.map(|timeout| format!("{}ms", timeout.as_millis())),
        resources: args.resources.clone(),
        estimated_tokens: args.estimated_tokens,
    })
}

/// The key a task gets: its own, or the one derived from its title.
pub(super) fn key_of(input: &TaskInput) -> String {
    input.key.clone().unwrap_or_else(|| config::slug(&input.title))
}

/// A task named on the command line: a number is an id, anything else a key.
fn task_ref(text: &str) -> TaskRef {
    match text.trim().parse::<i64>() {
        Ok(id) => TaskRef::Id(baton_core::model::TaskId(id)),
        Err(_) => TaskRef::Key(text.trim().to_string()),
    }
}

/// The task, checked against the plan as the server would check it, before it is queued for
/// the engine (which would only log the mistake); also a budget it could never fit.
pub(super) fn new_task(input: TaskInput, plan: &Plan, config_path: &std::path::Path) -> Result<NewTask, Failure> {
    let task = baton_core::task::new_task(input, plan.into()).map_err(|error| Failure::usage(error.to_string()))?;
    if let Some(tokens) = task.estimated_tokens
        && let Some(problem) = plan.budget.never_fits(task.workstream.as_deref(), tokens)
    {
        return Err(Failure::usage(format!("{problem} (the budgets of {})", config_path.display())));
    }
    Ok(task)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{Command, TaskAction};

    fn input(args: &[&str]) -> TaskInput {
        let cli = Cli::try_parse_from(["baton", "task", "add"].iter().chain(args)).unwrap();
        let Command::Task { action: TaskAction::Add(args) } = cli.command else { panic!("task add") };
        task_input(&args).unwrap()
    }

    /// `baton task add` sends the fields it was given and nothing else: the defaults are
    /// `baton_core::task::new_task`'s, as for every source (its table test).
    #[test]
    fn task_add_flags_are_the_fields_of_a_task_input() {
        let minimal = input(&["Compile the crate", "--workstream", "build"]);
        let expected =
            TaskInput { title: "Compile the crate".into(), workstream: Some("build".into()), ..TaskInput::default() };
        assert_eq!(minimal, expected);
        let full = input(&[
            "t",
            "--input",
            r#"{"a":1}"#,
            "--priority",
            "low",
            "--timeout",
            "90s",
            "--depends-on",
            "7,build",
            "--max-attempts",
            "5",
        ]);
        assert_eq!(full.input, Some(serde_json::json!({"a": 1})));
        assert_eq!(full.priority, Some(Priority::Low));
        assert_eq!(full.timeout.as_deref(), Some("90000ms"));
        assert_eq!(full.depends_on, vec![TaskRef::Id(baton_core::model::TaskId(7)), TaskRef::Key("build".into())]);
        assert_eq!(full.max_attempts, Some(5));
    }
}
