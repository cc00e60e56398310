//! The subcommands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use baton_core::config::{self, Plan, ProcessMode};
use baton_core::model::{AgentRecord, RunRecord, RunState, TaskId, TaskRecord, TaskState};

use baton_runtime::engine::{self, Engine, EngineOptions};
use baton_runtime::process::ProcessEnv;
use baton_runtime::process::pty::attach_socket;
use baton_store::{Store, StoreUrl};

use crate::client::Client;
use crate::output::{self, TaskNames};
use crate::progress::{self, Display};
use crate::{AgentAction, Cli, Command, Failure, TaskAction};

mod agent_host;

mod bench;

mod budget;

mod mcp;

mod schedules;

mod serve;

mod source;

mod store;

mod tools;

use source::Source;

pub async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Init { dir, force } => crate::init::init(dir, *force),
        Command::Check { json } => check(&cli, *json),
        Command::Run { fresh, plain, grace } => run(&cli, *fresh, *plain, *grace).await,
        Command::Serve { listen, fresh, grace } => serve::serve(&cli, listen.as_deref(), *fresh, *grace).await,
        Command::AgentHost { agent, concurrency, token_env, timeout, env_passthrough, log_dir, grace, command } => {
            let options = agent_host::HostOptions {
                agent: agent.clone(),
                concurrency: *concurrency,
                grace: *grace,
                timeout: *timeout,
                env_passthrough: env_passthrough.clone(),
                log_dir: log_dir.clone(),
                token_env: token_env.clone(),
                command: command.clone(),
            };
            agent_host::agent_host(&cli, options).await
        }
        Command::Token { action: crate::TokenAction::Create { role, agent, ttl, subject } } => {
            serve::create_token(&cli, role, agent.as_deref(), *ttl, subject.as_deref())
        }
        Command::Audit { limit, actor, json } => serve::audit(&cli, *limit, actor.as_deref(), *json).await,
        Command::Status { json, run } => status(&cli, *json, run.as_deref()).await,
        Command::Tasks { state, workstream, agent, json, run } => {
            let state = state.as_deref().map(|state| state.parse::<TaskState>()).transpose().map_err(Failure::usage)?;
            tasks(&cli, state, workstream.as_deref(), agent.as_deref(), *json, run.as_deref()).await
        }
        Command::Task { action } => task(&cli, action).await,
        Command::Agents { json, run } => agents(&cli, *json, run.as_deref()).await,
        Command::Agent { action } => agent(&cli, action).await,
        Command::Schedules { json, run } => schedules::schedules(&cli, *json, run.as_deref()).await,
        Command::Schedule { action } => schedules::schedule(&cli, action).await,
        Command::Tools { query, agent, json, run } => {
            tools::tools(&cli, query.clone(), agent.clone(), *json, run.as_deref()).await
        }
        Command::Tool { action } => tools::tool(&cli, action).await,
        Command::Conflicts { json, run } => conflicts(&cli, *json, run.as_deref()).await,
        Command::Budget { action, json, run } => budget::budget(&cli, action.as_ref(), *json, run.as_deref()).await,
        Command::Plan { objective, workstream, run, json } => {
            plan_objective(&cli, objective, workstream, run.as_deref(), *json).await
        }
        Command::Send { text, data, run } => send(&cli, text, data.as_deref(), run.as_deref()).await,
        Command::Messages { action: Some(crate::MessagesAction::Redeliver { ids, dead, run }), .. } => {
            redeliver(&cli, ids, *dead, run.as_deref()).await
        }
        Command::Messages { action: None, agent, limit, json, run } => {
            messages(&cli, agent.as_deref(), *limit, *json, run.as_deref()).await
        }
        Command::Events { follow, since, task, kinds, agent, json, run } => {
            let wanted = source::Wanted { task: task.map(TaskId), kinds: kinds.clone(), agent: agent.clone() };
            events(&cli, *follow, *since, &wanted, *json, run.as_deref()).await
        }
        Command::Logs { agent, follow } => logs(&cli, agent, *follow).await,
        Command::Mcp => mcp::mcp(&cli).await,
        Command::Attach { agent } => attach(&cli, agent).await,
        Command::Store { action } => store::store(&cli, action).await,
        Command::Bench { .. } | Command::BenchWorker | Command::BenchHttpWorker { .. } => {
            bench::bench(&cli.command, cli.store.as_deref()).await
        }
    }
}

fn environment() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

/// The loaded configuration: the plan, and the directory relative paths are resolved against.
struct Loaded {
    plan: Plan,
    base_dir: PathBuf,
}

