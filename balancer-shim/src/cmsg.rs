//! One datagram with one descriptor attached (SCM_RIGHTS), each way, with stack buffers only.

use core::{
    ffi::{c_int, c_void},
    mem::{size_of, zeroed},
    ptr,
};

use crate::real::Real;

#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends `data` on `s` with `fd` attached; sendmsg's result.
pub(crate) fn send_with_fd(s: c_int, data: &[u8], fd: c_int) -> isize {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut c_void, iov_len: data.len() };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as usize;
    // SAFETY: the control buffer (64 bytes, 8-aligned) holds CMSG_SPACE(4) = 24 bytes, so the
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

/// Receives one message; returns its length (None on error/EOF) and the first attached fd (-1).
/// Any further descriptors are closed.
pub(crate) fn recv_with_fd(s: c_int, buf: &mut [u8]) -> (Option<usize>, c_int) {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len();
    // SAFETY: iov and cbuf outlive the call; the kernel writes within their lengths.
    let n = unsafe { libc::recvmsg(s, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let mut fd = -1;
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
                    if fd < 0 {
                        fd = f;
                    } else {
                        Real::CLOSE()(f);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n <= 0 {
        if fd >= 0 {
            // SAFETY: a descriptor we just received and own.
            unsafe { Real::CLOSE()(fd) };
        }
        return (None, -1);
    }
    (Some(n as usize), fd)
}
