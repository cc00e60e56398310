//! What kind of agent an agent is: the part of its spec that only that kind has.
//!
//! [`AgentSpec`](super::AgentSpec) holds what every agent has (a name, a role, capabilities,
//! concurrency, a restart policy, a circuit breaker…); its `kind` holds the rest: the program
//! and environment of a process agent, nothing (yet) for a remote one, the card's URL for an
//! A2A one, the provider and model for an LLM one. A new kind of agent is a new variant here
//! with its own spec struct, validated in `config.rs`, and a
//! new `AgentRuntime` in baton-runtime that the engine's runtime factory builds for it.
//!
//! The kind is serialized flat, beside the common fields: `"runtime": "process"` and the
//! process fields, so that `GET /agents` shows a process agent exactly as before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Limits, LlmSpec, Location, ProcessMode, TerminalSpec};

/// How an agent runs, by name: the `runtime` key of an `[[agents]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Baton starts `command` and supervises it (`mode` says how).
    #[default]
    Process,
    /// Baton starts nothing: a worker process anywhere claims the agent's tasks over HTTP.
    Remote,
    /// A remote agent that speaks A2A: Baton sends it each task as a message.
    A2a,
    /// Baton calls a model's API in a loop, with tools.
    Llm,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Remote => "remote",
            RuntimeKind::A2a => "a2a",
            RuntimeKind::Llm => "llm",
        }
    }
}

/// The `runtime` key as written, including the kinds that are not available yet: those are
/// refused by validation with a message that says so, not by the parser as unknown words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawRuntime {
    #[default]
    Process,
    Remote,
    Llm,
    A2a,
}

/// The kind-specific part of an agent's spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "runtime", rename_all = "lowercase")]
// One per agent, matched far more often than moved: a box would buy nothing but indirection.
#[allow(clippy::large_enum_variant)]
pub enum AgentKind {
    /// An OS process Baton starts and supervises (`runtime = "process"`).
    Process(ProcessSpec),
    /// A worker Baton does not start, taking tasks over HTTP (`runtime = "remote"`).
    Remote(RemoteSpec),
    /// An agent elsewhere that speaks A2A 1.0, sent each task as a message (`runtime = "a2a"`).
    A2a(A2aSpec),
    /// A model called in a loop with tools (`runtime = "llm"`).
    Llm(LlmSpec),
}

impl AgentKind {
    pub fn runtime(&self) -> RuntimeKind {
        match self {
            AgentKind::Process(_) => RuntimeKind::Process,
            AgentKind::Remote(_) => RuntimeKind::Remote,
            AgentKind::A2a(_) => RuntimeKind::A2a,
            AgentKind::Llm(_) => RuntimeKind::Llm,
        }
    }

    /// Whether an agent of kind `self` needs a new runtime to become one of kind `other`:
    /// anything its runtime is built from differs. Where the command is written in the file
    /// (`command_location`) does not count.
    pub fn runtime_differs(&self, other: &AgentKind) -> bool {
        match (self, other) {
            (AgentKind::Process(old), AgentKind::Process(new)) => !old.same_runtime(new),
            (AgentKind::Remote(old), AgentKind::Remote(new)) => old != new,
            (AgentKind::A2a(old), AgentKind::A2a(new)) => old != new,
            (AgentKind::Llm(old), AgentKind::Llm(new)) => !old.same_runtime(new),
            _ => true,
        }
    }
}

