//! This process's identity, as every other module needs it: its pid (recorded by the constructor
//! and again in the child after fork), the vfork check, the registration thread's id, and the
//! pid-tagged descriptor values (`pid << 32 | fd`) that per-process tables hold.
//!
//! Invariants: [`my_pid`] is the pid of the process whose memory this is, except in a vfork child
//! (which shares its parent's memory: [`in_vfork_child`] tells). A tagged value is only taken for
//! a descriptor of this process when its pid part is [`my_pid`]: what fork copies is never
//! mistaken for the child's own. Depends on nothing of the crate (libc only).

use core::{
    ffi::c_int,
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
};

/// This process's pid; updated in the child after fork (pthread_atfork).
static MY_PID: AtomicU32 = AtomicU32::new(0);

/// Thread id of this process's registration thread (0: none).
static THREAD_TID: AtomicI32 = AtomicI32::new(0);

#[inline(always)]
pub(crate) fn my_pid() -> u32 {
    MY_PID.load(Ordering::Relaxed)
}

/// Records the calling process's pid (constructor, and the child after fork).
pub(crate) fn set_my_pid() {
    // SAFETY: getpid has no preconditions.
    MY_PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
}

/// True in a vfork child (which shares our memory but has its own pid): per-process state must
/// not be touched there. A system call: only on paths that are about to change that state.
#[inline]
pub(crate) fn in_vfork_child() -> bool {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 != my_pid() }
}

/// `pid << 32 | fd` for per-address descriptors.
#[inline(always)]
pub(crate) fn tagged(pid: u32, fd: c_int) -> u64 {
    ((pid as u64) << 32) | (fd as u32 as u64)
}

/// The descriptor of a [`tagged`] value if it is `pid`'s.
#[inline(always)]
pub(crate) fn fd_if_ours(v: u64, pid: u32) -> Option<c_int> {
    (v != 0 && (v >> 32) as u32 == pid).then_some((v & 0xffff_ffff) as u32 as c_int)
}

/// Records the calling thread as this process's registration thread.
pub(crate) fn set_registration_thread() {
    // SAFETY: gettid has no preconditions.
    THREAD_TID.store(unsafe { libc::gettid() }, Ordering::Release);
}

/// In the child after fork: the parent's registration thread is not this process's (fork copies
/// only the calling thread).
pub(crate) fn forget_registration_thread() {
    THREAD_TID.store(0, Ordering::Release);
}

/// True on this process's registration thread (a system call: for rare paths only).
pub(crate) fn in_registration_thread() -> bool {
    let tid = THREAD_TID.load(Ordering::Acquire);
    // SAFETY: gettid has no preconditions.
    tid != 0 && unsafe { libc::gettid() } == tid
}
