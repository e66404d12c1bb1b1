//! One datagram with one descriptor attached (SCM_RIGHTS), each way, with stack buffers only.
//!
//! Invariants: the receive buffer holds as many descriptors as one message can carry
//! (`SCM_MAX_FD`), so the kernel never closes surplus ones inside `recvmsg` (in the caller's
//! thread, which may be a hook's). A received descriptor the caller has no room for, and every
//! one that came with an error, is [`dispose`]d, never closed here. Depends on `owned` only.

use core::{
    ffi::{c_int, c_void},
    mem::{size_of, zeroed},
    ptr,
};

use crate::owned::{dispose, SCM_MAX_FD};

/// CMSG_SPACE(SCM_MAX_FD * 4) on 64-bit Linux: a 16-byte header, the ints rounded up to 8.
const CMSG_CAP: usize =
    size_of::<libc::cmsghdr>() + (SCM_MAX_FD * size_of::<c_int>()).next_multiple_of(8);

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_CAP]);

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
