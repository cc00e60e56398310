//! A Baton attempt as an A2A message, and what comes back (a task, its status and artifact
//! updates, or a message) as the attempt's outcome.

use serde_json::{Value, json};

use baton_core::Outcome;
use baton_core::model::TaskId;

use crate::agent::{AgentContext, AgentEvent, Attempt};

/// The `SendMessage` parameters for an attempt: the title and description as text, the input
/// as data (when there is any); the message id names the run, task and attempt, so that a
/// retried call is the same message.
pub fn message_params(attempt: &Attempt) -> Value {
    let task = &attempt.task;
    let text = if task.description.is_empty() {
        task.title.clone()
    } else {
        format!("{}\n\n{}", task.title, task.description)
    };
    let mut parts = vec![json!({ "text": text })];
    let empty = task.input.is_null() || task.input == json!({});
    if !empty {
        parts.push(json!({ "data": task.input, "mediaType": "application/json" }));
    }
    json!({
        "message": {
            "messageId": format!("baton-{}-{}-{}", attempt.run_id, task.id, attempt.number()),
            "role": "ROLE_USER",
            "parts": parts,
        },
        "metadata": { "baton": { "run": attempt.run_id, "task": task.id, "attempt": attempt.number() } },
    })
}

/// A remote task's state, as far as Baton distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    Working,
    Completed,
    Failed,
    Canceled,
    Rejected,
    /// The remote waits for input or authorization Baton cannot give.
    Interrupted,
}

impl RemoteState {
    fn parse(state: &str) -> RemoteState {
        match state {
            "TASK_STATE_COMPLETED" => RemoteState::Completed,
            "TASK_STATE_FAILED" => RemoteState::Failed,
            "TASK_STATE_CANCELED" => RemoteState::Canceled,
            "TASK_STATE_REJECTED" => RemoteState::Rejected,
            "TASK_STATE_INPUT_REQUIRED" | "TASK_STATE_AUTH_REQUIRED" => RemoteState::Interrupted,
            _ => RemoteState::Working,
        }
    }

    /// Whether the attempt ends here: the remote task ended, or waits for what Baton cannot
    /// give.
    pub fn is_final(self) -> bool {
        self != RemoteState::Working
    }
}

/// What is known of the remote task so far.
#[derive(Debug, Default)]
pub struct Followed {
    pub task_id: Option<String>,
    pub state: Option<RemoteState>,
    /// The text of the latest status message.
    status_text: Option<String>,
    /// Artifacts by id, in the order they came, parts appended.
    artifacts: Vec<(String, Vec<Value>)>,
    /// The answer when the remote answered with a message instead of a task.
    message: Option<Vec<Value>>,
    /// The usage last reported, not to report it twice.
    usage: Option<Value>,
    baton_task: Option<TaskId>,
}

impl Followed {
    pub fn new(task: TaskId) -> Followed {
        Followed { baton_task: Some(task), ..Followed::default() }
    }

    /// Takes one `SendMessageResponse` or `StreamResponse`.
    pub fn take(&mut self, result: &Value, reporter: Option<(String, AgentContext)>) {
        if let Some(task) = result.get("task") {
            self.take_task(task, reporter.as_ref());
        } else if let Some(update) = result.get("statusUpdate") {
            self.take_status(update, reporter.as_ref(), true);
            self.take_usage(update.get("metadata"), reporter.as_ref());
        } else if let Some(update) = result.get("artifactUpdate") {
            let append = update.get("append").and_then(Value::as_bool) == Some(true);
            if let Some(artifact) = update.get("artifact") {
                self.take_artifact(artifact, append);
            }
        } else if let Some(message) = result.get("message") {
            self.message = Some(message.get("parts").and_then(Value::as_array).cloned().unwrap_or_default());
            self.state = Some(RemoteState::Completed);
        }
    }

    fn take_task(&mut self, task: &Value, reporter: Option<&(String, AgentContext)>) {
        if let Some(id) = task.get("id").and_then(Value::as_str) {
            self.task_id = Some(id.to_string());
        }
        if let Some(artifacts) = task.get("artifacts").and_then(Value::as_array) {
            // A whole task: its artifacts as they are now.
            self.artifacts.clear();
            for artifact in artifacts {
                self.take_artifact(artifact, false);
            }
        }
        self.take_status(task, reporter, false);
        self.take_usage(task.get("metadata"), reporter);
    }

    fn take_status(&mut self, holder: &Value, reporter: Option<&(String, AgentContext)>, is_update: bool) {
        if let Some(id) = holder.get("taskId").and_then(Value::as_str) {
            self.task_id.get_or_insert_with(|| id.to_string());
        }
        let Some(status) = holder.get("status") else { return };
        let state = RemoteState::parse(status.get("state").and_then(Value::as_str).unwrap_or(""));
        self.state = Some(state);
        let text = status.get("message").map(message_text).filter(|text| !text.is_empty());
        if let Some(text) = &text
            && is_update
            && state == RemoteState::Working
            && let Some(task) = self.baton_task
        {
            super::report(reporter, |agent| AgentEvent::Progress {
                agent,
                task,
                fraction: None,
                message: Some(text.clone()),
            });
        }
        if text.is_some() {
            self.status_text = text;
        }
    }

