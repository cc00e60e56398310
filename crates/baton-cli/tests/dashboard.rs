//! The dashboard in a real browser: `baton serve` on the workers example, and a Node script
//! (`tests/dashboard/test.mjs`, Playwright driving Chromium) that loads every page, watches
//! tasks finish live (in the table and on the board), the dependency arrows of the overview,
//! a task waiting for a resource another holds on the conflicts page, creates and cancels
//! tasks, sends a chat message, types into a terminal agent's screen, and — with `[auth]` — logs in as a viewer (actions disabled or refused, a
//! terminal watched but not typed into) and as an operator (the same action done). It saves
//! a screenshot of each page in `target/dashboard-screenshots/`. Last, it measures the tasks
//! page with 10,000 tasks and 200 agents, and prints the figures (BENCHMARKS.md's).
//!
//! It needs Node, the npm packages of `tests/dashboard` and Chromium at `/usr/bin/chromium`
//! (`.ci/run` installs them), so it runs only with `BATON_TEST_BROWSER` set and says so once
//! when it is skipped.

#![allow(clippy::disallowed_methods, reason = "the test starts the real `baton` binary and Node")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::Project;

const SECRET: &str = "a dashboard test secret of more than thirty-two bytes";

/// The workers example, with a token budget (so that the gauges have a limit), a workstream
/// whose remote agent no worker serves (its tasks wait until they are cancelled), a shared
/// worker that refuses the messages saying `refuse-me` (they become dead letters) and a
/// nightly schedule, and a terminal agent.
fn plan(auth: bool) -> String {
    let example = include_str!("../../../examples/workers/baton.toml");
    let mut plan = example.replacen(
        "[orchestration]\nname = \"workers-example\"",
        "[orchestration]\nname = \"dashboard-test\"\n",
        1,
    );
    plan.push_str(
        r#"
[budget]
daily_tokens = 3000

[[workstreams]]
name = "training"

[[agents]]
name = "helper"
mode = "worker"
command = ["python3", "worker.py", "--refuse", "refuse-me"]
capabilities = ["help"]

[[schedules]]
name = "nightly-training"
cron = "0 3 * * *"
task = { title = "Train overnight", workstream = "training", requires = ["far"] }

[[agents]]
name = "console"
mode = "pty"
command = ["bash", "console.sh"]
capabilities = ["console"]
# Shared, it may be handed the workers' sub-tasks: each is done once it is answered.
done_when = { output = "(?m)^got: " }

[[agents]]
name = "gpu"
workstream = "training"
runtime = "remote"
capabilities = ["far"]
heartbeat_timeout = "1m"
"#,
    );
    // An LLM agent, its provider a stand-in that speaks OpenAI's streamed wire format: its
    // tasks' transcripts are shown on their pages.
    plan.push_str(&format!(
        "\n[llm.providers.stand-in]\nkind = \"openai\"\nbase_url = \"{}\"\n\n[[agents]]\nname = \"analyst\"\nruntime = \"llm\"\nprovider = \"stand-in\"\nmodel = \"gpt-4o\"\nmax_tokens = 256\ncapabilities = [\"analysis\"]\n",
        stand_in_llm()
    ));
    if auth {
        plan.push_str("\n[auth]\nsecret_env = \"BATON_JWT_SECRET\"\n");
    }
    plan
}

/// The answer the stand-in model gives to every request.
const ANSWER: &str = "The numbers add up: 42.";

/// The stand-in provider ([`baton_server::standin`]) as an OpenAI-compatible server on a port
/// of its own (0): every request is answered with a streamed chat completion of [`ANSWER`], as
/// the API streams one (content deltas, the finish reason, then the usage chunk
/// `stream_options.include_usage` asks for).
fn stand_in_llm() -> String {
    use baton_server::standin::{Reply, Standin, openai_text};
    let standin = Standin::answering(Box::new(|_| Reply::Stream(openai_text(ANSWER, 120, 9, 0))));
    format!("{}/v1", standin.url)
}

/// The terminal agent's program: says it is ready, then answers each line it reads.
const CONSOLE: &str = r#"#!/usr/bin/env bash
echo "console ready for input"
while read -r line; do
  echo "got: $line"
done
"#;

fn project(auth: bool) -> Project {
    Project::with(
        &plan(auth),
        &[
            ("worker.py", include_str!("../../../examples/workers/worker.py")),
            ("worker.sh", include_str!("../../../examples/workers/worker.sh")),
            ("console.sh", CONSOLE),
        ],
    )
}

/// A running `baton serve`, stopped with SIGTERM when dropped.
struct Served {
    child: Child,
    url: String,
    _lines: common::Lines,
}

impl Served {
    fn start(project: &Project) -> Served {
        let mut child = project
            .command(&["serve", "--listen", "127.0.0.1:0"])
            .env("BATON_JWT_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = common::Lines::new(child.stderr.take().unwrap());
        let line = lines.wait_for("API on ");
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        Served { child, url, _lines: lines }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn token(project: &Project, role: &str) -> String {
    let output =
        project.command(&["token", "create", "--role", role]).env("BATON_JWT_SECRET", SECRET).output().unwrap();
    assert!(output.status.success(), "baton token create: {}", common::stderr(&output));
    common::stdout(&output).trim().to_string()
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
    target.join("dashboard-screenshots")
}

/// Runs the browser script in `mode` against `served`; it fails the test with its output.
fn drive(mode: &str, served: &Served, tokens: &[(&str, String)]) {
    let screenshots = screenshot_dir();
    std::fs::create_dir_all(&screenshots).unwrap();
    let mut command = Command::new("node");
    command
        .arg("test.mjs")
        .current_dir(script_dir())
        .env("BATON_URL", &served.url)
        .env("BATON_MODE", mode)
        .env("SCREENSHOTS", &screenshots);
    for (name, value) in tokens {
        command.env(name, value);
    }
    let output = command.stdin(Stdio::null()).output().expect("node runs (is Node installed?)");
    let stdout = common::stdout(&output);
    let stderr = common::stderr(&output);
    assert!(output.status.success(), "the browser test ({mode}) failed:\n{stdout}\n{stderr}");
    let _ = writeln!(std::io::stdout(), "{stdout}");
}

/// 200 remote agents (no process each: the cheapest agents) that no worker serves, so that the
/// tasks given to them wait.
fn crowded_plan() -> String {
    let mut plan = String::from("[orchestration]\nname = \"dashboard-load\"\n");
    for idx in 0..200 {
        plan.push_str(&format!(
            "\n[[agents]]\nname = \"remote-{idx:03}\"\nruntime = \"remote\"\ncapabilities = [\"far\"]\nheartbeat_timeout = \"1h\"\n"
        ));
    }
    plan
}

#[test]
fn the_dashboard_in_a_browser() {
    if std::env::var_os("BATON_TEST_BROWSER").is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the dashboard's browser test runs with BATON_TEST_BROWSER=1 (it needs Node, `npm ci` in crates/baton-cli/tests/dashboard and /usr/bin/chromium; .ci/run installs them)"
        );
        return;
    }
    {
        let project = project(false);
        let served = Served::start(&project);
        drive("open", &served, &[]);
    }
    {
        let project = project(true);
        let served = Served::start(&project);
        let tokens =
            [("BATON_VIEWER_TOKEN", token(&project, "viewer")), ("BATON_OPERATOR_TOKEN", token(&project, "operator"))];
        drive("auth", &served, &tokens);
    }
    // The figures of BENCHMARKS.md's "Dashboard" section.
    let project = Project::with(&crowded_plan(), &[]);
    let served = Served::start(&project);
    drive("perf", &served, &[]);
}
