//! Per-task process agents (`baton_runtime::process::ProcessAgent`) driven through the
//! `AgentRuntime` trait with real child processes: how the task reaches the process (stdin JSON,
//! `BATON_*` variables, `{task.…}` placeholders), how its stdout, stderr and exit status become
//! an outcome and the agent's log, the allow-listed environment, timeouts, cancellation, `stop`,
//! memory limits, and the checks `start` makes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::sys::stat::Mode;
use nix::unistd::{Pid, mkfifo};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::model::{Priority, TaskId, TaskRecord, TaskState};
use baton_core::time::Timestamp;
use baton_runtime::agent::AgentError;
use baton_runtime::process::{ProcessAgent, ProcessEnv};
use baton_runtime::{AgentRuntime, Attempt};

/// A temporary directory holding an agent's scripts (it is the agent's working directory) and
/// its log directory, with the environment Baton hands the agent.
struct Setup {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let env = BTreeMap::from([
            ("PATH".to_string(), std::env::var("PATH").expect("PATH is set")),
            ("HOME".to_string(), dir.path().display().to_string()),
            ("BATON_SECRET".to_string(), "hunter2".to_string()),
            ("PASS_ME".to_string(), "passed".to_string()),
        ]);
        Setup { dir, env }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a bash script into the working directory; agents run it as `bash NAME`.
    fn script(&self, name: &str, body: &str) {
        std::fs::write(self.path(name), format!("#!/usr/bin/env bash\n{body}")).expect("write the script");
    }

    /// An agent `a` whose `[[agents]]` table holds `fields` (at least `command`).
    fn agent(&self, fields: &str) -> ProcessAgent {
        let text = format!("[orchestration]\nname = \"t\"\n\n[[agents]]\nname = \"a\"\n{fields}\n");
        let mut plan = baton_core::config::load("baton.toml", &text, &self.env).expect("a valid configuration");
        let spec = plan.agents.remove(0);
        let process = spec.process().cloned().expect("a process agent");
        let process_env = ProcessEnv {
            base_dir: self.dir.path().to_path_buf(),
            log_dir: self.path("logs"),
            env: self.env.clone(),
            registry: None,
            api: None,
            mcp_servers: Vec::new(),
        };
        ProcessAgent::new(spec, process, &process_env)
    }

    /// Like `agent`, and started (which creates the log directory).
    async fn started(&self, fields: &str) -> ProcessAgent {
        let agent = self.agent(fields);
        agent.start(context()).await.expect("the agent starts");
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("logs/a.log")).expect("the agent's log")
    }
}

/// A running task, on its first attempt.
/// An agent context whose events nobody reads: per-task agents send none.
fn context() -> baton_runtime::agent::AgentContext {
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let (requests, _) = tokio::sync::mpsc::unbounded_channel();
    baton_runtime::agent::AgentContext { run_id: "run-1".into(), events, requests }
}

fn task(title: &str, input: Value) -> TaskRecord {
    TaskRecord {
        parent: None,
        id: TaskId(1),
        run_id: "run-1".into(),
        key: Some("the-task".into()),
        workstream: None,
        title: title.into(),
        description: String::new(),
        input,
        requires: Vec::new(),
        agent: None,
        depends_on: Vec::new(),
        priority: Priority::Medium,
        max_attempts: 3,
        timeout_ms: None,
        resources: Vec::new(),
        estimated_tokens: None,
        state: TaskState::Running,
        attempt: 1,
        assigned_agent: Some("a".into()),
        lease_owner: Some("node".into()),
        lease_expires_at: None,
        not_before: None,
        result: None,
        error: None,
        created_at: Timestamp::ZERO,
        updated_at: Timestamp::ZERO,
        finished_at: None,
    }
}

fn attempt(task: TaskRecord) -> Attempt {
    Attempt { run_id: "run-1".into(), agent: "a".into(), task }
}

