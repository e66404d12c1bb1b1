//! The shim's own descriptors between their creation (or receipt) and the moment they are handed
//! on: [`Owned`], the one cleanup guard of the crate, and the two ways the shim gets rid of a
//! descriptor ([`Disposal`]): a plain close for what it made itself, [`dispose`] for what a peer
//! sent and nobody checked yet.
//!
//! Invariants: the guard is a fixed-size array on the stack (no allocation); every descriptor it
//! holds is got rid of exactly once, when the guard drops, unless [`Owned::take`] handed it on
//! first. A received descriptor is never closed in a hook's thread: closing a lingering TCP
//! socket or a FUSE file can block for as long as the peer likes, and that thread is the app's.
//! [`dispose`] sets SO_LINGER {1, 0} (a TCP socket then closes with a reset at once) and hands
//! the close to the registration thread ([`close_deferred`]).

use core::{
    ffi::c_int,
    mem::size_of,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    log::shim_log,
    process::{fd_if_ours, in_registration_thread, my_pid, tagged},
    real::Real,
};

/// How a descriptor the shim holds is got rid of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Disposal {
    /// Made by the shim (a socket, a connection, a checked map): closed at once.
    Close,
    /// Received and not (yet) checked: [`dispose`]d, never closed in a hook's thread.
    Dispose,
}

impl Disposal {
    fn release(self, fd: c_int) {
        match self {
            // SAFETY: a descriptor the shim made and nobody else knows of: ours to close.
            Disposal::Close => unsafe {
                Real::CLOSE()(fd);
            },
            Disposal::Dispose => dispose(fd),
        }
    }
}

/// Most descriptors one guard holds (a registration holds at most four: its connection, the load
/// map, the listener the controller handed over, and the own socket being registered).
const CAPACITY: usize = 4;

/// The cleanup guard: descriptors that are got rid of (each as its [`Disposal`] says) when the
/// guard drops, in the reverse order of [`Owned::hold`], unless [`Owned::take`]n before. Every
/// early return of a multi-step setup thereby releases what the setup had made so far.
pub(crate) struct Owned {
    held: [(c_int, Disposal); CAPACITY],
}

impl Owned {
    pub(crate) const fn new() -> Self {
        Self { held: [(-1, Disposal::Close); CAPACITY] }
    }

    /// Holds `fd` until the guard drops (a negative `fd`, "none", is ignored). Returns `fd`.
    pub(crate) fn hold(&mut self, fd: c_int, how: Disposal) -> c_int {
        if fd < 0 {
            return fd;
        }
        match self.held.iter_mut().find(|(f, _)| *f < 0) {
            Some(free) => *free = (fd, how),
            // Every caller holds at most CAPACITY: reaching this is a bug of the shim, and leaking
            // one descriptor (close-on-exec) is the harmless way out of it.
            None => shim_log!("internal: more than {CAPACITY} descriptors held: fd {fd} leaks"),
        }
        fd
    }

    /// Hands `fd` on: the guard no longer releases it. Returns `fd`.
    pub(crate) fn take(&mut self, fd: c_int) -> c_int {
        if let Some(slot) = self.held.iter_mut().find(|(f, _)| *f == fd && fd >= 0) {
            slot.0 = -1;
        }
        fd
    }

    /// `fd` lives on at `new` now (moved to another number, as [`crate::sock::move_high`] does):
    /// the guard releases `new` in its place, the same way. Returns `new`.
    pub(crate) fn moved(&mut self, fd: c_int, new: c_int) -> c_int {
        if let Some(slot) = self.held.iter_mut().find(|(f, _)| *f == fd && fd >= 0) {
            slot.0 = new;
        }
        new
    }

    /// Releases `fd` now instead of when the guard drops.
    pub(crate) fn release(&mut self, fd: c_int) {
        if let Some(slot) = self.held.iter_mut().find(|(f, _)| *f == fd && fd >= 0) {
            let (fd, how) = *slot;
            slot.0 = -1;
            how.release(fd);
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        for &(fd, how) in self.held.iter().rev() {
            if fd >= 0 {
                how.release(fd);
            }
        }
    }
}

/// Most descriptors one SCM_RIGHTS message carries (the kernel's SCM_MAX_FD).
pub(crate) const SCM_MAX_FD: usize = 253;

/// Received descriptors waiting for the registration thread to close them: `pid << 32 | fd`.
static DEFERRED: [AtomicU64; 2 * SCM_MAX_FD] = [const { AtomicU64::new(0) }; 2 * SCM_MAX_FD];

/// Gets rid of a received descriptor the shim does not keep, without blocking a hook: SO_LINGER
/// {1, 0} first (fails harmlessly on anything but a socket), then closed here if this is the
/// registration thread, else left to it. If its list is full the descriptor is leaked (it is
/// close-on-exec): a peer that sends hundreds must not block the app.
pub(crate) fn dispose(fd: c_int) {
    let lg = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads one linger from our stack; an error (not a socket) is harmless.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if in_registration_thread() {
        // SAFETY: a descriptor we received and own; this thread is not the app's.
        unsafe { Real::CLOSE()(fd) };
        return;
    }
    let v = tagged(my_pid(), fd);
    if !DEFERRED
        .iter()
        .any(|d| d.compare_exchange(0, v, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    {
        shim_log!("too many descriptors from the controller to close: fd {fd} stays open");
    }
}

/// Closes the descriptors [`dispose`] left to the registration thread (called by it).
pub(crate) fn close_deferred() {
    let pid = my_pid();
    for d in &DEFERRED {
        if d.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let v = d.swap(0, Ordering::AcqRel);
        if let Some(fd) = fd_if_ours(v, pid) {
            // SAFETY: a received descriptor handed over by `dispose`: ours to close.
            unsafe { Real::CLOSE()(fd) };
        }
    }
}
