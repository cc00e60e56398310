//! The file as written: the serde structs `baton.toml` is read into, strict (unknown keys are
//! errors) and with the spans that diagnostics point at. Validation (`validate.rs`) turns them
//! into the plan.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::kind::RawRuntime;
use super::{ConflictPolicy, Coordinator, Objective, ProcessMode, RestartPolicy};
use super::{a2a, budget, coordinator, llm, logs, mcp, schedules, server};
use crate::model::Priority;
use crate::time::{DurationStr, SizeStr};

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) orchestration: RawOrchestration,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) server: server::RawServer,
    pub(super) auth: Option<Spanned<server::RawAuth>>,
    pub(super) budget: Option<budget::RawBudget>,
    #[serde(default)]
    pub(super) workstreams: Vec<RawWorkstream>,
    #[serde(default)]
    pub(super) agents: Vec<Spanned<RawAgent>>,
    #[serde(default)]
    pub(super) tasks: Vec<RawTask>,
    #[serde(default)]
    pub(super) schedules: Vec<schedules::RawSchedule>,
    #[serde(default)]
    pub(super) conflicts: RawConflicts,
    #[serde(default)]
    pub(super) logs: logs::RawLogs,
    #[serde(default)]
    pub(super) mcp_servers: BTreeMap<Spanned<String>, Spanned<mcp::RawMcpServer>>,
    #[serde(default)]
    pub(super) llm: llm::RawLlm,
    #[serde(default)]
    pub(super) a2a: a2a::RawA2a,
    pub(super) coordinator: Option<Spanned<coordinator::RawCoordinator>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConflicts {
    pub(super) policy: Option<ConflictPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrchestration {
    pub(super) name: Spanned<String>,
    pub(super) max_concurrent_agents: Option<Spanned<u32>>,
    pub(super) agent_spawn_timeout: Option<DurationStr>,
    pub(super) workstream_timeout: Option<DurationStr>,
    pub(super) coordinator: Option<Coordinator>,
    pub(super) retry_backoff: Option<DurationStr>,
    pub(super) retry_backoff_max: Option<DurationStr>,
    pub(super) lease_ttl: Option<Spanned<DurationStr>>,
    pub(super) offline_after: Option<DurationStr>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkstream {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) description: String,
    pub(super) priority: Option<Priority>,
    #[serde(default)]
    pub(super) depends_on: Vec<Spanned<String>>,
    pub(super) budget: Option<Spanned<budget::RawLimit>>,
    pub(super) objective: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) name: Spanned<String>,
    pub(super) role: Option<String>,
    pub(super) workstream: Option<Spanned<String>>,
    pub(super) priority: Option<Priority>,
    #[serde(default)]
    pub(super) capabilities: Vec<String>,
    pub(super) runtime: Option<Spanned<RawRuntime>>,
    pub(super) mode: Option<Spanned<ProcessMode>>,
    /// Required for process agents, refused for remote ones (see `Validator::command`).
    pub(super) command: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) restart: RestartPolicy,
    pub(super) max_restarts: Option<u32>,
    pub(super) restart_window: Option<DurationStr>,
    pub(super) restart_backoff: Option<DurationStr>,
    pub(super) heartbeat_timeout: Option<DurationStr>,
    pub(super) circuit_breaker: Option<RawBreaker>,
    pub(super) max_message_size: Option<Spanned<SizeStr>>,
    pub(super) input_template: Option<Spanned<String>>,
    pub(super) done_when: Option<Spanned<RawDoneWhen>>,
    pub(super) stall_after: Option<Spanned<DurationStr>>,
    pub(super) prompt_patterns: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) concurrency: Option<Spanned<u32>>,
    pub(super) runbook: Option<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) env_passthrough: Vec<String>,
    pub(super) workdir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) objectives: Vec<Objective>,
    pub(super) budget: Option<Spanned<budget::RawLimit>>,
    /// An A2A agent's card (`runtime = "a2a"` only).
    pub(super) url: Option<Spanned<String>>,
    /// The variable holding the `Authorization` header for an A2A agent.
    pub(super) auth_header_env: Option<Spanned<String>>,
    /// Globs of the tools (`server/tool`) the agent may call, e.g. `["fs/*", "baton/*"]`.
    #[serde(default)]
    pub(super) tools: Vec<Spanned<String>>,
    /// LLM agents only (see `Validator::llm_agent`).
    pub(super) provider: Option<Spanned<String>>,
    pub(super) model: Option<Spanned<String>>,
    pub(super) max_turns: Option<Spanned<u32>>,
    pub(super) max_tokens: Option<Spanned<u32>>,
}

impl RawAgent {
    pub(super) fn runtime(&self) -> RawRuntime {
        self.runtime.as_ref().map_or_else(RawRuntime::default, |runtime| *runtime.get_ref())
    }

    pub(super) fn mode(&self) -> ProcessMode {
        self.mode.as_ref().map_or_else(ProcessMode::default, |mode| *mode.get_ref())
    }
}

/// `done_when = { output = "REGEX" }`, `{ file = "PATH" }` or `{ exit = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDoneWhen {
    pub(super) output: Option<Spanned<String>>,
    pub(super) file: Option<Spanned<String>>,
    pub(super) exit: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) memory: Option<Spanned<SizeStr>>,
    pub(super) cpu: Option<DurationStr>,
    pub(super) timeout: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    pub(super) key: Option<Spanned<String>>,
    pub(super) title: Spanned<String>,
    #[serde(default)]
    pub(super) description: String,
    pub(super) workstream: Option<Spanned<String>>,
    pub(super) input: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) requires: Vec<Spanned<String>>,
    pub(super) agent: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) depends_on: Vec<Spanned<String>>,
    pub(super) priority: Option<Priority>,
    pub(super) max_attempts: Option<Spanned<u32>>,
    /// Tokens the task is expected to use: it does not start when they exceed what is left.
    pub(super) estimated_tokens: Option<Spanned<u64>>,
    /// Checked by [`crate::task::check`], with the bounded duration parser.
    pub(super) timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) resources: Vec<String>,
    pub(super) on_conflict: Option<ConflictPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub(super) failures: Spanned<u32>,
    pub(super) cooldown: DurationStr,
}
