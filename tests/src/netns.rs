//! A private network namespace, held by a descriptor rather than a name: no `ip netns` entry to
//! clean up, and it disappears when the last handle and socket in it are gone.
use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::Command,
    thread,
};

use anyhow::{bail, Context, Result};

pub struct NetNs {
    fd: OwnedFd,
}

impl NetNs {
    /// A fresh namespace with `lo` up (127.0.0.1 and ::1).
    pub fn new() -> Result<Self> {
        thread::spawn(|| -> Result<Self> {
            isolate_thread()?;
            let file =
                File::open("/proc/thread-self/ns/net").context("opening the new namespace")?;
            Ok(Self { fd: file.into() })
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> Result<()> {
        // SAFETY: setns with a namespace descriptor we own.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into the test namespace failed: {}", io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|s| {
            s.spawn(|| {
                self.enter().expect("entering the test namespace");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Spawns a scoped thread inside the namespace.
    pub fn spawn<'scope, 'env, T: Send + 'scope>(
        &'env self,
        scope: &'scope thread::Scope<'scope, 'env>,
        f: impl FnOnce() -> T + Send + 'scope,
    ) -> thread::ScopedJoinHandle<'scope, T> {
        scope.spawn(move || {
            self.enter().expect("entering the test namespace");
            f()
        })
    }

    /// A path to the namespace that other processes (run as root) can open: `/proc/<pid>/fd/<n>`
    /// of this process.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()))
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let fd = self.fd.as_raw_fd();
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; fd stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        };
        cmd
    }

    /// Runs `program args...` inside the namespace; fails with its stderr if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Moves the calling thread into a fresh network namespace with `lo` up (127.0.0.1 and ::1); the
/// threads and processes it starts afterwards live there too. The namespace goes away when the
/// thread has ended and the last socket and process in it are gone.
///
/// For a thread that ends with its work: a test's own thread (libtest runs each test on a thread
/// of its own) or the bench's main thread.
pub fn isolate_thread() -> Result<()> {
    // SAFETY: unshare on this thread only; CLONE_NEWNET is allowed in threaded processes.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET) failed (tests must run as root): {}",
            io::Error::last_os_error()
        );
    }
    set_loopback_up().context("bringing lo up in the new network namespace")
}

/// `ip link set lo up`, with the SIOCSIFFLAGS ioctl.
fn set_loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket used only for the interface ioctls below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sock is ours; wrapping it closes it on every path.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    // SAFETY: zeroed ifreq with a NUL-terminated name; the kernel fills and reads ifr_flags.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills `req`, a valid ifreq naming lo, on our own socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifr_flags is the union member SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, a valid ifreq naming lo, on our own socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
