//! Validation: from the raw file to a [`Plan`], every problem reported at its place. Each
//! section's checks are a method of [`Validator`] (some in the sections' own modules).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::diagnostics::{Diagnostic, Locator, unknown};
use super::kind::RawRuntime;
use super::raw::{RawAgent, RawConfig, RawOrchestration, RawTask, RawWorkstream};
use super::{A2aSpec, AgentKind, LogRotation, ProcessSpec, RemoteSpec};
use super::{
    AgentSpec, CircuitBreaker, ConflictPolicy, DoneWhen, Limits, Plan, ProcessMode, Settings, TerminalSpec,
    WorkstreamSpec, check_placeholders, expand_vars, slug,
};
use crate::graph;
use crate::model::{NewTask, TaskRef};
use crate::time::SizeStr;

pub(super) struct Validator<'a> {
    pub(super) locator: &'a Locator,
    pub(super) env: &'a BTreeMap<String, String>,
    pub(super) diagnostics: Vec<Diagnostic>,
    /// The names of the run's `[mcp_servers]`, which agents' `tools` globs name.
    pub(super) mcp_server_names: Vec<String>,
    /// `[llm.providers]`, validated before the agents that name them.
    pub(super) llm_providers: BTreeMap<String, super::ProviderSpec>,
}

/// Where the store is when `store.url` is not set.
pub const DEFAULT_STORE_URL: &str = "sqlite://.baton/baton.db";
/// Below this, a memory limit leaves no room for a program to start.
pub(super) const MIN_MEMORY_LIMIT: u64 = 1 << 20;
/// Below this, a worker's messages could not hold a JSON-RPC answer.
pub(super) const MIN_MESSAGE_SIZE: u64 = 1 << 10;
/// The largest protocol message of a worker that sets no `max_message_size`.
pub(super) const DEFAULT_MESSAGE_SIZE: u64 = 1 << 20;

