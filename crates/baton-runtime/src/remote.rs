//! Remote agents (`runtime = "remote"`): workers that Baton does not start. They run anywhere,
//! and take their tasks over the HTTP API: claim (a long poll), heartbeat, progress, complete,
//! fail.
//!
//! The engine drives a remote agent like any other, through [`AgentRuntime`]: the scheduler
//! assigns it an attempt (within its `concurrency` and its capabilities, as for every agent),
//! and [`AgentRuntime::run`] puts the attempt in the agent's queue and waits. A worker that
//! claims it holds a lease on it for the agent's `heartbeat_timeout`; each heartbeat renews
//! it. When the lease runs out the attempt fails ("lease expired"), the task goes back to the
//! queue by the usual retry rules, and a completion that comes after that is refused with the
//! reason — completion stays exactly-once.
//!
//! The [`RemoteHub`] is the meeting point: the engine's runtimes put attempts in, the HTTP
//! handlers take them out and bring outcomes back. It knows nothing of HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use baton_core::config::AgentSpec;
use baton_core::model::{TaskId, TaskRecord};
use baton_core::{Outcome, Timestamp};

use crate::agent::{AgentContext, AgentEvent, AgentRuntime, Attempt};
use crate::clock::{Clock, deadline_after};
use crate::engine::RuntimeFactory;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no remote agent `{0}`; remote agents are declared with runtime = \"remote\"")]
    UnknownAgent(String),
    #[error("agent `{0}` is not running; start it first")]
    NotRunning(String),
    /// The attempt is not (or no longer) held by this agent; `reason` says what became of it.
    #[error("task {task} attempt {attempt} is not held by agent `{agent}`: {reason}")]
    NotHeld { agent: String, task: TaskId, attempt: u32, reason: String },
}

/// An attempt handed to a remote worker.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub task: TaskRecord,
    pub attempt: u32,
    pub run_id: String,
    /// When the lease runs out unless a heartbeat renews it (ms since the epoch).
    pub lease_expires_at: Timestamp,
}

/// A held attempt's lease, as a heartbeat renewed it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Lease {
    pub task: TaskId,
    pub attempt: u32,
    pub lease_expires_at: Timestamp,
}

/// An attempt waiting in an agent's queue, or held by one of its workers.
struct Pending {
    attempt: Attempt,
    outcome: oneshot::Sender<Outcome>,
    /// Set when a worker claimed it.
    deadline: Option<Instant>,
    /// Wakes the waiting [`AgentRuntime::run`] when the deadline moves.
    renewed: Arc<Notify>,
}

#[derive(Default)]
struct Queue {
    running: bool,
    lease: Duration,
    context: Option<AgentContext>,
    /// Attempts not claimed yet, oldest first.
    waiting: VecDeque<(TaskId, u32)>,
    attempts: HashMap<(TaskId, u32), Pending>,
    /// What became of attempts that are gone, for the answer to a late report (bounded).
    gone: HashMap<(TaskId, u32), String>,
    gone_order: VecDeque<(TaskId, u32)>,
}

const GONE_KEPT: usize = 10_000;

impl Queue {
    fn forget(&mut self, key: (TaskId, u32), reason: String) {
        self.attempts.remove(&key);
        self.waiting.retain(|waiting| *waiting != key);
        if self.gone.insert(key, reason).is_none() {
            self.gone_order.push_back(key);
        }
        while self.gone_order.len() > GONE_KEPT {
            if let Some(old) = self.gone_order.pop_front() {
                self.gone.remove(&old);
            }
        }
    }

    fn not_held(&self, agent: &str, task: TaskId, attempt: u32) -> Error {
        let reason = self.gone.get(&(task, attempt)).cloned().unwrap_or_else(|| {
            "this server never handed it out: a claim made before the server restarted is void; claim again".into()
        });
        Error::NotHeld { agent: agent.to_string(), task, attempt, reason }
    }
}

/// Where remote agents' attempts wait for workers. Cheap to clone.
#[derive(Clone)]
pub struct RemoteHub {
    shared: Arc<Shared>,
}

struct Shared {
    clock: Clock,
    /// Held only for short, non-async sections: queue bookkeeping. A `parking_lot` mutex: it
    /// is not poisoned, so a panic in one request (there should be none: nothing here
    /// computes on what a worker sends without checking) cannot fail every later claim.
    queues: Mutex<HashMap<String, Queue>>,
    /// Wakes claims waiting for work, per agent.
    arrivals: Mutex<HashMap<String, Arc<Notify>>>,
}

