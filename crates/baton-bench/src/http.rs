//! `baton bench --http`: the task lifecycle through the HTTP API, as remote workers see it.
//!
//! In this process: the SQLite store (a file, `synchronous=FULL` unless asked otherwise), the
//! engine with its run kept open, and `baton serve`'s API on a loopback port, with a plan of
//! remote agents (`runtime = "remote"`). Outside it: worker processes (`baton
//! bench-http-worker`), each a loop of `POST /agent/claim` (a long poll for up to a batch of
//! tasks) and `POST /agent/results` (all of them succeeded; by default the next claim goes out
//! while the last results commit). The benchmark creates the tasks
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
    /// Queue every task first and time only the processing: from the first task handed to a
    /// worker to the last completion being durable.
    pub drain: bool,
    /// Seconds of the latency figure, taken at half of the median throughput (0: none).
    pub latency_seconds: u64,
    /// Results posts a worker keeps in flight: above 1 it claims its next batch while the
    /// last ones commit.
    pub pipeline: u32,
    /// The store to measure instead of a SQLite file per run: a `postgres://` URL.
    pub store_url: Option<String>,
}

/// How a run creates its tasks.
#[derive(Debug, Clone, Copy)]
enum RunMode {
    /// Workers running, every task created as fast as the API takes them.
    Throughput,
    /// Every task created before the workers start.
    Drain,
    /// Tasks created at `rate` per second for `seconds`, each task's way timed.
    Paced { rate: f64, seconds: f64 },
}

/// Per-task latency through the worker processes, at a steady rate below the peak.
#[derive(Debug, Clone, Serialize)]
pub struct HttpLatency {
    /// The rate the tasks were created at (half of the median throughput) and how many.
    pub rate: f64,
    pub n_tasks: u64,
    /// From a task's creation being durable to a worker process holding it (its claim's answer
    /// read), in microseconds.
    pub handed_p50_us: u64,
    pub handed_p90_us: u64,
    pub handed_p99_us: u64,
    pub handed_max_us: u64,
    /// From a task's creation being durable to its completion being durable.
    pub completed_p50_us: u64,
    pub completed_p90_us: u64,
    pub completed_p99_us: u64,
    pub completed_max_us: u64,
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
    /// Paced runs only: each task's way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<HttpLatency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpBenchReport {
    pub synchronous: String,
    pub n_tasks: u64,
    pub create_batch: usize,
    pub n_workers: u32,
    pub n_agents: u32,
    pub claim_batch: u32,
    pub pipeline: u32,
    pub runs: Vec<HttpRun>,
    pub median_tasks_per_second: f64,
    pub median_status_p50_us: u64,
    pub median_status_p99_us: u64,
    pub median_mean_claimed: f64,
    pub median_claim_ms: f64,
    pub median_results_ms: f64,
    /// Whether the runs were drains (tasks queued first, only the processing timed).
    pub drain: bool,
    /// The latency run, at half of the median throughput, if one was asked for.
    pub latency: Option<HttpLatency>,
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
    /// When the first claim that returned tasks was answered (microseconds since the Unix
    /// epoch; 0: never).
    #[serde(default)]
    first_claim_unix_us: u64,
    /// With `--record`: each task and when its claim's answer was read (Unix microseconds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    handed: Vec<(i64, u64)>,
}

/// Microseconds since the Unix epoch: the clock the benchmark and its worker processes share.
fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_micros() as u64)
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

