//! An open run: the scheduler, the shell that carries out its decisions, the run's store and
//! id, the timers (the claim's renewal, the grace period of a shutdown), the channels inputs
//! arrive on and those the engine publishes on. Its loop waits for one input at a time and
//! hands it to a turn (`turn.rs`); `close` stops what is left and says how the run ended.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use baton_core::EventKind;
use baton_core::config::Plan;
use baton_core::model::{RunState, TaskRecord, TaskState};
use baton_core::sched::{Effects, Progress, Scheduler, Write};
use baton_store::{Applied, Store, TaskFilter};

use super::agents::Agents;
use super::open::{self, Node};
use super::shell::{Report, Shell};
use super::turn::Turn;
use super::{Command, Engine, Error, RunSummary};
use crate::agent::{AgentContext, AgentEvent, AgentRequest};
use crate::clock::Clock;
use crate::postoffice::PostOffice;

/// The state of an open run.
pub(super) struct Running {
    pub(super) sched: Scheduler,
    pub(super) shell: Shell,
    pub(super) post: PostOffice,
    /// Stops the post office's delivery loop when the run closes.
    post_stop: CancellationToken,
    pub(super) store: Arc<dyn Store>,
    pub(super) run_id: String,
    /// An unfinished run taken over, not a new one.
    resumed: bool,
    pub(super) clock: Clock,
    pub(super) node: Node,
    pub(super) lease_ttl: Duration,
    shutdown_grace: Duration,
    /// When the claim on the run is renewed next (every third of `lease_ttl`).
    pub(super) next_owner_renewal: baton_core::Timestamp,
    /// The claim watchdog's deadline (`watch_claim`).
    claim_deadline: watch::Sender<Instant>,
    /// Set once a shutdown is asked for: when running attempts' grace is over.
    pub(super) draining_until: Option<Instant>,
    pub(super) inputs: Inputs,
    published: Published,
    /// The run's coordinator, asked off the loop (`objectives.rs`).
    pub(super) coordinator: Arc<crate::coordinator::Coordinator>,
    /// Objectives the coordinator is working on: the run stays open until they are planned.
    pub(super) coordinating: usize,
    /// Whether the run stays open when its tasks are done (a server).
    pub(super) keep_open: bool,
    /// Cancels the coordinator's calls when the run closes.
    pub(super) coordinator_stop: CancellationToken,
    /// Tasks the coordinator was asked to triage: each once per start of the run, so that a
    /// model that keeps answering `retry` cannot keep a task alive forever.
    pub(super) triaged: std::collections::HashSet<baton_core::model::TaskId>,
    /// Objectives being planned (their key prefixes): a second request is refused at once.
    pub(super) planning: std::collections::HashSet<String>,
    /// Calls to the coordinator's model at once, at most [`super::objectives::COORDINATOR_CALLS`]:
    /// a burst of failed tasks or objectives waits its turn instead of calling the model all at once.
    pub(super) coordinator_calls: Arc<tokio::sync::Semaphore>,
}

/// Where the engine's inputs arrive.
pub(super) struct Inputs {
    /// Operators' commands, from the [`super::EngineHandle`].
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    /// Agents' reports, from their runtimes and the handle.
    pub(super) agent_events: mpsc::UnboundedReceiver<AgentEvent>,
    /// Agents' requests, from their runtimes and the handle.
    pub(super) agent_requests: mpsc::UnboundedReceiver<AgentRequest>,
    /// What the tasks the shell spawned report: outcomes, agents started or not.
    pub(super) reports: mpsc::UnboundedReceiver<Report>,
}

/// What the engine publishes for the handle: the plan as it runs and the progress.
struct Published {
    plan: watch::Sender<Option<Arc<Plan>>>,
    progress: watch::Sender<Progress>,
}

/// One input, taken by a turn.
pub(super) enum Input {
    /// A shutdown was asked for: nothing new is claimed, running attempts get the grace period.
    Shutdown,
    /// The grace period is over: attempts still running are killed.
    GraceOver,
    AgentEvent(AgentEvent),
    AgentRequest(AgentRequest),
    Report(Report),
    /// Boxed: a command holds a whole agent spec or plan, far larger than the other inputs.
    Command(Box<Command>),
    /// The time the scheduler asked to be woken at has come.
    Wakeup,
    /// Time to renew the claim on the run.
    RenewClaim,
    /// The claim was not renewed in time: the attempts are being stopped, and the engine stops.
    ClaimLost,
}

/// How long a claim holds unrenewed before its node gives it up: three quarters of the lease
/// TTL. Another node takes the run over only once the whole TTL has passed (by its clock), so
/// the last quarter is the margin for the clocks of the two nodes to differ and for the
/// attempts to stop.
pub(super) fn claim_window(lease_ttl: Duration) -> Duration {
    lease_ttl - lease_ttl / 4
}

/// Fires `lost` when the deadline `deadline` holds passes without being moved (a renewal that
/// succeeded moves it). Runs beside the engine, so that it fires even while the engine waits
/// on a store that does not answer (a partition); ends when the run closes.
async fn watch_claim(mut deadline: watch::Receiver<Instant>, lost: CancellationToken) {
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep_until(at) => {
                tracing::error!("the claim on the run was not renewed in time: stopping this node's attempts");
                lost.cancel();
                return;
            }
            changed = deadline.changed() => if changed.is_err() { return },
        }
    }
}

