//! `baton agent-host`: serves a remote agent (`runtime = "remote"`) of a `baton serve` on
//! another machine without a worker to write. It claims the agent's tasks over HTTP (a long
//! poll, up to `--concurrency` at once) and runs a command per task exactly as a per-task
//! process agent runs: the same code ([`ProcessAgent`]), so the task comes as JSON on stdin, as
//! `BATON_*` variables and as `{task.…}` placeholders, within the same limits, and exit status
//! 0 with stdout is the result.
//!
//! While a command runs its lease is renewed (`/agent/heartbeat`); its stderr goes to the
//! local log and, line by line, to the server as the task's progress messages (the server
//! keeps no log for a remote attempt: progress is what it records). A result the server
//! refuses (the lease expired: the task went back to the queue) is said and left: the task
//! completes once, wherever it runs next. An unreachable server is waited for, with backoff.
//! SIGINT or SIGTERM stops the claiming; running commands get `--grace` to finish, are then
//! stopped, and every outcome is reported before the host exits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::config::{AgentKind, AgentSpec, CircuitBreaker, LogRotation, ProcessSpec};
use baton_core::model::TaskId;
use baton_runtime::AgentRuntime;
use baton_runtime::agent::{AgentContext, AgentEvent, AgentRequest, Attempt};
use baton_runtime::process::{ApiAccess, ProcessAgent, ProcessEnv};
use baton_server::worker::ClaimedTask;

use crate::client::Client;
use crate::{Cli, Failure};

/// How long one claim waits for a task (the server allows up to 60 s).
const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// The first wait before trying an unreachable server again; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a lease is renewed when the server does not say how long it lasts.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Stderr lines waiting to be shipped to the server, per attempt; more are only logged locally.
const SHIPPED_LINES: usize = 1024;
/// Most bytes of stderr shipped in one progress message.
const MAX_SHIPPED: usize = 8 * 1024;
/// How many times a result is handed in while the server cannot be reached.
const RESULT_TRIES: u32 = 8;

/// What `baton agent-host` was asked to do.
pub struct HostOptions {
    pub agent: String,
    pub concurrency: u32,
    pub grace: Duration,
    pub timeout: Option<Duration>,
    pub env_passthrough: Vec<String>,
    pub log_dir: Option<std::path::PathBuf>,
    pub token_env: Option<String>,
    pub command: Vec<String>,
}

/// What every task of the host shares.
struct Host {
    client: Arc<Client>,
    agent: String,
    runtime: ProcessAgent,
    heartbeat: Duration,
    /// Fires `--grace` after a stop was asked for: running commands are stopped then.
    kill: CancellationToken,
    /// What the agent tells its engine, which the host stands in for. A std mutex: held only
    /// to take what is waiting, never across an await.
    told: Mutex<Told>,
}

/// The agent's side of its context: the usage its failed attempts reported (a successful
/// attempt's is in its result), kept per task until that task's outcome is handed in.
struct Told {
    events: tokio::sync::mpsc::UnboundedReceiver<AgentEvent>,
    /// Held so that the agent's requests channel stays open (a per-task agent asks nothing).
    _requests: tokio::sync::mpsc::UnboundedReceiver<AgentRequest>,
    usage: HashMap<TaskId, Vec<serde_json::Value>>,
}

impl Host {
    /// The usage reports of `task`'s attempt. Its agent sends them before the attempt ends, so
    /// all of them are waiting once it has.
    fn usage_of(&self, task: TaskId) -> Vec<serde_json::Value> {
        let mut told = self.told.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Ok(event) = told.events.try_recv() {
            match event {
                AgentEvent::Usage { task: Some(of), usage, .. } => told.usage.entry(of).or_default().push(usage),
                AgentEvent::MessagesTaken { reply, .. } => {
                    let _ = reply.send(());
                }
                _ => {}
            }
        }
        told.usage.remove(&task).unwrap_or_default()
    }
}

