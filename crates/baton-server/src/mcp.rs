//! Baton as an MCP server: `/mcp`, the Model Context Protocol's Streamable HTTP transport, on
//! the router that `baton serve` serves at its address and `baton run` on the socket beside
//! its store (`baton mcp` bridges stdio to it). A coding agent creates tasks, messages agents
//! and reads status through the tools of [`tools`], each one call of the operations layer.
//!
//! Two protocol eras are spoken on the one endpoint, told apart per request:
//! - **2025-11-25** (and 2025-06-18, 2025-03-26): `initialize` opens a session whose id the
//!   answer carries in `Mcp-Session-Id`; later requests carry it; `DELETE` ends it; `GET`
//!   opens the session's stream of notifications (`notifications/resources/updated` for the
//!   resources the client subscribed to).
//! - **2026-07-28** (stateless): every request carries its protocol version and the client's
//!   capabilities in `params._meta`, mirrored in the `MCP-Protocol-Version`, `Mcp-Method` and
//!   (for named calls) `Mcp-Name` headers; `server/discover` says what the server speaks.
//!   A request with a version in `_meta` is of this era; every other request of the old.
//!
//! The caller is the one the gate found (the bearer token, or the socket's owner); the role
//! limits the tools: `tools/list` shows only the tools the role may call, and a call of
//! another is refused as a tool error that names the role needed. Browsers of other sites are
//! kept out by the `Origin` check (DNS rebinding): a request with an `Origin` is served only
//! when it names this server's host or a loopback host.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use baton_ops::{Action, Caller, ErrorKind, Grant};

use crate::AppState;

pub mod tools;

/// The versions of the handshake era, newest first: `initialize` answers the one asked for
/// when it is here, else the newest.
pub const HANDSHAKE_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// The versions of the stateless era.
pub const STATELESS_VERSIONS: &[&str] = &["2026-07-28"];

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";
pub const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";
const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";
const CAPABILITIES_META: &str = "io.modelcontextprotocol/clientCapabilities";

/// JSON-RPC error codes: JSON-RPC's own, then MCP's.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The caller's role may not read this (Baton's; in the server-error range).
    pub const FORBIDDEN: i64 = -32001;
    pub const RESOURCE_NOT_FOUND: i64 = -32002;
    /// A Baton operation that cannot be done now (Baton's).
    pub const UNAVAILABLE: i64 = -32003;
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
    /// A call the client cancelled, answered anyway because its answer is a JSON body (the
    /// code JSON-RPC peers such as LSP use).
    pub const REQUEST_CANCELLED: i64 = -32800;
}

/// Sessions of the handshake era held at once; the one used least recently goes first.
const MAX_SESSIONS: usize = 1024;
/// Sessions one token may hold, so that one client cannot push every other's out; beyond it
/// that token's least recently used goes.
const MAX_SESSIONS_PER_TOKEN: usize = 64;

/// The open sessions of the handshake era.
#[derive(Default)]
pub struct Sessions {
    /// A `std` mutex: held only to look up or change the map, never across an `.await`.
    inner: Mutex<HashMap<String, Session>>,
}

struct Session {
    version: String,
    /// The token it was opened with: another token cannot use it.
    token_id: String,
    /// Resource URIs the client subscribed to.
    subscriptions: HashSet<String>,
    /// Where the session's notifications go while its `GET` stream is open.
    stream: Option<mpsc::Sender<Value>>,
    last_used: Instant,
    /// Its tool calls in progress, by request id (as JSON): `notifications/cancelled` fires
    /// the call's token.
    calls: HashMap<String, CancellationToken>,
}

/// Tool calls in progress one session may have cancellable at once; beyond it a call still
/// runs, but only closing its answer's stream ends it early.
const MAX_CALLS_PER_SESSION: usize = 64;

/// A tool call in progress in a session, cancellable by the client: `cancelled` fires on its
/// `notifications/cancelled`. Dropped when the call ends, which forgets it.
struct Call {
    state: AppState,
    session: String,
    id: String,
    cancelled: CancellationToken,
}

impl Call {
    /// Registers the call `id` of the request's session (handshake era only: the stateless
    /// era has no session to match a cancellation with, and its client closes the stream).
    fn start(state: &AppState, era: &Era, id: &Value) -> Option<Call> {
        let Era::Handshake { session: Some(session), .. } = era else { return None };
        let id = id.to_string();
        let cancelled = state.mcp_sessions().start_call(session, &id)?;
        Some(Call { state: state.clone(), session: session.clone(), id, cancelled })
    }

