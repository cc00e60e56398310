//! The coordinator's pure part: what a model is asked when an objective is to be turned into
//! tasks, how its answer is read (strictly: one JSON object, a fenced ```json block
//! tolerated), and how the proposal becomes tasks — through [`crate::task::new_task`] and
//! [`crate::task::assignable`], the checks every other source of tasks goes through. What
//! needs the store (dependencies on existing tasks, cycles) and the budgets (a task larger
//! than a whole period) is checked by the engine when it creates them, as for any batch.
//!
//! The tasks of an objective are keyed by it ([`objective_key`]): `KEY.1`, `KEY.2`… for a
//! proposal, `KEY` alone for the rules' one task. So an objective is planned once per run, also
//! across restarts: the engine looks for those keys before it asks anyone.

use serde::Deserialize;

use crate::config::Plan;
use crate::model::{NewTask, TaskRecord, TaskRef};
use crate::task::{self, TaskInput};

/// The most tasks a proposal may have: more is a model that lost its way.
pub const MAX_PROPOSED_TASKS: usize = 50;

/// The key prefix of the tasks made from `objective` in `workstream`: the workstream's name
/// and a hash of the objective's text (FNV-1a, stable across builds and machines).
pub fn objective_key(workstream: &str, objective: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in objective.trim().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{workstream}.objective-{:08x}", hash >> 32)
}

/// The keys whose presence says the objective was planned: the rules' task or a proposal's
/// first (a proposal's tasks are created all or none).
pub fn planned_keys(prefix: &str) -> [String; 2] {
    [prefix.to_string(), format!("{prefix}.1")]
}

/// One task as the model proposes it. Unknown fields are refused, as in a batch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposedTask {
    /// The proposal's own name for the task, which `depends_on` may use.
    pub key: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub requires: Vec<String>,
    /// Keys of other proposed tasks, or of tasks the run already has.
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub estimated_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Proposal {
    tasks: Vec<ProposedTask>,
}

/// The instructions of a decomposition: the team (each agent's capabilities and role) and the
/// answer's format.
pub fn decompose_system_prompt(plan: &Plan, workstream: &str) -> String {
    let mut prompt = String::from(
        "You are the coordinator of a team of agents that Baton orchestrates. You turn an objective into a small set of tasks the team can do.\n\nThe team (only these capabilities exist):\n",
    );
    prompt.push_str(&team(
        plan.agents.iter().filter(|agent| agent.workstream.as_deref().is_none_or(|ws| ws == workstream)),
    ));
    prompt.push_str(
        "\nAnswer with one JSON object and nothing else:\n{\"tasks\": [{\"key\": \"short-name\", \"title\": \"...\", \"description\": \"...\", \"requires\": [\"capability\"], \"depends_on\": [\"key of an earlier task\"], \"estimated_tokens\": 4000}]}\n`key` is letters, digits and `-`; `requires` names capabilities of the team; `depends_on` names keys of other tasks of your answer. No cycles.",
    );
    prompt
}

/// The question of a decomposition.
pub fn decompose_user_prompt(workstream: &str, objective: &str) -> String {
    format!("Workstream: {workstream}\nObjective: {objective}")
}

/// The JSON object in a model's answer: the whole text, or a fenced ```json block in it.
pub fn answer_json(text: &str) -> Result<serde_json::Value, String> {
    let trimmed = text.trim();
    let body = fenced(trimmed).unwrap_or(trimmed);
    serde_json::from_str(body).map_err(|error| {
        let shown: String = trimmed.chars().take(200).collect();
        format!("invalid JSON in the model's answer ({error}): {shown}")
    })
}

/// The text inside the first ```json (or ```) fence, if the answer has one.
fn fenced(text: &str) -> Option<&str> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let after = after.strip_prefix("json").unwrap_or(after);
    let end = after.find("```")?;
    Some(after[..end].trim())
}

