//! Filling a store fast for benchmarks (`baton bench --restart`): a run's tasks inserted
//! straight through SQL in a few large transactions, as they would be after a long run, instead
//! of one by one through the engine. The rows are the same as the store's own (same columns,
//! same encodings; the triggers keep the counts); only the events a real run would have
//! written with them are left out, since a restart does not read them.

use std::path::Path;

use rusqlite::{Connection, params};

use baton_core::Timestamp;

use crate::Result;

/// What to put in the run.
#[derive(Debug, Clone)]
pub struct Fill {
    pub run_id: String,
    /// Succeeded tasks, spread over `workstreams` (none: no workstream).
    pub n_finished: u64,
    /// Pending tasks, each depending on one of the finished tasks (which succeeded).
    pub n_unfinished: u64,
    pub workstreams: Vec<String>,
    /// Capabilities every task requires.
    pub requires: Vec<String>,
    pub now: Timestamp,
}

/// Rows per transaction.
const CHUNK: u64 = 100_000;

/// Adds `fill`'s tasks to the run `fill.run_id` of the store at `path` (created and migrated
/// already, with the run in it), and sets the run's totals.
pub fn fill_run(path: &Path, fill: &Fill) -> Result<()> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Nothing here needs to survive a crash of the machine: the benchmark would start over.
    conn.pragma_update(None, "synchronous", "OFF")?;
    let requires = serde_json::to_string(&fill.requires).unwrap_or_else(|_| "[]".into());
    let result = serde_json::json!({"ok": true, "summary": "done"}).to_string();
    let workstream = |n: u64| -> Option<&str> {
        (!fill.workstreams.is_empty()).then(|| fill.workstreams[(n % fill.workstreams.len() as u64) as usize].as_str())
    };
    let now = fill.now.0;
    let mut first_finished: Option<i64> = None;
    let mut n = 0;
    while n < fill.n_finished {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tasks (run_id, key, workstream, title, description, input, requires, agent, depends_on, \
                 priority, max_attempts, timeout_ms, resources, state, attempt, assigned_agent, result, created_at, \
                 updated_at, finished_at) \
                 VALUES (?1, ?2, ?3, ?4, '', '{}', ?5, NULL, '[]', 1, 3, NULL, '[]', 'succeeded', 1, 'w0', ?6, ?7, ?7, ?7)",
            )?;
            let end = (n + CHUNK).min(fill.n_finished);
            for idx in n..end {
                stmt.execute(params![
                    fill.run_id,
                    format!("done-{idx}"),
                    workstream(idx),
                    format!("Finished task {idx}"),
                    requires,
                    result,
                    now,
                ])?;
                first_finished.get_or_insert(tx.last_insert_rowid());
            }
            n = end;
        }
        tx.commit()?;
    }
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO tasks (run_id, key, workstream, title, description, input, requires, agent, depends_on, \
             priority, max_attempts, timeout_ms, resources, state, attempt, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, '', '{}', ?5, NULL, ?6, 1, 3, NULL, '[]', 'pending', 0, ?7, ?7)",
        )?;
        for idx in 0..fill.n_unfinished {
            // Each depends on a finished task, spread over the whole run: the restart has to
            // find out what became of them.
            let depends_on = match first_finished {
                Some(first) if fill.n_finished > 0 => {
                    let stride = (fill.n_finished / fill.n_unfinished.max(1)).max(1);
                    format!("[{}]", first + ((idx * stride) % fill.n_finished) as i64)
                }
                _ => "[]".to_string(),
            };
            stmt.execute(params![
                fill.run_id,
                format!("open-{idx}"),
                workstream(idx),
                format!("Unfinished task {idx}"),
                requires,
                depends_on,
                now,
            ])?;
        }
    }
    tx.execute(
        "UPDATE runs SET n_tasks = n_tasks + ?2, n_finished = n_finished + ?3 WHERE id = ?1",
        params![fill.run_id, (fill.n_finished + fill.n_unfinished) as i64, fill.n_finished as i64],
    )?;
    tx.commit()?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}
