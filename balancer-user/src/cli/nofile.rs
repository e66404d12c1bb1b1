//! The controller's descriptor limit (`RLIMIT_NOFILE`).
//!
//! Every registered worker costs the controller about three descriptors (its registration
//! connection, the copy of its listener, a pidfd), more while peers' descriptors wait to be closed.
//! The soft limit most service managers and container runtimes leave is 1024, reached at about
//! 300 workers; past it registrations fail, and the kernel closes the descriptors a peer sends
//! inside the registry's own `recvmsg`. So `reuselb daemon` and `reuselb run` raise their soft
//! limit to the hard limit at start ([`raise_soft_limit`]); the hard limit is the service
//! manager's to set (`LimitNOFILE=` in the systemd unit, the container runtime's `nofile`).
//!
//! Invariants: never lowers a limit, never touches the hard limit (raising it needs
//! CAP_SYS_RESOURCE); the children a controller starts (the app of `reuselb run`) get the soft
//! limit it started with ([`StartingLimit::restore`]): programs that use `select()` expect
//! descriptors below 1024, which is why the managers keep the soft limit there.
use std::io;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The descriptor limits a process started with, kept to hand its children.
#[derive(Clone, Copy, Debug)]
pub struct StartingLimit(Rlimit);

impl StartingLimit {
    /// The soft limit it started with (`None`: unlimited).
    #[cfg(test)]
    pub fn soft(&self) -> Option<u64> {
        self.0.current
    }

    /// Sets the soft limit back to the one the process started with. One system call, no
    /// allocation: safe between `fork` and `exec` (in `Command::pre_exec`).
    pub fn restore(&self) -> io::Result<()> {
        setrlimit(Resource::Nofile, self.0).map_err(io::Error::from)
    }
}

/// Raises this process's soft descriptor limit to its hard limit and logs the outcome (a
/// failure is a warning: the process runs on with the limit it had). Returns the limits it
/// started with.
pub fn raise_soft_limit() -> StartingLimit {
    let start = getrlimit(Resource::Nofile);
    let show = |l: Option<u64>| l.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    let (soft, hard) = (show(start.current), show(start.maximum));
    if start.current == start.maximum {
        log::info!("descriptor limit {soft} (the hard limit)");
    } else {
        let raised = Rlimit { current: start.maximum, maximum: start.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => log::info!("descriptor limit raised from {soft} to the hard limit {hard}"),
            Err(e) => log::warn!("raising the descriptor limit from {soft} to {hard}: {e}"),
        }
    }
    StartingLimit(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a child process: limits are per process, and the other tests share this one.
    #[test]
    fn raises_the_soft_limit_to_the_hard_one_and_restores_it() {
        // SAFETY: fork in a test; the child only makes system calls and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = (|| {
                let hard = getrlimit(Resource::Nofile).maximum;
                setrlimit(Resource::Nofile, Rlimit { current: Some(64), maximum: hard }).ok()?;
                let start = raise_soft_limit();
                if start.soft() != Some(64) || getrlimit(Resource::Nofile).current != hard {
                    return None;
                }
                start.restore().ok()?;
                (getrlimit(Resource::Nofile).current == Some(64)).then_some(0)
            })()
            .unwrap_or(1);
            // SAFETY: ends the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status}");
    }
}
