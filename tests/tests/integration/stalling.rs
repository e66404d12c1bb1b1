//! Peers that try to stall, outlive or outweigh the registry (issue 11): lingering sockets behind
//! a registration or inside a Unix socket, idle and unregistered connections, departures under a
//! connect flood. The registry thread keeps serving, departures are processed at once, and what
//! a peer leaves behind is closed in time. Each test runs in a private network namespace.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::net::UnixDatagram},
    time::{Duration, Instant},
};

use balancer_common::protocol::Status;
use balancer_user::listener::bind_reuseport;
use integration_tests::{
    apps::{free_port, serial, wait_until, TempDir},
    shim_client::{connect, register_and_hold},
};
use rustix::net::{ipproto, socket, AddressFamily, Protocol, SocketType};

use super::hostile::{msg, start, start_with, still_serving};

fn setsockopt_int(fd: i32, level: i32, opt: i32, value: i32) {
    // SAFETY: a c_int option value of the stated size, on a descriptor we own.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as _,
        )
    };
    assert_eq!(r, 0, "setsockopt {opt}: {}", std::io::Error::last_os_error());
}

/// A connected stream socket of `protocol` (TCP or MPTCP) on the loopback, its peer and the
/// listener.
fn connected(protocol: Protocol) -> (TcpStream, TcpStream, TcpListener) {
    let stream = || socket(AddressFamily::INET, SocketType::STREAM, Some(protocol)).unwrap();
    let server = stream();
    rustix::net::bind(&server, &SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    rustix::net::listen(&server, 16).unwrap();
    let server = TcpListener::from(server);
    let client = stream();
    rustix::net::connect(&client, &server.local_addr().unwrap()).unwrap();
    let (peer, _) = server.accept().unwrap();
    (TcpStream::from(client), peer, server)
}

/// A connected TCP socket with unsent data and `SO_LINGER {1, secs}`: closing its last reference
/// blocks for `secs`. Returns it and the server side (which never reads: keep it open).
fn lingering_socket(secs: i32) -> (TcpStream, TcpStream, TcpListener) {
    lingering_socket_of(ipproto::TCP, secs)
}

/// [`lingering_socket`] of `protocol`: MPTCP sockets linger as TCP ones do.
fn lingering_socket_of(protocol: Protocol, secs: i32) -> (TcpStream, TcpStream, TcpListener) {
    let (client, peer, server) = connected(protocol);
    setsockopt_int(peer.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
    setsockopt_int(client.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 4096);
    client.set_nonblocking(true).unwrap();
    let chunk = [0x55u8; 65536];
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(5);
    use std::io::Write;
    loop {
        match (&client).write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Full; give the window a moment, and stop when it stays full.
                std::thread::sleep(Duration::from_millis(50));
                match (&client).write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("filling the send buffer: {e}"),
                }
            }
            Err(e) => panic!("filling the send buffer: {e}"),
        }
        assert!(Instant::now() < deadline, "the send buffer never filled ({sent} bytes sent)");
    }
    assert!(sent > 0);
    let linger = libc::linger { l_onoff: 1, l_linger: secs };
    // SAFETY: a struct linger of the stated size, on a descriptor we own.
    let r = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as _,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    (client, peer, server)
}

/// Sends one datagram on `conn`, with `fds` attached, without waiting; false if refused.
fn send_on(conn: &impl AsRawFd, data: &[u8], fds: &[i32]) -> bool {
    let bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    // SAFETY: msghdr, iovec and control buffer outlive the sendmsg call that reads them.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if !fds.is_empty() {
            hdr.msg_control = cbuf.as_mut_ptr().cast();
            hdr.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>().add(i), *fd);
            }
        }
        libc::sendmsg(conn.as_raw_fd(), &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) >= 0
    }
}

/// Sends `fd` to the registry in a registration message and closes our copy at once, so that
/// the registry's copy (in flight, then received) is the last reference.
fn hand_over_and_close(path: &std::path::Path, fd: TcpStream) -> std::os::fd::OwnedFd {
    let conn = connect(path).unwrap();
    assert!(send_on(&conn, &msg(), &[fd.as_raw_fd()]), "sendmsg");
    drop(fd);
    conn
}

