//! Classification of descriptors and the socket split: an inherited listening socket of a
//! balanced address is replaced, at the same descriptor number, by this process's own socket.

use core::{
    ffi::c_int,
    mem::{size_of, zeroed},
    net::SocketAddr,
    sync::atomic::Ordering,
};

use crate::{
    config::{addr_index, config},
    log::{errno, shim_log},
    real::Real,
    registration::start_thread,
    state::{
        entry, my_pid, BACKLOG, FDS, MAX_FDS, OWN_FD, ST_NOT_BALANCED, ST_SPLIT, ST_SPLITTING,
        ST_SPLIT_FAILED,
    },
};

/// Backlog of an own socket when the original's `listen` was not seen.
const DEFAULT_BACKLOG: c_int = 128;

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

pub(crate) fn int_opt(fd: c_int, level: c_int, opt: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut c_int).cast(), &mut len) };
    (r == 0).then_some(v)
}

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

/// The balanced address index of `fd` if it is a (possibly shut down) listening TCP socket on a
/// balanced address. Accepted connections share the local address: they have a peer.
fn classify(fd: c_int) -> Option<usize> {
    if config().n_addrs == 0 {
        return None;
    }
    let idx = addr_index(&sockname(fd)?)?;
    if int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into our storage.
    let r =
        unsafe { libc::getpeername(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
    if r == 0 {
        return None;
    }
    Some(idx)
}

/// Makes sure `fd`, if it is an inherited listener of a balanced address, has been replaced by
/// this process's own socket. Fast path: one atomic load.
#[inline(always)]
pub(crate) fn ensure_split(fd: c_int) {
    if fd < 0 || fd as usize >= MAX_FDS {
        return;
    }
    let e = FDS[fd as usize].load(Ordering::Acquire);
    if (e >> 32) as u32 == my_pid() && (e >> 8) & 0xff != ST_SPLITTING {
        return;
    }
    let _ = std::panic::catch_unwind(|| ensure_split_slow(fd));
}

#[cold]
fn ensure_split_slow(fd: c_int) {
    let slot = &FDS[fd as usize];
    let pid = my_pid();
    loop {
        let e = slot.load(Ordering::Acquire);
        if (e >> 32) as u32 == pid {
            if (e >> 8) & 0xff == ST_SPLITTING {
                // Another thread of this process is splitting this socket: wait for it.
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
                continue;
            }
            return;
        }
        let Some(idx) = classify(fd) else {
            let _ = slot.compare_exchange(
                e,
                entry(pid, ST_NOT_BALANCED, 0),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            return;
        };
        if slot
            .compare_exchange(e, entry(pid, ST_SPLITTING, idx), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let ok = split(fd, idx);
        slot.store(entry(pid, if ok { ST_SPLIT } else { ST_SPLIT_FAILED }, idx), Ordering::Release);
        if ok {
            OWN_FD[idx].store(((pid as u64) << 32) | fd as u64, Ordering::Release);
            start_thread();
        }
        return;
    }
}

/// Replaces the inherited listener at `fd` with this process's own socket on the same address.
fn split(fd: c_int, idx: usize) -> bool {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into our storage.
    let r =
        unsafe { libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
    if r != 0 {
        return false;
    }
    let family = ss.ss_family as c_int;
    // SAFETY: fcntl queries on a descriptor number; an invalid one gives -1.
    let (fl, fdfl) = unsafe { (libc::fcntl(fd, libc::F_GETFL), libc::fcntl(fd, libc::F_GETFD)) };
    if fl < 0 || fdfl < 0 {
        return false;
    }
    // SAFETY: socket() with constant arguments.
    let new = unsafe { Real::SOCKET()(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if new < 0 {
        shim_log!("split of fd {fd}: socket: {}", errno());
        return false;
    }
    let fail = |what: &str| {
        shim_log!("split of fd {fd}: {what}: {}; this process keeps the shared socket", errno());
        // SAFETY: `new` is our own socket, not yet visible to anyone else.
        unsafe { Real::CLOSE()(new) };
        false
    };
    set_int_opt(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    if !set_int_opt(new, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1) {
        return fail("SO_REUSEPORT");
    }
    if family == libc::AF_INET6 {
        let v6only = int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0);
        set_int_opt(new, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only);
    }
    // Options that accepted connections inherit from their listener.
    for (level, opt) in [
        (libc::IPPROTO_TCP, libc::TCP_NODELAY),
        (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    ] {
        if let Some(v) = int_opt(fd, level, opt) {
            if v != 0 {
                set_int_opt(new, level, opt, v);
            }
        }
    }
    // SAFETY: binds our socket to the address getsockname gave (`len` bytes of `ss`).
    if unsafe { Real::BIND()(new, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return fail("bind (was the original socket bound without SO_REUSEPORT?)");
    }
    let backlog = match BACKLOG[idx].load(Ordering::Relaxed) {
        b if b > 0 => b,
        _ => DEFAULT_BACKLOG,
    };
    // SAFETY: listen on our own socket.
    if unsafe { Real::LISTEN()(new, backlog) } != 0 {
        return fail("listen");
    }
    // SAFETY: sets a status flag of our own socket.
    let nonblock = || unsafe { libc::fcntl(new, libc::F_SETFL, libc::O_NONBLOCK) };
    if fl & libc::O_NONBLOCK != 0 && nonblock() != 0 {
        return fail("O_NONBLOCK");
    }
    // Take the shared original out of the reuseport group (in every process: the open file is
    // shared). Its queued connections move to the workers' sockets; later workers inherit it dead
    // and still split. ENOTCONN: an earlier worker already did it.
    // SAFETY: shutdown of the inherited listener, which is what this split is for.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    let cloexec = if fdfl & libc::FD_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    // SAFETY: replaces the descriptor `fd` (the inherited listener) with our own socket.
    if unsafe { Real::DUP3()(new, fd, cloexec) } < 0 {
        return fail("dup3");
    }
    // SAFETY: `new` is our own descriptor, duplicated at `fd` now.
    unsafe { Real::CLOSE()(new) };
    if let Some(addr) = config().addrs[idx] {
        shim_log!("own listening socket on {addr} (fd {fd}, backlog {backlog})");
    }
    true
}
