//! One way to make a task. Every source of tasks — a `[[tasks]]` entry of baton.toml, a
//! schedule's template, `POST /tasks` and `/tasks/batch`, `baton task add`, a worker's
//! `task/create`, a chat message to an agent that runs once per task — describes the task as a
//! [`TaskInput`] and turns it into a [`NewTask`] with [`new_task`]: the same checks, the same
//! errors and the same defaults, whatever the source.
//!
//! The defaults: `input` is `{}` (an object, so that `{task.input.FIELD}` and an agent reading
//! fields from its stdin see "no such field" rather than a `null`), the key is derived from the
//! title ([`crate::config::slug`]), the priority is the workstream's (else `medium`),
//! `max_attempts` is [`DEFAULT_MAX_ATTEMPTS`], and there is no timeout (the agent's
//! `limits.timeout` applies). What only a whole plan can check — dependencies between the
//! tasks of a file or a batch, whether some agent can run the task — is the caller's.

use serde::{Deserialize, Serialize};

use crate::config::{AgentSpec, Plan, WorkstreamSpec, slug, unknown};
use crate::model::{NewTask, Priority, TaskRef};

/// The attempts a task gets when it does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The most attempts a task may ask for: a task that fails a hundred times will not succeed
/// the hundred-and-first, and each attempt costs an agent's time.
pub const MAX_ATTEMPTS: u32 = 100;

/// A task to create, as written by whoever asks for it: the fields of a `[[tasks]]` entry of
/// baton.toml, also the body of `POST /tasks` and an item of a worker's `task/create`.
/// Unknown fields are refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskInput {
    /// Identity within the run; a second task with the same key is refused. Default: derived
    /// from the title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workstream: Option<String>,
    /// Any JSON, handed to the agent. Default: `{}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Capabilities the agent must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Pin the task to this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Other tasks, by id (a number) or key (a string).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TaskRef>,
    /// Default: the workstream's, else `medium`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Default: 3; at most 100.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// A duration such as `"30s"`, `"10m"`. Default: the agent's `limits.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Keys or globs for conflict detection (`file:src/**`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Tokens the task expects to use: it does not start while a budget that covers it has
    /// less left, and is refused if it needs more than a whole period's budget.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_tokens: Option<u64>,
}

/// What a task is checked against: the workstreams and agents of a plan.
#[derive(Debug, Clone, Copy)]
pub struct Catalog<'a> {
    pub workstreams: &'a [WorkstreamSpec],
    pub agents: &'a [AgentSpec],
}

impl<'a> From<&'a Plan> for Catalog<'a> {
    fn from(plan: &'a Plan) -> Self {
        Catalog { workstreams: &plan.workstreams, agents: &plan.agents }
    }
}

/// The field of a [`TaskInput`] an [`Error`] is about, so that a caller with places (a
/// configuration file) can point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Key,
    Title,
    Workstream,
    Agent,
    /// The dependency at this index of `depends_on`.
    DependsOn(usize),
    MaxAttempts,
    Timeout,
    EstimatedTokens,
}

/// Why a task cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("task `title` must not be empty")]
    EmptyTitle,
    #[error("invalid task key name `{key}`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit")]
    InvalidKey { key: String },
    #[error("{}", unknown("workstream", .name, &names(.known)))]
    UnknownWorkstream { name: String, known: Vec<String> },
    #[error("{}", unknown("agent", .name, &names(.known)))]
    UnknownAgent { name: String, known: Vec<String> },
    #[error("task `{key}` depends on itself")]
    DependsOnItself { key: String, index: usize },
    #[error("`max_attempts` must be at least 1")]
    NoAttempts,
    #[error("`max_attempts` must be at most {MAX_ATTEMPTS}, not {given}")]
    TooManyAttempts { given: u32 },
    #[error("`timeout`: {reason}")]
    Timeout { reason: String },
    #[error("`estimated_tokens` must be at least 1")]
    NoEstimatedTokens,
}

impl Error {
    pub fn field(&self) -> Field {
        match self {
            Error::EmptyTitle => Field::Title,
            Error::InvalidKey { .. } => Field::Key,
            Error::UnknownWorkstream { .. } => Field::Workstream,
            Error::UnknownAgent { .. } => Field::Agent,
            Error::DependsOnItself { index, .. } => Field::DependsOn(*index),
            Error::NoAttempts | Error::TooManyAttempts { .. } => Field::MaxAttempts,
            Error::Timeout { .. } => Field::Timeout,
            Error::NoEstimatedTokens => Field::EstimatedTokens,
        }
    }
}

fn names(known: &[String]) -> Vec<&str> {
    known.iter().map(String::as_str).collect()
}

