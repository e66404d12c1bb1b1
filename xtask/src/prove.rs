//! `cargo xtask prove`: runs the claim tests against deliberately broken builds and reports which
//! tests caught each one.
//!
//! - `sk-pass`: balancer-user with the feature `broken-sk-pass` (its eBPF programs return SK_PASS
//!   at once: the kernel's hash decides, nothing is counted or migrated by reuselb).
//! - `no-count`: the shim with the feature `broken-no-count` (accepted/completed never counted).
//!
//! Each broken build goes to a target directory of its own (`<target>/broken-<kind>`, seeded with
//! a copy of `<target>/release` so that only the changed crates build), so the normal build in
//! `<target>/release` is never overwritten: `cargo xtask build` and `cargo xtask test` never use a
//! broken build. Passes when every test listed as catching a broken build failed against it.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{build, command, workspace::Workspace};

/// One deliberately broken build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Broken {
    /// The SK_REUSEPORT programs return SK_PASS at once.
    SkPass,
    /// The shim counts nothing.
    NoCount,
}

impl Broken {
    fn name(self) -> &'static str {
        match self {
            Broken::SkPass => "sk-pass",
            Broken::NoCount => "no-count",
        }
    }

    /// The cargo feature that breaks the build.
    fn feature(self) -> &'static str {
        match self {
            Broken::SkPass => "balancer-user/broken-sk-pass",
            Broken::NoCount => "balancer-shim/broken-no-count",
        }
    }

    /// Tests that must fail against this build: (module of the integration binary, test name).
    fn must_catch(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Broken::SkPass => &[
                ("claims", "least_loaded_avoids_blocked_workers_and_the_hash_policy_does_not"),
                ("claims", "shim_counters_equal_requests_served_with_reconciliation_off"),
                ("claims", "stray_acks_are_not_counted_and_bare_syns_are"),
                ("answers", "a_worker_is_free_once_it_answered_before_it_closes"),
                ("selector", "the_fast_path_rotates_idle_slots_and_checks_each_hint"),
                ("migrate", "a_closing_listener_hands_its_queue_to_the_others"),
                ("worker_restarts", "max_requests_recycling_under_load_keeps_connections"),
                ("selector", "work_left_passes_over_an_old_request_and_least_loaded_does_not"),
                ("selector", "peak_ewma_passes_over_a_slow_worker_until_its_estimate_decays"),
            ],
            Broken::NoCount => &[
                ("claims", "shim_counters_equal_requests_served_with_reconciliation_off"),
                ("answers", "a_worker_is_free_once_it_answered_before_it_closes"),
                ("answers", "each_request_of_a_kept_alive_connection_is_counted"),
            ],
        }
    }
}

/// Builds each broken build and runs `tests` (modules of the integration binary; the modules of
/// the claim tests if empty) against it.
pub fn run(ws: &Workspace, which: &[Broken], tests: &[String], test_args: &[String]) -> Result<()> {
    let which =
        if which.is_empty() { vec![Broken::SkPass, Broken::NoCount] } else { which.to_vec() };
    let mut summary = Vec::new();
    let mut missed = Vec::new();
    for broken in which {
        let targets: Vec<String> = if tests.is_empty() {
            let mut t: Vec<String> =
                broken.must_catch().iter().map(|(target, _)| target.to_string()).collect();
            t.dedup();
            t
        } else {
            tests.to_vec()
        };
        let results = run_one(ws, broken, &targets, test_args)?;
        for (target, name) in broken.must_catch() {
            if !targets.iter().any(|t| t == target) {
                continue;
            }
            match results.iter().find(|(t, n, _)| t == target && n == name) {
                Some((_, _, false)) => {}
                Some((_, _, true)) => {
                    missed.push(format!("{}: {target}::{name} passed", broken.name()))
                }
                None => missed.push(format!("{}: {target}::{name} did not run", broken.name())),
            }
        }
        summary.push((broken, results));
    }
    println!("\nxtask prove: results against the broken builds");
    for (broken, results) in &summary {
        let failed: Vec<_> = results.iter().filter(|r| !r.2).collect();
        let passed: Vec<_> = results.iter().filter(|r| r.2).collect();
        println!(
            "  {} ({}): {} failed, {} passed",
            broken.name(),
            broken.feature(),
            failed.len(),
            passed.len()
        );
        for (target, name, _) in failed {
            println!("    FAILED (caught it)  {target}::{name}");
        }
        for (target, name, _) in passed {
            println!("    passed anyway       {target}::{name}");
        }
    }
    if !missed.is_empty() {
        bail!("claim tests that did not catch a broken build: {}", missed.join("; "));
    }
    println!("xtask prove: every claim test caught the broken build it is meant to catch");
    Ok(())
}

/// The broken build's own target directory, seeded from the normal release build.
fn target_dir(ws: &Workspace, broken: Broken) -> Result<PathBuf> {
    let dir = ws.target.join(format!("broken-{}", broken.name()));
    let release = ws.target.join("release");
    if !dir.join("release").exists() && release.is_dir() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        command::run(Command::new("cp").arg("-a").arg(&release).arg(dir.join("release")))?;
    }
    Ok(dir)
}

/// Builds `broken` and runs the modules' tests against it: (module, test, passed) for every test.
fn run_one(
    ws: &Workspace,
    broken: Broken,
    modules: &[String],
    test_args: &[String],
) -> Result<Vec<(String, String, bool)>> {
    let dir = target_dir(ws, broken)?;
    let cargo = |ws: &Workspace| {
        let mut c = ws.cargo();
        c.env("CARGO_TARGET_DIR", &dir);
        c
    };
    let artifacts = build::release_binaries(
        cargo(ws),
        &dir.join("release"),
        &["--features", broken.feature()],
    )?;
    // One run of the integration binary, its modules as filters (`claims::` and so on).
    let mut test = cargo(ws);
    test.args(["test", "--release", "-p", "integration-tests", "--test", "integration"]);
    // The test binary loads the programs through balancer-user (Group::new): it must embed the
    // broken programs too. The shim is only ever used through REUSELB_SHIM.
    if broken == Broken::SkPass {
        test.args(["--features", broken.feature()]);
    }
    test.args(["--", "--test-threads", "1"]);
    test.args(modules.iter().map(|m| format!("{m}::")));
    test.args(test_args);
    artifacts.export_to(&mut test);
    run_tests(&mut test)
}

/// Runs a libtest binary through cargo, echoing its output, and collects each test's outcome.
/// Each test's outcome as (module, test, passed).
fn run_tests(cmd: &mut Command) -> Result<Vec<(String, String, bool)>> {
    println!("xtask: $ {}", command::shown(cmd));
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut results = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((path, outcome)) = rest.rsplit_once(" ... ") {
                let (module, name) = path.split_once("::").unwrap_or(("", path));
                match outcome.trim() {
                    "ok" => results.push((module.to_string(), name.to_string(), true)),
                    "FAILED" => results.push((module.to_string(), name.to_string(), false)),
                    _ => {}
                }
            }
        }
    }
    // A failing test makes cargo test exit non-zero: that is the expected outcome here.
    let _ = child.wait().context("waiting for cargo test")?;
    Ok(results)
}
