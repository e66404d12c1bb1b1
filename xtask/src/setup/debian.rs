//! The Debian packages of the real components the tests and the demo start (application servers,
//! with uWSGI's gevent plugin and python3-gevent for gunicorn's gevent workers, both rows of the
//! compatibility matrix; proxies, load generators) and of the tools they use (bpftool, ip netns, nft to hold
//! handshakes half-open in the migration tests, kubectl to render the Kubernetes manifests
//! with its built-in kustomize; apt serves it on these machines; tmux, the terminal that the test
//! of `reuselb top` drives; prometheus for promtool, which checks and unit-tests the alert rules of
//! deploy/monitoring and checks the metrics; uwsgi-src, pypy3 and pypy3-dev with the headers
//! uwsgi-src's plugin build includes, and patch, for uWSGI's pypy plugin (`pypy_plugin.rs`)),
//! and podman with runc for the container image (`cargo xtask image`)
//! and its test: `podman build` builds the image by itself (buildah's code is inside podman, which
//! execs no `buildah`), and runc runs it where crun refuses hybrid cgroups.

use std::process::Command;

use anyhow::Result;

use super::{needs_root, report};
use crate::command;

const PACKAGES: &[&str] = &[
    "uwsgi",
    "uwsgi-plugin-python3",
    "uwsgi-plugin-gevent-python3",
    "nginx",
    "wrk",
    "bpftool",
    "iproute2",
    "nftables",
    "kubectl",
    "gunicorn",
    "python3-gevent",
    "python3-django",
    "podman",
    "runc",
    "tmux",
    "prometheus",
    "uwsgi-src",
    "pypy3",
    "pypy3-dev",
    "libcap-dev",
    "libpcre3-dev",
    "uuid-dev",
    "libssl-dev",
    "libxml2-dev",
    "libyajl-dev",
    "libyaml-dev",
    "zlib1g-dev",
    "patch",
];

pub fn ensure(root: bool) -> Result<()> {
    let step = "Debian packages";
    let mut missing = Vec::new();
    for &package in PACKAGES {
        if !installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        report(step, format!("all {} present", PACKAGES.len()));
        return Ok(());
    }
    if !root {
        return Err(needs_root(format!(
            "installing the missing Debian packages ({}) with apt",
            missing.join(" ")
        )));
    }
    command::run(Command::new("apt-get").arg("update"))?;
    command::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    report(step, format!("installed {}", missing.join(" ")));
    Ok(())
}

/// dpkg's view; a package it has never heard of makes dpkg-query fail, which is "not installed".
fn installed(package: &str) -> Result<bool> {
    let out = command::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))?;
    Ok(out.status.success() && out.stdout == b"install ok installed")
}
