//! The API's JSON bodies, through the real router in process (no socket): an engine on a
//! SQLite store in a temporary directory, `[auth]` on and an admin's token. Agents run on an
//! inert runtime (an attempt succeeds at once), so that no process is ever started. A panic,
//! an answer of 500 or a stopped engine is a failure.
//!
//! Input: one byte choosing the endpoint (`a` is the first of [`ENDPOINTS`]), then the body.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use baton_core::Outcome;
use baton_runtime::agent::{AgentContext, AgentError, AgentRuntime, Attempt};
use baton_runtime::engine::{Engine, EngineOptions, RuntimeFactory};
use baton_runtime::remote::RemoteHub;
use baton_server::{AppState, Auth, Role, ServerOptions};
use baton_store::{SqliteStore, Store};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const PLAN: &str = r#"
[orchestration]
name = "fuzz"

[[workstreams]]
name = "main"

[[agents]]
name = "builder"
runtime = "remote"
capabilities = ["build"]
concurrency = 4

[[agents]]
name = "echo"
command = ["true"]
capabilities = ["echo"]

[budget]
daily_tokens = 50000

[[schedules]]
name = "nightly"
cron = "0 3 * * *"
task = { title = "Nightly", requires = ["build"] }
"#;

/// The endpoints that take a body; `{id}` is a task that exists.
const ENDPOINTS: &[(Method, &str)] = &[
    (Method::POST, "/tasks"),
    (Method::POST, "/tasks/batch"),
    (Method::POST, "/tasks/1/cancel"),
    (Method::POST, "/messages"),
    (Method::POST, "/budgets/global"),
    (Method::POST, "/budgets/agent:builder"),
    (Method::POST, "/agent/claim"),
    (Method::POST, "/agent/heartbeat"),
    (Method::POST, "/agent/results"),
    (Method::POST, "/agent/usage"),
    (Method::POST, "/agent/resources/acquire"),
    (Method::POST, "/agent/resources/release"),
    (Method::POST, "/agent/tasks/1/progress"),
    (Method::POST, "/agent/tasks/1/complete"),
    (Method::POST, "/agent/tasks/1/fail"),
    (Method::POST, "/tokens"),
    (Method::POST, "/agents"),
    (Method::PUT, "/agents/echo"),
    (Method::PUT, "/agents/builder"),
];

const SECRET: &[u8] = b"the fuzz secret, long enough to be a secret";

/// An agent that never starts a process: every attempt succeeds at once.
struct Inert;

#[async_trait]
impl AgentRuntime for Inert {
    async fn start(&self, _context: AgentContext) -> Result<(), AgentError> {
        Ok(())
    }

    async fn run(&self, _attempt: Attempt, _cancel: CancellationToken) -> Outcome {
        Outcome::Succeeded { result: serde_json::Value::Null }
    }

    async fn stop(&self) {}
}

struct Server {
    runtime: Runtime,
    router: axum::Router,
    token: String,
    engine: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let env = BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]);
        let plan = baton_core::config::load("baton.toml", PLAN, &env).expect("a valid plan");
        let options = baton_store::sqlite::Options { synchronous: baton_store::sqlite::Synchronous::Normal };
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("baton.db"), options).expect("a store"));
        let auth = Auth::new(SECRET, Duration::from_secs(3600)).expect("auth");
        let token = auth
            .issue("admin", Role::Admin, None, Duration::from_secs(86_400 * 365), baton_server::auth::unix_now())
            .expect("a token")
            .0;
        let clock = baton_runtime::Clock::system();
        let hub = RemoteHub::new(clock);
        let inert: RuntimeFactory = Arc::new(|_spec| Arc::new(Inert) as Arc<dyn AgentRuntime>);
        let mut engine_options = EngineOptions::new(plan.clone(), Arc::clone(&store), hub.runtimes(inert));
        engine_options.keep_open = true;
        let (engine, handle) = Engine::new(engine_options);
        let (engine, run_id) = runtime.block_on(async {
            let mut run_id = handle.run_id();
            let engine = tokio::spawn(async move {
                engine.run(CancellationToken::new()).await.expect("the engine ran");
            });
            loop {
                if let Some(id) = run_id.borrow().clone() {
                    break (engine, id);
                }
                run_id.changed().await.expect("the engine opens a run");
            }
        });
        let max_request_size = 1024 * 1024;
        let state = AppState::new(ServerOptions {
            store,
            engine: handle,
            hub,
            run_id,
            plan,
            auth: Some(auth),
            rate_limit: None,
            max_request_size,
            log_dir: dir.path().join("logs"),
            clock,
            shutdown: CancellationToken::new(),
        });
        let router = baton_server::router(state, max_request_size);
        Server { runtime, router, token, engine, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let [which, body @ ..] = data else { return };
    let (method, path) = &ENDPOINTS[usize::from(which.wrapping_sub(b'a')) % ENDPOINTS.len()];
    let mut body = body.to_vec();
    // A claim may wait up to a minute for a task, by design; here it does not wait.
    if *path == "/agent/claim"
        && let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice::<serde_json::Value>(&body)
        && fields.contains_key("wait_ms")
    {
        fields.insert("wait_ms".to_string(), 0.into());
        body = serde_json::to_vec(&fields).expect("JSON");
    }
    let server = server();
    let request = Request::builder()
        .method(method.clone())
        .uri(*path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {}", server.token))
        .body(Body::from(body))
        .expect("a request");
    let (status, answer) = server.runtime.block_on(async {
        let response = server.router.clone().oneshot(request).await.expect("an answer");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a body");
        // Let the engine act on what the request changed.
        tokio::task::yield_now().await;
        (status, bytes)
    });
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{method} {path}: {status} {}", String::from_utf8_lossy(&answer));
    }
    assert!(!server.engine.is_finished(), "the engine stopped");
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {path}: {}", String::from_utf8_lossy(&answer));
});
