//! SQLite's errors as the store's: each kind of failure mapped to an [`ErrorKind`].

use crate::{Error, ErrorKind};

/// The kind of a SQLite error: busy, locked, IO and the like are `Unavailable` (nothing was
/// stored; trying again may work), a full disk is `Full`, a damaged file or a value that does not
/// read back is `Corrupt`, a constraint violated is a `Conflict`. Anything else is a query this
/// baton got wrong: `Corrupt` too (a server error), with the SQLite error as its source.
impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Error {
        use rusqlite::ErrorCode as Code;
        let kind = match &error {
            rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
                Code::DatabaseBusy
                | Code::DatabaseLocked
                | Code::SystemIoFailure
                | Code::CannotOpen
                | Code::PermissionDenied
                | Code::ReadOnly
                | Code::OutOfMemory
                | Code::OperationInterrupted
                | Code::OperationAborted
                | Code::FileLockingProtocolFailed
                | Code::NoLargeFileSupport => ErrorKind::Unavailable,
                Code::DiskFull => ErrorKind::Full,
                Code::ConstraintViolation => ErrorKind::Conflict,
                _ => ErrorKind::Corrupt,
            },
            _ => ErrorKind::Corrupt,
        };
        let message = match kind {
            ErrorKind::Full => format!("the disk is full: {error}; free some space"),
            ErrorKind::Corrupt => format!("store error: {error}"),
            _ => error.to_string(),
        };
        match kind {
            ErrorKind::Unavailable => Error::Unavailable { message, source: Some(Box::new(error)) },
            ErrorKind::Corrupt => Error::Corrupt { message, source: Some(Box::new(error)) },
            kind => Error::new(kind, message),
        }
    }
}
