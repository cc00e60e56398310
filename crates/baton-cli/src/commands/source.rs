//! Where a command's data comes from, chosen once per command: the API of the process
//! executing the run (`baton serve` at its address, or the socket beside the store that
//! `baton run` and `baton serve` open) when one answers, else the store directly. Either way a
//! read command asks a [`Reader`] — the operations layer over the store, or the API, which is
//! the operations layer of the process executing the run — for the same view types, and
//! prints them one way. A command that changes the run needs the API ([`front_door`]): the
//! process executing a run is the only writer of its state.
//!
//! Through a server the local configuration is not needed: what a command shows comes from
//! the server, so an invalid baton.toml does not stop `baton status --url …`.

use std::path::PathBuf;
use std::sync::Arc;

use baton_core::Event;
use baton_core::config;
use baton_core::messages::Delivery;
use baton_core::model::{AgentRecord, Priority, RunRecord, TaskId, TaskRecord, TaskRef, TaskState};
use baton_core::task::TaskInput;
use baton_ops::conflicts::Conflicts;
use baton_ops::events::{AuditParams, EventFilter};
use baton_ops::messages::MessageQuery;
use baton_ops::schedules::{Budgets, ScheduleView};
use baton_ops::status::Status;
use baton_ops::tasks::{TaskDetail, TaskPage, TaskQuery};
use baton_ops::{Caller, Ops, OpsOptions};
use baton_store::{AuditEntry, Store, StoreUrl};

use super::{Loaded, existing_store, find_run, load, socket_path, store_dir};
use crate::client::{Client, Probe};
use crate::{Cli, Failure, TaskArgs};

/// Tasks per page when listing them all, and events per page of the history.
pub(super) const PAGE: u64 = 1000;

pub(super) enum Source {
    /// The API of a running `baton serve` or `baton run` of this plan: it serves one run, its
    /// own.
    Server { client: Client },
    /// The store, and the run the command is about, read through the operations layer (with
    /// no engine: queries only); `socket` is where the API of a process executing it would be.
    Store { ops: Ops, run: Box<RunRecord>, socket: Option<PathBuf> },
}

/// What a read command asks; the same view types whichever way they come.
pub(super) enum Reader<'a> {
    /// The operations layer over the store, as the local admin.
    Local(&'a Ops),
    /// The API of the process executing the run.
    Remote(&'a Client),
}

impl Source {
    /// The server when one answers (see [`Client::connect`]) and serves the run asked for;
    /// else the store and the run (`run`, or the plan's latest).
    pub(super) async fn open(cli: &Cli, run: Option<&str>) -> Result<Source, Failure> {
        let loaded = match load(cli) {
            Ok(loaded) => loaded,
            // No valid file: a server still answers for it, when one is named or the file
            // says where one is (`--url`, else what can be read of the file); else the
            // configuration's error stands.
            Err(invalid) => {
                let probe = Probe::from_file(cli);
                return match Client::connect(cli, probe.as_ref()).await {
                    Ok(Some(client)) => Source::served(cli, client, run).await?.ok_or(invalid),
                    Ok(None) => Err(invalid),
                    Err(failure) if cli.url.as_deref().is_some_and(|url| !url.trim().is_empty()) => Err(failure),
                    Err(_) => Err(invalid),
                };
            }
        };
        let socket = socket_path(cli, &loaded)?;
        let probe =
            Probe { name: loaded.plan.name.clone(), url: loaded.plan.server.url.clone(), socket: socket.clone() };
        if let Some(client) = Client::connect(cli, Some(&probe)).await?
            && let Some(source) = Source::served(cli, client, run).await?
        {
            return Ok(source);
        }
        let store = existing_store(cli, &loaded).await?;
        let run = find_run(&*store, &loaded.plan, run).await?;
        let ops = local_ops(cli, &loaded, store, &run)?;
        Ok(Source::Store { ops, run: Box::new(run), socket })
    }

    /// The server, when it serves the run asked for; `None` when it serves another and the
    /// store may have the one asked for.
    async fn served(cli: &Cli, client: Client, run: Option<&str>) -> Result<Option<Source>, Failure> {
        let Some(wanted) = run else { return Ok(Some(Source::Server { client })) };
        let served = client.status().await?.session_id;
        if served == wanted {
            return Ok(Some(Source::Server { client }));
        }
        if cli.url.as_deref().is_some_and(|url| !url.trim().is_empty()) {
            return Err(Failure::usage(format!(
                "the server at {} serves run {served}, not {wanted}; leave out --url (BATON_URL) to read run {wanted} from the store",
                client.url()
            )));
        }
        Ok(None)
    }

    pub(super) fn reader(&self) -> Reader<'_> {
        match self {
            Source::Server { client } => Reader::Remote(client),
            Source::Store { ops, .. } => Reader::Local(ops),
        }
    }

    /// Who executes the run, for people: the server answering, or the claim's owner in the
    /// store.
    pub(super) fn executed_by(&self, status: &Status) -> Option<String> {
        match self {
            Source::Server { client } => Some(client.served_by()),
            Source::Store { .. } => status.executed_by.clone(),
        }
    }
}

