//! Worker agents (`mode = "worker"`): one long-running process per agent, speaking JSON-RPC 2.0
//! with Baton, one message per line, on its stdin and stdout (the protocol is in
//! `docs/agent-protocol.md`).
//!
//! Baton sends `initialize` when the process starts, `task/assign` for each attempt (the
//! response is the outcome), `task/cancel`, `message/deliver` (or `message/deliver_batch`, to a
//! worker that declared it in its answer to `initialize`), and `shutdown`. The worker may send `heartbeat`,
//! `task/progress`, `task/create`, `usage/report` and `log`. Anything it sends counts as a sign
//! of life. A malformed line, an unknown method, an oversized message or a response to an
//! unknown id is answered with a JSON-RPC error (or logged) and counted; it never stops Baton
//! or loses a task. When the process exits, its attempts fail (and are retried) and the engine
//! is told, so that supervision can restart it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::config::{AgentSpec, ProcessSpec};
use baton_core::model::TaskId;
use baton_core::task::TaskInput;
use baton_core::time::format_duration;

use super::{
    ProcessEnv, Registry, append_log, base_command, copy_stderr, find_program, prepare_dirs, spawn_error, task_json,
};
use crate::agent::{AgentContext, AgentError, AgentEvent, AgentRequest, AgentRuntime, Attempt, Reply, RequestError};

/// The protocol version Baton speaks, sent in `initialize`.
pub const PROTOCOL_VERSION: &str = "1";

/// How many bytes of waiting lines are gathered into one write to a worker's stdin, about.
const WRITE_BUFFER: usize = 64 * 1024;

/// How long a worker gets to exit after `shutdown`, and again after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A JSON-RPC error as a worker returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

/// A worker's answer to one of Baton's requests.
pub type RpcReply = Result<Value, RpcError>;

/// One started process and its conversation.
struct Connection {
    agent: String,
    outgoing: mpsc::UnboundedSender<String>,
    /// Requests waiting for their response, by id. A std mutex: held only to insert or remove.
    pending: Mutex<HashMap<u64, oneshot::Sender<RpcReply>>>,
    next_id: AtomicU64,
    pgid: Option<i32>,
    /// Set when Baton stops the process, so that its exit is not reported as a crash.
    stopping: AtomicBool,
    /// Fires when the process has exited.
    exited: CancellationToken,
    exit_reason: Mutex<Option<String>>,
    /// Protocol errors seen (malformed lines, unknown methods, stray responses...).
    protocol_errors: AtomicU64,
    /// The worker declared `"deliver_batch": true` in its answer to `initialize`: it takes
    /// `message/deliver_batch`.
    deliver_batch: AtomicBool,
}

impl Connection {
    fn send(&self, message: &Value) {
        let _ = self.outgoing.send(message.to_string());
    }

    fn request(&self, method: &str, params: Value) -> (u64, oneshot::Receiver<RpcReply>) {
        self.request_with(method, &params)
    }

    /// A request whose params are serialized straight from `params` (no `Value` built first:
    /// deliveries are the hot path). Keys stay in sorted order as long as `params`' are.
    fn request_with<T: serde::Serialize>(&self, method: &str, params: &T) -> (u64, oneshot::Receiver<RpcReply>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, reply);
        let params = serde_json::to_string(params).unwrap_or_else(|_| "{}".into());
        let method = Value::from(method);
        let _ = self.outgoing.send(format!(r#"{{"id":{id},"jsonrpc":"2.0","method":{method},"params":{params}}}"#));
        (id, answer)
    }

    /// Waits for the answer to request `id`; an error if the worker answers with one or exits
    /// (both transient: the worker may take it next time, or its next start may).
    async fn answer(&self, id: u64, answer: oneshot::Receiver<RpcReply>) -> Result<Value, AgentError> {
        tokio::select! {
            reply = answer => match reply {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(error)) => Err(AgentError::transient(error.message)),
                Err(_) => Err(AgentError::transient(format!("agent exited: {}", self.exit_reason()))),
            },
            () = self.exited.cancelled() => {
                self.forget(id);
                Err(AgentError::transient(format!("agent exited: {}", self.exit_reason())))
            }
        }
    }

    fn notify(&self, method: &str, params: Value) {
        self.send(&json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    fn forget(&self, id: u64) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    fn exit_reason(&self) -> String {
        self.exit_reason.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "the agent exited".into())
    }

    /// Waits for the process to exit, up to `grace`. True if it did.
    async fn wait_exit(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.exited.cancelled()).await.is_ok()
    }

    /// `shutdown`, then SIGTERM, then SIGKILL, each after a grace period.
    async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.exited.is_cancelled() {
            return;
        }
        let (id, _answer) = self.request("shutdown", json!({}));
        if self.wait_exit(STOP_GRACE).await {
            return;
        }
        self.forget(id);
        if let Some(pgid) = self.pgid {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
            if self.wait_exit(STOP_GRACE).await {
                return;
            }
            super::reaper::kill_tree(pgid);
        }
        self.exited.cancelled().await;
    }
}

