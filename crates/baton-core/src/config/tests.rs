use super::*;
use crate::model::TaskRef;
use crate::schedule::{Missed, Overlap};

fn env() -> BTreeMap<String, String> {
    BTreeMap::from([("HOME".to_string(), "/home/me".to_string())])
}

fn errors(text: &str) -> String {
    load("baton.toml", text, &env()).unwrap_err().to_string()
}

const MINIMAL: &str = r#"
[orchestration]
name = "demo"

[[workstreams]]
name = "build"
priority = "critical"

[[workstreams]]
name = "testing"
priority = "high"
depends_on = ["build"]

[[agents]]
name = "builder"
workstream = "build"
capabilities = ["rust"]
command = ["bash", "agents/build.sh", "{task.title}"]

[[agents]]
name = "tester"
capabilities = ["test"]
command = ["true"]

[[tasks]]
key = "compile"
title = "Compile"
workstream = "build"
requires = ["rust"]

[[tasks]]
title = "Run the tests"
workstream = "testing"
requires = ["test"]
depends_on = ["compile"]
"#;

#[test]
fn a_valid_plan_has_phases_keys_and_defaults() {
    let plan = load("baton.toml", MINIMAL, &env()).unwrap();
    assert_eq!(plan.phases, vec![vec!["build".to_string()], vec!["testing".to_string()]]);
    assert_eq!(plan.tasks[1].key.as_deref(), Some("run-the-tests"));
    assert_eq!(plan.tasks[1].depends_on, vec![TaskRef::Key("compile".into())]);
    assert_eq!(plan.tasks[0].priority, Priority::Critical, "tasks inherit their workstream's priority");
    assert_eq!(plan.tasks[0].max_attempts, 3);
    assert_eq!(plan.agents[0].priority, Priority::Critical);
    assert_eq!(plan.agents[0].process().unwrap().command_location.line, 18);
    assert_eq!(plan.store_url, "sqlite://.baton/baton.db");
    let description = plan.describe();
    assert!(description.contains("phase 1:\n  build [critical]: 1 task(s); agents: builder"), "{description}");
    assert!(description.contains("shared agents (all phases): tester"), "{description}");
}

#[test]
fn unknown_keys_name_the_place_and_what_is_expected() {
    let text = MINIMAL.replace("capabilities = [\"rust\"]", "capabilites = [\"rust\"]");
    let message = errors(&text);
    assert!(message.starts_with("baton.toml:17:1: unknown field `capabilites`, expected one of"), "{message}");
}

#[test]
fn wrong_types_are_reported_at_the_value() {
    let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nmax_concurrent_agents = \"eight\"");
    assert_eq!(errors(&text), "baton.toml:4:25: invalid type: string \"eight\", expected u32");
    let text = MINIMAL.replace("priority = \"high\"", "priority = \"urgent\"");
    assert_eq!(
        errors(&text),
        "baton.toml:11:12: unknown variant `urgent`, expected one of `critical`, `high`, `medium`, `low`"
    );
    let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nagent_spawn_timeout = \"30 parsecs\"");
    assert!(errors(&text).starts_with("baton.toml:4:23: invalid duration `30 parsecs`"), "{}", errors(&text));
}

#[test]
fn references_to_missing_things_suggest_the_closest_name() {
    let text = MINIMAL.replace("depends_on = [\"build\"]", "depends_on = [\"biuld\"]");
    assert_eq!(errors(&text), "baton.toml:12:15: unknown workstream `biuld` (did you mean `build`?)");
    let text = MINIMAL.replace("depends_on = [\"compile\"]", "depends_on = [\"nothing-like-it\"]");
    assert_eq!(errors(&text), "baton.toml:35:15: unknown task `nothing-like-it` (known: compile, run-the-tests)");
    let text = MINIMAL.replace("workstream = \"build\"\ncapabilities", "workstream = \"buidl\"\ncapabilities");
    assert!(errors(&text).starts_with("baton.toml:16:14: unknown workstream `buidl` (did you mean `build`?)\n"));
}

#[test]
fn cycles_are_named() {
    let text = MINIMAL.replace("priority = \"critical\"", "priority = \"critical\"\ndepends_on = [\"testing\"]");
    assert_eq!(errors(&text), "baton.toml:6:8: workstream dependency cycle: build -> testing -> build");
    let text = MINIMAL.replace("key = \"compile\"", "key = \"compile\"\ndepends_on = [\"compile\"]");
    assert_eq!(errors(&text), "baton.toml:27:15: task `compile` depends on itself");
}