/// The operations on `run` over the store, with no engine: its queries answer from the store.
fn local_ops(cli: &Cli, loaded: &Loaded, store: Arc<dyn Store>, run: &RunRecord) -> Result<Ops, Failure> {
    Ok(Ops::new(OpsOptions {
        store,
        engine: None,
        run_id: run.id.clone(),
        plan: loaded.plan.clone(),
        log_dir: store_dir(cli, loaded)?.join("logs"),
        clock: baton_runtime::Clock::system(),
    }))
}

impl Probe {
    /// What a configuration that does not load still says of where its server is: the plan's
    /// name, `server.url` (or `server.listen`) and the store's socket, read leniently. `None`
    /// when the file is not even TOML or names no plan.
    fn from_file(cli: &Cli) -> Option<Probe> {
        let text = std::fs::read_to_string(&cli.config).ok()?;
        let value: toml::Table = text.parse().ok()?;
        let text_at =
            |table: &str, key: &str| -> Option<String> { value.get(table)?.get(key)?.as_str().map(str::to_string) };
        let name = text_at("orchestration", "name")?;
        let url = text_at("server", "url").unwrap_or_else(|| {
            // The default of `server.listen` (baton-core's config).
            format!("http://{}", text_at("server", "listen").unwrap_or_else(|| config::DEFAULT_LISTEN.to_string()))
        });
        // The default of `store.url` (baton-core's config).
        let store = cli
            .store
            .clone()
            .or_else(|| text_at("store", "url"))
            .unwrap_or_else(|| config::DEFAULT_STORE_URL.to_string());
        let base_dir: PathBuf =
            cli.config.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).into();
        let socket = StoreUrl::parse(&store, &base_dir).ok()?.path().map(baton_server::local::socket_path);
        Some(Probe { name, url, socket })
    }
}

/// Which of a run's events a command shows: about a task, of some types, about an agent.
#[derive(Debug, Clone, Default)]
pub(super) struct Wanted {
    pub(super) task: Option<TaskId>,
    /// Event types, comma-separated, as the API takes them.
    pub(super) kinds: Option<String>,
    pub(super) agent: Option<String>,
}

impl Wanted {
    /// The operations layer's filter (the API's query) for the events after `since`.
    pub(super) fn filter(&self, since: i64, limit: Option<u64>) -> EventFilter {
        EventFilter {
            since: Some(since),
            kinds: self.kinds.clone(),
            agent: self.agent.clone(),
            task: self.task.map(|id| id.0),
            limit,
        }
    }
}

