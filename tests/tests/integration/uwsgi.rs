//! End-to-end: real uWSGI (and gunicorn, nginx) balanced by reuselb through the shim.
//!
//! Run as root (BPF, and uWSGI's own needs); every test runs in a private network namespace, on a
//! loopback of its own. The tests run one at a time (a lock): they measure balance on a machine
//! with few cores, and concurrent load tests would measure each other. They fail, never skip, when
//! BPF, uWSGI, nginx or gunicorn is missing.
use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use balancer_user::{
    registry::{Registry, Service},
    Mode,
};
use integration_tests::apps::{
    self, free_port, loopback, require, serial, spawn_nginx, spawn_plain, spawn_reuselb_run,
    uwsgi_stats, wait_until, Load, LoadReport, Proc, TempDir, UwsgiConfig, UwsgiProto,
};
use integration_tests::http;
use integration_tests::registered::{self, least_loaded_group, slot_pids, uwsgi_under};
use integration_tests::shim_client::register_raw;

/// Concurrent clients of the load tests other than the balance measurement.
const CONCURRENCY: usize = 48;
/// Concurrent clients of the balance measurement ([`measure`]): the load at which the shared
/// socket's imbalance shows. With 48, the control (without reuselb) measured busiest/ideal
/// 1.16-1.44 on the http-socket in five runs, once under [`MIN_CONTROL_IMBALANCE`]: with more
/// clients every worker is kept busy and the wake-up order matters less; with 24, 1.62-1.80 in
/// six runs (both setups, three runs each).
const BALANCE_CLIENTS: usize = 24;
/// Request path: each request holds the GIL for 5 ms.
const PATH: &str = "/?ms=5";
/// The README's balance claim, as asserted: busiest/ideal with reuselb at most this (the README
/// quotes 1.01-1.05). The kernel's hash, which an SK_PASS program leaves in charge, measured
/// 1.03-1.05 here (1.05-1.11 with 48 clients) and 1.13-1.17 in the benchmark: inside the bound, so [`MIN_SELECTED`] is what
/// tells reuselb from it ...
const MAX_IMBALANCE: f64 = 1.15;
/// ... and without reuselb at least this (the README quotes 1.62-1.80): else the run did not
/// show the problem reuselb solves, and its "with" figure proves nothing.
const MIN_CONTROL_IMBALANCE: f64 = 1.25;
/// The bound of the tests whose balance is not the README's headline (a late controller, gunicorn's
/// sync workers): what they claim is caught by their selections.
const LOOSE_MAX_IMBALANCE: f64 = 1.25;
/// The program must have selected the worker of at least this share of the requests (else the
/// kernel's hash balanced them, not reuselb).
const MIN_SELECTED: f64 = 0.9;

/// Asserts that the program selected the worker of at least [`MIN_SELECTED`] of `sent` requests.
fn assert_selected(label: &str, selected: u64, sent: u64) {
    println!("{label}: the program selected the worker of {selected} of {sent} requests");
    assert!(
        selected as f64 >= MIN_SELECTED * sent as f64,
        "{label}: the program selected the worker of only {selected} of {sent} requests"
    );
}

/// An in-process controller for `addr`, on a socket in `dir`.
fn start_registry(dir: &TempDir, addr: SocketAddr) -> Registry {
    registered::start_registry(&dir.path().join("shim.sock"), addr)
}

/// Waits until every slot reads 0 in flight; returns how long it took.
fn wait_idle_zero(service: &Service, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    wait_until(timeout, || {
        service.group().slots().map(|s| s.iter().all(|v| v.inflight == 0)).unwrap_or(false)
    })
    .then(|| start.elapsed())
}

/// Asserts that every slot reads 0 in flight within a second (the load is over).
fn assert_idle_zero(service: &Service) {
    let idle = wait_idle_zero(service, Duration::from_secs(1));
    println!("idle loads back to 0 after {idle:?}");
    assert!(idle.is_some(), "loads did not return to 0 when idle: {:?}", service.group().slots());
}

