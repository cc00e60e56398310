//! Schedules driven through the harness with a controlled clock: one task per due time, the
//! run kept open, overlap (skip, queue, allow), missed due times after a downtime (skip,
//! run-once), at most once across restarts, pause and resume, and a daylight-saving change.

use chrono::{NaiveDate, TimeZone};

use super::*;
use crate::schedule::format_utc;

const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;

/// A plan with one shared agent and one schedule firing at second 0 of every minute.
fn plan(overlap: &str, missed: &str) -> Plan {
    plan_with(&format!("cron = \"0 * * * * *\"\noverlap = \"{overlap}\"\nmissed = \"{missed}\""))
}

fn plan_with(schedule_keys: &str) -> Plan {
    let text = format!(
        r#"
[orchestration]
name = "scheduled"
retry_backoff = "1s"

[[agents]]
name = "worker"
capabilities = ["job"]
concurrency = 2
command = ["true"]

[[schedules]]
name = "job"
{schedule_keys}
task = {{ title = "Scheduled job", requires = ["job"], max_attempts = 1 }}
"#
    );
    config::load("baton.toml", &text, &BTreeMap::new()).unwrap()
}

/// 2026-01-01T00:00:30Z: half a minute before a due time.
fn start() -> Timestamp {
    Timestamp(1_767_225_630_000)
}

fn fired(h: &Harness) -> Vec<(String, u32, bool)> {
    h.store
        .events
        .iter()
        .filter_map(|event| match event {
            EventKind::ScheduleFired { due, n_due, late, .. } => Some((format_utc(*due), *n_due, *late)),
            _ => None,
        })
        .collect()
}

fn skipped(h: &Harness) -> Vec<(String, String)> {
    h.store
        .events
        .iter()
        .filter_map(|event| match event {
            EventKind::ScheduleSkipped { due, reason, .. } => Some((format_utc(*due), reason.clone())),
            _ => None,
        })
        .collect()
}

/// Moves the clock to `at` and ticks, as the engine does when its wake-up comes.
fn tick_at(h: &mut Harness, at: Timestamp) {
    h.now = at;
    let mut fx = Effects::default();
    h.sched.tick(h.now, &mut fx);
    h.apply(fx);
}

/// Waits (ticking at each wake-up) until the schedule has decided something: fired or skipped.
fn next_due(h: &mut Harness) {
    let n_decided = fired(h).len() + skipped(h).len();
    while fired(h).len() + skipped(h).len() == n_decided {
        assert!(h.wait(), "nothing to wait for");
    }
}

fn schedule_task_keys(h: &Harness) -> Vec<String> {
    h.store.tasks.values().filter_map(|task| task.key.clone()).collect()
}

#[test]
fn a_schedule_fires_once_per_due_time_and_keeps_the_run_open() {
    let mut h = Harness::new_at(plan("skip", "skip"), start());
    assert_eq!(h.sched.next_wakeup(), Some(Timestamp(start().0 + 30 * SECOND)));
    next_due(&mut h);
    assert_eq!(fired(&h), vec![("2026-01-01T00:01:00Z".to_string(), 1, false)]);
    assert_eq!(h.running.len(), 1, "the task was claimed at once");
    // Ticking again at the same time fires nothing more.
    let now = h.now;
    tick_at(&mut h, now);
    assert_eq!(fired(&h).len(), 1);
    h.finish(0, true);
    assert_eq!(h.store.run_state, None, "a run with a schedule stays open when its tasks are done");
    next_due(&mut h);
    h.finish(0, true);
    assert_eq!(schedule_task_keys(&h), vec!["job@2026-01-01T00:01:00Z", "job@2026-01-01T00:02:00Z"]);
    assert_eq!(h.store.schedules["job"].last_fired_due, Some(h.now));
}

#[test]
fn overlap_skip_skips_while_the_previous_task_runs() {
    let mut h = Harness::new_at(plan("skip", "skip"), start());
    next_due(&mut h);
    next_due(&mut h);
    assert_eq!(fired(&h).len(), 1);
    assert_eq!(
        skipped(&h),
        vec![("2026-01-01T00:02:00Z".to_string(), "the previous task of the schedule is still unfinished".to_string())]
    );
    h.finish(0, true);
    next_due(&mut h);
    assert_eq!(fired(&h).len(), 2);
    assert_eq!(fired(&h)[1].0, "2026-01-01T00:03:00Z");
}

