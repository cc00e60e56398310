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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use baton_core::Outcome;
use baton_core::config::{AgentSpec, DoneWhen, Limits, ProcessSpec, TerminalSpec};
use baton_core::time::format_duration;

use super::{ProcessEnv, Registry, attempt_footer, attempt_header, find_program, prepare_dirs, substitute};
use crate::agent::{AgentContext, AgentError, AgentEvent, AgentRuntime, Attempt};

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

/// One start of the program.
struct Session {
    agent: String,
    /// The program's pid, which is also its session and process group id.
    pid: i32,
    commands: mpsc::UnboundedSender<Command>,
    exited: CancellationToken,
    /// Fires when all the program's output has been read.
    drained: CancellationToken,
    exit: Mutex<Option<(bool, String)>>,
    claim: Mutex<ExitClaim>,
    /// Set when Baton stops the program, so that its exit is not reported as a crash.
    stopping: AtomicBool,
    /// Whether the log ends with a newline, so that Baton's notes start on their own line.
    at_line_start: Arc<AtomicBool>,
    /// Keeps the terminal open while the session lives. A mutex only because the master is
    /// `Send` but not `Sync`; it is never locked.
    _master: Mutex<Box<dyn MasterPty + Send>>,
}

impl Session {
    fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// `(success, reason)` once the program has exited.
    fn exit(&self) -> Option<(bool, String)> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn exit_reason(&self) -> String {
        self.exit().map_or_else(|| "it exited".to_string(), |(_, reason)| reason)
    }

    /// The screen so far and the output to come, with nothing lost or repeated between them.
    async fn attach(&self) -> (Bytes, Option<broadcast::Receiver<Bytes>>) {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Attach(reply));
        answer.await.unwrap_or_default()
    }

    /// Ends the task being watched and returns its text.
    async fn end_task(&self) -> String {
        let (reply, answer) = oneshot::channel();
        self.send(Command::EndTask(reply));
        answer.await.unwrap_or_default()
    }

    /// SIGHUP and SIGTERM, as when a terminal is closed, then SIGKILL after a grace period.
    async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.exited.is_cancelled() {
            return;
        }
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGHUP);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.exited.cancelled()).await.is_ok() {
            return;
        }
        let _ = killpg(group, Signal::SIGKILL);
        self.exited.cancelled().await;
    }
}

/// What the session's monitor is told.
enum Command {
    /// The program printed this (from the reader thread).
    Output(Vec<u8>),
    /// The program's output has ended: it and everything that held its terminal are gone.
    Eof,
    /// Type this into the terminal (from `baton attach`).
    Type(Vec<u8>),
    Attach(oneshot::Sender<(Bytes, Option<broadcast::Receiver<Bytes>>)>),
    /// Watch a task, then type its input.
    StartTask {
        watch: TaskWatch,
        typed: Vec<u8>,
    },
    EndTask(oneshot::Sender<String>),
}

/// Owns what is known of the program's output: the screen buffer, the attached clients, the
/// task being watched, and the stall and prompt detectors. One task per session; everything
/// reaches it as a [`Command`], in order.
struct Monitor {
    agent: String,
    events: mpsc::UnboundedSender<AgentEvent>,
    /// To the writer thread.
    typed: std::sync::mpsc::Sender<Vec<u8>>,
    prompts: Vec<Regex>,
    stall_after: Duration,
    screen: Vec<u8>,
    /// New output for attached clients; gone once the output has ended.
    output: Option<broadcast::Sender<Bytes>>,
    stripper: AnsiStripper,
    /// Text printed since something was last typed.
    prompt_tail: String,
    task: Option<TaskWatch>,
    last_output: Instant,
    stalled: bool,
    waiting: bool,
    /// A prompt is the last thing printed: it is a question if nothing follows by then.
    settle_at: Option<Instant>,
    last_activity: Option<Instant>,
    drained: CancellationToken,
}

