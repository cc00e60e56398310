//! The one trait every kind of agent runtime implements. The engine does not know which kind
//! it is driving.
//!
//! Between a running agent and the engine there are two channels in [`AgentContext`]:
//! notifications ([`AgentEvent`]: it exited, it is alive, progress, usage), and requests
//! ([`AgentRequest`]: create tasks, send a message, lease a resource, reserve budget), each
//! answered with a typed result or a [`RequestError`] whose kind says what the agent may do
//! about it. What the trait's methods return is an [`AgentError`] whose kind tells the
//! engine whether to retry (a transient failure) or give up on the agent now (a permanent one).

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::model::{TaskId, TaskRecord};
pub use baton_core::sched::FailureKind;

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

/// What a running agent tells the engine besides its attempts' outcomes: notifications, which
/// need no answer. What an agent asks (and waits for) is an [`AgentRequest`].
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
    Usage {
        agent: String,
        task: Option<TaskId>,
        usage: serde_json::Value,
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

/// Where the answer to an [`AgentRequest`] goes.
pub type Reply<T> = oneshot::Sender<Result<T, RequestError>>;

/// What an agent asks of the engine, with where the typed answer goes. The engine answers once
/// what the request changed is durable.
#[derive(Debug)]
pub enum AgentRequest {
    /// Sub-tasks; the answer is their ids. `parent` is the task the agent was working on, whose
    /// workstream sub-tasks join by default. The engine checks them against the plan
    /// ([`baton_core::task::new_task`]).
    CreateTasks {
        agent: String,
        parent: Option<TaskId>,
        tasks: Vec<baton_core::task::TaskInput>,
        reply: Reply<Vec<TaskId>>,
    },
    /// A message the agent sends (`message/send`); the answer is its id. Refused for an
    /// unknown recipient or a full inbox.
    SendMessage { agent: String, message: baton_core::messages::NewMessage, reply: Reply<String> },
    /// A lease on a resource (`resource/acquire`); the answer is when it expires. Refused
    /// (saying who) when another holds it.
    AcquireResource { agent: String, resource: String, ttl: std::time::Duration, reply: Reply<baton_core::Timestamp> },
    /// The agent gives a lease back (`resource/release`).
    ReleaseResource { agent: String, resource: String, reply: Reply<()> },
    /// May the agent spend `tokens` now (for `task`)? Asked before each model call by an
    /// agent that calls one: granted, and held against the budgets until the agent reports
    /// what it used, or refused with the budget that does not allow it.
    ReserveBudget { agent: String, task: Option<TaskId>, tokens: u64, reply: Reply<baton_core::sched::Reservation> },
    /// A task of the run as it is now (an LLM agent's `baton/get_task`): from the scheduler
    /// while unfinished, from the store once finished. Refused for a task of another run.
    GetTask { agent: String, task: TaskId, reply: Reply<TaskRecord> },
    /// The budget refused the first model call of the agent's attempt at `task`, before the
    /// attempt did anything: the attempt is to end at once, and the engine then puts the task
    /// back uncounted, to wait until `tokens` fit (as a task whose `estimated_tokens` do not
    /// fit waits). Refused when they never can; then the attempt fails.
    WaitForBudget { agent: String, task: TaskId, tokens: u64, reply: Reply<()> },
    /// Entries of an attempt's transcript (an LLM agent's conversation), stored in order.
    Transcript {
        agent: String,
        task: TaskId,
        attempt: u32,
        entries: Vec<baton_core::transcript::Entry>,
        reply: Reply<()>,
    },
}

impl AgentRequest {
    /// The agent asking.
    pub fn agent(&self) -> &str {
        match self {
            AgentRequest::CreateTasks { agent, .. }
            | AgentRequest::SendMessage { agent, .. }
            | AgentRequest::AcquireResource { agent, .. }
            | AgentRequest::ReleaseResource { agent, .. }
            | AgentRequest::ReserveBudget { agent, .. }
            | AgentRequest::GetTask { agent, .. }
            | AgentRequest::WaitForBudget { agent, .. }
            | AgentRequest::Transcript { agent, .. } => agent,
        }
    }
}

/// Why the engine did not do what an agent asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub kind: RequestErrorKind,
    pub message: String,
}

/// What kind of refusal a [`RequestError`] is: what the agent may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestErrorKind {
    /// The request is well formed but the run does not allow it now (a resource held by
    /// another, a budget spent, an unknown recipient): asking again later may work.
    Refused,
    /// The request is wrong (a bad task, an unknown workstream): asking again will not help.
    Invalid,
    /// The recipient's inbox is full: asking again once it has taken some messages may work.
    Full,
    /// The engine could not answer (it stopped, the store failed).
    Unavailable,
}

impl RequestErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestErrorKind::Refused => "refused",
            RequestErrorKind::Invalid => "invalid",
            RequestErrorKind::Full => "full",
            RequestErrorKind::Unavailable => "unavailable",
        }
    }
}

