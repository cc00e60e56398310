//! Agents created over the API, as JSON, validated like the file's.

use serde_json::json;

use super::*;

fn plan() -> Plan {
    load("baton.toml", MINIMAL, &env()).unwrap()
}

fn json_errors(value: serde_json::Value) -> String {
    agent_from_json(&plan(), &value).unwrap_err().to_string()
}

#[test]
fn a_valid_agent() {
    let agent = agent_from_json(
        &plan(),
        &json!({
            "name": "reviewer",
            "workstream": "testing",
            "capabilities": ["review"],
            "mode": "worker",
            "command": ["python3", "review.py"],
            "limits": { "memory": "256MiB", "timeout": "5m" },
            "env": { "LEVEL": "strict" },
            "runbook": null,
        }),
    )
    .unwrap();
    assert_eq!(agent.name, "reviewer");
    assert_eq!(agent.workstream.as_deref(), Some("testing"));
    assert_eq!(agent.priority, Priority::High, "the workstream's priority");
    assert_eq!(agent.process_mode(), Some(ProcessMode::Worker));
    assert_eq!(agent.process().unwrap().command, ["python3", "review.py"]);
    assert_eq!(agent.process().unwrap().limits.memory, Some(256 * 1024 * 1024));
    assert_eq!(agent.process().unwrap().env.get("LEVEL").map(String::as_str), Some("strict"));
    let remote = agent_from_json(&plan(), &json!({ "name": "far", "runtime": "remote" })).unwrap();
    assert_eq!((remote.runtime(), remote.process().is_none()), (RuntimeKind::Remote, true));
}

#[test]
fn unknown_fields_are_named() {
    let message = json_errors(json!({ "name": "x", "comand": ["true"] }));
    assert!(
        message.starts_with("request body: field `comand`: unknown field `comand`, expected one of `name`, `role`"),
        "{message}"
    );
    let message = json_errors(json!({ "name": "x", "command": ["true"], "limits": { "memroy": "1MiB" } }));
    assert!(message.starts_with("request body: field `limits.memroy`: unknown field `memroy`"), "{message}");
}

#[test]
fn values_are_checked_as_in_the_file() {
    assert_eq!(
        json_errors(json!({ "name": "x", "command": ["true"], "workstream": "biuld" })),
        "request body: field `workstream`: unknown workstream `biuld` (did you mean `build`?)"
    );
    assert_eq!(
        json_errors(json!({ "name": "x", "command": ["true"], "restart": "sometimes" })),
        "request body: field `restart`: unknown variant `sometimes`, expected one of `never`, `on-failure`, `always`"
    );
    assert_eq!(
        json_errors(json!({ "name": "x", "command": ["true", "{task.titel}"] })),
        "request body: field `command[1]`: unknown placeholder `{task.titel}`; known: {task.id}, {task.key}, {task.title}, {task.description}, {agent.name}, {run.id}, {mcp.config}, {task.input.FIELD}"
    );
    assert_eq!(json_errors(json!({ "name": "x" })), "request body: missing field `command`");
    assert_eq!(
        json_errors(json!({ "name": "x", "runtime": "remote", "command": ["true"] })),
        "request body: field `command`: remote agents are not started by Baton: remove `command` (a worker claims this agent's tasks over HTTP), or use runtime = \"process\""
    );
    assert_eq!(
        json_errors(json!(["not", "an", "object"])),
        "request body: expected a JSON object with the keys of an [[agents]] entry, e.g. {\"name\": \"builder\", \"command\": [\"bash\", \"build.sh\"]}"
    );
}

#[test]
fn names_must_be_new_unless_updating() {
    let value = json!({ "name": "builder", "command": ["true"] });
    assert_eq!(
        agent_from_json(&plan(), &value).unwrap_err().to_string(),
        "request body: field `name`: agent `builder` already exists; choose another name, or update the agent instead"
    );
    let updated = agent_update_from_json(&plan(), &value).unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.process().unwrap().command.as_slice()),
        ("builder", ["true".to_string()].as_slice())
    );
    assert_eq!(
        json_errors(json!({ "name": "bad name", "command": ["true"] })),
        "request body: field `name`: invalid agent name `bad name`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
    );
}

/// What `GET /agents/{name}` shows of an agent is an entry `PUT /agents/{name}` takes back, to
/// the same agent: the dashboard edits an agent that way. Every kind and mode, with the keys
/// that have their own shapes (sizes, durations, `done_when`, limits, objectives).
#[test]
fn an_agent_as_shown_is_taken_back_as_the_same_agent() {
    let text = format!(
        r#"{MINIMAL}
[[agents]]
name = "worker"
mode = "worker"
command = ["python3", "worker.py"]
capabilities = ["python"]
max_message_size = "4MiB"
limits = {{ memory = "512MiB", cpu = "2m", timeout = "10m" }}
env = {{ MODE = "fast" }}
objectives = [{{ description = "keep it green", deliverable = "a report" }}]

[[agents]]
name = "console"
mode = "pty"
command = ["bash"]
capabilities = ["shell"]
input_template = "{{task.description}}\n"
done_when = {{ exit = true }}
stall_after = "45s"
prompt_patterns = ["\\? $"]

[[agents]]
name = "watcher"
mode = "pty"
command = ["bash"]
capabilities = ["watch"]
done_when = {{ output = "DONE" }}

[[agents]]
name = "far"
runtime = "remote"
capabilities = ["gpu"]
heartbeat_timeout = "1h"
"#
    );
    let plan = load("baton.toml", &text, &env()).unwrap();
    for agent in &plan.agents {
        let shown = serde_json::to_value(agent).unwrap();
        let taken =
            agent_update_from_json(&plan, &shown).unwrap_or_else(|error| panic!("{}: {error}\n{shown:#}", agent.name));
        // All but where the command was written (the request body, now).
        let mut expected = shown.clone();
        expected.as_object_mut().unwrap().remove("command_location");
        assert_eq!(serde_json::to_value(&taken).unwrap(), expected, "{}", agent.name);
        assert!(!agent.kind.runtime_differs(&taken.kind), "{}", agent.name);
    }
}
