//! One turn of the engine: one input (an agent's report or request, an attempt's outcome, an
//! operator's command, a timer, a shutdown) applied to the scheduler, which collects what it
//! decided in the turn's [`Effects`]; then `end_turn` lets the scheduler step, has the shell
//! make the writes durable and perform the effects, and only then answers the commands that
//! waited for them.
//!
//! A turn takes every input of the same kind that is already waiting (a burst of outcomes is
//! one commit).

use tokio::sync::oneshot;

use baton_core::budget::{Limit, Scope, Usage};
use baton_core::model::{NewTask, TaskId, TaskState};
use baton_core::sched::{Effects, ReloadSummary, Scheduler, Write};
use baton_core::{EventKind, Outcome, Timestamp};
use baton_store::Store;

use super::running::{Input, Running};
use super::shell::{Report, Shell};
use super::{Command, Control, Deferred, Error, Planned, refused, store_refusal};
use crate::agent::{AgentEvent, AgentRequest, Reply, RequestError};
use crate::postoffice::PostOffice;

/// An answer about an objective, sent once what it created is durable.
pub(super) type DeferredPlanned = (oneshot::Sender<Result<Planned, Error>>, Result<Planned, Error>);

/// What one turn decided, and the answers that wait until it is durable.
#[derive(Default)]
pub(super) struct Turn {
    pub(super) fx: Effects,
    /// Answers to commands, sent once what they decided is durable.
    deferred: Vec<Deferred>,
    deferred_reload: Option<(oneshot::Sender<Result<ReloadSummary, Error>>, ReloadSummary)>,
    /// Answers about objectives planned in this turn.
    pub(super) deferred_planned: Vec<DeferredPlanned>,
}

