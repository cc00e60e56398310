//! Resources: what running tasks and agents' explicit leases hold, and the tasks waiting for
//! a resource that overlaps one held.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use baton_core::model::{TaskRecord, TaskState};
use baton_core::{EventKind, Timestamp};
use baton_store::{EventQuery, TaskFilter};

use crate::{Action, Caller, Grant, Ops, Result};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Conflicts {
    pub held: Vec<Held>,
    pub waiting: Vec<Waiting>,
}

/// A resource held: by a running task (and its agent), or leased by an agent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Held {
    pub resource: String,
    /// The holding task's key (its id without one); absent for an agent's lease.
    pub task: Option<String>,
    pub agent: Option<String>,
    /// Until when an agent's lease holds (ms since the epoch).
    #[schema(value_type = Option<i64>)]
    pub until: Option<Timestamp>,
}

/// A task that wants a resource overlapping one a running task holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Waiting {
    pub task: String,
    pub state: TaskState,
    /// The resource it wants, the one held that overlaps it, and the holding task.
    pub resource: String,
    pub held: String,
    pub holder: String,
}

fn name(task: &TaskRecord) -> String {
    task.key.clone().unwrap_or_else(|| task.id.to_string())
}

impl Ops {
    /// The resources held and the tasks waiting for them. An agent token sees its own
    /// tasks and leases.
    pub async fn conflicts(&self, caller: &Caller) -> Result<Conflicts> {
        let own = match caller.require(Action::ReadTasks)? {
            Grant::Own => Some(caller.own_agent()?.to_string()),
            _ => None,
        };
        let run = self.run().await?;
        let running = TaskFilter { state: Some(TaskState::Running), ..TaskFilter::default() };
        let holders: Vec<TaskRecord> = self
            .store()
            .tasks(self.run_id(), &running)
            .await?
            .into_iter()
            .filter(|task| !task.resources.is_empty())
            .collect();
        let is_own = |agent: Option<&str>| own.is_none() || agent == own.as_deref();
        let mut held = Vec::new();
        for task in holders.iter().filter(|task| is_own(task.assigned_agent.as_deref())) {
            for resource in &task.resources {
                held.push(Held {
                    resource: resource.clone(),
                    task: Some(name(task)),
                    agent: task.assigned_agent.clone(),
                    until: None,
                });
            }
        }
        // Agents' explicit leases, from their events: they live as long as the process
        // executing the run, so those taken before its latest start or resume are gone. Only
        // the events that say so are read.
        if self.executed(&run) {
            let kinds = ["RunStarted", "RunResumed", "ResourceLeased", "ResourceReleased"];
            let query = EventQuery {
                run_id: Some(run.id.clone()),
                kinds: kinds.iter().map(|kind| kind.to_string()).collect(),
                ..Default::default()
            };
            let events = self.store().events(&query).await?;
            let mut leases: BTreeMap<String, (String, Timestamp)> = BTreeMap::new();
            for event in events {
                match event.kind {
                    EventKind::RunStarted { .. } | EventKind::RunResumed { .. } => leases.clear(),
                    EventKind::ResourceLeased { agent, resource, until } => {
                        leases.insert(resource, (agent, until));
                    }
                    EventKind::ResourceReleased { resource, .. } => {
                        leases.remove(&resource);
                    }
                    _ => {}
                }
            }
            for (resource, (agent, until)) in leases.into_iter().filter(|(_, (agent, _))| is_own(Some(agent))) {
                held.push(Held { resource, task: None, agent: Some(agent), until: Some(until) });
            }
        }
        let mut unstarted = Vec::new();
        for state in [TaskState::Ready, TaskState::Pending] {
            let filter = TaskFilter { state: Some(state), agent: own.clone(), ..TaskFilter::default() };
            unstarted.extend(self.store().tasks(self.run_id(), &filter).await?);
        }
        unstarted.sort_by_key(|task| task.id);
        let mut waiting = Vec::new();
        for task in &unstarted {
            for resource in &task.resources {
                for holder in &holders {
                    if let Some(other) =
                        holder.resources.iter().find(|other| baton_core::resources::overlaps(other, resource))
                    {
                        waiting.push(Waiting {
                            task: name(task),
                            state: task.state,
                            resource: resource.clone(),
                            held: other.clone(),
                            holder: name(holder),
                        });
                    }
                }
            }
        }
        Ok(Conflicts { held, waiting })
    }
}