/// Waits until the uWSGI answers a request.
fn wait_serving(addr: SocketAddr, via: SocketAddr) {
    assert!(
        wait_until(Duration::from_secs(20), || apps::one_request(via, "/?ms=0").is_ok()),
        "{addr} does not serve requests (through {via})"
    );
}

/// Per-worker requests served between two stats readings.
/// Runs the load through `via` and returns the per-worker counts from the stats server.
fn measure(cfg: &UwsgiConfig, via: SocketAddr, duration: Duration) -> (Vec<u64>, LoadReport) {
    let before = cfg.stats().expect("stats server answers");
    let report = Load::run(via, BALANCE_CLIENTS, PATH, duration);
    // Let the last answers be counted.
    std::thread::sleep(Duration::from_millis(200));
    let after = cfg.stats().expect("stats server answers");
    (apps::stats_delta(&before, &after), report)
}

fn describe(label: &str, counts: &[u64], report: &LoadReport) -> f64 {
    let ratio = LoadReport::imbalance(counts);
    println!(
        "{label}: busiest/ideal {ratio:.3}, per-worker requests {counts:?}, ok {}, failed {} ({:.0} req/s){}",
        report.ok,
        report.failed,
        report.ok as f64 / report.elapsed.as_secs_f64(),
        if report.errors.is_empty() { String::new() } else { format!(", errors {:?}", report.errors) }
    );
    ratio
}

/// Where clients reach uWSGI on `addr`: through a new nginx (its files in `nginx_dir`) in front
/// of it when `behind_nginx`, else `addr` itself; and that nginx.
fn entry(nginx_dir: &Path, behind_nginx: bool, addr: SocketAddr) -> (SocketAddr, Option<Proc>) {
    if !behind_nginx {
        return (addr, None);
    }
    std::fs::create_dir_all(nginx_dir).unwrap();
    let port = free_port();
    (loopback(port), Some(spawn_nginx(nginx_dir, port, addr)))
}

/// The balance test, with uWSGI speaking `proto` and reached directly or through nginx.
fn balance_test(proto: UwsgiProto, behind_nginx: bool) {
    require("uwsgi");
    if behind_nginx {
        require("nginx");
    }
    let _ = least_loaded_group(Mode::Auto); // fail early and clearly without BPF
    let dir = TempDir::new("uwsgi-balance");
    let label = match (proto, behind_nginx) {
        (UwsgiProto::Http, _) => "uWSGI http-socket",
        (UwsgiProto::Http11, _) => "uWSGI http11-socket",
        (UwsgiProto::Uwsgi, true) => "uWSGI socket behind nginx",
        (UwsgiProto::Uwsgi, false) => "uWSGI socket",
    };

    // 1. Without reuselb, for comparison.
    let plain = {
        let addr = loopback(free_port());
        let cfg = UwsgiConfig::new(addr, proto);
        let app = spawn_plain(&cfg.command_line(), &dir.path().join("plain.log"));
        let (via, _nginx) = entry(&dir.path().join("nginx-plain"), behind_nginx, addr);
        assert!(
            cfg.wait_ready(Duration::from_secs(30)),
            "plain uWSGI did not start: {}",
            app.log_tail(30)
        );
        wait_serving(addr, via);
        let (counts, report) = measure(&cfg, via, Duration::from_secs(8));
        describe(&format!("{label}, without reuselb"), &counts, &report)
    };

    // 2. Under `reuselb run`.
    let addr = loopback(free_port());
    let cfg = UwsgiConfig::new(addr, proto);
    let socket = dir.path().join("shim.sock");
    let mut run = spawn_reuselb_run(
        &cfg.command_line(),
        addr,
        &socket,
        &dir.path().join("run.log"),
        &["--status-every", "2"],
    );
    let (via, _nginx) = entry(&dir.path().join("nginx"), behind_nginx, addr);
    assert!(
        cfg.wait_ready(Duration::from_secs(30)),
        "uWSGI under reuselb did not start: {}",
        run.log_tail(40)
    );
    assert!(
        wait_until(Duration::from_secs(20), || apps::registered_pids(&run.log_text()).len()
            >= cfg.processes as usize),
        "not every worker registered: {}",
        run.log_tail(60)
    );
    wait_serving(addr, via);
    // One listening socket per worker, none left for the master.
    let listeners = apps::listening_sockets(addr.port());
    assert_eq!(
        listeners, cfg.processes as usize,
        "expected one LISTEN socket per worker on {addr}"
    );
    let selected_before = http::selections(http::DEFAULT_METRICS);
    let (counts, report) = measure(&cfg, via, Duration::from_secs(10));
    let selected = http::selections(http::DEFAULT_METRICS) - selected_before;
    let ratio = describe(&format!("{label}, with reuselb"), &counts, &report);
    println!("{label}: busiest/ideal without reuselb {plain:.3}, with reuselb {ratio:.3}");

    assert_eq!(report.failed, 0, "requests failed under reuselb: {:?}", report.errors);
    assert!(counts.iter().all(|&n| n > 0), "a worker served nothing: {counts:?}");
    // The program's selections first: they do not depend on the control, which only says whether
    // the balance bound below means anything (a broken program must fail here, for its reason).
    assert_selected(label, selected, report.ok + report.failed);
    assert!(
        plain >= MIN_CONTROL_IMBALANCE,
        "the control (without reuselb) measured busiest/ideal {plain:.3} < {MIN_CONTROL_IMBALANCE}: the scene shows no imbalance to correct"
    );
    assert!(
        ratio <= MAX_IMBALANCE,
        "busiest/ideal {ratio:.3} > {MAX_IMBALANCE}: {counts:?}\n{}",
        run.log_tail(30)
    );

    // `reuselb run` forwards SIGTERM, exits with the app's status and removes its socket.
    run.signal(libc::SIGTERM);
    let status = run
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("reuselb run did not exit: {}", run.log_tail(30)));
    println!("reuselb run exited with {status}");
    assert!(!socket.exists(), "reuselb run left its socket file behind");
}

