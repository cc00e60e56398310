//! Helpers for tests that run the real `baton` binary in a temporary project.

#![allow(clippy::disallowed_methods, reason = "the tests start the real `baton` binary")]
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use baton_store::SqliteStore;
use baton_store::sqlite::Options;

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project made by `baton init`.
    pub fn example() -> Project {
        let project = Project { dir: tempfile::tempdir().unwrap() };
        let output = project.baton(&["init", "."]);
        assert!(output.status.success(), "baton init: {}", String::from_utf8_lossy(&output.stderr));
        project
    }

    /// A project with this `baton.toml` and these executable scripts.
    pub fn with(config: &str, scripts: &[(&str, &str)]) -> Project {
        use std::os::unix::fs::PermissionsExt;
        let project = Project { dir: tempfile::tempdir().unwrap() };
        std::fs::write(project.path().join("baton.toml"), config).unwrap();
        for (name, body) in scripts {
            let path = project.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(args)
            .current_dir(self.path())
            .env_remove("BATON_CONFIG")
            .env_remove("BATON_STORE")
            .env_remove("RUST_LOG");
        command
    }

    pub fn baton(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Starts `baton ARGS` with stderr piped, for reading its event lines as they come.
    pub fn spawn(&self, args: &[&str]) -> (Child, Lines) {
        let mut child =
            self.command(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        (child, Lines::new(stderr))
    }

    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.path().join(".baton/baton.db"), Options::default()).unwrap()
    }

    /// The socket beside the store where the process executing the run serves its API.
    pub fn socket_path(&self) -> PathBuf {
        self.path().join(".baton/api.sock")
    }

    /// Waits until the running `baton run` (or `baton serve`) answers on its socket: commands
    /// that change the run reach it there. It opens the socket once it has claimed the run.
    pub fn wait_for_front_door(&self) {
        let socket = self.socket_path();
        assert!(
            eventually(|| std::os::unix::net::UnixStream::connect(&socket).is_ok()),
            "nothing answers on {}",
            socket.display()
        );
    }

    pub fn log_path(&self, agent: &str) -> PathBuf {
        self.path().join(".baton/logs").join(format!("{agent}.log"))
    }
}

/// The event lines a running `baton run` prints (plain mode: its stderr is not a terminal).
///
/// A thread reads them, so that a test waiting for a line that never comes fails after
/// [`LINE_DEADLINE`] with what was printed, instead of hanging CI.
pub struct Lines {
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

/// How long a test waits for the next line before it fails: far longer than any step takes,
/// even on a loaded machine.
const LINE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

impl Lines {
    pub fn new(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Lines { lines, seen: Vec::new() }
    }

    /// The next line, or `None` once the process has closed its stderr.
    fn next_line(&mut self, waiting_for: &str) -> Option<String> {
        match self.lines.recv_timeout(LINE_DEADLINE) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                "no line for {} s while waiting for {waiting_for}; baton printed:\n{}",
                LINE_DEADLINE.as_secs(),
                self.seen.join("")
            ),
        }
    }

    /// Reads lines until one contains `needle`; waiting on the process's own output, not on
    /// time. Panics if the process ends first.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_any(&[needle])
    }

    /// Reads lines until each of `needles` has appeared, in any order.
    pub fn wait_for_all(&mut self, needles: &[&str]) {
        let mut missing: Vec<&str> =
            needles.iter().copied().filter(|needle| !self.seen.iter().any(|line| line.contains(needle))).collect();
        while !missing.is_empty() {
            let line = self.wait_for_any(&missing);
            missing.retain(|candidate| !line.contains(candidate));
        }
    }

    fn wait_for_any(&mut self, needles: &[&str]) -> String {
        let waiting_for = format!("{needles:?}");
        loop {
            let Some(line) = self.next_line(&waiting_for) else {
                panic!("baton ended before printing {waiting_for}; it printed:\n{}", self.seen.join(""));
            };
            if needles.iter().any(|needle| line.contains(needle)) {
                return line;
            }
        }
    }

    /// Everything printed, up to the end of the process's stderr.
    pub fn rest(mut self) -> String {
        while self.next_line("the end of the output").is_some() {}
        self.seen.join("")
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Whether a process exists and is not a zombie waiting for its parent to reap it.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|idx| stat.get(idx + 2..idx + 3)) != Some("Z"),
        Err(_) => false,
    }
}

/// The processes whose command line holds `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(marker) && is_alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Waits until `condition` holds, up to a deadline far longer than it takes; false if it never
/// did.
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    condition()
}

/// Kills what a failed test left running, so that it does not outlive the test.
pub fn kill_all(pids: &[i32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
}
