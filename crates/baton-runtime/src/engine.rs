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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use baton_core::budget::{Limit, Scope, Usage};
use baton_core::config::{AgentKind, AgentSpec, Plan, ProcessMode};
use baton_core::model::{NewTask, RunRecord, RunState, TaskId, TaskRecord, TaskState};
use baton_core::sched::ReloadSummary;
use baton_core::sched::{Effects, Progress, RunChange, Scheduler, Stored, Write};
use baton_core::{EventKind, Outcome, Timestamp};
use baton_store::{Applied, ErrorKind, NewRun, Store, TaskFilter};

use crate::agent::{
    AgentContext, AgentError, AgentEvent, AgentRequest, AgentRuntime, Attempt, Reply, RequestError, Unavailable,
};
use crate::clock::Clock;
use crate::postoffice::PostOffice;
use crate::process::pty::PtyAgent;
use crate::process::worker::WorkerAgent;
use crate::process::{ProcessAgent, ProcessEnv};

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
    #[error("{0}")]
    Invalid(String),
    /// The engine has stopped (its run ended or it was shut down): it takes no more commands.
    #[error("the engine has stopped")]
    Stopped,
    /// The scheduler refused a command (an unknown task or agent, a task in the wrong state).
    #[error(transparent)]
    Refused(baton_core::sched::Error),
}

/// Builds the runtime for an agent.
pub type RuntimeFactory = Arc<dyn Fn(&AgentSpec) -> Arc<dyn AgentRuntime> + Send + Sync>;

/// The runtime factory for agents declared in `baton.toml`: one runtime per kind of agent (and
/// per mode of a process agent). Remote agents need a server's [`crate::RemoteHub`], which
/// wraps this factory (`RemoteHub::runtimes`); without one they cannot start.
pub fn process_runtimes(env: ProcessEnv) -> RuntimeFactory {
    Arc::new(move |spec: &AgentSpec| match &spec.kind {
        AgentKind::Process(process) => {
            let process = process.clone();
            match process.mode {
                ProcessMode::PerTask => {
                    Arc::new(ProcessAgent::new(spec.clone(), process, &env)) as Arc<dyn AgentRuntime>
                }
                ProcessMode::Worker => Arc::new(WorkerAgent::new(spec.clone(), process, &env)) as Arc<dyn AgentRuntime>,
                ProcessMode::Pty => Arc::new(PtyAgent::new(spec.clone(), process, &env)) as Arc<dyn AgentRuntime>,
            }
        }
        AgentKind::Remote(_) => Arc::new(Unavailable {
            reason: "remote agents take their tasks from `baton serve`; run the plan with it".into(),
        }) as Arc<dyn AgentRuntime>,
    })
}

/// Who is executing a run: written on the run so that a second `baton run` can tell whether
/// the first is still alive.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub host: String,
    pub pid: u32,
}

impl Node {
    pub fn this_process() -> Node {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let pid = std::process::id();
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        Node { id: format!("{host}:{pid}:{}", &suffix[suffix.len() - 6..]), host, pid }
    }

    /// Whether the node that wrote `owner` with `pid` is certainly gone: it ran on this host
    /// and its process no longer exists.
    fn is_dead(&self, owner: &str, pid: Option<u32>) -> bool {
        let same_host = owner.split(':').next() == Some(self.host.as_str());
        let Some(pid) = pid else { return false };
        same_host && pid != self.pid && !is_running(pid)
    }
}

/// Whether process `pid` exists and is not a zombie (a killed process its parent has not
/// reaped yet is as dead as one that is gone).
fn is_running(pid: u32) -> bool {
    if matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None), Err(nix::errno::Errno::ESRCH)) {
        return false;
    }
    crate::process::proc_stat(pid as i32).is_none_or(|fields| !fields.starts_with('Z'))
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
        }
    }
}

/// How a run ended, or why it stopped.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: String,
    /// `Running` when the engine was stopped before the run ended.
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
}

