//! The container image under podman: built from the binaries under test by
//! deploy/container/build-image.sh (FROM scratch, nothing pulled), then `reuselb doctor` run in it
//! with CAP_BPF + CAP_PERFMON and nothing else. With deploy/seccomp/reuselb.json it passes; with
//! podman's default seccomp profile it fails, and names seccomp (not the kernel) as the cause.
//!
//! The sidecar form (deploy/kubernetes/sidecar) simulated: the daemon from the image, with the
//! same privileges, in a network namespace it shares with a uWSGI that preloads the shim and sees
//! the socket directory read-only. Its workers register and are balanced whether the daemon shares
//! their pid namespace (`--pid host`) or not: in a pid namespace of its own it cannot see their
//! pids and tracks them by their registration connections.
//!
//! Podman runs as these machines allow (measured, see /work/shared/TOOLCHAIN.md): runc, because
//! crun refuses hybrid cgroups; cgroupfs; lowered rlimits, because raising them is not permitted.
//! A podman that cannot build or run here fails the test with podman's own error: never a skip.
//! Every podman command has a deadline; the test's image and containers are removed at the end.
use std::{
    io::Read,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use balancer_user::report::Report;
use integration_tests::{
    apps::{
        apps_dir, one_request, registered_pids, reuselb_bin, shim_lib, wait_until, workspace_root,
        Proc, TempDir, UwsgiConfig, UwsgiProto,
    },
    NetNs,
};

/// Deadline of the image build (about 2 s here).
const BUILD_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one `reuselb doctor` container or one `podman run --detach` (1 to 30 s here,
/// depending on the load: the verifier's work on the programs dominates).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Podman's global options on these machines.
const PODMAN: &[&str] = &["--runtime", "runc", "--cgroup-manager", "cgroupfs"];

/// An image built for this test, removed when dropped.
struct Image(String);

impl Image {
    /// The image, tagged `localhost/reuselb-test:<pid>-<test>`.
    fn build(test: &str) -> Self {
        require_podman();
        let tag = format!("localhost/reuselb-test:{}-{test}", std::process::id());
        let mut cmd = Command::new(workspace_root().join("deploy/container/build-image.sh"));
        cmd.arg(reuselb_bin()).arg(shim_lib()).arg(&tag);
        let out = bounded(cmd, BUILD_TIMEOUT, None);
        assert!(
            out.status.success(),
            "building the image with podman failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        Self(tag)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn require_podman() {
    let out = Command::new("podman").arg("--version").output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "podman is required by this test and does not run ({out:?}): run `cargo xtask setup`, \
         which installs Debian's podman and runc"
    );
}

/// `podman run` with the daemon's privileges: CAP_BPF + CAP_PERFMON only, under `seccomp` (a
/// profile's path, or `None` for podman's default profile).
fn podman_run(name: &str, seccomp: Option<&str>) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(PODMAN)
        .args(["run", "--name", name])
        .args(["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"])
        .args(["--cap-drop", "ALL", "--cap-add", "BPF", "--cap-add", "PERFMON"]);
    if let Some(profile) = seccomp {
        cmd.args(["--security-opt", &format!("seccomp={profile}")]);
    }
    cmd
}

/// The shipped seccomp profile.
fn profile() -> String {
    workspace_root().join("deploy/seccomp/reuselb.json").to_string_lossy().into_owned()
}

/// Runs `reuselb doctor` in `image` with the daemon's privileges under `seccomp`.
fn doctor(image: &Image, seccomp: Option<&str>) -> Output {
    let name = format!("reuselb-test-{}-{}", std::process::id(), seccomp.is_some());
    let mut cmd = podman_run(&name, seccomp);
    cmd.args(["--rm", "--network", "none", &image.0, "doctor"]);
    bounded(cmd, RUN_TIMEOUT, Some(&name))
}

/// Runs `cmd` to completion with its output captured; panics (after removing the container
/// `name`, if any) when it outlives `timeout`.
fn bounded(mut cmd: Command, timeout: Duration, name: Option<&str>) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {shown}: {e}"));
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        let _ = tx.send((true, buf));
    });
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        let _ = tx2.send((false, buf));
    });
    let deadline = Instant::now() + timeout;
    let (mut out, mut err) = (None, None);
    while out.is_none() || err.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, buf)) => out = Some(buf),
            Ok((false, buf)) => err = Some(buf),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                if let Some(name) = name {
                    let _ = Command::new("podman").args(["rm", "--force", name]).output();
                }
                panic!("{shown} did not finish within {timeout:?}");
            }
        }
    }
    let status = child.wait().expect("waiting for podman");
    Output { status, stdout: out.unwrap(), stderr: err.unwrap() }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The doctor's line for check `name` (`[ok  ] name: ...`, `[FAIL] name: ...`).
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(7..).is_some_and(|rest| rest.starts_with(&format!("{name}:"))))
        .unwrap_or_else(|| panic!("no `{name}` check in the doctor's report:\n{report}"))
}

