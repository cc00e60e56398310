//! What `baton store migrate|check|copy` do, for any store URL: bring a schema up to date,
//! say what a store holds and whether its schema is current, and copy a SQLite store into an
//! empty PostgreSQL one.

use crate::postgres::copy::{self as pg_copy, Copied};
use crate::postgres::{PostgresStore, SchemaVersion};
use crate::sqlite::SqliteStore;
use crate::{Error, Result, StoreUrl};

/// What a store holds, and its schema's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCheck {
    pub schema: SchemaVersion,
    /// Rows per table; empty when the schema is not current (the tables may not be there).
    pub rows: Copied,
}

fn in_memory() -> Error {
    Error::Refused(
        "a store in memory is made anew by every process: there is nothing to migrate, check or copy".to_string(),
    )
}

/// Brings the store's schema up to date (what opening it does first) and says its version.
pub async fn migrate(url: &StoreUrl) -> Result<SchemaVersion> {
    match url {
        StoreUrl::Sqlite { path, options } => {
            drop(SqliteStore::open(path, *options)?);
            sqlite_version(path)
        }
        StoreUrl::Postgres { url } => PostgresStore::migrate(url).await,
        StoreUrl::Memory => Err(in_memory()),
    }
}

/// The store's schema version and rows per table, read without changing anything.
pub async fn check(url: &StoreUrl) -> Result<StoreCheck> {
    match url {
        StoreUrl::Sqlite { path, .. } => {
            if !path.exists() {
                return Err(Error::NotFound(format!("no store at {}", path.display())));
            }
            let schema = sqlite_version(path)?;
            let rows = if schema.version == schema.known { pg_copy::count_sqlite_rows(path)? } else { Vec::new() };
            Ok(StoreCheck { schema, rows })
        }
        StoreUrl::Postgres { url } => {
            let schema = PostgresStore::schema_version(url).await?;
            let rows = if schema.version == schema.known { pg_copy::count_rows(url).await? } else { Vec::new() };
            Ok(StoreCheck { schema, rows })
        }
        StoreUrl::Memory => Err(in_memory()),
    }
}

/// Copies every table of the store `from` into the empty store `to`: a SQLite store into a
/// PostgreSQL one.
pub async fn copy(from: &StoreUrl, to: &StoreUrl) -> Result<Copied> {
    match (from, to) {
        (StoreUrl::Sqlite { path, .. }, StoreUrl::Postgres { url }) => pg_copy::copy_from_sqlite(path, url).await,
        _ => Err(Error::Refused(format!(
            "cannot copy `{}` to `{}`: copy goes from a sqlite:// store to a postgres:// one",
            from.shown(),
            to.shown()
        ))),
    }
}

fn sqlite_version(path: &std::path::Path) -> Result<SchemaVersion> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    Ok(SchemaVersion { version, known: crate::sqlite::migrations::MIGRATIONS.len() as i64 })
}
