//! Builds the eBPF programs (nightly, `-Z build-std=core`, bpf-linker) and leaves the object in
//! OUT_DIR, where `balancer_user::loader` embeds it.
//!
//! balancer-user's feature `broken` builds the programs with balancer-ebpf's feature of the same
//! name (the loader then picks what they break): only `cargo xtask prove` turns it on, in a
//! target directory of its own.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../balancer-ebpf");
    let root = root.canonicalize().context("locating balancer-ebpf")?;
    let root_dir = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    let common = root.join("../balancer-common");
    println!("cargo:rerun-if-changed={}", common.display());
    let features: &[&str] =
        if std::env::var_os("CARGO_FEATURE_BROKEN").is_some() { &["broken"] } else { &[] };
    aya_build::build_ebpf(
        [Package { name: "balancer-ebpf", root_dir, features, ..Default::default() }],
        Toolchain::default(),
    )
}
