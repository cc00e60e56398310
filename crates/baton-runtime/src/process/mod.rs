//! Process agents. In `per-task` mode the agent's command is started once per task: the task
//! goes in as JSON on stdin, as `BATON_*` environment variables and as `{task.…}`
//! placeholders in the arguments (substituted as whole arguments, never through a shell). Exit
//! status 0 is success; stdout is the result (kept as JSON when it parses); stderr goes to the
//! agent's log file.
//!
//! Every attempt runs in its own process group, in the agent's working directory, with an
//! allow-listed environment and the agent's limits. When it ends, times out or is cancelled the
//! whole tree is killed, so nothing it started outlives it: its supervisor (`reaper`) kills every
//! descendant, also daemons that left the group, and also when Baton itself is killed.
//!
//! Long-running agents live in the submodules: `worker` (JSON-RPC over stdio) and `pty` (a
//! program in a pseudo-terminal).

#![allow(clippy::disallowed_methods, reason = "this module is where Baton starts agents' processes")]

pub mod log;
pub mod pty;
pub mod reaper;
pub mod sys;
pub mod worker;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::config::{AgentSpec, ProcessSpec};
use baton_core::time::format_duration;

use crate::agent::{AgentContext, AgentError, AgentRuntime, Attempt};
use crate::check::resolve_program;

/// Variables of Baton's environment an agent inherits without asking.
/// `LC_*` variables are inherited too.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "TERM", "TZ", "TMPDIR", "SHELL"];

/// Most bytes of stdout kept as a task's result.
const MAX_RESULT_BYTES: u64 = 16 * 1024 * 1024;

/// How long a stopped attempt gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long the output pipes are read after the process group is gone.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// Where an agent lives: its working directory, its log, the environment it may inherit.
#[derive(Clone)]
pub struct ProcessEnv {
    /// The configuration file's directory: relative paths are resolved against it.
    pub base_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Baton's own environment (the allow-list is applied per agent).
    pub env: BTreeMap<String, String>,
    /// Where attempts' process groups are recorded, so that whoever resumes a run after
    /// `kill -9` can kill what was left running.
    pub registry: Option<Registry>,
    /// How agents reach the server's API (`baton serve`): `BATON_URL`, and `BATON_TOKEN`
    /// scoped to the agent.
    pub api: Option<ApiAccess>,
    /// The run's MCP servers (`[mcp_servers]`): stdio ones are started with this environment,
    /// and a per-task agent's `{mcp.config}` file lists those its `tools` reach.
    pub mcp_servers: Vec<baton_core::config::McpServerSpec>,
}

/// Where a per-task attempt's stderr lines go besides the agent's log, as they come: a
/// bounded channel, so that a process writing faster than the lines are taken away is never
/// held up (the lines that do not fit are only logged).
pub type StderrTap = tokio::sync::mpsc::Sender<String>;

/// Issues the API token for an agent by name.
pub type TokenFor = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The API address and each agent's own token, for agents that `baton serve` starts.
#[derive(Clone)]
pub struct ApiAccess {
    pub url: String,
    /// Issues the token for an agent (`None` when the server has no `[auth]`).
    pub token_for: TokenFor,
}

/// Records the process groups Baton starts in the store: attempts' (by task and attempt) and
/// long-running agents' (by agent and start).
#[derive(Clone)]
pub struct Registry {
    pub store: std::sync::Arc<dyn baton_store::Store>,
    pub host: String,
}

impl Registry {
    /// The record of a process group started for `owner`.
    fn record(&self, owner: baton_store::ProcessOwner, pgid: i32) -> baton_store::ProcessRecord {
        baton_store::ProcessRecord { owner, pgid, host: self.host.clone() }
    }

    async fn spawned(&self, run_id: &str, record: &baton_store::ProcessRecord) {
        if let Err(error) = self.store.record_process(run_id, record.clone()).await {
            tracing::warn!(%error, "cannot record a process group");
        }
    }

    fn attempt_record(&self, attempt: &Attempt, pgid: i32) -> baton_store::ProcessRecord {
        self.record(baton_store::ProcessOwner::Attempt { task: attempt.task.id, attempt: attempt.task.attempt }, pgid)
    }