/// A cycle does not hide the rest: the checks that do not need the phases still run, in one
/// report, and the partial plan keeps the agents for the checks that need the machine.
#[test]
fn every_problem_is_reported_beside_a_cycle() {
    let text = MINIMAL
        .replace("priority = \"critical\"", "priority = \"critical\"\ndepends_on = [\"testing\"]")
        .replace("\"{task.title}\"", "\"${API_KEY}\"")
        .replace("requires = [\"test\"]", "requires = [\"test\", \"gpu\"]");
    assert_eq!(
        errors(&text),
        "baton.toml:6:8: workstream dependency cycle: build -> testing -> build\n\
         baton.toml:19:39: environment variable `API_KEY` is not set; set it, or write `${API_KEY:-default}`\n\
         baton.toml:35:13: task `run-the-tests` cannot be assigned: no agent of workstream `testing` or shared has [test, gpu]; add the capabilities to an agent or change `requires`"
    );
    let source = Source { file: "baton.toml", text: &text };
    let invalid = check_sources(source, None, &env()).unwrap_err();
    let partial = invalid.partial.expect("a partial plan");
    assert_eq!(partial.agents.len(), 2);
    assert_eq!(partial.agents[1].process().unwrap().command, vec!["true".to_string()]);
    assert!(partial.phases.is_empty());
}

#[test]
fn a_task_no_agent_can_run_is_an_error() {
    let text = MINIMAL.replace("requires = [\"test\"]", "requires = [\"test\", \"gpu\"]");
    assert_eq!(
        errors(&text),
        "baton.toml:34:13: task `run-the-tests` cannot be assigned: no agent of workstream `testing` or shared has [test, gpu]; add the capabilities to an agent or change `requires`"
    );
}

#[test]
fn a_dependency_on_a_later_phase_is_an_error() {
    let text = MINIMAL.replace("requires = [\"rust\"]", "requires = [\"rust\"]\ndepends_on = [\"run-the-tests\"]");
    let message = errors(&text);
    assert!(
        message.contains("task `compile` (phase 1) depends on `run-the-tests`, which runs in a later phase (2)"),
        "{message}"
    );
}

#[test]
fn unset_variables_and_bad_placeholders_are_errors() {
    let text = MINIMAL.replace("\"{task.title}\"", "\"${API_KEY}\", \"{task.titel}\"");
    assert_eq!(
        errors(&text),
        "baton.toml:18:39: environment variable `API_KEY` is not set; set it, or write `${API_KEY:-default}`\n\
         baton.toml:18:53: unknown placeholder `{task.titel}`; known: {task.id}, {task.key}, {task.title}, {task.description}, {agent.name}, {run.id}, {mcp.config}, {task.input.FIELD}"
    );
    let text = MINIMAL.replace("\"{task.title}\"", "\"${HOME}/x\", \"{task.input.path}\", \"awk '{print $1}'\"");
    let plan = load("baton.toml", &text, &env()).unwrap();
    assert_eq!(plan.agents[0].process().unwrap().command[2], "/home/me/x");
}

#[test]
fn syntax_errors_have_a_location() {
    let message = errors("[orchestration]\nname = \"x\"\n[[agents]\n");
    assert!(message.starts_with("baton.toml:3:"), "{message}");
    let message = errors("");
    assert!(message.contains("missing field `orchestration`"), "{message}");
}

#[test]
fn expansion_handles_defaults_and_escapes() {
    let env = env();
    assert_eq!(expand_vars("${HOME}/a", &env).unwrap(), "/home/me/a");
    assert_eq!(expand_vars("${NOPE:-x}", &env).unwrap(), "x");
    assert_eq!(expand_vars("$$HOME $1", &env).unwrap(), "$HOME $1");
    assert!(expand_vars("${HOME", &env).is_err());
}

#[test]
fn slugs_and_placeholders() {
    assert_eq!(slug("Analyze the base64ct conflict!"), "analyze-the-base64ct-conflict");
    assert_eq!(placeholders("--t={task.title} {x} {task.input.a-b}"), vec!["task.title", "task.input.a-b"]);
}

const TERMINAL: &str = r#"
[orchestration]
name = "terminal"

[[agents]]
name = "repl"
mode = "pty"
command = ["bash", "repl.sh"]

[[tasks]]
title = "Say hello"
"#;

