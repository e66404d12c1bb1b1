//! What a broken or hostile process can send the controller: each gets a clear, counted
//! rejection; nothing crashes, no descriptor leaks, and the service keeps serving. Each test runs
//! in a private network namespace.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_common::{
    protocol::{Register, Status},
    Policy, MAX_SLOTS,
};
use balancer_user::{
    listener::bind_reuseport,
    registry::{Registry, RegistryOptions},
    Error, Group, GroupOptions,
};
use integration_tests::{
    apps::{free_port, serial, TempDir},
    shim_client::{
        as_uid, closed_within, connect, next_reply, register_and_hold, register_raw,
        send_registration, NOBODY,
    },
    NetNs,
};

pub(super) fn start(dir: &TempDir, addr: SocketAddr) -> Registry {
    let mut options = RegistryOptions::new(dir.path().join("shim.sock"));
    // World-writable, so the uid check (not the file mode) is what stops other users.
    options.socket_mode = 0o666;
    let group = Group::new(GroupOptions { policy: Policy::LeastLoaded, ..Default::default() })
        .unwrap_or_else(|e| {
            panic!("cannot load the SK_REUSEPORT program (these tests need root and BPF): {e}")
        });
    Registry::start(options, vec![(addr, group)]).expect("starting the registry")
}

/// How many of this process's descriptors refer to `socket`'s open file (`socket:[inode]`): the
/// socket itself and every copy received with a message. Only those: the other tests of this
/// binary run in the same process and open and close descriptors of their own meanwhile.
pub(super) fn start_with(
    dir: &TempDir,
    addr: SocketAddr,
    tune: impl FnOnce(&mut RegistryOptions),
) -> Registry {
    let mut options = RegistryOptions::new(dir.path().join("shim.sock"));
    options.socket_mode = 0o666;
    tune(&mut options);
    let group = Group::new(GroupOptions { policy: Policy::LeastLoaded, ..Default::default() })
        .unwrap_or_else(|e| {
            panic!("cannot load the SK_REUSEPORT program (these tests need root and BPF): {e}")
        });
    Registry::start(options, vec![(addr, group)]).expect("starting the registry")
}

fn open_fds_of(socket: &impl AsRawFd) -> usize {
    let link = |fd: &std::path::Path| std::fs::read_link(fd).ok();
    let target = link(std::path::Path::new(&format!("/proc/self/fd/{}", socket.as_raw_fd())));
    assert!(target.is_some(), "reading /proc/self/fd/{}", socket.as_raw_fd());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| link(&e.path()) == target)
        .count()
}

pub(super) fn msg() -> [u8; Register::SIZE] {
    Register::new(std::process::id(), 1).encode()
}

/// The service still takes a legitimate worker and serves a connection through it.
pub(super) fn still_serving(registry: &Registry, addr: SocketAddr) {
    let path = registry.socket_path().to_path_buf();
    // A refused socket of another uid on the same address closes on the registry's closer
    // thread a moment after the reply: until then SO_REUSEPORT (same uid only) refuses the bind.
    let deadline = Instant::now() + Duration::from_secs(2);
    let listener = loop {
        match bind_reuseport(addr, 16) {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("binding {addr} 2 s after the registry's last refusal: {e}"),
        }
    };
    let (reply, _conn) = register_and_hold(&path, &msg(), listener.as_raw_fd());
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    let _client = TcpStream::connect(addr).expect("the service stopped serving");
    // Bounded: with a program that selects nothing the connection lands elsewhere, and the test
    // must fail, not hang.
    listener.set_nonblocking(true).unwrap();
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(5), || listener.accept().is_ok()),
        "the registered worker did not get the connection within 5 s"
    );
}

