//! Resource leases that agents take explicitly (the protocol's `resource/acquire`), so that a
//! long-running agent can hold `file:Cargo.toml` while it edits it, beyond any one task.
//!
//! A lease lasts until its time-to-live runs out (taking it again renews it), until the agent
//! releases it, or until the agent goes away. While it lasts, no task whose resources overlap
//! it runs (the conflict policy applies, as for resources held by running tasks), and no other
//! agent gets an overlapping lease.

use std::time::Duration;

use super::{Effects, Scheduler, Write};
use crate::event::EventKind;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AgentLease {
    pub agent: String,
    pub until: Timestamp,
}

impl Scheduler {
    /// Grants `agent` a lease on `resource` until `now + ttl`, or says who holds it.
    pub fn acquire_resource(
        &mut self,
        agent: &str,
        resource: &str,
        ttl: Duration,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<Timestamp, String> {
        let Some(&idx) = self.agent_index.get(agent) else {
            return Err(format!("no agent `{agent}` in this run"));
        };
        if !self.agents[idx].state.is_started() {
            return Err(format!("agent `{agent}` is {}", self.agents[idx].state));
        }
        // The agent's own running tasks do not stand in its way.
        let own_tasks: Vec<_> = self
            .held
            .iter()
            .filter(|(_, task)| self.tasks.get(task).and_then(|t| t.assigned_agent.as_deref()) == Some(agent))
            .map(|(key, _)| key.clone())
            .collect();
        let conflict = self
            .resource_conflict(&[resource.to_string()], Some(agent))
            .filter(|(_, held, holder)| !(matches!(holder, super::Holder::Task(_)) && own_tasks.contains(held)));
        if let Some((_, held, holder)) = conflict {
            return Err(format!("`{resource}` overlaps `{held}` held by {}", self.holder_name(&holder)));
        }
        let until = now.plus(ttl);
        self.leases.insert(resource.to_string(), AgentLease { agent: agent.to_string(), until });
        fx.writes.push(Write::Event(EventKind::ResourceLeased {
            agent: agent.to_string(),
            resource: resource.to_string(),
            until,
        }));
        Ok(until)
    }

    /// Ends `agent`'s lease on `resource`. Releasing what it does not hold is an error.
    pub fn release_resource(&mut self, agent: &str, resource: &str, fx: &mut Effects) -> Result<(), String> {
        match self.leases.get(resource) {
            Some(lease) if lease.agent == agent => {
                self.leases.remove(resource);
                fx.writes.push(Write::Event(EventKind::ResourceReleased {
                    agent: agent.to_string(),
                    resource: resource.to_string(),
                    reason: "released".into(),
                }));
                Ok(())
            }
            Some(lease) => Err(format!("`{resource}` is leased by {}, not {agent}", lease.agent)),
            None => Err(format!("{agent} holds no lease on `{resource}`")),
        }
    }

    /// Every lease of an agent that went away.
    pub(super) fn release_leases_of(&mut self, agent: &str, reason: &str, fx: &mut Effects) {
        let mut mine: Vec<String> =
            self.leases.iter().filter(|(_, lease)| lease.agent == agent).map(|(key, _)| key.clone()).collect();
        mine.sort();
        for resource in mine {
            self.leases.remove(&resource);
            fx.writes.push(Write::Event(EventKind::ResourceReleased {
                agent: agent.to_string(),
                resource,
                reason: reason.to_string(),
            }));
        }
    }

    pub(super) fn expire_leases(&mut self, now: Timestamp, fx: &mut Effects) {
        let mut stale: Vec<(String, String)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.until <= now)
            .map(|(key, lease)| (key.clone(), lease.agent.clone()))
            .collect();
        stale.sort();
        for (resource, agent) in stale {
            self.leases.remove(&resource);
            fx.writes.push(Write::Event(EventKind::ResourceReleased { agent, resource, reason: "expired".into() }));
        }
    }

    pub(super) fn next_lease_expiry(&self) -> Option<Timestamp> {
        self.leases.values().map(|lease| lease.until).min()
    }
}
