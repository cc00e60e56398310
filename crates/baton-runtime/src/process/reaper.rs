//! The supervisor between Baton and each agent process tree, so that nothing an agent starts
//! outlives it — not even a daemon that left its process group with `setsid`, nor the children
//! of an agent when Baton itself is killed with SIGKILL.
//!
//! Baton starts every process agent as `baton __reap [--memory N] [--cpu N] -- PROGRAM ARGS…`:
//! the `baton` binary again (`/proc/self/exe`, so that it works even when the file was
//! replaced), which becomes a *child subreaper* (orphans of the tree it starts are re-parented
//! to it, not to init) and starts the agent with its limits. When the agent exits, or when
//! Baton asks (`SIGUSR1`), or when Baton dies (the supervisor's parent-death signal is
//! `SIGUSR1`), it kills every descendant it still has — walking `/proc` until none is left —
//! and exits with the agent's status: the same exit code, or death by the same signal. A
//! SIGTERM is passed on to every descendant.
//!
//! The binary opts in with [`enable`] (the `baton` binary does; a program that links this crate
//! without re-executing itself as a supervisor runs its agents directly, in their own process
//! group, with the parent-death signal: the weaker guarantee).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::sys::{self, ChildLimits};

/// The hidden subcommand that runs the supervisor.
pub const SUBCOMMAND: &str = "__reap";

/// The signal that asks a supervisor to kill its whole tree (and the one it gets when Baton
/// dies).
pub const KILL_TREE: Signal = Signal::SIGUSR1;

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Makes this process start its agents under a supervisor: `program __reap …`, where `program`
/// is a binary whose `main` hands [`SUBCOMMAND`] to [`main`]. Called once, before any agent
/// starts.
pub fn enable(program: PathBuf) {
    let _ = PROGRAM.set(program);
}

/// This process's own binary, when the system shows it (`/proc/self/exe`).
pub fn own_binary() -> Option<PathBuf> {
    let path = PathBuf::from("/proc/self/exe");
    path.exists().then_some(path)
}

pub(crate) fn program() -> Option<&'static Path> {
    PROGRAM.get().map(PathBuf::as_path)
}

/// The command that runs `program args` with `limits`: under the supervisor when it is enabled,
/// else directly. Either way the process Baton starts dies with Baton.
pub(crate) fn command(program: PathBuf, args: &[String], limits: ChildLimits) -> tokio::process::Command {
    match self::program() {
        Some(supervisor) => {
            let mut command = tokio::process::Command::new(supervisor);
            command.arg0("baton").arg(SUBCOMMAND);
            if let Some(memory) = limits.memory {
                command.arg("--memory").arg(memory.to_string());
            }
            if let Some(cpu) = limits.cpu_seconds {
                command.arg("--cpu").arg(cpu.to_string());
            }
            command.arg("--").arg(program).args(args);
            sys::prepare_child(command.as_std_mut(), ChildLimits::default(), KILL_TREE);
            command
        }
        None => {
            let mut command = tokio::process::Command::new(program);
            command.args(args);
            sys::prepare_child(command.as_std_mut(), limits, Signal::SIGKILL);
            command
        }
    }
}

/// Kills an agent's whole tree now: asks its supervisor, which kills every descendant before it
/// exits; without a supervisor, SIGKILLs the process group (the leader's pid).
pub fn kill_tree(pgid: i32) {
    if program().is_some() {
        let _ = kill(Pid::from_raw(pgid), KILL_TREE);
    } else {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// The supervisor's `main`: `args` are those after [`SUBCOMMAND`]. Returns the exit code, or
/// does not return when the agent died of a signal (the supervisor dies of the same).
pub fn main(args: impl Iterator<Item = OsString>) -> u8 {
    let (limits, argv) = match parse(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            say(&format!("baton {SUBCOMMAND}: {message}"));
            return 2;
        }
    };
    match supervise(limits, &argv) {
        Ok(WaitStatus::Exited(_, code)) => code.clamp(0, 255) as u8,
        Ok(WaitStatus::Signaled(_, signal, _)) => sys::die_of(signal),
        Ok(_) => 1,
        Err(message) => {
            say(&message);
            127
        }
    }
}

/// Writes a line on stderr (the agent's log), ignoring a closed pipe.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<(ChildLimits, Vec<OsString>), String> {
    let mut limits = ChildLimits::default();
    loop {
        let Some(arg) = args.next() else { return Err("no program to run (usage: -- PROGRAM ARGS…)".into()) };
        let number = |value: Option<OsString>| -> Result<u64, String> {
            value.and_then(|value| value.to_str()?.parse().ok()).ok_or_else(|| format!("{arg:?} needs a number"))
        };
        match arg.to_str() {
            Some("--memory") => limits.memory = Some(number(args.next())?),
            Some("--cpu") => limits.cpu_seconds = Some(number(args.next())?),
            Some("--") => break,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let argv: Vec<OsString> = args.collect();
    if argv.is_empty() {
        return Err("no program to run (usage: -- PROGRAM ARGS…)".into());
    }
    Ok((limits, argv))
}

/// Starts the agent and supervises it until it and every descendant are gone.
fn supervise(limits: ChildLimits, argv: &[OsString]) -> Result<WaitStatus, String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|error| format!("cannot become a subreaper: {error}"))?;
    // Taken with `sigwait`, never by a handler; the agent starts with an empty mask (the
    // standard library resets it between fork and exec).
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, KILL_TREE] {
        signals.add(signal);
    }
    signals.thread_block().map_err(|error| format!("cannot block signals: {error}"))?;
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    // The agent dies with its supervisor, whatever kills it.
    sys::prepare_child(&mut command, limits, Signal::SIGKILL);
    let child = command.spawn().map_err(|error| format!("cannot start `{}`: {error}", argv[0].to_string_lossy()))?;
    let mut tree = Tree { agent: Pid::from_raw(child.id() as i32), status: None };
    loop {
        let signal = signals.wait().map_err(|error| format!("cannot wait for signals: {error}"))?;
        match signal {
            Signal::SIGCHLD => tree.reap(),
            KILL_TREE => tree.kill_all(),
            _ => tree.signal_all(Signal::SIGTERM),
        }
        if let Some(status) = tree.status {
            // Whatever the agent started goes with it.
            tree.kill_all();
            return Ok(status);
        }
    }
}

