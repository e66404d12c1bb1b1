//! The shim's behaviour when things are not as they should be: no controller, a controller that
//! starts late, a shared socket another worker shut down, a graceful worker exit, a vfork child,
//! a controller that answers with something that is not the load map.
//!
//! Each test runs real processes (uWSGI, nginx, gunicorn, or `tests/apps/prefork_helper.c`
//! compiled here with `cc`) with the shim preloaded, one at a time (a lock), on loopback ports.
//! They fail, never skip, when BPF or a program is missing.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use balancer_common::protocol::{Reply, Status};
use balancer_user::Mode;
use integration_tests::{
    apps::{
        self, free_port, loopback, require, serial, spawn_nginx, spawn_plain, spawn_with_shim,
        wait_until, Load, LoadReport, Proc, TempDir, UwsgiConfig, UwsgiProto,
    },
    registered::{least_loaded_group, slot_pids, start_registry},
};

/// `tests/apps/prefork_helper.c`, compiled into `dir`.
pub(super) fn build_helper(dir: &Path) -> PathBuf {
    require("cc");
    let src = apps::apps_dir().join("prefork_helper.c");
    let out = dir.join("prefork_helper");
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running cc");
    assert!(status.success(), "cc failed on {}", src.display());
    out
}

/// The helper's command line: `workers` workers on `addr`; with `starve`, worker 1 uses up its
/// descriptors first (it can split off no listener).
pub(super) fn helper_cmdline(
    helper: &Path,
    addr: SocketAddr,
    workers: u32,
    starve: bool,
) -> Vec<String> {
    let mut v = vec![
        helper.display().to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
        workers.to_string(),
    ];
    if starve {
        v.push("starve".into());
    }
    v
}

/// The helper, compiled into `dir` and started there (as [`helper_cmdline`]) with the shim
/// registering at `socket`.
fn spawn_helper(dir: &Path, addr: SocketAddr, socket: &Path, workers: u32, starve: bool) -> Proc {
    let helper = build_helper(dir);
    let cmdline = helper_cmdline(&helper, addr, workers, starve);
    spawn_with_shim(&cmdline, addr, socket, &dir.join("helper.log"))
}

/// One HTTP/1.0 GET; the body.
fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    get_within(addr, path, Duration::from_secs(5))
}

/// One HTTP/1.0 GET answered within `timeout`; the body.
fn get_within(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| format!("read: {e}"))?;
    if !resp.starts_with("HTTP/1.0 200") && !resp.starts_with("HTTP/1.1 200") {
        return Err(format!("bad answer: {resp:?}"));
    }
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Worker pids the helper printed ("worker N PID"), in the order of N.
fn helper_workers(app: &Proc) -> Vec<u32> {
    let mut v: Vec<(u32, u32)> = app
        .log_text()
        .lines()
        .filter_map(|l| l.strip_prefix("worker "))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, pid)| pid).collect()
}

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Issue 11.2: fail-open

