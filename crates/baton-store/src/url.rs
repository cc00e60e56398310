//! Store URLs: which backend a `store.url` names, and opening it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::postgres::{PostgresStore, redact};
use crate::sqlite::{Options, SqliteStore};
use crate::{Error, Result, Store};

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    /// `sqlite://PATH[?synchronous=full|normal]`: a SQLite file (a relative path is resolved
    /// against the directory given to [`StoreUrl::parse`]).
    Sqlite { path: PathBuf, options: Options },
    /// `sqlite::memory:` or `memory://`: the SQLite store in this process's memory, on no file
    /// ([`SqliteStore::open_memory`]); gone when the process ends, and no other process sees it.
    Memory,
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?PARAMS]` (or `postgresql://`): a
    /// PostgreSQL database ([`PostgresStore`]); the parameters are the driver's
    /// (`sslmode`, `options`, `connect_timeout`...).
    Postgres { url: String },
}

impl StoreUrl {
    /// Parses a store URL; relative SQLite paths are resolved against `base` (the directory of
    /// the configuration file).
    pub fn parse(url: &str, base: &Path) -> Result<StoreUrl> {
        let url = url.trim();
        if url == "sqlite::memory:" || url == "memory://" || url == "memory:" {
            return Ok(StoreUrl::Memory);
        }
        if url.starts_with("sqlite:") {
            let (path, options) = Options::from_url(url, base)?;
            return Ok(StoreUrl::Sqlite { path, options });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Parsed now, so that a mistake is told before anything starts.
            crate::postgres::config(url)?;
            return Ok(StoreUrl::Postgres { url: url.to_string() });
        }
        let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
        Err(Error::Refused(format!(
            "unknown store `{scheme}` in `{}`; write sqlite://PATH, postgres://USER@HOST/DATABASE, or sqlite::memory: \
             for a store in memory",
            redact(url)
        )))
    }

    /// The database file, for stores that have one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StoreUrl::Sqlite { path, .. } => Some(path),
            StoreUrl::Memory | StoreUrl::Postgres { .. } => None,
        }
    }

    /// The URL as it may be shown: a PostgreSQL URL without its password.
    pub fn shown(&self) -> String {
        match self {
            StoreUrl::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            StoreUrl::Memory => "sqlite::memory:".to_string(),
            StoreUrl::Postgres { url } => redact(url),
        }
    }

    /// Opens the store the URL names (creating it if needed, and bringing its schema up to
    /// date). A PostgreSQL store's writer and connections are tasks on the current Tokio
    /// runtime.
    pub async fn open(&self) -> Result<Arc<dyn Store>> {
        Ok(match self {
            StoreUrl::Sqlite { path, options } => Arc::new(SqliteStore::open(path, *options)?),
            StoreUrl::Memory => Arc::new(SqliteStore::open_memory()?),
            StoreUrl::Postgres { url } => Arc::new(PostgresStore::open(url).await?),
        })
    }
}

/// Opens the store `url` names, choosing the backend from its scheme ([`StoreUrl`]); relative
/// paths are resolved against `base`.
pub async fn open(url: &str, base: &Path) -> Result<Arc<dyn Store>> {
    StoreUrl::parse(url, base)?.open().await
}
