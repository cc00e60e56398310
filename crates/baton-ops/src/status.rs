//! The run as a whole: health, status and the plan with its progress.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::Timestamp;
use baton_core::model::{AgentState, Priority, TaskState};
use baton_store::TaskFilter;

use crate::{Action, Caller, Ops, Result};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `healthy` while the engine runs and the store answers; `degraded` otherwise.
    pub status: String,
    pub version: String,
    /// `running`, `succeeded` or `failed`.
    pub orchestration_status: String,
    pub agent_count: u64,
    pub uptime_seconds: u64,
    /// What is broken, one line per subsystem (`store: …`, `engine: …`); empty when nothing
    /// is. The answer is `503` when there is any.
    #[serde(default)]
    pub problems: Vec<String>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The run's id.
    pub session_id: String,
    /// The workstreams of the current phase, by name.
    pub current_phase: String,
    /// 1-based; 0 before the first phase starts.
    pub phase: u32,
    pub n_phases: u32,
    /// Finished tasks over all tasks, 0 to 1.
    pub progress: f64,
    /// Whether the run has ended.
    pub completed: bool,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// The plan's name.
    pub name: String,
    /// The workstreams of the current phase.
    pub phase_workstreams: Vec<String>,
    pub n_tasks: u64,
    pub n_finished: u64,
    /// When the run started, and ended (ms since the epoch).
    #[schema(value_type = i64)]
    pub started_at: Timestamp,
    #[schema(value_type = Option<i64>)]
    pub ended_at: Option<Timestamp>,
    /// Who executes the run (its claim's owner) while the claim holds; absent when nothing
    /// does.
    pub executed_by: Option<String>,
    /// The agents started in this run (every agent past `waiting`), by name, in the plan's
    /// order; they stay in the list when they stop.
    pub spawned_agents: Vec<String>,
    /// Agents started and not stopped or failed, now; 0 when nothing executes the run.
    pub running_agents: u64,
    /// Agents' names by state, as `GET /agents` shows them (`offline` when nothing executes
    /// the run).
    pub agents: BTreeMap<String, Vec<String>>,
    /// Tasks per state.
    pub tasks: BTreeMap<String, u64>,
    /// Tasks per workstream (`(none)` for those without one) and state, with the
    /// workstream's phase.
    pub workstreams: BTreeMap<String, WorkstreamTasks>,
    /// The sequence number of the store's newest event when this status was read (0 when
    /// there is none): a client that reads the run, then follows `/events` with this as
    /// `Last-Event-ID`, misses nothing that happened after its reads.
    #[serde(default)]
    pub last_event_seq: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkstreamTasks {
    /// 1-based; tasks without a workstream are in phase 1.
    pub phase: u32,
    /// Tasks per state; states without tasks are left out.
    pub tasks: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    pub name: String,
    pub run_id: String,
    pub phase: u32,
    /// Workstream names per phase, in order.
    pub phases: Vec<Vec<String>>,
    pub workstreams: Vec<WorkstreamView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkstreamView {
    pub name: String,
    pub description: String,
    pub priority: Priority,
    pub depends_on: Vec<String>,
    pub phase: u32,
    pub n_tasks: u64,
    pub n_finished: u64,
    pub n_running: u64,
    /// Dead or cancelled.
    pub n_unsuccessful: u64,
    pub progress: f64,
}

impl Ops {
    /// Whether the engine and the store are well, naming what is broken. Open to every
    /// caller (it is what a load balancer asks).
    pub async fn health(&self) -> Health {
        let mut problems = Vec::new();
        let run = self.store().run(self.run_id()).await;
        let agent_count = match self.store().agents(self.run_id()).await {
            Ok(agents) => agents.len() as u64,
            Err(error) => {
                problems.push(format!("store: {error}"));
                0
            }
        };
        let engine_stopped = !self.is_running();
        let orchestration = match &run {
            Ok(Some(run)) => {
                if engine_stopped && !run.state.is_finished() {
                    problems.push(
                        "engine: stopped while the run is unfinished; nothing is claimed or recorded until `baton run` or `baton serve` starts again"
                            .to_string(),
                    );
                }
                run.state.as_str().to_string()
            }
            Ok(None) => {
                problems.push(format!("store: run {} is not in the store", self.run_id()));
                "unknown".to_string()
            }
            Err(error) => {
                problems.push(format!("store: {error}"));
                "store unavailable".to_string()
            }
        };
        problems.dedup();
        let healthy = problems.is_empty() && !engine_stopped;
        Health {
            status: if healthy { "healthy" } else { "degraded" }.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            orchestration_status: orchestration,
            agent_count,
            uptime_seconds: self.uptime().as_secs(),
            problems,
        }
    }

    /// The run: its phase, progress and outcome.
    pub async fn status(&self, caller: &Caller) -> Result<Status> {
        caller.require(Action::ReadStatus)?;
        // Read first: what the rest of this answer shows is at least as new as this event.
        let last_event_seq = self.store().last_event_seq().await?;
        let run = self.run().await?;
        let counts = self.task_counts().await?;
        let agents = self.agent_records(&run).await?;
        let plan = self.plan();
        let n_phases = plan.phases.len() as u32;
        // After the last phase the run stays in it.
        let phase = run.phase.min(n_phases);
        let phase_workstreams = match phase {
            0 => Vec::new(),
            phase => plan.phases.get(phase as usize - 1).cloned().unwrap_or_default(),
        };
        let tasks: BTreeMap<String, u64> = counts.iter().map(|(state, n)| (state.as_str().to_string(), *n)).collect();
        let n_tasks: u64 = counts.iter().map(|(_, n)| n).sum();
        let n_finished: u64 = counts.iter().filter(|(state, _)| state.is_terminal()).map(|(_, n)| n).sum();
        // Before the first count (an old store) the run's record has them.
        let (n_tasks, n_finished) = if n_tasks == 0 { (run.n_tasks, run.n_finished) } else { (n_tasks, n_finished) };
        let progress = if n_tasks == 0 { run.progress() } else { n_finished as f64 / n_tasks as f64 };
        let mut workstreams: BTreeMap<String, WorkstreamTasks> = BTreeMap::new();
        for count in self.store().task_counts_by_workstream(self.run_id()).await? {
            if count.n == 0 {
                continue;
            }
            let phase = plan.phase_of(count.workstream.as_deref());
            let name = count.workstream.unwrap_or_else(|| "(none)".to_string());
            let entry = workstreams.entry(name).or_insert_with(|| WorkstreamTasks { phase, tasks: BTreeMap::new() });
            *entry.tasks.entry(count.state.as_str().to_string()).or_default() += count.n;
        }
        let mut by_state: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for agent in &agents {
            by_state.entry(agent.state.to_string()).or_default().push(agent.name.clone());
        }
        Ok(Status {
            session_id: run.id.clone(),
            current_phase: phase_workstreams.join(", "),
            phase,
            n_phases,
            progress,
            completed: run.state.is_finished(),
            state: run.state.as_str().into(),
            error: run.error.clone(),
            name: run.name.clone(),
            phase_workstreams,
            n_tasks,
            n_finished,
            started_at: run.started_at,
            ended_at: run.ended_at,
            executed_by: self.executed(&run).then(|| run.owner.clone()).flatten(),
            spawned_agents: agents
                .iter()
                .filter(|agent| agent.state != AgentState::Waiting)
                .map(|agent| agent.name.clone())
                .collect(),
            running_agents: agents.iter().filter(|agent| agent.state.is_started()).count() as u64,
            agents: by_state,
            tasks,
            workstreams,
            last_event_seq,
        })
    }

    /// The run's plan: workstreams, phases and progress.
    pub async fn plan_view(&self, caller: &Caller) -> Result<PlanView> {
        caller.require(Action::ReadStatus)?;
        let plan = self.plan();
        let run = self.store().run(self.run_id()).await?;
        let tasks = self.store().tasks(self.run_id(), &TaskFilter::default()).await?;
        let workstreams = plan
            .workstreams
            .iter()
            .map(|ws| {
                let own = tasks.iter().filter(|task| task.workstream.as_deref() == Some(ws.name.as_str()));
                let (mut n_tasks, mut n_finished, mut n_running, mut n_unsuccessful) = (0, 0, 0, 0);
                for task in own {
                    n_tasks += 1;
                    n_finished += u64::from(task.state.is_terminal());
                    n_running += u64::from(task.state == TaskState::Running);
                    n_unsuccessful += u64::from(matches!(task.state, TaskState::Dead | TaskState::Cancelled));
                }
                WorkstreamView {
                    name: ws.name.clone(),
                    description: ws.description.clone(),
                    priority: ws.priority,
                    depends_on: ws.depends_on.clone(),
                    phase: plan.phase_of(Some(&ws.name)),
                    n_tasks,
                    n_finished,
                    n_running,
                    n_unsuccessful,
                    progress: if n_tasks == 0 { 0.0 } else { n_finished as f64 / n_tasks as f64 },
                }
            })
            .collect();
        Ok(PlanView {
            name: plan.name.clone(),
            run_id: self.run_id().to_string(),
            phase: run.map_or(0, |run| run.phase),
            phases: plan.phases.clone(),
            workstreams,
        })
    }
}
