//! A2A 1.0 with the official SDKs: the real `baton serve` driven by the A2A Python SDK as a
//! client (`tests/a2a/client.py`), and a `runtime = "a2a"` agent calling a server made with the
//! SDK (`tests/a2a/agent.py`).
//!
//! The SDK is installed by `.ci/a2a/setup` (a virtual environment under `target/`);
//! `.ci/run` sets `BATON_TEST_A2A_PYTHON` to its interpreter. Without it these tests say so
//! and pass, as the tests that need PostgreSQL do.

#![allow(clippy::disallowed_methods, reason = "the tests start real processes (baton, Python)")]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::{Lines, Project};

/// The Python interpreter that has `a2a-sdk`, or `None` (and a notice) when it is not set.
fn sdk_python() -> Option<PathBuf> {
    match std::env::var_os("BATON_TEST_A2A_PYTHON") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            eprintln!("skipped: BATON_TEST_A2A_PYTHON is not set (run .ci/a2a/setup; .ci/run sets it)");
            None
        }
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/a2a").join(name)
}

const SECRET: (&str, &str) = ("TEST_JWT_SECRET", "a secret for the a2a tests, 32 bytes or more");

/// `baton serve` on a port of its own; killed when dropped.
struct Served {
    child: Child,
    lines: Lines,
    url: String,
}

impl Served {
    fn start(project: &Project) -> Served {
        let mut child = project
            .command(&["serve", "--listen", "127.0.0.1:0"])
            .envs([SECRET])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Lines::new(child.stderr.take().unwrap());
        let line = lines.wait_for("API on ");
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        Served { child, lines, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(project: &Project, role: &str) -> String {
    let output = project.command(&["token", "create", "--role", role]).envs([SECRET]).output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    common::stdout(&output).trim().to_string()
}

const SERVED: &str = r#"
[orchestration]
name = "a2a-served"

[auth]
secret_env = "TEST_JWT_SECRET"

[[agents]]
name = "echo"
role = "Echoes the task it is given"
capabilities = ["echo"]
command = ["sh", "-c", "cat"]

[[agents]]
name = "sleeper"
role = "Works until it is cancelled"
capabilities = ["sleep"]
command = ["sleep", "600"]
"#;

#[test]
fn the_python_sdk_is_a_client_of_baton() {
    let Some(python) = sdk_python() else { return };
    let project = Project::with(SERVED, &[]);
    let operator = token(&project, "operator");
    let viewer = token(&project, "viewer");
    let served = Served::start(&project);
    let output = Command::new(python)
        .arg(script("client.py"))
        .args([&served.url, &operator, &viewer])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}\n{}", common::stdout(&output), common::stderr(&output));
    assert!(output.status.success(), "the SDK client failed:\n{said}\nbaton:\n{}", served.lines.seen.join(""));
    eprintln!("{said}");
    assert!(said.contains("all A2A client checks passed"), "{said}");
}
