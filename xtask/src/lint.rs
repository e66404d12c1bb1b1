//! `cargo xtask lint`: the style gate, also the first step of `cargo xtask test` (so CI runs it),
//! before the long build and tests: a formatting slip or a clippy warning fails in a minute, not
//! after half an hour.
//!
//! - `cargo fmt --all -- --check` (rustfmt.toml), and the same for the fuzz crate, which is a
//!   workspace of its own;
//! - `cargo clippy --release --workspace --exclude balancer-ebpf --all-targets -- -D warnings`:
//!   every warning is an error, including the workspace lints of Cargo.toml (an unsafe block
//!   without a `// SAFETY:` line). balancer-ebpf builds only for the BPF target, through
//!   balancer-user's build script, so it is left out by name; `--release` shares that build
//!   script's output with `cargo xtask build`;
//! - clippy over balancer-ebpf for its own target ([`CLIPPY_EBPF`]: nightly, `bpfel-unknown-none`,
//!   `-Z build-std=core`, as aya-build builds it), with and without its feature `broken`, under
//!   the same rules.

use anyhow::{Context as _, Result};

use crate::{command, setup, workspace::Workspace};

/// The clippy command line, as the README and the error message show it.
pub const CLIPPY: &[&str] = &[
    "clippy",
    "--release",
    "--workspace",
    "--exclude",
    "balancer-ebpf",
    "--all-targets",
    "--",
    "-D",
    "warnings",
];

/// The clippy command line for the eBPF programs, on the target and toolchain they build with.
pub const CLIPPY_EBPF: &[&str] = &[
    "+nightly",
    "clippy",
    "--release",
    "-p",
    "balancer-ebpf",
    "--target",
    "bpfel-unknown-none",
    "-Z",
    "build-std=core",
];

/// `cargo xtask lint`: the toolchain the build script needs (clippy runs it), then the checks.
pub fn run(ws: &Workspace) -> Result<()> {
    setup::toolchain(ws)?;
    check(ws)
}

/// The checks alone, on a machine already set up.
pub fn check(ws: &Workspace) -> Result<()> {
    setup::lint_tools()?;
    command::run(ws.cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs from rustfmt's (the diff is above): run `cargo fmt --all`")?;
    command::run(ws.cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))
        .context(
        "the fuzz crate's formatting differs from rustfmt's (the diff is above): run \
             `cargo fmt --manifest-path fuzz/Cargo.toml`",
    )?;
    command::run(ws.cargo().args(CLIPPY)).context(
        "clippy found warnings (above; each is an error here): fix them, or for an unsafe block \
         add the `// SAFETY:` line that says why it is sound",
    )?;
    for features in [&[][..], &["--features", "broken"][..]] {
        command::run(ws.cargo().args(CLIPPY_EBPF).args(features).args(["--", "-D", "warnings"]))
            .with_context(|| {
                format!(
                    "clippy found warnings in balancer-ebpf{} (above; each is an error here)",
                    if features.is_empty() { "" } else { " built with --features broken" }
                )
            })?;
    }
    println!("xtask: lint: rustfmt and clippy (host crates and balancer-ebpf) are clean");
    Ok(())
}
