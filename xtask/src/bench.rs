//! `cargo xtask bench`: builds, then runs the bench binary of the integration tests crate.

use anyhow::Result;

use crate::{build, command, workspace::Workspace};

pub fn run(ws: &Workspace, what: &str, args: &[String]) -> Result<()> {
    let artifacts = build::run(ws)?;
    let mut cargo = ws.cargo();
    cargo
        .args(["run", "--release", "-p", "integration-tests", "--bin", "bench", "--", what])
        .args(args);
    command::run(artifacts.export_to(&mut cargo))
}
