//! `baton check` on broken configurations: each case is a `baton.toml` and the exact error
//! the user sees. Exit status 2 every time.

mod common;

use common::{Project, stderr};

const GOOD: &str = r#"[orchestration]
name = "plan"

[[workstreams]]
name = "build"
priority = "critical"

[[workstreams]]
name = "testing"
depends_on = ["build"]

[[agents]]
name = "builder"
workstream = "build"
capabilities = ["rust"]
command = ["bash", "agent.sh", "{task.title}"]

[[agents]]
name = "tester"
workstream = "testing"
capabilities = ["test"]
command = ["bash", "agent.sh"]

[[tasks]]
key = "compile"
title = "Compile"
workstream = "build"
requires = ["rust"]

[[tasks]]
key = "unit"
title = "Unit tests"
workstream = "testing"
requires = ["test"]
depends_on = ["compile"]
"#;

/// Each case: a description, an edit of GOOD (from, to), and the exact error output.
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "unknown key",
        "capabilities = [\"rust\"]",
        "capabilites = [\"rust\"]",
        "baton.toml:15:1: unknown field `capabilites`, expected one of `name`, `role`, `workstream`, `priority`, `capabilities`, `runtime`, `mode`, `command`, `restart`, `max_restarts`, `restart_window`, `restart_backoff`, `heartbeat_timeout`, `circuit_breaker`, `max_message_size`, `input_template`, `done_when`, `stall_after`, `prompt_patterns`, `concurrency`, `runbook`, `env`, `env_passthrough`, `workdir`, `limits`, `objectives`, `budget`, `url`, `auth_header_env`, `tools`, `provider`, `model`, `max_turns`, `max_tokens`",
    ),
    (
        "wrong type",
        "name = \"plan\"",
        "name = \"plan\"\nmax_concurrent_agents = \"many\"",
        "baton.toml:3:25: invalid type: string \"many\", expected u32",
    ),
    (
        "bad duration",
        "name = \"plan\"",
        "name = \"plan\"\nlease_ttl = \"soon\"",
        "baton.toml:3:13: invalid duration `soon` (expected number at 0); write a number and a unit, e.g. \"30s\", \"10m\", \"1h\"",
    ),
    (
        "a duration no clock can add (it passed check, then panicked the first claim)",
        "name = \"tester\"",
        "name = \"tester\"\nheartbeat_timeout = \"3000000000000000h\"",
        "baton.toml:20:21: duration `3000000000000000h` is too long: at most 3650 days (about 10 years)",
    ),
    (
        "a memory limit no program starts under",
        "command = [\"bash\", \"agent.sh\"]",
        "command = [\"bash\", \"agent.sh\"]\nlimits = { memory = \"1B\" }",
        "baton.toml:23:21: `limits.memory` must be at least \"1MiB\"",
    ),
    (
        "missing workstream",
        "depends_on = [\"build\"]",
        "depends_on = [\"biuld\"]",
        "baton.toml:10:15: unknown workstream `biuld` (did you mean `build`?)",
    ),
    (
        "workstream cycle",
        "priority = \"critical\"",
        "priority = \"critical\"\ndepends_on = [\"testing\"]",
        "baton.toml:5:8: workstream dependency cycle: build -> testing -> build",
    ),
    (
        "task cycle",
        "requires = [\"rust\"]",
        "requires = [\"rust\"]\ndepends_on = [\"unit\"]",
        "baton.toml:25:7: task dependency cycle: compile -> unit -> compile\nbaton.toml:29:15: task `compile` (phase 1) depends on `unit`, which runs in a later phase (2); it could never start",
    ),
    (
        "missing agent",
        "requires = [\"test\"]",
        "requires = [\"test\"]\nagent = \"testr\"",
        "baton.toml:35:9: unknown agent `testr` (did you mean `tester`?)",
    ),
    (
        "unsatisfiable requires",
        "requires = [\"test\"]",
        "requires = [\"test\", \"gpu\"]",
        "baton.toml:34:13: task `unit` cannot be assigned: no agent of workstream `testing` or shared has [test, gpu]; add the capabilities to an agent or change `requires`",
    ),
    (
        "unset variable",
        "command = [\"bash\", \"agent.sh\"]",
        "command = [\"bash\", \"agent.sh\", \"${BATON_TEST_SURELY_UNSET}\"]",
        "baton.toml:22:32: environment variable `BATON_TEST_SURELY_UNSET` is not set; set it, or write `${BATON_TEST_SURELY_UNSET:-default}`",
    ),
    (
        "command not found",
        "command = [\"bash\", \"agent.sh\"]",
        "command = [\"no-such-agent-cli\", \"-p\"]",
        "baton.toml:22:12: agent `tester`: command `no-such-agent-cli` not found in PATH",
    ),
    (
        "script not found",
        "command = [\"bash\", \"agent.sh\"]",
        "command = [\"bash\", \"agents/tester.sh\"]",
        "baton.toml:22:12: agent `tester`: script `agents/tester.sh` not found in {dir}",
    ),
    (
        "syntax error",
        "[[tasks]]\nkey = \"unit\"",
        "[[tasks]\nkey = \"unit\"",
        "baton.toml:30:9: unclosed array table, expected `]`",
    ),
];