impl Running {
    /// Applies one input (and those of its kind already waiting) to the scheduler.
    pub(super) async fn apply(&mut self, input: Input, turn: &mut Turn) -> Result<(), Error> {
        let fx = &mut turn.fx;
        match input {
            Input::Shutdown => self.start_draining(),
            Input::GraceOver => {
                // Grace is over: interrupted attempts go back to the queue uncounted.
                let now = self.clock.now();
                for ((task, attempt), token) in self.shell.attempts.drain() {
                    token.cancel();
                    if let Err(error) = self.sched.release(task, attempt, now, fx) {
                        tracing::debug!(%error, "release at shutdown");
                    }
                }
            }
            Input::AgentEvent(event) => {
                let now = self.clock.now();
                let mut next = Some(event);
                while let Some(event) = next {
                    handle_agent_event(&mut self.sched, &self.post, event, now, fx);
                    next = self.inputs.agent_events.try_recv().ok();
                }
            }
            Input::AgentRequest(request) => {
                let now = self.clock.now();
                let mut sends = Vec::new();
                let mut next = Some(request);
                while let Some(request) = next {
                    if let AgentRequest::WaitForBudget { agent, task, tokens, reply } = request {
                        let waits = wait_for_budget(&mut self.sched, &agent, task, tokens, now, fx);
                        if let Ok(attempt) = waits {
                            self.shell.budget_waits.insert((task, attempt), tokens);
                        }
                        let _ = reply.send(waits.map(|_| ()));
                        next = self.inputs.agent_requests.try_recv().ok();
                        continue;
                    }
                    let store = self.store.as_ref();
                    sends.extend(handle_agent_request(&mut self.sched, store, &self.run_id, request, now, fx).await);
                    next = self.inputs.agent_requests.try_recv().ok();
                }
                if !sends.is_empty() {
                    // Stored (durable) before each agent hears its message was sent, and
                    // delivered by the post office. Off the engine's loop, in one task for
                    // every send of this turn: concurrent sends share the store's commits.
                    let post = self.post.clone();
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
            Input::Report(report) => {
                let now = self.clock.now();
                let mut plan_changed = false;
                let mut next = Some(report);
                // Take everything else that is already waiting: one commit for all of it.
                while let Some(report) = next {
                    match report {
                        Report::Coordinated(coordinated) => self.coordinated(*coordinated, turn).await?,
                        Report::Triaged(triaged) => self.triaged(*triaged, turn).await?,
                        Report::Assigned(assigned) => self.assigned(*assigned, turn),
                        report => {
                            plan_changed |= handle_report(&mut self.sched, &mut self.shell, report, now, &mut turn.fx)
                        }
                    }
                    next = self.inputs.reports.try_recv().ok();
                }
                if plan_changed {
                    self.plan_changed();
                }
            }
            Input::Command(command) => self.command(*command, turn).await?,
            Input::Wakeup => self.sched.tick(self.clock.now(), fx),
            Input::ClaimLost => return Err(self.shell.claim_lost_error()),
            // Renewed in `end_turn`, as in every turn where it is due.
            Input::RenewClaim => {}
        }
        Ok(())
    }

    /// Adds the renewal of the claim on the run to the turn's writes when it is due. Done in
    /// every turn, not only on the renewal's own timer: a busy run (a flood of agent events)
    /// would otherwise keep that timer's input from ever being taken, and the claim watchdog
    /// would stop a healthy leader.
    /// Whether it did.
    fn renew_claim_if_due(&mut self, now: Timestamp, fx: &mut Effects) -> bool {
        if now < self.next_owner_renewal {
            return false;
        }
        fx.writes.push(self.node.claim(now, self.lease_ttl, Some(self.node.id.clone())));
        self.next_owner_renewal = now.plus(self.lease_ttl / 3);
        true
    }

    /// Applies an operator's command. Its answer waits for the turn's writes when it changed
    /// something that must be durable first.
    async fn command(&mut self, command: Command, turn: &mut Turn) -> Result<(), Error> {
        let now = self.clock.now();
        let fx = &mut turn.fx;
        let changes_plan = matches!(
            command,
            Command::AddAgent { .. }
                | Command::UpdateAgent { .. }
                | Command::RemoveAgent { .. }
                | Command::Reconfigure { .. }
        );
        match command {
            Command::CreateTasks { tasks, reply } => {
                // Answered at once: the tasks are durable when the store created them.
                let created = create_tasks(&mut self.sched, self.store.as_ref(), &self.run_id, tasks, now, fx).await;
                let _ = reply.send(created);
            }
            Command::AddAgent { spec, reply } => {
                let runtime = self.shell.agents.build(&spec);
                let name = spec.name.clone();
                let result = self.sched.add_agent(spec, now, fx);
                if result.is_ok() {
                    self.shell.agents.added(name, runtime);
                }
                turn.deferred.push((reply, result.map_err(refused)));
            }
            Command::UpdateAgent { spec, reply } => {
                let before = self.sched.plan().agent(&spec.name).cloned();
                let runtime = self.shell.agents.build(&spec);
                let name = spec.name.clone();
                match self.sched.update_agent(spec.clone(), now, fx) {
                    Ok(restarted) => {
                        // A new runtime when how the agent runs changed.
                        let rebuild =
                            restarted || before.is_none_or(|before| baton_core::sched::runtime_changed(&before, &spec));
                        self.shell.agents.updated(name, runtime, rebuild, &self.shell.tracker);
                        turn.deferred.push((reply, Ok(())));
                    }
                    Err(error) => turn.deferred.push((reply, Err(refused(error)))),
                }
            }
            Command::RemoveAgent { name, reply } => {
                let result = self.sched.remove_agent(&name, now, fx);
                if result.is_ok() {
                    // Stopped and dropped: the scheduler gave its attempts up.
                    self.shell.agents.removed(&name, &self.shell.tracker);
                }
                turn.deferred.push((reply, result.map_err(refused)));
            }
            Command::Reconfigure { plan, reply } => {
                let before = self.sched.plan().agents.clone();
                // Finished tasks are not in memory: the store says which of the file's tasks
                // the run has.
                let keys: Vec<String> = plan.tasks.iter().filter_map(|task| task.key.clone()).collect();
                let existing = self.store.tasks_by_key(&self.run_id, &keys).await?;
                let existing = existing.into_iter().filter_map(|task| Some((task.key?, task.id))).collect();
                match self.sched.reconfigure(*plan, &existing, now, fx) {
                    Ok(summary) => {
                        self.shell.agents.replace(&before, &self.sched.plan().agents, &self.shell.tracker);
                        if !summary.new_tasks.is_empty() {
                            let tasks = summary.new_tasks.clone();
                            let created =
                                create_tasks(&mut self.sched, self.store.as_ref(), &self.run_id, tasks, now, fx).await;
                            if let Err(error) = created {
                                tracing::warn!(%error, "the configuration's new tasks were not created");
                            }
                        }
                        turn.deferred_reload = Some((reply, summary));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(refused(error)));
                    }
                }
            }
            Command::PlanObjective { workstream, objective, reply } => {
                self.plan_objective(workstream, objective, reply).await?;
            }
            Command::RejectConfig { errors, reply } => {
                fx.writes.push(Write::Event(EventKind::ConfigRejected { errors }));
                turn.deferred.push((reply, Ok(())));
            }
            Command::Cancel { task, reason, reply } => {
                load_finished(&mut self.sched, self.store.as_ref(), &self.run_id, task).await?;
                turn.deferred.push((reply, self.sched.cancel(task, reason, now, fx).map_err(refused)));
            }
            Command::Retry { task, reply } => {
                load_finished(&mut self.sched, self.store.as_ref(), &self.run_id, task).await?;
                turn.deferred.push((reply, self.sched.retry(task, now, fx).map_err(refused)));
            }
            Command::Control { control, reply } => {
                turn.deferred.push((reply, control_result(&mut self.sched, control, now, fx)));
            }
            Command::Redeliver { ids, reply } => {
                // The post office's own write, like its acknowledgements: it does not wait for
                // this turn.
                let post = self.post.clone();
                tokio::spawn(async move {
                    let _ = reply.send(post.redeliver(ids).await.map_err(Error::from));
                });
            }
        }
        if changes_plan {
            self.plan_changed();
        }
        Ok(())
    }

    /// Ends a turn: the scheduler steps, the shell makes the writes durable and performs the
    /// effects, the commands that waited are answered and the progress published.
    pub(super) async fn end_turn(&mut self, turn: Turn) -> Result<(), Error> {
        let Turn { mut fx, deferred, deferred_reload, deferred_planned } = turn;
        let now = self.clock.now();
        // Tasks that failed their last attempt are the coordinator's to triage (llm mode): the
        // run stays open until it has answered.
        let mut dead = if self.coordinator.is_llm() { dead_lettered(&fx) } else { Vec::new() };
        dead.retain(|task| self.triaged.insert(*task));
        if !dead.is_empty() {
            self.coordinating += dead.len();
            self.sched.stay_open(true);
        }
        self.sched.step(now, &mut fx);
        let renewed = self.renew_claim_if_due(now, &mut fx);
        let choose = std::mem::take(&mut fx.choose_agent);
        self.shell.perform(&mut self.sched, fx, now).await?;
        if renewed {
            self.claim_renewed(now);
        }
        self.ask_assignments(choose);
        for task in dead {
            self.ask_triage(task);
        }
        for (reply, result) in deferred {
            let _ = reply.send(result);
        }
        if let Some((reply, summary)) = deferred_reload {
            let _ = reply.send(Ok(summary));
        }
        for (reply, planned) in deferred_planned {
            let _ = reply.send(planned);
        }
        self.publish_progress();
        Ok(())
    }
}

/// Creates tasks in the run, after the checks that need the running plan (their workstream
/// exists; no task needs more than a whole period's budget), and hands them to the scheduler.
pub(super) async fn create_tasks(
    sched: &mut Scheduler,
    store: &dyn Store,
    run_id: &str,
    tasks: Vec<NewTask>,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<Vec<TaskId>, Error> {
    if let Some(task) =
        tasks.iter().find(|task| task.workstream.as_deref().is_some_and(|ws| sched.plan().workstream(ws).is_none()))
    {
        return Err(Error::Invalid(format!("unknown workstream `{}`", task.workstream.as_deref().unwrap_or_default())));
    }
    // A task that needs more than a whole period's budget would wait forever.
    let never = tasks.iter().find_map(|task| {
        let problem = sched.budgets().never_fits(task.workstream.as_deref(), task.estimated_tokens?)?;
        Some(format!("task `{}`: {problem}", task.key.as_deref().unwrap_or(&task.title)))
    });
    if let Some(problem) = never {
        return Err(Error::Invalid(problem));
    }
    let created = store.create_tasks(run_id, tasks, now).await?;
    let ids = created.iter().map(|task| task.id).collect();
    // Dependencies on finished tasks: their outcome is the store's to say.
    let unknown = sched.unknown_dependencies(&created);
    if !unknown.is_empty() {
        match store.task_statuses(run_id, &unknown).await {
            Ok(statuses) => sched.settle(statuses),
            Err(error) => {
                // The tasks exist: they are added, and a dependency nobody could read cancels
                // its dependant, saying so.
                tracing::warn!(%error, "the outcome of finished dependencies could not be read");
            }
        }
    }
    sched.add_tasks(created, now, fx);
    Ok(ids)
}

/// The tasks this turn made dead.
fn dead_lettered(fx: &Effects) -> Vec<TaskId> {
    fx.writes
        .iter()
        .filter_map(|write| match write {
            Write::Task { events, .. } => Some(events),
            _ => None,
        })
        .flatten()
        .filter_map(|event| match event {
            EventKind::TaskDeadLettered { task, .. } => Some(*task),
            _ => None,
        })
        .collect()
}

/// A command names a task that is not in memory: a finished task (the scheduler holds only
/// unfinished ones). Its record is loaded from the store, with the outcome of its
/// dependencies, so that a retry can bring it back and a cancel is refused for the right
/// reason.
pub(super) async fn load_finished(
    sched: &mut Scheduler,
    store: &dyn Store,
    run_id: &str,
    id: TaskId,
) -> Result<(), Error> {
    if sched.task(id).is_some() {
        return Ok(());
    }
    let Some(task) = store.task(id).await?.filter(|task| task.run_id == run_id) else { return Ok(()) };
    let unknown = sched.unknown_dependencies([&task]);
    sched.settle(store.task_statuses(run_id, &unknown).await?);
    sched.restore(task);
    Ok(())
}

/// An agent whose config sets no capabilities takes those it learned at start; an operator's
/// or the config's, once set, are not replaced. Whether the plan changed.
fn learn_capabilities(
    sched: &mut Scheduler,
    agent: &str,
    capabilities: Vec<String>,
    now: Timestamp,
    fx: &mut Effects,
) -> bool {
    let Some(mut spec) = sched.plan().agent(agent).cloned() else { return false };
    if !spec.capabilities.is_empty() || capabilities.is_empty() {
        return false;
    }
    tracing::info!(%agent, capabilities = %capabilities.join(", "), "capabilities learned at start");
    spec.capabilities = capabilities;
    match sched.update_agent(spec, now, fx) {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%agent, %error, "the capabilities learned at start were refused");
            false
        }
    }
}

