//! Schedules: when a cron expression in a time zone is due, and what to do about it.
//!
//! Pure time arithmetic and one decision, with the current time passed in. A schedule keeps a
//! *cursor*: the latest due time it has dealt with (fired, skipped or missed), or the moment it
//! was first seen. The due times after the cursor and up to now are what is owed;
//! [`decide`] turns them into at most one task:
//!
//! - the latest due time is *on time* when it passed less than [`ON_TIME_GRACE`] ago, and then
//!   fires (earlier ones owed with it were missed: one task covers them all);
//! - when even the latest is late (Baton was not running), `missed = "run-once"` fires one task
//!   for all of them and `missed = "skip"` fires none;
//! - while the schedule's previous task is unfinished, `overlap = "skip"` skips the due time,
//!   `queue` and `allow` fire (see [`Overlap`]).
//!
//! Whatever is decided moves the cursor to the latest due time, so each due time is dealt with
//! once; the store moves it with a compare-and-set in the same transaction as the task it
//! creates, which makes that true across restarts.
//!
//! Daylight saving time is croner's: a fixed-time job whose wall time falls in a spring-forward
//! gap runs at the first instant after the gap, and one whose wall time happens twice in a
//! fall-back runs once.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{NewTask, TaskId};
use crate::time::Timestamp;

/// A due time that passed less than this long ago is on time; older ones were missed.
pub const ON_TIME_GRACE: Duration = Duration::from_secs(10);

/// What a due time does while the schedule's previous task is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// Nothing: the due time is skipped (with a `ScheduleSkipped` event).
    #[default]
    Skip,
    /// A task is created and held `pending` until every earlier task of the schedule has
    /// finished, whatever their outcome; then it runs.
    Queue,
    /// A task is created and runs beside the previous one, as agents allow.
    Allow,
}

/// What due times missed while Baton was not running do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// Nothing: they are skipped (with a `ScheduleSkipped` event).
    #[default]
    Skip,
    /// One task, for all of them.
    RunOnce,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Allow => "allow",
        }
    }
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run-once",
        }
    }
}

/// A `[[schedules]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleSpec {
    pub name: String,
    pub cron: String,
    /// An IANA time zone name (`"Europe/Paris"`), `"UTC"` by default.
    pub timezone: String,
    pub overlap: Overlap,
    pub missed: Missed,
    /// The state a schedule starts in; after that, `baton schedule pause|resume` decides.
    pub paused: bool,
    /// The task each firing creates; its key is set per firing ([`task_key`]).
    pub task: NewTask,
}

impl ScheduleSpec {
    pub fn timetable(&self) -> Timetable {
        Timetable::parse(&self.cron, &self.timezone).expect("schedules are validated when the plan is loaded")
    }
}

/// A schedule as stored in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub run_id: String,
    pub name: String,
    /// The latest due time dealt with, or when the schedule was first seen.
    pub cursor: Timestamp,
    pub last_fired_due: Option<Timestamp>,
    pub last_fired_at: Option<Timestamp>,
    pub last_task: Option<TaskId>,
    pub paused: bool,
    pub updated_at: Timestamp,
}

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Timetable {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl Timetable {
    /// Parses a cron expression of 5 fields (minute first) or 6 (second first), or a nickname
    /// such as `@daily`, and an IANA time zone name.
    pub fn parse(cron: &str, zone: &str) -> Result<Timetable, String> {
        let zone = parse_zone(zone)?;
        let cron = parse_cron(cron)?;
        Ok(Timetable { cron, zone })
    }

    /// The first due time strictly after `after`; `None` when there is none (a date that never
    /// comes).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = self.zone.timestamp_millis_opt(after.0).single()?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(Timestamp(next.timestamp_millis()))
    }

    /// The next `n` due times after `after`.
    pub fn upcoming(&self, after: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut times = Vec::with_capacity(n);
        let mut cursor = after;
        while times.len() < n {
            let Some(next) = self.next_after(cursor) else { break };
            times.push(next);
            cursor = next;
        }
        times
    }

    /// A due time as wall time in the schedule's zone, e.g. `2026-03-29 03:00:00 CEST`.
    pub fn local(&self, at: Timestamp) -> String {
        match self.zone.timestamp_millis_opt(at.0).single() {
            Some(local) => local.format("%Y-%m-%d %H:%M:%S %Z").to_string(),
            None => format!("{at}"),
        }
    }
}