/// A process agent: what it runs, how, where and within which limits.
///
/// `command` and `env` hold what the agent runs with, `${VAR}`s expanded — often a secret (an
/// API key in `env`). They are never shown: serialization (the API, `baton check --json`) and
/// `Debug` (logs, through [`AgentSpec`](super::AgentSpec)'s) give `command_written` and
/// `env_written` instead, the text as written in the file, `${ANTHROPIC_API_KEY}` and all.
#[derive(Clone, PartialEq, Serialize)]
pub struct ProcessSpec {
    /// How the process runs: once per task, as a JSON-RPC worker, or in a terminal.
    pub mode: ProcessMode,
    /// The program and its arguments, `${VAR}`s expanded. Never shown: see `command_written`.
    #[serde(skip)]
    pub command: Vec<String>,
    /// `command` as written, `${VAR}`s unexpanded: what the API and logs show.
    #[serde(rename = "command")]
    pub command_written: Vec<String>,
    /// Where `command` is written, for errors about it found later (command not found).
    #[serde(skip_serializing_if = "Location::has_no_line")]
    pub command_location: Location,
    /// Largest protocol message a worker may send, in bytes.
    #[serde(with = "crate::time::humane_size")]
    pub max_message_size: u64,
    /// How a terminal agent is driven; set exactly when `mode` is `pty`. Its keys are the
    /// agent's own in `baton.toml` (`input_template`, `done_when`, …), and so in JSON.
    #[serde(flatten)]
    pub terminal: Option<TerminalSpec>,
    /// Variables set for the agent's processes, `${VAR}`s expanded. Never shown: see
    /// `env_written`.
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
    /// `env` as written, `${VAR}`s unexpanded: what the API and logs show.
    #[serde(rename = "env")]
    pub env_written: BTreeMap<String, String>,
    /// Variables of Baton's own environment the agent may inherit, beyond the safe defaults.
    pub env_passthrough: Vec<String>,
    /// Working directory, relative to the configuration file's directory.
    pub workdir: Option<String>,
    pub limits: Limits,
}

impl std::fmt::Debug for ProcessSpec {
    /// As it is shown: `command` and `env` as written, never expanded.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessSpec")
            .field("mode", &self.mode)
            .field("command", &self.command_written)
            .field("env", &self.env_written)
            .field("workdir", &self.workdir)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ProcessSpec {
    /// A process agent running `command` once per task, with the defaults of a file that says
    /// nothing else.
    pub fn per_task(command: Vec<String>) -> ProcessSpec {
        ProcessSpec {
            mode: ProcessMode::PerTask,
            command_written: command.clone(),
            command,
            command_location: Location::default(),
            max_message_size: super::validate::DEFAULT_MESSAGE_SIZE,
            terminal: None,
            env: BTreeMap::new(),
            env_written: BTreeMap::new(),
            env_passthrough: Vec::new(),
            workdir: None,
            limits: Limits::default(),
        }
    }

    /// Whether a runtime built from `self` is the one `other` needs: everything but where the
    /// command is written.
    fn same_runtime(&self, other: &ProcessSpec) -> bool {
        self.mode == other.mode
            && self.command == other.command
            && self.env == other.env
            && self.env_passthrough == other.env_passthrough
            && self.workdir == other.workdir
            && self.limits == other.limits
            && self.terminal == other.terminal
            && self.max_message_size == other.max_message_size
    }
}

/// A remote agent: its workers decide how they run, so there is nothing to say yet (the lease
/// of a claimed attempt is the agent's `heartbeat_timeout`, common to every agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RemoteSpec {}

/// An A2A agent: where its Agent Card is, and the credentials Baton sends it.
///
/// The header's value is a secret: it is read from the variable `auth_header_env` names and
/// never shown (serialization and `Debug` give the variable's name only).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct A2aSpec {
    /// The remote agent's card (`https://host/.well-known/agent-card.json`), or the URL it is
    /// served under, to which `/.well-known/agent-card.json` is added.
    pub url: String,
    /// The variable that holds the `Authorization` header sent with every request
    /// (`Bearer …`).
    pub auth_header_env: Option<String>,
    /// The header's value, from the environment. Never shown.
    #[serde(skip)]
    pub auth_header: Option<String>,
}

impl std::fmt::Debug for A2aSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("A2aSpec").field("url", &self.url).field("auth_header_env", &self.auth_header_env).finish()
    }
}

impl A2aSpec {
    /// The card's URL: `url` itself when it names a JSON document, else the well-known path
    /// under it.
    pub fn card_url(&self) -> String {
        if self.url.ends_with(".json") {
            return self.url.clone();
        }
        format!("{}/.well-known/agent-card.json", self.url.trim_end_matches('/'))
    }
}
