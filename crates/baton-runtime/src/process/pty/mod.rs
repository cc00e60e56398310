//! Terminal agents (`mode = "pty"`): one long-running program in a pseudo-terminal, driven the
//! way a person drives a program in a tmux session (docs/terminal-agents.md).
//!
//! The program is started when the agent starts, in a 120x40 terminal, in the agent's working
//! directory, with its allow-listed environment, in a session (and process group) of its own.
//! A task is handed over by typing the agent's `input_template` into the terminal; the task is
//! done when the `done_when` rule holds: a regular expression matches the output that followed
//! the typing, a marker file appears, or the program exits (status 0 is success; the program is
//! then started again for the next task). The result is the text the program printed for the
//! task, with terminal escapes removed.
//!
//! Everything the program prints goes to the agent's log as it comes, and into a screen buffer
//! (the last 64 KiB) that `baton attach` replays before streaming: attaching connects to a Unix
//! socket this module serves, whose bytes are typed into the terminal. Baton watches the output
//! meanwhile: silence during a task for longer than `stall_after` is reported as a stall, and a
//! line matching one of `prompt_patterns` followed by half a second of silence as a question
//! waiting for an answer. The next output ends either.
//!
//! The program gets no parent-death signal and no limits set before it runs (the pty is set up
//! by `portable-pty`, which takes no `pre_exec`): when Baton dies its end of the terminal
//! closes, which hangs the program up (SIGHUP), and the recorded process group is killed on
//! resume; memory and CPU limits are applied with `prlimit` right after the start.
//!
//! One task at a time: the configuration refuses `concurrency` above 1, and attempts queue.
//! Threads, not tasks, read and write the terminal and wait for the program, since
//! `portable-pty` blocks; none of them holds up the engine or its shutdown.
//!
//! Here is the agent (`PtyAgent`); beside it `session` (one start of the program and the
//! threads on its terminal), `monitor` (what is known of its output, the stall and prompt
//! detectors), `ansi` (escapes removed from the output) and `attach` (the socket of
//! `baton attach`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use regex::Regex;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::config::{AgentSpec, DoneWhen, ProcessSpec, TerminalSpec};
use baton_core::time::format_duration;

use super::{ProcessEnv, Registry, attempt_footer, attempt_header, find_program, prepare_dirs, substitute};
use crate::agent::{AgentContext, AgentError, AgentEvent, AgentRuntime, Attempt};

mod ansi;
mod attach;
mod monitor;
mod session;
#[cfg(test)]
mod tests;

pub use self::ansi::AnsiStripper;
use self::attach::{Current, Server, serve};
use self::monitor::{Monitor, TaskWatch};
use self::session::{Command, Session, apply_limits, read_terminal, write_terminal};

/// The terminal's size: wide enough for most programs' layouts.
const SIZE: PtySize = PtySize { rows: 40, cols: 120, pixel_width: 0, pixel_height: 0 };

/// `TERM` for a program whose environment names no terminal type.
const DEFAULT_TERM: &str = "xterm-256color";

/// Most bytes of raw output kept for `baton attach` to replay.
const SCREEN_BYTES: usize = 64 * 1024;

/// Most bytes of text kept as a task's result (the end is kept).
const MAX_TRANSCRIPT: usize = 256 * 1024;

/// How far back from the end of a task's text `done_when.output` is looked for.
const SEARCH_WINDOW: usize = 64 * 1024;

/// Prompts are looked for in the last lines of what was printed since something was typed.
const PROMPT_TAIL_BYTES: usize = 4 * 1024;
const PROMPT_LINES: usize = 8;

/// How long a prompt must stay the last thing printed before it counts as a question.
const PROMPT_SETTLE: Duration = Duration::from_millis(500);

/// At most one sign of life per this long is sent to the engine for ordinary output.
const ACTIVITY_EVERY: Duration = Duration::from_secs(1);

/// How often a `done_when.file` marker is looked for.
const MARKER_POLL: Duration = Duration::from_millis(100);

/// How long the program gets after SIGHUP and SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long the last output of an exited program is waited for.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Typed when a task times out or is cancelled, as a person would press Ctrl-C.
const INTERRUPT: u8 = 0x03;

/// How long a program that Ctrl-C may end is given to do so before its exit counts as a crash.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// Output chunks queued per attached client before it misses some.
const ATTACH_BACKLOG: usize = 1024;

