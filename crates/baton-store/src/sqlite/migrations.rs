//! The schema, as the list of migrations applied in order, and the race-safe step that brings
//! a database up to date.

use rusqlite::{Connection, TransactionBehavior};

use crate::{Error, Result};

pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    phase INTEGER NOT NULL DEFAULT 0,
    n_phases INTEGER NOT NULL,
    n_tasks INTEGER NOT NULL DEFAULT 0,
    n_finished INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    error TEXT,
    owner TEXT,
    owner_pid INTEGER,
    owner_until INTEGER
);
CREATE INDEX runs_by_name ON runs (name, started_at);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    key TEXT,
    workstream TEXT,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    input TEXT NOT NULL,
    requires TEXT NOT NULL,
    agent TEXT,
    depends_on TEXT NOT NULL,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_ms INTEGER,
    resources TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    assigned_agent TEXT,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    not_before INTEGER,
    result TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE UNIQUE INDEX tasks_by_key ON tasks (run_id, key) WHERE key IS NOT NULL;
CREATE INDEX tasks_by_state ON tasks (run_id, state);

CREATE TABLE agents (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    type TEXT NOT NULL,
    task_id INTEGER,
    agent TEXT,
    data TEXT NOT NULL
);
CREATE INDEX events_by_task ON events (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE control (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    command TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    taken_at INTEGER
);
CREATE INDEX control_pending ON control (run_id) WHERE taken_at IS NULL;
"#,
    r#"
CREATE TABLE processes (
    run_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    host TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id, attempt)
);
"#,
    r#"
CREATE TABLE schedules (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
"#,
    r#"
CREATE TABLE usage (
    run_id TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_name TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    has_limit INTEGER NOT NULL DEFAULT 0,
    limit_tokens INTEGER,
    limit_cost_usd REAL,
    PRIMARY KEY (run_id, period_start, scope_kind, scope_name)
);
"#,
    r#"
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    topic TEXT,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    task_id INTEGER,
    correlation_id TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX deliveries_due ON deliveries (run_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_by_recipient ON deliveries (run_id, recipient, state);
"#,
    // Event filters by type and agent (`EventQuery::kinds`, `EventQuery::agent`). The columns
    // have been written with every event since the first schema, so there is nothing to
    // backfill; these indexes let a filtered read seek instead of scanning, in `seq` order.
    r#"
CREATE INDEX events_by_type ON events (type, seq);
CREATE INDEX events_by_agent ON events (agent, seq) WHERE agent IS NOT NULL;
"#,
    // The control plane's audit log. No run_id: a server outlives its runs. AUTOINCREMENT so
    // that an id is never reused and `since_id` tailing misses nothing.
    r#"
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT
);
CREATE INDEX audit_by_actor ON audit (actor, id);
"#,
    // When a delivery was acknowledged: delivery latency (sent, `created_at`, to acknowledged)
    // is read from the table; older deliveries have none. The index by recipient and state
    // served only the inbox-full count, which the writer now keeps in memory: dropping it saves
    // an index insert per message and an index update per acknowledgement.
    r#"
ALTER TABLE deliveries ADD COLUMN acked_at INTEGER;
DROP INDEX deliveries_by_recipient;
"#,
    // A task's own `estimated_tokens` (budget pre-flight), whichever way it was created: the
    // configuration, the API, `baton task add`, a worker's `task/create`, a schedule.
    r#"
ALTER TABLE tasks ADD COLUMN estimated_tokens INTEGER;
"#,
    // Commands for a running run no longer wait in the store: they reach the engine of the
    // process executing the run through its API (a Unix socket beside the store, or
    // `baton serve`'s address), so the engine is the only writer of its run. Commands a
    // baton from before left unread are dropped with the table: nobody would take them.
    r#"
DROP INDEX control_pending;
DROP TABLE control;
"#,
    // Long-running agents' process groups (workers, terminal programs), by agent and start:
    // they belong to no task. (Before, they were recorded in `processes` under task 0; such
    // rows are still taken, and killed, like any other.)
    r#"
CREATE TABLE agent_processes (
    run_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    generation INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    host TEXT NOT NULL,
    PRIMARY KEY (run_id, agent, generation)
);
"#,
    // Tasks per run, workstream and state, kept by triggers in the transaction of every task
    // insert, state change and delete: a restart reads the counts of a run's finished tasks
    // from a few rows instead of counting (or loading) millions. `''` stands for no workstream
    // (NULLs are never equal, so they cannot be part of a key).
    r#"
CREATE TABLE task_counts (
    run_id TEXT NOT NULL,
    workstream TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (run_id, workstream, state)
) WITHOUT ROWID;
INSERT INTO task_counts (run_id, workstream, state, n)
    SELECT run_id, coalesce(workstream, ''), state, count(*) FROM tasks GROUP BY 1, 2, 3;
CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_counts (run_id, workstream, state, n)
        VALUES (new.run_id, coalesce(new.workstream, ''), new.state, 1)
        ON CONFLICT (run_id, workstream, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER task_counts_update AFTER UPDATE OF state ON tasks WHEN old.state IS NOT new.state BEGIN
    UPDATE task_counts SET n = n - 1
        WHERE run_id = old.run_id AND workstream = coalesce(old.workstream, '') AND state = old.state;
    INSERT INTO task_counts (run_id, workstream, state, n)
        VALUES (new.run_id, coalesce(new.workstream, ''), new.state, 1)
        ON CONFLICT (run_id, workstream, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET n = n - 1
        WHERE run_id = old.run_id AND workstream = coalesce(old.workstream, '') AND state = old.state;
END;
"#,
    // The transcripts of LLM agents' attempts, one row per entry, in order.
    r#"
CREATE TABLE transcripts (
    run_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (task_id, attempt, seq)
) WITHOUT ROWID;
"#,
    // The task whose attempt created a task (an agent's sub-task): an LLM agent's
    // `baton/get_task` reads the tasks it created. Tasks from before have none.
    r#"
ALTER TABLE tasks ADD COLUMN parent INTEGER;
"#,
    // A2A push notification configs, so that a restarted server still delivers to them: the
    // config (webhook, token, credentials) as JSON, keyed by task and id.
    r#"
CREATE TABLE push_configs (
    task_id INTEGER NOT NULL,
    id TEXT NOT NULL,
    owner TEXT NOT NULL,
    config TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (task_id, id)
) WITHOUT ROWID;
"#,
];

/// Brings the schema up to date. Race-safe: the version is read inside the write transaction
/// that applies the migrations, so of two processes opening a new store at once, the second
/// waits for the first (the busy timeout) and then finds nothing left to do.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::unavailable(format!(
            "the store has schema version {version}, newer than this baton knows ({known}); upgrade baton"
        )));
    }
    for (idx, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", idx as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}