impl Running {
    /// Opens the run (a new one, or the plan's unfinished one resumed), loads it into a
    /// scheduler, and performs what the scheduler decides first.
    pub(super) async fn open(engine: Engine) -> Result<Running, Error> {
        let Engine {
            options,
            commands,
            agent_events: (agent_events_tx, agent_events),
            agent_requests: (agent_requests_tx, agent_requests),
            plan: plan_tx,
            progress,
            run_id: run_id_tx,
        } = engine;
        let store = Arc::clone(&options.store);
        let clock = options.clock;
        let now = clock.now();

        let opened = open::open_run(&options, now).await?;
        let run_id = opened.run.id.clone();
        if opened.resumed {
            // What the previous node's attempts left running on this host goes first.
            open::kill_leftovers(store.as_ref(), &run_id, &options.node).await?;
        }
        // Made before the run is announced: a server that serves once it knows the run finds
        // its remote agents' queues there from the first request.
        let agents = Agents::new(Arc::clone(&options.runtimes), &options.plan.agents);
        let _ = run_id_tx.send(Some(run_id.clone()));
        let loaded = open::load(store.as_ref(), &options.plan, &opened, now).await?;
        // Loading a long run takes a while: the claim is renewed now, and the claim watchdog
        // counts from here.
        let now = clock.now();
        let renewal = options.node.claim(now, options.plan.settings.lease_ttl, Some(options.node.id.clone()));
        if let Some(Applied::Conflict(reason)) = store.apply(&run_id, now, vec![renewal]).await?.first() {
            return Err(Error::Conflict(reason.clone()));
        }

        let coordinator = crate::coordinator::Coordinator::new(
            &options.plan.coordinator,
            &options.coordinator_env,
            options.coordinator_llm,
        );
        let mut fx = Effects::default();
        if opened.resumed {
            let resumed =
                EventKind::RunResumed { previous_owner: opened.run.owner.clone(), requeued: loaded.n_requeued };
            fx.writes.push(Write::Event(resumed));
        }
        let mut sched = Scheduler::new(options.plan.clone(), options.node.id.clone(), loaded.stored, now, &mut fx);
        sched.coordinator_assigns(coordinator.can_assign());
        // Objectives to plan keep the run open until they are (`plan_workstream_objectives`).
        let has_objectives = options.plan.workstreams.iter().any(|ws| ws.objective.is_some());
        sched.stay_open(options.keep_open || has_objectives);
        sched.agent_records(now, &mut fx);
        sched.step(now, &mut fx);

        let post = PostOffice::new(Arc::clone(&store), run_id.clone(), agents.snapshot(), clock);
        let post_stop = CancellationToken::new();
        let (reports_tx, reports) = mpsc::unbounded_channel::<Report>();
        let mut shell = Shell {
            store: Arc::clone(&store),
            run_id: run_id.clone(),
            agents,
            reports: reports_tx,
            agent_context: AgentContext {
                run_id: run_id.clone(),
                events: agent_events_tx,
                requests: agent_requests_tx,
            },
            attempts: std::collections::HashMap::new(),
            budget_waits: std::collections::HashMap::new(),
            tracker: TaskTracker::new(),
            spawn_timeout: options.plan.settings.agent_spawn_timeout,
            fence: Some(options.node.id.clone()),
            claim_lost: CancellationToken::new(),
            claim_window: claim_window(options.plan.settings.lease_ttl),
        };
        // The claim was taken (or renewed) at `now` by `open_run`.
        let (claim_deadline, watched) = watch::channel(clock.instant_at(now.plus(shell.claim_window)));
        tokio::spawn(watch_claim(watched, shell.claim_lost.clone()));
        shell.tracker.spawn(post.clone().run(post_stop.clone()));
        let choose = std::mem::take(&mut fx.choose_agent);
        shell.perform(&mut sched, fx, now).await?;
        let _ = progress.send(sched.progress());
        let _ = plan_tx.send(Some(Arc::new(sched.plan().clone())));

        let lease_ttl = options.plan.settings.lease_ttl;
        let mut running = Running {
            sched,
            shell,
            post,
            post_stop,
            store,
            run_id,
            resumed: opened.resumed,
            clock,
            node: options.node,
            lease_ttl,
            shutdown_grace: options.shutdown_grace,
            next_owner_renewal: now.plus(lease_ttl / 3),
            claim_deadline,
            draining_until: None,
            inputs: Inputs { commands, agent_events, agent_requests, reports },
            published: Published { plan: plan_tx, progress },
            coordinator: Arc::new(coordinator),
            coordinating: 0,
            keep_open: options.keep_open,
            coordinator_stop: CancellationToken::new(),
            triaged: std::collections::HashSet::new(),
            planning: std::collections::HashSet::new(),
            coordinator_calls: Arc::new(tokio::sync::Semaphore::new(super::objectives::COORDINATOR_CALLS)),
        };
        running.ask_assignments(choose);
        running.plan_workstream_objectives().await?;
        Ok(running)
    }