    /// The record of the `generation`-th start of long-running agent `agent`.
    fn agent_record(&self, agent: &str, generation: u64, pgid: i32) -> baton_store::ProcessRecord {
        self.record(baton_store::ProcessOwner::Agent { agent: agent.to_string(), generation }, pgid)
    }

    /// The messages waiting for a per-task agent.
    pub(crate) async fn inbox(&self, run_id: &str, agent: &str) -> Vec<baton_core::messages::Delivery> {
        match self.store.deliveries(run_id, Some(agent), baton_core::messages::INBOX_LIMIT).await {
            Ok(deliveries) => deliveries
                .into_iter()
                .filter(|delivery| {
                    delivery.to == agent && delivery.state == baton_core::messages::DeliveryState::Pending
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read an agent's messages");
                Vec::new()
            }
        }
    }

    async fn ended(&self, run_id: &str, record: &baton_store::ProcessRecord) {
        if let Err(error) = self.store.forget_process(run_id, record).await {
            tracing::warn!(%error, "cannot forget a process group");
        }
    }
}

/// The fields of `/proc/PID/stat` after the command, `state ppid pgrp …` (the command is in
/// parentheses and may hold spaces); `None` when there is no such process.
pub fn proc_stat(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rfind(')').and_then(|idx| stat.get(idx + 2..)).map(str::to_string)
}

/// Kills the processes of a run that a dead node left behind: members of the recorded process
/// groups that carry the run's id in their environment (so a reused group id is never hit).
/// Returns how many were killed.
pub fn kill_leftovers(run_id: &str, pgids: &[i32]) -> usize {
    let marker = format!("BATON_RUN_ID={run_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let mut n_killed = 0;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Some(fields) = proc_stat(pid) else { continue };
        let pgrp = fields.split_whitespace().nth(2).and_then(|field| field.parse::<i32>().ok());
        if !pgrp.is_some_and(|pgrp| pgids.contains(&pgrp)) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|byte| *byte == 0).any(|var| var == marker.as_bytes())
            && nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            n_killed += 1;
        }
    }
    n_killed
}

impl ProcessEnv {
    /// The directory that holds the store, the logs and the run's other files.
    pub fn state_dir(&self) -> &std::path::Path {
        self.log_dir.parent().unwrap_or(&self.log_dir)
    }

    pub fn log_path(&self, agent: &str) -> PathBuf {
        self.log_dir.join(format!("{agent}.log"))
    }

    /// Where a terminal agent is served for `baton attach`: `sockets/` beside the log
    /// directory, in the directory that holds the store.
    pub fn socket_path(&self, agent: &str) -> PathBuf {
        let state_dir = self.log_dir.parent().unwrap_or(&self.log_dir);
        pty::attach_socket(state_dir, agent)
    }

