//! Records to and from PostgreSQL rows: the column lists the queries select (the same as
//! SQLite's), JSON text columns, and a row read back as a record. Every number is a `BIGINT`.

use tokio_postgres::Row;

use baton_core::messages::{Delivery, DeliveryState};
use baton_core::model::{Priority, RunRecord, RunState, TaskId, TaskRecord, TaskState, TaskStatus};
use baton_core::{Event, Timestamp};

use crate::{Error, Result};

pub(super) use crate::sqlite::rows_shared::{DELIVERY_COLUMNS, RUN_COLUMNS, TASK_COLUMNS};

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|error| Error::corrupt(format!("store error: {what} does not read: {error}")))
}

pub(super) fn parse<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T> {
    text.parse().map_err(|error: String| Error::corrupt(format!("store error: {error}")))
}

/// A count or number the store keeps as `BIGINT`, as the `u32` it is in a record (clamped:
/// only a hand-edited row holds anything else).
pub(super) fn small(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

pub(super) fn opt_ts(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp)
}

pub(super) fn task_status_from_row(row: &Row) -> Result<TaskStatus> {
    Ok(TaskStatus {
        id: TaskId(row.try_get(0)?),
        key: row.try_get(1)?,
        state: parse::<TaskState>(row.try_get::<_, &str>(2)?)?,
    })
}

pub(super) fn task_from_row(row: &Row) -> Result<TaskRecord> {
    let depends_on: Vec<i64> = from_json(row.try_get::<_, &str>(9)?, "depends_on")?;
    Ok(TaskRecord {
        id: TaskId(row.try_get(0)?),
        run_id: row.try_get(1)?,
        key: row.try_get(2)?,
        workstream: row.try_get(3)?,
        title: row.try_get(4)?,
        description: row.try_get(5)?,
        input: from_json(row.try_get::<_, &str>(6)?, "input")?,
        requires: from_json(row.try_get::<_, &str>(7)?, "requires")?,
        agent: row.try_get(8)?,
        depends_on: depends_on.into_iter().map(TaskId).collect(),
        priority: Priority::from_rank(row.try_get(10)?),
        max_attempts: small(row.try_get(11)?),
        timeout_ms: row.try_get::<_, Option<i64>>(12)?.map(|ms| ms.max(0) as u64),
        resources: from_json(row.try_get::<_, &str>(13)?, "resources")?,
        estimated_tokens: row.try_get::<_, Option<i64>>(25)?.map(|tokens| tokens.max(0) as u64),
        parent: row.try_get::<_, Option<i64>>(26)?.map(TaskId),
        state: parse(row.try_get::<_, &str>(14)?)?,
        attempt: small(row.try_get(15)?),
        assigned_agent: row.try_get(16)?,
        lease_owner: row.try_get(17)?,
        lease_expires_at: opt_ts(row.try_get(18)?),
        not_before: opt_ts(row.try_get(19)?),
        result: row.try_get::<_, Option<&str>>(20)?.map(|text| from_json(text, "result")).transpose()?,
        error: row.try_get(21)?,
        created_at: Timestamp(row.try_get(22)?),
        updated_at: Timestamp(row.try_get(23)?),
        finished_at: opt_ts(row.try_get(24)?),
    })
}

pub(super) fn run_from_row(row: &Row) -> Result<RunRecord> {
    Ok(RunRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        state: parse::<RunState>(row.try_get::<_, &str>(2)?)?,
        phase: small(row.try_get(3)?),
        n_phases: small(row.try_get(4)?),
        n_tasks: row.try_get::<_, i64>(5)?.max(0) as u64,
        n_finished: row.try_get::<_, i64>(6)?.max(0) as u64,
        started_at: Timestamp(row.try_get(7)?),
        ended_at: opt_ts(row.try_get(8)?),
        error: row.try_get(9)?,
        owner: row.try_get(10)?,
        owner_pid: row.try_get::<_, Option<i64>>(11)?.map(small),
        owner_until: opt_ts(row.try_get(12)?),
    })
}

pub(super) fn delivery_from_row(row: &Row) -> Result<Delivery> {
    let state = match row.try_get::<_, &str>(9)? {
        "acked" => DeliveryState::Acked,
        "dead" => DeliveryState::Dead,
        _ => DeliveryState::Pending,
    };
    Ok(Delivery {
        id: row.try_get(0)?,
        message_id: row.try_get(1)?,
        from: row.try_get(2)?,
        to: row.try_get(3)?,
        topic: row.try_get(4)?,
        body: row.try_get(5)?,
        data: from_json(row.try_get::<_, &str>(6)?, "message data")?,
        task: row.try_get::<_, Option<i64>>(7)?.map(TaskId),
        correlation_id: row.try_get(8)?,
        state,
        attempts: small(row.try_get(10)?),
        next_attempt_at: Timestamp(row.try_get(11)?),
        created_at: Timestamp(row.try_get(12)?),
        error: row.try_get(13)?,
        acked_at: opt_ts(row.try_get(14)?),
    })
}

/// `seq, run_id, at, data`.
pub(super) fn event_from_row(row: &Row) -> Result<Event> {
    Ok(Event {
        seq: row.try_get(0)?,
        run_id: row.try_get(1)?,
        at: Timestamp(row.try_get(2)?),
        kind: from_json(row.try_get::<_, &str>(3)?, "event")?,
    })
}
