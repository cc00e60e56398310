//! Events: the append-only, sequence-numbered record of everything that happened in a run. The
//! store writes each one in the same transaction as the state change it describes.

use serde::{Deserialize, Serialize};

use crate::model::{AgentState, RunState, TaskId, TaskState};
use crate::time::Timestamp;

/// A stored event. `seq` is assigned by the store and grows by one per event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: i64,
    pub run_id: String,
    pub at: Timestamp,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialized with its name in `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantNames)]
#[serde(tag = "type")]
pub enum EventKind {
    RunStarted {
        name: String,
        n_phases: u32,
    },
    RunResumed {
        previous_owner: Option<String>,
        requeued: u32,
    },
    /// The run was stopped before its end (Ctrl-C, SIGTERM, `baton serve` shut down) by the
    /// process that executed it; it is `interrupted`, and the next `baton run` resumes it.
    RunInterrupted {
        owner: String,
    },
    RunCompleted {
        state: RunState,
        n_succeeded: u64,
        n_dead: u64,
        n_cancelled: u64,
        error: Option<String>,
    },
    PhaseStarted {
        phase: u32,
        workstreams: Vec<String>,
    },
    PhaseCompleted {
        phase: u32,
    },
    WorkstreamCompleted {
        workstream: String,
        succeeded: bool,
    },
    AgentSpawned {
        agent: String,
        runtime: String,
    },
    AgentStateChanged {
        agent: String,
        from: AgentState,
        to: AgentState,
        reason: Option<String>,
    },
    AgentTerminated {
        agent: String,
        reason: String,
    },
    TaskCreated {
        task: TaskId,
        key: Option<String>,
        title: String,
        workstream: Option<String>,
    },
    TaskReady {
        task: TaskId,
    },
    TaskClaimed {
        task: TaskId,
        agent: String,
        attempt: u32,
    },
    TaskProgress {
        task: TaskId,
        agent: String,
        fraction: Option<f64>,
        message: Option<String>,
    },
    TaskCompleted {
        task: TaskId,
        agent: String,
        attempt: u32,
    },
    TaskFailed {
        task: TaskId,
        agent: Option<String>,
        attempt: u32,
        reason: String,
    },
    TaskRetrying {
        task: TaskId,
        attempt: u32,
        not_before: Timestamp,
    },
    TaskDeadLettered {
        task: TaskId,
        attempts: u32,
        reason: String,
    },
    TaskCancelled {
        task: TaskId,
        reason: String,
    },
    TaskLeaseExpired {
        task: TaskId,
        agent: Option<String>,
        attempt: u32,
    },
    TaskRequeued {
        task: TaskId,
        from: TaskState,
    },
    TaskSuspended {
        task: TaskId,
        reason: String,
    },
    TaskResumed {
        task: TaskId,
    },
    /// A schedule created `task` for its due time `due`; `n_due` > 1 when the task also covers
    /// due times missed before it, `late` when it fires after a downtime (`missed = "run-once"`).
    ScheduleFired {
        schedule: String,
        due: Timestamp,
        task: TaskId,
        n_due: u32,
        late: bool,
    },
    /// A schedule created nothing for its due times up to `due` (missed, or the previous task
    /// unfinished with `overlap = "skip"`).
    ScheduleSkipped {
        schedule: String,
        due: Timestamp,
        n_due: u32,
        reason: String,
    },
    SchedulePaused {
        schedule: String,
    },
    ScheduleResumed {
        schedule: String,
    },
    /// A task's resources overlap those a running task or an agent's lease holds (`held` by
    /// `holder`: "task 3", "agent classifier"); `policy` says what happened: it waits, it
    /// failed, or it ran anyway.
    ConflictDeferred {
        task: TaskId,
        resource: String,
        holder: String,
        held: String,
        policy: String,
    },
    /// An agent took a lease on a resource, until a time (renewed by taking it again).
    ResourceLeased {
        agent: String,
        resource: String,
        until: Timestamp,
    },
    /// An agent's lease ended: released, expired, or its agent went away.
    ResourceReleased {
        agent: String,
        resource: String,
        reason: String,
    },
    /// A message was stored for its recipients.
    MessageSent {
        message: String,
        from: String,
        to: Vec<String>,
        body: String,
    },
    /// A message was not acknowledged after its last try.
    MessageDeadLettered {
        message: String,
        to: String,
        attempts: u32,
        error: String,
    },
    /// An operator asked for a dead letter to be delivered again: it is pending, with a fresh
    /// count of tries.
    MessageRedelivered {
        message: String,
        to: String,
    },
    /// Tokens an agent reports having used (the protocol's `usage/report`, or the `usage` in
    /// a task's result).
    UsageReported {
        agent: String,
        task: Option<TaskId>,
        usage: serde_json::Value,
    },
    /// A budget (`global`, `workstream:NAME`, `agent:NAME`) reached one of its thresholds for
    /// the period; at 100 % it is exhausted and the agents it covers get no new task until
    /// `resets_at` or until an operator raises the limit.
    BudgetThreshold {
        scope: String,
        percent: u8,
        used_tokens: u64,
        limit_tokens: Option<u64>,
        used_cost_usd: f64,
        limit_cost_usd: Option<f64>,
        resets_at: Option<String>,
    },
    /// A ready task is held back by a budget: exhausted, or with less left than the task's
    /// `estimated_tokens`. Said once per task and period.
    TaskBudgetWait {
        task: TaskId,
        scope: String,
        reason: String,
    },
    /// A new budget period started: usage counts from zero again.
    BudgetReset {
        period_start: Timestamp,
        resets_at: Option<String>,
    },
    /// An operator set a budget's limit for the current period (`baton budget set`).
    BudgetLimitSet {
        scope: String,
        daily_tokens: Option<u64>,
        cost_usd: Option<f64>,
    },
    /// An agent was added to the running plan (the API, or a reloaded `baton.toml`).
    AgentAdded {
        agent: String,
    },
    /// An agent's spec was replaced; `restarted` when its runtime changed and it was running,
    /// so it was restarted to take the new spec.
    AgentUpdated {
        agent: String,
        restarted: bool,
    },
    /// An agent was removed from the running plan: stopped, its running attempts re-queued.
    AgentRemoved {
        agent: String,
    },
    /// A workstream was added to the running plan.
    WorkstreamAdded {
        workstream: String,
    },
    /// A changed configuration was applied to the running run. Each list holds short names
    /// ("agent reviewer", "workstream docs", "task write-docs"); `not_applied` the changes that
    /// need a restart, each with why; `not_added` the file's tasks that were not added, each
    /// with why (their key is taken by a task the file did not make).
    ConfigReloaded {
        added: Vec<String>,
        removed: Vec<String>,
        updated: Vec<String>,
        not_applied: Vec<String>,
        /// Absent from events written before it existed.
        #[serde(default)]
        not_added: Vec<String>,
    },
    /// A changed configuration was refused (it does not parse or validate): the running one
    /// stays.
    ConfigRejected {
        errors: String,
    },
    /// The coordinator's model decided: an objective turned into tasks (`decision` is
    /// `decompose`), or a failed task triaged (`triage`). `input` is what it was asked about,
    /// `output` what it chose (the tasks, with their ids), `usage` its tokens and cost.
    CoordinatorDecision {
        decision: String,
        workstream: Option<String>,
        task: Option<TaskId>,
        input: serde_json::Value,
        output: serde_json::Value,
        usage: serde_json::Value,
    },
    /// The coordinator fell back to the rules (an objective is one task routed by capability;
    /// a failed task stays failed), and why: no provider, its key not set, a timeout, an API
    /// error, an answer that is not the JSON asked for, or a proposal that failed validation.
    CoordinatorFallback {
        decision: String,
        workstream: Option<String>,
        task: Option<TaskId>,
        reason: String,
    },
}

impl EventKind {
    /// The variant's name, stored in its own column so that events can be filtered by type.
    pub fn name(&self) -> &'static str {
        self.into()
    }

    /// Every event type's name, for checking a filter.
    pub const NAMES: &'static [&'static str] = <EventKind as strum::VariantNames>::VARIANTS;

    /// The task the event is about, if any.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            EventKind::TaskCreated { task, .. }
            | EventKind::TaskReady { task }
            | EventKind::TaskClaimed { task, .. }
            | EventKind::TaskProgress { task, .. }
            | EventKind::TaskCompleted { task, .. }
            | EventKind::TaskFailed { task, .. }
            | EventKind::TaskRetrying { task, .. }
            | EventKind::TaskDeadLettered { task, .. }
            | EventKind::TaskCancelled { task, .. }
            | EventKind::TaskLeaseExpired { task, .. }
            | EventKind::TaskRequeued { task, .. }
            | EventKind::TaskSuspended { task, .. }
            | EventKind::TaskResumed { task }
            | EventKind::ConflictDeferred { task, .. } => Some(*task),
            EventKind::UsageReported { task, .. } => *task,
            EventKind::ScheduleFired { task, .. } => Some(*task),
            EventKind::TaskBudgetWait { task, .. } => Some(*task),
            EventKind::CoordinatorDecision { task, .. } | EventKind::CoordinatorFallback { task, .. } => *task,
            _ => None,
        }
    }

    /// The agent the event is about, if any.
    pub fn agent(&self) -> Option<&str> {
        match self {
            EventKind::AgentSpawned { agent, .. }
            | EventKind::AgentStateChanged { agent, .. }
            | EventKind::AgentTerminated { agent, .. }
            | EventKind::TaskClaimed { agent, .. }
            | EventKind::TaskProgress { agent, .. }
            | EventKind::TaskCompleted { agent, .. }
            | EventKind::UsageReported { agent, .. }
            | EventKind::AgentAdded { agent }
            | EventKind::AgentUpdated { agent, .. }
            | EventKind::AgentRemoved { agent } => Some(agent),
            EventKind::TaskFailed { agent, .. } | EventKind::TaskLeaseExpired { agent, .. } => agent.as_deref(),
            _ => None,
        }
    }

    /// A one-line human description, for `baton events` and plain progress output.
    pub fn describe(&self) -> String {
        match self {
            EventKind::RunStarted { name, n_phases } => {
                format!("run `{name}` started ({n_phases} phases)")
            }
            EventKind::RunResumed { previous_owner, requeued } => match previous_owner {
                Some(owner) => {
                    format!("run resumed from {owner}; {requeued} running task(s) re-queued")
                }
                None => format!("run resumed; {requeued} running task(s) re-queued"),
            },
            EventKind::RunInterrupted { owner } => {
                format!("run interrupted: stopped before its end by {owner}; `baton run` resumes it")
            }
            EventKind::RunCompleted { state, n_succeeded, n_dead, n_cancelled, error } => {
                let mut text = format!("run {state}: {n_succeeded} succeeded, {n_dead} dead, {n_cancelled} cancelled");
                if let Some(error) = error {
                    text.push_str(&format!(" ({error})"));
                }
                text
            }
            EventKind::PhaseStarted { phase, workstreams } => {
                format!("phase {phase} started: {}", workstreams.join(", "))
            }
            EventKind::PhaseCompleted { phase } => format!("phase {phase} completed"),
            EventKind::WorkstreamCompleted { workstream, succeeded } => {
                if *succeeded {
                    format!("workstream {workstream} completed")
                } else {
                    format!("workstream {workstream} finished with failures")
                }
            }
            EventKind::AgentSpawned { agent, runtime } => {
                format!("agent {agent} spawned ({runtime})")
            }
            EventKind::AgentStateChanged { agent, from, to, reason } => match reason {
                Some(reason) => format!("agent {agent}: {from} -> {to} ({reason})"),
                None => format!("agent {agent}: {from} -> {to}"),
            },
            EventKind::AgentTerminated { agent, reason } => {
                format!("agent {agent} terminated: {reason}")
            }
            EventKind::TaskCreated { task, title, .. } => format!("task {task} created: {title}"),
            EventKind::TaskReady { task } => format!("task {task} ready"),
            EventKind::TaskClaimed { task, agent, attempt } => {
                format!("task {task} claimed by {agent} (attempt {attempt})")
            }
            EventKind::TaskProgress { task, agent, fraction, message } => {
                let fraction = fraction.map(|f| format!(" {:.0}%", f * 100.0)).unwrap_or_default();
                let message = message.as_deref().map(|m| format!(" {m}")).unwrap_or_default();
                format!("task {task} progress from {agent}:{fraction}{message}")
            }
            EventKind::TaskCompleted { task, agent, attempt } => {
                format!("task {task} completed by {agent} (attempt {attempt})")
            }
            EventKind::TaskFailed { task, agent, attempt, reason } => match agent {
                Some(agent) => {
                    format!("task {task} failed on {agent} (attempt {attempt}): {reason}")
                }
                None => format!("task {task} failed (attempt {attempt}): {reason}"),
            },
            EventKind::TaskRetrying { task, attempt, .. } => {
                format!("task {task} will retry (attempt {attempt})")
            }
            EventKind::TaskDeadLettered { task, attempts, reason } => {
                format!("task {task} dead after {attempts} attempt(s): {reason}")
            }
            EventKind::TaskCancelled { task, reason } => format!("task {task} cancelled: {reason}"),
            EventKind::TaskLeaseExpired { task, agent, attempt } => match agent {
                Some(agent) => format!("task {task} lease expired on {agent} (attempt {attempt})"),
                None => format!("task {task} lease expired (attempt {attempt})"),
            },
            EventKind::TaskRequeued { task, from } => format!("task {task} re-queued from {from}"),
            EventKind::TaskSuspended { task, reason } => format!("task {task} suspended: {reason}"),
            EventKind::TaskResumed { task } => format!("task {task} resumed"),
            EventKind::ScheduleFired { schedule, due, task, n_due, late } => {
                let due = crate::schedule::format_utc(*due);
                let covers = if *n_due > 1 { format!(", covering {n_due} due times") } else { String::new() };
                let late = if *late { " (late: missed while Baton was not running)" } else { "" };
                format!("schedule {schedule} fired for {due}: task {task}{covers}{late}")
            }
            EventKind::ScheduleSkipped { schedule, due, reason, .. } => {
                format!("schedule {schedule} skipped {}: {reason}", crate::schedule::format_utc(*due))
            }
            EventKind::SchedulePaused { schedule } => format!("schedule {schedule} paused"),
            EventKind::ScheduleResumed { schedule } => format!("schedule {schedule} resumed"),
            EventKind::UsageReported { agent, usage, .. } => format!("agent {agent} reported usage {usage}"),
            EventKind::BudgetThreshold {
                scope,
                percent,
                used_tokens,
                limit_tokens,
                used_cost_usd,
                limit_cost_usd,
                resets_at,
            } => {
                let mut used = Vec::new();
                if let Some(limit) = limit_tokens {
                    used.push(format!("{used_tokens}/{limit} tokens"));
                }
                if let Some(limit) = limit_cost_usd {
                    used.push(format!("${used_cost_usd:.2}/${limit:.2}"));
                }
                let until = resets_at.as_deref().map(|at| format!(" at {at}")).unwrap_or_default();
                if *percent >= 100 {
                    format!(
                        "budget {scope} exhausted ({}): blocked, its agents get no new task until the reset{until} or `baton budget set`",
                        used.join(", ")
                    )
                } else {
                    format!("budget {scope} reached {percent}% ({})", used.join(", "))
                }
            }
            EventKind::TaskBudgetWait { task, scope, reason } => {
                format!("task {task} waits for budget {scope}: {reason}")
            }
            EventKind::BudgetReset { resets_at, .. } => match resets_at {
                Some(at) => format!("budgets reset; the next reset is at {at}"),
                None => "budgets reset".to_string(),
            },
            EventKind::BudgetLimitSet { scope, daily_tokens, cost_usd } => {
                let limit = crate::budget::Limit { daily_tokens: *daily_tokens, cost_usd: *cost_usd };
                format!("budget {scope} limit set to {limit} for this period")
            }
            EventKind::MessageSent { from, to, body, .. } => {
                let short: String = body.chars().take(60).collect();
                format!("message from {from} to {}: {short}", to.join(", "))
            }
            EventKind::MessageDeadLettered { message, to, attempts, error } => {
                format!("message {message} to {to} dead after {attempts} tries: {error}")
            }
            EventKind::MessageRedelivered { message, to } => format!("message {message} to {to} delivered again"),
            EventKind::ConflictDeferred { task, resource, holder, held, policy } => {
                let what = match policy.as_str() {
                    "fail" => "fails",
                    "warn" => "runs anyway",
                    _ => "waits",
                };
                format!("task {task} {what}: `{resource}` overlaps `{held}` held by {holder}")
            }
            EventKind::ResourceLeased { agent, resource, .. } => format!("agent {agent} leased `{resource}`"),
            EventKind::ResourceReleased { agent, resource, reason } => {
                format!("agent {agent} released `{resource}` ({reason})")
            }
            EventKind::AgentAdded { agent } => format!("agent {agent} added"),
            EventKind::AgentUpdated { agent, restarted } => {
                if *restarted {
                    format!("agent {agent} updated and restarted")
                } else {
                    format!("agent {agent} updated (applies to its next task)")
                }
            }
            EventKind::AgentRemoved { agent } => format!("agent {agent} removed"),
            EventKind::WorkstreamAdded { workstream } => format!("workstream {workstream} added"),
            EventKind::ConfigReloaded { added, removed, updated, not_applied, not_added } => {
                let mut parts = Vec::new();
                for (what, names) in [("added", added), ("removed", removed), ("updated", updated)] {
                    if !names.is_empty() {
                        parts.push(format!("{what} {}", names.join(", ")));
                    }
                }
                if parts.is_empty() {
                    parts.push("nothing changed".to_string());
                }
                let mut text = format!("configuration reloaded: {}", parts.join("; "));
                if !not_applied.is_empty() {
                    text.push_str(&format!("; not applied (restart to apply): {}", not_applied.join("; ")));
                }
                if !not_added.is_empty() {
                    text.push_str(&format!("; not added: {}", not_added.join("; ")));
                }
                text
            }
            EventKind::ConfigRejected { errors } => {
                format!("configuration change rejected, the running one stays: {errors}")
            }
            EventKind::CoordinatorDecision { decision, workstream, output, .. } => {
                let about = workstream.as_deref().map_or_else(String::new, |ws| format!(" for workstream `{ws}`"));
                format!("coordinator decided ({decision}){about}: {output}")
            }
            EventKind::CoordinatorFallback { decision, workstream, reason, .. } => {
                let about = workstream.as_deref().map_or_else(String::new, |ws| format!(" for workstream `{ws}`"));
                format!("coordinator fell back to the rules ({decision}){about}: {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_names_are_the_serialized_ones() {
        assert!(EventKind::NAMES.len() > 40 && EventKind::NAMES.contains(&"TaskCompleted"));
        for name in EventKind::NAMES {
            // Each name is a variant serde knows: what fails is a missing field, not the type.
            if let Err(error) = serde_json::from_value::<EventKind>(serde_json::json!({ "type": name })) {
                assert!(!error.to_string().contains("unknown variant"), "{name}: {error}");
            }
        }
        let unknown = serde_json::from_value::<EventKind>(serde_json::json!({ "type": "TaskExploded" }));
        assert!(unknown.unwrap_err().to_string().contains("unknown variant"));
    }

    #[test]
    fn events_serialize_with_their_type_name() {
        let event = Event {
            seq: 7,
            run_id: "r1".into(),
            at: Timestamp(5),
            kind: EventKind::TaskClaimed { task: TaskId(3), agent: "build".into(), attempt: 1 },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "TaskClaimed");
        assert_eq!(json["task"], 3);
        assert_eq!(event.kind.name(), "TaskClaimed");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn reconfiguration_events_name_what_changed() {
        let reloaded = EventKind::ConfigReloaded {
            added: vec!["agent reviewer".into(), "task write-docs".into()],
            removed: vec![],
            updated: vec!["settings max_concurrent_agents".into()],
            not_applied: vec!["workstream docs: removing a workstream needs a restart".into()],
            not_added: vec![],
        };
        assert_eq!(reloaded.name(), "ConfigReloaded");
        assert_eq!(
            reloaded.describe(),
            "configuration reloaded: added agent reviewer, task write-docs; updated settings max_concurrent_agents; \
             not applied (restart to apply): workstream docs: removing a workstream needs a restart"
        );
        let clashed = EventKind::ConfigReloaded {
            added: vec![],
            removed: vec![],
            updated: vec![],
            not_applied: vec![],
            not_added: vec!["task review: key `review` is taken by task 7, which the file did not make".into()],
        };
        assert_eq!(
            clashed.describe(),
            "configuration reloaded: nothing changed; not added: task review: key `review` is taken by task 7, \
             which the file did not make"
        );
        // Written before `not_added` existed: read as none.
        let old = serde_json::json!({ "type": "ConfigReloaded", "added": [], "removed": [], "updated": [], "not_applied": [] });
        let read = serde_json::from_value::<EventKind>(old).unwrap();
        assert!(matches!(read, EventKind::ConfigReloaded { not_added, .. } if not_added.is_empty()));
        let updated = EventKind::AgentUpdated { agent: "reviewer".into(), restarted: true };
        assert_eq!(updated.agent(), Some("reviewer"));
        let json = serde_json::to_value(&updated).unwrap();
        assert_eq!(json["type"], "AgentUpdated");
        assert_eq!(serde_json::from_value::<EventKind>(json).unwrap(), updated);
        assert_eq!(EventKind::ConfigRejected { errors: "x".into() }.agent(), None);
    }
}
