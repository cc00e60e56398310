//! The support desk example (`examples/support-desk/`), run for real: a schedule polls the
//! inbox, the poller hands each ticket to the classifier as a task holding the customer's
//! resource, the classifier messages the responder, which writes a reply and answers back;
//! the agents report token usage. Checked from the outside, as a person would: event lines,
//! the outbox, `baton tasks|messages|budget|events --json`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Project, stderr, stdout};
use serde_json::Value;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-desk")
}

/// The example's files (not what a run left there: outbox/, .baton/), as (path, contents).
fn example_files() -> (String, Vec<(String, String)>) {
    let dir = example_dir();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let mut files: Vec<(String, String)> = ["protocol.py", "poller.py", "classifier.py", "responder.py"]
        .iter()
        .map(|name| (name.to_string(), read(name)))
        .collect();
    for entry in std::fs::read_dir(dir.join("inbox")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            files.push((format!("inbox/{name}"), read(&format!("inbox/{name}"))));
        }
    }
    (read("baton.toml"), files)
}

fn json(project: &Project, args: &[&str]) -> Value {
    let output = project.baton(args);
    assert_eq!(output.status.code(), Some(0), "baton {args:?}: {}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
}

#[test]
fn the_support_desk_answers_its_inbox() {
    let (config, files) = example_files();
    let scripts: Vec<(&str, &str)> = files.iter().map(|(name, body)| (name.as_str(), body.as_str())).collect();
    let project = Project::with(&config, &scripts);
    // ticket id -> customer, from the sample inbox.
    let tickets: BTreeMap<String, String> = files
        .iter()
        .filter(|(name, _)| name.starts_with("inbox/"))
        .map(|(_, body)| {
            let ticket: Value = serde_json::from_str(body).unwrap();
            (ticket["id"].as_str().unwrap().to_string(), ticket["customer"].as_str().unwrap().to_string())
        })
        .collect();
    let mut per_customer: BTreeMap<&str, usize> = BTreeMap::new();
    for customer in tickets.values() {
        *per_customer.entry(customer).or_default() += 1;
    }
    let shared: Vec<&str> = per_customer.iter().filter(|(_, n)| **n > 1).map(|(customer, _)| *customer).collect();
    assert!(tickets.len() >= 4 && !shared.is_empty(), "the sample inbox: {tickets:?}");

    let (child, mut lines) = project.spawn(&["run", "--plain"]);
    // Each ticket comes back to the classifier as the responder's answer, written after the reply.
    let answers: Vec<String> =
        tickets.keys().map(|id| format!("message from responder to classifier: replied to {id}")).collect();
    let conflict = format!("waits: `customer:{}`", shared[0]);
    let mut needles: Vec<&str> = answers.iter().map(String::as_str).collect();
    needles.push(&conflict);
    lines.wait_for_all(&needles);
    for id in tickets.keys() {
        let reply = std::fs::read_to_string(project.path().join(format!("outbox/{id}.txt"))).unwrap();
        assert!(reply.contains(&format!("[{id}]")) && reply.contains(&format!("To: {}", tickets[id])), "{reply}");
    }

    // Acknowledgements follow the answers: wait (on the store, not on time) until all are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let messages = loop {
        let messages = json(&project, &["messages", "--json"]);
        let all_acked = messages.as_array().unwrap().iter().all(|m| m["state"] == "acked");
        if all_acked && messages.as_array().unwrap().len() == 2 * tickets.len() {
            break messages;
        }
        assert!(Instant::now() < deadline, "messages not all acknowledged: {messages:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    sigterm(&child);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "stopped before the end: the schedule keeps the plan open");
    let printed = lines.rest();

    // Every ticket classified once, on its first attempt, holding its customer's resource.
    let tasks = json(&project, &["tasks", "--json"]);
    for (id, customer) in &tickets {
        let key = format!("classify-{id}");
        let matching: Vec<&Value> = tasks.as_array().unwrap().iter().filter(|t| t["key"] == key.as_str()).collect();
        assert_eq!(matching.len(), 1, "{key}: {tasks:#}");
        let task = matching[0];
        assert_eq!(task["state"], "succeeded", "{task:#}");
        assert_eq!(task["attempt"], 1, "{task:#}");
        assert_eq!(task["resources"][0], format!("customer:{customer}"));
        assert_eq!(task["result"]["ticket"], id.as_str());
        assert_eq!(printed.matches(&format!("task {key} completed by classifier")).count(), 1, "{printed}");
    }

    // One message per ticket to the responder, one answer back naming it; all acknowledged.
    let messages = messages.as_array().unwrap();
    let to_responder: Vec<&Value> = messages.iter().filter(|m| m["to"] == "responder").collect();
    let answers: Vec<&Value> = messages.iter().filter(|m| m["to"] == "classifier").collect();
    assert_eq!(to_responder.len(), tickets.len(), "{messages:#?}");
    for message in &to_responder {
        assert_eq!(message["from"], "classifier");
        let answer = answers.iter().find(|a| a["correlation_id"] == message["message_id"]);
        let answer = answer.unwrap_or_else(|| panic!("no answer to {message:#}"));
        assert_eq!(answer["from"], "responder");
        assert_eq!(answer["data"]["ticket"], message["data"]["ticket"]["id"]);
    }

    // Usage reached the global budget and each agent's; the responder's crossed 50 %.
    let budget = json(&project, &["budget", "--json"]);
    let scope = |name: &str| -> Value {
        budget["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["scope"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {budget:#}"))
    };
    let classifier = scope("agent:classifier")["used_tokens"].as_u64().unwrap();
    let responder = scope("agent:responder");
    assert!(classifier > 0 && responder["used_tokens"].as_u64().unwrap() > 0, "{budget:#}");
    assert_eq!(
        scope("global")["used_tokens"].as_u64().unwrap(),
        classifier + responder["used_tokens"].as_u64().unwrap()
    );
    assert_eq!(responder["thresholds_crossed"], serde_json::json!([50]), "{budget:#}");
    assert_eq!(responder["exhausted"], false);

    // The two tickets of one customer were never classified at once.
    let events = project.baton(&["events", "--json"]);
    let conflicts: Vec<Value> = stdout(&events)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["type"] == "ConflictDeferred")
        .collect();
    assert!(!conflicts.is_empty(), "no ConflictDeferred event");
    assert!(
        conflicts.iter().all(|c| c["resource"] == format!("customer:{}", shared[0]) && c["policy"] == "wait"),
        "{conflicts:?}"
    );
}
