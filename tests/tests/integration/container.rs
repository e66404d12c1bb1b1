//! The container image under podman: built from the binaries under test by
//! deploy/container/build-image.sh (FROM scratch, nothing pulled), then `reuselb doctor` run in it
//! with CAP_BPF + CAP_PERFMON and nothing else. With deploy/seccomp/reuselb.json it passes; with
//! podman's default seccomp profile it fails, and names seccomp (not the kernel) as the cause.
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

use integration_tests::apps::{reuselb_bin, shim_lib, workspace_root};

/// Deadline of the image build (about 2 s here).
const BUILD_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one `reuselb doctor` container (about 1 s here).
const RUN_TIMEOUT: Duration = Duration::from_secs(45);

/// Podman's global options on these machines.
const PODMAN: &[&str] = &["--runtime", "runc", "--cgroup-manager", "cgroupfs"];

/// An image built for this test, removed when dropped.
struct Image(String);

impl Image {
    fn build() -> Self {
        require_podman();
        let tag = format!("localhost/reuselb-test:{}", std::process::id());
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

/// Runs `reuselb doctor` in `image` with CAP_BPF + CAP_PERFMON only, under `seccomp` (a
/// profile's path, or `None` for podman's default profile).
fn doctor(image: &Image, seccomp: Option<&str>) -> Output {
    let name = format!("reuselb-test-{}-{}", std::process::id(), seccomp.is_some());
    let mut cmd = Command::new("podman");
    cmd.args(PODMAN)
        .args(["run", "--rm", "--name", &name, "--network", "none"])
        .args(["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"])
        .args(["--cap-drop", "ALL", "--cap-add", "BPF", "--cap-add", "PERFMON"]);
    if let Some(profile) = seccomp {
        cmd.args(["--security-opt", &format!("seccomp={profile}")]);
    }
    cmd.args([&image.0, "doctor"]);
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
    let started = Instant::now();
    let image = Image::build();
    let built = started.elapsed();
    let profile = workspace_root().join("deploy/seccomp/reuselb.json");

    // CAP_BPF + CAP_PERFMON and the shipped profile: everything reuselb needs works.
    let out = doctor(&image, Some(&profile.to_string_lossy()));
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "doctor failed in the container with CAP_BPF, CAP_PERFMON and {} ({}):\n{report}{}",
        profile.display(),
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