    /// Resolves when the client cancels the call; never without one.
    async fn cancelled(call: Option<&Call>) {
        match call {
            Some(call) => call.cancelled.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(session) = self.state.mcp_sessions().lock().get_mut(&self.session) {
            session.calls.remove(&self.id);
        }
    }
}

impl Sessions {
    fn open(&self, version: &str, caller: &Caller) -> String {
        // Unguessable: the id is all a client shows of its session (beside its token).
        let id = format!("{:032x}", rand::random::<u128>());
        let mut sessions = self.lock();
        let of_token = |session: &&Session| session.token_id == caller.token_id;
        let n_of_token = sessions.values().filter(of_token).count();
        if n_of_token >= MAX_SESSIONS_PER_TOKEN
            && let Some(oldest) = sessions
                .iter()
                .filter(|(_, session)| of_token(session))
                .min_by_key(|(_, session)| session.last_used)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, session)| session.last_used).map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        let session = Session {
            version: version.to_string(),
            token_id: caller.token_id.clone(),
            subscriptions: HashSet::new(),
            stream: None,
            last_used: Instant::now(),
            calls: HashMap::new(),
        };
        sessions.insert(id.clone(), session);
        id
    }

    /// The session's protocol version, when `id` is a session of `caller`'s token.
    fn touch(&self, id: &str, caller: &Caller) -> Option<String> {
        let mut sessions = self.lock();
        let session = sessions.get_mut(id).filter(|session| session.token_id == caller.token_id)?;
        session.last_used = Instant::now();
        Some(session.version.clone())
    }

    fn close(&self, id: &str, caller: &Caller) -> bool {
        let mut sessions = self.lock();
        if sessions.get(id).is_some_and(|session| session.token_id == caller.token_id) {
            sessions.remove(id);
            return true;
        }
        false
    }

    /// A token for the call `request` (its id as JSON) of session `id`, fired if the client
    /// cancels it; `None` when the session is gone, has as many calls as it may, or already
    /// has a call of that id.
    fn start_call(&self, id: &str, request: &str) -> Option<CancellationToken> {
        let mut sessions = self.lock();
        let session = sessions.get_mut(id)?;
        if session.calls.len() >= MAX_CALLS_PER_SESSION || session.calls.contains_key(request) {
            return None;
        }
        let token = CancellationToken::new();
        session.calls.insert(request.to_string(), token.clone());
        Some(token)
    }

    /// Cancels the call `request` of session `id` when the session is `caller`'s token's;
    /// whether there was such a call.
    fn cancel_call(&self, id: &str, caller: &Caller, request: &Value) -> bool {
        let sessions = self.lock();
        let Some(session) = sessions.get(id).filter(|session| session.token_id == caller.token_id) else {
            return false;
        };
        match session.calls.get(&request.to_string()) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    fn subscribe(&self, id: &str, uri: &str, subscribed: bool) {
        if let Some(session) = self.lock().get_mut(id) {
            if subscribed {
                session.subscriptions.insert(uri.to_string());
            } else {
                session.subscriptions.remove(uri);
            }
        }
    }

    fn attach_stream(&self, id: &str, stream: mpsc::Sender<Value>) {
        if let Some(session) = self.lock().get_mut(id) {
            session.stream = Some(stream);
        }
    }

    /// The session's stream, when it is open and the client subscribed to `uri`.
    fn subscriber(&self, id: &str, uri: &str) -> Option<mpsc::Sender<Value>> {
        let sessions = self.lock();
        let session = sessions.get(id)?;
        if session.subscriptions.contains(uri) { session.stream.clone() } else { None }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while the map was held leaves it whole (every change is one insert or
        // remove): go on with it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/mcp", post(post_message).get(open_stream).delete(end_session))
}

/// A JSON-RPC error, and the HTTP status it goes with.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into(), data: None }
    }

    /// The status a stateless-era answer with this error has (the transport's table); the
    /// handshake era answers errors of a request with `200`.
    fn status(&self) -> StatusCode {
        match self.code {
            code::PARSE_ERROR
            | code::INVALID_REQUEST
            | code::INVALID_PARAMS
            | code::HEADER_MISMATCH
            | code::UNSUPPORTED_PROTOCOL_VERSION => StatusCode::BAD_REQUEST,
            code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
            _ => StatusCode::OK,
        }
    }

    fn body(&self, id: &Value) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        json!({ "jsonrpc": "2.0", "id": id, "error": error })
    }
}

impl From<baton_ops::Error> for RpcError {
    fn from(error: baton_ops::Error) -> RpcError {
        let code = match error.kind() {
            ErrorKind::Invalid => code::INVALID_PARAMS,
            ErrorKind::Forbidden => code::FORBIDDEN,
            ErrorKind::NotFound => code::RESOURCE_NOT_FOUND,
            ErrorKind::Conflict | ErrorKind::Full | ErrorKind::Unavailable => code::UNAVAILABLE,
            ErrorKind::Internal => code::INTERNAL_ERROR,
        };
        RpcError::new(code, error.message())
    }
}

impl From<tools::ToolError> for RpcError {
    fn from(error: tools::ToolError) -> RpcError {
        baton_ops::Error::new(error.kind, error.message).into()
    }
}

fn rpc_response(status: StatusCode, body: Value, session: Option<&str>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(session) = session.and_then(|session| HeaderValue::from_str(session).ok()) {
        response.headers_mut().insert(SESSION_HEADER, session);
    }
    response
}

/// An error answer to a message that could not be handled as a request.
fn refuse(status: StatusCode, id: &Value, error: RpcError) -> Response {
    rpc_response(status, error.body(id), None)
}

/// Which era a request is of, and what it carries of it.
enum Era {
    /// The handshake era, in the session `session` (`None` for `initialize`).
    Handshake {
        session: Option<String>,
        version: String,
    },
    Stateless,
}

