//! `baton.toml`: the configuration model, its parser and its validation.
//!
//! Parsing is strict (unknown keys are errors) and every error names `file:line:column` and
//! what was expected. Validation turns the raw file into a [`Plan`]: references resolved,
//! cycles rejected (naming the cycle), phases computed, `${VAR}`s expanded from an environment
//! passed in as a map. Checks that need IO (does a command exist?) are the shell's; the plan
//! keeps the locations they report against.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::DeTable;

use crate::budget::BudgetSpec;
use crate::graph;
use crate::model::{NewTask, Priority, TaskRef};
use crate::schedule::ScheduleSpec;
use crate::time::{DurationStr, SizeStr, format_duration};

/// A place in a configuration file. Lines and columns are 1-based; columns count characters.
/// Sources without lines (a `BATON_*` variable, an HTTP request body) have line and column 0,
/// and the diagnostic's message starts with the variable or field it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}", self.file);
        }
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem found in a configuration, at a place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, diagnostic) in self.diagnostics.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    orchestration: RawOrchestration,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    server: server::RawServer,
    auth: Option<Spanned<server::RawAuth>>,
    budget: Option<budget::RawBudget>,
    #[serde(default)]
    workstreams: Vec<RawWorkstream>,
    #[serde(default)]
    agents: Vec<Spanned<RawAgent>>,
    #[serde(default)]
    tasks: Vec<RawTask>,
    #[serde(default)]
    schedules: Vec<schedules::RawSchedule>,
    #[serde(default)]
    conflicts: RawConflicts,
    #[serde(default)]
    logs: logs::RawLogs,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConflicts {
    policy: Option<ConflictPolicy>,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrchestration {
    name: Spanned<String>,
    max_concurrent_agents: Option<Spanned<u32>>,
    agent_spawn_timeout: Option<DurationStr>,
    workstream_timeout: Option<DurationStr>,
    coordinator: Option<Coordinator>,
    retry_backoff: Option<DurationStr>,
    retry_backoff_max: Option<DurationStr>,
    lease_ttl: Option<Spanned<DurationStr>>,
    offline_after: Option<DurationStr>,
}

/// How tasks are assigned. Only the rule-based coordinator exists so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Coordinator {
    #[default]
    Rules,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkstream {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    priority: Option<Priority>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    budget: Option<Spanned<budget::RawLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    role: Option<String>,
    workstream: Option<Spanned<String>>,
    priority: Option<Priority>,
    #[serde(default)]
    capabilities: Vec<String>,
    runtime: Option<Spanned<RawRuntime>>,
    mode: Option<Spanned<ProcessMode>>,
    /// Required for process agents, refused for remote ones (see `Validator::command`).
    command: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    restart: RestartPolicy,
    max_restarts: Option<u32>,
    restart_window: Option<DurationStr>,
    restart_backoff: Option<DurationStr>,
    heartbeat_timeout: Option<DurationStr>,
    circuit_breaker: Option<RawBreaker>,
    max_message_size: Option<Spanned<SizeStr>>,
    input_template: Option<Spanned<String>>,
    done_when: Option<Spanned<RawDoneWhen>>,
    stall_after: Option<Spanned<DurationStr>>,
    prompt_patterns: Option<Spanned<Vec<Spanned<String>>>>,
    concurrency: Option<Spanned<u32>>,
    runbook: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    env_passthrough: Vec<String>,
    workdir: Option<Spanned<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    objectives: Vec<Objective>,
    budget: Option<Spanned<budget::RawLimit>>,
}

impl RawAgent {
    fn runtime(&self) -> RawRuntime {
        self.runtime.as_ref().map_or_else(RawRuntime::default, |runtime| *runtime.get_ref())
    }

    fn mode(&self) -> ProcessMode {
        self.mode.as_ref().map_or_else(ProcessMode::default, |mode| *mode.get_ref())
    }
}

/// `done_when = { output = "REGEX" }`, `{ file = "PATH" }` or `{ exit = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoneWhen {
    output: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    exit: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<SizeStr>>,
    cpu: Option<DurationStr>,
    timeout: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    key: Option<Spanned<String>>,
    title: Spanned<String>,
    #[serde(default)]
    description: String,
    workstream: Option<Spanned<String>>,
    input: Option<serde_json::Value>,
    #[serde(default)]
    requires: Vec<Spanned<String>>,
    agent: Option<Spanned<String>>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    priority: Option<Priority>,
    max_attempts: Option<Spanned<u32>>,
    /// Tokens the task is expected to use: it does not start when they exceed what is left.
    estimated_tokens: Option<Spanned<u64>>,
    /// Checked by [`crate::task::check`], with the bounded duration parser.
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    resources: Vec<String>,
    on_conflict: Option<ConflictPolicy>,
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

/// When a terminal agent's task is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DoneWhen {
    /// The program's output after the task was typed matches this regular expression.
    Output(String),
    /// This file (relative to the working directory, `{task.…}` placeholders allowed)
    /// appears, or changes, after the task was typed.
    File(String),
    /// The program exits; status 0 is success. It is started again for the next task.
    Exit,
}

