//! The compatibility matrix (issue 13): the uWSGI and gunicorn deployments people run, one test
//! per row, each with Debian's real uWSGI 2.0.21 or gunicorn under an in-process controller (the
//! library's registry, as `reuselb run` runs it) with the shim preloaded, as `reuselb run` does.
//!
//! Every row asserts the same four things ([`run_row`]):
//! - every worker registered: the slots' pids are exactly the app server's worker processes,
//!   before the load and again after it (workers replaced meanwhile registered too);
//! - the program selected the worker of >= 90% of the requests (its selections over every slot,
//!   counted against the requests sent);
//! - no request failed, unless the row documents why some must ([`Row::may_fail`]);
//! - load awareness: with two workers blocked by a long GIL-holding request, short requests avoid
//!   them under least-loaded, while the hash policy on the same app (the control, same test)
//!   sends them their share.
//!
//! A row is a few lines: the command line (and files) of the app server, the addresses it
//! balances, and its expectations. What cannot be balanced is a row too ([`run_refusal`]): it
//! asserts the clear message at start and that the app still serves.
//!
//! Each row prints its figures and writes them to `target/compat-matrix/<test>.md` as a line of
//! the README's "Works with" table; [`readme_table_lists_every_row`] checks the README against
//! the rows.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use balancer_user::registry::Registry;
use integration_tests::{
    apps::{
        self, descendants, free_port, loopback, require, serial, spawn_nginx,
        spawn_with_shim_listening, wait_until, Load, LoadReport, Proc, TempDir,
    },
    registered::{blocked_scene_with_control, slot_pids, start_registry_for, total_selections},
};

/// Clients of the balance load, over all the row's services.
const CONCURRENCY: usize = 32;
/// How long the balance load runs.
const LOAD: Duration = Duration::from_secs(4);
/// Short requests: 5 ms of GIL each.
const PATH: &str = "/?ms=5";
/// How long a blocking request holds the GIL, and how long the short requests run inside it.
const BLOCK: Duration = Duration::from_millis(4000);
const WINDOW: Duration = Duration::from_millis(2000);
/// Least-loaded may send at most this share of the short requests to the blocked workers...
const MAX_SHARE_LEAST_LOADED: f64 = 0.05;
/// ... and the hash policy must send them at least this share (else the scene blocked nothing).
const MIN_SHARE_HASH: f64 = 0.10;

/// One row of the matrix.
struct Row {
    /// The app server's command line.
    command: Vec<String>,
    /// The balanced addresses (a service each), and where clients reach each.
    services: Vec<Svc>,
    /// Generations between the started process and the workers (1: its children; 2: the
    /// Emperor's vassals' children).
    depth: u32,
    /// Workers per service once started (None: it varies, as with `cheaper`).
    workers: Option<usize>,
    /// The first service is reached through nginx (`uwsgi_pass`) instead of directly.
    nginx: bool,
    /// Done to the app server a second into the balance load.
    during: During,
    /// Failed requests the row allows, and why (None: none may fail).
    may_fail: Option<(u64, &'static str)>,
}

/// A balanced address and where clients connect to reach it.
struct Svc {
    bind: SocketAddr,
    connect: SocketAddr,
}

impl Svc {
    fn loopback() -> Self {
        let a = loopback(free_port());
        Self { bind: a, connect: a }
    }
}

/// What happens to the app server during the balance load.
enum During {
    Nothing,
    /// A signal to the started process (gunicorn's graceful reload: HUP).
    Signal(i32),
    /// The file's modification time changes (uWSGI's `touch-reload`).
    Touch(PathBuf),
    /// These requests are sent once, each on a thread of its own (harakiri, reload-on-rss).
    Requests(Vec<String>),
}

impl Row {
    /// uWSGI, 8 processes x 20 threads (the seed's), on `proto` at one loopback address, with
    /// `extra` options.
    fn uwsgi(dir: &Path, proto: &str, extra: &[&str]) -> Self {
        let svc = Svc::loopback();
        let mut command = uwsgi_base(dir, 8, 20);
        command.extend([format!("--{proto}"), svc.bind.to_string()]);
        command.extend(extra.iter().map(|s| s.to_string()));
        Self::new(command, vec![svc], Some(8))
    }