#[test]
fn uwsgi_http_socket_is_balanced() {
    integration_tests::private_loopback();
    let _serial = serial();
    balance_test(UwsgiProto::Http, false);
}

#[test]
fn uwsgi_socket_behind_nginx_is_balanced() {
    integration_tests::private_loopback();
    let _serial = serial();
    balance_test(UwsgiProto::Uwsgi, true);
}

/// Starts uWSGI with the shim preloaded by hand against an in-process controller; waits until
/// every worker has a slot and uWSGI serves.
fn uwsgi_with_registry(dir: &TempDir, cfg: &UwsgiConfig) -> (Registry, Proc) {
    let registry = start_registry(dir, cfg.addr);
    let app = uwsgi_under(&registry, cfg, &dir.path().join("uwsgi.log"));
    wait_serving(cfg.addr, cfg.addr);
    (registry, app)
}

#[test]
fn uwsgi_worker_killed_under_load_is_replaced() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("uwsgi-kill");
    let cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    let (registry, app) = uwsgi_with_registry(&dir, &cfg);
    let service = registry.service(cfg.addr).unwrap();

    let load = Load::start(cfg.addr, CONCURRENCY, PATH, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let before = slot_pids(service);
    let victim = before[before.len() / 2];
    let killed_at = Instant::now();
    // SAFETY: kill(2) of a uWSGI worker this test started; no pointers.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let replaced = wait_until(Duration::from_secs(15), || {
        let now = slot_pids(service);
        now.len() == cfg.processes as usize && !now.contains(&victim)
    });
    let took = killed_at.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let report = load.finish();
    let after = slot_pids(service);
    println!(
        "killed worker {victim}; slots back to {} after {took:?}: {after:?}; ok {}, failed {} {:?}",
        after.len(),
        report.ok,
        report.failed,
        report.errors
    );
    assert!(
        replaced,
        "the killed worker was not replaced by a registered one: {after:?}\n{}",
        app.log_tail(40)
    );
    // Only what was in flight on the killed worker may fail: at most one request per thread.
    assert!(
        report.failed <= cfg.threads as u64,
        "{} requests failed, more than the {} the killed worker could hold: {:?}",
        report.failed,
        cfg.threads,
        report.errors
    );
    let new_pids: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(
        new_pids.len(),
        1,
        "expected exactly one new worker: before {before:?}, after {after:?}"
    );
    assert_idle_zero(service);
}

