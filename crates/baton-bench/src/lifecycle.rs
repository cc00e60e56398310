//! `baton bench`: the figures of DESIGN.md §8 that concern the engine, measured on the real
//! engine and the real SQLite store (a file, `synchronous=FULL` unless asked otherwise).
//!
//! Agents here are in-process and finish at once, so what is measured is Baton itself: the
//! scheduler, the store and the group commit, not the agents' work.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::config::{self, AgentSpec, Plan};
use baton_core::model::{NewTask, Priority, TaskId};
use baton_store::sqlite::{Options, Synchronous};
use baton_store::{EventQuery, SqliteStore, Store};

use baton_runtime::agent::{AgentContext, AgentRuntime, Attempt};
use baton_runtime::engine::{Engine, EngineOptions, RuntimeFactory};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the benchmark stores are created (each figure gets a fresh file).
    pub dir: PathBuf,
    pub synchronous: Synchronous,
    /// Tasks in the lifecycle figure.
    pub n_tasks: u64,
    /// Tasks per create call in the lifecycle figure.
    pub batch: usize,
    pub n_agents: u32,
    pub concurrency: u32,
    /// How long the dispatch-latency load runs.
    pub latency_duration: Duration,
    /// Runs of the lifecycle figure; the median is reported.
    pub repeats: u32,
    /// The store to measure instead of a SQLite file per figure: a `postgres://` URL (an
    /// empty database is best; each figure starts a fresh run in it).
    pub store_url: Option<String>,
}

impl BenchOptions {
    pub fn new(dir: PathBuf) -> BenchOptions {
        BenchOptions {
            dir,
            synchronous: Synchronous::Full,
            n_tasks: 20_000,
            batch: 500,
            n_agents: 8,
            concurrency: 32,
            latency_duration: Duration::from_secs(4),
            repeats: 3,
            store_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LifecycleFigure {
    pub n_tasks: u64,
    pub n_events: i64,
    /// Each run's throughput, in tasks per second.
    pub runs: Vec<f64>,
    pub median_tasks_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DispatchFigure {
    /// Offered load, in tasks per second: half of the lifecycle median.
    pub offered_per_second: f64,
    pub n_tasks: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub synchronous: String,
    pub lifecycle: LifecycleFigure,
    pub dispatch: DispatchFigure,
}

/// An agent that finishes every task at once and notes when it got each.
struct InstantAgent {
    arrivals: Arc<Mutex<HashMap<TaskId, Instant>>>,
}

#[async_trait]
impl AgentRuntime for InstantAgent {
    async fn start(&self, _context: AgentContext) -> Result<(), baton_runtime::agent::AgentError> {
        Ok(())
    }

    async fn run(&self, attempt: Attempt, _cancel: CancellationToken) -> Outcome {
        let now = Instant::now();
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).insert(attempt.task.id, now);
        Outcome::Succeeded { result: serde_json::Value::Null }
    }

    async fn stop(&self) {}
}

fn bench_plan(options: &BenchOptions) -> Plan {
    let mut text = format!(
        "[orchestration]\nname = \"bench\"\nmax_concurrent_agents = {}\n",
        options.n_agents * options.concurrency
    );
    for idx in 0..options.n_agents {
        text.push_str(&format!(
            "[[agents]]\nname = \"agent-{idx}\"\ncommand = [\"true\"]\nconcurrency = {}\n",
            options.concurrency
        ));
    }
    config::load("bench.toml", &text, &Default::default()).expect("the benchmark plan is valid")
}

fn bench_task(idx: u64) -> NewTask {
    NewTask {
        parent: None,
        key: None,
        workstream: None,
        title: format!("bench task {idx}"),
        description: String::new(),
        input: serde_json::json!({ "n": idx }),
        requires: Vec::new(),
        agent: None,
        depends_on: Vec::new(),
        priority: Priority::Medium,
        max_attempts: 3,
        timeout_ms: None,
        resources: Vec::new(),
        estimated_tokens: None,
    }
}

struct Bench {
    store: Arc<dyn Store>,
    handle: baton_runtime::engine::EngineHandle,
    arrivals: Arc<Mutex<HashMap<TaskId, Instant>>>,
    shutdown: CancellationToken,
    engine: tokio::task::JoinHandle<Result<baton_runtime::engine::RunSummary, baton_runtime::engine::Error>>,
}

/// An engine on a fresh store file, its run kept open for tasks added by the benchmark.
pub(crate) struct Launched {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) handle: baton_runtime::engine::EngineHandle,
    pub(crate) shutdown: CancellationToken,
    pub(crate) engine: tokio::task::JoinHandle<Result<baton_runtime::engine::RunSummary, baton_runtime::engine::Error>>,
}

pub(crate) fn launch(
    path: &std::path::Path,
    options: Options,
    plan: Plan,
    runtimes: RuntimeFactory,
) -> Result<Launched, String> {
    let store = fresh_sqlite(path, options).map_err(|error| error.to_string())?;
    launch_on(store, plan, runtimes)
}

/// A SQLite store in a new file at `path` (one left by an earlier figure is removed first).
pub(crate) fn fresh_sqlite(path: &std::path::Path, options: Options) -> baton_store::Result<Arc<dyn Store>> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(Arc::new(SqliteStore::open(path, options)?))
}

/// The store a figure runs on: `url`'s when one is given, else a fresh SQLite file at `path`.
pub(crate) async fn figure_store(
    path: &std::path::Path,
    options: Options,
    url: Option<&str>,
) -> baton_store::Result<Arc<dyn Store>> {
    match url {
        Some(url) => baton_store::open(url, path.parent().unwrap_or(path)).await,
        None => fresh_sqlite(path, options),
    }
}

/// An engine on `store`, its run (a new one) kept open for tasks added by the benchmark.
pub(crate) fn launch_on(store: Arc<dyn Store>, plan: Plan, runtimes: RuntimeFactory) -> Result<Launched, String> {
    let mut engine_options = EngineOptions::new(plan, Arc::clone(&store), runtimes);
    engine_options.keep_open = true;
    engine_options.fresh = true;
    let (engine, handle) = Engine::new(engine_options);
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn(engine.run(shutdown.clone()));
    Ok(Launched { store, handle, shutdown, engine })
}

/// Real worker processes for the soak and the messages figure, living in `dir`.
fn worker_runtimes(dir: &std::path::Path) -> RuntimeFactory {
    let env = std::env::vars().filter(|(key, _)| key == "PATH" || key == "HOME").collect();
    baton_runtime::engine::process_runtimes(baton_runtime::process::ProcessEnv {
        base_dir: dir.to_path_buf(),
        log_dir: dir.join("logs"),
        env,
        registry: None,
        api: None,
        mcp_servers: Vec::new(),
    })
}

async fn start(options: &BenchOptions, name: &str) -> Result<Bench, String> {
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let factory_arrivals = Arc::clone(&arrivals);
    let runtimes: RuntimeFactory = Arc::new(move |_: &AgentSpec| {
        Arc::new(InstantAgent { arrivals: Arc::clone(&factory_arrivals) }) as Arc<dyn AgentRuntime>
    });
    let path = options.dir.join(format!("{name}.db"));
    let store = figure_store(&path, Options { synchronous: options.synchronous }, options.store_url.as_deref())
        .await
        .map_err(|error| error.to_string())?;
    let Launched { store, handle, shutdown, engine } = launch_on(store, bench_plan(options), runtimes)?;
    Ok(Bench { store, handle, arrivals, shutdown, engine })
}

impl Bench {
    async fn wait_finished(&self, n_tasks: u64) {
        let mut progress = self.handle.progress();
        while progress.borrow_and_update().workstreams.iter().map(|ws| ws.n_finished).sum::<u64>() < n_tasks {
            if progress.changed().await.is_err() {
                return;
            }
        }
    }

