//! `baton.toml`: the configuration model, its parser and its validation.
//!
//! Parsing is strict (unknown keys are errors) and every error names `file:line:column` and
//! what was expected. Validation turns the raw file into a [`Plan`]: references resolved,
//! cycles rejected (naming the cycle), phases computed, `${VAR}`s expanded from an environment
//! passed in as a map. Checks that need IO (does a command exist?) are the shell's; the plan
//! keeps the locations they report against.
//!
//! This module holds the plan and its parts as validated, and `load`. Beside it: `raw` (the file
//! as written), `validate` (from the raw file to the plan), `diagnostics` (problems and their
//! places), `layers` (profiles and `BATON_*` overrides), `json` (agents from the API), `kind`
//! (what only one kind of agent has) and a module per section (`server`, `budget`,
//! `schedules`, `logs`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::DeTable;

use crate::budget::BudgetSpec;
use crate::model::{NewTask, Priority};
use crate::schedule::ScheduleSpec;
use crate::time::format_duration;

/// What happens to a task whose resources overlap those of a running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// It waits until the resource is free (the default).
    #[default]
    Wait,
    /// It fails at once (dead), saying which task holds what.
    Fail,
    /// It runs anyway; the overlap is recorded as an event.
    Warn,
}

impl ConflictPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Wait => "wait",
            ConflictPolicy::Fail => "fail",
            ConflictPolicy::Warn => "warn",
        }
    }
}

/// Who decomposes objectives and triages failed tasks: the rules (routing by capability), or
/// a model that falls back to the rules on any failure (`[coordinator]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Coordinator {
    #[default]
    Rules,
    Llm,
}

impl Coordinator {
    pub fn as_str(self) -> &'static str {
        match self {
            Coordinator::Rules => "rules",
            Coordinator::Llm => "llm",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated plan.

/// How a process agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessMode {
    /// The command is started once per task.
    #[default]
    PerTask,
    /// One long-running process speaking JSON-RPC on stdin/stdout (docs/agent-protocol.md).
    Worker,
    /// One long-running program in a pseudo-terminal, given tasks by typing
    /// (docs/terminal-agents.md).
    Pty,
}

impl ProcessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessMode::PerTask => "per-task",
            ProcessMode::Worker => "worker",
            ProcessMode::Pty => "pty",
        }
    }
}

/// How a terminal agent (`mode = "pty"`) is given a task and how its end is recognised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TerminalSpec {
    /// What is typed to hand over a task, with `{task.…}` placeholders. A newline is typed as
    /// Enter.
    pub input_template: String,
    pub done_when: DoneWhen,
    /// Silence during a task for longer than this makes the agent `stalled`.
    #[serde(with = "crate::time::humane")]
    pub stall_after: Duration,
    /// Regular expressions (validated) that recognise a question on the screen.
    pub prompt_patterns: Vec<String>,
}

/// The typed input of a terminal agent when `input_template` is not set.
pub const DEFAULT_INPUT_TEMPLATE: &str = "{task.description}\n";

/// The prompts recognised when `prompt_patterns` is not set.
pub const DEFAULT_PROMPT_PATTERNS: [&str; 4] = [r"\[y/N\]", r"\[Y/n\]", r"\(y/n\)", r"Do you want to proceed\?"];

impl Default for TerminalSpec {
    fn default() -> Self {
        TerminalSpec {
            input_template: DEFAULT_INPUT_TEMPLATE.to_string(),
            done_when: DoneWhen::Exit,
            stall_after: Duration::from_secs(300),
            prompt_patterns: DEFAULT_PROMPT_PATTERNS.iter().map(|pattern| pattern.to_string()).collect(),
        }
    }
}

/// When a terminal agent's task is done. Shown as written in `baton.toml`: `{"output": "…"}`,
/// `{"file": "…"}` or `{"exit": true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DoneWhen {
    /// The program's output after the task was typed matches this regular expression.
    Output(String),
    /// This file (relative to the working directory, `{task.…}` placeholders allowed)
    /// appears, or changes, after the task was typed.
    File(String),
    /// The program exits; status 0 is success. It is started again for the next task.
    #[serde(serialize_with = "exit_as_written")]
    Exit,
}