/// Loads the configuration in layers: `baton.toml`, then `baton.<profile>.toml` with
/// `--profile`, then the `BATON_*` overrides of the environment (`config::ENV_OVERRIDES`);
/// command-line flags such as `--store` are applied by the commands after this.
fn load(cli: &Cli) -> Result<Loaded, Failure> {
    let path = &cli.config;
    if let Err(error) = std::fs::metadata(path) {
        return Err(if error.kind() == std::io::ErrorKind::NotFound {
            Failure::usage(format!(
                "{} not found; run `baton init` to write an example, or pass -c FILE",
                path.display()
            ))
        } else {
            Failure::usage(format!("cannot read {}: {error}", path.display()))
        });
    }
    let plan =
        baton_runtime::config_file::load_layered(path, cli.profile.as_deref(), &environment()).map_err(|error| {
            match error {
                baton_runtime::config_file::Error::Invalid(error) => {
                    Failure::usage(format!("{error}\n{} is not valid", path.display()))
                }
                error => Failure::usage(error.to_string()),
            }
        })?;
    let base_dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
    Ok(Loaded { plan, base_dir })
}

/// The store URL in effect: `--store`, else the configuration's `store.url`.
fn store_url(cli: &Cli, loaded: &Loaded) -> Result<StoreUrl, Failure> {
    let url = cli.store.clone().unwrap_or_else(|| loaded.plan.store_url.clone());
    StoreUrl::parse(&url, &loaded.base_dir).map_err(|error| Failure::usage(error.to_string()))
}

/// Where a run keeps its files beside the store (agents' logs, terminal sockets): the store
/// file's directory, or `.baton` beside the configuration for a store in memory or on
/// PostgreSQL.
fn store_dir(cli: &Cli, loaded: &Loaded) -> Result<PathBuf, Failure> {
    let url = store_url(cli, loaded)?;
    Ok(match url.path() {
        Some(path) => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        None => loaded.base_dir.join(".baton"),
    })
}

/// The local API socket of the process executing a run in this store: beside the store file
/// (`api.sock`), or in `.baton` beside the configuration for a store on PostgreSQL; none for a
/// store in memory, which no other process can reach anyway.
fn socket_path(cli: &Cli, loaded: &Loaded) -> Result<Option<PathBuf>, Failure> {
    Ok(match store_url(cli, loaded)? {
        StoreUrl::Sqlite { path, .. } => Some(baton_server::local::socket_path(&path)),
        StoreUrl::Postgres { .. } => Some(store_dir(cli, loaded)?.join(baton_server::local::SOCKET_NAME)),
        StoreUrl::Memory => None,
    })
}

async fn open_store(cli: &Cli, loaded: &Loaded) -> Result<Arc<dyn Store>, Failure> {
    store_url(cli, loaded)?.open().await.map_err(store_failure)
}

/// A store that cannot be opened: a URL refused is the user's to fix (exit 2), as is a store
/// that is unavailable (a server down, a file locked) or damaged.
fn store_failure(error: baton_store::Error) -> Failure {
    Failure::usage(error.to_string())
}

async fn existing_store(cli: &Cli, loaded: &Loaded) -> Result<Arc<dyn Store>, Failure> {
    let url = store_url(cli, loaded)?;
    if let Some(path) = url.path()
        && !path.exists()
    {
        return Err(Failure::usage(format!(
            "no store at {}: nothing has run yet; start with `baton run`",
            path.display()
        )));
    }
    url.open().await.map_err(store_failure)
}

async fn find_run(store: &dyn Store, plan: &Plan, run: Option<&str>) -> Result<RunRecord, Failure> {
    let found = match run {
        Some(id) => store.run(id).await.context("reading the run")?,
        None => store.latest_run(Some(&plan.name)).await.context("reading the run")?,
    };
    found.ok_or_else(|| match run {
        Some(id) => Failure::usage(format!("no run `{id}` in the store")),
        None => Failure::usage(format!("plan `{}` has not run yet; start it with `baton run`", plan.name)),
    })
}

fn check(cli: &Cli, json: bool) -> Result<u8, Failure> {
    let loaded = load(cli)?;
    let env = environment();
    let mut problems = baton_runtime::check::check_environment(&loaded.plan, &loaded.base_dir, &env);
    // The secret is checked here and where it is used (`serve`, `token create`), not by every
    // command that loads the file: reading the store needs none.
    if let Some(Err(problem)) = loaded.plan.auth.as_ref().map(|auth| auth.secret(&env)) {
        problems.push(problem);
    }
    // What the coordinator lacks is said, not refused: the rules plan objectives instead.
    for note in baton_runtime::check::coordinator_notes(&loaded.plan, &env) {
        errln!("note: {note}");
    }
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Failure::usage(format!("{}\n{} is not valid", lines.join("\n"), cli.config.display())));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&loaded.plan).context("serializing the plan")?);
    } else {
        outln!("{} is valid", cli.config.display());
        outln!("{}", loaded.plan.describe());
    }
    Ok(0)
}