#[test]
fn malformed_messages_and_descriptor_floods_are_rejected_without_leaks() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-messages");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path = registry.socket_path().to_path_buf();
    let listener = bind_reuseport(addr, 16).unwrap();
    // A message claiming another pid: the kernel's credentials decide, not the message.
    let (r, conn) = register_and_hold(&path, &Register::new(1, 1).encode(), listener.as_raw_fd());
    assert_eq!(r.status(), Status::Ok, "{}", r.reason());
    let pids: Vec<u32> =
        registry.service(addr).unwrap().group().slots().unwrap().iter().map(|s| s.pid).collect();
    assert_eq!(pids, vec![std::process::id()], "a worker registered under a pid it claimed");
    drop(conn);
    // Its socket stays parked in the registry (the last worker's), so count from here.
    let fds_before = open_fds_of(&listener);

    // Truncated, oversized, garbage.
    for bad in [&msg()[..8], &[0x42u8; 4096][..], b"GET / HTTP/1.0\r\n\r\n"] {
        let r = register_raw(&path, bad, &[listener.as_raw_fd()]);
        assert_eq!(r.status(), Status::BadMessage, "{} bytes: {}", bad.len(), r.reason());
    }
    // Two hundred descriptors where one is expected.
    let many = vec![listener.as_raw_fd(); 200];
    let r = register_raw(&path, &msg(), &many);
    assert_eq!(r.status(), Status::NoDescriptor, "{}", r.reason());

    assert_eq!(registry.counters().replies(Status::BadMessage), 3);
    assert_eq!(registry.counters().replies(Status::NoDescriptor), 1);
    // Every descriptor received with a rejected message was closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while open_fds_of(&listener) > fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        open_fds_of(&listener) <= fds_before,
        "descriptors leaked: {} open, {fds_before} before",
        open_fds_of(&listener)
    );
    still_serving(&registry, addr);
}

#[test]
fn another_uid_is_refused() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-uid");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path: PathBuf = registry.socket_path().to_path_buf();
    let reply = as_uid(NOBODY, move || {
        let listener = bind_reuseport(addr, 16).unwrap();
        register_raw(&path, &msg(), &[listener.as_raw_fd()])
    });
    assert_eq!(reply.status(), Status::UidNotAllowed, "{}", reply.reason());
    assert!(
        reply.reason().contains(&NOBODY.to_string()),
        "the reason should name the uid: {}",
        reply.reason()
    );
    assert_eq!(registry.counters().replies(Status::UidNotAllowed), 1);
    // Refused at accept, before anything is read: a connection that sends nothing gets the
    // refusal too (a registry that reads first would wait for a message, then time it out).
    let path: PathBuf = registry.socket_path().to_path_buf();
    let conn = as_uid(NOBODY, move || connect(&path).unwrap());
    let reply = next_reply(&conn, Duration::from_secs(2))
        .expect("no refusal within 2 s of connecting as another uid without sending anything");
    assert_eq!(reply.status(), Status::UidNotAllowed, "{}", reply.reason());
    assert_eq!(registry.counters().replies(Status::UidNotAllowed), 2);
    still_serving(&registry, addr);
}

#[test]
fn a_socket_from_another_network_namespace_is_refused() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-netns");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path = registry.socket_path().to_path_buf();
    let ns = NetNs::new().expect("creating a network namespace (tests must run as root)");
    // Same address and port, but in another namespace: another service entirely.
    let foreign: TcpListener = ns.run(|| bind_reuseport(addr, 16).unwrap());
    let r = register_raw(&path, &msg(), &[foreign.as_raw_fd()]);
    assert_eq!(r.status(), Status::WrongNamespace, "{}", r.reason());
    assert_eq!(registry.counters().replies(Status::WrongNamespace), 1);
    still_serving(&registry, addr);
}

#[test]
fn idle_connection_floods_do_not_block_registration() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-flood");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    // 300 connections that never say anything.
    let idle: Vec<_> = (0..300).filter_map(|_| connect(registry.socket_path()).ok()).collect();
    assert!(idle.len() >= 100, "only {} idle connections opened", idle.len());
    let start = Instant::now();
    still_serving(&registry, addr);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "registration took {:?} behind an idle flood",
        start.elapsed()
    );
    drop(idle);
}

