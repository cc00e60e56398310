//! Baton's engine and agent runtimes: the imperative shell around `baton-core`.
//!
//! The [`engine`] loop feeds commands (outcomes, agent starts, operator commands, clock ticks)
//! to the core scheduler, makes the writes it returns durable through the store, then performs
//! the effects: starting agents and handing them tasks through the [`agent::AgentRuntime`]
//! trait, behind which every kind of agent sits.
//!
//! Architecture invariant: this is the only crate that starts agents' processes (the
//! benchmarks, in `baton-bench`, start `baton` itself).

pub mod a2a;
pub mod agent;
pub mod brief;
pub mod check;
pub mod clock;
pub mod config_file;
pub mod coordinator;
pub mod engine;
pub mod llm;
pub mod mcp;
pub mod postoffice;
pub mod process;
pub mod reload;
pub mod remote;
pub mod tools;

pub use agent::{AgentRuntime, Attempt};
pub use clock::Clock;
pub use engine::{Engine, EngineHandle, EngineOptions, RunSummary};