#[test]
fn uwsgi_max_requests_recycling_keeps_registering() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("uwsgi-recycle");
    let mut cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    // Recycling as soon as a worker has served its share: with balanced load, workers reach the
    // limit together, and there are moments with no worker at all.
    cfg.max_requests = Some(150);
    // uWSGI 2.0.21 threaded workers sometimes hang on their way out (unbit/uwsgi#2615) until
    // the master kills them after worker-reload-mercy: keep that short.
    cfg.extra = vec![
        "--min-worker-lifetime".into(),
        "1".into(),
        "--worker-reload-mercy".into(),
        "5".into(),
    ];
    let (registry, app) = uwsgi_with_registry(&dir, &cfg);
    let service = registry.service(cfg.addr).unwrap();

    let report = Load::run(cfg.addr, CONCURRENCY, PATH, Duration::from_secs(10));
    let registrations = registry.counters().replies(balancer_common::protocol::Status::Ok);
    let departures = registry.counters().departures.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "max-requests: ok {}, failed {} {:?}; {} distinct workers served; {registrations} registrations, {departures} departures",
        report.ok,
        report.failed,
        report.errors,
        report.by_pid.len()
    );
    assert!(
        report.by_pid.len() > cfg.processes as usize,
        "no worker was recycled: {:?}",
        report.by_pid
    );
    // Every worker uWSGI runs now holds a slot, and nothing else does.
    let settled = wait_until(Duration::from_secs(10), || {
        let mut stats: Vec<u32> =
            uwsgi_stats(cfg.stats_port).unwrap_or_default().iter().map(|w| w.0).collect();
        let mut slots = slot_pids(service);
        stats.sort();
        slots.sort();
        stats == slots && slots.len() == cfg.processes as usize
    });
    assert!(
        settled,
        "slots {:?} != uWSGI workers {:?}\n{}",
        slot_pids(service),
        uwsgi_stats(cfg.stats_port),
        app.log_tail(40)
    );
    assert!(registrations as usize >= report.by_pid.len(), "a recycled worker did not register");
    assert_idle_zero(service);
    // Requests in flight on a worker that hangs on its way out (the uWSGI bug above) die with it
    // when the master kills it; nothing else may fail.
    assert!(
        report.failed <= cfg.threads as u64,
        "{} requests failed during recycling: {:?}",
        report.failed,
        report.errors
    );
}

#[test]
fn controller_started_after_the_app() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let _ = least_loaded_group(Mode::Auto);
    let dir = TempDir::new("uwsgi-late");
    let cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    let socket = dir.path().join("shim.sock");
    let app = cfg.start_with_shim(&socket, &dir.path().join("uwsgi.log"));
    wait_serving(cfg.addr, cfg.addr);

    let load = Load::start(cfg.addr, CONCURRENCY, PATH, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let registry = registered::start_registry(&socket, cfg.addr);
    let service = registry.service(cfg.addr).unwrap();
    let started = Instant::now();
    let all =
        wait_until(Duration::from_secs(10), || slot_pids(service).len() == cfg.processes as usize);
    println!("every worker registered {:?} after the controller started", started.elapsed());
    assert!(
        all,
        "workers did not register with the late controller: {:?}\n{}",
        slot_pids(service),
        app.log_tail(40)
    );
    std::thread::sleep(Duration::from_secs(1));
    let sel_before: Vec<u64> =
        service.group().slots().unwrap().iter().map(|s| s.selected_total).collect();
    let before = cfg.stats().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let sel_after: Vec<u64> =
        service.group().slots().unwrap().iter().map(|s| s.selected_total).collect();
    let after = cfg.stats().unwrap();
    let report = load.finish();
    let picked: Vec<u64> = sel_after.iter().zip(&sel_before).map(|(a, b)| a - b).collect();
    let counts = apps::stats_delta(&before, &after);
    let ratio = LoadReport::imbalance(&counts);
    println!(
        "late controller: ok {}, failed {} {:?}; program picks per slot {picked:?}; served per worker once balanced {counts:?} (busiest/ideal {ratio:.3})",
        report.ok, report.failed, report.errors
    );
    assert_eq!(
        report.failed, 0,
        "requests failed while the controller came up: {:?}",
        report.errors
    );
    assert!(picked.iter().all(|&n| n > 0), "the program is not picking every worker: {picked:?}");
    assert!(ratio <= LOOSE_MAX_IMBALANCE, "not balanced once the controller is up: {counts:?}");
    assert_idle_zero(service);
}

