//! `baton schedules` and `baton schedule pause|resume`.

use anyhow::Context as _;
use serde::Serialize;

use baton_core::Timestamp;
use baton_core::model::TaskId;
use baton_core::schedule::{Timetable, format_utc};
use baton_ops::schedules::{ScheduleView, schedule_views};

use super::load;
use super::source::Source;
use crate::output;
use crate::{Cli, Failure, ScheduleAction};

#[derive(Debug, Serialize)]
struct ScheduleRow {
    name: String,
    cron: String,
    timezone: String,
    overlap: String,
    missed: String,
    paused: bool,
    /// The next fire times (UTC); none while paused.
    next: Vec<String>,
    last_fired_due: Option<String>,
    last_fired_at: Option<String>,
    last_task: Option<TaskId>,
}

pub(super) async fn schedules(cli: &Cli, json: bool, run: Option<&str>) -> Result<u8, Failure> {
    let views = match Source::open(cli, run).await {
        Ok(source) => source.reader().schedules().await?,
        // Before anything has run there is no store: the file alone says when schedules fire.
        Err(failure) if run.is_none() => match load(cli) {
            Ok(loaded) => schedule_views(&loaded.plan, &[], baton_runtime::Clock::system().now()),
            Err(_) => return Err(failure),
        },
        Err(failure) => return Err(failure),
    };
    let utc = |at: i64| format_utc(Timestamp(at));
    if json {
        let rows: Vec<ScheduleRow> = views
            .iter()
            .map(|view| ScheduleRow {
                name: view.name.clone(),
                cron: view.cron.clone(),
                timezone: view.timezone.clone(),
                overlap: view.overlap.clone(),
                missed: view.missed.clone(),
                paused: view.paused,
                next: view.next.iter().copied().map(utc).collect(),
                last_fired_due: view.last_fired_due.map(utc),
                last_fired_at: view.last_fired_at.map(utc),
                last_task: view.last_task.map(TaskId),
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows).context("serializing")?);
        return Ok(0);
    }
    if views.is_empty() {
        outln!("no schedules in the plan");
        return Ok(0);
    }
    let mut table = output::table(&["schedule", "cron", "timezone", "state", "next fire times", "last fired", "task"]);
    for view in &views {
        table.add_row(schedule_cells(view));
    }
    outln!("{table}");
    Ok(0)
}

/// A schedule's row of the table, its times in its own zone.
fn schedule_cells(view: &ScheduleView) -> Vec<String> {
    let timetable = Timetable::parse(&view.cron, &view.timezone).ok();
    let local = |at: i64| match &timetable {
        Some(timetable) => timetable.local(Timestamp(at)),
        None => format_utc(Timestamp(at)),
    };
    let next: Vec<String> = view.next.iter().copied().map(local).collect();
    vec![
        view.name.clone(),
        view.cron.clone(),
        view.timezone.clone(),
        if view.paused { "paused" } else { "active" }.to_string(),
        if next.is_empty() { "-".to_string() } else { next.join("\n") },
        view.last_fired_due.map(local).unwrap_or_else(|| "never".into()),
        view.last_task.map_or_else(|| "-".into(), |id| id.to_string()),
    ]
}

/// Pauses or resumes a schedule, through the API of the process executing the run: its
/// in-memory schedule is the one that fires, and it writes the flag into the run.
pub(super) async fn schedule(cli: &Cli, action: &ScheduleAction) -> Result<u8, Failure> {
    let (name, run, verb) = match action {
        ScheduleAction::Pause { name, run } => (name, run, "pause"),
        ScheduleAction::Resume { name, run } => (name, run, "resume"),
    };
    let loaded = load(cli)?;
    if !loaded.plan.schedules.iter().any(|spec| &spec.name == name) {
        let known: Vec<&str> = loaded.plan.schedules.iter().map(|spec| spec.name.as_str()).collect();
        let known =
            if known.is_empty() { "none is declared".to_string() } else { format!("known: {}", known.join(", ")) };
        return Err(Failure::usage(format!("no schedule `{name}` in {} ({known})", cli.config.display())));
    }
    let client = super::source::front_door(cli, run.as_deref()).await?;
    client.schedule_command(name, verb).await?;
    outln!("schedule {name} {}", if verb == "pause" { "paused" } else { "resumed" });
    Ok(0)
}
