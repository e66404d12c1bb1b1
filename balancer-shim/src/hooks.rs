//! The exported hooks (`#[no_mangle]`): each does its bookkeeping and calls the real function.
//!
//! Rules: no panic crosses the C boundary (the slow paths run under `catch_unwind`), no
//! allocation, no blocking lock; the fast path of a hook is a few atomic loads. The waiting and
//! accepting hooks first swap in an own socket the registration thread registered late (see
//! [`crate::split`]); `accept` failing with EINVAL on a shared socket another worker shut down
//! splits right there and accepts again.

use core::{
    ffi::{c_int, c_uint},
    mem::{size_of, zeroed},
    ptr,
    sync::atomic::Ordering,
};

use crate::{
    accounting::{forget_fd, on_accepted},
    config::{addr_index, config},
    process::my_pid,
    real::{real_close_range, Real},
    sock::{from_storage, int_opt, set_int_opt, sockname},
    split::{ensure_split, record_epoll, rescue_dead_shared, swap_pending},
    state::{state_of, BACKLOG, FDS, MAX_FDS, ST_SHARED},
};

/// # Safety
/// As `socket(2)`.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed through.
    let fd = unsafe { Real::SOCKET()(domain, ty, protocol) };
    forget_fd(fd, false);
    fd
}

/// # Safety
/// As `bind(2)`: `addr` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn bind(
    fd: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> c_int {
    if !addr.is_null() && config().n_addrs > 0 {
        // SAFETY: the caller guarantees `addr` points to `len` readable bytes.
        let _ = std::panic::catch_unwind(|| unsafe { prepare_bind(fd, addr, len) });
    }
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::BIND()(fd, addr, len) }
}

/// Sets SO_REUSEADDR and SO_REUSEPORT on a TCP socket about to bind a balanced address.
///
/// # Safety
/// `addr` points to `len` readable bytes.
unsafe fn prepare_bind(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let n = (len as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: copies at most `len` bytes from the caller's address into our storage.
    unsafe {
        ptr::copy_nonoverlapping(
            addr.cast::<u8>(),
            (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
            n,
        )
    };
    let Some(a) = from_storage(&ss) else { return };
    if addr_index(&a).is_none()
        || int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return;
    }
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
}

/// # Safety
/// As `listen(2)`.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if config().n_addrs > 0 {
        let _ = std::panic::catch_unwind(|| match sockname(fd).and_then(|a| addr_index(&a)) {
            Some(idx) => BACKLOG[idx].store(backlog, Ordering::Relaxed),
            None => crate::notices::on_listen(fd),
        });
    }
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::LISTEN()(fd, backlog) }
}

/// # Safety
/// As `accept(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> c_int {
    swap_pending();
    ensure_split(fd);
    // SAFETY: the caller's arguments, passed through.
    let mut c = unsafe { Real::ACCEPT()(fd, addr, len) };
    if c < 0 && dead_listener_errno(last_errno()) && rescue_dead_shared(fd) {
        // SAFETY: as above, now on this process's own socket.
        c = unsafe { Real::ACCEPT()(fd, addr, len) };
    }
    if c >= 0 {
        on_accepted(fd, c);
    }
    c
}

/// # Safety
/// As `accept4(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: c_int,
) -> c_int {
    swap_pending();
    ensure_split(fd);
    // SAFETY: the caller's arguments, passed through.
    let mut c = unsafe { Real::ACCEPT4()(fd, addr, len, flags) };
    if c < 0 && dead_listener_errno(last_errno()) && rescue_dead_shared(fd) {
        // SAFETY: as above, now on this process's own socket.
        c = unsafe { Real::ACCEPT4()(fd, addr, len, flags) };
    }
    if c >= 0 {
        on_accepted(fd, c);
    }
    c
}

