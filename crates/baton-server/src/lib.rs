//! Baton's control plane: the HTTP API of `baton serve` (on its address) and of `baton run`
//! (on the socket beside the store, [`local`]), live events over Server-Sent Events and
//! WebSocket, bearer-token auth with roles, the audit log, rate limits, Prometheus metrics and
//! the OpenAPI description of it all.
//!
//! Architecture invariant: this is the only crate that knows HTTP. It changes the run only
//! through the engine's [`EngineHandle`] (the engine stays the single writer of its run) and
//! the [`RemoteHub`] (remote agents' attempts), and reads through the [`Store`].
//!
//! Every request passes one gate ([`gate`]): it finds the caller from the bearer token, applies
//! the caller's rate limit, times the request for the metrics, and writes mutating requests to
//! the audit log with their outcome. Handlers then check what the caller's role allows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use baton_core::config::Plan;
use baton_runtime::remote::RemoteHub;
use baton_runtime::{Clock, EngineHandle};
use baton_store::{NewAuditEntry, Store};

pub mod a2a;
pub mod api;
pub mod auth;
pub mod chat;
pub mod connections;
pub mod coordination;
pub mod dashboard;
pub mod error;
pub mod live;
pub mod local;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod standin;
pub mod terminal;
pub mod worker;

pub use auth::{Action, Auth, Caller, Grant, Role};
pub use connections::{ConnectionLimits, Listener, Peer};
pub use error::ApiError;

/// Everything the server needs.
pub struct ServerOptions {
    pub store: Arc<dyn Store>,
    pub engine: EngineHandle,
    pub hub: RemoteHub,
    pub run_id: String,
    /// The plan the server started with; the engine's current plan is read from its handle.
    pub plan: Plan,
    /// `None`: no `[auth]`, every caller is an anonymous admin (loopback only).
    pub auth: Option<Auth>,
    /// Requests per second and burst, per token with `[auth]`, else per client address;
    /// `None`: no limit.
    pub rate_limit: Option<(u32, u32)>,
    pub max_request_size: usize,
    /// Where agents' logs are.
    pub log_dir: PathBuf,
    pub clock: Clock,
    /// Fired when the server should stop: open streams end.
    pub shutdown: CancellationToken,
}

/// The server's shared state. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    ops: baton_ops::Ops,
    engine: EngineHandle,
    hub: RemoteHub,
    auth: Option<Auth>,
    limiter: Option<metrics::Limiter>,
    /// Requests without a valid token, per client address (see [`authenticate`]).
    unauthenticated: metrics::Limiter,
    /// Failed-authentication entries written to the audit log, from every address together.
    unauthenticated_audit: metrics::Limiter,
    /// Failed-authentication entries written since the oldest were last pruned.
    n_unauthenticated_audited: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
    metrics: metrics::Metrics,
    /// The MCP sessions of the handshake era (`/mcp`).
    mcp_sessions: mcp::Sessions,
    /// The A2A push notification configs, and their tasks' followers.
    a2a_pushes: Arc<a2a::push::Registry>,
}

impl AppState {
    pub fn new(options: ServerOptions) -> AppState {
        let metrics = metrics::Metrics::install();
        let limiter = options.rate_limit.map(|(per_second, burst)| metrics::Limiter::new(per_second, burst));
        AppState {
            shared: Arc::new(Shared {
                ops: baton_ops::Ops::new(baton_ops::OpsOptions {
                    store: options.store,
                    engine: Some(options.engine.clone()),
                    run_id: options.run_id,
                    plan: options.plan,
                    log_dir: options.log_dir,
                    clock: options.clock,
                }),
                engine: options.engine,
                hub: options.hub,
                auth: options.auth,
                limiter,
                unauthenticated: metrics::Limiter::new(UNAUTHENTICATED_PER_SECOND, UNAUTHENTICATED_BURST),
                unauthenticated_audit: metrics::Limiter::new(
                    UNAUTHENTICATED_AUDIT_PER_SECOND,
                    UNAUTHENTICATED_AUDIT_BURST,
                ),
                n_unauthenticated_audited: std::sync::atomic::AtomicU64::new(0),
                shutdown: options.shutdown,
                metrics,
                mcp_sessions: mcp::Sessions::default(),
                a2a_pushes: Arc::default(),
            }),
        }
    }

    /// The operations layer: every handler's work is done there.
    pub fn ops(&self) -> &baton_ops::Ops {
        &self.shared.ops
    }

    pub fn store(&self) -> &dyn Store {
        self.shared.ops.store()
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.shared.engine
    }

