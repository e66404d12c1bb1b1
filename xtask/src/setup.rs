//! `cargo xtask setup`: everything the build, the tests and the demo need on the machine.
//!
//! Every other task runs it first, so each step checks before it acts and installs only what is
//! missing: on a ready machine it only looks, and then it is quick. Each step prints one line
//! saying what it found or did. Steps that have nothing to do need no root, so a ready machine
//! passes as any user.

mod bpf_linker;
mod bpffs;
mod cargo_fuzz;
mod debian;
mod pypi;
mod pypy_plugin;
mod toolchain;

use std::fmt::Display;

use anyhow::{anyhow, Result};

use crate::{privilege, workspace::Workspace};

pub fn run(ws: &Workspace) -> Result<()> {
    let root = privilege::is_root()?;
    toolchain(ws)?;
    debian::ensure(root)?;
    pypi::ensure()?;
    pypy_plugin::ensure(root)?;
    bpffs::ensure(root)?;
    cargo_fuzz::ensure()?;
    if !root {
        report(
            "warning",
            "not running as root: setup found all it needs, but loading BPF programs \
             (`cargo xtask test`, `run`, `bench`) needs root",
        );
    }
    Ok(())
}

/// Only what building needs (nightly rust-src, bpf-linker): for a container image's build stage,
/// which can neither mount bpffs nor wants the test packages.
pub fn toolchain(ws: &Workspace) -> Result<()> {
    toolchain::ensure_nightly()?;
    toolchain::ensure_nightly_components()?;
    bpf_linker::ensure(ws)
}

/// What `cargo xtask lint` needs besides the build's toolchain: rustfmt and clippy.
pub fn lint_tools() -> Result<()> {
    toolchain::ensure_lint_tools()
}

/// What `cargo xtask fuzz` needs: the nightly toolchain (the fuzz targets build on it) and
/// cargo-fuzz. No root, no bpffs: fuzzing loads no BPF.
pub fn fuzzing() -> Result<()> {
    toolchain::ensure_nightly()?;
    cargo_fuzz::ensure()
}

/// Prints the one line of a step.
fn report(step: &str, outcome: impl Display) {
    println!("setup: {step}: {outcome}");
}

/// The error of a step that has work to do but needs root for it.
fn needs_root(work: impl Display) -> anyhow::Error {
    anyhow!("{work} needs root: run `cargo xtask setup` as root")
}
