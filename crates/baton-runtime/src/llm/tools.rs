//! The tools an LLM agent is offered: Baton's own ([`BatonTools`], `baton/...`), which act
//! through the agent's requests to the engine, and those of an external [`ToolProvider`] (the
//! run's MCP servers), picked by the agent's `tools` globs ([`ToolSet`]).
//!
//! Tool names sent to the providers' APIs must match `^[a-zA-Z0-9_-]{1,64}$`: `server/tool`
//! becomes `server__tool` (other characters `_`, cut to 64, a suffix when two collide), and
//! the set maps the name the model calls back to the tool's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use baton_core::messages::{NewMessage, Recipient};
use baton_core::model::{TaskId, TaskRef};
use baton_core::task::TaskInput;

use super::wire::ApiTool;
use crate::agent::{AgentContext, AgentEvent, AgentRequest, RequestError};
use crate::tools::{Tool, ToolError, ToolProvider, ToolResult};

/// Baton's own tools for an agent working on a task: what a worker can ask over its protocol,
/// offered to a model.
pub struct BatonTools {
    pub context: AgentContext,
    pub agent: String,
    pub task: TaskId,
}

fn tool(name: &str, description: &str, input_schema: Value) -> Tool {
    Tool { name: format!("baton/{name}"), description: description.to_string(), input_schema }
}

/// The tools [`BatonTools`] provides.
pub fn baton_tools() -> Vec<Tool> {
    vec![
        tool(
            "create_tasks",
            "Create sub-tasks of the current task. Each task has a title, and may have a description, an input (any JSON), required capabilities (`requires`), an agent to pin it to, and dependencies (`depends_on`, task ids or keys). Returns the new tasks' ids.",
            json!({"type": "object", "properties": {"tasks": {"type": "array", "items": {"type": "object", "properties": {
                "title": {"type": "string"}, "description": {"type": "string"}, "key": {"type": "string"},
                "input": {}, "requires": {"type": "array", "items": {"type": "string"}},
                "agent": {"type": "string"}, "depends_on": {"type": "array", "items": {"type": ["integer", "string"]}}
            }, "required": ["title"]}}}, "required": ["tasks"]}),
        ),
        tool(
            "send_message",
            "Send a message to another agent (`to`), to every agent (`to` = \"*\") or to a topic (`topic`).",
            json!({"type": "object", "properties": {"to": {"type": "string"}, "topic": {"type": "string"},
                "body": {"type": "string"}, "data": {}}, "required": ["body"]}),
        ),
        tool(
            "acquire_resource",
            "Take a lease on a named resource (a file, a branch, a service) for `ttl_seconds` (default 300); refused while another agent holds it.",
            json!({"type": "object", "properties": {"resource": {"type": "string"}, "ttl_seconds": {"type": "integer", "minimum": 1}}, "required": ["resource"]}),
        ),
        tool(
            "release_resource",
            "Give back a lease taken with acquire_resource.",
            json!({"type": "object", "properties": {"resource": {"type": "string"}}, "required": ["resource"]}),
        ),
        tool(
            "report_progress",
            "Say how far the current task is: `fraction` between 0 and 1, and/or a short `message`.",
            json!({"type": "object", "properties": {"fraction": {"type": "number", "minimum": 0, "maximum": 1}, "message": {"type": "string"}}}),
        ),
        tool(
            "get_task",
            "Read a task by id: its state, input, result or error. You may read your own tasks, the tasks you created and the tasks your current task depends on.",
            json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}),
        ),
    ]
}

fn arguments<T: for<'de> Deserialize<'de>>(name: &str, value: Value) -> Result<T, ToolError> {
    serde_json::from_value(value).map_err(|error| ToolError::Invalid(format!("bad arguments for {name}: {error}")))
}

/// A refusal of the engine, for the model to act on.
fn refused(error: RequestError) -> ToolResult {
    ToolResult::text(format!("{}: {}", error.kind.as_str(), error.message), true)
}

fn structured(text: String, value: Value) -> ToolResult {
    ToolResult { content: vec![json!({"type": "text", "text": text})], structured: Some(value), is_error: false }
}

#[derive(Deserialize)]
struct CreateTasks {
    tasks: Vec<TaskInput>,
}