fn exit_as_written<S: serde::Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bool(true)
}

/// When an agent is taken out of rotation for failing tasks: after `failures` in a row, for
/// `cooldown`, then one trial task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreaker {
    pub failures: u32,
    #[serde(with = "crate::time::humane")]
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    #[default]
    OnFailure,
    Always,
}

/// What an agent is for; shown to users and handed to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    pub description: String,
    #[serde(default)]
    pub deliverable: String,
    #[serde(default)]
    pub validation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub max_concurrent_agents: u32,
    #[serde(with = "crate::time::humane")]
    pub agent_spawn_timeout: Duration,
    #[serde(with = "crate::time::humane::option")]
    pub workstream_timeout: Option<Duration>,
    pub coordinator: Coordinator,
    /// First retry delay; doubled on each further attempt, with jitter.
    #[serde(with = "crate::time::humane")]
    pub retry_backoff: Duration,
    #[serde(with = "crate::time::humane")]
    pub retry_backoff_max: Duration,
    /// How long a running task's lease lasts without renewal.
    #[serde(with = "crate::time::humane")]
    pub lease_ttl: Duration,
    /// An idle agent not heard from for this long is shown `offline`.
    #[serde(with = "crate::time::humane")]
    pub offline_after: Duration,
    /// The default for tasks whose resources are held by another (`[conflicts] policy`).
    pub conflict_policy: ConflictPolicy,
    /// Tasks of the file that set their own `on_conflict`, by key.
    pub task_conflict_policies: BTreeMap<String, ConflictPolicy>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrent_agents: 8,
            agent_spawn_timeout: Duration::from_secs(30),
            workstream_timeout: None,
            coordinator: Coordinator::Rules,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(100),
            lease_ttl: Duration::from_secs(30),
            offline_after: Duration::from_secs(60 * 60),
            conflict_policy: ConflictPolicy::Wait,
            task_conflict_policies: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkstreamSpec {
    pub name: String,
    pub description: String,
    pub priority: Priority,
    pub depends_on: Vec<String>,
    /// What the workstream is for, turned into tasks by the coordinator at the start of the
    /// run (once: the tasks it made are keyed by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Limits {
    /// Address-space limit in bytes.
    #[serde(with = "crate::time::humane_size::option")]
    pub memory: Option<u64>,
    /// CPU-time limit.
    #[serde(with = "crate::time::humane::option")]
    pub cpu: Option<Duration>,
    /// Wall-clock limit for one task, when the task sets none.
    #[serde(with = "crate::time::humane::option")]
    pub timeout: Option<Duration>,
}

/// An agent, validated: what every agent has, and its [`AgentKind`] (what only its kind has).
///
/// No field shows a secret: a process agent's expanded `command` and `env` are skipped by
/// serialization and `Debug` (see [`ProcessSpec`]).
#[derive(Clone, PartialEq, Serialize)]
pub struct AgentSpec {
    pub name: String,
    pub role: String,
    pub workstream: Option<String>,
    pub priority: Priority,
    pub capabilities: Vec<String>,
    /// How the agent runs. Serialized flat: `runtime` names the kind, beside its own fields.
    #[serde(flatten)]
    pub kind: AgentKind,
    pub restart: RestartPolicy,
    /// At most this many restarts within `restart_window`; one more and the agent is failed.
    pub max_restarts: u32,
    #[serde(with = "crate::time::humane")]
    pub restart_window: Duration,
    /// First restart delay; doubled for each restart in the window.
    #[serde(with = "crate::time::humane")]
    pub restart_backoff: Duration,
    /// A worker silent for longer than this is killed and restarted; a remote worker's claim
    /// lasts this long without a heartbeat.
    #[serde(with = "crate::time::humane")]
    pub heartbeat_timeout: Duration,
    pub circuit_breaker: CircuitBreaker,
    pub concurrency: u32,
    pub runbook: Option<String>,
    pub objectives: Vec<Objective>,
    /// Globs of the tools (`server/tool`) the agent may call: `["fs/*", "baton/*"]`. Matched
    /// by `baton_runtime::tools::allowed`.
    pub tools: Vec<String>,
    /// `[logs]`: the rotation of the agent's log file (the same for every agent).
    #[serde(skip)]
    pub log_rotation: LogRotation,
}