    async fn stop(self) -> Result<(), String> {
        self.shutdown.cancel();
        self.engine.await.map_err(|error| error.to_string())?.map_err(|error| error.to_string())?;
        Ok(())
    }
}

/// The durable task lifecycle: tasks created in batches, each claimed by an agent, completed,
/// with all their events, until every one is recorded as done.
async fn lifecycle(options: &BenchOptions, run: u32) -> Result<(f64, i64), String> {
    let bench = start(options, &format!("lifecycle-{run}")).await?;
    let first_seq =
        bench.store.events(&EventQuery::default()).await.map_err(|e| e.to_string())?.last().map_or(0, |e| e.seq);
    let started = Instant::now();
    let mut created = 0u64;
    while created < options.n_tasks {
        let n = (options.n_tasks - created).min(options.batch as u64);
        let tasks: Vec<NewTask> = (created..created + n).map(bench_task).collect();
        bench.handle.create_tasks(tasks).await.map_err(|error| error.to_string())?;
        created += n;
    }
    bench.wait_finished(options.n_tasks).await;
    let elapsed = started.elapsed().as_secs_f64();
    let last_seq = bench
        .store
        .events(&EventQuery { since: first_seq, ..Default::default() })
        .await
        .map_err(|e| e.to_string())?
        .last()
        .map_or(first_seq, |e| e.seq);
    bench.stop().await?;
    Ok((options.n_tasks as f64 / elapsed, last_seq - first_seq))
}

/// Dispatch latency: tasks arrive at `rate` per second while agents are idle; for each, the
/// time from its creation being durable (it is ready) to an agent holding it (the claim is
/// durable and the agent has it).
async fn dispatch(options: &BenchOptions, rate: f64) -> Result<DispatchFigure, String> {
    let bench = start(options, "dispatch").await?;
    let tick = Duration::from_millis(2);
    let per_tick = (rate * tick.as_secs_f64()).max(1.0);
    let mut ready_at: HashMap<TaskId, Instant> = HashMap::new();
    let started = Instant::now();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut owed = 0.0f64;
    let mut n_created = 0u64;
    while started.elapsed() < options.latency_duration {
        interval.tick().await;
        owed += per_tick;
        let n = owed.floor() as u64;
        owed -= n as f64;
        if n == 0 {
            continue;
        }
        let tasks: Vec<NewTask> = (n_created..n_created + n).map(bench_task).collect();
        let ids = bench.handle.create_tasks(tasks).await.map_err(|error| error.to_string())?;
        let now = Instant::now();
        for id in ids {
            ready_at.insert(id, now);
        }
        n_created += n;
    }
    bench.wait_finished(n_created).await;
    let arrivals = bench.arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    bench.stop().await?;
    let mut latencies: Vec<u64> = ready_at
        .iter()
        .filter_map(|(id, ready)| {
            arrivals.get(id).map(|arrived| arrived.saturating_duration_since(*ready).as_micros() as u64)
        })
        .collect();
    latencies.sort_unstable();
    let percentile = |q: f64| percentile(&latencies, q);
    Ok(DispatchFigure {
        offered_per_second: rate,
        n_tasks: latencies.len() as u64,
        p50_us: percentile(0.50),
        p90_us: percentile(0.90),
        p99_us: percentile(0.99),
        max_us: latencies.last().copied().unwrap_or(0),
    })
}

/// Runs every figure and returns the report. Progress lines go to `say`.
pub async fn run(options: BenchOptions, say: impl Fn(String)) -> Result<BenchReport, String> {
    std::fs::create_dir_all(&options.dir)
        .map_err(|error| format!("cannot create {}: {error}", options.dir.display()))?;
    let mut runs = Vec::new();
    let mut n_events = 0;
    for run in 0..options.repeats.max(1) {
        let (tasks_per_second, events) = lifecycle(&options, run).await?;
        say(format!(
            "lifecycle run {}: {} tasks, {events} events, {tasks_per_second:.0} tasks/s",
            run + 1,
            options.n_tasks
        ));
        runs.push(tasks_per_second);
        n_events = events;
    }
    let median_tasks_per_second = median(runs.clone());
    let rate = median_tasks_per_second / 2.0;
    say(format!("dispatch latency at {rate:.0} tasks/s (half of peak) for {:?}", options.latency_duration));
    let dispatch = dispatch(&options, rate).await?;
    Ok(BenchReport {
        synchronous: match options.synchronous {
            Synchronous::Full => "full".into(),
            Synchronous::Normal => "normal".into(),
        },
        lifecycle: LifecycleFigure { n_tasks: options.n_tasks, n_events, runs, median_tasks_per_second },
        dispatch,
    })
}

// ---------------------------------------------------------------------------------------------
// The soak: many real worker processes, many tasks, workers killed at random.

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub dir: PathBuf,
    /// The program and arguments that run a worker ([`worker_main`] behind them).
    pub worker_command: Vec<String>,
    pub n_agents: u32,
    pub n_tasks: u64,
    pub concurrency: u32,
    /// A worker is killed (SIGKILL) this often.
    pub kill_every: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub n_agents: u32,
    pub n_tasks: u64,
    pub seconds: f64,
    pub tasks_per_second: f64,
    pub n_kills: usize,
    /// Tasks that were running on a killed worker.
    pub n_interrupted: usize,
    pub all_succeeded: bool,
    /// Every task has exactly one `TaskCompleted` event.
    pub completed_exactly_once: bool,
    pub n_restarts: usize,
    /// From a kill to each interrupted task being claimed again, in milliseconds.
    pub requeue_p50_ms: i64,
    pub requeue_p99_ms: i64,
    pub requeue_max_ms: i64,
}