#[test]
fn more_workers_than_slots_get_a_clear_refusal() {
    integration_tests::private_loopback();
    let _serial = serial();
    raise_fd_limit();
    let dir = TempDir::new("hostile-slots");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path = registry.socket_path().to_path_buf();
    let mut held = Vec::new();
    for i in 0..MAX_SLOTS {
        let listener = bind_reuseport(addr, 16).unwrap();
        let (r, conn) = register_and_hold(&path, &msg(), listener.as_raw_fd());
        assert_eq!(r.status(), Status::Ok, "worker {i}: {}", r.reason());
        held.push((listener, conn));
    }
    let one_too_many = bind_reuseport(addr, 16).unwrap();
    let r = register_raw(&path, &msg(), &[one_too_many.as_raw_fd()]);
    assert_eq!(r.status(), Status::NoFreeSlot, "{}", r.reason());
    assert_eq!(registry.counters().replies(Status::NoFreeSlot), 1);
    // A worker leaves; the next one gets its slot.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let l = bind_reuseport(addr, 16).unwrap();
        let (r, conn) = register_and_hold(&path, &msg(), l.as_raw_fd());
        if r.status() == Status::Ok {
            held.push((l, conn));
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was not given out: {}", r.reason());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pinning_outside_bpffs_names_the_path() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-pin");
    let pin_dir = dir.path().join("not-bpffs");
    let err =
        match Group::new(GroupOptions { pin_dir: Some(pin_dir.clone()), ..Default::default() }) {
            Ok(_) => panic!("pinning to {} (not a BPF filesystem) succeeded", pin_dir.display()),
            Err(e) => e,
        };
    assert!(matches!(err, Error::Pin { .. }), "{err}");
    assert!(
        err.to_string().contains(&pin_dir.display().to_string()),
        "the error should name the path: {err}"
    );
}

/// 256 workers hold a listener and a registration each, on both sides: over the default 1024.
fn raise_fd_limit() {
    // SAFETY: reads and raises this process's own soft limit up to its hard limit.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn another_layout_is_refused_and_ok_replies_name_the_load_map() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-layout");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path = registry.socket_path().to_path_buf();
    let listener = bind_reuseport(addr, 16).unwrap();
    let mut old = Register::new(std::process::id(), 1);
    old.layout = balancer_common::protocol::LAYOUT_VERSION.wrapping_add(1);
    let r = register_raw(&path, &old.encode(), &[listener.as_raw_fd()]);
    assert_eq!(r.status(), Status::LayoutMismatch, "{}", r.reason());
    assert_eq!(registry.counters().replies(Status::LayoutMismatch), 1);
    let (r, _conn) = register_and_hold(&path, &msg(), listener.as_raw_fd());
    assert_eq!(r.status(), Status::Ok, "{}", r.reason());
    let id = registry.service(addr).unwrap().group().loads_map_id();
    assert_ne!(id, 0, "the load map has no id");
    assert_eq!(r.map_id, id, "the reply names another map");
}

#[test]
fn a_huge_weight_is_capped() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-weight");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let listener = bind_reuseport(addr, 16).unwrap();
    let m = Register::new(std::process::id(), u32::MAX).encode();
    let (r, _conn) = register_and_hold(registry.socket_path(), &m, listener.as_raw_fd());
    assert_eq!(r.status(), Status::Ok, "{}", r.reason());
    let weights: Vec<u32> =
        registry.service(addr).unwrap().group().slots().unwrap().iter().map(|s| s.weight).collect();
    assert_eq!(weights, vec![balancer_user::registry::MAX_ASKED_WEIGHT]);
    assert_eq!(registry.counters().weights_capped.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// A refused peer that sends its registration only after the registry has answered it, or
/// reads the answer only later (a worker descheduled in between), sends and gets the refusal:
/// the registry keeps a refused connection until it has read its message. Before, it closed the
/// connection right after answering: a peer that sent after that got EPIPE (the shim then
/// reports the registry unreachable, not the refusal; this test failed so), and CI once saw a
/// reset (ECONNRESET) on the reply's read in `another_uid_is_refused`.
#[test]
fn a_refused_peer_that_reads_late_still_gets_the_refusal() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-late");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let path: PathBuf = registry.socket_path().to_path_buf();
    // Bound here, so that its copies the registry received can be counted after.
    let listener = bind_reuseport(addr, 16).unwrap();
    let fd = listener.as_raw_fd();
    // Late before its send (the registry has answered by then), and late after it.
    let outcomes: Vec<_> = [true, false, true, false]
        .into_iter()
        .map(|late_send| {
            let pause = || std::thread::sleep(Duration::from_millis(300));
            let path = path.clone();
            let conn = as_uid(NOBODY, move || connect(&path).expect("connecting to the registry"));
            if late_send {
                pause();
            }
            let sent = send_registration(&conn, &msg(), fd);
            if !late_send {
                pause();
            }
            let reply = next_reply(&conn, Duration::from_secs(2));
            // Then the registry closes it: its message was read.
            (sent.map_err(|e| e.to_string()), reply, closed_within(&conn, Duration::from_secs(1)))
        })
        .collect();
    for (i, (sent, reply, closed)) in outcomes.into_iter().enumerate() {
        let reply = reply.unwrap_or_else(|| panic!("attempt {i}: no refusal (send: {sent:?})"));
        assert_eq!(sent, Ok(()), "attempt {i}: the registration could not be sent");
        assert_eq!(reply.status(), Status::UidNotAllowed, "{}", reply.reason());
        assert!(
            closed,
            "attempt {i}: the refused connection was not closed within 1 s of its message"
        );
    }
    assert_eq!(registry.counters().replies(Status::UidNotAllowed), 4);
    // Every copy of the listener the refused messages carried was closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while open_fds_of(&listener) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open_fds_of(&listener), 1, "descriptors of refused messages leaked");
    drop(listener);
    still_serving(&registry, addr);
}

