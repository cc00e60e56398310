//! Tasks: create (one or a batch), list, read, cancel and retry.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::Event;
use baton_core::model::{NewTask, TaskId, TaskRecord, TaskState};
/// A task to create: the fields of a `[[tasks]]` entry of baton.toml, checked and given their
/// defaults by [`baton_core::task::new_task`], as every source of tasks is.
pub use baton_core::task::TaskInput;
use baton_store::{EventQuery, TaskFilter};

use crate::{Action, Caller, Error, Grant, Ops, Result, own_only, page_limit};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBatch {
    #[schema(min_items = 1)]
    pub tasks: Vec<TaskInput>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    #[schema(value_type = Vec<i64>)]
    pub ids: Vec<TaskId>,
}

/// Serialized as the query string a client sends (absent fields left out).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// `pending`, `ready`, `running`, `succeeded`, `dead`, `cancelled` or `suspended`.
    pub state: Option<TaskState>,
    pub workstream: Option<String>,
    /// The agent a task is assigned or pinned to.
    pub agent: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// Only tasks with a greater id: pass the previous page's `next_after`.
    pub after: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskDetail {
    pub task: TaskRecord,
    #[schema(value_type = Vec<Object>)]
    pub attempts: Vec<baton_store::AttemptRecord>,
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Event>,
    /// What an LLM agent's attempts said, in order (absent for other agents' tasks):
    /// `[{"attempt", "role": "system"|"user"|"assistant"|"tool", "content", "tool_calls":
    /// [{"id", "name", "arguments"}], "tool_call_id", "usage", "at"}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub transcript: Vec<baton_core::transcript::Entry>,
}

/// An objective for the coordinator to turn into tasks of a workstream.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveInput {
    /// What to achieve, in a few sentences.
    #[schema(min_length = 1)]
    pub objective: String,
    /// The workstream the tasks belong to.
    #[schema(min_length = 1)]
    pub workstream: String,
}

/// What the coordinator made of an objective.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ObjectivePlan {
    /// The tasks created, in the proposal's order.
    #[schema(value_type = Vec<i64>)]
    pub tasks: Vec<TaskId>,
    /// `llm` when the model's proposal was taken, `rules` when one task was made by the rules.
    pub by: String,
    /// Why the rules decided although `[coordinator] mode = "llm"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelInput {
    /// Why; shown in the task's events.
    pub reason: Option<String>,
}

impl Ops {
    /// `input` as a task of the running plan, or what is wrong with it (and the task's place
    /// in a batch).
    fn new_task(&self, input: TaskInput, index: Option<usize>) -> Result<NewTask> {
        let plan = self.plan();
        baton_core::task::new_task(input, (&*plan).into()).map_err(|error| {
            let at = index.map_or_else(String::new, |idx| format!("tasks[{idx}]: "));
            Error::invalid(format!("{at}{error}"))
        })
    }

    /// Creates tasks, all or none; they may depend on each other by key. Returns their ids.
    pub async fn create_tasks(&self, caller: &Caller, inputs: Vec<TaskInput>) -> Result<Vec<TaskId>> {
        caller.require(Action::CreateTasks)?;
        if inputs.is_empty() {
            return Err(Error::invalid("`tasks` is empty"));
        }
        let tasks = inputs
            .into_iter()
            .enumerate()
            .map(|(idx, input)| self.new_task(input, Some(idx)))
            .collect::<Result<_>>()?;
        Ok(self.engine()?.create_tasks(tasks).await?)
    }

    /// Creates one task (what `POST /tasks` does): like [`Ops::create_tasks`] with one task,
    /// and errors without a batch index.
    pub async fn create_task(&self, caller: &Caller, input: TaskInput) -> Result<TaskId> {
        caller.require(Action::CreateTasks)?;
        let task = self.new_task(input, None)?;
        let ids = self.engine()?.create_tasks(vec![task]).await?;
        ids.first().copied().ok_or_else(|| Error::new(crate::ErrorKind::Internal, "the engine created no task"))
    }

    /// Turns an objective into tasks of a workstream through the coordinator: a model's
    /// proposal, checked as any batch, or one task by the rules (with the reason). Refused as
    /// a conflict when the run planned the same objective already.
    pub async fn plan_objective(&self, caller: &Caller, input: ObjectiveInput) -> Result<ObjectivePlan> {
        caller.require(Action::PlanObjectives)?;
        if input.objective.trim().is_empty() {
            return Err(Error::invalid("`objective` must not be empty: say what the tasks should achieve"));
        }
        let planned = self.engine()?.plan_objective(input.workstream, input.objective).await?;
        Ok(ObjectivePlan { tasks: planned.tasks, by: planned.by, fallback_reason: planned.fallback_reason })
    }

