//! `cargo xtask soak --minutes N`: the soak test of tests/tests/integration/daemon.rs for longer
//! than the minute every `cargo xtask test` gives it: load, worker recycling and kills, a
//! daemon restart.

use anyhow::{ensure, Result};

use crate::{build, command, privilege, workspace::Workspace};

pub fn run(ws: &Workspace, minutes: u64) -> Result<()> {
    ensure!(minutes > 0, "--minutes must be at least 1");
    ensure!(privilege::is_root()?, "the soak loads BPF programs and starts uWSGI: run as root");
    let artifacts = build::run(ws)?;
    let mut cargo = ws.cargo();
    cargo
        .args([
            "test",
            "--release",
            "-p",
            "integration-tests",
            "--test",
            "integration",
            "daemon::soak_",
        ])
        .args(["--", "--nocapture"])
        .env("SOAK_SECONDS", (minutes * 60).to_string());
    command::run(artifacts.export_to(&mut cargo))
}
