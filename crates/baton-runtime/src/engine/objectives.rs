//! Objectives: a workstream's `objective` (at the start of the run) or `POST /objectives`
//! turned into tasks by the coordinator.
//!
//! The model is asked off the loop (a task on the shell's tracker, cancelled when the run
//! closes); its answer comes back as a `Report` and is applied in a turn: the tasks created
//! through the same `create_tasks` as any batch (the store refuses unknown dependencies and
//! cycles, the budgets a task larger than a period), the `CoordinatorDecision` or
//! `CoordinatorFallback` event and the coordinator's usage written with the turn. While an
//! objective is being planned the run stays open.
//!
//! Triage, in llm mode: a task that failed its last attempt is described to the model (off
//! the loop, as above), which answers `retry` (the task again, or a copy pinned to another
//! agent), `split` (new tasks, checked as a proposal) or `give_up`; any failure leaves the
//! task failed, as the rules do, with a `CoordinatorFallback` event.
//!
//! An objective's tasks are keyed by it (`baton_core::coordinator::objective_key`), so it is
//! planned once per run: a restart finds the keys and asks no one again.

use serde_json::{Value, json};
use tokio::sync::oneshot;

use baton_core::EventKind;
use baton_core::budget::{Scope, Usage};
use baton_core::coordinator::{
    Triage, fallback_task, objective_key, planned_keys, proposal_tasks, retry_on, triage_key,
};
use baton_core::model::{NewTask, TaskId, TaskRecord};
use baton_core::sched::{Effects, Write};

use super::running::Running;
use super::shell::Report;
use super::turn::{Turn, create_tasks, load_finished};
use super::{Error, Planned};
use crate::coordinator::{Assigned, Decomposed, Triaged};

/// How many calls to the coordinator's model may be out at once.
pub const COORDINATOR_CALLS: usize = 4;

/// Who the coordinator's usage is reported as (its `agent` scope; the global budget counts it).
/// Not a name an agent can have (those start with a letter or digit), so the coordinator's
/// tokens never count against the budget of an agent that happens to be called `coordinator`.
pub const COORDINATOR: &str = "@coordinator";

/// The coordinator's answer about one objective, on its way back to the loop.
pub(in crate::engine) struct Coordinated {
    workstream: String,
    objective: String,
    prefix: String,
    decomposed: Decomposed,
    reply: Option<oneshot::Sender<Result<Planned, Error>>>,
}

/// What a call to the coordinator needs, taken from the run when it starts.
pub(in crate::engine) struct Call {
    coordinator: std::sync::Arc<crate::coordinator::Coordinator>,
    plan: baton_core::config::Plan,
    /// Why the model must not be asked (the global budget is spent), if it must not.
    refusal: Option<String>,
    calls: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Call {
    /// A turn to ask the model (at most [`COORDINATOR_CALLS`] at once), or why it must not be
    /// asked.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, String> {
        if let Some(reason) = &self.refusal {
            return Err(reason.clone());
        }
        self.calls.acquire().await.map_err(|_| "the run is closing".to_string())
    }
}

/// The coordinator's answer about a failed task, on its way back to the loop.
pub(in crate::engine) struct TriagedTask {
    /// The task as the store had it, or why it could not be read.
    task: Result<TaskRecord, String>,
    id: TaskId,
    triaged: Triaged,
}

impl Running {
    /// At the start of the run: the workstreams' objectives that have no tasks yet.
    pub(super) async fn plan_workstream_objectives(&mut self) -> Result<(), Error> {
        let objectives: Vec<(String, String)> = self
            .sched
            .plan()
            .workstreams
            .iter()
            .filter_map(|ws| Some((ws.name.clone(), ws.objective.clone()?)))
            .collect();
        for (workstream, objective) in objectives {
            self.plan_objective(workstream, objective, None).await?;
        }
        if self.coordinating == 0 {
            // Nothing to wait for (planned by an earlier start): the run may end as usual.
            self.sched.stay_open(self.keep_open);
            let now = self.clock.now();
            let mut fx = Effects::default();
            self.sched.step(now, &mut fx);
            let choose = std::mem::take(&mut fx.choose_agent);
            self.shell.perform(&mut self.sched, fx, now).await?;
            self.ask_assignments(choose);
        }
        Ok(())
    }