/// uWSGI behind nginx with fast recycling (max-requests), 10 s of load: failed requests.
fn recycling_behind_nginx(dir: &TempDir, tag: &str, shim: Option<&Path>) -> LoadReport {
    let addr = loopback(free_port());
    let mut cfg = UwsgiConfig::new(addr, UwsgiProto::Uwsgi);
    // Single-threaded workers: uWSGI 2.0.21's threaded workers can hang on exit until the
    // reload mercy kills them with requests in flight (unbit/uwsgi#2615), which fails requests
    // with or without the shim and would make the control itself flaky.
    cfg.processes = 4;
    cfg.threads = 1;
    cfg.max_requests = Some(20);
    cfg.extra = vec![
        "--min-worker-lifetime".into(),
        "1".into(),
        "--worker-reload-mercy".into(),
        "5".into(),
    ];
    let log = dir.path().join(format!("{tag}.log"));
    let app = match shim {
        Some(socket) => spawn_with_shim(&cfg.command_line(), addr, socket, &log),
        None => spawn_plain(&cfg.command_line(), &log),
    };
    let nginx_dir = dir.path().join(format!("nginx-{tag}"));
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let port = free_port();
    let _nginx = spawn_nginx(&nginx_dir, port, addr);
    let via = loopback(port);
    assert!(cfg.wait_ready(Duration::from_secs(30)), "uWSGI did not start: {}", app.log_tail(30));
    assert!(
        wait_until(Duration::from_secs(20), || get(via, "/?ms=0").is_ok()),
        "uWSGI does not serve through nginx: {}",
        app.log_tail(30)
    );
    let report = Load::run(via, 16, "/?ms=5", Duration::from_secs(10));
    println!(
        "{tag}: ok {}, failed {}, {} distinct workers served, errors {:?}",
        report.ok,
        report.failed,
        report.by_pid.len(),
        report.errors
    );
    if report.failed > 0 {
        let text = app.log_text();
        let notable: Vec<&str> = text
            .lines()
            .filter(|l| {
                let l = l.to_lowercase();
                l.contains("mercy")
                    || l.contains("kill")
                    || l.contains("signal")
                    || l.contains("error")
            })
            .take(20)
            .collect();
        println!(
            "{tag}: failures at {:?}\nuWSGI said:\n{}\nnginx said:\n{}",
            report.failure_times,
            notable.join("\n"),
            std::fs::read_to_string(nginx_dir.join("nginx-error.log")).unwrap_or_default()
        );
    }
    if shim.is_some() {
        let text = app.log_text();
        assert!(
            !text.contains("own listening socket"),
            "the shim split with no controller:\n{}",
            app.log_tail(20)
        );
        assert_eq!(apps::listening_sockets(addr.port()), 1, "more than the shared socket listens");
    }
    report
}

/// (a) With the shim preloaded and no controller at all, uWSGI recycling its workers behind nginx
/// loses nothing, exactly like uWSGI without the shim (the same run, without it, is the control).
#[test]
fn no_controller_is_the_same_as_no_shim() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    require("nginx");
    let dir = TempDir::new("failopen-none");
    let plain = recycling_behind_nginx(&dir, "without-shim", None);
    let absent = dir.path().join("no-controller.sock");
    let shim = recycling_behind_nginx(&dir, "shim-no-controller", Some(&absent));
    assert!(plain.by_pid.len() > 4 && shim.by_pid.len() > 4, "no worker was recycled");
    assert_eq!(plain.failed, 0, "the control (no shim) failed requests: {:?}", plain.errors);
    assert_eq!(
        shim.failed, 0,
        "with the shim and no controller, requests failed (without it: 0): {:?}",
        shim.errors
    );
}

/// (b) Load arrives while the workers start, with no controller; the controller starts later.
/// No request fails at any point, and every worker registers within a few seconds.
#[test]
fn controller_started_late_resets_nothing() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let _ = least_loaded_group(Mode::Auto);
    let dir = TempDir::new("failopen-late");
    let addr = loopback(free_port());
    let mut cfg = UwsgiConfig::new(addr, UwsgiProto::Http);
    cfg.processes = 4;
    cfg.threads = 4;
    let socket = dir.path().join("shim.sock");
    let app = spawn_with_shim(&cfg.command_line(), addr, &socket, &dir.path().join("uwsgi.log"));
    // As soon as the master listens, load: connections queue on the shared socket while the
    // workers load the app (lazy-apps).
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect(addr).is_ok()),
        "uWSGI does not listen: {}",
        app.log_tail(20)
    );
    let load = Load::start(addr, 16, "/?ms=5", Duration::from_secs(40));
    assert!(cfg.wait_ready(Duration::from_secs(30)), "uWSGI did not start: {}", app.log_tail(40));
    std::thread::sleep(Duration::from_secs(2));
    let registry = start_registry(&socket, addr);
    let service = registry.service(addr).unwrap();
    let started = Instant::now();
    let all = wait_until(Duration::from_secs(10), || slot_pids(service).len() == 4);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let picked: Vec<u64> =
        service.group().slots().unwrap().iter().map(|s| s.selected_total).collect();
    let report = load.finish();
    println!(
        "late controller: every worker registered after {took:?}: {all}; ok {}, failed {} {:?}; \
         picks per slot {picked:?}",
        report.ok, report.failed, report.errors
    );
    assert!(all, "workers did not register: {:?}\n{}", slot_pids(service), app.log_tail(40));
    assert_eq!(
        report.failed, 0,
        "requests failed: {:?} at {:?}",
        report.errors, report.failure_times
    );
    assert!(picked.iter().all(|&n| n > 0), "the program is not picking every worker: {picked:?}");
    assert_eq!(apps::listening_sockets(addr.port()), 4, "expected one LISTEN socket per worker");
}

