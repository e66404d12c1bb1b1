//! Workers that may not call `bpf()` (issue 19; defect 7 of the earlier round): container
//! runtimes' default seccomp profiles deny `bpf()` to app containers, and kernels before 6.5 deny
//! it to unprivileged processes. The shim makes no `bpf()` call: the load map comes from the
//! controller over the registration socket, checked in `/proc/self/fdinfo`. Here uWSGI and every
//! worker run under a seccomp filter that kills a process at its first `bpf()` call
//! (`tests/src/bin/deny_bpf.rs`): whatever the kernel or uid, a shim that called `bpf()` would
//! lose its workers, where the earlier test (workers as `nobody`) passes on kernels from 6.5 on
//! even if the shim calls it. Runs in a private network namespace.
use std::time::Duration;

use integration_tests::{
    apps::{
        free_port, loopback, one_request, require, serial, spawn_with_shim, wait_until, Load,
        TempDir, UwsgiConfig, UwsgiProto,
    },
    registered::{slot_pids, start_registry, total_selections},
};

/// Workers of the app.
const WORKERS: u32 = 4;

/// The seccomp mode of `pid` (`Seccomp:` of `/proc/PID/status`: 2 is filtered).
fn seccomp_mode(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Seccomp:")?.trim().parse().ok())
}

#[test]
fn uwsgi_workers_denied_bpf_by_seccomp_register_and_are_balanced() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("seccomp-bpf");
    let addr = loopback(free_port());
    let registry = start_registry(&dir.path().join("shim.sock"), addr);
    let service = registry.service(addr).unwrap();
    let mut cfg = UwsgiConfig::new(addr, UwsgiProto::Http);
    cfg.processes = WORKERS;
    let mut cmdline = vec![env!("CARGO_BIN_EXE_deny_bpf").to_string()];
    cmdline.extend(cfg.command_line());
    let app = spawn_with_shim(&cmdline, addr, registry.socket_path(), &dir.path().join("app.log"));
    // uWSGI says "DAMN ! worker N (pid: P) died, killed by signal 31" (SIGSYS) and respawns it.
    let killed = || app.log_text().contains("killed by signal");
    let registered = || slot_pids(service).len() == WORKERS as usize;
    assert!(
        wait_until(Duration::from_secs(20), || registered() || killed()),
        "the workers did not register within 20 s ({:?}): {}",
        slot_pids(service),
        app.log_tail(40)
    );
    assert!(!killed(), "a worker was killed (SIGSYS: it called bpf()): {}", app.log_tail(40));
    for pid in slot_pids(service) {
        assert_eq!(seccomp_mode(pid), Some(2), "worker {pid} runs without the seccomp filter");
    }
    assert!(
        wait_until(Duration::from_secs(20), || one_request(addr, "/?ms=0").is_ok()),
        "uWSGI does not serve: {}",
        app.log_tail(40)
    );
    let before = total_selections(service);
    let report = Load::run(addr, 16, "/?ms=5", Duration::from_secs(5));
    let selected = total_selections(service) - before;
    let sent = report.ok + report.failed;
    println!("the program selected the worker of {selected} of {sent} requests");
    assert_eq!(report.failed, 0, "requests failed: {:?}", report.errors);
    assert!(
        selected as f64 >= 0.9 * sent as f64,
        "the program selected the worker of only {selected} of {sent} requests"
    );
    assert!(!killed(), "a worker was killed (SIGSYS: it called bpf()): {}", app.log_tail(40));
    assert_eq!(slot_pids(service).len(), WORKERS as usize, "a worker left its slot");
    drop(app);
    registry.stop();
}