    /// Starts planning an objective, or answers why not (an unknown workstream, planned
    /// already). Fails only when the store cannot be read.
    pub(super) async fn plan_objective(
        &mut self,
        workstream: String,
        objective: String,
        reply: Option<oneshot::Sender<Result<Planned, Error>>>,
    ) -> Result<(), Error> {
        let objective = objective.trim().to_string();
        let prefix = objective_key(&workstream, &objective);
        let refusal = match self.objective_refusal(&workstream, &objective, &prefix).await? {
            Some(refusal) => refusal,
            None => {
                self.ask_coordinator(workstream, objective, prefix, reply);
                return Ok(());
            }
        };
        match reply {
            Some(reply) => {
                let _ = reply.send(Err(refusal));
            }
            // At the start, an objective planned by an earlier start of the run is expected.
            None => tracing::debug!(%refusal, "workstream objective not planned again"),
        }
        Ok(())
    }

    /// Why an objective cannot be planned now, if it cannot.
    async fn objective_refusal(&self, workstream: &str, objective: &str, prefix: &str) -> Result<Option<Error>, Error> {
        if objective.is_empty() {
            return Ok(Some(Error::Invalid("`objective` must not be empty".into())));
        }
        let plan = self.sched.plan();
        if plan.workstream(workstream).is_none() {
            let known: Vec<&str> = plan.workstreams.iter().map(|ws| ws.name.as_str()).collect();
            return Ok(Some(Error::Invalid(baton_core::config::unknown("workstream", workstream, &known))));
        }
        if self.planning.contains(prefix) {
            return Ok(Some(Error::AlreadyPlanned(format!(
                "this objective of workstream `{workstream}` is being planned: the coordinator has not answered yet"
            ))));
        }
        let existing = self.store.tasks_by_key(&self.run_id, &planned_keys(prefix)).await?;
        Ok(existing.first().map(|task| {
            Error::AlreadyPlanned(format!(
                "this objective of workstream `{workstream}` is planned already: task {} (`{}`) was made for it",
                task.id,
                task.key.as_deref().unwrap_or_default()
            ))
        }))
    }

    /// Asks the coordinator off the loop; its answer comes back as a report.
    fn ask_coordinator(
        &mut self,
        workstream: String,
        objective: String,
        prefix: String,
        reply: Option<oneshot::Sender<Result<Planned, Error>>>,
    ) {
        self.coordinating += 1;
        self.sched.stay_open(true);
        self.planning.insert(prefix.clone());
        self.spawn_coordinator_call(move |call| async move {
            let decomposed = match call.permit().await {
                Err(reason) => Decomposed { tasks: Err(reason), asked: false, usage: None },
                Ok(_permit) => call.coordinator.decompose(&call.plan, &workstream, &objective, &prefix).await,
            };
            Report::Coordinated(Box::new(Coordinated { workstream, objective, prefix, decomposed, reply }))
        });
    }

    /// Starts a call to the coordinator off the loop: `ask` makes the report its answer comes
    /// back as (unless the run closes first).
    fn spawn_coordinator_call<F, Fut>(&mut self, ask: F)
    where
        F: FnOnce(Call) -> Fut,
        Fut: std::future::Future<Output = Report> + Send + 'static,
    {
        let call = Call {
            coordinator: std::sync::Arc::clone(&self.coordinator),
            plan: self.sched.plan().clone(),
            refusal: self.budget_refusal(),
            calls: std::sync::Arc::clone(&self.coordinator_calls),
        };
        let asked = ask(call);
        let reports = self.shell.reports.clone();
        let stop = self.coordinator_stop.clone();
        self.shell.tracker.spawn(async move {
            let report = tokio::select! {
                report = asked => report,
                () = stop.cancelled() => return,
            };
            let _ = reports.send(report);
        });
    }