    pub fn hub(&self) -> &RemoteHub {
        &self.shared.hub
    }

    pub fn run_id(&self) -> &str {
        self.shared.ops.run_id()
    }

    /// The plan as it runs now (with agents added, updated or removed since the start).
    /// Shared, not copied: every agent-side request looks its agent up here.
    pub fn plan(&self) -> Arc<Plan> {
        self.shared.ops.plan()
    }

    /// The run's tasks per state: from the engine's counts while it runs (no query), else
    /// from the store.
    pub async fn task_counts(&self) -> Result<Vec<(baton_core::model::TaskState, u64)>, ApiError> {
        Ok(self.shared.ops.task_counts().await?)
    }

    pub fn auth(&self) -> Option<&Auth> {
        self.shared.auth.as_ref()
    }

    pub fn clock(&self) -> Clock {
        self.shared.ops.clock()
    }

    pub fn uptime(&self) -> Duration {
        self.shared.ops.uptime()
    }

    pub fn mcp_sessions(&self) -> &mcp::Sessions {
        &self.shared.mcp_sessions
    }

    pub fn a2a_pushes(&self) -> &Arc<a2a::push::Registry> {
        &self.shared.a2a_pushes
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    pub fn log_dir(&self) -> &std::path::Path {
        self.shared.ops.log_dir()
    }
}

/// Requests without a valid token that one client address may make: a burst, then this many a
/// second. Over it, `429`, and no audit entry.
const UNAUTHENTICATED_PER_SECOND: u32 = 2;
const UNAUTHENTICATED_BURST: u32 = 30;
/// Failed-authentication entries the audit log takes from all addresses together; the rest are
/// counted (`baton_http_unaudited_total`) and not written.
const UNAUTHENTICATED_AUDIT_PER_SECOND: u32 = 5;
const UNAUTHENTICATED_AUDIT_BURST: u32 = 100;
/// The audit log keeps this many failed-authentication entries, the newest.
pub const UNAUTHENTICATED_AUDIT_KEEP: u64 = 10_000;
/// The longest request path an audit entry stores; a longer one is cut, saying so.
pub const AUDIT_TARGET_MAX: usize = 512;
/// The actor of an audit entry for a request without a valid token.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// The whole API.
pub fn router(state: AppState, max_request_size: usize) -> Router {
    api::routes()
        .merge(worker::routes())
        .merge(chat::routes())
        .merge(coordination::routes())
        .merge(live::routes())
        .merge(mcp::routes())
        .merge(terminal::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
        .merge(a2a::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .layer(DefaultBodyLimit::max(max_request_size))
        .with_state(state)
        // The dashboard's static files hold no data: served beside the gate, not behind it, so
        // that the page loads before it has a token.
        .merge(dashboard::routes())
}

/// Endpoints of other agent orchestrators that users bring with them (the briefs Baton was
/// built from), and where Baton has the same thing: `(method, path, status, what to use)`.
const ELSEWHERE: &[(Method, &str, StatusCode, &str)] = &[
    (Method::POST, "/agents/start", StatusCode::METHOD_NOT_ALLOWED, "start an agent with `POST /agents/{name}/start`"),
    (Method::POST, "/agents/stop", StatusCode::METHOD_NOT_ALLOWED, "stop an agent with `POST /agents/{name}/stop`"),
    (
        Method::POST,
        "/agents/create",
        StatusCode::METHOD_NOT_ALLOWED,
        "add an agent with `POST /agents`, its `[[agents]]` entry as JSON",
    ),
    (Method::POST, "/agents/delete", StatusCode::METHOD_NOT_ALLOWED, "remove an agent with `DELETE /agents/{name}`"),
    (
        Method::GET,
        "/agents/runbooks",
        StatusCode::NOT_FOUND,
        "each agent's runbook is its `spec.runbook` in `GET /agents` (names and state too)",
    ),
    (
        Method::GET,
        "/api/squad",
        StatusCode::NOT_FOUND,
        "Baton's API is at the root: `GET /status`, `GET /agents`, `POST /tasks`, `POST /messages`; see /openapi.json",
    ),
    (
        Method::POST,
        "/api/squad",
        StatusCode::NOT_FOUND,
        "Baton's API is at the root: `POST /tasks` creates work, `POST /messages` talks to agents; see /openapi.json",
    ),
];

/// A request for another orchestrator's endpoint that Baton does not have: the error, naming
/// Baton's equivalent. `None` for everything else — and for `/agents/NAME` when an agent has
/// that name.
fn elsewhere(state: &AppState, method: &Method, path: &str) -> Option<ApiError> {
    let (_, _, status, hint) = ELSEWHERE.iter().find(|(m, p, _, _)| m == method && *p == path)?;
    if let Some(name) = path.strip_prefix("/agents/")
        && state.plan().agent(name).is_some()
        && *method == Method::GET
    {
        return None;
    }
    let code = if *status == StatusCode::NOT_FOUND { "not_found" } else { "method_not_allowed" };
    Some(ApiError::new(*status, code, format!("Baton has no `{method} {path}`: {hint}")))
}

/// What a handler adds to its request's audit entry (as `detail`), put in its response's
/// extensions: a protocol endpoint's method and what it named (an MCP tool call's tool).
#[derive(Debug, Clone)]
pub struct AuditDetail(pub serde_json::Value);

/// Authentication, rate limiting, metrics and the audit log, for every request.
async fn gate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);

    let caller = authenticate(&state, &request, &path);
    let response = match caller.clone() {
        Err(error) => error.into_response(),
        Ok(caller) => {
            match state.shared.limiter.as_ref().map(|limiter| limiter.check(&limit_key(&state, &caller, &request))) {
                Some(Err(retry_after)) => {
                    rate_limited(format!("too many requests from `{}`", caller.subject), retry_after).into_response()
                }
                _ => match elsewhere(&state, &method, &path) {
                    Some(error) => error.into_response(),
                    None => {
                        request.extensions_mut().insert(caller);
                        next.run(request).await
                    }
                },
            }
        }
    };
    let status = response.status();
    state.shared.metrics.http_request(method.as_str(), &route, status.as_u16(), started.elapsed());
    if mutating {
        let detail = response.extensions().get::<AuditDetail>().map(|detail| detail.0.clone());
        audit(&state, caller.as_ref().ok(), &method, &route, &path, status, detail).await;
    }
    response
}

/// The caller of `request`: from its token with `[auth]` (a token for an agent that is not in
/// the run is refused), else an anonymous admin.
///
/// Requests without a valid token are limited per client address: over the limit they get
/// `429` instead of `401`, and are not written to the audit log. The token is read first —
/// checking an HS256 signature costs microseconds — so that a client that keeps failing on a
/// shared address (loopback, a NAT) does not shut out the clients there that hold a token.
fn authenticate(state: &AppState, request: &Request, path: &str) -> Result<Caller, ApiError> {
    let token = bearer(request);
    if token.is_none() && request.extensions().get::<Peer>() == Some(&Peer::Local) {
        return Ok(Caller::local());
    }
    let Some(auth) = state.auth() else { return Ok(Caller::anonymous()) };
    let verified = match token {
        // Health, the API description and the A2A Agent Cards are open, so that probes and
        // clients can find their way.
        None if matches!(path, "/health" | "/openapi.json") || a2a::is_card_path(path) => {
            return Ok(Caller::anonymous_viewer());
        }
        None => Err(ApiError::unauthorized(
            "this server needs a bearer token: `Authorization: Bearer TOKEN` (see `baton token create`)",
        )),
        Some(token) => auth.verify(&token),
    };
    let verified = verified.and_then(|caller| match &caller.agent {
        Some(agent) if state.plan().agent(agent).is_none() => Err(ApiError::forbidden(format!(
            "this token acts as agent `{agent}`, which is not in this run; issue a token for an agent of the plan"
        ))),
        _ => Ok(caller),
    });
    verified.map_err(|error| {
        let address = client_address(request);
        match state.shared.unauthenticated.check(&address) {
            Ok(()) => error,
            Err(retry_after) => {
                rate_limited(format!("too many requests without a valid token from {address}"), retry_after)
            }
        }
    })
}

fn rate_limited(message: String, retry_after: u64) -> ApiError {
    let mut error =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("{message}; retry after {retry_after} s"));
    error.retry_after = Some(retry_after);
    error
}

