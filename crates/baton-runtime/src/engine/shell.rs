//! The shell: carries out what the scheduler decided. The writes are made durable first, in
//! one store call; only then are the effects performed: attempts killed, agents started (in
//! order, each within the spawn timeout) and stopped, attempts handed to their agents' runtimes,
//! each in its own task with a token that kills it. Schedules' firings come last, each its own
//! store transaction, and the scheduler decides about the tasks they created in turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use baton_core::model::TaskId;
use baton_core::sched::{Effects, Scheduler, Write};
use baton_core::{Outcome, Timestamp};
use baton_store::{Applied, ErrorKind, Store};

use super::Error;
use super::agents::Agents;
use crate::agent::{AgentContext, AgentError, AgentRuntime, Attempt};

/// What the engine hears from the tasks the shell spawned.
pub(super) enum Report {
    Outcome {
        task: TaskId,
        attempt: u32,
        outcome: Outcome,
    },
    /// The agent is ready; with the capabilities it learned at start, if any.
    AgentStarted {
        agent: String,
        capabilities: Option<Vec<String>>,
    },
    AgentFailed {
        agent: String,
        error: AgentError,
    },
    /// The coordinator answered about an objective (boxed: it holds the proposed tasks).
    Coordinated(Box<super::objectives::Coordinated>),
    /// The coordinator answered about a task that failed its last attempt.
    Triaged(Box<super::objectives::TriagedTask>),
    /// The coordinator chose (or could not choose) among the agents that can take a task.
    Assigned(Box<super::objectives::AssignedTask>),
}

/// Carries out what the scheduler decided.
pub(super) struct Shell {
    pub(super) store: Arc<dyn Store>,
    pub(super) run_id: String,
    pub(super) agents: Agents,
    pub(super) reports: mpsc::UnboundedSender<Report>,
    pub(super) agent_context: AgentContext,
    /// Running attempts and the token that kills each.
    pub(super) attempts: HashMap<(TaskId, u32), CancellationToken>,
    /// Attempts that end to wait for budget (`AgentRequest::WaitForBudget`), with the tokens
    /// they wait for: their outcome puts the task back uncounted.
    pub(super) budget_waits: HashMap<(TaskId, u32), u64>,
    /// Every task the shell spawns (attempts, agents' starts and stops, the post office), so
    /// that closing the run waits for them all.
    pub(super) tracker: TaskTracker,
    pub(super) spawn_timeout: Duration,
    /// This node's id: every batch of writes is fenced on it (`Write::Fence`), so that once
    /// another node has taken the run over, nothing this one decides is stored. `None` once
    /// this engine's fenced batch has finished the run (which releases the claim): its last
    /// attempts' outcomes are written unfenced.
    pub(super) fence: Option<String>,
    /// Fired when the claim on the run lapses unrenewed (see `running::watch_claim`): every
    /// attempt's token is its child, so they all stop, and nothing new is started.
    pub(super) claim_lost: CancellationToken,
    /// How long the claim holds unrenewed before this node gives it up (`claim_window`).
    pub(super) claim_window: Duration,
}

impl Shell {
    pub(super) fn claim_lost_error(&self) -> Error {
        Error::ClaimLost { run: self.run_id.clone(), within: baton_core::time::format_duration(self.claim_window) }
    }

    /// Makes the writes durable and performs the effects, then the schedules' firings: each is
    /// one store transaction (task, cursor, `ScheduleFired`) whose task goes back to the
    /// scheduler, and what the scheduler decides about it (claim it, usually) is performed in
    /// turn.
    pub(super) async fn perform(
        &mut self,
        sched: &mut Scheduler,
        mut fx: Effects,
        now: Timestamp,
    ) -> Result<(), Error> {
        loop {
            let firings = std::mem::take(&mut fx.fire);
            self.write_then_act(fx, now).await?;
            if sched.state().is_finished() {
                self.fence = None;
            }
            // The writes are durable: the records of tasks that ended leave memory.
            sched.writes_durable();
            if firings.is_empty() {
                return Ok(());
            }
            fx = Effects::default();
            for firing in firings {
                let created = match self.store.fire_schedule(&self.run_id, firing.clone(), now).await {
                    Ok(created) => created,
                    // Refused (a task with its key exists, the schedule is gone, its task was
                    // refused): this due time has its task already, or will never have one.
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
                    let stored = self.store.schedules(&self.run_id).await?;
                    if let Some(record) = stored.into_iter().find(|record| record.name == firing.schedule) {
                        sched.schedule_reloaded(record);
                    }
                }
            }
            sched.step(now, &mut fx);
        }
    }

    /// Makes the writes durable (fenced on this node's claim), then performs the effects —
    /// unless the claim has lapsed meanwhile.
    async fn write_then_act(&mut self, mut fx: Effects, now: Timestamp) -> Result<(), Error> {
        if !fx.writes.is_empty() {
            if let Some(owner) = &self.fence {
                fx.writes.insert(0, Write::Fence { owner: owner.clone() });
            }
            let applied = self.store.apply(&self.run_id, now, fx.writes).await?;
            if let Some(Applied::Conflict(reason)) = applied.into_iter().find(|applied| *applied != Applied::Done) {
                return Err(Error::Conflict(reason));
            }
        }
        if self.claim_lost.is_cancelled() {
            return Err(self.claim_lost_error());
        }
        for (task, attempt) in fx.kills {
            if let Some(token) = self.attempts.get(&(task, attempt)) {
                token.cancel();
            }
        }
        if !fx.start_agents.is_empty() {
            // In order (critical agents first), each within the spawn timeout.
            let to_start: Vec<(String, Option<Arc<dyn AgentRuntime>>)> =
                fx.start_agents.into_iter().map(|name| (name.clone(), self.agents.get(&name).cloned())).collect();
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
                        Ok(Ok(())) => Report::AgentStarted { agent, capabilities: runtime.learned_capabilities() },
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
            let Some(runtime) = self.agents.get(&name).cloned() else { continue };
            self.tracker.spawn(async move { runtime.stop().await });
        }
        for assignment in fx.assignments {
            let task_id = assignment.task.id;
            let attempt_number = assignment.task.attempt;
            let token = self.claim_lost.child_token();
            self.attempts.insert((task_id, attempt_number), token.clone());
            let runtime = Arc::clone(&self.agents[assignment.agent.as_str()]);
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