/// Trick (a): a worker registers, then sends an empty message (which reads as its leaving)
/// and, behind it, a message carrying a lingering socket: the registry closes the connection
/// with that message still queued, and the close frees the socket in the closing thread.
/// Returns what must stay open, and whether the second message was queued in time.
fn lingering_behind_a_registration(
    path: &std::path::Path,
    addr: SocketAddr,
) -> (Vec<Box<dyn std::any::Any>>, bool) {
    let listener = bind_reuseport(addr, 16).unwrap();
    let (client, peer, server) = lingering_socket(60);
    let (reply, conn) = register_and_hold(path, &msg(), listener.as_raw_fd());
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    let landed = send_on(&conn, b"", &[]) && send_on(&conn, b"x", &[client.as_raw_fd()]);
    drop(client);
    (vec![Box::new(listener), Box::new(conn), Box::new(peer), Box::new(server)], landed)
}

/// Trick (b): a unix socket with a message carrying a lingering socket queued on it, handed
/// over as the worker's socket: refused, and closing it frees the lingering socket.
fn lingering_inside_a_unix_socket(path: &std::path::Path) -> Vec<Box<dyn std::any::Any>> {
    let (client, peer, server) = lingering_socket(60);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(send_on(&ours, b"x", &[client.as_raw_fd()]), "queueing on the socketpair");
    drop(client);
    let conn = connect(path).unwrap();
    assert!(send_on(&conn, &msg(), &[theirs.as_raw_fd()]), "sendmsg");
    drop(theirs);
    let mut reply = [0u8; 256];
    // SAFETY: reads into a local buffer from a descriptor we own.
    let n = unsafe { libc::recv(conn.as_raw_fd(), reply.as_mut_ptr().cast(), 256, 0) };
    assert!(n > 0, "no reply to a registration with a unix socket");
    let reply = balancer_common::protocol::Reply::decode(&reply[..n as usize]).unwrap();
    assert_ne!(reply.status(), Status::Ok, "a unix socket was registered as a worker's");
    vec![Box::new(ours), Box::new(conn), Box::new(peer), Box::new(server)]
}

#[test]
fn a_lingering_socket_does_not_freeze_the_registry() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-linger");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path = registry.socket_path().to_path_buf();
    // Three tries at each trick: one that lands is enough to stall a registry that closes peer
    // descriptors on its own thread, or a closer that closes them as they are (for 60 s each).
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut landed = 0;
    for _ in 0..3 {
        // The socket itself, handed over.
        let (client, peer, server) = lingering_socket(60);
        let conn = hand_over_and_close(&path, client);
        keep.extend([Box::new(conn) as Box<dyn std::any::Any>, Box::new(peer), Box::new(server)]);
        // (a) queued behind a registration.
        let (k, ok) = lingering_behind_a_registration(&path, addr);
        keep.extend(k);
        landed += ok as usize;
        // (b) queued inside a unix socket handed over.
        keep.extend(lingering_inside_a_unix_socket(&path));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(landed > 0, "trick (a) never queued its second message: the test proves nothing");
    // A legitimate worker still registers, and quickly.
    let started = Instant::now();
    let listener = bind_reuseport(addr, 16).unwrap();
    let (reply, conn) = register_and_hold(&path, &msg(), listener.as_raw_fd());
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "registration took {:?} after the linger trick",
        started.elapsed()
    );
    // Departures are still processed.
    let departures = || registry.counters().departures.load(std::sync::atomic::Ordering::Relaxed);
    let before = departures();
    drop(conn);
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(2), || departures() > before),
        "the departure was not processed within 2 s"
    );
    // And the copy the registry held of a later worker's socket is closed when it leaves (a
    // stuck closer keeps it open, and with it the socket in the group).
    let other = bind_reuseport(addr, 16).unwrap();
    let (r1, c1) = register_and_hold(&path, &msg(), listener.as_raw_fd());
    let (r2, _c2) = register_and_hold(&path, &msg(), other.as_raw_fd());
    assert_eq!((r1.status(), r2.status()), (Status::Ok, Status::Ok));
    drop(c1);
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(2), || {
            references(listener.as_raw_fd()) == 1
        }),
        "the registry still holds a departed worker's socket 2 s later: its closer is stuck"
    );
    assert!(registry.is_running(), "the registry reports itself stuck");
    // And it stops promptly.
    let started = Instant::now();
    registry.stop();
    assert!(started.elapsed() < Duration::from_secs(6), "stop took {:?}", started.elapsed());
    drop(keep);
}

