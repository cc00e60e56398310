//! The one place Baton uses `unsafe`: code that runs in a child between `fork` and `exec`, and
//! the supervisor's last act, dying of its agent's signal.
//!
//! `pre_exec` is unsafe because the closure runs in a forked copy of a multi-threaded process,
//! where only async-signal-safe functions may be called. The closure below calls only raw
//! system calls (`prctl`, `getppid`, `setrlimit`) on values computed before the fork; it does
//! not allocate or take locks.
#![allow(unsafe_code)]

use std::io;

/// Limits applied to a child process before it runs its program.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildLimits {
    /// `RLIMIT_AS`, in bytes.
    pub memory: Option<u64>,
    /// `RLIMIT_CPU`, in seconds.
    pub cpu_seconds: Option<u64>,
}

/// Makes the child die with its parent (the parent-death signal `on_parent_death`, so even a
/// `kill -9` of Baton leaves no agent behind) and applies its resource limits.
pub fn prepare_child(
    command: &mut std::process::Command,
    limits: ChildLimits,
    on_parent_death: nix::sys::signal::Signal,
) {
    use std::os::unix::process::CommandExt;
    let parent_pid = std::process::id() as libc::pid_t;
    let death_signal = on_parent_death as libc::c_ulong;
    let memory = limits.memory.map(|bytes| libc::rlimit { rlim_cur: bytes, rlim_max: bytes });
    // The soft limit sends SIGXCPU; the hard limit one second later kills.
    let cpu = limits.cpu_seconds.map(|secs| libc::rlimit { rlim_cur: secs, rlim_max: secs + 1 });
    // SAFETY: see the module comment; everything the closure uses was computed before the fork
    // and it calls only async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between the fork and the prctl: then nobody would kill us.
            if libc::getppid() != parent_pid {
                return Err(io::Error::other("baton exited while starting the agent"));
            }
            if let Some(limit) = memory
                && libc::setrlimit(libc::RLIMIT_AS, &limit) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(limit) = cpu
                && libc::setrlimit(libc::RLIMIT_CPU, &limit) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Ends this process the way its agent ended, by `signal`, so that Baton reads the same status
/// through the supervisor: the signal's default action restored, unblocked, no core dump.
pub fn die_of(signal: nix::sys::signal::Signal) -> ! {
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on values owned here; the process is single-threaded (the
    // supervisor) and about to die.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal as libc::c_int, libc::SIG_DFL);
    }
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(signal);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    std::process::exit(128 + signal as i32)
}
