//! The worker side of the registration protocol, raw: any bytes, any descriptors, so tests can
//! send the controller what a real shim would and what a hostile process might.
use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use balancer_common::protocol::Reply;

/// A SOCK_SEQPACKET connection to the registration socket at `socket`, as the shim opens.
pub fn connect(socket: &Path) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls; the descriptor is owned right away.
    unsafe {
        let s = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(s);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, c) in addr.sun_path.iter_mut().zip(socket.as_os_str().as_bytes()) {
            *d = *c as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + socket.as_os_str().len() + 1)
            as libc::socklen_t;
        if libc::connect(s, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(owned)
    }
}

/// Sends one datagram on `conn` with `fds` attached, and returns the raw reply (empty if the
/// controller closed the connection without answering).
fn send_and_receive(conn: &OwnedFd, msg: &[u8], fds: &[RawFd]) -> io::Result<Vec<u8>> {
    let flags = match send(conn, msg, fds) {
        Ok(()) => 0,
        // Kept for a controller that closes a refused connection before the peer sends (this
        // one keeps it until the message: hostile::a_refused_peer_that_reads_late_still_gets_the
        // _refusal fails on a send error); the refusal would still be queued for it to read.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
            libc::MSG_DONTWAIT
        }
        Err(e) => return Err(e),
    };
    receive(conn, flags)
}

/// Sends one datagram on `conn` with `fds` attached.
fn send(conn: &OwnedFd, msg: &[u8], fds: &[RawFd]) -> io::Result<()> {
    // SAFETY: msghdr, iovec and control buffer all outlive the sendmsg call that reads them.
    unsafe {
        let mut iov =
            libc::iovec { iov_base: msg.as_ptr() as *mut libc::c_void, iov_len: msg.len() };
        let space = libc::CMSG_SPACE((fds.len() * 4) as u32) as usize;
        let mut cbuf = vec![0u64; space.div_ceil(8)];
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if !fds.is_empty() {
            hdr.msg_control = cbuf.as_mut_ptr().cast();
            hdr.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>().add(i), *fd);
            }
        }
        if libc::sendmsg(conn.as_raw_fd(), &hdr, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Receives one datagram on `conn` (empty if the controller closed the connection).
fn receive(conn: &OwnedFd, flags: libc::c_int) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 512];
    // SAFETY: buf outlives the call, which writes at most buf.len() bytes into it.
    let n = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf[..n as usize].to_vec())
}

fn decode(reply: &[u8]) -> Reply {
    assert!(!reply.is_empty(), "no reply");
    Reply::decode(reply).expect("a valid reply")
}

/// Sends one registration datagram, decodes the reply and closes the connection (which, for an
/// accepted registration, is the worker leaving again).
pub fn register_raw(socket: &Path, msg: &[u8], fds: &[RawFd]) -> Reply {
    let conn = connect(socket).expect("connecting to the registry");
    decode(&send_and_receive(&conn, msg, fds).expect("talking to the registry"))
}

/// Registers like a live worker: the connection stays open (closing it is how a worker leaves)
/// and is returned with the reply.
pub fn register_and_hold(socket: &Path, msg: &[u8], fd: RawFd) -> (Reply, OwnedFd) {
    let conn = connect(socket).expect("connecting to the registry");
    let reply = decode(&send_and_receive(&conn, msg, &[fd]).expect("talking to the registry"));
    (reply, conn)
}

/// Sends one registration datagram with `fd` attached on `conn` without waiting for the reply
/// (as a worker that sends before the controller has answered a message before it).
pub fn send_registration(conn: &OwnedFd, msg: &[u8], fd: RawFd) -> io::Result<()> {
    send(conn, msg, &[fd])
}

/// The next reply on `conn`, waiting up to `timeout`; `None` if none came or the controller
/// closed the connection without one.
pub fn next_reply(conn: &OwnedFd, timeout: std::time::Duration) -> Option<Reply> {
    let mut pfd = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: pfd outlives the call; one entry.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    if ready <= 0 {
        return None;
    }
    let reply = receive(conn, libc::MSG_DONTWAIT).ok()?;
    (!reply.is_empty()).then(|| decode(&reply))
}

/// Whether the controller closes `conn` within `timeout`: a read without waiting sees the end
/// of the stream (not "nothing yet", not a reset).
pub fn closed_within(conn: &OwnedFd, timeout: std::time::Duration) -> bool {
    crate::apps::wait_until(timeout, || {
        let mut b = [0u8; 8];
        // SAFETY: reads into a local buffer from a descriptor the caller owns.
        let n =
            unsafe { libc::recv(conn.as_raw_fd(), b.as_mut_ptr().cast(), 8, libc::MSG_DONTWAIT) };
        n == 0
    })
}

/// The uid the tests' peers of another user take (nobody): one that may not register unless a
/// test allows it.
pub const NOBODY: u32 = 65534;

/// Runs `f` on a thread of its own whose real, effective and saved uids are `uid` (root drops
/// them for that thread alone: credentials are per thread at the system-call level), and returns
/// what it returns: a peer of another uid. Connections it opens keep `uid` as their peer
/// credentials after the thread ends.
pub fn as_uid<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: a raw setresuid on this thread alone, which ends when `f` returns.
        let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        assert_eq!(ret, 0, "setresuid({uid}): {}", io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
