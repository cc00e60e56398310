//! What went wrong in an operation, by kind. Every interface answers a kind its own way (an
//! HTTP status, a JSON-RPC code, a CLI exit code) from one table of its own; the message is
//! for people and is the same everywhere.

use std::fmt;

/// What kind of failure an operation met: what a caller may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is wrong: a bad field, an unknown name in it, a limit exceeded.
    Invalid,
    /// The caller may not do this (its role, or not its own agent).
    Forbidden,
    /// What the request names is not there.
    NotFound,
    /// It contradicts the current state: a key that exists, a task that has ended.
    Conflict,
    /// No room now (an agent's inbox at its limit): try again later.
    Full,
    /// A part that is needed does not answer (the store, a stopped engine): try again later.
    Unavailable,
    /// A fault of Baton's own or of damaged data; not the caller's to fix.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Full => "full",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An operation's failure: a kind and a message that says what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, message)
    }

    pub fn full(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Full, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same failure, with `context` before the message (`tasks[2]: …`).
    pub fn context(self, context: &str) -> Error {
        Error { kind: self.kind, message: format!("{context}{}", self.message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A store error's kind, as an operation's.
pub fn store_kind(kind: baton_store::ErrorKind) -> ErrorKind {
    use baton_store::ErrorKind as Store;
    match kind {
        Store::NotFound => ErrorKind::NotFound,
        Store::Conflict => ErrorKind::Conflict,
        Store::Refused => ErrorKind::Invalid,
        Store::Full => ErrorKind::Full,
        Store::Unavailable => ErrorKind::Unavailable,
        Store::Corrupt => ErrorKind::Internal,
    }
}

impl From<baton_store::Error> for Error {
    fn from(error: baton_store::Error) -> Error {
        Error::new(store_kind(error.kind()), error.to_string())
    }
}

impl From<baton_runtime::engine::Error> for Error {
    fn from(error: baton_runtime::engine::Error) -> Error {
        use baton_core::sched::Error as Refused;
        use baton_runtime::engine::Error as Engine;
        match error {
            Engine::Refused(refused) => {
                let message = refused.to_string();
                let kind = match refused {
                    Refused::UnknownTask(_) | Refused::UnknownAgent(_) | Refused::UnknownSchedule(_) => {
                        ErrorKind::NotFound
                    }
                    Refused::WrongState { .. }
                    | Refused::Stale { .. }
                    | Refused::AgentExists(_)
                    | Refused::WorkstreamExists(_) => ErrorKind::Conflict,
                    _ => ErrorKind::Invalid,
                };
                Error::new(kind, message)
            }
            Engine::Stopped => Error::unavailable(error.to_string()),
            Engine::Invalid(message) => Error::invalid(message),
            Engine::AlreadyPlanned(message) => Error::new(ErrorKind::Conflict, message),
            Engine::Store(error) => error.into(),
            other => Error::new(ErrorKind::Internal, other.to_string()),
        }
    }
}

impl From<baton_core::task::Error> for Error {
    fn from(error: baton_core::task::Error) -> Error {
        Error::invalid(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_kind_and_message() {
        use baton_store::ErrorKind as Store;
        let cases = [
            (Store::NotFound, ErrorKind::NotFound),
            (Store::Conflict, ErrorKind::Conflict),
            (Store::Refused, ErrorKind::Invalid),
            (Store::Full, ErrorKind::Full),
            (Store::Unavailable, ErrorKind::Unavailable),
            (Store::Corrupt, ErrorKind::Internal),
        ];
        for (store, kind) in cases {
            let error = Error::from(baton_store::Error::new(store, "what happened"));
            assert_eq!((error.kind(), error.message()), (kind, "what happened"));
        }
        let held = baton_store::Error::RunHeld {
            plan: "p".into(),
            run: "r".into(),
            owner: "o".into(),
            pid: 1,
            until: baton_core::Timestamp(0),
        };
        assert_eq!(Error::from(held).kind(), ErrorKind::Conflict);
    }
}