/// How long the attach server waits after failing to accept a connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where the running `baton run` serves a terminal agent for `baton attach`: `sockets/` in the
/// directory that holds the store (beside `logs/`).
pub fn attach_socket(state_dir: &Path, agent: &str) -> PathBuf {
    state_dir.join("sockets").join(format!("{agent}.sock"))
}

/// The regular expressions of a terminal agent, compiled once.
struct Rules {
    done_output: Option<Regex>,
    prompts: Vec<Regex>,
}

impl Rules {
    fn compile(terminal: &TerminalSpec) -> Result<Rules, String> {
        let compile = |pattern: &str| {
            Regex::new(pattern).map_err(|error| format!("invalid regular expression `{pattern}`: {error}"))
        };
        let done_output = match &terminal.done_when {
            DoneWhen::Output(pattern) => Some(compile(pattern)?),
            DoneWhen::File(_) | DoneWhen::Exit => None,
        };
        let prompts = terminal.prompt_patterns.iter().map(|pattern| compile(pattern)).collect::<Result<_, _>>()?;
        Ok(Rules { done_output, prompts })
    }
}

/// Who may act on the program's exit: the task waiting for it (`done_when.exit`), or
/// supervision. Decided under one lock so that exactly one of them does.
#[derive(Default)]
struct ExitClaim {
    task_owns: bool,
    exited: bool,
}