/// When an agent is taken out of rotation for failing tasks: after `failures` in a row, for
/// `cooldown`, then one trial task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreaker {
    pub failures: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: Spanned<u32>,
    cooldown: DurationStr,
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
    pub agent_spawn_timeout: Duration,
    pub workstream_timeout: Option<Duration>,
    pub coordinator: Coordinator,
    /// First retry delay; doubled on each further attempt, with jitter.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// How long a running task's lease lasts without renewal.
    pub lease_ttl: Duration,
    /// An idle agent not heard from for this long is shown `offline`.
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
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Limits {
    /// Address-space limit in bytes.
    pub memory: Option<u64>,
    /// CPU-time limit.
    pub cpu: Option<Duration>,
    /// Wall-clock limit for one task, when the task sets none.
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
    pub restart_window: Duration,
    /// First restart delay; doubled for each restart in the window.
    pub restart_backoff: Duration,
    /// A worker silent for longer than this is killed and restarted; a remote worker's claim
    /// lasts this long without a heartbeat.
    pub heartbeat_timeout: Duration,
    pub circuit_breaker: CircuitBreaker,
    pub concurrency: u32,
    pub runbook: Option<String>,
    pub objectives: Vec<Objective>,
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

    pub fn runtime(&self) -> RuntimeKind {
        self.kind.runtime()
    }

    /// The process part of a process agent's spec.
    pub fn process(&self) -> Option<&ProcessSpec> {
        match &self.kind {
            AgentKind::Process(process) => Some(process),
            AgentKind::Remote(_) => None,
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
    load_document(&locator, root, env)
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

/// Deserializes and validates a document whose spans are in `locator`'s offset space.
fn load_document(locator: &Locator, root: Spanned<DeTable<'_>>, env: &BTreeMap<String, String>) -> Result<Plan, Error> {
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(root)).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        Error { diagnostics: vec![locator.diagnostic(span, error.message().trim().to_string())] }
    })?;
    let mut validator = Validator { locator, env, diagnostics: Vec::new() };
    let plan = validator.validate(raw);
    let mut diagnostics = validator.diagnostics;
    diagnostics.sort_by_key(|diagnostic| {
        (locator.segment_of(&diagnostic.location), diagnostic.location.line, diagnostic.location.column)
    });
    match plan {
        Some(plan) if diagnostics.is_empty() => Ok(plan),
        _ => Err(Error { diagnostics }),
    }
}

/// Turns byte offsets into places. A document may be assembled from several sources (the
/// file, its profile, `BATON_*` variables, a request body): each is a segment of one offset
/// space, so that a span alone says which source a value came from.
struct Locator {
    segments: Vec<Segment>,
}

struct Segment {
    file: String,
    /// The segment's first offset in the shared offset space.
    start: usize,
    text: String,
    /// For sources without lines: what each span (relative to the segment) is called, e.g.
    /// `BATON_SERVER_LISTEN` or `command[0]`; the innermost span containing an offset names it.
    labels: Option<Vec<(Range<usize>, String)>>,
}

impl Locator {
    fn new(file: &str, text: &str) -> Self {
        let mut locator = Locator { segments: Vec::new() };
        locator.push(file, text.to_string(), None);
        locator
    }

    /// Adds a source; returns its index.
    fn push(&mut self, file: &str, text: String, labels: Option<Vec<(Range<usize>, String)>>) -> usize {
        // One offset of separation, so that an empty source still has its own offset.
        let start = self.segments.last().map_or(0, |last| last.start + last.text.len() + 1);
        self.segments.push(Segment { file: file.to_string(), start, text, labels });
        self.segments.len() - 1
    }

    fn segment(&self, offset: usize) -> &Segment {
        self.segments.iter().rev().find(|segment| segment.start <= offset).unwrap_or(&self.segments[0])
    }

    /// The order of sources, for sorting diagnostics: base file first.
    fn segment_of(&self, location: &Location) -> usize {
        self.segments.iter().position(|segment| segment.file == location.file).unwrap_or(usize::MAX)
    }

    fn locate(&self, span: Range<usize>) -> Location {
        let segment = self.segment(span.start);
        if segment.labels.is_some() {
            return Location { file: segment.file.clone(), line: 0, column: 0 };
        }
        let offset = (span.start - segment.start).min(segment.text.len());
        let text = segment.text.as_str();
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |idx| idx + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { file: segment.file.clone(), line, column }
    }