/// A minimal worker for the soak and the message benchmark: answers `initialize` (declaring
/// `message/deliver_batch`), completes every `task/assign`, acknowledges every message at once,
/// heartbeats, exits on `shutdown` or when its stdin closes. Synchronous and dependency-free, so
/// that hundreds of them are cheap.
///
/// A task whose input has a `send` object ([`SendOrder`]) is the message benchmark's load: the
/// worker sends its share of the messages as `message/send` requests, up to `in_flight` at a
/// time, while it goes on acknowledging the messages delivered to it; a send refused because the
/// recipient's inbox is full is tried again 5 ms later. It answers the task once every message
/// has been answered, with `{"sent", "retried_full"}`, or with an error naming the first refusal
/// of another kind.
pub fn worker_main() {
    use std::io::{BufRead, Write};
    let stdout = Arc::new(Mutex::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout())));
    let heartbeat = Arc::clone(&stdout);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let mut out = heartbeat.lock().unwrap_or_else(|p| p.into_inner());
            if writeln!(out, r#"{{"jsonrpc":"2.0","method":"heartbeat","params":{{}}}}"#)
                .and_then(|()| out.flush())
                .is_err()
            {
                return;
            }
        }
    });
    // Lines are read on a thread of their own so that the main loop can wait for a line or for
    // its next retry, whichever comes first.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::with_capacity(1 << 16, std::io::stdin()).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut worker = BenchWorker::default();
    loop {
        let first = match worker.next_retry() {
            Some(at) => match lines.recv_timeout(at.saturating_duration_since(std::time::Instant::now())) {
                Ok(line) => Some(line),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match lines.recv() {
                Ok(line) => Some(line),
                Err(_) => return,
            },
        };
        let mut out = stdout.lock().unwrap_or_else(|p| p.into_inner());
        // Everything already read is handled before the answers are flushed: one write for many.
        let mut next = first;
        let mut stop = false;
        while let Some(line) = next {
            stop |= worker.handle(&line, &mut *out);
            next = lines.try_recv().ok();
        }
        worker.send_more(&mut *out);
        if out.flush().is_err() || stop {
            return;
        }
    }
}

/// What the message benchmark asks a worker to send, in its task's input under `send`: the
/// messages numbered `first`, `first + step`, … below `end`, message `k` to
/// `to[(k / step) % to.len()]`, with at most `in_flight` unanswered at a time.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SendOrder {
    pub first: u64,
    pub step: u64,
    pub end: u64,
    pub to: Vec<String>,
    pub in_flight: u64,
}

/// The state of [`worker_main`]: the task it is sending for, if any.
#[derive(Default)]
struct BenchWorker {
    sending: Option<Sending>,
    /// The id of the worker's next request.
    next_id: u64,
}

struct Sending {
    /// The `task/assign` request to answer when every message is answered.
    task: serde_json::Value,
    order: SendOrder,
    /// The next message not sent yet.
    next: u64,
    /// Unanswered `message/send` requests: request id to message number.
    in_flight: HashMap<u64, u64>,
    /// Messages refused because an inbox was full, to send again at the time given.
    retries: std::collections::VecDeque<(std::time::Instant, u64)>,
    retried_full: u64,
    failure: Option<String>,
}

/// A line from Baton, as much of it as the benchmark worker reads first (`params` is skipped,
/// and read again only by the methods that need it: no `Value` is built for a whole line).
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    error: Option<IncomingError>,
}

