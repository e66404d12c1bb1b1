//! The exported read and write hooks: where a connection answers its request, and where a
//! kept-alive connection starts the next one (see [`crate::accounting`]).
//!
//! Each hook is one load of the descriptor's mark before the real call for any descriptor that is
//! not an accepted connection of a balanced socket; a write is counted before the real call, so
//! that the count is down by the time the client has the answer and places its next connection.
//! Both the plain and the fortified (`__read_chk`, ...) entry points are covered: Debian builds
//! uWSGI with `_FORTIFY_SOURCE`.

use core::ffi::{c_int, c_void};

use crate::{
    accounting::{on_read, on_write},
    real::Real,
};

/// # Safety
/// As `write(2)`.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: usize) -> isize {
    on_write(fd);
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::WRITE()(fd, buf, n) }
}

/// # Safety
/// As `writev(2)`.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> isize {
    on_write(fd);
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::WRITEV()(fd, iov, cnt) }
}

/// # Safety
/// As `send(2)`.
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> isize {
    on_write(fd);
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::SEND()(fd, buf, n, flags) }
}

/// # Safety
/// As `sendto(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: usize,
    flags: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> isize {
    on_write(fd);
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::SENDTO()(fd, buf, n, flags, addr, len) }
}

/// # Safety
/// As `sendmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
    on_write(fd);
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::SENDMSG()(fd, msg, flags) }
}

/// # Safety
/// As `sendfile(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendfile(out: c_int, inp: c_int, off: *mut i64, n: usize) -> isize {
    on_write(out);
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::SENDFILE()(out, inp, off, n) }
}

/// # Safety
/// As `sendfile64(2)` (the same call on 64-bit targets).
#[no_mangle]
pub unsafe extern "C" fn sendfile64(out: c_int, inp: c_int, off: *mut i64, n: usize) -> isize {
    on_write(out);
    // SAFETY: the caller's arguments, passed through.
    unsafe { Real::SENDFILE64()(out, inp, off, n) }
}

/// # Safety
/// As `read(2)`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: usize) -> isize {
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::READ()(fd, buf, n) };
    on_read(fd, r);
    r
}

/// # Safety
/// As `__read_chk` (glibc's fortified `read`).
#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, n: usize, buflen: usize) -> isize {
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::READ_CHK()(fd, buf, n, buflen) };
    on_read(fd, r);
    r
}

/// # Safety
/// As `readv(2)`.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> isize {
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::READV()(fd, iov, cnt) };
    on_read(fd, r);
    r
}

/// # Safety
/// As `recv(2)`.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: usize, flags: c_int) -> isize {
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::RECV()(fd, buf, n, flags) };
    on_read_unless_peek(fd, r, flags);
    r
}

/// # Safety
/// As `__recv_chk` (glibc's fortified `recv`).
#[no_mangle]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: usize,
    buflen: usize,
    flags: c_int,
) -> isize {
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::RECV_CHK()(fd, buf, n, buflen, flags) };
    on_read_unless_peek(fd, r, flags);
    r
}

/// # Safety
/// As `recvfrom(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> isize {
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::RECVFROM()(fd, buf, n, flags, addr, len) };
    on_read_unless_peek(fd, r, flags);
    r
}

/// # Safety
/// As `__recvfrom_chk` (glibc's fortified `recvfrom`).
#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: usize,
    buflen: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> isize {
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::RECVFROM_CHK()(fd, buf, n, buflen, flags, addr, len) };
    on_read_unless_peek(fd, r, flags);
    r
}

/// # Safety
/// As `recvmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    // SAFETY: the caller's arguments, passed through.
    let r = unsafe { Real::RECVMSG()(fd, msg, flags) };
    on_read_unless_peek(fd, r, flags);
    r
}

/// A peek leaves the data where it is: the read that takes it is the one that counts.
#[inline(always)]
fn on_read_unless_peek(fd: c_int, r: isize, flags: c_int) {
    if flags & libc::MSG_PEEK == 0 {
        on_read(fd, r);
    }
}