#[test]
fn removing_a_uid_evicts_its_workers() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-evict");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start_with(&dir, addr, |o| o.allowed_uids = vec![NOBODY]);
    let path: PathBuf = registry.socket_path().to_path_buf();
    let (reply, conn, listener) = as_uid(NOBODY, move || {
        let listener = bind_reuseport(addr, 16).unwrap();
        let (reply, conn) = register_and_hold(&path, &msg(), listener.as_raw_fd());
        (reply, conn, listener)
    });
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    let occupied = || registry.service(addr).unwrap().group().occupied_slots().count();
    assert_eq!(occupied(), 1);
    registry.set_allowed_uids(&[]);
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(2), || occupied() == 0),
        "the worker of a removed uid kept its slot"
    );
    assert_eq!(registry.counters().evictions.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Its registration connection is closed: the shim sees it.
    assert!(
        closed_within(&conn, Duration::from_secs(1)),
        "the evicted worker's connection stayed open"
    );
    drop(listener);
}

/// A peer connected while its uid was allowed, whose uid is removed before it sends its
/// registration, gets the refusal when it sends, as one refused at accept does (not a closed or
/// reset connection), and is closed once its message is read.
#[test]
fn a_pending_peer_of_a_removed_uid_gets_the_refusal() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-removed-pending");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start_with(&dir, addr, |o| o.allowed_uids = vec![NOBODY]);
    let path: PathBuf = registry.socket_path().to_path_buf();
    // The peer credentials are taken at connect: the connection stays nobody's after.
    let (listener, conn) = as_uid(NOBODY, move || {
        let listener = bind_reuseport(addr, 16).unwrap();
        (listener, connect(&path).expect("connecting to the registry"))
    });
    // Accepted as pending, then the uid goes; the peer sends once the registry has applied
    // that (at its next tick: it answers at once), or after 2 s if it never answers.
    std::thread::sleep(Duration::from_millis(300));
    registry.set_allowed_uids(&[]);
    integration_tests::apps::wait_until(Duration::from_secs(2), || {
        registry.counters().replies(Status::UidNotAllowed) == 1
    });
    let sent = send_registration(&conn, &msg(), listener.as_raw_fd()).map_err(|e| e.to_string());
    let reply = next_reply(&conn, Duration::from_secs(2));
    let closed = closed_within(&conn, Duration::from_secs(1));
    let reply = reply.unwrap_or_else(|| panic!("no refusal (send: {sent:?})"));
    assert_eq!(sent, Ok(()), "the registration could not be sent");
    assert_eq!(reply.status(), Status::UidNotAllowed, "{}", reply.reason());
    assert!(closed, "the refused connection was not closed within 1 s of its message");
    assert_eq!(registry.counters().replies(Status::UidNotAllowed), 1);
    // Another uid's listener on the address would keep root from binding it.
    drop(listener);
    still_serving(&registry, addr);
}