/// The supervisor's view of the tree under it.
struct Tree {
    agent: Pid,
    /// How the agent ended, once it is reaped.
    status: Option<WaitStatus>,
}

impl Tree {
    /// Reaps every child that has ended (the agent, and orphans re-parented to us).
    fn reap(&mut self) {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            match status {
                WaitStatus::StillAlive => return,
                WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) if pid == self.agent => {
                    self.status = Some(status);
                }
                _ => {}
            }
        }
    }

    fn signal_all(&self, signal: Signal) {
        for pid in live_descendants() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILLs every descendant, again and again, until none is left: one that forked between
    /// the walk and the kill is found on the next walk.
    fn kill_all(&mut self) {
        loop {
            self.reap();
            let mut alive = live_descendants();
            if alive.is_empty() {
                // The children lists may miss a process that forks or exits while they are
                // read: none is left only if a full scan agrees.
                alive = scan_descendants(std::process::id() as i32);
            }
            if alive.is_empty() {
                return;
            }
            for pid in alive {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            // Give the kernel a moment to turn them into zombies and re-parent their children.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// This process's descendants that are not zombies, found in `/proc`: through each process's
/// `children` lists when the kernel has them (a few reads), else by reading every process's
/// parent.
fn live_descendants() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let mut stack = vec![me];
    while let Some(parent) = stack.pop() {
        let Some(children) = children_of(parent) else { return scan_descendants(me) };
        for pid in children {
            if super::proc_stat(pid).is_some_and(|fields| !fields.starts_with('Z')) {
                found.push(pid);
            }
            stack.push(pid);
        }
    }
    found
}

/// The children of `pid`, from `/proc/PID/task/*/children`; `None` when the kernel does not
/// list them (the process may also be gone: then it has none).
fn children_of(pid: i32) -> Option<Vec<i32>> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Some(Vec::new()) };
    let mut children = Vec::new();
    for thread in threads.flatten() {
        let path = thread.path().join("children");
        match std::fs::read_to_string(&path) {
            Ok(list) => children.extend(list.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && thread.path().exists() => return None,
            Err(_) => {}
        }
    }
    Some(children)
}

/// This process's descendants that are not zombies, by reading every process's parent.
fn scan_descendants(me: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<(i32, bool)>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Some(fields) = super::proc_stat(pid) else { continue };
        let mut fields = fields.split_whitespace();
        let zombie = fields.next() == Some("Z");
        let Some(ppid) = fields.next().and_then(|field| field.parse::<i32>().ok()) else { continue };
        children.entry(ppid).or_default().push((pid, zombie));
    }
    let mut alive = Vec::new();
    let mut stack = vec![me];
    while let Some(parent) = stack.pop() {
        for &(pid, zombie) in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            if !zombie {
                alive.push(pid);
            }
            stack.push(pid);
        }
    }
    alive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = OsString> {
        list.iter().map(OsString::from).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn descendants_are_found_through_children_lists_as_by_a_full_scan() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & sleep 30 & wait"]).spawn().unwrap();
        let me = std::process::id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while scan_descendants(me).len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Other tests of this binary may start processes too: compare the sh's subtree.
        let sh = child.id() as i32;
        let under_sh = |all: Vec<i32>| {
            let mut all: Vec<i32> = all
                .into_iter()
                .filter(|pid| {
                    super::super::proc_stat(*pid).and_then(|f| f.split_whitespace().nth(1).map(str::to_string))
                        == Some(sh.to_string())
                        || *pid == sh
                })
                .collect();
            all.sort_unstable();
            all
        };
        let scanned = under_sh(scan_descendants(me));
        assert_eq!(scanned.len(), 3, "{scanned:?}");
        assert_eq!(under_sh(live_descendants()), scanned);
        for pid in &scanned {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let _ = child.wait();
    }

    #[test]
    fn the_arguments_are_the_limits_then_the_program() {
        let (limits, argv) = parse(args(&["--memory", "1024", "--cpu", "3", "--", "sh", "-c", "true"])).unwrap();
        assert_eq!(limits.memory, Some(1024));
        assert_eq!(limits.cpu_seconds, Some(3));
        assert_eq!(argv, vec![OsString::from("sh"), "-c".into(), "true".into()]);
        assert_eq!(parse(args(&["--"])).unwrap_err(), "no program to run (usage: -- PROGRAM ARGS…)");
        assert_eq!(parse(args(&["--cpu", "x", "--", "sh"])).unwrap_err(), "\"--cpu\" needs a number");
    }
}
