//! The monitor of a session: one task that owns what is known of the program's output — the
//! screen buffer replayed to `baton attach`, the task being watched (its done rule and
//! transcript, the echo of what was typed) and the stall and prompt detectors.

use std::time::Duration;

use bytes::Bytes;
use regex::Regex;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ansi::AnsiStripper;
use super::session::Command;
use super::{
    ACTIVITY_EVERY, MAX_TRANSCRIPT, PROMPT_LINES, PROMPT_SETTLE, PROMPT_TAIL_BYTES, SCREEN_BYTES, SEARCH_WINDOW,
};
use crate::agent::AgentEvent;

/// Owns what is known of the program's output: the screen buffer, the attached clients, the
/// task being watched, and the stall and prompt detectors. One task per session; everything
/// reaches it as a [`Command`], in order.
pub(super) struct Monitor {
    pub(super) agent: String,
    pub(super) events: mpsc::UnboundedSender<AgentEvent>,
    /// To the writer thread.
    pub(super) typed: std::sync::mpsc::Sender<Vec<u8>>,
    pub(super) prompts: Vec<Regex>,
    pub(super) stall_after: Duration,
    pub(super) screen: Vec<u8>,
    /// New output for attached clients; gone once the output has ended.
    pub(super) output: Option<broadcast::Sender<Bytes>>,
    pub(super) stripper: AnsiStripper,
    /// Text printed since something was last typed.
    pub(super) prompt_tail: String,
    pub(super) task: Option<TaskWatch>,
    pub(super) last_output: Instant,
    pub(super) stalled: bool,
    pub(super) waiting: bool,
    /// A prompt is the last thing printed: it is a question if nothing follows by then.
    pub(super) settle_at: Option<Instant>,
    pub(super) last_activity: Option<Instant>,
    pub(super) drained: CancellationToken,
}

impl Monitor {
    pub(super) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Command>) {
        loop {
            let wake = [self.stall_deadline(), self.settle_at].into_iter().flatten().min();
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = sleep_until_opt(wake) => self.on_timer(),
            }
        }
    }

    pub(super) fn stall_deadline(&self) -> Option<Instant> {
        if self.stalled || self.waiting || self.drained.is_cancelled() {
            return None;
        }
        self.task.as_ref().and_then(|task| task.started.max(self.last_output).checked_add(self.stall_after))
    }

    pub(super) fn send(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }

    pub(super) fn handle(&mut self, command: Command) {
        match command {
            Command::Output(bytes) => self.on_output(bytes),
            Command::Eof => {
                self.output = None;
                self.settle_at = None;
                self.drained.cancel();
            }
            Command::Type(bytes) => self.type_bytes(bytes),
            Command::Attach(reply) => {
                let output = self.output.as_ref().map(broadcast::Sender::subscribe);
                let _ = reply.send((Bytes::copy_from_slice(&self.screen), output));
            }
            Command::StartTask { watch, typed } => {
                self.task = Some(watch);
                self.stalled = false;
                self.type_bytes(typed);
            }
            Command::EndTask(reply) => {
                let text = self.task.take().map(TaskWatch::finish).unwrap_or_default();
                let _ = reply.send(text);
            }
        }
    }

    pub(super) fn type_bytes(&mut self, bytes: Vec<u8>) {
        // Whatever question was on the screen has been answered, or typed over.
        self.prompt_tail.clear();
        self.settle_at = None;
        let _ = self.typed.send(bytes);
    }

    pub(super) fn on_output(&mut self, bytes: Vec<u8>) {
        let now = Instant::now();
        self.last_output = now;
        self.screen.extend_from_slice(&bytes);
        if self.screen.len() > SCREEN_BYTES {
            // Cut at a line start, so that a replay does not begin inside an escape sequence
            // or a character.
            let excess = self.screen.len() - SCREEN_BYTES;
            let cut =
                self.screen[excess..].iter().position(|byte| *byte == b'\n').map_or(excess, |idx| excess + idx + 1);
            self.screen.drain(..cut);
        }
        if let Some(output) = self.output.as_ref().filter(|output| output.receiver_count() > 0) {
            let _ = output.send(Bytes::from(bytes.clone()));
        }
        let text = self.stripper.push(&bytes);
        if let Some(task) = self.task.as_mut() {
            task.push(&text);
        }
        self.prompt_tail.push_str(&text);
        keep_tail(&mut self.prompt_tail, PROMPT_TAIL_BYTES);
        let prompt = self.prompt_on_screen();
        self.settle_at = (prompt.is_some() && !self.waiting).then_some(now + PROMPT_SETTLE);
        // A question still on the screen is still unanswered, whatever else is redrawn.
        let back = self.stalled || (self.waiting && prompt.is_none());
        if back {
            self.stalled = false;
            self.waiting = false;
        }
        let due = self.last_activity.is_none_or(|at| now.duration_since(at) >= ACTIVITY_EVERY);
        if back || (!self.waiting && due) {
            self.last_activity = Some(now);
            self.send(AgentEvent::Activity { agent: self.agent.clone() });
        }
    }

    pub(super) fn on_timer(&mut self) {
        let now = Instant::now();
        if self.settle_at.is_some_and(|at| at <= now) {
            self.settle_at = None;
            if let Some(prompt) = self.prompt_on_screen() {
                self.waiting = true;
                self.send(AgentEvent::WaitingInput { agent: self.agent.clone(), prompt });
            }
        }
        if self.stall_deadline().is_some_and(|at| at <= now) {
            self.stalled = true;
            self.send(AgentEvent::Stalled { agent: self.agent.clone(), silent_for: self.stall_after });
        }
    }

    /// The line asking a question, if one of the last lines printed since anything was typed
    /// matches a prompt pattern.
    pub(super) fn prompt_on_screen(&self) -> Option<String> {
        let lines: Vec<&str> = self.prompt_tail.lines().filter(|line| !line.trim().is_empty()).collect();
        let recent = &lines[lines.len().saturating_sub(PROMPT_LINES)..];
        recent
            .iter()
            .rev()
            .find(|line| self.prompts.iter().any(|pattern| pattern.is_match(line)))
            .map(|line| line.trim().chars().take(200).collect())
    }
}