impl fmt::Debug for AgentSpec {
    /// The spec as it is shown (`command` and `env` as written, never expanded), so that a
    /// `{:?}` in a log line cannot leak a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(shown) => write!(f, "AgentSpec {shown}"),
            Err(_) => write!(f, "AgentSpec {{ name: {:?}, .. }}", self.name),
        }
    }
}

impl AgentSpec {
    /// Whether this agent may run a task of `workstream` requiring `requires`, pinned to
    /// `pinned`. An agent without a workstream serves every workstream.
    pub fn can_run(&self, workstream: Option<&str>, requires: &[String], pinned: Option<&str>) -> bool {
        if pinned.is_some_and(|pinned| pinned != self.name) {
            return false;
        }
        if let Some(own) = &self.workstream
            && workstream != Some(own.as_str())
        {
            return false;
        }
        requires.iter().all(|capability| self.capabilities.contains(capability))
    }

    /// Whether the agent takes its capabilities from elsewhere when it starts: an A2A agent
    /// without `capabilities` in the config takes its card's skills. Until then nothing is
    /// known of them, so the config's check that a task has an agent counts it as able.
    pub fn learns_capabilities(&self) -> bool {
        matches!(self.kind, AgentKind::A2a(_)) && self.capabilities.is_empty()
    }

    pub fn runtime(&self) -> RuntimeKind {
        self.kind.runtime()
    }

    /// The process part of a process agent's spec.
    pub fn process(&self) -> Option<&ProcessSpec> {
        match &self.kind {
            AgentKind::Process(process) => Some(process),
            AgentKind::Remote(_) | AgentKind::A2a(_) | AgentKind::Llm(_) => None,
        }
    }

    /// How a process agent runs; `None` for agents of other kinds.
    pub fn process_mode(&self) -> Option<ProcessMode> {
        self.process().map(|process| process.mode)
    }

    /// Whether the agent is a long-running worker speaking the JSON-RPC protocol.
    pub fn is_worker(&self) -> bool {
        self.process_mode() == Some(ProcessMode::Worker)
    }

    /// The runtime in a few words, as events show it: `process worker`, `remote`.
    pub fn runtime_summary(&self) -> String {
        match &self.kind {
            AgentKind::Process(process) => format!("process {}", process.mode.as_str()),
            AgentKind::Remote(_) => "remote".to_string(),
            AgentKind::A2a(a2a) => format!("a2a {}", a2a.url),
            AgentKind::Llm(llm) => format!("llm {}/{}", llm.provider.name, llm.model),
        }
    }
}

/// A validated configuration, ready to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub name: String,
    pub settings: Settings,
    pub store_url: String,
    /// `server.listen`, the same as `server.listen` (kept for the callers that predate
    /// [`ServerSpec`]).
    pub listen: String,
    /// `[server]`: where the API listens and how it is reached.
    pub server: ServerSpec,
    /// `[auth]`: bearer tokens for the API; `None` when the section is absent.
    pub auth: Option<AuthSpec>,
    pub workstreams: Vec<WorkstreamSpec>,
    /// Workstream names per phase, in order.
    pub phases: Vec<Vec<String>>,
    pub agents: Vec<AgentSpec>,
    /// The tasks declared in the file, each with a key.
    pub tasks: Vec<NewTask>,
    /// `[[schedules]]`: tasks created from a template when a cron expression is due.
    pub schedules: Vec<ScheduleSpec>,
    /// Token budgets (`[budget]`, the workstreams' and agents' `budget`, the tasks'
    /// `estimated_tokens`).
    pub budget: BudgetSpec,
    /// `[mcp_servers.NAME]`: the MCP servers whose tools agents may call, by name.
    pub mcp_servers: Vec<McpServerSpec>,
    /// `[llm]`: the providers LLM agents call.
    pub llm: LlmSettings,
    /// `[a2a]`: the A2A server's settings (the hosts push notifications may go to).
    pub a2a: A2aSettings,
    /// `[coordinator]`: the rules, or a model that falls back to them.
    pub coordinator: CoordinatorSpec,
}

