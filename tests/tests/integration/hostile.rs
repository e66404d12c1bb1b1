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
    shim_client::{connect, register_and_hold, register_raw},
    NetNs,
};

fn start(dir: &TempDir, addr: SocketAddr) -> Registry {
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

fn msg() -> [u8; Register::SIZE] {
    Register::new(std::process::id(), 1).encode()
}

/// The service still takes a legitimate worker and serves a connection through it.
fn still_serving(registry: &Registry, addr: SocketAddr) {
    let path = registry.socket_path().to_path_buf();
    let listener = bind_reuseport(addr, 16).unwrap();
    let (reply, _conn) = register_and_hold(&path, &msg(), listener.as_raw_fd());
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    let _client = TcpStream::connect(addr).expect("the service stopped serving");
    listener.set_nonblocking(false).unwrap();
    listener.accept().expect("the registered worker got the connection");
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
    let reply = std::thread::spawn(move || {
        // Credentials are per thread at the system-call level: only this thread becomes nobody.
        // SAFETY: a raw setresuid on this thread alone, which ends right after.
        let ret = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(ret, 0, "setresuid: {}", std::io::Error::last_os_error());
        let listener = bind_reuseport(addr, 16).unwrap();
        register_raw(&path, &msg(), &[listener.as_raw_fd()])
    })
    .join()
    .unwrap();
    assert_eq!(reply.status(), Status::UidNotAllowed, "{}", reply.reason());
    assert!(reply.reason().contains("65534"), "the reason should name the uid: {}", reply.reason());
    assert_eq!(registry.counters().replies(Status::UidNotAllowed), 1);
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
