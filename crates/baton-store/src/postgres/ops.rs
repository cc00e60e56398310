//! The write operations the writer task runs, each inside its savepoint of the group-commit
//! transaction: the same writes, compare-and-set rules and events as SQLite's (`sqlite::writes`,
//! `sqlite::messages`), in PostgreSQL's dialect.

use std::collections::{HashMap, HashSet};

use baton_core::messages::{Delivery, INBOX_LIMIT, NewMessage, Recipient};
use baton_core::model::{NewTask, RunRecord, TaskId, TaskRecord, TaskRef};
use baton_core::sched::Write;
use baton_core::schedule::{Firing, ScheduleRecord};
use baton_core::{EventKind, Timestamp};

use super::rows::{DELIVERY_COLUMNS, delivery_from_row, from_json, small, to_json};
use super::writer::{InboxCounts, WriteCtx};
use crate::{Applied, DeliveryOutcome, Error, NewAuditEntry, NewRun, ProcessOwner, ProcessRecord, Result};

/// One write operation, as data: the writer runs it with [`Op::run`].
pub(super) enum Op {
    /// Taken out of a job already (never run).
    Nothing,
    CreateRun {
        run: NewRun,
        now: Timestamp,
    },
    CreateTasks {
        run_id: String,
        tasks: Vec<NewTask>,
        now: Timestamp,
    },
    Apply {
        run_id: String,
        now: Timestamp,
        writes: Vec<Write>,
    },
    AppendTranscript {
        run_id: String,
        task: TaskId,
        attempt: u32,
        entries: Vec<baton_core::transcript::Entry>,
    },
    RecordProcess {
        run_id: String,
        process: ProcessRecord,
    },
    ForgetProcess {
        run_id: String,
        process: ProcessRecord,
    },
    TakeProcesses {
        run_id: String,
    },
    FireSchedule {
        run_id: String,
        firing: Box<Firing>,
        now: Timestamp,
    },
    SendMessage {
        run_id: String,
        message_id: String,
        message: NewMessage,
        recipients: Vec<String>,
        now: Timestamp,
    },
    SettleDeliveries {
        run_id: String,
        acked: Vec<i64>,
        unacked: Vec<(Delivery, DeliveryOutcome)>,
        now: Timestamp,
    },
    Redeliver {
        run_id: String,
        ids: Option<Vec<i64>>,
        now: Timestamp,
    },
    HandOver {
        run_id: String,
        holder: String,
        agent: String,
        now: Timestamp,
    },
    RecordAudit {
        entry: NewAuditEntry,
    },
    PruneAudit {
        actor: String,
        keep: i64,
    },
    PutPushConfig(crate::PushConfigRecord),
    DeletePushConfig {
        task: i64,
        id: String,
    },
}

/// What an operation answers.
pub(super) enum Output {
    Unit,
    Run(Box<RunRecord>),
    Tasks(Vec<TaskRecord>),
    Applied(Vec<Applied>),
    Processes(Vec<ProcessRecord>),
    Fired(Option<Box<TaskRecord>>),
    Ids(Vec<i64>),
    Deliveries(Vec<Delivery>),
    Id(i64),
    Count(u64),
}

/// An agent's start number as stored (a signed 64-bit integer).
fn sql_generation(generation: u64) -> i64 {
    i64::try_from(generation).unwrap_or(i64::MAX)
}