fn parse_zone(zone: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(zone).map_err(|_| {
        format!(
            "unknown time zone `{zone}`; use an IANA name such as \"UTC\", \"Europe/Paris\" or \"America/New_York\""
        )
    })
}

fn parse_cron(cron: &str) -> Result<croner::Cron, String> {
    let text = cron.trim();
    let n_fields = text.split_whitespace().count();
    if !text.starts_with('@') && !(5..=6).contains(&n_fields) {
        return Err(format!(
            "invalid cron expression `{cron}`: it has {n_fields} field(s); write 5 (minute hour day month weekday, e.g. \"30 2 * * *\") or 6 (with seconds first, e.g. \"0 30 2 * * *\")"
        ));
    }
    check_lists(cron)?;
    let parsed = croner::Cron::from_str(text).map_err(|error| {
        let detail = error.to_string();
        format!("invalid cron expression `{cron}`: {}", detail.trim_end_matches('.'))
    })?;
    // A pattern that never matches (February 30th) is refused here rather than never firing.
    let probe = Utc.timestamp_opt(0, 0).single().expect("the epoch exists");
    if parsed.find_next_occurrence(&probe, false).is_err() {
        return Err(format!("cron expression `{cron}` never matches a date"));
    }
    Ok(parsed)
}

/// Refuses a cron expression with an empty item in a list (`,`, `1,`, `1,,2`). The parser
/// takes such a field as matching nothing, and the search for a due time that never comes then
/// goes through every minute of the calendar: `, * * 2 * 0` took seconds to refuse.
pub(crate) fn check_lists(cron: &str) -> Result<(), String> {
    for (idx, field) in cron.split_whitespace().enumerate() {
        if field.contains(',') && field.split(',').any(str::is_empty) {
            return Err(format!(
                "invalid cron expression `{cron}`: field {} (`{field}`) has an empty item in its list",
                idx + 1
            ));
        }
    }
    Ok(())
}

/// The key of the task a schedule creates for a due time: `NAME@2026-03-29T01:00:00Z`. It
/// names the firing, and tells the scheduler which schedule a stored task belongs to.
pub fn task_key(schedule: &str, due: Timestamp) -> String {
    format!("{schedule}@{}", format_utc(due))
}

/// The schedule a task key names, when it is a schedule's ([`task_key`]).
pub fn schedule_of_key(key: &str) -> Option<&str> {
    let (schedule, due) = key.split_once('@')?;
    DateTime::parse_from_rfc3339(due).ok()?;
    Some(schedule)
}

/// A task a schedule creates for a due time: the runtime has the store create it, move the
/// schedule's cursor from `expect_cursor` to `due` (compare-and-set) and write `ScheduleFired`,
/// all in one transaction, then hands the created task back to the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub schedule: String,
    pub due: Timestamp,
    pub expect_cursor: Timestamp,
    /// How many due times the task covers (more than one after a downtime).
    pub n_due: u32,
    /// Whether the due time had passed by more than [`ON_TIME_GRACE`] (`missed = "run-once"`).
    pub late: bool,
    pub task: NewTask,
}