impl EngineHandle {
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

/// What the engine hears from the tasks it spawned.
enum Report {
    Outcome { task: TaskId, attempt: u32, outcome: Outcome },
    AgentStarted { agent: String },
    AgentFailed { agent: String, error: AgentError },
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
        };
        (Engine { options, commands, agent_events, agent_requests, plan, progress, run_id }, handle)
    }

    /// Runs the plan until it ends, or until `shutdown` fires (then running attempts get the
    /// grace period to finish and the run stays resumable).
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary, Error> {
        let Engine {
            options,
            mut commands,
            agent_events: (agent_events_tx, mut agent_events),
            agent_requests: (agent_requests_tx, mut agent_requests),
            plan: plan_tx,
            progress,
            run_id: run_id_tx,
        } = self;
        let store = Arc::clone(&options.store);
        let clock = options.clock;
        let now = clock.now();

        let OpenedRun { run, resumed, previous } = open_run(&options, now).await?;
        let run_id = run.id.clone();
        if resumed {
            // What the previous node's attempts left running on this host goes first.
            let leftovers: Vec<i32> = store
                .take_processes(&run_id)
                .await?
                .into_iter()
                .filter(|process| process.host == options.node.host)
                .map(|process| process.pgid)
                .collect();
            let n_killed = crate::process::kill_leftovers(&run_id, &leftovers);
            if n_killed > 0 {
                tracing::warn!(n_killed, "killed processes left running by the previous node");
            }
        }
        // Made before the run is announced: a server that serves once it knows the run finds
        // its remote agents' queues there from the first request.
        let runtimes: HashMap<String, Arc<dyn AgentRuntime>> =
            options.plan.agents.iter().map(|spec| (spec.name.clone(), (options.runtimes)(spec))).collect();
        let _ = run_id_tx.send(Some(run_id.clone()));
        // Only the unfinished tasks are loaded; of the finished ones, the counts, the outcome of
        // those the unfinished depend on, and the first few that failed.
        let stored = sync_tasks(store.as_ref(), &options.plan, &run_id, now).await?;
        let finished = store.task_counts_by_workstream(&run_id).await?;
        let mut depended_on: Vec<TaskId> = stored.iter().flat_map(|task| task.depends_on.iter().copied()).collect();
        depended_on.sort_unstable();
        depended_on.dedup();
        let dependencies = store.task_statuses(&run_id, &depended_on).await?;
        let mut failures = Vec::new();
        for state in [TaskState::Dead, TaskState::Cancelled] {
            let filter = TaskFilter { state: Some(state), limit: Some(FAILURES_SHOWN), ..TaskFilter::default() };
            failures.extend(store.tasks(&run_id, &filter).await?);
        }
        let n_requeued = stored.iter().filter(|task| task.state == TaskState::Running).count() as u32;

        let mut fx = Effects::default();
        if resumed {
            fx.writes
                .push(Write::Event(EventKind::RunResumed { previous_owner: run.owner.clone(), requeued: n_requeued }));
        }
        let stored_agents = store.agents(&run_id).await?;
        // A schedule fires at most once per due time across the plan's runs: a new run goes on
        // from the previous run's cursors (and pauses), and does not owe what it fired.
        let mut stored_schedules = store.schedules(&run_id).await?;
        if stored_schedules.is_empty()
            && let Some(previous) = previous
        {
            stored_schedules = store.schedules(&previous).await?;
        }
        // The budgets' usage of the current period: earlier periods no longer count.
        let usage = store.usage(&run_id, options.plan.budget.schedule().period_start(now)).await?;
        let mut sched = Scheduler::new(
            options.plan.clone(),
            options.node.id.clone(),
            Stored {
                run_id: run_id.clone(),
                phase: run.phase,
                tasks: stored,
                finished,
                dependencies,
                failures,
                agents: stored_agents,
                schedules: stored_schedules,
                usage,
            },
            now,
            &mut fx,
        );
        sched.stay_open(options.keep_open);
        sched.agent_records(now, &mut fx);
        sched.step(now, &mut fx);

        let post = PostOffice::new(Arc::clone(&store), run_id.clone(), Arc::new(runtimes.clone()), clock);
        let post_stop = CancellationToken::new();
        let (reports_tx, mut reports) = mpsc::unbounded_channel::<Report>();
        let mut shell = Shell {
            store: Arc::clone(&store),
            run_id: run_id.clone(),
            runtimes,
            reports: reports_tx,
            agent_context: AgentContext {
                run_id: run_id.clone(),
                events: agent_events_tx,
                requests: agent_requests_tx,
            },
            attempts: HashMap::new(),
            tracker: TaskTracker::new(),
            spawn_timeout: options.plan.settings.agent_spawn_timeout,
        };
        shell.tracker.spawn(post.clone().run(post_stop.clone()));
        perform(&mut sched, &mut shell, fx, now).await?;
        let _ = progress.send(sched.progress());
        let _ = plan_tx.send(Some(Arc::new(sched.plan().clone())));

        let lease_ttl = options.plan.settings.lease_ttl;
        let mut next_owner_renewal = now.plus(lease_ttl / 3);
        let mut draining_until: Option<tokio::time::Instant> = None;

        // The loop's errors (the store failing) still go through the cleanup below, so that no
        // attempt outlives the engine.
        let outcome: Result<(), Error> = async {
            loop {
                if sched.state() != RunState::Running && shell.attempts.is_empty() {
                    break;
                }
                if draining_until.is_some() && shell.attempts.is_empty() {
                    break;
                }
                let wakeup = sched.next_wakeup().map(|at| clock.instant_at(at));
                let mut fx = Effects::default();
                // Answers to commands, sent once what they decided is durable.
                let mut deferred: Vec<Deferred> = Vec::new();
                let mut deferred_reload: Option<(oneshot::Sender<Result<ReloadSummary, Error>>, ReloadSummary)> = None;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled(), if draining_until.is_none() => {
                        tracing::debug!(running = shell.attempts.len(), "shutting down: letting running attempts finish");
                        sched.hold();
                        draining_until = Some(crate::clock::deadline_after(options.shutdown_grace));
                    }
                    () = sleep_until_opt(draining_until) => {
                        // Grace is over: interrupted attempts go back to the queue uncounted.
                        let now = clock.now();
                        for ((task, attempt), token) in shell.attempts.drain() {
                            token.cancel();
                            if let Err(error) = sched.release(task, attempt, now, &mut fx) {
                                tracing::debug!(%error, "release at shutdown");
                            }
                        }
                    }
                    // Before outcomes: an agent's exit decides what its attempts' failures mean.
                    Some(event) = agent_events.recv() => {
                        let now = clock.now();
                        let mut next = Some(event);
                        while let Some(event) = next {
                            handle_agent_event(&mut sched, &post, event, now, &mut fx);
                            next = agent_events.try_recv().ok();
                        }
                    }
                    Some(request) = agent_requests.recv() => {
                        let now = clock.now();
                        let mut sends = Vec::new();
                        let mut next = Some(request);
                        while let Some(request) = next {
                            let send =
                                handle_agent_request(&mut sched, store.as_ref(), &run_id, request, now, &mut fx).await;
                            sends.extend(send);
                            next = agent_requests.try_recv().ok();
                        }
                        if !sends.is_empty() {
                            // Stored (durable) before each agent hears its message was sent, and
                            // delivered by the post office. Off the engine's loop, in one task for
                            // every send of this turn: concurrent sends share the store's commits.
                            let post = post.clone();
                            tokio::spawn(async move {
                                let sending = sends.into_iter().map(|(message, reply)| {
                                    let post = &post;
                                    async move {
                                        let _ = reply.send(post.send(message).await);
                                    }
                                });
                                futures::future::join_all(sending).await;
                            });
                        }
                    }
                    Some(report) = reports.recv() => {
                        let now = clock.now();
                        handle_report(&mut sched, &mut shell, report, now, &mut fx);
                        // Take everything else that is already waiting: one commit for all of it.
                        while let Ok(report) = reports.try_recv() {
                            handle_report(&mut sched, &mut shell, report, now, &mut fx);
                        }
                    }
                    Some(command) = commands.recv() => {
                        let now = clock.now();
                        let changes_plan = matches!(
                            command,
                            Command::AddAgent { .. }
                                | Command::UpdateAgent { .. }
                                | Command::RemoveAgent { .. }
                                | Command::Reconfigure { .. }
                        );
                        match command {
                            Command::AddAgent { spec, reply } => {
                                let runtime = (options.runtimes)(&spec);
                                let name = spec.name.clone();
                                let result = sched.add_agent(spec, now, &mut fx);
                                if result.is_ok() {
                                    shell.runtimes.insert(name, runtime);
                                }
                                deferred.push((reply, result.map_err(refused)));
                            }
                            Command::UpdateAgent { spec, reply } => {
                                let before = sched.plan().agent(&spec.name).cloned();
                                let runtime = (options.runtimes)(&spec);
                                let name = spec.name.clone();
                                match sched.update_agent(spec.clone(), now, &mut fx) {
                                    Ok(restarted) => {
                                        // A new runtime when how the agent runs changed: the old one
                                        // is stopped (the scheduler restarts the agent if it ran).
                                        if (restarted || before.is_none_or(|before| baton_core::sched::runtime_changed(&before, &spec)))
                                            && let Some(old) = shell.runtimes.insert(name, runtime)
                                        {
                                            shell.tracker.spawn(async move { old.stop().await });
                                        }
                                        deferred.push((reply, Ok(())));
                                    }
                                    Err(error) => deferred.push((reply, Err(refused(error)))),
                                }
                            }
                            Command::RemoveAgent { name, reply } => {
                                let result = sched.remove_agent(&name, now, &mut fx);
                                if result.is_ok()
                                    && let Some(runtime) = shell.runtimes.remove(&name)
                                {
                                    // Stopped and dropped: the scheduler gave its attempts up.
                                    shell.tracker.spawn(async move { runtime.stop().await });
                                }
                                deferred.push((reply, result.map_err(refused)));
                            }
                            Command::Reconfigure { plan, reply } => {
                                let before = sched.plan().agents.clone();
                                // Finished tasks are not in memory: the store says which of the
                                // file's tasks the run has.
                                let keys: Vec<String> = plan.tasks.iter().filter_map(|task| task.key.clone()).collect();
                                let existing = store.tasks_by_key(&run_id, &keys).await?;
                                let existing = existing.into_iter().filter_map(|task| task.key).collect();
                                match sched.reconfigure(*plan, &existing, now, &mut fx) {
                                    Ok(summary) => {
                                        shell.replace_runtimes(&before, &sched.plan().agents, &options.runtimes);
                                        if !summary.new_tasks.is_empty() {
                                            let (created, _) = oneshot::channel();
                                            let tasks = summary.new_tasks.clone();
                                            let command = Command::CreateTasks { tasks, reply: created };
                                            handle_command(&mut sched, store.as_ref(), &run_id, command, now, &mut fx)
                                                .await;
                                        }
                                        deferred_reload = Some((reply, summary));
                                    }
                                    Err(error) => {
                                        let _ = reply.send(Err(refused(error)));
                                    }
                                }
                            }
                            Command::RejectConfig { errors, reply } => {
                                fx.writes.push(Write::Event(EventKind::ConfigRejected { errors }));
                                deferred.push((reply, Ok(())));
                            }
                            Command::Cancel { task, reason, reply } => {
                                load_finished(&mut sched, store.as_ref(), &run_id, task).await?;
                                deferred.push((reply, sched.cancel(task, reason, now, &mut fx).map_err(refused)));
                            }
                            Command::Retry { task, reply } => {
                                load_finished(&mut sched, store.as_ref(), &run_id, task).await?;
                                deferred.push((reply, sched.retry(task, now, &mut fx).map_err(refused)));
                            }
                            Command::Control { control, reply } => {
                                deferred.push((reply, control_result(&mut sched, control, now, &mut fx)));
                            }
                            Command::Redeliver { ids, reply } => {
                                // The post office's own write, like its acknowledgements: it
                                // does not wait for this turn.
                                let post = post.clone();
                                tokio::spawn(async move {
                                    let _ = reply.send(post.redeliver(ids).await.map_err(Error::from));
                                });
                            }
                            command => handle_command(&mut sched, store.as_ref(), &run_id, command, now, &mut fx).await,
                        }
                        if changes_plan {
                            let _ = plan_tx.send(Some(Arc::new(sched.plan().clone())));
                            // Messages reach the agents there are now.
                            post.set_runtimes(Arc::new(shell.runtimes.clone()));
                        }
                    }
                    () = sleep_until_opt(wakeup) => {
                        sched.tick(clock.now(), &mut fx);
                    }
                    () = sleep_until_opt(Some(clock.instant_at(next_owner_renewal))) => {
                        let now = clock.now();
                        fx.writes.push(Write::RunOwner {
                            owner: Some(options.node.id.clone()),
                            pid: Some(options.node.pid),
                            until: Some(now.plus(lease_ttl)),
                            expect_owner: Some(options.node.id.clone()),
                        });
                        next_owner_renewal = now.plus(lease_ttl / 3);
                    }
                }
                let now = clock.now();
                sched.step(now, &mut fx);
                perform(&mut sched, &mut shell, fx, now).await?;
                for (reply, result) in deferred {
                    let _ = reply.send(result);
                }
                if let Some((reply, summary)) = deferred_reload {
                    let _ = reply.send(Ok(summary));
                }
                progress.send_if_modified(|current| {
                    let next = sched.progress();
                    let changed = *current != next;
                    *current = next;
                    changed
                });
            }
            Ok(())
        }
        .await;
        if outcome.is_err() {
            for token in shell.attempts.values() {
                token.cancel();
            }
        }

        post_stop.cancel();
        for runtime in shell.runtimes.values() {
            runtime.stop().await;
        }
        shell.tracker.close();
        shell.tracker.wait().await;
        outcome?;
        let now = clock.now();
        if sched.state() == RunState::Running {
            // Stopped before the end: leave the run resumable by anyone.
            store
                .apply(
                    &run_id,
                    now,
                    vec![Write::RunOwner {
                        owner: None,
                        pid: None,
                        until: None,
                        expect_owner: Some(options.node.id.clone()),
                    }],
                )
                .await?;
        }
        summary(&sched, store.as_ref(), resumed).await
    }
}