/// Reads a decomposition's answer: `{"tasks": [...]}`, at least one task, at most
/// [`MAX_PROPOSED_TASKS`].
pub fn parse_proposal(text: &str) -> Result<Vec<ProposedTask>, String> {
    let value = answer_json(text)?;
    let proposal: Proposal =
        serde_json::from_value(value).map_err(|error| format!("the model's answer is not a proposal: {error}"))?;
    if proposal.tasks.is_empty() {
        return Err("the model proposed no task".into());
    }
    if proposal.tasks.len() > MAX_PROPOSED_TASKS {
        return Err(format!("the model proposed {} tasks, more than {MAX_PROPOSED_TASKS}", proposal.tasks.len()));
    }
    Ok(proposal.tasks)
}

/// The proposal as tasks of the run, keyed `PREFIX.N`, or the first problem, naming the task.
/// Each goes through [`task::new_task`] and [`task::assignable`], like a task of baton.toml.
pub fn proposal_tasks(
    plan: &Plan,
    workstream: Option<&str>,
    prefix: &str,
    proposed: &[ProposedTask],
) -> Result<Vec<NewTask>, String> {
    let key_of =
        |key: &str| proposed.iter().position(|task| task.key == key).map(|idx| format!("{prefix}.{}", idx + 1));
    let mut tasks = Vec::with_capacity(proposed.len());
    for (idx, task) in proposed.iter().enumerate() {
        let at = format!("proposed task {} `{}`", idx + 1, task.key);
        if proposed[..idx].iter().any(|earlier| earlier.key == task.key) {
            return Err(format!("{at}: duplicate key"));
        }
        let depends_on =
            task.depends_on.iter().map(|dep| TaskRef::Key(key_of(dep).unwrap_or_else(|| dep.clone()))).collect();
        let input = TaskInput {
            key: Some(format!("{prefix}.{}", idx + 1)),
            title: task.title.clone(),
            description: task.description.clone(),
            workstream: workstream.map(str::to_string),
            requires: task.requires.clone(),
            depends_on,
            estimated_tokens: task.estimated_tokens,
            ..TaskInput::default()
        };
        let new = task::new_task(input, plan.into()).map_err(|error| format!("{at}: {error}"))?;
        task::assignable(&new, &plan.agents).map_err(|who| format!("{at} cannot be assigned: {who}"))?;
        tasks.push(new);
    }
    Ok(tasks)
}

/// The rules' plan for an objective: one task, keyed `PREFIX`, that any agent of the
/// workstream (or a shared one) may take.
pub fn fallback_task(plan: &Plan, workstream: &str, prefix: &str, objective: &str) -> Result<NewTask, String> {
    // One line: an objective written over several lines is still a title.
    let title: String = objective.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(120).collect();
    let input = TaskInput {
        key: Some(prefix.to_string()),
        title,
        description: objective.to_string(),
        workstream: Some(workstream.to_string()),
        ..TaskInput::default()
    };
    task::new_task(input, plan.into()).map_err(|error| error.to_string())
}

/// What the coordinator decides about a task that failed its last attempt.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Triage {
    /// Try again: the same task, or a copy pinned to `agent`.
    Retry {
        #[serde(default)]
        agent: Option<String>,
        reason: String,
    },
    /// New tasks replace it (checked as a proposal).
    Split { tasks: Vec<ProposedTask>, reason: String },
    /// It stays failed.
    GiveUp { reason: String },
}

/// The instructions of a triage: the team and the answer's format.
pub fn triage_system_prompt(plan: &Plan, workstream: Option<&str>) -> String {
    let mut prompt = String::from(
        "You are the coordinator of a team of agents that Baton orchestrates. A task failed its last attempt: decide what to do.\n\nThe team (only these capabilities exist):\n",
    );
    prompt.push_str(&team(
        plan.agents.iter().filter(|agent| agent.workstream.is_none() || agent.workstream.as_deref() == workstream),
    ));
    prompt.push_str(
        "\nAnswer with one JSON object and nothing else, one of:\n{\"action\": \"retry\", \"agent\": \"name of another agent, or omit\", \"reason\": \"...\"}\n{\"action\": \"split\", \"tasks\": [{\"key\": \"short-name\", \"title\": \"...\", \"description\": \"...\", \"requires\": [\"capability\"], \"depends_on\": [\"key\"]}], \"reason\": \"...\"}\n{\"action\": \"give_up\", \"reason\": \"...\"}",
    );
    prompt
}

