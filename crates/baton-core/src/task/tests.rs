use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::config::{self, Plan};
use crate::messages::{OPERATOR, chat_task};
use crate::schedule::task_key;
use crate::time::Timestamp;

/// A workstream of high priority and two agents: `builder` runs once per task in `build`,
/// `helper` is shared. One `[[tasks]]` entry and one schedule's template are the minimal task.
const PLAN: &str = r#"
[orchestration]
name = "demo"

[[workstreams]]
name = "build"
priority = "high"

[[agents]]
name = "builder"
workstream = "build"
capabilities = ["rust"]
command = ["true"]

[[agents]]
name = "helper"
command = ["true"]

[[tasks]]
title = "Compile the crate"
workstream = "build"

[[schedules]]
name = "nightly"
cron = "0 3 * * *"
task = { title = "Compile the crate", workstream = "build" }
"#;

fn plan() -> Plan {
    config::load("baton.toml", PLAN, &BTreeMap::new()).unwrap()
}

fn from_json(body: serde_json::Value) -> Result<NewTask, String> {
    let input: TaskInput = serde_json::from_value(body).map_err(|error| error.to_string())?;
    new_task(input, Catalog::from(&plan())).map_err(|error| error.to_string())
}

/// One line per source: what the same minimal task (a title and a workstream) becomes.
fn row(source: &str, task: &NewTask) -> String {
    format!(
        "{source:<18} key={:<26} ws={} priority={} attempts={} input={} timeout={:?} agent={:?}",
        task.key.as_deref().unwrap_or("-"),
        task.workstream.as_deref().unwrap_or("-"),
        task.priority,
        task.max_attempts,
        task.input,
        task.timeout_ms,
        task.agent,
    )
}

/// The defaults of every source of tasks, side by side. They are the same everywhere except
/// for what the source itself decides, which the table shows: a schedule keys each firing
/// `NAME@DUE`; a chat message pins the task to the agent it mentions, keys it
/// `chat-AGENT-ID` and carries the message as its input.
#[test]
fn every_source_gives_a_minimal_task_the_same_defaults() {
    let plan = plan();
    let catalog = Catalog::from(&plan);
    let minimal = json!({"title": "Compile the crate", "workstream": "build"});
    let now = Timestamp(1_767_236_400_000); // 2026-01-01T03:00:00Z
    let mut rows = Vec::new();

    rows.push(row("[[tasks]]", &plan.tasks[0]));

    // A firing's task is the template with the firing's key (`Scheduler::fire_schedules`).
    let mut fired = plan.schedules[0].task.clone();
    assert_eq!(fired.key, None, "the template has no key of its own");
    fired.key = Some(task_key("nightly", now));
    rows.push(row("[[schedules]]", &fired));

    // `POST /tasks` and an item of `/tasks/batch` are this JSON.
    rows.push(row("POST /tasks", &from_json(minimal.clone()).unwrap()));

    // `baton task add "Compile the crate" --workstream build` builds this input from its flags
    // (baton-cli's tests check that it does) and sends it to `POST /tasks`, or checks it here.
    let cli = TaskInput { title: "Compile the crate".into(), workstream: Some("build".into()), ..TaskInput::default() };
    rows.push(row("baton task add", &new_task(cli, catalog).unwrap()));

    // A worker's `task/create` item: without a workstream, the engine gives it the parent's.
    let mut item: TaskInput = serde_json::from_value(json!({"title": "Compile the crate"})).unwrap();
    item.workstream = Some("build".into());
    rows.push(row("worker task/create", &new_task(item, catalog).unwrap()));

    let builder = plan.agent("builder").unwrap();
    let chat = chat_task(builder, OPERATOR, "Compile the crate", &serde_json::Value::Null, "0195f3a2");
    rows.push(row("chat @builder", &new_task(chat, catalog).unwrap()));

    let expected = [
        r#"[[tasks]]          key=compile-the-crate          ws=build priority=high attempts=3 input={} timeout=None agent=None"#,
        r#"[[schedules]]      key=nightly@2026-01-01T03:00:00Z ws=build priority=high attempts=3 input={} timeout=None agent=None"#,
        r#"POST /tasks        key=compile-the-crate          ws=build priority=high attempts=3 input={} timeout=None agent=None"#,
        r#"baton task add     key=compile-the-crate          ws=build priority=high attempts=3 input={} timeout=None agent=None"#,
        r#"worker task/create key=compile-the-crate          ws=build priority=high attempts=3 input={} timeout=None agent=None"#,
        r#"chat @builder      key=chat-builder-0195f3a2      ws=build priority=high attempts=3 input={"data":null,"from":"operator","message":"Compile the crate"} timeout=None agent=Some("builder")"#,
    ];
    assert_eq!(rows.join("\n"), expected.join("\n"));
}

