//! Copying a SQLite store into an empty PostgreSQL one (`baton store copy`): every table's
//! rows as they are (the schemas are the same), ids and event numbers kept, in one
//! transaction under the write lock. The task counts are not copied: the trigger counts the
//! tasks as they arrive.

use std::path::Path;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{PostgresStore, connect, opening};
use crate::sqlite::{Options, SqliteStore};
use crate::{Error, Result};

/// How a column is typed on PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Float,
    Text,
    Bool,
}

use Kind::{Bool, Float, Int, Text};

/// The tables copied, in order, with their columns and the order rows are read in (which
/// gives `ord` its order where there is one).
/// A table: its name, its columns, and the order its rows are read in.
type Table = (&'static str, &'static [(&'static str, Kind)], &'static str);

const TABLES: &[Table] = &[
    (
        "runs",
        &[
            ("id", Text),
            ("name", Text),
            ("state", Text),
            ("phase", Int),
            ("n_phases", Int),
            ("n_tasks", Int),
            ("n_finished", Int),
            ("started_at", Int),
            ("ended_at", Int),
            ("error", Text),
            ("owner", Text),
            ("owner_pid", Int),
            ("owner_until", Int),
        ],
        "rowid",
    ),
    (
        "tasks",
        &[
            ("id", Int),
            ("run_id", Text),
            ("key", Text),
            ("workstream", Text),
            ("title", Text),
            ("description", Text),
            ("input", Text),
            ("requires", Text),
            ("agent", Text),
            ("depends_on", Text),
            ("priority", Int),
            ("max_attempts", Int),
            ("timeout_ms", Int),
            ("resources", Text),
            ("state", Text),
            ("attempt", Int),
            ("assigned_agent", Text),
            ("lease_owner", Text),
            ("lease_expires_at", Int),
            ("not_before", Int),
            ("result", Text),
            ("error", Text),
            ("created_at", Int),
            ("updated_at", Int),
            ("finished_at", Int),
            ("estimated_tokens", Int),
            ("parent", Int),
        ],
        "id",
    ),
    ("agents", &[("run_id", Text), ("name", Text), ("state", Text), ("record", Text), ("updated_at", Int)], "rowid"),
    (
        "events",
        &[
            ("seq", Int),
            ("run_id", Text),
            ("at", Int),
            ("type", Text),
            ("task_id", Int),
            ("agent", Text),
            ("data", Text),
        ],
        "seq",
    ),
    ("processes", &[("run_id", Text), ("task_id", Int), ("attempt", Int), ("pgid", Int), ("host", Text)], "rowid"),
    (
        "agent_processes",
        &[("run_id", Text), ("agent", Text), ("generation", Int), ("pgid", Int), ("host", Text)],
        "rowid",
    ),
    ("schedules", &[("run_id", Text), ("name", Text), ("cursor", Int), ("record", Text)], "rowid"),
    (
        "usage",
        &[
            ("run_id", Text),
            ("period_start", Int),
            ("scope_kind", Text),
            ("scope_name", Text),
            ("tokens", Int),
            ("cost_usd", Float),
            ("has_limit", Bool),
            ("limit_tokens", Int),
            ("limit_cost_usd", Float),
        ],
        "rowid",
    ),
    (
        "deliveries",
        &[
            ("id", Int),
            ("run_id", Text),
            ("message_id", Text),
            ("sender", Text),
            ("recipient", Text),
            ("topic", Text),
            ("body", Text),
            ("data", Text),
            ("task_id", Int),
            ("correlation_id", Text),
            ("state", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("created_at", Int),
            ("error", Text),
            ("acked_at", Int),
        ],
        "id",
    ),
    (
        "audit",
        &[
            ("id", Int),
            ("at", Int),
            ("actor", Text),
            ("role", Text),
            ("action", Text),
            ("target", Text),
            ("outcome", Text),
            ("status", Int),
            ("detail", Text),
        ],
        "id",
    ),
    (
        "transcripts",
        &[("run_id", Text), ("task_id", Int), ("attempt", Int), ("seq", Int), ("entry", Text)],
        "task_id, attempt, seq",
    ),
    (
        "push_configs",
        &[("task_id", Int), ("id", Text), ("owner", Text), ("config", Text), ("seq", Int)],
        "task_id, seq",
    ),
];

/// The tables whose ids PostgreSQL gives: their sequences continue after the copied ids.
const IDENTITIES: &[(&str, &str)] = &[("tasks", "id"), ("deliveries", "id"), ("audit", "id")];

/// A value read from SQLite, typed for its PostgreSQL column.
type Value = Box<dyn ToSql + Sync + Send>;

fn convert(value: rusqlite::types::Value, kind: Kind) -> Value {
    use rusqlite::types::Value as V;
    match (kind, value) {
        (_, V::Null) => match kind {
            Int => Box::new(None::<i64>),
            Float => Box::new(None::<f64>),
            Text => Box::new(None::<String>),
            Bool => Box::new(false),
        },
        (Int, V::Integer(n)) => Box::new(n),
        // What SQLite made of an overflowing sum: the nearest integer (`as` saturates).
        (Int, V::Real(real)) => Box::new(real as i64),
        (Int, V::Text(text)) => Box::new(text.trim().parse::<i64>().ok()),
        (Float, V::Integer(n)) => Box::new(n as f64),
        (Float, V::Real(real)) => Box::new(if real.is_finite() { real } else { 0.0 }),
        (Float, V::Text(text)) => Box::new(text.trim().parse::<f64>().ok()),
        (Bool, V::Integer(n)) => Box::new(n != 0),
        (Bool, _) => Box::new(false),
        (Text, V::Text(text)) => Box::new(text),
        (Text, V::Integer(n)) => Box::new(n.to_string()),
        (Text, V::Real(real)) => Box::new(real.to_string()),
        (Text, V::Blob(bytes)) => Box::new(String::from_utf8_lossy(&bytes).into_owned()),
        (_, V::Blob(_)) => match kind {
            Float => Box::new(None::<f64>),
            _ => Box::new(None::<i64>),
        },
    }
}

fn pg_type(kind: Kind) -> Type {
    match kind {
        Int => Type::INT8,
        Float => Type::FLOAT8,
        Text => Type::TEXT,
        Bool => Type::BOOL,
    }
}

/// Reads every row of a SQLite table, in `order`, each value typed for PostgreSQL.
fn read_table(
    conn: &rusqlite::Connection,
    table: &str,
    columns: &[(&str, Kind)],
    order: &str,
) -> Result<Vec<Vec<Value>>> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let sql = format!("SELECT {} FROM {table} ORDER BY {order}", names.join(", "));
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut read = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns.len());
        for (idx, (_, kind)) in columns.iter().enumerate() {
            values.push(convert(row.get::<_, rusqlite::types::Value>(idx)?, *kind));
        }
        read.push(values);
    }
    Ok(read)
}

