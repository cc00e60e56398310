//! `baton bench --restart`: how long `baton serve` takes to serve again on a store that holds a
//! long run — by default 1,000,000 finished tasks and 1,000 unfinished ones — and how much
//! memory it holds once it does.
//!
//! The store is filled once, straight through SQL ([`baton_store::bulk`]), and copied for each
//! measured restart. Each restart is the real binary, `baton serve`, started as a child process
//! on a loopback port it picks: the clock runs from the spawn to `GET /health` answering 200
//! ("serving"), and on to the moment every unfinished task has been claimed over the agent API
//! by its remote agent ("claimable": the engine has loaded them, found their dependencies
//! done, and claimed them durably). The child's resident memory (`VmRSS`) and its peak
//! (`VmHWM`) are then read from `/proc`.

#![allow(clippy::disallowed_methods, reason = "the benchmark starts `baton serve` as a real process")]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::Context as _;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use crate::lifecycle::median;
use baton_core::Timestamp;
use baton_store::sqlite::Options;
use baton_store::{NewRun, SqliteStore, Store};

use crate::{Error, Output};

/// What `baton bench --restart` measures, and with how much.
#[derive(Debug, Clone)]
pub struct RestartBenchOptions {
    pub dir: PathBuf,
    /// Finished (succeeded) tasks in the store.
    pub n_finished: u64,
    /// Unfinished tasks, each depending on a finished one.
    pub n_unfinished: u64,
    pub repeats: u32,
}

/// One restart's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRun {
    /// From spawning `baton serve` to `GET /health` answering 200.
    pub serving_ms: f64,
    /// From spawning to every unfinished task claimed over the API.
    pub claimable_ms: f64,
    /// Resident memory of `baton serve` once every task was claimed, and its peak so far.
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartBenchReport {
    pub n_finished: u64,
    pub n_unfinished: u64,
    /// Size of the store's file.
    pub store_bytes: u64,
    /// Seconds to fill the store.
    pub fill_seconds: f64,
    pub median_serving_ms: f64,
    pub median_claimable_ms: f64,
    pub median_rss_kib: u64,
    pub median_hwm_kib: u64,
    pub runs: Vec<RestartRun>,
}

const PLAN: &str = r#"[orchestration]
name = "bench-restart"
max_concurrent_agents = 1000

[[agents]]
name = "w0"
runtime = "remote"
capabilities = ["work"]
concurrency = 1000
heartbeat_timeout = "10m"
"#;

/// The tasks the API hands out per claim, at most.
const MAX_CLAIM: u64 = 1000;

/// Writes the plan and fills the template store: the run (claimed by nobody: its owner's
/// claim has expired, as after a crash) and its tasks.
async fn fill(options: &RestartBenchOptions, template: &Path) -> Result<(), Error> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", template.display()));
    }
    let now = baton_runtime::Clock::system().now();
    {
        let store =
            SqliteStore::open(template, Options::default()).map_err(|error| Error::failed(error.to_string()))?;
        let run = NewRun {
            id: format!("bench-restart-{}", std::process::id()),
            name: "bench-restart".into(),
            n_phases: 0,
            owner: "bench-fill:1:gone".into(),
            owner_pid: 1,
            owner_until: Timestamp(now.0 - 3_600_000),
        };
        let run = store.create_run(run, now).await.map_err(|error| Error::failed(error.to_string()))?;
        let fill = baton_store::bulk::Fill {
            run_id: run.id,
            n_finished: options.n_finished,
            n_unfinished: options.n_unfinished,
            workstreams: Vec::new(),
            requires: vec!["work".into()],
            now,
        };
        let path = template.to_path_buf();
        tokio::task::spawn_blocking(move || baton_store::bulk::fill_run(&path, &fill))
            .await
            .context("filling the store")?
            .map_err(|error| Error::failed(error.to_string()))?;
    }
    Ok(())
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_of(pid: u32) -> Result<(u64, u64), Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the child's memory")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

