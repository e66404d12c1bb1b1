//! Benchmarks of reuselb against the real kernel, run by `cargo xtask bench <name>` (the `bench`
//! binary, `src/main.rs`). This crate owns the benchmark harness; the fixtures it starts apps and
//! network namespaces with are the integration tests' (`integration_tests::{apps, netns}`).
//!
//! - [`selector`]: ns per selection and the connection rate, on raw reuseport groups ([`rig`],
//!   with [`sk_pass`]'s SK_PASS-only program as the baseline);
//! - [`compare`]: nginx -> uWSGI under each way of balancing, with the load generator
//!   ([`loadgen`]); its report and charts ([`chart`]) are rendered from its raw samples alone;
//! - [`footprint`]: memory and start-up time of reuselb's layout against nginx least_conn's.
//!
//! Here: the list of benches and their dispatch, and what they share (a sample's [`Summary`], the
//! report directory, the network namespace, the kernel's description).
pub mod chart;
pub mod compare;
pub mod footprint;
pub mod loadgen;
pub mod rig;
pub mod selector;
pub mod sk_pass;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The benches there are: name and what it measures.
pub const BENCHES: &[(&str, &str)] = &[
    (
        "selector",
        "ns per selection (kernel BPF run-time stats) for 1/8/64/256 workers vs an SK_PASS-only program, \
         and connection rate with vs without the program",
    ),
    (
        "compare",
        "nginx -> uWSGI: shared socket, thunder-lock, kernel hash, fastrouter, nginx least_conn, reuselb \
         policies; uniform, io+cpu, skewed, blocked; throughput, latency at fixed rates with bootstrap \
         intervals, balance, wake-ups, CPU; raw samples in target/bench/compare-raw.json.gz \
         (--full: balanced rounds, >= 5,000 requests per point; --plan: the expected duration)",
    ),
    (
        "footprint",
        "memory (RSS and PSS, app and balancer processes) and start-up time of reuselb's layout (one \
         uWSGI instance of N processes) against nginx least_conn's (N single-process instances), \
         with a Django app, lazy-apps true and false",
    ),
];

/// Runs the bench `name` with its arguments; returns its markdown report.
pub fn run(name: &str, args: &[String]) -> Result<String> {
    match name {
        "selector" => selector::run(&selector::Options::parse(args)?),
        "compare" => compare::run(&compare::Options::parse(args)?),
        "footprint" => footprint::run(&footprint::Options::parse(args)?),
        _ => bail!("unknown bench `{name}`; valid: {}, all", names().join(", ")),
    }
}

pub fn names() -> Vec<&'static str> {
    BENCHES.iter().map(|(n, _)| *n).collect()
}

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(values: &[f64]) -> Summary {
    assert!(!values.is_empty(), "summary of an empty sample");
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN in bench samples"));
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Summary { median, min: v[0], max: v[n - 1], n }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set (relative to the workspace root), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace")
        .to_path_buf();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Writes a report to `<target>/bench/<name>.md`; returns the path.
pub fn write_report(name: &str, markdown: &str) -> Result<PathBuf> {
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.md"));
    fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Moves this thread (the main thread, before any other is started) into a new network namespace
/// with its loopback up, unless `no_netns`, so the bench neither meets nor disturbs other traffic
/// on the machine. Threads started afterwards inherit it; the namespace goes away with the
/// process. Says where the bench runs, for its report. Falls back to the current namespace (with a
/// warning) rather than not measuring at all.
pub fn choose_netns(no_netns: bool) -> String {
    if no_netns {
        return "the current network namespace (--no-netns)".to_string();
    }
    match integration_tests::netns::isolate_thread() {
        Ok(()) => "a private network namespace (created by the bench, gone with it)".to_string(),
        Err(e) => {
            eprintln!("warning: running in the current network namespace: {e:#}");
            format!("the current network namespace (a private one failed: {e:#})")
        }
    }
}

/// `kernel.bpf_stats_enabled` as /proc shows it right now.
pub fn bpf_stats_sysctl() -> String {
    fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

/// Kernel release, for the report header.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}