#[test]
fn gunicorn_sync_workers_are_balanced() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("gunicorn");
    let _ = least_loaded_group(Mode::Auto);
    let dir = TempDir::new("gunicorn");
    let workers = 4;
    let concurrency = 16;

    let plain = {
        let addr = loopback(free_port());
        let cmd = apps::gunicorn_command_line(addr, workers);
        let _app = spawn_plain(&cmd, &dir.path().join("plain.log"));
        wait_serving(addr, addr);
        std::thread::sleep(Duration::from_secs(1));
        let report = Load::run(addr, concurrency, PATH, Duration::from_secs(8));
        let counts: Vec<u64> = report.by_pid.values().copied().collect();
        describe("gunicorn -w 4, without reuselb", &counts, &report)
    };

    let addr = loopback(free_port());
    let socket = dir.path().join("shim.sock");
    let cmd = apps::gunicorn_command_line(addr, workers);
    let run = spawn_reuselb_run(&cmd, addr, &socket, &dir.path().join("run.log"), &[]);
    assert!(
        wait_until(Duration::from_secs(20), || apps::registered_pids(&run.log_text()).len()
            >= workers as usize),
        "not every gunicorn worker registered: {}",
        run.log_tail(40)
    );
    wait_serving(addr, addr);
    let selected_before = http::selections(http::DEFAULT_METRICS);
    let report = Load::run(addr, concurrency, PATH, Duration::from_secs(10));
    let selected = http::selections(http::DEFAULT_METRICS) - selected_before;
    let counts: Vec<u64> = report.by_pid.values().copied().collect();
    let ratio = describe("gunicorn -w 4, with reuselb", &counts, &report);
    assert_selected("gunicorn -w 4", selected, report.ok + report.failed);
    println!("gunicorn: busiest/ideal without reuselb {plain:.3}, with reuselb {ratio:.3}");
    assert_eq!(report.failed, 0, "requests failed: {:?}", report.errors);
    assert_eq!(counts.len(), workers as usize, "not every worker served: {:?}", report.by_pid);
    // Sync workers serve one request at a time, so on a busy 2-core machine request counts
    // spread unevenly whoever picks (gunicorn alone measured 1.13-1.41 here): the bound is 1.25,
    // or what gunicorn without reuselb reached in the same run if that was worse.
    let bound = LOOSE_MAX_IMBALANCE.max(plain * 1.1);
    assert!(ratio <= bound, "busiest/ideal {ratio:.3} > {bound:.3}: {counts:?}");
}

#[test]
fn controller_restart_keeps_serving() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("uwsgi-restart");
    let cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    let (registry, app) = uwsgi_with_registry(&dir, &cfg);
    let socket = registry.socket_path().to_path_buf();

    let load = Load::start(cfg.addr, CONCURRENCY, PATH, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    // The controller goes away: the workers keep serving on their own sockets.
    registry.stop();
    assert!(!socket.exists(), "the registry left its socket file behind");
    std::thread::sleep(Duration::from_secs(3));
    // A new controller: every worker registers again within a few seconds (the shim retries
    // every second) and the new program balances.
    let registry = registered::start_registry(&socket, cfg.addr);
    let service = registry.service(cfg.addr).unwrap();
    let back =
        wait_until(Duration::from_secs(10), || slot_pids(service).len() == cfg.processes as usize);
    assert!(back, "workers did not register again: {:?}\n{}", slot_pids(service), app.log_tail(40));
    std::thread::sleep(Duration::from_secs(3));
    let picked: Vec<u64> =
        service.group().slots().unwrap().iter().map(|s| s.selected_total).collect();
    let report = load.finish();
    println!(
        "controller restart: ok {}, failed {} {:?}; picks per slot after it came back {picked:?}",
        report.ok, report.failed, report.errors
    );
    assert_eq!(
        report.failed, 0,
        "requests failed while the controller was away: {:?}",
        report.errors
    );
    assert!(
        picked.iter().all(|&n| n > 0),
        "the new program is not picking every worker: {picked:?}"
    );
    assert_idle_zero(service);
}

