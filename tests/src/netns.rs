//! A private network namespace, held by a descriptor rather than a name: no `ip netns` entry to
//! clean up, and it disappears when the last handle and socket in it are gone.
use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::Command,
    thread,
};

use anyhow::{bail, Context, Result};
use rustix::{
    ioctl::{ioctl, Opcode, Updater},
    net::{socket_with, AddressFamily, SocketFlags, SocketType},
    thread::{move_into_link_name_space, unshare_unsafe, LinkNameSpaceType, UnshareFlags},
};

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
        move_into_link_name_space(self.fd.as_fd(), Some(LinkNameSpaceType::Network))
            .context("setns into the test namespace failed")
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
        // SAFETY: the closure only makes the setns system call (async-signal-safe, no allocation)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // SAFETY: fd is self.fd, which stays open in the parent (and so in the forked
                // child) until spawn returns.
                let fd = BorrowedFd::borrow_raw(fd);
                move_into_link_name_space(fd, Some(LinkNameSpaceType::Network))?;
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
    // SAFETY: only CLONE_NEWNET, not CLONE_FILES: the descriptor table stays shared, which is
    // what unshare_unsafe's contract is about; a new network namespace for this thread alone is
    // allowed in a threaded process.
    unsafe { unshare_unsafe(UnshareFlags::NEWNET) }
        .context("unshare(CLONE_NEWNET) failed (tests must run as root)")?;
    set_loopback_up().context("bringing lo up in the new network namespace")
}

/// `SIOCGIFFLAGS` and `SIOCSIFFLAGS` (rustix has no interface-flags call): both take a
/// `struct ifreq`, the first fills its flags, the second reads them.
const SIOCGIFFLAGS: Opcode = libc::SIOCGIFFLAGS as Opcode;
const SIOCSIFFLAGS: Opcode = libc::SIOCSIFFLAGS as Opcode;

/// `ip link set lo up`, with the SIOCGIFFLAGS / SIOCSIFFLAGS ioctls.
fn set_loopback_up() -> io::Result<()> {
    // A plain datagram socket used only for the interface ioctls below.
    let sock = socket_with(AddressFamily::INET, SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
    // SAFETY: ifreq is plain old data (a name array and a union of integers and addresses), for
    // which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS takes a struct ifreq naming the interface and fills its ifr_flags;
    // `req` is one, NUL-terminated name "lo", on our own socket.
    unsafe { ioctl(&sock, Updater::<SIOCGIFFLAGS, libc::ifreq>::new(&mut req)) }?;
    // SAFETY: ifr_flags is the union member SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS takes a struct ifreq naming the interface and reads its ifr_flags;
    // `req` is the one SIOCGIFFLAGS filled, with IFF_UP added.
    unsafe { ioctl(&sock, Updater::<SIOCSIFFLAGS, libc::ifreq>::new(&mut req)) }?;
    Ok(())
}
