//! Helpers for tests that run the real `baton` binary in a temporary project.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};

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
        (child, Lines { reader: BufReader::new(stderr), seen: Vec::new() })
    }

    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.path().join(".baton/baton.db"), Options::default()).unwrap()
    }

    pub fn log_path(&self, agent: &str) -> PathBuf {
        self.path().join(".baton/logs").join(format!("{agent}.log"))
    }
}

/// The event lines a running `baton run` prints (plain mode: its stderr is not a terminal).
pub struct Lines {
    reader: BufReader<ChildStderr>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(stderr: ChildStderr) -> Lines {
        Lines { reader: BufReader::new(stderr), seen: Vec::new() }
    }

    /// Reads lines until one contains `needle`; waiting on the process's own output, not on
    /// time. Panics if the process ends first.
    pub fn wait_for(&mut self, needle: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "baton ended before printing `{needle}`; it printed:\n{}", self.seen.join(""));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
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
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "baton ended before printing {needles:?}; it printed:\n{}", self.seen.join(""));
            self.seen.push(line.clone());
            if needles.iter().any(|needle| line.contains(needle)) {
                return line;
            }
        }
    }

    pub fn rest(mut self) -> String {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut self.reader, &mut text).unwrap();
        self.seen.join("") + &text
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
