//! `baton bench --llm`: what Baton costs per LLM turn, the model excluded, and what many LLM
//! agents at once cost the process. The real engine and SQLite store run LLM agents against the
//! stand-in provider ([`baton_server::standin`]) in this process, which answers every request at
//! once: each task is a conversation of `turns` turns, each but the last calling a Baton tool
//! (`baton/report_progress`).
//!
//! A turn's overhead is the time from the stand-in's answer to the same conversation's next
//! request: reading the stream, the usage and transcript writes through the engine, the tool
//! call, the budget reservation and the next request. It is measured twice: with one agent
//! (nothing else running) and with `n_agents` agents at once, where the process's peak and
//! current resident memory (`/proc/self/status` VmHWM, VmRSS) and CPU time (`/proc/self/stat`)
//! are taken too.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use baton_core::config;
use baton_core::model::{NewTask, Priority, TaskState};
use baton_runtime::llm::LlmOptions;
use baton_server::standin::{self, Reply, Standin};
use baton_store::sqlite::Options;

use crate::lifecycle::{median, percentile};

#[derive(Debug, Clone)]
pub struct LlmBenchOptions {
    pub dir: PathBuf,
    /// Conversations in the one-agent run.
    pub n_tasks: u64,
    /// Agents (and conversations) in the concurrent run.
    pub n_agents: u32,
    /// Turns per conversation.
    pub turns: u32,
    pub repeats: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TurnFigures {
    pub n_turns: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LlmReport {
    pub turns_per_task: u32,
    /// One agent, its conversations one after the other (the median run).
    pub alone: TurnFigures,
    /// `n_agents` agents at once (the median run).
    pub concurrent: TurnFigures,
    pub n_agents: u32,
    /// The process's peak resident memory after the concurrent runs, and its resident memory
    /// then (KiB).
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
    /// CPU time (user + system) of the process during a concurrent run (the median).
    pub cpu_seconds: f64,
}

/// Overhead samples of the conversations under way, from the stand-in's side.
#[derive(Default)]
struct Clock {
    /// When each conversation was last answered, by its first user message.
    answered: HashMap<String, Instant>,
    samples_us: Vec<u64>,
}

fn responder(turns: u32, clock: Arc<Mutex<Clock>>) -> standin::Responder {
    Box::new(move |body: &Value| {
        let arrived = Instant::now();
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let conversation = messages.first().map(|first| first["content"].to_string()).unwrap_or_default();
        let n_answers = messages.iter().filter(|message| message["role"] == "assistant").count() as u32;
        let reply = if n_answers + 1 < turns {
            let id = format!("toolu_{n_answers}");
            standin::anthropic_tools(&[(id.as_str(), "baton__report_progress", json!({"fraction": 0.5}))], 50, 10)
        } else {
            standin::anthropic_text("done", 50, 2, 0, 0)
        };
        let mut clock = clock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(previous) = clock.answered.insert(conversation, Instant::now()) {
            let overhead = arrived.duration_since(previous);
            clock.samples_us.push(overhead.as_micros() as u64);
        }
        Reply::Stream(reply)
    })
}

fn plan_text(url: &str, n_agents: u32, turns: u32) -> String {
    let mut text = format!(
        "[orchestration]\nname = \"bench-llm\"\nmax_concurrent_agents = {n_agents}\n\n[llm.providers.standin]\nkind = \"anthropic\"\nbase_url = \"{url}\"\n"
    );
    for idx in 0..n_agents {
        text.push_str(&format!(
            "\n[[agents]]\nname = \"llm{idx}\"\nrole = \"Benchmark agent\"\nruntime = \"llm\"\nprovider = \"standin\"\nmodel = \"claude-sonnet-4-5\"\ncapabilities = [\"llm\"]\ntools = [\"baton/*\"]\nmax_tokens = 100\nmax_turns = {}\n",
            turns + 1
        ));
    }
    text
}

fn task(idx: u64) -> NewTask {
    NewTask {
        parent: None,
        key: None,
        workstream: None,
        title: format!("conversation {idx}"),
        description: String::new(),
        input: Value::Null,
        requires: vec!["llm".into()],
        agent: None,
        depends_on: Vec::new(),
        priority: Priority::Medium,
        max_attempts: 1,
        timeout_ms: None,
        resources: Vec::new(),
        estimated_tokens: None,
    }
}

/// One run: `n_tasks` conversations on `n_agents` agents; the overhead samples, the wall time
/// and the CPU time it took.
async fn one_run(
    dir: &std::path::Path,
    name: &str,
    n_agents: u32,
    n_tasks: u64,
    turns: u32,
) -> Result<(Vec<u64>, f64, f64), String> {
    let clock = Arc::new(Mutex::new(Clock::default()));
    let standin = Standin::answering(responder(turns, Arc::clone(&clock)));
    let plan = config::load("baton.toml", &plan_text(&standin.url, n_agents, turns), &BTreeMap::new())
        .map_err(|error| error.to_string())?;
    let env = baton_runtime::process::ProcessEnv {
        base_dir: dir.to_path_buf(),
        log_dir: dir.join(format!("{name}-logs")),
        env: BTreeMap::new(),
        registry: None,
        api: None,
        mcp_servers: Vec::new(),
    };
    let runtimes = baton_runtime::engine::agent_runtimes(env, None, LlmOptions::default());
    let launched = crate::lifecycle::launch(&dir.join(format!("{name}.db")), Options::default(), plan, runtimes)?;
    let mut progress = launched.handle.progress();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    launched.handle.create_tasks((0..n_tasks).map(task).collect()).await.map_err(|error| error.to_string())?;
    let finished = |by_state: &[u64; 7]| -> u64 {
        TaskState::ALL.iter().zip(by_state).filter(|(state, _)| state.is_terminal()).map(|(_, n)| n).sum()
    };
    let waiting = async {
        match progress.wait_for(|progress| finished(&progress.by_state) >= n_tasks).await {
            Ok(progress) => Some(progress.by_state),
            Err(_) => None,
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(600), waiting).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    launched.shutdown.cancel();
    let _ = launched.engine.await;
    let by_state = match waited {
        Ok(Some(by_state)) => by_state,
        Ok(None) => return Err(format!("{name}: the engine stopped")),
        Err(_) => return Err(format!("{name}: the conversations did not end within 10 minutes")),
    };
    let succeeded = by_state[TaskState::ALL.iter().position(|state| *state == TaskState::Succeeded).unwrap_or(0)];
    if succeeded != n_tasks {
        return Err(format!("{name}: {succeeded} of {n_tasks} conversations succeeded"));
    }
    let mut samples = std::mem::take(&mut clock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).samples_us);
    samples.sort_unstable();
    Ok((samples, seconds, cpu))
}

fn figures(samples: &[u64], seconds: f64) -> TurnFigures {
    TurnFigures { n_turns: samples.len(), p50_us: percentile(samples, 0.5), p99_us: percentile(samples, 0.99), seconds }
}

pub async fn run(options: LlmBenchOptions, progress: impl Fn(String)) -> Result<LlmReport, String> {
    std::fs::create_dir_all(&options.dir).map_err(|error| format!("{}: {error}", options.dir.display()))?;
    let mut concurrent = Vec::new();
    let mut cpu = Vec::new();
    // The concurrent runs first: the peak memory is theirs.
    for repeat in 0..options.repeats {
        let name = format!("llm-concurrent-{repeat}");
        let n = u64::from(options.n_agents);
        let (samples, seconds, cpu_seconds) = one_run(&options.dir, &name, options.n_agents, n, options.turns).await?;
        progress(format!(
            "{name}: {n} conversations on {} agents in {seconds:.2}s, {cpu_seconds:.2}s of CPU",
            options.n_agents
        ));
        concurrent.push(figures(&samples, seconds));
        cpu.push(cpu_seconds);
    }
    let (peak_rss_kib, rss_kib) = memory_kib();
    let mut alone = Vec::new();
    for repeat in 0..options.repeats {
        let name = format!("llm-alone-{repeat}");
        let (samples, seconds, _) = one_run(&options.dir, &name, 1, options.n_tasks, options.turns).await?;
        progress(format!("{name}: {} conversations on one agent in {seconds:.2}s", options.n_tasks));
        alone.push(figures(&samples, seconds));
    }
    let by_p50 = |runs: Vec<TurnFigures>| {
        let p50 = median(runs.iter().map(|run| run.p50_us).collect());
        runs.into_iter().find(|run| run.p50_us == p50).expect("a run has the median")
    };
    Ok(LlmReport {
        turns_per_task: options.turns,
        alone: by_p50(alone),
        concurrent: by_p50(concurrent),
        n_agents: options.n_agents,
        peak_rss_kib,
        rss_kib,
        cpu_seconds: median(cpu),
    })
}

/// VmHWM and VmRSS of this process, in KiB (zeros where /proc does not say).
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User and system CPU time of this process so far (`/proc/self/stat`, in clock ticks of 1/100 s,
/// Linux's `USER_HZ`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis: state is the 3rd field, utime the 14th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |idx: usize| fields.get(idx).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}