/// Writes a mutating request to the audit log. What an entry stores is bounded: the path is cut
/// at [`AUDIT_TARGET_MAX`] bytes, and requests without a valid token are written at a bounded
/// rate, the oldest of them pruned beyond [`UNAUTHENTICATED_AUDIT_KEEP`].
async fn audit(
    state: &AppState,
    caller: Option<&Caller>,
    method: &Method,
    route: &str,
    path: &str,
    status: StatusCode,
    detail: Option<serde_json::Value>,
) {
    let (actor, role) = match caller {
        Some(caller) => (caller.subject.clone(), caller.role.as_str().to_string()),
        None => (UNAUTHENTICATED.to_string(), String::new()),
    };
    if caller.is_none() {
        if status == StatusCode::TOO_MANY_REQUESTS || state.shared.unauthenticated_audit.check(UNAUTHENTICATED).is_err()
        {
            ::metrics::counter!("baton_http_unaudited_total").increment(1);
            return;
        }
        let n_written = state.shared.n_unauthenticated_audited.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n_written.is_multiple_of(1000) {
            let store = state.shared.ops.store_arc();
            tokio::spawn(async move {
                if let Err(error) = store.prune_audit(UNAUTHENTICATED, UNAUTHENTICATED_AUDIT_KEEP).await {
                    tracing::error!(%error, "pruning the audit log's failed-authentication entries");
                }
            });
        }
    }
    let outcome = match status.as_u16() {
        200..=299 => "ok".to_string(),
        401 | 403 => "denied".to_string(),
        429 => "rate limited".to_string(),
        code => format!("error {code}"),
    };
    let entry = NewAuditEntry {
        at: state.clock().now(),
        actor: cut(&actor, AUDIT_TARGET_MAX),
        role,
        action: format!("{method} {route}"),
        target: Some(cut(path, AUDIT_TARGET_MAX)),
        outcome,
        status: status.as_u16(),
        detail,
    };
    // An operator's request answers once its audit entry is durable. A worker's traffic
    // (claims, heartbeats, results: many per second) does not wait for it: the entry goes
    // into the store's next group commit, so a crash in the millisecond after the answer
    // can lose the entry of a request whose effect was recorded.
    if route.starts_with("/agent/") {
        let store = state.shared.ops.store_arc();
        tokio::spawn(async move {
            if let Err(error) = store.record_audit(entry).await {
                tracing::error!(%error, "audit entry not written");
            }
        });
    } else if let Err(error) = state.store().record_audit(entry).await {
        tracing::error!(%error, "audit entry not written");
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how much was cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &text[..end], text.len() - end)
}