/// `POST /mcp`: one JSON-RPC message. A request is answered with one JSON object, or — a call
/// of a tool that sends progress, with a `progressToken`, from a client that accepts
/// `text/event-stream` — with a stream of Server-Sent Events (see [`answer_as_stream`]); a
/// notification or a response with `202` and no body.
async fn post_message(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = check_origin(&state, &headers) {
        return *refused;
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(error) => {
            let error = RpcError::new(code::PARSE_ERROR, format!("the body is not JSON: {error}"));
            return refuse(StatusCode::BAD_REQUEST, &Value::Null, error);
        }
    };
    let Value::Object(message) = message else {
        let what = if message.is_array() {
            "a batch (an array) is not taken: send one JSON-RPC message per request"
        } else {
            "the body must be one JSON-RPC message (an object)"
        };
        return refuse(StatusCode::BAD_REQUEST, &Value::Null, RpcError::new(code::INVALID_REQUEST, what));
    };
    let id = message.get("id").cloned();
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        let error = RpcError::new(code::INVALID_REQUEST, "`id` must be a string or an integer");
        return refuse(StatusCode::BAD_REQUEST, &Value::Null, error);
    }
    let shown_id = id.clone().unwrap_or(Value::Null);
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        let error = RpcError::new(code::INVALID_REQUEST, "`jsonrpc` must be \"2.0\"");
        return refuse(StatusCode::BAD_REQUEST, &shown_id, error);
    }
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        if id.is_some() && (message.contains_key("result") || message.contains_key("error")) {
            // A response to a request of ours: Baton sends none, so there is nothing to match.
            return StatusCode::ACCEPTED.into_response();
        }
        let error = RpcError::new(code::INVALID_REQUEST, "a request needs a `method` (a string)");
        return refuse(StatusCode::BAD_REQUEST, &shown_id, error);
    };
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    if !(params.is_null() || params.is_object()) {
        let error = RpcError::new(code::INVALID_PARAMS, "`params` must be an object");
        return refuse(StatusCode::BAD_REQUEST, &shown_id, error);
    }

    let era = match era_of(&state, &caller, &headers, method, &params) {
        Ok(era) => era,
        Err((status, error)) => return refuse(status, &shown_id, error),
    };
    let Some(id) = id else {
        // A notification. `notifications/cancelled` ends a tool call in progress of the
        // session (`wait_for_task`): its stream closes without an answer, or its JSON answer
        // is an error saying so. Baton acts on no other (`notifications/initialized`, …). In
        // the stateless era a client ends a call by closing its answer's stream.
        if method == "notifications/cancelled"
            && let Era::Handshake { session: Some(session), .. } = &era
            && let Some(request) = params.get("requestId")
        {
            state.mcp_sessions().cancel_call(session, &caller, request);
        }
        return StatusCode::ACCEPTED.into_response();
    };
    if method == "subscriptions/listen" && matches!(era, Era::Stateless) {
        return listen(state, caller, id, &params).await;
    }
    // Only a waiting tool (`wait_for_task`) is cancellable: a cancel must not cut a tool that
    // changes something (create_tasks, …) halfway, its change made and its answer an error.
    let waits = method == "tools/call"
        && params.get("name").and_then(Value::as_str).and_then(tools::find).is_some_and(|tool| tool.progress);
    let call = if waits { Call::start(&state, &era, &id) } else { None };
    if let Some(token) = progress_token(&headers, method, &params) {
        return answer_as_stream(state, caller, era, id, params, token, call);
    }
    let answer = tokio::select! {
        answer = handle(&state, &caller, &era, method, &params, None) => answer,
        () = Call::cancelled(call.as_ref()) => Err(RpcError::new(
            code::REQUEST_CANCELLED,
            "the client cancelled this call (notifications/cancelled)",
        )),
    };
    drop(call);
    let detail = audit_detail(method, &params, &answer);
    let mut response = match (era, answer) {
        (Era::Handshake { session, version }, Ok(result)) => {
            let opened = if method == "initialize" {
                let version = result["protocolVersion"].as_str().unwrap_or(&version).to_string();
                Some(state.mcp_sessions().open(&version, &caller))
            } else {
                None
            };
            let body = json!({ "jsonrpc": "2.0", "id": id, "result": result });
            rpc_response(StatusCode::OK, body, opened.as_deref().or(session.as_deref()))
        }
        (Era::Handshake { session, .. }, Err(error)) => {
            rpc_response(StatusCode::OK, error.body(&id), session.as_deref())
        }
        (Era::Stateless, Ok(mut result)) => {
            result["resultType"] = json!("complete");
            rpc_response(StatusCode::OK, json!({ "jsonrpc": "2.0", "id": id, "result": result }), None)
        }
        (Era::Stateless, Err(error)) => rpc_response(error.status(), error.body(&id), None),
    };
    response.extensions_mut().insert(detail);
    response
}

/// The `progressToken` of a request that is answered with a stream of Server-Sent Events:
/// a call of a tool that sends progress ([`tools::Tool::progress`]), with a `progressToken` in
/// `params._meta`, from a client that accepts `text/event-stream`. Every other request is
/// answered with one JSON object.
fn progress_token(headers: &HeaderMap, method: &str, params: &Value) -> Option<Value> {
    if method != "tools/call" {
        return None;
    }
    let token = params.get("_meta")?.get("progressToken")?;
    if !(token.is_string() || token.is_i64() || token.is_u64()) {
        return None;
    }
    let tool = tools::find(params.get("name")?.as_str()?)?;
    if !tool.progress || !accepts_event_stream(headers) {
        return None;
    }
    if !params.get("arguments").is_none_or(|arguments| arguments.is_null() || arguments.is_object()) {
        return None;
    }
    Some(token.clone())
}

/// Whether the request's `Accept` names `text/event-stream` (or `text/*`, `*/*`).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let media = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
        })
}

/// Answers a tool call that sends progress with a stream of Server-Sent Events (the Streamable
/// HTTP transport's other answer to a `POST`): each `notifications/progress` as the call
/// sends it, then the call's JSON-RPC response, which ends the stream. When the client goes
/// away (the stream is dropped), the call ends.
fn answer_as_stream(
    state: AppState,
    caller: Caller,
    era: Era,
    id: Value,
    params: Value,
    token: Value,
    call: Option<Call>,
) -> Response {
    let tool: String = params.get("name").and_then(Value::as_str).unwrap_or("").chars().take(100).collect();
    let session = match &era {
        Era::Handshake { session, .. } => session.clone(),
        Era::Stateless => None,
    };
    let (sender, receiver) = mpsc::channel::<Value>(16);
    tokio::spawn(async move {
        let progress = tools::Progress::new(token, sender.clone());
        // A cancelled call sends no answer (MCP's rule): the stream just ends.
        let answer = tokio::select! {
            () = sender.closed() => return,
            () = Call::cancelled(call.as_ref()) => return,
            answer = handle(&state, &caller, &era, "tools/call", &params, Some(progress)) => answer,
        };
        drop(call);
        let body = match answer {
            Ok(mut result) => {
                if matches!(era, Era::Stateless) {
                    result["resultType"] = json!("complete");
                }
                json!({ "jsonrpc": "2.0", "id": id, "result": result })
            }
            Err(error) => error.body(&id),
        };
        let _ = sender.send(body).await;
    });
    let mut response = Sse::new(sse_messages(receiver)).keep_alive(KeepAlive::default()).into_response();
    if let Some(session) = session.and_then(|session| HeaderValue::from_str(&session).ok()) {
        response.headers_mut().insert(SESSION_HEADER, session);
    }
    // Whether the call failed is not known when the answer starts.
    let detail = json!({ "mcp": "tools/call", "tool": tool, "stream": true });
    response.extensions_mut().insert(crate::AuditDetail(detail));
    response
}