/// Connections that end every way but the plain one: reset before being accepted, idle until
/// uWSGI times them out, closed by the client mid-request. Once they are all gone, every slot
/// reads 0 in flight within a second.
#[test]
fn loads_return_to_zero_after_resets_and_timeouts() {
    integration_tests::private_loopback();
    use std::io::Write;
    use std::net::TcpStream;
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("uwsgi-drift");
    let mut cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    cfg.extra = vec!["--socket-timeout".into(), "2".into()];
    let (registry, app) = uwsgi_with_registry(&dir, &cfg);
    let service = registry.service(cfg.addr).unwrap();

    let reset = |s: &TcpStream| {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt reads `linger` with its exact size; s is ours.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    };
    // Background load all along, so that the mix lands on busy workers too.
    let load = Load::start(cfg.addr, 16, PATH, Duration::from_secs(20));
    // Idle connections: uWSGI times them out (socket-timeout 2 s).
    let idle: Vec<TcpStream> = (0..40).filter_map(|_| TcpStream::connect(cfg.addr).ok()).collect();
    // Reset right away, most likely before any worker accepted them.
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(cfg.addr) {
            reset(&s);
        }
    }
    // Half a request, then a reset.
    for _ in 0..100 {
        if let Ok(mut s) = TcpStream::connect(cfg.addr) {
            let _ = s.write_all(b"GET /?ms=50 HTTP/1.0\r\nHo");
            reset(&s);
        }
    }
    // A whole slow request, abandoned by the client while the worker runs it.
    for _ in 0..40 {
        if let Ok(mut s) = TcpStream::connect(cfg.addr) {
            let _ = s.write_all(b"GET /?ms=100 HTTP/1.0\r\n\r\n");
            reset(&s);
        }
    }
    std::thread::sleep(Duration::from_secs(4));
    drop(idle);
    let report = load.finish();
    println!("background load: ok {}, failed {} {:?}", report.ok, report.failed, report.errors);
    // Wait for the workers to finish what they still run (the slow abandoned requests).
    std::thread::sleep(Duration::from_millis(500));
    let idle_after = wait_idle_zero(service, Duration::from_secs(1));
    let adjustments = registry.counters().adjustments.load(std::sync::atomic::Ordering::Relaxed);
    println!("loads back to 0 after {idle_after:?} ({adjustments} reconciliation adjustments)");
    assert!(
        idle_after.is_some(),
        "loads did not return to 0: {:?}\n{}",
        service.group().slots(),
        app.log_tail(20)
    );
    assert_eq!(report.failed, 0, "background requests failed: {:?}", report.errors);
}

