//! How things are shown: tables, times, and one line per event.

use std::collections::HashMap;

use baton_core::model::{AgentState, TaskId, TaskState};
use baton_core::{Event, EventKind, Timestamp};
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};

/// A line on stderr. Unlike `errln!` it does not panic when stderr is closed (a pipe whose
/// reader went away): Baton goes on working, and stops when asked, whoever reads its output.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes to stdout (the [`outln!`] and [`out!`] macros). When the reader has gone (a pipe into
/// `head`), the process ends at once with success, as Unix tools do, instead of panicking as
/// `outln!` would; anything it had to write is unwanted. Other write errors are ignored, as
/// for stderr.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args)
        && error.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// `2026-11-21 08:01:02.345` in local time.
pub fn time(at: Timestamp) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(at.0) {
        chrono::LocalResult::Single(time) => time.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        _ => at.0.to_string(),
    }
}

/// `08:01:02.345` in local time.
pub fn clock(at: Timestamp) -> String {
    time(at).get(11..).unwrap_or_default().to_string()
}

/// "3.2s", "4m 10s".
pub fn elapsed(from: Timestamp, to: Timestamp) -> String {
    let duration = to.since(from);
    if duration.as_secs() < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        baton_core::time::format_duration(std::time::Duration::from_secs(duration.as_secs()))
    }
}

/// Names tasks by key in event lines, where the key is known.
#[derive(Default)]
pub struct TaskNames {
    keys: HashMap<TaskId, String>,
}

impl TaskNames {
    pub fn insert(&mut self, id: TaskId, key: Option<String>) {
        if let Some(key) = key {
            self.keys.insert(id, key);
        }
    }

    pub fn learn(&mut self, event: &Event) {
        if let EventKind::TaskCreated { task, key, .. } = &event.kind {
            self.insert(*task, key.clone());
        }
    }

    /// One line for an event: its time, and what happened with task keys spelled out.
    pub fn line(&self, event: &Event) -> String {
        let mut text = event.kind.describe();
        if let Some(task) = event.kind.task()
            && let Some(key) = self.keys.get(&task)
        {
            text = text.replacen(&format!("task {task}"), &format!("task {key}"), 1);
        }
        format!("{} #{:<5} {text}", clock(event.at), event.seq)
    }
}

/// Whether `baton run` prints an event as a line: the ones a person watching wants, not the
/// bookkeeping (created, ready, agent records). An agent that stalls or waits for an answer is
/// news, and so is its coming back.
pub fn is_notable(kind: &EventKind) -> bool {
    match kind {
        EventKind::AgentStateChanged { from, to, .. } => {
            [from, to].into_iter().any(|state| matches!(state, AgentState::Stalled | AgentState::WaitingInput))
        }
        _ => !matches!(
            kind,
            EventKind::TaskCreated { .. } | EventKind::TaskReady { .. } | EventKind::TaskProgress { .. }
        ),
    }
}

/// Where to look after a failed run: `baton tasks --state S` for each state other than
/// succeeded that has tasks, with how many, then the events and the logs.
pub fn failure_hint(counts: &[(TaskState, u64)]) -> String {
    let mut places: Vec<String> = TaskState::ALL
        .into_iter()
        .filter(|state| *state != TaskState::Succeeded)
        .filter_map(|state| {
            let n = counts.iter().filter(|(counted, _)| *counted == state).map(|(_, n)| n).sum::<u64>();
            let tasks = if n == 1 { "task" } else { "tasks" };
            (n > 0).then(|| format!("`baton tasks --state {state}` ({n} {tasks})"))
        })
        .collect();
    places.push("`baton events`".to_string());
    format!("see {} and `baton logs AGENT`", places.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_points_at_the_states_that_have_tasks() {
        let cancelled_only = [(TaskState::Succeeded, 4), (TaskState::Dead, 0), (TaskState::Cancelled, 8)];
        assert_eq!(
            failure_hint(&cancelled_only),
            "see `baton tasks --state cancelled` (8 tasks), `baton events` and `baton logs AGENT`"
        );
        let mixed = [(TaskState::Dead, 1), (TaskState::Cancelled, 2), (TaskState::Suspended, 3)];
        assert_eq!(
            failure_hint(&mixed),
            "see `baton tasks --state dead` (1 task), `baton tasks --state cancelled` (2 tasks), `baton tasks --state suspended` (3 tasks), `baton events` and `baton logs AGENT`"
        );
        assert_eq!(failure_hint(&[]), "see `baton events` and `baton logs AGENT`");
    }
}