#[test]
fn a_terminal_agent_gets_the_terminal_defaults() {
    let plan = load("baton.toml", TERMINAL, &env()).unwrap();
    let agent = &plan.agents[0];
    assert_eq!(agent.process_mode(), Some(ProcessMode::Pty));
    let terminal = agent.process().unwrap().terminal.as_ref().expect("a terminal agent has terminal settings");
    assert_eq!(terminal.input_template, "{task.description}\n");
    assert_eq!(terminal.done_when, DoneWhen::Exit);
    assert_eq!(terminal.stall_after, Duration::from_secs(300));
    assert_eq!(terminal.prompt_patterns.len(), DEFAULT_PROMPT_PATTERNS.len());
    for pattern in &terminal.prompt_patterns {
        assert!(regex::Regex::new(pattern).is_ok(), "default pattern `{pattern}` compiles");
    }
    let per_task = load("baton.toml", MINIMAL, &env()).unwrap();
    assert_eq!(per_task.agents[0].process().unwrap().terminal, None, "only terminal agents have terminal settings");
}

#[test]
fn terminal_keys_are_read_and_checked() {
    let text = TERMINAL.replace(
        "command = [\"bash\", \"repl.sh\"]",
        "command = [\"bash\", \"repl.sh\"]\ninput_template = \"{task.title}\\n\"\ndone_when = { file = \"out/{task.key}.done\" }\nstall_after = \"1m\"\nprompt_patterns = [\"Proceed\\\\?\"]",
    );
    let plan = load("baton.toml", &text, &env()).unwrap();
    let terminal = plan.agents[0].process().unwrap().terminal.clone().unwrap();
    assert_eq!(terminal.input_template, "{task.title}\n");
    assert_eq!(terminal.done_when, DoneWhen::File("out/{task.key}.done".into()));
    assert_eq!(terminal.stall_after, Duration::from_secs(60));
    assert_eq!(terminal.prompt_patterns, vec!["Proceed\\?".to_string()]);

    let text = TERMINAL.replace("mode = \"pty\"", "mode = \"pty\"\ndone_when = { output = \"DONE (\" }");
    assert_eq!(
        errors(&text),
        "baton.toml:8:24: `done_when.output`: invalid regular expression `DONE (`: unclosed group"
    );
    let text = TERMINAL.replace("mode = \"pty\"", "mode = \"pty\"\nprompt_patterns = [\"ok\", \"[y/N\"]");
    assert_eq!(
        errors(&text),
        "baton.toml:8:26: `prompt_patterns`: invalid regular expression `[y/N`: unclosed character class"
    );
    let text = TERMINAL.replace("mode = \"pty\"", "mode = \"pty\"\ndone_when = { output = \"x\", exit = true }");
    assert_eq!(
        errors(&text),
        "baton.toml:8:13: `done_when` takes exactly one rule: { output = \"REGEX\" }, { file = \"PATH\" } or { exit = true }"
    );
    let text = TERMINAL.replace("mode = \"pty\"", "mode = \"pty\"\ndone_when = { exit = false }");
    assert_eq!(
        errors(&text),
        "baton.toml:8:22: `done_when.exit` can only be true; to end tasks otherwise use `output` or `file`"
    );
    let text = TERMINAL.replace("mode = \"pty\"", "mode = \"pty\"\ninput_template = \"{task.titel}\"");
    assert!(errors(&text).starts_with("baton.toml:8:18: unknown placeholder `{task.titel}`"), "{}", errors(&text));
    let text = TERMINAL.replace("mode = \"pty\"", "mode = \"pty\"\nconcurrency = 2");
    assert_eq!(
        errors(&text),
        "baton.toml:8:15: a terminal agent (mode = \"pty\") runs one task at a time; remove `concurrency`"
    );
}

#[test]
fn terminal_keys_on_other_agents_are_errors() {
    let text = TERMINAL.replace("mode = \"pty\"", "mode = \"worker\"\nstall_after = \"1m\"");
    assert_eq!(
        errors(&text),
        "baton.toml:8:15: `stall_after` applies only to terminal agents; add mode = \"pty\" or remove `stall_after` (this agent's mode is \"worker\")"
    );
}

