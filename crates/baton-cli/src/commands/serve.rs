//! `baton serve`: the engine and the HTTP API in one process. The run stays open (tasks come
//! through the API); the configuration file is watched and reloaded; SIGTERM or Ctrl-C stops
//! claiming, lets running tasks finish within the grace period (the API keeps serving so that
//! remote workers can hand their results in), then stops the agents and the server.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use baton_core::config::{self, Plan};
use baton_runtime::engine::{self, Engine, EngineOptions};
use baton_runtime::process::{ApiAccess, ProcessEnv};
use baton_runtime::remote::RemoteHub;
use baton_server::{AppState, Auth, ServerOptions, Tls};

use super::{environment, load, open_store};
use crate::{Cli, Failure};

/// How long the agent tokens Baton gives its own processes last: as long as a server may run
/// without a restart.
const AGENT_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Finds the `[auth]` secret in the environment.
pub fn auth_from(plan: &Plan, env: &std::collections::BTreeMap<String, String>) -> Result<Option<Auth>, Failure> {
    let Some(spec) = &plan.auth else { return Ok(None) };
    let secret = spec.secret(env).map_err(|diagnostic| Failure::usage(diagnostic.to_string()))?;
    Auth::new(secret.as_bytes(), spec.token_ttl).map(Some).map_err(|error| Failure::usage(error.to_string()))
}