pub struct WorkerAgent {
    spec: AgentSpec,
    process: ProcessSpec,
    workdir: PathBuf,
    log_path: PathBuf,
    /// Held so that every writer of the log shares its rotation.
    log: Arc<super::log::AgentLog>,
    env: BTreeMap<String, String>,
    registry: Option<Registry>,
    /// The agent's role, runbook and objectives, handed in `initialize` as `brief`.
    brief: Value,
    /// The running process, if any. A tokio mutex: `start` holds it while it replaces the
    /// process.
    current: tokio::sync::Mutex<Option<Arc<Connection>>>,
    generation: AtomicU64,
}

impl WorkerAgent {
    pub fn new(spec: AgentSpec, process: ProcessSpec, process_env: &ProcessEnv) -> WorkerAgent {
        let (workdir, env) = process_env.for_agent(&spec, &process);
        let log_path = process_env.log_path(&spec.name);
        WorkerAgent {
            log: super::log::AgentLog::open(&log_path, spec.log_rotation),
            brief: crate::brief::Brief::of(&spec, &process_env.base_dir).json(),
            log_path,
            spec,
            process,
            workdir,
            env,
            registry: process_env.registry.clone(),
            current: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    async fn log(&self, line: &str) {
        self.log.line(line);
    }

    async fn connection(&self) -> Option<Arc<Connection>> {
        self.current.lock().await.clone()
    }

    /// Starts the process and wires its pipes; does not wait for `initialize`.
    async fn spawn(&self, context: &AgentContext) -> Result<Arc<Connection>, AgentError> {
        let program = find_program(&self.process.command[0], &self.workdir, &self.env)?;
        let mut command =
            base_command(program, &self.process.command[1..], &self.workdir, &self.env, &self.process.limits);
        command.env("BATON_AGENT", &self.spec.name).env("BATON_RUN_ID", &context.run_id);
        let mut child = command.spawn().map_err(|error| spawn_error(&self.process.command[0], &error))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let pgid = child.id().map(|pid| pid as i32);
        let (outgoing, mut to_write) = mpsc::unbounded_channel::<String>();
        let connection = Arc::new(Connection {
            agent: self.spec.name.clone(),
            outgoing,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            pgid,
            stopping: AtomicBool::new(false),
            exited: CancellationToken::new(),
            exit_reason: Mutex::new(None),
            protocol_errors: AtomicU64::new(0),
            deliver_batch: AtomicBool::new(false),
        });
        // Recorded by agent and start, so that whoever resumes the run after a crash kills it.
        let record = match (&self.registry, pgid) {
            (Some(registry), Some(pgid)) => Some(registry.agent_record(&self.spec.name, generation, pgid)),
            _ => None,
        };
        if let (Some(registry), Some(record)) = (&self.registry, &record) {
            registry.spawned(&context.run_id, record).await;
        }

        let mut stdin = child.stdin.take().expect("stdin is piped");
        tokio::spawn(async move {
            // Every line waiting goes in one write (up to 64 KiB): a busy worker's answers and
            // deliveries cost one system call per batch, not two per line.
            let mut buffer: Vec<u8> = Vec::with_capacity(WRITE_BUFFER);
            while let Some(line) = to_write.recv().await {
                buffer.clear();
                buffer.extend_from_slice(line.as_bytes());
                buffer.push(b'\n');
                while buffer.len() < WRITE_BUFFER {
                    let Ok(line) = to_write.try_recv() else { break };
                    buffer.extend_from_slice(line.as_bytes());
                    buffer.push(b'\n');
                }
                if stdin.write_all(&buffer).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
                if buffer.capacity() > 4 * WRITE_BUFFER {
                    buffer = Vec::with_capacity(WRITE_BUFFER);
                }
            }
        });

        let stdout = child.stdout.take().expect("stdout is piped");
        let max = self.process.max_message_size as usize;
        let reader = Reader {
            connection: Arc::clone(&connection),
            events: context.events.clone(),
            requests: context.requests.clone(),
            log_path: self.log_path.clone(),
            max_message_size: max,
        };
        let read_task = tokio::spawn(reader.run(FramedRead::new(stdout, Lines::new(max))));
        let stderr_task = copy_stderr(child.stderr.take().expect("stderr is piped"), self.log_path.clone(), None);

        let watcher = Arc::clone(&connection);
        let events = context.events.clone();
        let registry = self.registry.clone();
        let run_id = context.run_id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let clean = status.as_ref().is_ok_and(|status| status.success());
            // Whatever the worker started goes with it.
            if let Some(pgid) = watcher.pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), read_task).await;
            let last_stderr = tokio::time::timeout(Duration::from_secs(1), stderr_task).await.ok().and_then(Result::ok);
            let reason = match status {
                Ok(status) => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                    (Some(code), _) => format!("exit status {code}"),
                    (None, Some(signal)) => match Signal::try_from(signal) {
                        Ok(signal) => format!("killed by {signal}"),
                        Err(_) => format!("killed by signal {signal}"),
                    },
                    (None, None) => "exited".to_string(),
                },
                Err(error) => format!("cannot wait for the process: {error}"),
            };
            let reason = last_stderr.unwrap_or_default().after(reason);
            *watcher.exit_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
            // The engine hears of the exit before the attempts fail, so that it gives them up
            // (and retries them at once elsewhere) instead of retrying them as failures.
            if !watcher.stopping.load(Ordering::SeqCst) {
                let _ = events.send(AgentEvent::Exited { agent: watcher.agent.clone(), reason: reason.clone(), clean });
            }
            let waiting: Vec<oneshot::Sender<RpcReply>> =
                watcher.pending.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, reply)| reply).collect();
            for reply in waiting {
                let _ = reply.send(Err(RpcError { code: -32000, message: format!("agent exited: {reason}") }));
            }
            watcher.exited.cancel();
            if let (Some(registry), Some(record)) = (registry, record) {
                registry.ended(&run_id, &record).await;
            }
        });
        Ok(connection)
    }
}