/// The configuration, checked against the environment it runs in (commands on the path,
/// directories), with that environment: what `run` and `serve` start from.
fn load_checked(cli: &Cli) -> Result<(Loaded, BTreeMap<String, String>), Failure> {
    let loaded = load(cli)?;
    let env = environment();
    let problems = baton_runtime::check::check_environment(&loaded.plan, &loaded.base_dir, &env);
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Failure::usage(format!("{}\n{} is not valid", lines.join("\n"), cli.config.display())));
    }
    Ok((loaded, env))
}

async fn run(cli: &Cli, fresh: bool, plain: bool, grace: std::time::Duration) -> Result<u8, Failure> {
    let (loaded, env) = load_checked(cli)?;
    if let Some(agent) = loaded.plan.agents.iter().find(|agent| agent.runtime() == config::RuntimeKind::Remote) {
        return Err(Failure::usage(format!(
            "agent `{}` is remote: its workers take tasks over the network, where `baton run` serves no API; run this plan with `baton serve`",
            agent.name
        )));
    }
    let store = open_store(cli, &loaded).await?;
    let log_dir = store_dir(cli, &loaded)?.join("logs");
    let registry =
        baton_runtime::process::Registry { store: Arc::clone(&store), host: engine::Node::this_process().host };
    let clock = baton_runtime::Clock::system();
    let hub = baton_runtime::remote::RemoteHub::new(clock);
    let process_env = ProcessEnv {
        base_dir: loaded.base_dir.clone(),
        log_dir: log_dir.clone(),
        env: env.clone(),
        registry: Some(registry),
        api: None,
        mcp_servers: loaded.plan.mcp_servers.clone(),
    };
    let tools = baton_runtime::mcp::McpHub::new(&loaded.plan.mcp_servers, Some(process_env.clone()));
    // LLM agents are offered the run's MCP tools beside Baton's own.
    let external: Arc<dyn baton_runtime::tools::ToolProvider> = tools.clone();
    let runtimes = hub.runtimes(engine::agent_runtimes(process_env, Some(external), Default::default()));
    let mut options = EngineOptions::new(loaded.plan.clone(), Arc::clone(&store), runtimes);
    options.tools = tools;
    options.coordinator_env = env.clone();
    options.fresh = fresh;
    options.shutdown_grace = grace;
    options.clock = clock;
    let started = options.clock.now();
    let (engine, handle) = Engine::new(options);

    let shutdown = CancellationToken::new();
    let signals = watch_signals(shutdown.clone());
    let done = CancellationToken::new();
    let display = tokio::spawn(progress::follow(
        Display::new(plain, cli.log_format == "json"),
        Arc::clone(&store),
        store.subscribe(),
        handle.progress(),
        handle.run_id(),
        done.clone(),
    ));
    let mut engine_task = tokio::spawn(engine.run(shutdown.clone()));
    // The front door, once the run is claimed (a second `baton run` is refused before it comes
    // near the socket): the API on the socket beside the store, where the CLI's commands reach
    // the engine. The secret of `[auth]` is not needed: through the socket the local user is
    // an admin without a token.
    let front_stop = CancellationToken::new();
    let mut front_door = None;
    let mut refused = None;
    if let Some(path) = socket_path(cli, &loaded)?
        && let Some(run_id) = opened_run(&handle).await
    {
        let auth = serve::auth_from(&loaded.plan, &env).ok().flatten();
        let state = serve::app_state(&loaded.plan, &store, &handle, hub, &run_id, auth, log_dir, clock, &front_stop);
        match serve::FrontDoor::open(&path, state, &loaded.plan, front_stop.clone()) {
            Ok(opened) => front_door = Some(opened),
            Err(error) => {
                // Commands could not reach this run: it stops (resumably) rather than run
                // without them.
                shutdown.cancel();
                refused = Some(Failure::usage(format!("error: {error}")));
            }
        }
    }
    let result = (&mut engine_task).await.map_err(|error| Failure::run(error.to_string()))?;
    front_stop.cancel();
    if let Some(front_door) = front_door {
        front_door.close().await;
    }
    done.cancel();
    signals.abort();
    let mut display = display.await.map_err(|error| Failure::run(error.to_string()))?;
    display.finish();
    if let Some(refused) = refused {
        return Err(refused);
    }
    let summary = result.map_err(|error| match error {
        engine::Error::Busy { .. } | engine::Error::Invalid(_) => Failure::usage(format!("error: {error}")),
        other => Failure::run(format!("error: {other}")),
    })?;
    let took = output::elapsed(started, baton_runtime::Clock::system().now());
    let resumed = if summary.resumed { " (resumed)" } else { "" };
    match summary.state {
        RunState::Succeeded => {
            outln!(
                "run {}{resumed} succeeded: {}/{} tasks in {took}",
                summary.run_id,
                summary.n_succeeded,
                summary.n_tasks
            );
            Ok(0)
        }
        RunState::Failed => {
            outln!(
                "run {}{resumed} failed: {}/{} tasks succeeded in {took}",
                summary.run_id,
                summary.n_succeeded,
                summary.n_tasks
            );
            for (key, state, reason) in &summary.failures {
                outln!("  {key}: {state}: {reason}");
            }
            // The report above is a sample; the counts say where the rest are.
            let counts = store.task_counts(&summary.run_id).await.unwrap_or_default();
            outln!("{}", output::failure_hint(&counts));
            Ok(1)
        }
        RunState::Running | RunState::Interrupted => {
            outln!(
                "run {} stopped before the end ({}/{} tasks done); `baton run` resumes it",
                summary.run_id,
                summary.n_succeeded,
                summary.n_tasks
            );
            Ok(1)
        }
    }
}

