//! Privilege drop (issue 13, item 1): app servers started as root that drop to `nobody`/`nogroup`
//! after binding (uWSGI `uid`/`gid`, gunicorn `--user`/`--group`), and an app started as `nobody`
//! directly, each under `reuselb run` (the product path), with real uWSGI and gunicorn.
//!
//! A worker that dropped privileges cannot put a socket of its own into the reuseport group (the
//! kernel wants one owner uid per group, and root bound the shared socket): it registers with
//! `Register::WANT_SOCKET` and the controller creates its listener (`registry::handover`). Each
//! row asserts: every worker registered, the program's selections >= 0.9 x requests, 0 failed
//! requests, and load awareness: two workers blocked by a long GIL-holding request get (almost)
//! none of the short requests under least-loaded, while the hash policy on the same app, in the
//! same test, sends them their share (the control). Also: the controller refuses WANT_SOCKET for
//! a socket of another network namespace with a clear reason and the app serves on, and with no
//! controller the privilege-dropping app serves exactly as without the shim.
//!
//! The app and its directory live in a temp dir of mode 0755 (files 0644), so `nobody` reads them;
//! the app marks a worker busy with a file in `busy/` (mode 0777) while it runs a marked request.
use std::{collections::HashSet, net::SocketAddr, path::Path, time::Duration};

use balancer_common::{protocol::Status, Policy};
use balancer_user::{
    registry::{own_netns_cookie, Registry, RegistryOptions},
    Mode,
};
use integration_tests::{
    apps::{
        free_port, listening_sockets, loopback, one_request, require, serial, spawn_reuselb_run,
        wait_until, Load, Proc, TempDir, UwsgiConfig, UwsgiProto,
    },
    blocked::{block_two, BlockedShare},
    http::{get as http_get, status},
    registered::least_loaded_group,
    NetNs,
};

/// The uid and gid the apps drop to.
const NOBODY: u32 = 65534;
/// Workers of every row: single-threaded, so that one long request blocks a whole worker.
const WORKERS: usize = 4;

/// The test app: like `tests/apps/gil_app.py` (each request holds the GIL for `ms`), answering
/// with the worker's pid and uid; a request with `mark` keeps a file `busy/<pid>` while it runs.
const APP: &str = r#"import os
import time
from urllib.parse import parse_qs