async fn spawn_workers(options: &HttpBenchOptions, url: &str, record: bool) -> Result<Vec<Worker>, Error> {
    let exe = std::env::current_exe().context("finding the baton binary")?;
    let mut workers = Vec::new();
    for idx in 0..options.n_workers {
        let mut child = tokio::process::Command::new(&exe)
            .args(["bench-http-worker", "--url", url, "--agent", &format!("w{}", idx % options.n_agents)])
            .args(["--batch", &options.claim_batch.to_string(), "--pipeline", &options.pipeline.to_string()])
            .args(if record { &["--record"][..] } else { &[] })
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
        if stats.first_claim_unix_us != 0 {
            total.first_claim_unix_us = match total.first_claim_unix_us {
                0 => stats.first_claim_unix_us,
                first => first.min(stats.first_claim_unix_us),
            };
        }
        total.handed.extend(stats.handed);
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

async fn one_run(options: &HttpBenchOptions, run: u32, mode: RunMode) -> Result<HttpRun, Error> {
    let path = options.dir.join(format!("http-{run}.db"));
    let store = crate::lifecycle::figure_store(
        &path,
        Options { synchronous: options.synchronous },
        options.store_url.as_deref(),
    )
    .await
    .map_err(|e| Error::failed(e.to_string()))?;
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
    let mut engine_options = EngineOptions::new(plan.clone(), Arc::clone(&store), runtimes);
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
        store: Arc::clone(&store),
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

    let record = matches!(mode, RunMode::Paced { .. });
    let n_tasks = match mode {
        RunMode::Paced { rate, seconds } => ((rate * seconds).round() as u64).max(1),
        RunMode::Throughput | RunMode::Drain => options.n_tasks,
    };

    // Completions, counted from the committed events; subscribed before the first task exists.
    // A paced run also notes when each task's creation and completion became durable.
    let mut events = store.subscribe();
    let counting_store = Arc::clone(&store);
    let counting_run = run_id.clone();
    let completions = tokio::spawn(async move {
        let mut n_done = 0u64;
        let mut times: std::collections::HashMap<i64, (u64, u64)> = std::collections::HashMap::new();
        while n_done < n_tasks {
            match events.recv().await {
                Ok(event) => match event.kind {
                    EventKind::TaskCompleted { task, .. } => {
                        n_done += 1;
                        if record {
                            times.entry(task.0).or_default().1 = unix_us();
                        }
                    }
                    EventKind::TaskCreated { task, .. } if record => {
                        times.entry(task.0).or_default().0 = unix_us();
                    }
                    _ => {}
                },
                // Events were missed: the store's counts decide (and those tasks go untimed).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let counts = counting_store.task_counts(&counting_run).await.map_err(|e| e.to_string())?;
                    n_done = counts.iter().filter(|(state, _)| state.is_terminal()).map(|(_, n)| n).sum();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err("the store closed".to_string()),
            }
        }
        Ok::<(Instant, u64, std::collections::HashMap<i64, (u64, u64)>), String>((Instant::now(), unix_us(), times))
    });

    let client = reqwest::Client::new();
    let create = |from: u64, n: u64| {
        let tasks: Vec<serde_json::Value> = (from..from + n)
            .map(|idx| {
                serde_json::json!({
                    "key": format!("t{idx}"), "title": format!("task {idx}"), "input": { "n": idx }, "requires": ["work"],
                })
            })
            .collect();
        let request = client.post(format!("{url}/tasks/batch")).json(&serde_json::json!({ "tasks": tasks }));
        async move {
            let response = request.send().await.context("POST /tasks/batch")?;
            let status = response.status();
            if status != reqwest::StatusCode::CREATED {
                let text = response.text().await.unwrap_or_default();
                return Err(Error::failed(format!("POST /tasks/batch: {status} {text}")));
            }
            Ok(())
        }
    };
    let create_all = || async {
        let mut created = 0u64;
        while created < n_tasks {
            let n = (n_tasks - created).min(options.create_batch as u64);
            create(created, n).await?;
            created += n;
        }
        Ok::<(), Error>(())
    };

    let poll_stop = CancellationToken::new();
    let workers = match mode {
        RunMode::Drain => {
            create_all().await?;
            spawn_workers(options, &url, record).await?
        }
        RunMode::Throughput | RunMode::Paced { .. } => spawn_workers(options, &url, record).await?,
    };
    let started = Instant::now();
    let poller = tokio::spawn(poll_status(reqwest::Client::new(), format!("{url}/status"), poll_stop.clone()));
    match mode {
        RunMode::Throughput => create_all().await?,
        RunMode::Drain => {}
        RunMode::Paced { rate, .. } => {
            // Every 2 ms, the tasks due by then: a steady stream, not bursts of a batch.
            let mut created = 0u64;
            while created < n_tasks {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(n_tasks);
                if due > created {
                    let n = (due - created).min(options.create_batch as u64);
                    create(created, n).await?;
                    created += n;
                }
            }
        }
    }
    let (finished, finished_unix_us, times) = tokio::time::timeout(Duration::from_secs(300), completions)
        .await
        .map_err(|_| Error::failed("the tasks did not all complete within 5 minutes"))?
        .map_err(|error| Error::failed(error.to_string()))?
        .map_err(Error::failed)?;
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
    if n_succeeded != n_tasks {
        return Err(Error::failed(format!("{n_succeeded} of {n_tasks} tasks succeeded")));
    }
    let seconds = match mode {
        RunMode::Drain => finished_unix_us.saturating_sub(stats.first_claim_unix_us) as f64 / 1e6,
        RunMode::Throughput | RunMode::Paced { .. } => finished.duration_since(started).as_secs_f64(),
    };
    let latency = match mode {
        RunMode::Paced { rate, .. } => {
            let mut handed = Vec::new();
            let mut completed = Vec::new();
            for (task, at) in &stats.handed {
                if let Some(&(created, done)) = times.get(task)
                    && created != 0
                    && done != 0
                {
                    handed.push(at.saturating_sub(created));
                    completed.push(done.saturating_sub(created));
                }
            }
            handed.sort_unstable();
            completed.sort_unstable();
            Some(HttpLatency {
                rate,
                n_tasks: handed.len() as u64,
                handed_p50_us: percentile(&handed, 0.50),
                handed_p90_us: percentile(&handed, 0.90),
                handed_p99_us: percentile(&handed, 0.99),
                handed_max_us: handed.last().copied().unwrap_or(0),
                completed_p50_us: percentile(&completed, 0.50),
                completed_p90_us: percentile(&completed, 0.90),
                completed_p99_us: percentile(&completed, 0.99),
                completed_max_us: completed.last().copied().unwrap_or(0),
            })
        }
        RunMode::Throughput | RunMode::Drain => None,
    };

    latencies.sort_unstable();
    let percentile = |q: f64| percentile(&latencies, q);
    let n_claims = stats.claims - stats.empty_claims;
    Ok(HttpRun {
        seconds,
        tasks_per_second: n_tasks as f64 / seconds,
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
        latency,
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
        let mode = if options.drain { RunMode::Drain } else { RunMode::Throughput };
        let figure = one_run(&options, run, mode).await?;
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
    let median_tasks_per_second = median(runs.iter().map(|run| run.tasks_per_second).collect());
    let latency = if options.latency_seconds == 0 {
        None
    } else {
        let rate = median_tasks_per_second / 2.0;
        let paced = RunMode::Paced { rate, seconds: options.latency_seconds as f64 };
        let figure = one_run(&options, options.repeats.max(1), paced).await?;
        let latency = figure.latency.context("the paced run's latency")?;
        errln!(
            out,
            "latency run: {} tasks at {:.0} tasks/s; created → handed to a worker p50 {:.2} ms, p99 {:.2} ms; \
             → completion recorded p50 {:.2} ms, p99 {:.2} ms",
            latency.n_tasks,
            latency.rate,
            latency.handed_p50_us as f64 / 1000.0,
            latency.handed_p99_us as f64 / 1000.0,
            latency.completed_p50_us as f64 / 1000.0,
            latency.completed_p99_us as f64 / 1000.0,
        );
        Some(latency)
    };
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
        pipeline: options.pipeline,
        median_tasks_per_second,
        median_status_p50_us: median(runs.iter().map(|run| run.status_p50_us).collect()),
        median_status_p99_us: median(runs.iter().map(|run| run.status_p99_us).collect()),
        median_mean_claimed: median(runs.iter().map(|run| run.mean_claimed).collect()),
        median_claim_ms: median(runs.iter().map(|run| run.mean_claim_ms).collect()),
        median_results_ms: median(runs.iter().map(|run| run.mean_results_ms).collect()),
        drain: options.drain,
        latency,
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
        "  {} tasks, {} worker processes on {} remote agents; median {:.0} tasks/s over {} run(s){}",
        report.n_tasks,
        report.n_workers,
        report.n_agents,
        report.median_tasks_per_second,
        report.runs.len(),
        if report.drain {
            " (drain: tasks queued first, from the first handed to a worker to the last completion)"
        } else {
            ""
        }
    );
    outln!(
        out,
        "  batches: {} tasks per create, claims of at most {} (median {:.1} tasks per claim), results posted as claimed, \
         {} results post(s) in flight per worker",
        report.create_batch,
        report.claim_batch,
        report.median_mean_claimed,
        report.pipeline
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
    if let Some(latency) = &report.latency {
        outln!(
            out,
            "per-task latency at half of that ({:.0} tasks/s, {} tasks, timed from each task's creation being durable):",
            latency.rate,
            latency.n_tasks
        );
        outln!(
            out,
            "  handed to a worker process: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latency.handed_p50_us as f64 / 1000.0,
            latency.handed_p90_us as f64 / 1000.0,
            latency.handed_p99_us as f64 / 1000.0,
            latency.handed_max_us as f64 / 1000.0
        );
        outln!(
            out,
            "  its completion recorded (durable): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latency.completed_p50_us as f64 / 1000.0,
            latency.completed_p90_us as f64 / 1000.0,
            latency.completed_p99_us as f64 / 1000.0,
            latency.completed_max_us as f64 / 1000.0
        );
    }
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
/// hands them all in as succeeded in one `POST /agent/results` (with `pipeline` > 1, without
/// waiting for that answer before the next claim, up to `pipeline` posts in flight; what it
/// claimed is always handed in before it stops), and again, until its stdin
/// closes or the server goes away (connection refused, or `409`: the agent stopped). Prints
/// `ready` when it starts and its counts as one JSON line when it stops.
///
/// One current-thread runtime on a thread of its own: a worker is a single sequential client,
/// and the benchmark runs several of them on the same cores as the server.
pub async fn worker<O: Output + 'static>(
    url: String,
    agent: String,
    batch: u32,
    pipeline: u32,
    record: bool,
    out: O,
) -> Result<u8, Error> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("a runtime")?;
        runtime.block_on(work(url, agent, batch, pipeline, record, &out))
    })
    .await
    .map_err(|error| Error::failed(error.to_string()))?
}

async fn work(
    url: String,
    agent: String,
    batch: u32,
    pipeline: u32,
    record: bool,
    out: &dyn Output,
) -> Result<u8, Error> {
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
    // Results posts in flight, each answered once its outcomes are durable: with `pipeline` > 1
    // the worker claims its next batch while the last ones commit.
    let mut posts: tokio::task::JoinSet<Result<u64, Error>> = tokio::task::JoinSet::new();
    let pipeline = pipeline.max(1) as usize;
    loop {
        while posts.len() >= pipeline {
            if let Some(posted) = posts.join_next().await {
                stats.results_us += posted.map_err(|error| Error::failed(error.to_string()))??;
                stats.result_posts += 1;
            }
        }
        if stop.is_cancelled() {
            break;
        }
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
        let handed = unix_us();
        if stats.first_claim_unix_us == 0 {
            stats.first_claim_unix_us = handed;
        }
        if record {
            stats.handed.extend(claimed.tasks.iter().map(|claimed| (claimed.task.id, handed)));
        }
        stats.claimed += claimed.tasks.len() as u64;
        stats.claim_us += claim_sent.elapsed().as_micros() as u64;
        let results: Vec<serde_json::Value> = claimed
            .tasks
            .iter()
            .map(|claimed| serde_json::json!({ "task": claimed.task.id, "attempt": claimed.attempt, "status": "succeeded" }))
            .collect();
        let request = client.post(&results_url).json(&serde_json::json!({ "agent": agent, "results": results }));
        let agent = agent.clone();
        posts.spawn(async move {
            let results_sent = Instant::now();
            let response =
                request.send().await.with_context(|| format!("bench-http-worker {agent}: POST /agent/results"))?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(Error::failed(format!("bench-http-worker {agent}: POST /agent/results: {status} {text}")));
            }
            // Read to the end, so that the connection is reused.
            let _ = response.bytes().await;
            Ok(results_sent.elapsed().as_micros() as u64)
        });
    }
    // What was claimed is handed in before the worker stops.
    while let Some(posted) = posts.join_next().await {
        stats.results_us += posted.map_err(|error| Error::failed(error.to_string()))??;
        stats.result_posts += 1;
    }
    outln!(out, "{}", serde_json::to_string(&stats).context("serializing")?);
    Ok(0)
}