/// JSON-RPC messages as Server-Sent Events: one `message` event each, its data the message.
fn sse_messages(
    receiver: mpsc::Receiver<Value>,
) -> impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    ReceiverStream::new(receiver)
        .map(|message| Ok::<_, Infallible>(SseEvent::default().event("message").data(message.to_string())))
}

/// What the audit entry of an MCP request says beyond `POST /mcp`: the method, and for a
/// tool call the tool (its name cut to 100 characters) and whether it failed.
fn audit_detail(method: &str, params: &Value, answer: &Result<Value, RpcError>) -> crate::AuditDetail {
    let mut detail = json!({ "mcp": method.chars().take(100).collect::<String>() });
    if method == "tools/call" {
        let tool: String = params.get("name").and_then(Value::as_str).unwrap_or("").chars().take(100).collect();
        detail["tool"] = json!(tool);
        let failed = match answer {
            Ok(result) => result.get("isError").and_then(Value::as_bool).unwrap_or(false),
            Err(_) => true,
        };
        detail["isError"] = json!(failed);
    }
    crate::AuditDetail(detail)
}

/// The era of a message, checked: a stateless request's `_meta` and headers, a handshake
/// request's session.
fn era_of(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    method: &str,
    params: &Value,
) -> Result<Era, (StatusCode, RpcError)> {
    let meta = params.get("_meta");
    let meta_version = meta.and_then(|meta| meta.get(VERSION_META));
    let header_version = header_text(headers, VERSION_HEADER);
    let stateless_header = header_version.as_deref().is_some_and(|version| !HANDSHAKE_VERSIONS.contains(&version));
    if meta_version.is_some() || stateless_header {
        return stateless(headers, method, params).map_err(|error| (StatusCode::BAD_REQUEST, error));
    }
    if method == "initialize" {
        let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or(HANDSHAKE_VERSIONS[0]);
        let version = if HANDSHAKE_VERSIONS.contains(&asked) { asked } else { HANDSHAKE_VERSIONS[0] };
        return Ok(Era::Handshake { session: None, version: version.to_string() });
    }
    let Some(session) = header_text(headers, SESSION_HEADER) else {
        let message = format!(
            "no `Mcp-Session-Id`: send `initialize` first (protocol {}), or make the request stateless (protocol {}: `_meta` with `{VERSION_META}`)",
            HANDSHAKE_VERSIONS[0], STATELESS_VERSIONS[0]
        );
        return Err((StatusCode::BAD_REQUEST, RpcError::new(code::INVALID_REQUEST, message)));
    };
    let Some(version) = state.mcp_sessions().touch(&session, caller) else {
        let message = "no such MCP session (it ended, or the server restarted): send `initialize` again";
        return Err((StatusCode::NOT_FOUND, RpcError::new(code::INVALID_REQUEST, message)));
    };
    Ok(Era::Handshake { session: Some(session), version })
}

/// A stateless-era request's envelope checked, in the specification's order: `_meta` has the
/// version and the capabilities; the headers mirror the body; the version is one Baton speaks.
fn stateless(headers: &HeaderMap, method: &str, params: &Value) -> Result<Era, RpcError> {
    let Some(meta) = params.get("_meta").and_then(Value::as_object) else {
        let message = format!("`params._meta` must be an object with `{VERSION_META}` and `{CAPABILITIES_META}`");
        return Err(RpcError::new(code::INVALID_PARAMS, message));
    };
    let missing: Vec<&str> =
        [VERSION_META, CAPABILITIES_META].into_iter().filter(|key| !meta.contains_key(*key)).collect();
    if !missing.is_empty() {
        let message = format!("`params._meta` lacks {}", missing.join(" and "));
        return Err(RpcError::new(code::INVALID_PARAMS, message));
    }
    let version = &meta[VERSION_META];
    if header_text(headers, VERSION_HEADER).as_deref() != version.as_str() {
        let message = "the `MCP-Protocol-Version` header must be the protocol version of `params._meta`";
        return Err(RpcError::new(code::HEADER_MISMATCH, message));
    }
    if header_text(headers, METHOD_HEADER).as_deref() != Some(method) {
        return Err(RpcError::new(code::HEADER_MISMATCH, "the `Mcp-Method` header must be the request's method"));
    }
    let named = match method {
        "tools/call" | "prompts/get" => params.get("name"),
        "resources/read" => params.get("uri"),
        _ => None,
    };
    if let Some(named) = named.and_then(Value::as_str)
        && header_text(headers, NAME_HEADER).as_deref() != Some(named)
    {
        let message = "the `Mcp-Name` header must be the tool's name or the resource's URI of the request";
        return Err(RpcError::new(code::HEADER_MISMATCH, message));
    }
    let Some(version) = version.as_str() else {
        return Err(RpcError::new(code::INVALID_PARAMS, format!("`{VERSION_META}` must be a string")));
    };
    if !STATELESS_VERSIONS.contains(&version) {
        let mut error = RpcError::new(code::UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version");
        error.data = Some(json!({ "supported": supported_versions(), "requested": version }));
        return Err(error);
    }
    Ok(Era::Stateless)
}

fn supported_versions() -> Vec<&'static str> {
    STATELESS_VERSIONS.iter().chain(HANDSHAKE_VERSIONS).copied().collect()
}

