//! `baton bench`: its arguments handed to `baton-bench`, which runs the benchmarks, and their
//! reports printed here.

use std::path::PathBuf;

use baton_bench::{Output, commands};

use crate::{Command, Failure};

/// The report on stdout, progress on stderr (a worker's stdout is read by the benchmark that
/// started it).
struct Terminal;

impl Output for Terminal {
    fn report(&self, line: String) {
        outln!("{line}");
    }

    fn progress(&self, line: String) {
        errln!("{line}");
    }
}

impl From<baton_bench::Error> for Failure {
    fn from(error: baton_bench::Error) -> Failure {
        match error {
            baton_bench::Error::Usage(message) => Failure::usage(message),
            baton_bench::Error::Failed(message) => Failure::run(message),
        }
    }
}

/// `baton bench` in each of its modes, and the workers its benchmarks start.
pub async fn bench(command: &Command, store: Option<&str>) -> Result<u8, Failure> {
    let store_url = match store {
        None => None,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(url.to_string()),
        Some(other) => {
            return Err(Failure::usage(format!(
                "`--store {other}`: the benchmarks take a PostgreSQL store (postgres://…); without --store they make their own SQLite files"
            )));
        }
    };
    let outcome: Result<u8, baton_bench::Error> = match command {
        Command::Bench {
            http: true,
            tasks,
            repeats,
            synchronous,
            dir,
            json,
            workers,
            remote_agents,
            claim_batch,
            create_batch,
            drain,
            latency_seconds,
            pipeline,
            ..
        } => {
            let temp = commands::temp_dir()?;
            let options = baton_bench::http::HttpBenchOptions {
                dir: dir.clone().unwrap_or_else(|| temp.clone()),
                synchronous: commands::parse_synchronous(synchronous)?,
                n_tasks: tasks.unwrap_or(20_000),
                create_batch: *create_batch,
                n_workers: *workers,
                n_agents: *remote_agents,
                claim_batch: *claim_batch,
                repeats: *repeats,
                drain: *drain,
                latency_seconds: *latency_seconds,
                pipeline: *pipeline,
                store_url: store_url.clone(),
            };
            let outcome = baton_bench::http::bench(options, *json, &Terminal).await;
            let _ = std::fs::remove_dir_all(&temp);
            outcome
        }
        Command::Bench { restart: true, tasks, repeats, dir, json, .. } => {
            let temp = commands::temp_dir()?;
            let options = baton_bench::restart::RestartBenchOptions {
                dir: dir.clone().unwrap_or_else(|| temp.clone()),
                n_finished: tasks.unwrap_or(1_000_000),
                n_unfinished: 1_000,
                repeats: *repeats,
            };
            let outcome = baton_bench::restart::bench(options, *json, &Terminal).await;
            let _ = std::fs::remove_dir_all(&temp);
            outcome
        }
        Command::Bench { messages: true, tasks, agents, repeats, from_store, in_flight, dir, json, .. } => {
            use baton_bench::lifecycle::{MessagesOptions, SendFrom};
            let options = MessagesOptions {
                n_agents: agents.unwrap_or(8),
                n_messages: tasks.unwrap_or(100_000),
                repeats: *repeats,
                from: if *from_store { SendFrom::Store } else { SendFrom::Workers },
                in_flight: *in_flight,
                ..MessagesOptions::new(PathBuf::new(), Vec::new())
            };
            commands::messages(options, dir.clone(), *json, &Terminal).await
        }
        Command::Bench { llm: true, tasks, agents, turns, repeats, dir, json, .. } => {
            commands::llm(*tasks, *agents, *turns, *repeats, dir.clone(), *json, &Terminal).await
        }
        Command::Bench { soak: true, tasks, agents, kill_every, dir, json, .. } => {
            commands::soak(agents.unwrap_or(200), tasks.unwrap_or(100_000), *kill_every, dir.clone(), *json, &Terminal)
                .await
        }
        Command::Bench { tasks, repeats, latency_seconds, synchronous, dir, json, .. } => {
            let args = commands::LifecycleArgs {
                n_tasks: tasks.unwrap_or(20_000),
                repeats: *repeats,
                latency_seconds: *latency_seconds,
                synchronous,
                dir: dir.clone(),
                store_url,
            };
            commands::lifecycle(args, *json, &Terminal).await
        }
        Command::BenchWorker => {
            baton_bench::lifecycle::worker_main();
            Ok(0)
        }
        Command::BenchHttpWorker { url, agent, batch, pipeline, record } => {
            baton_bench::http::worker(url.clone(), agent.clone(), *batch, *pipeline, *record, Terminal).await
        }
        _ => unreachable!("only `baton bench` and its workers come here"),
    };
    Ok(outcome?)
}
