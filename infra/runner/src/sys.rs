//! The runner's only `unsafe` code: two thin libc calls that std and tokio do not wrap.
//!
//! * [`die_with_parent`] registers a `pre_exec` hook (an `unsafe` API, because it runs in the
//!   forked child) that sets `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills a child even if
//!   the runner itself is `SIGKILL`ed and no Rust code gets to run.
//! * [`signal_group`] calls `kill(-pgid, sig)` to signal a child's whole process group
//!   (std can only signal a single pid, and only with SIGKILL).
//!
//! The workspace denies `unsafe_code`; it is allowed in this module alone, and each block
//! states why it is sound.
#![allow(unsafe_code)]

use std::io;

/// Signals the runner sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Makes the child spawned by `cmd` receive SIGKILL when the runner dies (Linux only).
///
/// Note: the kernel ties this to the *thread* that forked the child, which is why the
/// `confab-run` binary uses a current-thread Tokio runtime (every child is forked by the main
/// thread, which lives as long as the process).
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        let hook = move || -> io::Result<()> {
            // SAFETY: runs in the forked child before exec. It only calls the async-signal-safe
            // `prctl` and `getppid` and does not allocate (the error is a raw OS code).
            let (set, ppid) = unsafe {
                (
                    libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    ),
                    libc::getppid(),
                )
            };
            if set == -1 {
                return Err(io::Error::last_os_error());
            }
            // The runner died between fork and prctl: the death signal will never come.
            if u32::try_from(ppid).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        };
        // SAFETY: the hook above is async-signal-safe (see its comment).
        unsafe {
            cmd.pre_exec(hook);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Sends `signal` to every process in group `pgid`. `Ok(false)`: the group no longer exists.
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<bool> {
    // pgid 0 would mean "our own group" and 1 would be init's: never signal those.
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad process group id"))?;
    // SAFETY: `kill` has no memory-safety preconditions; a negative pid addresses a group.
    let rc = unsafe { libc::kill(-pgid, signal.raw()) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_dangerous_group_ids() {
        assert!(signal_group(0, Signal::Term).is_err());
        assert!(signal_group(1, Signal::Term).is_err());
        assert!(signal_group(u32::MAX, Signal::Term).is_err());
    }
}
