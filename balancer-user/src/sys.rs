//! The system calls the controller needs, in one place, over maintained crates (rustix, socket2).
//!
//! Every function returns [`Error`], which names the call that failed. What rustix and socket2 do
//! not offer (SO_NETNS_COOKIE, TCP_INFO's accept-queue figure) is a `getsockopt` here, each with
//! the reason it is sound. Nothing else in the crate calls libc for these.
//!
//! Invariants: no function here blocks (sockets are used with `MSG_DONTWAIT`, accepts are
//! non-blocking), and every descriptor received from a peer comes back as an [`OwnedFd`], so that
//! the caller decides where it is closed (the registry closes them off its thread).
use std::{
    io::{IoSlice, IoSliceMut},
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
    ptr::NonNull,
    time::Duration,
};

use rustix::{
    event::{EventfdFlags, PollFd, PollFlags},
    fs::StatFs,
    io::Errno,
    net::{
        AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
        SendAncillaryBuffer, SendAncillaryMessage, SendFlags, Shutdown, SocketAddrUnix,
        SocketFlags, SocketType,
    },
    process::{Pid, PidfdFlags},
};

/// A failed system call, named.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {source}")]
pub struct Error {
    pub call: &'static str,
    #[source]
    pub source: std::io::Error,
}

impl Error {
    fn new(call: &'static str, errno: Errno) -> Self {
        Self { call, source: errno.into() }
    }

    /// The errno, if the call failed with one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// EAGAIN/EWOULDBLOCK or EINTR: nothing to do now.
    pub fn is_transient(&self) -> bool {
        matches!(self.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
    }

    /// EMFILE/ENFILE/ENOBUFS/ENOMEM: out of descriptors or memory; back off.
    pub fn is_exhaustion(&self) -> bool {
        matches!(
            self.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn named(call: &'static str) -> impl FnOnce(Errno) -> Error {
    move |e| Error::new(call, e)
}

// ---------------------------------------------------------------------------------------------
// Unix sockets and descriptor passing

/// A bound, listening, non-blocking `SOCK_SEQPACKET` unix socket at `path`.
pub fn seqpacket_listen(path: &Path, backlog: i32) -> Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path).map_err(named("sockaddr_un"))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(named("socket"))?;
    rustix::net::bind(&fd, &addr).map_err(named("bind"))?;
    rustix::net::listen(&fd, backlog).map_err(named("listen"))?;
    Ok(fd)
}

/// True if something accepts connections at the unix `SOCK_SEQPACKET` socket `path`.
pub fn seqpacket_answers(path: &Path) -> bool {
    let Ok(addr) = SocketAddrUnix::new(path) else { return false };
    let Ok(fd) = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    ) else {
        return false;
    };
    rustix::net::connect(&fd, &addr).is_ok()
}

/// True if `path` fits in a unix socket address.
pub fn fits_sockaddr_un(path: &Path) -> bool {
    SocketAddrUnix::new(path).is_ok()
}

/// Accepts one connection, non-blocking and close-on-exec.
pub fn accept(listener: BorrowedFd<'_>) -> Result<OwnedFd> {
    rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
        .map_err(named("accept4"))
}

/// The peer's credentials at connect time (pid in our pid namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cred {
    pub pid: u32,
    pub uid: u32,
}

/// SO_PEERCRED. The pid is 0 when the peer lives in a pid namespace this process cannot see
/// (a container with a pid namespace of its own): the caller decides what that means.
pub fn peer_cred(fd: BorrowedFd<'_>) -> Result<Cred> {
    // Not rustix's socket_peercred: its Pid cannot be 0, so a peer from an unseen pid namespace
    // would come back as an error with no errno.
    let cred: libc::ucred = get_opt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, "SO_PEERCRED")?;
    Ok(Cred { pid: cred.pid.max(0) as u32, uid: cred.uid })
}

/// The most descriptors one message can carry (the kernel's SCM_MAX_FD): the receive buffer takes
/// them all, so the kernel never drops (closes) any in our thread.
pub const SCM_MAX_FD: usize = 253;

