//! What `baton run` shows while it works: a progress bar per workstream on a terminal, plain
//! event lines elsewhere, and with `--log-format json` one JSON object per event line, in the
//! shape of the JSON log lines (`timestamp`, `level`, `fields.message`) with the event itself in
//! `event`.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{broadcast, watch};

use baton_core::sched::Progress;
use baton_core::{Event, EventKind};

use crate::output::{TaskNames, is_notable};

pub struct Display {
    bars: Option<Bars>,
    names: TaskNames,
    /// Event lines as JSON objects (`--log-format json`).
    json: bool,
}

struct Bars {
    multi: MultiProgress,
    by_workstream: HashMap<String, ProgressBar>,
}

impl Display {
    /// Bars when stderr is a terminal and neither `plain` nor `json` lines are asked for.
    pub fn new(plain: bool, json: bool) -> Display {
        let bars = (!plain && !json && std::io::stderr().is_terminal()).then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            by_workstream: HashMap::new(),
        });
        Display { bars, names: TaskNames::default(), json }
    }

    pub fn event(&mut self, event: &Event) {
        self.names.learn(event);
        if !is_notable(&event.kind) {
            return;
        }
        let line = self.names.line(event);
        if self.json {
            crate::output::say(&json_line(event, &line));
            return;
        }
        match &self.bars {
            // On a terminal the bars show the routine progress; lines are for what matters.
            Some(bars) => {
                let important = matches!(
                    event.kind,
                    EventKind::PhaseStarted { .. }
                        | EventKind::TaskFailed { .. }
                        | EventKind::TaskRetrying { .. }
                        | EventKind::TaskDeadLettered { .. }
                        | EventKind::TaskCancelled { .. }
                        | EventKind::TaskLeaseExpired { .. }
                        | EventKind::RunResumed { .. }
                        | EventKind::AgentTerminated { .. }
                        | EventKind::BudgetThreshold { .. }
                        | EventKind::TaskBudgetWait { .. }
                        | EventKind::BudgetReset { .. }
                );
                if important {
                    let _ = bars.multi.println(line);
                }
            }
            None => crate::output::say(&line),
        }
    }

    pub fn progress(&mut self, progress: &Progress) {
        let Some(bars) = self.bars.as_mut() else {
            return;
        };
        let style = ProgressStyle::with_template("{prefix:.bold} {bar:30.cyan/blue} {pos:>3}/{len:3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("━╸ ");
        for ws in &progress.workstreams {
            let name = ws.name.clone().unwrap_or_else(|| "(no workstream)".into());
            let bar = bars.by_workstream.entry(name.clone()).or_insert_with(|| {
                let bar = bars.multi.add(ProgressBar::new(ws.n_total));
                bar.set_style(style.clone());
                bar.set_prefix(format!("phase {} {name:<28}", ws.phase));
                bar
            });
            bar.set_length(ws.n_total);
            bar.set_position(ws.n_finished);
            let message = if !ws.started {
                "waiting".to_string()
            } else if ws.n_finished == ws.n_total && ws.n_total > 0 {
                if ws.n_unsuccessful > 0 { format!("done, {} failed", ws.n_unsuccessful) } else { "done".to_string() }
            } else if ws.n_running > 0 {
                format!("{} running", ws.n_running)
            } else {
                String::new()
            };
            bar.set_message(message);
        }
    }

    pub fn finish(&mut self) {
        if let Some(bars) = self.bars.take() {
            for bar in bars.by_workstream.values() {
                bar.abandon();
            }
        }
    }
}

/// An event line as a JSON log line: what `--log-format json` writes for Baton's diagnostics,
/// with the event as `baton events --json` shows it.
fn json_line(event: &Event, line: &str) -> String {
    let timestamp = chrono::DateTime::from_timestamp_millis(event.at.millis())
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    let level = if is_warning(&event.kind) { "WARN" } else { "INFO" };
    serde_json::json!({ "timestamp": timestamp, "level": level, "fields": { "message": line }, "event": event })
        .to_string()
}

/// Events that say something went wrong.
fn is_warning(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::TaskFailed { .. }
            | EventKind::TaskDeadLettered { .. }
            | EventKind::TaskLeaseExpired { .. }
            | EventKind::AgentTerminated { .. }
            | EventKind::BudgetThreshold { .. }
    )
}

/// Feeds events and progress to the display until `done` fires, then shows what is left.
pub async fn follow(
    mut display: Display,
    store: std::sync::Arc<dyn baton_store::Store>,
    mut events: broadcast::Receiver<std::sync::Arc<Event>>,
    mut progress: watch::Receiver<Progress>,
    mut run_id: watch::Receiver<Option<String>>,
    done: tokio_util::sync::CancellationToken,
) -> Display {
    // A resumed run's tasks were created before: learn their keys for the event lines.
    let known = tokio::select! {
        known = run_id.wait_for(Option::is_some) => known.ok().and_then(|id| id.clone()),
        () = done.cancelled() => None,
    };
    if let Some(id) = known
        && let Ok(tasks) = store.tasks(&id, &Default::default()).await
    {
        for task in tasks {
            display.names.insert(task.id, task.key);
        }
    }
    let mut progress_open = true;
    loop {
        tokio::select! {
            () = done.cancelled() => {
                while let Ok(event) = events.try_recv() {
                    if run_id.borrow().as_deref().is_none_or(|id| id == event.run_id) {
                        display.event(&event);
                    }
                }
                let current = progress.borrow().clone();
                display.progress(&current);
                break;
            }
            event = events.recv() => match event {
                Ok(event) => {
                    let ours = run_id.borrow().as_deref().is_none_or(|id| id == event.run_id);
                    if ours {
                        display.event(&event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    crate::output::say(&format!(
                        "({n} events not shown: the display fell behind; `baton events` has them all)"
                    ));
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            changed = progress.changed(), if progress_open => match changed {
                Ok(()) => {
                    let current = progress.borrow_and_update().clone();
                    display.progress(&current);
                }
                Err(_) => progress_open = false,
            },
        }
    }
    display
}
