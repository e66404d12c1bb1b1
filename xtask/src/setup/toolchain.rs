//! The `nightly` rustup toolchain and its `rust-src`: aya-build builds the eBPF crate with
//! `rustup run nightly cargo build -Z build-std=core`, because `bpfel-unknown-none` has no
//! prebuilt core. Explicit installs only: these machines set RUSTUP_AUTO_INSTALL=0.

use std::process::Command;

use anyhow::Result;

use super::report;
use crate::command;

pub const NIGHTLY: &str = "nightly";

pub fn ensure_nightly() -> Result<()> {
    let step = "nightly toolchain";
    let list = command::stdout_of(Command::new("rustup").args(["toolchain", "list"]))?;
    if list.lines().any(is_plain_nightly) {
        report(step, "present");
        return Ok(());
    }
    command::run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
    ]))?;
    report(step, "installed");
    Ok(())
}

/// The nightly components the build and the lint need: `rust-src` (aya-build's
/// `-Z build-std=core`) and `clippy` (`cargo xtask lint` checks balancer-ebpf for the BPF target
/// with nightly's clippy). The nightly is installed with the minimal profile, which has neither.
pub fn ensure_nightly_components() -> Result<()> {
    let step = "rust-src and clippy for nightly";
    let installed = command::stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    let has = |name: &str| {
        installed.lines().any(|line| {
            let line = line.trim();
            line == name || line.strip_prefix(name).is_some_and(|rest| rest.starts_with('-'))
        })
    };
    let missing: Vec<&str> = ["rust-src", "clippy"].into_iter().filter(|c| !has(c)).collect();
    if missing.is_empty() {
        report(step, "present");
        return Ok(());
    }
    command::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing)
            .args(["--toolchain", NIGHTLY]),
    )?;
    report(step, "installed");
    Ok(())
}

/// rustfmt and clippy for the default toolchain (`cargo xtask lint` runs both).
pub fn ensure_lint_tools() -> Result<()> {
    let step = "rustfmt and clippy";
    let works = |tool: &str| {
        command::probe(Command::new("cargo").args([tool, "--version"]))
            .is_ok_and(|out| out.status.success())
    };
    if works("fmt") && works("clippy") {
        report(step, "present");
        return Ok(());
    }
    command::run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    report(step, "installed");
    Ok(())
}

/// True for a `rustup toolchain list` line naming the plain `nightly` toolchain
/// (`nightly-x86_64-unknown-linux-gnu (default)`), not a dated one (`nightly-2024-05-01-...`).
fn is_plain_nightly(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    name == NIGHTLY
        || name
            .strip_prefix("nightly-")
            .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
}