/// A header's value as text (`None` when absent or not text). A header that may be
/// base64-encoded (`=?base64?…?=`, for values that are not plain ASCII) is decoded.
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    if let Some(encoded) = value.strip_prefix("=?base64?").and_then(|rest| rest.strip_suffix("?=")) {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
        return String::from_utf8(bytes).ok();
    }
    Some(value.to_string())
}

/// Refuses a request from a browser page of another site, DNS rebinding included: an
/// `Origin` must name a loopback host or the host of the plan's `server.url` (the name the
/// server is reached by). Clients that are not browsers send no `Origin`.
fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let own = state.plan().server.url.split_once("://").map(|(_, rest)| host_of(rest));
    origin_allowed(headers, own.as_deref())
}

/// The `Origin` of a request from a page of another site (a browser's cross-site request, or
/// DNS rebinding), or `None` when there is none or it is loopback or `server.url`'s host. The
/// JSON-RPC endpoints (`/mcp`, `/a2a`), which read bodies of any content type, refuse those.
pub(crate) fn foreign_origin(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let own = state.plan().server.url.split_once("://").map(|(_, rest)| host_of(rest));
    foreign(headers, own.as_deref())
}

fn foreign(headers: &HeaderMap, own_host: Option<&str>) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    let allowed = match origin.split_once("://").map(|(_, rest)| host_of(rest)) {
        Some(host) => matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]") || own_host == Some(host.as_str()),
        None => false,
    };
    (!allowed).then(|| origin.to_string())
}

fn origin_allowed(headers: &HeaderMap, own_host: Option<&str>) -> Result<(), Box<Response>> {
    let Some(origin) = foreign(headers, own_host) else { return Ok(()) };
    let error = RpcError::new(
        code::INVALID_REQUEST,
        format!("Origin `{origin}` is not this server's: /mcp serves pages of localhost and of server.url's host only"),
    );
    Err(Box::new(refuse(StatusCode::FORBIDDEN, &Value::Null, error)))
}

/// The host of `host[:port][/…]`, lowercase.
fn host_of(authority: &str) -> String {
    let authority = authority.split('/').next().unwrap_or("");
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.to_ascii_lowercase()
}

/// Answers one request of either era.
async fn handle(
    state: &AppState,
    caller: &Caller,
    era: &Era,
    method: &str,
    params: &Value,
    progress: Option<tools::Progress>,
) -> Result<Value, RpcError> {
    let stateless = matches!(era, Era::Stateless);
    if stateless && matches!(method, "initialize" | "ping" | "logging/setLevel") {
        let message = format!("`{method}` is not in protocol 2026-07-28 (stateless): call what you need directly");
        return Err(RpcError::new(code::METHOD_NOT_FOUND, message));
    }
    let mut result = match method {
        "initialize" => {
            let Era::Handshake { version, .. } = era else {
                return Err(RpcError::new(code::INVALID_REQUEST, "`initialize` is of the handshake era"));
            };
            json!({
                "protocolVersion": version,
                "capabilities": capabilities(),
                "serverInfo": server_info(),
                "instructions": instructions(state),
            })
        }
        "server/discover" => json!({
            "_meta": { "io.modelcontextprotocol/serverInfo": server_info() },
            "supportedVersions": supported_versions(),
            "capabilities": capabilities(),
            "serverInfo": server_info(),
            "instructions": instructions(state),
        }),
        "ping" => json!({}),
        "tools/list" => {
            let tools: Vec<Value> =
                tools::TOOLS.iter().filter(|tool| tools::allowed(caller, tool)).map(tools::describe).collect();
            json!({ "tools": tools })
        }
        "tools/call" => call_tool(state, caller, params, progress).await?,
        "resources/list" => json!({ "resources": resources(state, caller) }),
        "resources/templates/list" => json!({ "resourceTemplates": resource_templates() }),
        // A resource that is not there: -32002 in the handshake era, -32602 (with the URI) in
        // the stateless one (SEP-2164).
        "resources/read" => read_resource(state, caller, params).await.map_err(|mut error| {
            if error.code == code::RESOURCE_NOT_FOUND {
                error.data = Some(json!({ "uri": params.get("uri") }));
                if stateless {
                    error.code = code::INVALID_PARAMS;
                }
            }
            error
        })?,
        "resources/subscribe" | "resources/unsubscribe" => {
            let Era::Handshake { session: Some(session), .. } = era else {
                return Err(RpcError::new(
                    code::METHOD_NOT_FOUND,
                    format!("`{method}` needs a session of protocol 2025-11-25"),
                ));
            };
            let uri = string_param(params, "uri")?;
            parse_uri(&uri)?;
            state.mcp_sessions().subscribe(session, &uri, method == "resources/subscribe");
            json!({})
        }
        other => {
            return Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!(
                    "Baton's MCP server has no method `{other}`: it offers tools (tools/list, tools/call) and resources"
                ),
            ));
        }
    };
    if stateless
        && matches!(
            method,
            "server/discover" | "tools/list" | "resources/list" | "resources/templates/list" | "resources/read"
        )
    {
        // What the caller may see depends on its token: cached by it only, and not for long.
        result["ttlMs"] = json!(0);
        result["cacheScope"] = json!("private");
    }
    Ok(result)
}

/// The server's capabilities, the same in both eras: resources may be subscribed to
/// (`resources/subscribe` in a session, `subscriptions/listen`'s `resourceSubscriptions`
/// without), and the lists never change.
fn capabilities() -> Value {
    json!({ "tools": { "listChanged": false }, "resources": { "subscribe": true, "listChanged": false } })
}

fn server_info() -> Value {
    json!({ "name": "baton", "title": "Baton", "version": env!("CARGO_PKG_VERSION") })
}

