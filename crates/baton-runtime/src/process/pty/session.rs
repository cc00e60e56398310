//! One start of the program: the handle the agent keeps of it (its pid, its exit, who may act
//! on the exit), what its monitor is told, and the blocking threads that read and write its
//! terminal.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use portable_pty::MasterPty;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use baton_core::config::Limits;

use super::monitor::TaskWatch;
use super::{ExitClaim, STOP_GRACE};

/// One start of the program.
pub(super) struct Session {
    pub(super) agent: String,
    /// The program's pid, which is also its session and process group id.
    pub(super) pid: i32,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) exited: CancellationToken,
    /// Fires when all the program's output has been read.
    pub(super) drained: CancellationToken,
    pub(super) exit: Mutex<Option<(bool, String)>>,
    pub(super) claim: Mutex<ExitClaim>,
    /// Set when Baton stops the program, so that its exit is not reported as a crash.
    pub(super) stopping: AtomicBool,
    /// Whether the log ends with a newline, so that Baton's notes start on their own line.
    pub(super) at_line_start: Arc<AtomicBool>,
    /// Keeps the terminal open while the session lives. A mutex only because the master is
    /// `Send` but not `Sync`; it is never locked.
    pub(super) _master: Mutex<Box<dyn MasterPty + Send>>,
}

impl Session {
    pub(super) fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// `(success, reason)` once the program has exited.
    pub(super) fn exit(&self) -> Option<(bool, String)> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn exit_reason(&self) -> String {
        self.exit().map_or_else(|| "it exited".to_string(), |(_, reason)| reason)
    }

    /// The screen so far and the output to come, with nothing lost or repeated between them.
    pub(super) async fn attach(&self) -> (Bytes, Option<broadcast::Receiver<Bytes>>) {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Attach(reply));
        answer.await.unwrap_or_default()
    }

    /// Ends the task being watched and returns its text.
    pub(super) async fn end_task(&self) -> String {
        let (reply, answer) = oneshot::channel();
        self.send(Command::EndTask(reply));
        answer.await.unwrap_or_default()
    }

    /// SIGHUP and SIGTERM, as when a terminal is closed, then SIGKILL after a grace period.
    pub(super) async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.exited.is_cancelled() {
            return;
        }
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGHUP);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.exited.cancelled()).await.is_ok() {
            return;
        }
        let _ = killpg(group, Signal::SIGKILL);
        self.exited.cancelled().await;
    }
}

/// What the session's monitor is told.
pub(super) enum Command {
    /// The program printed this (from the reader thread).
    Output(Vec<u8>),
    /// The program's output has ended: it and everything that held its terminal are gone.
    Eof,
    /// Type this into the terminal (from `baton attach`).
    Type(Vec<u8>),
    Attach(oneshot::Sender<(Bytes, Option<broadcast::Receiver<Bytes>>)>),
    /// Watch a task, then type its input.
    StartTask {
        watch: TaskWatch,
        typed: Vec<u8>,
    },
    EndTask(oneshot::Sender<String>),
}

/// Copies what is typed into the terminal, until the session is gone.
pub(super) fn write_terminal(mut writer: Box<dyn Write + Send>, to_type: std::sync::mpsc::Receiver<Vec<u8>>) {
    while let Ok(bytes) = to_type.recv() {
        if writer.write_all(&bytes).and_then(|()| writer.flush()).is_err() {
            break;
        }
    }
}

/// Copies the program's output to the log and the monitor, until the terminal closes.
pub(super) fn read_terminal(
    mut reader: Box<dyn Read + Send>,
    log_path: PathBuf,
    at_line_start: Arc<AtomicBool>,
    commands: mpsc::UnboundedSender<Command>,
) {
    let log = crate::process::log::AgentLog::of(&log_path);
    let mut buffer = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buffer[..n];
        log.write(chunk);
        at_line_start.store(chunk.ends_with(b"\n"), Ordering::Relaxed);
        if commands.send(Command::Output(chunk.to_vec())).is_err() {
            break;
        }
    }
    let _ = commands.send(Command::Eof);
}

/// Applies the agent's memory and CPU limits to the started program. Returns what could not
/// be applied.
pub(super) fn apply_limits(pid: i32, limits: &Limits) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(bytes) = limits.memory
        && let Err(error) = rlimit::prlimit(pid, rlimit::Resource::AS, Some((bytes, bytes)), None)
    {
        problems.push(format!("cannot apply the memory limit: {error}"));
    }
    if let Some(cpu) = limits.cpu {
        // The soft limit sends SIGXCPU; the hard limit one second later kills.
        let secs = cpu.as_secs().max(1);
        if let Err(error) = rlimit::prlimit(pid, rlimit::Resource::CPU, Some((secs, secs + 1)), None) {
            problems.push(format!("cannot apply the cpu limit: {error}"));
        }
    }
    problems
}
