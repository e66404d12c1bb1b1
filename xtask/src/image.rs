//! `cargo xtask image`: the container image (deploy/container/Containerfile), built with podman
//! from the release binaries of `cargo xtask build`.
//!
//! The image is `FROM scratch`: deploy/container/build-image.sh stages reuselb, the libraries
//! `ldd` lists for it, the shim, the demo app and `cp`, and `podman build` copies them in, so no
//! base image is pulled. The container test (tests/tests/container.rs) builds through the same
//! script, with the binaries under test.

use std::process::Command;

use anyhow::Result;

use crate::{build, command, workspace::Workspace};

pub fn run(ws: &Workspace, tag: &str) -> Result<()> {
    let artifacts = build::run(ws)?;
    command::run(
        Command::new(ws.root.join("deploy/container/build-image.sh"))
            .arg(&artifacts.reuselb)
            .arg(&artifacts.shim)
            .arg(tag),
    )?;
    println!(
        "xtask: try it: podman --runtime runc --cgroup-manager cgroupfs run --rm --network none \
         --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --cap-drop ALL --cap-add BPF \
         --cap-add PERFMON --security-opt seccomp=deploy/seccomp/reuselb.json {tag} doctor"
    );
    Ok(())
}