/// The question of a triage: the task and why it failed.
pub fn triage_user_prompt(task: &TaskRecord) -> String {
    format!(
        "Task {} `{}` failed after {} attempt(s) (last agent: {}).\nDescription: {}\nRequires: [{}]\nWhy it failed: {}",
        task.id,
        task.title,
        task.attempt,
        task.assigned_agent.as_deref().unwrap_or("none"),
        task.description,
        task.requires.join(", "),
        task.error.as_deref().unwrap_or("unknown")
    )
}

/// Reads a triage's answer.
pub fn parse_triage(text: &str) -> Result<Triage, String> {
    let value = answer_json(text)?;
    serde_json::from_value(value).map_err(|error| format!("the model's answer is not a triage: {error}"))
}

/// The key the tasks made by a triage of `task` start with.
pub fn triage_key(task: &TaskRecord) -> String {
    let base = task.key.clone().unwrap_or_else(|| format!("task-{}", task.id));
    format!("{base}.triage-{}", task.attempt)
}

/// The team as the prompts show it: a line per agent, its capabilities and role.
fn team<'a>(agents: impl Iterator<Item = &'a crate::config::AgentSpec>) -> String {
    agents
        .map(|agent| format!("- {} (capabilities: [{}]): {}\n", agent.name, agent.capabilities.join(", "), agent.role))
        .collect()
}

/// What the coordinator chose for a task that several agents can take.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Assignment {
    pub agent: String,
    pub reason: String,
}

/// The instructions of an assignment: the agents that can take the task, and the answer's
/// format.
pub fn assign_system_prompt(plan: &Plan, candidates: &[String]) -> String {
    let mut prompt = String::from(
        "You are the coordinator of a team of agents that Baton orchestrates. Several agents can take a task: choose the one best suited to it.\n\nThe agents that can take it:\n",
    );
    prompt.push_str(&team(plan.agents.iter().filter(|agent| candidates.contains(&agent.name))));
    prompt.push_str(
        "\nAnswer with one JSON object and nothing else:\n{\"agent\": \"name of one of these agents\", \"reason\": \"...\"}",
    );
    prompt
}

/// The question of an assignment: the task.
pub fn assign_user_prompt(task: &TaskRecord) -> String {
    format!(
        "Task {} `{}`\nDescription: {}\nRequires: [{}]",
        task.id,
        task.title,
        task.description,
        task.requires.join(", ")
    )
}

/// Reads an assignment's answer: one of `candidates`, with its reason.
pub fn parse_assignment(text: &str, candidates: &[String]) -> Result<Assignment, String> {
    let value = answer_json(text)?;
    let assignment: Assignment =
        serde_json::from_value(value).map_err(|error| format!("the model's answer is not an assignment: {error}"))?;
    if !candidates.contains(&assignment.agent) {
        return Err(format!(
            "the model chose `{}`, which is not one of the agents that can take the task ({})",
            assignment.agent,
            candidates.join(", ")
        ));
    }
    Ok(assignment)
}