/// A time as shown in events and tables: `2026-03-29T01:00:00Z`.
pub fn format_utc(at: Timestamp) -> String {
    let utc = DateTime::<Utc>::from_timestamp_millis(at.0).unwrap_or_default();
    utc.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// What to do about a schedule now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due.
    Wait,
    /// Create one task for `due`, covering `n_due` due times (more than one after downtime).
    Fire { due: Timestamp, n_due: u32, late: bool },
    /// Create nothing for the due times up to `due`, saying why.
    Skip { due: Timestamp, n_due: u32, reason: String },
}

/// The due times after `cursor` up to `now`: how many, and the latest. Counting stops at a
/// large number: a per-second schedule after a long downtime has owed millions.
fn owed(timetable: &Timetable, cursor: Timestamp, now: Timestamp) -> Option<(Timestamp, u32)> {
    const COUNT_LIMIT: u32 = 10_000;
    let first = timetable.next_after(cursor).filter(|due| *due <= now)?;
    let mut latest = first;
    let mut n_due = 1u32;
    while n_due < COUNT_LIMIT {
        match timetable.next_after(latest) {
            Some(next) if next <= now => {
                latest = next;
                n_due += 1;
            }
            _ => return Some((latest, n_due)),
        }
    }
    // Too many to count one by one: jump to the latest, counting it as one more.
    let previous_second = Timestamp(now.0 - now.0.rem_euclid(1000) - 1);
    let latest = timetable.next_after(previous_second).filter(|due| *due <= now).unwrap_or(latest);
    Some((latest, n_due + 1))
}

