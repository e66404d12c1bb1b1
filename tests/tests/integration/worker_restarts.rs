//! Worker restarts with real uWSGI under steady load: workers that recycle (max-requests) or
//! reload (SIGHUP, chain reload) lose no connection, because the select-or-migrate program moves
//! a closing worker's queue to the least-loaded other worker. Each test measures the comparison
//! beside it: the select-only program, or plain uWSGI. Each test runs in a private network
//! namespace.
use std::{path::Path, time::Duration};

use balancer_user::{
    loader::Program,
    registry::{Registry, RegistryOptions},
    Mode,
};
use integration_tests::{
    apps::{
        free_port, loopback, require, serial, wait_until, Load, LoadReport, Proc, TempDir,
        UwsgiConfig, UwsgiProto,
    },
    registered::{least_loaded_group, uwsgi_under},
};

const CONCURRENCY: usize = 32;
const PATH: &str = "/?ms=2";

/// uWSGI with the shim, registered with an in-process registry running `mode`.
fn start(dir: &TempDir, cfg: &UwsgiConfig, mode: Mode) -> (Registry, Proc) {
    let group = least_loaded_group(mode);
    let expected = if mode == Mode::Select { Program::Select } else { Program::SelectOrMigrate };
    assert_eq!(group.program(), expected, "this kernel cannot run the program under test");
    let registry = Registry::start(
        RegistryOptions::new(dir.path().join("shim.sock")),
        vec![(cfg.addr, group)],
    )
    .expect("registry");
    let app = uwsgi_under(&registry, cfg, &dir.path().join("uwsgi.log"));
    (registry, app)
}

/// The load's report and the program's migration count.
fn recycling(dir: &TempDir, mode: Mode, seconds: u64) -> (LoadReport, u64) {
    let mut cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    cfg.max_requests = Some(20);
    // uWSGI 2.0.21's threaded workers can hang after "Seeya" until this mercy (unbit/uwsgi#2615).
    cfg.extra.extend(["--worker-reload-mercy".into(), "5".into()]);
    let (registry, app) = start(dir, &cfg, mode);
    let report = Load::run(cfg.addr, CONCURRENCY, PATH, Duration::from_secs(seconds));
    let migrated = registry
        .service(cfg.addr)
        .unwrap()
        .group()
        .stats()
        .map(|s| s.get(balancer_common::Event::MigrateSelected))
        .unwrap_or(0);
    println!(
        "{mode:?}: max-requests 20 for {seconds} s: ok {}, failed {}, connections migrated {migrated}; errors {:?}",
        report.ok, report.failed, report.errors
    );
    drop(app);
    registry.stop();
    (report, migrated)
}

#[test]
fn max_requests_recycling_under_load_keeps_connections() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("recycle-migrate");
    // 15 s each: the control lost 182 and 199 connections in 30 s in the last two proofs (926
    // once), so about 90 are expected in 15 s, and one that loses none did nothing.
    let (with, migrated) = recycling(&dir, Mode::Auto, 15);
    // The comparison: per-worker sockets without migration.
    let dir_select = TempDir::new("recycle-select");
    let (without, migrated_without) = recycling(&dir_select, Mode::Select, 15);
    println!("failed requests with migration: {}, without: {}", with.failed, without.failed);
    assert!(with.ok > 1000, "too little traffic to mean anything: {}", with.ok);
    // The program itself moved the queues of the recycled workers (not the kernel's hash): its
    // migration counter says so, and the select-only program never migrates.
    assert!(migrated > 0, "no connection was migrated by the program while workers recycled");
    assert_eq!(migrated_without, 0, "the select-only program counted migrations");
    // Seen on a quiet machine: 0 failed with migration, 926 without. What reuselb answers for
    // is the connection (the README: the queue of a recycled worker is moved, nothing lost): with
    // migration none may be refused or reset, while the control, in the same test, loses some.
    // uWSGI 2.0.21's own recycling may also close a connection its worker had accepted without
    // answering (an empty answer: a hung worker killed by worker-reload-mercy, with or without
    // reuselb), which must stay under 0.5% of the requests.
    let lost = |r: &LoadReport| r.failed - r.empty_answers;
    println!(
        "refused or reset: {} with migration, {} without; empty answers {} with, {} without",
        lost(&with),
        lost(&without),
        with.empty_answers,
        without.empty_answers
    );
    assert!(
        lost(&without) > 0,
        "the control (no migration) lost no connection: the scene queued nothing on a recycled worker"
    );
    assert_eq!(
        lost(&with),
        0,
        "connections refused or reset with migration ({} without): {:?}",
        lost(&without),
        with.errors
    );
    assert!(
        with.failed * 200 <= with.ok,
        "{} of {} requests failed with migration: {:?}",
        with.failed,
        with.ok,
        with.errors
    );
}