    /// Why the model must not be asked now: the global budget is spent (its tokens would
    /// count against it). Only in llm mode: the rules cost nothing.
    fn budget_refusal(&self) -> Option<String> {
        let exhausted = self.coordinator.is_llm() && self.sched.budgets().exhausted(&Scope::Global);
        exhausted.then(|| "budget: the global budget is spent until its reset".to_string())
    }

    /// Applies the coordinator's answer: its tasks, or the rules' one task, with the event and
    /// the usage.
    pub(super) async fn coordinated(&mut self, coordinated: Coordinated, turn: &mut Turn) -> Result<(), Error> {
        let Coordinated { workstream, objective, prefix, decomposed, reply } = coordinated;
        self.planning.remove(&prefix);
        self.coordinating = self.coordinating.saturating_sub(1);
        if self.coordinating == 0 {
            self.sched.stay_open(self.keep_open);
        }
        let now = self.clock.now();
        if let Some(usage) = &decomposed.usage {
            match Usage::from_report(usage) {
                Ok(Some(parsed)) => {
                    self.sched.record_usage(COORDINATOR, None, parsed, usage.clone(), now, &mut turn.fx)
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "the coordinator's usage was refused"),
            }
        }
        // Planned meanwhile (the same objective asked twice at once): the first one stands.
        if let Some(refusal) = self.objective_refusal(&workstream, &objective, &prefix).await? {
            if let Some(reply) = reply {
                let _ = reply.send(Err(refusal));
            }
            return Ok(());
        }
        let input = json!({"workstream": workstream, "objective": objective});
        let fallback_reason = match decomposed.tasks {
            Ok(tasks) => {
                let shown = tasks.clone();
                let store = self.store.as_ref();
                match create_tasks(&mut self.sched, store, &self.run_id, tasks, now, &mut turn.fx).await {
                    Ok(ids) => {
                        turn.fx.writes.push(Write::Event(EventKind::CoordinatorDecision {
                            decision: "decompose".into(),
                            workstream: Some(workstream),
                            task: None,
                            input,
                            output: json!({"by": "llm", "tasks": shown_tasks(&shown, &ids)}),
                            usage: decomposed.usage.unwrap_or(Value::Null),
                        }));
                        let planned = Planned { tasks: ids, by: "llm".into(), fallback_reason: None };
                        turn.deferred_planned.extend(reply.map(|reply| (reply, Ok(planned))));
                        return Ok(());
                    }
                    Err(error) => format!("invalid proposal: {error}"),
                }
            }
            Err(reason) => reason,
        };
        let planned = self.rules_plan(&workstream, &objective, &prefix, input, fallback_reason, turn).await;
        if let Some(reply) = reply {
            turn.deferred_planned.push((reply, planned));
        }
        Ok(())
    }

    /// The rules' plan of an objective: one task routed by capability, with the
    /// `CoordinatorFallback` event (or, when the coordinator is the rules, its decision).
    async fn rules_plan(
        &mut self,
        workstream: &str,
        objective: &str,
        prefix: &str,
        input: Value,
        reason: String,
        turn: &mut Turn,
    ) -> Result<Planned, Error> {
        let now = self.clock.now();
        let task = fallback_task(self.sched.plan(), workstream, prefix, objective).map_err(Error::Invalid)?;
        let shown = vec![task.clone()];
        let store = self.store.as_ref();
        let ids = create_tasks(&mut self.sched, store, &self.run_id, vec![task], now, &mut turn.fx).await?;
        let event = if self.coordinator.is_llm() {
            EventKind::CoordinatorFallback {
                decision: "decompose".into(),
                workstream: Some(workstream.to_string()),
                task: ids.first().copied(),
                reason: reason.clone(),
            }
        } else {
            EventKind::CoordinatorDecision {
                decision: "decompose".into(),
                workstream: Some(workstream.to_string()),
                task: ids.first().copied(),
                input,
                output: json!({"by": "rules", "tasks": shown_tasks(&shown, &ids)}),
                usage: Value::Null,
            }
        };
        turn.fx.writes.push(Write::Event(event));
        let fallback_reason = self.coordinator.is_llm().then_some(reason);
        Ok(Planned { tasks: ids, by: "rules".into(), fallback_reason })
    }
}

