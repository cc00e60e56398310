//! `baton bench --http`: the task lifecycle through the HTTP API, as remote workers see it.
//!
//! In this process: the SQLite store (a file, `synchronous=FULL` unless asked otherwise), the
//! engine with its run kept open, and `baton serve`'s API on a loopback port, with a plan of
//! remote agents (`runtime = "remote"`). Outside it: worker processes (`baton
//! bench-http-worker`), each a loop of `POST /agent/claim` (a long poll for up to a batch of
//! tasks) and `POST /agent/results` (all of them succeeded). The benchmark creates the tasks
//! with `POST /tasks/batch` and, meanwhile, asks `GET /status` over and over, one request at a
//! time, to see how an operator's reads fare under that load.
//!
//! Everything a task goes through is real: JSON over TCP both ways, the gate (auth, metrics,
//! the audit log of every mutating request), the engine, the hub's leases, group commit and
//! the events. Only the workers' own work is nothing.

#![allow(clippy::disallowed_methods, reason = "the benchmark starts `baton` workers as real processes")]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::{median, percentile};
use baton_core::EventKind;
use baton_core::model::TaskState;
use baton_runtime::engine::{self, Engine, EngineOptions};
use baton_runtime::process::ProcessEnv;
use baton_runtime::remote::RemoteHub;
use baton_server::{AppState, ServerOptions};
use baton_store::sqlite::{Options, Synchronous};
use baton_store::{SqliteStore, Store};

use crate::{Error, Output};