impl RequestError {
    pub fn refused(message: impl Into<String>) -> RequestError {
        RequestError { kind: RequestErrorKind::Refused, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> RequestError {
        RequestError { kind: RequestErrorKind::Invalid, message: message.into() }
    }

    pub fn full(message: impl Into<String>) -> RequestError {
        RequestError { kind: RequestErrorKind::Full, message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> RequestError {
        RequestError { kind: RequestErrorKind::Unavailable, message: message.into() }
    }
}

/// Why an agent could not be started, or a message not delivered to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: FailureKind,
    pub message: String,
}

impl AgentError {
    /// A failure that may go away: the agent is restarted with backoff (within its crash-loop
    /// cap), the message delivered again.
    pub fn transient(message: impl Into<String>) -> AgentError {
        AgentError { kind: FailureKind::Transient, message: message.into() }
    }

    /// A failure that the same attempt would meet again (a missing command, a working
    /// directory that does not exist, credentials refused): the agent is failed at once.
    pub fn permanent(message: impl Into<String>) -> AgentError {
        AgentError { kind: FailureKind::Permanent, message: message.into() }
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }
}

/// Where an agent sends its [`AgentEvent`]s and its [`AgentRequest`]s, and what it needs to
/// know of the run.
#[derive(Debug, Clone)]
pub struct AgentContext {
    pub run_id: String,
    pub events: mpsc::UnboundedSender<AgentEvent>,
    pub requests: mpsc::UnboundedSender<AgentRequest>,
}

impl AgentContext {
    /// Sends the request `make` builds around its reply channel and waits for the answer;
    /// [`RequestErrorKind::Unavailable`] when the engine has stopped.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> AgentRequest) -> Result<T, RequestError> {
        ask(&self.requests, make).await
    }
}

/// [`AgentContext::ask`] on any request channel (the engine handle's, a remote agent's).
pub async fn ask<T>(
    requests: &mpsc::UnboundedSender<AgentRequest>,
    make: impl FnOnce(Reply<T>) -> AgentRequest,
) -> Result<T, RequestError> {
    let (reply, answer) = oneshot::channel();
    requests.send(make(reply)).map_err(|_| RequestError::unavailable("the engine has stopped"))?;
    answer.await.map_err(|_| RequestError::unavailable("the engine stopped before it answered"))?
}

#[async_trait]
pub trait AgentRuntime: Send + Sync + 'static {
    /// Makes the agent ready to take tasks. For a per-task process agent, checks that its
    /// command can be started; for long-running agents, starts them (stopping what is left of
    /// a previous start first). An error says why not, and whether trying again may help.
    async fn start(&self, context: AgentContext) -> Result<(), AgentError>;

    /// The capabilities the agent learned when it started, for an agent whose config sets
    /// none (an A2A agent's card's skills): the engine routes by them from then on.
    fn learned_capabilities(&self) -> Option<Vec<String>> {
        None
    }

    /// Runs one attempt and returns how it ended. When `cancel` fires the attempt is stopped
    /// (its processes killed) and the returned outcome is ignored.
    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome;

    /// Stops the agent; attempts still running are killed.
    async fn stop(&self);

    /// Hands a message to the agent; `Ok` when it acknowledged it. Only long-running agents
    /// take messages this way: a per-task agent finds its messages in its next task's input.
    async fn deliver(&self, delivery: &baton_core::messages::Delivery) -> Result<(), AgentError> {
        let _ = delivery;
        Err(AgentError::permanent("this agent takes messages with its tasks"))
    }

    /// Hands several messages for this agent to it at once; the result for each delivery, in
    /// order. By default one [`AgentRuntime::deliver`] per message, all at once; a runtime that
    /// can acknowledge many messages in one exchange (a worker that declared
    /// `message/deliver_batch`) does better.
    async fn deliver_batch(&self, deliveries: &[baton_core::messages::Delivery]) -> Vec<Result<(), AgentError>> {
        futures::future::join_all(deliveries.iter().map(|delivery| self.deliver(delivery))).await
    }

    /// Whether [`AgentRuntime::deliver`] works for this agent.
    fn takes_messages(&self) -> bool {
        false
    }
}

/// The runtime of an agent that cannot run here (a remote agent without a server to take its
/// tasks): every start fails, for good, saying why.
pub struct Unavailable {
    pub reason: String,
}

#[async_trait]
impl AgentRuntime for Unavailable {
    async fn start(&self, _context: AgentContext) -> Result<(), AgentError> {
        Err(AgentError::permanent(self.reason.clone()))
    }

    async fn run(&self, _attempt: Attempt, _cancel: CancellationToken) -> Outcome {
        Outcome::Failed { reason: self.reason.clone() }
    }

    async fn stop(&self) {}
}
