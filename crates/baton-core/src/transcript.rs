//! The transcript of an LLM agent's attempt: the system prompt, the messages, the tool calls
//! and their results, and the usage of each turn, in order. Kept by the store, shown by
//! `baton task show`, `baton logs` and `GET /tasks/{id}/transcript`.
//!
//! Its JSON is plain on purpose (the dashboard reads it as is):
//! `{"attempt": 1, "role": "system"|"user"|"assistant"|"tool", "content": …, "tool_calls":
//! [{"id", "name", "arguments"}], "tool_call_id": …, "usage": {…}, "at": ms}`; keys without a
//! value are left out.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Who speaks in an [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The agent's brief (role, objectives, runbook), as the model was told it.
    System,
    /// The task, as the model was handed it.
    User,
    /// What the model answered: text and the tools it called.
    Assistant,
    /// What a tool returned.
    Tool,
}

/// A tool the model called, with the tool's Baton name (`server/tool`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// One entry of a transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    /// The attempt of the task it belongs to (set by the store).
    #[serde(default)]
    pub attempt: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub role: Role,
    /// Text (system, user, assistant), or a tool's content blocks.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub content: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool's entry: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For an assistant's entry: the turn's tokens and cost, as reported to the budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub usage: Option<serde_json::Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub at: Timestamp,
}

impl Entry {
    pub fn new(role: Role, content: impl Into<serde_json::Value>, at: Timestamp) -> Entry {
        Entry { attempt: 0, role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None, usage: None, at }
    }
}

/// Entries as lines for a person (`baton task show`, an LLM agent's log): the role, the
/// text (long texts cut), the tools called, a turn's tokens and cost.
pub fn render(entries: &[Entry]) -> String {
    let mut out = String::new();
    let mut attempt = None;
    for entry in entries {
        if attempt != Some(entry.attempt) {
            attempt = Some(entry.attempt);
            out.push_str(&format!("--- attempt {} ---\n", entry.attempt));
        }
        let role = match (entry.role, &entry.tool_call_id) {
            (Role::Tool, Some(id)) => format!("tool {id}"),
            (role, _) => format!("{role:?}").to_lowercase(),
        };
        let text = match &entry.content {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Array(blocks) => blocks
                .iter()
                .map(|block| block["text"].as_str().map_or_else(|| block.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        out.push_str(&format!("[{role}] {}\n", cut(&text, 2000)));
        for call in &entry.tool_calls {
            out.push_str(&format!("  -> {} {}\n", call.name, cut(&call.arguments.to_string(), 500)));
        }
        if let Some(usage) = &entry.usage {
            let count = |key: &str| usage[key].as_u64().unwrap_or(0);
            out.push_str(&format!(
                "  (tokens: {} in, {} out, {} cache read, {} cache write; ${:.6})\n",
                count("input_tokens"),
                count("output_tokens"),
                count("cache_read_input_tokens"),
                count("cache_creation_input_tokens"),
                usage["cost_usd"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    out
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((idx, _)) => format!("{}… ({} more bytes)", &text[..idx], text.len() - idx),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_shows_only_what_it_has() {
        let mut entry = Entry::new(Role::Assistant, "hi", Timestamp(5));
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            serde_json::json!({"attempt": 0, "role": "assistant", "content": "hi", "at": 5})
        );
        entry.tool_calls.push(ToolCall {
            id: "t1".into(),
            name: "baton/get_task".into(),
            arguments: serde_json::json!({"id": 1}),
        });
        let back: Entry = serde_json::from_value(serde_json::to_value(&entry).unwrap()).unwrap();
        assert_eq!(back, entry);
        entry.usage = Some(serde_json::json!({"input_tokens": 3, "output_tokens": 4, "cost_usd": 0.5}));
        let mut tool = Entry::new(Role::Tool, serde_json::json!([{"type": "text", "text": "done"}]), Timestamp(6));
        tool.tool_call_id = Some("t1".into());
        assert_eq!(
            render(&[entry, tool]),
            "--- attempt 0 ---\n[assistant] hi\n  -> baton/get_task {\"id\":1}\n  (tokens: 3 in, 4 out, 0 cache read, 0 cache write; $0.500000)\n[tool t1] done\n"
        );
    }
}
