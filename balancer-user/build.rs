//! Builds the eBPF programs (nightly, `-Z build-std=core`, bpf-linker) and leaves the object in
//! OUT_DIR, where `balancer_user::loader` embeds it.
//!
//! balancer-user's feature `broken` builds the programs with balancer-ebpf's feature of the same
//! name (the loader then picks what they break): only `cargo xtask prove` turns it on, in a
//! target directory of its own.
//!
//! aya-build keeps its cargo's target directory inside OUT_DIR, and each feature set of
//! balancer-user (the normal build, the test build's, the proof's broken one) has an OUT_DIR of its
//! own: each would compile `core` and every eBPF dependency from source again. So a new OUT_DIR
//! is first seeded with a copy of the newest sibling's (`seed_from_sibling`); cargo's own
//! fingerprints then decide what is fresh, and only what the features change is compiled.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../balancer-ebpf");
    let root = root.canonicalize().context("locating balancer-ebpf")?;
    let root_dir = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    let common = root.join("../balancer-common");
    println!("cargo:rerun-if-changed={}", common.display());
    let features: &[&str] =
        if std::env::var_os("CARGO_FEATURE_BROKEN").is_some() { &["broken"] } else { &[] };
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    seed_from_sibling(&out_dir);
    aya_build::build_ebpf(
        [Package { name: "balancer-ebpf", root_dir, features, ..Default::default() }],
        Toolchain::default(),
    )
}

/// aya-build's directory in `out_dir` (`<profile>/build/balancer-user-<hash>/out`), if it has
/// none yet: a copy (`cp -a`, times kept) of the newest one among the other runs of this build
/// script in the same profile directory. Anything that goes wrong leaves it to a full build.
fn seed_from_sibling(out_dir: &Path) {
    let mine = out_dir.join("aya-build");
    if mine.exists() {
        return;
    }
    let Some(build_dir) = out_dir.parent().and_then(Path::parent) else { return };
    let Ok(entries) = std::fs::read_dir(build_dir) else { return };
    let newest = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("balancer-user-"))
        .map(|e| e.path().join("out/aya-build"))
        .filter(|p| p != &mine && p.join("target/balancer-ebpf").is_dir())
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _): &(SystemTime, PathBuf)| *t);
    let Some((_, from)) = newest else { return };
    let copied = Command::new("cp").arg("-a").arg(&from).arg(&mine).status();
    if !copied.is_ok_and(|s| s.success()) {
        // A partial copy is no worse than none for cargo, but start clean.
        let _ = std::fs::remove_dir_all(&mine);
        println!(
            "cargo:warning=seeding the eBPF build from {} failed: a full build",
            from.display()
        );
    }
}