/// (c) A worker that cannot split (no descriptor left) while another one registered and shut
/// the shared socket down: it must not spin on the dead socket (poll says POLLHUP, accept says
/// EINVAL), and the other worker serves.
#[test]
fn dead_shared_socket_does_not_spin() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("failopen-spin");
    let addr = loopback(free_port());
    let socket = dir.path().join("shim.sock");
    let registry = start_registry(&socket, addr);
    let service = registry.service(addr).unwrap();
    let app = spawn_helper(dir.path(), addr, &socket, 2, true);
    assert!(
        wait_until(Duration::from_secs(10), || helper_workers(&app).len() == 2
            && slot_pids(service).len() == 1),
        "worker 0 did not register: {:?}\n{}",
        slot_pids(service),
        app.log_tail(20)
    );
    for _ in 0..20 {
        get(addr, "/").unwrap_or_else(|e| panic!("request failed: {e}\n{}", app.log_tail(20)));
    }
    let starved = helper_workers(&app)[1];
    // The starved worker logs its loop count every second ("loops PID N").
    let loops = || -> Vec<u64> {
        app.log_text()
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("loops {starved} ")))
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    };
    let t0 = cpu_ticks(starved);
    let wall = Instant::now();
    let seen = loops().len();
    assert!(
        wait_until(Duration::from_secs(8), || loops().len() >= seen + 4),
        "the starved worker does not report its loops\n{}",
        app.log_tail(20)
    );
    let used = (cpu_ticks(starved) - t0) as f64 / 100.0 / wall.elapsed().as_secs_f64();
    let l = loops();
    // Loops per second between its last reports (each about a second apart).
    let rate = (l[l.len() - 1] - l[l.len() - 3]) / 2;
    println!(
        "starved worker {starved}: {rate} loops/s, {:.0}% of a CPU\n{}",
        used * 100.0,
        app.log_tail(8)
    );
    // Throttled: one failed split per 100 ms, ten loops a second; spinning: hundreds of
    // thousands.
    assert!(
        rate < 1000,
        "the worker without descriptors spins on the dead shared socket ({rate} loops/s, \
         {:.0}% CPU)\n{}",
        used * 100.0,
        app.log_tail(20)
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 11.3: a worker that closes its listener leaves the group at once

/// gunicorn gthread: a worker told to stop (SIGTERM) closes its listener, then finishes its
/// in-flight requests for up to graceful_timeout. New connections must not wait for it.
#[test]
fn graceful_exit_leaves_the_group_at_once() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("gunicorn");
    let dir = TempDir::new("failopen-graceful");
    let addr = loopback(free_port());
    let socket = dir.path().join("shim.sock");
    let registry = start_registry(&socket, addr);
    let service = registry.service(addr).unwrap();
    let cmd: Vec<String> = [
        "gunicorn",
        "--chdir",
        &apps::apps_dir().display().to_string(),
        "--workers",
        "2",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--graceful-timeout",
        "30",
        "--bind",
        &addr.to_string(),
        "gil_app:application",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let app = spawn_with_shim(&cmd, addr, &socket, &dir.path().join("gunicorn.log"));
    assert!(
        wait_until(Duration::from_secs(20), || slot_pids(service).len() == 2),
        "gunicorn workers did not register: {:?}\n{}",
        slot_pids(service),
        app.log_tail(30)
    );
    assert!(wait_until(Duration::from_secs(10), || get(addr, "/?ms=0").is_ok()));
    // Two slow requests on each worker (least-loaded spreads them).
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let t =
                std::thread::spawn(move || get_within(addr, "/?ms=8000", Duration::from_secs(30)));
            std::thread::sleep(Duration::from_millis(100));
            t
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let victim = slot_pids(service)[0];
    // SAFETY: kill has no memory preconditions; the victim is a gunicorn worker of this test.
    unsafe { libc::kill(victim as i32, libc::SIGTERM) };
    let stop_at = Instant::now();
    // Fast requests for 5 s, two at a time: none may wait for the stopping worker.
    let worst = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let on_victim = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (worst, failed, served) = (worst.clone(), failed.clone(), served.clone());
            let on_victim = on_victim.clone();
            std::thread::spawn(move || {
                while stop_at.elapsed() < Duration::from_secs(5) {
                    let t = Instant::now();
                    match get(addr, "/?ms=0") {
                        Ok(body) => {
                            served.fetch_add(1, Ordering::Relaxed);
                            if body.contains(&format!("pid={victim} "))
                                && stop_at.elapsed() > Duration::from_secs(2)
                            {
                                on_victim.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    worst.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let left_after = slot_pids(service);
    let slow_ok = slow.into_iter().map(|t| t.join().unwrap()).filter(|r| r.is_ok()).count();
    let worst = worst.load(Ordering::Relaxed);
    println!(
        "graceful exit of {victim}: slots now {left_after:?}; fast requests served {}, failed {}, \
         slowest {worst} ms; slow requests completed {slow_ok} of 4",
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "fast requests failed\n{}", app.log_tail(30));
    assert!(worst < 1500, "a new connection waited {worst} ms for the stopping worker");
    assert!(!left_after.contains(&victim), "the stopping worker still holds a slot");
    assert_eq!(slow_ok, 4, "in-flight requests did not finish gracefully\n{}", app.log_tail(30));
}

// ---------------------------------------------------------------------------------------------
// Issue 11.4: vfork children

/// A worker vforks a child that closes its held connections and its listener before exec (as
/// CPython's subprocess does on a libc without close_range): the parent's accounting and its
/// listener stay intact, and its controller connection sits on a high descriptor number.
#[test]
fn vfork_child_leaves_the_parent_alone() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("failopen-vfork");
    let addr = loopback(free_port());
    let socket = dir.path().join("shim.sock");
    let registry = start_registry(&socket, addr);
    let service = registry.service(addr).unwrap();
    let app = spawn_helper(dir.path(), addr, &socket, 1, false);
    assert!(
        wait_until(Duration::from_secs(10), || slot_pids(service).len() == 1),
        "the worker did not register\n{}",
        app.log_tail(20)
    );
    get(addr, "/").expect("a first request");
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /hold HTTP/1.0\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("200"), "hold failed");
        held.push(s);
    }
    let slot = |what: &str| {
        let v = service.group().slots().unwrap();
        assert_eq!(v.len(), 1, "{what}: {v:?}");
        v[0]
    };
    let before = slot("before");
    assert_eq!(get(addr, "/vfork").expect("vfork request").trim(), "vforked");
    let after = slot("after the vfork");
    println!("before the vfork {before:?}\nafter it {after:?}");
    assert_eq!(
        (after.accepted, after.completed),
        (before.accepted + 1, before.completed + 1),
        "the vfork child's closes changed the parent's counts"
    );
    get(addr, "/").expect("a request after the vfork");
    let again = slot("after one more request");
    assert_eq!(
        (again.accepted, again.completed),
        (after.accepted + 1, after.completed + 1),
        "the listener lost its registration"
    );
    // The controller connection: the worker's only unix socket. The worker's own view of the
    // unix sockets: /proc/net is the test process's main thread's network namespace, not the
    // private one this test thread entered.
    let worker = helper_workers(&app)[0];
    let unix_inodes: Vec<String> = std::fs::read_to_string(format!("/proc/{worker}/net/unix"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6).map(str::to_string))
        .collect();
    let mut conn_fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{worker}/fd")).unwrap().flatten() {
        let target = std::fs::read_link(e.path()).unwrap_or_default().display().to_string();
        if let Some(ino) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            if unix_inodes.iter().any(|i| i == ino) {
                conn_fds.push(e.file_name().to_string_lossy().parse::<i32>().unwrap());
            }
        }
    }
    println!("controller connection of worker {worker} on fd {conn_fds:?}");
    assert_eq!(conn_fds.len(), 1, "expected one unix socket (the controller connection)");
    assert!(conn_fds[0] >= 64, "the controller connection sits on a low descriptor {conn_fds:?}");
    assert_eq!(get(addr, "/release").unwrap().trim(), "released");
    drop(held);
    let done = slot("after release");
    assert_eq!(
        done.accepted, done.completed,
        "after release, every connection is closed: {done:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 11.5: the load map is checked before it is mapped

/// A fake controller: answers every registration Ok with the descriptors of `attach()` attached.
/// Returns the number of replies sent, updated live.
fn fake_controller(path: &Path, attach: fn() -> Vec<OwnedFd>) -> (Arc<AtomicU64>, Arc<AtomicBool>) {
    // SAFETY: plain socket calls on descriptors owned right away.
    let listener = unsafe {
        let s = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(s >= 0);
        let owned = OwnedFd::from_raw_fd(s);
        let mut sun: libc::sockaddr_un = std::mem::zeroed();
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let p = path.as_os_str().as_encoded_bytes();
        for (d, c) in sun.sun_path.iter_mut().zip(p) {
            *d = *c as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + p.len() + 1) as libc::socklen_t;
        assert_eq!(libc::bind(s, (&sun as *const libc::sockaddr_un).cast(), len), 0);
        assert_eq!(libc::listen(s, 16), 0);
        owned
    };
    let replies = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, st) = (replies.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut conns = Vec::new();
        while !st.load(Ordering::Relaxed) {
            let mut p = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd on our stack.
            if unsafe { libc::poll(&mut p, 1, 200) } <= 0 {
                continue;
            }
            // SAFETY: accept on our listener; the descriptor is owned right away.
            let c = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if c < 0 {
                continue;
            }
            // SAFETY: as above.
            let c = unsafe { OwnedFd::from_raw_fd(c) };
            let mut buf = [0u8; 64];
            // SAFETY: receives into our buffer; with no control buffer the kernel discards (closes)
            // the attached listener.
            unsafe { libc::recv(c.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let reply = Reply::new(Status::Ok, 0, 1, "fake controller").encode();
            let fds = attach();
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            send_with_fds(c.as_raw_fd(), &reply, &raw);
            r.fetch_add(1, Ordering::Relaxed);
            conns.push(c);
        }
    });
    (replies, stop)
}

fn send_with_fds(s: RawFd, data: &[u8], fds: &[RawFd]) {
    assert!(fds.len() <= 253, "more than SCM_MAX_FD descriptors");
    let bytes = (fds.len() * 4) as u32;
    // SAFETY: msghdr, iovec and control buffer (large enough for 253 descriptors) outlive the
    // sendmsg call that reads them.
    unsafe {
        let mut iov =
            libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        let mut cbuf = [0u64; 160];
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = libc::CMSG_SPACE(bytes) as usize;
        let c = libc::CMSG_FIRSTHDR(&hdr);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
        for (k, fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>().add(k), *fd);
        }
        libc::sendmsg(s, &hdr, libc::MSG_NOSIGNAL);
    }
}

fn empty_memfd() -> Vec<OwnedFd> {
    vec![empty_memfd_one()]
}

fn empty_memfd_one() -> OwnedFd {
    // SAFETY: memfd_create with a NUL-terminated name; owned right away. Size 0: any access
    // through a mapping of it is a SIGBUS.
    unsafe {
        OwnedFd::from_raw_fd(libc::memfd_create(c"not-a-load-map".as_ptr(), libc::MFD_CLOEXEC))
    }
}

/// A controller that answers Ok with a memfd instead of the load map: the worker must not map
/// it (a SIGBUS on its next accept), and keeps serving.
#[test]
fn memfd_instead_of_the_load_map_does_not_kill_the_worker() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("failopen-memfd");
    let addr = loopback(free_port());
    let socket = dir.path().join("fake.sock");
    let (replies, stop) = fake_controller(&socket, empty_memfd);
    let app = spawn_helper(dir.path(), addr, &socket, 1, false);
    assert!(
        wait_until(Duration::from_secs(10), || get(addr, "/").is_ok()),
        "the helper does not serve\n{}",
        app.log_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(10), || replies.load(Ordering::Relaxed) >= 1),
        "the shim did not register with the fake controller\n{}",
        app.log_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(10), || app.log_text().contains("not the load map")),
        "the shim did not say why it refused the descriptor\n{}",
        app.log_tail(20)
    );
    let worker = helper_workers(&app)[0];
    let mut pids = std::collections::HashSet::new();
    for i in 0..50 {
        let body = get(addr, "/").unwrap_or_else(|e| {
            panic!("request {i} failed after the fake Ok: {e}\n{}", app.log_tail(20))
        });
        pids.insert(body.trim().to_string());
    }
    stop.store(true, Ordering::Relaxed);
    println!(
        "served by {pids:?}; {} fake replies\n{}",
        replies.load(Ordering::Relaxed),
        app.log_tail(5)
    );
    assert!(apps::alive(worker), "the worker died\n{}", app.log_tail(20));
    assert_eq!(pids.len(), 1, "served by more than the one worker: {pids:?}");
    assert!(
        app.log_text().contains("not the load map"),
        "the shim did not say why it refused the descriptor\n{}",
        app.log_tail(20)
    );
}

