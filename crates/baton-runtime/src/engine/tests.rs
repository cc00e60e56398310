//! The engine's parts, tested on the store in memory with a fake agent runtime the tests
//! script (each attempt of a task succeeds, fails or hangs until it is killed) and tokio's
//! clock paused, which the engine's [`Clock`] follows: timers (backoff, the workstream's
//! timeout, the grace period of a shutdown) fire when every task is idle and tokio advances
//! the clock to the next of them, so no test sleeps and none depends on how fast the machine
//! is. Assertions are on what the store says (records and events) and on the fake's log.
//!
//! Most tests run the whole engine ([`Engine::run`]); some drive an open run ([`Running`]) one
//! turn at a time, to look at the scheduler between turns.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use baton_core::config::{self, Plan};
use baton_core::event::Event;
use baton_core::model::{RunState, TaskId, TaskRecord, TaskState};
use baton_core::{EventKind, Outcome, Timestamp};
use baton_store::{EventQuery, Store};

mod still;

use super::running::Running;
use super::turn::Turn;
use super::{Engine, EngineHandle, EngineOptions, Error, RunSummary};
use crate::agent::{AgentContext, AgentError, AgentRuntime, Attempt};
use crate::clock::Clock;

/// 2026-03-02 10:00:30 UTC: where every test's clock starts.
const T0: Timestamp = Timestamp(1_772_445_630_000);

/// Long enough for anything a test waits for on the paused clock; a test that waits longer is
/// stuck, and fails saying what it waited for instead of hanging.
const PATIENCE: Duration = Duration::from_secs(24 * 60 * 60);

const PLAN: &str = r#"
[orchestration]
name = "parts"
retry_backoff = "10s"
retry_backoff_max = "1m"

[[agents]]
name = "fake"
capabilities = ["work"]
command = ["started-by-no-one"]
"#;

fn plan(tasks: &str) -> Plan {
    config::load("baton.toml", &format!("{PLAN}{tasks}"), &BTreeMap::new()).unwrap_or_else(|error| panic!("{error}"))
}

/// What one attempt of a task does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Succeed,
    /// Fails with the reason "`TITLE` failed".
    Fail,
    /// Runs until it is killed.
    Hang,
}

/// What the fake runtime saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Started {
        task: TaskId,
        title: String,
        attempt: u32,
        at: Timestamp,
    },
    /// The attempt's token was cancelled: the engine killed it.
    Killed {
        task: TaskId,
        attempt: u32,
        at: Timestamp,
    },
}

/// An agent runtime whose attempts do what the test scripted for their task (by title), in
/// order of attempts; an attempt with nothing scripted succeeds.
struct Fake {
    clock: Clock,
    acts: Mutex<HashMap<String, VecDeque<Act>>>,
    seen: mpsc::UnboundedSender<Seen>,
}

#[async_trait]
impl AgentRuntime for Fake {
    async fn start(&self, _context: AgentContext) -> Result<(), AgentError> {
        Ok(())
    }

    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome {
        let task = attempt.task.id;
        let title = attempt.task.title.clone();
        let number = attempt.number();
        let act = self.acts.lock().get_mut(&title).and_then(VecDeque::pop_front).unwrap_or(Act::Succeed);
        let _ = self.seen.send(Seen::Started { task, title: title.clone(), attempt: number, at: self.clock.now() });
        match act {
            Act::Succeed => Outcome::Succeeded { result: serde_json::json!({ "done": title }) },
            Act::Fail => Outcome::Failed { reason: format!("`{title}` failed") },
            Act::Hang => {
                cancel.cancelled().await;
                let _ = self.seen.send(Seen::Killed { task, attempt: number, at: self.clock.now() });
                Outcome::Failed { reason: "killed".into() }
            }
        }
    }

    async fn stop(&self) {}
}

/// One test's world: a store in memory, the fake runtime, what the fake saw and the store's
/// committed events.
struct World {
    store: Arc<dyn Store>,
    /// The store itself, reachable when `store` is cut off.
    memory: Arc<dyn Store>,
    /// While set, `store`'s writes never answer.
    cut_off: Arc<std::sync::atomic::AtomicBool>,
    clock: Clock,
    fake: Arc<Fake>,
    seen: mpsc::UnboundedReceiver<Seen>,
    events: broadcast::Receiver<Arc<Event>>,
}