/// `baton agent-host`: checks what it was given and the agent it is to serve (exit 2 saying
/// what is wrong), then claims and runs that agent's tasks until stopped; exits 0 once every
/// running task's outcome has been handed in.
pub async fn agent_host(cli: &Cli, options: HostOptions) -> Result<u8, Failure> {
    let command = checked_command(&options.command)?;
    if options.concurrency == 0 {
        return Err(Failure::usage("--concurrency must be at least 1"));
    }
    let url = cli.url.as_deref().filter(|url| !url.trim().is_empty()).ok_or_else(|| {
        Failure::usage("--url is missing: the address of the `baton serve` whose agent this host serves (or BATON_URL)")
    })?;
    let token = match &options.token_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            Failure::usage(format!("--token-env names `{var}`, which is not set (or not UTF-8) in this environment"))
        })?),
        None => cli.token.clone().filter(|token| !token.trim().is_empty()),
    };
    let client = Client::for_agent_host(url, token.clone())?;

    let shutdown = CancellationToken::new();
    let _signals = super::watch_signals(shutdown.clone());
    let Some(spec) = served_spec(&client, &options.agent, &shutdown).await? else { return Ok(0) };
    let runtime_kind = spec["runtime"].as_str().unwrap_or("unknown");
    if runtime_kind != "remote" {
        return Err(Failure::usage(format!(
            "agent `{}` at {} has runtime = \"{runtime_kind}\": Baton runs it itself; `baton agent-host` serves agents declared with runtime = \"remote\"",
            options.agent,
            client.url()
        )));
    }
    // A third of the lease, so that one late heartbeat does not lose it.
    let heartbeat = spec["heartbeat_timeout"]
        .as_str()
        .and_then(|text| baton_core::time::parse_duration(text).ok())
        .map_or(DEFAULT_HEARTBEAT, |lease| (lease / 3).max(Duration::from_millis(100)));

    let base_dir =
        std::env::current_dir().map_err(|error| Failure::run(format!("cannot read the current directory: {error}")))?;
    let mut process = ProcessSpec::per_task(command.clone());
    process.env_passthrough = options.env_passthrough.clone();
    process.limits.timeout = options.timeout;
    let agent_spec = agent_spec(&options.agent, &spec, options.concurrency, process.clone());
    let process_env = ProcessEnv {
        log_dir: options.log_dir.clone().unwrap_or_else(|| base_dir.join(".baton/logs")),
        base_dir,
        env: super::environment(),
        registry: None,
        api: Some(ApiAccess { url: client.url().to_string(), token_for: Arc::new(move |_| token.clone()) }),
        mcp_servers: Vec::new(),
    };
    let log_path = process_env.log_path(&options.agent);
    let runtime = ProcessAgent::new(agent_spec, process, &process_env);
    let (events, told_events) = tokio::sync::mpsc::unbounded_channel();
    let (requests, told_requests) = tokio::sync::mpsc::unbounded_channel();
    let context = AgentContext { run_id: String::new(), events, requests };
    runtime.start(context).await.map_err(|error| Failure::usage(format!("cannot run `{}`: {error}", command[0])))?;
    let told = Mutex::new(Told { events: told_events, _requests: told_requests, usage: HashMap::new() });

    errln!(
        "agent-host: serving agent `{}` of {} with up to {} task(s) at once: {} (log: {})",
        options.agent,
        client.url(),
        options.concurrency,
        command.join(" "),
        log_path.display()
    );
    let host = Arc::new(Host {
        client: Arc::new(client),
        agent: options.agent.clone(),
        runtime,
        heartbeat,
        kill: CancellationToken::new(),
        told,
    });
    let mut running = JoinSet::new();
    let ended = claim_loop(&host, options.concurrency as usize, &shutdown, &mut running).await;

    while running.try_join_next().is_some() {}
    if !running.is_empty() {
        errln!(
            "agent-host: stopping: waiting up to {} for {} running task(s)",
            baton_core::time::format_duration(options.grace),
            running.len()
        );
        let all_done = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(options.grace, all_done).await.is_err() {
            errln!("agent-host: the grace period is over: stopping {} command(s)", running.len());
            host.kill.cancel();
            while running.join_next().await.is_some() {}
        }
    }
    errln!("agent-host: stopped");
    ended.map(|()| 0)
}