impl RemoteHub {
    pub fn new(clock: Clock) -> RemoteHub {
        RemoteHub {
            shared: Arc::new(Shared {
                clock,
                queues: Mutex::new(HashMap::new()),
                arrivals: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A runtime factory that makes remote agents from this hub and every other agent with
    /// `other`.
    pub fn runtimes(&self, other: RuntimeFactory) -> RuntimeFactory {
        let hub = self.clone();
        Arc::new(move |spec: &AgentSpec| {
            if let baton_core::config::AgentKind::Remote(_) = spec.kind {
                // Known from the start, so that its workers may poll before its phase begins.
                let mut queues = hub.shared.queues.lock();
                queues.entry(spec.name.clone()).or_default().lease = spec.heartbeat_timeout;
                drop(queues);
                Arc::new(RemoteAgent { hub: hub.clone(), spec: spec.clone() }) as Arc<dyn AgentRuntime>
            } else {
                other(spec)
            }
        })
    }

    fn arrivals(&self, agent: &str) -> Arc<Notify> {
        let mut arrivals = self.shared.arrivals.lock();
        Arc::clone(arrivals.entry(agent.to_string()).or_default())
    }

    fn with_queue<T>(&self, agent: &str, f: impl FnOnce(&mut Queue) -> Result<T, Error>) -> Result<T, Error> {
        let mut queues = self.shared.queues.lock();
        let queue = queues.get_mut(agent).ok_or_else(|| Error::UnknownAgent(agent.to_string()))?;
        f(queue)
    }

    /// Whether `agent` is a remote agent of the running plan.
    pub fn is_remote(&self, agent: &str) -> bool {
        self.shared.queues.lock().contains_key(agent)
    }

    /// Takes up to `max` attempts waiting for `agent`, waiting up to `wait` for the first one
    /// (a long poll). Empty when none came in time (a stopped agent has none), or when
    /// `cancel` fired.
    pub async fn claim(
        &self,
        agent: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Claim>, Error> {
        let arrivals = self.arrivals(agent);
        let give_up = deadline_after(wait);
        loop {
            // Registered before looking, so that an arrival between the look and the wait is
            // not missed.
            let arrived = arrivals.notified();
            let claims = self.take(agent, max)?;
            if !claims.is_empty() || Instant::now() >= give_up {
                return Ok(claims);
            }
            tokio::select! {
                () = arrived => {}
                () = tokio::time::sleep_until(give_up) => return Ok(Vec::new()),
                () = cancel.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    fn take(&self, agent: &str, max: usize) -> Result<Vec<Claim>, Error> {
        let now = self.shared.clock.now();
        let (claims, context) = self.with_queue(agent, |queue| {
            // A stopped agent (its workstream done, an operator's stop) has nothing to hand
            // out; its workers wait, as they would for work, until it starts again.
            if !queue.running {
                return Ok((Vec::new(), None));
            }
            let lease = queue.lease;
            let mut claims = Vec::new();
            while claims.len() < max {
                let Some(key) = queue.waiting.pop_front() else { break };
                let Some(pending) = queue.attempts.get_mut(&key) else { continue };
                pending.deadline = Some(deadline_after(lease));
                pending.renewed.notify_one();
                claims.push(Claim {
                    task: pending.attempt.task.clone(),
                    attempt: key.1,
                    run_id: pending.attempt.run_id.clone(),
                    lease_expires_at: now.plus(lease),
                });
            }
            Ok((claims, queue.context.clone()))
        })?;
        // Asking for work is a sign of life, even when there is none.
        if let Some(context) = context {
            let _ = context.events.send(AgentEvent::Activity { agent: agent.to_string() });
        }
        Ok(claims)
    }

    /// Renews the leases of the attempts `agent` holds (all of them when `only` is empty).
    /// Attempts named in `only` that it does not hold are an error, with what became of them.
    pub fn heartbeat(&self, agent: &str, only: &[(TaskId, u32)]) -> Result<Vec<Lease>, Error> {
        let now = self.shared.clock.now();
        let (leases, context) = self.with_queue(agent, |queue| {
            if let Some(&(task, attempt)) =
                only.iter().find(|key| queue.attempts.get(key).is_none_or(|pending| pending.deadline.is_none()))
            {
                return Err(queue.not_held(agent, task, attempt));
            }
            let lease = queue.lease;
            let mut leases = Vec::new();
            for (key, pending) in &mut queue.attempts {
                if pending.deadline.is_none() || (!only.is_empty() && !only.contains(key)) {
                    continue;
                }
                pending.deadline = Some(deadline_after(lease));
                pending.renewed.notify_one();
                leases.push(Lease { task: key.0, attempt: key.1, lease_expires_at: now.plus(lease) });
            }
            leases.sort_by_key(|lease| (lease.task, lease.attempt));
            Ok((leases, queue.context.clone()))
        })?;
        if let Some(context) = context {
            let _ = context.events.send(AgentEvent::Activity { agent: agent.to_string() });
        }
        Ok(leases)
    }

    /// Whether `agent` holds `attempt` of `task` now.
    pub fn holds(&self, agent: &str, task: TaskId, attempt: u32) -> Result<(), Error> {
        self.with_queue(agent, |queue| match queue.attempts.get(&(task, attempt)) {
            Some(pending) if pending.deadline.is_some() => Ok(()),
            _ => Err(queue.not_held(agent, task, attempt)),
        })
    }

    /// Hands in how an attempt `agent` holds ended. Refused when it does not hold it (any more):
    /// its lease expired, it was cancelled, or it never had it.
    pub fn finish(&self, agent: &str, task: TaskId, attempt: u32, outcome: Outcome) -> Result<(), Error> {
        let sender = self.with_queue(agent, |queue| {
            let key = (task, attempt);
            match queue.attempts.get(&key) {
                Some(pending) if pending.deadline.is_some() => {}
                _ => return Err(queue.not_held(agent, task, attempt)),
            }
            let Some(pending) = queue.attempts.remove(&key) else { return Err(queue.not_held(agent, task, attempt)) };
            queue.forget(key, "it was reported already".into());
            Ok(pending.outcome)
        })?;
        sender.send(outcome).map_err(|_| Error::NotHeld {
            agent: agent.to_string(),
            task,
            attempt,
            reason: "the engine gave it up".into(),
        })
    }

    /// Passes an agent's report (progress, usage, a message…) to the engine.
    pub fn report(&self, agent: &str, event: AgentEvent) -> Result<(), Error> {
        let context = self.with_queue(agent, |queue| {
            queue.context.clone().filter(|_| queue.running).ok_or_else(|| Error::NotRunning(agent.to_string()))
        })?;
        context.events.send(event).map_err(|_| Error::NotRunning(agent.to_string()))
    }

    /// Attempts waiting for a worker, per remote agent.
    pub fn waiting(&self) -> Vec<(String, usize, usize)> {
        let queues = self.shared.queues.lock();
        let mut out: Vec<(String, usize, usize)> = queues
            .iter()
            .map(|(name, queue)| {
                (name.clone(), queue.waiting.len(), queue.attempts.len().saturating_sub(queue.waiting.len()))
            })
            .collect();
        out.sort();
        out
    }
}

struct RemoteAgent {
    hub: RemoteHub,
    spec: AgentSpec,
}

#[async_trait]
impl AgentRuntime for RemoteAgent {
    async fn start(&self, context: AgentContext) -> Result<(), crate::agent::AgentError> {
        let mut queues = self.hub.shared.queues.lock();
        let queue = queues.entry(self.spec.name.clone()).or_default();
        queue.running = true;
        queue.lease = self.spec.heartbeat_timeout;
        queue.context = Some(context);
        Ok(())
    }

    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome {
        let key = (attempt.task.id, attempt.task.attempt);
        let agent = self.spec.name.clone();
        let (outcome_tx, mut outcome_rx) = oneshot::channel();
        let renewed = Arc::new(Notify::new());
        let queued = self.hub.with_queue(&agent, |queue| {
            if !queue.running {
                return Err(Error::NotRunning(agent.clone()));
            }
            queue.waiting.push_back(key);
            queue
                .attempts
                .insert(key, Pending { attempt, outcome: outcome_tx, deadline: None, renewed: Arc::clone(&renewed) });
            Ok(())
        });
        if let Err(error) = queued {
            return Outcome::Failed { reason: error.to_string() };
        }
        self.hub.arrivals(&agent).notify_waiters();
        loop {
            let deadline = self
                .hub
                .with_queue(&agent, |queue| Ok(queue.attempts.get(&key).and_then(|pending| pending.deadline)))
                .ok()
                .flatten();
            let renewal = renewed.notified();
            tokio::select! {
                outcome = &mut outcome_rx => {
                    return outcome.unwrap_or(Outcome::Failed { reason: format!("agent `{agent}` went away") });
                }
                () = cancel.cancelled() => {
                    let _ = self.hub.with_queue(&agent, |queue| {
                        queue.forget(key, "it was cancelled or taken back by the engine".into());
                        Ok(())
                    });
                    return Outcome::Failed { reason: "cancelled".into() };
                }
                () = renewal => {}
                () = sleep_until_opt(deadline) => {
                    let still_due = self
                        .hub
                        .with_queue(&agent, |queue| {
                            Ok(queue.attempts.get(&key).and_then(|pending| pending.deadline).is_some_and(|at| at <= Instant::now()))
                        })
                        .unwrap_or(false);
                    if still_due {
                        let lease = baton_core::time::format_duration(self.spec.heartbeat_timeout);
                        let reason = format!("lease expired: no heartbeat from agent `{agent}` for {lease}");
                        let _ = self.hub.with_queue(&agent, |queue| {
                            queue.forget(key, format!("{reason}; the task was given back to the queue"));
                            Ok(())
                        });
                        return Outcome::Failed { reason };
                    }
                }
            }
        }
    }

    async fn stop(&self) {
        let mut queues = self.hub.shared.queues.lock();
        if let Some(queue) = queues.get_mut(&self.spec.name) {
            queue.running = false;
            let keys: Vec<(TaskId, u32)> = queue.attempts.keys().copied().collect();
            for key in keys {
                queue.forget(key, format!("agent `{}` was stopped", self.spec.name));
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
[orchestration]
name = "remote"

[[agents]]
name = "far"
runtime = "remote"

[[agents]]
name = "near"
runtime = "remote"
"#;

    fn task(id: i64) -> TaskRecord {
        TaskRecord {
            parent: None,
            id: TaskId(id),
            run_id: "run-1".into(),
            key: None,
            workstream: None,
            title: format!("task {id}"),
            description: String::new(),
            input: serde_json::Value::Null,
            requires: Vec::new(),
            agent: None,
            depends_on: Vec::new(),
            priority: baton_core::model::Priority::Medium,
            max_attempts: 1,
            timeout_ms: None,
            resources: Vec::new(),
            estimated_tokens: None,
            state: baton_core::TaskState::Running,
            attempt: 1,
            assigned_agent: None,
            lease_owner: None,
            lease_expires_at: None,
            not_before: None,
            result: None,
            error: None,
            created_at: Timestamp::ZERO,
            updated_at: Timestamp::ZERO,
            finished_at: None,
        }
    }

    /// An agent whose lease no clock can add (`heartbeat_timeout` far beyond what `check`
    /// allows, as a plan built in code could have it): its first claim used to panic while
    /// holding the hub's lock, and every remote agent's claims failed from then on.
    #[tokio::test]
    async fn a_lease_too_long_for_the_clock_neither_panics_nor_breaks_other_agents_claims() {
        let plan = baton_core::config::load("baton.toml", PLAN, &Default::default()).unwrap();
        let mut far = plan.agent("far").unwrap().clone();
        far.heartbeat_timeout = Duration::MAX;
        let near = plan.agent("near").unwrap().clone();
        let hub = RemoteHub::new(Clock::system());
        let runtimes = hub.runtimes(Arc::new(|_: &AgentSpec| -> Arc<dyn AgentRuntime> { unreachable!() }));
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let (requests, _) = tokio::sync::mpsc::unbounded_channel();
        let context = AgentContext { run_id: "run-1".into(), events, requests };
        let mut running = Vec::new();
        for (idx, spec) in [far, near].into_iter().enumerate() {
            let runtime = runtimes(&spec);
            runtime.start(context.clone()).await.unwrap();
            let attempt = Attempt { run_id: "run-1".into(), agent: spec.name.clone(), task: task(idx as i64 + 1) };
            running.push(tokio::spawn(async move { runtime.run(attempt, CancellationToken::new()).await }));
        }
        let cancel = CancellationToken::new();
        let claimed = hub.claim("far", 1, Duration::from_secs(10), &cancel).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].lease_expires_at, Timestamp(i64::MAX), "the lease saturates");
        assert_eq!(hub.heartbeat("far", &[]).unwrap()[0].lease_expires_at, Timestamp(i64::MAX));
        let near_claimed = hub.claim("near", 1, Duration::from_secs(10), &cancel).await.unwrap();
        assert_eq!(near_claimed[0].task.id, TaskId(2), "the other agent's claims still work");
        for (agent, id) in [("far", 1), ("near", 2)] {
            hub.finish(agent, TaskId(id), 1, Outcome::Succeeded { result: serde_json::Value::Null }).unwrap();
        }
        for attempt in running {
            assert!(matches!(attempt.await.unwrap(), Outcome::Succeeded { .. }));
        }
    }
}