impl Op {
    pub(super) async fn run(self, ctx: &mut WriteCtx<'_>) -> Result<Output> {
        match self {
            Op::Nothing => Err(Error::closed()),
            Op::CreateRun { run, now } => create_run(ctx, run, now).await.map(|run| Output::Run(Box::new(run))),
            Op::CreateTasks { run_id, tasks, now } => insert_tasks(ctx, &run_id, tasks, now).await.map(Output::Tasks),
            Op::Apply { run_id, now, writes } => {
                let mut applied = Vec::with_capacity(writes.len());
                for write in writes {
                    applied.push(apply_write(ctx, &run_id, now, write).await?);
                }
                Ok(Output::Applied(applied))
            }
            Op::AppendTranscript { run_id, task, attempt, entries } => {
                let attempt_n = i64::from(attempt);
                let next: i64 = ctx
                    .query_one(
                        "SELECT coalesce(max(seq), -1) + 1 FROM transcripts WHERE task_id = $1 AND attempt = $2",
                        &[&task.0, &attempt_n],
                    )
                    .await?
                    .try_get(0)?;
                for (offset, mut entry) in entries.into_iter().enumerate() {
                    entry.attempt = attempt;
                    let seq = next + offset as i64;
                    ctx.execute(
                        "INSERT INTO transcripts (run_id, task_id, attempt, seq, entry) VALUES ($1, $2, $3, $4, $5)",
                        &[&run_id, &task.0, &attempt_n, &seq, &to_json(&entry)],
                    )
                    .await?;
                }
                Ok(Output::Unit)
            }
            Op::RecordProcess { run_id, process } => {
                let pgid = i64::from(process.pgid);
                match &process.owner {
                    ProcessOwner::Attempt { task, attempt } => {
                        ctx.execute(
                            "INSERT INTO processes (run_id, task_id, attempt, pgid, host) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (run_id, task_id, attempt) DO UPDATE SET pgid = excluded.pgid, host = excluded.host",
                            &[&run_id, &task.0, &i64::from(*attempt), &pgid, &process.host],
                        )
                        .await?
                    }
                    ProcessOwner::Agent { agent, generation } => {
                        ctx.execute(
                            "INSERT INTO agent_processes (run_id, agent, generation, pgid, host) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (run_id, agent, generation) DO UPDATE SET pgid = excluded.pgid, host = excluded.host",
                            &[&run_id, agent, &sql_generation(*generation), &pgid, &process.host],
                        )
                        .await?
                    }
                };
                Ok(Output::Unit)
            }
            Op::ForgetProcess { run_id, process } => {
                let pgid = i64::from(process.pgid);
                match &process.owner {
                    ProcessOwner::Attempt { task, attempt } => {
                        ctx.execute(
                            "DELETE FROM processes WHERE run_id = $1 AND task_id = $2 AND attempt = $3 AND pgid = $4",
                            &[&run_id, &task.0, &i64::from(*attempt), &pgid],
                        )
                        .await?
                    }
                    ProcessOwner::Agent { agent, generation } => {
                        ctx.execute(
                            "DELETE FROM agent_processes WHERE run_id = $1 AND agent = $2 AND generation = $3 AND pgid = $4",
                            &[&run_id, agent, &sql_generation(*generation), &pgid],
                        )
                        .await?
                    }
                };
                Ok(Output::Unit)
            }
            Op::TakeProcesses { run_id } => take_processes(ctx, &run_id).await.map(Output::Processes),
            Op::FireSchedule { run_id, firing, now } => {
                fire_schedule(ctx, &run_id, *firing, now).await.map(|task| Output::Fired(task.map(Box::new)))
            }
            Op::SendMessage { run_id, message_id, message, recipients, now } => {
                // A full inbox refuses this message only, before it writes anything.
                if let Some(refusal) = full_inbox(ctx.inbox, &run_id, &recipients) {
                    return Err(refusal);
                }
                insert_message(ctx, &run_id, message_id, message, recipients, now).await.map(Output::Ids)
            }
            Op::SettleDeliveries { run_id, acked, unacked, now } => {
                settle_deliveries(ctx, &run_id, acked, unacked, now).await.map(|()| Output::Unit)
            }
            Op::Redeliver { run_id, ids, now } => {
                let rows = ctx
                    .query(
                        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $2, error = NULL \
                         WHERE run_id = $1 AND state = 'dead' AND ($3::bigint[] IS NULL OR id = ANY($3)) \
                         RETURNING id, recipient, message_id",
                        &[&run_id, &now.0, &ids],
                    )
                    .await?;
                let mut revived: Vec<(i64, String, String)> = Vec::with_capacity(rows.len());
                for row in rows {
                    revived.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
                }
                // In id order, as SQLite's rows come.
                revived.sort_unstable_by_key(|(id, _, _)| *id);
                let mut redelivered = Vec::with_capacity(revived.len());
                for (id, to, message) in revived {
                    ctx.inbox.add(&run_id, &to, 1);
                    ctx.event(&run_id, now, EventKind::MessageRedelivered { message, to }).await?;
                    redelivered.push(id);
                }
                Ok(Output::Ids(redelivered))
            }
            Op::HandOver { run_id, holder, agent, now } => {
                let sql = format!(
                    "UPDATE deliveries SET recipient = $3, next_attempt_at = $4 \
                     WHERE run_id = $1 AND recipient = $2 AND state = 'pending' RETURNING {DELIVERY_COLUMNS}"
                );
                let rows = ctx.query(&sql, &[&run_id, &holder, &agent, &now.0]).await?;
                let mut handed = rows.iter().map(delivery_from_row).collect::<Result<Vec<_>>>()?;
                let n = handed.len() as i64;
                if n > 0 {
                    ctx.inbox.add(&run_id, &holder, -n);
                    ctx.inbox.add(&run_id, &agent, n);
                }
                handed.sort_by_key(|delivery| delivery.id);
                Ok(Output::Deliveries(handed))
            }
            Op::RecordAudit { entry } => {
                let detail = entry.detail.as_ref().map(to_json);
                let id: i64 = ctx
                    .query_one(
                        "INSERT INTO audit (at, actor, role, action, target, outcome, status, detail) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                        &[
                            &entry.at.0,
                            &entry.actor,
                            &entry.role,
                            &entry.action,
                            &entry.target,
                            &entry.outcome,
                            &i64::from(entry.status),
                            &detail,
                        ],
                    )
                    .await?
                    .try_get(0)?;
                Ok(Output::Id(id))
            }
            Op::PruneAudit { actor, keep } => {
                let deleted = ctx
                    .execute(
                        "DELETE FROM audit WHERE actor = $1 AND id <= \
                         (SELECT id FROM audit WHERE actor = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                        &[&actor, &keep],
                    )
                    .await?;
                Ok(Output::Count(deleted))
            }
            Op::PutPushConfig(config) => {
                ctx.execute(
                    "INSERT INTO push_configs (task_id, id, owner, config, seq) \
                     VALUES ($1, $2, $3, $4, (SELECT coalesce(max(seq), 0) + 1 FROM push_configs)) \
                     ON CONFLICT (task_id, id) DO UPDATE SET owner = excluded.owner, config = excluded.config",
                    &[&config.task.0, &config.id, &config.owner, &to_json(&config.config)],
                )
                .await?;
                Ok(Output::Unit)
            }
            Op::DeletePushConfig { task, id } => {
                let deleted =
                    ctx.execute("DELETE FROM push_configs WHERE task_id = $1 AND id = $2", &[&task, &id]).await?;
                Ok(Output::Count(deleted))
            }
        }
    }
}

