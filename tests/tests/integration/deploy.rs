//! The deployment files: the Kubernetes manifests render with kustomize and validate offline
//! against a current Kubernetes, and every reuselb config they carry parses.
use std::{path::PathBuf, process::Command};

use balancer_user::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Kubernetes version the manifests must validate against.
const KUBERNETES: &str = "1.34.0";

fn render(dir: &str) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize", &repo().join(dir).to_string_lossy()])
        .output()
        .expect("running kubectl (cargo xtask setup installs Debian's kubernetes-client)");
    assert!(out.status.success(), "kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

fn validate(dir: &str, rendered: &str) {
    let file = std::env::temp_dir().join(format!(
        "reuselb-{}-{}.yaml",
        std::process::id(),
        dir.replace('/', "-")
    ));
    std::fs::write(&file, rendered).unwrap();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", KUBERNETES])
        .arg(&file)
        .output()
        .expect("running kubernetes-validate (cargo xtask setup installs it from PyPI)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{dir} does not validate against Kubernetes {KUBERNETES}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifests_render_and_validate() {
    for dir in [
        "deploy/kubernetes/base",
        "deploy/kubernetes/overlays/bpffs-bidirectional",
        "deploy/kubernetes/example-uwsgi",
    ] {
        let rendered = render(dir);
        assert!(rendered.contains("kind:"), "{dir} rendered nothing");
        validate(dir, &rendered);
    }
}

#[test]
fn the_daemonset_runs_with_two_capabilities_and_probes_healthz() {
    let rendered = render("deploy/kubernetes/base");
    for needle in [
        "kind: DaemonSet",
        "- BPF",
        "- PERFMON",
        "- ALL",
        "path: /healthz",
        "maxUnavailable: 1",
        "prometheus.io/scrape",
        "path: /sys/fs/bpf",
        "path: /run/reuselb",
    ] {
        assert!(rendered.contains(needle), "the DaemonSet lacks `{needle}`");
    }
    assert!(!rendered.contains("privileged: true"), "the base DaemonSet must not be privileged");
}

#[test]
fn shipped_reuselb_configs_parse() {
    for file in ["deploy/kubernetes/base/reuselb.yaml", "deploy/examples/reuselb.yaml"] {
        let path = repo().join(file);
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