/// The command to run per task, checked: present, and with known placeholders only.
fn checked_command(command: &[String]) -> Result<Vec<String>, Failure> {
    if command.is_empty() || command[0].trim().is_empty() {
        return Err(Failure::usage(
            "the command to run per task is missing: baton agent-host --url URL --agent NAME -- COMMAND [ARG…]",
        ));
    }
    for arg in command {
        if arg.contains("{mcp.config}") {
            return Err(Failure::usage(
                "`{mcp.config}` is not available to `baton agent-host`: the run's MCP servers are on the server",
            ));
        }
        baton_core::config::check_placeholders(arg)
            .map_err(|message| Failure::usage(format!("in the command's argument `{arg}`: {message}")))?;
    }
    Ok(command.to_vec())
}

/// The agent's spec as the server runs it, asked until the server answers; `None` when the
/// host was stopped first. A refusal (an unknown agent, a bad token) is final.
async fn served_spec(
    client: &Client,
    agent: &str,
    shutdown: &CancellationToken,
) -> Result<Option<serde_json::Value>, Failure> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let asked = tokio::select! {
            asked = client.agent_spec(agent) => asked,
            () = shutdown.cancelled() => return Ok(None),
        };
        match asked {
            Ok(spec) => return Ok(Some(spec)),
            Err(failure) if failure.code == 2 => {
                return Err(Failure::usage(format!("agent `{agent}` at {}: {}", client.url(), failure.message)));
            }
            Err(failure) => {
                if !retry_after(&failure, &mut backoff, shutdown).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Says that the server could not be reached and waits before the next try (doubling the
/// wait); false when the host was stopped meanwhile.
async fn retry_after(failure: &Failure, backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    errln!(
        "agent-host: the server does not answer: {}; trying again in {}",
        failure.message,
        baton_core::time::format_duration(*backoff)
    );
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = shutdown.cancelled() => false,
    }
}

/// The spec of the per-task agent the host runs: the served agent's name, role, runbook and
/// objectives (its brief), with the host's command.
fn agent_spec(name: &str, served: &serde_json::Value, concurrency: u32, process: ProcessSpec) -> AgentSpec {
    AgentSpec {
        name: name.to_string(),
        role: served["role"].as_str().unwrap_or(name).to_string(),
        workstream: None,
        priority: Default::default(),
        capabilities: Vec::new(),
        kind: AgentKind::Process(process),
        restart: Default::default(),
        max_restarts: 0,
        restart_window: Duration::ZERO,
        restart_backoff: Duration::ZERO,
        heartbeat_timeout: Duration::ZERO,
        circuit_breaker: CircuitBreaker { failures: 1, cooldown: Duration::ZERO },
        concurrency,
        runbook: served["runbook"].as_str().map(str::to_string),
        objectives: serde_json::from_value(served["objectives"].clone()).unwrap_or_default(),
        tools: Vec::new(),
        log_rotation: LogRotation::default(),
    }
}

/// Claims tasks while there is room for them, until the host is stopped (`Ok`) or the server
/// refuses the claims (`Err`: the agent is gone, the token is not good).
async fn claim_loop(
    host: &Arc<Host>,
    concurrency: usize,
    shutdown: &CancellationToken,
    running: &mut JoinSet<()>,
) -> Result<(), Failure> {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Finished tasks are collected as they end, so that the set stays small.
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit,
            () = shutdown.cancelled() => return Ok(()),
        };
        let Ok(first) = first else { return Ok(()) };
        let mut permits = vec![first];
        while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
            permits.push(permit);
        }
        // A claim given up when the host stops may have been answered: its tasks' leases run
        // out on the server, and they are retried there.
        let claimed = tokio::select! {
            claimed = host.client.claim(&host.agent, permits.len(), CLAIM_WAIT) => claimed,
            () = shutdown.cancelled() => return Ok(()),
        };
        match claimed {
            Ok(answer) => {
                backoff = FIRST_BACKOFF;
                for claimed in answer.tasks {
                    let Some(permit) = permits.pop() else { break };
                    let host = Arc::clone(host);
                    running.spawn(async move {
                        run_one(&host, claimed).await;
                        drop(permit);
                    });
                }
            }
            Err(failure) if failure.code == 2 => {
                return Err(Failure::usage(format!(
                    "agent `{}` at {}: the server refuses the claim: {}",
                    host.agent,
                    host.client.url(),
                    failure.message
                )));
            }
            Err(failure) => {
                if !retry_after(&failure, &mut backoff, shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Runs one claimed attempt: the command, with its lease renewed and its stderr shipped, then
/// its outcome handed in.
async fn run_one(host: &Host, claimed: ClaimedTask) {
    let mut task = claimed.task;
    task.attempt = claimed.attempt;
    let (id, attempt_no) = (task.id, claimed.attempt);
    let attempt = Attempt { run_id: claimed.run_id, agent: host.agent.clone(), task };
    let cancel = host.kill.child_token();
    let lease_lost = CancellationToken::new();
    // Renewed until the result is handed in (or given up on): a lease that ran out while the
    // result waits for a slow server would have the task run again elsewhere.
    let _heartbeats = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(renew_lease(
        Arc::clone(&host.client),
        host.agent.clone(),
        id,
        attempt_no,
        host.heartbeat,
        {
            let (cancel, lease_lost) = (cancel.clone(), lease_lost.clone());
            move |reason: String| {
                errln!(
                    "agent-host: task {id} attempt {attempt_no}: the lease is lost ({reason}); stopping its command"
                );
                lease_lost.cancel();
                cancel.cancel();
            }
        },
    )));
    let (lines, shipped) = tokio::sync::mpsc::channel(SHIPPED_LINES);
    let shipper = tokio::spawn(ship_lines(Arc::clone(&host.client), host.agent.clone(), id, attempt_no, shipped));
    let outcome = host.runtime.run_tapped(attempt, cancel, Some(lines)).await;
    // The tap closed with the process's stderr: what is left is shipped before the result.
    let _ = tokio::time::timeout(Duration::from_secs(10), shipper).await;
    let usage = host.usage_of(id);
    if lease_lost.is_cancelled() {
        errln!("agent-host: task {id} attempt {attempt_no}: not reported, the server gave the attempt up");
        return;
    }
    // Tokens a failed attempt used count as the process runtime counts them.
    for usage in usage {
        if let Err(failure) = host.client.usage(&host.agent, id, &usage).await {
            errln!(
                "agent-host: task {id} attempt {attempt_no}: the usage it reported is not counted: {}",
                failure.message
            );
        }
    }
    let outcome = match outcome {
        Outcome::Failed { reason } if host.kill.is_cancelled() && reason == "cancelled" => {
            Outcome::Failed { reason: "cancelled: `baton agent-host` stopped before the command finished".into() }
        }
        // Checked as the server checks it: a result it would refuse is handed in as the
        // failure it is, not left to run out its lease.
        Outcome::Succeeded { result } => match baton_core::budget::Usage::from_result(&result) {
            Ok(_) => Outcome::Succeeded { result },
            Err(error) => Outcome::Failed { reason: format!("the result's `usage` is refused: {error}") },
        },
        outcome => outcome,
    };
    let said = match &outcome {
        Outcome::Succeeded { .. } => "succeeded".to_string(),
        Outcome::Failed { reason } => format!("failed: {reason}"),
    };
    let mut backoff = FIRST_BACKOFF;
    for n_try in 1..=RESULT_TRIES {
        match host.client.finish(&host.agent, id, attempt_no, &outcome).await {
            Ok(recorded) => {
                errln!("agent-host: task {id} attempt {attempt_no} {said} (recorded: {})", recorded.state);
                return;
            }
            Err(failure) if failure.code == 2 => {
                errln!(
                    "agent-host: task {id} attempt {attempt_no} {said}, but the server refused the result: {}; the task is not completed twice",
                    failure.message
                );
                return;
            }
            Err(failure) if n_try < RESULT_TRIES => {
                errln!(
                    "agent-host: task {id} attempt {attempt_no}: cannot hand in the result: {}; trying again in {}",
                    failure.message,
                    baton_core::time::format_duration(backoff)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(failure) => {
                errln!(
                    "agent-host: task {id} attempt {attempt_no} {said}, but the result could not be handed in: {}; its lease runs out and the server retries it",
                    failure.message
                );
            }
        }
    }
}

/// Renews an attempt's lease every `every` until aborted; `lost` is called once with the
/// server's reason when it refuses (the attempt is no longer this host's). A server that does
/// not answer is tried again at the next beat: the lease lasts three beats.
async fn renew_lease(
    client: Arc<Client>,
    agent: String,
    task: TaskId,
    attempt: u32,
    every: Duration,
    lost: impl FnOnce(String),
) {
    loop {
        tokio::time::sleep(every).await;
        match client.heartbeat(&agent, task, attempt).await {
            Ok(_) => {}
            Err(failure) if failure.code == 2 => {
                lost(failure.message);
                return;
            }
            Err(failure) => {
                tracing::warn!(%task, attempt, error = %failure.message, "cannot renew a lease; trying again at the next heartbeat");
            }
        }
    }
}

/// Ships an attempt's stderr lines to the server as progress messages, as many lines in one as
/// are waiting (up to [`MAX_SHIPPED`] bytes), until the command's stderr closes. A refusal
/// (the attempt is not held any more) ends the shipping; a server that does not answer loses
/// those lines (they are in the local log).
async fn ship_lines(
    client: Arc<Client>,
    agent: String,
    task: TaskId,
    attempt: u32,
    mut lines: tokio::sync::mpsc::Receiver<String>,
) {
    while let Some(first) = lines.recv().await {
        let mut message = first;
        while message.len() < MAX_SHIPPED {
            match lines.try_recv() {
                Ok(line) => {
                    message.push('\n');
                    message.push_str(&line);
                }
                Err(_) => break,
            }
        }
        if message.len() > MAX_SHIPPED {
            let mut end = MAX_SHIPPED;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        match client.progress(&agent, task, attempt, &message).await {
            Ok(()) => {}
            Err(failure) if failure.code == 2 => {
                tracing::debug!(%task, attempt, error = %failure.message, "progress refused; no more lines shipped");
                return;
            }
            Err(failure) => {
                tracing::warn!(%task, attempt, error = %failure.message, "cannot ship stderr lines to the server");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn the_command_must_be_there_and_its_placeholders_known() {
        assert!(checked_command(&[]).unwrap_err().message.contains("the command to run per task is missing"));
        let unknown = checked_command(&args(&["echo", "{task.nope}"])).unwrap_err();
        assert!(unknown.message.contains("unknown placeholder `{task.nope}`"), "{}", unknown.message);
        assert!(checked_command(&args(&["cat", "{mcp.config}"])).unwrap_err().message.contains("MCP"));
        let fine = args(&["sh", "-c", "echo {task.title} {task.input.x}", "awk '{print $1}'"]);
        assert_eq!(checked_command(&fine).unwrap(), fine);
    }
}