fn instructions(state: &AppState) -> String {
    format!(
        "Baton runs a team of agents against the plan `{}`: workstreams of tasks, routed to agents by capability. \
         Call plan_status first; create work with create_tasks, follow it with list_tasks and get_task, talk to \
         agents with send_message. What you may do depends on your token's role.",
        state.plan().name
    )
}

fn string_param(params: &Value, name: &str) -> Result<String, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| RpcError::new(code::INVALID_PARAMS, format!("`params.{name}` (a string) is needed")))
}

async fn call_tool(
    state: &AppState,
    caller: &Caller,
    params: &Value,
    progress: Option<tools::Progress>,
) -> Result<Value, RpcError> {
    let name = string_param(params, "name")?;
    let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
    if !(arguments.is_null() || arguments.is_object()) {
        return Err(RpcError::new(code::INVALID_PARAMS, "`params.arguments` must be an object"));
    }
    let context = tools::Context { progress, stop: state.shutdown().clone(), until: crate::live::token_expiry(caller) };
    let Some(outcome) = tools::call(state.ops(), caller, &name, arguments, context).await else {
        let names: Vec<&str> = tools::TOOLS.iter().map(|tool| tool.name).collect();
        let message = format!("no tool `{name}`: the tools are {}", names.join(", "));
        return Err(RpcError::new(code::INVALID_PARAMS, message));
    };
    Ok(match outcome {
        Ok(value) => {
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            let mut result = json!({ "content": [{ "type": "text", "text": text }], "isError": false });
            if value.is_object() {
                result["structuredContent"] = value;
            }
            result
        }
        Err(error) => json!({ "content": [{ "type": "text", "text": error.text() }], "isError": true }),
    })
}

// ---------------------------------------------------------------------------------------------
// Resources: the run's status, a task (with its result and events), an agent's log.

const STATUS_URI: &str = "baton://status";

/// What a resource URI names.
enum Resource {
    Status,
    Task(i64),
    AgentLog(String),
}

fn parse_uri(uri: &str) -> Result<Resource, RpcError> {
    let not_found = || {
        let mut error = RpcError::new(
            code::RESOURCE_NOT_FOUND,
            format!(
                "no resource `{uri}`: Baton's are {STATUS_URI}, baton://tasks/{{id}} and baton://agents/{{name}}/log"
            ),
        );
        error.data = Some(json!({ "uri": uri }));
        error
    };
    if uri == STATUS_URI {
        return Ok(Resource::Status);
    }
    if let Some(id) = uri.strip_prefix("baton://tasks/") {
        return id.parse().map(Resource::Task).map_err(|_| not_found());
    }
    if let Some(name) = uri.strip_prefix("baton://agents/").and_then(|rest| rest.strip_suffix("/log"))
        && !name.is_empty()
        && !name.contains('/')
    {
        return Ok(Resource::AgentLog(name.to_string()));
    }
    Err(not_found())
}

fn resources(state: &AppState, caller: &Caller) -> Vec<Value> {
    let mut listed = vec![json!({
        "uri": STATUS_URI,
        "name": "status",
        "title": "Run status",
        "description": "The run's phase, progress and outcome, and its plan's workstreams.",
        "mimeType": "application/json",
    })];
    let agents: Vec<String> = match Action::ReadAgentLogs.grant(caller.role) {
        Grant::All => state.plan().agents.iter().map(|agent| agent.name.clone()).collect(),
        Grant::Own => caller.agent.iter().cloned().collect(),
        Grant::None => Vec::new(),
    };
    for name in agents {
        listed.push(json!({
            "uri": format!("baton://agents/{name}/log"),
            "name": format!("{name} log"),
            "title": format!("Log of agent {name}"),
            "description": format!("The end of agent {name}'s log (its stderr and Baton's notes)."),
            "mimeType": "text/plain",
        }));
    }
    listed
}

fn resource_templates() -> Vec<Value> {
    vec![
        json!({
            "uriTemplate": "baton://tasks/{id}",
            "name": "task",
            "title": "A task",
            "description": "A task with its result, attempts and events.",
            "mimeType": "application/json",
        }),
        json!({
            "uriTemplate": "baton://agents/{name}/log",
            "name": "agent log",
            "title": "An agent's log",
            "description": "The end of an agent's log.",
            "mimeType": "text/plain",
        }),
    ]
}

async fn read_resource(state: &AppState, caller: &Caller, params: &Value) -> Result<Value, RpcError> {
    let uri = string_param(params, "uri")?;
    let ops = state.ops();
    let (mime, text) = match parse_uri(&uri)? {
        Resource::Status => {
            let status = ops.status(caller).await?;
            let plan = ops.plan_view(caller).await?;
            ("application/json", json!({ "status": status, "plan": plan }).to_string())
        }
        Resource::Task(id) => {
            let detail = ops.task(caller, baton_core::model::TaskId(id)).await?;
            ("application/json", serde_json::to_string(&detail).unwrap_or_default())
        }
        Resource::AgentLog(name) => {
            ("text/plain", tools::read_log(ops, caller, &name, tools::DEFAULT_LOG_BYTES).await?)
        }
    };
    Ok(json!({ "contents": [{ "uri": uri, "mimeType": mime, "text": text }] }))
}

// ---------------------------------------------------------------------------------------------
// The session's stream and its end (handshake era).

fn session_of(state: &AppState, caller: &Caller, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let Some(session) = header_text(headers, SESSION_HEADER) else {
        let mut response = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            &Value::Null,
            RpcError::new(
                code::INVALID_REQUEST,
                "GET and DELETE /mcp need the `Mcp-Session-Id` of a session (protocol 2025-11-25)",
            ),
        );
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Err(Box::new(response));
    };
    if state.mcp_sessions().touch(&session, caller).is_none() {
        let error = RpcError::new(code::INVALID_REQUEST, "no such MCP session: send `initialize` again");
        return Err(Box::new(refuse(StatusCode::NOT_FOUND, &Value::Null, error)));
    }
    Ok(session)
}