/// How many dead (and cancelled) tasks a restart reads for the failure report.
const FAILURES_SHOWN: u64 = 5;

/// A command names a task that is not in memory: a finished task (the scheduler holds only
/// unfinished ones). Its record is loaded from the store, with the outcome of its
/// dependencies, so that a retry can bring it back and a cancel is refused for the right
/// reason.
async fn load_finished(sched: &mut Scheduler, store: &dyn Store, run_id: &str, id: TaskId) -> Result<(), Error> {
    if sched.task(id).is_some() {
        return Ok(());
    }
    let Some(task) = store.task(id).await?.filter(|task| task.run_id == run_id) else { return Ok(()) };
    let unknown = sched.unknown_dependencies([&task]);
    sched.settle(store.task_statuses(run_id, &unknown).await?);
    sched.restore(task);
    Ok(())
}

/// Makes the writes durable and performs the effects, then the schedules' firings: each is one
/// store transaction (task, cursor, `ScheduleFired`) whose task goes back to the scheduler, and
/// what the scheduler decides about it (claim it, usually) is performed in turn.
async fn perform(sched: &mut Scheduler, shell: &mut Shell, mut fx: Effects, now: Timestamp) -> Result<(), Error> {
    loop {
        let firings = std::mem::take(&mut fx.fire);
        shell.perform(fx, now).await?;
        // The writes are durable: the records of tasks that ended leave memory.
        sched.writes_durable();
        if firings.is_empty() {
            return Ok(());
        }
        fx = Effects::default();
        for firing in firings {
            let created = match shell.store.fire_schedule(&shell.run_id, firing.clone(), now).await {
                Ok(created) => created,
                // Refused (a task with its key exists, the schedule is gone, its task was refused):
                // this due time has its task already, or will never have one.
                Err(error)
                    if matches!(error.kind(), ErrorKind::Conflict | ErrorKind::NotFound | ErrorKind::Refused) =>
                {
                    tracing::warn!(%error, schedule = %firing.schedule, "schedule firing refused");
                    None
                }
                Err(error) => return Err(error.into()),
            };
            let refused = created.is_none();
            sched.schedule_fired(&firing, created, now, &mut fx);
            if refused {
                // The stored cursor is not the scheduler's: it takes the stored record.
                let stored = shell.store.schedules(&shell.run_id).await?;
                if let Some(record) = stored.into_iter().find(|record| record.name == firing.schedule) {
                    sched.schedule_reloaded(record);
                }
            }
        }
        sched.step(now, &mut fx);
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Finds the run to execute: the unfinished run of this plan (resumed), or a new one. Takes
/// the claim on it.
async fn open_run(options: &EngineOptions, now: Timestamp) -> Result<OpenedRun, Error> {
    let store = options.store.as_ref();
    let plan = &options.plan;
    let node = &options.node;
    let lease_ttl = options.plan.settings.lease_ttl;
    let latest = store.latest_run(Some(&plan.name)).await?;
    let previous = latest.as_ref().map(|run| run.id.clone());
    if let Some(run) = latest.filter(|run| run.state == RunState::Running) {
        let held = run
            .owner
            .as_ref()
            .is_some_and(|owner| owner != &node.id && run.owner_until.is_some_and(|until| until > now));
        if held {
            let owner = run.owner.clone().unwrap_or_default();
            if !node.is_dead(&owner, run.owner_pid) {
                return Err(busy(&plan.name, &run.id, &owner, run.owner_pid, run.owner_until));
            }
        }
        // The previous owner is gone (or its claim expired): take the run over.
        let claim = Write::RunOwner {
            owner: Some(node.id.clone()),
            pid: Some(node.pid),
            until: Some(now.plus(lease_ttl)),
            expect_owner: run.owner.clone(),
        };
        let applied = store.apply(&run.id, now, vec![claim]).await?;
        if let Some(Applied::Conflict(reason)) = applied.first() {
            // Another process took it over first: it holds the plan now.
            let taken = store.run(&run.id).await?;
            return Err(match taken.as_ref().and_then(|run| Some((run.owner.as_deref()?, run))) {
                Some((owner, taken)) => busy(&plan.name, &taken.id, owner, taken.owner_pid, taken.owner_until),
                None => Error::Conflict(reason.clone()),
            });
        }
        if !options.fresh {
            return Ok(OpenedRun { run, resumed: true, previous: None });
        }
        // `--fresh`: the unfinished run is closed as abandoned, and a new one starts.
        let reason = "abandoned: a fresh run was started".to_string();
        let change = RunChange {
            state: RunState::Failed,
            phase: run.phase,
            n_tasks: run.n_tasks,
            n_finished: run.n_finished,
            ended_at: Some(now),
            error: Some(reason.clone()),
        };
        // Counted by the store, not loaded: the run may have millions of tasks.
        let counts = store.task_counts(&run.id).await?;
        let count = |state: TaskState| counts.iter().find(|(counted, _)| *counted == state).map_or(0, |(_, n)| *n);
        let completed = EventKind::RunCompleted {
            state: RunState::Failed,
            n_succeeded: count(TaskState::Succeeded),
            n_dead: count(TaskState::Dead),
            n_cancelled: count(TaskState::Cancelled),
            error: Some(reason),
        };
        store.apply(&run.id, now, vec![Write::Run { change, events: vec![completed] }]).await?;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let new_run = NewRun {
        id,
        name: plan.name.clone(),
        n_phases: plan.phases.len() as u32,
        owner: node.id.clone(),
        owner_pid: node.pid,
        owner_until: now.plus(lease_ttl),
    };
    match store.create_run(new_run, now).await {
        Ok(run) => Ok(OpenedRun { run, resumed: false, previous }),
        // Another process created a run of the plan since we looked.
        Err(baton_store::Error::RunHeld { plan, run, owner, pid, until }) => {
            Err(busy(&plan, &run, &owner, Some(pid), Some(until)))
        }
        Err(error) => Err(error.into()),
    }
}

/// [`Error::Busy`] for the run `run` of `plan`, held by `owner` (`host:pid:suffix`).
fn busy(plan: &str, run: &str, owner: &str, pid: Option<u32>, until: Option<Timestamp>) -> Error {
    let mut parts = owner.split(':');
    let host = parts.next().unwrap_or(owner).to_string();
    let pid = pid.or_else(|| parts.next()?.parse().ok()).unwrap_or_default();
    Error::Busy {
        plan: plan.to_string(),
        run: run.to_string(),
        host,
        pid,
        until: until.map_or_else(|| "an unknown time".to_string(), baton_core::schedule::format_utc),
    }
}

/// The run an engine works on ([`open_run`]).
struct OpenedRun {
    run: RunRecord,
    /// An unfinished run taken over (resumed), not a new one.
    resumed: bool,
    /// For a new run, the plan's run before it: its schedules' cursors carry over.
    previous: Option<String>,
}

/// Loads the run's unfinished tasks, creating those of the plan that the run does not have yet
/// (a new run, or tasks added to `baton.toml` since).
async fn sync_tasks(store: &dyn Store, plan: &Plan, run_id: &str, now: Timestamp) -> Result<Vec<TaskRecord>, Error> {
    let mut stored = store.unfinished_tasks(run_id).await?;
    let keys: Vec<String> = plan.tasks.iter().filter_map(|task| task.key.clone()).collect();
    let existing = store.tasks_by_key(run_id, &keys).await?;
    let known: std::collections::HashSet<&str> = existing.iter().filter_map(|task| task.key.as_deref()).collect();
    let missing: Vec<NewTask> =
        plan.tasks.iter().filter(|task| task.key.as_deref().is_none_or(|key| !known.contains(key))).cloned().collect();
    if !missing.is_empty() {
        stored.extend(store.create_tasks(run_id, missing, now).await?);
    }
    Ok(stored)
}

fn handle_report(sched: &mut Scheduler, shell: &mut Shell, report: Report, now: Timestamp, fx: &mut Effects) {
    match report {
        Report::Outcome { task, attempt, outcome } => {
            // Tokens a task's result says it used were used, whatever becomes of the outcome.
            if let Outcome::Succeeded { result } = &outcome {
                let agent = sched.task(task).and_then(|record| record.assigned_agent.clone()).unwrap_or_default();
                match Usage::from_result(result) {
                    Ok(Some(usage)) => {
                        let report = serde_json::to_value(usage).unwrap_or_default();
                        sched.record_usage(&agent, Some(task), usage, report, now, fx);
                    }
                    Ok(None) => {}
                    // Not counted: a report no agent could have made must not move the totals.
                    Err(error) => tracing::warn!(%error, %agent, %task, "usage in a task's result refused"),
                }
            }
            let was_killed = shell.attempts.remove(&(task, attempt)).is_none_or(|token| token.is_cancelled());
            if was_killed {
                // Its process has exited: the slot and resources it held are free.
                sched.attempt_ended(task, attempt, now);
                return;
            }
            match sched.complete(task, attempt, outcome, now, rand::random::<f64>(), fx) {
                Ok(()) => {}
                // The attempt was given up already (its agent died or was stopped).
                Err(baton_core::sched::Error::Stale { .. }) => {}
                Err(error) => tracing::warn!(%error, "outcome not recorded"),
            }
        }
        Report::AgentStarted { agent } => {
            let _ = sched.agent_started(&agent, now, fx);
        }
        Report::AgentFailed { agent, error } => {
            let _ = sched.agent_failed(&agent, error.message, error.kind, now, fx);
        }
    }
}

/// A message an agent sends, with where its id (or the refusal) goes.
type MessageSend = (baton_core::messages::NewMessage, Reply<String>);

/// Applies what an agent reported.
fn handle_agent_event(sched: &mut Scheduler, post: &PostOffice, event: AgentEvent, now: Timestamp, fx: &mut Effects) {
    match event {
        AgentEvent::Subscribe { agent, topic } => {
            sched.agent_activity(&agent, now, fx);
            post.subscribe(&agent, &topic);
        }
        AgentEvent::MessagesTaken { deliveries, reply, .. } => {
            // Off the loop, like a turn's sends: the agent waits for the answer, the engine
            // does not wait for the commit.
            let post = post.clone();
            tokio::spawn(async move {
                post.acknowledge(deliveries, now).await;
                let _ = reply.send(());
            });
        }
        AgentEvent::Exited { agent, reason, clean } => {
            let _ = sched.agent_exited(&agent, reason, clean, now, fx);
        }
        AgentEvent::Activity { agent } => sched.agent_activity(&agent, now, fx),
        AgentEvent::Stalled { agent, silent_for } => {
            let reason = format!("no output for {}", baton_core::time::format_duration(silent_for));
            let _ = sched.agent_stalled(&agent, reason, fx);
        }
        AgentEvent::WaitingInput { agent, prompt } => {
            let _ = sched.agent_waiting_input(&agent, &prompt, fx);
        }
        AgentEvent::Progress { agent, task, fraction, message } => {
            sched.agent_activity(&agent, now, fx);
            fx.writes.push(Write::Event(EventKind::TaskProgress { task, agent, fraction, message }));
        }
        AgentEvent::Usage { agent, task, usage } => {
            sched.agent_activity(&agent, now, fx);
            match Usage::from_report(&usage) {
                Ok(Some(parsed)) => sched.record_usage(&agent, task, parsed, usage, now, fx),
                Ok(None) => fx.writes.push(Write::Event(EventKind::UsageReported { agent, task, usage })),
                // The API and the worker protocol refuse such reports before they get here.
                Err(error) => tracing::warn!(%error, %agent, "usage report refused"),
            }
        }
    }
}

/// Answers what an agent asked (asking is a sign of life). A message it sends is given back,
/// to be sent with the turn's others, and answered once stored; tasks are answered once
/// created; the scheduler's answers (leases, budget) are decided here, their writes going with
/// the turn's.
async fn handle_agent_request(
    sched: &mut Scheduler,
    store: &dyn Store,
    run_id: &str,
    request: AgentRequest,
    now: Timestamp,
    fx: &mut Effects,
) -> Option<MessageSend> {
    sched.agent_activity(request.agent(), now, fx);
    match request {
        // Given back: the engine sends a turn's messages together.
        AgentRequest::SendMessage { message, reply, .. } => return Some((message, reply)),
        AgentRequest::AcquireResource { agent, resource, ttl, reply } => {
            let _ = reply.send(sched.acquire_resource(&agent, &resource, ttl, now, fx).map_err(RequestError::refused));
        }
        AgentRequest::ReleaseResource { agent, resource, reply } => {
            let _ = reply.send(sched.release_resource(&agent, &resource, fx).map_err(RequestError::refused));
        }
        AgentRequest::ReserveBudget { agent, task, tokens, reply } => {
            let _ = reply.send(sched.reserve_budget(&agent, task, tokens, now, fx).map_err(|error| match error {
                baton_core::sched::Error::OverBudget { .. } => RequestError::refused(error.to_string()),
                _ => RequestError::invalid(error.to_string()),
            }));
        }
        AgentRequest::CreateTasks { parent, tasks: inputs, reply, .. } => {
            let parent_workstream = parent.and_then(|id| sched.task(id)).and_then(|task| task.workstream.clone());
            let mut tasks = Vec::with_capacity(inputs.len());
            for (idx, mut input) in inputs.into_iter().enumerate() {
                if input.workstream.is_none() {
                    input.workstream = parent_workstream.clone();
                }
                match baton_core::task::new_task(input, sched.plan().into()) {
                    Ok(task) => tasks.push(task),
                    Err(error) => {
                        let _ = reply.send(Err(RequestError::invalid(format!("tasks[{idx}]: {error}"))));
                        return None;
                    }
                }
            }
            let (answer_tx, answer) = oneshot::channel();
            handle_command(sched, store, run_id, Command::CreateTasks { tasks, reply: answer_tx }, now, fx).await;
            let result = match answer.await {
                Ok(Ok(ids)) => Ok(ids),
                Ok(Err(Error::Store(error))) => Err(store_refusal(error)),
                Ok(Err(error)) => Err(RequestError::invalid(error.to_string())),
                Err(_) => Err(RequestError::unavailable("the engine did not answer")),
            };
            let _ = reply.send(result);
        }
    }
    None
}

async fn handle_command(
    sched: &mut Scheduler,
    store: &dyn Store,
    run_id: &str,
    command: Command,
    now: Timestamp,
    fx: &mut Effects,
) {
    match command {
        Command::CreateTasks { tasks, reply } => {
            if let Some(task) = tasks
                .iter()
                .find(|task| task.workstream.as_deref().is_some_and(|ws| sched.plan().workstream(ws).is_none()))
            {
                let _ = reply.send(Err(Error::Invalid(format!(
                    "unknown workstream `{}`",
                    task.workstream.as_deref().unwrap_or_default()
                ))));
                return;
            }
            // A task that needs more than a whole period's budget would wait forever.
            let never = tasks.iter().find_map(|task| {
                let problem = sched.budgets().never_fits(task.workstream.as_deref(), task.estimated_tokens?)?;
                Some(format!("task `{}`: {problem}", task.key.as_deref().unwrap_or(&task.title)))
            });
            if let Some(problem) = never {
                let _ = reply.send(Err(Error::Invalid(problem)));
                return;
            }
            match store.create_tasks(run_id, tasks, now).await {
                Ok(created) => {
                    let ids = created.iter().map(|task| task.id).collect();
                    // Dependencies on finished tasks: their outcome is the store's to say.
                    let unknown = sched.unknown_dependencies(&created);
                    if !unknown.is_empty() {
                        match store.task_statuses(run_id, &unknown).await {
                            Ok(statuses) => sched.settle(statuses),
                            Err(error) => {
                                // The tasks exist: they are added, and a dependency nobody could
                                // read cancels its dependant, saying so.
                                tracing::warn!(%error, "the outcome of finished dependencies could not be read");
                            }
                        }
                    }
                    sched.add_tasks(created, now, fx);
                    let _ = reply.send(Ok(ids));
                }
                Err(error) => {
                    let _ = reply.send(Err(error.into()));
                }
            }
        }
        Command::Cancel { reply, .. }
        | Command::Retry { reply, .. }
        | Command::Control { reply, .. }
        | Command::AddAgent { reply, .. }
        | Command::UpdateAgent { reply, .. }
        | Command::RemoveAgent { reply, .. }
        | Command::RejectConfig { reply, .. } => {
            let _ = reply.send(Err(Error::Invalid("this command is applied by the engine loop".into())));
        }
        Command::Reconfigure { reply, .. } => {
            let _ = reply.send(Err(Error::Invalid("this command is applied by the engine loop".into())));
        }
        Command::Redeliver { reply, .. } => {
            let _ = reply.send(Err(Error::Invalid("this command is applied by the engine loop".into())));
        }
    }
}

/// A store's refusal of what an agent asked: what the agent may do about it follows from the
/// store error's kind.
pub(crate) fn store_refusal(error: baton_store::Error) -> RequestError {
    match error.kind() {
        ErrorKind::Unavailable | ErrorKind::Corrupt => RequestError::unavailable(error.to_string()),
        ErrorKind::Refused | ErrorKind::NotFound => RequestError::invalid(error.to_string()),
        ErrorKind::Conflict | ErrorKind::Full => RequestError::refused(error.to_string()),
    }
}

/// A command the scheduler refused, for the caller.
fn refused(error: baton_core::sched::Error) -> Error {
    Error::Refused(error)
}

/// Applies an operator's command, saying why when it cannot be.
fn control_result(sched: &mut Scheduler, control: Control, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
    let result = match control {
        Control::StopAgent { agent } => sched.stop_agent(&agent, now, fx),
        Control::StartAgent { agent } => sched.start_agent_again(&agent, now, fx),
        Control::RestartAgent { agent } => sched.restart_agent(&agent, now, fx),
        Control::PauseSchedule { schedule } => sched.pause_schedule(&schedule, now, fx),
        Control::ResumeSchedule { schedule } => sched.resume_schedule(&schedule, now, fx),
        Control::SetBudget { scope, daily_tokens, cost_usd } => {
            let scope = scope.parse::<Scope>().map_err(Error::Invalid)?;
            sched.set_budget_limit(scope, Limit { daily_tokens, cost_usd }, now, fx)
        }
    };
    result.map_err(refused)
}

/// Carries out what the scheduler decided.
struct Shell {
    store: Arc<dyn Store>,
    run_id: String,
    runtimes: HashMap<String, Arc<dyn AgentRuntime>>,
    reports: mpsc::UnboundedSender<Report>,
    agent_context: AgentContext,
    /// Running attempts and the token that kills each.
    attempts: HashMap<(TaskId, u32), CancellationToken>,
    tracker: TaskTracker,
    spawn_timeout: Duration,
}

impl Shell {
    /// After a reconfiguration: agents that are new get a runtime built by `factory`, agents
    /// whose runtime changed get a new one (the old one is stopped first, in the background;
    /// the scheduler restarts the agent when it ran), removed ones are stopped and dropped.
    fn replace_runtimes(&mut self, before: &[AgentSpec], after: &[AgentSpec], factory: &RuntimeFactory) {
        for spec in after {
            let previous = before.iter().find(|old| old.name == spec.name);
            if previous.is_some_and(|old| !baton_core::sched::runtime_changed(old, spec)) {
                continue;
            }
            if let Some(old) = self.runtimes.insert(spec.name.clone(), factory(spec)) {
                self.tracker.spawn(async move { old.stop().await });
            }
        }
        for old in before {
            if after.iter().all(|spec| spec.name != old.name)
                && let Some(runtime) = self.runtimes.remove(&old.name)
            {
                self.tracker.spawn(async move { runtime.stop().await });
            }
        }
    }

    /// Makes the writes durable, then performs the effects.
    async fn perform(&mut self, fx: Effects, now: Timestamp) -> Result<(), Error> {
        if !fx.writes.is_empty() {
            let applied = self.store.apply(&self.run_id, now, fx.writes).await?;
            if let Some(Applied::Conflict(reason)) = applied.into_iter().find(|applied| *applied != Applied::Done) {
                return Err(Error::Conflict(reason));
            }
        }
        for (task, attempt) in fx.kills {
            if let Some(token) = self.attempts.get(&(task, attempt)) {
                token.cancel();
            }
        }
        if !fx.start_agents.is_empty() {
            // In order (critical agents first), each within the spawn timeout.
            let to_start: Vec<(String, Option<Arc<dyn AgentRuntime>>)> =
                fx.start_agents.into_iter().map(|name| (name.clone(), self.runtimes.get(&name).cloned())).collect();
            let reports = self.reports.clone();
            let spawn_timeout = self.spawn_timeout;
            let context = self.agent_context.clone();
            self.tracker.spawn(async move {
                for (agent, runtime) in to_start {
                    let Some(runtime) = runtime else {
                        let error = AgentError::permanent("it has no runtime");
                        let _ = reports.send(Report::AgentFailed { agent, error });
                        continue;
                    };
                    let report = match tokio::time::timeout(spawn_timeout, runtime.start(context.clone())).await {
                        Ok(Ok(())) => Report::AgentStarted { agent },
                        Ok(Err(error)) => Report::AgentFailed { agent, error },
                        Err(_) => Report::AgentFailed {
                            agent,
                            error: AgentError::transient(format!(
                                "not started within {}",
                                baton_core::time::format_duration(spawn_timeout)
                            )),
                        },
                    };
                    let _ = reports.send(report);
                }
            });
        }
        for name in fx.stop_agents {
            // A removed agent's runtime was stopped and dropped with it.
            let Some(runtime) = self.runtimes.get(&name).cloned() else { continue };
            self.tracker.spawn(async move { runtime.stop().await });
        }
        for assignment in fx.assignments {
            let task_id = assignment.task.id;
            let attempt_number = assignment.task.attempt;
            let token = CancellationToken::new();
            self.attempts.insert((task_id, attempt_number), token.clone());
            let runtime = Arc::clone(&self.runtimes[&assignment.agent]);
            let reports = self.reports.clone();
            let attempt = Attempt { run_id: self.run_id.clone(), agent: assignment.agent, task: assignment.task };
            self.tracker.spawn(async move {
                let outcome = runtime.run(attempt, token).await;
                let _ = reports.send(Report::Outcome { task: task_id, attempt: attempt_number, outcome });
            });
        }
        Ok(())
    }
}

/// The run's summary: counts from the scheduler, the failed tasks from the store (finished
/// tasks are not in memory).
async fn summary(sched: &Scheduler, store: &dyn Store, resumed: bool) -> Result<RunSummary, Error> {
    let mut failures: Vec<TaskRecord> = Vec::new();
    for state in [TaskState::Dead, TaskState::Cancelled] {
        let filter = TaskFilter { state: Some(state), ..TaskFilter::default() };
        failures.extend(store.tasks(sched.run_id(), &filter).await?);
    }
    failures.sort_by_key(|task| task.id);
    let by_state = sched.progress().by_state;
    Ok(RunSummary {
        run_id: sched.run_id().to_string(),
        state: sched.state(),
        resumed,
        error: (sched.state() == RunState::Failed).then(|| sched.failure_summary()),
        n_tasks: sched.n_tasks(),
        n_succeeded: by_state[TaskState::Succeeded.index()],
        failures: failures
            .into_iter()
            .map(|task| {
                let key = task.key.clone().unwrap_or_else(|| task.id.to_string());
                (key, task.state, task.error.unwrap_or_default())
            })
            .collect(),
    })
}