#[test]
fn schedules_are_read_with_their_defaults() {
    let text = format!(
        "{MINIMAL}\n[[schedules]]\nname = \"nightly\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"\noverlap = \"queue\"\nmissed = \"run-once\"\ntask = {{ title = \"Nightly build\", workstream = \"build\", requires = [\"rust\"], max_attempts = 1 }}\n\n[[schedules]]\nname = \"tick\"\ncron = \"*/1 * * * * *\"\npaused = true\ntask = {{ title = \"Tick\", requires = [\"test\"] }}\n"
    );
    let plan = load("baton.toml", &text, &env()).unwrap();
    let nightly = &plan.schedules[0];
    assert_eq!((nightly.name.as_str(), nightly.timezone.as_str()), ("nightly", "Europe/Paris"));
    assert_eq!((nightly.overlap, nightly.missed, nightly.paused), (Overlap::Queue, Missed::RunOnce, false));
    assert_eq!(nightly.task.key, None);
    assert_eq!(nightly.task.priority, Priority::Critical, "the template inherits its workstream's priority");
    assert_eq!(nightly.task.max_attempts, 1);
    let description = plan.describe();
    assert!(
        description
            .contains("schedule nightly: `30 2 * * *` (Europe/Paris), overlap queue, missed run-once: Nightly build\n"),
        "{description}"
    );
    let tick = &plan.schedules[1];
    assert_eq!(
        (tick.timezone.as_str(), tick.overlap, tick.missed, tick.paused),
        ("UTC", Overlap::Skip, Missed::Skip, true)
    );
}

#[test]
fn schedule_errors_name_the_place() {
    let schedule = |body: &str| errors(&format!("{MINIMAL}\n[[schedules]]\n{body}\n"));
    assert_eq!(
        schedule("name = \"n\"\ncron = \"* * * *\"\ntask = { title = \"T\", requires = [\"test\"] }"),
        "baton.toml:39:8: invalid cron expression `* * * *`: it has 4 field(s); write 5 (minute hour day month weekday, e.g. \"30 2 * * *\") or 6 (with seconds first, e.g. \"0 30 2 * * *\")"
    );
    let message = schedule("name = \"n\"\ncron = \"61 * * * *\"\ntask = { title = \"T\", requires = [\"test\"] }");
    assert!(message.starts_with("baton.toml:39:8: invalid cron expression `61 * * * *`"), "{message}");
    assert_eq!(
        schedule(
            "name = \"n\"\ncron = \"@daily\"\ntimezone = \"Europe/Pariss\"\ntask = { title = \"T\", requires = [\"test\"] }"
        ),
        "baton.toml:40:12: unknown time zone `Europe/Pariss`; use an IANA name such as \"UTC\", \"Europe/Paris\" or \"America/New_York\""
    );
    assert_eq!(
        schedule("name = \"n\"\ncron = \"@daily\"\novelap = \"skip\"\ntask = { title = \"T\" }"),
        "baton.toml:40:1: unknown field `ovelap`, expected one of `name`, `cron`, `timezone`, `overlap`, `missed`, `paused`, `task`"
    );
    assert_eq!(
        schedule("name = \"n\"\ncron = \"@daily\"\noverlap = \"replace\"\ntask = { title = \"T\" }"),
        "baton.toml:40:11: unknown variant `replace`, expected one of `skip`, `queue`, `allow`"
    );
    assert_eq!(
        schedule("name = \"n\"\ncron = \"@daily\"\ntask = { title = \"T\", workstream = \"biuld\" }"),
        "baton.toml:40:36: unknown workstream `biuld` (did you mean `build`?)"
    );
    assert_eq!(
        schedule("name = \"n\"\ncron = \"@daily\"\ntask = { title = \"T\", key = \"k\", requires = [\"test\"] }"),
        "baton.toml:40:29: a schedule's task takes no `key`: each firing is a new task, keyed `n@TIME`"
    );
    assert_eq!(
        schedule("name = \"n\"\ncron = \"@daily\"\ntask = { title = \"T\", requires = [\"gpu\"] }"),
        "baton.toml:40:35: task `n@…` cannot be assigned: no agent without a workstream has [gpu]; add the capabilities to an agent or change `requires`"
    );
}

mod json;
mod layers;
mod llm;
mod server;