/// What one line of a worker's stdout is. Bad lines are frames too, so that reading goes on
/// after them (a framed stream ends at its first error).
#[derive(Debug)]
pub enum Frame {
    Line(String),
    TooLong,
    NotUtf8,
}

/// Lines of at most a maximum length, as [`Frame`]s.
pub struct Lines(LinesCodec);

impl Lines {
    /// Lines of at most `max` bytes.
    pub fn new(max: usize) -> Lines {
        Lines(LinesCodec::new_with_max_length(max))
    }

    fn frame(result: Result<Option<String>, LinesCodecError>) -> std::io::Result<Option<Frame>> {
        match result {
            Ok(line) => Ok(line.map(Frame::Line)),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Frame::TooLong)),
            Err(LinesCodecError::Io(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                Ok(Some(Frame::NotUtf8))
            }
            Err(LinesCodecError::Io(error)) => Err(error),
        }
    }
}

impl tokio_util::codec::Decoder for Lines {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> std::io::Result<Option<Frame>> {
        Lines::frame(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> std::io::Result<Option<Frame>> {
        Lines::frame(self.0.decode_eof(buf))
    }
}

/// Reads the worker's messages.
struct Reader {
    connection: Arc<Connection>,
    events: mpsc::UnboundedSender<AgentEvent>,
    requests: mpsc::UnboundedSender<AgentRequest>,
    log_path: PathBuf,
    max_message_size: usize,
}

impl Reader {
    async fn run(self, mut lines: FramedRead<tokio::process::ChildStdout, Lines>) {
        while let Some(frame) = lines.next().await {
            match frame {
                Ok(Frame::Line(line)) if line.trim().is_empty() => {}
                Ok(Frame::Line(line)) => self.handle(&line).await,
                Ok(Frame::TooLong) => {
                    let message = format!("message over {} bytes dropped", self.max_message_size);
                    self.protocol_error(Value::Null, -32600, &message).await;
                }
                Ok(Frame::NotUtf8) => self.protocol_error(Value::Null, -32700, "a message is not valid UTF-8").await,
                Err(_) => break,
            }
        }
    }

    async fn protocol_error(&self, id: Value, code: i64, message: &str) {
        self.connection.protocol_errors.fetch_add(1, Ordering::Relaxed);
        append_log(&self.log_path, &format!("--- protocol error ({code}): {message}")).await;
        self.connection.send(&json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }));
    }

    fn reply(&self, id: &Option<Value>, result: Value) {
        if let Some(id) = id {
            self.connection.send(&json!({ "jsonrpc": "2.0", "id": id, "result": result }));
        }
    }

