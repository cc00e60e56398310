//! A real server for the API tests: the engine on a SQLite file in a temporary directory, per-task
//! process agents as real child processes, remote agents through the hub, and the HTTP API on a
//! port the system picks. Requests go through a real HTTP client.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use baton_core::Event;
use baton_runtime::engine::{self, Engine, EngineOptions};
use baton_runtime::process::ProcessEnv;
use baton_runtime::remote::RemoteHub;
use baton_server::{AppState, Auth, Role, ServerOptions};
use baton_store::{SqliteStore, Store};

pub const SECRET: &str = "the test secret, long enough to be a secret";

/// A plan with two remote agents (`builder` takes `build` tasks, `writer` takes `docs`), and a
/// per-task process agent `echo` that prints its task's input.
pub const PLAN: &str = r#"
[orchestration]
name = "api-test"

[[workstreams]]
name = "main"

[[agents]]
name = "builder"
runtime = "remote"
capabilities = ["build"]
concurrency = 4
heartbeat_timeout = "1s"

[[agents]]
name = "writer"
runtime = "remote"
capabilities = ["docs"]
concurrency = 4

[[agents]]
name = "echo"
command = ["sh", "-c", "cat"]
capabilities = ["echo"]
concurrency = 2
"#;

pub struct Server {
    pub url: String,
    pub client: reqwest::Client,
    pub store: Arc<SqliteStore>,
    pub state: AppState,
    pub auth: Option<Auth>,
    pub run_id: String,
    stop: CancellationToken,
    engine_stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
    /// What a second server state on the same engine and store is made of.
    parts: (engine::EngineHandle, RemoteHub, baton_core::config::Plan),
}

pub struct Options {
    pub plan: String,
    pub auth: bool,
    pub rate_limit: Option<(u32, u32)>,
    pub max_request_size: usize,
    pub limits: baton_server::ConnectionLimits,
    /// More of Baton's environment, beyond `PATH` and `HOME`.
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plan: PLAN.to_string(),
            auth: false,
            rate_limit: None,
            max_request_size: 1024 * 1024,
            limits: baton_server::ConnectionLimits::default(),
            env: Vec::new(),
        }
    }
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut env: BTreeMap<String, String> = BTreeMap::from([
            ("PATH".to_string(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".to_string(), dir.path().display().to_string()),
        ]);
        env.extend(options.env.iter().cloned());
        let plan = baton_core::config::load("baton.toml", &options.plan, &env).expect("a valid plan");
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
        );
        let auth = options.auth.then(|| Auth::new(SECRET.as_bytes(), Duration::from_secs(3600)).expect("auth"));
        let clock = baton_runtime::Clock::system();
        let hub = RemoteHub::new(clock);
        let process_env = ProcessEnv {
            base_dir: dir.path().to_path_buf(),
            log_dir: dir.path().join("logs"),
            env,
            registry: None,
            api: None,
            mcp_servers: plan.mcp_servers.clone(),
        };
        let tools = baton_runtime::mcp::McpHub::new(&plan.mcp_servers, Some(process_env.clone()));
        // LLM agents are offered the run's MCP tools beside Baton's own.
        let external: Arc<dyn baton_runtime::tools::ToolProvider> = tools.clone();
        let runtimes = hub.runtimes(engine::agent_runtimes(process_env, Some(external), Default::default()));
        let mut engine_options = EngineOptions::new(plan.clone(), Arc::clone(&store) as Arc<dyn Store>, runtimes);
        engine_options.tools = tools;
        engine_options.keep_open = true;
        engine_options.shutdown_grace = Duration::from_secs(2);
        let (engine, handle) = Engine::new(engine_options);
        let engine_stop = CancellationToken::new();
        let mut run_id_rx = handle.run_id();
        let engine_task = tokio::spawn({
            let stop = engine_stop.clone();
            async move {
                engine.run(stop).await.expect("the engine ran");
            }
        });
        let run_id = loop {
            if let Some(id) = run_id_rx.borrow().clone() {
                break id;
            }
            run_id_rx.changed().await.expect("the engine opens a run");
        };
        let stop = CancellationToken::new();
        let parts = (handle.clone(), hub.clone(), plan.clone());
        let state = AppState::new(ServerOptions {
            store: Arc::clone(&store) as Arc<dyn Store>,
            engine: handle,
            hub,
            run_id: run_id.clone(),
            plan,
            auth: auth.clone(),
            rate_limit: options.rate_limit,
            max_request_size: options.max_request_size,
            log_dir: dir.path().join("logs"),
            clock,
            shutdown: stop.clone(),
        });
        let listener = baton_server::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let server_task = tokio::spawn({
            let state = state.clone();
            let stop = stop.clone();
            async move {
                baton_server::serve(listener, state, options.max_request_size, None, options.limits, stop)
                    .await
                    .expect("served");
            }
        });
        let metrics_task = tokio::spawn(baton_server::metrics::follow_events(state.clone(), stop.clone()));
        let metrics_task = tokio::spawn(async move {
            let _ = metrics_task.await;
        });
        Server {
            url,
            client: reqwest::Client::new(),
            store,
            state,
            auth,
            run_id,
            stop,
            engine_stop,
            tasks: vec![engine_task, server_task, metrics_task],
            dir,
            parts,
        }
    }

    /// A new server state on this server's engine and store, as a restarted server has: what
    /// it keeps in memory alone (A2A push configs, MCP sessions) starts empty.
    pub fn restarted_state(&self) -> AppState {
        let (engine, hub, plan) = self.parts.clone();
        AppState::new(ServerOptions {
            store: Arc::clone(&self.store) as Arc<dyn Store>,
            engine,
            hub,
            run_id: self.run_id.clone(),
            plan,
            auth: self.auth.clone(),
            rate_limit: None,
            max_request_size: 1024 * 1024,
            log_dir: self.dir.path().join("logs"),
            clock: baton_runtime::Clock::system(),
            shutdown: self.stop.clone(),
        })
    }

    /// A token for `role` (agent tokens act as `agent`).
    pub fn token(&self, role: Role, agent: Option<&str>) -> String {
        let auth = self.auth.as_ref().expect("a server with auth");
        let subject = agent.map_or_else(|| role.as_str().to_string(), |agent| format!("agent:{agent}"));
        auth.issue(&subject, role, agent, Duration::from_secs(600), baton_server::auth::unix_now()).expect("a token").0
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.url))
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.url)).json(&body)
    }

    /// GET, expecting 200, as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path).send().await.expect("a response");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// POST, expecting a 2xx, as JSON.
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let response = self.post(path, body).send().await.expect("a response");
        let status = response.status();
        let text = response.text().await.expect("a body");
        assert!(status.is_success(), "POST {path}: {status} {text}");
        if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).expect("JSON") }
    }

    /// Stops the engine only, as a crash of it would: the server keeps answering.
    pub async fn stop_engine(&mut self) {
        self.engine_stop.cancel();
        let engine = self.tasks.remove(0);
        let _ = engine.await;
    }

    pub fn events(&self) -> broadcast::Receiver<std::sync::Arc<Event>> {
        self.store.subscribe()
    }

    pub async fn stop(self) {
        self.engine_stop.cancel();
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Waits for the first event that `pred` accepts (the test fails after 20 s).
pub async fn wait_event(
    events: &mut broadcast::Receiver<std::sync::Arc<Event>>,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if pred(&event) => return std::sync::Arc::unwrap_or_clone(event),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the store closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("the event came within 20 s")
}
