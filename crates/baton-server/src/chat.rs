//! Chat with the agents: `POST /messages` (and chat messages on `/ws`) with `@name` mentions,
//! and `GET /messages`. A worker agent gets a durable message (delivered, acknowledged,
//! redelivered by the post office); an agent that runs once per task (per-task, terminal,
//! remote) gets a task pinned to it whose input is the message — as `baton send` does.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::messages::{NewMessage, OPERATOR, Recipient, chat_task, resolve_mentions, takes_messages};
use baton_core::model::TaskId;
use baton_runtime::agent::{AgentRequest, RequestErrorKind};

use crate::api::{Body, Params};
use crate::auth::{Action, Caller, Grant};
use crate::{ApiError, AppState, json};

pub fn routes() -> Router<AppState> {
    Router::new().route("/messages", get(list).post(send))
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
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

/// Sends a chat message to each agent it mentions.
pub async fn chat(state: &AppState, caller: &Caller, message: ChatMessage) -> Result<ChatResult, ApiError> {
    // An agent token sends as its agent (`Grant::Own`); everyone else as the operator.
    let from = match caller.require(Action::SendMessages)? {
        Grant::Own => caller.own_agent()?.to_string(),
        _ => OPERATOR.to_string(),
    };
    let plan = state.plan();
    let known: Vec<&str> = plan.agents.iter().map(|agent| agent.name.as_str()).collect();
    let names = resolve_mentions(&message.text, &known).map_err(ApiError::bad_request)?;
    let data = message.data.unwrap_or(serde_json::Value::Null);
    let mut sent = Vec::new();
    for name in names {
        let spec = plan.agent(&name).ok_or_else(|| ApiError::not_found(format!("no agent `{name}` in this run")))?;
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
            let id = state
                .engine()
                .ask(|reply| AgentRequest::SendMessage { agent: sent_by, message: new_message, reply })
                .await
                .map_err(|error| match error.kind {
                    // As it always was: a message that reaches nobody is a bad request.
                    RequestErrorKind::Unavailable => ApiError::unavailable(error.message),
                    _ => ApiError::bad_request(error.message),
                })?;
            sent.push(Sent { agent: name, message_id: Some(id), task: None });
        } else {
            let input = chat_task(spec, &from, &message.text, &data, &uuid::Uuid::now_v7().simple().to_string());
            let task = baton_core::task::new_task(input, (&*plan).into())
                .map_err(|error| ApiError::bad_request(error.to_string()))?;
            let ids = state.engine().create_tasks(vec![task]).await?;
            sent.push(Sent { agent: name, message_id: None, task: ids.first().copied() });
        }
    }
    Ok(ChatResult { sent })
}

/// Chat: a message to each agent it @mentions.
#[utoipa::path(post, path = "/messages", tag = "messages", request_body = ChatMessage,
    responses((status = 201, body = ChatResult), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn send(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(message): Body<ChatMessage>,
) -> Result<Response, ApiError> {
    let result = chat(&state, &caller, message).await?;
    Ok((StatusCode::CREATED, axum::Json(result)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MessageQuery {
    /// Only messages to or from this agent.
    pub agent: Option<String>,
    /// The latest this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// Messages and their delivery state, oldest first.
#[utoipa::path(get, path = "/messages", tag = "messages", params(MessageQuery),
    responses((status = 200, body = Vec<Object>), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Params(query): Params<MessageQuery>,
) -> Result<Response, ApiError> {
    let agent = match caller.require(Action::ReadMessages)? {
        Grant::Own => Some(crate::api::own_only(&caller, query.agent.as_deref(), "messages")?),
        _ => query.agent,
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let deliveries = state.store().deliveries(state.run_id(), agent.as_deref(), limit).await?;
    Ok(json(deliveries))
}
