//! `baton bench`: the figures of DESIGN.md §8, measured on the real engine, store and API.
//!
//! `lifecycle` drives the engine in process (the task lifecycle, dispatch latency, the soak
//! and the messages benchmark, with the minimal worker they run); `http` drives `baton serve`'s
//! API with worker processes; `restart` restarts `baton serve` on a long run's store.
//! `llm` runs LLM agents against a stand-in provider in process (the overhead of a turn, many
//! agents at once). `commands` is what each mode of `baton bench` runs and prints.
//!
//! The benchmarks that start processes start the running binary (`std::env::current_exe`),
//! which must be `baton`: they run its `serve`, `bench-worker` and `bench-http-worker`
//! subcommands.
//!
//! This crate sits above the server (it serves the API in process) and below the CLI, which
//! only parses `baton bench`'s arguments, calls [`commands`] and prints through an [`Output`].

use std::fmt::Display;

/// Where a benchmark writes: its report (the CLI's standard output; for a worker process, the
/// lines its parent reads) and its progress (standard error).
pub trait Output: Send + Sync {
    fn report(&self, line: String);
    fn progress(&self, line: String);
}

/// A line of the report.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => { $out.report(format!($($arg)*)) };
}

/// A line of progress.
macro_rules! errln {
    ($out:expr, $($arg:tt)*) => { $out.progress(format!($($arg)*)) };
}

pub mod commands;
pub mod http;
pub mod lifecycle;
pub mod llm;
pub mod restart;

/// Why a benchmark did not produce its figures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It was asked for something it cannot do: bad arguments.
    #[error("{0}")]
    Usage(String),
    /// It failed while running.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Error {
        Error::Usage(message.into())
    }

    pub fn failed(message: impl Into<String>) -> Error {
        Error::Failed(message.into())
    }
}

/// Says what was being done when something failed: `context: error`.
trait Context<T> {
    fn context(self, context: impl Display) -> Result<T, Error>;
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T, Error>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, context: impl Display) -> Result<T, Error> {
        self.map_err(|error| Error::Failed(format!("{context}: {error}")))
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T, Error> {
        self.map_err(|error| Error::Failed(format!("{}: {error}", context())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Display) -> Result<T, Error> {
        self.ok_or_else(|| Error::Failed(context.to_string()))
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T, Error> {
        self.ok_or_else(|| Error::Failed(context().to_string()))
    }
}