#[test]
fn a_detached_program_is_attached_again() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-detach");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let listener = bind_reuseport(addr, 16).unwrap();
    let (r, _conn) = register_and_hold(registry.socket_path(), &msg(), listener.as_raw_fd());
    assert_eq!(r.status(), Status::Ok, "{}", r.reason());
    let detach = || {
        let zero = 0i32;
        // SAFETY: SO_DETACH_REUSEPORT_BPF on a socket we own; the value is ignored.
        let r = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_DETACH_REUSEPORT_BPF,
                (&zero as *const i32).cast(),
                4,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // Any holder of a group's socket can do this.
    detach().expect("detaching the program (it was attached at registration)");
    assert_eq!(
        detach().map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOENT)),
        "nothing should be attached right after a detach"
    );
    // Within a reconciliation tick or two, the registry has put it back.
    std::thread::sleep(Duration::from_secs(1));
    detach().expect("the program was not attached again");
    drop(registry);
}

/// `reuselb run` (its registry on `dir/shim.sock`, its service on `addr`, `args` added, an app
/// that only sleeps) under a descriptor limit of 48, soft and hard: far fewer than a flood
/// needs. Waits for its registration socket.
fn run_out_of_descriptors(
    dir: &TempDir,
    addr: SocketAddr,
    args: &[&str],
) -> integration_tests::apps::Proc {
    let run = integration_tests::apps::reuselb_run_with_nofile(dir.path(), addr, 48, args);
    std::thread::sleep(Duration::from_millis(300));
    run
}

/// Whether the registry of `run` has logged running out of descriptors (and backing off).
fn backed_off(run: &integration_tests::apps::Proc) -> bool {
    run.log_text().contains("not accepting for")
}

#[test]
fn descriptor_exhaustion_backs_off_instead_of_spinning() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-emfile");
    let socket = dir.path().join("shim.sock");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut run = run_out_of_descriptors(&dir, addr, &[]);
    // The controller is prlimit's exec: the same pid.
    let pid = run.pid();
    let cpu_ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        // utime and stime: fields 14 and 15 of the line, 11 and 12 after the state.
        f[10] + f[11]
    };
    // Far more connections than it has descriptors, all held open.
    let flood: Vec<_> = (0..200).filter_map(|_| connect(&socket).ok()).collect();
    assert!(flood.len() >= 100, "only {} connections opened", flood.len());
    std::thread::sleep(Duration::from_millis(500));
    let t0 = cpu_ticks();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks() - t0;
    eprintln!("controller CPU while out of descriptors: {used} ticks in 3 s");
    let logged = backed_off(&run);
    let log_tail = run.log_tail(10);
    run.signal(libc::SIGKILL);
    run.wait_timeout(Duration::from_secs(5));
    // 3 s at 100 ticks a second: a spinning loop uses about 300.
    assert!(used < 30, "the controller used {used} CPU ticks in 3 s while out of descriptors");
    assert!(logged, "no back-off logged: {log_tail}");
    drop(flood);
}

/// Out of descriptors, the registry makes room by closing the connections it refused (another
/// uid's flood, which may not register in any case) before one that may still register. Before,
/// it closed the oldest connection not registered yet: a flood of refused connections closed a
/// worker's registration connection, and the worker went unbalanced.
#[test]
fn descriptor_exhaustion_closes_refused_connections_before_a_pending_one() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-emfile-refused");
    let socket = dir.path().join("shim.sock");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Root and another uid may register: the socket file is open to every uid (0666), so the
    // flood below reaches the registry and is refused by its uid, as in production.
    let mut run = run_out_of_descriptors(&dir, addr, &["--allow-uid", "0", "--allow-uid", "1"]);
    // A worker connects and has not sent its registration yet.
    let pending = connect(&socket).expect("connecting to the registry");
    std::thread::sleep(Duration::from_millis(300));
    // Another uid floods it: far more connections than it has descriptors, all held open.
    let path = socket.clone();
    let flood: Vec<_> =
        as_uid(NOBODY, move || (0..200).filter_map(|_| connect(&path).ok()).collect());
    assert!(flood.len() >= 100, "only {} connections opened", flood.len());
    // Within 2 s, so that the worker still sends within its 5 s to register.
    let ran_out = integration_tests::apps::wait_until(Duration::from_secs(2), || backed_off(&run));
    // A few rounds of backing off, each making room.
    std::thread::sleep(Duration::from_millis(500));
    let pending_closed = closed_within(&pending, Duration::ZERO);
    // The flood ends; the worker sends its registration.
    drop(flood);
    std::thread::sleep(Duration::from_millis(500));
    let listener = bind_reuseport(addr, 16).unwrap();
    let sent = send_registration(&pending, &msg(), listener.as_raw_fd());
    let reply = next_reply(&pending, Duration::from_secs(2));
    let log_tail = run.log_tail(10);
    run.signal(libc::SIGTERM);
    run.wait_timeout(Duration::from_secs(10));
    assert!(ran_out, "the registry did not run out of descriptors: {log_tail}");
    assert!(!pending_closed, "the pending worker's connection was closed to make room: {log_tail}");
    assert_eq!(sent.map_err(|e| e.to_string()), Ok(()), "the registration could not be sent");
    let reply = reply.unwrap_or_else(|| panic!("no reply to the registration: {log_tail}"));
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
}