    /// The name of exactly `span` (a key or a value); a source with a single name (a
    /// variable) names all of its spans. A span of none (a whole request body) has no name.
    fn label(&self, span: &Range<usize>) -> Option<&str> {
        let segment = self.segment(span.start);
        let relative = span.start - segment.start..span.end.saturating_sub(segment.start);
        let labels = segment.labels.as_ref()?;
        if let [(_, only)] = labels.as_slice() {
            return Some(only);
        }
        labels.iter().find(|(range, _)| *range == relative).map(|(_, label)| label.as_str())
    }

    fn diagnostic(&self, span: Range<usize>, message: String) -> Diagnostic {
        let message = match self.label(&span) {
            Some(label) => format!("{label}: {message}"),
            None => message,
        };
        Diagnostic { location: self.locate(span), message }
    }
}

struct Validator<'a> {
    locator: &'a Locator,
    env: &'a BTreeMap<String, String>,
    diagnostics: Vec<Diagnostic>,
}

const DEFAULT_STORE_URL: &str = "sqlite://.baton/baton.db";
/// Below this, a memory limit leaves no room for a program to start.
const MIN_MEMORY_LIMIT: u64 = 1 << 20;
/// Below this, a worker's messages could not hold a JSON-RPC answer.
const MIN_MESSAGE_SIZE: u64 = 1 << 10;
/// The largest protocol message of a worker that sets no `max_message_size`.
const DEFAULT_MESSAGE_SIZE: u64 = 1 << 20;

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diagnostics.push(self.locator.diagnostic(span, message.into()));
    }

    fn expand(&mut self, value: &Spanned<String>) -> String {
        match expand_vars(value.get_ref(), self.env) {
            Ok(expanded) => expanded,
            Err(message) => {
                self.error(value.span(), message);
                value.get_ref().clone()
            }
        }
    }

    fn check_name(&mut self, what: &str, name: &Spanned<String>) {
        let text = name.get_ref();
        let valid = text.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            self.error(
                name.span(),
                format!(
                    "invalid {what} name `{text}`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
                ),
            );
        }
    }

    fn validate(&mut self, raw: RawConfig) -> Option<Plan> {
        let settings = self.settings(&raw.orchestration);
        let name = raw.orchestration.name.get_ref().clone();
        if name.trim().is_empty() {
            self.error(raw.orchestration.name.span(), "`orchestration.name` must not be empty");
        }
        let store_url = raw.store.url.as_ref().map_or_else(|| DEFAULT_STORE_URL.to_string(), |url| self.expand(url));
        if let Some(url) = &raw.store.url
            && !store_url.starts_with("sqlite:")
        {
            self.error(
                url.span(),
                format!("unsupported store url `{store_url}`: this version supports `sqlite://PATH` (e.g. \"{DEFAULT_STORE_URL}\")"),
            );
        }
        let server = self.server(&raw.server, raw.auth.is_some());
        let auth = raw.auth.as_ref().map(|auth| self.auth(auth));
        let listen = server.listen.clone();

        let (workstreams, phases) = self.workstreams(&raw.workstreams)?;
        let mut agents = self.agents(&raw.agents, &workstreams);
        let log_rotation = self.logs(&raw.logs);
        for agent in &mut agents {
            agent.log_rotation = log_rotation;
        }
        let tasks = self.tasks(&raw.tasks, &workstreams, &phases, &agents);
        let schedules = self.schedules(&raw.schedules, &workstreams, &agents);
        let mut settings = settings;
        settings.conflict_policy = raw.conflicts.policy.unwrap_or_default();
        settings.task_conflict_policies = raw
            .tasks
            .iter()
            .zip(&tasks)
            .filter_map(|(raw_task, task)| Some((task.key.clone()?, raw_task.on_conflict?)))
            .collect();
        let budget = self.budget(&raw, &tasks);
        Some(Plan {
            name,
            settings,
            store_url,
            listen,
            server,
            auth,
            workstreams,
            phases,
            agents,
            tasks,
            schedules,
            budget,
        })
    }

    fn settings(&mut self, raw: &RawOrchestration) -> Settings {
        let defaults = Settings::default();
        let max_concurrent_agents = match &raw.max_concurrent_agents {
            Some(value) if *value.get_ref() == 0 => {
                self.error(value.span(), "`max_concurrent_agents` must be at least 1");
                1
            }
            Some(value) => *value.get_ref(),
            None => defaults.max_concurrent_agents,
        };
        let lease_ttl = match &raw.lease_ttl {
            Some(value) if value.get_ref().0 < Duration::from_secs(1) => {
                self.error(value.span(), "`lease_ttl` must be at least \"1s\"");
                defaults.lease_ttl
            }
            Some(value) => value.get_ref().0,
            None => defaults.lease_ttl,
        };
        Settings {
            max_concurrent_agents,
            agent_spawn_timeout: raw.agent_spawn_timeout.map_or(defaults.agent_spawn_timeout, |d| d.0),
            workstream_timeout: raw.workstream_timeout.map(|d| d.0),
            coordinator: raw.coordinator.unwrap_or_default(),
            retry_backoff: raw.retry_backoff.map_or(defaults.retry_backoff, |d| d.0),
            retry_backoff_max: raw.retry_backoff_max.map_or(defaults.retry_backoff_max, |d| d.0),
            lease_ttl,
            offline_after: raw.offline_after.map_or(defaults.offline_after, |d| d.0),
            conflict_policy: ConflictPolicy::Wait,
            task_conflict_policies: BTreeMap::new(),
        }
    }

    /// Validates workstreams and computes the phases. Returns `None` (with diagnostics) when
    /// the graph cannot be built, since nothing after it can be checked meaningfully.
    fn workstreams(&mut self, raw: &[RawWorkstream]) -> Option<(Vec<WorkstreamSpec>, Vec<Vec<String>>)> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (idx, ws) in raw.iter().enumerate() {
            self.check_name("workstream", &ws.name);
            if index.insert(ws.name.get_ref(), idx).is_some() {
                self.error(ws.name.span(), format!("duplicate workstream `{}`", ws.name.get_ref()));
            }
        }
        let known: Vec<&str> = raw.iter().map(|ws| ws.name.get_ref().as_str()).collect();
        let mut depends_on: Vec<Vec<usize>> = Vec::with_capacity(raw.len());
        let mut broken = false;
        for ws in raw {
            let mut deps = Vec::new();
            for dep in &ws.depends_on {
                match index.get(dep.get_ref().as_str()) {
                    Some(&dep_idx) => deps.push(dep_idx),
                    None => {
                        broken = true;
                        self.error(dep.span(), unknown("workstream", dep.get_ref(), &known));
                    }
                }
            }
            depends_on.push(deps);
        }
        if broken {
            return None;
        }
        if let Some(cycle) = graph::find_cycle(&depends_on) {
            let path: Vec<&str> = cycle.iter().map(|&idx| raw[idx].name.get_ref().as_str()).collect();
            self.error(raw[cycle[0]].name.span(), format!("workstream dependency cycle: {}", path.join(" -> ")));
            return None;
        }
        let nodes: Vec<graph::Node> = raw
            .iter()
            .zip(&depends_on)
            .map(|(ws, deps)| graph::Node { priority: ws.priority.unwrap_or_default(), depends_on: deps.clone() })
            .collect();
        let phases = graph::phases(&nodes)?;
        let specs = raw
            .iter()
            .map(|ws| WorkstreamSpec {
                name: ws.name.get_ref().clone(),
                description: ws.description.clone(),
                priority: ws.priority.unwrap_or_default(),
                depends_on: ws.depends_on.iter().map(|dep| dep.get_ref().clone()).collect(),
            })
            .collect();
        let phases = phases
            .into_iter()
            .map(|phase| phase.into_iter().map(|idx| raw[idx].name.get_ref().clone()).collect())
            .collect();
        Some((specs, phases))
    }

    fn agents(&mut self, raw: &[Spanned<RawAgent>], workstreams: &[WorkstreamSpec]) -> Vec<AgentSpec> {
        let known_ws: Vec<&str> = workstreams.iter().map(|ws| ws.name.as_str()).collect();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut specs = Vec::with_capacity(raw.len());
        for spanned_agent in raw {
            let agent = spanned_agent.get_ref();
            self.check_name("agent", &agent.name);
            if !seen.insert(agent.name.get_ref()) {
                self.error(agent.name.span(), format!("duplicate agent `{}`", agent.name.get_ref()));
            }
            let workstream = agent.workstream.as_ref().map(|ws| {
                if !known_ws.contains(&ws.get_ref().as_str()) {
                    self.error(ws.span(), unknown("workstream", ws.get_ref(), &known_ws));
                }
                ws.get_ref().clone()
            });
            let ws_priority = workstream.as_deref().and_then(|name| workstreams.iter().find(|ws| ws.name == name));
            let mode = agent.mode();
            let concurrency = match &agent.concurrency {
                Some(value) if *value.get_ref() == 0 => {
                    self.error(value.span(), "`concurrency` must be at least 1");
                    1
                }
                Some(value) if *value.get_ref() > 1 && mode == ProcessMode::Pty => {
                    self.error(
                        value.span(),
                        "a terminal agent (mode = \"pty\") runs one task at a time; remove `concurrency`",
                    );
                    1
                }
                Some(value) => *value.get_ref(),
                None => 1,
            };
            let kind = self.kind(agent, spanned_agent.span());
            specs.push(AgentSpec {
                name: agent.name.get_ref().clone(),
                role: agent.role.clone().unwrap_or_else(|| agent.name.get_ref().clone()),
                workstream,
                priority: agent.priority.or(ws_priority.map(|ws| ws.priority)).unwrap_or_default(),
                capabilities: agent.capabilities.clone(),
                kind,
                restart: agent.restart,
                max_restarts: agent.max_restarts.unwrap_or(5),
                restart_window: agent.restart_window.map_or(Duration::from_secs(600), |d| d.0),
                restart_backoff: agent.restart_backoff.map_or(Duration::from_secs(1), |d| d.0),
                heartbeat_timeout: agent.heartbeat_timeout.map_or(Duration::from_secs(30), |d| d.0),
                circuit_breaker: match &agent.circuit_breaker {
                    Some(breaker) => {
                        if *breaker.failures.get_ref() == 0 {
                            self.error(breaker.failures.span(), "`circuit_breaker.failures` must be at least 1");
                        }
                        CircuitBreaker { failures: (*breaker.failures.get_ref()).max(1), cooldown: breaker.cooldown.0 }
                    }
                    None => CircuitBreaker { failures: 5, cooldown: Duration::from_secs(60) },
                },
                concurrency,
                runbook: agent.runbook.clone(),
                objectives: agent.objectives.clone(),
                log_rotation: LogRotation::default(),
            });
        }
        specs
    }

    /// A size that must be at least `min` (written `min_text`), or the error where it is written.
    fn at_least(&mut self, size: &Option<Spanned<SizeStr>>, field: &str, min: u64, min_text: &str) -> Option<u64> {
        let size = size.as_ref()?;
        if size.get_ref().0 < min {
            self.error(size.span(), format!("`{field}` must be at least \"{min_text}\""));
        }
        Some(size.get_ref().0.max(min))
    }

    /// The kind-specific part of an agent: its process spec, or its remote spec. Kinds not
    /// available yet are refused here, with the kinds that are. `agent_span` is where a missing
    /// command is reported.
    fn kind(&mut self, agent: &RawAgent, agent_span: Range<usize>) -> AgentKind {
        match agent.runtime() {
            RawRuntime::Process => AgentKind::Process(self.process(agent, agent_span)),
            RawRuntime::Remote => {
                // Checked as before kinds had specs of their own (a `command` or `mode` is
                // refused, an unset `${VAR}` reported), then dropped: a remote agent has none.
                let _ = self.process(agent, agent_span);
                AgentKind::Remote(RemoteSpec {})
            }
            unavailable @ (RawRuntime::Llm | RawRuntime::A2a) => {
                let name = if unavailable == RawRuntime::Llm { "llm" } else { "a2a" };
                let span = agent.runtime.as_ref().map_or(agent_span.clone(), Spanned::span);
                self.error(
                    span,
                    format!(
                        "runtime = \"{name}\" is not available yet; use runtime = \"process\" (Baton starts `command`) or runtime = \"remote\" (a worker claims tasks over HTTP)"
                    ),
                );
                // Checked as a process agent would be, so that every other mistake is reported
                // at once; the plan is refused anyway.
                AgentKind::Process(self.process(agent, agent_span))
            }
        }
    }

    /// A process agent's spec: command, environment, limits, terminal settings.
    fn process(&mut self, agent: &RawAgent, agent_span: Range<usize>) -> ProcessSpec {
        let command = self.command(agent, agent_span);
        let terminal = self.terminal(agent);
        let env = agent.env.iter().map(|(key, value)| (key.clone(), self.expand(value))).collect();
        let env_written = agent.env.iter().map(|(key, value)| (key.clone(), value.get_ref().clone())).collect();
        let command_written = match (&agent.command, command.is_empty()) {
            (Some(raw), false) => raw.get_ref().iter().map(|arg| arg.get_ref().clone()).collect(),
            _ => Vec::new(),
        };
        let command_span = match &agent.command {
            Some(command) => command.get_ref().first().map_or(command.span(), |arg| arg.span()),
            None => agent.name.span(),
        };
        ProcessSpec {
            mode: agent.mode(),
            command,
            command_written,
            command_location: self.locator.locate(command_span),
            max_message_size: self
                .at_least(&agent.max_message_size, "max_message_size", MIN_MESSAGE_SIZE, "1KiB")
                .unwrap_or(DEFAULT_MESSAGE_SIZE),
            terminal,
            env,
            env_written,
            env_passthrough: agent.env_passthrough.clone(),
            workdir: agent.workdir.as_ref().map(|dir| self.expand(dir)),
            limits: Limits {
                memory: self.at_least(&agent.limits.memory, "limits.memory", MIN_MEMORY_LIMIT, "1MiB"),
                cpu: agent.limits.cpu.map(|d| d.0),
                timeout: agent.limits.timeout.map(|d| d.0),
            },
        }
    }

    /// An agent's `command`, expanded and checked: required for process agents, refused for
    /// remote ones (as is `mode`). `agent_span` is where a missing command is reported.
    fn command(&mut self, agent: &RawAgent, agent_span: Range<usize>) -> Vec<String> {
        if agent.runtime() == RawRuntime::Remote {
            if let Some(command) = &agent.command {
                self.error(
                    command.span(),
                    "remote agents are not started by Baton: remove `command` (a worker claims this agent's tasks over HTTP), or use runtime = \"process\"",
                );
            }
            if let Some(mode) = &agent.mode {
                self.error(
                    mode.span(),
                    "`mode` applies only to process agents: remove it (a remote agent's worker decides how it runs tasks)",
                );
            }
            return Vec::new();
        }
        let Some(raw_command) = &agent.command else {
            self.error(agent_span, "missing field `command`");
            return Vec::new();
        };
        if raw_command.get_ref().is_empty() {
            self.error(raw_command.span(), "`command` must name a program, e.g. [\"bash\", \"agents/build.sh\"]");
        }
        let mut command = Vec::with_capacity(raw_command.get_ref().len());
        for arg in raw_command.get_ref() {
            let expanded = self.expand(arg);
            if let Err(message) = check_placeholders(&expanded) {
                self.error(arg.span(), message);
            }
            command.push(expanded);
        }
        command
    }

    /// The terminal keys of an agent: validated when `mode = "pty"`, refused otherwise.
    fn terminal(&mut self, agent: &RawAgent) -> Option<TerminalSpec> {
        if agent.mode() != ProcessMode::Pty {
            let spans = [
                ("input_template", agent.input_template.as_ref().map(Spanned::span)),
                ("done_when", agent.done_when.as_ref().map(Spanned::span)),
                ("stall_after", agent.stall_after.as_ref().map(Spanned::span)),
                ("prompt_patterns", agent.prompt_patterns.as_ref().map(Spanned::span)),
            ];
            for (key, span) in spans {
                if let Some(span) = span {
                    self.error(
                        span,
                        format!(
                            "`{key}` applies only to terminal agents; add mode = \"pty\" or remove `{key}` (this agent's mode is \"{}\")",
                            agent.mode().as_str()
                        ),
                    );
                }
            }
            return None;
        }
        let defaults = TerminalSpec::default();
        let input_template = match &agent.input_template {
            Some(template) => {
                let expanded = self.expand(template);
                if let Err(message) = check_placeholders(&expanded) {
                    self.error(template.span(), message);
                }
                if expanded.is_empty() {
                    self.error(template.span(), "`input_template` must not be empty, e.g. \"{task.description}\\n\"");
                }
                expanded
            }
            None => defaults.input_template,
        };
        let done_when = match &agent.done_when {
            None => defaults.done_when,
            Some(done_when) => {
                let raw = done_when.get_ref();
                let n_given = usize::from(raw.output.is_some())
                    + usize::from(raw.file.is_some())
                    + usize::from(raw.exit.is_some());
                if n_given != 1 {
                    self.error(
                        done_when.span(),
                        "`done_when` takes exactly one rule: { output = \"REGEX\" }, { file = \"PATH\" } or { exit = true }",
                    );
                }
                if let Some(pattern) = &raw.output {
                    self.check_regex("done_when.output", pattern);
                    DoneWhen::Output(pattern.get_ref().clone())
                } else if let Some(path) = &raw.file {
                    let expanded = self.expand(path);
                    if let Err(message) = check_placeholders(&expanded) {
                        self.error(path.span(), message);
                    }
                    if expanded.trim().is_empty() {
                        self.error(path.span(), "`done_when.file` must name a file, e.g. \"out/{task.key}.done\"");
                    }
                    DoneWhen::File(expanded)
                } else {
                    if let Some(exit) = &raw.exit
                        && !*exit.get_ref()
                    {
                        self.error(
                            exit.span(),
                            "`done_when.exit` can only be true; to end tasks otherwise use `output` or `file`",
                        );
                    }
                    DoneWhen::Exit
                }
            }
        };
        let stall_after = match &agent.stall_after {
            Some(value) if value.get_ref().0.is_zero() => {
                self.error(value.span(), "`stall_after` must be more than 0s, e.g. \"5m\"");
                defaults.stall_after
            }
            Some(value) => value.get_ref().0,
            None => defaults.stall_after,
        };
        let prompt_patterns = match &agent.prompt_patterns {
            Some(patterns) => {
                for pattern in patterns.get_ref() {
                    self.check_regex("prompt_patterns", pattern);
                }
                patterns.get_ref().iter().map(|pattern| pattern.get_ref().clone()).collect()
            }
            None => defaults.prompt_patterns,
        };
        Some(TerminalSpec { input_template, done_when, stall_after, prompt_patterns })
    }

    fn check_regex(&mut self, key: &str, pattern: &Spanned<String>) {
        if pattern.get_ref().is_empty() {
            self.error(pattern.span(), format!("`{key}`: an empty regular expression matches everything"));
            return;
        }
        if let Err(error) = regex::Regex::new(pattern.get_ref()) {
            self.error(
                pattern.span(),
                format!("`{key}`: invalid regular expression `{}`: {}", pattern.get_ref(), regex_error(&error)),
            );
        }
    }

    /// The fields of one task, `[[tasks]]` or a schedule's template, checked and given their
    /// defaults by [`crate::task::check`] (each error placed at the field it is about), then
    /// whether an agent of the plan can run it. Dependencies on other tasks of the file are the
    /// caller's; a dependency on the task itself is refused here.
    fn task_fields(
        &mut self,
        task: &RawTask,
        key: &str,
        workstreams: &[WorkstreamSpec],
        agents: &[AgentSpec],
    ) -> NewTask {
        let input = crate::task::TaskInput {
            key: task.key.as_ref().map(|key| key.get_ref().clone()),
            title: task.title.get_ref().clone(),
            description: task.description.clone(),
            workstream: task.workstream.as_ref().map(|ws| ws.get_ref().clone()),
            input: task.input.clone(),
            requires: task.requires.iter().map(|cap| cap.get_ref().clone()).collect(),
            agent: task.agent.as_ref().map(|agent| agent.get_ref().clone()),
            depends_on: task.depends_on.iter().map(|dep| TaskRef::Key(dep.get_ref().clone())).collect(),
            priority: task.priority,
            max_attempts: task.max_attempts.as_ref().map(|value| *value.get_ref()),
            timeout: task.timeout.as_ref().map(|value| value.get_ref().clone()),
            resources: task.resources.clone(),
            estimated_tokens: task.estimated_tokens.as_ref().map(|value| *value.get_ref()),
        };
        let (mut new_task, errors) = crate::task::check(input, crate::task::Catalog { workstreams, agents });
        for error in errors {
            let span = self.task_field_span(task, error.field());
            self.error(span, error.to_string());
        }
        // A key derived from the title is the caller's (it may be a schedule's `NAME@…`).
        new_task.key = Some(key.to_string());
        let known_ws: Vec<&str> = workstreams.iter().map(|ws| ws.name.as_str()).collect();
        let known_agents: Vec<&str> = agents.iter().map(|agent| agent.name.as_str()).collect();
        let workstream = new_task.workstream.as_deref();
        let pinned = new_task.agent.as_deref();
        let requires = &new_task.requires;
        let capable = agents.iter().any(|agent| agent.can_run(workstream, requires, pinned));
        let workstream_known = workstream.is_none_or(|ws| known_ws.contains(&ws));
        let pinned_known = pinned.is_none_or(|name| known_agents.contains(&name));
        if !capable && workstream_known && pinned_known {
            let span = task.requires.first().map_or(task.title.span(), |cap| cap.span());
            let scope = match workstream {
                Some(ws) => format!("of workstream `{ws}` or shared"),
                None => "without a workstream".to_string(),
            };
            let needs =
                if requires.is_empty() { "any capability".to_string() } else { format!("[{}]", requires.join(", ")) };
            let who = match pinned {
                Some(agent) => format!("pinned agent `{agent}` cannot run it"),
                None => format!("no agent {scope} has {needs}"),
            };
            self.error(
                span,
                format!(
                    "task `{key}` cannot be assigned: {who}; add the capabilities to an agent or change `requires`"
                ),
            );
        }
        new_task
    }

    /// Where a field of a task is written, for its errors; the title when it is not written.
    fn task_field_span(&self, task: &RawTask, field: crate::task::Field) -> Range<usize> {
        use crate::task::Field;
        let span = match field {
            Field::Key => task.key.as_ref().map(Spanned::span),
            Field::Title => None,
            Field::Workstream => task.workstream.as_ref().map(Spanned::span),
            Field::Agent => task.agent.as_ref().map(Spanned::span),
            Field::DependsOn(idx) => task.depends_on.get(idx).map(Spanned::span),
            Field::MaxAttempts => task.max_attempts.as_ref().map(Spanned::span),
            Field::Timeout => task.timeout.as_ref().map(Spanned::span),
            Field::EstimatedTokens => task.estimated_tokens.as_ref().map(Spanned::span),
        };
        span.unwrap_or_else(|| task.title.span())
    }

    fn tasks(
        &mut self,
        raw: &[RawTask],
        workstreams: &[WorkstreamSpec],
        phases: &[Vec<String>],
        agents: &[AgentSpec],
    ) -> Vec<NewTask> {
        let keys: Vec<String> = raw
            .iter()
            .map(|task| task.key.as_ref().map_or_else(|| slug(task.title.get_ref()), |key| key.get_ref().clone()))
            .collect();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (idx, (task, key)) in raw.iter().zip(&keys).enumerate() {
            if index.insert(key.as_str(), idx).is_some() {
                let span = task.key.as_ref().map_or(task.title.span(), |key| key.span());
                self.error(span, format!("duplicate task key `{key}`; give each task a distinct `key`"));
            }
        }
        let known_keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let phase_of = |workstream: Option<&str>| -> usize {
            workstream.and_then(|ws| phases.iter().position(|phase| phase.iter().any(|name| name == ws))).unwrap_or(0)
        };

        let mut depends_on: Vec<Vec<usize>> = Vec::with_capacity(raw.len());
        let mut tasks = Vec::with_capacity(raw.len());
        for (task_idx, (task, key)) in raw.iter().zip(&keys).enumerate() {
            let new_task = self.task_fields(task, key, workstreams, agents);
            let workstream = new_task.workstream.clone();
            let mut deps = Vec::new();
            for dep in &task.depends_on {
                match index.get(dep.get_ref().as_str()) {
                    // Refused by `task_fields`.
                    Some(&dep_idx) if dep_idx == task_idx => {}
                    Some(&dep_idx) => {
                        let dep_phase = phase_of(raw[dep_idx].workstream.as_ref().map(|ws| ws.get_ref().as_str()));
                        let own_phase = phase_of(workstream.as_deref());
                        if dep_phase > own_phase {
                            self.error(
                                dep.span(),
                                format!(
                                    "task `{key}` (phase {}) depends on `{}`, which runs in a later phase ({}); it could never start",
                                    own_phase + 1,
                                    dep.get_ref(),
                                    dep_phase + 1
                                ),
                            );
                        }
                        deps.push(dep_idx);
                    }
                    None => self.error(dep.span(), unknown("task", dep.get_ref(), &known_keys)),
                }
            }
            depends_on.push(deps);
            tasks.push(new_task);
        }
        if let Some(cycle) = graph::find_cycle(&depends_on) {
            let path: Vec<&str> = cycle.iter().map(|&idx| keys[idx].as_str()).collect();
            let span = raw[cycle[0]].key.as_ref().map_or(raw[cycle[0]].title.span(), |key| key.span());
            self.error(span, format!("task dependency cycle: {}", path.join(" -> ")));
        }
        tasks
    }
}