/// The id of the run the engine opened (and claimed); `None` when it stopped before that.
async fn opened_run(handle: &engine::EngineHandle) -> Option<String> {
    let mut run_id = handle.run_id();
    loop {
        if let Some(id) = run_id.borrow_and_update().clone() {
            return Some(id);
        }
        run_id.changed().await.ok()?;
    }
}

/// Starts watching for SIGTERM and SIGINT. The handlers are in place when this returns (not
/// when the task first runs), so a signal sent right after Baton says it is ready is not lost.
fn watch_signals(shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    tokio::spawn(async move {
        if let (Ok(terminate), Ok(interrupt)) = signals {
            stop_on_signals(shutdown, terminate, interrupt).await;
        }
    })
}

async fn stop_on_signals(
    shutdown: CancellationToken,
    mut terminate: tokio::signal::unix::Signal,
    mut interrupt: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    // Cancel first: telling the user must not be able to stand in the way (a closed stderr).
    shutdown.cancel();
    crate::output::say("stopping: running tasks get the grace period to finish (again to stop at once)");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    std::process::exit(130);
}

async fn status(cli: &Cli, json: bool, run: Option<&str>) -> Result<u8, Failure> {
    let source = Source::open(cli, run).await?;
    let reader = source.reader();
    let status = reader.status().await?;
    let executed_by = source.executed_by(&status);
    // Left out for a caller that may not read budgets (an agent's token).
    let budgets = reader.budgets().await.ok();
    print_status(&status, executed_by.as_deref(), budgets.as_ref(), json)
}