// ---------------------------------------------------------------------------------------------
// A controller that cannot accept must not stall the workers

/// A unix SOCK_SEQPACKET listener at `path` with backlog 0 that never accepts, its backlog
/// already full (connects until EAGAIN): a controller stopped with SIGSTOP looks like this. The
/// descriptors must stay open for the test's length.
fn stuck_controller(path: &Path) -> Vec<OwnedFd> {
    let sun = |p: &Path| {
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let b = p.as_os_str().as_encoded_bytes();
        for (d, c) in sun.sun_path.iter_mut().zip(b) {
            *d = *c as libc::c_char;
        }
        (sun, (std::mem::size_of::<libc::sa_family_t>() + b.len() + 1) as libc::socklen_t)
    };
    let (addr, len) = sun(path);
    let mut fds = Vec::new();
    // SAFETY: plain socket calls on descriptors owned right away; `addr` outlives them.
    unsafe {
        let s = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(s >= 0);
        fds.push(OwnedFd::from_raw_fd(s));
        assert_eq!(libc::bind(s, (&addr as *const libc::sockaddr_un).cast(), len), 0);
        assert_eq!(libc::listen(s, 0), 0);
        for _ in 0..64 {
            let c = libc::socket(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            );
            assert!(c >= 0);
            fds.push(OwnedFd::from_raw_fd(c));
            if libc::connect(c, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "filling the backlog: {e}");
                return fds;
            }
        }
    }
    panic!("the backlog of the stuck controller never filled");
}