async fn create_run(ctx: &mut WriteCtx<'_>, run: NewRun, now: Timestamp) -> Result<RunRecord> {
    // Checked and inserted under the write lock: two processes that both found no unfinished
    // run cannot both create one.
    let held = ctx
        .query_opt(
            "SELECT id, owner, owner_pid, owner_until FROM runs \
             WHERE name = $1 AND state = 'running' AND owner IS NOT NULL AND owner != $2 AND owner_until > $3 \
             ORDER BY started_at DESC, ord DESC LIMIT 1",
            &[&run.name, &run.owner, &now.0],
        )
        .await?;
    if let Some(row) = held {
        return Err(Error::RunHeld {
            plan: run.name,
            run: row.try_get(0)?,
            owner: row.try_get(1)?,
            pid: row.try_get::<_, Option<i64>>(2)?.map(small).unwrap_or_default(),
            until: Timestamp(row.try_get(3)?),
        });
    }
    ctx.execute(
        "INSERT INTO runs (id, name, state, phase, n_phases, started_at, owner, owner_pid, owner_until) \
         VALUES ($1, $2, 'running', 0, $3, $4, $5, $6, $7)",
        &[
            &run.id,
            &run.name,
            &i64::from(run.n_phases),
            &now.0,
            &run.owner,
            &i64::from(run.owner_pid),
            &run.owner_until.0,
        ],
    )
    .await?;
    ctx.event(&run.id, now, EventKind::RunStarted { name: run.name.clone(), n_phases: run.n_phases }).await?;
    Ok(run.record(now))
}