    fn take_artifact(&mut self, artifact: &Value, append: bool) {
        let id = artifact.get("artifactId").and_then(Value::as_str).unwrap_or("").to_string();
        let parts = artifact.get("parts").and_then(Value::as_array).cloned().unwrap_or_default();
        match self.artifacts.iter_mut().find(|(known, _)| *known == id) {
            Some((_, known)) if append => known.extend(parts),
            Some((_, known)) => *known = parts,
            None => self.artifacts.push((id, parts)),
        }
    }

    /// Usage the remote reports in `metadata.usage` (`{"input_tokens", "output_tokens"}`, as
    /// Baton's own reports), sent to the engine once per change.
    fn take_usage(&mut self, metadata: Option<&Value>, reporter: Option<&(String, AgentContext)>) {
        let Some(usage) = metadata.and_then(|metadata| metadata.get("usage")).filter(|usage| usage.is_object()) else {
            return;
        };
        if self.usage.as_ref() == Some(usage) {
            return;
        }
        self.usage = Some(usage.clone());
        let usage = &whole_numbers(usage);
        let task = self.baton_task;
        super::report(reporter, |agent| AgentEvent::Usage { agent, task, usage: usage.clone() });
    }

    /// The attempt's outcome: a completed task's artifacts (one part as it is, text or data;
    /// several as a list) or the answer message; a failed, rejected, cancelled or interrupted
    /// one is a failure with the remote's own words.
    pub fn outcome(&self) -> Outcome {
        let said = self.status_text.clone().unwrap_or_default();
        let because = |what: &str| {
            if said.is_empty() { what.to_string() } else { format!("{what}: {said}") }
        };
        match self.state {
            Some(RemoteState::Completed) => {
                let parts: Vec<Value> = match &self.message {
                    Some(parts) => parts.clone(),
                    None => self.artifacts.iter().flat_map(|(_, parts)| parts.clone()).collect(),
                };
                let mut values: Vec<Value> = parts.iter().map(part_value).collect();
                let result = match values.len() {
                    0 => Value::String(said),
                    1 => values.remove(0),
                    _ => Value::Array(values),
                };
                Outcome::Succeeded { result }
            }
            Some(RemoteState::Failed) => Outcome::Failed { reason: because("the remote agent failed the task") },
            Some(RemoteState::Rejected) => Outcome::Failed { reason: because("the remote agent rejected the task") },
            Some(RemoteState::Canceled) => Outcome::Failed { reason: because("the remote agent canceled the task") },
            Some(RemoteState::Interrupted) => Outcome::Failed {
                reason: because("the remote agent asks for input or authorization, which Baton cannot give"),
            },
            Some(RemoteState::Working) | None => {
                Outcome::Failed { reason: "the remote agent stopped answering before the task ended".into() }
            }
        }
    }
}

/// `value` with its whole floating-point numbers as integers: a protobuf `Struct` (what A2A
/// metadata is) holds every number as a double, and token counts are whole.
fn whole_numbers(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            Value::Object(fields.iter().map(|(key, value)| (key.clone(), whole_numbers(value))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(whole_numbers).collect()),
        Value::Number(number) => match number.as_f64() {
            Some(float) if number.is_f64() && float.fract() == 0.0 && (0.0..9.0e15).contains(&float) => {
                json!(float as u64)
            }
            _ => value.clone(),
        },
        other => other.clone(),
    }
}

/// A part as a value: its text, its data, or the part itself (a file).
fn part_value(part: &Value) -> Value {
    if let Some(text) = part.get("text") {
        return text.clone();
    }
    if let Some(data) = part.get("data") {
        return data.clone();
    }
    part.clone()
}

/// The text of a message's text parts.
fn message_text(message: &Value) -> String {
    let parts = message.get("parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followed(results: &[Value]) -> Followed {
        let mut followed = Followed::new(TaskId(1));
        for result in results {
            followed.take(result, None);
        }
        followed
    }

    #[test]
    fn a_stream_ends_in_the_artifact() {
        let followed = followed(&[
            json!({"task": {"id": "r1", "status": {"state": "TASK_STATE_SUBMITTED"}}}),
            json!({"statusUpdate": {"taskId": "r1", "status": {"state": "TASK_STATE_WORKING"}}}),
            json!({"artifactUpdate": {"taskId": "r1", "artifact": {"artifactId": "a", "parts": [{"data": {"n": 1}}]}}}),
            json!({"statusUpdate": {"taskId": "r1", "status": {"state": "TASK_STATE_COMPLETED"}}}),
        ]);
        assert_eq!(followed.task_id.as_deref(), Some("r1"));
        assert_eq!(followed.outcome(), Outcome::Succeeded { result: json!({"n": 1}) });
    }

    #[test]
    fn failures_keep_the_remotes_words() {
        let failed = followed(&[json!({"task": {"id": "r", "status": {"state": "TASK_STATE_FAILED",
            "message": {"role": "ROLE_AGENT", "parts": [{"text": "no disk"}]}}}})]);
        assert_eq!(failed.outcome(), Outcome::Failed { reason: "the remote agent failed the task: no disk".into() });
        let asked = followed(&[json!({"task": {"id": "r", "status": {"state": "TASK_STATE_INPUT_REQUIRED"}}})]);
        assert!(matches!(asked.outcome(), Outcome::Failed { reason } if reason.contains("asks for input")));
        let message = followed(&[json!({"message": {"role": "ROLE_AGENT", "parts": [{"text": "hi"}]}})]);
        assert_eq!(message.outcome(), Outcome::Succeeded { result: json!("hi") });
    }
}
