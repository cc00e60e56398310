//! Where a command's data comes from, chosen once per command: the API of the process
//! executing the run (`baton serve` at its address, or the socket beside the store that
//! `baton run` and `baton serve` open) when one answers, else the store directly. The read
//! commands then print the same records the same way, whichever source gave them; a command
//! that changes the run needs the API ([`front_door`]): the process executing a run is the only
//! writer of its state.

use baton_core::config::{self, Plan};
use baton_core::model::{Priority, RunRecord, TaskRef, TaskState};
use std::sync::Arc;

use baton_core::task::TaskInput;
use baton_store::Store;

use super::{Loaded, existing_store, find_run, load, socket_path};
use crate::client::Client;
use crate::{Cli, Failure, TaskArgs};

pub(super) enum Source {
    /// The API of a running `baton serve` or `baton run` of this plan: it serves one run, its
    /// own.
    Server { loaded: Loaded, client: Client },
    /// The store, and the run the command is about.
    Store { loaded: Loaded, store: Arc<dyn Store>, run: RunRecord },
}

impl Source {
    /// The server when one answers (see [`Client::connect`]) and serves the run asked for;
    /// else the store and the run (`run`, or the plan's latest).
    pub(super) async fn open(cli: &Cli, run: Option<&str>) -> Result<Source, Failure> {
        let loaded = load(cli)?;
        let socket = socket_path(cli, &loaded)?;
        if let Some(client) = Client::connect(cli, &loaded.plan, socket.as_deref()).await? {
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

/// The API of the process executing the run (`run`, or the plan's latest), for a command
/// that changes it; a usage error saying so when no process executes it.
pub(super) async fn front_door(cli: &Cli, run: Option<&str>) -> Result<(Loaded, Client), Failure> {
    match Source::open(cli, run).await? {
        Source::Server { loaded, client } => Ok((loaded, client)),
        Source::Store { run, .. } if run.state.is_finished() => {
            Err(Failure::usage(format!("run {} has ended ({}); only a running run takes commands", run.id, run.state)))
        }
        Source::Store { loaded, run, .. } => {
            let now = baton_runtime::Clock::system().now();
            match &run.owner {
                Some(owner) if run.owner_until.is_some_and(|until| until > now) => {
                    let socket = socket_path(cli, &loaded)?.map_or_else(
                        || "no socket: the store is in memory".to_string(),
                        |path| path.display().to_string(),
                    );
                    Err(Failure::usage(format!(
                        "run {} is executed by {owner}, but its API answers neither at the configured server nor at {socket}; pass its address with --url",
                        run.id
                    )))
                }
                _ => Err(Failure::usage(format!(
                    "no `baton run` is executing run {}: start it with `baton run`; commands change a running run",
                    run.id
                ))),
            }
        }
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
        owner: Some(client.served_by()),
        owner_pid: None,
        // It answered just now: it executes the run.
        owner_until: Some(now.plus(std::time::Duration::from_secs(60))),
    })
}

/// The task `baton task add` describes, as every source of tasks describes one; the engine's
/// API checks it against the running plan.
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