/// The budgets that are exhausted now (`global`, `workstream:NAME`, `agent:NAME`).
fn exhausted_budgets(budgets: Option<&baton_ops::schedules::Budgets>) -> Vec<String> {
    budgets
        .map(|budgets| {
            budgets
                .scopes
                .iter()
                .filter(|view| view.exhausted && !view.scope.starts_with("task:"))
                .map(|view| view.scope.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn print_status(
    status: &baton_ops::status::Status,
    executed_by: Option<&str>,
    budgets: Option<&baton_ops::schedules::Budgets>,
    json: bool,
) -> Result<u8, Failure> {
    let exhausted = exhausted_budgets(budgets);
    let by_workstream: BTreeMap<&String, &BTreeMap<String, u64>> =
        status.workstreams.iter().map(|(name, ws)| (name, &ws.tasks)).collect();
    if json {
        let value = serde_json::json!({
            "session_id": status.session_id,
            "name": status.name,
            "state": status.state,
            "current_phase": status.phase,
            "n_phases": status.n_phases,
            "phase_workstreams": status.phase_workstreams,
            "progress": status.progress,
            "completed": status.completed,
            "error": status.error,
            "n_tasks": status.n_tasks,
            "n_finished": status.n_finished,
            "started_at": status.started_at,
            "ended_at": status.ended_at,
            "owner": executed_by,
            "workstreams": by_workstream,
            "agents": status.agents,
            "spawned_agents": status.spawned_agents,
            "running_agents": status.running_agents,
            "budgets_exhausted": exhausted,
        });
        outln!("{}", serde_json::to_string_pretty(&value).context("serializing")?);
        return Ok(0);
    }
    let end = status.ended_at.unwrap_or_else(|| baton_runtime::Clock::system().now());
    outln!("run       {} ({})", status.session_id, status.name);
    outln!("state     {}", status.state);
    outln!("phase     {}/{} {}", status.phase, status.n_phases, status.phase_workstreams.join(", "));
    outln!("progress  {:.0}% ({}/{} tasks finished)", status.progress * 100.0, status.n_finished, status.n_tasks);
    if status.state == "interrupted" {
        // Stopped before its end: nothing runs it now, and it has no end time.
        outln!("started   {}", output::time(status.started_at));
    } else {
        let how_long = if status.ended_at.is_some() { "ran" } else { "running for" };
        outln!(
            "started   {} ({how_long} {})",
            output::time(status.started_at),
            output::elapsed(status.started_at, end)
        );
    }
    let summary: Vec<String> = status
        .agents
        .iter()
        .map(|(state, names)| match state.as_str() {
            // The states that need attention name their agents.
            "restarting" | "circuit-open" | "stalled" | "waiting-input" | "blocked-budget" | "failed" => {
                format!("{} {state} ({})", names.len(), names.join(", "))
            }
            _ => format!("{} {state}", names.len()),
        })
        .collect();
    outln!("agents    {}", summary.join(", "));
    if let Some(budgets) = budgets.filter(|_| !exhausted.is_empty()) {
        let until = match (budgets.next_reset, baton_core::budget::Reset::parse(&budgets.reset, &budgets.timezone)) {
            (Some(at), Ok(reset)) => reset.show(baton_core::Timestamp(at)),
            (Some(at), Err(_)) => output::time(baton_core::Timestamp(at)),
            (None, _) => "never".to_string(),
        };
        outln!(
            "budget    exhausted: {} — the agents they cover get no new task (blocked-budget) until the reset at {until} or `baton budget set`",
            exhausted.join(", ")
        );
    }
    if let Some(owner) = executed_by {
        outln!("executed by {owner}");
    } else if !status.completed {
        outln!("not being executed: `baton run` resumes it");
    }
    if let Some(error) = &status.error {
        outln!("error     {error}");
    }
    let mut table = output::table(&["phase", "workstream", "succeeded", "running", "waiting", "failed"]);
    // In the order the plan runs them: by phase, then by name.
    let mut by_phase: Vec<_> = status.workstreams.iter().collect();
    by_phase.sort_by_key(|(name, ws)| (ws.phase, *name));
    for (name, ws) in by_phase {
        let get = |state: &str| ws.tasks.get(state).copied().unwrap_or(0);
        table.add_row(vec![
            ws.phase.to_string(),
            name.clone(),
            get("succeeded").to_string(),
            get("running").to_string(),
            (get("pending") + get("ready") + get("suspended")).to_string(),
            (get("dead") + get("cancelled")).to_string(),
        ]);
    }
    outln!("{table}");
    Ok(0)
}

async fn tasks(
    cli: &Cli,
    state: Option<TaskState>,
    workstream: Option<&str>,
    agent: Option<&str>,
    json: bool,
    run: Option<&str>,
) -> Result<u8, Failure> {
    let source = Source::open(cli, run).await?;
    let tasks = source.reader().tasks(state, workstream, agent).await?;
    print_tasks(&tasks, json)
}

fn print_tasks(tasks: &[TaskRecord], json: bool) -> Result<u8, Failure> {
    if json {
        outln!("{}", serde_json::to_string_pretty(&tasks).context("serializing")?);
        return Ok(0);
    }
    let mut table = output::table(&["id", "key", "workstream", "state", "attempt", "agent", "note"]);
    for task in tasks {
        let note = match task.state {
            TaskState::Ready if task.not_before.is_some() => {
                format!("retry at {}", output::clock(task.not_before.unwrap_or_default()))
            }
            TaskState::Succeeded => {
                task.finished_at.map(|at| format!("done {}", output::clock(at))).unwrap_or_default()
            }
            _ => task.error.clone().unwrap_or_default(),
        };
        table.add_row(vec![
            task.id.to_string(),
            task.key.clone().unwrap_or_default(),
            task.workstream.clone().unwrap_or_default(),
            task.state.to_string(),
            format!("{}/{}", task.attempt, task.max_attempts),
            task.assigned_agent.clone().unwrap_or_default(),
            note,
        ]);
    }
    outln!("{table}");
    Ok(0)
}

async fn task(cli: &Cli, action: &TaskAction) -> Result<u8, Failure> {
    match action {
        TaskAction::Add(args) => add_task(cli, args).await,
        TaskAction::Show { id, json } => {
            let source = Source::open(cli, None).await?;
            let detail = source.reader().task(TaskId(*id)).await?;
            print_task(&detail, *json)
        }
        TaskAction::Cancel { id, reason, run } => {
            let client = source::front_door(cli, run.as_deref()).await?;
            print_changed_task(&client.cancel_task(TaskId(*id), reason).await?)
        }
        TaskAction::Retry { id, run } => {
            let client = source::front_door(cli, run.as_deref()).await?;
            print_changed_task(&client.retry_task(TaskId(*id)).await?)
        }
    }
}

fn print_task(detail: &baton_ops::tasks::TaskDetail, json: bool) -> Result<u8, Failure> {
    let (task, events) = (&detail.task, &detail.events);
    if json {
        let mut shown = serde_json::json!({ "task": task, "events": events });
        if !detail.transcript.is_empty() {
            shown["transcript"] = serde_json::to_value(&detail.transcript).context("serializing")?;
        }
        outln!("{}", serde_json::to_string_pretty(&shown).context("serializing")?);
        return Ok(0);
    }
    outln!("task      {} ({})", task.id, task.key.as_deref().unwrap_or("-"));
    outln!("title     {}", task.title);
    outln!("state     {} (attempt {}/{})", task.state, task.attempt, task.max_attempts);
    if let Some(ws) = &task.workstream {
        outln!("workstream {ws}");
    }
    if let Some(agent) = &task.assigned_agent {
        outln!("agent     {agent}");
    }
    if let Some(error) = &task.error {
        outln!("error     {error}");
    }
    if let Some(result) = &task.result {
        outln!("result    {result}");
    }
    let mut names = TaskNames::default();
    names.insert(task.id, task.key.clone());
    for event in events {
        outln!("  {}", names.line(event));
    }
    if !detail.transcript.is_empty() {
        outln!("transcript");
        out!("{}", baton_core::transcript::render(&detail.transcript));
    }
    Ok(0)
}

/// After a server applied a command to a task: where the task is now.
fn print_changed_task(task: &TaskRecord) -> Result<u8, Failure> {
    outln!("task {} ({}) is {}", task.id, task.key.as_deref().unwrap_or("-"), task.state);
    Ok(0)
}

/// `baton task add`: through the API of the process executing the run, which creates the
/// task at once.
async fn add_task(cli: &Cli, args: &crate::TaskArgs) -> Result<u8, Failure> {
    let input = source::task_input(args)?;
    let client = source::front_door(cli, args.run.as_deref()).await?;
    let key = source::key_of(&input);
    let body = serde_json::to_value(&input).context("serializing the task")?;
    let id = client.add_task(&body).await?;
    outln!("task {id} added ({key})");
    Ok(0)
}

/// `baton plan "OBJECTIVE" --workstream W`: through the API of the process executing the run
/// (`POST /objectives`), which asks the coordinator and creates the tasks.
async fn plan_objective(
    cli: &Cli,
    objective: &str,
    workstream: &str,
    run: Option<&str>,
    json: bool,
) -> Result<u8, Failure> {
    let client = source::front_door(cli, run).await?;
    let planned = client.plan_objective(objective, workstream).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&planned).context("serializing the plan")?);
        return Ok(0);
    }
    let ids: Vec<String> = planned.tasks.iter().map(ToString::to_string).collect();
    if let Some(reason) = &planned.fallback_reason {
        outln!("the coordinator fell back to the rules: {reason}");
    }
    outln!("{} task(s) created by the {}: {}", ids.len(), planned.by, ids.join(", "));
    Ok(0)
}

async fn agent(cli: &Cli, action: &AgentAction) -> Result<u8, Failure> {
    let (name, run, verb) = match action {
        AgentAction::Start { name, run } => (name, run, "start"),
        AgentAction::Stop { name, run } => (name, run, "stop"),
        AgentAction::Restart { name, run } => (name, run, "restart"),
    };
    // The engine knows its agents, those added since it started too.
    let client = source::front_door(cli, run.as_deref()).await?;
    let record = client.agent_command(name, verb).await?;
    let state = record.map_or_else(|| "not started".to_string(), |record| record.state.to_string());
    outln!("agent {name} is {state}");
    Ok(0)
}

/// `baton send`: chat through the API of the process executing the run (`POST /messages`),
/// which checks the mentions against the running plan.
async fn send(cli: &Cli, text: &str, data: Option<&str>, run: Option<&str>) -> Result<u8, Failure> {
    let data: Option<serde_json::Value> = match data {
        Some(data) => {
            Some(serde_json::from_str(data).map_err(|error| Failure::usage(format!("--data is not JSON: {error}")))?)
        }
        None => None,
    };
    let client = source::front_door(cli, run).await?;
    let result = client.chat(text, data).await?;
    // Who took it: the server at its address, or the process on the run's socket.
    let by = client.served_by();
    for sent in &result.sent {
        match (&sent.message_id, sent.task) {
            (_, Some(task)) => {
                outln!("@{}: sent as a task, task {task} (it runs once per task), created by {by}", sent.agent);
            }
            (Some(id), None) => outln!("@{}: message {id} sent, stored by {by}, which delivers it", sent.agent),
            (None, None) => outln!("@{}: sent to {by}", sent.agent),
        }
    }
    Ok(0)
}

/// `baton messages redeliver`: through the running `baton run`'s front door.
async fn redeliver(cli: &Cli, ids: &[i64], dead: bool, run: Option<&str>) -> Result<u8, Failure> {
    let client = source::front_door(cli, run).await?;
    let redelivered = client.redeliver(ids, dead).await?;
    match redelivered.as_slice() {
        [] => outln!("no dead letter to redeliver"),
        ids => {
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            outln!("redelivered {}: pending again, delivered from now on", ids.join(", "));
        }
    }
    Ok(0)
}

async fn messages(cli: &Cli, agent: Option<&str>, limit: u64, json: bool, run: Option<&str>) -> Result<u8, Failure> {
    let source = Source::open(cli, run).await?;
    let deliveries = source.reader().messages(agent, limit).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&deliveries).context("serializing")?);
        return Ok(0);
    }
    let mut table = output::table(&["id", "time", "from", "to", "state", "tries", "message"]);
    for delivery in &deliveries {
        let to = match &delivery.topic {
            Some(topic) => format!("{} (#{topic})", delivery.to),
            None => delivery.to.clone(),
        };
        table.add_row(vec![
            delivery.id.to_string(),
            output::clock(delivery.created_at),
            delivery.from.clone(),
            to,
            delivery.state.as_str().to_string(),
            delivery.attempts.to_string(),
            delivery.body.clone(),
        ]);
    }
    outln!("{table}");
    Ok(0)
}

