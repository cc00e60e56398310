//! Chat with the agents: `POST /messages` (and chat messages on `/ws`) with `@name` mentions,
//! and `GET /messages`. What a message becomes for each kind of agent is the operations
//! layer's ([`baton_ops::messages`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

pub use baton_ops::messages::{ChatMessage, ChatResult, MessageQuery, RedeliverInput, Redelivered, Sent};

use crate::api::{Body, Params};
use crate::auth::Caller;
use crate::{ApiError, AppState, json};

pub fn routes() -> Router<AppState> {
    Router::new().route("/messages", get(list).post(send)).route("/messages/redeliver", post(redeliver))
}

/// Chat: a message to each agent it @mentions.
#[utoipa::path(post, path = "/messages", tag = "messages", request_body = ChatMessage,
    responses((status = 201, body = ChatResult), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 429, description = "the recipient's inbox is full (code `full`): send again once it has taken some", body = crate::error::ErrorBody)))]
pub async fn send(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(message): Body<ChatMessage>,
) -> Result<Response, ApiError> {
    let result = state.ops().chat(&caller, message).await?;
    Ok((StatusCode::CREATED, axum::Json(result)).into_response())
}

/// Messages and their delivery state, oldest first.
#[utoipa::path(get, path = "/messages", tag = "messages", params(MessageQuery),
    responses((status = 200, body = Vec<Object>), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Params(query): Params<MessageQuery>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().messages(&caller, query).await?))
}

/// Delivers dead letters again (`ids`, or every one with `"dead": true`), with a fresh count
/// of tries.
#[utoipa::path(post, path = "/messages/redeliver", tag = "messages", request_body = RedeliverInput,
    responses((status = 200, body = Redelivered), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Body(input): Body<RedeliverInput>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().redeliver(&caller, input).await?))
}
