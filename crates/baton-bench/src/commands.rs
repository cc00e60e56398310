//! What each mode of `baton bench` runs, and the report it prints: the lifecycle and dispatch
//! figures, the soak and the messages benchmark (the HTTP and restart benchmarks print their
//! own, in [`crate::http`] and [`crate::restart`]), and the arguments they share.

use std::path::PathBuf;

use baton_store::sqlite::Synchronous;

use crate::{Context as _, Error, Output};

/// What `baton bench` (the lifecycle figures) is asked for.
pub struct LifecycleArgs<'a> {
    pub n_tasks: u64,
    pub repeats: u32,
    pub latency_seconds: u64,
    pub synchronous: &'a str,
    pub dir: Option<PathBuf>,
    /// A `postgres://` store to measure instead of SQLite files.
    pub store_url: Option<String>,
}

pub async fn lifecycle(args: LifecycleArgs<'_>, json: bool, out: &dyn Output) -> Result<u8, Error> {
    let synchronous = parse_synchronous(args.synchronous)?;
    let temp = temp_dir()?;
    let dir = args.dir.unwrap_or_else(|| temp.clone());
    let mut options = crate::lifecycle::BenchOptions::new(dir);
    options.n_tasks = args.n_tasks;
    options.repeats = args.repeats;
    options.synchronous = synchronous;
    options.latency_duration = std::time::Duration::from_secs(args.latency_seconds);
    options.store_url = args.store_url;
    let report = crate::lifecycle::run(options, |line| out.progress(line)).await.map_err(Error::failed)?;
    let _ = std::fs::remove_dir_all(&temp);
    if json {
        outln!(out, "{}", serde_json::to_string_pretty(&report).context("serializing")?);
        return Ok(0);
    }
    outln!(out, "durable task lifecycle (create, claim, complete, events; synchronous={}):", report.synchronous);
    outln!(
        out,
        "  {} tasks, {} events per run; median {:.0} tasks/s over {} run(s) (target >= 10,000)",
        report.lifecycle.n_tasks,
        report.lifecycle.n_events,
        report.lifecycle.median_tasks_per_second,
        report.lifecycle.runs.len()
    );
    let d = &report.dispatch;
    outln!(
        out,
        "dispatch latency, ready -> claimed by an idle agent, at {:.0} tasks/s (half of peak):",
        d.offered_per_second
    );
    outln!(
        out,
        "  {} tasks: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p50 <= 1 ms, p99 <= 5 ms)",
        d.n_tasks,
        d.p50_us as f64 / 1000.0,
        d.p90_us as f64 / 1000.0,
        d.p99_us as f64 / 1000.0,
        d.max_us as f64 / 1000.0
    );
    Ok(0)
}

pub async fn soak(
    n_agents: u32,
    n_tasks: u64,
    kill_every: std::time::Duration,
    dir: Option<PathBuf>,
    json: bool,
    out: &dyn Output,
) -> Result<u8, Error> {
    let temp = temp_dir()?;
    let exe = std::env::current_exe().context("finding the baton binary")?;
    let options = crate::lifecycle::SoakOptions {
        dir: dir.unwrap_or_else(|| temp.clone()),
        worker_command: vec![exe.display().to_string(), "bench-worker".into()],
        n_agents,
        n_tasks,
        concurrency: 4,
        kill_every,
    };
    let report = crate::lifecycle::soak(options, |line| out.progress(line)).await.map_err(Error::failed)?;
    let _ = std::fs::remove_dir_all(&temp);
    if json {
        outln!(out, "{}", serde_json::to_string_pretty(&report).context("serializing")?);
    } else {
        outln!(
            out,
            "soak: {} worker agents, {} tasks in {:.1}s ({:.0} tasks/s), {} workers killed, {} restarts",
            report.n_agents,
            report.n_tasks,
            report.seconds,
            report.tasks_per_second,
            report.n_kills,
            report.n_restarts
        );
        outln!(
            out,
            "  every task succeeded: {}; every task completed exactly once: {}",
            report.all_succeeded,
            report.completed_exactly_once
        );
        outln!(
            out,
            "  {} interrupted attempts; from a kill to the task running again: p50 {} ms, p99 {} ms, max {} ms",
            report.n_interrupted,
            report.requeue_p50_ms,
            report.requeue_p99_ms,
            report.requeue_max_ms
        );
    }
    Ok(if report.all_succeeded && report.completed_exactly_once { 0 } else { 1 })
}