#[derive(serde::Deserialize)]
struct IncomingError {
    #[serde(default)]
    message: String,
}

#[derive(serde::Deserialize)]
struct WithParams<T> {
    params: T,
}

#[derive(serde::Deserialize)]
struct AssignParams {
    #[serde(default)]
    input: Option<AssignInput>,
}

#[derive(serde::Deserialize)]
struct AssignInput {
    #[serde(default)]
    send: Option<SendOrder>,
}

#[derive(serde::Deserialize)]
struct DeliveredIds<'a> {
    #[serde(borrow)]
    messages: Vec<DeliveredId<'a>>,
}

#[derive(serde::Deserialize)]
struct DeliveredId<'a> {
    #[serde(borrow)]
    message_id: std::borrow::Cow<'a, str>,
}

impl BenchWorker {
    /// When the first refused message is to be sent again, if one is waiting and there is room
    /// to send it (otherwise only an answer can free a place, and the worker waits for lines).
    fn next_retry(&self) -> Option<std::time::Instant> {
        let sending = self.sending.as_ref()?;
        if sending.in_flight.len() as u64 >= sending.order.in_flight.max(1) {
            return None;
        }
        sending.retries.front().map(|(at, _)| *at)
    }

    /// Handles one line from Baton, writing any answer to `out`. True on `shutdown`.
    fn handle(&mut self, line: &str, out: &mut impl std::io::Write) -> bool {
        let Ok(message) = serde_json::from_str::<Incoming<'_>>(line) else { return false };
        let Some(id) = message.id else { return false };
        let Some(method) = message.method else {
            self.answered(&id, message.error.map(|error| error.message));
            return false;
        };
        let result = match method.as_ref() {
            "initialize" => r#"{"deliver_batch":true}"#.to_string(),
            "task/assign" => {
                let order = serde_json::from_str::<WithParams<AssignParams>>(line)
                    .ok()
                    .and_then(|assign| assign.params.input)
                    .and_then(|input| input.send);
                match order {
                    Some(order) if self.sending.is_none() => {
                        self.sending = Some(Sending {
                            task: id,
                            next: order.first,
                            order,
                            in_flight: HashMap::new(),
                            retries: Default::default(),
                            retried_full: 0,
                            failure: None,
                        });
                        self.send_more(out);
                        return false;
                    }
                    _ => r#"{"ok":true}"#.to_string(),
                }
            }
            "message/deliver_batch" => {
                let acked: Vec<std::borrow::Cow<'_, str>> = serde_json::from_str::<WithParams<DeliveredIds<'_>>>(line)
                    .map(|batch| batch.params.messages.into_iter().map(|message| message.message_id).collect())
                    .unwrap_or_default();
                serde_json::json!({ "acked": acked }).to_string()
            }
            _ => "{}".to_string(),
        };
        let _ = writeln!(out, r#"{{"id":{id},"jsonrpc":"2.0","result":{result}}}"#);
        method == "shutdown"
    }

    /// The answer to one of the worker's `message/send` requests.
    fn answered(&mut self, id: &serde_json::Value, error: Option<String>) {
        let Some(sending) = self.sending.as_mut() else { return };
        let Some(number) = id.as_u64().and_then(|id| sending.in_flight.remove(&id)) else { return };
        let Some(error) = error else { return };
        if error.contains("is full") {
            sending.retried_full += 1;
            let at = std::time::Instant::now() + Duration::from_millis(5);
            sending.retries.push_back((at, number));
        } else if sending.failure.is_none() {
            sending.failure = Some(format!("message {number}: {error}"));
        }
    }

    /// Sends messages while fewer than `in_flight` are unanswered; answers the task when all
    /// are answered.
    fn send_more(&mut self, out: &mut impl std::io::Write) {
        let Some(sending) = self.sending.as_mut() else { return };
        let now = std::time::Instant::now();
        while (sending.in_flight.len() as u64) < sending.order.in_flight.max(1) {
            let number = match sending.retries.front() {
                Some((at, number)) if *at <= now => {
                    let number = *number;
                    sending.retries.pop_front();
                    number
                }
                _ if sending.next < sending.order.end => {
                    let number = sending.next;
                    sending.next += sending.order.step.max(1);
                    number
                }
                _ => break,
            };
            let Some(to) =
                sending.order.to.get(((number / sending.order.step.max(1)) as usize) % sending.order.to.len().max(1))
            else {
                sending.failure.get_or_insert_with(|| "no recipients".to_string());
                break;
            };
            // As a JSON string.
            let to = serde_json::Value::from(to.as_str());
            self.next_id += 1;
            let id = self.next_id;
            sending.in_flight.insert(id, number);
            let _ = writeln!(
                out,
                r#"{{"id":{id},"jsonrpc":"2.0","method":"message/send","params":{{"body":"message {number}","data":{{"n":{number}}},"to":{to}}}}}"#
            );
        }
        let done = sending.in_flight.is_empty()
            && sending.retries.is_empty()
            && (sending.next >= sending.order.end || sending.failure.is_some());
        if !done {
            return;
        }
        let Some(sending) = self.sending.take() else { return };
        let id = sending.task;
        let response = match sending.failure {
            Some(failure) => {
                serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": { "code": 1, "message": failure } })
            }
            None => {
                let sent = (sending.order.end.saturating_sub(sending.order.first)).div_ceil(sending.order.step.max(1));
                serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": { "sent": sent, "retried_full": sending.retried_full } })
            }
        };
        let _ = writeln!(out, "{response}");
    }
}

/// Worker processes that are children of this process, with the agent each serves.
fn worker_children() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Some(fields) = baton_runtime::process::proc_stat(pid) else { continue };
        let mut fields = fields.split_whitespace();
        let state = fields.next().unwrap_or_default();
        let ppid = fields.next().and_then(|field| field.parse::<i32>().ok());
        if ppid != Some(me) || state == "Z" {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let agent = environ
            .split(|byte| *byte == 0)
            .find_map(|var| var.strip_prefix(b"BATON_AGENT="))
            .map(|name| String::from_utf8_lossy(name).into_owned());
        if let Some(agent) = agent {
            found.push((pid, agent));
        }
    }
    found
}

