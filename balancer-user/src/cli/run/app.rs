//! The app server of `reuselb run`: its process, started with the shim preloaded (unless
//! [`super::preflight`] said not to) in a process group of its own, and the signals reuselb gets
//! (SIGINT, SIGTERM, SIGHUP, SIGQUIT) forwarded to it, so that a terminal's Ctrl-C reaches it
//! once. Invariant: [`CHILD`] holds the app's pid from its start until it has been waited for,
//! and 0 otherwise, so a signal is never forwarded to a pid that may have been reused.
use std::{
    ffi::OsString,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{bail, Context, Result};
use balancer_common::protocol;
use balancer_user::sys;

use super::RunArgs;

/// pid of the app server, for the signal handler (0: not started, or waited for).
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Forwards the signal to the app server (kill(2) is async-signal-safe).
extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and takes plain integers.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The shim library: `explicit`, or libbalancer_shim.so next to this binary; absolute (the app
/// may change directory before the dynamic loader reads LD_PRELOAD).
pub fn find_shim(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => {
            let exe = std::env::current_exe().context("locating this binary")?;
            exe.parent()
                .map(|d| d.join("libbalancer_shim.so"))
                .context("this binary has no directory")?
        }
    };
    if !path.is_file() {
        bail!(
            "the shim library {} does not exist: build it (cargo build --release -p balancer-shim) or pass --shim PATH",
            path.display()
        );
    }
    std::fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
}

/// The app server, started.
pub struct App {
    child: Child,
}

impl App {
    /// Installs the signal forwarding and starts `args.command`, told the balanced addresses and
    /// the registration socket, with `shim` preloaded if `with_shim`, and with the descriptor
    /// limit we started with (`limit`: programs that use select() need descriptors below 1024).
    pub fn start(
        args: &RunArgs,
        shim: &Path,
        with_shim: bool,
        limit: crate::cli::nofile::StartingLimit,
    ) -> Result<Self> {
        sys::on_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT], forward, true)
            .context("forwarding signals to the app server")?;
        let listen = args.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let program = &args.command[0];
        let mut command = Command::new(program);
        if with_shim {
            command.env("LD_PRELOAD", preload(shim));
        }
        command
            .args(&args.command[1..])
            .env(protocol::ENV_LISTEN, &listen)
            .env(protocol::ENV_SOCKET, &args.socket)
            // Its own process group: a terminal's Ctrl-C reaches it once, through us.
            .process_group(0);
        // SAFETY: the closure only makes one setrlimit system call (no allocation, no lock),
        // which is async-signal-safe, as code between fork and exec must be.
        unsafe {
            command.pre_exec(move || limit.restore());
        }
        let child = command.spawn().with_context(|| format!("starting {program:?}"))?;
        CHILD.store(child.id() as i32, Ordering::Relaxed);
        if with_shim {
            log::info!(
                "started {program:?} (pid {}) with the shim preloaded, balancing {listen}",
                child.id()
            );
        } else {
            log::error!(
                "started {program:?} (pid {}) WITHOUT the shim: {listen} is not balanced (see above)",
                child.id()
            );
        }
        Ok(Self { child })
    }

    /// Waits for the app server to exit; its exit status, or 128 + the signal that killed it.
    pub fn wait(mut self) -> Result<i32> {
        let status = self.child.wait().context("waiting for the app server");
        CHILD.store(0, Ordering::Relaxed);
        let status = status?;
        let code = match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 1,
        };
        log::info!("app server exited ({status}); exiting with {code}");
        Ok(code)
    }
}

/// LD_PRELOAD with `shim` after whatever the environment preloads already.
fn preload(shim: &Path) -> OsString {
    match std::env::var_os("LD_PRELOAD") {
        Some(existing) if !existing.is_empty() => {
            let mut p = existing;
            p.push(":");
            p.push(shim);
            p
        }
        _ => shim.as_os_str().to_owned(),
    }
}