    /// Tasks, with filters and paging by id. An agent token lists its own.
    pub async fn tasks(&self, caller: &Caller, query: TaskQuery) -> Result<TaskPage> {
        let agent = match caller.require(Action::ReadTasks)? {
            Grant::Own => Some(own_only(caller, query.agent.as_deref(), "tasks")?),
            _ => query.agent,
        };
        let limit = page_limit(query.limit, 100)?;
        let filter = TaskFilter {
            state: query.state,
            workstream: query.workstream,
            agent,
            limit: Some(limit + 1),
            after: query.after.map(TaskId),
        };
        let mut tasks = self.store().tasks(self.run_id(), &filter).await?;
        let next_after = if tasks.len() as u64 > limit {
            tasks.truncate(limit as usize);
            tasks.last().map(|task| task.id.0)
        } else {
            None
        };
        Ok(TaskPage { tasks, next_after })
    }

    /// A task of this run, or not found.
    async fn find_task(&self, id: TaskId) -> Result<TaskRecord> {
        self.store()
            .task(id)
            .await?
            .filter(|task| task.run_id == self.run_id())
            .ok_or_else(|| Error::not_found(format!("no task {id} in this run")))
    }

    /// Under [`Grant::Own`], an agent reads a task that is its own (assigned or pinned to it)
    /// or that one of its unfinished tasks depends on: what its work needs.
    async fn check_task_is_own(&self, caller: &Caller, task: &TaskRecord) -> Result<()> {
        let own = caller.own_agent()?;
        if task.agent.as_deref() == Some(own) || task.assigned_agent.as_deref() == Some(own) {
            return Ok(());
        }
        let filter =
            TaskFilter { state: Some(TaskState::Running), agent: Some(own.to_string()), ..TaskFilter::default() };
        let running = self.store().tasks(self.run_id(), &filter).await?;
        if running.iter().any(|mine| mine.depends_on.contains(&task.id)) {
            return Ok(());
        }
        Err(Error::forbidden(format!(
            "task {} is not agent `{own}`'s: an agent token reads its own tasks and what they depend on",
            task.id
        )))
    }

    /// Task `id` as it is now, and the events about it from now on as they happen (see
    /// [`Ops::follow_events`]), for a caller who may read the task: what waiting for a task
    /// to end follows. The stream starts before the task is read, so no change between the
    /// two is missed (one may be heard of twice). It ends on `stop`, at `until` or when the
    /// store's subscription closes.
    pub async fn follow_task(
        &self,
        caller: &Caller,
        id: TaskId,
        stop: tokio_util::sync::CancellationToken,
        until: Option<tokio::time::Instant>,
    ) -> Result<(TaskRecord, impl futures::Stream<Item = Event> + use<>)> {
        let grant = caller.require(Action::ReadTasks)?;
        let since = self.latest_event().await?;
        let task = self.find_task(id).await?;
        if grant == Grant::Own {
            self.check_task_is_own(caller, &task).await?;
        }
        // The caller may read the task, and so its events (as `task` shows them).
        let filter = crate::events::EventFilter { task: Some(id.0), ..Default::default() };
        Ok((task, self.follow_events(filter, since, stop, until)))
    }

    /// Task `id` as it is now, for a caller who may read it (without its attempts and events).
    pub async fn task_record(&self, caller: &Caller, id: TaskId) -> Result<TaskRecord> {
        let grant = caller.require(Action::ReadTasks)?;
        let task = self.find_task(id).await?;
        if grant == Grant::Own {
            self.check_task_is_own(caller, &task).await?;
        }
        Ok(task)
    }

    /// A task, with its attempts and events.
    pub async fn task(&self, caller: &Caller, id: TaskId) -> Result<TaskDetail> {
        let grant = caller.require(Action::ReadTasks)?;
        let task = self.find_task(id).await?;
        if grant == Grant::Own {
            self.check_task_is_own(caller, &task).await?;
        }
        let events = self
            .store()
            .events(&EventQuery {
                run_id: Some(self.run_id().to_string()),
                task: Some(task.id),
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        let attempts = self.store().attempts(task.id).await?;
        let transcript = self.store().transcript(task.id).await?;
        Ok(TaskDetail { task, attempts, events, transcript })
    }

    /// Cancels a task that has not ended (a running attempt is stopped); the task as it is
    /// now.
    pub async fn cancel_task(&self, caller: &Caller, id: TaskId, input: CancelInput) -> Result<TaskRecord> {
        caller.require(Action::ControlTasks)?;
        self.find_task(id).await?;
        let reason = input.reason.unwrap_or_else(|| format!("cancelled by {}", caller.subject));
        self.engine()?.cancel(id, reason).await?;
        self.find_task(id).await
    }

    /// Retries a dead or cancelled task from a fresh set of attempts; the task as it is now.
    pub async fn retry_task(&self, caller: &Caller, id: TaskId) -> Result<TaskRecord> {
        caller.require(Action::ControlTasks)?;
        self.find_task(id).await?;
        self.engine()?.retry(id).await?;
        self.find_task(id).await
    }
}