pub async fn serve(cli: &Cli, listen: Option<&str>, fresh: bool, grace: Duration) -> Result<u8, Failure> {
    let (loaded, env) = super::load_checked(cli)?;
    let plan = loaded.plan.clone();
    let listen = listen.map_or_else(|| plan.listen.clone(), str::to_string);
    if !config::is_loopback(&listen) && plan.auth.is_none() {
        return Err(Failure::usage(format!(
            "refusing to serve on {listen} without [auth]: it is not a loopback address, so the API would be open to the network; add an [auth] section (see the README) or listen on 127.0.0.1"
        )));
    }
    let auth = auth_from(&plan, &env)?;
    let tls = plan
        .server
        .tls
        .as_ref()
        .map(|tls| Tls { cert: loaded.base_dir.join(&tls.cert), key: loaded.base_dir.join(&tls.key) });

    let store = open_store(cli, &loaded).await?;
    let listener = baton_server::bind(&listen).await.map_err(|error| Failure::usage(error.to_string()))?;
    let local = listener.local_addr().map_err(|error| Failure::run(error.to_string()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local}");

    let log_dir = super::store_dir(cli, &loaded)?.join("logs");
    let node = engine::Node::this_process();
    let registry = baton_runtime::process::Registry { store: Arc::clone(&store), host: node.host.clone() };
    let token_auth = auth.clone();
    let api = ApiAccess {
        url: url.clone(),
        token_for: Arc::new(move |agent: &str| {
            let auth = token_auth.as_ref()?;
            let issued = auth.issue(
                &format!("agent:{agent}"),
                baton_server::Role::Agent,
                Some(agent),
                AGENT_TOKEN_TTL,
                baton_server::auth::unix_now(),
            );
            issued.ok().map(|(token, _)| token)
        }),
    };
    let clock = baton_runtime::Clock::system();
    let hub = RemoteHub::new(clock);
    let process_env = ProcessEnv {
        base_dir: loaded.base_dir.clone(),
        log_dir: log_dir.clone(),
        env: env.clone(),
        registry: Some(registry),
        api: Some(api),
        mcp_servers: plan.mcp_servers.clone(),
    };
    let tools = baton_runtime::mcp::McpHub::new(&plan.mcp_servers, Some(process_env.clone()));
    // LLM agents are offered the run's MCP tools beside Baton's own.
    let external: Arc<dyn baton_runtime::tools::ToolProvider> = tools.clone();
    let runtimes = hub.runtimes(engine::agent_runtimes(process_env, Some(external), Default::default()));
    let mut options = EngineOptions::new(plan.clone(), Arc::clone(&store), runtimes);
    options.tools = tools;
    options.coordinator_env = env.clone();
    options.fresh = fresh;
    options.keep_open = true;
    options.shutdown_grace = grace;
    options.node = node;
    options.clock = clock;
    let (engine, handle) = Engine::new(options);

    let engine_stop = CancellationToken::new();
    let mut run_id_rx = handle.run_id();
    let engine_task = tokio::spawn(engine.run(engine_stop.clone()));
    // The run is open (or resumed) before the API answers about it.
    let run_id = loop {
        if let Some(run_id) = run_id_rx.borrow().clone() {
            break run_id;
        }
        if run_id_rx.changed().await.is_err() {
            let error = match engine_task.await {
                Ok(Err(error)) => error.to_string(),
                Ok(Ok(_)) => "the engine stopped before opening the run".to_string(),
                Err(error) => error.to_string(),
            };
            return Err(Failure::usage(format!("error: {error}")));
        }
    };

    let server_stop = CancellationToken::new();
    let state = app_state(&plan, &store, &handle, hub, &run_id, auth, log_dir, clock, &server_stop);
    let metrics_task = tokio::spawn(baton_server::metrics::follow_events(state.clone(), server_stop.clone()));
    let reload_task = plan.server.reload.then(|| {
        let path = cli.config.clone();
        let profile = cli.profile.clone();
        let loader_path = path.clone();
        let load = move || {
            baton_runtime::config_file::load_layered(&loader_path, profile.as_deref(), &environment())
                .map_err(|error| error.to_string())
        };
        let store = Arc::clone(&store);
        let (handle, run_id, stop) = (handle.clone(), run_id.clone(), server_stop.clone());
        tokio::spawn(async move {
            if let Err(error) = baton_runtime::reload::watch_config(path, load, handle, store, run_id, stop).await {
                crate::output::say(&format!("baton.toml is not watched: {error}; edits apply at the next start"));
            }
        })
    });
    // The socket beside the store too: the CLI on this machine reaches the run there without
    // an address or a token. Its API on the network is the one that matters: without the
    // socket (another process holds it) the server goes on.
    let front_door = match super::socket_path(cli, &loaded)? {
        Some(path) => match FrontDoor::open(&path, state.clone(), &plan, server_stop.clone()) {
            Ok(front_door) => Some(front_door),
            Err(error) => {
                crate::output::say(&format!("the CLI reaches this server at {url} only: {error}"));
                None
            }
        },
        None => None,
    };
    let server = tokio::spawn(baton_server::serve(
        listener,
        state,
        plan.server.max_request_size as usize,
        tls,
        baton_server::ConnectionLimits::from_spec(&plan.server),
        server_stop.clone(),
    ));
    let signals = super::watch_signals(engine_stop.clone());
    crate::output::say(&format!("baton serve: run {run_id} of `{}`, API on {url}", plan.name));

    let log_task = tokio::spawn(log_events(store.subscribe(), run_id.clone(), server_stop.clone()));

    let summary = engine_task.await.map_err(|error| Failure::run(error.to_string()))?;
    signals.abort();
    server_stop.cancel();
    let served = server.await.map_err(|error| Failure::run(error.to_string()))?;
    if let Some(front_door) = front_door {
        front_door.close().await;
    }
    let _ = metrics_task.await;
    let _ = log_task.await;
    if let Some(task) = reload_task {
        let _ = task.await;
    }
    let summary = summary.map_err(|error| Failure::run(format!("error: {error}")))?;
    served.map_err(|error| Failure::run(format!("error: {error}")))?;
    crate::output::say(&format!(
        "baton serve stopped: run {} has {}/{} tasks succeeded; `baton serve` resumes it",
        summary.run_id, summary.n_succeeded, summary.n_tasks
    ));
    Ok(0)
}

/// The server's state, for `baton serve`'s address and for the local socket of `baton serve`
/// and `baton run` alike.
#[allow(clippy::too_many_arguments)]
pub(super) fn app_state(
    plan: &Plan,
    store: &Arc<dyn baton_store::Store>,
    handle: &baton_runtime::EngineHandle,
    hub: RemoteHub,
    run_id: &str,
    auth: Option<Auth>,
    log_dir: std::path::PathBuf,
    clock: baton_runtime::Clock,
    stop: &CancellationToken,
) -> AppState {
    AppState::new(ServerOptions {
        store: Arc::clone(store),
        engine: handle.clone(),
        hub,
        run_id: run_id.to_string(),
        plan: plan.clone(),
        auth,
        rate_limit: plan
            .auth
            .as_ref()
            .map(|auth| auth.rate_limit)
            .or(plan.server.rate_limit)
            .map(|limit| (limit.per_second, limit.burst)),
        max_request_size: plan.server.max_request_size as usize,
        log_dir,
        clock,
        shutdown: stop.clone(),
    })
}

/// The API on the Unix socket beside the store (see `baton_server::local`): how the CLI on
/// this machine reaches the process executing the run.
pub(super) struct FrontDoor {
    /// Owns the socket: it is closed and its file removed when the server returns.
    server: tokio::task::JoinHandle<Result<(), baton_server::Error>>,
}

impl FrontDoor {
    /// Binds the socket at `path` (replacing a stale one, never a live one) and serves the API
    /// there until `stop` fires.
    pub(super) fn open(
        path: &std::path::Path,
        state: AppState,
        plan: &Plan,
        stop: CancellationToken,
    ) -> Result<FrontDoor, baton_server::Error> {
        let socket = baton_server::local::bind(path)?;
        tracing::debug!(path = %socket.path().display(), "the API answers on the local socket");
        let server = tokio::spawn(baton_server::serve(
            socket,
            state,
            plan.server.max_request_size as usize,
            None,
            baton_server::ConnectionLimits::from_spec(&plan.server),
            stop,
        ));
        Ok(FrontDoor { server })
    }

    /// Waits for the server (stopped by the token given to [`FrontDoor::open`]); the socket
    /// is gone when this returns.
    pub(super) async fn close(self) {
        if let Ok(Err(error)) = self.server.await {
            tracing::warn!(%error, "the local API failed");
        }
    }
}

/// `baton token create`: signs a token locally with the `[auth]` secret; no server needed.
pub fn create_token(
    cli: &Cli,
    role: &str,
    agent: Option<&str>,
    ttl: Option<Duration>,
    subject: Option<&str>,
) -> Result<u8, Failure> {
    let loaded = load(cli)?;
    let role: baton_server::Role = role.parse().map_err(Failure::usage)?;
    let Some(auth) = auth_from(&loaded.plan, &environment())? else {
        return Err(Failure::usage(format!(
            "{} has no [auth] section: the API is open on loopback and takes no tokens",
            cli.config.display()
        )));
    };
    if let Some(agent) = agent
        && loaded.plan.agent(agent).is_none()
    {
        let known: Vec<&str> = loaded.plan.agents.iter().map(|agent| agent.name.as_str()).collect();
        return Err(Failure::usage(format!(
            "no agent `{agent}` in {} (known: {})",
            cli.config.display(),
            known.join(", ")
        )));
    }
    let subject = subject.map_or_else(
        || agent.map_or_else(|| role.as_str().to_string(), |agent| format!("agent:{agent}")),
        str::to_string,
    );
    let (token, _) = auth
        .issue(&subject, role, agent, ttl.unwrap_or(auth.default_ttl), baton_server::auth::unix_now())
        .map_err(|error| Failure::usage(error.to_string()))?;
    outln!("{token}");
    Ok(0)
}

/// `baton audit`: the audit log, newest first.
pub async fn audit(cli: &Cli, limit: u64, actor: Option<&str>, json: bool) -> Result<u8, Failure> {
    let source = super::source::Source::open(cli, None).await?;
    let entries = source.reader().audit(actor, limit).await?;
    if json {
        for entry in &entries {
            outln!("{}", serde_json::to_string(entry).unwrap_or_default());
        }
        return Ok(0);
    }
    if entries.is_empty() {
        outln!("no audited requests yet");
        return Ok(0);
    }
    let mut table = crate::output::table(&["id", "at", "who", "role", "request", "target", "outcome"]);
    for entry in &entries {
        table.add_row(vec![
            entry.id.to_string(),
            crate::output::time(entry.at),
            entry.actor.clone(),
            entry.role.clone(),
            entry.action.clone(),
            entry.target.clone().unwrap_or_default(),
            entry.outcome.clone(),
        ]);
    }
    outln!("{table}");
    Ok(0)
}

/// Prints what an operator watching a server wants to know, one line each: configuration
/// reloads, agents coming and going, failures. Routine task traffic is left to `/events`.
async fn log_events(
    mut events: tokio::sync::broadcast::Receiver<std::sync::Arc<baton_core::Event>>,
    run_id: String,
    stop: CancellationToken,
) {
    use baton_core::EventKind;
    let mut names = crate::output::TaskNames::default();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let event = match event {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if event.run_id != run_id {
            continue;
        }
        names.learn(&event);
        let notable = matches!(
            event.kind,
            EventKind::ConfigReloaded { .. }
                | EventKind::ConfigRejected { .. }
                | EventKind::AgentAdded { .. }
                | EventKind::AgentUpdated { .. }
                | EventKind::AgentRemoved { .. }
                | EventKind::AgentTerminated { .. }
                | EventKind::TaskDeadLettered { .. }
                | EventKind::TaskFailed { .. }
                | EventKind::RunResumed { .. }
                | EventKind::PhaseStarted { .. }
                | EventKind::BudgetThreshold { .. }
        );
        if notable {
            crate::output::say(&names.line(&event));
        }
    }
}
