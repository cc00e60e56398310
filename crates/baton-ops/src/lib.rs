//! Baton's operations layer: every command and query that an interface offers — the HTTP API,
//! the CLI through it, and next the MCP server, A2A and the dashboard — as typed methods of
//! [`Ops`] that take the caller's identity ([`Caller`]).
//!
//! Architecture invariant: authorization is decided here, from one table ([`auth::TABLE`]),
//! and nowhere else. An interface proves who its caller is (a bearer token, the mode of a local
//! socket), calls an operation, and turns its answer or its [`Error`] (a kind and a message)
//! into its own shape: an HTTP status, a JSON-RPC error, an exit code. What an operation
//! checks, defaults and answers is therefore the same from every interface.
//!
//! Operations change the run only through the engine's [`EngineHandle`] (the engine is the
//! single writer of its run) and read through the [`Store`]. Without an engine (the run is not
//! executing here) the queries still answer from the store and the commands say that no
//! `baton run` executes the run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use baton_core::config::Plan;
use baton_core::model::{RunRecord, TaskState};
use baton_runtime::{Clock, EngineHandle};
use baton_store::Store;

pub mod agents;
pub mod auth;
pub mod conflicts;
pub mod error;
pub mod events;
pub mod messages;
pub mod schedules;
pub mod status;
pub mod tasks;
pub mod tools;

pub use auth::{Action, Caller, Grant, Role};
pub use error::{Error, ErrorKind};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an [`Ops`] works on.
pub struct OpsOptions {
    pub store: Arc<dyn Store>,
    /// The run's engine, when it executes here; `None`: queries only.
    pub engine: Option<EngineHandle>,
    pub run_id: String,
    /// The plan the run started with; while the engine runs its current plan is read from it.
    pub plan: Plan,
    /// Where agents' logs are.
    pub log_dir: PathBuf,
    pub clock: Clock,
}

/// The operations on one run. Cheap to clone.
#[derive(Clone)]
pub struct Ops {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Store>,
    engine: Option<EngineHandle>,
    run_id: String,
    plan: Arc<Plan>,
    log_dir: PathBuf,
    clock: Clock,
    started: Instant,
}

impl Ops {
    pub fn new(options: OpsOptions) -> Ops {
        Ops {
            shared: Arc::new(Shared {
                store: options.store,
                engine: options.engine,
                run_id: options.run_id,
                plan: Arc::new(options.plan),
                log_dir: options.log_dir,
                clock: options.clock,
                started: Instant::now(),
            }),
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.shared.store.as_ref()
    }

    pub fn store_arc(&self) -> Arc<dyn Store> {
        Arc::clone(&self.shared.store)
    }

    /// The run's engine, or [`ErrorKind::Unavailable`] when it does not execute here.
    pub fn engine(&self) -> Result<&EngineHandle> {
        self.shared.engine.as_ref().ok_or_else(|| {
            Error::unavailable(format!(
                "no `baton run` is executing run {} here: start it with `baton run`; commands change a running run",
                self.shared.run_id
            ))
        })
    }

    /// Whether an engine executes the run and has not stopped.
    pub fn is_running(&self) -> bool {
        self.shared.engine.as_ref().is_some_and(|engine| !engine.is_stopped())
    }

    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The plan as it runs now (with agents added, updated or removed since the start).
    pub fn plan(&self) -> Arc<Plan> {
        self.shared.engine.as_ref().and_then(EngineHandle::plan).unwrap_or_else(|| Arc::clone(&self.shared.plan))
    }

    pub fn clock(&self) -> Clock {
        self.shared.clock
    }

    pub fn log_dir(&self) -> &Path {
        &self.shared.log_dir
    }

    /// How long this operations layer has served.
    pub fn uptime(&self) -> std::time::Duration {
        self.shared.started.elapsed()
    }

    /// The run's record.
    pub async fn run(&self) -> Result<RunRecord> {
        self.store()
            .run(self.run_id())
            .await?
            .ok_or_else(|| Error::unavailable(format!("run {} is not in the store", self.run_id())))
    }

    /// The run's tasks per state: from the engine's counts while it runs (no query), else
    /// from the store.
    pub async fn task_counts(&self) -> Result<Vec<(TaskState, u64)>> {
        if let Some(engine) = &self.shared.engine
            && !engine.is_stopped()
        {
            let by_state = engine.progress().borrow().by_state;
            return Ok(TaskState::ALL.into_iter().zip(by_state).collect());
        }
        Ok(self.store().task_counts(self.run_id()).await?)
    }
}

/// `limit`, defaulting to `default`, or an error when it is not between 1 and 1000.
pub(crate) fn page_limit(limit: Option<u64>, default: u64) -> Result<u64> {
    let limit = limit.unwrap_or(default);
    if !(1..=1000).contains(&limit) {
        return Err(Error::invalid("`limit` must be between 1 and 1000"));
    }
    Ok(limit)
}

/// Under [`Grant::Own`]: the caller's own agent, refusing a filter that names another.
pub fn own_only(caller: &Caller, named: Option<&str>, what: &str) -> Result<String> {
    let own = caller.own_agent()?;
    match named {
        Some(named) if named != own => {
            Err(Error::forbidden(format!("this token reads the {what} of agent `{own}` only, not of `{named}`")))
        }
        _ => Ok(own.to_string()),
    }
}