/// `heartbeat_timeout = "3000000000000000h"` passed `check`, then the first claim of a remote
/// agent panicked adding it to an instant; `timeout = "18446744073709553s"` wrapped to 1.4 s.
/// Every duration is bounded where it is parsed, and refused where it is written.
#[test]
fn durations_beyond_ten_years_are_refused_at_their_place() {
    let text = MINIMAL.replace("name = \"tester\"", "name = \"tester\"\nheartbeat_timeout = \"3000000000000000h\"");
    assert_eq!(
        errors(&text),
        "baton.toml:22:21: duration `3000000000000000h` is too long: at most 3650 days (about 10 years)"
    );
    let text = MINIMAL.replace("title = \"Compile\"", "title = \"Compile\"\ntimeout = \"18446744073709553s\"");
    assert_eq!(
        errors(&text),
        "baton.toml:28:11: `timeout`: duration `18446744073709553s` is too long: at most 3650 days (about 10 years)"
    );
    let text = MINIMAL.replace("command = [\"true\"]", "command = [\"true\"]\nlimits = { cpu = \"3651days\" }");
    assert!(errors(&text).starts_with("baton.toml:24:18: duration `3651days` is too long"), "{}", errors(&text));
    let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nlease_ttl = \"18446744073709551615s\"");
    assert!(errors(&text).starts_with("baton.toml:4:13: duration `18446744073709551615s` is too long"));
    // The bound itself is a duration.
    let text = MINIMAL.replace("title = \"Compile\"", "title = \"Compile\"\ntimeout = \"3650days\"");
    let plan = load("baton.toml", &text, &env()).unwrap();
    assert_eq!(plan.tasks[0].timeout_ms, Some(3650 * 24 * 3600 * 1000));
}

/// A memory limit of `0B` or `1B` is no limit a program can start under, and a worker whose
/// messages may be at most `0B` can say nothing: refused at `check`, as are sizes no machine has.
#[test]
fn memory_limits_and_message_sizes_too_small_or_too_large_are_refused() {
    let with = |line: &str| MINIMAL.replace("command = [\"true\"]", &format!("command = [\"true\"]\n{line}"));
    for size in ["0B", "1B", "1023KiB"] {
        assert_eq!(
            errors(&with(&format!("limits = {{ memory = \"{size}\" }}"))),
            "baton.toml:24:21: `limits.memory` must be at least \"1MiB\""
        );
    }
    assert_eq!(
        errors(&with("max_message_size = \"0B\"")),
        "baton.toml:24:20: `max_message_size` must be at least \"1KiB\""
    );
    assert_eq!(
        errors(&with("max_message_size = \"2PiB\"")),
        "baton.toml:24:20: size `2PiB` is too large: at most 1PiB"
    );
    let plan =
        load("baton.toml", &with("limits = { memory = \"1MiB\" }\nmax_message_size = \"1KiB\""), &env()).unwrap();
    assert_eq!(
        (plan.agents[1].process().unwrap().limits.memory, plan.agents[1].process().unwrap().max_message_size),
        (Some(1 << 20), 1 << 10)
    );
}

#[test]
fn logs_rotate_at_a_size_and_keep_some_files() {
    let plan = load("baton.toml", MINIMAL, &env()).unwrap();
    assert_eq!(plan.agents[0].log_rotation, LogRotation { max_size: 10 * 1024 * 1024, max_files: 3 });
    let text = format!("{MINIMAL}\n[logs]\nmax_size = \"1MiB\"\nmax_files = 5\n");
    let plan = load("baton.toml", &text, &env()).unwrap();
    assert!(plan.agents.iter().all(|agent| agent.log_rotation == LogRotation { max_size: 1024 * 1024, max_files: 5 }));
    assert_eq!(
        errors(&format!("{MINIMAL}\n[logs]\nmax_size = \"1KiB\"\nmax_files = 0\n")),
        "baton.toml:38:12: `logs.max_size` must be at least 4096 bytes (e.g. \"10MiB\")\n\
         baton.toml:39:13: `logs.max_files` must be between 1 and 100"
    );
    let unknown = errors(&format!("{MINIMAL}\n[logs]\nkeep = 3\n"));
    assert!(unknown.starts_with("baton.toml:38:1: unknown field `keep`"), "{unknown}");
}