    async fn handle(&self, line: &str) {
        let agent = self.connection.agent.clone();
        let incoming = decode(&agent, line);
        if incoming.is_sign_of_life() {
            let _ = self.events.send(AgentEvent::Activity { agent: agent.clone() });
        }
        let (id, call) = match incoming {
            Incoming::Call { id, call } => (id, call),
            Incoming::Response { id, answer } => return self.response(id, answer).await,
            Incoming::Invalid { id, code, message, .. } => return self.protocol_error(id, code, &message).await,
        };
        match call {
            Call::Heartbeat => self.reply(&id, json!({})),
            Call::Log { level, text } => {
                append_log(&self.log_path, &format!("[{level}] {text}")).await;
                self.reply(&id, json!({}));
            }
            Call::Progress { task, fraction, message } => {
                let _ = self.events.send(AgentEvent::Progress { agent, task, fraction, message });
                self.reply(&id, json!({}));
            }
            Call::SendMessage(message) => {
                self.ask(
                    id,
                    |reply| AgentRequest::SendMessage { agent, message, reply },
                    |message_id| json!({ "message_id": message_id }),
                );
            }
            Call::AcquireResource { resource, ttl } => {
                self.ask(
                    id,
                    |reply| AgentRequest::AcquireResource { agent, resource, ttl, reply },
                    |until| json!({ "granted": true, "until": until }),
                );
            }
            Call::ReleaseResource { resource } => {
                self.ask(id, |reply| AgentRequest::ReleaseResource { agent, resource, reply }, |()| json!({}));
            }
            Call::ReserveBudget { task, tokens } => {
                self.ask(id, |reply| AgentRequest::ReserveBudget { agent, task, tokens, reply }, |reservation| {
                    json!({ "granted": true, "tokens": reservation.tokens, "remaining": reservation.remaining })
                });
            }
            Call::Subscribe { topic } => {
                let _ = self.events.send(AgentEvent::Subscribe { agent, topic });
                self.reply(&id, json!({}));
            }
            Call::Usage { task, usage } => {
                let _ = self.events.send(AgentEvent::Usage { agent, task, usage });
                self.reply(&id, json!({}));
            }
            Call::CreateTasks { parent, tasks } => {
                self.ask(
                    id,
                    |reply| AgentRequest::CreateTasks { agent, parent, tasks, reply },
                    |ids| json!({ "task_ids": ids }),
                );
            }
            Call::Unknown(method) => {
                let message = format!("unknown method `{method}`");
                match id {
                    Some(id) => self.protocol_error(id, -32601, &message).await,
                    None => {
                        self.connection.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        append_log(&self.log_path, &format!("--- protocol error: {message} (notification ignored)"))
                            .await;
                    }
                }
            }
        }
    }

    /// Asks the engine what the request `make` builds, and answers the worker once the engine
    /// has replied (the tasks or the message are durable), without holding up the reading of
    /// further messages. A refusal is error `-32000` whatever its kind, as it always was; its
    /// kind is in the error's `data`.
    fn ask<T: Send + 'static>(
        &self,
        id: Option<Value>,
        make: impl FnOnce(Reply<T>) -> AgentRequest,
        result: impl FnOnce(T) -> Value + Send + 'static,
    ) {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send(make(reply));
        let connection = Arc::clone(&self.connection);
        tokio::spawn(async move {
            let outcome = match (sent, answer.await) {
                (Ok(()), Ok(outcome)) => outcome.map(result),
                _ => Err(RequestError::unavailable("the engine stopped")),
            };
            let Some(id) = id else { return };
            connection.send(&answer_json(id, outcome));
        });
    }

    /// A response to one of Baton's requests.
    async fn response(&self, id: u64, answer: RpcReply) {
        let waiting = self.connection.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let Some(reply) = waiting else {
            self.connection.protocol_errors.fetch_add(1, Ordering::Relaxed);
            append_log(&self.log_path, &format!("--- protocol error: response to unknown id {id} ignored")).await;
            return;
        };
        let _ = reply.send(answer);
    }
}

/// The JSON-RPC response to a worker's request the engine answered.
fn answer_json(id: Value, outcome: Result<Value, RequestError>) -> Value {
    match outcome {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(error) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": -32000, "message": error.message, "data": { "kind": error.kind.as_str() } },
        }),
    }
}

/// One line of a worker's stdout, decoded ([`decode`]).
#[derive(Debug)]
pub enum Incoming {
    /// A request (`id` is its id) or a notification (`id` is `None`) from the worker.
    Call { id: Option<Value>, call: Call },
    /// The worker's response to Baton's request `id`.
    Response { id: u64, answer: RpcReply },
    /// A line Baton cannot act on, answered with a JSON-RPC error (`id` is null when the line
    /// has none). `sign_of_life` says whether it still counts as one.
    Invalid { id: Value, code: i64, message: String, sign_of_life: bool },
}

impl Incoming {
    /// Anything the worker sends is a sign of life, except a line that is not JSON, and
    /// `message/send` (the engine notes that one with the send).
    pub fn is_sign_of_life(&self) -> bool {
        match self {
            Incoming::Call { call: Call::SendMessage(_), .. } => false,
            Incoming::Call { .. } | Incoming::Response { .. } => true,
            Incoming::Invalid { sign_of_life, .. } => *sign_of_life,
        }
    }
}

/// A request or notification a worker sends, with its parameters checked.
#[derive(Debug)]
pub enum Call {
    Heartbeat,
    Log {
        level: String,
        text: String,
    },
    Progress {
        task: TaskId,
        fraction: Option<f64>,
        message: Option<String>,
    },
    SendMessage(baton_core::messages::NewMessage),
    AcquireResource {
        resource: String,
        ttl: Duration,
    },
    ReleaseResource {
        resource: String,
    },
    Subscribe {
        topic: String,
    },
    Usage {
        task: Option<TaskId>,
        usage: Value,
    },
    CreateTasks {
        parent: Option<TaskId>,
        tasks: Vec<TaskInput>,
    },
    /// May the worker spend `tokens` now, for `task`? (`budget/reserve`, before a model call.)
    ReserveBudget {
        task: Option<TaskId>,
        tokens: u64,
    },
    /// A method Baton does not know.
    Unknown(String),
}

