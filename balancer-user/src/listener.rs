//! Listening sockets for a balanced group, and checks on sockets handed to us by others.
//!
//! Sockets go through socket2; [`to_sockaddr`] stays for callers that need a raw address.
use std::{
    io,
    mem::{size_of, zeroed},
    net::{SocketAddr, TcpListener},
    os::fd::BorrowedFd,
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// `struct sockaddr_storage` for `addr`, and its length.
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A TCP listener on `addr` with SO_REUSEPORT, ready to join a balanced group.
///
/// IPv6 sockets are V6ONLY, so an IPv4 and an IPv6 group on the same port stay apart.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// What a socket is, as far as a balanced group cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketFacts {
    pub local: Option<SocketAddr>,
    /// An AF_INET or AF_INET6 stream socket whose protocol is TCP.
    pub tcp: bool,
    /// An AF_INET or AF_INET6 stream socket, whatever its protocol (TCP, MPTCP, ...): one whose
    /// close can linger.
    pub inet_stream: bool,
    pub listening: bool,
    pub reuseport: bool,
}

/// Reads the facts of `fd` from the kernel (fails if it is not a socket).
pub fn socket_facts(fd: BorrowedFd<'_>) -> io::Result<SocketFacts> {
    let socket = SockRef::from(&fd);
    let inet = matches!(socket.domain()?, Domain::IPV4 | Domain::IPV6);
    let inet_stream = inet && socket.r#type()? == Type::STREAM;
    let tcp = inet_stream && socket.protocol()? == Some(Protocol::TCP);
    Ok(SocketFacts {
        local: socket.local_addr()?.as_socket(),
        tcp,
        inet_stream,
        listening: socket.is_listener()?,
        reuseport: socket.reuse_port()?,
    })
}