    /// An agent's working directory and its allow-listed environment.
    fn for_agent(&self, spec: &AgentSpec, process: &ProcessSpec) -> (PathBuf, BTreeMap<String, String>) {
        let workdir = match &process.workdir {
            Some(dir) => self.base_dir.join(dir),
            None => self.base_dir.clone(),
        };
        let mut env: BTreeMap<String, String> = self
            .env
            .iter()
            .filter(|(key, _)| {
                INHERITED_ENV.contains(&key.as_str()) || key.starts_with("LC_") || process.env_passthrough.contains(key)
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        env.extend(process.env.clone());
        crate::brief::Brief::of(spec, &self.base_dir).add_to(&mut env);
        if let Some(api) = &self.api {
            env.insert("BATON_URL".into(), api.url.clone());
            if let Some(token) = (api.token_for)(&spec.name) {
                env.insert("BATON_TOKEN".into(), token);
            }
        }
        (workdir, env)
    }
}

/// The command of a stdio MCP server (`[mcp_servers.NAME] command`), started like an agent's
/// process: its own process group under the reaper, in the configuration's directory, with the
/// allow-listed part of Baton's environment and the server's own `env`. Only this module starts
/// processes; the MCP hub (`crate::mcp`) hands the command to its transport.
pub(crate) fn mcp_server_command(
    command: &[String],
    server_env: &BTreeMap<String, String>,
    process_env: &ProcessEnv,
) -> Result<tokio::process::Command, String> {
    let (program, args) = command.split_first().ok_or("the command is empty")?;
    let mut env: BTreeMap<String, String> = process_env
        .env
        .iter()
        .filter(|(key, _)| INHERITED_ENV.contains(&key.as_str()) || key.starts_with("LC_"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    env.extend(server_env.clone());
    let program = resolve_program(program, &process_env.base_dir, env.get("PATH").map(String::as_str))?;
    Ok(base_command(program, args, &process_env.base_dir, &env, &baton_core::config::Limits::default()))
}

/// Checks an agent's working directory and makes its log directory: what every start needs.
/// A working directory that does not exist is a permanent failure; a log directory that
/// cannot be made (a full disk, for now) a transient one.
async fn prepare_dirs(workdir: &std::path::Path, log_path: &std::path::Path) -> Result<(), AgentError> {
    if !workdir.is_dir() {
        return Err(AgentError::permanent(format!("working directory {} does not exist", workdir.display())));
    }
    if let Some(parent) = log_path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|error| {
            AgentError::transient(format!("cannot create the log directory {}: {error}", parent.display()))
        })?;
    }
    Ok(())
}

/// Finds an agent's program: one that does not exist, or is not executable, is a permanent
/// failure (starting again would find the same).
fn find_program(
    program: &str,
    workdir: &std::path::Path,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf, AgentError> {
    resolve_program(program, workdir, env.get("PATH").map(String::as_str)).map_err(AgentError::permanent)
}

/// Why a program could not be spawned, and whether trying again may help: a program gone or
/// not executable (or not a program at all) will not start next time either; a fork refused
/// for lack of processes or memory may.
fn spawn_error(program: &str, error: &std::io::Error) -> AgentError {
    let message = format!("cannot start `{program}`: {error}");
    let permanent = matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied)
        || error.raw_os_error() == Some(nix::errno::Errno::ENOEXEC as i32);
    if permanent { AgentError::permanent(message) } else { AgentError::transient(message) }
}

/// The log line that opens an attempt.
fn attempt_header(task: &baton_core::model::TaskRecord) -> String {
    format!("--- task {} `{}` attempt {}", task.id, task.title, task.attempt)
}

/// The log line that closes an attempt, with how long it took and how it ended.
fn attempt_footer(task: &baton_core::model::TaskRecord, outcome: &Outcome, started: tokio::time::Instant) -> String {
    let took = format_duration(Duration::from_millis(started.elapsed().as_millis() as u64));
    match outcome {
        Outcome::Succeeded { .. } => format!("--- task {} attempt {} succeeded in {took}", task.id, task.attempt),
        Outcome::Failed { reason } => {
            format!("--- task {} attempt {} failed in {took}: {reason}", task.id, task.attempt)
        }
    }
}

/// Appends a line to an agent's log.
async fn append_log(path: &std::path::Path, line: &str) {
    log::AgentLog::of(path).line(line);
}

/// A command in its own process group, in `workdir`, with exactly `env`, piped, with the
/// agent's limits and the parent-death signal, under its supervisor (`reaper`).
fn base_command(
    program: PathBuf,
    args: &[String],
    workdir: &std::path::Path,
    env: &BTreeMap<String, String>,
    limits: &baton_core::config::Limits,
) -> tokio::process::Command {
    let limits = sys::ChildLimits { memory: limits.memory, cpu_seconds: limits.cpu.map(|cpu| cpu.as_secs().max(1)) };
    let mut command = reaper::command(program, args, limits);
    command
        .current_dir(workdir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// The last non-empty line a process wrote on stderr, as kept ([`log::MAX_LINE`] bytes at most),
/// and how many bytes of it were cut.
#[derive(Default)]
pub(crate) struct LastLine {
    text: String,
    n_cut: u64,
}

impl LastLine {
    /// `reason: LINE`, at most [`log::MAX_REASON`] bytes, saying what was cut.
    fn after(&self, reason: String) -> String {
        if self.text.is_empty() {
            return reason;
        }
        log::cut(&format!("{reason}: {}", self.text), log::MAX_REASON, self.n_cut)
    }
}

/// Copies a process's stderr into its agent's log, as bytes (an agent may print anything, and
/// the pipe must be drained to the end or the agent dies of SIGPIPE), a line at a time with
/// each line cut to [`log::MAX_LINE`] bytes while it is read. Resolves to the last non-empty
/// line. With `tap`, each line also goes there as it is logged (`baton agent-host` ships them
/// to the server); a line that does not fit in the tap's channel is not sent there, only logged.
fn copy_stderr(
    stderr: tokio::process::ChildStderr,
    log_path: PathBuf,
    tap: Option<StderrTap>,
) -> tokio::task::JoinHandle<LastLine> {
    tokio::spawn(async move {
        let log = log::AgentLog::of(&log_path);
        let mut last_line = LastLine::default();
        let mut reader = BufReader::new(stderr);
        let mut cutter = log::LineCutter::default();
        let mut finish = |cutter: &mut log::LineCutter| {
            cutter.take(|line| {
                log.write(&line.logged());
                let text = String::from_utf8_lossy(line.kept);
                if let Some(tap) = &tap {
                    let _ = tap.try_send(text.trim_end_matches('\r').to_string());
                }
                if !text.trim().is_empty() {
                    last_line = LastLine { text: text.trim_end_matches('\r').to_string(), n_cut: line.n_cut };
                }
            })
        };
        loop {
            let chunk = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            let (n_taken, ends) = cutter.push(chunk);
            reader.consume(n_taken);
            if ends {
                finish(&mut cutter);
            }
        }
        if !cutter.is_empty() {
            finish(&mut cutter);
        }
        last_line
    })
}

pub struct ProcessAgent {
    spec: AgentSpec,
    process: ProcessSpec,
    workdir: PathBuf,
    log_path: PathBuf,
    /// Held so that every writer of the log shares its rotation.
    log: std::sync::Arc<log::AgentLog>,
    env: BTreeMap<String, String>,
    registry: Option<Registry>,
    /// The agent's role, runbook and objectives, handed with each task as `brief`.
    brief: serde_json::Value,
    /// Process groups of running attempts, for `stop`. A std mutex: held only to insert or
    /// remove, never across an await.
    groups: Mutex<HashSet<i32>>,
    /// Where usage reported by a failed attempt goes (a successful one's is in its result).
    context: Mutex<Option<AgentContext>>,
    /// When the command has `{mcp.config}`: the file it stands for, written when the agent
    /// starts (`crate::mcp::config`), and the servers that may go in it.
    mcp_config: Option<std::path::PathBuf>,
    mcp_servers: Vec<baton_core::config::McpServerSpec>,
}

impl ProcessAgent {
    /// Tokens are spent whether or not the task succeeds: a failed attempt whose output says
    /// what it used (a CLI coding agent's `usage`) is counted too.
    fn report_usage_of_failure(&self, attempt: &Attempt, stdout: &[u8]) {
        let result = parse_result(stdout);
        let usage = match baton_core::budget::Usage::from_result(&result) {
            Ok(Some(usage)) => usage,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, agent = %self.spec.name, task = %attempt.task.id, "usage of a failed attempt refused");
                return;
            }
        };
        let Some(context) = self.context.lock().expect("context lock").clone() else { return };
        let _ = context.events.send(crate::agent::AgentEvent::Usage {
            agent: self.spec.name.clone(),
            task: Some(attempt.task.id),
            usage: serde_json::to_value(usage).unwrap_or_default(),
        });
    }

    /// Has the engine acknowledge the messages handed over with a task; returns once they are
    /// (or the engine has stopped).
    async fn acknowledge(&self, inbox: Vec<baton_core::messages::Delivery>) {
        if inbox.is_empty() {
            return;
        }
        let Some(context) = self.context.lock().expect("context lock").clone() else { return };
        let (reply, acknowledged) = tokio::sync::oneshot::channel();
        let taken = crate::agent::AgentEvent::MessagesTaken { agent: self.spec.name.clone(), deliveries: inbox, reply };
        if context.events.send(taken).is_ok() {
            let _ = acknowledged.await;
        }
    }

    pub fn new(spec: AgentSpec, process: ProcessSpec, process_env: &ProcessEnv) -> ProcessAgent {
        let (workdir, env) = process_env.for_agent(&spec, &process);
        let log_path = process_env.log_path(&spec.name);
        let mcp_config = process
            .command
            .iter()
            .any(|arg| arg.contains("{mcp.config}"))
            .then(|| crate::mcp::config::path(process_env.state_dir(), &spec.name));
        ProcessAgent {
            mcp_config,
            mcp_servers: process_env.mcp_servers.clone(),
            log: log::AgentLog::open(&log_path, spec.log_rotation),
            brief: crate::brief::Brief::of(&spec, &process_env.base_dir).json(),
            log_path,
            spec,
            process,
            workdir,
            env,
            registry: process_env.registry.clone(),
            groups: Mutex::new(HashSet::new()),
            context: Mutex::new(None),
        }
    }

    async fn log(&self, line: &str) {
        self.log.line(line);
    }

    fn command(&self, attempt: &Attempt) -> Result<tokio::process::Command, String> {
        let argv: Vec<String> = self
            .process
            .command
            .iter()
            .map(|arg| match &self.mcp_config {
                Some(path) => substitute(&arg.replace("{mcp.config}", &path.to_string_lossy()), attempt),
                None => substitute(arg, attempt),
            })
            .collect::<Result<_, _>>()?;
        let program = resolve_program(&argv[0], &self.workdir, self.env.get("PATH").map(String::as_str))?;
        let task = &attempt.task;
        let mut command = base_command(program, &argv[1..], &self.workdir, &self.env, &self.process.limits);
        command
            .env("BATON_TASK_ID", task.id.to_string())
            .env("BATON_TASK_KEY", task.key.clone().unwrap_or_default())
            .env("BATON_TASK_TITLE", &task.title)
            .env("BATON_TASK_INPUT", input_variable(&task.input))
            .env("BATON_TASK_ATTEMPT", task.attempt.to_string())
            .env("BATON_WORKSTREAM", task.workstream.clone().unwrap_or_default())
            .env("BATON_AGENT", &attempt.agent)
            .env("BATON_RUN_ID", &attempt.run_id);
        Ok(command)
    }

    async fn run_attempt(&self, attempt: &Attempt, cancel: &CancellationToken, tap: Option<StderrTap>) -> Outcome {
        let task = &attempt.task;
        let mut command = match self.command(attempt) {
            Ok(command) => command,
            Err(reason) => return Outcome::Failed { reason },
        };
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                return Outcome::Failed { reason: format!("cannot start `{}`: {error}", self.process.command[0]) };
            }
        };
        let pgid = child.id().map(|pid| pid as i32);
        let record = match (&self.registry, pgid) {
            (Some(registry), Some(pgid)) => Some(registry.attempt_record(attempt, pgid)),
            _ => None,
        };
        if let Some(pgid) = pgid {
            self.groups.lock().unwrap_or_else(|p| p.into_inner()).insert(pgid);
        }
        if let (Some(registry), Some(record)) = (&self.registry, &record) {
            registry.spawned(&attempt.run_id, record).await;
        }
        // Messages addressed to the agent since its last task come with this one.
        let inbox = match &self.registry {
            Some(registry) => registry.inbox(&attempt.run_id, &attempt.agent).await,
            None => Vec::new(),
        };
        let mut task_value = task_json(attempt);
        task_value["brief"] = self.brief.clone();
        task_value["messages"] = serde_json::Value::Array(
            inbox
                .iter()
                .map(|delivery| {
                    serde_json::json!({
                        "message_id": delivery.message_id, "from": delivery.from, "topic": delivery.topic,
                        "body": delivery.body, "data": delivery.data, "task_id": delivery.task,
                        "correlation_id": delivery.correlation_id,
                    })
                })
                .collect(),
        );
        let stdin_json = task_value.to_string();
        let mut stdin = child.stdin.take();
        let feed = async move {
            if let Some(stdin) = stdin.as_mut() {
                // An agent that does not read its stdin closes the pipe: not an error.
                let _ = stdin.write_all(stdin_json.as_bytes()).await;
                let _ = stdin.write_all(b"\n").await;
            }
            drop(stdin);
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let read_stdout = tokio::spawn(async move {
            let mut buffer = Vec::new();
            let read = stdout.take(MAX_RESULT_BYTES + 1).read_to_end(&mut buffer).await;
            read.map(|_| buffer)
        });
        let copy_stderr = copy_stderr(stderr, self.log_path.clone(), tap);

        let timeout = task.timeout_ms.map(Duration::from_millis).or(self.process.limits.timeout);
        let deadline = async {
            match timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        // Fed on its own: a process that does not read a large input must not hold up its
        // timeout or cancellation.
        let feeder = tokio::spawn(feed);
        let ended = tokio::select! {
            status = child.wait() => Ended::Exited(status),
            () = deadline => Ended::TimedOut,
            () = cancel.cancelled() => Ended::Cancelled,
        };
        if matches!(ended, Ended::TimedOut | Ended::Cancelled) {
            if let Some(pgid) = pgid {
                // `stop` leaves this group to its own TERM-then-KILL sequence.
                self.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(&pgid);
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
            }
            if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
                match pgid {
                    Some(pgid) => reaper::kill_tree(pgid),
                    None => {
                        let _ = child.start_kill();
                    }
                }
                // A supervisor is not killed under it: it kills its tree, then exits.
                let _ = child.wait().await;
            }
        }
        // Whatever the attempt started goes with it.
        if let Some(pgid) = pgid {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            self.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(&pgid);
        }
        let _ = child.wait().await;
        feeder.abort();
        // Handed over with the task: acknowledged, by the engine (the writer of the run, with
        // its clock), before the outcome is reported, so that the next task does not hand them
        // over again.
        self.acknowledge(inbox).await;
        if let (Some(registry), Some(record)) = (&self.registry, &record) {
            registry.ended(&attempt.run_id, record).await;
        }
        // A process that left the group (setsid) may hold the pipes open; it is not waited for.
        let stdout = drain(read_stdout).await.and_then(Result::ok).unwrap_or_default();
        let last_stderr = drain(copy_stderr).await.unwrap_or_default();
        let with_stderr = |reason: String| last_stderr.after(reason);
        match ended {
            // Reading stops at the limit, so an agent still writing dies of SIGPIPE: the
            // limit is the reason, whatever the status.
            Ended::Exited(Ok(_)) if stdout.len() as u64 > MAX_RESULT_BYTES => {
                Outcome::Failed { reason: format!("the result is over the limit of {MAX_RESULT_BYTES} bytes") }
            }
            Ended::Exited(Ok(status)) if status.success() => Outcome::Succeeded { result: parse_result(&stdout) },
            Ended::Exited(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let reason = match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit status {code}"),
                    (None, Some(signal)) => match Signal::try_from(signal) {
                        Ok(Signal::SIGXCPU) => "killed: cpu limit reached".to_string(),
                        Ok(signal) => format!("killed by {signal}"),
                        Err(_) => format!("killed by signal {signal}"),
                    },
                    (None, None) => "ended without a status".to_string(),
                };
                self.report_usage_of_failure(attempt, &stdout);
                Outcome::Failed { reason: with_stderr(reason) }
            }
            Ended::Exited(Err(error)) => Outcome::Failed { reason: format!("cannot wait for the process: {error}") },
            Ended::TimedOut => {
                Outcome::Failed { reason: format!("timed out after {}", format_duration(timeout.unwrap_or_default())) }
            }
            Ended::Cancelled => Outcome::Failed { reason: "cancelled".into() },
        }
    }
}

