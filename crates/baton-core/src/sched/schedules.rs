//! Schedules in the scheduler: firing due schedules on the clock tick, holding queued firings
//! behind the previous one, pausing and resuming, and keeping the run open while a schedule
//! can still fire.
//!
//! The scheduler decides ([`crate::schedule::decide`]) and moves the schedule's cursor in
//! memory at once, so a due time is decided once. A firing is an effect ([`Effects::fire`]):
//! the runtime has the store create the task, move the stored cursor (compare-and-set) and
//! write `ScheduleFired` in one transaction, then hands the task back through
//! [`Scheduler::schedule_fired`]. A skipped due time is an ordinary [`Write::Schedule`].
//!
//! A schedule's tasks are keyed `NAME@DUE` ([`crate::schedule::task_key`]); after a restart the
//! scheduler finds them by their key, so `overlap` keeps working across restarts.

use super::{Effects, Error, Scheduler, Write};
use crate::event::EventKind;
use crate::model::{TaskId, TaskRecord};
use crate::schedule::{
    self, Decision, Firing, Overlap, ScheduleRecord, ScheduleSpec, Timetable, schedule_of_key, task_key,
};
use crate::time::Timestamp;

#[derive(Debug, Clone)]
pub(super) struct ScheduleSlot {
    spec: ScheduleSpec,
    timetable: Timetable,
    record: ScheduleRecord,
    /// The first due time after the cursor; kept so that `next_wakeup` computes nothing.
    next_due: Option<Timestamp>,
    /// A firing handed to the runtime whose task has not come back yet.
    firing: bool,
    /// The schedule's unfinished tasks, oldest first.
    open_tasks: Vec<TaskId>,
}

impl ScheduleSlot {
    fn move_cursor(&mut self, cursor: Timestamp) {
        self.record.cursor = cursor;
        self.next_due = self.timetable.next_after(cursor);
    }
}

impl Scheduler {
    /// Builds the schedules from the plan and what the store holds of this run, or else of the
    /// plan's previous run. A schedule the store does not know yet starts now: earlier due
    /// times are not owed. Its record is written at once, so that a downtime before its first
    /// firing is seen as one.
    pub(super) fn init_schedules(&mut self, stored: Vec<ScheduleRecord>, now: Timestamp, fx: &mut Effects) {
        for spec in self.plan.schedules.clone() {
            let mut known = stored.iter().find(|record| record.name == spec.name).cloned();
            // A record of the plan's previous run: this run goes on from its cursor (its task
            // belongs to that run), and writes the record as its own.
            let carried = known.as_ref().is_some_and(|record| record.run_id != self.run_id);
            if carried && let Some(record) = known.as_mut() {
                record.run_id = self.run_id.clone();
                record.last_task = None;
                record.updated_at = now;
            }
            let record = known.clone().unwrap_or_else(|| ScheduleRecord {
                run_id: self.run_id.clone(),
                name: spec.name.clone(),
                cursor: now,
                last_fired_due: None,
                last_fired_at: None,
                last_task: None,
                paused: spec.paused,
                updated_at: now,
            });
            if known.is_none() || carried {
                fx.writes.push(Write::Schedule { record: record.clone(), events: Vec::new() });
            }
            let timetable = spec.timetable();
            let mut slot =
                ScheduleSlot { spec, timetable, record, next_due: None, firing: false, open_tasks: Vec::new() };
            slot.move_cursor(slot.record.cursor);
            self.schedules.push(slot);
        }
        // Only unfinished tasks are in memory, and only they matter: a schedule waits for its
        // unfinished tasks, not for those that ended.
        let mut owned: Vec<(TaskId, usize)> =
            self.tasks.values().filter_map(|task| Some((task.id, self.schedule_index(task.key.as_deref())?))).collect();
        owned.sort_unstable();
        for (id, idx) in owned {
            self.schedule_of.insert(id, idx);
            self.schedules[idx].open_tasks.push(id);
        }
    }

    /// Decides every schedule that is not paused: fires, skips, or waits.
    pub(super) fn fire_schedules(&mut self, now: Timestamp, fx: &mut Effects) {
        for idx in 0..self.schedules.len() {
            let slot = &self.schedules[idx];
            if slot.record.paused || slot.next_due.is_none_or(|due| due > now) {
                continue;
            }
            let previous_unfinished = slot.firing || !slot.open_tasks.is_empty();
            let decision = schedule::decide(
                &slot.timetable,
                slot.record.cursor,
                now,
                slot.spec.missed,
                slot.spec.overlap,
                previous_unfinished,
            );
            let slot = &mut self.schedules[idx];
            match decision {
                Decision::Wait => {}
                Decision::Fire { due, n_due, late } => {
                    let mut task = slot.spec.task.clone();
                    task.key = Some(task_key(&slot.spec.name, due));
                    fx.fire.push(Firing {
                        schedule: slot.spec.name.clone(),
                        due,
                        expect_cursor: slot.record.cursor,
                        n_due,
                        late,
                        task,
                    });
                    slot.firing = true;
                    slot.move_cursor(due);
                }
                Decision::Skip { due, n_due, reason } => {
                    slot.move_cursor(due);
                    slot.record.updated_at = now;
                    let skipped = EventKind::ScheduleSkipped { schedule: slot.spec.name.clone(), due, n_due, reason };
                    fx.writes.push(Write::Schedule { record: slot.record.clone(), events: vec![skipped] });
                }
            }
        }
    }