impl World {
    fn new() -> World {
        let memory: Arc<dyn Store> = Arc::new(baton_store::SqliteStore::open_memory().expect("a store in memory"));
        let cut_off = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store: Arc<dyn Store> = Arc::new(still::Still(Arc::clone(&memory), Arc::clone(&cut_off)));
        let events = store.subscribe();
        let clock = Clock::starting_at(T0);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake { clock, acts: Mutex::new(HashMap::new()), seen: seen_tx });
        World { store, memory, cut_off, clock, fake, seen, events }
    }

    /// The attempts of the task titled `title` will do `acts`, in order.
    fn script(&self, title: &str, acts: &[Act]) {
        self.fake.acts.lock().insert(title.to_string(), acts.iter().copied().collect());
    }

    fn options(&self, plan: Plan) -> EngineOptions {
        let fake = Arc::clone(&self.fake);
        let runtimes: super::RuntimeFactory = Arc::new(move |_spec| Arc::clone(&fake) as Arc<dyn AgentRuntime>);
        let mut options = EngineOptions::new(plan, Arc::clone(&self.store), runtimes);
        options.clock = self.clock;
        options.shutdown_grace = Duration::from_secs(5);
        options
    }

    /// Starts an engine that keeps its run open when its tasks are done.
    fn start(&self, plan: Plan) -> Started {
        let mut options = self.options(plan);
        options.keep_open = true;
        let (engine, handle) = Engine::new(options);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(engine.run(shutdown.clone()));
        Started { handle, shutdown, task }
    }

    async fn next_seen(&mut self) -> Seen {
        let seen = tokio::time::timeout(PATIENCE, self.seen.recv()).await;
        seen.expect("the fake runtime sees something").expect("the fake runtime is alive")
    }

    /// Waits for the first committed event that `wanted` picks.
    async fn event(&mut self, what: &str, wanted: impl Fn(&EventKind) -> bool) -> EventKind {
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                let event = self.events.recv().await.expect("the store's events are followed without a gap");
                if wanted(&event.kind) {
                    return event.kind.clone();
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no event: {what}"))
    }

    async fn task(&self, id: TaskId) -> TaskRecord {
        self.store.task(id).await.expect("the store answers").expect("the task exists")
    }

    async fn task_by_key(&self, run_id: &str, key: &str) -> TaskRecord {
        let tasks = self.store.tasks_by_key(run_id, &[key.to_string()]).await.expect("the store answers");
        let status = tasks.into_iter().next().unwrap_or_else(|| panic!("no task `{key}`"));
        self.task(status.id).await
    }

    async fn events_of(&self, run_id: &str) -> Vec<EventKind> {
        let query = EventQuery { run_id: Some(run_id.to_string()), ..EventQuery::default() };
        self.store.events(&query).await.expect("the store answers").into_iter().map(|event| event.kind).collect()
    }
}

/// An engine running in its own task.
struct Started {
    handle: EngineHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<RunSummary, Error>>,
}

impl Started {
    async fn run_id(&self) -> String {
        let mut run_id = self.handle.run_id();
        let id = run_id.wait_for(Option::is_some).await.expect("the engine opens its run");
        id.clone().expect("a run id")
    }

    async fn stop(self) -> RunSummary {
        self.shutdown.cancel();
        self.task.await.expect("the engine does not panic").expect("the engine stops cleanly")
    }
}

/// Drives an open run one turn at a time, as its loop does, until `done` says so.
async fn turn_until(running: &mut Running, what: &str, done: impl Fn(&Running) -> bool) {
    let no_shutdown = CancellationToken::new();
    let turns = async {
        while !done(running) {
            let input = running.next_input(&no_shutdown).await;
            let mut turn = Turn::default();
            running.apply(input, &mut turn).await.expect("the input is applied");
            running.end_turn(turn).await.expect("the turn ends");
        }
    };
    tokio::time::timeout(PATIENCE, turns).await.unwrap_or_else(|_| panic!("never: {what}"));
}

