//! A store that stops tokio's paused clock while it works. The SQLite store writes on a thread
//! of its own; while the engine waits for a commit, tokio sees every task idle and advances its
//! paused clock to the next timer (a test's time limit, the post office's poll), which is not
//! what would happen on a real clock and makes tests depend on how fast the machine is. Each
//! call here holds a blocking task for as long as it runs, and tokio does not advance a paused
//! clock while a blocking task runs: time moves only when the engine, the agents and the store
//! all wait for it.
//!
//! It can also be cut off: its writes then never answer (a partition).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use baton_core::budget::UsageRecord;
use baton_core::messages::{Delivery, NewMessage};
use baton_core::model::{AgentRecord, NewTask, RunRecord, TaskCount, TaskId, TaskRecord, TaskState, TaskStatus};
use baton_core::sched::Write;
use baton_core::schedule::{Firing, ScheduleRecord};
use baton_core::{Event, Timestamp};
use baton_store::{
    Applied, AuditEntry, AuditQuery, DeliveryOutcome, EventQuery, NewAuditEntry, NewRun, ProcessRecord, Result, Store,
    TaskFilter,
};

/// `inner`, with the paused clock still while each of its calls runs. While `.1` is set,
/// `apply` never answers, as a store cut off by a partition would not.
pub(super) struct Still(pub(super) Arc<dyn Store>, pub(super) Arc<std::sync::atomic::AtomicBool>);

/// Runs `work` with tokio's clock held still: a blocking task, which tokio counts as work in
/// progress, waits until `work` is done.
async fn still<T>(work: impl Future<Output = T>) -> T {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || {
        let _ = wait.recv();
    });
    let output = work.await;
    drop(done);
    let _ = holder.await;
    output
}

#[async_trait]
impl Store for Still {
    async fn create_run(&self, run: NewRun, now: Timestamp) -> Result<RunRecord> {
        still(self.0.create_run(run, now)).await
    }
    async fn create_tasks(&self, run_id: &str, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<TaskRecord>> {
        still(self.0.create_tasks(run_id, tasks, now)).await
    }
    async fn apply(&self, run_id: &str, now: Timestamp, writes: Vec<Write>) -> Result<Vec<Applied>> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return std::future::pending().await;
        }
        still(self.0.apply(run_id, now, writes)).await
    }
    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        still(self.0.run(id)).await
    }
    async fn latest_run(&self, name: Option<&str>) -> Result<Option<RunRecord>> {
        still(self.0.latest_run(name)).await
    }
    async fn tasks(&self, run_id: &str, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        still(self.0.tasks(run_id, filter)).await
    }
    async fn task(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        still(self.0.task(id)).await
    }
    async fn task_counts(&self, run_id: &str) -> Result<Vec<(TaskState, u64)>> {
        still(self.0.task_counts(run_id)).await
    }
    async fn unfinished_tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>> {
        still(self.0.unfinished_tasks(run_id)).await
    }
    async fn task_counts_by_workstream(&self, run_id: &str) -> Result<Vec<TaskCount>> {
        still(self.0.task_counts_by_workstream(run_id)).await
    }
    async fn task_statuses(&self, run_id: &str, ids: &[TaskId]) -> Result<Vec<TaskStatus>> {
        still(self.0.task_statuses(run_id, ids)).await
    }
    async fn tasks_by_key(&self, run_id: &str, keys: &[String]) -> Result<Vec<TaskStatus>> {
        still(self.0.tasks_by_key(run_id, keys)).await
    }
    async fn agents(&self, run_id: &str) -> Result<Vec<AgentRecord>> {
        still(self.0.agents(run_id)).await
    }
    async fn events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        still(self.0.events(query)).await
    }
    async fn last_event_seq(&self) -> Result<i64> {
        still(self.0.last_event_seq()).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.0.subscribe()
    }
    async fn record_process(&self, run_id: &str, process: ProcessRecord) -> Result<()> {
        still(self.0.record_process(run_id, process)).await
    }
    async fn forget_process(&self, run_id: &str, process: &ProcessRecord) -> Result<()> {
        still(self.0.forget_process(run_id, process)).await
    }
    async fn fire_schedule(&self, run_id: &str, firing: Firing, now: Timestamp) -> Result<Option<TaskRecord>> {
        still(self.0.fire_schedule(run_id, firing, now)).await
    }
    async fn schedules(&self, run_id: &str) -> Result<Vec<ScheduleRecord>> {
        still(self.0.schedules(run_id)).await
    }
    async fn send_message(
        &self,
        run_id: &str,
        message_id: String,
        message: NewMessage,
        recipients: Vec<String>,
        now: Timestamp,
    ) -> Result<Vec<i64>> {
        still(self.0.send_message(run_id, message_id, message, recipients, now)).await
    }
    async fn due_deliveries(
        &self,
        run_id: &str,
        recipients: &[String],
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<Delivery>> {
        still(self.0.due_deliveries(run_id, recipients, now, limit)).await
    }
    async fn settle_deliveries(
        &self,
        run_id: &str,
        outcomes: Vec<(Delivery, DeliveryOutcome)>,
        now: Timestamp,
    ) -> Result<()> {
        still(self.0.settle_deliveries(run_id, outcomes, now)).await
    }
    async fn redeliver(&self, run_id: &str, ids: Option<Vec<i64>>, now: Timestamp) -> Result<Vec<i64>> {
        still(self.0.redeliver(run_id, ids, now)).await
    }
    async fn hand_over(&self, run_id: &str, holder: &str, agent: &str, now: Timestamp) -> Result<Vec<Delivery>> {
        still(self.0.hand_over(run_id, holder, agent, now)).await
    }
    async fn deliveries(&self, run_id: &str, agent: Option<&str>, limit: u64) -> Result<Vec<Delivery>> {
        still(self.0.deliveries(run_id, agent, limit)).await
    }
    async fn take_processes(&self, run_id: &str) -> Result<Vec<ProcessRecord>> {
        still(self.0.take_processes(run_id)).await
    }
    async fn usage(&self, run_id: &str, since: Timestamp) -> Result<Vec<UsageRecord>> {
        still(self.0.usage(run_id, since)).await
    }
    async fn record_audit(&self, entry: NewAuditEntry) -> Result<i64> {
        still(self.0.record_audit(entry)).await
    }
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        still(self.0.audit(query)).await
    }
    async fn prune_audit(&self, actor: &str, keep: u64) -> Result<u64> {
        still(self.0.prune_audit(actor, keep)).await
    }
    async fn put_push_config(&self, config: baton_store::PushConfigRecord) -> Result<()> {
        still(self.0.put_push_config(config)).await
    }
    async fn delete_push_config(&self, task: TaskId, id: &str) -> Result<bool> {
        still(self.0.delete_push_config(task, id)).await
    }
    async fn push_configs(&self, task: Option<TaskId>) -> Result<Vec<baton_store::PushConfigRecord>> {
        still(self.0.push_configs(task)).await
    }
}