/// A pin directory in bpffs for this test, removed when dropped.
struct BpfPins(PathBuf);

impl BpfPins {
    fn new(name: &str) -> Self {
        let p = PathBuf::from(format!("/sys/fs/bpf/reuselb-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
}

impl Drop for BpfPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pinned_group(dir: &std::path::Path) -> Group {
    Group::new(GroupOptions { pin_dir: Some(dir.to_owned()), ..Default::default() }).unwrap_or_else(
        |e| panic!("pinning a group at {} (needs bpffs and BPF): {e}", dir.display()),
    )
}

#[test]
fn pins_of_another_layout_are_replaced_not_adopted() {
    integration_tests::private_loopback();
    let _serial = serial();
    let top = BpfPins::new("layout");
    let mine = balancer_user::group::layout_dir(&top.0);
    // The same layout is adopted.
    drop(pinned_group(&top.0));
    assert!(mine.is_dir(), "pins are not under {}", mine.display());
    assert!(pinned_group(&top.0).adopted(), "a group of this layout was not adopted");

    // Pins of another layout (moved aside as if another controller had made them): removed.
    let other = top.0.join(format!("layout-{}", balancer_common::protocol::LAYOUT_VERSION + 1));
    std::fs::rename(&mine, &other).unwrap();
    let g = pinned_group(&top.0);
    assert!(!g.adopted(), "a group of another layout was adopted");
    assert!(!other.exists(), "the other layout's pins were left");
    assert!(mine.is_dir());
    drop(g);

    // Pins from before layouts were named (flat in the directory): removed too.
    for e in std::fs::read_dir(&mine).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), top.0.join(e.file_name())).unwrap();
    }
    std::fs::remove_dir(&mine).unwrap();
    let g = pinned_group(&top.0);
    assert!(!g.adopted(), "an unversioned pinned group was adopted");
    let left: Vec<_> = std::fs::read_dir(&top.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![mine.file_name().unwrap().to_string_lossy().into_owned()]);
}

#[test]
fn a_stuck_registry_shows_as_not_running() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-stuck");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let registry = start(&dir, addr);
    let listener = bind_reuseport(addr, 16).unwrap();
    let (r, _conn) = register_and_hold(registry.socket_path(), &msg(), listener.as_raw_fd());
    assert_eq!(r.status(), Status::Ok, "{}", r.reason());
    assert!(registry.is_running());
    // Holding the group's lock stops the loop at its next reconciliation (it reads the group),
    // as a registry thread stuck anywhere would be.
    let service = registry.service(addr).unwrap();
    {
        let _held = service.group();
        std::thread::sleep(Duration::from_secs(4));
        assert!(!registry.is_running(), "a registry stuck for 4 s still says it runs");
    }
    assert!(
        integration_tests::apps::wait_until(Duration::from_secs(2), || registry.is_running()),
        "the registry did not recover once unblocked"
    );
}

/// The slot each worker of `app` was last given, from its shim's log lines
/// (`reuselb-shim[PID]: registered ADDR as slot N (epoch E)`), and how many times it registered.
fn registrations(app: &integration_tests::apps::Proc, pid: u32) -> (usize, Option<u32>) {
    let prefix = format!("reuselb-shim[{pid}]: registered ");
    let slots: Vec<u32> = app
        .log_text()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split(" as slot ").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    (slots.len(), slots.last().copied())
}