#[test]
fn broken_configurations_are_reported_with_their_place() {
    let project = Project::with(GOOD, &[("agent.sh", "#!/usr/bin/env bash\necho ok\n")]);
    let good = project.baton(&["check"]);
    assert_eq!(good.status.code(), Some(0), "the base configuration is valid: {}", stderr(&good));
    let dir = std::fs::canonicalize(project.path()).unwrap();
    let mut failures = Vec::new();
    for (name, from, to, expected) in CASES {
        assert!(GOOD.contains(from), "case `{name}`: GOOD has no `{from}`");
        std::fs::write(project.path().join("baton.toml"), GOOD.replacen(from, to, 1)).unwrap();
        let output = project.baton(&["check"]);
        let expected = format!("{}\nbaton.toml is not valid\n", expected.replace("{dir}", &dir.display().to_string()));
        let actual = stderr(&output);
        if output.status.code() != Some(2) || actual != expected {
            failures.push(format!(
                "case `{name}`: exit {:?}\nexpected:\n{expected}actual:\n{actual}",
                output.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn run_refuses_a_broken_configuration_and_keeps_the_store() {
    let project = Project::with(GOOD, &[("agent.sh", "#!/usr/bin/env bash\necho ok\n")]);
    assert_eq!(project.baton(&["run"]).status.code(), Some(0));
    std::fs::write(
        project.path().join("baton.toml"),
        GOOD.replacen("depends_on = [\"build\"]", "depends_on = [\"nope\"]", 1),
    )
    .unwrap();
    let run = project.baton(&["run"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(stderr(&run).starts_with("baton.toml:10:15: unknown workstream `nope`"), "{}", stderr(&run));
    // What was stored is still there.
    std::fs::write(project.path().join("baton.toml"), GOOD).unwrap();
    let status = project.baton(&["status"]);
    assert!(common::stdout(&status).contains("state     succeeded"));
}

#[test]
fn check_refuses_an_unset_or_short_token_secret() {
    let config = format!("{GOOD}\n[auth]\nsecret_env = \"TEST_CHECK_SECRET\"\n");
    let project = Project::with(&config, &[("agent.sh", "#!/usr/bin/env bash\necho ok\n")]);
    let unset = project.command(&["check"]).env_remove("TEST_CHECK_SECRET").output().unwrap();
    assert_eq!(unset.status.code(), Some(2));
    assert!(
        stderr(&unset).contains("auth.secret_env names `TEST_CHECK_SECRET`, which is not set"),
        "{}",
        stderr(&unset)
    );
    let short = project.command(&["check"]).env("TEST_CHECK_SECRET", "x").output().unwrap();
    assert_eq!(short.status.code(), Some(2));
    assert!(stderr(&short).contains("is 1 byte(s) long; it must be at least 32"), "{}", stderr(&short));
    let good = project.command(&["check"]).env("TEST_CHECK_SECRET", "k".repeat(32)).output().unwrap();
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
}

/// A workstream cycle, an unset variable and a command that does not exist: one `baton check`
/// reports all three, in file order, instead of one per round.
#[test]
fn check_reports_every_problem_at_once() {
    let config = GOOD
        .replacen("priority = \"critical\"", "priority = \"critical\"\ndepends_on = [\"testing\"]", 1)
        .replacen("\"{task.title}\"", "\"${CHECK_TEST_UNSET}\"", 1)
        .replacen("command = [\"bash\", \"agent.sh\"]", "command = [\"no-such-program-for-baton\"]", 1);
    let project = Project::with(&config, &[("agent.sh", "#!/usr/bin/env bash\necho ok\n")]);
    let output = project.command(&["check"]).env_remove("CHECK_TEST_UNSET").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let actual = stderr(&output);
    let lines: Vec<&str> = actual.lines().collect();
    assert_eq!(lines.len(), 4, "{actual}");
    assert_eq!(lines[0], "baton.toml:5:8: workstream dependency cycle: build -> testing -> build", "{actual}");
    assert!(lines[1].starts_with("baton.toml:17:32: environment variable `CHECK_TEST_UNSET` is not set"), "{actual}");
    assert!(
        lines[2].starts_with("baton.toml:23:12: agent `tester`: command `no-such-program-for-baton` not found"),
        "{actual}"
    );
    assert_eq!(lines[3], "baton.toml is not valid", "{actual}");
}

/// A profile that has no file: one message saying where it was looked for and which profiles
/// there are, not "baton.toml is not valid".
#[test]
fn a_missing_profile_is_one_clear_message() {
    let project = Project::with(GOOD, &[("agent.sh", "#!/usr/bin/env bash\necho ok\n")]);
    let output = project.baton(&["check", "--profile", "nope"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "profile `nope` not found: there is no baton.nope.toml; there is no profile beside it\n"
    );
    std::fs::write(project.path().join("baton.prod.toml"), "[orchestration]\nname = \"prod\"\n").unwrap();
    let output = project.baton(&["check", "--profile", "nope"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "profile `nope` not found: there is no baton.nope.toml; the only profile there is `prod`\n"
    );
}