async fn one_run(
    options: &RestartBenchOptions,
    template: &Path,
    run: u32,
    out: &dyn Output,
) -> Result<RestartRun, Error> {
    let path = options.dir.join("restart.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::copy(template, &path).context("copying the store")?;
    let exe = std::env::current_exe().context("finding the baton binary")?;
    let config = options.dir.join("baton.toml");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&exe)
        .arg("-c")
        .arg(&config)
        .arg("--store")
        .arg(format!("sqlite://{}", path.display()))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting baton serve")?;
    let pid = child.id().unwrap_or_default();
    let mut lines = BufReader::new(child.stderr.take().context("the child's stderr")?).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .map_err(|_| Error::failed("baton serve said nothing for two minutes"))?
            .context("reading baton serve's output")?
            .ok_or_else(|| Error::failed("baton serve exited before serving"))?;
        if let Some((_, url)) = line.split_once("API on ") {
            break url.trim().to_string();
        }
    };
    // Whatever else it says goes nowhere, but must be read: a full pipe would stop it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = reqwest::Client::new();
    loop {
        match client.get(format!("{url}/health")).send().await {
            Ok(response) if response.status().is_success() => break,
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(Error::failed("GET /health did not answer 200 within two minutes"));
        }
    }
    let serving = started.elapsed();
    let mut claimed = 0u64;
    while claimed < options.n_unfinished {
        let max = (options.n_unfinished - claimed).min(MAX_CLAIM);
        let response = client
            .post(format!("{url}/agent/claim"))
            .json(&serde_json::json!({"agent": "w0", "max": max, "wait_ms": 1000}))
            .send()
            .await
            .context("POST /agent/claim")?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(Error::failed(format!("POST /agent/claim: {status} {text}")));
        }
        let body: serde_json::Value = response.json().await.context("reading a claim")?;
        claimed += body["tasks"].as_array().map_or(0, |tasks| tasks.len() as u64);
        if started.elapsed() > Duration::from_secs(120) {
            return Err(Error::failed(format!("only {claimed} tasks were claimed within two minutes")));
        }
    }
    let claimable = started.elapsed();
    let (rss_kib, hwm_kib) = memory_of(pid)?;
    child.kill().await.context("stopping baton serve")?;
    let figure = RestartRun {
        serving_ms: serving.as_secs_f64() * 1000.0,
        claimable_ms: claimable.as_secs_f64() * 1000.0,
        rss_kib,
        hwm_kib,
    };
    errln!(
        out,
        "restart {}: serving in {:.0} ms, {} tasks claimable in {:.0} ms; RSS {:.1} MiB (peak {:.1} MiB)",
        run + 1,
        figure.serving_ms,
        options.n_unfinished,
        figure.claimable_ms,
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0,
    );
    Ok(figure)
}

pub async fn bench(options: RestartBenchOptions, json: bool, out: &dyn Output) -> Result<u8, Error> {
    if options.n_unfinished == 0 {
        return Err(Error::usage("the restart benchmark needs unfinished tasks to claim"));
    }
    std::fs::create_dir_all(&options.dir)
        .map_err(|error| Error::failed(format!("cannot create {}: {error}", options.dir.display())))?;
    std::fs::write(options.dir.join("baton.toml"), PLAN).context("writing the plan")?;
    let template = options.dir.join("template.db");
    let filling = Instant::now();
    fill(&options, &template).await?;
    let fill_seconds = filling.elapsed().as_secs_f64();
    let store_bytes = std::fs::metadata(&template).map(|meta| meta.len()).unwrap_or(0);
    errln!(
        out,
        "store filled: {} finished and {} unfinished tasks, {:.0} MiB, in {:.1}s",
        options.n_finished,
        options.n_unfinished,
        store_bytes as f64 / (1024.0 * 1024.0),
        fill_seconds
    );
    let mut runs = Vec::new();
    for run in 0..options.repeats.max(1) {
        runs.push(one_run(&options, &template, run, out).await?);
    }
    for name in ["template.db", "restart.db", "restart.db-wal", "restart.db-shm"] {
        let _ = std::fs::remove_file(options.dir.join(name));
    }
    let report = RestartBenchReport {
        n_finished: options.n_finished,
        n_unfinished: options.n_unfinished,
        store_bytes,
        fill_seconds,
        median_serving_ms: median(runs.iter().map(|run| run.serving_ms).collect()),
        median_claimable_ms: median(runs.iter().map(|run| run.claimable_ms).collect()),
        median_rss_kib: median(runs.iter().map(|run| run.rss_kib).collect()),
        median_hwm_kib: median(runs.iter().map(|run| run.hwm_kib).collect()),
        runs,
    };
    if json {
        outln!(out, "{}", serde_json::to_string_pretty(&report).context("serializing")?);
        return Ok(0);
    }
    outln!(
        out,
        "restart of `baton serve` on a store with {} finished and {} unfinished tasks ({:.0} MiB), median of {} run(s):",
        report.n_finished,
        report.n_unfinished,
        report.store_bytes as f64 / (1024.0 * 1024.0),
        report.runs.len()
    );
    outln!(out, "  {:<36} {:>10}", "figure", "median");
    outln!(out, "  {:<36} {:>7.0} ms", "spawn to GET /health 200", report.median_serving_ms);
    outln!(out, "  {:<36} {:>7.0} ms", "spawn to every task claimed", report.median_claimable_ms);
    outln!(out, "  {:<36} {:>7.1} MiB", "RSS once claimed (VmRSS)", report.median_rss_kib as f64 / 1024.0);
    outln!(out, "  {:<36} {:>7.1} MiB", "peak RSS (VmHWM)", report.median_hwm_kib as f64 / 1024.0);
    Ok(0)
}