impl Plan {
    pub fn workstream(&self, name: &str) -> Option<&WorkstreamSpec> {
        self.workstreams.iter().find(|ws| ws.name == name)
    }

    pub fn agent(&self, name: &str) -> Option<&AgentSpec> {
        self.agents.iter().find(|agent| agent.name == name)
    }

    /// 1-based phase of a workstream; tasks without a workstream belong to phase 1.
    pub fn phase_of(&self, workstream: Option<&str>) -> u32 {
        let Some(workstream) = workstream else {
            return 1;
        };
        self.phases.iter().position(|phase| phase.iter().any(|name| name == workstream)).map_or(1, |idx| idx as u32 + 1)
    }

    /// A human summary of the phases: what runs in each.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "plan `{}`: {} workstream(s), {} agent(s), {} task(s), {} phase(s)\n",
            self.name,
            self.workstreams.len(),
            self.agents.len(),
            self.tasks.len(),
            self.phases.len()
        );
        let unassigned: Vec<&NewTask> = self.tasks.iter().filter(|task| task.workstream.is_none()).collect();
        for (idx, phase) in self.phases.iter().enumerate() {
            text.push_str(&format!("phase {}:\n", idx + 1));
            for name in phase {
                let ws = self.workstream(name).expect("phases name declared workstreams");
                let agents: Vec<&str> = self
                    .agents
                    .iter()
                    .filter(|agent| agent.workstream.as_deref() == Some(name))
                    .map(|agent| agent.name.as_str())
                    .collect();
                let n_tasks = self.tasks.iter().filter(|task| task.workstream.as_deref() == Some(name)).count();
                let after = if ws.depends_on.is_empty() {
                    String::new()
                } else {
                    format!(", after {}", ws.depends_on.join(", "))
                };
                text.push_str(&format!(
                    "  {name} [{}{after}]: {n_tasks} task(s); agents: {}\n",
                    ws.priority,
                    if agents.is_empty() { "shared".to_string() } else { agents.join(", ") }
                ));
                if let Some(objective) = &ws.objective {
                    let shown: String = objective.split_whitespace().collect::<Vec<_>>().join(" ");
                    let cut: String = shown.chars().take(100).collect();
                    let more = if cut.len() < shown.len() { "…" } else { "" };
                    text.push_str(&format!("    objective (planned by the coordinator): {cut}{more}\n"));
                }
            }
            if idx == 0 && !unassigned.is_empty() {
                text.push_str(&format!("  (no workstream): {} task(s)\n", unassigned.len()));
            }
        }
        if self.phases.is_empty() && !unassigned.is_empty() {
            text.push_str(&format!("phase 1:\n  (no workstream): {} task(s)\n", unassigned.len()));
        }
        let shared: Vec<&str> =
            self.agents.iter().filter(|agent| agent.workstream.is_none()).map(|agent| agent.name.as_str()).collect();
        if !shared.is_empty() {
            text.push_str(&format!("shared agents (all phases): {}\n", shared.join(", ")));
        }
        let budget = &self.budget;
        let n_scoped = budget.workstreams.len() + budget.agents.len();
        if budget.global.is_set() || n_scoped > 0 {
            let global = if budget.global.is_set() { budget.global.to_string() } else { "no limit".to_string() };
            let thresholds: Vec<String> = budget.thresholds.iter().map(|percent| format!("{percent}%")).collect();
            text.push_str(&format!(
                "budget: global {global}, {n_scoped} workstream/agent budget(s); thresholds {}; resets at \"{}\" in {}\n",
                thresholds.join(", "),
                budget.reset,
                budget.timezone
            ));
        }
        for schedule in &self.schedules {
            let paused = if schedule.paused { ", paused" } else { "" };
            text.push_str(&format!(
                "schedule {}: `{}` ({}), overlap {}, missed {}{paused}: {}\n",
                schedule.name, schedule.cron, schedule.timezone, schedule.overlap, schedule.missed, schedule.task.title
            ));
        }
        if self.coordinator.is_llm() {
            let provider = self.coordinator.provider.as_ref().map_or("none", |provider| provider.name.as_str());
            text.push_str(&format!(
                "coordinator: llm (provider {provider}, model `{}`, timeout {}), falls back to the rules\n",
                self.coordinator.model,
                format_duration(self.coordinator.timeout)
            ));
        }
        text.push_str(&format!(
            "settings: max {} concurrent agent(s), retries back off from {}, leases last {}",
            self.settings.max_concurrent_agents,
            format_duration(self.settings.retry_backoff),
            format_duration(self.settings.lease_ttl)
        ));
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Parses and validates a configuration. `file` is the name errors use; `env` is the
/// environment `${VAR}` expands from. For `baton.<profile>.toml` and `BATON_*` overrides, see
/// `baton_runtime::config_file::load_layered`.
pub fn load(file: &str, text: &str, env: &BTreeMap<String, String>) -> Result<Plan, Error> {
    let locator = Locator::new(file, text);
    let root = parse_segment(&locator, 0).map_err(|diagnostic| Error { diagnostics: vec![diagnostic] })?;
    load_document(&locator, root, env).map_err(|invalid| invalid.error)
}