    /// gunicorn with 6 workers of `class` and `extra` options.
    fn gunicorn(class: &str, extra: &[&str]) -> Self {
        let svc = Svc::loopback();
        let mut command: Vec<String> = [
            "gunicorn",
            "--chdir",
            &apps::apps_dir().display().to_string(),
            "--workers",
            "6",
            "--worker-class",
            class,
            "--bind",
            &svc.bind.to_string(),
            "--timeout",
            "30",
            "--graceful-timeout",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        command.extend(extra.iter().map(|s| s.to_string()));
        command.push("gil_app:application".into());
        Self::new(command, vec![svc], Some(6))
    }

    fn new(command: Vec<String>, services: Vec<Svc>, workers: Option<usize>) -> Self {
        Self {
            command,
            services,
            depth: 1,
            workers,
            nginx: false,
            during: During::Nothing,
            may_fail: None,
        }
    }
}

/// uWSGI's options common to the rows: the seed's (master, lazy-apps, threads), the GIL-bound
/// test app, its output to the log.
fn uwsgi_base(dir: &Path, processes: u32, threads: u32) -> Vec<String> {
    let _ = dir;
    [
        "uwsgi",
        "--plugin",
        "python3",
        "--master",
        "--processes",
        &processes.to_string(),
        "--threads",
        &threads.to_string(),
        "--enable-threads",
        "--lazy-apps",
        "--die-on-term",
        "--disable-logging",
        "--wsgi-file",
        &apps::apps_dir().join("gil_app.py").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The figures of one row, for the README's table.
struct Figures {
    requests: u64,
    selected: u64,
    workers: usize,
    busiest_over_ideal: f64,
    least_loaded: f64,
    hash: f64,
}

/// Runs a row: starts it under an in-process controller, checks the four claims (module doc),
/// prints and records the figures.
fn run_row(test: &str, label: &str, build: impl FnOnce(&Path) -> Row) {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new(&format!("compat-{test}"));
    let row = build(dir.path());
    require(&row.command[0]);
    if row.nginx {
        require("nginx");
    }
    let binds: Vec<SocketAddr> = row.services.iter().map(|s| s.bind).collect();
    let registry = start_registry_for(&dir.path().join("shim.sock"), &binds);
    let app = spawn_with_shim_listening(
        &row.command,
        &binds,
        registry.socket_path(),
        &dir.path().join("app.log"),
    );
    let mut entries: Vec<SocketAddr> = row.services.iter().map(|s| s.connect).collect();
    let _nginx = row.nginx.then(|| {
        let port = free_port();
        let nginx = spawn_nginx(dir.path(), port, row.services[0].connect);
        entries[0] = loopback(port);
        nginx
    });
    for entry in &entries {
        assert!(
            wait_until(Duration::from_secs(30), || apps::one_request(*entry, "/?ms=0").is_ok()),
            "{label}: {entry} does not serve: {}",
            app.log_tail(40)
        );
    }
    let workers = assert_all_registered(label, &registry, &row, &app);

    // Balance: a bounded load on every service at once, the row's event in the middle.
    let selected_before: Vec<u64> =
        registry.services().iter().map(total_selections).collect();
    let per_service = (CONCURRENCY / entries.len()).max(1);
    let loads: Vec<Load> =
        entries.iter().map(|e| Load::start(*e, per_service, PATH, LOAD)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let during = happen(&row.during, &app, entries[0]);
    std::thread::sleep(LOAD - Duration::from_secs(1));
    let reports: Vec<LoadReport> = loads.into_iter().map(Load::finish).collect();
    for t in during {
        let _ = t.join();
    }
    // Let the last selections land (nginx may still be connecting upstream).
    std::thread::sleep(Duration::from_millis(300));
    let selected_after: Vec<u64> = registry.services().iter().map(total_selections).collect();
    let mut requests = 0;
    let mut selected = 0;
    let mut counts = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let sent = r.ok + r.failed;
        let sel = selected_after[i] - selected_before[i];
        println!(
            "{label}: service {}: {sent} requests, ok {}, failed {} {:?}; program selections {sel}; per worker pid {:?}",
            binds[i], r.ok, r.failed, r.errors, r.by_pid
        );
        let allowed = row.may_fail.map(|(n, _)| n).unwrap_or(0);
        assert!(
            r.failed <= allowed,
            "{label}: {} requests failed ({}): {:?}\n{}",
            r.failed,
            row.may_fail.map(|(_, why)| why).unwrap_or("none may fail"),
            r.errors,
            app.log_tail(30)
        );
        assert!(
            sel as f64 >= 0.9 * sent as f64,
            "{label}: the program selected the worker of only {sel} of {sent} requests to {}",
            binds[i]
        );
        assert!(sent >= 100, "{label}: too few requests to mean anything: {sent}");
        requests += sent;
        selected += sel;
        counts.extend(r.by_pid.values().copied());
    }
    // Workers replaced meanwhile (recycled, reloaded, killed) registered too.
    assert_all_registered(label, &registry, &row, &app);

    // Load awareness on the first service, with the hash policy as the control.
    let service = &registry.services()[0];
    let clients = (workers / row.services.len()).saturating_sub(2).clamp(1, 4);
    let (ll, hash) = blocked_scene_with_control(service, entries[0], BLOCK, WINDOW, clients);
    println!(
        "{label}: two workers blocked: least-loaded sent them {} of {} short requests ({:.1}%), hash {} of {} ({:.1}%)",
        ll.to_blocked,
        ll.total,
        ll.share() * 100.0,
        hash.to_blocked,
        hash.total,
        hash.share() * 100.0
    );
    assert!(ll.total >= 100, "{label}: too few short requests under least-loaded: {}", ll.total);
    assert!(
        ll.share() <= MAX_SHARE_LEAST_LOADED,
        "{label}: least-loaded sent {:.1}% of the short requests to the blocked workers",
        ll.share() * 100.0
    );
    assert!(
        hash.share() >= MIN_SHARE_HASH,
        "{label}: the control (hash) sent only {:.1}% to the blocked workers: the scene blocked nothing",
        hash.share() * 100.0
    );
    let figures = Figures {
        requests,
        selected,
        workers,
        busiest_over_ideal: LoadReport::imbalance(&counts),
        least_loaded: ll.share(),
        hash: hash.share(),
    };
    record(test, label, &figures);
    drop(app);
    registry.stop();
}

/// Waits until the slots of the row's services hold exactly the app server's workers (and as
/// many as the row expects); returns how many there are. Panics with the log's tail otherwise.
fn assert_all_registered(label: &str, registry: &Registry, row: &Row, app: &Proc) -> usize {
    let state = || {
        let mut workers = descendants(app.pid(), row.depth);
        let mut slots: Vec<u32> = registry.services().iter().flat_map(slot_pids).collect();
        workers.sort();
        slots.sort();
        (workers, slots)
    };
    let ok = wait_until(Duration::from_secs(30), || {
        let (workers, slots) = state();
        let per_service_ok = row.workers.is_none_or(|n| {
            registry.services().iter().all(|s| slot_pids(s).len() == n)
        });
        !workers.is_empty() && workers == slots && per_service_ok
    });
    let (workers, slots) = state();
    assert!(
        ok,
        "{label}: not every worker registered: workers {workers:?}, slots {slots:?}\n{}",
        app.log_tail(40)
    );
    workers.len()
}

/// Does the row's event; returns the threads of its requests.
fn happen(during: &During, app: &Proc, entry: SocketAddr) -> Vec<std::thread::JoinHandle<()>> {
    match during {
        During::Nothing => Vec::new(),
        During::Signal(sig) => {
            app.signal(*sig);
            Vec::new()
        }
        During::Touch(path) => {
            std::fs::write(path, b"touched\n").expect("touch the reload file");
            Vec::new()
        }
        During::Requests(paths) => paths
            .iter()
            .cloned()
            .map(|p| {
                std::thread::spawn(move || {
                    let _ = apps::one_request(entry, &p);
                })
            })
            .collect(),
    }
}

/// Prints the row's figures and writes them as a line of the README's table to
/// `target/compat-matrix/<test>.md`.
fn record(test: &str, label: &str, f: &Figures) {
    let line = format!(
        "| {label} | {} | {}/{} ({:.1}%) | {:.2} | {:.1}% | {:.1}% |",
        f.workers,
        f.selected,
        f.requests,
        f.selected as f64 * 100.0 / f.requests.max(1) as f64,
        f.busiest_over_ideal,
        f.least_loaded * 100.0,
        f.hash * 100.0
    );
    println!("matrix row: {line}");
    let dir = apps::workspace_root().join("target/compat-matrix");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{test}.md")), format!("{line}\n"));
}

/// The rows: `test_name: "README label" => |dir| Row`. Each becomes a #[test]; [`ROWS`] lists
/// the labels for the README check.
macro_rules! rows {
    ($($test:ident: $label:literal => $build:expr;)*) => {
        /// The labels of the matrix's rows, in the README's order.
        const ROWS: &[&str] = &[$($label),*];
        $(
            #[test]
            fn $test() {
                run_row(stringify!($test), $label, $build);
            }
        )*
    };
}

rows! {
    uwsgi_http_socket: "uWSGI http-socket, 8 x 20 threads, lazy-apps" =>
        |dir| Row::uwsgi(dir, "http-socket", &[]);
    uwsgi_socket_behind_nginx: "uWSGI socket (uwsgi protocol) behind nginx" =>
        |dir| Row { nginx: true, ..Row::uwsgi(dir, "socket", &[]) };
}

/// The README's "Works with" table lists every row of the matrix (and nothing is left blank).
#[test]
fn readme_table_lists_every_row() {
    let readme = std::fs::read_to_string(apps::workspace_root().join("README.md")).unwrap();
    let table: Vec<&str> = readme
        .split("## Works with")
        .nth(1)
        .expect("README.md has a \"## Works with\" section")
        .lines()
        .filter(|l| l.starts_with("| "))
        .collect();
    for label in ROWS {
        let line = table
            .iter()
            .find(|l| l.split('|').nth(1).map(str::trim) == Some(*label))
            .unwrap_or_else(|| panic!("README's \"Works with\" table has no row {label:?}"));
        assert!(
            line.split('|').skip(2).all(|cell| !cell.trim().is_empty() || cell.is_empty()),
            "README's row {label:?} has an empty cell: {line}"
        );
    }
}
