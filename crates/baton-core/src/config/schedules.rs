//! `[[schedules]]`: a cron expression in a time zone that creates a task from a template. The
//! template's fields are validated like a `[[tasks]]` entry's (`Validator::task_fields`).

use std::collections::BTreeSet;

use serde::Deserialize;
use toml::Spanned;

use super::{AgentSpec, RawTask, Validator, WorkstreamSpec};
use crate::schedule::{Missed, Overlap, ScheduleSpec, Timetable};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub(super) name: Spanned<String>,
    cron: Spanned<String>,
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default)]
    missed: Missed,
    #[serde(default)]
    paused: bool,
    pub(super) task: Spanned<RawTask>,
}

impl Validator<'_> {
    pub(super) fn schedules(
        &mut self,
        raw: &[RawSchedule],
        workstreams: &[WorkstreamSpec],
        agents: &[AgentSpec],
    ) -> Vec<ScheduleSpec> {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut specs = Vec::with_capacity(raw.len());
        for schedule in raw {
            let name = schedule.name.get_ref();
            self.check_name("schedule", &schedule.name);
            if !seen.insert(name) {
                self.error(schedule.name.span(), format!("duplicate schedule `{name}`"));
            }
            let cron = self.expand(&schedule.cron);
            let timezone = match &schedule.timezone {
                Some(zone) => self.expand(zone),
                None => "UTC".to_string(),
            };
            // Each error at the key it is about.
            if let Err(message) = Timetable::parse(&cron, "UTC") {
                self.error(schedule.cron.span(), message);
            }
            if let Some(zone) = &schedule.timezone
                && let Err(message) = Timetable::parse("* * * * *", &timezone)
            {
                self.error(zone.span(), message);
            }
            let template = schedule.task.get_ref();
            let refused = [
                ("key", template.key.as_ref().map(Spanned::span)),
                ("depends_on", template.depends_on.first().map(Spanned::span)),
            ];
            if template.on_conflict.is_some() {
                self.error(
                    schedule.task.span(),
                    "a schedule's task takes no `on_conflict`: set the policy for all tasks with `[conflicts] policy`",
                );
            }
            for (key, span) in refused {
                if let Some(span) = span {
                    self.error(
                        span,
                        format!("a schedule's task takes no `{key}`: each firing is a new task, keyed `{name}@TIME`"),
                    );
                }
            }
            let mut task = self.task_fields(template, &format!("{name}@…"), workstreams, agents);
            task.key = None;
            specs.push(ScheduleSpec {
                name: name.clone(),
                cron,
                timezone,
                overlap: schedule.overlap,
                missed: schedule.missed,
                paused: schedule.paused,
                task,
            });
        }
        specs
    }
}