/// The same mistakes give the same messages from baton.toml (placed at the field) and from a
/// request body.
#[test]
fn the_same_mistakes_give_the_same_errors_from_a_file_and_a_request() {
    let cases = [
        (r#"title = " ""#, json!({"title": " "}), "task `title` must not be empty"),
        (
            r#"title = "t"
key = "no spaces""#,
            json!({"title": "t", "key": "no spaces"}),
            "invalid task key name `no spaces`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit",
        ),
        (
            r#"title = "t"
workstream = "biuld""#,
            json!({"title": "t", "workstream": "biuld"}),
            "unknown workstream `biuld` (did you mean `build`?)",
        ),
        (
            r#"title = "t"
agent = "buildr""#,
            json!({"title": "t", "agent": "buildr"}),
            "unknown agent `buildr` (did you mean `builder`?)",
        ),
        (
            r#"title = "t"
depends_on = ["t"]"#,
            json!({"title": "t", "depends_on": ["t"]}),
            "task `t` depends on itself",
        ),
        (
            r#"title = "t"
max_attempts = 0"#,
            json!({"title": "t", "max_attempts": 0}),
            "`max_attempts` must be at least 1",
        ),
        (
            r#"title = "t"
max_attempts = 1000"#,
            json!({"title": "t", "max_attempts": 1000}),
            "`max_attempts` must be at most 100, not 1000",
        ),
        (
            r#"title = "t"
timeout = "10x""#,
            json!({"title": "t", "timeout": "10x"}),
            "`timeout`: invalid duration `10x` (unknown time unit \"x\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write a number and a unit, e.g. \"30s\", \"10m\", \"1h\"",
        ),
        (
            r#"title = "t"
timeout = "4000days""#,
            json!({"title": "t", "timeout": "4000days"}),
            "`timeout`: duration `4000days` is too long: at most 3650 days (about 10 years)",
        ),
        (
            r#"title = "t"
estimated_tokens = 0"#,
            json!({"title": "t", "estimated_tokens": 0}),
            "`estimated_tokens` must be at least 1",
        ),
    ];
    let base = PLAN.split("[[tasks]]").next().unwrap();
    for (toml_task, body, message) in cases {
        let text = format!("{base}[[tasks]]\n{toml_task}\n");
        let file_error = config::load("baton.toml", &text, &BTreeMap::new()).unwrap_err().to_string();
        let line = text.lines().count();
        assert!(
            file_error.starts_with(&format!("baton.toml:{line}:")) && file_error.ends_with(&format!(": {message}")),
            "{toml_task}: {file_error}"
        );
        assert_eq!(from_json(body).unwrap_err(), message);
    }
}

#[test]
fn unknown_fields_are_refused_and_a_given_input_is_kept() {
    let error = from_json(json!({"title": "t", "retries": 2})).unwrap_err();
    assert!(error.starts_with("unknown field `retries`, expected one of `key`, `title`"), "{error}");
    let task = from_json(json!({"title": "t", "input": {"path": "src"}, "priority": "low", "timeout": "30s"})).unwrap();
    assert_eq!(task.input, json!({"path": "src"}));
    assert_eq!(task.priority, Priority::Low, "a priority given wins over the default");
    assert_eq!(task.timeout_ms, Some(30_000));
    let null_input = from_json(json!({"title": "t", "input": null})).unwrap();
    assert_eq!(null_input.input, json!({}), "`null` is no input");
    let unassigned = from_json(json!({"title": "t"})).unwrap();
    assert_eq!(unassigned.priority, Priority::Medium, "without a workstream: medium");
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let input = TaskInput {
        title: String::new(),
        max_attempts: Some(0),
        depends_on: vec![TaskRef::Key("x".into()), TaskRef::Key("task".into())],
        ..TaskInput::default()
    };
    let plan = plan();
    let (_, errors) = check(input, Catalog::from(&plan));
    let fields: Vec<Field> = errors.iter().map(Error::field).collect();
    assert_eq!(fields, vec![Field::Title, Field::DependsOn(1), Field::MaxAttempts]);
}