/// A controller whose backlog is full (stopped, frozen): the workers' first wait on the
/// listener must not block in connect; the app serves at once, on the shared socket.
#[test]
fn stuck_controller_does_not_stall_the_workers() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("failopen-stuck");
    let helper = build_helper(dir.path());
    let addr = loopback(free_port());
    let socket = dir.path().join("stuck.sock");
    let _stuck = stuck_controller(&socket);
    let started = Instant::now();
    let app = spawn_with_shim(
        &helper_cmdline(&helper, addr, 2, false),
        addr,
        &socket,
        &dir.path().join("helper.log"),
    );
    // Bounded: without the fix the first poll never returns (connect waits for the backlog).
    assert!(
        wait_until(Duration::from_secs(10), || get_within(addr, "/", Duration::from_secs(2))
            .is_ok()),
        "the app does not serve while the controller's backlog is full\n{}",
        app.log_tail(20)
    );
    let first = started.elapsed();
    let mut pids = std::collections::HashSet::new();
    for i in 0..100 {
        let t = Instant::now();
        let body = get_within(addr, "/", Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", app.log_tail(20)));
        assert!(t.elapsed() < Duration::from_secs(1), "request {i} took {:?}", t.elapsed());
        pids.insert(body.trim().to_string());
    }
    println!("first answer after {first:?}; served by {pids:?}\n{}", app.log_tail(5));
    assert!(first < Duration::from_secs(3), "the first answer took {first:?}");
    // Both workers got past their first wait without blocking in connect: each logged that it
    // serves on the shared socket. (Which one answers is the kernel's choice on a shared socket:
    // epoll wakes the last waiter, so one worker may serve every sequential request.)
    let log = app.log_text();
    let serving: std::collections::HashSet<&str> = log
        .lines()
        .filter(|l| l.contains("serving on the shared socket"))
        .filter_map(|l| l.split(']').next())
        .collect();
    assert_eq!(
        serving.len(),
        2,
        "not both workers went on serving: {pids:?}\n{}",
        app.log_tail(20)
    );
    assert!(
        !app.log_text().contains("own listening socket"),
        "the shim split without a registration\n{}",
        app.log_tail(20)
    );
}