/// Whether `key` is a valid task key: letters, digits, `-`, `_` and `.`, starting with a letter
/// or digit (a schedule's `NAME@DUE` and nothing a user writes has an `@`).
pub fn is_valid_key(key: &str) -> bool {
    key.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether some agent of `agents` can run `task` (its workstream's or a shared one, with every
/// capability it requires, the pinned one if it is pinned); else who is missing, e.g. "no
/// agent of workstream `docs` or shared has [review]". Checked for baton.toml's tasks and the
/// coordinator's proposals, whose agents are known when they are made.
pub fn assignable(task: &NewTask, agents: &[AgentSpec]) -> Result<(), String> {
    let workstream = task.workstream.as_deref();
    let pinned = task.agent.as_deref();
    let requires = &task.requires;
    // An agent that learns its capabilities at start (an A2A agent's card) may have them.
    let able = |agent: &AgentSpec| {
        agent.can_run(workstream, requires, pinned)
            || (agent.learns_capabilities() && agent.can_run(workstream, &[], pinned))
    };
    if agents.iter().any(able) {
        return Ok(());
    }
    let scope = match workstream {
        Some(ws) => format!("of workstream `{ws}` or shared"),
        None => "without a workstream".to_string(),
    };
    let needs = if requires.is_empty() { "any capability".to_string() } else { format!("[{}]", requires.join(", ")) };
    Err(match pinned {
        Some(agent) => format!("pinned agent `{agent}` cannot run it"),
        None => format!("no agent {scope} has {needs}"),
    })
}

/// Checks a task against a plan and fills in its defaults; the first problem found.
pub fn new_task(input: TaskInput, catalog: Catalog<'_>) -> Result<NewTask, Error> {
    let (task, mut errors) = check(input, catalog);
    if errors.is_empty() { Ok(task) } else { Err(errors.swap_remove(0)) }
}

/// The problems of a task that need no plan (its title, key, dependency on itself, attempts,
/// timeout and estimate): what a worker's `task/create` answers as invalid params.
pub fn check_alone(input: &TaskInput) -> Result<(), Error> {
    let (_, mut errors) = check(input.clone(), Catalog { workstreams: &[], agents: &[] });
    errors.retain(|error| !matches!(error, Error::UnknownWorkstream { .. } | Error::UnknownAgent { .. }));
    if errors.is_empty() { Ok(()) } else { Err(errors.swap_remove(0)) }
}

/// Checks a task against a plan and fills in its defaults: the task, and every problem found,
/// in the order of the fields (the task is meaningful only when there is none).
pub fn check(input: TaskInput, catalog: Catalog<'_>) -> (NewTask, Vec<Error>) {
    let mut errors = Vec::new();
    if input.title.trim().is_empty() {
        errors.push(Error::EmptyTitle);
    }
    if let Some(key) = &input.key
        && !is_valid_key(key)
    {
        errors.push(Error::InvalidKey { key: key.clone() });
    }
    let workstream = input.workstream.as_deref().and_then(|name| catalog.workstreams.iter().find(|ws| ws.name == name));
    if let Some(name) = &input.workstream
        && workstream.is_none()
    {
        let known = catalog.workstreams.iter().map(|ws| ws.name.clone()).collect();
        errors.push(Error::UnknownWorkstream { name: name.clone(), known });
    }
    if let Some(name) = &input.agent
        && !catalog.agents.iter().any(|agent| &agent.name == name)
    {
        let known = catalog.agents.iter().map(|agent| agent.name.clone()).collect();
        errors.push(Error::UnknownAgent { name: name.clone(), known });
    }
    let key = input.key.clone().unwrap_or_else(|| slug(&input.title));
    for (index, dep) in input.depends_on.iter().enumerate() {
        if *dep == TaskRef::Key(key.clone()) {
            errors.push(Error::DependsOnItself { key: key.clone(), index });
        }
    }
    let max_attempts = match input.max_attempts {
        None => DEFAULT_MAX_ATTEMPTS,
        Some(0) => {
            errors.push(Error::NoAttempts);
            1
        }
        Some(given) if given > MAX_ATTEMPTS => {
            errors.push(Error::TooManyAttempts { given });
            MAX_ATTEMPTS
        }
        Some(given) => given,
    };
    let timeout_ms = input.timeout.as_deref().and_then(|text| match crate::time::parse_duration(text) {
        // At most 3650 days: the milliseconds fit.
        Ok(duration) => Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
        Err(reason) => {
            errors.push(Error::Timeout { reason });
            None
        }
    });
    if input.estimated_tokens == Some(0) {
        errors.push(Error::NoEstimatedTokens);
    }
    let priority = input.priority.or(workstream.map(|ws| ws.priority)).unwrap_or_default();
    let task = NewTask {
        parent: None,
        key: Some(key),
        workstream: input.workstream,
        title: input.title,
        description: input.description,
        input: input.input.unwrap_or_else(|| serde_json::Value::Object(Default::default())),
        requires: input.requires,
        agent: input.agent,
        depends_on: input.depends_on,
        priority,
        max_attempts,
        timeout_ms,
        resources: input.resources,
        estimated_tokens: input.estimated_tokens.filter(|tokens| *tokens > 0),
    };
    (task, errors)
}

#[cfg(test)]
mod tests;
