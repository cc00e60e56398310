//! Baton's domain core: the configuration model and its validation, the workstream graph and
//! its phases, the task state machine, routing, and the scheduler that decides what happens
//! next.
//!
//! Architecture invariant: this crate does no IO. It never reads a clock, a file, the
//! environment, a socket or a process. Time is passed in as a [`Timestamp`], randomness as a
//! number, the environment as a map. The scheduler takes a command and returns the writes to
//! make durable and the effects to perform; the runtime carries them out.

pub mod budget;
pub mod config;
pub mod coordinator;
pub mod event;
pub mod graph;
pub mod messages;
pub mod model;
pub mod resources;
pub mod sched;
pub mod schedule;
pub mod task;
pub mod time;
pub mod transcript;

pub use event::{Event, EventKind};
pub use model::{Outcome, Priority, TaskId, TaskState};
pub use time::Timestamp;
