//! Agent-to-agent messages: who a message goes to, `@mentions` in chat text, and when an
//! unacknowledged message is tried again.
//!
//! A message is addressed to one agent, to every agent (broadcast) or to a topic. It is stored,
//! delivered to each recipient (a worker acknowledges it by answering `message/deliver`),
//! redelivered with exponential backoff while unacknowledged, and dead-lettered after
//! [`MAX_DELIVERY_ATTEMPTS`] tries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::TaskId;
use crate::time::Timestamp;

/// Tries before a message is dead-lettered.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 5;

/// Pending messages one agent may have; one more is refused to its sender.
pub const INBOX_LIMIT: u64 = 1_000;

/// The sender of messages that come from a person (`baton send`).
pub const OPERATOR: &str = "operator";

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Recipient {
    Agent(String),
    Broadcast,
    Topic(String),
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    pub from: String,
    pub to: Recipient,
    pub body: String,
    #[serde(default)]
    pub data: serde_json::Value,
    pub task: Option<TaskId>,
    /// Set on a reply: the id (or correlation id) of the message it answers.
    pub correlation_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Acked,
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Acked => "acked",
            DeliveryState::Dead => "dead",
        }
    }
}

/// One message for one recipient, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    pub message_id: String,
    pub from: String,
    pub to: String,
    pub topic: Option<String>,
    pub body: String,
    pub data: serde_json::Value,
    pub task: Option<TaskId>,
    pub correlation_id: Option<String>,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub created_at: Timestamp,
    pub error: Option<String>,
    /// When it was acknowledged; `None` while pending, when dead, or for a delivery stored by
    /// a baton that did not record it.
    #[serde(default)]
    pub acked_at: Option<Timestamp>,
}

/// When an unacknowledged delivery is tried again: 1 s, 2 s, 4 s… up to a minute.
pub fn redelivery_delay(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(6);
    Duration::from_secs(1u64 << exponent).min(Duration::from_secs(60))
}

/// Where a topic message that no agent follows yet is held: a pending delivery to `#TOPIC`
/// (no agent has that name: names are letters, digits, `-`, `_` and `.`), handed over to the
/// first agent that follows the topic. Held messages count against the topic's own inbox limit.
pub fn topic_holder(topic: &str) -> String {
    format!("#{topic}")
}

/// The agents a message reaches, given the agents there are and the topics they follow.
pub fn recipients(to: &Recipient, from: &str, agents: &[(String, Vec<String>)]) -> Vec<String> {
    match to {
        Recipient::Agent(name) => vec![name.clone()],
        Recipient::Broadcast => agents.iter().map(|(name, _)| name.clone()).filter(|name| name != from).collect(),
        Recipient::Topic(topic) => agents
            .iter()
            .filter(|(name, topics)| name != from && topics.iter().any(|followed| followed == topic))
            .map(|(name, _)| name.clone())
            .collect(),
    }
}

/// The `@name` mentions in chat text, in order, without repeats.
pub fn mentions(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let Some(name) = word.strip_prefix('@') else { continue };
        let name: String =
            name.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
        let name = name.trim_end_matches('.').to_string();
        if !name.is_empty() && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

/// Checks mentions against the known agents: an unknown name is an error naming the closest
/// matches.
pub fn resolve_mentions(text: &str, known: &[&str]) -> Result<Vec<String>, String> {
    let names = mentions(text);
    if names.is_empty() {
        return Err("the message mentions nobody: address agents with @name".into());
    }
    for name in &names {
        if known.contains(&name.as_str()) {
            continue;
        }
        let mut close: Vec<(f64, &str)> = known
            .iter()
            .map(|candidate| (strsim::jaro_winkler(name, candidate), *candidate))
            .filter(|(score, _)| *score > 0.7)
            .collect();
        close.sort_by(|a, b| b.0.total_cmp(&a.0));
        let hint = if close.is_empty() {
            format!("known: {}", known.join(", "))
        } else {
            format!(
                "closest: {}",
                close.iter().take(3).map(|(_, name)| format!("@{name}")).collect::<Vec<_>>().join(", ")
            )
        };
        return Err(format!("no agent @{name} ({hint})"));
    }
    Ok(names)
}

/// Whether a chat message reaches `agent` as a stored message (a worker, which takes messages
/// while it runs) rather than as a task of its own (an agent that runs once per task).
pub fn takes_messages(agent: &crate::config::AgentSpec) -> bool {
    agent.is_worker()
}

/// The task a chat message becomes for an agent that runs once per task: pinned to it, in its
/// workstream, at its priority, with the message (and who sent it) as its input. Its key,
/// `chat-AGENT-ID`, carries the message's own id (unique per message, from the caller: the core
/// makes no ids), so two messages to one agent are two tasks, even in the same millisecond.
/// Checked and given the other defaults by [`crate::task::new_task`].
pub fn chat_task(
    agent: &crate::config::AgentSpec,
    from: &str,
    text: &str,
    data: &serde_json::Value,
    message_id: &str,
) -> crate::task::TaskInput {
    crate::task::TaskInput {
        key: Some(chat_key(&agent.name, message_id)),
        workstream: agent.workstream.clone(),
        title: text.chars().take(60).collect(),
        description: text.to_string(),
        input: Some(serde_json::json!({ "from": from, "message": text, "data": data })),
        agent: Some(agent.name.clone()),
        priority: Some(agent.priority),
        ..crate::task::TaskInput::default()
    }
}

/// The key of the task the chat message `message_id` becomes for `agent`.
pub fn chat_key(agent: &str, message_id: &str) -> String {
    format!("chat-{agent}-{message_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_found_in_order_once() {
        assert_eq!(
            mentions("@reviewer @tester please look at the storage change, @reviewer."),
            vec!["reviewer".to_string(), "tester".to_string()]
        );
        assert!(mentions("no one here, email me@example.com").is_empty());
    }

    #[test]
    fn unknown_mentions_name_the_closest_agents() {
        let known = ["reviewer", "tester", "builder"];
        assert_eq!(resolve_mentions("@reviewer hi", &known).unwrap(), vec!["reviewer".to_string()]);
        assert_eq!(resolve_mentions("@reviwer hi", &known).unwrap_err(), "no agent @reviwer (closest: @reviewer)");
        assert_eq!(
            resolve_mentions("@zzz hi", &known).unwrap_err(),
            "no agent @zzz (known: reviewer, tester, builder)"
        );
        assert!(resolve_mentions("hello", &known).is_err());
    }

    #[test]
    fn recipients_of_each_kind() {
        let agents = vec![
            ("a".to_string(), vec!["builds".to_string()]),
            ("b".to_string(), vec![]),
            ("c".to_string(), vec!["builds".to_string()]),
        ];
        assert_eq!(recipients(&Recipient::Agent("b".into()), "a", &agents), vec!["b"]);
        assert_eq!(recipients(&Recipient::Broadcast, "a", &agents), vec!["b", "c"]);
        assert_eq!(recipients(&Recipient::Topic("builds".into()), "a", &agents), vec!["c"]);
    }

    #[test]
    fn redelivery_backs_off_to_a_minute() {
        assert_eq!(redelivery_delay(1), Duration::from_secs(1));
        assert_eq!(redelivery_delay(3), Duration::from_secs(4));
        assert_eq!(redelivery_delay(20), Duration::from_secs(60));
    }
}