/// Decodes one line `agent`'s worker wrote: JSON-RPC 2.0, a request, a notification or a
/// response. Pure; what Baton does with it is `Reader::handle`'s.
pub fn decode(agent: &str, line: &str) -> Incoming {
    let mut message: Value = match serde_json::from_str(line) {
        Ok(message) => message,
        Err(error) => {
            let message = format!("parse error: {error}");
            return Incoming::Invalid { id: Value::Null, code: -32700, message, sign_of_life: false };
        }
    };
    let id = message.get("id").cloned();
    // Taken, not copied: a message's body and data go on to the engine.
    let mut params = message.get_mut("params").map(Value::take).unwrap_or(Value::Null);
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        return decode_response(id, &message);
    };
    let invalid = |message: String| Incoming::Invalid {
        id: id.clone().unwrap_or(Value::Null),
        code: -32602,
        message,
        sign_of_life: method != "message/send",
    };
    let task_id = params.get("task_id").and_then(Value::as_i64).map(TaskId);
    let string = |key: &str| params.get(key).and_then(Value::as_str).map(str::to_string);
    let call = match method {
        "heartbeat" => Call::Heartbeat,
        "log" => Call::Log {
            level: string("level").unwrap_or_else(|| "info".to_string()),
            text: string("message").unwrap_or_default(),
        },
        "task/progress" => {
            let Some(task) = task_id else {
                return invalid("task/progress needs `task_id`".into());
            };
            let fraction = params.get("fraction").and_then(Value::as_f64).map(|f| f.clamp(0.0, 1.0));
            Call::Progress { task, fraction, message: string("message") }
        }
        "message/send" => match parse_message(agent, &mut params) {
            Ok(message) => Call::SendMessage(message),
            Err(message) => return invalid(message),
        },
        "resource/acquire" => {
            let Some(resource) = string("resource") else {
                return invalid("resource/acquire needs `resource`".into());
            };
            let ttl = Duration::from_millis(params.get("ttl_ms").and_then(Value::as_u64).unwrap_or(60_000));
            if ttl > baton_core::time::MAX_DURATION {
                return invalid("resource/acquire: `ttl_ms` must be at most 3650 days".into());
            }
            Call::AcquireResource { resource, ttl }
        }
        "resource/release" => {
            let Some(resource) = string("resource") else {
                return invalid("resource/release needs `resource`".into());
            };
            Call::ReleaseResource { resource }
        }
        "topic/subscribe" => {
            let Some(topic) = string("topic") else {
                return invalid("topic/subscribe needs `topic`".into());
            };
            Call::Subscribe { topic }
        }
        "usage/report" => match baton_core::budget::Usage::from_report(&params) {
            Ok(_) => Call::Usage { task: task_id, usage: params },
            Err(error) => return invalid(format!("usage/report: {error}")),
        },
        "budget/reserve" => match params.get("tokens").and_then(Value::as_u64) {
            Some(tokens) if tokens > 0 => Call::ReserveBudget { task: task_id, tokens },
            _ => return invalid("budget/reserve needs `tokens`: a whole number of tokens, at least 1".into()),
        },
        "task/create" => match parse_new_tasks(&params) {
            Ok(tasks) => Call::CreateTasks { parent: task_id, tasks },
            Err(message) => return invalid(message),
        },
        other => Call::Unknown(other.to_string()),
    };
    Incoming::Call { id, call }
}

/// A line without a `method`: a response to one of Baton's requests.
fn decode_response(id: Option<Value>, message: &Value) -> Incoming {
    let Some(id) = id.as_ref().and_then(Value::as_u64) else {
        let message = "a message with neither `method` nor a numeric `id`".to_string();
        return Incoming::Invalid { id: Value::Null, code: -32600, message, sign_of_life: true };
    };
    let answer = match (message.get("result"), message.get("error")) {
        (_, Some(error)) => Err(RpcError {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(-32000),
            message: error.get("message").and_then(Value::as_str).unwrap_or("the agent reported an error").to_string(),
        }),
        (Some(result), None) => Ok(result.clone()),
        (None, None) => Ok(Value::Null),
    };
    Incoming::Response { id, answer }
}

/// A message as `message/deliver` and `message/deliver_batch` hand it to a worker. Fields in
/// sorted order, as in every message Baton sends.
#[derive(serde::Serialize)]
struct DeliveredMessage<'a> {
    attempt: u32,
    body: &'a str,
    correlation_id: &'a Option<String>,
    data: &'a Value,
    from: &'a str,
    message_id: &'a str,
    task_id: Option<TaskId>,
    topic: &'a Option<String>,
}

