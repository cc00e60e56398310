//! Schedules through the real binary: `baton run` fires a per-second schedule whose task is a
//! script, keeps running, stops on SIGTERM; `baton schedules` shows the last firing; pause and
//! resume are applied by the running `baton run`, and refused when none executes the run.

mod common;

use std::collections::BTreeSet;

use common::{Project, stderr, stdout};

const CONFIG: &str = r#"
[orchestration]
name = "scheduled"

[[agents]]
name = "runner"
capabilities = ["job"]
command = ["bash", "job.sh"]
concurrency = 2

[[schedules]]
name = "tick"
cron = "*/1 * * * * *"
overlap = "allow"
task = { title = "Tick", requires = ["job"] }
"#;

fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
}

fn schedules_json(project: &Project) -> serde_json::Value {
    let output = project.baton(&["schedules", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    rows[0].clone()
}

#[test]
fn a_schedule_fires_keeps_the_run_open_and_pauses_and_resumes() {
    let project = Project::with(CONFIG, &[("job.sh", "#!/bin/bash\necho '{\"ticked\": true}'\n")]);

    // Before anything ran: the file alone gives the next fire times.
    let tick = schedules_json(&project);
    assert_eq!(tick["name"], "tick");
    assert_eq!(tick["next"].as_array().unwrap().len(), 3);
    assert!(tick["last_fired_due"].is_null());

    let (child, mut lines) = project.spawn(&["run", "--plain"]);
    lines.wait_for("schedule tick fired");
    lines.wait_for("schedule tick fired");
    lines.wait_for("completed by runner");
    sigterm(&child);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "stopped before the end: a run with schedules never ends by itself");

    let tick = schedules_json(&project);
    assert_eq!(tick["paused"], false);
    assert!(tick["last_fired_due"].as_str().unwrap().ends_with('Z'), "{tick}");
    assert!(tick["last_task"].as_i64().unwrap() >= 2, "{tick}");
    let table = stdout(&project.baton(&["schedules"]));
    assert!(table.contains("tick") && table.contains("*/1 * * * * *") && table.contains("active"), "{table}");

    // No `baton run` now: a schedule's state belongs to the process executing the run, and
    // the command says to start one (it used to write the flag into the store itself).
    let refused = project.baton(&["schedule", "pause", "tick"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("no `baton run` is executing run"), "{}", stderr(&refused));
    assert_eq!(schedules_json(&project)["paused"], false, "nothing was written");
    let unknown = project.baton(&["schedule", "pause", "tock"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no schedule `tock` in baton.toml (known: tick)"), "{}", stderr(&unknown));

    // With `baton run` resumed: pause and resume reach it through its socket and are applied
    // before the commands return.
    let (child, mut lines) = project.spawn(&["run", "--plain"]);
    lines.wait_for("run resumed");
    project.wait_for_front_door();
    let paused = project.baton(&["schedule", "pause", "tick"]);
    assert_eq!(paused.status.code(), Some(0), "{}", stderr(&paused));
    assert_eq!(stdout(&paused).trim(), "schedule tick paused");
    let tick = schedules_json(&project);
    assert_eq!(tick["paused"], true);
    assert!(tick["next"].as_array().unwrap().is_empty());
    lines.wait_for("schedule tick paused");
    let n_fired_before = count_fired(&project);
    let resumed = project.baton(&["schedule", "resume", "tick"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert_eq!(stdout(&resumed).trim(), "schedule tick resumed");
    lines.wait_for("schedule tick resumed");
    let fired = lines.wait_for("schedule tick fired");
    sigterm(&child);
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(1));
    assert!(count_fired(&project) > n_fired_before, "{fired}");

    // Every due time fired at most once, across both runs of `baton run`.
    let dues = fired_dues(&project);
    let distinct: BTreeSet<&String> = dues.iter().collect();
    assert_eq!(distinct.len(), dues.len(), "{dues:?}");
}

fn events(project: &Project) -> Vec<serde_json::Value> {
    let output = project.baton(&["events", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn fired_dues(project: &Project) -> Vec<String> {
    events(project)
        .into_iter()
        .filter(|event| event["type"] == "ScheduleFired")
        .map(|event| event["due"].to_string())
        .collect()
}

fn count_fired(project: &Project) -> usize {
    fired_dues(project).len()
}
