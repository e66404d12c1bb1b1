//! `cargo xtask build`: reuselb and its LD_PRELOAD shim, in release. The eBPF programs are built by
//! balancer-user's build script (aya-build, through `rustup run nightly` and bpf-linker), which
//! is why setup runs first.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Result};

use crate::{command, setup, workspace::Workspace};

/// What the build leaves for the tests, the benchmarks and the demo.
pub struct Artifacts {
    pub reuselb: PathBuf,
    pub shim: PathBuf,
}

impl Artifacts {
    /// Tells `cmd` which binaries to start, as REUSELB_BIN and REUSELB_SHIM (absolute paths), so
    /// the tests use what was just built rather than guessing at target/.
    pub fn export_to<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("REUSELB_BIN", &self.reuselb).env("REUSELB_SHIM", &self.shim)
    }
}

/// Full setup, then the build.
pub fn run(ws: &Workspace) -> Result<Artifacts> {
    setup::run(ws)?;
    build(ws)
}

/// Toolchain setup only, then the build (`cargo xtask build --toolchain-only`).
pub fn toolchain_only(ws: &Workspace) -> Result<Artifacts> {
    setup::toolchain(ws)?;
    build(ws)
}

/// The build alone, on a machine already set up.
pub fn build(ws: &Workspace) -> Result<Artifacts> {
    let artifacts = release_binaries(ws.cargo(), &ws.target.join("release"), &[])?;
    println!("xtask: built {}", artifacts.reuselb.display());
    println!("xtask: built {}", artifacts.shim.display());
    Ok(artifacts)
}

/// `cargo build --release` of reuselb and the shim, with `cargo` (a cargo command whose
/// environment may name another target directory, of which `release` is the release directory)
/// and the `extra` arguments; fails unless both are there afterwards.
pub fn release_binaries(mut cargo: Command, release: &Path, extra: &[&str]) -> Result<Artifacts> {
    command::run(
        cargo
            .args(["build", "--release", "-p", "balancer-user", "-p", "balancer-shim"])
            .args(extra),
    )?;
    let artifacts =
        Artifacts { reuselb: release.join("reuselb"), shim: release.join("libbalancer_shim.so") };
    for path in [&artifacts.reuselb, &artifacts.shim] {
        ensure!(path.is_file(), "the build succeeded but left no {}", path.display());
    }
    Ok(artifacts)
}