#[tokio::test(start_paused = true)]
async fn a_plans_tasks_run_to_done_and_run_returns_the_summary() {
    let world = World::new();
    let plan = plan(
        r#"
[[tasks]]
key = "first"
title = "First"
requires = ["work"]

[[tasks]]
key = "second"
title = "Second"
requires = ["work"]
depends_on = ["first"]
"#,
    );
    let (engine, _handle) = Engine::new(world.options(plan));
    let summary = engine.run(CancellationToken::new()).await.expect("the run ends");

    assert_eq!((summary.state, summary.n_tasks, summary.n_succeeded), (RunState::Succeeded, 2, 2));
    assert!(!summary.resumed && summary.error.is_none() && summary.failures.is_empty(), "{summary:?}");
    let mut world = world;
    let mut started = Vec::new();
    while let Ok(Seen::Started { title, .. }) = world.seen.try_recv() {
        started.push(title);
    }
    assert_eq!(started, ["First", "Second"], "a task starts after what it depends on");
    for key in ["first", "second"] {
        let task = world.task_by_key(&summary.run_id, key).await;
        assert_eq!((task.state, task.attempt), (TaskState::Succeeded, 1), "{key}");
        assert_eq!(task.result, Some(serde_json::json!({ "done": task.title })));
    }
    let run = world.store.run(&summary.run_id).await.unwrap().expect("the run");
    assert_eq!(run.state, RunState::Succeeded);
    let completed = world.events_of(&summary.run_id).await.into_iter().filter_map(|event| match event {
        EventKind::RunCompleted { state, n_succeeded, n_dead, n_cancelled, .. } => {
            Some((state, n_succeeded, n_dead, n_cancelled))
        }
        _ => None,
    });
    assert_eq!(completed.collect::<Vec<_>>(), [(RunState::Succeeded, 2, 0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_retried_after_its_backoff_and_dead_after_max_attempts() {
    let mut world = World::new();
    let plan = plan(
        r#"
[[tasks]]
key = "flaky"
title = "Flaky"
requires = ["work"]
max_attempts = 3

[[tasks]]
key = "once"
title = "Once"
requires = ["work"]
max_attempts = 1
"#,
    );
    world.script("Flaky", &[Act::Fail, Act::Fail, Act::Fail]);
    world.script("Once", &[Act::Fail]);
    let (engine, _handle) = Engine::new(world.options(plan));
    let summary = engine.run(CancellationToken::new()).await.expect("the run ends");

    assert_eq!(summary.state, RunState::Failed);
    let failures: Vec<(&str, TaskState, &str)> =
        summary.failures.iter().map(|(key, state, reason)| (key.as_str(), *state, reason.as_str())).collect();
    assert_eq!(failures, [("flaky", TaskState::Dead, "`Flaky` failed"), ("once", TaskState::Dead, "`Once` failed")]);

    let mut flaky_starts = Vec::new();
    while let Ok(seen) = world.seen.try_recv() {
        if let Seen::Started { title, attempt, at, .. } = seen
            && title == "Flaky"
        {
            flaky_starts.push((attempt, at));
        }
    }
    assert_eq!(flaky_starts.iter().map(|(attempt, _)| *attempt).collect::<Vec<_>>(), [1, 2, 3]);
    // Backoff doubles from `retry_backoff` (10s), with jitter taking off up to half: the
    // second attempt waits 5-10s, the third 10-20s. Each starts once its wait is over.
    let waited = |idx: usize| flaky_starts[idx + 1].1.since(flaky_starts[idx].1);
    assert!(waited(0) >= Duration::from_secs(5) && waited(0) <= Duration::from_secs(11), "{:?}", waited(0));
    assert!(waited(1) >= Duration::from_secs(10) && waited(1) <= Duration::from_secs(21), "{:?}", waited(1));

    let flaky = world.task_by_key(&summary.run_id, "flaky").await;
    assert_eq!((flaky.state, flaky.attempt), (TaskState::Dead, 3));
    let once = world.task_by_key(&summary.run_id, "once").await;
    assert_eq!((once.state, once.attempt), (TaskState::Dead, 1));
    let events = world.events_of(&summary.run_id).await;
    let retrying: Vec<(TaskId, u32, Timestamp)> = events
        .iter()
        .filter_map(|event| match event {
            EventKind::TaskRetrying { task, attempt, not_before } => Some((*task, *attempt, *not_before)),
            _ => None,
        })
        .collect();
    assert_eq!(
        retrying.iter().map(|(task, attempt, _)| (*task, *attempt)).collect::<Vec<_>>(),
        [(flaky.id, 2), (flaky.id, 3)]
    );
    for (idx, (_, _, not_before)) in retrying.iter().enumerate() {
        assert!(flaky_starts[idx + 1].1 >= *not_before, "attempt {} started before its backoff", idx + 2);
    }
    let dead: Vec<(TaskId, u32)> = events
        .iter()
        .filter_map(|event| match event {
            EventKind::TaskDeadLettered { task, attempts, .. } => Some((*task, *attempts)),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 2);
    assert!(dead.contains(&(flaky.id, 3)) && dead.contains(&(once.id, 1)), "{dead:?}");
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_task_kills_its_attempt() {
    let mut world = World::new();
    world.script("Long", &[Act::Hang]);
    let started = world.start(plan(
        r#"
[[tasks]]
key = "long"
title = "Long"
requires = ["work"]
"#,
    ));
    let run_id = started.run_id().await;
    let Seen::Started { task, attempt: 1, .. } = world.next_seen().await else { panic!("the attempt starts") };

    started.handle.cancel(task, "not needed any more".into()).await.expect("cancelled");
    assert!(matches!(world.next_seen().await, Seen::Killed { task: killed, attempt: 1, .. } if killed == task));
    let record = world.task(task).await;
    assert_eq!((record.state, record.error.as_deref()), (TaskState::Cancelled, Some("not needed any more")));
    // Cancelling it again is refused for the right reason, though it is no longer in memory.
    let again = started.handle.cancel(task, "twice".into()).await;
    assert!(matches!(again, Err(Error::Refused(baton_core::sched::Error::WrongState { .. }))), "{again:?}");

    let summary = started.stop().await;
    assert_eq!(summary.failures, [("long".to_string(), TaskState::Cancelled, "not needed any more".to_string())]);
    let events = world.events_of(&run_id).await;
    assert!(events.contains(&EventKind::TaskCancelled { task, reason: "not needed any more".into() }));
}

/// A task's own `timeout` is its runtime's to enforce (the process agents kill it); the
/// engine's clock enforces the workstream's: at the deadline it cancels the workstream's open
/// tasks and kills their attempts.
#[tokio::test(start_paused = true)]
async fn a_workstream_timeout_kills_its_running_attempt() {
    let mut world = World::new();
    world.script("Stuck", &[Act::Hang]);
    let text = r#"
[[workstreams]]
name = "slow"

[[tasks]]
key = "stuck"
title = "Stuck"
workstream = "slow"
requires = ["work"]
"#;
    let plan_text = format!("{}{text}", PLAN.replace("retry_backoff = \"10s\"", "workstream_timeout = \"10m\""));
    let plan = config::load("baton.toml", &plan_text, &BTreeMap::new()).unwrap_or_else(|error| panic!("{error}"));
    let (engine, _handle) = Engine::new(world.options(plan));
    let summary = engine.run(CancellationToken::new()).await.expect("the run ends");

    let Seen::Started { task, at: started_at, .. } = world.next_seen().await else { panic!("the attempt starts") };
    let Seen::Killed { at: killed_at, .. } = world.next_seen().await else { panic!("the attempt is killed") };
    assert!(
        killed_at.since(started_at) >= Duration::from_secs(10 * 60),
        "killed after {:?}",
        killed_at.since(started_at)
    );
    let record = world.task(task).await;
    assert_eq!(record.state, TaskState::Cancelled);
    assert_eq!(record.error.as_deref(), Some("workstream `slow` timed out after 10m"));
    assert_eq!(summary.state, RunState::Failed);
}

/// Commands through the handle: tasks created, and a dead task retried after it left the
/// scheduler's memory (finished tasks are the store's): the engine loads it back first.
#[tokio::test(start_paused = true)]
async fn a_dead_task_no_longer_in_memory_is_retried_through_the_handle() {
    let mut world = World::new();
    world.script("Later", &[Act::Fail, Act::Succeed]);
    let plan = plan("");
    let new_task = new_task(&plan, "Later", 1);
    let mut options = world.options(plan);
    options.keep_open = true;
    let (engine, handle) = Engine::new(options);
    let mut running = Running::open(engine).await.expect("the run opens");

    let creating = tokio::spawn({
        let handle = handle.clone();
        async move { handle.create_tasks(vec![new_task]).await }
    });
    turn_until(&mut running, "the task is created", |_| creating.is_finished()).await;
    let ids = creating.await.expect("no panic").expect("created");
    let id = ids[0];

    turn_until(&mut running, "the task has ended and left memory", |running| running.sched.task(id).is_none()).await;
    assert_eq!(world.task(id).await.state, TaskState::Dead);

    let retrying = tokio::spawn({
        let handle = handle.clone();
        async move { handle.retry(id).await }
    });
    turn_until(&mut running, "the retry is answered", |_| retrying.is_finished()).await;
    retrying.await.expect("no panic").expect("a dead task can be retried");
    turn_until(&mut running, "the retried task has ended", |running| running.sched.task(id).is_none()).await;
    assert_eq!(world.task(id).await.state, TaskState::Succeeded);
    let mut attempts = Vec::new();
    while let Ok(seen) = world.seen.try_recv() {
        attempts.push(seen);
    }
    assert!(matches!(attempts.as_slice(), [Seen::Started { .. }, Seen::Started { .. }]), "{attempts:?}");

    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let outcome = running.turns(&shutdown).await;
    let summary = running.close(outcome).await.expect("the run closes");
    assert_eq!((summary.n_tasks, summary.n_succeeded), (1, 1));
    assert!(summary.failures.is_empty(), "a task retried to success is no failure: {:?}", summary.failures);
}

/// A task as the API makes it, for the agent `fake`.
fn new_task(plan: &Plan, title: &str, max_attempts: u32) -> baton_core::model::NewTask {
    let input = baton_core::task::TaskInput {
        title: title.to_string(),
        requires: vec!["work".to_string()],
        max_attempts: Some(max_attempts),
        ..baton_core::task::TaskInput::default()
    };
    baton_core::task::new_task(input, plan.into()).expect("a valid task")
}

#[tokio::test(start_paused = true)]
async fn a_reload_adds_the_files_new_task_and_it_runs() {
    let mut world = World::new();
    let started = world.start(plan(""));
    let run_id = started.run_id().await;

    let reloaded = plan(
        r#"
[[tasks]]
key = "added"
title = "Added"
requires = ["work"]
"#,
    );
    let summary = started.handle.reconfigure(reloaded).await.expect("reloaded");
    let new_keys: Vec<Option<&str>> = summary.new_tasks.iter().map(|task| task.key.as_deref()).collect();
    assert_eq!(new_keys, [Some("added")]);
    let Seen::Started { task, title, .. } = world.next_seen().await else { panic!("the new task starts") };
    assert_eq!(title, "Added");
    world
        .event(
            "the added task completes",
            |event| matches!(event, EventKind::TaskCompleted { task: done, .. } if *done == task),
        )
        .await;
    assert_eq!(world.task_by_key(&run_id, "added").await.state, TaskState::Succeeded);

    // Reloaded again, the file's task is not created twice: the run has it (finished, so only
    // the store knows).
    let again = started
        .handle
        .reconfigure(plan(
            r#"
[[tasks]]
key = "added"
title = "Added"
requires = ["work"]
"#,
        ))
        .await
        .expect("reloaded");
    assert!(again.new_tasks.is_empty(), "{again:?}");
    let summary = started.stop().await;
    assert_eq!((summary.n_tasks, summary.n_succeeded), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_mid_run_leaves_the_run_resumable_and_another_engine_resumes_it() {
    let mut world = World::new();
    world.script("Long", &[Act::Hang]);
    let text = r#"
[[tasks]]
key = "long"
title = "Long"
requires = ["work"]
"#;
    let first = world.start(plan(text));
    let run_id = first.run_id().await;
    let Seen::Started { task, attempt: 1, at: started_at, .. } = world.next_seen().await else {
        panic!("the attempt starts")
    };
    let summary = first.stop().await;
    // The attempt had the grace period (5s) to finish, then was killed and put back.
    let Seen::Killed { at: killed_at, .. } = world.next_seen().await else { panic!("the attempt is killed") };
    assert!(killed_at.since(started_at) >= Duration::from_secs(5));
    assert_eq!(
        (summary.run_id.as_str(), summary.state, summary.n_succeeded),
        (run_id.as_str(), RunState::Interrupted, 0)
    );
    let run = world.store.run(&run_id).await.unwrap().expect("the run");
    assert_eq!(run.state, RunState::Interrupted, "the run says it was stopped before its end");
    assert_eq!((run.owner, run.owner_until), (None, None), "the claim is given up: anyone may resume");
    let record = world.task(task).await;
    assert_eq!(record.state, TaskState::Ready, "an interrupted attempt goes back to the queue");

    // A second engine on the same store resumes the run and finishes it.
    let (engine, _handle) = Engine::new(world.options(plan(text)));
    let summary = engine.run(CancellationToken::new()).await.expect("the run ends");
    assert_eq!((summary.run_id.as_str(), summary.resumed, summary.state), (run_id.as_str(), true, RunState::Succeeded));
    let Seen::Started { task: resumed_task, .. } = world.next_seen().await else { panic!("the task starts again") };
    assert_eq!(resumed_task, task);
    assert_eq!(world.task(task).await.state, TaskState::Succeeded);
    assert_eq!(world.store.run(&run_id).await.unwrap().expect("the run").state, RunState::Succeeded);
    let events = world.events_of(&run_id).await;
    assert!(events.iter().any(|event| matches!(event, EventKind::RunResumed { .. })), "{events:?}");
}

/// The file's task whose key a finished task made through the API holds (so only the store
/// knows it) is not added, and the reload says which task holds the key.
#[tokio::test(start_paused = true)]
async fn a_reload_says_why_a_file_task_whose_key_is_taken_was_not_added() {
    let mut world = World::new();
    let first = plan("");
    let started = world.start(first.clone());
    let run_id = started.run_id().await;
    let mut from_api = new_task(&first, "From the API", 1);
    from_api.key = Some("review".into());
    let ids = started.handle.create_tasks(vec![from_api]).await.expect("created");
    let api_task = ids[0];
    world
        .event(
            "the API's task completes",
            |event| matches!(event, EventKind::TaskCompleted { task, .. } if *task == api_task),
        )
        .await;

    let text = r#"
[[tasks]]
key = "review"
title = "Review"
requires = ["work"]
"#;
    let summary = started.handle.reconfigure(plan(text)).await.expect("reloaded");
    assert!(summary.new_tasks.is_empty(), "{:?}", summary.new_tasks);
    let reason = format!(
        "task review: key `review` is taken by task {api_task}, which the file did not make (made through the API, by \
         a worker or by chat); give the file's task another key"
    );
    assert_eq!(summary.not_added, std::slice::from_ref(&reason));
    let reported: Vec<Vec<String>> = world
        .events_of(&run_id)
        .await
        .into_iter()
        .filter_map(|event| match event {
            EventKind::ConfigReloaded { not_added, .. } => Some(not_added),
            _ => None,
        })
        .collect();
    assert_eq!(reported, [vec![reason]]);
    assert_eq!(world.task_by_key(&run_id, "review").await.title, "From the API", "the key's task is the API's");
    let summary = started.stop().await;
    assert_eq!(summary.n_tasks, 1, "nothing was added");
}

/// Saving the file without a change (an editor, `touch`) is no news: no `ConfigReloaded`.
#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_nothing_writes_no_event() {
    let world = World::new();
    let text = r#"
[[tasks]]
key = "first"
title = "First"
requires = ["work"]
"#;
    let started = world.start(plan(text));
    let run_id = started.run_id().await;

    let unchanged = started.handle.reconfigure(plan(text)).await.expect("reloaded");
    assert!(unchanged.is_unchanged(), "{unchanged:?}");
    let more = format!("{text}\n[[tasks]]\nkey = \"second\"\ntitle = \"Second\"\nrequires = [\"work\"]\n");
    let changed = started.handle.reconfigure(plan(&more)).await.expect("reloaded");
    assert_eq!(changed.added, ["task second"]);

    let reloads: Vec<Vec<String>> = world
        .events_of(&run_id)
        .await
        .into_iter()
        .filter_map(|event| match event {
            EventKind::ConfigReloaded { added, .. } => Some(added),
            _ => None,
        })
        .collect();
    assert_eq!(reloads, [vec!["task second".to_string()]], "only the reload that changed something is an event");
    started.stop().await;
}

/// Once another node has taken the run over, everything this engine decides is refused by
/// the store (every batch is fenced on its claim): it stops, killing its attempts, and
/// nothing of what it decided after the takeover is stored.
#[tokio::test(start_paused = true)]
async fn a_deposed_engine_writes_nothing_and_stops() {
    let mut world = World::new();
    world.script("Long", &[Act::Hang]);
    let started = world.start(plan(
        r#"
[[tasks]]
key = "long"
title = "Long"
requires = ["work"]
"#,
    ));
    let run_id = started.run_id().await;
    let Seen::Started { task, attempt: 1, .. } = world.next_seen().await else { panic!("the attempt starts") };

    // Another node takes the run over (as after this one's claim lapsed).
    let later = world.clock.now().plus(Duration::from_secs(3600));
    let take = baton_core::sched::Write::RunOwner {
        owner: Some("node-b".into()),
        pid: Some(2),
        until: Some(later.plus(Duration::from_secs(30))),
        expect_owner: None,
    };
    world.store.apply(&run_id, later, vec![take]).await.expect("the takeover is stored");

    // The deposed engine's next decision is refused whole.
    let cancelled = started.handle.cancel(task, "not needed any more".into()).await;
    assert!(cancelled.is_err(), "{cancelled:?}");
    let stopped = started.task.await.expect("the engine does not panic");
    let error = stopped.expect_err("the deposed engine stops").to_string();
    assert!(error.contains("fenced") && error.contains("node-b"), "{error}");
    assert!(matches!(world.next_seen().await, Seen::Killed { task: killed, .. } if killed == task));
    let record = world.task(task).await;
    assert_eq!(record.state, TaskState::Running, "its cancel was not stored");
    let events = world.events_of(&run_id).await;
    assert!(!events.iter().any(|event| matches!(event, EventKind::TaskCancelled { .. })), "{events:?}");
}

/// A leader cut off from the store (its writes never answer) stops its attempts before its
/// claim expires, by its own clock: a node taking the run over at the claim's expiry runs
/// them alone.
#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_the_store_stops_its_attempts_before_its_claim_expires() {
    let mut world = World::new();
    world.script("Long", &[Act::Hang]);
    let started = world.start(plan(
        r#"
[[tasks]]
key = "long"
title = "Long"
requires = ["work"]
"#,
    ));
    let run_id = started.run_id().await;
    let Seen::Started { task, attempt: 1, .. } = world.next_seen().await else { panic!("the attempt starts") };
    world.cut_off.store(true, std::sync::atomic::Ordering::SeqCst);
    let claimed_until = world.memory.run(&run_id).await.unwrap().expect("the run").owner_until.expect("claimed");

    let Seen::Killed { task: killed, at, .. } = world.next_seen().await else { panic!("the attempt is killed") };
    assert_eq!(killed, task);
    assert!(at < claimed_until, "killed at {at:?}, before the claim expires at {claimed_until:?}");
    // Its claim, as stored, is the one it last renewed: a takeover waits for its expiry.
    assert_eq!(world.memory.run(&run_id).await.unwrap().unwrap().owner_until, Some(claimed_until));
    started.task.abort();
}
