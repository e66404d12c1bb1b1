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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe: (read end, write end). The write end is the descriptor under test: once it is
    /// closed (and no copy is left), reading the other end says end of file, whatever number the
    /// closed descriptor had (another test thread may reuse it at once).
    fn pipe() -> (c_int, c_int) {
        let mut p = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into our array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
        (p[0], p[1])
    }

    /// True if the write end of the pipe read by `r` is closed everywhere.
    fn writer_closed(r: c_int) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: reads at most one byte into our buffer.
        let n = unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
        n == 0
    }

    fn close(fd: c_int) {
        // SAFETY: a descriptor this test made.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn owned_closes_what_it_holds_when_dropped() {
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        {
            let mut held = Owned::new();
            held.hold(w1, Disposal::Close);
            held.hold(w2, Disposal::Close);
            held.hold(-1, Disposal::Close);
            assert!(!writer_closed(r1) && !writer_closed(r2));
        }
        assert!(writer_closed(r1) && writer_closed(r2));
        close(r1);
        close(r2);
    }

    #[test]
    fn owned_leaves_open_what_was_taken() {
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        {
            let mut held = Owned::new();
            held.hold(w1, Disposal::Close);
            held.hold(w2, Disposal::Close);
            assert_eq!(held.take(w1), w1);
        }
        assert!(!writer_closed(r1), "a taken descriptor stays open");
        assert!(writer_closed(r2), "the others are closed");
        close(w1);
        assert!(writer_closed(r1));
        close(r1);
        close(r2);
    }

    #[test]
    fn owned_follows_a_moved_descriptor_and_releases_early() {
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        // SAFETY: duplicates our own descriptor, as `sock::move_high` does.
        let moved = unsafe { libc::fcntl(w1, libc::F_DUPFD_CLOEXEC, 100) };
        assert!(moved >= 100);
        close(w1);
        {
            let mut held = Owned::new();
            held.hold(w1, Disposal::Close);
            assert_eq!(held.moved(w1, moved), moved);
            held.hold(w2, Disposal::Close);
            held.release(w2);
            assert!(writer_closed(r2), "released at once");
            assert!(!writer_closed(r1));
        }
        assert!(writer_closed(r1), "the new number is closed in the old one's place");
        close(r1);
        close(r2);
    }

    #[test]
    fn owned_disposes_received_descriptors_through_the_registration_thread() {
        let (r, w) = pipe();
        {
            let mut held = Owned::new();
            held.hold(w, Disposal::Dispose);
        }
        // Not the registration thread: the close waits for it.
        assert!(!writer_closed(r), "a disposed descriptor is not closed in this thread");
        close_deferred();
        assert!(writer_closed(r));
        close(r);
    }
}
