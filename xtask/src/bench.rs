//! `cargo xtask bench`: builds, then runs the `bench` binary of the benchmark crate (`bench/`,
//! package `reuselb-bench`) with the same arguments.

use anyhow::Result;

use crate::{build, command, workspace::Workspace};

pub fn run(ws: &Workspace, what: &str, args: &[String]) -> Result<()> {
    let artifacts = build::run(ws)?;
    let mut cargo = ws.cargo();
    cargo
        .args(["run", "--release", "-p", "reuselb-bench", "--bin", "bench", "--", what])
        .args(args);
    command::run(artifacts.export_to(&mut cargo))
}