async fn conflicts(cli: &Cli, json: bool, run: Option<&str>) -> Result<u8, Failure> {
    let source = Source::open(cli, run).await?;
    let conflicts = source.reader().conflicts().await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&conflicts).context("serializing")?);
        return Ok(0);
    }
    let cell = |text: Option<&String>| text.cloned().unwrap_or_else(|| "-".to_string());
    let mut table = output::table(&["resource", "held by", "agent"]);
    for held in &conflicts.held {
        table.add_row(vec![held.resource.clone(), cell(held.task.as_ref()), cell(held.agent.as_ref())]);
    }
    outln!("held\n{table}");
    let mut table = output::table(&["task", "state", "wants", "overlaps", "held by"]);
    for waiting in &conflicts.waiting {
        table.add_row(vec![
            waiting.task.clone(),
            waiting.state.to_string(),
            waiting.resource.clone(),
            waiting.held.clone(),
            waiting.holder.clone(),
        ]);
    }
    outln!("waiting\n{table}");
    Ok(0)
}

async fn agents(cli: &Cli, json: bool, run: Option<&str>) -> Result<u8, Failure> {
    let source = Source::open(cli, run).await?;
    let agents = source.reader().agents().await?;
    print_agents(&agents, json)
}

fn print_agents(agents: &[AgentRecord], json: bool) -> Result<u8, Failure> {
    let now = baton_runtime::Clock::system().now();
    if json {
        outln!("{}", serde_json::to_string_pretty(&agents).context("serializing")?);
        return Ok(0);
    }
    let mut table =
        output::table(&["agent", "workstream", "priority", "state", "running", "succeeded", "failed", "last activity"]);
    for agent in agents {
        table.add_row(vec![
            agent.name.clone(),
            agent.workstream.clone().unwrap_or_else(|| "(shared)".into()),
            agent.priority.to_string(),
            agent.state.to_string(),
            agent.running.to_string(),
            agent.tasks_succeeded.to_string(),
            agent.tasks_failed.to_string(),
            agent.last_activity.map(|at| format!("{} ago", output::elapsed(at, now))).unwrap_or_else(|| "-".into()),
        ]);
    }
    outln!("{table}");
    Ok(0)
}