/// Waits up to [`PIPE_DRAIN`] for a pipe reader, then gives up on it.
async fn drain<T>(mut reader: tokio::task::JoinHandle<T>) -> Option<T> {
    match tokio::time::timeout(PIPE_DRAIN, &mut reader).await {
        Ok(done) => done.ok(),
        Err(_) => {
            reader.abort();
            None
        }
    }
}

enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Cancelled,
}

/// The task as an agent sees it: on a per-task agent's stdin, in a worker's `task/assign`.
pub fn task_json(attempt: &Attempt) -> serde_json::Value {
    let task = &attempt.task;
    serde_json::json!({
        "id": task.id,
        "key": task.key,
        "title": task.title,
        "description": task.description,
        "input": task.input,
        "workstream": task.workstream,
        "attempt": task.attempt,
        "agent": attempt.agent,
        "run_id": attempt.run_id,
    })
}

/// Largest input passed in `BATON_TASK_INPUT`; Linux refuses a single variable over 128 KiB.
/// Larger inputs are on stdin only.
const MAX_INPUT_VARIABLE: usize = 64 * 1024;

fn input_variable(input: &serde_json::Value) -> String {
    let text = input.to_string();
    if text.len() > MAX_INPUT_VARIABLE { String::new() } else { text }
}

/// stdout as JSON when it parses, else as a string.
fn parse_result(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(trimmed).unwrap_or_else(|_| serde_json::Value::String(trimmed.to_string()))
}