/// How many rows of each table were copied.
pub type Copied = Vec<(String, u64)>;

/// Copies the SQLite store at `from` (brought up to date first) into the PostgreSQL store at
/// `to`, which must hold no run, event or audit entry. Everything or nothing is copied.
pub async fn copy_from_sqlite(from: &Path, to: &str) -> Result<Copied> {
    if !from.exists() {
        return Err(Error::NotFound(format!("no store at {}", from.display())));
    }
    // Opening migrates it: its tables are then the ones listed here.
    drop(SqliteStore::open(from, Options::default())?);
    // The target's schema is made (or checked) by opening it.
    drop(PostgresStore::open(to).await?);
    let path = from.to_path_buf();
    let tables = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<Vec<Value>>>> {
        let mut conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // One read transaction: a consistent picture even if a baton writes meanwhile.
        let tx = conn.transaction()?;
        TABLES.iter().map(|(table, columns, order)| read_table(&tx, table, columns, order)).collect()
    })
    .await
    .map_err(|_| Error::closed())??;

    let shown = super::redact(to);
    let mut client = connect(&super::config(to)?).await.map_err(|error| opening(&shown, error))?;
    let tx = client.transaction().await?;
    // The write lock: no baton writes to the target while it fills.
    tx.execute("UPDATE writer_state SET generation = generation + 1 WHERE id = 1", &[]).await?;
    let occupied: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM runs) OR EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM audit)",
            &[],
        )
        .await?
        .try_get(0)?;
    if occupied {
        // Rolled back here, not when dropped: a dropped transaction's rollback is sent by the
        // connection's task, which may not run again.
        tx.rollback().await?;
        return Err(Error::Conflict(format!(
            "the store at `{shown}` is not empty (it has runs, events or audit entries); copy into an empty store"
        )));
    }
    let mut copied = Vec::with_capacity(TABLES.len());
    for ((table, columns, _), rows) in TABLES.iter().zip(tables) {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let types: Vec<Type> = columns.iter().map(|(_, kind)| pg_type(*kind)).collect();
        let sink = tx.copy_in(&format!("COPY {table} ({}) FROM STDIN BINARY", names.join(", "))).await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let n_rows = rows.len() as u64;
        for row in rows {
            let refs: Vec<&(dyn ToSql + Sync)> =
                row.iter().map(|value| value.as_ref() as &(dyn ToSql + Sync)).collect();
            writer.as_mut().write(&refs).await?;
        }
        writer.finish().await?;
        copied.push((table.to_string(), n_rows));
    }
    for (table, column) in IDENTITIES {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), coalesce(max({column}), 0) + 1, false) \
                 FROM {table}"
            ),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(copied)
}

/// How many rows each table of the PostgreSQL store at `url` has (the tables a copy fills).
pub async fn count_rows(url: &str) -> Result<Copied> {
    let shown = super::redact(url);
    let client = connect(&super::config(url)?).await.map_err(|error| opening(&shown, error))?;
    let mut counts = Vec::with_capacity(TABLES.len());
    for (table, _, _) in TABLES {
        let n: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.try_get(0)?;
        counts.push((table.to_string(), n.max(0) as u64));
    }
    Ok(counts)
}

/// How many rows each table of the SQLite store at `path` has.
pub fn count_sqlite_rows(path: &Path) -> Result<Copied> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut counts = Vec::with_capacity(TABLES.len());
    for (table, _, _) in TABLES {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))?;
        counts.push((table.to_string(), n.max(0) as u64));
    }
    Ok(counts)
}
