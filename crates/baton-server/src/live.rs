//! Live events: `GET /events` as Server-Sent Events and `GET /ws` as a WebSocket, both from
//! any sequence number (`?since=`, or `Last-Event-ID` on an SSE reconnect); and agents' logs
//! followed as SSE. The streams themselves — backlog then live, each event once, in order —
//! are the operations layer's ([`baton_ops::Ops::follow_events`]).

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use baton_core::Event;
pub use baton_ops::events::EventFilter;

use crate::api::Params;
use crate::auth::Caller;
use crate::{ApiError, AppState, json};

pub fn routes() -> Router<AppState> {
    Router::new().route("/events", get(events)).route("/events/history", get(history)).route("/ws", get(ws))
}

/// The run's events, as Server-Sent Events: each event's `id` is its sequence number and its
/// `event` its type; the data is the event as JSON.
#[utoipa::path(get, path = "/events", tag = "events", params(EventFilter, ("Last-Event-ID" = Option<i64>, Header, description = "resume after this event")),
    responses((status = 200, description = "`text/event-stream`", content_type = "text/event-stream", body = String), (status = 400, body = crate::error::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    Params(filter): Params<EventFilter>,
) -> Result<Response, ApiError> {
    let filter = filter.authorize(&caller)?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::bad_request("`Last-Event-ID` must be an event's sequence number"))?,
        ),
    };
    let since = last_event_id.or(filter.since).unwrap_or(0);
    let stream = state.ops().follow_events(filter, since, state.shutdown().clone(), token_expiry(&caller));
    let sse = futures::StreamExt::map(stream, |event: Event| {
        let data = serde_json::to_string(&event).unwrap_or_default();
        Ok::<_, Infallible>(SseEvent::default().id(event.seq.to_string()).event(event.kind.name()).data(data))
    });
    Ok(Sse::new(sse).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// The run's events as a JSON array, oldest first (for pages; `/events` follows them live).
#[utoipa::path(get, path = "/events/history", tag = "events", params(EventFilter),
    responses((status = 200, body = Vec<Object>), (status = 400, body = crate::error::ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Params(filter): Params<EventFilter>,
) -> Result<Response, ApiError> {
    Ok(json(state.ops().events(&caller, filter).await?))
}

/// The same events as `/events`, over a WebSocket: one JSON text message per event — from now
/// on, unless `since` asks for the past too (`since=0`: from the start). The client may send
/// chat messages: `{"type": "chat", "text": "@agent …", "data": {…}}`.
#[utoipa::path(get, path = "/ws", tag = "events", params(EventFilter),
    responses((status = 101, description = "switching to the WebSocket protocol"), (status = 400, body = crate::error::ErrorBody)))]
pub async fn ws(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    Params(filter): Params<EventFilter>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let filter = filter.authorize(&caller)?;
    // A socket follows what happens from now on unless it asks for the past with `since`.
    let since = match filter.since {
        Some(since) => since,
        None => state.ops().latest_event().await?,
    };
    let caller = caller.0;
    Ok(upgrade.on_upgrade(move |socket| serve_socket(socket, state, caller, filter, since)))
}

/// What a WebSocket client may send: chat messages.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Chat { text: String, data: Option<serde_json::Value> },
}

/// When a stream opened with `caller`'s token must end: the token's expiry, on the tokio clock.
pub(crate) fn token_expiry(caller: &Caller) -> Option<tokio::time::Instant> {
    let expires_at = caller.expires_at?;
    let left = expires_at.saturating_sub(crate::auth::unix_now());
    // A deadline too far to represent is no deadline (tokens last at most ten years).
    tokio::time::Instant::now().checked_add(Duration::from_secs(left))
}

/// Resolves at `deadline`, or never.
pub(crate) async fn expiry(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How often a WebSocket is pinged.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(20);

/// The close code a socket gets when its token expires: 1008, policy violation.
const CLOSE_TOKEN_EXPIRED: u16 = 1008;

async fn serve_socket(mut socket: WebSocket, state: AppState, caller: Caller, filter: EventFilter, since: i64) {
    let deadline = token_expiry(&caller);
    let mut stream = Box::pin(state.ops().follow_events(filter, since, state.shutdown().clone(), deadline));
    let expired = expiry(deadline);
    tokio::pin!(expired);
    // A ping now and then: a quiet socket moves bytes, so the server's idle timeout leaves it be
    // and a proxy in between does not drop it.
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            () = &mut expired => {
                // The token ended: nothing more is sent or accepted on this socket.
                return close_expired(socket).await;
            }
            event = futures::StreamExt::next(&mut stream) => {
                let Some(event) = event else {
                    // The event stream ends at the token's expiry too, and may notice first.
                    if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                        return close_expired(socket).await;
                    }
                    break;
                };
                let text = serde_json::to_string(&event).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(Message::Text(text))) => {
                    // Chat: the answer is a `chat_result` or an `error`; the messages' events
                    // follow on the stream like every other event.
                    let answer = match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::Chat { text, data }) => {
                            match state.ops().chat(&caller, crate::chat::ChatMessage { text, data }).await {
                                Ok(result) => serde_json::json!({"type": "chat_result", "sent": result.sent}),
                                Err(error) => {
                                    let error = ApiError::from(error);
                                    serde_json::json!({"type": "error", "error": {"code": error.code, "message": error.message}})
                                }
                            }
                        }
                        Err(error) => serde_json::json!({"type": "error", "error": {"code": "bad_request", "message": format!("unreadable message: {error}; send {{\"type\": \"chat\", \"text\": \"@agent …\"}}")}}),
                    };
                    if socket.send(Message::Text(answer.to_string().into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// Closes a socket whose token has expired, saying so (1008).
pub(crate) async fn close_expired(mut socket: WebSocket) {
    let frame = axum::extract::ws::CloseFrame {
        code: CLOSE_TOKEN_EXPIRED,
        reason: "the token has expired; reconnect with a new one".into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// An agent's log: the last `tail_bytes` as text, or followed as SSE (one `data` line per
/// line of the log) until the client goes.
pub async fn log_response(state: AppState, path: PathBuf, tail_bytes: u64, follow: bool) -> Result<Response, ApiError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let log_path = path.clone();
    let read_from = move |offset: u64| {
        let path = path.clone();
        async move {
            let Ok(mut file) = tokio::fs::File::open(&path).await else { return (offset, Vec::new()) };
            let len = file.metadata().await.map_or(0, |meta| meta.len());
            // A log that was truncated starts over.
            let offset = if len < offset { 0 } else { offset };
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                return (offset, Vec::new());
            }
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes).await;
            (offset + bytes.len() as u64, bytes)
        }
    };
    let len = tokio::fs::metadata(&log_path).await.map_or(0, |meta| meta.len());
    let start = len.saturating_sub(tail_bytes);
    if !follow {
        let (_, bytes) = read_from(start).await;
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            String::from_utf8_lossy(&bytes).into_owned(),
        )
            .into_response());
    }
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let mut offset = start;
        let mut partial = String::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = state.shutdown().cancelled() => return,
                () = tx.closed() => return,
                _ = tick.tick() => {}
            }
            let (next, bytes) = read_from(offset).await;
            offset = next;
            if bytes.is_empty() {
                continue;
            }
            partial.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = partial.find('\n') {
                let line: String = partial.drain(..=end).collect();
                if tx.send(Ok(SseEvent::default().data(line.trim_end_matches('\n')))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response())
}
