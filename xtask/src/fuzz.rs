//! `cargo xtask fuzz [TARGET] [--seconds N]`: the cargo-fuzz targets of `fuzz/`, each for a bounded
//! time. `cargo xtask test` ends with a short run of every target ([`CI_SECONDS`] each).
//!
//! Each target fuzzes from its working corpus `fuzz/corpus/TARGET` (not committed; it grows from
//! run to run on a developer's machine) and the committed seeds `fuzz/seeds/TARGET`; the config
//! target also gets the example config files, copied in at each run so they never go stale. A
//! crash fails the run; cargo-fuzz prints the input (saved under `fuzz/artifacts/TARGET/`) and
//! the command that replays it.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{setup, workspace::Workspace};

/// The targets, in `fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &["protocol", "config", "policy"];

/// Seconds per target in `cargo xtask test`: with the build of the fuzz crate (about 70 s), under
/// 2 minutes.
pub const CI_SECONDS: u32 = 12;

/// Files copied into a target's working corpus before each run (paths from the repository root).
fn example_inputs(target: &str) -> &'static [&'static str] {
    match target {
        "config" => &["deploy/examples/reuselb.yaml"],
        _ => &[],
    }
}

/// Runs `target` (every target if None) for `seconds` each.
pub fn run(ws: &Workspace, target: Option<&str>, seconds: u32) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target `{t}`: expected one of {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    ensure!(seconds > 0, "--seconds must be at least 1");
    setup::fuzzing()?;
    let started = Instant::now();
    // One build for every target (`cargo fuzz run` would build them one by one).
    crate::command::run(ws.cargo().args(["+nightly", "fuzz", "build"]))?;
    let built = started.elapsed().as_secs();
    let mut runs = Vec::new();
    for t in &targets {
        runs.push((t, run_one(ws, t, seconds)?));
    }
    println!(
        "xtask: fuzz: built in {built} s, fuzzed for {} s",
        started.elapsed().as_secs() - built
    );
    for (t, execs) in &runs {
        let execs = execs.map_or("?".to_owned(), |n| n.to_string());
        println!("xtask: fuzz: {t}: {execs} inputs in {seconds} s, no crash");
    }
    // The plain closing line: a fuzz target with a finding has failed the run before this.
    println!("fuzz: {} passed, 0 failed", runs.len());
    Ok(())
}

/// Runs one target; returns how many inputs libFuzzer ran, if it said.
fn run_one(ws: &Workspace, target: &str, seconds: u32) -> Result<Option<u64>> {
    let corpus = ws.root.join("fuzz/corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    for input in example_inputs(target) {
        let from = ws.root.join(input);
        let name = input.replace('/', "_");
        fs::copy(&from, corpus.join(&name))
            .with_context(|| format!("copying {} into {}", from.display(), corpus.display()))?;
    }
    let mut cargo = ws.cargo();
    cargo.args(["+nightly", "fuzz", "run", target]).arg(format!("fuzz/corpus/{target}"));
    if ws.root.join("fuzz/seeds").join(target).is_dir() {
        cargo.arg(format!("fuzz/seeds/{target}"));
    }
    cargo.args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048", "-timeout=10"]);
    let dict = format!("fuzz/dicts/{target}.dict");
    if ws.root.join(&dict).is_file() {
        cargo.arg(format!("-dict={dict}"));
    }
    run_quietly(&mut cargo)
}

/// Runs a `cargo fuzz run`, passing its output through except libFuzzer's progress lines (one per
/// new input: thousands a minute). Everything else (the start, the final count, any crash
/// report with its input and how to replay it) is shown. Returns the count of inputs run.
fn run_quietly(cmd: &mut Command) -> Result<Option<u64>> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| w.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    println!("xtask: $ {shown}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let mut execs = None;
    let mut dictionary = false;
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = Vec::new();
    loop {
        line.clear();
        // Lines may hold a crashing input's bytes: read them as bytes.
        if stderr.by_ref().take(1 << 20).read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.starts_with("###### Recommended dictionary") {
            dictionary = true;
        }
        // "#1234\tNEW    cov: ...": keep only the INITED and DONE ones.
        let progress = text
            .strip_prefix('#')
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            && !(text.contains("INITED") || text.contains("DONE"));
        if !(progress || dictionary) {
            eprintln!("{text}");
        }
        if text.starts_with("###### End of recommended dictionary") {
            dictionary = false;
        }
        // "Done 509589 runs in 21 second(s)"
        if let Some(n) = text.strip_prefix("Done ").and_then(|rest| rest.split(' ').next()) {
            execs = n.parse().ok();
        }
    }
    let status = child.wait().with_context(|| format!("waiting for `{shown}`"))?;
    ensure!(status.success(), "`{shown}` failed: {status} (a finding: see its report above)");
    Ok(execs)
}