pub(super) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drops the start of `text` so that at most about `max` bytes are left, at a char boundary.
/// Returns how many bytes were dropped.
pub(super) fn keep_tail(text: &mut String, max: usize) -> usize {
    if text.len() <= max {
        return 0;
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text.drain(..cut);
    cut
}

/// The output of one task, from when its input was typed.
pub(super) struct TaskWatch {
    pub(super) rule: Option<Regex>,
    /// Fires when `rule` matches.
    pub(super) matched: Option<oneshot::Sender<()>>,
    /// What the terminal is expected to echo of the typed input and has not yet: the echo is
    /// not the program's output (and would match a rule that quotes the task).
    pub(super) echo: Option<String>,
    /// The start of the echo, seen so far; it is output after all if the echo goes astray.
    pub(super) held: String,
    pub(super) transcript: String,
    pub(super) n_dropped: usize,
    pub(super) started: Instant,
}

impl TaskWatch {
    pub(super) fn new(rule: Option<Regex>, matched: oneshot::Sender<()>, typed_text: &str) -> TaskWatch {
        TaskWatch {
            rule,
            matched: Some(matched),
            echo: (!typed_text.is_empty()).then(|| typed_text.to_string()),
            held: String::new(),
            transcript: String::new(),
            n_dropped: 0,
            started: Instant::now(),
        }
    }

    pub(super) fn push(&mut self, text: &str) {
        let output = self.skip_echo(text);
        if output.is_empty() {
            return;
        }
        self.transcript.push_str(&output);
        self.n_dropped += keep_tail(&mut self.transcript, MAX_TRANSCRIPT);
        if let Some(rule) = &self.rule
            && self.matched.is_some()
        {
            let mut from = self.transcript.len().saturating_sub(SEARCH_WINDOW);
            while !self.transcript.is_char_boundary(from) {
                from += 1;
            }
            if rule.is_match(&self.transcript[from..])
                && let Some(matched) = self.matched.take()
            {
                let _ = matched.send(());
            }
        }
    }

    pub(super) fn skip_echo(&mut self, text: &str) -> String {
        let Some(expected) = self.echo.as_mut() else { return text.to_string() };
        let common = text
            .char_indices()
            .zip(expected.chars())
            .take_while(|((_, seen), wanted)| seen == wanted)
            .last()
            .map_or(0, |((idx, c), _)| idx + c.len_utf8());
        if common == expected.len() {
            self.echo = None;
            self.held.clear();
            return text[common..].to_string();
        }
        if common == text.len() {
            self.held.push_str(text);
            expected.drain(..common);
            return String::new();
        }
        // No echo (the program turned it off, or draws its own): all of it is output.
        self.echo = None;
        let mut output = std::mem::take(&mut self.held);
        output.push_str(text);
        output
    }

    pub(super) fn finish(self) -> String {
        let mut text = self.held;
        text.push_str(&self.transcript);
        if self.n_dropped > 0 { format!("[{} earlier bytes dropped]\n{text}", self.n_dropped) } else { text }
    }
}