/// "unknown workstream `tesing` (did you mean `testing`?)", or the known names when none is close.
pub fn unknown(what: &str, name: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(name, candidate), *candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, candidate)) => format!("unknown {what} `{name}` (did you mean `{candidate}`?)"),
        None if known.is_empty() => format!("unknown {what} `{name}` (none is declared)"),
        None => format!("unknown {what} `{name}` (known: {})", known.join(", ")),
    }
}

/// The gist of a regular expression error on one line: `regex` explains syntax errors over
/// several lines, with the pattern drawn and the problem on the line starting `error:`.
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(|| text.lines().last().unwrap_or_default().trim().to_string(), str::to_string)
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

const PLACEHOLDERS: [&str; 6] = ["task.id", "task.key", "task.title", "task.description", "agent.name", "run.id"];

/// Checks that every `{...}` in an argument is a known placeholder.
fn check_placeholders(arg: &str) -> Result<(), String> {
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

mod budget;
mod json;
mod kind;
mod layers;
mod logs;
mod schedules;
mod server;

pub use json::{agent_from_json, agent_update_from_json};
use kind::RawRuntime;
pub use kind::{AgentKind, ProcessSpec, RemoteSpec, RuntimeKind};
pub use layers::{ENV_OVERRIDES, EnvOverride, OverrideKind, Source, is_profile_name, load_sources, profile_path};

pub use logs::LogRotation;
pub use server::{
    AuthSpec, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MAX_TOKEN_TTL, MIN_SECRET_BYTES,
    RateLimit, ServerSpec, TlsSpec, is_loopback,
};

#[cfg(test)]
mod tests;