/// A connected loopback TCP socket whose close blocks for 30 s: unsent data towards a peer that
/// never reads (zero window), SO_LINGER {1, 30}. The peer is leaked on purpose (kept open until
/// the test process ends).
fn lingering_tcp() -> OwnedFd {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (peer, _) = l.accept().expect("accept");
    let small: libc::c_int = 4096;
    let lg = libc::linger { l_onoff: 1, l_linger: 30 };
    // SAFETY: setsockopt reads the values from our stack; the descriptors are open.
    unsafe {
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = (&small as *const libc::c_int).cast();
        libc::setsockopt(peer.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, p, sz);
        libc::setsockopt(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, p, sz);
        let lsz = std::mem::size_of::<libc::linger>() as libc::socklen_t;
        let lp = (&lg as *const libc::linger).cast();
        libc::setsockopt(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, lp, lsz);
    }
    a.set_nonblocking(true).unwrap();
    let chunk = [0u8; 4096];
    let mut sent = 0usize;
    for _ in 0..10_000 {
        match (&a).write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent > 0, "nothing queued on the lingering socket");
    std::mem::forget(peer);
    OwnedFd::from(a)
}

/// 40 lingering TCP sockets: more than the old 64-byte control buffer held (the kernel closed
/// the surplus inside recvmsg, in the hook's thread).
fn lingering_sockets() -> Vec<OwnedFd> {
    (0..40).map(|_| lingering_tcp()).collect()
}