    /// The runtime performed a firing: `created` is the task the store created, or `None` when
    /// the store refused it because that due time had been dealt with already.
    pub fn schedule_fired(&mut self, firing: &Firing, created: Option<TaskRecord>, now: Timestamp, fx: &mut Effects) {
        let Some(idx) = self.schedules.iter().position(|slot| slot.spec.name == firing.schedule) else {
            return;
        };
        let slot = &mut self.schedules[idx];
        slot.firing = false;
        let Some(task) = created else { return };
        slot.record.last_fired_due = Some(firing.due);
        slot.record.last_fired_at = Some(now);
        slot.record.last_task = Some(task.id);
        slot.record.updated_at = now;
        slot.open_tasks.push(task.id);
        self.schedule_of.insert(task.id, idx);
        self.add_task(task, now, fx);
    }

    /// The store refused a firing because the stored cursor is not the one the scheduler had
    /// (someone else wrote the schedule): the scheduler takes the stored record as it is.
    pub fn schedule_reloaded(&mut self, record: ScheduleRecord) {
        let Some(slot) = self.schedules.iter_mut().find(|slot| slot.spec.name == record.name) else {
            return;
        };
        slot.firing = false;
        slot.record = record;
        slot.move_cursor(slot.record.cursor);
    }

    /// When the next schedule is due, for [`Scheduler::next_wakeup`].
    pub(super) fn next_schedule_due(&self) -> Option<Timestamp> {
        self.schedules.iter().filter(|slot| !slot.record.paused).filter_map(|slot| slot.next_due).min()
    }

    /// A run with a schedule that can still fire stays open when its tasks are done; a paused
    /// schedule counts, since it may be resumed.
    pub(super) fn schedules_keep_open(&self) -> bool {
        self.schedules.iter().any(|slot| slot.next_due.is_some())
    }

    /// Whether a task is a queued firing (`overlap = "queue"`) that an earlier, unfinished task
    /// of its schedule holds back.
    pub(super) fn waits_for_earlier_firing(&self, id: TaskId) -> bool {
        let Some(&idx) = self.schedule_of.get(&id) else { return false };
        let slot = &self.schedules[idx];
        slot.spec.overlap == Overlap::Queue && slot.open_tasks.first().is_some_and(|first| *first != id)
    }

    /// The schedule whose task has this key (`NAME@DUE`), if it is in the plan.
    fn schedule_index(&self, key: Option<&str>) -> Option<usize> {
        let name = schedule_of_key(key?)?;
        self.schedules.iter().position(|slot| slot.spec.name == name)
    }

    /// A task of a schedule finished: the next queued one may go. The task leaves the
    /// schedule's books (a retry finds its schedule again by its key).
    pub(super) fn schedule_task_ended(&mut self, id: TaskId, now: Timestamp, fx: &mut Effects) {
        let Some(idx) = self.schedule_of.remove(&id) else { return };
        let slot = &mut self.schedules[idx];
        slot.open_tasks.retain(|open| *open != id);
        if let Some(&next) = slot.open_tasks.first() {
            self.try_release(next, now, fx);
        }
    }

    /// A finished task of a schedule was retried: it is open again, in its place by age.
    pub(super) fn schedule_task_reopened(&mut self, id: TaskId, key: Option<&str>) {
        let Some(idx) = self.schedule_index(key) else { return };
        self.schedule_of.insert(id, idx);
        let open = &mut self.schedules[idx].open_tasks;
        if let Err(position) = open.binary_search(&id) {
            open.insert(position, id);
        }
    }

    /// Pauses a schedule: its due times pass without firing until it is resumed.
    pub fn pause_schedule(&mut self, name: &str, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        self.set_paused(name, true, now, fx)
    }

    /// Resumes a schedule. Due times that passed while it was paused are not owed: it fires
    /// from the next one on.
    pub fn resume_schedule(&mut self, name: &str, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        self.set_paused(name, false, now, fx)
    }

    fn set_paused(&mut self, name: &str, paused: bool, now: Timestamp, fx: &mut Effects) -> Result<(), Error> {
        let slot = self
            .schedules
            .iter_mut()
            .find(|slot| slot.spec.name == name)
            .ok_or_else(|| Error::UnknownSchedule(name.to_string()))?;
        if slot.record.paused == paused {
            return Ok(());
        }
        slot.record.paused = paused;
        slot.record.updated_at = now;
        if !paused && slot.record.cursor < now {
            slot.move_cursor(now);
        }
        let schedule = name.to_string();
        let event =
            if paused { EventKind::SchedulePaused { schedule } } else { EventKind::ScheduleResumed { schedule } };
        fx.writes.push(Write::Schedule { record: slot.record.clone(), events: vec![event] });
        Ok(())
    }

    /// The schedules as the scheduler holds them.
    pub fn schedule_records(&self) -> Vec<ScheduleRecord> {
        self.schedules.iter().map(|slot| slot.record.clone()).collect()
    }
}