async fn events_of(ctx: &mut WriteCtx<'_>, run_id: &str, now: Timestamp, events: Vec<EventKind>) -> Result<()> {
    for event in events {
        ctx.event(run_id, now, event).await?;
    }
    Ok(())
}

async fn apply_write(ctx: &mut WriteCtx<'_>, run_id: &str, now: Timestamp, write: Write) -> Result<Applied> {
    match write {
        Write::Task { id, expect_state, expect_attempt, change, events } => {
            let result = change.result.as_ref().map(to_json);
            let n_changed = ctx
                .execute(
                    "UPDATE tasks SET state = $1, attempt = $2, assigned_agent = $3, lease_owner = $4, \
                     lease_expires_at = $5, not_before = $6, result = $7, error = $8, finished_at = $9, updated_at = $10 \
                     WHERE id = $11 AND state = $12 AND attempt = $13",
                    &[
                        &change.state.as_str(),
                        &i64::from(change.attempt),
                        &change.assigned_agent,
                        &change.lease_owner,
                        &change.lease_expires_at.map(|t| t.0),
                        &change.not_before.map(|t| t.0),
                        &result,
                        &change.error,
                        &change.finished_at.map(|t| t.0),
                        &now.0,
                        &id.0,
                        &expect_state.as_str(),
                        &i64::from(expect_attempt),
                    ],
                )
                .await?;
            if n_changed == 0 {
                return Ok(Applied::Conflict(format!(
                    "task {id} is no longer {expect_state} at attempt {expect_attempt}"
                )));
            }
            events_of(ctx, run_id, now, events).await?;
        }
        Write::Agent { record, events } => {
            // A rewritten agent moves to the end of the order, as SQLite's `INSERT OR REPLACE`
            // gives it a new rowid.
            ctx.execute(
                "INSERT INTO agents (run_id, name, state, record, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (run_id, name) DO UPDATE SET state = excluded.state, record = excluded.record, \
                 updated_at = excluded.updated_at, ord = excluded.ord",
                &[&run_id, &record.name, &record.state.as_str(), &to_json(&record), &now.0],
            )
            .await?;
            events_of(ctx, run_id, now, events).await?;
        }
        Write::Run { change, events } => {
            let ended = change.state.is_finished();
            let n_changed = ctx
                .execute(
                    "UPDATE runs SET state = $1, phase = $2, n_tasks = $3, n_finished = $4, ended_at = $5, error = $6, \
                     owner = CASE WHEN $7 THEN NULL ELSE owner END, \
                     owner_until = CASE WHEN $7 THEN NULL ELSE owner_until END WHERE id = $8",
                    &[
                        &change.state.as_str(),
                        &i64::from(change.phase),
                        &(change.n_tasks as i64),
                        &(change.n_finished as i64),
                        &change.ended_at.map(|t| t.0),
                        &change.error,
                        &ended,
                        &run_id,
                    ],
                )
                .await?;
            if n_changed == 0 {
                return Err(Error::NotFound(format!("no run `{run_id}` in the store")));
            }
            events_of(ctx, run_id, now, events).await?;
        }
        Write::Fence { owner } => {
            let row = ctx.query_opt("SELECT owner FROM runs WHERE id = $1", &[&run_id]).await?;
            let held = match row {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            };
            crate::fenced(run_id, &owner, held)?;
        }
        Write::RenewLeases { owner, until } => {
            ctx.execute(
                "UPDATE tasks SET lease_expires_at = $1 WHERE run_id = $2 AND state = 'running' AND lease_owner = $3",
                &[&until.0, &run_id, &owner],
            )
            .await?;
        }
        Write::RunOwner { owner, pid, until, expect_owner } => {
            let n_changed = ctx
                .execute(
                    "UPDATE runs SET owner = $1, owner_pid = $2, owner_until = $3 WHERE id = $4 \
                     AND (owner IS NULL OR owner = $5 OR owner = $1 OR owner_until < $6)",
                    &[&owner, &pid.map(i64::from), &until.map(|t| t.0), &run_id, &expect_owner, &now.0],
                )
                .await?;
            if n_changed == 0 {
                return Ok(Applied::Conflict(format!("run {run_id} is held by another node")));
            }
        }
        Write::RunInterrupted { expect_owner } => {
            let n_changed = ctx
                .execute(
                    "UPDATE runs SET state = 'interrupted', owner = NULL, owner_pid = NULL, owner_until = NULL \
                     WHERE id = $1 AND state = 'running' AND owner = $2",
                    &[&run_id, &expect_owner],
                )
                .await?;
            if n_changed == 0 {
                return Ok(Applied::Conflict(format!("run {run_id} is not running under {expect_owner}")));
            }
            ctx.event(run_id, now, EventKind::RunInterrupted { owner: expect_owner }).await?;
        }
        Write::Event(event) => {
            ctx.event(run_id, now, event).await?;
        }
        Write::Schedule { record, events } => {
            ctx.execute(
                "INSERT INTO schedules (run_id, name, cursor, record) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (run_id, name) DO UPDATE SET cursor = excluded.cursor, record = excluded.record, \
                 ord = excluded.ord",
                &[&run_id, &record.name, &record.cursor.0, &to_json(&record)],
            )
            .await?;
            events_of(ctx, run_id, now, events).await?;
        }
        Write::Usage { period_start, scope, spent, events } => {
            // Saturating, as on SQLite: PostgreSQL would refuse a sum past either type's range.
            // Both sides are at least 0, so `MAX - added` cannot overflow.
            let tokens = i64::try_from(spent.tokens).unwrap_or(i64::MAX);
            let cost_usd = if spent.cost_usd.is_finite() { spent.cost_usd.max(0.0) } else { 0.0 };
            ctx.execute(
                "INSERT INTO usage (run_id, period_start, scope_kind, scope_name, tokens, cost_usd) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, period_start, scope_kind, scope_name) \
                 DO UPDATE SET \
                 tokens = CASE WHEN usage.tokens > 9223372036854775807 - excluded.tokens \
                     THEN 9223372036854775807 ELSE usage.tokens + excluded.tokens END, \
                 cost_usd = CASE WHEN usage.cost_usd > '1.7976931348623157e308'::float8 - excluded.cost_usd \
                     THEN '1.7976931348623157e308'::float8 ELSE usage.cost_usd + excluded.cost_usd END",
                &[&run_id, &period_start.0, &scope.kind(), &scope.name(), &tokens, &cost_usd],
            )
            .await?;
            events_of(ctx, run_id, now, events).await?;
        }
        Write::BudgetLimit { period_start, scope, limit, events } => {
            let tokens = limit.daily_tokens.map(|tokens| i64::try_from(tokens).unwrap_or(i64::MAX));
            ctx.execute(
                "INSERT INTO usage (run_id, period_start, scope_kind, scope_name, has_limit, limit_tokens, limit_cost_usd) \
                 VALUES ($1, $2, $3, $4, TRUE, $5, $6) ON CONFLICT (run_id, period_start, scope_kind, scope_name) \
                 DO UPDATE SET has_limit = TRUE, limit_tokens = excluded.limit_tokens, \
                 limit_cost_usd = excluded.limit_cost_usd",
                &[&run_id, &period_start.0, &scope.kind(), &scope.name(), &tokens, &limit.cost_usd],
            )
            .await?;
            events_of(ctx, run_id, now, events).await?;
        }
    }
    Ok(Applied::Done)
}