impl<'a> From<&'a baton_core::messages::Delivery> for DeliveredMessage<'a> {
    fn from(delivery: &'a baton_core::messages::Delivery) -> DeliveredMessage<'a> {
        DeliveredMessage {
            attempt: delivery.attempts + 1,
            body: &delivery.body,
            correlation_id: &delivery.correlation_id,
            data: &delivery.data,
            from: &delivery.from,
            message_id: &delivery.message_id,
            task_id: delivery.task,
            topic: &delivery.topic,
        }
    }
}

#[derive(serde::Serialize)]
struct BatchParams<'a> {
    messages: Vec<DeliveredMessage<'a>>,
}

/// The outcome of each delivery of a batch from the worker's answer,
/// `{"acked": [message_id...], "errors"?: {message_id: reason}}`: a message is acknowledged
/// only if its id is listed in `acked`; any other is tried again, with the reason the worker
/// gave if it gave one.
fn batch_results(deliveries: &[baton_core::messages::Delivery], result: &Value) -> Vec<Result<(), AgentError>> {
    let acked: std::collections::HashSet<&str> =
        result.get("acked").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let errors = result.get("errors");
    deliveries
        .iter()
        .map(|delivery| {
            if acked.contains(delivery.message_id.as_str()) {
                return Ok(());
            }
            let reason = errors.and_then(|errors| errors.get(&delivery.message_id)).and_then(Value::as_str);
            Err(AgentError::transient(reason.unwrap_or("not acknowledged in the batch's answer")))
        })
        .collect()
}

/// The message of a `message/send` request: `to` is an agent's name, `"*"` for every agent,
/// or `"#topic"`.
fn parse_message(agent: &str, params: &mut Value) -> Result<baton_core::messages::NewMessage, String> {
    use baton_core::messages::{NewMessage, Recipient};
    let Some(to) = params.get("to").and_then(Value::as_str).filter(|to| !to.is_empty()) else {
        return Err("message/send needs `to`: an agent, \"*\" or \"#topic\"".into());
    };
    let to = match to {
        "*" => Recipient::Broadcast,
        topic if topic.starts_with('#') => Recipient::Topic(topic[1..].to_string()),
        name => Recipient::Agent(name.to_string()),
    };
    Ok(NewMessage {
        from: agent.to_string(),
        to,
        body: params.get("body").and_then(Value::as_str).unwrap_or_default().to_string(),
        data: params.get_mut("data").map(Value::take).unwrap_or(Value::Null),
        task: params.get("task_id").and_then(Value::as_i64).map(TaskId),
        correlation_id: params.get("correlation_id").and_then(Value::as_str).map(str::to_string),
    })
}

/// The tasks of a `task/create` request: each a [`TaskInput`] (unknown fields refused), with
/// what can be checked without the plan checked here; the engine checks the rest and fills the
/// defaults (a task without a workstream joins its parent's).
fn parse_new_tasks(params: &Value) -> Result<Vec<TaskInput>, String> {
    let Some(items) = params.get("tasks").and_then(Value::as_array) else {
        return Err("task/create needs `tasks`: an array of tasks".into());
    };
    let mut tasks = Vec::with_capacity(items.len());
    for (idx, item) in items.iter().enumerate() {
        let task: TaskInput = serde_json::from_value(item.clone()).map_err(|error| format!("tasks[{idx}]: {error}"))?;
        baton_core::task::check_alone(&task).map_err(|error| format!("tasks[{idx}]: {error}"))?;
        tasks.push(task);
    }
    Ok(tasks)
}

