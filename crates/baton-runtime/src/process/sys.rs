//! The one place Baton uses `unsafe`: code that runs in a child between `fork` and `exec`.
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

/// Makes the child die with Baton (the parent-death signal, so even a `kill -9` of Baton leaves
/// no agent behind) and applies its resource limits.
pub fn prepare_child(command: &mut tokio::process::Command, limits: ChildLimits) {
    let parent_pid = std::process::id() as libc::pid_t;
    let memory = limits.memory.map(|bytes| libc::rlimit { rlim_cur: bytes, rlim_max: bytes });
    // The soft limit sends SIGXCPU; the hard limit one second later kills.
    let cpu = limits.cpu_seconds.map(|secs| libc::rlimit { rlim_cur: secs, rlim_max: secs + 1 });
    // SAFETY: see the module comment; everything the closure uses was computed before the fork
    // and it calls only async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Baton may have died between the fork and the prctl: then nobody would kill us.
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
