//! `cargo xtask test`: the lint gate (rustfmt, clippy: see `lint`), then every test of the
//! workspace against the freshly built release binaries, then the proof (`prove`: the claim tests
//! against the deliberately broken build), then each fuzz target for a short while (`cargo xtask
//! fuzz` runs them longer).
//!
//! The integration tests (the `tests` crate, one binary) are not a default member of the
//! workspace, since they need root: `--workspace` is what brings them in here.

use anyhow::{ensure, Result};

use crate::{build, fuzz, lint, privilege, prove, setup, workspace::Workspace};

pub fn run(ws: &Workspace, cargo_args: &[String]) -> Result<()> {
    // Checked before the long build, so a non-root run fails at once.
    ensure!(
        privilege::is_root()?,
        "the integration tests load BPF programs and create network namespaces: run as root"
    );
    setup::run(ws)?;
    // Before the long build and tests: a style slip fails in a minute.
    lint::check(ws)?;
    let artifacts = build::build(ws)?;
    // `--workspace` means every member, default-members or not: balancer-ebpf only builds for the
    // BPF target (balancer-user's build script builds it), so it must be excluded by name.
    let mut cargo = ws.cargo();
    cargo.args(["test", "--release", "--workspace", "--exclude", "balancer-ebpf"]).args(cargo_args);
    let (ok, outcomes) = prove::run_collecting(artifacts.export_to(&mut cargo), "")?;
    ensure!(ok, "`cargo test` failed: see the failures above");
    // The proof, on the outcomes just collected: every claim test passed on this build; each
    // must now fail on its broken build. Only with the whole suite (a filtered run proves
    // nothing).
    if cargo_args.is_empty() {
        prove::run(ws, &[], Some(&outcomes))?;
    } else {
        println!("xtask test: arguments given, so not the whole suite: the proof is skipped");
    }
    fuzz::run(ws, None, fuzz::CI_SECONDS)
}