pub async fn messages(
    mut options: crate::lifecycle::MessagesOptions,
    dir: Option<PathBuf>,
    json: bool,
    out: &dyn Output,
) -> Result<u8, Error> {
    let temp = temp_dir()?;
    let exe = std::env::current_exe().context("finding the baton binary")?;
    options.worker_command = vec![exe.display().to_string(), "bench-worker".into()];
    options.dir = dir.unwrap_or_else(|| temp.clone());
    let report = crate::lifecycle::messages_with(options, |line| out.progress(line)).await.map_err(Error::failed)?;
    let _ = std::fs::remove_dir_all(&temp);
    if json {
        outln!(out, "{}", serde_json::to_string_pretty(&report).context("serializing")?);
    } else {
        outln!(
            out,
            "messages: {} between {} worker agent{}{}, median of {} run{}: {:.0}/s stored durably, {:.0}/s stored and \
             acknowledged (target >= 50,000/s); delivery latency, sent to acknowledged: p50 {} ms, p99 {} ms",
            report.n_messages,
            report.n_agents,
            if report.n_agents == 1 { "" } else { "s" },
            match report.from {
                crate::lifecycle::SendFrom::Workers =>
                    format!(" sent by the workers ({} in flight each)", report.in_flight),
                crate::lifecycle::SendFrom::Store => " sent by the benchmark straight to the store".to_string(),
            },
            report.runs.len(),
            if report.runs.len() == 1 { "" } else { "s" },
            report.sent_per_second,
            report.delivered_per_second,
            report.latency_p50_ms,
            report.latency_p99_ms
        );
    }
    Ok(0)
}

pub fn parse_synchronous(text: &str) -> Result<Synchronous, Error> {
    match text {
        "full" => Ok(Synchronous::Full),
        "normal" => Ok(Synchronous::Normal),
        other => Err(Error::usage(format!("unknown synchronous mode `{other}`; use full or normal"))),
    }
}

pub fn temp_dir() -> Result<PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("baton-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|error| Error::failed(format!("cannot create {}: {error}", dir.display())))?;
    Ok(dir)
}

pub async fn llm(
    n_tasks: Option<u64>,
    n_agents: Option<u32>,
    turns: u32,
    repeats: u32,
    dir: Option<PathBuf>,
    json: bool,
    out: &dyn Output,
) -> Result<u8, Error> {
    if repeats == 0 || turns == 0 {
        return Err(Error::usage("--repeats and --turns must be at least 1"));
    }
    let temp = temp_dir()?;
    let options = crate::llm::LlmBenchOptions {
        dir: dir.unwrap_or_else(|| temp.clone()),
        n_tasks: n_tasks.unwrap_or(200).max(1),
        n_agents: n_agents.unwrap_or(100),
        turns,
        repeats,
    };
    let report = crate::llm::run(options, |line| out.progress(line)).await.map_err(Error::failed)?;
    let _ = std::fs::remove_dir_all(&temp);
    if json {
        outln!(out, "{}", serde_json::to_string_pretty(&report).context("serializing")?);
        return Ok(0);
    }
    let ms = |us: u64| us as f64 / 1000.0;
    outln!(
        out,
        "LLM turn overhead, the model excluded (a stand-in answering at once; {} turns per task):",
        report.turns_per_task
    );
    let alone = &report.alone;
    outln!(out, "  one agent: {} turns, p50 {:.2} ms, p99 {:.2} ms", alone.n_turns, ms(alone.p50_us), ms(alone.p99_us));
    let concurrent = &report.concurrent;
    outln!(
        out,
        "  {} agents at once: {} turns in {:.2} s, p50 {:.2} ms, p99 {:.2} ms",
        report.n_agents,
        concurrent.n_turns,
        concurrent.seconds,
        ms(concurrent.p50_us),
        ms(concurrent.p99_us)
    );
    outln!(
        out,
        "  process: peak RSS {:.1} MiB (RSS after {:.1} MiB), CPU {:.2} s for the {} agents' run",
        report.peak_rss_kib as f64 / 1024.0,
        report.rss_kib as f64 / 1024.0,
        report.cpu_seconds,
        report.n_agents
    );
    Ok(0)
}