#[async_trait]
impl AgentRuntime for WorkerAgent {
    async fn start(&self, context: AgentContext) -> Result<(), AgentError> {
        let mut current = self.current.lock().await;
        if let Some(previous) = current.take() {
            previous.stop().await;
        }
        prepare_dirs(&self.workdir, &self.log_path).await?;
        let connection = self.spawn(&context).await?;
        self.log(&format!("--- worker {} started (pid group {})", self.spec.name, connection.pgid.unwrap_or_default()))
            .await;
        let (_, answer) = connection.request(
            "initialize",
            json!({
                "agent": self.spec.name,
                "capabilities": self.spec.capabilities,
                "concurrency": self.spec.concurrency,
                "run_id": context.run_id,
                "protocol_version": PROTOCOL_VERSION,
                "brief": self.brief,
            }),
        );
        let reply = tokio::select! {
            reply = answer => reply,
            () = connection.exited.cancelled() => {
                let reason = format!("exited before answering `initialize`: {}", connection.exit_reason());
                return Err(AgentError::transient(reason));
            }
        };
        match reply {
            Ok(Ok(result)) => {
                let deliver_batch = result.get("deliver_batch").and_then(Value::as_bool).unwrap_or(false);
                connection.deliver_batch.store(deliver_batch, Ordering::Relaxed);
                *current = Some(connection);
                Ok(())
            }
            // The worker said no (bad credentials, a protocol version it does not speak): the
            // same program started again with the same parameters would say no again.
            Ok(Err(error)) => {
                connection.stop().await;
                Err(AgentError::permanent(format!("refused `initialize`: {}", error.message)))
            }
            Err(_) => {
                connection.stop().await;
                Err(AgentError::transient(format!(
                    "exited before answering `initialize`: {}",
                    connection.exit_reason()
                )))
            }
        }
    }

    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome {
        let Some(connection) = self.connection().await else {
            return Outcome::Failed { reason: "the agent is not running".into() };
        };
        let task_id = attempt.task.id;
        let (id, answer) = connection.request("task/assign", task_json(&attempt));
        let timeout = attempt.task.timeout_ms.map(Duration::from_millis).or(self.process.limits.timeout);
        let deadline = async {
            match timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            reply = answer => match reply {
                Ok(Ok(result)) => {
                    // The task succeeded all the same; its usage is not counted (the engine
                    // refuses it too), and the worker's log says why.
                    if let Err(error) = baton_core::budget::Usage::from_result(&result) {
                        self.log(&format!("--- usage in the result of task {task_id} not counted: {error}")).await;
                    }
                    Outcome::Succeeded { result }
                }
                Ok(Err(error)) => Outcome::Failed { reason: error.message },
                Err(_) => Outcome::Failed { reason: format!("agent exited: {}", connection.exit_reason()) },
            },
            // Exited before the request could be answered (or even read).
            () = connection.exited.cancelled() => {
                connection.forget(id);
                Outcome::Failed { reason: format!("agent exited: {}", connection.exit_reason()) }
            }
            () = deadline => {
                connection.forget(id);
                connection.notify("task/cancel", json!({ "task_id": task_id, "reason": "timeout" }));
                Outcome::Failed { reason: format!("timed out after {}", format_duration(timeout.unwrap_or_default())) }
            }
            () = cancel.cancelled() => {
                connection.forget(id);
                connection.notify("task/cancel", json!({ "task_id": task_id, "reason": "cancelled" }));
                Outcome::Failed { reason: "cancelled".into() }
            }
        }
    }

    fn takes_messages(&self) -> bool {
        true
    }

    async fn deliver(&self, delivery: &baton_core::messages::Delivery) -> Result<(), AgentError> {
        let Some(connection) = self.connection().await else {
            return Err(AgentError::transient("the agent is not running"));
        };
        let (id, answer) = connection.request_with("message/deliver", &DeliveredMessage::from(delivery));
        connection.answer(id, answer).await.map(|_| ())
    }

    async fn deliver_batch(&self, deliveries: &[baton_core::messages::Delivery]) -> Vec<Result<(), AgentError>> {
        let Some(connection) = self.connection().await else {
            return vec![Err(AgentError::transient("the agent is not running")); deliveries.len()];
        };
        if !connection.deliver_batch.load(Ordering::Relaxed) {
            let singles = deliveries.iter().map(|delivery| {
                let (id, answer) = connection.request_with("message/deliver", &DeliveredMessage::from(delivery));
                let connection = &connection;
                async move { connection.answer(id, answer).await.map(|_| ()) }
            });
            return futures::future::join_all(singles).await;
        }
        let messages: Vec<DeliveredMessage<'_>> = deliveries.iter().map(DeliveredMessage::from).collect();
        let (id, answer) = connection.request_with("message/deliver_batch", &BatchParams { messages });
        match connection.answer(id, answer).await {
            Ok(result) => batch_results(deliveries, &result),
            Err(error) => vec![Err(error); deliveries.len()],
        }
    }

