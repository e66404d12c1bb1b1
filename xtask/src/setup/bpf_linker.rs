//! bpf-linker, which links the eBPF crate. It must be built against the nightly's own LLVM: a
//! plain `cargo install bpf-linker` finds no libLLVM (see shared/TOOLCHAIN.md). So we give it an
//! LLVM prefix whose `lib/libLLVM.so` points at the nightly's libLLVM, and pick the `llvm-NN`
//! feature from the nightly's LLVM version.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

use super::{report, toolchain::NIGHTLY};
use crate::{command, workspace::Workspace};

pub fn ensure(ws: &Workspace) -> Result<()> {
    let step = "bpf-linker";
    if let Some(version) = version()? {
        report(step, format!("present ({version})"));
        return Ok(());
    }
    let prefix = llvm_prefix(ws)?;
    let feature = format!("llvm-{}", llvm_major()?);
    command::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--no-default-features", "--features", &feature])
            .env("LLVM_PREFIX", &prefix),
    )?;
    ensure!(
        version()?.is_some(),
        "bpf-linker was installed but `rustup run {NIGHTLY} bpf-linker --version` still fails"
    );
    report(step, format!("built against the nightly's LLVM ({feature}) and installed"));
    Ok(())
}

/// The version bpf-linker reports, or None if it does not start. Run the way aya-build runs it:
/// under `rustup run nightly`, which puts the nightly's lib folder (its libLLVM) on
/// LD_LIBRARY_PATH and cargo's bin folder on PATH.
fn version() -> Result<Option<String>> {
    let out =
        command::probe(Command::new("rustup").args(["run", NIGHTLY, "bpf-linker", "--version"]))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(out.status.success().then_some(version))
}

/// Makes `<target>/xtask/llvm-prefix/lib/libLLVM.so` point at the nightly's `libLLVM.so.*` and
/// returns the prefix. The link is made anew each time, in case the nightly changed.
fn llvm_prefix(ws: &Workspace) -> Result<PathBuf> {
    let sysroot = command::stdout_of(Command::new("rustc").args([
        &format!("+{NIGHTLY}"),
        "--print",
        "sysroot",
    ]))?;
    let libllvm = find_libllvm(&Path::new(sysroot.trim()).join("lib"))?;
    let prefix = ws.target.join("xtask/llvm-prefix");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link).with_context(|| format!("removing the old {}", link.display()))?;
    }
    symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    Ok(prefix)
}

/// The `libLLVM.so.<version>-rust-<version>-nightly` file of the nightly's lib folder.
fn find_libllvm(libdir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(libdir).with_context(|| format!("listing {}", libdir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", libdir.display()))?;
        if entry.file_name().to_string_lossy().starts_with("libLLVM.so.") {
            return Ok(entry.path());
        }
    }
    anyhow::bail!("no libLLVM.so.* in {}", libdir.display())
}

/// The major version of the nightly's LLVM, from `LLVM version: 22.1.4` in `rustc +nightly -vV`.
fn llvm_major() -> Result<String> {
    let version = command::stdout_of(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .filter(|major| !major.is_empty() && major.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .context("no `LLVM version: NN.x.y` line in `rustc +nightly -vV`")
}
