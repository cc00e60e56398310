//! Records to and from rows: the column lists the queries select, JSON columns, and a row
//! read back as a record.

use rusqlite::Row;

use baton_core::budget::Scope;
use baton_core::model::{Priority, RunRecord, RunState, TaskId, TaskRecord, TaskState, TaskStatus};
use baton_core::{Event, Timestamp};

use baton_core::messages::{Delivery, DeliveryState};

/// An agent's start number as SQLite stores it (a signed 64-bit integer; no agent is started
/// 2^63 times).
pub(super) fn sql_generation(generation: u64) -> i64 {
    i64::try_from(generation).unwrap_or(i64::MAX)
}

pub(super) use super::rows_shared::{RUN_COLUMNS, TASK_COLUMNS};

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("{what}: {error}").into())
    })
}

pub(super) fn parse<T: std::str::FromStr<Err = String>>(text: &str) -> rusqlite::Result<T> {
    text.parse().map_err(|error: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, error.into())
    })
}

/// `id, key, state`.
pub(super) fn task_status_from_row(row: &Row<'_>) -> rusqlite::Result<TaskStatus> {
    Ok(TaskStatus { id: TaskId(row.get(0)?), key: row.get(1)?, state: parse::<TaskState>(&row.get::<_, String>(2)?)? })
}

pub(super) fn task_from_row(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let depends_on: Vec<i64> = from_json(&row.get::<_, String>(9)?, "depends_on")?;
    Ok(TaskRecord {
        id: TaskId(row.get(0)?),
        run_id: row.get(1)?,
        key: row.get(2)?,
        workstream: row.get(3)?,
        title: row.get(4)?,
        description: row.get(5)?,
        input: from_json(&row.get::<_, String>(6)?, "input")?,
        requires: from_json(&row.get::<_, String>(7)?, "requires")?,
        agent: row.get(8)?,
        depends_on: depends_on.into_iter().map(TaskId).collect(),
        priority: Priority::from_rank(row.get(10)?),
        max_attempts: row.get(11)?,
        timeout_ms: row.get::<_, Option<i64>>(12)?.map(|ms| ms as u64),
        resources: from_json(&row.get::<_, String>(13)?, "resources")?,
        estimated_tokens: row.get::<_, Option<i64>>(25)?.map(|tokens| tokens.max(0) as u64),
        parent: row.get::<_, Option<i64>>(26)?.map(TaskId),
        state: parse(&row.get::<_, String>(14)?)?,
        attempt: row.get(15)?,
        assigned_agent: row.get(16)?,
        lease_owner: row.get(17)?,
        lease_expires_at: row.get::<_, Option<i64>>(18)?.map(Timestamp),
        not_before: row.get::<_, Option<i64>>(19)?.map(Timestamp),
        result: row.get::<_, Option<String>>(20)?.map(|text| from_json(&text, "result")).transpose()?,
        error: row.get(21)?,
        created_at: Timestamp(row.get(22)?),
        updated_at: Timestamp(row.get(23)?),
        finished_at: row.get::<_, Option<i64>>(24)?.map(Timestamp),
    })
}

pub(super) fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        state: parse::<RunState>(&row.get::<_, String>(2)?)?,
        phase: row.get(3)?,
        n_phases: row.get(4)?,
        n_tasks: row.get::<_, i64>(5)? as u64,
        n_finished: row.get::<_, i64>(6)? as u64,
        started_at: Timestamp(row.get(7)?),
        ended_at: row.get::<_, Option<i64>>(8)?.map(Timestamp),
        error: row.get(9)?,
        owner: row.get(10)?,
        owner_pid: row.get(11)?,
        owner_until: row.get::<_, Option<i64>>(12)?.map(Timestamp),
    })
}

pub(super) use super::rows_shared::DELIVERY_COLUMNS;

pub(super) fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let state = match row.get::<_, String>(9)?.as_str() {
        "acked" => DeliveryState::Acked,
        "dead" => DeliveryState::Dead,
        _ => DeliveryState::Pending,
    };
    Ok(Delivery {
        id: row.get(0)?,
        message_id: row.get(1)?,
        from: row.get(2)?,
        to: row.get(3)?,
        topic: row.get(4)?,
        body: row.get(5)?,
        data: from_json(&row.get::<_, String>(6)?, "message data")?,
        task: row.get::<_, Option<i64>>(7)?.map(TaskId),
        correlation_id: row.get(8)?,
        state,
        attempts: row.get(10)?,
        next_attempt_at: Timestamp(row.get(11)?),
        created_at: Timestamp(row.get(12)?),
        error: row.get(13)?,
        acked_at: row.get::<_, Option<i64>>(14)?.map(Timestamp),
    })
}

pub(super) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        seq: row.get(0)?,
        run_id: row.get(1)?,
        at: Timestamp(row.get(2)?),
        kind: from_json(&row.get::<_, String>(3)?, "event")?,
    })
}

/// Reads the numbers of a usage row whatever SQLite holds in them. A row written before totals
/// saturated may hold a REAL (SQLite's answer to an integer overflow) or, edited by hand,
/// anything: such a value is clamped to the range it should have and reported, so that one bad
/// row does not make the plan's budgets (and every command that reads them) fail.
pub(super) struct Lenient<'a> {
    pub(super) run: String,
    pub(super) scope: &'a Scope,
}

impl Lenient<'_> {
    pub(super) fn count(&self, row: &rusqlite::Row<'_>, idx: usize, column: &str) -> rusqlite::Result<Option<u64>> {
        use rusqlite::types::ValueRef;
        Ok(match row.get_ref(idx)? {
            ValueRef::Null => None,
            ValueRef::Integer(count) => Some(u64::try_from(count).unwrap_or(0)),
            // `as` saturates (and NaN is 0): the nearest count there is.
            ValueRef::Real(real) => {
                let count = real as u64;
                self.report(column, &real.to_string(), &count.to_string());
                Some(count)
            }
            other => {
                self.report(column, &format!("{other:?}"), "0");
                Some(0)
            }
        })
    }

    pub(super) fn cost(&self, row: &rusqlite::Row<'_>, idx: usize, column: &str) -> rusqlite::Result<Option<f64>> {
        use rusqlite::types::ValueRef;
        Ok(match row.get_ref(idx)? {
            ValueRef::Null => None,
            ValueRef::Real(cost) if cost.is_finite() && cost >= 0.0 => Some(cost),
            ValueRef::Integer(cost) if cost >= 0 => Some(cost as f64),
            ValueRef::Real(real) => {
                let cost = if real.is_nan() { 0.0 } else { real.clamp(0.0, f64::MAX) };
                self.report(column, &real.to_string(), &cost.to_string());
                Some(cost)
            }
            other => {
                self.report(column, &format!("{other:?}"), "0");
                Some(0.0)
            }
        })
    }

    pub(super) fn report(&self, column: &str, found: &str, counted: &str) {
        tracing::warn!(
            run = %self.run,
            scope = %self.scope,
            "corrupt usage record: `{column}` holds {found}, counted as {counted}"
        );
    }
}