/// Sends `command` to uWSGI's master FIFO (`r` graceful reload, `c` chain reload).
fn master_fifo(path: &Path, command: &str) {
    std::fs::write(path, command).expect("writing the master FIFO");
}

// Empty answers (`LoadReport::empty_answers`): uWSGI accepted the connection and closed it without
// answering. uWSGI 2.0.21's threaded workers can hang on a reload until worker-reload-mercy kills
// them, dropping requests they had accepted, with or without reuselb (plain uWSGI is measured
// beside it below). What reuselb answers for is the connection: none may be refused, reset or
// left waiting, counted over every request (not over a sample of the errors).

/// uWSGI with a master FIFO, under load for `seconds`; `reload` runs `after` seconds in.
fn reload_under_load(
    dir: &TempDir,
    mode: Option<Mode>,
    seconds: u64,
    after: u64,
    reload: impl FnOnce(&Proc, &Path),
) -> LoadReport {
    let fifo = dir.path().join("master.fifo");
    let mut cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    cfg.extra.extend([
        "--master-fifo".into(),
        fifo.display().to_string(),
        "--worker-reload-mercy".into(),
        "5".into(),
    ]);
    let (registry, app) = match mode {
        Some(mode) => {
            let (r, a) = start(dir, &cfg, mode);
            (Some(r), a)
        }
        None => {
            let app = integration_tests::apps::spawn_plain(
                &cfg.command_line(),
                &dir.path().join("uwsgi.log"),
            );
            assert!(
                cfg.wait_ready(Duration::from_secs(30)),
                "uWSGI did not start: {}",
                app.log_tail(40)
            );
            (None, app)
        }
    };
    let report = std::thread::scope(|s| {
        let load = s.spawn(|| Load::run(cfg.addr, CONCURRENCY, PATH, Duration::from_secs(seconds)));
        std::thread::sleep(Duration::from_secs(after));
        reload(&app, &fifo);
        load.join().expect("load thread")
    });
    if let Some(registry) = registry {
        let service = registry.service(cfg.addr).unwrap();
        let all_back =
            || service.group().slots().map(|s| s.len()).unwrap_or(0) == cfg.processes as usize;
        assert!(
            wait_until(Duration::from_secs(30), all_back),
            "not every reloaded worker registered again: {}",
            app.log_tail(20)
        );
        drop(app);
        registry.stop();
    }
    report
}

/// Asserts that the load was enough to mean anything and that no connection failed during `what`
/// (empty answers aside: see above).
fn assert_no_connection_lost(report: &LoadReport, what: &str) {
    assert!(report.ok > 1000, "too little traffic to mean anything: {}", report.ok);
    assert_eq!(
        report.failed - report.empty_answers,
        0,
        "connections failed during {what} ({} empty answers besides): {:?}",
        report.empty_answers,
        report.errors
    );
}

#[test]
fn chain_reload_under_load_loses_no_connection() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("chain-reload");
    let report = reload_under_load(&dir, Some(Mode::Auto), 15, 3, |_, fifo| master_fifo(fifo, "c"));
    println!(
        "chain reload under load: ok {}, failed {} {:?}",
        report.ok, report.failed, report.errors
    );
    assert_no_connection_lost(&report, "the chain reload");
}

#[test]
fn graceful_reload_under_load_loses_no_connection() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let sighup = |app: &Proc, _: &Path| app.signal(libc::SIGHUP);
    let dir = TempDir::new("graceful-reload");
    let with = reload_under_load(&dir, Some(Mode::Auto), 15, 3, sighup);
    let plain_dir = TempDir::new("graceful-reload-plain");
    let plain = reload_under_load(&plain_dir, None, 15, 3, sighup);
    println!(
        "graceful reload under load: with reuselb ok {}, failed {} {:?}; plain uWSGI ok {}, failed {} {:?}",
        with.ok, with.failed, with.errors, plain.ok, plain.failed, plain.errors
    );
    assert_no_connection_lost(&with, "the reload");
}