impl Reader<'_> {
    fn caller() -> Caller {
        Caller::local()
    }

    pub(super) async fn status(&self) -> Result<Status, Failure> {
        match self {
            Reader::Local(ops) => Ok(ops.status(&Self::caller()).await?),
            Reader::Remote(client) => client.status().await,
        }
    }

    /// Every task that passes the filter, page after page.
    pub(super) async fn tasks(
        &self,
        state: Option<TaskState>,
        workstream: Option<&str>,
        agent: Option<&str>,
    ) -> Result<Vec<TaskRecord>, Failure> {
        let mut tasks = Vec::new();
        let mut after = None;
        loop {
            let query = TaskQuery {
                state,
                workstream: workstream.map(str::to_string),
                agent: agent.map(str::to_string),
                limit: Some(PAGE),
                after,
            };
            let page: TaskPage = match self {
                Reader::Local(ops) => ops.tasks(&Self::caller(), query).await?,
                Reader::Remote(client) => client.tasks(&query).await?,
            };
            tasks.extend(page.tasks);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(tasks),
            }
        }
    }

    pub(super) async fn task(&self, id: TaskId) -> Result<TaskDetail, Failure> {
        match self {
            Reader::Local(ops) => Ok(ops.task(&Self::caller(), id).await?),
            Reader::Remote(client) => client.task(id).await,
        }
    }

    /// The agents the engine has recorded, in the plan's order.
    pub(super) async fn agents(&self) -> Result<Vec<AgentRecord>, Failure> {
        match self {
            Reader::Local(ops) => {
                let infos = ops.agents(&Self::caller()).await?;
                Ok(infos.into_iter().filter_map(|info| info.status).collect())
            }
            Reader::Remote(client) => client.agents().await,
        }
    }

    pub(super) async fn messages(&self, agent: Option<&str>, limit: u64) -> Result<Vec<Delivery>, Failure> {
        let query = MessageQuery { agent: agent.map(str::to_string), limit: Some(limit) };
        match self {
            Reader::Local(ops) => Ok(ops.messages(&Self::caller(), query).await?),
            Reader::Remote(client) => client.messages(&query).await,
        }
    }

    /// Up to [`PAGE`] events after `since`, oldest first.
    pub(super) async fn events(&self, since: i64, wanted: &Wanted) -> Result<Vec<Event>, Failure> {
        match self {
            Reader::Local(ops) => Ok(ops.events(&Self::caller(), wanted.filter(since, Some(PAGE))).await?),
            Reader::Remote(client) => client.events(&wanted.filter(since, Some(PAGE))).await,
        }
    }

    pub(super) async fn tools(
        &self,
        query: baton_ops::tools::ToolQuery,
    ) -> Result<baton_ops::tools::ToolList, Failure> {
        match self {
            Reader::Local(ops) => Ok(ops.tools(&Self::caller(), query).await?),
            Reader::Remote(client) => client.tools(&query).await,
        }
    }

    pub(super) async fn schedules(&self) -> Result<Vec<ScheduleView>, Failure> {
        match self {
            Reader::Local(ops) => Ok(ops.schedules(&Self::caller()).await?),
            Reader::Remote(client) => client.schedules().await,
        }
    }

    pub(super) async fn conflicts(&self) -> Result<Conflicts, Failure> {
        match self {
            Reader::Local(ops) => Ok(ops.conflicts(&Self::caller()).await?),
            Reader::Remote(client) => client.conflicts().await,
        }
    }

    /// The audit log, newest first.
    pub(super) async fn audit(&self, actor: Option<&str>, limit: u64) -> Result<Vec<AuditEntry>, Failure> {
        let params = AuditParams { since_id: None, actor: actor.map(str::to_string), limit: Some(limit) };
        match self {
            Reader::Local(ops) => Ok(ops.audit(&Self::caller(), params).await?),
            Reader::Remote(client) => client.audit(&params).await,
        }
    }

    pub(super) async fn budgets(&self) -> Result<Budgets, Failure> {
        match self {
            Reader::Local(ops) => Ok(ops.budgets(&Self::caller()).await?),
            Reader::Remote(client) => client.budgets().await,
        }
    }
}

/// The API of the process executing the run (`run`, or the plan's latest), for a command
/// that changes it; a usage error saying so when no process executes it.
pub(super) async fn front_door(cli: &Cli, run: Option<&str>) -> Result<Client, Failure> {
    match Source::open(cli, run).await? {
        Source::Server { client } => Ok(client),
        Source::Store { run, .. } if run.state.is_finished() => {
            Err(Failure::usage(format!("run {} has ended ({}); only a running run takes commands", run.id, run.state)))
        }
        Source::Store { run, socket, .. } => {
            let now = baton_runtime::Clock::system().now();
            match &run.owner {
                Some(owner) if run.owner_until.is_some_and(|until| until > now) => {
                    let socket = socket.map_or_else(
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