impl Running {
    /// Asks the coordinator, off the loop, what to do with a task that failed its last
    /// attempt (its record is read once the turn that made it dead is durable).
    pub(super) fn ask_triage(&mut self, id: TaskId) {
        let store = std::sync::Arc::clone(&self.store);
        self.spawn_coordinator_call(move |call| async move {
            if let Some(reason) = call.refusal.clone() {
                let triaged = Triaged { triage: Err(reason.clone()), usage: None };
                return Report::Triaged(Box::new(TriagedTask { task: Err(reason), id, triaged }));
            }
            let task = match store.task(id).await {
                Ok(Some(task)) => Ok(task),
                Ok(None) => Err(format!("task {id} is not in the store")),
                Err(error) => Err(format!("cannot read task {id}: {error}")),
            };
            let triaged = match &task {
                // A triage's own task is not triaged again: a chain of retries would not end.
                Ok(task) if task.key.as_deref().is_some_and(|key| key.contains(".triage-")) => {
                    Triaged { triage: Err("a task made by a triage is not triaged again".into()), usage: None }
                }
                Ok(task) => match call.permit().await {
                    Err(reason) => Triaged { triage: Err(reason), usage: None },
                    Ok(_permit) => call.coordinator.triage(&call.plan, task).await,
                },
                Err(reason) => Triaged { triage: Err(reason.clone()), usage: None },
            };
            Report::Triaged(Box::new(TriagedTask { task, id, triaged }))
        });
    }

    /// Applies the coordinator's triage of a failed task, with its event and usage.
    pub(super) async fn triaged(&mut self, triaged: TriagedTask, turn: &mut Turn) -> Result<(), Error> {
        let TriagedTask { task, id, triaged } = triaged;
        self.coordinating = self.coordinating.saturating_sub(1);
        if self.coordinating == 0 {
            self.sched.stay_open(self.keep_open);
        }
        let now = self.clock.now();
        if let Some(usage) = &triaged.usage
            && let Ok(Some(parsed)) = Usage::from_report(usage)
        {
            self.sched.record_usage(COORDINATOR, None, parsed, usage.clone(), now, &mut turn.fx);
        }
        let workstream = task.as_ref().ok().and_then(|task| task.workstream.clone());
        let decided = match (task, triaged.triage) {
            (Ok(task), Ok(triage)) => self.apply_triage(&task, triage, turn).await?,
            (_, Err(reason)) | (Err(reason), _) => Err(reason),
        };
        let event = match decided {
            Ok(output) => EventKind::CoordinatorDecision {
                decision: "triage".into(),
                workstream,
                task: Some(id),
                input: json!({"task": id}),
                output,
                usage: triaged.usage.unwrap_or(Value::Null),
            },
            Err(reason) => {
                EventKind::CoordinatorFallback { decision: "triage".into(), workstream, task: Some(id), reason }
            }
        };
        turn.fx.writes.push(Write::Event(event));
        Ok(())
    }