/// Replaces `{task.title}`, `{task.input.FIELD}`… in one argument.
pub fn substitute(arg: &str, attempt: &Attempt) -> Result<String, String> {
    let names = baton_core::config::placeholders(arg);
    if names.is_empty() {
        return Ok(arg.to_string());
    }
    let task = &attempt.task;
    let mut out = arg.to_string();
    for name in names {
        let value = match name {
            "task.id" => task.id.to_string(),
            "task.key" => task.key.clone().unwrap_or_default(),
            "task.title" => task.title.clone(),
            "task.description" => task.description.clone(),
            "agent.name" => attempt.agent.clone(),
            "run.id" => attempt.run_id.clone(),
            "mcp.config" => return Err("`{mcp.config}` is expanded in a per-task agent's command only".to_string()),
            other => {
                let field =
                    other.strip_prefix("task.input.").ok_or_else(|| format!("unknown placeholder `{{{other}}}`"))?;
                match task.input.get(field) {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(value) => value.to_string(),
                    None => {
                        return Err(format!("the task's input has no field `{field}` for `{{{other}}}`"));
                    }
                }
            }
        };
        out = out.replace(&format!("{{{name}}}"), &value);
    }
    Ok(out)
}

#[async_trait]
impl AgentRuntime for ProcessAgent {
    async fn start(&self, context: AgentContext) -> Result<(), AgentError> {
        *self.context.lock().expect("context lock") = Some(context);
        prepare_dirs(&self.workdir, &self.log_path).await?;
        find_program(&self.process.command[0], &self.workdir, &self.env)?;
        if let Some(path) = &self.mcp_config {
            crate::mcp::config::write(path, &self.mcp_servers, &self.spec.tools).map_err(|error| {
                AgentError::permanent(format!("cannot write the agent's {{mcp.config}} file: {error}"))
            })?;
        }
        self.log(&format!("--- agent {} started", self.spec.name)).await;
        Ok(())
    }

    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome {
        self.run_tapped(attempt, cancel, None).await
    }

    async fn stop(&self) {
        let groups: Vec<i32> = self.groups.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        for pgid in groups {
            reaper::kill_tree(pgid);
        }
    }
}

impl ProcessAgent {
    /// Runs one attempt as [`AgentRuntime::run`] does; with `tap`, its stderr lines also go
    /// there as they come (see [`StderrTap`]).
    pub async fn run_tapped(&self, attempt: Attempt, cancel: CancellationToken, tap: Option<StderrTap>) -> Outcome {
        let task = &attempt.task;
        self.log(&attempt_header(task)).await;
        let started = tokio::time::Instant::now();
        let outcome = self.run_attempt(&attempt, &cancel, tap).await;
        self.log(&attempt_footer(task, &outcome, started)).await;
        outcome
    }
}
