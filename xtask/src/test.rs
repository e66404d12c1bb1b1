//! `cargo xtask test`: every test of the workspace, against the freshly built release binaries;
//! then each fuzz target for a short while (`cargo xtask fuzz` runs them longer).

use anyhow::{ensure, Result};

use crate::{build, command, fuzz, privilege, workspace::Workspace};

pub fn run(ws: &Workspace, cargo_args: &[String]) -> Result<()> {
    // Checked before the long build, so a non-root run fails at once.
    ensure!(
        privilege::is_root()?,
        "the integration tests load BPF programs and create network namespaces: run as root"
    );
    let artifacts = build::run(ws)?;
    // `--workspace` means every member, default-members or not: balancer-ebpf only builds for the
    // BPF target (balancer-user's build script builds it), so it must be excluded by name.
    let mut cargo = ws.cargo();
    cargo.args(["test", "--release", "--workspace", "--exclude", "balancer-ebpf"]).args(cargo_args);
    command::run(artifacts.export_to(&mut cargo))?;
    fuzz::run(ws, None, fuzz::CI_SECONDS)
}