pub(super) async fn insert_tasks(
    ctx: &mut WriteCtx<'_>,
    run_id: &str,
    tasks: Vec<NewTask>,
    now: Timestamp,
) -> Result<Vec<TaskRecord>> {
    let mut created: Vec<TaskRecord> = Vec::with_capacity(tasks.len());
    let mut by_key: HashMap<String, TaskId> = HashMap::new();
    for task in &tasks {
        let inserted = ctx
            .query_one(
                "INSERT INTO tasks (run_id, key, workstream, title, description, input, requires, agent, depends_on, \
                 priority, max_attempts, timeout_ms, resources, state, attempt, created_at, updated_at, \
                 estimated_tokens, parent) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '[]', $9, $10, $11, $12, 'pending', 0, $13, $13, $14, $15) \
                 RETURNING id",
                &[
                    &run_id,
                    &task.key,
                    &task.workstream,
                    &task.title,
                    &task.description,
                    &to_json(&task.input),
                    &to_json(&task.requires),
                    &task.agent,
                    &task.priority.rank(),
                    &i64::from(task.max_attempts),
                    &task.timeout_ms.map(|ms| ms as i64),
                    &to_json(&task.resources),
                    &now.0,
                    &task.estimated_tokens.map(|tokens| i64::try_from(tokens).unwrap_or(i64::MAX)),
                    &task.parent.map(|parent| parent.0),
                ],
            )
            .await;
        let row = match inserted {
            Err(error) if error.kind() == crate::ErrorKind::Conflict => {
                return Err(Error::Conflict(format!(
                    "a task with key `{}` already exists in run {run_id}",
                    task.key.as_deref().unwrap_or_default()
                )));
            }
            other => other?,
        };
        let id = TaskId(row.try_get(0)?);
        if let Some(key) = &task.key {
            by_key.insert(key.clone(), id);
        }
        created.push(crate::created_task(task, id, run_id, now));
    }
    // Resolved once every task of the batch has its id, so that a task may depend on a later
    // one of its batch by key.
    let mut resolved: Vec<Vec<TaskId>> = Vec::with_capacity(tasks.len());
    for (task, record) in tasks.iter().zip(&created) {
        let mut ids = Vec::with_capacity(task.depends_on.len());
        for dep in &task.depends_on {
            let id = match dep {
                TaskRef::Id(id) => ctx
                    .query_opt("SELECT id FROM tasks WHERE id = $1 AND run_id = $2", &[&id.0, &run_id])
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?
                    .map(TaskId),
                TaskRef::Key(key) => match by_key.get(key) {
                    Some(id) => Some(*id),
                    None => ctx
                        .query_opt("SELECT id FROM tasks WHERE run_id = $1 AND key = $2", &[&run_id, key])
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?
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
        ctx.execute("UPDATE tasks SET depends_on = $1 WHERE id = $2", &[&to_json(&raw), &record.id.0]).await?;
        record.depends_on = ids;
    }
    for record in &created {
        let event = EventKind::TaskCreated {
            task: record.id,
            key: record.key.clone(),
            title: record.title.clone(),
            workstream: record.workstream.clone(),
        };
        ctx.event(run_id, now, event).await?;
    }
    Ok(created)
}

async fn fire_schedule(
    ctx: &mut WriteCtx<'_>,
    run_id: &str,
    firing: Firing,
    now: Timestamp,
) -> Result<Option<TaskRecord>> {
    let stored = ctx
        .query_opt("SELECT record FROM schedules WHERE run_id = $1 AND name = $2", &[&run_id, &firing.schedule])
        .await?;
    let Some(stored) = stored else {
        return Err(Error::NotFound(format!("no schedule `{}` in run {run_id}", firing.schedule)));
    };
    let mut record: ScheduleRecord = from_json(stored.try_get::<_, &str>(0)?, "schedule")?;
    if record.cursor != firing.expect_cursor {
        return Ok(None);
    }
    let task = insert_tasks(ctx, run_id, vec![firing.task], now).await?.remove(0);
    record.cursor = firing.due;
    record.last_fired_due = Some(firing.due);
    record.last_fired_at = Some(now);
    record.last_task = Some(task.id);
    record.updated_at = now;
    ctx.execute(
        "UPDATE schedules SET cursor = $1, record = $2 WHERE run_id = $3 AND name = $4",
        &[&record.cursor.0, &to_json(&record), &run_id, &record.name],
    )
    .await?;
    let fired = EventKind::ScheduleFired {
        schedule: record.name.clone(),
        due: firing.due,
        task: task.id,
        n_due: firing.n_due,
        late: firing.late,
    };
    ctx.event(run_id, now, fired).await?;
    Ok(Some(task))
}

async fn take_processes(ctx: &mut WriteCtx<'_>, run_id: &str) -> Result<Vec<ProcessRecord>> {
    let mut records = Vec::new();
    let rows = ctx
        .query(
            "SELECT task_id, attempt, pgid, host FROM processes WHERE run_id = $1 ORDER BY task_id, attempt",
            &[&run_id],
        )
        .await?;
    for row in rows {
        records.push(ProcessRecord {
            owner: ProcessOwner::Attempt { task: TaskId(row.try_get(0)?), attempt: small(row.try_get(1)?) },
            pgid: i32::try_from(row.try_get::<_, i64>(2)?).unwrap_or_default(),
            host: row.try_get(3)?,
        });
    }
    let rows = ctx
        .query(
            "SELECT agent, generation, pgid, host FROM agent_processes WHERE run_id = $1 ORDER BY agent, generation",
            &[&run_id],
        )
        .await?;
    for row in rows {
        records.push(ProcessRecord {
            owner: ProcessOwner::Agent { agent: row.try_get(0)?, generation: row.try_get::<_, i64>(1)?.max(0) as u64 },
            pgid: i32::try_from(row.try_get::<_, i64>(2)?).unwrap_or_default(),
            host: row.try_get(3)?,
        });
    }
    ctx.execute("DELETE FROM processes WHERE run_id = $1", &[&run_id]).await?;
    ctx.execute("DELETE FROM agent_processes WHERE run_id = $1", &[&run_id]).await?;
    Ok(records)
}

/// The refusal of a message whose recipients' inboxes cannot take it, if any. Every inbox is
/// checked before anything is written.
fn full_inbox(inbox: &InboxCounts, run_id: &str, recipients: &[String]) -> Option<Error> {
    for (idx, recipient) in recipients.iter().enumerate() {
        // A recipient named twice gets two deliveries.
        let earlier = recipients[..idx].iter().filter(|other| *other == recipient).count() as u64;
        if inbox.get(run_id, recipient) + earlier >= INBOX_LIMIT {
            return Some(Error::Full(format!(
                "the inbox of {recipient} is full ({INBOX_LIMIT} messages not yet acknowledged); try again later"
            )));
        }
    }
    None
}

async fn insert_message(
    ctx: &mut WriteCtx<'_>,
    run_id: &str,
    message_id: String,
    message: NewMessage,
    recipients: Vec<String>,
    now: Timestamp,
) -> Result<Vec<i64>> {
    let topic = match &message.to {
        Recipient::Topic(topic) => Some(topic.clone()),
        _ => None,
    };
    let data = to_json(&message.data);
    let task = message.task.map(|task| task.0);
    let mut ids = Vec::with_capacity(recipients.len());
    for recipient in &recipients {
        let id: i64 = ctx
            .query_one(
                "INSERT INTO deliveries (run_id, message_id, sender, recipient, topic, body, data, task_id, \
                 correlation_id, state, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10) RETURNING id",
                &[
                    &run_id,
                    &message_id,
                    &message.from,
                    recipient,
                    &topic,
                    &message.body,
                    &data,
                    &task,
                    &message.correlation_id,
                    &now.0,
                ],
            )
            .await?
            .try_get(0)?;
        ids.push(id);
    }
    for recipient in &recipients {
        ctx.inbox.add(run_id, recipient, 1);
    }
    let sent = EventKind::MessageSent { message: message_id, from: message.from, to: recipients, body: message.body };
    ctx.event(run_id, now, sent).await?;
    Ok(ids)
}

async fn settle_deliveries(
    ctx: &mut WriteCtx<'_>,
    run_id: &str,
    acked: Vec<i64>,
    unacked: Vec<(Delivery, DeliveryOutcome)>,
    now: Timestamp,
) -> Result<()> {
    if !acked.is_empty() {
        let rows = ctx
            .query(
                "UPDATE deliveries SET state = 'acked', attempts = attempts + 1, acked_at = $2 \
                 WHERE id = ANY($1) AND state = 'pending' RETURNING id, run_id, recipient",
                &[&acked, &now.0],
            )
            .await?;
        let mut settled = HashSet::with_capacity(rows.len());
        for row in rows {
            let (id, run, recipient): (i64, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            ctx.inbox.add(&run, &recipient, -1);
            settled.insert(id);
        }
        // Those no longer pending (settled twice) are rewritten as before, counted once.
        for id in acked.iter().filter(|id| !settled.contains(id)) {
            settle_final(ctx, *id, "acked", None, now).await?;
        }
    }
    for (delivery, outcome) in unacked {
        match outcome {
            DeliveryOutcome::Acked => settle_final(ctx, delivery.id, "acked", None, now).await?,
            DeliveryOutcome::Retry { at, error } => {
                ctx.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = $2, error = $3 WHERE id = $1",
                    &[&delivery.id, &at.0, &error],
                )
                .await?;
            }
            DeliveryOutcome::Dead { error } => {
                settle_final(ctx, delivery.id, "dead", Some(&error), now).await?;
                let event = EventKind::MessageDeadLettered {
                    message: delivery.message_id.clone(),
                    to: delivery.to.clone(),
                    attempts: delivery.attempts + 1,
                    error,
                };
                ctx.event(run_id, now, event).await?;
            }
        }
    }
    Ok(())
}

/// Acknowledges or dead-letters a delivery. Only a pending delivery leaves its recipient's
/// inbox; settling one that was settled already rewrites it without counting it twice.
async fn settle_final(ctx: &mut WriteCtx<'_>, id: i64, state: &str, error: Option<&str>, now: Timestamp) -> Result<()> {
    let acked_at = (state == "acked").then_some(now.0);
    let left_inbox = ctx
        .query_opt(
            "UPDATE deliveries SET state = $2, attempts = attempts + 1, error = coalesce($3, error), \
             acked_at = coalesce($4, acked_at) WHERE id = $1 AND state = 'pending' RETURNING run_id, recipient",
            &[&id, &state, &error, &acked_at],
        )
        .await?;
    match left_inbox {
        Some(row) => {
            let (run_id, recipient): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            ctx.inbox.add(&run_id, &recipient, -1);
        }
        None => {
            ctx.execute(
                "UPDATE deliveries SET state = $2, attempts = attempts + 1, error = coalesce($3, error), \
                 acked_at = coalesce($4, acked_at) WHERE id = $1",
                &[&id, &state, &error, &acked_at],
            )
            .await?;
        }
    }
    Ok(())
}