/// Writes `pid` into `slot`'s pid field of the shared load table pinned at `pins`, as any worker
/// of the service can (the table is mapped read-write into each one).
fn write_shared_pid(pins: &std::path::Path, slot: u32, pid: u32) {
    use std::os::fd::AsFd;
    let path = balancer_user::group::layout_dir(pins).join(balancer_common::maps::LOADS);
    let map = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening the pinned load map {}: {e}", path.display()));
    let len = balancer_common::LOADS_MMAP_LEN;
    // SAFETY: maps the load map (an mmap-able array of exactly `len` bytes of value) shared,
    // as the shim does; the result is checked before use.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    let offset = balancer_common::table_offsets::pid(slot as usize);
    // SAFETY: `offset` lies inside the mapping and is 4-aligned (a u32 field of the 64-aligned
    // table); the mapping is ours and unmapped right after.
    unsafe {
        std::ptr::write_volatile(base.cast::<u8>().add(offset).cast::<u32>(), pid);
        libc::munmap(base, len);
    }
}

/// Issue 11.7: a worker that writes another worker's pid into the shared table's pid field
/// (swapping the two, so that the old pid matching was deterministic) before a controller
/// restart does not get that worker's slot when the next controller adopts the pinned group:
/// each worker gets its own slot back (adoption matches the socket's SO_COOKIE and the pid the
/// controller recorded in `OWNERS`, which workers cannot write), and the shared table's pids are
/// the controller's again.
#[test]
fn a_pid_written_into_the_shared_table_does_not_claim_a_slot_on_adoption() {
    use integration_tests::apps::{spawn_with_shim, wait_until};
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("hostile-owners");
    let pins = BpfPins::new("owners");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let socket = dir.path().join("shim.sock");
    let start_pinned = || {
        Registry::start(RegistryOptions::new(&socket), vec![(addr, pinned_group(&pins.0))])
            .expect("starting the registry")
    };
    let registry = start_pinned();
    let helper = super::failopen::build_helper(dir.path());
    let cmdline = super::failopen::helper_cmdline(&helper, addr, 2, false);
    let app = spawn_with_shim(&cmdline, addr, &socket, &dir.path().join("app.log"));
    let owners = |r: &Registry| -> Vec<(u32, u32)> {
        let g = r.service(addr).unwrap().group();
        g.slots().unwrap().iter().map(|s| (s.slot, s.pid)).collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || owners(&registry).len() == 2),
        "the two workers did not register: {:?}\n{}",
        owners(&registry),
        app.log_tail(20)
    );
    let before = owners(&registry);
    let [(victim_slot, victim), (attacker_slot, attacker)] = before[..] else { unreachable!() };
    // The controller stops (keeping the slots, as a daemon does); the workers keep running.
    registry.stop_keeping_slots();

    // The attacker writes its pid into the victim's slot and the victim's into its own: a
    // controller matching by the table's pid would hand the attacker the victim's slot, whichever
    // of the two registers first. (The test writes the same shared memory the workers map.)
    write_shared_pid(&pins.0, victim_slot, attacker);
    write_shared_pid(&pins.0, attacker_slot, victim);

    let registry = start_pinned();
    assert!(registry.service(addr).unwrap().group().adopted(), "the pinned group was not adopted");
    assert!(
        wait_until(Duration::from_secs(15), || {
            registrations(&app, victim).0 >= 2 && registrations(&app, attacker).0 >= 2
        }),
        "the workers did not register again: {:?} {:?}\n{}",
        registrations(&app, victim),
        registrations(&app, attacker),
        app.log_tail(20)
    );
    assert_eq!(
        registrations(&app, attacker).1,
        Some(attacker_slot),
        "worker {attacker}, which wrote pid {attacker} into slot {victim_slot}, was not given its \
         own slot {attacker_slot} back\n{}",
        app.log_tail(20)
    );
    assert_eq!(
        registrations(&app, victim).1,
        Some(victim_slot),
        "worker {victim} did not get its slot {victim_slot} back\n{}",
        app.log_tail(20)
    );
    assert_eq!(owners(&registry), before, "the slots' owners changed across the restart");
    let table_pids: Vec<u32> = {
        let g = registry.service(addr).unwrap().group();
        [victim_slot, attacker_slot].iter().map(|&s| g.loads().read(s).pid).collect()
    };
    assert_eq!(
        table_pids,
        vec![victim, attacker],
        "the shared table's pids were not rewritten from the owner records"
    );
    registry.stop();
    drop(app);
}