/// Decides what a schedule does at `now`, given its cursor and whether a task it created
/// earlier is unfinished.
pub fn decide(
    timetable: &Timetable,
    cursor: Timestamp,
    now: Timestamp,
    missed: Missed,
    overlap: Overlap,
    previous_unfinished: bool,
) -> Decision {
    let Some((due, n_due)) = owed(timetable, cursor, now) else {
        return Decision::Wait;
    };
    let late = now.since(due) >= ON_TIME_GRACE;
    if late && missed == Missed::Skip {
        return Decision::Skip {
            due,
            n_due,
            reason: format!("{n_due} due time(s) missed while Baton was not running"),
        };
    }
    if previous_unfinished && overlap == Overlap::Skip {
        return Decision::Skip { due, n_due, reason: "the previous task of the schedule is still unfinished".into() };
    }
    Decision::Fire { due, n_due, late }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(zone: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Timestamp {
        let zone = parse_zone(zone).unwrap();
        let naive = NaiveDate::from_ymd_opt(y, mo, d).unwrap().and_hms_opt(h, mi, s).unwrap();
        // The earlier instant when the wall time happens twice.
        Timestamp(zone.from_local_datetime(&naive).earliest().unwrap().timestamp_millis())
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Timestamp {
        at("UTC", y, mo, d, h, mi, s)
    }

    const SECOND: i64 = 1000;
    const HOUR: i64 = 3600 * SECOND;

    #[test]
    fn five_and_six_fields_nicknames_and_errors() {
        let daily = Timetable::parse("30 2 * * *", "UTC").unwrap();
        assert_eq!(daily.next_after(utc(2026, 1, 1, 0, 0, 0)), Some(utc(2026, 1, 1, 2, 30, 0)));
        let every_second = Timetable::parse("*/1 * * * * *", "UTC").unwrap();
        assert_eq!(every_second.next_after(utc(2026, 1, 1, 0, 0, 0)), Some(utc(2026, 1, 1, 0, 0, 1)));
        let nickname = Timetable::parse("@daily", "UTC").unwrap();
        assert_eq!(nickname.next_after(utc(2026, 1, 1, 0, 0, 0)), Some(utc(2026, 1, 2, 0, 0, 0)));
        let error = Timetable::parse("* * * *", "UTC").unwrap_err();
        assert!(error.contains("it has 4 field(s); write 5"), "{error}");
        let error = Timetable::parse("61 * * * *", "UTC").unwrap_err();
        assert!(error.starts_with("invalid cron expression `61 * * * *`"), "{error}");
        let error = Timetable::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert!(error.contains("never matches"), "{error}");
        // Found by fuzzing: a field that matches nothing made refusing it take seconds.
        let error = Timetable::parse(", * * \u{c}2 * 0", "UTC").unwrap_err();
        assert!(error.ends_with("field 1 (`,`) has an empty item in its list"), "{error}");
        for cron in ["1, * * * *", "0 1,,2 * * *", "0 0 * * MON,"] {
            assert!(Timetable::parse(cron, "UTC").unwrap_err().contains("has an empty item in its list"), "{cron}");
        }
        assert!(Timetable::parse("0,30 1,2 * * MON,FRI", "UTC").is_ok());
        let error = Timetable::parse("* * * * *", "Europe/Pariss").unwrap_err();
        assert!(error.starts_with("unknown time zone `Europe/Pariss`"), "{error}");
    }

    /// 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day.
    /// The daily 02:30 job runs once, at 03:00 CEST, and once on each day around it.
    #[test]
    fn spring_forward_fires_once_on_the_missing_hour() {
        let table = Timetable::parse("30 2 * * *", "Europe/Paris").unwrap();
        let times = table.upcoming(at("Europe/Paris", 2026, 3, 28, 0, 0, 0), 3);
        assert_eq!(
            times,
            vec![
                at("Europe/Paris", 2026, 3, 28, 2, 30, 0),
                at("Europe/Paris", 2026, 3, 29, 3, 0, 0),
                at("Europe/Paris", 2026, 3, 30, 2, 30, 0),
            ]
        );
        assert_eq!(table.local(times[1]), "2026-03-29 03:00:00 CEST");
        // 2026-03-29 03:00 CEST is 01:00 UTC; the day before, 02:30 CET is 01:30 UTC.
        assert_eq!(times[1], utc(2026, 3, 29, 1, 0, 0));
        assert_eq!(times[0], utc(2026, 3, 28, 1, 30, 0));
    }

    /// 2026-10-25 in Paris: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice. The
    /// daily 02:30 job runs once that day.
    #[test]
    fn fall_back_fires_once_on_the_repeated_hour() {
        let table = Timetable::parse("30 2 * * *", "Europe/Paris").unwrap();
        let times = table.upcoming(at("Europe/Paris", 2026, 10, 24, 12, 0, 0), 2);
        assert_eq!(times.len(), 2);
        assert_eq!(times[0], utc(2026, 10, 25, 0, 30, 0), "{}", table.local(times[0]));
        assert_eq!(table.local(times[0]), "2026-10-25 02:30:00 CEST");
        assert_eq!(times[1], utc(2026, 10, 26, 1, 30, 0), "{}", table.local(times[1]));
        // Deciding through the night: one firing, not two.
        let mut cursor = at("Europe/Paris", 2026, 10, 24, 12, 0, 0);
        let mut fired = Vec::new();
        let mut now = cursor;
        while now < utc(2026, 10, 25, 6, 0, 0) {
            now = Timestamp(now.0 + 60 * SECOND);
            if let Decision::Fire { due, .. } = decide(&table, cursor, now, Missed::Skip, Overlap::Allow, false) {
                fired.push(due);
                cursor = due;
            }
        }
        assert_eq!(fired, vec![times[0]]);
    }

    /// An hourly job in New York across both changes: 23 hours on the spring day, 25 on the
    /// fall day, one firing each hour that exists.
    #[test]
    fn interval_jobs_follow_real_hours_across_dst() {
        let table = Timetable::parse("0 * * * *", "America/New_York").unwrap();
        let spring = table.upcoming(at("America/New_York", 2026, 3, 7, 23, 30, 0), 24);
        let spring_day: Vec<_> = spring.iter().filter(|t| table.local(**t).starts_with("2026-03-08")).collect();
        assert_eq!(spring_day.len(), 23);
        let fall = table.upcoming(at("America/New_York", 2026, 10, 31, 23, 30, 0), 26);
        let fall_day: Vec<_> = fall.iter().filter(|t| table.local(**t).starts_with("2026-11-01")).collect();
        assert_eq!(fall_day.len(), 25);
        for pair in fall.windows(2) {
            assert_eq!(pair[1].0 - pair[0].0, HOUR);
        }
    }

    #[test]
    fn on_time_fires_late_is_missed() {
        let table = Timetable::parse("0 * * * *", "UTC").unwrap();
        let cursor = utc(2026, 1, 1, 0, 0, 0);
        assert_eq!(
            decide(&table, cursor, utc(2026, 1, 1, 0, 59, 59), Missed::Skip, Overlap::Skip, false),
            Decision::Wait
        );
        let due = utc(2026, 1, 1, 1, 0, 0);
        assert_eq!(
            decide(&table, cursor, utc(2026, 1, 1, 1, 0, 2), Missed::Skip, Overlap::Skip, false),
            Decision::Fire { due, n_due: 1, late: false }
        );
        // Down from 00:30 to 03:20: 01:00, 02:00 and 03:00 were missed.
        let after_downtime = utc(2026, 1, 1, 3, 20, 0);
        let latest = utc(2026, 1, 1, 3, 0, 0);
        assert_eq!(
            decide(&table, cursor, after_downtime, Missed::RunOnce, Overlap::Skip, false),
            Decision::Fire { due: latest, n_due: 3, late: true }
        );
        assert!(matches!(
            decide(&table, cursor, after_downtime, Missed::Skip, Overlap::Skip, false),
            Decision::Skip { due, n_due: 3, .. } if due == latest
        ));
        // Back just at 03:00:01: the latest is on time and fires; the two before are covered.
        assert_eq!(
            decide(&table, cursor, utc(2026, 1, 1, 3, 0, 1), Missed::Skip, Overlap::Skip, false),
            Decision::Fire { due: latest, n_due: 3, late: false }
        );
    }

    #[test]
    fn overlap_skip_skips_while_queue_and_allow_fire() {
        let table = Timetable::parse("*/5 * * * * *", "UTC").unwrap();
        let cursor = utc(2026, 1, 1, 0, 0, 0);
        let now = utc(2026, 1, 1, 0, 0, 5);
        let due = now;
        assert!(matches!(
            decide(&table, cursor, now, Missed::Skip, Overlap::Skip, true),
            Decision::Skip { reason, .. } if reason.contains("still unfinished")
        ));
        for overlap in [Overlap::Queue, Overlap::Allow] {
            assert_eq!(
                decide(&table, cursor, now, Missed::Skip, overlap, true),
                Decision::Fire { due, n_due: 1, late: false }
            );
        }
        assert_eq!(
            decide(&table, cursor, now, Missed::Skip, Overlap::Skip, false),
            Decision::Fire { due, n_due: 1, late: false }
        );
    }

    #[test]
    fn a_long_downtime_of_a_per_second_schedule_is_counted_quickly() {
        let table = Timetable::parse("* * * * * *", "UTC").unwrap();
        let cursor = utc(2026, 1, 1, 0, 0, 0);
        let now = utc(2026, 1, 2, 0, 0, 0);
        let Decision::Fire { due, n_due, late } = decide(&table, cursor, now, Missed::RunOnce, Overlap::Skip, false)
        else {
            panic!("fires once")
        };
        assert_eq!(due, now);
        assert!(n_due > 10_000);
        assert!(!late);
    }

    #[test]
    fn task_keys_name_their_schedule() {
        let key = task_key("nightly", utc(2026, 3, 29, 1, 0, 0));
        assert_eq!(key, "nightly@2026-03-29T01:00:00Z");
        assert_eq!(schedule_of_key(&key), Some("nightly"));
        assert_eq!(schedule_of_key("nightly"), None);
        assert_eq!(schedule_of_key("user@example.com"), None);
    }
}