/// Reads the registry's reply on `conn`.
fn reply_on(conn: &impl AsRawFd) -> balancer_common::protocol::Reply {
    let mut reply = [0u8; 256];
    // SAFETY: reads into a local buffer from a descriptor we own.
    let n = unsafe { libc::recv(conn.as_raw_fd(), reply.as_mut_ptr().cast(), 256, 0) };
    assert!(n > 0, "no reply: {}", std::io::Error::last_os_error());
    balancer_common::protocol::Reply::decode(&reply[..n as usize]).unwrap()
}

/// Issue 19: the closer defused (`SO_LINGER {1, 0}`) only sockets whose protocol is TCP, so an
/// MPTCP socket (protocol 262) with unsent data and a long linger closed as it was and held a
/// closer thread for its whole linger: one registration carrying more of them than there are
/// closer threads (8) held every thread for a minute, and every later close (a departed worker's
/// socket, which leaves the group only then) waited behind them.
#[test]
fn lingering_mptcp_sockets_do_not_hold_the_closer() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-mptcp");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path = registry.socket_path().to_path_buf();
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut lingering = Vec::new();
    for _ in 0..12 {
        let (client, peer, server) = lingering_socket_of(ipproto::MPTCP, 60);
        lingering.push(client);
        keep.extend([Box::new(peer) as Box<dyn std::any::Any>, Box::new(server)]);
    }
    // One registration carrying all twelve (refused: one descriptor is expected). Our copies close
    // right after the send, so the registry's are the last references.
    let conn = connect(&path).unwrap();
    let raw: Vec<i32> = lingering.iter().map(AsRawFd::as_raw_fd).collect();
    assert!(send_on(&conn, &msg(), &raw), "sendmsg: {}", std::io::Error::last_os_error());
    drop(lingering);
    assert_eq!(reply_on(&conn).status(), Status::NoDescriptor);
    // A genuine worker registers promptly.
    let started = Instant::now();
    let listener = bind_reuseport(addr, 16).unwrap();
    let (reply, held) = register_and_hold(&path, &msg(), listener.as_raw_fd());
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "registration took {:?}",
        started.elapsed()
    );
    // Nothing waits to be closed: the twelve closed at once.
    let backlog = || registry.counters().closing_backlog.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(2), || backlog() == 0),
        "{} of the peer's descriptors still wait to be closed 2 s later (lingering MPTCP sockets \
         hold the closer threads)",
        backlog()
    );
    // A departed worker's socket is closed at once: it leaves the group.
    let other = bind_reuseport(addr, 16).unwrap();
    let (r, _c) = register_and_hold(&path, &msg(), other.as_raw_fd());
    assert_eq!(r.status(), Status::Ok, "{}", r.reason());
    drop(held);
    assert!(
        wait_until(Duration::from_secs(2), || references(listener.as_raw_fd()) == 1),
        "the registry still holds a departed worker's socket 2 s later: its closer is stuck"
    );
    assert!(registry.is_running(), "the registry reports itself stuck");
    registry.stop();
    drop(keep);
}

#[test]
fn unregistered_connections_are_capped_and_timed_out() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-pending");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start_with(&dir, addr, |o| {
        o.max_pending_per_uid = 10;
        o.register_timeout = Duration::from_secs(1);
    });
    let idle: Vec<_> = (0..30).map(|_| connect(registry.socket_path()).unwrap()).collect();
    let closed = || registry.counters().pending_closed.load(std::sync::atomic::Ordering::Relaxed);
    // 20 over the cap are closed at once, the other 10 when their second is up.
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(3), || closed() >= 30),
        "{} of 30 idle connections closed",
        closed()
    );
    // Closed on the peer's side too: a read sees the end.
    // (The registry hands them to its closer thread, which closes them a moment later.)
    for c in &idle {
        assert!(
            integration_tests::shim_client::closed_within(c, Duration::from_secs(2)),
            "an idle connection is still open 2 s after the registry closed it"
        );
    }
    still_serving(&registry, addr);
}

