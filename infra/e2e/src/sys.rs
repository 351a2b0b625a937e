//! The kit's only `unsafe`: two libc calls the standard library does not offer.
//!
//! - [`die_with_parent`] runs between `fork` and `exec` (`CommandExt::pre_exec`) and asks the
//!   kernel to SIGKILL the child when the thread that spawned it exits — so a test runner
//!   killed with SIGKILL (no `Drop`) still leaves no redis-server, gateway or worker behind.
//! - [`signal`] sends SIGTERM (or any signal) to a child we spawned, by pid.
#![allow(unsafe_code)] // prctl(2) and kill(2) have no safe std wrapper.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the kernel SIGKILL the child when its parent thread exits (PR_SET_PDEATHSIG).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to process `pid` (one of our children).
pub fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub use libc::SIGTERM;