/// Applies what a spawned task reported; whether the plan changed (an agent learned its
/// capabilities).
fn handle_report(sched: &mut Scheduler, shell: &mut Shell, report: Report, now: Timestamp, fx: &mut Effects) -> bool {
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
            let waits_for_budget = shell.budget_waits.remove(&(task, attempt));
            if was_killed {
                // Its process has exited: the slot and resources it held are free.
                sched.attempt_ended(task, attempt, now);
                return false;
            }
            let waits =
                waits_for_budget.is_some_and(|tokens| match sched.wait_for_budget(task, attempt, tokens, now, fx) {
                    Ok(()) => true,
                    // The budget's limits changed meanwhile: the attempt's outcome stands.
                    Err(error) => {
                        tracing::debug!(%error, %task, "the attempt cannot wait for budget");
                        false
                    }
                });
            let completed =
                if waits { Ok(()) } else { sched.complete(task, attempt, outcome, now, rand::random::<f64>(), fx) };
            match completed {
                Ok(()) => {}
                // The attempt was given up already (its agent died or was stopped).
                Err(baton_core::sched::Error::Stale { .. }) => {}
                Err(error) => tracing::warn!(%error, "outcome not recorded"),
            }
        }
        Report::AgentStarted { agent, capabilities } => {
            // Learned before the agent counts as started: while it starts no task is given up
            // as unrunnable, so a task only these capabilities can run waits for them.
            let learned =
                capabilities.is_some_and(|capabilities| learn_capabilities(sched, &agent, capabilities, now, fx));
            let _ = sched.agent_started(&agent, now, fx);
            return learned;
        }
        Report::AgentFailed { agent, error } => {
            let _ = sched.agent_failed(&agent, error.message, error.kind, now, fx);
        }
        // Applied by `Running::coordinated`, which needs the store; never handed here.
        Report::Coordinated(_) | Report::Triaged(_) | Report::Assigned(_) => {
            tracing::warn!("a coordinator's answer reached the wrong handler");
        }
    }
    false
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
        AgentRequest::GetTask { task, reply, .. } => {
            let found = match sched.task(task) {
                Some(record) => Ok(Some(record.clone())),
                None => store.task(task).await.map(|record| record.filter(|record| record.run_id == run_id)),
            };
            let _ = reply.send(match found {
                Ok(Some(record)) => Ok(record),
                Ok(None) => Err(RequestError::invalid(format!("no task {task} in this run"))),
                Err(error) => Err(store_refusal(error)),
            });
        }
        // Answered by `Running::apply`, which knows the shell's attempts.
        AgentRequest::WaitForBudget { reply, .. } => {
            let _ = reply.send(Err(RequestError::unavailable("waiting for budget is not handled here".to_string())));
        }
        // Written at once, by the engine as the run's single writer; the agent waits for it,
        // so that a transcript is durable before the outcome it led to.
        AgentRequest::Transcript { task, attempt, entries, reply, .. } => {
            let result = store.append_transcript(run_id, task, attempt, entries).await.map_err(store_refusal);
            let _ = reply.send(result);
        }
        AgentRequest::CreateTasks { parent, tasks: inputs, reply, .. } => {
            let parent_workstream = parent.and_then(|id| sched.task(id)).and_then(|task| task.workstream.clone());
            let mut tasks = Vec::with_capacity(inputs.len());
            for (idx, mut input) in inputs.into_iter().enumerate() {
                if input.workstream.is_none() {
                    input.workstream = parent_workstream.clone();
                }
                match baton_core::task::new_task(input, sched.plan().into()) {
                    Ok(task) => tasks.push(NewTask { parent, ..task }),
                    Err(error) => {
                        let _ = reply.send(Err(RequestError::invalid(format!("tasks[{idx}]: {error}"))));
                        return None;
                    }
                }
            }
            let result = match create_tasks(sched, store, run_id, tasks, now, fx).await {
                Ok(ids) => Ok(ids),
                Err(Error::Store(error)) => Err(store_refusal(error)),
                Err(error) => Err(RequestError::invalid(error.to_string())),
            };
            let _ = reply.send(result);
        }
    }
    None
}

/// An agent's attempt at `task` is to wait for budget (`AgentRequest::WaitForBudget`): checked
/// now (the attempt is the agent's, and `tokens` can fit at all), carried out when its outcome
/// comes. The answer is the attempt's number.
fn wait_for_budget(
    sched: &mut Scheduler,
    agent: &str,
    task: TaskId,
    tokens: u64,
    now: Timestamp,
    fx: &mut Effects,
) -> Result<u32, RequestError> {
    sched.agent_activity(agent, now, fx);
    let Some(record) = sched.task(task) else {
        return Err(RequestError::invalid(format!("task {task} is not running")));
    };
    if record.state != TaskState::Running || record.assigned_agent.as_deref() != Some(agent) {
        return Err(RequestError::invalid(format!("task {task} is not running on agent `{agent}`")));
    }
    if let Some(problem) = sched.budgets().never_fits(record.workstream.as_deref(), tokens) {
        let problem = problem
            .replace(&format!("it estimates {tokens} tokens"), &format!("its first model call needs {tokens} tokens"));
        return Err(RequestError::invalid(problem));
    }
    Ok(record.attempt)
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
