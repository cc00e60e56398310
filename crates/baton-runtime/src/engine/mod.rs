//! The engine: runs one plan to completion, durably.
//!
//! It owns the core [`Scheduler`] and is the only writer of its run. Each turn of its loop takes
//! whatever arrived (attempt outcomes, agent starts, operator commands, a clock tick), lets the
//! scheduler decide, writes the decisions and their events in one store call (one group
//! commit), and only then performs them: starting agents, handing out attempts, killing
//! cancelled ones. A crash at any point leaves the store saying what was decided; the next
//! `baton run` resumes from it.
//!
//! The plan can change while it runs (agents added, updated and removed through the handle, or
//! a whole configuration reloaded with [`EngineHandle::reconfigure`]): the scheduler decides
//! what the change means for the run, and the shell builds runtimes for new agents with the
//! engine's [`RuntimeFactory`], replaces the runtime of an agent whose command or environment
//! changed (the old one is stopped), and stops and drops removed ones.

//!
//! The parts, each with its own module:
//! - `open`: finding the run (a new one, or the unfinished one resumed), taking the claim on
//!   it, and loading what the scheduler needs to know of it;
//! - `running`: [`Running`](running::Running), the state of an open run, and its loop, which
//!   waits for one input at a time and then closes the run;
//! - `turn`: one turn: an input applied to the scheduler, which collects the effects, and
//!   `end_turn`, which performs them and answers the commands that waited for them;
//! - `shell`: the shell, which makes the writes durable and then performs the effects
//!   (attempts handed out and killed, agents started and stopped, schedules fired);
//! - `agents`: which runtime each agent has, built with the [`RuntimeFactory`] and replaced
//!   when the plan changes.

mod agents;
mod objectives;
mod open;
mod running;
mod shell;
mod turn;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use baton_core::config::{AgentSpec, Plan};
use baton_core::model::{NewTask, RunState, TaskId, TaskState};
use baton_core::sched::{Progress, ReloadSummary};
use baton_store::{ErrorKind, Store};

use crate::agent::{AgentEvent, AgentRequest, Reply, RequestError};
use crate::clock::Clock;
use crate::mcp::McpHub;
use running::Running;

pub use agents::{RuntimeFactory, agent_runtimes, process_runtimes};
pub use open::Node;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] baton_store::Error),
    /// Another process holds the plan's unfinished run.
    #[error(
        "the plan `{plan}` is being run by process {pid} on {host} (run {run}); stop it first, or wait until its claim expires at {until}"
    )]
    Busy { plan: String, run: String, host: String, pid: u32, until: String },
    #[error("the store changed under the engine: {0}; is another baton executing this run?")]
    Conflict(String),
    /// The claim on the run was not renewed in time (the store unreachable or too slow): the
    /// engine killed its attempts and stopped, so that a node taking the run over runs them
    /// alone.
    #[error(
        "lost the claim on run {run}: it was not renewed within {within} (is the store reachable?); this node's attempts were stopped so that the node taking the run over runs them alone"
    )]
    ClaimLost { run: String, within: String },
    #[error("{0}")]
    Invalid(String),
    /// The engine has stopped (its run ended or it was shut down): it takes no more commands.
    #[error("the engine has stopped")]
    Stopped,
    /// The scheduler refused a command (an unknown task or agent, a task in the wrong state).
    #[error(transparent)]
    Refused(baton_core::sched::Error),
    /// The objective was planned already in this run (its tasks are keyed by it).
    #[error("{0}")]
    AlreadyPlanned(String),
}

pub struct EngineOptions {
    pub plan: Plan,
    pub store: Arc<dyn Store>,
    pub runtimes: RuntimeFactory,
    /// Start a new run even when the last one is unfinished.
    pub fresh: bool,
    /// Keep the run open when its tasks are done (a server, a benchmark).
    pub keep_open: bool,
    pub clock: Clock,
    pub node: Node,
    /// How long running attempts may finish after a shutdown is asked for.
    pub shutdown_grace: Duration,
    /// The run's MCP servers (`[mcp_servers]`): started with the run, stopped when it ends,
    /// given out by [`EngineHandle::tools`]. Build it before the runtimes, which call it.
    pub tools: Arc<McpHub>,
    /// Where the coordinator's provider key is read (Baton's environment), and how its model
    /// is called.
    pub coordinator_env: std::collections::BTreeMap<String, String>,
    pub coordinator_llm: crate::llm::LlmOptions,
}