/// One message received with [`recv_with_fds`].
#[derive(Debug)]
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    /// Data or control data was cut.
    pub truncated: bool,
}

/// Receives one message and the descriptors attached to it (SCM_RIGHTS), without waiting.
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(
        fd,
        &mut iov,
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )
    .map_err(named("recvmsg"))?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated: msg.flags.intersects(ReturnFlags::CTRUNC | ReturnFlags::TRUNC),
    })
}

/// Sends one message, with `fd` attached (SCM_RIGHTS) if given, without waiting.
pub fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<()> {
    match fd {
        Some(fd) => send_with_fds(sock, data, &[fd]),
        None => send_with_fds(sock, data, &[]),
    }
}

/// Sends one message with up to two descriptors attached (SCM_RIGHTS, in this order), without
/// waiting.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::new("sendmsg", Errno::INVAL));
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )
    .map_err(named("sendmsg"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sockets handed over by peers

/// SO_LINGER {1, 0}: closing the last reference aborts instead of waiting for unsent data.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> Result<()> {
    rustix::net::sockopt::set_socket_linger(fd, Some(Duration::ZERO)).map_err(named("SO_LINGER"))
}

/// True if `fd` is a unix-domain socket.
pub fn is_unix_socket(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_domain(fd).is_ok_and(|d| d == AddressFamily::UNIX)
}

/// SO_ACCEPTCONN: the socket listens.
pub fn is_listening(fd: BorrowedFd<'_>) -> Result<bool> {
    rustix::net::sockopt::socket_acceptconn(fd).map_err(named("SO_ACCEPTCONN"))
}

/// FIONBIO: makes the open file non-blocking (for every holder of it: only for descriptors
/// about to be closed, whose accepts must not wait).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    rustix::io::ioctl_fionbio(fd, true).map_err(named("FIONBIO"))
}

/// shutdown(SHUT_RDWR).
pub fn shutdown(fd: BorrowedFd<'_>) -> Result<()> {
    rustix::net::shutdown(fd, Shutdown::Both).map_err(named("shutdown"))
}

/// SO_COOKIE: the kernel's id of a socket, which its holders cannot change.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> Result<u64> {
    rustix::net::sockopt::socket_cookie(fd).map_err(named("SO_COOKIE"))
}

/// A value the kernel fills in with getsockopt, whole or in part.
///
/// # Safety
///
/// Every bit pattern, all-zero included, must be a valid value: implement it only for C integers
/// and structs made of them.
unsafe trait PlainData: Sized {}

// SAFETY: an integer.
unsafe impl PlainData for u64 {}
// SAFETY: an integer.
unsafe impl PlainData for u32 {}
// SAFETY: three C integers (pid_t, uid_t, gid_t).
unsafe impl PlainData for libc::ucred {}
// SAFETY: C integers only (u8, u32 and u64 fields).
unsafe impl PlainData for libc::tcp_info {}