/// An A2A agent: its card's URL, the variable of its credentials (never shown), and the keys
/// of other kinds refused, as theirs are on it.
#[test]
fn a2a_agents_name_their_card_and_credentials() {
    let text = "[orchestration]\nname = \"x\"\n\n[[agents]]\nname = \"far\"\nruntime = \"a2a\"\nurl = \"http://127.0.0.1:9/\"\nauth_header_env = \"FAR_AUTH\"\n";
    let mut env = env();
    env.insert("FAR_AUTH".into(), "Bearer s3cret".into());
    let plan = load("baton.toml", text, &env).unwrap();
    let AgentKind::A2a(spec) = &plan.agents[0].kind else { panic!("{:?}", plan.agents[0].kind) };
    assert_eq!(spec.card_url(), "http://127.0.0.1:9/.well-known/agent-card.json");
    assert_eq!(spec.auth_header.as_deref(), Some("Bearer s3cret"));
    let shown = serde_json::to_string(&plan.agents[0]).unwrap() + &format!("{:?}", plan.agents[0]);
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("\"runtime\":\"a2a\""), "{shown}");

    let problems = errors(
        "[orchestration]\nname = \"x\"\n\n[[agents]]\nname = \"far\"\nruntime = \"a2a\"\nurl = \"ftp://x\"\ncommand = [\"true\"]\nauth_header_env = \"UNSET_AUTH\"\n\n[[agents]]\nname = \"p\"\ncommand = [\"true\"]\nurl = \"http://x\"\n",
    );
    assert_eq!(
        problems,
        "baton.toml:7:7: `url` must be an http:// or https:// URL, not `ftp://x`\n\
         baton.toml:8:11: A2A agents are not started by Baton: remove `command` (Baton sends tasks to the agent at `url`), or use runtime = \"process\"\n\
         baton.toml:9:19: `auth_header_env`: the variable `UNSET_AUTH` is not set; set it to the `Authorization` header the agent expects (e.g. \"Bearer …\")\n\
         baton.toml:14:7: `url` applies only to A2A agents: remove it, or use runtime = \"a2a\""
    );
}

/// An A2A agent without `capabilities` learns them from its card at start: until then the
/// check counts it as able to run any task it may take; one with `capabilities` is checked as
/// any agent. `[a2a] push_hosts` takes hosts, with a port or without, and nothing else.
#[test]
fn a2a_agents_without_capabilities_may_run_what_tasks_require() {
    let agent = "[orchestration]\nname = \"x\"\n\n[[agents]]\nname = \"far\"\nruntime = \"a2a\"\nurl = \"http://127.0.0.1:9/\"\n";
    let task = "\n[[tasks]]\ntitle = \"paint\"\nrequires = [\"painting\"]\n";
    let plan = load("baton.toml", &format!("{agent}{task}"), &env()).unwrap();
    assert!(plan.agents[0].learns_capabilities());
    let configured = format!("{agent}capabilities = [\"echo\"]\n{task}");
    assert!(
        errors(&configured).contains("task `paint` cannot be assigned: no agent without a workstream has [painting]")
    );

    let hosts = format!("{agent}\n[a2a]\npush_hosts = [\"Hooks.Example.com\", \"127.0.0.1:8080\", \"[0:0::1]:99\"]\n");
    let plan = load("baton.toml", &hosts, &env()).unwrap();
    assert_eq!(plan.a2a.push_hosts, ["hooks.example.com", "127.0.0.1:8080", "[::1]:99"]);
    let bad = format!("{agent}\n[a2a]\npush_hosts = [\"https://hooks.example.com\"]\n");
    assert!(errors(&bad).contains("invalid push host `https://hooks.example.com`"), "{}", errors(&bad));
}

/// The kind is serialized flat, beside the common fields: a process agent shows the keys it
/// always showed, a remote one only what applies to it. No expanded secret either way.
#[test]
fn an_agents_kind_is_serialized_beside_its_common_fields() {
    let text = "[orchestration]\nname = \"x\"\n\n[[agents]]\nname = \"p\"\nmode = \"worker\"\ncommand = [\"run\", \"${HOME}\"]\nenv = { KEY = \"${HOME}\" }\n\n[[agents]]\nname = \"r\"\nruntime = \"remote\"\n";
    let plan = load("baton.toml", text, &env()).unwrap();
    let shown = serde_json::to_value(&plan.agents[0]).unwrap();
    let keys: Vec<&str> = shown.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "name",
        "role",
        "runtime",
        "mode",
        "command",
        "command_location",
        "env",
        "workdir",
        "limits",
        "max_message_size",
        "env_passthrough",
        "heartbeat_timeout",
        "restart",
        "concurrency",
    ] {
        assert!(keys.contains(&key), "`{key}` is shown: {keys:?}");
    }
    assert_eq!((shown["runtime"].as_str(), shown["mode"].as_str()), (Some("process"), Some("worker")));
    assert_eq!(shown["command"], serde_json::json!(["run", "${HOME}"]));
    assert_eq!(shown["env"], serde_json::json!({ "KEY": "${HOME}" }));
    assert!(!format!("{:?}", plan.agents[0]).contains("/home/me"), "Debug shows no expanded value");
    let remote = serde_json::to_value(&plan.agents[1]).unwrap();
    assert_eq!(remote["runtime"], "remote");
    assert!(remote.get("command").is_none() && remote.get("mode").is_none(), "{remote}");
}