    /// Turns until the run has ended and its last attempts are back, or until a shutdown's
    /// running attempts are back (or killed when the grace period was over).
    pub(super) async fn turns(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        loop {
            if self.sched.state() != RunState::Running && self.shell.attempts.is_empty() {
                return Ok(());
            }
            if self.draining_until.is_some() && self.shell.attempts.is_empty() {
                return Ok(());
            }
            let input = self.next_input(shutdown).await;
            let mut turn = Turn::default();
            self.apply(input, &mut turn).await?;
            self.end_turn(turn).await?;
        }
    }

    /// A renewal of the claim made at `sent` was stored: the watchdog's deadline moves on.
    pub(super) fn claim_renewed(&self, sent: baton_core::Timestamp) {
        let _ = self.claim_deadline.send(self.clock.instant_at(sent.plus(self.shell.claim_window)));
    }

    /// Waits for the next input. Agents' events come before outcomes: an agent's exit decides
    /// what its attempts' failures mean.
    pub(super) async fn next_input(&mut self, shutdown: &CancellationToken) -> Input {
        let wakeup = self.sched.next_wakeup().map(|at| self.clock.instant_at(at));
        let owner_renewal = self.clock.instant_at(self.next_owner_renewal);
        let inputs = &mut self.inputs;
        tokio::select! {
            biased;
            () = self.shell.claim_lost.cancelled() => Input::ClaimLost,
            () = shutdown.cancelled(), if self.draining_until.is_none() => Input::Shutdown,
            () = tokio::time::sleep_until(owner_renewal) => Input::RenewClaim,
            () = sleep_until_opt(self.draining_until) => Input::GraceOver,
            Some(event) = inputs.agent_events.recv() => Input::AgentEvent(event),
            Some(request) = inputs.agent_requests.recv() => Input::AgentRequest(request),
            Some(report) = inputs.reports.recv() => Input::Report(report),
            Some(command) = inputs.commands.recv() => Input::Command(Box::new(command)),
            () = sleep_until_opt(wakeup) => Input::Wakeup,
        }
    }

    /// A shutdown was asked for: the scheduler is held (nothing new is claimed) and running
    /// attempts get the grace period.
    pub(super) fn start_draining(&mut self) {
        tracing::debug!(running = self.shell.attempts.len(), "shutting down: letting running attempts finish");
        self.sched.hold();
        self.draining_until = Some(crate::clock::deadline_after(self.shutdown_grace));
    }

    /// Publishes the plan as it runs now, and gives the post office the agents there are now.
    pub(super) fn plan_changed(&self) {
        let _ = self.published.plan.send(Some(Arc::new(self.sched.plan().clone())));
        // Messages reach the agents there are now.
        self.post.set_runtimes(self.shell.agents.snapshot());
    }

    /// Publishes the progress, when it changed.
    pub(super) fn publish_progress(&self) {
        self.published.progress.send_if_modified(|current| {
            let next = self.sched.progress();
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    /// Stops what is left (attempts, when the loop failed; the post office; the agents), waits
    /// for every task the shell spawned, and says how the run ended. A run stopped before its
    /// end is left resumable by anyone.
    pub(super) async fn close(self, outcome: Result<(), Error>) -> Result<RunSummary, Error> {
        let Running { sched, shell, post_stop, store, run_id, resumed, clock, node, coordinator_stop, .. } = self;
        coordinator_stop.cancel();
        if outcome.is_err() {
            for token in shell.attempts.values() {
                token.cancel();
            }
        }
        post_stop.cancel();
        for runtime in shell.agents.runtimes() {
            runtime.stop().await;
        }
        shell.tracker.close();
        shell.tracker.wait().await;
        outcome?;
        let now = clock.now();
        let mut state = sched.state();
        if state == RunState::Running {
            // Stopped before the end: the run says so, and is left resumable by anyone.
            let interrupted = Write::RunInterrupted { expect_owner: node.id.clone() };
            let applied = store.apply(&run_id, now, vec![interrupted]).await?;
            match applied.first() {
                Some(Applied::Conflict(reason)) => tracing::warn!(%reason, "the run could not be marked interrupted"),
                _ => state = RunState::Interrupted,
            }
        }
        summary(&sched, store.as_ref(), resumed, state).await
    }
}

/// Sleeps until `at`; forever when there is no `at`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The run's summary: counts from the scheduler, the failed tasks from the store (finished
/// tasks are not in memory).
async fn summary(sched: &Scheduler, store: &dyn Store, resumed: bool, state: RunState) -> Result<RunSummary, Error> {
    let mut failures: Vec<TaskRecord> = Vec::new();
    for state in [TaskState::Dead, TaskState::Cancelled] {
        let filter = TaskFilter { state: Some(state), ..TaskFilter::default() };
        failures.extend(store.tasks(sched.run_id(), &filter).await?);
    }
    failures.sort_by_key(|task| task.id);
    let by_state = sched.progress().by_state;
    Ok(RunSummary {
        run_id: sched.run_id().to_string(),
        state,
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