/// Parses one source of `locator` (its text, spans shifted into the locator's offset space).
fn parse_segment(locator: &Locator, idx: usize) -> Result<Spanned<DeTable<'_>>, Diagnostic> {
    let segment = &locator.segments[idx];
    let root = DeTable::parse(&segment.text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        let shifted = segment.start + span.start..segment.start + span.end;
        locator.diagnostic(shifted, error.message().trim().to_string())
    })?;
    Ok(layers::shift_table(root, segment.start))
}

/// A configuration with problems, and as much of its plan as could be built despite them. The
/// checks that need the machine (`baton_runtime::check`) run on the partial plan, so that one
/// `baton check` reports every problem at once; it is good for nothing else.
#[derive(Debug)]
pub struct Invalid {
    pub error: Error,
    /// `None` when the text could not be read as a configuration at all (TOML syntax, a key of
    /// the wrong type, an unknown key).
    pub partial: Option<Box<Plan>>,
}

impl Invalid {
    fn new(error: Error) -> Invalid {
        Invalid { error, partial: None }
    }
}

/// Deserializes and validates a document whose spans are in `locator`'s offset space.
fn load_document(
    locator: &Locator,
    root: Spanned<DeTable<'_>>,
    env: &BTreeMap<String, String>,
) -> Result<Plan, Invalid> {
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(root)).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        Invalid::new(Error { diagnostics: vec![locator.diagnostic(span, error.message().trim().to_string())] })
    })?;
    let mut validator = Validator {
        locator,
        env,
        diagnostics: Vec::new(),
        mcp_server_names: Vec::new(),
        llm_providers: BTreeMap::new(),
    };
    let plan = validator.validate(raw);
    let mut diagnostics = validator.diagnostics;
    diagnostics.sort_by_key(|diagnostic| {
        (locator.segment_of(&diagnostic.location), diagnostic.location.line, diagnostic.location.column)
    });
    if diagnostics.is_empty() {
        Ok(plan)
    } else {
        Err(Invalid { error: Error { diagnostics }, partial: Some(Box::new(plan)) })
    }
}