fn client_address(request: &Request) -> String {
    if request.extensions().get::<Peer>() == Some(&Peer::Local) {
        return Peer::Local.to_string();
    }
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.ip().to_string())
}

/// What a rate limit is kept per: the token with `[auth]`, else the client's address.
fn limit_key(state: &AppState, caller: &Caller, request: &Request) -> String {
    if state.auth().is_some() {
        return caller.token_id.clone();
    }
    client_address(request)
}

fn bearer(request: &Request) -> Option<String> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        // A browser's WebSocket cannot send headers, only subprotocols: the token comes as
        // `bearer.TOKEN` among them (a JWT is made of characters a subprotocol may hold).
        let protocols = request.headers().get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
        return protocols.split(',').find_map(|protocol| protocol.trim().strip_prefix("bearer.")).map(str::to_string);
    };
    let value = value.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

/// TLS from certificate and key files (PEM).
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot load the TLS certificate or key: {0}")]
    Tls(String),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
    /// Something answers on the local socket already: it is not taken over.
    #[error(
        "another process serves the API socket {path}; a second `baton` executing a plan from this store directory needs a store of its own (store.url)"
    )]
    SocketInUse { path: PathBuf },
    #[error("cannot serve the API on {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
}

/// Binds `listen`; the caller learns the address (port 0 picks one) before serving.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(listen).await.map_err(|source| Error::Bind { addr: listen.to_string(), source })
}

/// Serves the API on `listener` (TCP, or the local socket from [`local::bind`]) until
/// `shutdown` fires; then stops accepting, lets requests in flight finish (open streams end
/// with the shutdown) and returns. `limits` bound how many connections are held and how slow
/// a client may be (see [`connections`]).
pub async fn serve<L: Listener>(
    listener: L,
    state: AppState,
    max_request_size: usize,
    tls: Option<Tls>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    a2a::restore_push_configs(&state).await;
    let app = router(state, max_request_size);
    let acceptor = match tls {
        None => None,
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .map_err(|error| Error::Tls(format!("{} / {}: {error}", tls.cert.display(), tls.key.display())))?;
            Some(tokio_rustls::TlsAcceptor::from(config.get_inner()))
        }
    };
    connections::serve(listener, app, acceptor, limits, shutdown).await;
    Ok(())
}

/// A response for a caller that wanted JSON.
pub(crate) fn json<T: serde::Serialize>(value: T) -> Response {
    axum::Json(value).into_response()
}