pub struct PtyAgent {
    spec: AgentSpec,
    process: ProcessSpec,
    terminal: TerminalSpec,
    rules: Result<Arc<Rules>, String>,
    workdir: PathBuf,
    log_path: PathBuf,
    /// Held so that every writer of the log shares its rotation.
    log: Arc<super::log::AgentLog>,
    socket_path: PathBuf,
    env: BTreeMap<String, String>,
    registry: Option<Registry>,
    /// The running program, if any; shared with the attach server. A std mutex: held only to
    /// read or replace it.
    current: Current,
    context: Mutex<Option<AgentContext>>,
    server: Mutex<Option<Server>>,
    /// Held while the program is started, started again or stopped.
    lifecycle: tokio::sync::Mutex<()>,
    /// Held while a task runs: one at a time.
    busy: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl PtyAgent {
    pub fn new(spec: AgentSpec, process: ProcessSpec, process_env: &ProcessEnv) -> PtyAgent {
        let (workdir, env) = process_env.for_agent(&spec, &process);
        let terminal = process.terminal.clone().unwrap_or_default();
        PtyAgent {
            rules: Rules::compile(&terminal).map(Arc::new),
            terminal,
            log: super::log::AgentLog::open(&process_env.log_path(&spec.name), spec.log_rotation),
            log_path: process_env.log_path(&spec.name),
            socket_path: process_env.socket_path(&spec.name),
            spec,
            process,
            workdir,
            env,
            registry: process_env.registry.clone(),
            current: Arc::new(Mutex::new(None)),
            context: Mutex::new(None),
            server: Mutex::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            busy: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace_session(&self, session: Option<Arc<Session>>) -> Option<Arc<Session>> {
        std::mem::replace(&mut *self.current.lock().unwrap_or_else(|p| p.into_inner()), session)
    }

    /// Appends one of Baton's notes to the log, on a line of its own.
    async fn note(&self, line: &str) {
        let at_line_start = self.session().is_none_or(|session| session.at_line_start.swap(true, Ordering::Relaxed));
        let text = if at_line_start { line.to_string() } else { format!("\n{line}") };
        self.log.line(&text);
    }

    /// Starts the program in a new terminal, with the threads and the monitor around it.
    /// A program that cannot be found is a permanent failure; anything else that goes wrong
    /// here (no terminal left, a fork refused) may go away, and is transient.
    async fn spawn(&self, context: &AgentContext, rules: &Rules) -> Result<Arc<Session>, AgentError> {
        let program = find_program(&self.process.command[0], &self.workdir, &self.env)?;
        let pair = native_pty_system()
            .openpty(SIZE)
            .map_err(|error| AgentError::transient(format!("cannot open a terminal: {error}")))?;
        let mut command = CommandBuilder::new(&program);
        command.args(&self.process.command[1..]);
        command.cwd(&self.workdir);
        command.env_clear();
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if !self.env.contains_key("TERM") {
            command.env("TERM", DEFAULT_TERM);
        }
        command.env("BATON_AGENT", &self.spec.name);
        command.env("BATON_RUN_ID", &context.run_id);
        let mut child = pair
            .slave
            .spawn_command(command)
            .map_err(|error| AgentError::transient(format!("cannot start `{}`: {error}", self.process.command[0])))?;
        // Only the program holds the terminal's other end: when it is gone, reading ends.
        drop(pair.slave);
        let Some(pid) = child.process_id().and_then(|pid| i32::try_from(pid).ok()) else {
            let _ = child.kill();
            return Err(AgentError::transient(format!("`{}` started without a process id", self.process.command[0])));
        };
        let killed = |reason: String| {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            AgentError::transient(reason)
        };
        for problem in apply_limits(pid, &self.process.limits) {
            self.note(&format!("--- {problem}")).await;
        }
        let reader =
            pair.master.try_clone_reader().map_err(|error| killed(format!("cannot read the terminal: {error}")))?;
        let writer =
            pair.master.take_writer().map_err(|error| killed(format!("cannot write the terminal: {error}")))?;

        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // Recorded by agent and start, so that whoever resumes the run after a crash kills it.
        let record = self.registry.as_ref().map(|registry| registry.agent_record(&self.spec.name, generation, pid));
        if let (Some(registry), Some(record)) = (&self.registry, &record) {
            registry.spawned(&context.run_id, record).await;
        }

        let (commands, inbox) = mpsc::unbounded_channel::<Command>();
        let (typed, to_type) = std::sync::mpsc::channel::<Vec<u8>>();
        let at_line_start = Arc::new(AtomicBool::new(true));
        let session = Arc::new(Session {
            agent: self.spec.name.clone(),
            pid,
            commands: commands.clone(),
            exited: CancellationToken::new(),
            drained: CancellationToken::new(),
            exit: Mutex::new(None),
            claim: Mutex::new(ExitClaim::default()),
            stopping: AtomicBool::new(false),
            at_line_start: Arc::clone(&at_line_start),
            _master: Mutex::new(pair.master),
        });

        let name = &self.spec.name;
        std::thread::Builder::new()
            .name(format!("pty-write-{name}"))
            .spawn(move || write_terminal(writer, to_type))
            .map_err(|error| killed(format!("cannot start a thread: {error}")))?;
        let log_path = self.log_path.clone();
        std::thread::Builder::new()
            .name(format!("pty-read-{name}"))
            .spawn(move || read_terminal(reader, log_path, at_line_start, commands))
            .map_err(|error| killed(format!("cannot start a thread: {error}")))?;
        let (exit_tx, exit_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("pty-wait-{name}"))
            .spawn(move || {
                let _ = exit_tx.send(child.wait());
            })
            .map_err(|error| killed(format!("cannot start a thread: {error}")))?;

        let (output, _) = broadcast::channel(ATTACH_BACKLOG);
        let monitor = Monitor {
            agent: self.spec.name.clone(),
            events: context.events.clone(),
            typed,
            prompts: rules.prompts.clone(),
            stall_after: self.terminal.stall_after,
            screen: Vec::new(),
            output: Some(output),
            stripper: AnsiStripper::default(),
            prompt_tail: String::new(),
            task: None,
            last_output: Instant::now(),
            stalled: false,
            waiting: false,
            settle_at: None,
            last_activity: None,
            drained: session.drained.clone(),
        };
        tokio::spawn(monitor.run(inbox));

        let watcher = Arc::clone(&session);
        let events = context.events.clone();
        let registry = self.registry.clone();
        let run_id = context.run_id.clone();
        tokio::spawn(async move {
            let status = exit_rx.await;
            // Whatever the program started goes with it.
            let _ = killpg(Pid::from_raw(watcher.pid), Signal::SIGKILL);
            let (success, reason) = match status {
                Ok(Ok(status)) if status.success() => (true, "exit status 0".to_string()),
                Ok(Ok(status)) => match status.signal() {
                    Some(signal) => (false, format!("killed by signal: {signal}")),
                    None => (false, format!("exit status {}", status.exit_code())),
                },
                Ok(Err(error)) => (false, format!("cannot wait for the program: {error}")),
                Err(_) => (false, "cannot wait for the program".to_string()),
            };
            *watcher.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some((success, reason.clone()));
            let owned_by_task = {
                let mut claim = watcher.claim.lock().unwrap_or_else(|p| p.into_inner());
                claim.exited = true;
                claim.task_owns
            };
            // The engine hears of a crash before the task waiting on the program fails, so
            // that it gives the attempt up rather than retrying it as a failure.
            if !watcher.stopping.load(Ordering::SeqCst) && !owned_by_task {
                let _ = events.send(AgentEvent::Exited { agent: watcher.agent.clone(), reason, clean: false });
            }
            watcher.exited.cancel();
            if let (Some(registry), Some(record)) = (registry, record) {
                registry.ended(&run_id, &record).await;
            }
        });
        Ok(session)
    }

    /// Binds the attach socket, unless it is bound already. Attach is a convenience: a socket
    /// that cannot be bound is noted in the log, and the agent runs without it.
    async fn listen(&self) {
        if self.server.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        let bound = async {
            if let Some(dir) = self.socket_path.parent() {
                tokio::fs::create_dir_all(dir).await?;
                // Whoever can connect can type into the agent: its owner only.
                use std::os::unix::fs::PermissionsExt;
                tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await?;
            }
            // Left by a Baton that was killed: this run owns the name now.
            match tokio::fs::remove_file(&self.socket_path).await {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            UnixListener::bind(&self.socket_path)
        };
        match bound.await {
            Ok(listener) => {
                let cancel = CancellationToken::new();
                let task = tokio::spawn(serve(listener, Arc::clone(&self.current), cancel.clone()));
                *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(Server { cancel, task });
            }
            Err(error) => {
                let message = format!("cannot listen on {}: {error}", self.socket_path.display());
                tracing::warn!(agent = %self.spec.name, "{message}; `baton attach` will not reach it");
                self.note(&format!("--- {message}; `baton attach` will not reach this agent")).await;
            }
        }
    }

    /// The program exited at the end of a task (`done_when.exit`): it is started again for the
    /// next one. If it cannot be, supervision takes over.
    async fn start_again(&self, exited: &Arc<Session>) {
        let _lifecycle = self.lifecycle.lock().await;
        let is_current = self.session().is_some_and(|current| Arc::ptr_eq(&current, exited));
        let context = self.context.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (true, Some(context), Ok(rules)) = (is_current, context, self.rules.clone()) else { return };
        match self.spawn(&context, &rules).await {
            Ok(session) => {
                let pid = session.pid;
                self.replace_session(Some(session));
                self.note(&format!(
                    "--- terminal {} started again for the next task (pid group {pid})",
                    self.spec.name
                ))
                .await;
            }
            Err(reason) => {
                self.replace_session(None);
                let reason = format!("cannot start the program again: {reason}");
                self.note(&format!("--- {reason}")).await;
                let _ = context.events.send(AgentEvent::Exited { agent: self.spec.name.clone(), reason, clean: false });
            }
        }
    }

    async fn run_attempt(&self, attempt: &Attempt, cancel: &CancellationToken) -> Outcome {
        let Some(session) = self.session() else {
            return Outcome::Failed { reason: "the terminal is not running".into() };
        };
        let typed_text = match substitute(&self.terminal.input_template, attempt) {
            Ok(text) => text,
            Err(reason) => return Outcome::Failed { reason },
        };
        let marker = match &self.terminal.done_when {
            DoneWhen::File(path) => match substitute(path, attempt) {
                Ok(path) => Some(self.workdir.join(path)),
                Err(reason) => return Outcome::Failed { reason },
            },
            DoneWhen::Output(_) | DoneWhen::Exit => None,
        };
        let marker_before = match &marker {
            Some(path) => modified(path).await,
            None => None,
        };
        let exit_rule = self.terminal.done_when == DoneWhen::Exit;
        {
            let mut claim = session.claim.lock().unwrap_or_else(|p| p.into_inner());
            if claim.exited {
                return Outcome::Failed { reason: format!("the program has exited: {}", session.exit_reason()) };
            }
            claim.task_owns = exit_rule;
        }
        let rule = self.rules.as_ref().ok().and_then(|rules| rules.done_output.clone());
        let (matched_tx, mut matched) = oneshot::channel();
        // Enter is a carriage return, as a terminal sends it; the line discipline makes it a
        // newline for programs that read lines, and echoes it as one.
        let lines = typed_text.replace("\r\n", "\n").replace('\r', "\n");
        let typed = lines.replace('\n', "\r").into_bytes();
        session.send(Command::StartTask { watch: TaskWatch::new(rule, matched_tx, &lines), typed });

        let timeout = attempt.task.timeout_ms.map(Duration::from_millis).or(self.process.limits.timeout);
        let deadline = async {
            match timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let marker_appeared = async {
            match &marker {
                Some(path) => wait_for_marker(path, marker_before).await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            biased;
            Ok(()) = &mut matched => Ended::Done,
            () = marker_appeared => Ended::Done,
            () = session.exited.cancelled() => Ended::Exited,
            () = deadline => Ended::TimedOut,
            () = cancel.cancelled() => Ended::Cancelled,
        };
        if ended == Ended::Exited {
            // Its last words may still be on their way.
            let _ = tokio::time::timeout(OUTPUT_DRAIN, session.drained.cancelled()).await;
        }
        if matches!(ended, Ended::TimedOut | Ended::Cancelled) {
            // If Ctrl-C ends the program, that is the interrupt's doing, not a crash: it is
            // started again below, and the attempt keeps its reason.
            let already_exited = {
                let mut claim = session.claim.lock().unwrap_or_else(|p| p.into_inner());
                claim.task_owns |= !claim.exited;
                claim.exited
            };
            if !already_exited {
                session.send(Command::Type(vec![INTERRUPT]));
                let _ = tokio::time::timeout(INTERRUPT_GRACE, session.exited.cancelled()).await;
            }
        }
        let transcript = session.end_task().await;
        let exited_for_the_task = {
            let mut claim = session.claim.lock().unwrap_or_else(|p| p.into_inner());
            let owned = claim.task_owns && claim.exited;
            claim.task_owns = false;
            owned
        };
        if exited_for_the_task {
            self.start_again(&session).await;
        }
        let result = || serde_json::json!({ "output": transcript });
        match ended {
            Ended::Done => Outcome::Succeeded { result: result() },
            Ended::Exited => {
                let (success, reason) = session.exit().unwrap_or((false, "exited".into()));
                // The rule may have been met by the program's last words.
                let marker_met = match &marker {
                    Some(path) => modified(path).await.is_some_and(|now| Some(now) != marker_before),
                    None => false,
                };
                if (exit_rule && success) || matched.try_recv().is_ok() || marker_met {
                    return Outcome::Succeeded { result: result() };
                }
                let last_line = transcript.lines().rev().map(str::trim).find(|line| !line.is_empty());
                let reason = match last_line {
                    Some(line) => format!("{reason}: {line}"),
                    None => reason,
                };
                if exit_rule {
                    Outcome::Failed { reason }
                } else {
                    Outcome::Failed { reason: format!("the program exited before the task was done: {reason}") }
                }
            }
            Ended::TimedOut => {
                Outcome::Failed { reason: format!("timed out after {}", format_duration(timeout.unwrap_or_default())) }
            }
            Ended::Cancelled => Outcome::Failed { reason: "cancelled".into() },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Done,
    Exited,
    TimedOut,
    Cancelled,
}

async fn modified(path: &Path) -> Option<SystemTime> {
    tokio::fs::metadata(path).await.ok().and_then(|meta| meta.modified().ok())
}

/// Waits until the marker file exists and is not the one that was there before the task.
async fn wait_for_marker(path: &Path, before: Option<SystemTime>) {
    loop {
        let now = modified(path).await;
        if now.is_some() && now != before {
            return;
        }
        tokio::time::sleep(MARKER_POLL).await;
    }
}

#[async_trait]
impl AgentRuntime for PtyAgent {
    async fn start(&self, context: AgentContext) -> Result<(), AgentError> {
        let _lifecycle = self.lifecycle.lock().await;
        if let Some(previous) = self.replace_session(None) {
            previous.stop().await;
        }
        // Rules that do not compile will not compile next time either.
        let rules = self.rules.clone().map_err(AgentError::permanent)?;
        prepare_dirs(&self.workdir, &self.log_path).await?;
        *self.context.lock().unwrap_or_else(|p| p.into_inner()) = Some(context.clone());
        let session = self.spawn(&context, &rules).await?;
        let pid = session.pid;
        self.replace_session(Some(session));
        self.note(&format!("--- terminal {} started (pid group {pid})", self.spec.name)).await;
        self.listen().await;
        Ok(())
    }

    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome {
        let _one_at_a_time = self.busy.lock().await;
        let task = &attempt.task;
        self.note(&attempt_header(task)).await;
        let started = tokio::time::Instant::now();
        let outcome = self.run_attempt(&attempt, &cancel).await;
        self.note(&attempt_footer(task, &outcome, started)).await;
        outcome
    }

    async fn stop(&self) {
        let _lifecycle = self.lifecycle.lock().await;
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = server {
            server.cancel.cancel();
            let _ = server.task.await;
            let _ = tokio::fs::remove_file(&self.socket_path).await;
        }
        if let Some(session) = self.replace_session(None) {
            session.stop().await;
            self.note(&format!("--- terminal {} stopped: {}", self.spec.name, session.exit_reason())).await;
        }
    }
}
