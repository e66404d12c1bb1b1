//! Listening sockets for a balanced group, and checks on sockets handed to us by others.
use std::{
    io,
    mem::{size_of, zeroed},
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

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

/// The address in a `sockaddr_storage` filled in by the kernel.
pub fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn set_int_opt(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a valid c_int of the stated size.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

fn get_int_opt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len describe a valid c_int buffer.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &mut value as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    cvt(ret).map(|_| value)
}

/// A TCP listener on `addr` with SO_REUSEPORT, ready to join a balanced group.
///
/// IPv6 sockets are V6ONLY, so an IPv4 and an IPv6 group on the same port stay apart.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call; the result is owned right away.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if addr.is_ipv6() {
        set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = to_sockaddr(&addr);
    // SAFETY: storage/len describe a valid sockaddr of this family.
    cvt(unsafe { libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) })?;
    // SAFETY: plain listen(2) on our socket.
    cvt(unsafe { libc::listen(fd, backlog) })?;
    Ok(TcpListener::from(owned))
}

/// What a socket is, as far as a balanced group cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketFacts {
    pub local: Option<SocketAddr>,
    pub tcp: bool,
    pub listening: bool,
    pub reuseport: bool,
}

/// Reads the facts of `fd` from the kernel (fails if it is not a socket).
pub fn socket_facts(fd: BorrowedFd<'_>) -> io::Result<SocketFacts> {
    let sock_type = get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = get_int_opt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let listening = get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
    let reuseport = get_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 0;
    // SAFETY: zeroed storage and its size, filled by the kernel.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ret = unsafe {
        libc::getsockname(fd.as_raw_fd(), &mut storage as *mut _ as *mut libc::sockaddr, &mut len)
    };
    cvt(ret)?;
    Ok(SocketFacts {
        local: from_sockaddr(&storage),
        tcp: sock_type == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP,
        listening,
        reuseport,
    })
}