/// What `baton bench --http` measures, and with how much.
#[derive(Debug, Clone)]
pub struct HttpBenchOptions {
    pub dir: PathBuf,
    pub synchronous: Synchronous,
    pub n_tasks: u64,
    /// Tasks per `POST /tasks/batch`.
    pub create_batch: usize,
    /// Worker processes.
    pub n_workers: u32,
    /// Remote agents; worker `i` serves agent `w{i % n_agents}`.
    pub n_agents: u32,
    /// `max` of each claim, and so the size of each `POST /agent/results`.
    pub claim_batch: u32,
    pub repeats: u32,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRun {
    /// From the first create request to the last completion being durable.
    pub seconds: f64,
    pub tasks_per_second: f64,
    /// `GET /status` requests answered during the run, and their latency.
    pub n_status: usize,
    pub status_p50_us: u64,
    pub status_p99_us: u64,
    pub status_max_us: u64,
    /// Claims that returned at least one task, and the tasks they returned on average (the
    /// batch actually used, at most the claim batch).
    pub n_claims: u64,
    pub n_empty_claims: u64,
    pub mean_claimed: f64,
    pub n_result_posts: u64,
    /// Mean time from sending a claim that returned tasks to its answer, and from sending the
    /// results to the answer that they are recorded (durable), in milliseconds.
    pub mean_claim_ms: f64,
    pub mean_results_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpBenchReport {
    pub synchronous: String,
    pub n_tasks: u64,
    pub create_batch: usize,
    pub n_workers: u32,
    pub n_agents: u32,
    pub claim_batch: u32,
    pub runs: Vec<HttpRun>,
    pub median_tasks_per_second: f64,
    pub median_status_p50_us: u64,
    pub median_status_p99_us: u64,
    pub median_mean_claimed: f64,
    pub median_claim_ms: f64,
    pub median_results_ms: f64,
}

/// What a worker process prints on its way out: its counts, as one JSON line.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerStats {
    claims: u64,
    empty_claims: u64,
    claimed: u64,
    result_posts: u64,
    /// Time spent waiting for answers to claims that returned tasks, and to result posts.
    claim_us: u64,
    results_us: u64,
}

fn plan(options: &HttpBenchOptions) -> Result<baton_core::config::Plan, Error> {
    // Enough slots that a worker finds its next batch queued while it hands in the last one.
    let workers_per_agent = options.n_workers.div_ceil(options.n_agents);
    let concurrency = (4 * options.claim_batch * workers_per_agent).max(256);
    let mut text =
        format!("[orchestration]\nname = \"bench-http\"\nmax_concurrent_agents = {}\n", concurrency * options.n_agents);
    for idx in 0..options.n_agents {
        text.push_str(&format!(
            "[[agents]]\nname = \"w{idx}\"\nruntime = \"remote\"\ncapabilities = [\"work\"]\nconcurrency = {concurrency}\n\
             heartbeat_timeout = \"10m\"\n"
        ));
    }
    baton_core::config::load("bench-http.toml", &text, &Default::default())
        .map_err(|error| Error::failed(format!("the benchmark plan is not valid: {error}")))
}

/// A worker process and its pipes: its stdin closing tells it to stop.
struct Worker {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn spawn_workers(options: &HttpBenchOptions, url: &str) -> Result<Vec<Worker>, Error> {
    let exe = std::env::current_exe().context("finding the baton binary")?;
    let mut workers = Vec::new();
    for idx in 0..options.n_workers {
        let mut child = tokio::process::Command::new(&exe)
            .args(["bench-http-worker", "--url", url, "--agent", &format!("w{}", idx % options.n_agents)])
            .args(["--batch", &options.claim_batch.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a bench-http-worker")?;
        let stdout = child.stdout.take().context("the worker's stdout")?;
        workers.push(Worker { child, stdout: BufReader::new(stdout).lines() });
    }
    // Each says `ready` once its client is built, so that process start-up is not in the figure.
    for worker in &mut workers {
        let line = tokio::time::timeout(Duration::from_secs(10), worker.stdout.next_line())
            .await
            .context("waiting for a worker to start")?
            .context("reading a worker's output")?;
        if line.as_deref() != Some("ready") {
            return Err(Error::failed(format!("a bench-http-worker did not start: {line:?}")));
        }
    }
    Ok(workers)
}

/// Closes the workers' stdin and collects their counts.
async fn stop_workers(workers: Vec<Worker>) -> Result<WorkerStats, Error> {
    let mut total = WorkerStats::default();
    let mut running = Vec::new();
    for mut worker in workers {
        drop(worker.child.stdin.take());
        running.push(worker);
    }
    for mut worker in running {
        let line = tokio::time::timeout(Duration::from_secs(10), worker.stdout.next_line())
            .await
            .context("waiting for a worker to stop")?
            .context("reading a worker's output")?
            .unwrap_or_default();
        let stats: WorkerStats =
            serde_json::from_str(&line).with_context(|| format!("a bench-http-worker's counts: {line:?}"))?;
        total.claims += stats.claims;
        total.empty_claims += stats.empty_claims;
        total.claimed += stats.claimed;
        total.result_posts += stats.result_posts;
        total.claim_us += stats.claim_us;
        total.results_us += stats.results_us;
        let status = worker.child.wait().await.context("waiting for a worker")?;
        if !status.success() {
            return Err(Error::failed(format!("a bench-http-worker failed: {status}")));
        }
    }
    Ok(total)
}

/// Asks `GET /status` one request at a time until `stop`; the latency of each.
async fn poll_status(client: reqwest::Client, url: String, stop: CancellationToken) -> Result<Vec<u64>, String> {
    let mut latencies = Vec::new();
    while !stop.is_cancelled() {
        let sent = Instant::now();
        let response = client.get(&url).send().await.map_err(|error| error.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        if !status.is_success() {
            return Err(format!("GET /status: {status} {}", String::from_utf8_lossy(&body)));
        }
        latencies.push(sent.elapsed().as_micros() as u64);
    }
    Ok(latencies)
}

async fn one_run(options: &HttpBenchOptions, run: u32) -> Result<HttpRun, Error> {
    let path = options.dir.join(format!("http-{run}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = Arc::new(
        SqliteStore::open(&path, Options { synchronous: options.synchronous })
            .map_err(|e| Error::failed(e.to_string()))?,
    );
    let plan = plan(options)?;
    let clock = baton_runtime::Clock::system();
    let hub = RemoteHub::new(clock);
    let env = std::env::vars().filter(|(key, _)| key == "PATH" || key == "HOME").collect();
    let runtimes = hub.runtimes(engine::process_runtimes(ProcessEnv {
        base_dir: options.dir.clone(),
        log_dir: options.dir.join("logs"),
        env,
        registry: None,
        api: None,
        mcp_servers: Vec::new(),
    }));
    let mut engine_options = EngineOptions::new(plan.clone(), Arc::clone(&store) as Arc<dyn Store>, runtimes);
    engine_options.keep_open = true;
    engine_options.fresh = true;
    engine_options.clock = clock;
    let (engine, handle) = Engine::new(engine_options);
    let engine_stop = CancellationToken::new();
    let mut run_id = handle.run_id();
    let engine_task = tokio::spawn(engine.run(engine_stop.clone()));
    let run_id = run_id
        .wait_for(Option::is_some)
        .await
        .map_err(|_| Error::failed("the engine stopped before opening its run"))?
        .clone()
        .unwrap_or_default();

    let server_stop = CancellationToken::new();
    let max_request_size = 16 * 1024 * 1024;
    let state = AppState::new(ServerOptions {
        store: Arc::clone(&store) as Arc<dyn Store>,
        engine: handle.clone(),
        hub,
        run_id: run_id.clone(),
        plan,
        auth: None,
        rate_limit: None,
        max_request_size,
        log_dir: options.dir.join("logs"),
        clock,
        shutdown: server_stop.clone(),
    });
    let listener = baton_server::bind("127.0.0.1:0").await.map_err(|error| Error::failed(error.to_string()))?;
    let url = format!("http://{}", listener.local_addr().context("the server's address")?);
    let server = tokio::spawn(baton_server::serve(
        listener,
        state,
        max_request_size,
        None,
        baton_server::ConnectionLimits::default(),
        server_stop.clone(),
    ));

    let workers = spawn_workers(options, &url).await?;

    // Completions, counted from the committed events; subscribed before the first task exists.
    let mut events = store.subscribe();
    let n_tasks = options.n_tasks;
    let counting_store = Arc::clone(&store);
    let counting_run = run_id.clone();
    let completions = tokio::spawn(async move {
        let mut n_done = 0u64;
        while n_done < n_tasks {
            match events.recv().await {
                Ok(event) => {
                    if matches!(event.kind, EventKind::TaskCompleted { .. }) {
                        n_done += 1;
                    }
                }
                // Events were missed: the store's counts decide.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let counts = counting_store.task_counts(&counting_run).await.map_err(|e| e.to_string())?;
                    n_done = counts.iter().filter(|(state, _)| state.is_terminal()).map(|(_, n)| n).sum();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err("the store closed".to_string()),
            }
        }
        Ok::<Instant, String>(Instant::now())
    });

    let client = reqwest::Client::new();
    let poll_stop = CancellationToken::new();
    let started = Instant::now();
    let poller = tokio::spawn(poll_status(reqwest::Client::new(), format!("{url}/status"), poll_stop.clone()));
    let mut created = 0u64;
    while created < options.n_tasks {
        let n = (options.n_tasks - created).min(options.create_batch as u64);
        let tasks: Vec<serde_json::Value> = (created..created + n)
            .map(|idx| {
                serde_json::json!({
                    "key": format!("t{idx}"), "title": format!("task {idx}"), "input": { "n": idx }, "requires": ["work"],
                })
            })
            .collect();
        let response = client
            .post(format!("{url}/tasks/batch"))
            .json(&serde_json::json!({ "tasks": tasks }))
            .send()
            .await
            .context("POST /tasks/batch")?;
        let status = response.status();
        if status != reqwest::StatusCode::CREATED {
            let text = response.text().await.unwrap_or_default();
            return Err(Error::failed(format!("POST /tasks/batch: {status} {text}")));
        }
        created += n;
    }
    let finished = tokio::time::timeout(Duration::from_secs(300), completions)
        .await
        .map_err(|_| Error::failed("the tasks did not all complete within 5 minutes"))?
        .map_err(|error| Error::failed(error.to_string()))?
        .map_err(Error::failed)?;
    let seconds = finished.duration_since(started).as_secs_f64();
    poll_stop.cancel();
    let mut latencies = poller.await.map_err(|error| Error::failed(error.to_string()))?.map_err(Error::failed)?;

    let counts = store.task_counts(&run_id).await.map_err(|error| Error::failed(error.to_string()))?;
    let n_succeeded = counts.iter().find(|(state, _)| *state == TaskState::Succeeded).map_or(0, |(_, n)| *n);

    // The workers stop first (their stdin closes; a claim waiting is abandoned), then the
    // server, then the engine.
    let stats = stop_workers(workers).await?;
    server_stop.cancel();
    engine_stop.cancel();
    server
        .await
        .map_err(|error| Error::failed(error.to_string()))?
        .map_err(|error| Error::failed(error.to_string()))?;
    engine_task
        .await
        .map_err(|error| Error::failed(error.to_string()))?
        .map_err(|error| Error::failed(error.to_string()))?;
    if n_succeeded != options.n_tasks {
        return Err(Error::failed(format!("{n_succeeded} of {} tasks succeeded", options.n_tasks)));
    }

    latencies.sort_unstable();
    let percentile = |q: f64| percentile(&latencies, q);
    let n_claims = stats.claims - stats.empty_claims;
    Ok(HttpRun {
        seconds,
        tasks_per_second: options.n_tasks as f64 / seconds,
        n_status: latencies.len(),
        status_p50_us: percentile(0.50),
        status_p99_us: percentile(0.99),
        status_max_us: latencies.last().copied().unwrap_or(0),
        n_claims,
        n_empty_claims: stats.empty_claims,
        mean_claimed: if n_claims == 0 { 0.0 } else { stats.claimed as f64 / n_claims as f64 },
        n_result_posts: stats.result_posts,
        mean_claim_ms: if n_claims == 0 { 0.0 } else { stats.claim_us as f64 / n_claims as f64 / 1000.0 },
        mean_results_ms: if stats.result_posts == 0 {
            0.0
        } else {
            stats.results_us as f64 / stats.result_posts as f64 / 1000.0
        },
    })
}

pub async fn bench(options: HttpBenchOptions, json: bool, out: &dyn Output) -> Result<u8, Error> {
    if options.n_workers == 0 || options.n_agents == 0 || options.claim_batch == 0 || options.n_tasks == 0 {
        return Err(Error::usage("--tasks, --workers, --remote-agents and --claim-batch must be at least 1"));
    }
    if options.claim_batch > 1000 {
        return Err(Error::usage("--claim-batch must be at most 1000 (the API's limit per claim)"));
    }
    std::fs::create_dir_all(&options.dir)
        .map_err(|error| Error::failed(format!("cannot create {}: {error}", options.dir.display())))?;
    let mut runs = Vec::new();
    for run in 0..options.repeats.max(1) {
        let figure = one_run(&options, run).await?;
        errln!(
            out,
            "http run {}: {} tasks in {:.2}s, {:.0} tasks/s; GET /status p50 {:.2} ms, p99 {:.2} ms ({} requests); \
             {:.1} tasks per claim, a claim answered in {:.1} ms and its results recorded in {:.1} ms on average",
            run + 1,
            options.n_tasks,
            figure.seconds,
            figure.tasks_per_second,
            figure.status_p50_us as f64 / 1000.0,
            figure.status_p99_us as f64 / 1000.0,
            figure.n_status,
            figure.mean_claimed,
            figure.mean_claim_ms,
            figure.mean_results_ms,
        );
        runs.push(figure);
    }
    let report = HttpBenchReport {
        synchronous: match options.synchronous {
            Synchronous::Full => "full".into(),
            Synchronous::Normal => "normal".into(),
        },
        n_tasks: options.n_tasks,
        create_batch: options.create_batch,
        n_workers: options.n_workers,
        n_agents: options.n_agents,
        claim_batch: options.claim_batch,
        median_tasks_per_second: median(runs.iter().map(|run| run.tasks_per_second).collect()),
        median_status_p50_us: median(runs.iter().map(|run| run.status_p50_us).collect()),
        median_status_p99_us: median(runs.iter().map(|run| run.status_p99_us).collect()),
        median_mean_claimed: median(runs.iter().map(|run| run.mean_claimed).collect()),
        median_claim_ms: median(runs.iter().map(|run| run.mean_claim_ms).collect()),
        median_results_ms: median(runs.iter().map(|run| run.mean_results_ms).collect()),
        runs,
    };
    if json {
        outln!(out, "{}", serde_json::to_string_pretty(&report).context("serializing")?);
        return Ok(0);
    }
    outln!(
        out,
        "task lifecycle over HTTP (create via POST /tasks/batch, claim and results via the agent API; synchronous={}):",
        report.synchronous
    );
    outln!(
        out,
        "  {} tasks, {} worker processes on {} remote agents; median {:.0} tasks/s over {} run(s)",
        report.n_tasks,
        report.n_workers,
        report.n_agents,
        report.median_tasks_per_second,
        report.runs.len()
    );
    outln!(
        out,
        "  batches: {} tasks per create, claims of at most {} (median {:.1} tasks per claim), results posted as claimed",
        report.create_batch,
        report.claim_batch,
        report.median_mean_claimed
    );
    outln!(
        out,
        "  a worker's cycle: a claim answered in {:.1} ms, its results recorded (durable) in {:.1} ms (means, median run)",
        report.median_claim_ms,
        report.median_results_ms
    );
    outln!(
        out,
        "GET /status under that load, one request at a time: median p50 {:.2} ms, p99 {:.2} ms",
        report.median_status_p50_us as f64 / 1000.0,
        report.median_status_p99_us as f64 / 1000.0
    );
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// The worker process.

#[derive(Deserialize)]
struct ClaimBody {
    tasks: Vec<ClaimedTask>,
}

/// Only what the worker needs of a claimed task; serde skips the rest.
#[derive(Deserialize)]
struct ClaimedTask {
    task: ClaimedRecord,
    attempt: u32,
}

#[derive(Deserialize)]
struct ClaimedRecord {
    id: i64,
}

/// `baton bench-http-worker`: claims up to `batch` tasks for `agent` (a one-second long poll),
/// hands them all in as succeeded in one `POST /agent/results`, and again, until its stdin
/// closes or the server goes away (connection refused, or `409`: the agent stopped). Prints
/// `ready` when it starts and its counts as one JSON line when it stops.
///
/// One current-thread runtime on a thread of its own: a worker is a single sequential client,
/// and the benchmark runs several of them on the same cores as the server.
pub async fn worker<O: Output + 'static>(url: String, agent: String, batch: u32, out: O) -> Result<u8, Error> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("a runtime")?;
        runtime.block_on(work(url, agent, batch, &out))
    })
    .await
    .map_err(|error| Error::failed(error.to_string()))?
}

async fn work(url: String, agent: String, batch: u32, out: &dyn Output) -> Result<u8, Error> {
    let stop = CancellationToken::new();
    let stdin_closed = stop.clone();
    // Reading stdin to its end is a blocking wait; a thread of its own does it.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        stdin_closed.cancel();
    });
    let client = reqwest::Client::new();
    outln!(out, "ready");
    let mut stats = WorkerStats::default();
    let claim_url = format!("{url}/agent/claim");
    let results_url = format!("{url}/agent/results");
    let claim = serde_json::json!({ "agent": agent, "max": batch, "wait_ms": 1000 });
    while !stop.is_cancelled() {
        let claim_sent = Instant::now();
        let response = tokio::select! {
            response = client.post(&claim_url).json(&claim).send() => response,
            () = stop.cancelled() => break,
        };
        let response = match response {
            Ok(response) => response,
            // The server went away: the benchmark is over.
            Err(error) if error.is_connect() || stop.is_cancelled() => break,
            Err(error) => return Err(Error::failed(format!("bench-http-worker {agent}: POST /agent/claim: {error}"))),
        };
        let status = response.status();
        if status == reqwest::StatusCode::CONFLICT {
            break;
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(Error::failed(format!("bench-http-worker {agent}: POST /agent/claim: {status} {text}")));
        }
        let claimed: ClaimBody = response.json().await.context("a claim's answer")?;
        stats.claims += 1;
        if claimed.tasks.is_empty() {
            stats.empty_claims += 1;
            continue;
        }
        stats.claimed += claimed.tasks.len() as u64;
        stats.claim_us += claim_sent.elapsed().as_micros() as u64;
        let results: Vec<serde_json::Value> = claimed
            .tasks
            .iter()
            .map(|claimed| serde_json::json!({ "task": claimed.task.id, "attempt": claimed.attempt, "status": "succeeded" }))
            .collect();
        let results_sent = Instant::now();
        let response = client
            .post(&results_url)
            .json(&serde_json::json!({ "agent": agent, "results": results }))
            .send()
            .await
            .with_context(|| format!("bench-http-worker {agent}: POST /agent/results"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(Error::failed(format!("bench-http-worker {agent}: POST /agent/results: {status} {text}")));
        }
        // Read to the end, so that the connection is reused.
        let _ = response.bytes().await;
        stats.result_posts += 1;
        stats.results_us += results_sent.elapsed().as_micros() as u64;
    }
    outln!(out, "{}", serde_json::to_string(&stats).context("serializing")?);
    Ok(0)
}