/// Durations are shown as baton.toml writes them and read back; a place is `file:line:column`,
/// and an agent whose command has no line (added through the API) shows none.
#[test]
fn durations_and_places_are_serialized_as_written() {
    let plan = load("baton.toml", MINIMAL, &env()).unwrap();
    let shown = serde_json::to_value(&plan.agents[0]).unwrap();
    assert_eq!(shown["restart_window"], "10m");
    assert_eq!(shown["restart_backoff"], "1s");
    assert_eq!(shown["heartbeat_timeout"], "30s");
    assert_eq!(shown["circuit_breaker"]["cooldown"], "1m");
    assert_eq!(shown["limits"]["timeout"], serde_json::Value::Null);
    assert_eq!(shown["command_location"], "baton.toml:18:12");
    let settings = serde_json::to_value(&plan.settings).unwrap();
    assert_eq!(settings["offline_after"], "1h");
    assert_eq!(settings["workstream_timeout"], serde_json::Value::Null);

    for (text, location) in [
        ("baton.toml:18:11", Location { file: "baton.toml".into(), line: 18, column: 11 }),
        ("C:/x/baton.toml:2:3", Location { file: "C:/x/baton.toml".into(), line: 2, column: 3 }),
        ("request body", Location { file: "request body".into(), line: 0, column: 0 }),
        ("a:b:c", Location { file: "a:b:c".into(), line: 0, column: 0 }),
    ] {
        let json = serde_json::to_value(&location).unwrap();
        assert_eq!(json, text);
        assert_eq!(serde_json::from_value::<Location>(json).unwrap(), location);
    }
    let mut process = plan.agents[0].process().unwrap().clone();
    process.command_location = Location { file: "request body".into(), line: 0, column: 0 };
    assert!(serde_json::to_value(&process).unwrap().get("command_location").is_none());

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Timed {
        #[serde(with = "crate::time::humane")]
        every: Duration,
        #[serde(with = "crate::time::humane::option")]
        maybe: Option<Duration>,
    }
    let timed = Timed { every: Duration::from_millis(1500), maybe: Some(Duration::from_secs(5400)) };
    let json = serde_json::to_value(&timed).unwrap();
    assert_eq!(json, serde_json::json!({ "every": "1500ms", "maybe": "1h 30m" }));
    assert_eq!(serde_json::from_value::<Timed>(json).unwrap(), timed);
}

const MCP: &str = r#"
[orchestration]
name = "tools"

[mcp_servers.fs]
command = ["npx", "-y", "@modelcontextprotocol/server-filesystem", "."]
env = { ROOT = "${HOME}" }

[mcp_servers.search]
timeout = "5s"
url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }

[[agents]]
name = "coder"
command = ["claude", "-p", "{task.description}", "--mcp-config", "{mcp.config}"]
tools = ["fs/*", "search/query", "baton/*"]
"#;