/// A failed task tried again on `agent`: a copy of it, pinned, checked as any task.
pub fn retry_on(plan: &Plan, task: &TaskRecord, agent: &str) -> Result<NewTask, String> {
    let input = TaskInput {
        key: Some(triage_key(task)),
        title: task.title.clone(),
        description: task.description.clone(),
        workstream: task.workstream.clone(),
        input: Some(task.input.clone()),
        requires: task.requires.clone(),
        agent: Some(agent.to_string()),
        priority: Some(task.priority),
        max_attempts: Some(task.max_attempts),
        estimated_tokens: task.estimated_tokens,
        ..TaskInput::default()
    };
    let new = task::new_task(input, plan.into()).map_err(|error| error.to_string())?;
    task::assignable(&new, &plan.agents).map_err(|who| format!("the retry cannot be assigned: {who}"))?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let text = r#"
[orchestration]
name = "t"
[[workstreams]]
name = "docs"
[[agents]]
name = "writer"
command = ["true"]
capabilities = ["write"]
[[agents]]
name = "reviewer"
command = ["true"]
capabilities = ["review"]
"#;
        crate::config::load("baton.toml", text, &Default::default()).unwrap()
    }

    #[test]
    fn keys_are_stable_and_valid() {
        let key = objective_key("docs", "Write the notes");
        assert_eq!(key, objective_key("docs", "  Write the notes\n"));
        assert_ne!(key, objective_key("docs", "Write other notes"));
        assert!(task::is_valid_key(&key) && task::is_valid_key(&format!("{key}.12")), "{key}");
    }

    #[test]
    fn a_proposal_becomes_keyed_tasks_with_their_dependencies() {
        let answer = "Here:\n```json\n{\"tasks\": [{\"key\": \"draft\", \"title\": \"Draft\", \"requires\": [\"write\"]}, {\"key\": \"review\", \"title\": \"Review\", \"requires\": [\"review\"], \"depends_on\": [\"draft\"], \"estimated_tokens\": 500}]}\n```";
        let proposed = parse_proposal(answer).unwrap();
        let tasks = proposal_tasks(&plan(), Some("docs"), "docs.objective-1", &proposed).unwrap();
        assert_eq!(tasks[0].key.as_deref(), Some("docs.objective-1.1"));
        assert_eq!(tasks[1].depends_on, vec![TaskRef::Key("docs.objective-1.1".into())]);
        assert_eq!(tasks[1].requires, vec!["review".to_string()]);
        assert_eq!(tasks[1].estimated_tokens, Some(500));
        assert_eq!(tasks[1].workstream.as_deref(), Some("docs"));
    }

    #[test]
    fn a_triage_is_retry_split_or_give_up() {
        assert_eq!(
            parse_triage("{\"action\": \"retry\", \"agent\": \"reviewer\", \"reason\": \"r\"}").unwrap(),
            Triage::Retry { agent: Some("reviewer".into()), reason: "r".into() }
        );
        assert!(matches!(parse_triage("{\"action\": \"give_up\", \"reason\": \"no\"}"), Ok(Triage::GiveUp { .. })));
        let split = "{\"action\": \"split\", \"reason\": \"big\", \"tasks\": [{\"key\": \"a\", \"title\": \"A\"}]}";
        assert!(matches!(parse_triage(split), Ok(Triage::Split { tasks, .. }) if tasks.len() == 1));
        assert!(parse_triage("{\"action\": \"pray\"}").unwrap_err().contains("not a triage"));
    }

    #[test]
    fn answers_that_are_not_proposals_are_refused_with_the_reason() {
        assert!(parse_proposal("sure, I will").unwrap_err().starts_with("invalid JSON"));
        assert!(parse_proposal("{\"tasks\": []}").unwrap_err().contains("no task"));
        assert!(parse_proposal("{\"steps\": []}").unwrap_err().contains("not a proposal"));
        let unknown =
            parse_proposal("{\"tasks\": [{\"key\": \"a\", \"title\": \"A\", \"requires\": [\"fly\"]}]}").unwrap();
        let error = proposal_tasks(&plan(), Some("docs"), "p", &unknown).unwrap_err();
        assert_eq!(error, "proposed task 1 `a` cannot be assigned: no agent of workstream `docs` or shared has [fly]");
        let empty = parse_proposal("{\"tasks\": [{\"key\": \"a\", \"title\": \"\"}]}").unwrap();
        assert!(proposal_tasks(&plan(), Some("docs"), "p", &empty).unwrap_err().contains("title"));
    }
}