impl Validator<'_> {
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diagnostics.push(self.locator.diagnostic(span, message.into()));
    }

    pub(super) fn expand(&mut self, value: &Spanned<String>) -> String {
        match expand_vars(value.get_ref(), self.env) {
            Ok(expanded) => expanded,
            Err(message) => {
                self.error(value.span(), message);
                value.get_ref().clone()
            }
        }
    }

    pub(super) fn check_name(&mut self, what: &str, name: &Spanned<String>) {
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

    /// The plan, as far as it can be built: with problems (in `self.diagnostics`) it is a
    /// partial plan, good only for the checks that need the machine.
    pub(super) fn validate(&mut self, raw: RawConfig) -> Plan {
        let settings = self.settings(&raw.orchestration);
        let name = raw.orchestration.name.get_ref().clone();
        if name.trim().is_empty() {
            self.error(raw.orchestration.name.span(), "`orchestration.name` must not be empty");
        }
        let store_url = raw.store.url.as_ref().map_or_else(|| DEFAULT_STORE_URL.to_string(), |url| self.expand(url));
        if let Some(url) = &raw.store.url
            && !["sqlite:", "postgres://", "postgresql://"].iter().any(|scheme| store_url.starts_with(scheme))
        {
            // Only the scheme is shown: the rest may hold a password.
            let scheme = store_url.split_once(':').map_or(store_url.as_str(), |(scheme, _)| scheme);
            self.error(
                url.span(),
                format!(
                    "unsupported store url `{scheme}:...`: this version supports `sqlite://PATH` (e.g. \"{DEFAULT_STORE_URL}\") and `postgres://USER@HOST/DATABASE`"
                ),
            );
        }
        let server = self.server(&raw.server, raw.auth.is_some());
        let auth = raw.auth.as_ref().map(|auth| self.auth(auth));
        let listen = server.listen.clone();

        let mcp_servers = self.mcp_servers(&raw.mcp_servers);
        self.mcp_server_names = raw.mcp_servers.keys().map(|name| name.get_ref().clone()).collect();
        let llm = self.llm(&raw.llm);
        let a2a = self.a2a_settings(&raw.a2a);
        self.llm_providers = llm.providers.clone();
        let coordinator = self.coordinator(raw.coordinator.as_ref(), raw.orchestration.coordinator);
        let mut settings = settings;
        settings.coordinator = coordinator.mode;
        let (workstreams, phases) = self.workstreams(&raw.workstreams);
        let mut agents = self.agents(&raw.agents, &workstreams);
        let log_rotation = self.logs(&raw.logs);
        for agent in &mut agents {
            agent.log_rotation = log_rotation;
        }
        let tasks = self.tasks(&raw.tasks, &workstreams, &phases, &agents);
        let schedules = self.schedules(&raw.schedules, &workstreams, &agents);
        settings.conflict_policy = raw.conflicts.policy.unwrap_or_default();
        settings.task_conflict_policies = raw
            .tasks
            .iter()
            .zip(&tasks)
            .filter_map(|(raw_task, task)| Some((task.key.clone()?, raw_task.on_conflict?)))
            .collect();
        let budget = self.budget(&raw, &tasks);
        Plan {
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
            mcp_servers,
            llm,
            a2a,
            coordinator,
        }
    }

    pub(super) fn settings(&mut self, raw: &RawOrchestration) -> Settings {
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

    /// Validates workstreams and computes the phases. When the graph cannot be ordered (an
    /// unknown dependency, a cycle) there are no phases, and the checks that need them (a task
    /// depending on a later phase) are skipped; everything else is still checked.
    pub(super) fn workstreams(&mut self, raw: &[RawWorkstream]) -> (Vec<WorkstreamSpec>, Vec<Vec<String>>) {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (idx, ws) in raw.iter().enumerate() {
            self.check_name("workstream", &ws.name);
            if index.insert(ws.name.get_ref(), idx).is_some() {
                self.error(ws.name.span(), format!("duplicate workstream `{}`", ws.name.get_ref()));
            }
            if let Some(objective) = &ws.objective
                && objective.get_ref().trim().is_empty()
            {
                self.error(
                    objective.span(),
                    "`objective` must not be empty: say what the workstream is for, or remove it",
                );
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
        let specs = raw
            .iter()
            .map(|ws| WorkstreamSpec {
                name: ws.name.get_ref().clone(),
                description: ws.description.clone(),
                priority: ws.priority.unwrap_or_default(),
                depends_on: ws.depends_on.iter().map(|dep| dep.get_ref().clone()).collect(),
                objective: ws.objective.as_ref().map(|objective| objective.get_ref().trim().to_string()),
            })
            .collect();
        // A cycle among the dependencies that are known is reported even beside unknown ones.
        if let Some(cycle) = graph::find_cycle(&depends_on) {
            let path: Vec<&str> = cycle.iter().map(|&idx| raw[idx].name.get_ref().as_str()).collect();
            self.error(raw[cycle[0]].name.span(), format!("workstream dependency cycle: {}", path.join(" -> ")));
            return (specs, Vec::new());
        }
        if broken {
            return (specs, Vec::new());
        }
        let nodes: Vec<graph::Node> = raw
            .iter()
            .zip(&depends_on)
            .map(|(ws, deps)| graph::Node { priority: ws.priority.unwrap_or_default(), depends_on: deps.clone() })
            .collect();
        let Some(phases) = graph::phases(&nodes) else {
            return (specs, Vec::new());
        };
        let phases = phases
            .into_iter()
            .map(|phase| phase.into_iter().map(|idx| raw[idx].name.get_ref().clone()).collect())
            .collect();
        (specs, phases)
    }

    pub(super) fn agents(&mut self, raw: &[Spanned<RawAgent>], workstreams: &[WorkstreamSpec]) -> Vec<AgentSpec> {
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
            let tools = self.tool_globs(&agent.tools);
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
                tools,
                log_rotation: LogRotation::default(),
            });
        }
        specs
    }

    /// A size that must be at least `min` (written `min_text`), or the error where it is written.
    pub(super) fn at_least(
        &mut self,
        size: &Option<Spanned<SizeStr>>,
        field: &str,
        min: u64,
        min_text: &str,
    ) -> Option<u64> {
        let size = size.as_ref()?;
        if size.get_ref().0 < min {
            self.error(size.span(), format!("`{field}` must be at least \"{min_text}\""));
        }
        Some(size.get_ref().0.max(min))
    }

    /// The kind-specific part of an agent: its process spec, or its remote spec. Kinds not
    /// available yet are refused here, with the kinds that are. `agent_span` is where a missing
    /// command is reported.
    pub(super) fn kind(&mut self, agent: &RawAgent, agent_span: Range<usize>) -> AgentKind {
        if agent.runtime() != RawRuntime::Llm {
            self.refuse_llm_keys(agent);
        }
        match agent.runtime() {
            RawRuntime::Process => AgentKind::Process(self.process(agent, agent_span)),
            RawRuntime::Remote => {
                // Checked as before kinds had specs of their own (a `command` or `mode` is
                // refused, an unset `${VAR}` reported), then dropped: a remote agent has none.
                let _ = self.process(agent, agent_span);
                AgentKind::Remote(RemoteSpec {})
            }
            RawRuntime::A2a => {
                let _ = self.process(agent, agent_span.clone());
                AgentKind::A2a(self.a2a(agent, agent_span))
            }
            RawRuntime::Llm => {
                self.refuse_a2a_keys(agent);
                let _ = self.terminal(agent);
                AgentKind::Llm(self.llm_agent(agent, agent_span))
            }
        }
    }

    /// An A2A agent's spec: the card's URL (`${VAR}`s expanded; http or https) and the variable
    /// that holds its credentials, which must be set. The other agents may not have them.
    pub(super) fn a2a(&mut self, agent: &RawAgent, agent_span: Range<usize>) -> A2aSpec {
        let url = match &agent.url {
            None => {
                self.error(agent_span, "missing field `url`: the remote agent's card, e.g. \"https://agent.example/.well-known/agent-card.json\"");
                String::new()
            }
            Some(raw) => {
                let url = self.expand(raw);
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace) {
                    self.error(raw.span(), format!("`url` must be an http:// or https:// URL, not `{url}`"));
                }
                url
            }
        };
        let (auth_header_env, auth_header) = match &agent.auth_header_env {
            None => (None, None),
            Some(name) => match self.env.get(name.get_ref()) {
                Some(value) if !value.is_empty() => (Some(name.get_ref().clone()), Some(value.clone())),
                _ => {
                    self.error(
                        name.span(),
                        format!("`auth_header_env`: the variable `{}` is not set; set it to the `Authorization` header the agent expects (e.g. \"Bearer …\")", name.get_ref()),
                    );
                    (Some(name.get_ref().clone()), None)
                }
            },
        };
        A2aSpec { url, auth_header_env, auth_header }
    }

    /// Refuses the keys of an A2A agent on an agent of another kind.
    fn refuse_a2a_keys(&mut self, agent: &RawAgent) {
        let runtime = agent.runtime();
        if runtime == RawRuntime::A2a {
            return;
        }
        for (key, value) in [("url", &agent.url), ("auth_header_env", &agent.auth_header_env)] {
            if let Some(value) = value {
                self.error(
                    value.span(),
                    format!("`{key}` applies only to A2A agents: remove it, or use runtime = \"a2a\""),
                );
            }
        }
    }

    /// A process agent's spec: command, environment, limits, terminal settings.
    pub(super) fn process(&mut self, agent: &RawAgent, agent_span: Range<usize>) -> ProcessSpec {
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
    pub(super) fn command(&mut self, agent: &RawAgent, agent_span: Range<usize>) -> Vec<String> {
        self.refuse_a2a_keys(agent);
        if agent.runtime() == RawRuntime::A2a {
            if let Some(command) = &agent.command {
                self.error(
                    command.span(),
                    "A2A agents are not started by Baton: remove `command` (Baton sends tasks to the agent at `url`), or use runtime = \"process\"",
                );
            }
            if let Some(mode) = &agent.mode {
                self.error(mode.span(), "`mode` applies only to process agents: remove it");
            }
            return Vec::new();
        }
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
            if expanded.contains("{mcp.config}") && agent.mode() != ProcessMode::PerTask {
                self.error(
                    arg.span(),
                    "`{mcp.config}` is given to per-task agents only (mode = \"per-task\"); a worker or terminal agent reads its MCP servers itself",
                );
            }
            command.push(expanded);
        }
        command
    }

    /// The terminal keys of an agent: validated when `mode = "pty"`, refused otherwise.
    pub(super) fn terminal(&mut self, agent: &RawAgent) -> Option<TerminalSpec> {
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

    pub(super) fn check_regex(&mut self, key: &str, pattern: &Spanned<String>) {
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
    pub(super) fn task_fields(
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
        let workstream_known = new_task.workstream.as_deref().is_none_or(|ws| known_ws.contains(&ws));
        let pinned_known = new_task.agent.as_deref().is_none_or(|name| known_agents.contains(&name));
        if workstream_known
            && pinned_known
            && let Err(who) = crate::task::assignable(&new_task, agents)
        {
            let span = task.requires.first().map_or(task.title.span(), |cap| cap.span());
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
    pub(super) fn task_field_span(&self, task: &RawTask, field: crate::task::Field) -> Range<usize> {
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

    pub(super) fn tasks(
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

/// The gist of a regular expression error on one line: `regex` explains syntax errors over
/// several lines, with the pattern drawn and the problem on the line starting `error:`.
pub(super) fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(|| text.lines().last().unwrap_or_default().trim().to_string(), str::to_string)
}
