//! The one trait every kind of agent runtime implements. The engine does not know which kind
//! it is driving.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::model::{TaskId, TaskRecord};

/// One attempt of a task, handed to an agent.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub run_id: String,
    pub agent: String,
    pub task: TaskRecord,
}

impl Attempt {
    pub fn number(&self) -> u32 {
        self.task.attempt
    }
}

/// What a running agent tells the engine besides its attempts' outcomes.
#[derive(Debug)]
pub enum AgentEvent {
    /// The agent's process ended on its own (not because it was stopped); `clean` when it
    /// exited with status 0.
    Exited {
        agent: String,
        reason: String,
        clean: bool,
    },
    /// Something was heard from the agent: it is alive (and, if it was stalled or waiting for
    /// input, back at work).
    Activity {
        agent: String,
    },
    Progress {
        agent: String,
        task: TaskId,
        fraction: Option<f64>,
        message: Option<String>,
    },
    /// Sub-tasks the agent asks for; the reply carries their ids or why they were refused.
    /// `parent` is the task the agent was working on, whose workstream sub-tasks join by default.
    /// The engine checks them against the plan ([`baton_core::task::new_task`]).
    CreateTasks {
        agent: String,
        parent: Option<TaskId>,
        tasks: Vec<baton_core::task::TaskInput>,
        reply: oneshot::Sender<Result<Vec<TaskId>, String>>,
    },
    Usage {
        agent: String,
        task: Option<TaskId>,
        usage: serde_json::Value,
    },
    /// A message the agent sends (`message/send`); the reply carries its id, or why it was
    /// refused (an unknown recipient, a full inbox).
    SendMessage {
        agent: String,
        message: baton_core::messages::NewMessage,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The agent asks for a lease on a resource (`resource/acquire`); the reply is when it
    /// expires, or who holds the resource.
    AcquireResource {
        agent: String,
        resource: String,
        ttl: std::time::Duration,
        reply: oneshot::Sender<Result<baton_core::Timestamp, String>>,
    },
    /// The agent gives a lease back (`resource/release`).
    ReleaseResource {
        agent: String,
        resource: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A per-task agent was handed these messages with a task: the engine acknowledges them
    /// (with its clock, as the run's writer) and then answers, so that the agent's next task
    /// does not get them again.
    MessagesTaken {
        agent: String,
        deliveries: Vec<baton_core::messages::Delivery>,
        reply: oneshot::Sender<()>,
    },
    /// The agent follows a topic from now on (`topic/subscribe`).
    Subscribe {
        agent: String,
        topic: String,
    },
    /// A terminal agent printed nothing for `silent_for` while working on a task.
    Stalled {
        agent: String,
        silent_for: std::time::Duration,
    },
    /// A terminal agent's screen ends in a question; `prompt` is the line that asks it.
    WaitingInput {
        agent: String,
        prompt: String,
    },
}

/// Where an agent sends its [`AgentEvent`]s, and what it needs to know of the run.
#[derive(Debug, Clone)]
pub struct AgentContext {
    pub run_id: String,
    pub events: mpsc::UnboundedSender<AgentEvent>,
}

#[async_trait]
pub trait AgentRuntime: Send + Sync + 'static {
    /// Makes the agent ready to take tasks. For a per-task process agent, checks that its
    /// command can be started; for long-running agents, starts them (stopping what is left of
    /// a previous start first). An error says why not.
    async fn start(&self, context: AgentContext) -> Result<(), String>;

    /// Runs one attempt and returns how it ended. When `cancel` fires the attempt is stopped
    /// (its processes killed) and the returned outcome is ignored.
    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome;

    /// Stops the agent; attempts still running are killed.
    async fn stop(&self);

    /// Hands a message to the agent; `Ok` when it acknowledged it. Only long-running agents
    /// take messages this way: a per-task agent finds its messages in its next task's input.
    async fn deliver(&self, delivery: &baton_core::messages::Delivery) -> Result<(), String> {
        let _ = delivery;
        Err("this agent takes messages with its tasks".into())
    }

    /// Hands several messages for this agent to it at once; the result for each delivery, in
    /// order. By default one [`AgentRuntime::deliver`] per message, all at once; a runtime that
    /// can acknowledge many messages in one exchange (a worker that declared
    /// `message/deliver_batch`) does better.
    async fn deliver_batch(&self, deliveries: &[baton_core::messages::Delivery]) -> Vec<Result<(), String>> {
        futures::future::join_all(deliveries.iter().map(|delivery| self.deliver(delivery))).await
    }

    /// Whether [`AgentRuntime::deliver`] works for this agent.
    fn takes_messages(&self) -> bool {
        false
    }
}