impl Monitor {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Command>) {
        loop {
            let wake = [self.stall_deadline(), self.settle_at].into_iter().flatten().min();
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = sleep_until_opt(wake) => self.on_timer(),
            }
        }
    }

    fn stall_deadline(&self) -> Option<Instant> {
        if self.stalled || self.waiting || self.drained.is_cancelled() {
            return None;
        }
        self.task.as_ref().and_then(|task| task.started.max(self.last_output).checked_add(self.stall_after))
    }

    fn send(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Output(bytes) => self.on_output(bytes),
            Command::Eof => {
                self.output = None;
                self.settle_at = None;
                self.drained.cancel();
            }
            Command::Type(bytes) => self.type_bytes(bytes),
            Command::Attach(reply) => {
                let output = self.output.as_ref().map(broadcast::Sender::subscribe);
                let _ = reply.send((Bytes::copy_from_slice(&self.screen), output));
            }
            Command::StartTask { watch, typed } => {
                self.task = Some(watch);
                self.stalled = false;
                self.type_bytes(typed);
            }
            Command::EndTask(reply) => {
                let text = self.task.take().map(TaskWatch::finish).unwrap_or_default();
                let _ = reply.send(text);
            }
        }
    }

    fn type_bytes(&mut self, bytes: Vec<u8>) {
        // Whatever question was on the screen has been answered, or typed over.
        self.prompt_tail.clear();
        self.settle_at = None;
        let _ = self.typed.send(bytes);
    }

    fn on_output(&mut self, bytes: Vec<u8>) {
        let now = Instant::now();
        self.last_output = now;
        self.screen.extend_from_slice(&bytes);
        if self.screen.len() > SCREEN_BYTES {
            // Cut at a line start, so that a replay does not begin inside an escape sequence
            // or a character.
            let excess = self.screen.len() - SCREEN_BYTES;
            let cut =
                self.screen[excess..].iter().position(|byte| *byte == b'\n').map_or(excess, |idx| excess + idx + 1);
            self.screen.drain(..cut);
        }
        if let Some(output) = self.output.as_ref().filter(|output| output.receiver_count() > 0) {
            let _ = output.send(Bytes::from(bytes.clone()));
        }
        let text = self.stripper.push(&bytes);
        if let Some(task) = self.task.as_mut() {
            task.push(&text);
        }
        self.prompt_tail.push_str(&text);
        keep_tail(&mut self.prompt_tail, PROMPT_TAIL_BYTES);
        let prompt = self.prompt_on_screen();
        self.settle_at = (prompt.is_some() && !self.waiting).then_some(now + PROMPT_SETTLE);
        // A question still on the screen is still unanswered, whatever else is redrawn.
        let back = self.stalled || (self.waiting && prompt.is_none());
        if back {
            self.stalled = false;
            self.waiting = false;
        }
        let due = self.last_activity.is_none_or(|at| now.duration_since(at) >= ACTIVITY_EVERY);
        if back || (!self.waiting && due) {
            self.last_activity = Some(now);
            self.send(AgentEvent::Activity { agent: self.agent.clone() });
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.settle_at.is_some_and(|at| at <= now) {
            self.settle_at = None;
            if let Some(prompt) = self.prompt_on_screen() {
                self.waiting = true;
                self.send(AgentEvent::WaitingInput { agent: self.agent.clone(), prompt });
            }
        }
        if self.stall_deadline().is_some_and(|at| at <= now) {
            self.stalled = true;
            self.send(AgentEvent::Stalled { agent: self.agent.clone(), silent_for: self.stall_after });
        }
    }

    /// The line asking a question, if one of the last lines printed since anything was typed
    /// matches a prompt pattern.
    fn prompt_on_screen(&self) -> Option<String> {
        let lines: Vec<&str> = self.prompt_tail.lines().filter(|line| !line.trim().is_empty()).collect();
        let recent = &lines[lines.len().saturating_sub(PROMPT_LINES)..];
        recent
            .iter()
            .rev()
            .find(|line| self.prompts.iter().any(|pattern| pattern.is_match(line)))
            .map(|line| line.trim().chars().take(200).collect())
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drops the start of `text` so that at most about `max` bytes are left, at a char boundary.
/// Returns how many bytes were dropped.
fn keep_tail(text: &mut String, max: usize) -> usize {
    if text.len() <= max {
        return 0;
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text.drain(..cut);
    cut
}

/// The output of one task, from when its input was typed.
struct TaskWatch {
    rule: Option<Regex>,
    /// Fires when `rule` matches.
    matched: Option<oneshot::Sender<()>>,
    /// What the terminal is expected to echo of the typed input and has not yet: the echo is
    /// not the program's output (and would match a rule that quotes the task).
    echo: Option<String>,
    /// The start of the echo, seen so far; it is output after all if the echo goes astray.
    held: String,
    transcript: String,
    n_dropped: usize,
    started: Instant,
}

impl TaskWatch {
    fn new(rule: Option<Regex>, matched: oneshot::Sender<()>, typed_text: &str) -> TaskWatch {
        TaskWatch {
            rule,
            matched: Some(matched),
            echo: (!typed_text.is_empty()).then(|| typed_text.to_string()),
            held: String::new(),
            transcript: String::new(),
            n_dropped: 0,
            started: Instant::now(),
        }
    }

    fn push(&mut self, text: &str) {
        let output = self.skip_echo(text);
        if output.is_empty() {
            return;
        }
        self.transcript.push_str(&output);
        self.n_dropped += keep_tail(&mut self.transcript, MAX_TRANSCRIPT);
        if let Some(rule) = &self.rule
            && self.matched.is_some()
        {
            let mut from = self.transcript.len().saturating_sub(SEARCH_WINDOW);
            while !self.transcript.is_char_boundary(from) {
                from += 1;
            }
            if rule.is_match(&self.transcript[from..])
                && let Some(matched) = self.matched.take()
            {
                let _ = matched.send(());
            }
        }
    }

    fn skip_echo(&mut self, text: &str) -> String {
        let Some(expected) = self.echo.as_mut() else { return text.to_string() };
        let common = text
            .char_indices()
            .zip(expected.chars())
            .take_while(|((_, seen), wanted)| seen == wanted)
            .last()
            .map_or(0, |((idx, c), _)| idx + c.len_utf8());
        if common == expected.len() {
            self.echo = None;
            self.held.clear();
            return text[common..].to_string();
        }
        if common == text.len() {
            self.held.push_str(text);
            expected.drain(..common);
            return String::new();
        }
        // No echo (the program turned it off, or draws its own): all of it is output.
        self.echo = None;
        let mut output = std::mem::take(&mut self.held);
        output.push_str(text);
        output
    }

    fn finish(self) -> String {
        let mut text = self.held;
        text.push_str(&self.transcript);
        if self.n_dropped > 0 { format!("[{} earlier bytes dropped]\n{text}", self.n_dropped) } else { text }
    }
}

/// Removes terminal escape sequences (colours, cursor movement, titles) and control characters
/// from a stream of output, keeping text, newlines and tabs; `\r\n` becomes `\n`. Works chunk
/// by chunk: a sequence or a UTF-8 character split between chunks is handled.
#[derive(Debug, Default)]
pub struct AnsiStripper {
    state: EscapeState,
    /// The start of a UTF-8 character whose end is in the next chunk.
    pending: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum EscapeState {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// After ESC and an intermediate byte (`ESC ( B`).
    Intermediate,
    /// In a control sequence (`ESC [ … final`).
    Csi,
    /// In a string (`ESC ] …`, also DCS, SOS, PM, APC), ended by BEL or `ESC \`.
    String,
    /// After ESC inside a string.
    StringEscape,
}

impl AnsiStripper {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut text = std::mem::take(&mut self.pending);
        for &byte in bytes {
            self.state = match self.state {
                EscapeState::Text => match byte {
                    0x1b => EscapeState::Escape,
                    b'\n' | b'\t' => {
                        text.push(byte);
                        EscapeState::Text
                    }
                    // Carriage returns, bells, backspaces and the like move the cursor or
                    // make noise: not text.
                    0x00..=0x1f | 0x7f => EscapeState::Text,
                    _ => {
                        text.push(byte);
                        EscapeState::Text
                    }
                },
                EscapeState::Escape => match byte {
                    b'[' => EscapeState::Csi,
                    b']' | b'P' | b'X' | b'^' | b'_' => EscapeState::String,
                    0x20..=0x2f => EscapeState::Intermediate,
                    _ => EscapeState::Text,
                },
                EscapeState::Intermediate => match byte {
                    0x20..=0x2f => EscapeState::Intermediate,
                    _ => EscapeState::Text,
                },
                EscapeState::Csi => match byte {
                    0x40..=0x7e => EscapeState::Text,
                    _ => EscapeState::Csi,
                },
                EscapeState::String => match byte {
                    0x07 => EscapeState::Text,
                    0x1b => EscapeState::StringEscape,
                    _ => EscapeState::String,
                },
                EscapeState::StringEscape => match byte {
                    b'\\' => EscapeState::Text,
                    _ => EscapeState::String,
                },
            };
        }
        let complete = match std::str::from_utf8(&text) {
            Ok(_) => text.len(),
            // Cut short at the end: the rest of the character is in the next chunk.
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => text.len(),
        };
        self.pending = text.split_off(complete);
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// The attach server: a Unix socket on which each connection gets the screen, then the output
/// as it comes, and has what it sends typed into the terminal.
struct Server {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

type Current = Arc<Mutex<Option<Arc<Session>>>>;

async fn serve(listener: UnixListener, current: Current, cancel: CancellationToken) {
    let clients = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        tracing::warn!(%error, "cannot accept an attach connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let session = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                clients.spawn(serve_client(stream, session, cancel.clone()));
            }
            () = cancel.cancelled() => break,
        }
    }
    clients.close();
    clients.wait().await;
}

async fn serve_client(stream: UnixStream, session: Option<Arc<Session>>, cancel: CancellationToken) {
    let (mut from_client, mut to_client) = stream.into_split();
    let Some(session) = session.filter(|session| !session.exited.is_cancelled()) else {
        let _ = to_client.write_all(b"\r\n[baton] the program is not running; it restarts soon\r\n").await;
        return;
    };
    let (screen, output) = session.attach().await;
    if to_client.write_all(&screen).await.is_err() {
        return;
    }
    let Some(mut output) = output else { return };
    let mut buffer = vec![0u8; 4096];
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Ok(bytes) => {
                    if to_client.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // A client too slow to keep up misses some output, not the program's time.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            read = from_client.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => session.send(Command::Type(buffer[..n].to_vec())),
            },
            () = cancel.cancelled() => break,
        }
    }
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

/// Copies what is typed into the terminal, until the session is gone.
fn write_terminal(mut writer: Box<dyn Write + Send>, to_type: std::sync::mpsc::Receiver<Vec<u8>>) {
    while let Ok(bytes) = to_type.recv() {
        if writer.write_all(&bytes).and_then(|()| writer.flush()).is_err() {
            break;
        }
    }
}

/// Copies the program's output to the log and the monitor, until the terminal closes.
fn read_terminal(
    mut reader: Box<dyn Read + Send>,
    log_path: PathBuf,
    at_line_start: Arc<AtomicBool>,
    commands: mpsc::UnboundedSender<Command>,
) {
    let log = super::log::AgentLog::of(&log_path);
    let mut buffer = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buffer[..n];
        log.write(chunk);
        at_line_start.store(chunk.ends_with(b"\n"), Ordering::Relaxed);
        if commands.send(Command::Output(chunk.to_vec())).is_err() {
            break;
        }
    }
    let _ = commands.send(Command::Eof);
}

/// Applies the agent's memory and CPU limits to the started program. Returns what could not
/// be applied.
fn apply_limits(pid: i32, limits: &Limits) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(bytes) = limits.memory
        && let Err(error) = rlimit::prlimit(pid, rlimit::Resource::AS, Some((bytes, bytes)), None)
    {
        problems.push(format!("cannot apply the memory limit: {error}"));
    }
    if let Some(cpu) = limits.cpu {
        // The soft limit sends SIGXCPU; the hard limit one second later kills.
        let secs = cpu.as_secs().max(1);
        if let Err(error) = rlimit::prlimit(pid, rlimit::Resource::CPU, Some((secs, secs + 1)), None) {
            problems.push(format!("cannot apply the cpu limit: {error}"));
        }
    }
    problems
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strip_all(chunks: &[&[u8]]) -> String {
        let mut stripper = AnsiStripper::default();
        chunks.iter().map(|chunk| stripper.push(chunk)).collect()
    }

    #[test]
    fn escapes_and_control_characters_are_stripped() {
        assert_eq!(strip_all(&[b"\x1b[1;32mgreen\x1b[0m text\r\n"]), "green text\n");
        assert_eq!(strip_all(&[b"\x1b]0;window title\x07visible"]), "visible");
        assert_eq!(strip_all(&[b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"]), "link");
        assert_eq!(strip_all(&[b"\x1b(Bcharset \x1b7saved\x1b8\x1b[?25l"]), "charset saved");
        assert_eq!(strip_all(&[b"bell\x07 tab\tback\x08space"]), "bell tab\tbackspace");
        assert_eq!(strip_all(&["caf\u{e9} \u{2714}".as_bytes()]), "caf\u{e9} \u{2714}");
    }

    #[test]
    fn sequences_and_characters_split_between_chunks_are_handled() {
        assert_eq!(strip_all(&[b"a\x1b[3", b"1mb\x1b", b"[0mc"]), "abc");
        assert_eq!(strip_all(&[b"\x1b]0;ti", b"tle\x1b", b"\\d"]), "d");
        let check = "\u{2714}".as_bytes();
        assert_eq!(strip_all(&[&check[..1], &check[1..2], &check[2..]]), "\u{2714}");
    }

    fn watch(rule: Option<&str>, typed: &str) -> (TaskWatch, oneshot::Receiver<()>) {
        let (matched, rx) = oneshot::channel();
        (TaskWatch::new(rule.map(|rule| Regex::new(rule).unwrap()), matched, typed), rx)
    }

    #[test]
    fn the_echo_of_the_typed_input_is_not_output() {
        // "say DONE" typed; the terminal echoes it in two chunks, then the program answers.
        let (mut task, mut rx) = watch(Some("DONE"), "say DONE\n");
        task.push("say DO");
        task.push("NE\ngot it\n");
        assert!(rx.try_recv().is_err(), "the echo does not meet the rule");
        task.push("DONE\n");
        assert!(rx.try_recv().is_ok());
        assert_eq!(task.finish(), "got it\nDONE\n");
        // A program that does not echo: what looked like the echo's start is output.
        let (mut task, _) = watch(None, "go\n");
        task.push("go");
        task.push("t: go\n");
        assert_eq!(task.finish(), "got: go\n");
    }

    #[test]
    fn a_long_transcript_keeps_its_end() {
        let (mut task, _) = watch(None, "");
        let line = "x".repeat(1023) + "\n";
        for _ in 0..300 {
            task.push(&line);
        }
        let text = task.finish();
        assert!(text.starts_with("[45056 earlier bytes dropped]\n"), "{}", &text[..40]);
        assert!(text.len() <= MAX_TRANSCRIPT + 64);
    }
}