async fn events(
    cli: &Cli,
    follow: bool,
    since: i64,
    wanted: &source::Wanted,
    json: bool,
    run: Option<&str>,
) -> Result<u8, Failure> {
    let source = Source::open(cli, run).await?;
    let reader = source.reader();
    let mut names = TaskNames::default();
    for listed in reader.tasks(None, None, None).await? {
        names.insert(listed.id, listed.key);
    }
    // The history page by page, then (with --follow) what comes next.
    let mut seen = since;
    let mut ended = false;
    loop {
        let page = reader.events(seen, wanted).await?;
        for event in &page {
            ended |= print_event(&mut names, event, json)?;
            seen = event.seq;
        }
        if (page.len() as u64) < source::PAGE {
            break;
        }
    }
    if !follow || ended {
        return Ok(0);
    }
    match &source {
        Source::Server { client } => follow_server(client, &mut names, seen, wanted, json).await,
        Source::Store { ops, .. } => follow_store(ops, &mut names, seen, wanted, json).await,
    }
}

/// Prints one event (a line, or JSON); whether it ends the run.
fn print_event(names: &mut TaskNames, event: &baton_core::Event, json: bool) -> Result<bool, Failure> {
    names.learn(event);
    if json {
        outln!("{}", serde_json::to_string(event).context("serializing")?);
    } else {
        outln!("{}", names.line(event));
    }
    Ok(matches!(event.kind, baton_core::EventKind::RunCompleted { .. }))
}