/// Resources one `subscriptions/listen` stream may name.
const MAX_LISTENED: usize = 100;
const SUBSCRIPTION_META: &str = "io.modelcontextprotocol/subscriptionId";

/// The resources that change from now on, as `caller` may hear of them: for each event it
/// may follow, the status, and the task the event is about. What a session's stream and
/// `subscriptions/listen` tell of; `Err` is the refusal to answer a request `id` with.
async fn resource_changes(
    state: &AppState,
    caller: &Caller,
    id: &Value,
) -> Result<impl tokio_stream::Stream<Item = Vec<String>> + Send + 'static, Box<Response>> {
    let filter = baton_ops::events::EventFilter::default()
        .authorize(caller)
        .map_err(|error| Box::new(refuse(crate::error::status_of(error.kind()).0, id, RpcError::from(error))))?;
    let since = state
        .ops()
        .latest_event()
        .await
        .map_err(|error| Box::new(refuse(StatusCode::SERVICE_UNAVAILABLE, id, RpcError::from(error))))?;
    let events = state.ops().follow_events(filter, since, state.shutdown().clone(), crate::live::token_expiry(caller));
    Ok(events.map(|event| {
        let mut changed = vec![STATUS_URI.to_string()];
        if let Some(task) = event.kind.task() {
            changed.push(format!("baton://tasks/{task}"));
        }
        changed
    }))
}

/// `subscriptions/listen` (protocol 2026-07-28, which has no sessions and no `GET` stream):
/// the answer is a stream of Server-Sent Events, first `notifications/subscriptions/acknowledged`
/// with the filter the server honours — the `resourceSubscriptions` (Baton's tools and
/// resource lists do not change, so the list-changed opt-ins are left out) — then a
/// `notifications/resources/updated` for each of those resources that changes, each with the
/// request's id as `_meta`'s subscription id. It ends when the client closes it; when the
/// server stops or the token expires, with the request's response.
async fn listen(state: AppState, caller: Caller, id: Value, params: &Value) -> Response {
    let Some(filter) = params.get("notifications").filter(|filter| filter.is_object()) else {
        let error =
            RpcError::new(code::INVALID_PARAMS, "`notifications` (the subscription filter, an object) is required");
        return refuse(StatusCode::BAD_REQUEST, &id, error);
    };
    let uris: Vec<String> = match filter.get("resourceSubscriptions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(uris)) if uris.len() <= MAX_LISTENED => {
            let mut listened = Vec::with_capacity(uris.len());
            for uri in uris {
                let Some(uri) = uri.as_str() else {
                    let error =
                        RpcError::new(code::INVALID_PARAMS, "`resourceSubscriptions` holds resource URIs (strings)");
                    return refuse(StatusCode::BAD_REQUEST, &id, error);
                };
                if let Err(error) = parse_uri(uri) {
                    return refuse(StatusCode::BAD_REQUEST, &id, error);
                }
                listened.push(uri.to_string());
            }
            listened
        }
        Some(_) => {
            let message = format!("`resourceSubscriptions` must be a list of at most {MAX_LISTENED} resource URIs");
            return refuse(StatusCode::BAD_REQUEST, &id, RpcError::new(code::INVALID_PARAMS, message));
        }
    };
    let changes = match resource_changes(&state, &caller, &id).await {
        Ok(changes) => changes,
        Err(refused) => return *refused,
    };
    let (tx, rx) = mpsc::channel::<Value>(64);
    let nothing_to_hear = uris.is_empty();
    let ack = json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": { "notifications": { "resourceSubscriptions": uris }, "_meta": { SUBSCRIPTION_META: id } },
    });
    let _ = tx.try_send(ack);
    if nothing_to_hear {
        // Nothing it may hear of here: the response ends the stream at once.
        let _ = tx.try_send(json!({ "jsonrpc": "2.0", "id": id, "result": { "resultType": "complete" } }));
        drop(tx);
        return Sse::new(sse_messages(rx)).into_response();
    }
    tokio::spawn(async move {
        tokio::pin!(changes);
        let listened: HashSet<String> = uris.into_iter().collect();
        loop {
            let changed = tokio::select! {
                () = tx.closed() => return,
                changed = changes.next() => changed,
            };
            let Some(changed) = changed else { break };
            for uri in changed.into_iter().filter(|uri| listened.contains(uri)) {
                let notification = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/resources/updated",
                    "params": { "uri": uri, "_meta": { SUBSCRIPTION_META: id } },
                });
                if tx.send(notification).await.is_err() {
                    return;
                }
            }
        }
        // The server stops, or the token expired: the request's response ends the stream.
        let _ = tx.send(json!({ "jsonrpc": "2.0", "id": id, "result": { "resultType": "complete" } })).await;
    });
    let mut response = Sse::new(sse_messages(rx)).keep_alive(KeepAlive::default()).into_response();
    response.extensions_mut().insert(crate::AuditDetail(json!({ "mcp": "subscriptions/listen", "stream": true })));
    response
}