/// Runs one attempt of `task` that nobody cancels.
async fn run(agent: &ProcessAgent, task: TaskRecord) -> Outcome {
    agent.run(attempt(task), CancellationToken::new()).await
}

fn failed(reason: &str) -> Outcome {
    Outcome::Failed { reason: reason.into() }
}

/// Makes a FIFO and opens its read end; a script signals it is running with
/// `echo started > NAME`, and `wait_started` waits for that line.
fn ready_fifo(path: &Path) -> BufReader<tokio::net::unix::pipe::Receiver> {
    mkfifo(path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // Read-write, so that the read end does not see end-of-file before the script opens it.
    let receiver =
        tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(path).expect("open the FIFO");
    BufReader::new(receiver)
}

async fn wait_started(fifo: &mut BufReader<tokio::net::unix::pipe::Receiver>) {
    let mut line = String::new();
    fifo.read_line(&mut line).await.expect("read the FIFO");
    assert_eq!(line, "started\n");
}

/// Whether the process `pid` has ended: it no longer exists, or it is a zombie. A process whose
/// parent died is reparented to init, which reaps it in its own time (in some containers only
/// every couple of seconds), so a zombie counts as ended: it runs nothing and holds nothing.
fn has_ended(pid: Pid) -> bool {
    if kill(pid, None) == Err(Errno::ESRCH) {
        return true;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state is the field after the parenthesised command name.
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[tokio::test]
async fn the_task_arrives_as_json_on_stdin_and_as_baton_variables() {
    let setup = Setup::new();
    setup.script(
        "echo.sh",
        r#"stdin=$(cat)
printf '{"stdin":%s,"env":{"BATON_TASK_ID":"%s","BATON_TASK_KEY":"%s","BATON_TASK_TITLE":"%s","BATON_TASK_INPUT":%s,"BATON_TASK_ATTEMPT":"%s","BATON_WORKSTREAM":"%s","BATON_AGENT":"%s","BATON_RUN_ID":"%s"}}\n' \
  "$stdin" "$BATON_TASK_ID" "$BATON_TASK_KEY" "$BATON_TASK_TITLE" "$BATON_TASK_INPUT" \
  "$BATON_TASK_ATTEMPT" "$BATON_WORKSTREAM" "$BATON_AGENT" "$BATON_RUN_ID"
"#,
    );
    let agent = setup.started(r#"command = ["bash", "echo.sh"]"#).await;
    let mut task = task("Write the docs", json!({ "path": "docs/", "pages": 3 }));
    task.id = TaskId(7);
    task.key = Some("docs".into());
    task.description = "All of them.".into();
    task.workstream = Some("writing".into());
    task.attempt = 2;

    let outcome = run(&agent, task).await;

    let result = json!({
        "stdin": {
            "id": 7,
            "key": "docs",
            "title": "Write the docs",
            "description": "All of them.",
            "input": { "path": "docs/", "pages": 3 },
            "workstream": "writing",
            "attempt": 2,
            "agent": "a",
            "run_id": "run-1",
            // Messages sent to the agent since its last task (none here).
            "messages": [],
            // Its `[[agents]]` role (the name when unset), runbook and objectives.
            "brief": { "role": "a", "runbook": null, "objectives": [] },
        },
        "env": {
            "BATON_TASK_ID": "7",
            "BATON_TASK_KEY": "docs",
            "BATON_TASK_TITLE": "Write the docs",
            "BATON_TASK_INPUT": { "path": "docs/", "pages": 3 },
            "BATON_TASK_ATTEMPT": "2",
            "BATON_WORKSTREAM": "writing",
            "BATON_AGENT": "a",
            "BATON_RUN_ID": "run-1",
        },
    });
    assert_eq!(outcome, Outcome::Succeeded { result });
}

/// The agent's `role`, `runbook` and `objectives` reach it: as `brief` on stdin and as
/// `BATON_AGENT_*` variables, the runbook's path resolved beside the configuration.
#[tokio::test]
async fn the_agents_role_runbook_and_objectives_reach_it() {
    let setup = Setup::new();
    setup.script(
        "brief.sh",
        r#"stdin=$(cat)
printf '{"stdin":%s,"role":"%s","runbook":"%s","objectives":%s}\n' \
  "$stdin" "$BATON_AGENT_ROLE" "$BATON_AGENT_RUNBOOK" "$BATON_AGENT_OBJECTIVES"
"#,
    );
    let agent = setup
        .started(
            r#"role = "Release manager"
command = ["bash", "brief.sh"]
runbook = "runbooks/release.md"
[[agents.objectives]]
description = "Ship 1.0"
deliverable = "A tagged release"
validation = "the tag exists"
"#,
        )
        .await;

    let Outcome::Succeeded { result } = run(&agent, task("Cut the release", json!({}))).await else {
        panic!("the attempt succeeds");
    };

    let runbook = setup.path("runbooks/release.md").display().to_string();
    let objectives =
        json!([{ "description": "Ship 1.0", "deliverable": "A tagged release", "validation": "the tag exists" }]);
    assert_eq!(
        result["stdin"]["brief"],
        json!({ "role": "Release manager", "runbook": runbook, "objectives": objectives })
    );
    assert_eq!(result["role"], "Release manager");
    assert_eq!(result["runbook"], runbook.as_str());
    assert_eq!(result["objectives"], objectives);
}

#[tokio::test]
async fn placeholders_become_whole_arguments_without_a_shell() {
    let setup = Setup::new();
    setup.script("args.sh", "printf '%s\\n' \"$#\" \"$@\"\n");
    let agent = setup
        .started(r#"command = ["bash", "args.sh", "{task.title}", "--file={task.input.file}", "{task.input.count}"]"#)
        .await;
    let title = "fix it; touch pwned $(touch pwned2) `touch pwned3` *";

    let outcome = run(&agent, task(title, json!({ "file": "src/my file.rs", "count": 2 }))).await;

    let result = format!("3\n{title}\n--file=src/my file.rs\n2");
    assert_eq!(outcome, Outcome::Succeeded { result: Value::String(result) });
    for name in ["pwned", "pwned2", "pwned3"] {
        assert!(!setup.path(name).exists(), "`{name}` was created: the title went through a shell");
    }
}

#[tokio::test]
async fn stdout_that_is_not_json_is_a_trimmed_string_result() {
    let setup = Setup::new();
    setup.script("say.sh", "printf '\\n  all done: 3 files {not json}  \\n\\n'\n");
    let agent = setup.started(r#"command = ["bash", "say.sh"]"#).await;

    let outcome = run(&agent, task("say", json!({}))).await;

    assert_eq!(outcome, Outcome::Succeeded { result: json!("all done: 3 files {not json}") });
}

#[tokio::test]
async fn empty_or_blank_stdout_is_a_null_result() {
    let setup = Setup::new();
    setup.script("quiet.sh", "echo 'only a log line' >&2\n");
    setup.script("blank.sh", "printf '  \\n\\n'\n");

    let quiet = setup.started(r#"command = ["bash", "quiet.sh"]"#).await;
    assert_eq!(run(&quiet, task("quiet", json!({}))).await, Outcome::Succeeded { result: Value::Null });
    let blank = setup.agent(r#"command = ["bash", "blank.sh"]"#);
    assert_eq!(run(&blank, task("blank", json!({}))).await, Outcome::Succeeded { result: Value::Null });
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_last_stderr_line_and_logs_stderr() {
    let setup = Setup::new();
    setup.script(
        "fail.sh",
        "echo 'starting' >&2\necho 'partial output'\necho 'first problem' >&2\necho 'disk full' >&2\necho '' >&2\nexit 3\n",
    );
    let agent = setup.started(r#"command = ["bash", "fail.sh"]"#).await;

    let outcome = run(&agent, task("Build it", json!({}))).await;

    assert_eq!(outcome, failed("exit status 3: disk full"));
    let log = setup.log();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[..6],
        ["--- agent a started", "--- task 1 `Build it` attempt 1", "starting", "first problem", "disk full", ""],
        "log:\n{log}"
    );
    assert_eq!(lines.len(), 7, "log:\n{log}");
    let footer = lines[6];
    assert!(footer.starts_with("--- task 1 attempt 1 failed in "), "footer: {footer}");
    assert!(footer.ends_with(": exit status 3: disk full"), "footer: {footer}");
    assert!(!log.contains("partial output"), "stdout went to the log:\n{log}");
}

#[tokio::test]
async fn the_environment_is_allow_listed() {
    let setup = Setup::new();
    // `env` itself is the agent, so no shell adds variables of its own.
    let agent = setup.started("command = [\"env\"]\nenv_passthrough = [\"PASS_ME\"]\nenv = { K = \"v\" }").await;

    let outcome = run(&agent, task("show env", json!({ "n": 1 }))).await;

    let Outcome::Succeeded { result: Value::String(stdout) } = outcome else {
        panic!("unexpected outcome {outcome:?}")
    };
    let env: BTreeMap<&str, &str> = stdout.lines().map(|line| line.split_once('=').expect("NAME=value")).collect();
    let home = setup.dir.path().display().to_string();
    let expected = BTreeMap::from([
        ("PATH", setup.env["PATH"].as_str()),
        ("HOME", home.as_str()),
        ("PASS_ME", "passed"),
        ("K", "v"),
        ("BATON_TASK_ID", "1"),
        ("BATON_TASK_KEY", "the-task"),
        ("BATON_TASK_TITLE", "show env"),
        ("BATON_TASK_INPUT", r#"{"n":1}"#),
        ("BATON_TASK_ATTEMPT", "1"),
        ("BATON_WORKSTREAM", ""),
        ("BATON_AGENT", "a"),
        ("BATON_RUN_ID", "run-1"),
        ("BATON_AGENT_ROLE", "a"),
        ("BATON_AGENT_OBJECTIVES", "[]"),
    ]);
    assert_eq!(env, expected);
    assert!(!stdout.contains("hunter2"), "the secret leaked:\n{stdout}");
}

#[tokio::test]
async fn a_timeout_fails_the_task_and_kills_its_whole_process_group() {
    let setup = Setup::new();
    setup.script("slow.sh", "sleep 60 &\necho $! > grandchild.pid\nsleep 60\n");
    let agent = setup.started(r#"command = ["bash", "slow.sh"]"#).await;
    let mut task = task("slow", json!({}));
    task.timeout_ms = Some(300);

    let outcome = run(&agent, task).await;

    assert_eq!(outcome, failed("timed out after 300ms"));
    let pid = std::fs::read_to_string(setup.path("grandchild.pid")).expect("the script wrote the grandchild's pid");
    let grandchild = Pid::from_raw(pid.trim().parse().expect("a pid"));
    // The group has been signalled when `run` returns, but the grandchild's death is
    // asynchronous: poll briefly, for this process-exit check only.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !has_ended(grandchild) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(has_ended(grandchild), "the grandchild {grandchild} outlived the timed-out task");
}

#[tokio::test]
async fn cancelling_stops_the_attempt_promptly() {
    let setup = Setup::new();
    let mut fifo = ready_fifo(&setup.path("ready"));
    setup.script("sleep.sh", "echo started > ready\nsleep 60\n");
    let agent = setup.started(r#"command = ["bash", "sleep.sh"]"#).await;
    let cancel = CancellationToken::new();

    let (outcome, cancelled_at) = tokio::join!(agent.run(attempt(task("sleepy", json!({}))), cancel.clone()), async {
        wait_started(&mut fifo).await;
        cancel.cancel();
        Instant::now()
    });

    assert_eq!(outcome, failed("cancelled"));
    let took = cancelled_at.elapsed();
    assert!(took < Duration::from_secs(5), "run returned {took:?} after the cancellation");
}

#[tokio::test]
async fn stop_kills_running_attempts() {
    let setup = Setup::new();
    let mut fifo = ready_fifo(&setup.path("ready"));
    setup.script("sleep.sh", "echo started > ready\nsleep 60\n");
    let agent = setup.started(r#"command = ["bash", "sleep.sh"]"#).await;

    let (outcome, stopped_at) = tokio::join!(run(&agent, task("sleepy", json!({}))), async {
        wait_started(&mut fifo).await;
        agent.stop().await;
        Instant::now()
    });

    assert_eq!(outcome, failed("killed by SIGKILL"));
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(5), "run returned {took:?} after stop");
}

#[tokio::test]
async fn a_memory_limit_stops_a_process_that_allocates_more() {
    let setup = Setup::new();
    let command = r#"command = ["python3", "-c", "x = bytearray(512 * 1024 * 1024)"]"#;
    let limited = setup.started(&format!("{command}\nlimits = {{ memory = \"64MiB\" }}")).await;

    let outcome = run(&limited, task("allocate", json!({}))).await;

    assert_eq!(outcome, failed("exit status 1: MemoryError"));
    // The same allocation without the limit succeeds: the limit, not the allocation, failed it.
    let unlimited = setup.agent(command);
    assert_eq!(run(&unlimited, task("allocate", json!({}))).await, Outcome::Succeeded { result: Value::Null });
}

#[tokio::test]
async fn start_checks_that_the_command_exists() {
    let setup = Setup::new();

    // Permanent: starting it again would fail the same way, so the engine fails the agent at
    // once instead of burning its restarts.
    let missing = setup.agent(r#"command = ["nope-not-here", "--flag"]"#);
    assert_eq!(missing.start(context()).await, Err(AgentError::permanent("command `nope-not-here` not found in PATH")));
    setup.script("not-executable.sh", "exit 0");
    let not_executable = setup.agent(r#"command = ["./not-executable.sh"]"#);
    let error = not_executable.start(context()).await.unwrap_err();
    assert!(error.is_permanent() && error.message.contains("is not executable"), "{error:?}");
    let nowhere = setup.agent("command = [\"bash\"]\nworkdir = \"no-such-dir\"");
    let error = nowhere.start(context()).await.unwrap_err();
    assert!(error.is_permanent() && error.message.starts_with("working directory"), "{error:?}");

    let bash = setup.agent(r#"command = ["bash", "anything.sh"]"#);
    assert_eq!(bash.start(context()).await, Ok(()));
    assert_eq!(setup.log(), "--- agent a started\n");
}

#[tokio::test]
async fn a_missing_input_field_fails_the_attempt() {
    let setup = Setup::new();
    setup.script("ok.sh", "echo ok\n");
    let agent = setup.started(r#"command = ["bash", "ok.sh", "{task.input.missing}"]"#).await;

    let outcome = run(&agent, task("needs input", json!({ "present": 1 }))).await;

    assert_eq!(outcome, failed("the task's input has no field `missing` for `{task.input.missing}`"));
}

/// A timeout must hold even when the process never reads its stdin and the task's JSON is larger
/// than a pipe's buffer (64 KiB).
#[tokio::test]
async fn a_timeout_holds_when_the_process_does_not_read_a_large_stdin() {
    let setup = Setup::new();
    setup.script("deaf.sh", "exec sleep 60\n");
    let agent = setup.started(r#"command = ["bash", "deaf.sh"]"#).await;
    let mut task = task("deaf", json!({}));
    // In the stdin JSON only: a large input would also be too large for `BATON_TASK_INPUT`.
    task.description = "x".repeat(256 * 1024);
    task.timeout_ms = Some(300);

    let outcome = tokio::time::timeout(Duration::from_secs(5), run(&agent, task)).await;

    assert_eq!(outcome, Ok(failed("timed out after 300ms")), "the 300ms timeout did not stop the process");
}

/// An input too large for one environment variable still reaches the agent, on stdin.
#[tokio::test]
async fn a_large_input_arrives_on_stdin_only() {
    let setup = Setup::new();
    setup.script("big.sh", "printf '{\"var\":%d,\"stdin\":%d}' \"${#BATON_TASK_INPUT}\" \"$(wc -c)\"\n");
    let agent = setup.started(r#"command = ["bash", "big.sh"]"#).await;
    let task = task("big", json!({ "blob": "x".repeat(200 * 1024) }));
    let Outcome::Succeeded { result } = run(&agent, task).await else {
        panic!("a large input must not fail the attempt");
    };
    assert_eq!(result["var"], 0, "too large for BATON_TASK_INPUT");
    assert!(result["stdin"].as_u64().unwrap() > 200 * 1024);
}

/// Bytes that are not UTF-8 on stderr are logged as they are, and the agent keeps running.
#[tokio::test]
async fn stderr_that_is_not_utf8_does_not_kill_the_agent() {
    let setup = Setup::new();
    setup.script("latin1.sh", "printf 'caf\\xe9\\n' >&2\nprintf 'more\\n' >&2\necho ok\n");
    let agent = setup.started(r#"command = ["bash", "latin1.sh"]"#).await;
    let outcome = run(&agent, task("latin1", json!({}))).await;
    assert_eq!(outcome, Outcome::Succeeded { result: json!("ok") });
    let log = std::fs::read(setup.path("logs/a.log")).unwrap();
    assert!(log.windows(5).any(|window| window == b"caf\xe9\n"), "the raw bytes are logged");
    assert!(String::from_utf8_lossy(&log).contains("more\n"));
}

/// A process that leaves the attempt's group and keeps the pipes open does not hold the
/// attempt once the agent itself has exited.
#[tokio::test]
async fn an_escaped_process_does_not_hold_the_attempt_open() {
    let setup = Setup::new();
    setup.script("escape.sh", "setsid sleep 30 &\necho $! > escaped.pid\necho done\n");
    let agent = setup.started(r#"command = ["bash", "escape.sh"]"#).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), run(&agent, task("escape", json!({})))).await;
    let pid: i32 = std::fs::read_to_string(setup.path("escaped.pid")).unwrap().trim().parse().unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    assert!(outcome.is_ok(), "the attempt ended without waiting for the escaped process");
}

#[tokio::test]
async fn a_huge_stderr_line_is_cut_in_the_log_and_in_the_failure_reason() {
    let setup = Setup::new();
    // 2 MiB of stderr without a newline, then a failure.
    setup.script("loud.sh", "head -c 2097152 /dev/zero | tr '\\0' x >&2\nexit 3\n");
    let agent = setup.started(r#"command = ["bash", "loud.sh"]"#).await;
    let Outcome::Failed { reason } = run(&agent, task("loud", Value::Null)).await else { panic!("the attempt fails") };
    assert!(reason.len() < 5 * 1024, "the failure reason is capped: {} bytes", reason.len());
    assert!(reason.starts_with("exit status 3: xxx"), "{}", &reason[..40]);
    assert!(
        reason.ends_with(&format!("… [{} bytes cut]", 2097152 - 4096 + "exit status 3: ".len())),
        "{}",
        &reason[reason.len() - 40..]
    );
    let log = setup.log();
    let line = log.lines().find(|line| line.starts_with("xxx")).expect("the stderr line is in the log");
    assert_eq!(line.len(), 64 * 1024 + format!(" … [{} bytes cut]", 2097152 - 64 * 1024).len());
    assert!(line.ends_with(&format!("… [{} bytes cut]", 2097152 - 64 * 1024)), "{}", &line[line.len() - 40..]);
}

#[tokio::test]
async fn an_agents_log_is_rotated_by_size_and_old_files_are_dropped() {
    let setup = Setup::new();
    // 1 KiB of stderr per attempt.
    setup.script("chatty.sh", "for i in $(seq 16); do printf '%063d\\n' $i >&2; done\necho done\n");
    let agent =
        setup.started("command = [\"bash\", \"chatty.sh\"]\n\n[logs]\nmax_size = \"4KiB\"\nmax_files = 2\n").await;
    for _ in 0..20 {
        assert_eq!(run(&agent, task("chatty", Value::Null)).await, Outcome::Succeeded { result: json!("done") });
    }
    let current = std::fs::metadata(setup.path("logs/a.log")).expect("the current log").len();
    let first = std::fs::metadata(setup.path("logs/a.log.1")).expect("the first rotated log").len();
    let second = std::fs::metadata(setup.path("logs/a.log.2")).expect("the second rotated log").len();
    assert!(!setup.path("logs/a.log.3").exists(), "only max_files rotated files are kept");
    for size in [current, first, second] {
        assert!(size <= 4096, "a log file holds at most max_size bytes: {size}");
    }
    assert!(first > 3000 && second > 3000, "rotated files are full: {first} {second}");
}

#[tokio::test]
async fn a_result_over_the_limit_is_reported_as_such() {
    let setup = Setup::new();
    let agent = setup.started(r#"command = ["head", "-c", "17000000", "/dev/zero"]"#).await;
    assert_eq!(run(&agent, task("big", Value::Null)).await, failed("the result is over the limit of 16777216 bytes"));
}

/// `{mcp.config}` is the path of the agent's MCP configuration: the servers its `tools` reach,
/// expanded, in the run's directory (beside the logs), readable by its owner only.
#[tokio::test]
async fn mcp_config_is_the_servers_the_agents_tools_reach() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let text = r#"
[orchestration]
name = "t"

[mcp_servers.fs]
command = ["fs-server", "."]
env = { ROOT = "${HOME}" }

[mcp_servers.search]
url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer ${BATON_SECRET}" }

[[agents]]
name = "a"
command = ["cat", "{mcp.config}"]
tools = ["search/*"]
"#;
    let mut plan = baton_core::config::load("baton.toml", text, &setup.env).expect("a valid configuration");
    let spec = plan.agents.remove(0);
    let process = spec.process().cloned().expect("a process agent");
    let process_env = ProcessEnv {
        base_dir: setup.dir.path().to_path_buf(),
        log_dir: setup.path("logs"),
        env: setup.env.clone(),
        registry: None,
        api: None,
        mcp_servers: plan.mcp_servers.clone(),
    };
    let agent = ProcessAgent::new(spec, process, &process_env);
    agent.start(context()).await.expect("the agent starts");
    let outcome = run(&agent, task("configured", json!({}))).await;
    let expected = json!({"mcpServers": {"search": {
        "type": "http", "url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer hunter2"},
    }}});
    assert_eq!(outcome, Outcome::Succeeded { result: expected });
    let path = setup.path("mcp/a.json");
    assert_eq!(std::fs::metadata(&path).expect("the file").permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_tapped_attempt_hands_its_stderr_lines_over_as_they_are_logged() {
    // What `baton agent-host` does: each stderr line goes to its channel besides the log.
    let setup = Setup::new();
    setup.script("talk.sh", "echo 'first line' >&2\necho 'second line' >&2\necho '{\"done\": true}'\n");
    let agent = setup.started(r#"command = ["bash", "talk.sh"]"#).await;
    let (tap, mut lines) = tokio::sync::mpsc::channel(16);

    let outcome = agent.run_tapped(attempt(task("Talk", json!({}))), CancellationToken::new(), Some(tap)).await;

    assert_eq!(outcome, Outcome::Succeeded { result: json!({"done": true}) });
    let mut tapped = Vec::new();
    while let Some(line) = lines.recv().await {
        tapped.push(line);
    }
    assert_eq!(tapped, ["first line", "second line"]);
    let log = setup.log();
    assert!(log.contains("first line\nsecond line\n"), "log:\n{log}");
}