impl EngineOptions {
    pub fn new(plan: Plan, store: Arc<dyn Store>, runtimes: RuntimeFactory) -> EngineOptions {
        EngineOptions {
            plan,
            store,
            runtimes,
            fresh: false,
            keep_open: false,
            clock: Clock::system(),
            node: Node::this_process(),
            shutdown_grace: Duration::from_secs(10),
            tools: McpHub::empty(),
            coordinator_env: std::collections::BTreeMap::new(),
            coordinator_llm: crate::llm::LlmOptions::default(),
        }
    }
}

/// What became of an objective: the tasks made for it, and why the rules made them when a
/// model did not.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Planned {
    pub tasks: Vec<TaskId>,
    /// `llm` when the model's proposal was taken, `rules` otherwise.
    pub by: String,
    /// Why the rules decided, when the mode is `llm` (or the coordinator is the rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

/// How a run ended, or why it stopped.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: String,
    /// `Interrupted` when the engine was stopped before the run ended (recorded so in the
    /// store; `Running` if it could not be, another node having taken the run over).
    pub state: RunState,
    pub resumed: bool,
    pub error: Option<String>,
    pub n_tasks: u64,
    pub n_succeeded: u64,
    /// Tasks that did not succeed, with why: (key or id, state, reason).
    pub failures: Vec<(String, TaskState, String)>,
}

/// An operator's command for the run, from the API (through [`EngineHandle`]).
#[derive(Debug, Clone, PartialEq)]
enum Control {
    StopAgent {
        agent: String,
    },
    StartAgent {
        agent: String,
    },
    RestartAgent {
        agent: String,
    },
    /// Pause a schedule (`baton schedule pause`): its due times pass without firing.
    PauseSchedule {
        schedule: String,
    },
    /// Resume a paused schedule; it fires from its next due time on.
    ResumeSchedule {
        schedule: String,
    },
    /// Set a budget's limit for the current period (`baton budget set`); `scope` is `global`,
    /// `workstream:NAME` or `agent:NAME`.
    SetBudget {
        scope: String,
        daily_tokens: Option<u64>,
        cost_usd: Option<f64>,
    },
}

