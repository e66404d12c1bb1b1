//! The controller's descriptor limit (issue 19): about three descriptors per registered worker, so
//! `reuselb daemon` and `reuselb run` raise their soft `RLIMIT_NOFILE` to the hard limit at start
//! (the soft limit service managers leave, 1024, is reached at about 300 workers), and the app
//! `reuselb run` starts gets the soft limit `reuselb run` started with. Each test starts the real
//! binary under `prlimit --nofile=SOFT:HARD` and reads `/proc/PID/limits`; each runs in a
//! private network namespace.
use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use integration_tests::apps::{
    free_port, reuselb_bin, shim_lib, wait_until, PinDir, Proc, TempDir,
};

/// The limits a test starts the binary with: a low soft limit under a higher hard one.
const SOFT: u64 = 256;
const HARD: u64 = 8192;

/// `prlimit --nofile=SOFT:HARD reuselb ARGS...`: prlimit execs the binary (the same pid).
fn under_prlimit(args: &[&str]) -> Command {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={SOFT}:{HARD}")).arg(reuselb_bin()).args(args);
    cmd
}

/// The soft and hard "Max open files" of `pid`, from `/proc/PID/limits`.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let n: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (n[0], n[1])
}

#[test]
fn run_raises_its_soft_limit_and_the_app_keeps_the_one_it_was_given() {
    integration_tests::private_loopback();
    let dir = TempDir::new("nofile-run");
    let socket = dir.path().join("shim.sock");
    let listen = format!("127.0.0.1:{}", free_port());
    let socket_arg = socket.to_str().unwrap();
    let shim = shim_lib();
    let cmd = under_prlimit(&[
        "run",
        "--listen",
        &listen,
        "--socket",
        socket_arg,
        "--shim",
        shim.to_str().unwrap(),
        "--no-metrics",
        "--status-every",
        "0",
        "--",
        "sleep",
        "60",
    ]);
    let mut run = Proc::spawn("reuselb run", cmd, &dir.path().join("run.log"));
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists() && !run.children().is_empty()),
        "reuselb run did not start its app: {}",
        run.log_tail(20)
    );
    run.adopt_child_groups();
    let app = run.children()[0];
    assert_eq!(
        open_files_limit(run.pid()),
        (HARD, HARD),
        "reuselb run kept the soft limit it was started with: {}",
        run.log_tail(20)
    );
    assert_eq!(open_files_limit(app), (SOFT, HARD), "the app did not get the soft limit back");
    assert!(run.log_text().contains(&format!("raised from {SOFT} to the hard limit {HARD}")));
    run.signal(libc::SIGTERM);
    run.wait_timeout(Duration::from_secs(10));
}

/// A config of one service on `addr`, its sockets in `dir`, pinned under `pins`.
fn one_service_config(dir: &Path, pins: &PinDir, addr: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("reuselb.yaml");
    let text = format!(
        "shim_socket_dir: {}\npin_path: {}\nservices:\n  - name: web\n    listen: \"{addr}\"\n",
        dir.join("sock").display(),
        pins.path().display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn daemon_raises_its_soft_limit_to_the_hard_limit() {
    integration_tests::private_loopback();
    let dir = TempDir::new("nofile-daemon");
    let pins = PinDir::new("nofile");
    let config =
        one_service_config(dir.path(), &pins, SocketAddr::from(([127, 0, 0, 1], free_port())));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cmd = under_prlimit(&[
        "daemon",
        "--config",
        config.to_str().unwrap(),
        "--metrics-addr",
        &metrics.to_string(),
    ]);
    let mut daemon = Proc::spawn("reuselb daemon", cmd, &dir.path().join("daemon.log"));
    assert!(
        wait_until(Duration::from_secs(30), || integration_tests::http::get(metrics, "/healthz")
            .is_some_and(|(code, _)| code == 200)),
        "the daemon did not come up: {}",
        daemon.log_tail(30)
    );
    assert_eq!(
        open_files_limit(daemon.pid()),
        (HARD, HARD),
        "the daemon kept the soft limit it was started with: {}",
        daemon.log_tail(20)
    );
    daemon.signal(libc::SIGTERM);
    daemon.wait_timeout(Duration::from_secs(10));
}