#[test]
fn registry_rejects_what_is_not_a_worker_socket() {
    integration_tests::private_loopback();
    use balancer_common::protocol::{Register, Status};
    use std::os::fd::AsRawFd;
    let _serial = serial();
    let dir = TempDir::new("registry-reject");
    let addr = loopback(free_port());
    let registry = start_registry(&dir, addr);
    let path = registry.socket_path().to_path_buf();
    let me = std::process::id();
    let msg = Register::new(me, 1).encode();

    let r = register_raw(&path, b"hello", &[]);
    assert_eq!(r.status(), Status::BadMessage, "{}", r.reason());
    let r = register_raw(&path, &msg, &[]);
    assert_eq!(r.status(), Status::NoDescriptor, "{}", r.reason());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = register_raw(&path, &msg, &[udp.as_raw_fd()]);
    assert_eq!(r.status(), Status::NotAListener, "{}", r.reason());
    // A TCP listener without SO_REUSEPORT, then one with it on another address.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let r = register_raw(&path, &msg, &[plain.as_raw_fd()]);
    assert_eq!(r.status(), Status::NotAListener, "{}", r.reason());
    let other = balancer_user::listener::bind_reuseport(loopback(free_port()), 16).unwrap();
    let r = register_raw(&path, &msg, &[other.as_raw_fd()]);
    assert_eq!(r.status(), Status::NotAListener, "{}", r.reason());
    println!("rejected other address: {}", r.reason());
    // The service's own address: accepted, with the load map.
    let good = balancer_user::listener::bind_reuseport(addr, 16).unwrap();
    let r = register_raw(&path, &msg, &[good.as_raw_fd()]);
    assert_eq!(r.status(), Status::Ok, "{}", r.reason());
    let rejected: u64 = registry.counters().rejections().iter().map(|(_, n)| n).sum();
    assert_eq!(rejected, 5, "{:?}", registry.counters().rejections());
    assert_eq!(registry.counters().replies(Status::NotAListener), 3);
    // Our registration connection closed right after the reply: the slot is freed.
    let service = registry.service(addr).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || slot_pids(service).is_empty()),
        "slot not freed: {:?}",
        slot_pids(service)
    );
}

/// pack end to end: `reuselb run --policy pack --pack-depth 3` over 4 uWSGI processes, with 2
/// clients in a closed loop (a fresh connection per request), never has more than 2 in flight, so
/// one worker (the lowest slot) serves nearly every request; the control, least-loaded on the same
/// app and load, spreads them. What the shim counts (in flight -1 per answer) is what keeps the
/// first worker below its depth: a shim or program that ignored pack fails one side or the other.
#[test]
fn uwsgi_under_pack_keeps_one_worker_warm_and_least_loaded_spreads() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let _ = least_loaded_group(Mode::Auto); // fail early and clearly without BPF
    let dir = TempDir::new("uwsgi-pack");
    let busiest_share = |tag: &str, policy: &[&str]| -> f64 {
        let addr = loopback(free_port());
        let mut cfg = UwsgiConfig::new(addr, UwsgiProto::Http);
        cfg.processes = 4;
        let mut extra = vec!["--no-metrics", "--status-every", "0"];
        extra.extend_from_slice(policy);
        let mut run = spawn_reuselb_run(
            &cfg.command_line(),
            addr,
            &dir.path().join(format!("{tag}.sock")),
            &dir.path().join(format!("{tag}.log")),
            &extra,
        );
        assert!(cfg.wait_ready(Duration::from_secs(30)), "{tag}: {}", run.log_tail(40));
        assert!(
            wait_until(Duration::from_secs(20), || apps::registered_pids(&run.log_text()).len()
                >= cfg.processes as usize),
            "{tag}: not every worker registered: {}",
            run.log_tail(60)
        );
        wait_serving(addr, addr);
        let report = Load::run(addr, 2, PATH, Duration::from_secs(4));
        run.signal(libc::SIGTERM);
        run.wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{tag}: reuselb run did not exit: {}", run.log_tail(30)));
        let mut counts: Vec<u64> = report.by_pid.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let share = counts.first().copied().unwrap_or(0) as f64 / report.ok.max(1) as f64;
        println!(
            "{tag}: ok {}, failed {}, per worker {counts:?}, busiest share {share:.3}",
            report.ok, report.failed
        );
        assert_eq!(report.failed, 0, "{tag}: requests failed: {:?}", report.errors);
        assert!(report.ok >= 100, "{tag}: only {} requests in 4 s", report.ok);
        share
    };
    let pack = busiest_share("pack", &["--policy", "pack", "--pack-depth", "3"]);
    let control = busiest_share("least-loaded", &["--policy", "least-loaded"]);
    assert!(pack >= 0.9, "pack at depth 3 with 2 clients left the first worker at {pack:.3}");
    assert!(control <= 0.6, "least-loaded (the control) did not spread: busiest {control:.3}");
}