#[test]
fn mcp_servers_are_expanded_and_shown_as_written() {
    let mut env = env();
    env.insert("SEARCH_TOKEN".into(), "s3cret".into());
    let plan = load("baton.toml", MCP, &env).unwrap();
    let names: Vec<&str> = plan.mcp_servers.iter().map(|server| server.name.as_str()).collect();
    assert_eq!(names, ["fs", "search"]);
    // `McpTransport` has no `Debug`: it would show the secrets.
    assert!(
        plan.mcp_servers[0].transport
            == McpTransport::Stdio {
                command: vec!["npx".into(), "-y".into(), "@modelcontextprotocol/server-filesystem".into(), ".".into()],
                env: BTreeMap::from([("ROOT".to_string(), "/home/me".to_string())]),
            }
    );
    assert!(
        plan.mcp_servers[1].transport
            == McpTransport::Http {
                url: "https://mcp.example.com/mcp".into(),
                headers: BTreeMap::from([("Authorization".to_string(), "Bearer s3cret".to_string())]),
            }
    );
    // The token is in the expanded transport only: never serialized, never in `Debug`.
    let shown = serde_json::to_string(&plan).unwrap();
    assert!(!shown.contains("s3cret") && shown.contains("Bearer ${SEARCH_TOKEN}"), "{shown}");
    assert!(!format!("{plan:?}").contains("s3cret"));
    // A call's timeout: 60s unless set.
    let timeouts: Vec<Duration> = plan.mcp_servers.iter().map(|server| server.timeout).collect();
    assert_eq!(timeouts, [Duration::from_secs(60), Duration::from_secs(5)]);
    assert!(shown.contains(r#""timeout":"5s""#), "{shown}");
    assert_eq!(plan.agents[0].tools, ["fs/*", "search/query", "baton/*"]);
    assert!(shown.contains(r#""tools":["fs/*","search/query","baton/*"]"#), "{shown}");
}

#[test]
fn mcp_server_mistakes_are_reported_at_their_place() {
    // An unset variable, with what to do.
    let message = errors(MCP);
    assert!(message.contains("baton.toml:12:") && message.contains("`SEARCH_TOKEN` is not set"), "{message}");
    let cases = [
        ("[mcp_servers.x]\ncommand = [\"a\"]\nurl = \"http://h\"\n", "has both `command` and `url`; keep one"),
        ("[mcp_servers.x]\nenv = { A = \"b\" }\n", "needs `command = [\"program\", \"arg\"…]` (stdio) or `url"),
        ("[mcp_servers.baton]\nurl = \"http://h\"\n", "`baton` is reserved for Baton's own tools"),
        ("[mcp_servers.\"a/b\"]\nurl = \"http://h\"\n", "invalid MCP server name `a/b`"),
        ("[mcp_servers.x]\nurl = \"ftp://h\"\n", "`url` must start with http:// or https://"),
        ("[mcp_servers.x]\nurl = \"http://h\"\nenv = { A = \"b\" }\n", "`env` is for a `command`"),
        ("[mcp_servers.x]\ncommand = [\"a\"]\nheaders = { A = \"b\" }\n", "`headers` are for a `url`"),
        ("[mcp_servers.x]\ncommand = []\n", "`command` must name a program"),
        ("[mcp_servers.x]\nurl = \"http://h\"\ntimeout = 3\n", "invalid type: integer `3`"),
        ("[mcp_servers.x]\nurl = \"http://h\"\ntimeout = \"0s\"\n", "`timeout` must be more than 0s"),
        ("[mcp_servers.x]\nurl = \"http://h\"\ntimeouts = \"1s\"\n", "unknown field `timeouts`"),
    ];
    for (section, expected) in cases {
        let text = format!("[orchestration]\nname = \"x\"\n\n{section}");
        let message = errors(&text);
        assert!(message.contains(expected), "{section}: {message}");
        assert!(message.contains("baton.toml:"), "{message}");
    }
}

#[test]
fn tool_globs_name_known_servers() {
    let agent = |tools: &str, command: &str| {
        format!(
            "[orchestration]\nname = \"x\"\n\n[mcp_servers.fs]\ncommand = [\"fs-server\"]\n\n[[agents]]\nname = \"a\"\n{command}\ntools = {tools}\n"
        )
    };
    let per_task = "command = [\"true\"]";
    for ok in ["[\"fs/*\"]", "[\"*/read_*\"]", "[\"baton/*\", \"fs/read_file\"]", "[\"f*/x\"]"] {
        load("baton.toml", &agent(ok, per_task), &env()).unwrap_or_else(|error| panic!("{ok}: {error}"));
    }
    let message = errors(&agent("[\"fss/*\"]", per_task));
    assert!(
        message.contains("baton.toml:10:") && message.contains("unknown MCP server `fss` (did you mean `fs`?)"),
        "{message}"
    );
    for bad in ["[\"fs\"]", "[\"/x\"]", "[\"fs/\"]", "[\"a b/c\"]"] {
        let message = errors(&agent(bad, per_task));
        assert!(message.contains("must be `SERVER/TOOL`"), "{bad}: {message}");
    }
    // `{mcp.config}` is for per-task agents, whose command is started per task.
    let worker = "command = [\"w\", \"{mcp.config}\"]\nmode = \"worker\"";
    let message = errors(&agent("[\"fs/*\"]", worker));
    assert!(message.contains("`{mcp.config}` is given to per-task agents only"), "{message}");
    load("baton.toml", &agent("[\"fs/*\"]", "command = [\"c\", \"{mcp.config}\"]"), &env()).unwrap();
}