/// Follows a run another process writes to the store: the store has no cross-process
/// notification, so the follower polls, until the run ends.
async fn follow_store(
    ops: &baton_ops::Ops,
    names: &mut TaskNames,
    mut seen: i64,
    wanted: &source::Wanted,
    json: bool,
) -> Result<u8, Failure> {
    let reader = source::Reader::Local(ops);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // Read after the run is seen ended: this read has its final events.
        let ended = ops.run().await?.state.is_finished();
        loop {
            let page = reader.events(seen, wanted).await?;
            for event in &page {
                if print_event(names, event, json)? {
                    return Ok(0);
                }
                seen = event.seq;
            }
            if (page.len() as u64) < source::PAGE {
                break;
            }
        }
        if ended {
            return Ok(0);
        }
    }
}

/// How often `events --follow` tries to get the stream back after the server ended it, and
/// the first pause between tries (doubled each time).
const RECONNECTS: u32 = 3;
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Follows the server's live stream (`GET /events`) from the last event seen, getting it back
/// when the server ends it.
async fn follow_server(
    client: &Client,
    names: &mut TaskNames,
    mut seen: i64,
    wanted: &source::Wanted,
    json: bool,
) -> Result<u8, Failure> {
    let mut failed_tries = 0;
    loop {
        let why = match client.follow_events(&wanted.filter(seen, None)).await {
            Ok(mut stream) => {
                let seen_before = seen;
                while let Some(event) = stream.next().await? {
                    seen = event.seq;
                    if print_event(names, &event, json)? {
                        return Ok(0);
                    }
                }
                if seen > seen_before {
                    failed_tries = 0;
                }
                // The server ended the stream (it is stopping) or the connection broke:
                // resume after the last event seen (`Last-Event-ID`).
                "it ended the stream".to_string()
            }
            // A refused request (4xx) will be refused again.
            Err(failure) if failure.code == 2 => return Err(failure),
            Err(failure) => failure.message,
        };
        failed_tries += 1;
        if failed_tries > RECONNECTS {
            output::say(&format!("the server at {} is gone ({why}); events stop here", client.url()));
            return Ok(0);
        }
        tokio::time::sleep(RECONNECT_PAUSE * 2u32.pow(failed_tries - 1)).await;
    }
}

async fn logs(cli: &Cli, agent: &str, follow: bool) -> Result<u8, Failure> {
    match Source::open(cli, None).await? {
        Source::Server { client } if follow => {
            let mut lines = client.follow_agent_log(agent).await?;
            while let Some(line) = lines.next().await {
                outln!("{line}");
            }
            Ok(0)
        }
        Source::Server { client } => {
            out!("{}", client.agent_log(agent).await?);
            Ok(0)
        }
        Source::Store { ops, .. } => local_log(&ops, agent, follow).await,
    }
}

/// An agent's log file, where the operations layer says it is; with `follow`, polled until
/// the run ends (another process writes it).
async fn local_log(ops: &baton_ops::Ops, agent: &str, follow: bool) -> Result<u8, Failure> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let path = ops.agent_log(&baton_ops::Caller::local(), agent).await?;
    let mut offset = 0u64;
    loop {
        if let Ok(mut file) = tokio::fs::File::open(&path).await {
            file.seek(std::io::SeekFrom::Start(offset)).await.context("reading the log")?;
            // Agents may write any bytes; show them as text without failing.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).await.context("reading the log")?;
            offset += bytes.len() as u64;
            out!("{}", String::from_utf8_lossy(&bytes));
        } else if !follow {
            return Err(Failure::usage(format!("agent `{agent}` has no log yet ({} does not exist)", path.display())));
        }
        if !follow || ops.run().await?.state.is_finished() {
            return Ok(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn attach(cli: &Cli, agent: &str) -> Result<u8, Failure> {
    let loaded = load(cli)?;
    let Some(spec) = loaded.plan.agent(agent) else {
        let known: Vec<&str> = loaded.plan.agents.iter().map(|agent| agent.name.as_str()).collect();
        return Err(Failure::usage(format!(
            "no agent `{agent}` in {} (known: {})",
            cli.config.display(),
            known.join(", ")
        )));
    };
    if spec.process_mode() != Some(ProcessMode::Pty) {
        let what = match spec.process_mode() {
            Some(mode) => format!("its mode is \"{}\"", mode.as_str()),
            None => format!("it is a {} agent", spec.runtime().as_str()),
        };
        return Err(Failure::usage(format!(
            "agent `{agent}` is not a terminal agent ({what}); only agents with mode = \"pty\" can be attached"
        )));
    }
    let socket = attach_socket(&store_dir(cli, &loaded)?, agent);
    let stream = tokio::net::UnixStream::connect(&socket).await.map_err(|error| {
        Failure::run(format!(
            "no running `baton run` serves agent {agent} (cannot connect to {}: {error}); start the run with `baton run`",
            socket.display()
        ))
    })?;
    crate::attach::attach(stream, agent).await
}