/// # Safety
/// As `epoll_ctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut libc::epoll_event,
) -> c_int {
    swap_pending();
    if op == libc::EPOLL_CTL_ADD {
        ensure_split(fd);
    }
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::EPOLL_CTL()(epfd, op, fd, event) };
    if r == 0 && fd >= 0 && (fd as usize) < MAX_FDS {
        let e = FDS[fd as usize].load(Ordering::Relaxed);
        if e != 0 && state_of(e) == ST_SHARED {
            let _ = std::panic::catch_unwind(|| record_epoll(epfd, op, fd, event));
        }
    }
    r
}

/// # Safety
/// As `epoll_wait(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: c_int,
) -> c_int {
    swap_pending();
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::EPOLL_WAIT()(epfd, events, maxevents, timeout) }
}

/// # Safety
/// As `epoll_pwait(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: c_int,
    sigmask: *const libc::sigset_t,
) -> c_int {
    swap_pending();
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::EPOLL_PWAIT()(epfd, events, maxevents, timeout, sigmask) }
}

/// What `accept` says on a listener that was shut down: EINVAL, or, when no descriptor is left
/// for the connection, the descriptor errors (the kernel checks those first).
fn dead_listener_errno(e: c_int) -> bool {
    matches!(e, libc::EINVAL | libc::EMFILE | libc::ENFILE)
}

/// errno of the last failed call on this thread.
fn last_errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// # Safety
/// As `poll(2)`: `fds` points to `nfds` entries.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    swap_pending();
    if !fds.is_null() {
        for i in 0..nfds as usize {
            // SAFETY: the caller guarantees `nfds` entries at `fds`.
            let p = unsafe { &*fds.add(i) };
            if p.events & libc::POLLIN != 0 {
                ensure_split(p.fd);
            }
        }
    }
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::POLL()(fds, nfds, timeout) };
    if r > 0 && !fds.is_null() {
        for i in 0..nfds as usize {
            // SAFETY: the caller guarantees `nfds` entries at `fds`.
            let p = unsafe { &*fds.add(i) };
            if p.revents & (libc::POLLHUP | libc::POLLERR) != 0 && is_shared(p.fd) {
                // A shared listener another process shut down: split now (or at least do not
                // let the caller spin on it).
                rescue_dead_shared(p.fd);
            }
        }
    }
    r
}

/// True if `fd` is a shared listener this process kept (one load).
#[inline(always)]
fn is_shared(fd: c_int) -> bool {
    fd >= 0
        && (fd as usize) < MAX_FDS
        && state_of(FDS[fd as usize].load(Ordering::Relaxed)) == ST_SHARED
}

/// # Safety
/// As `select(2)`.
#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    readfds: *mut libc::fd_set,
    writefds: *mut libc::fd_set,
    exceptfds: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    swap_pending();
    if !readfds.is_null() {
        for fd in 0..nfds.clamp(0, libc::FD_SETSIZE as c_int) {
            // SAFETY: `readfds` is the caller's set; fd is below FD_SETSIZE.
            if unsafe { libc::FD_ISSET(fd, readfds) } {
                ensure_split(fd);
            }
        }
    }
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::SELECT()(nfds, readfds, writefds, exceptfds, timeout) }
}

/// # Safety
/// As `close(2)`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    forget_fd(fd, true);
    // SAFETY: the caller's argument, passed through.
    unsafe { Real::CLOSE()(fd) }
}

/// # Safety
/// As `dup2(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if old != new {
        forget_fd(new, true);
    }
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::DUP2()(old, new) }
}

/// # Safety
/// As `dup3(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if old != new {
        forget_fd(new, true);
    }
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::DUP3()(old, new, flags) }
}

/// # Safety
/// As `close_range(2)`.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // A vfork child shares our memory and must not touch the parent's marks: close_range is rare
    // enough to afford a getpid here, unlike close.
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as u32;
    if flags as c_uint & libc::CLOSE_RANGE_CLOEXEC == 0 && me == my_pid() {
        let end = (last as u64).min(MAX_FDS as u64 - 1);
        let mut fd = first as u64;
        while fd <= end {
            forget_fd(fd as c_int, true);
            fd += 1;
        }
    }
    // SAFETY: the caller's arguments, passed through.
    unsafe { real_close_range(first, last, flags) }
}