pub async fn soak(options: SoakOptions, say: impl Fn(String)) -> Result<SoakReport, String> {
    use baton_core::model::TaskState;
    use baton_store::TaskFilter;

    std::fs::create_dir_all(&options.dir)
        .map_err(|error| format!("cannot create {}: {error}", options.dir.display()))?;
    let command = options.worker_command.iter().map(|arg| format!("{arg:?}")).collect::<Vec<_>>().join(", ");
    let mut text = format!(
        "[orchestration]\nname = \"soak\"\nmax_concurrent_agents = {}\nagent_spawn_timeout = \"2m\"\n",
        options.n_agents * options.concurrency
    );
    for idx in 0..options.n_agents {
        text.push_str(&format!(
            "[[agents]]\nname = \"worker-{idx}\"\nmode = \"worker\"\ncommand = [{command}]\nconcurrency = {}\n\
             heartbeat_timeout = \"20s\"\nrestart_backoff = \"100ms\"\nmax_restarts = 1000\nrestart_window = \"1m\"\n\
             circuit_breaker = {{ failures = 1000000, cooldown = \"1s\" }}\n",
            options.concurrency
        ));
    }
    let plan = config::load("soak.toml", &text, &Default::default()).map_err(|error| error.to_string())?;
    let Launched { store, handle, shutdown, engine } =
        launch(&options.dir.join("soak.db"), Options::default(), plan, worker_runtimes(&options.dir))?;

    let started = Instant::now();
    // Tasks are created while workers are being killed: the kills start with the load.
    let creator = handle.clone();
    let n_tasks = options.n_tasks;
    let creating = tokio::spawn(async move {
        let mut created = 0u64;
        while created < n_tasks {
            let n = (n_tasks - created).min(1000);
            let tasks: Vec<NewTask> =
                (created..created + n).map(|idx| NewTask { max_attempts: 20, ..bench_task(idx) }).collect();
            creator.create_tasks(tasks).await.map_err(|error| error.to_string())?;
            created += n;
        }
        Ok::<(), String>(())
    });

    // Kill a random worker every `kill_every` until every task is done.
    let mut kills: Vec<(i64, String)> = Vec::new();
    let mut progress = handle.progress();
    let mut ticker = tokio::time::interval(options.kill_every);
    ticker.tick().await;
    loop {
        let finished: u64 = progress.borrow_and_update().workstreams.iter().map(|ws| ws.n_finished).sum();
        if finished >= options.n_tasks {
            break;
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { break },
            _ = ticker.tick() => {
                let workers = worker_children();
                if workers.is_empty() {
                    continue;
                }
                let (pid, agent) = workers[rand::random_range(0..workers.len())].clone();
                let at = baton_runtime::Clock::system().now().0;
                if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok() {
                    say(format!("soak: killed {agent} (pid {pid}) with {finished} tasks done"));
                    kills.push((at, agent));
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    creating.await.map_err(|error| error.to_string())??;
    shutdown.cancel();
    engine.await.map_err(|error| error.to_string())?.map_err(|error| error.to_string())?;

    let run = store.latest_run(Some("soak")).await.map_err(|e| e.to_string())?.ok_or("no soak run")?;
    let tasks = store.tasks(&run.id, &TaskFilter::default()).await.map_err(|e| e.to_string())?;
    let all_succeeded =
        tasks.len() as u64 == options.n_tasks && tasks.iter().all(|task| task.state == TaskState::Succeeded);
    let events = store
        .events(&EventQuery { run_id: Some(run.id.clone()), ..Default::default() })
        .await
        .map_err(|e| e.to_string())?;
    let mut completions: HashMap<TaskId, u32> = HashMap::new();
    let mut claims: HashMap<TaskId, Vec<i64>> = HashMap::new();
    let mut interrupted: Vec<(String, TaskId, i64)> = Vec::new();
    let mut n_restarts = 0;
    for event in &events {
        match &event.kind {
            baton_core::EventKind::TaskCompleted { task, .. } => *completions.entry(*task).or_default() += 1,
            baton_core::EventKind::TaskClaimed { task, .. } => claims.entry(*task).or_default().push(event.at.0),
            baton_core::EventKind::TaskFailed { task, agent: Some(agent), reason, .. } if reason.contains("exited") => {
                interrupted.push((agent.clone(), *task, event.at.0));
            }
            baton_core::EventKind::AgentStateChanged { to: baton_core::model::AgentState::Restarting, .. } => {
                n_restarts += 1;
            }
            _ => {}
        }
    }
    let completed_exactly_once = completions.len() as u64 == options.n_tasks && completions.values().all(|&n| n == 1);
    let mut latencies: Vec<i64> = Vec::new();
    for (agent, task, failed_at) in &interrupted {
        // The kill of this agent that caused the failure: the last one before it.
        let Some(killed_at) =
            kills.iter().filter(|(at, name)| name == agent && *at <= *failed_at).map(|(at, _)| *at).max()
        else {
            continue;
        };
        if let Some(reclaimed) = claims.get(task).and_then(|at| at.iter().copied().find(|at| *at >= *failed_at)) {
            latencies.push(reclaimed - killed_at);
        }
    }
    latencies.sort_unstable();
    let percentile = |q: f64| percentile(&latencies, q);
    Ok(SoakReport {
        n_agents: options.n_agents,
        n_tasks: options.n_tasks,
        seconds,
        tasks_per_second: options.n_tasks as f64 / seconds,
        n_kills: kills.len(),
        n_interrupted: interrupted.len(),
        all_succeeded,
        completed_exactly_once,
        n_restarts,
        requeue_p50_ms: percentile(0.5),
        requeue_p99_ms: percentile(0.99),
        requeue_max_ms: latencies.last().copied().unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------------
// Messages between worker agents.

#[derive(Debug, Clone, Serialize)]
pub struct MessagesRun {
    /// Sending: every message durable (stored with its event) and its sender told so, in
    /// messages per second.
    pub sent_per_second: f64,
    /// Sending and delivering: every message acknowledged by its recipient.
    pub delivered_per_second: f64,
    /// Delivery latency, from a message being stored (its `created_at`, taken when the send
    /// reaches the post office) to its acknowledgement being recorded (`acked_at`), in
    /// milliseconds.
    pub latency_p50_ms: i64,
    pub latency_p99_ms: i64,
    pub latency_max_ms: i64,
    /// Sends refused because the recipient's inbox was full, and sent again.
    pub retried_full: u64,
}

/// Who sends the benchmark's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SendFrom {
    /// The worker processes themselves, with `message/send` requests over their pipes (the
    /// protocol's path: the engine, the post office, the store). The default.
    Workers,
    /// Tasks of the benchmark process calling the store directly, as the post office does once it
    /// has resolved the recipients: the store's share alone, for comparison.
    Store,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessagesReport {
    pub n_agents: u32,
    pub n_messages: u64,
    pub from: SendFrom,
    /// Unanswered sends per sender: per worker process, or per task of the benchmark with
    /// [`SendFrom::Store`] (64 of them).
    pub in_flight: u64,
    pub runs: Vec<MessagesRun>,
    /// Medians over the runs, each figure on its own.
    pub sent_per_second: f64,
    pub delivered_per_second: f64,
    pub latency_p50_ms: i64,
    pub latency_p99_ms: i64,
}

/// The median of some figures (the upper one of an even number).
pub fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// The figure at quantile `q` (0 to 1) of `sorted` (nearest rank); zero when there is none.
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    sorted.get(((sorted.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct MessagesOptions {
    pub dir: PathBuf,
    /// The program and arguments that run a worker ([`worker_main`] behind them).
    pub worker_command: Vec<String>,
    pub n_agents: u32,
    pub n_messages: u64,
    /// Runs, each on a fresh store; medians are reported.
    pub repeats: u32,
    pub from: SendFrom,
    /// Unanswered `message/send` requests per worker, at most.
    pub in_flight: u64,
}

impl MessagesOptions {
    /// The published figure's choices: 100,000 messages sent by 8 workers to each other, 64
    /// unanswered sends per worker, three runs.
    pub fn new(dir: PathBuf, worker_command: Vec<String>) -> MessagesOptions {
        MessagesOptions {
            dir,
            worker_command,
            n_agents: 8,
            n_messages: 100_000,
            repeats: 3,
            from: SendFrom::Workers,
            in_flight: 64,
        }
    }
}

/// Durable messages between worker agents, `repeats` times on a fresh store each: `n_messages`
/// sent by the `n_agents` worker processes to each other (or by the benchmark, see
/// [`SendFrom`]), each acknowledged by its recipient. Medians over the runs.
pub async fn messages_with(options: MessagesOptions, say: impl Fn(String)) -> Result<MessagesReport, String> {
    let mut runs = Vec::new();
    for run in 0..options.repeats.max(1) {
        let figures = messages_run(&options, run, &say).await?;
        say(format!(
            "messages run {}: {:.0}/s stored, {:.0}/s acknowledged, delivery latency p50 {} ms, p99 {} ms \
             ({} sends retried after a full inbox)",
            run + 1,
            figures.sent_per_second,
            figures.delivered_per_second,
            figures.latency_p50_ms,
            figures.latency_p99_ms,
            figures.retried_full
        ));
        runs.push(figures);
    }
    let report = MessagesReport {
        n_agents: options.n_agents,
        n_messages: options.n_messages,
        from: options.from,
        in_flight: if options.from == SendFrom::Store { 1 } else { options.in_flight },
        sent_per_second: median(runs.iter().map(|run| run.sent_per_second).collect()),
        delivered_per_second: median(runs.iter().map(|run| run.delivered_per_second).collect()),
        latency_p50_ms: median(runs.iter().map(|run| run.latency_p50_ms).collect()),
        latency_p99_ms: median(runs.iter().map(|run| run.latency_p99_ms).collect()),
        runs,
    };
    say(format!(
        "messages, median of {} runs: {:.0}/s stored, {:.0}/s acknowledged, delivery latency (sent to acknowledged) \
         p50 {} ms, p99 {} ms",
        report.runs.len(),
        report.sent_per_second,
        report.delivered_per_second,
        report.latency_p50_ms,
        report.latency_p99_ms
    ));
    Ok(report)
}

/// The load of worker `idx` of `n_agents` when the workers send: every `n_agents`-th message,
/// to the other workers in turn (to itself when it is alone).
fn send_order(idx: u32, n_agents: u32, n_messages: u64, in_flight: u64) -> SendOrder {
    let to: Vec<String> = if n_agents <= 1 {
        vec![format!("worker-{idx}")]
    } else {
        (1..n_agents).map(|offset| format!("worker-{}", (idx + offset) % n_agents)).collect()
    };
    SendOrder { first: u64::from(idx), step: u64::from(n_agents), end: n_messages, to, in_flight }
}

async fn messages_run(options: &MessagesOptions, run: u32, say: &impl Fn(String)) -> Result<MessagesRun, String> {
    use baton_core::messages::DeliveryState;

    let MessagesOptions { dir, worker_command, n_agents, n_messages, from, in_flight, .. } = options.clone();
    std::fs::create_dir_all(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let command = worker_command.iter().map(|arg| format!("{arg:?}")).collect::<Vec<_>>().join(", ");
    let mut text = "[orchestration]\nname = \"messages\"\n".to_string();
    for idx in 0..n_agents {
        text.push_str(&format!("[[agents]]\nname = \"worker-{idx}\"\nmode = \"worker\"\ncommand = [{command}]\n"));
    }
    let plan = config::load("messages.toml", &text, &Default::default()).map_err(|error| error.to_string())?;
    let Launched { store, handle, shutdown, engine } =
        launch(&dir.join(format!("messages-{run}.db")), Options::default(), plan, worker_runtimes(&dir))?;
    let mut run_id = handle.run_id();
    let run_id = run_id.wait_for(Option::is_some).await.map_err(|e| e.to_string())?.clone().unwrap_or_default();
    // Every worker is started (it has answered `initialize`) before the clock runs: a message
    // to a worker still starting would wait for its first redelivery.
    let waiting_since = Instant::now();
    loop {
        let agents = store.agents(&run_id).await.map_err(|e| e.to_string())?;
        let idle = agents.iter().filter(|agent| agent.state == baton_core::model::AgentState::Idle).count();
        if idle >= n_agents as usize {
            break;
        }
        if waiting_since.elapsed() > Duration::from_secs(60) {
            return Err(format!("only {idle} of {n_agents} workers started within a minute"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say(format!(
        "messages: {n_messages} to {n_agents} workers, sent by {}",
        match from {
            SendFrom::Workers => format!("the workers ({in_flight} in flight each)"),
            SendFrom::Store => "64 tasks of the benchmark calling the store".to_string(),
        }
    ));

    let started = Instant::now();
    let retried_full = match from {
        SendFrom::Workers => send_from_workers(&store, &handle, &run_id, n_agents, n_messages, in_flight).await?,
        SendFrom::Store => send_from_store(&store, &run_id, n_agents, n_messages).await?,
    };
    let sent = started.elapsed().as_secs_f64();
    // Wait until every message is acknowledged (the post office polls; the store is the truth).
    let agents: Vec<String> = (0..n_agents).map(|idx| format!("worker-{idx}")).collect();
    let far = baton_core::Timestamp(i64::MAX / 2);
    while !store.due_deliveries(&run_id, &agents, far, 1).await.map_err(|e| e.to_string())?.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered = started.elapsed().as_secs_f64();
    let deliveries = store.deliveries(&run_id, None, n_messages).await.map_err(|e| e.to_string())?;
    shutdown.cancel();
    engine.await.map_err(|error| error.to_string())?.map_err(|error| error.to_string())?;
    let acked = deliveries.iter().filter(|delivery| delivery.state == DeliveryState::Acked).count() as u64;
    if acked != n_messages {
        return Err(format!("{acked} of {n_messages} messages were acknowledged"));
    }
    let mut latencies: Vec<i64> = deliveries
        .iter()
        .filter_map(|delivery| delivery.acked_at.map(|acked_at| acked_at.0 - delivery.created_at.0))
        .collect();
    latencies.sort_unstable();
    let percentile = |q: f64| percentile(&latencies, q);
    Ok(MessagesRun {
        sent_per_second: n_messages as f64 / sent,
        delivered_per_second: n_messages as f64 / delivered,
        latency_p50_ms: percentile(0.50),
        latency_p99_ms: percentile(0.99),
        latency_max_ms: latencies.last().copied().unwrap_or(0),
        retried_full,
    })
}

/// Each worker gets a task pinned to it whose input is its [`SendOrder`]; it sends its share
/// with `message/send` and answers the task once every send is answered (durable). Returns the
/// sends retried after a full inbox.
async fn send_from_workers(
    store: &Arc<dyn Store>,
    handle: &baton_runtime::engine::EngineHandle,
    run_id: &str,
    n_agents: u32,
    n_messages: u64,
    in_flight: u64,
) -> Result<u64, String> {
    use baton_core::model::TaskState;
    use baton_store::TaskFilter;

    let tasks: Vec<NewTask> = (0..n_agents)
        .map(|idx| {
            let order = send_order(idx, n_agents, n_messages, in_flight);
            NewTask {
                title: format!("worker-{idx} sends its messages"),
                input: serde_json::json!({ "send": order }),
                agent: Some(format!("worker-{idx}")),
                max_attempts: 1,
                ..bench_task(u64::from(idx))
            }
        })
        .collect();
    let ids = handle.create_tasks(tasks).await.map_err(|error| error.to_string())?;
    let mut progress = handle.progress();
    while progress.borrow_and_update().workstreams.iter().map(|ws| ws.n_finished).sum::<u64>() < ids.len() as u64 {
        if progress.changed().await.is_err() {
            return Err("the engine stopped".into());
        }
    }
    let tasks = store.tasks(run_id, &TaskFilter::default()).await.map_err(|e| e.to_string())?;
    let mut retried_full = 0;
    for task in tasks.iter().filter(|task| ids.contains(&task.id)) {
        if task.state != TaskState::Succeeded {
            return Err(format!("{}: {}", task.title, task.error.as_deref().unwrap_or("did not succeed")));
        }
        retried_full +=
            task.result.as_ref().and_then(|result| result.get("retried_full")).and_then(|n| n.as_u64()).unwrap_or(0);
    }
    Ok(retried_full)
}

/// 64 tasks of the benchmark call the store as the post office does once it has resolved the
/// recipients, each waiting for its send to be durable before the next; a full inbox makes the
/// sender wait 5 ms and try again. Returns the sends retried.
async fn send_from_store(store: &Arc<dyn Store>, run_id: &str, n_agents: u32, n_messages: u64) -> Result<u64, String> {
    use baton_core::messages::{NewMessage, Recipient};

    let n_senders = 64u64;
    let mut senders = Vec::new();
    for sender in 0..n_senders {
        let store = Arc::clone(store);
        let run_id = run_id.to_string();
        senders.push(tokio::spawn(async move {
            let mut retried = 0u64;
            let mut idx = sender;
            while idx < n_messages {
                let to = format!("worker-{}", idx % u64::from(n_agents));
                let message = NewMessage {
                    from: "bench".into(),
                    to: Recipient::Agent(to.clone()),
                    body: format!("message {idx}"),
                    data: serde_json::json!({ "n": idx }),
                    task: None,
                    correlation_id: None,
                };
                loop {
                    let now = baton_runtime::Clock::system().now();
                    match store.send_message(&run_id, format!("m{idx}"), message.clone(), vec![to.clone()], now).await {
                        Ok(_) => break,
                        Err(error) if error.kind() == baton_store::ErrorKind::Full => {
                            retried += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(error) => return Err(error.to_string()),
                    }
                }
                idx += n_senders;
            }
            Ok::<u64, String>(retried)
        }));
    }
    let mut retried = 0;
    for sender in senders {
        retried += sender.await.map_err(|error| error.to_string())??;
    }
    Ok(retried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_is_sent_once_by_one_worker_to_another() {
        let n_agents = 3;
        let mut seen = [0u32; 10];
        for idx in 0..n_agents {
            let order = send_order(idx, n_agents, 10, 4);
            assert!(!order.to.contains(&format!("worker-{idx}")), "a worker does not send to itself");
            let mut number = order.first;
            while number < order.end {
                seen[number as usize] += 1;
                number += order.step;
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    fn lines(out: &mut Vec<u8>) -> Vec<serde_json::Value> {
        let text = String::from_utf8(std::mem::take(out)).expect("the worker writes UTF-8");
        text.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect()
    }

    #[test]
    fn the_bench_worker_keeps_its_sends_in_flight_and_answers_its_task_once_all_are_answered() {
        let mut worker = BenchWorker::default();
        let mut out = Vec::new();
        let order = SendOrder { first: 1, step: 2, end: 6, to: vec!["b".into(), "c".into()], in_flight: 2 };
        let assign = serde_json::json!({
            "id": 7, "jsonrpc": "2.0", "method": "task/assign", "params": { "id": 1, "input": { "send": order } }
        });
        assert!(!worker.handle(&assign.to_string(), &mut out));
        let sent = lines(&mut out);
        assert_eq!(sent.len(), 2, "two in flight: {sent:?}");
        assert_eq!(sent[0]["method"], "message/send");
        assert_eq!(sent[0]["params"]["to"], "b");
        assert_eq!(sent[0]["params"]["data"]["n"], 1);
        assert_eq!(sent[1]["params"]["to"], "c");

        // Messages delivered meanwhile are acknowledged.
        let batch = r#"{"id":3,"jsonrpc":"2.0","method":"message/deliver_batch","params":{"messages":[{"message_id":"m1"},{"message_id":"m2"}]}}"#;
        worker.handle(batch, &mut out);
        let acked = lines(&mut out);
        assert_eq!(acked[0]["id"], 3);
        assert_eq!(acked[0]["result"]["acked"], serde_json::json!(["m1", "m2"]));

        // An answer frees a place: the third message goes out; the task is answered after it.
        worker
            .handle(&format!(r#"{{"id":{},"jsonrpc":"2.0","result":{{"message_id":"x"}}}}"#, sent[0]["id"]), &mut out);
        worker.send_more(&mut out);
        let third = lines(&mut out);
        assert_eq!(third.len(), 1);
        assert_eq!(third[0]["params"]["data"]["n"], 5);
        assert_eq!(third[0]["params"]["to"], "b");
        for id in [&sent[1]["id"], &third[0]["id"]] {
            worker.handle(&format!(r#"{{"id":{id},"jsonrpc":"2.0","result":{{"message_id":"x"}}}}"#), &mut out);
        }
        worker.send_more(&mut out);
        let done = lines(&mut out);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0]["id"], 7);
        assert_eq!(done[0]["result"]["sent"], 3);
    }

    #[test]
    fn a_refused_send_fails_the_bench_workers_task() {
        let mut worker = BenchWorker::default();
        let mut out = Vec::new();
        let order = SendOrder { first: 0, step: 1, end: 1, to: vec!["nobody".into()], in_flight: 4 };
        let assign = serde_json::json!({ "id": 9, "method": "task/assign", "params": { "input": { "send": order } } });
        worker.handle(&assign.to_string(), &mut out);
        let sent = lines(&mut out);
        let refusal =
            serde_json::json!({ "id": sent[0]["id"], "error": { "code": -32000, "message": "unknown agent" } });
        worker.handle(&refusal.to_string(), &mut out);
        worker.send_more(&mut out);
        let done = lines(&mut out);
        assert_eq!(done[0]["id"], 9);
        assert_eq!(done[0]["error"]["message"], "message 0: unknown agent");
    }
}
