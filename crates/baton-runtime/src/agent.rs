//! The one trait every kind of agent runtime implements. The engine does not know which kind
//! it is driving.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::model::TaskRecord;

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

#[async_trait]
pub trait AgentRuntime: Send + Sync + 'static {
    /// Makes the agent ready to take tasks. For a per-task process agent, checks that its
    /// command can be started; for long-running agents, starts them. An error says why not.
    async fn start(&self) -> Result<(), String>;

    /// Runs one attempt and returns how it ended. When `cancel` fires the attempt is stopped
    /// (its processes killed) and the returned outcome is ignored.
    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome;

    /// Stops the agent; attempts still running are killed.
    async fn stop(&self);
}
