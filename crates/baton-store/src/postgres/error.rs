//! PostgreSQL's errors as the store's: each kind of failure mapped to an [`ErrorKind`], and
//! store URLs shown without their password.

use tokio_postgres::error::SqlState;

use crate::{Error, ErrorKind};

/// The kind of a PostgreSQL error: a lost or refused connection, a wrong password, a missing
/// database or privilege, a server shutting down, a serialization failure or a deadlock is
/// `Unavailable` (nothing was stored; trying again, or after fixing the URL or the grants, may
/// work), a full disk is `Full`, a unique key taken is a `Conflict`, a text the database
/// refuses (a NUL character, one its encoding lacks, one too long) is `Refused`. Anything else is a query this baton got
/// wrong or a value that does not read back: `Corrupt`, with the driver's error as its
/// source.
impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Error {
        let kind = match error.code() {
            None => ErrorKind::Unavailable,
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => ErrorKind::Conflict,
            Some(code) if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY => ErrorKind::Full,
            Some(code) => {
                let class = &code.code()[..2];
                // 08: connection; 40: transaction rollback (serialization, deadlock); 53:
                // insufficient resources; 55: object not in prerequisite state (lock not
                // available); 57: operator intervention (shutdown, cancel).
                // 28: a wrong user or password; 3D: no such database; 42501: no privilege
                // (the store's URL or the database's grants are to be fixed).
                if ["08", "40", "53", "55", "57", "28", "3D"].contains(&class) || code.code() == "42501" {
                    ErrorKind::Unavailable
                } else if ["22P05", "22021", "22001"].contains(&code.code()) {
                    // A value of the user's the database refuses: a NUL or a character its
                    // encoding lacks in text, a string too long. (Other data exceptions, such
                    // as a number or date out of range, are this baton's to fix: `Corrupt`.)
                    ErrorKind::Refused
                } else {
                    ErrorKind::Corrupt
                }
            }
        };
        // A value that does not read back (a type mismatch) has no code but is no connection
        // failure. The driver's kinds are private; its messages say which it is.
        let kind = if error.code().is_none() && is_conversion(&error) { ErrorKind::Corrupt } else { kind };
        let message = match error.as_db_error() {
            Some(db) => format!("postgres: {}", db.message()),
            // The driver's own text ("error connecting to server") leaves the cause (connection
            // refused, a timeout, a wrong password) to its source.
            None => match std::error::Error::source(&error) {
                Some(cause) => format!("postgres: {error}: {cause}"),
                None => format!("postgres: {error}"),
            },
        };
        match kind {
            ErrorKind::Full => Error::Full(format!("{message}; free some space")),
            ErrorKind::Unavailable => Error::Unavailable { message, source: Some(Box::new(error)) },
            ErrorKind::Corrupt => {
                Error::Corrupt { message: format!("store error: {message}"), source: Some(Box::new(error)) }
            }
            kind => Error::new(kind, message),
        }
    }
}

/// Whether the driver failed converting a value (rather than talking to the server).
fn is_conversion(error: &tokio_postgres::Error) -> bool {
    let text = error.to_string();
    ["error serializing", "error deserializing", "invalid column"].iter().any(|prefix| text.starts_with(prefix))
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(error: deadpool_postgres::PoolError) -> Error {
        match error {
            deadpool_postgres::PoolError::Backend(error) => Error::from(error),
            other => Error::Unavailable {
                message: format!("postgres: no connection to the store: {other}"),
                source: Some(Box::new(other)),
            },
        }
    }
}

/// `url` without its password (in the user part or a `password=` parameter), for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(user, _)| user);
            format!("{user}@{host}")
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> =
                query.split('&').filter(|pair| !pair.to_ascii_lowercase().starts_with("password=")).collect();
            if kept.is_empty() { path.to_string() } else { format!("{path}?{}", kept.join("&")) }
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_left_out_of_shown_urls() {
        assert_eq!(redact("postgres://baton:s3cret@db.example:5432/baton"), "postgres://baton@db.example:5432/baton");
        assert_eq!(
            redact("postgres://db/baton?user=a&password=x&sslmode=disable"),
            "postgres://db/baton?user=a&sslmode=disable"
        );
        assert_eq!(redact("postgresql://u@h/d"), "postgresql://u@h/d");
        assert_eq!(redact("postgres://u:p@h"), "postgres://u@h");
    }
}