/// How many of this process's descriptors refer to the same socket as `fd`.
fn references(fd: i32) -> usize {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| *l == target)
        .count()
}

#[test]
fn a_departed_worker_socket_is_closed_at_once_and_a_parked_one_after_its_time() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-park");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start_with(&dir, addr, |o| o.park_timeout = Duration::from_secs(2));
    let path = registry.socket_path().to_path_buf();
    let first = bind_reuseport(addr, 16).unwrap();
    let second = bind_reuseport(addr, 16).unwrap();
    let (r1, c1) = register_and_hold(&path, &msg(), first.as_raw_fd());
    let (r2, c2) = register_and_hold(&path, &msg(), second.as_raw_fd());
    assert_eq!((r1.status(), r2.status()), (Status::Ok, Status::Ok));
    assert_eq!(references(first.as_raw_fd()), 2, "the registry keeps a copy while registered");
    // The first worker leaves (the shim closes its connection when the app closes the listener):
    // the registry's copy goes at once, so the socket leaves the group when the app's does.
    drop(c1);
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(1), || {
            references(first.as_raw_fd()) == 1
        }),
        "the registry still holds the departed worker's socket"
    );
    // The last worker leaves: its socket is parked (kept listening), then closed after 2 s.
    drop(c2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(references(second.as_raw_fd()), 2, "the last socket was not parked");
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(4), || {
            references(second.as_raw_fd()) == 1
        }),
        "the parked socket was not closed after park_timeout"
    );
    assert_eq!(registry.counters().parked_expired.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_connect_flood_does_not_starve_departures() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-flood");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path = registry.socket_path().to_path_buf();
    let listener = bind_reuseport(addr, 16).unwrap();
    let (reply, conn) = register_and_hold(&path, &msg(), listener.as_raw_fd());
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    // Four threads connect and close as fast as they can, for 3 s.
    let flood_end = Instant::now() + Duration::from_secs(3);
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < flood_end {
                    if connect(&path).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let departures = || registry.counters().departures.load(std::sync::atomic::Ordering::Relaxed);
    let before = departures();
    let left = Instant::now();
    drop(conn);
    let processed =
        integration_tests::apps::wait_until(Duration::from_millis(1500), || departures() > before);
    let took = left.elapsed();
    let mut healthy = true;
    while Instant::now() < flood_end {
        healthy &= registry.is_running();
        std::thread::sleep(Duration::from_millis(50));
    }
    let connects: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(connects > 1000, "only {connects} connections in 3 s: no flood to speak of");
    assert!(processed, "the departure was not processed within 1.5 s of a connect flood");
    assert!(took < Duration::from_millis(1500), "the departure took {took:?}");
    assert!(healthy, "the registry reported itself stuck during the flood");
    eprintln!("{connects} connections in 3 s; departure processed after {took:?}");
}

/// Sends one message on `conn` carrying `count` copies of `fd` (SCM_RIGHTS: at most 253).
fn send_copies(conn: &impl AsRawFd, data: &[u8], fd: i32, count: usize) -> bool {
    let size = (count * std::mem::size_of::<i32>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    // SAFETY: msghdr, iovec and control buffer outlive the sendmsg call that reads them; the
    // control buffer has room for `count` descriptors.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&hdr);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size) as usize;
        let data = libc::CMSG_DATA(c).cast::<i32>();
        for i in 0..count {
            std::ptr::write_unaligned(data.add(i), fd);
        }
        libc::sendmsg(conn.as_raw_fd(), &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) >= 0
    }
}

/// `fd` queued inside `levels` unix sockets, each queued on the next (deeper than the closer
/// reads when `levels` is 5): closing the outermost closes `fd` in the closing thread. Returns
/// the outermost and the sending ends (keep them open).
fn nested(fd: std::os::fd::OwnedFd, levels: usize) -> (std::os::fd::OwnedFd, Vec<UnixDatagram>) {
    let mut keep = Vec::new();
    let mut inner = fd;
    for _ in 0..levels {
        let (a, b) = UnixDatagram::pair().unwrap();
        assert!(send_on(&b, b"x", &[inner.as_raw_fd()]), "queueing on the socketpair");
        keep.push(b);
        inner = a.into();
    }
    (inner, keep)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The controller's descriptor limit (soft and hard).
const BUDGET_NOFILE: usize = 512;

/// Starts `reuselb run` on `addr` with [`BUDGET_NOFILE`] descriptors at most.
fn run_with_few_descriptors(dir: &TempDir, addr: SocketAddr) -> integration_tests::apps::Proc {
    integration_tests::apps::reuselb_run_with_nofile(dir.path(), addr, BUDGET_NOFILE, &[])
}

/// Issue 19: a peer stalls every closer thread (lingering sockets nested deeper than the closer
/// reads), then floods registrations carrying 253 descriptors each. The registry stops reading
/// at its closer's budget instead of letting its descriptor table fill (where `accept` fails and
/// the kernel closes descriptors inside `recvmsg`), still processes hang-ups, and takes a
/// genuine worker again once the stalls end.
#[test]
fn stalled_closes_stop_reading_before_descriptors_run_out() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("stalling-budget");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut run = run_with_few_descriptors(&dir, addr);
    let socket = dir.path().join("shim.sock");
    let pid = run.pid();
    let worker_socket = bind_reuseport(addr, 16).unwrap();
    let (reply, worker) = register_and_hold(&socket, &msg(), worker_socket.as_raw_fd());
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    let started = Instant::now();
    // Every closer thread (8) stuck in a close of up to 20 s.
    let mut stalls: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..8 {
        let (client, peer, server) = lingering_socket(20);
        let (outer, senders) = nested(client.into(), 5);
        let conn = connect(&socket).unwrap();
        assert!(send_on(&conn, &msg(), &[outer.as_raw_fd()]), "sendmsg");
        drop(outer);
        stalls.extend([Box::new(peer) as Box<dyn std::any::Any>, Box::new(server)]);
        stalls.push(Box::new(senders));
        conns.push(conn);
    }
    let spawned = || run.log_text().matches("starting another").count();
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(15), || spawned() >= 7),
        "the closer did not reach 8 stuck threads: {}",
        run.log_tail(20)
    );
    // The flood: 8 registrations of 253 descriptors each, four times the descriptor limit.
    let null = std::fs::File::open("/dev/null").unwrap();
    for _ in 0..8 {
        let conn = connect(&socket).unwrap();
        assert!(send_copies(&conn, &msg(), null.as_raw_fd(), 253), "sending 253 descriptors");
        conns.push(conn);
    }
    let mut most = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        most = most.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let stalled_for = started.elapsed();
    let log = run.log_text();
    eprintln!("controller descriptors at most {most} of {BUDGET_NOFILE} ({stalled_for:?} in)");
    assert!(stalled_for < Duration::from_secs(18), "too slow to test within the lingers");
    assert!(
        most < BUDGET_NOFILE * 3 / 4,
        "the controller held {most} descriptors of {BUDGET_NOFILE}: {}",
        run.log_tail(20)
    );
    assert!(log.contains("not accepting or reading registrations"), "{}", run.log_tail(20));
    assert!(!log.contains("Too many open files"), "{}", run.log_tail(20));
    // A departure is still processed while reading stops.
    drop(worker);
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(2), || run
            .log_text()
            .contains("closed its registration")),
        "a departure waited while reading stopped: {}",
        run.log_tail(20)
    );
    drop(conns);
    // The stalls end (the receivers' close resets the lingering sockets), and a genuine worker
    // registers again.
    drop(stalls);
    let mut registered = None;
    integration_tests::apps::wait_until(Duration::from_secs(25), || {
        let Ok(conn) = connect(&socket) else { return false };
        let sent = integration_tests::shim_client::send_registration(
            &conn,
            &msg(),
            worker_socket.as_raw_fd(),
        );
        let reply = integration_tests::shim_client::next_reply(&conn, Duration::from_secs(2));
        if sent.is_ok() && reply.is_some_and(|r| r.status() == Status::Ok) {
            registered = Some(conn);
        }
        registered.is_some()
    });
    let tail = run.log_tail(20);
    run.signal(libc::SIGKILL);
    run.wait_timeout(Duration::from_secs(5));
    assert!(registered.is_some(), "no worker registered after the stalls ended: {tail}");
    assert!(run.log_text().contains("accepting and reading registrations again"), "{tail}");
}