/// A socket option read into a `T` (all-zero where the kernel writes less); errors name `call`.
fn get_opt<T: PlainData>(
    fd: BorrowedFd<'_>,
    level: i32,
    opt: i32,
    call: &'static str,
) -> Result<T> {
    // SAFETY: all-zero is a valid T (PlainData).
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` and `len` describe a writable buffer of `len` bytes that outlives the call;
    // the kernel writes at most `len` bytes and updates `len`, and whatever it writes is a valid T
    // (PlainData).
    let ret = unsafe {
        libc::getsockopt(fd.as_raw_fd(), level, opt, (&mut value as *mut T).cast(), &mut len)
    };
    if ret < 0 {
        return Err(Error { call, source: std::io::Error::last_os_error() });
    }
    Ok(value)
}

/// SO_NETNS_COOKIE: the cookie of the network namespace the socket `fd` lives in.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> Result<u64> {
    get_opt::<u64>(fd, libc::SOL_SOCKET, libc::SO_NETNS_COOKIE, "SO_NETNS_COOKIE")
}

/// The cookie of this process's network namespace.
pub fn own_netns_cookie() -> Result<u64> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(named("socket"))?;
    netns_cookie(fd.as_fd())
}

/// Connections waiting in a listener's accept queue (TCP_INFO's `tcpi_unacked` on a listener);
/// 0 for a socket that does not listen.
pub fn accept_queue_len(fd: BorrowedFd<'_>) -> Result<u32> {
    let info: libc::tcp_info = get_opt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, "TCP_INFO")?;
    const TCP_LISTEN: u8 = 10;
    Ok(if info.tcpi_state == TCP_LISTEN { info.tcpi_unacked } else { 0 })
}

/// The uid that owns the socket `fd` (its inode's owner, `fstat`): the uid it was created as,
/// which is the one the kernel compares when the socket joins a reuseport group.
pub fn socket_owner_uid(fd: BorrowedFd<'_>) -> Result<u32> {
    rustix::fs::fstat(fd).map(|st| st.st_uid).map_err(named("fstat"))
}

/// The backlog a listener was given (`sk_max_ack_backlog`, TCP_INFO's `tcpi_sacked` on a
/// listener); `None` for a socket that does not listen.
pub fn listen_backlog(fd: BorrowedFd<'_>) -> Result<Option<u32>> {
    let info: libc::tcp_info = get_opt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, "TCP_INFO")?;
    const TCP_LISTEN: u8 = 10;
    Ok((info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_sacked))
}

/// A new listening TCP socket made like the TCP socket `like` (a listener, or one shut down), as
/// this process's uid and in its network namespace: same family and address (`getsockname`),
/// SO_REUSEADDR and SO_REUSEPORT, the same IPV6_V6ONLY, the options accepted connections inherit
/// (TCP_NODELAY, TCP_DEFER_ACCEPT, SO_KEEPALIVE), listening with `backlog`; close-on-exec,
/// blocking (the receiver sets its own status flags). What the shim's `create_own` does in a
/// worker, for a worker that cannot (see `registry::handover`).
pub fn listener_like(like: BorrowedFd<'_>, backlog: u32) -> Result<OwnedFd> {
    use socket2::{Domain, SockRef, Socket, Type};
    let io = |call: &'static str| move |source: std::io::Error| Error { call, source };
    let src = SockRef::from(&like);
    let addr = src.local_addr().map_err(io("getsockname"))?;
    let domain = addr.domain();
    let socket = Socket::new(domain, Type::STREAM, None).map_err(io("socket"))?;
    socket.set_reuse_address(true).map_err(io("SO_REUSEADDR"))?;
    socket.set_reuse_port(true).map_err(io("SO_REUSEPORT"))?;
    if domain == Domain::IPV6 {
        let v6only = src.only_v6().map_err(io("IPV6_V6ONLY"))?;
        socket.set_only_v6(v6only).map_err(io("IPV6_V6ONLY"))?;
    }
    if src.tcp_nodelay().map_err(io("TCP_NODELAY"))? {
        socket.set_tcp_nodelay(true).map_err(io("TCP_NODELAY"))?;
    }
    if src.keepalive().map_err(io("SO_KEEPALIVE"))? {
        socket.set_keepalive(true).map_err(io("SO_KEEPALIVE"))?;
    }
    let defer: u32 = get_opt(like, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT")?;
    if defer != 0 {
        set_int_opt(socket.as_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, defer as i32)
            .map_err(|source| Error { call: "TCP_DEFER_ACCEPT", source })?;
    }
    socket.bind(&addr).map_err(io("bind"))?;
    socket.listen(backlog.min(i32::MAX as u32) as i32).map_err(io("listen"))?;
    Ok(socket.into())
}

/// setsockopt of one C int.
fn set_int_opt(fd: BorrowedFd<'_>, level: i32, opt: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<i32>()` bytes from `value`, which outlives the call.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes, signals, events, polling

/// pidfd_open(2): a descriptor that becomes readable when `pid` exits.
pub fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    let pid = Pid::from_raw(pid as i32).ok_or(Error {
        call: "pidfd_open",
        source: std::io::Error::from_raw_os_error(libc::ESRCH),
    })?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(named("pidfd_open"))
}