#[test]
fn overlap_queue_holds_the_next_task_until_the_previous_one_ends_whatever_its_outcome() {
    let mut h = Harness::new_at(plan("queue", "skip"), start());
    next_due(&mut h);
    next_due(&mut h);
    assert_eq!(fired(&h).len(), 2);
    assert_eq!(h.running.len(), 1, "the second waits although the agent has a free slot");
    assert_eq!(h.state_of("job@2026-01-01T00:02:00Z"), TaskState::Pending);
    h.finish(0, false);
    assert_eq!(h.state_of("job@2026-01-01T00:01:00Z"), TaskState::Dead);
    assert_eq!(h.state_of("job@2026-01-01T00:02:00Z"), TaskState::Running, "a failure does not cancel the next");
    // Still held back after a restart.
    next_due(&mut h);
    assert_eq!(h.state_of("job@2026-01-01T00:03:00Z"), TaskState::Pending);
    h.crash_and_resume();
    assert_eq!(h.state_of("job@2026-01-01T00:03:00Z"), TaskState::Pending);
    assert_eq!(h.state_of("job@2026-01-01T00:02:00Z"), TaskState::Running, "retried after the crash");
}

#[test]
fn overlap_allow_runs_firings_side_by_side() {
    let mut h = Harness::new_at(plan("allow", "skip"), start());
    next_due(&mut h);
    next_due(&mut h);
    assert_eq!(fired(&h).len(), 2);
    assert_eq!(h.running.len(), 2);
}

/// Baton is down from 00:01:10 to 00:10:30: nine due times passed.
fn downtime(missed: &str) -> Harness {
    let mut h = Harness::new_at(plan("skip", missed), start());
    next_due(&mut h);
    h.finish(0, true);
    h.now = Timestamp(start().0 + 40 * SECOND);
    // `crash_and_resume` adds a second.
    h.now = Timestamp(h.now.0 + 9 * MINUTE + 19 * SECOND);
    h.crash_and_resume();
    assert_eq!(format_utc(h.now), "2026-01-01T00:10:30Z");
    next_due(&mut h);
    h
}

#[test]
fn missed_skip_fires_nothing_for_due_times_missed_while_down() {
    let mut h = downtime("skip");
    assert_eq!(fired(&h).len(), 1);
    assert_eq!(
        skipped(&h),
        vec![("2026-01-01T00:10:00Z".to_string(), "9 due time(s) missed while Baton was not running".to_string())]
    );
    next_due(&mut h);
    assert_eq!(fired(&h)[1], ("2026-01-01T00:11:00Z".to_string(), 1, false));
}

#[test]
fn missed_run_once_fires_one_task_for_all_the_missed_due_times() {
    let mut h = downtime("run-once");
    assert_eq!(fired(&h)[1], ("2026-01-01T00:10:00Z".to_string(), 9, true));
    assert_eq!(h.store.tasks.len(), 2);
    h.finish(0, true);
    next_due(&mut h);
    assert_eq!(fired(&h)[2], ("2026-01-01T00:11:00Z".to_string(), 1, false));
}

#[test]
fn a_due_time_fires_at_most_once_across_restarts() {
    let mut h = Harness::new_at(plan("allow", "run-once"), start());
    next_due(&mut h);
    // A crash right after the firing committed: the task is there; the due time is not owed
    // again, though the new scheduler starts before the next one.
    h.crash_and_resume();
    assert_eq!(h.sched.next_schedule_due().map(format_utc), Some("2026-01-01T00:02:00Z".to_string()));
    let now = h.now;
    tick_at(&mut h, now);
    assert_eq!(fired(&h).len(), 1);
    // A crash after the decision but before the firing was performed: nothing durable moved,
    // so the due time is still owed, once.
    h.now = Timestamp(start().0 + 90 * SECOND);
    let mut lost = Effects::default();
    h.sched.tick(h.now, &mut lost);
    assert_eq!(lost.fire.len(), 1);
    h.crash_and_resume();
    next_due(&mut h);
    next_due(&mut h);
    assert_eq!(
        fired(&h).iter().map(|(due, ..)| due.as_str()).collect::<Vec<_>>(),
        vec!["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z", "2026-01-01T00:03:00Z"]
    );
    // A firing performed twice (a retried store call) creates one task.
    let replay = lost.fire.remove(0);
    assert_eq!(h.store.fire(&replay, h.now), None);
    assert_eq!(h.store.tasks.len(), 3);
}