#[derive(Deserialize)]
struct SendMessage {
    to: Option<String>,
    topic: Option<String>,
    body: String,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct Acquire {
    resource: String,
    ttl_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct Release {
    resource: String,
}

#[derive(Deserialize)]
struct Progress {
    fraction: Option<f64>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct GetTask {
    id: i64,
}

#[async_trait]
impl ToolProvider for BatonTools {
    async fn list(&self) -> Vec<Tool> {
        baton_tools()
    }

    async fn call(&self, name: &str, args: Value) -> Result<ToolResult, ToolError> {
        let agent = self.agent.clone();
        let task = self.task;
        let answer = match name {
            "baton/create_tasks" => {
                let CreateTasks { tasks } = arguments(name, args)?;
                // A dependency's result reaches the dependent task's prompt: an agent may make its
                // tasks depend only on tasks it may read, or on others of the same batch.
                if let Some(refusal) = self.unreadable_dependency(&tasks).await {
                    return Ok(ToolResult::text(refusal, true));
                }
                match self
                    .context
                    .ask(|reply| AgentRequest::CreateTasks { agent, parent: Some(task), tasks, reply })
                    .await
                {
                    Ok(ids) => structured(format!("created tasks {ids:?}"), json!({"ids": ids})),
                    Err(error) => refused(error),
                }
            }
            "baton/send_message" => {
                let SendMessage { to, topic, body, data } = arguments(name, args)?;
                let recipient = match (to.as_deref(), topic) {
                    (_, Some(topic)) => Recipient::Topic(topic),
                    (Some("*"), None) => Recipient::Broadcast,
                    (Some(to), None) => Recipient::Agent(to.to_string()),
                    (None, None) => return Err(ToolError::Invalid("send_message needs `to` or `topic`".into())),
                };
                let message = NewMessage {
                    from: agent.clone(),
                    to: recipient,
                    body,
                    data,
                    task: Some(task),
                    correlation_id: None,
                };
                match self.context.ask(|reply| AgentRequest::SendMessage { agent, message, reply }).await {
                    Ok(id) => structured(format!("sent message {id}"), json!({"message_id": id})),
                    Err(error) => refused(error),
                }
            }
            "baton/acquire_resource" => {
                let Acquire { resource, ttl_seconds } = arguments(name, args)?;
                let ttl = Duration::from_secs(ttl_seconds.unwrap_or(300).max(1));
                match self.context.ask(|reply| AgentRequest::AcquireResource { agent, resource, ttl, reply }).await {
                    Ok(until) => structured(format!("held until {}", until.0), json!({"expires_at": until.0})),
                    Err(error) => refused(error),
                }
            }
            "baton/release_resource" => {
                let Release { resource } = arguments(name, args)?;
                match self.context.ask(|reply| AgentRequest::ReleaseResource { agent, resource, reply }).await {
                    Ok(()) => ToolResult::text("released", false),
                    Err(error) => refused(error),
                }
            }
            "baton/report_progress" => {
                let Progress { fraction, message } = arguments(name, args)?;
                if fraction.is_some_and(|fraction| !(0.0..=1.0).contains(&fraction)) {
                    return Err(ToolError::Invalid("`fraction` must be between 0 and 1".into()));
                }
                let _ = self.context.events.send(AgentEvent::Progress { agent, task, fraction, message });
                ToolResult::text("noted", false)
            }
            "baton/get_task" => {
                let GetTask { id } = arguments(name, args)?;
                let id = TaskId(id);
                match self.context.ask(|reply| AgentRequest::GetTask { agent, task: id, reply }).await {
                    Ok(record) if self.may_read(&record).await => {
                        let value = serde_json::to_value(&record).unwrap_or_default();
                        structured(value.to_string(), value)
                    }
                    // Said as for a task that is not there: which tasks exist is not its to know.
                    Ok(_) => refused(RequestError::invalid(format!("no task {id} in this run"))),
                    Err(error) => refused(error),
                }
            }
            other => return Err(ToolError::NotFound(other.to_string())),
        };
        Ok(answer)
    }
}

impl BatonTools {
    /// Why a batch the agent creates may not be made: a dependency on a task it may not read
    /// (by id), or on a key that is not one of the batch's; `None` when every one is allowed.
    async fn unreadable_dependency(&self, tasks: &[TaskInput]) -> Option<String> {
        let keys: Vec<&str> = tasks.iter().filter_map(|task| task.key.as_deref()).collect();
        for dependency in tasks.iter().flat_map(|task| &task.depends_on) {
            let allowed = match dependency {
                TaskRef::Key(key) => keys.contains(&key.as_str()),
                TaskRef::Id(id) => {
                    let agent = self.agent.clone();
                    let asked = self.context.ask(|reply| AgentRequest::GetTask { agent, task: *id, reply }).await;
                    match asked {
                        Ok(record) => self.may_read(&record).await,
                        Err(_) => false,
                    }
                }
            };
            if !allowed {
                let named = match dependency {
                    TaskRef::Id(id) => format!("task {id}"),
                    TaskRef::Key(key) => format!("`{key}`"),
                };
                return Some(format!(
                    "refused: a task you create may depend on {named} only if you may read it (your own tasks, those you created, those your current task depends on) or if it is another task of this batch, by key"
                ));
            }
        }
        None
    }

    /// Whether the agent may read `record` with `baton/get_task`: as an `agent`-role API token
    /// reads only its own tasks, an LLM agent reads its own tasks (those it runs or ran), the
    /// tasks it created (whose parent is one of its tasks) and those its current task depends
    /// on.
    async fn may_read(&self, record: &baton_core::model::TaskRecord) -> bool {
        if record.id == self.task || record.assigned_agent.as_deref() == Some(self.agent.as_str()) {
            return true;
        }
        if record.parent == Some(self.task) {
            return true;
        }
        let mut asked = vec![self.task];
        asked.extend(record.parent);
        for id in asked {
            let agent = self.agent.clone();
            let Ok(known) = self.context.ask(|reply| AgentRequest::GetTask { agent, task: id, reply }).await else {
                continue;
            };
            let current_depends_on_it = known.id == self.task && known.depends_on.contains(&record.id);
            let created_by_it =
                Some(known.id) == record.parent && known.assigned_agent.as_deref() == Some(self.agent.as_str());
            if current_depends_on_it || created_by_it {
                return true;
            }
        }
        false
    }
}

/// The tools one attempt is offered, under the names the API knows them by.
pub(crate) struct ToolSet {
    providers: Vec<Arc<dyn ToolProvider>>,
    /// API name → (tool name, index of its provider).
    by_api_name: HashMap<String, (String, usize)>,
    pub offered: Vec<ApiTool>,
}

/// `server/tool` as an API accepts it: `[a-zA-Z0-9_-]{1,64}`.
pub(crate) fn api_name(name: &str) -> String {
    let mapped: String = name
        .replace('/', "__")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(64)
        .collect();
    if mapped.is_empty() { "tool".to_string() } else { mapped }
}

impl ToolSet {
    /// The tools of `providers` that `globs` pick (`crate::tools::allowed`), in the providers'
    /// order.
    pub(crate) async fn new(providers: Vec<Arc<dyn ToolProvider>>, globs: &[String]) -> ToolSet {
        let mut by_api_name = HashMap::new();
        let mut offered = Vec::new();
        for (idx, provider) in providers.iter().enumerate() {
            for tool in provider.list().await {
                if !crate::tools::allowed(globs, &tool.name) {
                    continue;
                }
                let base = api_name(&tool.name);
                let mut candidate = base.clone();
                let mut n = 2;
                while by_api_name.contains_key(&candidate) {
                    let suffix = format!("_{n}");
                    candidate = format!("{}{suffix}", &base[..base.len().min(64 - suffix.len())]);
                    n += 1;
                }
                by_api_name.insert(candidate.clone(), (tool.name.clone(), idx));
                offered.push(ApiTool {
                    api_name: candidate,
                    description: tool.description,
                    input_schema: tool.input_schema,
                });
            }
        }
        ToolSet { providers, by_api_name, offered }
    }

    /// The tool's own name (`server/tool`) for the name the model called.
    pub(crate) fn name_of(&self, api_name: &str) -> Option<&str> {
        self.by_api_name.get(api_name).map(|(name, _)| name.as_str())
    }

    /// Calls a tool by the name the model used. A call that cannot be made is an error result
    /// for the model, not an error of the attempt.
    pub(crate) async fn call(&self, api_name: &str, arguments: Value) -> ToolResult {
        let Some((name, idx)) = self.by_api_name.get(api_name) else {
            return ToolResult::text(format!("no tool `{api_name}` is offered to this agent"), true);
        };
        match self.providers[*idx].call(name, arguments).await {
            Ok(result) => result,
            Err(error) => ToolResult::text(error.to_string(), true),
        }
    }
}

/// A tool's result as text for the model: its text blocks, else its JSON.
pub(crate) fn result_text(result: &ToolResult) -> String {
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter(|block| block["type"] == "text")
        .filter_map(|block| block["text"].as_str())
        .collect();
    if texts.len() == result.content.len() && !texts.is_empty() {
        texts.join("\n")
    } else if let Some(structured) = &result.structured {
        structured.to_string()
    } else {
        Value::Array(result.content.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<&'static str>);

    #[async_trait]
    impl ToolProvider for Fixed {
        async fn list(&self) -> Vec<Tool> {
            self.0
                .iter()
                .map(|name| Tool { name: name.to_string(), description: String::new(), input_schema: json!({}) })
                .collect()
        }

        async fn call(&self, name: &str, _arguments: Value) -> Result<ToolResult, ToolError> {
            Ok(ToolResult::text(format!("called {name}"), false))
        }
    }

    #[tokio::test]
    async fn globs_pick_tools_and_names_map_both_ways() {
        let external = Arc::new(Fixed(vec!["github/create_pr", "github/list.issues", "fs/read", "git_hub/create_pr"]));
        let providers: Vec<Arc<dyn ToolProvider>> = vec![external, Arc::new(Fixed(vec!["github__create/pr"]))];
        let set = ToolSet::new(providers, &["github/*".into(), "git_hub/*".into(), "github__create/*".into()]).await;
        let names: Vec<&str> = set.offered.iter().map(|tool| tool.api_name.as_str()).collect();
        assert_eq!(names, ["github__create_pr", "github__list_issues", "git_hub__create_pr", "github__create__pr"]);
        assert_eq!(set.name_of("github__list_issues"), Some("github/list.issues"));
        assert_eq!(result_text(&set.call("github__create__pr", json!({})).await), "called github__create/pr");
        assert!(set.call("fs__read", json!({})).await.is_error, "not offered");
        let long = api_name(&format!("s/{}", "x".repeat(100)));
        assert_eq!(long.len(), 64);
        let regex = regex::Regex::new("^[a-zA-Z0-9_-]{1,64}$").unwrap();
        for name in ["a/b c", "ü/é", "", "x/y.z"] {
            assert!(regex.is_match(&api_name(name)), "{name}");
        }
    }
}