/// A controller that answers Ok with lingering TCP sockets instead of the load map: closing them
/// in the worker's first wait (or letting recvmsg drop the surplus) would block it for 30 s. The
/// app must serve at once.
#[test]
fn lingering_descriptors_from_the_controller_do_not_block_the_worker() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("failopen-linger");
    let helper = build_helper(dir.path());
    let addr = loopback(free_port());
    let socket = dir.path().join("fake.sock");
    let (replies, stop) = fake_controller(&socket, lingering_sockets);
    let started = Instant::now();
    let app = spawn_with_shim(
        &helper_cmdline(&helper, addr, 1, false),
        addr,
        &socket,
        &dir.path().join("helper.log"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || get_within(addr, "/", Duration::from_secs(2))
            .is_ok()),
        "the helper does not serve\n{}",
        app.log_tail(20)
    );
    let first = started.elapsed();
    assert!(
        wait_until(Duration::from_secs(10), || app.log_text().contains("not the load map")),
        "the shim did not refuse the descriptor\n{}",
        app.log_tail(20)
    );
    for i in 0..50 {
        let t = Instant::now();
        get_within(addr, "/", Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", app.log_tail(20)));
        assert!(t.elapsed() < Duration::from_secs(1), "request {i} took {:?}", t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let worker = helper_workers(&app)[0];
    println!(
        "first answer after {first:?}; {} fake replies\n{}",
        replies.load(Ordering::Relaxed),
        app.log_tail(5)
    );
    assert!(replies.load(Ordering::Relaxed) >= 1, "no registration reached the fake controller");
    assert!(first < Duration::from_secs(5), "the first answer took {first:?}");
    assert!(apps::alive(worker), "the worker died\n{}", app.log_tail(20));
}

// ---------------------------------------------------------------------------------------------
// A duplicate of the listener is the same socket

/// A one-worker prefork server in Python: the worker waits on its listener (the split), then
/// waits on a duplicate of it (`sock.dup()`), closes the duplicate, and serves on the original.
const DUP_APP: &str = r#"
import os, select, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(64)
pid = os.fork()
if pid:
    os.waitpid(pid, 0)
    sys.exit(0)
p = select.poll(); p.register(s, select.POLLIN); p.poll(0)
d = s.dup()
q = select.poll(); q.register(d, select.POLLIN); q.poll(0)
q.unregister(d)
d.close()
print("worker", os.getpid(), "closed its duplicate", flush=True)
while True:
    c, _ = s.accept()
    c.recv(4096)
    body = ("pid=%d" % os.getpid()).encode()
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    c.close()
"#;

/// Closing a duplicate of the worker's listener must not take the worker out of the group: the
/// original still serves (and is counted).
#[test]
fn closing_a_duplicate_listener_keeps_the_worker_in_the_group() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("python3");
    let dir = TempDir::new("failopen-dup");
    let script = dir.path().join("dup_app.py");
    std::fs::write(&script, DUP_APP).unwrap();
    let addr = loopback(free_port());
    let socket = dir.path().join("shim.sock");
    let registry = start_registry(&socket, addr);
    let service = registry.service(addr).unwrap();
    let cmdline = vec![
        "python3".to_string(),
        script.display().to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
    ];
    let app = spawn_with_shim(&cmdline, addr, &socket, &dir.path().join("app.log"));
    assert!(
        wait_until(Duration::from_secs(10), || app.log_text().contains("closed its duplicate")),
        "the app did not start\n{}",
        app.log_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(5), || slot_pids(service).len() == 1),
        "the worker did not register\n{}",
        app.log_tail(20)
    );
    // The thread retries after a departure within a second or two; the shim must not leave at
    // all, so look over 3 s.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert!(
            !app.log_text().contains("left the group"),
            "closing the duplicate took the worker out of the group\n{}",
            app.log_tail(20)
        );
        assert_eq!(slot_pids(service).len(), 1, "the slot went away\n{}", app.log_tail(20));
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = service.group().slots().unwrap()[0];
    for i in 0..20 {
        get(addr, "/").unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", app.log_tail(20)));
    }
    let after = service.group().slots().unwrap()[0];
    println!("before {before:?}\nafter {after:?}\n{}", app.log_tail(6));
    assert_eq!(after.accepted, before.accepted + 20, "the original is not counted any more");
}