enum Command {
    CreateTasks {
        tasks: Vec<NewTask>,
        reply: oneshot::Sender<Result<Vec<TaskId>, Error>>,
    },
    Cancel {
        task: TaskId,
        reason: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Retry {
        task: TaskId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// An operator's command (an agent's stop, start or restart, a schedule's pause or resume,
    /// a budget's limit), answered once applied.
    Control {
        control: Control,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    AddAgent {
        spec: AgentSpec,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    UpdateAgent {
        spec: AgentSpec,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    RemoveAgent {
        name: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Dead letters to deliver again (`None`: every one of the run's); answered with the ids
    /// redelivered once that is durable.
    Redeliver {
        ids: Option<Vec<i64>>,
        reply: oneshot::Sender<Result<Vec<i64>, Error>>,
    },
    /// A changed configuration to apply (hot reload), answered once applied and durable.
    Reconfigure {
        plan: Box<Plan>,
        reply: oneshot::Sender<Result<ReloadSummary, Error>>,
    },
    /// An objective to turn into tasks (`POST /objectives`; a workstream's `objective` at the
    /// start, with no one to answer): the coordinator is asked off the loop.
    PlanObjective {
        workstream: String,
        objective: String,
        reply: Option<oneshot::Sender<Result<Planned, Error>>>,
    },
    /// A changed configuration was refused: the engine writes `ConfigRejected`.
    RejectConfig {
        errors: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// An answer to a command, sent once the turn's writes are durable.
type Deferred = (oneshot::Sender<Result<(), Error>>, Result<(), Error>);

/// Talks to a running engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::UnboundedSender<Command>,
    /// Reports about agents from outside their runtimes (the HTTP API's agent-side endpoints).
    agent_events: mpsc::UnboundedSender<AgentEvent>,
    /// Requests of agents from outside their runtimes (the same endpoints, chat).
    agent_requests: mpsc::UnboundedSender<AgentRequest>,
    plan: watch::Receiver<Option<Arc<Plan>>>,
    progress: watch::Receiver<Progress>,
    run_id: watch::Receiver<Option<String>>,
    tools: Arc<McpHub>,
}

impl EngineHandle {
    /// The run's MCP servers and their tools (a [`crate::tools::ToolProvider`]).
    pub fn tools(&self) -> Arc<McpHub> {
        Arc::clone(&self.tools)
    }

    /// Creates tasks in the run; returns once they are durable.
    pub async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::CreateTasks { tasks, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn cancel(&self, task: TaskId, reason: String) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Cancel { task, reason, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn retry(&self, task: TaskId) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Retry { task, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn stop_agent(&self, agent: String) -> Result<(), Error> {
        self.control(Control::StopAgent { agent }).await
    }

    pub async fn start_agent(&self, agent: String) -> Result<(), Error> {
        self.control(Control::StartAgent { agent }).await
    }

    pub async fn restart_agent(&self, agent: String) -> Result<(), Error> {
        self.control(Control::RestartAgent { agent }).await
    }

    /// Adds an agent to the running plan; it starts when its workstream's phase is active.
    pub async fn add_agent(&self, spec: AgentSpec) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::AddAgent { spec, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Replaces an agent's configuration; it restarts when how it runs changed.
    pub async fn update_agent(&self, spec: AgentSpec) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::UpdateAgent { spec, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Removes an agent from the running plan; its running attempts go back to the queue.
    pub async fn remove_agent(&self, name: String) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::RemoveAgent { name, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Applies a changed configuration to the running run (see
    /// `baton_core::sched::Scheduler::reconfigure`): agents added, removed and updated,
    /// workstreams added, live settings; the file's new tasks are created. Returns what was
    /// applied and what needs a restart; an error changes nothing.
    pub async fn reconfigure(&self, plan: Plan) -> Result<ReloadSummary, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Reconfigure { plan: Box::new(plan), reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Turns an objective into tasks of `workstream` through the coordinator (a model's
    /// proposal, or one task by the rules); returns once they are durable.
    pub async fn plan_objective(&self, workstream: String, objective: String) -> Result<Planned, Error> {
        let (reply, answer) = oneshot::channel();
        let command = Command::PlanObjective { workstream, objective, reply: Some(reply) };
        self.commands.send(command).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Records that a changed configuration was refused (`ConfigRejected`, written by the
    /// engine, the single writer of its run); the running configuration stays.
    pub async fn reject_config(&self, errors: String) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::RejectConfig { errors, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The plan as it runs now: agents and workstreams added, changed or removed since the
    /// start included. `None` until the engine has opened its run.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.borrow().clone()
    }

    /// Delivers dead letters again: those of `ids`, or every one of the run's when `None`.
    /// Returns the ids redelivered (a delivery that is not dead is left as it is).
    pub async fn redeliver(&self, ids: Option<Vec<i64>>) -> Result<Vec<i64>, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Redeliver { ids, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Pauses a schedule: its due times pass without firing until it is resumed.
    pub async fn pause_schedule(&self, schedule: String) -> Result<(), Error> {
        self.control(Control::PauseSchedule { schedule }).await
    }

    pub async fn resume_schedule(&self, schedule: String) -> Result<(), Error> {
        self.control(Control::ResumeSchedule { schedule }).await
    }

    /// Sets a budget's limit until its next reset; `scope` is `global`, `workstream:NAME` or
    /// `agent:NAME`.
    pub async fn set_budget(
        &self,
        scope: String,
        daily_tokens: Option<u64>,
        cost_usd: Option<f64>,
    ) -> Result<(), Error> {
        self.control(Control::SetBudget { scope, daily_tokens, cost_usd }).await
    }

    async fn control(&self, control: Control) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Control { control, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Passes a report about an agent (progress, usage, a sign of life) to the engine, as if
    /// its runtime had sent it.
    pub fn report(&self, event: AgentEvent) -> Result<(), Error> {
        self.agent_events.send(event).map_err(|_| stopped())
    }

    /// Asks the engine something on an agent's behalf, as if its runtime had (a lease, a
    /// message, tokens), and waits for the typed answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> AgentRequest) -> Result<T, RequestError> {
        crate::agent::ask(&self.agent_requests, make).await
    }

    /// Whether the engine has stopped (its run ended or it was shut down).
    pub fn is_stopped(&self) -> bool {
        self.commands.is_closed()
    }

    /// Per-workstream progress, updated after every turn of the engine.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// The run's id, once the engine has opened or resumed it.
    pub fn run_id(&self) -> watch::Receiver<Option<String>> {
        self.run_id.clone()
    }
}

fn stopped() -> Error {
    Error::Stopped
}

pub struct Engine {
    options: EngineOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    agent_events: (mpsc::UnboundedSender<AgentEvent>, mpsc::UnboundedReceiver<AgentEvent>),
    agent_requests: (mpsc::UnboundedSender<AgentRequest>, mpsc::UnboundedReceiver<AgentRequest>),
    plan: watch::Sender<Option<Arc<Plan>>>,
    progress: watch::Sender<Progress>,
    run_id: watch::Sender<Option<String>>,
}

impl Engine {
    pub fn new(options: EngineOptions) -> (Engine, EngineHandle) {
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (progress, progress_rx) = watch::channel(Progress::default());
        let (run_id, run_id_rx) = watch::channel(None);
        let agent_events = mpsc::unbounded_channel();
        let agent_requests = mpsc::unbounded_channel();
        let (plan, plan_rx) = watch::channel(None);
        let handle = EngineHandle {
            commands: commands_tx,
            agent_events: agent_events.0.clone(),
            agent_requests: agent_requests.0.clone(),
            plan: plan_rx,
            progress: progress_rx,
            run_id: run_id_rx,
            tools: Arc::clone(&options.tools),
        };
        (Engine { options, commands, agent_events, agent_requests, plan, progress, run_id }, handle)
    }

    /// Runs the plan until it ends, or until `shutdown` fires (then running attempts get the
    /// grace period to finish and the run stays resumable).
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary, Error> {
        // The MCP servers start with the run and stop after it, when no attempt calls them.
        let tools = Arc::clone(&self.options.tools);
        let (tools_stop, tools_tasks) = (CancellationToken::new(), tokio_util::task::TaskTracker::new());
        tools.start(&tools_stop, &tools_tasks);
        let summary = async {
            let mut running = Running::open(self).await?;
            // The loop's errors (the store failing) still go through `close`, so that no
            // attempt outlives the engine.
            let outcome = running.turns(&shutdown).await;
            running.close(outcome).await
        }
        .await;
        tools_stop.cancel();
        tools_tasks.close();
        tools_tasks.wait().await;
        summary
    }
}

/// A store's refusal of what an agent asked: what the agent may do about it follows from the
/// store error's kind.
pub(crate) fn store_refusal(error: baton_store::Error) -> RequestError {
    match error.kind() {
        ErrorKind::Unavailable | ErrorKind::Corrupt => RequestError::unavailable(error.to_string()),
        ErrorKind::Refused | ErrorKind::NotFound => RequestError::invalid(error.to_string()),
        ErrorKind::Conflict => RequestError::refused(error.to_string()),
        ErrorKind::Full => RequestError::full(error.to_string()),
    }
}

/// A command the scheduler refused, for the caller.
fn refused(error: baton_core::sched::Error) -> Error {
    Error::Refused(error)
}