/// A non-blocking eventfd, to wake a poll loop.
pub fn eventfd() -> Result<OwnedFd> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(named("eventfd"))
}

/// Adds one to an eventfd.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> Result<()> {
    rustix::io::write(fd, &1u64.to_ne_bytes()).map(drop).map_err(named("write(eventfd)"))
}

/// Resets an eventfd.
pub fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

/// A signal handler: it runs on whatever thread the signal interrupts, so it may only do what is
/// async-signal-safe (store to an atomic, call kill(2)).
pub type SignalHandler = extern "C" fn(libc::c_int);

/// sigaction(2): `handler` for each of `signals`, with an empty mask. With `restart`, the system
/// calls a signal interrupts are restarted (SA_RESTART); without, they fail with EINTR, which is
/// how a loop waiting in poll notices the signal at once. rustix offers no sigaction.
pub fn on_signals(signals: &[libc::c_int], handler: SignalHandler, restart: bool) -> Result<()> {
    for &sig in signals {
        // SAFETY: sigaction is plain data; all-zero is a valid starting value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = if restart { libc::SA_RESTART } else { 0 };
        // SAFETY: sa_mask is a valid sigset_t we own.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: installs a handler whose caller promises it is async-signal-safe (see
        // SignalHandler); the old action is not asked for (null).
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(Error { call: "sigaction", source: std::io::Error::last_os_error() });
        }
    }
    Ok(())
}