// ---------------------------------------------------------------------------------------------
// Issue 19, defect 13: the thread registers the own socket, not whatever sits at its number

/// One worker that serves one request on its own socket, then closes that socket with a raw
/// `close` system call (no hook sees it) and puts /dev/null at the same descriptor number.
const CLOSED_BEHIND_APP: &str = r#"
import ctypes, fcntl, os, platform, socket, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(64)
c, _ = s.accept()
c.recv(4096)
c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
c.close()
fd = s.detach()
SYS_close = {"x86_64": 3, "aarch64": 57}[platform.machine()]
assert ctypes.CDLL(None, use_errno=True).syscall(SYS_close, fd) == 0
null = os.open("/dev/null", os.O_RDONLY)
if null != fd:
    assert fcntl.fcntl(null, fcntl.F_DUPFD, fd) == fd
print("worker", os.getpid(), "closed fd", fd, "behind the shim's back", flush=True)
time.sleep(3600)
"#;

/// A worker whose own socket was closed where no hook saw it (a raw system call), with another
/// descriptor at the same number since: when the controller comes back, the registration thread
/// must not send that descriptor as the worker's listener (it did: it sent whatever the number
/// held by the time it sent).
#[test]
fn the_thread_never_registers_what_replaced_the_own_socket() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("python3");
    let dir = TempDir::new("failopen-behind");
    let script = dir.path().join("behind_app.py");
    std::fs::write(&script, CLOSED_BEHIND_APP).unwrap();
    let addr = loopback(free_port());
    let socket = dir.path().join("shim.sock");
    let registry = start_registry(&socket, addr);
    let cmdline = vec![
        "python3".to_string(),
        script.display().to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
    ];
    let app = spawn_with_shim(&cmdline, addr, &socket, &dir.path().join("app.log"));
    assert!(
        wait_until(Duration::from_secs(10), || get(addr, "/").is_ok()),
        "the app did not answer\n{}",
        app.log_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(5), || app.log_text().contains("behind the shim's back")),
        "the app did not close its listener\n{}",
        app.log_tail(20)
    );
    assert!(app.log_text().contains("registered"), "never registered\n{}", app.log_tail(20));
    registry.stop();
    let _registry = start_registry(&socket, addr);
    assert!(
        wait_until(Duration::from_secs(8), || app.log_text().contains("not registering")),
        "the thread did not notice that its own socket is gone\n{}",
        app.log_tail(20)
    );
    assert!(
        !app.log_text().contains("rejected"),
        "the thread sent another descriptor as the worker's listener\n{}",
        app.log_tail(20)
    );
}