#[test]
fn doctor_in_the_image_passes_with_the_profile_and_names_seccomp_without_it() {
    let _machine = integration_tests::apps::shared();
    let started = Instant::now();
    let image = Image::build("doctor");
    let built = started.elapsed();
    let profile = profile();

    // CAP_BPF + CAP_PERFMON and the shipped profile: everything reuselb needs works.
    let out = doctor(&image, Some(&profile));
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "doctor failed in the container with CAP_BPF, CAP_PERFMON and {profile} ({}):\n{report}{}",
        out.status,
        text(&out.stderr)
    );
    for check in ["capabilities", "sk_reuseport program", "migrate attach type", "attach"] {
        assert!(line(&report, check).starts_with("[ok  ]"), "{check} is not ok:\n{report}");
    }
    assert!(
        line(&report, "confinement").contains("1 seccomp filter(s)"),
        "the profile is not in force:\n{report}"
    );

    let passed = started.elapsed();

    // The same capabilities under podman's default profile: refused by seccomp, and said so.
    let out = doctor(&image, None);
    let report = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "doctor must fail under the default seccomp profile:\n{report}{}",
        text(&out.stderr)
    );
    for check in ["sk_reuseport program", "attach"] {
        let l = line(&report, check);
        assert!(l.starts_with("[FAIL]"), "{check} should fail:\n{report}");
        assert!(l.contains("refused with EPERM"), "{check} does not name EPERM:\n{report}");
        assert!(l.contains("seccomp filter"), "{check} does not name seccomp:\n{report}");
    }
    assert!(line(&report, "capabilities").starts_with("[ok  ]"), "{report}");
    assert!(
        !report.to_lowercase().contains("upgrade"),
        "a kernel upgrade advised on a kernel that has every feature:\n{report}"
    );
    assert!(report.contains("deploy/seccomp/reuselb.json"), "no fix named:\n{report}");
    eprintln!(
        "container test: image built in {built:.1?}, doctor with the profile {:.1?}, with the \
         default profile {:.1?}",
        passed - built,
        started.elapsed() - passed
    );
}

/// A detached container, killed and removed when dropped.
struct Container(String);

impl Container {
    fn logs(&self) -> String {
        let out = Command::new("podman").args(["logs", &self.0]).output().expect("podman logs");
        text(&out.stdout) + &text(&out.stderr)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "--force", &self.0]).output();
    }
}

