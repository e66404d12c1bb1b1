//! The shim's socket helpers: addresses and options of a descriptor, the high descriptor numbers
//! the shim keeps its own descriptors at, and a fresh listener made like an inherited one. Plain
//! libc calls on descriptors the caller names, with stack buffers only.
//!
//! Invariants: nothing here keeps state or knows about registrations or splits (it depends on
//! `owned`, `log` and `real` only); a helper that creates a descriptor either returns it (the
//! caller owns it) or has released it before returning.

use core::{
    ffi::c_int,
    mem::{size_of, zeroed},
    net::SocketAddr,
};

use crate::{
    log::{errno, shim_log},
    owned::{Disposal, Owned},
    real::Real,
};

/// The local address of socket `fd` (None: not a bound IPv4/IPv6 socket).
pub(crate) fn sockname(fd: c_int) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into our storage.
    let r =
        unsafe { libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
    if r != 0 {
        return None;
    }
    from_storage(&ss)
}

/// The IPv4/IPv6 address in `ss` (None for any other family).
pub(crate) fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((sin.sin_addr.s_addr.to_ne_bytes(), u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((sin6.sin6_addr.s6_addr, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

/// An int-valued socket option of `fd` (None: getsockopt failed).
pub(crate) fn int_opt(fd: c_int, level: c_int, opt: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut c_int).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// Sets an int-valued socket option of `fd`; true if it took.
pub(crate) fn set_int_opt(fd: c_int, level: c_int, opt: c_int, v: c_int) -> bool {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `v`.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const c_int).cast(),
            size_of::<c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// SO_COOKIE (linux/socket.h): the socket's unique id, the same through every duplicate.
const SO_COOKIE: c_int = 57;

/// The socket's SO_COOKIE (None: not a socket, or no cookie).
pub(crate) fn cookie(fd: c_int) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, SO_COOKIE, (&mut v as *mut u64).cast(), &mut len)
    };
    (r == 0 && v != 0).then_some(v)
}

/// Sets a timeout option (SO_RCVTIMEO, SO_SNDTIMEO) of socket `s` to `ms` milliseconds.
pub(crate) fn set_timeout(s: c_int, opt: c_int, ms: i64) {
    let tv = libc::timeval { tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000 };
    // SAFETY: setsockopt reads one timeval from our stack.
    unsafe {
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// True if this process runs as the uid that owns the socket `fd` (its inode's owner, the uid
/// the kernel compares when a socket joins a reuseport group).
pub(crate) fn owns_socket(fd: c_int) -> bool {
    // SAFETY: stat is plain data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: fstat writes one stat into our storage.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    // SAFETY: geteuid has no preconditions.
    ok && st.st_uid == unsafe { libc::geteuid() }
}

/// True if `fd` is a listening TCP socket with SO_REUSEPORT on the address of `shared`.
pub(crate) fn is_listener_like(fd: c_int, shared: c_int) -> bool {
    int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && int_opt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
        && int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
        && int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT) == Some(1)
        && sockname(fd).is_some()
        && sockname(fd) == sockname(shared)
}

/// Lowest descriptor number for the shim's own long-lived descriptors (controller connections,
/// private duplicates, pending sockets): far above what an app opens and closes by number
/// (CPython's subprocess, daemonizing code closing 3..N), below the descriptor limit.
pub(crate) fn high_fd_floor() -> c_int {
    // SAFETY: rlimit is plain data; getrlimit writes one.
    let mut rl: libc::rlimit = unsafe { zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 3;
    }
    let soft = rl.rlim_cur.min(1 << 20) as c_int;
    (soft / 4 * 3).clamp(3, 4096)
}

/// Moves our own descriptor `fd` to [`high_fd_floor`] or above (close-on-exec); keeps it where
/// it is if that fails.
pub(crate) fn move_high(fd: c_int) -> c_int {
    let floor = high_fd_floor();
    if fd >= floor {
        return fd;
    }
    // SAFETY: duplicates our own descriptor.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
    if high < 0 {
        return fd;
    }
    // SAFETY: our own descriptor, duplicated above.
    unsafe { Real::CLOSE()(fd) };
    high
}

/// A fresh listening socket on the address of `src` (an inherited listener), with its options,
/// O_NONBLOCK and `backlog`, at a high descriptor number; None (logged) if any step fails.
pub(crate) fn create_own(src: c_int, backlog: c_int) -> Option<c_int> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into our storage.
    let r = unsafe {
        libc::getsockname(src, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len)
    };
    if r != 0 {
        return None;
    }
    let family = ss.ss_family as c_int;
    // SAFETY: fcntl query on a descriptor number; an invalid one gives -1.
    let fl = unsafe { libc::fcntl(src, libc::F_GETFL) };
    if fl < 0 {
        return None;
    }
    // SAFETY: socket() with constant arguments.
    let new = unsafe { Real::SOCKET()(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if new < 0 {
        shim_log!("own socket for fd {src}: socket: {}", errno());
        return None;
    }
    // Our own socket, not yet visible to anyone else: closed on every failure below.
    let mut held = Owned::new();
    held.hold(new, Disposal::Close);
    let fail = |what: &str| {
        shim_log!("own socket for fd {src}: {what}: {}; keeping the shared socket", errno());
        None
    };
    set_int_opt(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    if !set_int_opt(new, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1) {
        return fail("SO_REUSEPORT");
    }
    if family == libc::AF_INET6 {
        let v6only = int_opt(src, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0);
        set_int_opt(new, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only);
    }
    copy_inherited_options(src, new);
    // SAFETY: binds our socket to the address getsockname gave (`len` bytes of `ss`).
    if unsafe { Real::BIND()(new, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return fail("bind (was the original socket bound without SO_REUSEPORT?)");
    }
    // SAFETY: listen on our own socket.
    if unsafe { Real::LISTEN()(new, backlog) } != 0 {
        return fail("listen");
    }
    // SAFETY: sets a status flag of our own socket.
    let nonblock = || unsafe { libc::fcntl(new, libc::F_SETFL, libc::O_NONBLOCK) };
    if fl & libc::O_NONBLOCK != 0 && nonblock() != 0 {
        return fail("O_NONBLOCK");
    }
    Some(move_high(held.take(new)))
}

/// Copies to `new` the options of listener `src` that accepted connections inherit.
fn copy_inherited_options(src: c_int, new: c_int) {
    for (level, opt) in [
        (libc::IPPROTO_TCP, libc::TCP_NODELAY),
        (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    ] {
        if let Some(v) = int_opt(src, level, opt) {
            if v != 0 {
                set_int_opt(new, level, opt, v);
            }
        }
    }
}