    async fn stop(&self) {
        let connection = self.current.lock().await.take();
        if let Some(connection) = connection {
            connection.stop().await;
            self.log(&format!(
                "--- worker {} stopped ({} protocol error(s) in this run of it)",
                self.spec.name,
                connection.protocol_errors.load(Ordering::Relaxed)
            ))
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::Timestamp;
    use baton_core::messages::{Delivery, DeliveryState};

    #[test]
    fn lines_decode_into_calls_responses_and_errors() {
        let progress =
            decode("w", r#"{"id":3,"jsonrpc":"2.0","method":"task/progress","params":{"task_id":7,"fraction":2}}"#);
        assert!(matches!(
            progress,
            Incoming::Call {
                id: Some(_),
                call: Call::Progress { task: TaskId(7), fraction: Some(1.0), message: None }
            }
        ));
        let answer = decode("w", r#"{"id":2,"jsonrpc":"2.0","error":{"code":1,"message":"empty"}}"#);
        assert!(matches!(answer, Incoming::Response { id: 2, answer: Err(RpcError { code: 1, .. }) }));
        let garbage = decode("w", "not json");
        assert!(matches!(garbage, Incoming::Invalid { code: -32700, sign_of_life: false, .. }));
        let stray = decode("w", r#"{"id":"x","result":{}}"#);
        assert!(matches!(stray, Incoming::Invalid { code: -32600, sign_of_life: true, .. }));
        let unknown = decode("w", r#"{"jsonrpc":"2.0","method":"no/such"}"#);
        assert!(matches!(unknown, Incoming::Call { id: None, call: Call::Unknown(ref method) } if method == "no/such"));
        // A bad `message/send` is refused, and is no sign of life (a good one is noted with the send).
        let send = decode("w", r#"{"id":5,"method":"message/send","params":{"body":"hi"}}"#);
        assert!(matches!(send, Incoming::Invalid { code: -32602, sign_of_life: false, .. }));
        let send = decode("w", r##"{"id":5,"method":"message/send","params":{"to":"#t","body":"hi"}}"##);
        assert!(matches!(send, Incoming::Call { call: Call::SendMessage(_), .. }) && !send.is_sign_of_life());
    }

    fn delivery(message_id: &str) -> Delivery {
        Delivery {
            id: 1,
            message_id: message_id.into(),
            from: "a".into(),
            to: "b".into(),
            topic: None,
            body: "hi".into(),
            data: Value::Null,
            task: None,
            correlation_id: None,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: Timestamp(0),
            created_at: Timestamp(0),
            error: None,
            acked_at: None,
        }
    }

    #[test]
    fn task_create_takes_estimates_and_refuses_bad_ones() {
        let params = json!({ "tasks": [
            { "title": "Review", "estimated_tokens": 4000, "resources": ["file:src/**"], "timeout": "5m" },
            { "title": "Plain" },
        ]});
        let tasks = parse_new_tasks(&params).unwrap();
        assert_eq!((tasks[0].estimated_tokens, tasks[1].estimated_tokens), (Some(4000), None));
        assert_eq!(tasks[0].resources, vec!["file:src/**".to_string()]);
        assert_eq!(tasks[0].timeout.as_deref(), Some("5m"), "the timeout is kept, not dropped");
        assert_eq!(
            parse_new_tasks(&json!({ "tasks": [{ "title": "Plain" }, { "title": "Bad", "estimated_tokens": 0 }] }))
                .unwrap_err(),
            "tasks[1]: `estimated_tokens` must be at least 1"
        );
        for bad in [json!(-5), json!("lots"), json!(1.5)] {
            let params = json!({ "tasks": [{ "title": "Plain" }, { "title": "Bad", "estimated_tokens": bad }] });
            let error = parse_new_tasks(&params).unwrap_err();
            assert!(error.starts_with("tasks[1]: invalid "), "{error}");
        }
    }

    /// The same refusals as `POST /tasks`: an unknown field, too many attempts (no silent
    /// clamping), a bad timeout, a missing title.
    #[test]
    fn task_create_refuses_what_post_tasks_refuses() {
        let refused = |task: Value| parse_new_tasks(&json!({ "tasks": [task] })).unwrap_err();
        assert!(refused(json!({ "title": "t", "retries": 2 })).starts_with("tasks[0]: unknown field `retries`"));
        assert_eq!(
            refused(json!({ "title": "t", "max_attempts": 1000 })),
            "tasks[0]: `max_attempts` must be at most 100, not 1000"
        );
        assert!(
            refused(json!({ "title": "t", "timeout": "soon" })).starts_with("tasks[0]: `timeout`: invalid duration")
        );
        assert!(refused(json!({ "description": "no title" })).starts_with("tasks[0]: missing field `title`"));
        assert_eq!(refused(json!({ "title": " " })), "tasks[0]: task `title` must not be empty");
    }

    #[test]
    fn a_batch_acknowledges_only_the_messages_its_answer_lists() {
        let batch = [delivery("m1"), delivery("m2"), delivery("m3")];
        let answer = json!({ "acked": ["m3", "m1", "unknown"], "errors": { "m2": "busy" } });
        assert_eq!(batch_results(&batch, &answer), vec![Ok(()), Err(AgentError::transient("busy")), Ok(())]);
        let silent = batch_results(&batch, &json!({}));
        assert!(
            silent.iter().all(|result| result == &Err(AgentError::transient("not acknowledged in the batch's answer")))
        );
    }

    #[test]
    fn delivered_messages_have_their_keys_in_sorted_order() {
        let mut message = delivery("m1");
        message.attempts = 2;
        let text = serde_json::to_string(&BatchParams { messages: vec![DeliveredMessage::from(&message)] }).unwrap();
        assert_eq!(
            text,
            r#"{"messages":[{"attempt":3,"body":"hi","correlation_id":null,"data":null,"from":"a","message_id":"m1","task_id":null,"topic":null}]}"#
        );
    }
}
