//! `GET /agents/{name}/terminal`: a terminal agent's screen over a WebSocket, the browser's
//! `baton attach`. The server connects to the socket the agent's runtime serves for `baton
//! attach` and passes bytes both ways: the screen so far, then the program's output as it
//! comes, as binary messages; what the client sends (text or binary) is typed into the
//! terminal, for a caller that may control agents. Anyone else who may read the agent's log
//! watches only: what they send is not typed, and each such message is answered with a text
//! message saying so (`{"error": {"code": "forbidden", "message": …}}`).
//!
//! A browser's WebSocket cannot send an `Authorization` header; it offers its token as the
//! subprotocol `bearer.TOKEN` beside `baton.terminal` (the gate reads it), and the server
//! answers with `baton.terminal`, so the token stays out of the URL.

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::api::PathParams;
use crate::auth::Caller;
use crate::live::{PING_EVERY, close_expired, expiry, token_expiry};
use crate::{ApiError, AppState};

/// The subprotocol the server answers with.
pub const PROTOCOL: &str = "baton.terminal";

pub fn routes() -> Router<AppState> {
    Router::new().route("/agents/{name}/terminal", get(terminal))
}

/// A terminal agent's screen, live, over a WebSocket: binary messages of the terminal's bytes
/// (the screen so far, then the output as it comes); what the client sends is typed into the
/// terminal when its role may control agents (`ManageAgents`), and refused with a text message
/// otherwise. Reading needs `ReadAgentLogs`. A browser passes its token as the subprotocol
/// `bearer.TOKEN` beside `baton.terminal`.
#[utoipa::path(get, path = "/agents/{name}/terminal", tag = "agents", params(("name" = String, Path, description = "a terminal agent (mode = \"pty\")")),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a terminal agent, or not a WebSocket request", body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 503, description = "the agent's terminal is not served now (its program is not started, or the run is not executing in this process)", body = crate::error::ErrorBody)))]
pub async fn terminal(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    PathParams(name): PathParams<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Who may see it is decided before whether the request is a WebSocket.
    let access = state.ops().agent_terminal(&caller, &name).await?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return Err(ApiError::bad_request(format!(
                "{}: connect with a WebSocket client",
                rejection.body_text().trim_end_matches('.')
            )));
        }
    };
    let stream = UnixStream::connect(&access.socket).await.map_err(|error| {
        ApiError::unavailable(format!(
            "agent `{name}`'s terminal is not served ({error}): its program has not started, or the run is not executing in this process"
        ))
    })?;
    let caller = caller.0;
    let shutdown = state.shutdown().clone();
    Ok(upgrade
        .protocols([PROTOCOL])
        .on_upgrade(move |socket| bridge(socket, stream, access.may_type, caller, shutdown))
        .into_response())
}

/// What a watcher who sends something is told.
const READ_ONLY: &str = r#"{"error":{"code":"forbidden","message":"this token's role may watch this terminal, not type into it; an operator token can"}}"#;

async fn bridge(
    mut socket: WebSocket,
    stream: UnixStream,
    may_type: bool,
    caller: Caller,
    shutdown: CancellationToken,
) {
    let (mut from_terminal, mut to_terminal) = stream.into_split();
    let deadline = token_expiry(&caller);
    let expired = expiry(deadline);
    tokio::pin!(expired);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut buffer = vec![0u8; 8192];
    let reason = loop {
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            () = &mut expired => return close_expired(socket).await,
            () = shutdown.cancelled() => break "the server is stopping",
            read = from_terminal.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break "the terminal closed: the program exited or its agent stopped",
                Ok(n) => {
                    if socket.send(Message::Binary(buffer[..n].to_vec().into())).await.is_err() {
                        return;
                    }
                }
            },
            incoming = socket.recv() => {
                let typed = match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                    Some(Ok(_)) => continue,
                };
                if !may_type {
                    if socket.send(Message::Text(READ_ONLY.into())).await.is_err() {
                        return;
                    }
                } else if to_terminal.write_all(&typed).await.is_err() {
                    break "the terminal closed: the program exited or its agent stopped";
                }
            }
        }
    };
    let frame = CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: reason.into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
}