/// poll(2) for readability of `fds`, up to `timeout`; returns which ones are ready (readable,
/// hung up or in error). EINTR counts as "none ready".
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> Result<Vec<bool>> {
    let all: Vec<(BorrowedFd<'_>, bool)> = fds.iter().map(|f| (*f, true)).collect();
    poll_ready(&all, timeout)
}

/// Waits up to `timeout` for any of `fds` to be ready: readable (or hung up) for those with
/// `true`, only hung up or in error for those with `false`. Returns which are.
pub fn poll_ready(fds: &[(BorrowedFd<'_>, bool)], timeout: Duration) -> Result<Vec<bool>> {
    let flags = |read: bool| if read { PollFlags::IN } else { PollFlags::empty() };
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|(f, r)| PollFd::new(f, flags(*r))).collect();
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    match rustix::event::poll(&mut pfds, Some(&ts)) {
        Ok(_) => Ok(pfds.iter().map(|p| !p.revents().is_empty()).collect()),
        Err(Errno::INTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(Error::new("poll", e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared memory

/// Maps `len` bytes of `fd` shared and read-write.
pub fn map_shared(fd: BorrowedFd<'_>, len: usize) -> Result<NonNull<u8>> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a new mapping at an address the kernel chooses, so no existing memory is touched;
    // the kernel checks `len` against the object behind `fd`.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }
    .map_err(named("mmap"))?;
    NonNull::new(ptr.cast())
        .ok_or(Error { call: "mmap", source: std::io::Error::other("mapped at address 0") })
}

/// Unmaps what [`map_shared`] mapped.
///
/// # Safety
/// `ptr` and `len` must be a mapping made by [`map_shared`] that nothing refers to any more.
pub unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<()> {
    // SAFETY: the caller guarantees the mapping is ours and unused.
    unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) }.map_err(named("munmap"))
}

// ---------------------------------------------------------------------------------------------
// Capabilities and filesystems

/// The effective capabilities of this thread.
pub fn effective_capabilities() -> Result<rustix::thread::CapabilitySet> {
    rustix::thread::capabilities(None).map(|c| c.effective).map_err(named("capget"))
}

/// setns(2) into the network namespace `ns` (an open /proc/PID/ns/net or /run/netns/NAME), for
/// the calling thread only.
pub fn enter_netns(ns: BorrowedFd<'_>) -> Result<()> {
    rustix::thread::move_into_link_name_space(ns, Some(rustix::thread::LinkNameSpaceType::Network))
        .map_err(named("setns"))
}

/// BPF_FS_MAGIC from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// statfs(2).
pub fn statfs(path: &Path) -> Result<StatFs> {
    rustix::fs::statfs(path).map_err(named("statfs"))
}

/// True if `path` is on a BPF filesystem (where programs and maps can be pinned).
pub fn is_bpffs(path: &Path) -> bool {
    // `f_type`'s width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    statfs(path).is_ok_and(|st| st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a BPF filesystem at `path`.
pub fn mount_bpffs(path: &Path) -> Result<()> {
    rustix::mount::mount("bpf", path, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(named("mount"))
}

#[cfg(test)]
mod tests {
    use super::*;

    static SEEN: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

    extern "C" fn note(sig: libc::c_int) {
        SEEN.store(sig, std::sync::atomic::Ordering::Relaxed);
    }

    #[test]
    fn a_signal_reaches_its_handler() {
        on_signals(&[libc::SIGUSR2], note, false).unwrap();
        // SAFETY: raise takes a plain integer; SIGUSR2 now runs `note`, which only stores.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        assert_eq!(SEEN.load(std::sync::atomic::Ordering::Relaxed), libc::SIGUSR2);
        let e = on_signals(&[libc::SIGKILL], note, true).unwrap_err();
        assert_eq!((e.call, e.raw_os_error()), ("sigaction", Some(libc::EINVAL)));
    }

    #[test]
    fn errors_name_the_call() {
        let e = pidfd_open(0).unwrap_err();
        assert!(e.to_string().starts_with("pidfd_open: "), "{e}");
        let e = statfs(Path::new("/nonexistent/reuselb")).unwrap_err();
        assert!(e.to_string().starts_with("statfs: "), "{e}");
    }

    #[test]
    fn a_listener_like_another_joins_its_address() {
        let first = crate::listener::bind_reuseport("127.0.0.1:0".parse().unwrap(), 77).unwrap();
        let addr = first.local_addr().unwrap();
        let backlog = listen_backlog(first.as_fd()).unwrap();
        assert_eq!(backlog, Some(77));
        let second = listener_like(first.as_fd(), 77).unwrap();
        let facts = crate::listener::socket_facts(second.as_fd()).unwrap();
        assert_eq!(facts.local, Some(addr));
        assert!(facts.tcp && facts.listening && facts.reuseport, "{facts:?}");
        assert_eq!(listen_backlog(second.as_fd()).unwrap(), Some(77));
        assert_eq!(socket_owner_uid(second.as_fd()).unwrap(), rustix::process::geteuid().as_raw());
        // A socket that does not listen has no backlog to copy.
        shutdown(first.as_fd()).unwrap();
        assert_eq!(listen_backlog(first.as_fd()).unwrap(), None);
    }

    #[test]
    fn two_descriptors_travel_in_order() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let (x, y) = (eventfd().unwrap(), eventfd().unwrap());
        eventfd_signal(y.as_fd()).unwrap();
        send_with_fds(a.as_fd(), b"two", &[x.as_fd(), y.as_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(got.fds.len(), 2);
        let mut v = [0u8; 8];
        // The second one is `y`, the one signalled.
        assert!(rustix::io::read(&got.fds[0], &mut v).is_err());
        assert_eq!(rustix::io::read(&got.fds[1], &mut v).unwrap(), 8);
    }

    #[test]
    fn descriptors_travel_and_the_peer_is_named() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let ev = eventfd().unwrap();
        send_with_fd(a.as_fd(), b"hello", Some(ev.as_fd())).unwrap();
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.fds.len(), 1);
        assert!(!got.truncated);
        let cred = peer_cred(b.as_fd()).unwrap();
        assert_eq!(cred.pid, std::process::id());
        let e = recv_with_fds(b.as_fd(), &mut buf).unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}