    /// Carries out a triage: what was done (the decision's output), or why it could not be.
    async fn apply_triage(
        &mut self,
        task: &TaskRecord,
        triage: Triage,
        turn: &mut Turn,
    ) -> Result<Result<Value, String>, Error> {
        let now = self.clock.now();
        let (new_tasks, output) = match triage {
            Triage::GiveUp { reason } => return Ok(Ok(json!({"action": "give_up", "reason": reason}))),
            Triage::Retry { agent: None, reason } => {
                load_finished(&mut self.sched, self.store.as_ref(), &self.run_id, task.id).await?;
                return Ok(match self.sched.retry(task.id, now, &mut turn.fx) {
                    Ok(()) => Ok(json!({"action": "retry", "reason": reason})),
                    Err(error) => Err(format!("the retry was refused: {error}")),
                });
            }
            Triage::Retry { agent: Some(agent), reason } => match retry_on(self.sched.plan(), task, &agent) {
                Ok(new) => (vec![new], json!({"action": "retry", "agent": agent, "reason": reason})),
                Err(problem) => return Ok(Err(format!("invalid retry on `{agent}`: {problem}"))),
            },
            Triage::Split { tasks, reason } => {
                let prefix = triage_key(task);
                match proposal_tasks(self.sched.plan(), task.workstream.as_deref(), &prefix, &tasks) {
                    Ok(new) => (new, json!({"action": "split", "reason": reason})),
                    Err(problem) => return Ok(Err(format!("invalid split: {problem}"))),
                }
            }
        };
        let shown = new_tasks.clone();
        let store = self.store.as_ref();
        match create_tasks(&mut self.sched, store, &self.run_id, new_tasks, now, &mut turn.fx).await {
            Ok(ids) => {
                let mut output = output;
                output["tasks"] = shown_tasks(&shown, &ids);
                Ok(Ok(output))
            }
            Err(error) => Ok(Err(format!("invalid triage: {error}"))),
        }
    }
}

/// The coordinator's choice of agent for a task, on its way back to the loop.
pub(in crate::engine) struct AssignedTask {
    id: TaskId,
    workstream: Option<String>,
    candidates: Vec<String>,
    assigned: Assigned,
}

impl Running {
    /// Asks the coordinator, off the loop, which agent takes each task that several can take
    /// (the scheduler holds them until [`Running::assigned`] applies the answer).
    pub(super) fn ask_assignments(&mut self, asks: Vec<(TaskId, Vec<String>)>) {
        for (id, candidates) in asks {
            let Some(task) = self.sched.task(id).cloned() else {
                self.sched.assignment_chosen(id, None);
                continue;
            };
            self.spawn_coordinator_call(move |call| async move {
                let assigned = match call.permit().await {
                    Err(reason) => Assigned { assignment: Err(reason), usage: None },
                    Ok(_permit) => call.coordinator.assign(&call.plan, &task, &candidates).await,
                };
                let workstream = task.workstream.clone();
                Report::Assigned(Box::new(AssignedTask { id, workstream, candidates, assigned }))
            });
        }
    }

    /// Applies the coordinator's choice of agent (or the rules', on a fallback), with its event
    /// and usage.
    pub(super) fn assigned(&mut self, assigned: AssignedTask, turn: &mut Turn) {
        let AssignedTask { id, workstream, candidates, assigned } = assigned;
        let now = self.clock.now();
        if let Some(usage) = &assigned.usage
            && let Ok(Some(parsed)) = Usage::from_report(usage)
        {
            self.sched.record_usage(COORDINATOR, None, parsed, usage.clone(), now, &mut turn.fx);
        }
        let event = match assigned.assignment {
            Ok(choice) => {
                self.sched.assignment_chosen(id, Some(choice.agent.clone()));
                EventKind::CoordinatorDecision {
                    decision: "assign".into(),
                    workstream,
                    task: Some(id),
                    input: json!({"task": id, "candidates": candidates}),
                    output: json!({"agent": choice.agent, "reason": choice.reason}),
                    usage: assigned.usage.unwrap_or(Value::Null),
                }
            }
            Err(reason) => {
                self.sched.assignment_chosen(id, None);
                EventKind::CoordinatorFallback { decision: "assign".into(), workstream, task: Some(id), reason }
            }
        };
        turn.fx.writes.push(Write::Event(event));
    }
}

/// The tasks made, as the decision's output shows them.
fn shown_tasks(tasks: &[NewTask], ids: &[TaskId]) -> Value {
    let shown: Vec<Value> = tasks
        .iter()
        .zip(ids)
        .map(|(task, id)| {
            json!({
                "id": id,
                "key": task.key,
                "title": task.title,
                "requires": task.requires,
                "depends_on": task.depends_on,
                "estimated_tokens": task.estimated_tokens,
            })
        })
        .collect();
    Value::Array(shown)
}
