//! Chat with the agents (a message to each agent it @mentions) and the messages with their
//! delivery state. A worker agent gets a durable message (delivered, acknowledged,
//! redelivered by the post office); an agent that runs once per task (per-task, terminal,
//! remote) gets a task pinned to it whose input is the message.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::messages::{NewMessage, OPERATOR, Recipient, chat_task, resolve_mentions, takes_messages};
use baton_core::model::TaskId;
use baton_runtime::agent::{AgentRequest, RequestErrorKind};

use crate::{Action, Caller, Error, Grant, Ops, Result, own_only, page_limit};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// The message, with `@name` mentions: "@reviewer please look at the storage change".
    pub text: String,
    /// JSON sent along.
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sent {
    pub agent: String,
    /// For a worker agent: the stored message's id.
    pub message_id: Option<String>,
    /// For an agent that runs once per task: the task made of the message.
    #[schema(value_type = Option<i64>)]
    pub task: Option<TaskId>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatResult {
    pub sent: Vec<Sent>,
}

/// Serialized as the query string a client sends (absent fields left out).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MessageQuery {
    /// Only messages to or from this agent.
    pub agent: Option<String>,
    /// The latest this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// Which dead letters to deliver again: give exactly one of the two.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverInput {
    /// These deliveries (the `id`s of `GET /messages`); those that are not dead are left alone.
    pub ids: Option<Vec<i64>>,
    /// Every dead letter of the run.
    #[serde(default)]
    pub dead: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Redelivered {
    /// The deliveries that were dead and are pending again, due now.
    pub redelivered: Vec<i64>,
}

impl Ops {
    /// Delivers dead letters again, with a fresh count of tries.
    pub async fn redeliver(&self, caller: &Caller, input: RedeliverInput) -> Result<Redelivered> {
        caller.require(Action::ControlMessages)?;
        let ids = match (input.ids, input.dead) {
            (Some(_), true) => return Err(Error::invalid("give `ids` or `dead`, not both")),
            (None, false) => {
                return Err(Error::invalid(
                    "give `ids` (the deliveries to redeliver) or `\"dead\": true` (every dead letter)",
                ));
            }
            (Some(ids), false) if ids.is_empty() => return Err(Error::invalid("`ids` is empty")),
            (Some(ids), false) if ids.len() > 1000 => {
                return Err(Error::invalid("at most 1000 `ids` at once; `\"dead\": true` takes them all"));
            }
            (ids, _) => ids,
        };
        let redelivered = self.engine()?.redeliver(ids).await?;
        Ok(Redelivered { redelivered })
    }

    /// Sends a chat message to each agent it mentions. An agent token sends as its agent;
    /// everyone else as the operator.
    pub async fn chat(&self, caller: &Caller, message: ChatMessage) -> Result<ChatResult> {
        let from = match caller.require(Action::SendMessages)? {
            Grant::Own => caller.own_agent()?.to_string(),
            _ => OPERATOR.to_string(),
        };
        let engine = self.engine()?;
        let plan = self.plan();
        let known: Vec<&str> = plan.agents.iter().map(|agent| agent.name.as_str()).collect();
        let names = resolve_mentions(&message.text, &known).map_err(Error::invalid)?;
        let data = message.data.unwrap_or(serde_json::Value::Null);
        let mut sent = Vec::new();
        for name in names {
            let spec = plan.agent(&name).ok_or_else(|| Error::not_found(format!("no agent `{name}` in this run")))?;
            if takes_messages(spec) {
                let new_message = NewMessage {
                    from: from.clone(),
                    to: Recipient::Agent(name.clone()),
                    body: message.text.clone(),
                    data: data.clone(),
                    task: None,
                    correlation_id: None,
                };
                let sent_by = from.clone();
                let id = engine
                    .ask(|reply| AgentRequest::SendMessage { agent: sent_by, message: new_message, reply })
                    .await
                    .map_err(|error| match error.kind {
                        RequestErrorKind::Unavailable => Error::unavailable(error.message),
                        RequestErrorKind::Full => Error::full(error.message),
                        // A message that reaches nobody is a bad request.
                        _ => Error::invalid(error.message),
                    })?;
                sent.push(Sent { agent: name, message_id: Some(id), task: None });
            } else {
                let input = chat_task(spec, &from, &message.text, &data, &uuid::Uuid::now_v7().simple().to_string());
                let task = baton_core::task::new_task(input, (&*plan).into())?;
                let ids = engine.create_tasks(vec![task]).await?;
                sent.push(Sent { agent: name, message_id: None, task: ids.first().copied() });
            }
        }
        Ok(ChatResult { sent })
    }

    /// Messages and their delivery state, oldest first. An agent token reads the messages to
    /// or from its agent.
    pub async fn messages(&self, caller: &Caller, query: MessageQuery) -> Result<Vec<baton_core::messages::Delivery>> {
        let agent = match caller.require(Action::ReadMessages)? {
            Grant::Own => Some(own_only(caller, query.agent.as_deref(), "messages")?),
            _ => query.agent,
        };
        let limit = page_limit(query.limit, 100)?;
        Ok(self.store().deliveries(self.run_id(), agent.as_deref(), limit).await?)
    }
}
