//! cargo-fuzz, which builds and runs the fuzz targets of `fuzz/` (`cargo xtask fuzz`, and the
//! short runs at the end of `cargo xtask test`). Built from crates.io with the stable toolchain
//! (about 70 s on 2 cores); the fuzz targets themselves build on nightly.

use std::process::Command;

use anyhow::{ensure, Result};

use super::report;
use crate::command;

/// The version installed when none is present; any version already installed is kept.
const VERSION: &str = "0.13.2";

pub fn ensure() -> Result<()> {
    let step = "cargo-fuzz";
    if let Some(version) = version()? {
        report(step, format!("present ({version})"));
        return Ok(());
    }
    command::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        VERSION,
    ]))?;
    ensure!(
        version()?.is_some(),
        "cargo-fuzz was installed but `cargo fuzz --version` still fails"
    );
    report(step, format!("installed {VERSION}"));
    Ok(())
}

/// What `cargo fuzz --version` prints, or None if cargo has no `fuzz` subcommand.
fn version() -> Result<Option<String>> {
    let out = command::probe(Command::new("cargo").args(["fuzz", "--version"]))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok((out.status.success() && !version.is_empty()).then_some(version))
}