/// The sidecar's configuration (as deploy/kubernetes/sidecar/reuselb.yaml, on a test port).
const SIDECAR_CONFIG: &str = "\
metrics_addr: 127.0.0.1:9464
services:
  - name: web
    listen: [\"127.0.0.1:8000\"]
    policy: speed-aware
    max_workers: 64
    shim_socket: /run/reuselb/web.sock
";
const APP: &str = "127.0.0.1:8000";
const WORKERS: u32 = 4;
const REQUESTS: usize = 200;

/// The daemon from `image` in `pod`'s network namespace, the socket directory `sockets`
/// mounted read-write at /run/reuselb; in the host's pid namespace if `share_pids`.
fn start_sidecar(image: &Image, pod: &NetNs, dir: &TempDir, share_pids: bool) -> Container {
    let name = format!("reuselb-sidecar-{}-{share_pids}", std::process::id());
    let config = dir.path().join("etc");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("reuselb.yaml"), SIDECAR_CONFIG).unwrap();
    let mut cmd = podman_run(&name, Some(&profile()));
    cmd.arg("--detach")
        .arg(format!("--network=ns:{}", pod.proc_path().display()))
        .args(["--read-only", "--volume"])
        .arg(format!("{}:/etc/reuselb:ro", config.display()))
        .arg("--volume")
        .arg(format!("{}:/run/reuselb", dir.path().join("run").display()));
    if share_pids {
        cmd.arg("--pid=host");
    }
    cmd.args([&image.0, "daemon", "--config", "/etc/reuselb/reuselb.yaml"]);
    let out = bounded(cmd, RUN_TIMEOUT, Some(&name));
    let container = Container(name);
    assert!(
        out.status.success(),
        "podman could not start the daemon: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let up = wait_until(Duration::from_secs(60), || status(pod).is_some());
    assert!(up, "the daemon in the container does not answer /status:\n{}", container.logs());
    container
}

/// The daemon's /status, read with `reuselb status --json` inside the pod.
fn status(pod: &NetNs) -> Option<Report> {
    let out = pod
        .command(&reuselb_bin().to_string_lossy())
        .args(["status", "--json", "--addr", "127.0.0.1:9464"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok().filter(|_| out.status.success())
}

/// uWSGI with the shim in `pod`, the socket directory read-only in its own mount namespace.
fn start_app(pod: &NetNs, dir: &TempDir, tag: &str) -> (Proc, UwsgiConfig) {
    let mut cfg = UwsgiConfig::new(APP.parse().unwrap(), UwsgiProto::Http);
    cfg.processes = WORKERS;
    cfg.threads = 4;
    cfg.app = apps_dir().join("gil_app.py");
    let sockets = dir.path().join("run");
    let script = format!(
        "mount --bind {d} {d} && mount -o remount,bind,ro {d} && \
         if touch {d}/probe 2>/dev/null; then echo 'socket dir writable'; exit 1; fi && \
         exec \"$@\"",
        d = sockets.display()
    );
    let mut cmd = pod.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"])
        .args(cfg.command_line())
        .env("LD_PRELOAD", shim_lib())
        .env(balancer_common::protocol::ENV_LISTEN, APP)
        .env(balancer_common::protocol::ENV_SOCKET, sockets.join("web.sock"));
    let app = Proc::spawn("uwsgi", cmd, &dir.path().join(format!("uwsgi-{tag}.log")));
    let ready = pod.run(|| cfg.wait_ready(Duration::from_secs(30)));
    assert!(ready, "uWSGI did not start in the pod:\n{}", app.log_tail(30));
    (app, cfg)
}

#[test]
fn the_image_runs_the_daemon_as_a_sidecar_sharing_the_pods_network_and_pids() {
    let _machine = integration_tests::apps::shared();
    let started = Instant::now();
    let image = Image::build("sidecar");
    let pod = NetNs::new().expect("the pod's network namespace");
    let dir = TempDir::new("reuselb-sidecar");
    std::fs::create_dir_all(dir.path().join("run")).unwrap();

    let daemon = start_sidecar(&image, &pod, &dir, true);
    let (app, cfg) = start_app(&pod, &dir, "shared");
    let registered = wait_until(Duration::from_secs(30), || {
        status(&pod).is_some_and(|r| r.services[0].workers().count() == WORKERS as usize)
    });
    assert!(
        registered,
        "not every worker registered: {:?}\ndaemon:\n{}\nuWSGI:\n{}",
        status(&pod),
        daemon.logs(),
        app.log_tail(30)
    );
    assert_eq!(registered_pids(&app.log_text()).len(), WORKERS as usize, "{}", app.log_tail(30));

    let before = status(&pod).unwrap();
    let request = "/?ms=0".to_owned();
    let served: Vec<u32> = pod.run(|| {
        (0..REQUESTS)
            .map(|i| {
                one_request(APP.parse().unwrap(), &request).unwrap_or_else(|e| panic!("#{i}: {e}"))
            })
            .collect()
    });
    let after = status(&pod).unwrap();
    let selected = |r: &Report| r.services[0].workers().map(|w| w.selected).sum::<u64>();
    let selections = selected(&after) - selected(&before);
    let mut pids = served.clone();
    pids.sort_unstable();
    pids.dedup();
    eprintln!(
        "sidecar: {WORKERS} workers registered, {selections} selections for {REQUESTS} requests, \
         served by {} workers; {:.1?}",
        pids.len(),
        started.elapsed()
    );
    assert!(
        selections as f64 >= 0.9 * REQUESTS as f64,
        "the program selected {selections} of {REQUESTS} connections: {after:?}"
    );
    let stats = pod.run(|| cfg.stats()).expect("uWSGI stats");
    assert_eq!(stats.iter().map(|(_, n)| n).sum::<u64>(), REQUESTS as u64, "{stats:?}");
    drop(app);
    drop(daemon);

    // The same daemon in a pid namespace of its own: the workers' pids are invisible to it
    // (SO_PEERCRED says 0). It tracks them by their registration connections instead, so they
    // register and are balanced all the same: the sidecar needs no shareProcessNamespace.
    let daemon = start_sidecar(&image, &pod, &dir, false);
    let (app, _cfg) = start_app(&pod, &dir, "private");
    let registered = wait_until(Duration::from_secs(30), || {
        status(&pod).is_some_and(|r| r.services[0].workers().count() == WORKERS as usize)
    });
    let report = status(&pod);
    assert!(
        registered,
        "the workers did not register with a daemon that cannot see their pids: {report:?}\n{}\n{}",
        daemon.logs(),
        app.log_tail(30)
    );
    let before = report.unwrap();
    assert!(before.services[0].workers().all(|w| w.pid == 0), "{before:?}");
    let served = (0..REQUESTS).filter(|_| one_request_ok(&pod, &request)).count();
    assert_eq!(served, REQUESTS, "requests failed");
    let after = status(&pod).unwrap();
    let selections = selected(&after) - selected(&before);
    eprintln!(
        "sidecar, private pid namespace: {WORKERS} workers registered (pid 0), {selections} \
         selections for {REQUESTS} requests"
    );
    assert!(
        selections as f64 >= 0.9 * REQUESTS as f64,
        "the program selected {selections} of {REQUESTS} connections: {after:?}"
    );
}

/// Whether one request in `pod` gets a 200.
fn one_request_ok(pod: &NetNs, request: &str) -> bool {
    pod.run(|| one_request(APP.parse().unwrap(), request).is_ok())
}
