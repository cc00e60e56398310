//! Agents' log files, `<log dir>/AGENT.log`: every writer of an agent (its attempts' stderr,
//! Baton's own lines about it, a worker's `log` notifications, a terminal's transcript) appends
//! through one shared handle per file, which rotates it by size (`[logs]`: `AGENT.log.1` is
//! the newest rotated file, `AGENT.log.N` the oldest kept). A single line is never buffered
//! whole: [`LineCutter`] keeps the first [`MAX_LINE`] bytes and says how many it cut.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use baton_core::config::LogRotation;

/// Most bytes of one line an agent writes kept in its log (and in a failure reason's source).
pub const MAX_LINE: usize = 64 * 1024;

/// Most bytes of a failure reason kept.
pub const MAX_REASON: usize = 4 * 1024;

/// One open log file and its rotation. Writes are small and go straight to the file (the OS
/// buffers them); the std mutex is held for one write, never across an await.
pub struct AgentLog {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    rotation: LogRotation,
    file: Option<std::fs::File>,
    /// Bytes in the current file.
    size: u64,
}

/// The open logs, one handle per path, so that writers of the same agent share its size.
static OPEN: Mutex<Option<HashMap<PathBuf, Weak<AgentLog>>>> = Mutex::new(None);

impl AgentLog {
    /// The log at `path`, rotated by `rotation` (which replaces the one the file had).
    pub fn open(path: &Path, rotation: LogRotation) -> Arc<AgentLog> {
        let log = AgentLog::of(path);
        log.state.lock().unwrap_or_else(|p| p.into_inner()).rotation = rotation;
        log
    }

    /// The log at `path`, shared with its other writers; rotated by the default when nobody
    /// opened it with a rotation.
    pub fn of(path: &Path) -> Arc<AgentLog> {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        let open = open.get_or_insert_with(HashMap::new);
        if let Some(log) = open.get(path).and_then(Weak::upgrade) {
            return log;
        }
        open.retain(|_, log| log.strong_count() > 0);
        let log = Arc::new(AgentLog {
            path: path.to_path_buf(),
            state: Mutex::new(State { rotation: LogRotation::default(), file: None, size: 0 }),
        });
        open.insert(path.to_path_buf(), Arc::downgrade(&log));
        log
    }

    /// Appends `line` and a newline.
    pub fn line(&self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.write(&bytes);
    }

    /// Appends `bytes`, rotating the file first when they would take it over its size. A log
    /// that cannot be written loses the bytes, not the agent.
    pub fn write(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.size > 0 && state.size + bytes.len() as u64 > state.rotation.max_size {
            state.file = None;
            self.rotate(state.rotation.max_files);
            state.size = 0;
        }
        if state.file.is_none() {
            let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(&self.path) else { return };
            state.size = file.metadata().map(|meta| meta.len()).unwrap_or(0);
            state.file = Some(file);
        }
        if let Some(file) = state.file.as_mut()
            && file.write_all(bytes).is_ok()
        {
            state.size += bytes.len() as u64;
        }
    }

    /// `AGENT.log.(N-1)` → `AGENT.log.N`, …, `AGENT.log` → `AGENT.log.1`; the oldest goes.
    fn rotate(&self, max_files: u32) {
        let numbered = |n: u32| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..max_files).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if std::fs::rename(&self.path, numbered(1)).is_err() {
            // Not renamed: start it again rather than grow it.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Text cut to `max` bytes (on a character boundary), saying how many were cut, counting
/// `already_cut` bytes cut before.
pub fn cut(text: &str, max: usize, already_cut: u64) -> String {
    if text.len() <= max && already_cut == 0 {
        return text.to_string();
    }
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let n_cut = (text.len() - end) as u64 + already_cut;
    format!("{} … [{n_cut} bytes cut]", &text[..end])
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes kept, counting the bytes cut
/// from each, without ever holding more than one cut line.
#[derive(Default)]
pub struct LineCutter {
    line: Vec<u8>,
    n_cut: u64,
}

/// A line as the log keeps it.
pub struct CutLine<'a> {
    /// The bytes kept, without the newline.
    pub kept: &'a [u8],
    /// Bytes of the line that were not kept.
    pub n_cut: u64,
}

impl CutLine<'_> {
    /// The line as written to the log: what was kept, and how much was cut.
    pub fn logged(&self) -> Vec<u8> {
        let mut bytes = self.kept.to_vec();
        if self.n_cut > 0 {
            bytes.extend_from_slice(format!(" … [{} bytes cut]", self.n_cut).as_bytes());
        }
        bytes.push(b'\n');
        bytes
    }
}

impl LineCutter {
    /// Takes bytes up to and including the first newline of `chunk`; returns how many it took
    /// and whether they ended a line (then [`LineCutter::take`] gives it).
    pub fn push(&mut self, chunk: &[u8]) -> (usize, bool) {
        let (part, ends) = match chunk.iter().position(|byte| *byte == b'\n') {
            Some(idx) => (&chunk[..idx], true),
            None => (chunk, false),
        };
        let room = MAX_LINE - self.line.len();
        let kept = part.len().min(room);
        self.line.extend_from_slice(&part[..kept]);
        self.n_cut += (part.len() - kept) as u64;
        (part.len() + usize::from(ends), ends)
    }

    /// Whether a line is under way.
    pub fn is_empty(&self) -> bool {
        self.line.is_empty() && self.n_cut == 0
    }

    /// Hands the line read so far to `with` and starts the next.
    pub fn take<T>(&mut self, with: impl FnOnce(CutLine<'_>) -> T) -> T {
        let taken = with(CutLine { kept: &self.line, n_cut: self.n_cut });
        self.line.clear();
        self.n_cut = 0;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_character_boundary_and_says_how_much() {
        assert_eq!(cut("short", 10, 0), "short");
        assert_eq!(cut("ééé", 3, 0), "é … [4 bytes cut]");
        assert_eq!(cut("abc", 10, 7), "abc … [7 bytes cut]");
    }

    #[test]
    fn a_long_line_keeps_its_head_and_counts_the_rest() {
        let mut cutter = LineCutter::default();
        let long = vec![b'x'; MAX_LINE + 10];
        assert_eq!(cutter.push(&long), (MAX_LINE + 10, false));
        assert_eq!(cutter.push(b"yy\nnext"), (3, true));
        let logged = cutter.take(|line| line.logged());
        assert_eq!(logged.len(), MAX_LINE + " … [12 bytes cut]\n".len());
        assert!(cutter.is_empty());
    }
}