#[test]
fn a_refused_firing_reloads_the_stored_schedule() {
    let mut h = Harness::new_at(plan("allow", "skip"), start());
    // Someone else moved the stored cursor (a `baton schedule resume` racing a starting run).
    let moved = Timestamp(start().0 + 15 * SECOND);
    h.store.schedules.get_mut("job").unwrap().cursor = moved;
    tick_at(&mut h, Timestamp(start().0 + 31 * SECOND));
    assert!(fired(&h).is_empty(), "the store refused the firing");
    assert_eq!(h.store.tasks.len(), 0);
    // The engine then reloads the stored record: the due time was not dealt with, so it is
    // still owed.
    let stored = h.store.schedules["job"].clone();
    h.sched.schedule_reloaded(stored);
    let now = h.now;
    tick_at(&mut h, now);
    assert_eq!(fired(&h), vec![("2026-01-01T00:01:00Z".to_string(), 1, false)]);
}

#[test]
fn paused_schedules_do_not_fire_and_resume_from_the_next_due_time() {
    let mut h = Harness::new_at(plan("allow", "run-once"), start());
    let mut fx = Effects::default();
    h.sched.pause_schedule("job", h.now, &mut fx).unwrap();
    h.apply(fx);
    assert_eq!(h.sched.next_wakeup(), None);
    assert!(h.store.schedules["job"].paused);
    tick_at(&mut h, Timestamp(start().0 + 5 * MINUTE));
    assert!(fired(&h).is_empty());
    // Paused across a restart too.
    h.crash_and_resume();
    tick_at(&mut h, Timestamp(start().0 + 6 * MINUTE));
    assert!(fired(&h).is_empty());
    let mut fx = Effects::default();
    h.sched.resume_schedule("job", h.now, &mut fx).unwrap();
    h.apply(fx);
    next_due(&mut h);
    assert_eq!(fired(&h), vec![("2026-01-01T00:07:00Z".to_string(), 1, false)], "the paused due times are not owed");
    let names: Vec<&str> =
        h.store.events.iter().map(EventKind::name).filter(|name| name.starts_with("Sched")).collect();
    assert_eq!(names, vec!["SchedulePaused", "ScheduleResumed", "ScheduleFired"]);
    let mut fx = Effects::default();
    assert_eq!(h.sched.pause_schedule("nope", h.now, &mut fx), Err(Error::UnknownSchedule("nope".into())));
}

#[test]
fn a_daily_schedule_fires_once_a_day_across_both_daylight_saving_changes() {
    let paris = |y, m, d, hh, mm| {
        let naive = NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(hh, mm, 0).unwrap();
        Timestamp(chrono_tz::Europe::Paris.from_local_datetime(&naive).earliest().unwrap().timestamp_millis())
    };
    for (start, days) in [
        (paris(2026, 3, 27, 12, 0), ["03-28", "03-29", "03-30"]),
        (paris(2026, 10, 23, 12, 0), ["10-24", "10-25", "10-26"]),
    ] {
        let mut h = Harness::new_at(plan_with("cron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\""), start);
        for _ in 0..3 {
            next_due(&mut h);
            h.finish(0, true);
        }
        let table = h.plan.schedules[0].timetable();
        let local: Vec<String> = fired(&h)
            .iter()
            .map(|(due, ..)| {
                let at = chrono::DateTime::parse_from_rfc3339(due).unwrap().timestamp_millis();
                table.local(Timestamp(at))
            })
            .collect();
        assert_eq!(local.len(), 3);
        for (shown, day) in local.iter().zip(days) {
            assert!(shown.starts_with(&format!("2026-{day}")), "{local:?}");
        }
        if days[1] == "03-29" {
            assert_eq!(local[1], "2026-03-29 03:00:00 CEST", "02:30 does not exist that day");
        } else {
            assert_eq!(local[1], "2026-10-25 02:30:00 CEST", "02:30 happens twice that day; it fires once");
        }
    }
}
