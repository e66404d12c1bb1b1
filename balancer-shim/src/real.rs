//! The real libc functions behind the hooks, found with `dlsym(RTLD_NEXT)` once (in the
//! constructor, while nothing else runs: dlsym may allocate) and cached in atomics.
//!
//! Invariant: a hook calls the real function through [`Real`], never the libc symbol of the same
//! name (which would be the hook itself).

use core::{
    ffi::{c_int, c_uint, c_void},
    ptr,
    sync::atomic::{AtomicPtr, Ordering},
};

macro_rules! real {
    ($slot:ident, $name:literal, $ty:ty) => {
        static $slot: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
        impl Real {
            #[allow(non_snake_case)]
            #[inline(always)]
            pub(crate) fn $slot() -> $ty {
                let mut p = $slot.load(Ordering::Relaxed);
                if p.is_null() {
                    // SAFETY: dlsym with a NUL-terminated name.
                    p = unsafe {
                        libc::dlsym(libc::RTLD_NEXT, concat!($name, "\0").as_ptr().cast())
                    };
                    if p.is_null() {
                        // Without the real function nothing can work; make the failure obvious.
                        // SAFETY: abort has no preconditions.
                        unsafe { libc::abort() };
                    }
                    $slot.store(p, Ordering::Relaxed);
                }
                // SAFETY: the symbol `$name` of the next object has this C signature.
                unsafe { core::mem::transmute::<*mut c_void, $ty>(p) }
            }
        }
    };
}

/// The real functions: `Real::CLOSE()(fd)` calls libc's `close`.
pub(crate) struct Real;
real!(SOCKET, "socket", unsafe extern "C" fn(c_int, c_int, c_int) -> c_int);
real!(BIND, "bind", unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int);
real!(LISTEN, "listen", unsafe extern "C" fn(c_int, c_int) -> c_int);
real!(
    ACCEPT,
    "accept",
    unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int
);
real!(
    ACCEPT4,
    "accept4",
    unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t, c_int) -> c_int
);
real!(
    EPOLL_CTL,
    "epoll_ctl",
    unsafe extern "C" fn(c_int, c_int, c_int, *mut libc::epoll_event) -> c_int
);
real!(
    EPOLL_WAIT,
    "epoll_wait",
    unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int
);
real!(
    EPOLL_PWAIT,
    "epoll_pwait",
    unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        c_int,
        *const libc::sigset_t,
    ) -> c_int
);
real!(POLL, "poll", unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int);
real!(
    SELECT,
    "select",
    unsafe extern "C" fn(
        c_int,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::timeval,
    ) -> c_int
);
real!(CLOSE, "close", unsafe extern "C" fn(c_int) -> c_int);
real!(DUP2, "dup2", unsafe extern "C" fn(c_int, c_int) -> c_int);
real!(DUP3, "dup3", unsafe extern "C" fn(c_int, c_int, c_int) -> c_int);
real!(WRITE, "write", unsafe extern "C" fn(c_int, *const c_void, usize) -> isize);
real!(WRITEV, "writev", unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> isize);
real!(SEND, "send", unsafe extern "C" fn(c_int, *const c_void, usize, c_int) -> isize);
real!(
    SENDTO,
    "sendto",
    unsafe extern "C" fn(
        c_int,
        *const c_void,
        usize,
        c_int,
        *const libc::sockaddr,
        libc::socklen_t,
    ) -> isize
);
real!(SENDMSG, "sendmsg", unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> isize);
real!(SENDFILE, "sendfile", unsafe extern "C" fn(c_int, c_int, *mut i64, usize) -> isize);
real!(SENDFILE64, "sendfile64", unsafe extern "C" fn(c_int, c_int, *mut i64, usize) -> isize);
real!(READ, "read", unsafe extern "C" fn(c_int, *mut c_void, usize) -> isize);
real!(READ_CHK, "__read_chk", unsafe extern "C" fn(c_int, *mut c_void, usize, usize) -> isize);
real!(READV, "readv", unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> isize);
real!(RECV, "recv", unsafe extern "C" fn(c_int, *mut c_void, usize, c_int) -> isize);
real!(
    RECV_CHK,
    "__recv_chk",
    unsafe extern "C" fn(c_int, *mut c_void, usize, usize, c_int) -> isize
);
real!(
    RECVFROM,
    "recvfrom",
    unsafe extern "C" fn(
        c_int,
        *mut c_void,
        usize,
        c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> isize
);
real!(
    RECVFROM_CHK,
    "__recvfrom_chk",
    unsafe extern "C" fn(
        c_int,
        *mut c_void,
        usize,
        usize,
        c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> isize
);
real!(RECVMSG, "recvmsg", unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> isize);

type CloseRangeFn = unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
static CLOSE_RANGE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// Resolves every real function now (the constructor calls it: dlsym may allocate).
pub(crate) fn resolve_all() {
    let _ = (Real::SOCKET(), Real::BIND(), Real::LISTEN(), Real::ACCEPT(), Real::ACCEPT4());
    let _ = (
        Real::EPOLL_CTL(),
        Real::EPOLL_WAIT(),
        Real::EPOLL_PWAIT(),
        Real::POLL(),
        Real::SELECT(),
        Real::CLOSE(),
        Real::DUP2(),
        Real::DUP3(),
    );
    let _ = (Real::WRITE(), Real::WRITEV(), Real::SEND(), Real::SENDTO(), Real::SENDMSG());
    let _ = (Real::SENDFILE(), Real::SENDFILE64(), Real::READ(), Real::READ_CHK(), Real::READV());
    let _ =
        (Real::RECV(), Real::RECV_CHK(), Real::RECVFROM(), Real::RECVFROM_CHK(), Real::RECVMSG());
    // SAFETY: dlsym with a NUL-terminated name; a null result is handled by real_close_range.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"close_range".as_ptr()) };
    CLOSE_RANGE.store(p, Ordering::Relaxed);
}

/// libc's `close_range`, or the raw system call on a libc without it.
///
/// # Safety
/// As `close_range(2)`: closing descriptors that other code still uses is the caller's business.
pub(crate) unsafe fn real_close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let mut p = CLOSE_RANGE.load(Ordering::Relaxed);
    if p.is_null() {
        // SAFETY: dlsym with a NUL-terminated name.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"close_range".as_ptr()) };
        if p.is_null() {
            // SAFETY: the close_range system call with the caller's arguments.
            return unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) } as c_int;
        }
        CLOSE_RANGE.store(p, Ordering::Relaxed);
    }
    // SAFETY: the symbol close_range has this C signature; arguments are the caller's.
    unsafe { core::mem::transmute::<*mut c_void, CloseRangeFn>(p)(first, last, flags) }
}
