//! `baton schedules` and `baton schedule pause|resume`.

use anyhow::Context as _;
use serde::Serialize;

use baton_core::model::TaskId;
use baton_core::schedule::{ScheduleRecord, format_utc};

use super::{find_run, load, open_existing_store};
use crate::output;
use crate::{Cli, Failure, ScheduleAction};

/// How many upcoming fire times are shown.
const N_NEXT: usize = 3;

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
    let loaded = load(cli)?;
    let now = baton_runtime::Clock::system().now();
    // Before anything has run there is no store: the file alone says when schedules fire.
    let records: Vec<ScheduleRecord> = match open_existing_store(cli) {
        Ok((_, store)) => match find_run(&*store, &loaded.plan, run).await {
            Ok(run) => store.schedules(&run.id).await.context("reading schedules")?,
            Err(_) if run.is_none() => Vec::new(),
            Err(failure) => return Err(failure),
        },
        Err(_) if run.is_none() => Vec::new(),
        Err(failure) => return Err(failure),
    };
    let mut rows = Vec::with_capacity(loaded.plan.schedules.len());
    let mut shown = Vec::with_capacity(loaded.plan.schedules.len());
    for spec in &loaded.plan.schedules {
        let record = records.iter().find(|record| record.name == spec.name);
        let paused = record.map_or(spec.paused, |record| record.paused);
        let timetable = spec.timetable();
        let next = if paused { Vec::new() } else { timetable.upcoming(now, N_NEXT) };
        let last_fired = record.and_then(|record| record.last_fired_due);
        shown.push((
            next.iter().map(|at| timetable.local(*at)).collect::<Vec<_>>(),
            last_fired.map(|due| timetable.local(due)),
        ));
        rows.push(ScheduleRow {
            name: spec.name.clone(),
            cron: spec.cron.clone(),
            timezone: spec.timezone.clone(),
            overlap: spec.overlap.to_string(),
            missed: spec.missed.to_string(),
            paused,
            next: next.into_iter().map(format_utc).collect(),
            last_fired_due: last_fired.map(format_utc),
            last_fired_at: record.and_then(|record| record.last_fired_at).map(format_utc),
            last_task: record.and_then(|record| record.last_task),
        });
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows).context("serializing")?);
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("no schedules in {}", cli.config.display());
        return Ok(0);
    }
    let mut table = output::table(&["schedule", "cron", "timezone", "state", "next fire times", "last fired", "task"]);
    for (row, (next, last_fired)) in rows.iter().zip(shown) {
        let state = if row.paused { "paused" } else { "active" };
        table.add_row(vec![
            row.name.clone(),
            row.cron.clone(),
            row.timezone.clone(),
            state.to_string(),
            if next.is_empty() { "-".to_string() } else { next.join("\n") },
            last_fired.unwrap_or_else(|| "never".into()),
            row.last_task.map_or_else(|| "-".into(), |id| id.to_string()),
        ]);
    }
    outln!("{table}");
    Ok(0)
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
    let (_, client) = super::source::front_door(cli, run.as_deref()).await?;
    client.schedule_command(name, verb).await?;
    outln!("schedule {name} {}", if verb == "pause" { "paused" } else { "resumed" });
    Ok(0)
}
