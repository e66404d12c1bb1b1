//! One datagram with one descriptor attached (SCM_RIGHTS), each way, with stack buffers only;
//! and the disposal of descriptors a peer sent that the shim does not keep.
//!
//! Invariants: the receive buffer holds as many descriptors as one message can carry
//! (`SCM_MAX_FD`), so the kernel never closes surplus ones inside `recvmsg` (in the caller's
//! thread, which may be a hook's). A received descriptor is never closed in a hook's thread:
//! closing a lingering TCP socket or a FUSE file can block for as long as the peer likes, and
//! that thread is the app's. [`dispose`] sets SO_LINGER {1, 0} (a TCP socket then closes with a
//! reset at once) and hands the close to the registration thread ([`close_deferred`]).

use core::{
    ffi::{c_int, c_void},
    mem::{size_of, zeroed},
    ptr,
};

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{
    log::shim_log,
    real::Real,
    registration::in_registration_thread,
    state::{fd_if_ours, my_pid, tagged},
};

/// Most descriptors one SCM_RIGHTS message carries (the kernel's SCM_MAX_FD).
const SCM_MAX_FD: usize = 253;

/// CMSG_SPACE(SCM_MAX_FD * 4) on 64-bit Linux: a 16-byte header, the ints rounded up to 8.
const CMSG_CAP: usize =
    size_of::<libc::cmsghdr>() + (SCM_MAX_FD * size_of::<c_int>()).next_multiple_of(8);

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_CAP]);

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

/// Sends `data` on `s` with `fd` attached; sendmsg's result.
pub(crate) fn send_with_fd(s: c_int, data: &[u8], fd: c_int) -> isize {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut c_void, iov_len: data.len() };
    let mut cbuf = CmsgBuf([0; CMSG_CAP]);
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as usize;
    // SAFETY: the control buffer (CMSG_CAP bytes, 8-aligned) holds CMSG_SPACE(4) = 24 bytes, so the
    // first header and its data are inside it; iov and cbuf outlive sendmsg.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
        ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), fd);
        libc::sendmsg(s, &msg, libc::MSG_NOSIGNAL)
    }
}

/// Receives one message; returns its length (None on error/EOF), with the first attached
/// descriptors in `out` (in the order sent; -1 where none came). Any further descriptors are
/// [`dispose`]d, and so is every one on error/EOF.
pub(crate) fn recv_with_fds(s: c_int, buf: &mut [u8], out: &mut [c_int]) -> Option<usize> {
    out.fill(-1);
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = CmsgBuf([0; CMSG_CAP]);
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len();
    // SAFETY: iov and cbuf outlive the call; the kernel writes within their lengths.
    let n = unsafe { libc::recvmsg(s, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let mut kept = 0;
    // SAFETY: walks the control headers the kernel wrote into cbuf with the CMSG_* macros, which
    // stay within msg_controllen; descriptors received are ours to keep or close.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<c_int>();
                for k in 0..count {
                    let f = ptr::read_unaligned(data.cast::<c_int>().add(k));
                    if kept < out.len() {
                        out[kept] = f;
                        kept += 1;
                    } else {
                        dispose(f);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n <= 0 {
        for fd in out.iter_mut().filter(|fd| **fd >= 0) {
            dispose(*fd);
            *fd = -1;
        }
        return None;
    }
    Some(n as usize)
}