/// A task key derived from a title: lowercase words joined by `-`.
pub fn slug(title: &str) -> String {
    let mut slug = String::with_capacity(title.len());
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    while slug.ends_with('-') {
        slug.pop();
    }
    if slug.is_empty() { "task".to_string() } else { slug }
}

/// Expands `${NAME}` and `${NAME:-default}`; `$$` is a literal `$`.
pub fn expand_vars(text: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(idx) = rest.find('$') {
        out.push_str(&rest[..idx]);
        let after = &rest[idx + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("unterminated `${{` in `{text}`; write `${{NAME}}`, or `$$` for a literal `$`"));
            };
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name `{name}` in `{text}`"));
            }
            match (env.get(name), default) {
                (Some(value), _) => out.push_str(value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set; set it, or write `${{{name}:-default}}`"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

const PLACEHOLDERS: [&str; 7] =
    ["task.id", "task.key", "task.title", "task.description", "agent.name", "run.id", "mcp.config"];

/// Checks that every `{...}` in an argument is a known placeholder (also `baton agent-host`'s
/// command, which no configuration file holds).
pub fn check_placeholders(arg: &str) -> Result<(), String> {
    for name in placeholders(arg) {
        let known =
            PLACEHOLDERS.contains(&name) || name.strip_prefix("task.input.").is_some_and(|field| !field.is_empty());
        if !known {
            return Err(format!(
                "unknown placeholder `{{{name}}}`; known: {}, {{task.input.FIELD}}",
                PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

/// The placeholder names inside `{...}` in an argument. Only dotted lowercase names such as
/// `{task.title}` count, so literal braces (`awk '{print $1}'`, JSON) pass through untouched.
pub fn placeholders(arg: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start + 1..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        if is_placeholder_name(name) {
            names.push(name);
        }
        rest = &rest[start + 1..];
    }
    names
}

fn is_placeholder_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let head_ok =
        parts.next().is_some_and(|head| !head.is_empty() && head.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    let mut n_rest = 0;
    let rest_ok = parts.all(|part| {
        n_rest += 1;
        !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    head_ok && rest_ok && n_rest > 0
}

mod a2a;
mod budget;
mod coordinator;
mod diagnostics;
mod json;
mod kind;
mod layers;
mod llm;
mod logs;
mod mcp;
mod raw;
mod schedules;
mod server;
mod validate;

pub use a2a::A2aSettings;
pub use coordinator::{CoordinatorSpec, DEFAULT_COORDINATOR_MAX_TOKENS, DEFAULT_COORDINATOR_TIMEOUT};
use diagnostics::Locator;
pub use diagnostics::{Diagnostic, Error, Location, unknown};
pub use json::{agent_from_json, agent_update_from_json};
pub use kind::{A2aSpec, AgentKind, ProcessSpec, RemoteSpec, RuntimeKind};
pub use layers::{
    ENV_OVERRIDES, EnvOverride, OverrideKind, Source, check_sources, is_profile_name, load_sources, profile_path,
};

pub use llm::{
    DEFAULT_MAX_TOKENS, DEFAULT_MAX_TURNS, LlmSettings, LlmSpec, MAX_TURNS_LIMIT, Price, ProviderKind, ProviderSpec,
};
pub use logs::LogRotation;
pub use mcp::{DEFAULT_TIMEOUT as DEFAULT_MCP_TIMEOUT, McpServerSpec, McpTransport, RESERVED_SERVER, is_server_name};
use raw::{RawAgent, RawConfig, RawTask};
pub use server::{
    AuthSpec, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, MAX_TOKEN_TTL,
    MIN_SECRET_BYTES, RateLimit, ServerSpec, TlsSpec, is_loopback,
};
pub use validate::DEFAULT_STORE_URL;
use validate::Validator;

#[cfg(test)]
mod tests;
