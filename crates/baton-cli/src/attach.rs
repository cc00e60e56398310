//! `baton attach NAME`: connects the user's terminal to a terminal agent's pseudo-terminal,
//! which the running `baton run` serves on a Unix socket. What the socket sends (the screen so
//! far, then the program's output as it comes) goes to stdout; what the user types goes to the
//! socket, and so to the program. Ctrl-] detaches; the program keeps running under Baton.
//!
//! On a terminal, stdin is put in raw mode, so that every key (Ctrl-C included) reaches the
//! program; it is restored however attach ends. From a pipe, bytes are passed as they are, and
//! the end of the input detaches too.

use std::io::{IsTerminal, Read};

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::Failure;

/// Ctrl-]: the key that detaches, as in telnet.
pub const DETACH: u8 = 0x1d;

/// The terminal in raw mode while this lives; restored when it is dropped, also on an error
/// or a panic.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode, when stdin is a terminal.
    fn enable() -> Result<Option<RawMode>, Failure> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(&stdin)
            .map_err(|error| Failure::run(format!("cannot read the terminal's settings: {error}")))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|error| Failure::run(format!("cannot put the terminal in raw mode: {error}")))?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// How attaching ended.
enum End {
    Detached,
    /// Baton closed the connection: the program exited, or `baton run` stopped.
    Closed,
}

/// Reads stdin on a thread of its own: a blocking read cannot be cancelled, and the process
/// may end while it waits. `None` is the end of the input.
fn read_stdin(keys: mpsc::UnboundedSender<Option<Vec<u8>>>) {
    let mut stdin = std::io::stdin();
    let mut buffer = vec![0u8; 4096];
    loop {
        match stdin.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if keys.send(Some(buffer[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = keys.send(None);
}

pub async fn attach(stream: UnixStream, agent: &str) -> Result<u8, Failure> {
    errln!("attached to {agent}; press Ctrl-] to detach");
    let raw_mode = RawMode::enable()?;
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_stdin(keys_tx))
        .map_err(|error| Failure::run(format!("cannot start a thread: {error}")))?;
    let (mut from_baton, mut to_baton) = stream.into_split();
    let mut stdout = tokio::io::stdout();
    let mut buffer = vec![0u8; 8192];
    let end = loop {
        tokio::select! {
            read = from_baton.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break End::Closed,
                Ok(n) => {
                    if stdout.write_all(&buffer[..n]).await.is_err() || stdout.flush().await.is_err() {
                        break End::Detached;
                    }
                }
            },
            typed = keys.recv() => match typed.flatten() {
                Some(bytes) => {
                    let (before, detach) = match bytes.iter().position(|byte| *byte == DETACH) {
                        Some(idx) => (&bytes[..idx], true),
                        None => (&bytes[..], false),
                    };
                    if to_baton.write_all(before).await.is_err() {
                        break End::Closed;
                    }
                    if detach {
                        break End::Detached;
                    }
                }
                None => break End::Detached,
            },
        }
    };
    // What was typed is delivered before Baton sees the connection end.
    let _ = to_baton.shutdown().await;
    drop(raw_mode);
    match end {
        End::Detached => {
            errln!("\ndetached from {agent}; it keeps running");
            Ok(0)
        }
        End::Closed => {
            errln!("\nthe connection to {agent} closed: its program exited or `baton run` stopped");
            Ok(1)
        }
    }
}