BUSY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "busy")


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    ms = float(qs.get("ms", ["5"])[0])
    mark = os.path.join(BUSY, str(os.getpid())) if "mark" in qs else None
    if mark:
        open(mark, "w").close()
    end = time.perf_counter() + ms / 1000.0
    n = 0
    while time.perf_counter() < end:
        n += 1
    if mark:
        os.unlink(mark)
    body = ("pid=%d uid=%d loops=%d\n" % (os.getpid(), os.getuid(), n)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// A temp dir with the app (`app.py`) and its `busy/` directory, readable by `nobody`.
fn app_dir(tag: &str) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new(tag);
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::set_permissions(&busy, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// How a row starts its app server.
#[derive(Clone, Copy, Debug)]
enum App {
    /// uWSGI started as root with `uid = nobody`, `gid = nogroup`. uWSGI drops privileges before
    /// it binds `http-socket`, so the sockets are nobody's and the workers split as usual: what
    /// this row needs is a registration socket that `nobody` may use.
    UwsgiUidDrop,
    /// The same with the socket bound by root before the drop (`shared-socket`, `http-socket =
    /// =0`: uWSGI's way to a privileged port): the workers ask for their listener.
    UwsgiSharedSocket,
    /// gunicorn started as root with `--user nobody --group nogroup` (sync workers).
    GunicornUser,
    /// uWSGI started as `nobody` directly (`setpriv`), no drop of its own.
    UwsgiAsNobody,
}

fn uwsgi_config(dir: &Path, addr: SocketAddr) -> UwsgiConfig {
    let mut cfg = UwsgiConfig::new(addr, UwsgiProto::Http);
    cfg.processes = WORKERS as u32;
    cfg.threads = 1;
    cfg.app = dir.join("app.py");
    cfg
}

impl App {
    fn command_line(self, dir: &Path, addr: SocketAddr) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            App::UwsgiUidDrop => {
                let mut cfg = uwsgi_config(dir, addr);
                cfg.extra = s(&["--uid", "nobody", "--gid", "nogroup"]);
                cfg.command_line()
            }
            App::UwsgiSharedSocket => {
                let mut v = App::UwsgiUidDrop.command_line(dir, addr);
                // The shared socket must be defined before the option that maps it (`=0`).
                let at = v.iter().position(|a| a == "--http-socket").expect("--http-socket");
                v[at + 1] = "=0".into();
                v.insert(at, addr.to_string());
                v.insert(at, "--shared-socket".into());
                v
            }
            App::GunicornUser => {
                let mut v = s(&["gunicorn", "--chdir"]);
                v.push(dir.display().to_string());
                v.extend(s(&["--workers", &WORKERS.to_string(), "--worker-class", "sync"]));
                v.extend(s(&["--bind", &addr.to_string(), "--backlog", "256", "--timeout", "30"]));
                v.extend(s(&["--user", "nobody", "--group", "nogroup", "app:application"]));
                v
            }
            App::UwsgiAsNobody => {
                let mut v = s(&["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
                v.extend(uwsgi_config(dir, addr).command_line());
                v
            }
        }
    }

    /// True if the workers run as another uid than the one that bound the shared socket, and so
    /// ask the controller for their listeners.
    fn wants_socket(self) -> bool {
        matches!(self, App::UwsgiSharedSocket | App::GunicornUser)
    }

    fn program(self) -> &'static str {
        match self {
            App::GunicornUser => "gunicorn",
            _ => "uwsgi",
        }
    }
}

/// `reuselb run --policy P` around `app` on a fresh port, with metrics; waits until every worker
/// registered (`/status`). Returns the run, the app's address and the metrics address.
fn start_run(dir: &TempDir, app: App, policy: Policy) -> (Proc, SocketAddr, SocketAddr) {
    let addr = loopback(free_port());
    let metrics = loopback(free_port());
    let log = dir.path().join(format!("run-{}.log", policy.name()));
    let run = spawn_reuselb_run(
        &app.command_line(dir.path(), addr),
        addr,
        &dir.path().join(format!("shim-{}.sock", policy.name())),
        &log,
        &[
            "--policy",
            policy.name(),
            "--name",
            "privdrop",
            "--metrics-addr",
            &metrics.to_string(),
            "--status-every",
            "0",
        ],
    );
    let registered = wait_until(Duration::from_secs(40), || {
        http_get(metrics, "/healthz").is_some() && registered_pids(metrics).len() == WORKERS
    });
    assert!(
        registered,
        "{app:?} ({}): {} of {WORKERS} workers registered\n{}",
        policy.name(),
        if http_get(metrics, "/healthz").is_some() { registered_pids(metrics).len() } else { 0 },
        run.log_tail(60)
    );
    (run, addr, metrics)
}

/// Pids of the registered workers, from `/status`.
fn registered_pids(metrics: SocketAddr) -> HashSet<u32> {
    status(metrics).services.iter().flat_map(|s| s.workers().map(|w| w.pid)).collect()
}

/// Sum of `reuselb_worker_selected_total` (selections since the group was created).
fn selected(metrics: SocketAddr) -> u64 {
    let (code, body) = http_get(metrics, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("reuselb_worker_selected_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Pids whose marked (blocking) request is running now.
fn busy(dir: &TempDir) -> HashSet<u32> {
    std::fs::read_dir(dir.path().join("busy"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// How long a blocking request holds its worker.
const BLOCK_MS: u64 = 5000;
/// How long the short requests run while two workers are blocked (less if the set-up was slow:
/// the window ends a second before the block).
const WINDOW: Duration = Duration::from_millis(2500);

/// Blocks two distinct workers with a long request each, then runs short requests (a closed loop
/// of 4 clients) for [`WINDOW`]; returns where they went.
fn blocked_share(dir: &TempDir, addr: SocketAddr) -> BlockedShare {
    let request = format!("/?ms={BLOCK_MS}&mark=1");
    let block = Duration::from_millis(BLOCK_MS);
    let blocked = block_two(addr, &request, block, Duration::from_millis(500), || busy(dir));
    let window = blocked.window(WINDOW, Duration::from_secs(1));
    let share = blocked.share(&Load::run(addr, 4, "/?ms=2", window));
    blocked.end();
    share
}

/// One row: `app` under `reuselb run`, least-loaded (every check), then hash (the control of the
/// blocked-worker scene), each on a fresh port.
fn row(app: App) {
    integration_tests::private_loopback();
    let _serial = serial();
    require(app.program());
    require("setpriv");
    let dir = app_dir(&format!("privdrop-{}", app.program()));
    let (run, addr, metrics) = start_run(&dir, app, Policy::LeastLoaded);
    let pids = registered_pids(metrics);
    // The workers really run as nobody.
    let answer = integration_tests::http::get(addr, "/?ms=0").expect("the app answers").1;
    assert!(answer.contains(&format!("uid={NOBODY} ")), "a worker answered {answer:?}");

    let handed_over = run.log_text().matches("on a listener created for it (uid drop)").count();
    let expected = if app.wants_socket() { WORKERS } else { 0 };
    assert_eq!(handed_over, expected, "listeners created by the controller\n{}", run.log_tail(40));

    let before = selected(metrics);
    let report = Load::run(addr, 16, "/?ms=2", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    let selections = selected(metrics) - before;
    let requests = report.ok + report.failed;
    let served_by: HashSet<u32> = report.by_pid.keys().copied().collect();
    println!(
        "{app:?}: {} of {WORKERS} workers registered; the program selected {selections} of \
         {requests} requests ({:.3}); {} failed; served by {served_by:?}",
        pids.len(),
        selections as f64 / requests.max(1) as f64,
        report.failed
    );
    assert_eq!(report.failed, 0, "requests failed: {:?}\n{}", report.errors, run.log_tail(40));
    assert!(requests >= 200, "too little traffic to mean anything: {requests}");
    assert!(
        selections as f64 >= 0.9 * requests as f64,
        "the program selected {selections} of {requests} connections\n{}",
        run.log_tail(40)
    );
    assert!(served_by.is_subset(&pids), "served by {served_by:?}, registered {pids:?}");

    let least_loaded = blocked_share(&dir, addr);
    drop(run);
    let (hash_run, hash_addr, _) = start_run(&dir, app, Policy::Hash);
    let hash_share = blocked_share(&dir, hash_addr);
    drop(hash_run);
    let (ll, hash) = (least_loaded.share(), hash_share.share());
    println!(
        "{app:?}: blocked workers (2 of {WORKERS}) got {} of {} short requests ({:.1}%) under \
         least-loaded, {} of {} ({:.1}%) under hash",
        least_loaded.to_blocked,
        least_loaded.total,
        ll * 100.0,
        hash_share.to_blocked,
        hash_share.total,
        hash * 100.0
    );
    let ll_total = least_loaded.total;
    assert!(ll_total >= 100, "too few short requests under least-loaded: {ll_total}");
    assert!(ll <= 0.05, "least-loaded sent {:.1}% to the blocked workers", ll * 100.0);
    assert!(hash >= 0.15, "the hash control sent only {:.1}%: nothing was blocked", hash * 100.0);
}

#[test]
fn uwsgi_uid_gid_drop_under_reuselb_run_is_balanced() {
    row(App::UwsgiUidDrop);
}

#[test]
fn uwsgi_shared_socket_bound_as_root_then_uid_drop_is_balanced() {
    row(App::UwsgiSharedSocket);
}

#[test]
fn gunicorn_user_group_drop_under_reuselb_run_is_balanced() {
    row(App::GunicornUser);
}

#[test]
fn app_started_as_nobody_under_reuselb_run_is_balanced() {
    row(App::UwsgiAsNobody);
}

/// The controller creates listeners only in its own network namespace: a privilege-dropping
/// worker whose shared socket lives in another one (a pod served by a node daemon) is refused
/// with the reason, and the app serves on, on its shared socket.
#[test]
fn want_socket_from_another_network_namespace_is_refused_and_the_app_serves() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = app_dir("privdrop-netns");
    let ns = NetNs::new().expect("creating a network namespace (tests must run as root)");
    let cookie = ns.run(own_netns_cookie).expect("the namespace's cookie");
    let addr = loopback(free_port());
    let mut options = RegistryOptions::new(dir.path().join("shim.sock"));
    options.any_uid = true;
    options.socket_mode = 0o666;
    // The service lives in `ns`; the controller (this thread) in the test's own namespace.
    options.netns_cookie = Some(cookie);
    let registry = Registry::start(options, vec![(addr, least_loaded_group(Mode::Auto))])
        .expect("start the registry");
    let cmdline = App::UwsgiSharedSocket.command_line(dir.path(), addr);
    let mut cmd = ns.command(&cmdline[0]);
    cmd.args(&cmdline[1..])
        .env("LD_PRELOAD", integration_tests::apps::shim_lib())
        .env(balancer_common::protocol::ENV_LISTEN, addr.to_string())
        .env(balancer_common::protocol::ENV_SOCKET, registry.socket_path());
    let app = Proc::spawn("uwsgi", cmd, &dir.path().join("uwsgi.log"));
    let refused = wait_until(Duration::from_secs(30), || {
        registry.counters().replies(Status::WrongNamespace) >= WORKERS as u64
    });
    let log = app.log_text();
    assert!(
        refused,
        "{} WANT_SOCKET refusals: {}",
        registry.counters().replies(Status::WrongNamespace),
        app.log_tail(40)
    );
    assert!(
        log.contains("rejected (wrong_namespace)")
            && log.contains("creates listeners only in its own network namespace"),
        "the workers' log does not give the reason: {}",
        app.log_tail(40)
    );
    assert_eq!(registry.counters().replies(Status::Ok), 0);
    let report = ns.run(|| {
        assert!(
            wait_until(Duration::from_secs(10), || one_request(addr, "/?ms=0").is_ok()),
            "the app does not serve"
        );
        Load::run(addr, 8, "/?ms=1", Duration::from_secs(2))
    });
    println!(
        "refused {} WANT_SOCKET registrations; the app served {} requests, {} failed, by {} workers",
        registry.counters().replies(Status::WrongNamespace),
        report.ok,
        report.failed,
        report.by_pid.len()
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok >= 100, "too little traffic: {}", report.ok);
    drop(app);
    registry.stop();
}

/// Fail-open: with no controller at all, uWSGI dropping to nobody after root bound its socket
/// (`shared-socket`), with the shim, serves exactly as without it: one listener on the port (the shared one, nothing split), every worker serving,
/// no request failed.
#[test]
fn privilege_dropping_app_with_no_controller_serves_as_without_the_shim() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = app_dir("privdrop-failopen");
    let mut results = Vec::new();
    for with_shim in [true, false] {
        let addr = loopback(free_port());
        let cmdline = App::UwsgiSharedSocket.command_line(dir.path(), addr);
        let log = dir.path().join(format!("uwsgi-{with_shim}.log"));
        let app = if with_shim {
            integration_tests::apps::spawn_with_shim(
                &cmdline,
                addr,
                &dir.path().join("nobody-listens.sock"),
                &log,
            )
        } else {
            integration_tests::apps::spawn_plain(&cmdline, &log)
        };
        assert!(
            wait_until(Duration::from_secs(20), || one_request(addr, "/?ms=0").is_ok()),
            "uWSGI does not serve: {}",
            app.log_tail(30)
        );
        let report = Load::run(addr, 8, "/?ms=2", Duration::from_secs(3));
        let listeners = listening_sockets(addr.port());
        println!(
            "{}: {} ok, {} failed, {} workers served, {listeners} listener(s) on the port",
            if with_shim { "shim, no controller" } else { "no shim" },
            report.ok,
            report.failed,
            report.by_pid.len()
        );
        if with_shim {
            assert!(
                app.log_text().contains("controller not reachable"),
                "the shim did not look for the controller: {}",
                app.log_tail(30)
            );
        }
        results.push((report.failed, report.by_pid.len(), listeners, report.ok));
        drop(app);
    }
    let [(shim_failed, shim_workers, shim_listeners, shim_ok), (plain_failed, _, plain_listeners, _)] =
        results[..]
    else {
        unreachable!()
    };
    assert_eq!(shim_failed, 0);
    assert_eq!(plain_failed, 0);
    assert!(shim_ok >= 200, "too little traffic: {shim_ok}");
    assert_eq!(
        shim_listeners, plain_listeners,
        "the shim changed the listeners with no controller"
    );
    assert_eq!(shim_listeners, 1);
    assert_eq!(shim_workers, WORKERS, "not every worker served with the shim");
}

/// With any uid allowed (`reuselb run`'s default), the caps on unregistered connections still
/// hold per uid: 30 idle connections of `nobody` over a cap of 10 are closed at once (20 of
/// them, long before `register_timeout`), a registration of `nobody` with no listener on the
/// address is refused as such (not for its uid), and root's worker still registers meanwhile.
#[test]
fn any_uid_keeps_the_per_uid_caps_and_still_wants_a_listener() {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;

    use balancer_common::protocol::Register;
    use balancer_user::listener::bind_reuseport;
    use integration_tests::shim_client::{as_uid, connect, register_and_hold, register_raw};

    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("privdrop-caps");
    let addr = loopback(free_port());
    let mut options = RegistryOptions::new(dir.path().join("shim.sock"));
    options.any_uid = true;
    options.socket_mode = 0o666;
    options.max_pending_per_uid = 10;
    let registry = Registry::start(options, vec![(addr, least_loaded_group(Mode::Auto))])
        .expect("start the registry");
    let path = registry.socket_path().to_path_buf();
    let msg = Register::new(std::process::id(), 1).encode();
    let (idle, refused) = as_uid(NOBODY, move || {
        let idle: Vec<_> = (0..30).map(|_| connect(&path).expect("nobody connects")).collect();
        // A UDP socket is no listener on the address.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (idle, register_raw(&path, &msg, &[udp.as_raw_fd()]))
    });
    assert_eq!(refused.status(), Status::NotAListener, "{}", refused.reason());
    let closed = || registry.counters().pending_closed.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(2), || closed() >= 20),
        "{} of the 20 idle connections over the cap closed",
        closed()
    );
    let listener = bind_reuseport(addr, 16).unwrap();
    let (reply, _conn) = register_and_hold(registry.socket_path(), &msg, listener.as_raw_fd());
    assert_eq!(reply.status(), Status::Ok, "{}", reply.reason());
    println!(
        "any uid: {} idle connections of nobody closed over the cap of 10, a registration with \
         no listener refused ({}), root's worker registered",
        closed(),
        refused.status().name()
    );
    assert_eq!(registry.counters().replies(Status::UidNotAllowed), 0);
    drop(idle);
    registry.stop();
}
