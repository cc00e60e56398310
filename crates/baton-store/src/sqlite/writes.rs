//! The scheduler's writes applied in a transaction, each with its events: compare-and-set on
//! tasks, and the insertion of new tasks with their dependencies.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use baton_core::model::{NewTask, TaskId, TaskRecord, TaskRef};
use baton_core::sched::Write;
use baton_core::{EventKind, Timestamp};

use super::rows::to_json;
use super::writer::WriteCtx;
use crate::{Applied, Error, Result};

pub(super) fn apply_write(ctx: &mut WriteCtx<'_>, run_id: &str, now: Timestamp, write: Write) -> Result<Applied> {
    match write {
        Write::Task { id, expect_state, expect_attempt, change, events } => {
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE tasks SET state = ?1, attempt = ?2, assigned_agent = ?3, lease_owner = ?4, \
                 lease_expires_at = ?5, not_before = ?6, result = ?7, error = ?8, finished_at = ?9, updated_at = ?10 \
                 WHERE id = ?11 AND state = ?12 AND attempt = ?13",
            )?;
            let n_changed = stmt.execute(params![
                change.state.as_str(),
                change.attempt,
                change.assigned_agent,
                change.lease_owner,
                change.lease_expires_at.map(|t| t.0),
                change.not_before.map(|t| t.0),
                change.result.as_ref().map(to_json),
                change.error,
                change.finished_at.map(|t| t.0),
                now.0,
                id.0,
                expect_state.as_str(),
                expect_attempt,
            ])?;
            if n_changed == 0 {
                return Ok(Applied::Conflict(format!(
                    "task {id} is no longer {expect_state} at attempt {expect_attempt}"
                )));
            }
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::Agent { record, events } => {
            let mut stmt = ctx.tx.prepare_cached(
                "INSERT OR REPLACE INTO agents (run_id, name, state, record, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            stmt.execute(params![run_id, record.name, record.state.as_str(), to_json(&record), now.0])?;
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::Run { change, events } => {
            let ended = change.state.is_finished();
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE runs SET state = ?1, phase = ?2, n_tasks = ?3, n_finished = ?4, ended_at = ?5, error = ?6, \
                 owner = CASE WHEN ?7 THEN NULL ELSE owner END, \
                 owner_until = CASE WHEN ?7 THEN NULL ELSE owner_until END WHERE id = ?8",
            )?;
            let n_changed = stmt.execute(params![
                change.state.as_str(),
                change.phase,
                change.n_tasks as i64,
                change.n_finished as i64,
                change.ended_at.map(|t| t.0),
                change.error,
                ended,
                run_id,
            ])?;
            if n_changed == 0 {
                return Err(Error::NotFound(format!("no run `{run_id}` in the store")));
            }
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::Fence { owner } => {
            let mut stmt = ctx.tx.prepare_cached("SELECT owner FROM runs WHERE id = ?1")?;
            let held = stmt.query_row(params![run_id], |row| row.get(0)).optional()?;
            crate::fenced(run_id, &owner, held)?;
        }
        Write::RenewLeases { owner, until } => {
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE tasks SET lease_expires_at = ?1 WHERE run_id = ?2 AND state = 'running' AND lease_owner = ?3",
            )?;
            stmt.execute(params![until.0, run_id, owner])?;
        }
        Write::RunOwner { owner, pid, until, expect_owner } => {
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE runs SET owner = ?1, owner_pid = ?2, owner_until = ?3 WHERE id = ?4 \
                 AND (owner IS NULL OR owner = ?5 OR owner = ?1 OR owner_until < ?6)",
            )?;
            let n_changed = stmt.execute(params![owner, pid, until.map(|t| t.0), run_id, expect_owner, now.0])?;
            if n_changed == 0 {
                return Ok(Applied::Conflict(format!("run {run_id} is held by another node")));
            }
        }
        Write::RunInterrupted { expect_owner } => {
            let mut stmt = ctx.tx.prepare_cached(
                "UPDATE runs SET state = 'interrupted', owner = NULL, owner_pid = NULL, owner_until = NULL \
                 WHERE id = ?1 AND state = 'running' AND owner = ?2",
            )?;
            if stmt.execute(params![run_id, expect_owner])? == 0 {
                return Ok(Applied::Conflict(format!("run {run_id} is not running under {expect_owner}")));
            }
            ctx.event(run_id, now, EventKind::RunInterrupted { owner: expect_owner })?;
        }
        Write::Event(event) => {
            ctx.event(run_id, now, event)?;
        }
        Write::Schedule { record, events } => {
            let mut stmt = ctx.tx.prepare_cached(
                "INSERT OR REPLACE INTO schedules (run_id, name, cursor, record) VALUES (?1, ?2, ?3, ?4)",
            )?;
            stmt.execute(params![run_id, record.name, record.cursor.0, to_json(&record)])?;
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::Usage { period_start, scope, spent, events } => {
            // Saturating: SQLite turns an integer sum that overflows into a REAL, which would
            // make the column unreadable as a count. Both sides are at least 0 here, so
            // `MAX - tokens` cannot overflow; a stored value that is not an integer (written
            // before this was so) is cast back to one, which SQLite clamps to the i64 range.
            let mut stmt = ctx.tx.prepare_cached(
                "INSERT INTO usage (run_id, period_start, scope_kind, scope_name, tokens, cost_usd) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (run_id, period_start, scope_kind, scope_name) \
                 DO UPDATE SET \
                 tokens = CASE WHEN max(0, CAST(tokens AS INTEGER)) > 9223372036854775807 - excluded.tokens \
                     THEN 9223372036854775807 ELSE max(0, CAST(tokens AS INTEGER)) + excluded.tokens END, \
                 cost_usd = min(cost_usd + excluded.cost_usd, 1.7976931348623157e308)",
            )?;
            let tokens = i64::try_from(spent.tokens).unwrap_or(i64::MAX);
            let cost_usd = if spent.cost_usd.is_finite() { spent.cost_usd.max(0.0) } else { 0.0 };
            stmt.execute(params![run_id, period_start.0, scope.kind(), scope.name(), tokens, cost_usd])?;
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
        Write::BudgetLimit { period_start, scope, limit, events } => {
            let mut stmt = ctx.tx.prepare_cached(
                "INSERT INTO usage (run_id, period_start, scope_kind, scope_name, has_limit, limit_tokens, limit_cost_usd) \
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6) ON CONFLICT (run_id, period_start, scope_kind, scope_name) \
                 DO UPDATE SET has_limit = 1, limit_tokens = excluded.limit_tokens, limit_cost_usd = excluded.limit_cost_usd",
            )?;
            let tokens = limit.daily_tokens.map(|tokens| i64::try_from(tokens).unwrap_or(i64::MAX));
            stmt.execute(params![run_id, period_start.0, scope.kind(), scope.name(), tokens, limit.cost_usd])?;
            for event in events {
                ctx.event(run_id, now, event)?;
            }
        }
    }
    Ok(Applied::Done)
}

pub(super) fn insert_tasks(
    ctx: &mut WriteCtx<'_>,
    run_id: &str,
    tasks: Vec<NewTask>,
    now: Timestamp,
) -> Result<Vec<TaskRecord>> {
    let mut created: Vec<TaskRecord> = Vec::with_capacity(tasks.len());
    let mut by_key: HashMap<String, TaskId> = HashMap::new();
    {
        let mut stmt = ctx.tx.prepare_cached(
            "INSERT INTO tasks (run_id, key, workstream, title, description, input, requires, agent, depends_on, \
             priority, max_attempts, timeout_ms, resources, state, attempt, created_at, updated_at, estimated_tokens, parent) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '[]', ?9, ?10, ?11, ?12, 'pending', 0, ?13, ?13, ?14, ?15)",
        )?;
        for task in &tasks {
            let inserted = stmt.execute(params![
                run_id,
                task.key,
                task.workstream,
                task.title,
                task.description,
                to_json(&task.input),
                to_json(&task.requires),
                task.agent,
                task.priority.rank(),
                task.max_attempts,
                task.timeout_ms.map(|ms| ms as i64),
                to_json(&task.resources),
                now.0,
                task.estimated_tokens.map(|tokens| i64::try_from(tokens).unwrap_or(i64::MAX)),
                task.parent.map(|parent| parent.0),
            ]);
            if let Err(rusqlite::Error::SqliteFailure(failure, _)) = &inserted
                && failure.code == rusqlite::ErrorCode::ConstraintViolation
            {
                return Err(Error::Conflict(format!(
                    "a task with key `{}` already exists in run {run_id}",
                    task.key.as_deref().unwrap_or_default()
                )));
            }
            inserted?;
            let id = TaskId(ctx.tx.last_insert_rowid());
            if let Some(key) = &task.key {
                by_key.insert(key.clone(), id);
            }
            created.push(crate::created_task(task, id, run_id, now));
        }
    }
    // Resolved once every task of the batch has its id, so that a task may depend on a later
    // one of its batch by key.
    let mut resolved: Vec<Vec<TaskId>> = Vec::with_capacity(tasks.len());
    for (task, record) in tasks.iter().zip(&created) {
        let mut ids = Vec::with_capacity(task.depends_on.len());
        for dep in &task.depends_on {
            let id = match dep {
                TaskRef::Id(id) => ctx
                    .tx
                    .prepare_cached("SELECT id FROM tasks WHERE id = ?1 AND run_id = ?2")?
                    .query_row(params![id.0, run_id], |row| row.get(0))
                    .optional()?
                    .map(TaskId),
                TaskRef::Key(key) => match by_key.get(key) {
                    Some(id) => Some(*id),
                    None => ctx
                        .tx
                        .prepare_cached("SELECT id FROM tasks WHERE run_id = ?1 AND key = ?2")?
                        .query_row(params![run_id, key], |row| row.get(0))
                        .optional()?
                        .map(TaskId),
                },
            };
            let Some(id) = id else {
                let name = match dep {
                    TaskRef::Id(id) => id.to_string(),
                    TaskRef::Key(key) => format!("`{key}`"),
                };
                return Err(Error::Refused(format!("task `{}` depends on unknown task {name}", record.title)));
            };
            if id == record.id {
                return Err(Error::Refused(format!("task `{}` depends on itself", record.title)));
            }
            ids.push(id);
        }
        resolved.push(ids);
    }
    // Tasks stored earlier depend on none of these, so a cycle can only run through the batch.
    if resolved.iter().filter(|ids| !ids.is_empty()).nth(1).is_some() {
        let position: HashMap<TaskId, usize> =
            created.iter().enumerate().map(|(idx, record)| (record.id, idx)).collect();
        let graph: Vec<Vec<usize>> =
            resolved.iter().map(|ids| ids.iter().filter_map(|id| position.get(id).copied()).collect()).collect();
        if let Some(cycle) = baton_core::graph::find_cycle(&graph) {
            let path: Vec<&str> = cycle.iter().map(|&idx| created[idx].title.as_str()).collect();
            return Err(Error::Refused(format!("task dependency cycle: {}", path.join(" -> "))));
        }
    }
    for (ids, record) in resolved.into_iter().zip(created.iter_mut()) {
        if ids.is_empty() {
            continue;
        }
        let raw: Vec<i64> = ids.iter().map(|id| id.0).collect();
        ctx.tx
            .prepare_cached("UPDATE tasks SET depends_on = ?1 WHERE id = ?2")?
            .execute(params![to_json(&raw), record.id.0])?;
        record.depends_on = ids;
    }
    for record in &created {
        ctx.event(
            run_id,
            now,
            EventKind::TaskCreated {
                task: record.id,
                key: record.key.clone(),
                title: record.title.clone(),
                workstream: record.workstream.clone(),
            },
        )?;
    }
    Ok(created)
}