/// `GET /mcp`: the session's notifications, as Server-Sent Events — a
/// `notifications/resources/updated` for each subscribed resource that changed (a task when an
/// event about it is recorded, the status on every event).
async fn open_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = check_origin(&state, &headers) {
        return *refused;
    }
    let session = match session_of(&state, &caller, &headers) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    let changes = match resource_changes(&state, &caller, &Value::Null).await {
        Ok(changes) => changes,
        Err(refused) => return *refused,
    };
    let (tx, rx) = mpsc::channel::<Value>(64);
    state.mcp_sessions().attach_stream(&session, tx.clone());
    let sessions_state = state.clone();
    tokio::spawn(async move {
        tokio::pin!(changes);
        loop {
            let changed = tokio::select! {
                () = tx.closed() => return,
                changed = changes.next() => changed,
            };
            let Some(changed) = changed else { return };
            for uri in changed {
                if let Some(stream) = sessions_state.mcp_sessions().subscriber(&session, &uri) {
                    let notification = json!({
                        "jsonrpc": "2.0",
                        "method": "notifications/resources/updated",
                        "params": { "uri": uri },
                    });
                    if stream.send(notification).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = ReceiverStream::new(rx)
        .map(|notification| Ok::<_, Infallible>(SseEvent::default().event("message").data(notification.to_string())));
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// `DELETE /mcp`: ends the session.
async fn end_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = check_origin(&state, &headers) {
        return *refused;
    }
    let session = match session_of(&state, &caller, &headers) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    state.mcp_sessions().close(&session, &caller);
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_holds_a_bounded_share_of_the_sessions() {
        let sessions = Sessions::default();
        let busy = Caller { token_id: "busy".into(), ..Caller::anonymous() };
        let other = Caller { token_id: "other".into(), ..Caller::anonymous() };
        let kept = sessions.open("2025-11-25", &other);
        let first = sessions.open("2025-11-25", &busy);
        for _ in 0..MAX_SESSIONS_PER_TOKEN {
            sessions.open("2025-11-25", &busy);
        }
        let n_busy = sessions.lock().values().filter(|session| session.token_id == "busy").count();
        assert_eq!(n_busy, MAX_SESSIONS_PER_TOKEN);
        assert!(sessions.touch(&first, &busy).is_none(), "the busy token's oldest went");
        assert!(sessions.touch(&kept, &other).is_some(), "another token's session stays");
    }

    #[test]
    fn a_session_s_calls_are_cancelled_by_its_own_token_only() {
        let sessions = Sessions::default();
        let owner = Caller { token_id: "owner".into(), ..Caller::anonymous() };
        let other = Caller { token_id: "other".into(), ..Caller::anonymous() };
        let session = sessions.open("2025-11-25", &owner);
        let call = sessions.start_call(&session, "7").unwrap();
        assert!(sessions.start_call(&session, "7").is_none(), "one call per request id");
        assert!(sessions.start_call("no-such-session", "8").is_none());
        assert!(!sessions.cancel_call(&session, &other, &json!(7)), "another token's cancel is ignored");
        assert!(!call.is_cancelled());
        assert!(!sessions.cancel_call(&session, &owner, &json!("7")), "the id \"7\" is not the id 7");
        assert!(sessions.cancel_call(&session, &owner, &json!(7)));
        assert!(call.is_cancelled());
        for n in 1..MAX_CALLS_PER_SESSION {
            sessions.start_call(&session, &format!("\"call-{n}\"")).unwrap();
        }
        assert!(sessions.start_call(&session, "over").is_none(), "a session's calls are bounded");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn origins_of_other_sites_are_refused() {
        let own = Some("baton.example");
        let allowed = |origin: &str| origin_allowed(&headers(&[("origin", origin)]), own).is_ok();
        assert!(origin_allowed(&headers(&[]), own).is_ok());
        assert!(allowed("http://localhost:3000"));
        assert!(allowed("http://127.0.0.1:9"));
        assert!(allowed("http://[::1]:9"));
        assert!(allowed("https://baton.example:8443"));
        assert!(!allowed("https://evil.example"));
        assert!(!allowed("null"));
        assert!(!allowed("http://localhost.evil.example"));
        // DNS rebinding: the attacker's name resolves to this server, so Host names it too.
        let rebound = headers(&[("origin", "http://evil.example"), ("host", "evil.example")]);
        assert!(origin_allowed(&rebound, own).is_err());
    }

    #[test]
    fn stateless_requests_are_checked_in_order() {
        let meta = json!({ "_meta": { VERSION_META: "2026-07-28", CAPABILITIES_META: {} }, "name": "list_agents" });
        let good = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "list_agents"),
        ]);
        assert!(matches!(stateless(&good, "tools/call", &meta), Ok(Era::Stateless)));
        let no_meta = stateless(&good, "tools/call", &json!({})).err().unwrap();
        assert_eq!(no_meta.code, code::INVALID_PARAMS);
        let wrong_method = stateless(&good, "tools/list", &meta).err().unwrap();
        assert_eq!(wrong_method.code, code::HEADER_MISMATCH);
        let wrong_name = stateless(
            &headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "x")]),
            "tools/call",
            &meta,
        )
        .err()
        .unwrap();
        assert_eq!(wrong_name.code, code::HEADER_MISMATCH);
        let old = json!({ "_meta": { VERSION_META: "2027-01-01", CAPABILITIES_META: {} } });
        let unsupported = stateless(
            &headers(&[("mcp-protocol-version", "2027-01-01"), ("mcp-method", "tools/list")]),
            "tools/list",
            &old,
        )
        .err()
        .unwrap();
        assert_eq!(unsupported.code, code::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(unsupported.data.unwrap()["requested"], "2027-01-01");
    }

    #[test]
    fn base64_header_values_are_decoded() {
        let encoded = headers(&[("mcp-name", "=?base64?w6l0w6k=?=")]);
        assert_eq!(header_text(&encoded, "mcp-name").as_deref(), Some("été"));
        assert_eq!(header_text(&headers(&[("mcp-name", "=?base64?Y?=")]), "mcp-name"), None);
    }

    #[test]
    fn resource_uris() {
        assert!(matches!(parse_uri("baton://status"), Ok(Resource::Status)));
        assert!(matches!(parse_uri("baton://tasks/12"), Ok(Resource::Task(12))));
        assert!(matches!(parse_uri("baton://agents/builder/log"), Ok(Resource::AgentLog(name)) if name == "builder"));
        assert_eq!(parse_uri("baton://tasks/x").err().unwrap().code, code::RESOURCE_NOT_FOUND);
        assert_eq!(parse_uri("file:///etc/passwd").err().unwrap().code, code::RESOURCE_NOT_FOUND);
    }
}
