//! Opening a SQLite database: the store's options (from its URL), and how each connection
//! is configured (busy timeout, WAL or an in-memory journal, `synchronous`).

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::{Error, Result};

/// How hard SQLite works to keep a commit on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync on every commit: a machine crash loses nothing acknowledged. The default.
    #[default]
    Full,
    /// fsync at checkpoints only: a machine crash may lose the last commits (a process crash
    /// loses nothing).
    Normal,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub synchronous: Synchronous,
}

impl Options {
    /// Parses `sqlite://PATH[?synchronous=full|normal]` into a path (relative paths resolved
    /// against `base`) and options.
    pub fn from_url(url: &str, base: &Path) -> Result<(PathBuf, Options)> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| Error::Refused(format!("`{url}` is not a sqlite url; write sqlite://PATH")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(Error::Refused(format!("`{url}` names no file; write sqlite://PATH")));
        }
        let mut options = Options::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("synchronous", "full")) => options.synchronous = Synchronous::Full,
                Some(("synchronous", "normal")) => options.synchronous = Synchronous::Normal,
                _ => {
                    return Err(Error::Refused(format!(
                        "unknown store option `{pair}` in `{url}`; known: synchronous=full|normal"
                    )));
                }
            }
        }
        let path = Path::new(path);
        let path = if path.is_absolute() { path.to_path_buf() } else { base.join(path) };
        Ok((path, options))
    }
}

/// `error`, said to have happened opening the store at `shown`.
pub(super) fn opening(shown: &str, mut error: Error) -> Error {
    if let Error::NotFound(message)
    | Error::Conflict(message)
    | Error::Refused(message)
    | Error::Full(message)
    | Error::Unavailable { message, .. }
    | Error::Corrupt { message, .. } = &mut error
    {
        *message = format!("cannot open the store at `{shown}`: {message}");
    }
    error
}

/// How long a connection waits for another one's lock before it gives up.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn configure(conn: &Connection, options: Options, memory: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if memory {
        // WAL needs shared memory a `memdb` database has not; its rollback journal is kept in
        // memory too (elsewhere it would be a file). Readers then wait (the busy timeout) only
        // while a commit writes.
        conn.pragma_update(None, "journal_mode", "MEMORY")?;
    } else {
        enable_wal(conn)?;
    }
    let synchronous = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Every operation runs in a savepoint, whose journal of the pages it changes is a temporary
    // file by default: creating, writing and deleting it each transaction was a fifth of the
    // writer's time. In memory it costs a copy; it is never needed after a crash.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Switches the database to WAL. On a new file that another process is creating at the same
/// time, SQLite answers "database is locked" without calling the busy handler (the switch needs
/// the file to itself), so the switch is retried within [`BUSY_TIMEOUT`].
pub(super) fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if matches!(failure.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
