//! `cargo xtask prove`: the claim tests against deliberately broken builds.
//!
//! What owns what:
//! - docs/CLAIMS.md holds the claims table: per claim of the README, the test that holds it, the
//!   broken build (`balancer_common::broken::Broken`) it must catch, and the text its failure must
//!   show (the assertion's own message). [`claims`] reads it; nothing else lists claim tests.
//! - One broken build (cargo feature `broken` of balancer-user and balancer-shim) in a target
//!   directory of its own (`<target>/broken`, seeded with a copy of `<target>/release` so that
//!   only the changed crates build): the normal build in `<target>/release` is never overwritten.
//!   Each kind is one run of the listed tests with `REUSELB_BROKEN=<kind>`.
//!
//! A claim holds when its test passed on the good build (in `cargo xtask test`, the run of every
//! test just before; alone, a run of the listed tests) and failed on its broken build with the
//! listed text in its output: a failure for another reason (a missing tool, a timeout, a setup
//! that broke) does not count. The report lists per test the broken builds it caught and how.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context as _, Result};
use balancer_common::broken::{Broken, ENV_BROKEN};

use crate::{build, command, workspace::Workspace};

/// Where the claims table lives, from the workspace root.
pub const CLAIMS: &str = "docs/CLAIMS.md";

/// One row of the claims table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The README's words (or a short name of them).
    pub claim: String,
    /// The integration test, `module::name`.
    pub test: String,
    /// The broken build it catches; `None` for a claim no broken build can falsify (the row then
    /// says why in `reason`).
    pub broken: Option<Broken>,
    /// Text the test's failure output must contain (the assertion's message), or why no broken
    /// build applies.
    pub reason: String,
}

/// How one test ended, and what it printed if it failed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub passed: bool,
    pub output: String,
}

/// Every test's outcome in one run, by full name (`module::name`).
pub type Outcomes = BTreeMap<String, Outcome>;

/// Parses the claims table: every table row whose second cell is a test in backticks.
pub fn parse_claims(text: &str) -> Result<Vec<Claim>> {
    let mut claims = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if !line.trim_start().starts_with('|') || cells.len() != 4 {
            continue;
        }
        let Some(test) = cells[1].strip_prefix('`').and_then(|t| t.strip_suffix('`')) else {
            continue;
        };
        let at = || format!("{CLAIMS}:{}", n + 1);
        ensure!(test.contains("::"), "{}: `{test}` is not module::test", at());
        let broken = match cells[2] {
            "—" | "-" => None,
            name => Some(Broken::from_name(name).with_context(|| {
                format!("{}: no broken build called `{name}` (known: {})", at(), names())
            })?),
        };
        let reason = cells[3].trim_matches('`').to_string();
        ensure!(!reason.is_empty(), "{}: the failure text is empty", at());
        // Text every failure shows would let any failure (a missing tool, a timeout) count.
        let generic = ["panicked at", "assertion", "failed", "left == right", "called `"];
        ensure!(
            broken.is_none() || !generic.iter().any(|g| g.contains(reason.as_str())),
            "{}: `{reason}` is in every failure's output: give the assertion's own words",
            at()
        );
        claims.push(Claim { claim: cells[0].to_string(), test: test.to_string(), broken, reason });
    }
    ensure!(!claims.is_empty(), "{CLAIMS} lists no claim");
    Ok(claims)
}

/// The names of every broken build, for messages.
fn names() -> String {
    Broken::ALL.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
}

/// The claims table of the workspace.
pub fn claims(ws: &Workspace) -> Result<Vec<Claim>> {
    let path = ws.root.join(CLAIMS);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_claims(&text)
}

/// The proof. `good`: the outcomes of a run of every test on the good build (from `cargo xtask
/// test`); without it the listed tests are run on the good build first. `which`: the broken
/// builds to try (all if empty).
pub fn run(ws: &Workspace, which: &[Broken], good: Option<&Outcomes>) -> Result<()> {
    let all = claims(ws)?;
    let which: Vec<Broken> = if which.is_empty() { Broken::ALL.to_vec() } else { which.to_vec() };
    let listed: Vec<&Claim> =
        all.iter().filter(|c| c.broken.is_some_and(|b| which.contains(&b))).collect();
    let own_good;
    let own_good_run = good.is_none();
    let good = match good {
        Some(good) => good,
        None => {
            let artifacts = build::build(ws)?;
            let mut test = integration(ws.cargo(), &[]);
            artifacts.export_to(&mut test);
            own_good = run_tests(test, &unique(listed.iter().map(|c| c.test.as_str())))?;
            &own_good
        }
    };
    let mut problems = Vec::new();
    // Every test the table names ran and passed on the good build, those no broken build can
    // falsify included (when the proof runs on the suite's own outcomes).
    let unbreakable: Vec<&Claim> =
        if own_good_run { Vec::new() } else { all.iter().filter(|c| c.broken.is_none()).collect() };
    for c in listed.iter().chain(&unbreakable) {
        match good.get(&c.test) {
            Some(o) if o.passed => {}
            Some(_) => problems.push(format!("{}: fails on the good build", c.test)),
            None => problems.push(format!("{}: did not run on the good build", c.test)),
        }
    }
    let broken_run = broken_build(ws)?;
    // Per claim, per test: the broken builds it caught and how.
    let mut caught: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for kind in &which {
        let mine: Vec<&&Claim> = listed.iter().filter(|c| c.broken == Some(*kind)).collect();
        if mine.is_empty() {
            continue;
        }
        println!("\nxtask prove: {} ({ENV_BROKEN}={})", kind.name(), kind.name());
        let mut test = broken_run.command(ws);
        test.env(ENV_BROKEN, kind.name());
        let outcomes = run_tests(test, &unique(mine.iter().map(|c| c.test.as_str())))?;
        for c in mine {
            match judge(c, outcomes.get(&c.test)) {
                Ok(how) => {
                    let how = format!("{}: {how}", kind.name());
                    caught.entry((&c.claim, &c.test)).or_default().push(how)
                }
                Err(why) => problems.push(format!("{} against {}: {why}", c.test, kind.name())),
            }
        }
    }
    report(&caught);
    if !problems.is_empty() {
        bail!("the proof failed:\n  {}", problems.join("\n  "));
    }
    println!("xtask prove: every listed test passed on the good build and caught its broken build");
    Ok(())
}

/// Whether `c`'s test caught its broken build: it ran, failed, and its output shows the reason.
/// Returns the line that shows it.
fn judge(c: &Claim, outcome: Option<&Outcome>) -> std::result::Result<String, String> {
    let Some(o) = outcome else { return Err("did not run".into()) };
    if o.passed {
        return Err("passed: it does not catch this broken build".into());
    }
    // Only the panic's message counts, not what the test printed before it.
    let message = o.output.split_once("panicked at").map_or("", |(_, m)| m);
    match message.lines().skip(1).find(|l| l.contains(&c.reason)) {
        Some(line) => Ok(line.trim().chars().take(160).collect()),
        None => Err(format!(
            "failed, but not for its reason (`{}` is not in its output): {}",
            c.reason,
            first_panic(&o.output)
        )),
    }
}

/// The panic message's first line in a test's output, or its last line.
fn first_panic(output: &str) -> String {
    let mut lines = output.lines();
    while let Some(l) = lines.next() {
        if l.contains("panicked at") {
            return lines.next().unwrap_or(l).trim().to_string();
        }
    }
    output.lines().last().unwrap_or("(no output)").trim().to_string()
}

fn report(caught: &BTreeMap<(&str, &str), Vec<String>>) {
    println!("\nxtask prove: per claim and test, the broken builds it caught and how");
    let mut last = "";
    for ((claim, test), hows) in caught {
        if *claim != last {
            println!("  claim: {claim}");
            last = claim;
        }
        println!("    {test}");
        for how in hows {
            println!("      {how}");
        }
    }
}

/// `names` without repeats, in their order.
fn unique<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    }
    out
}

/// The broken build, made: its artifacts and target directory.
struct BrokenBuild {
    dir: PathBuf,
    artifacts: build::Artifacts,
}

/// The cargo feature that makes the broken build (balancer-user's carries the programs').
const FEATURES: &str = "balancer-user/broken,balancer-shim/broken";

impl BrokenBuild {
    /// `cargo test` of the integration binary in the broken build's directory (the test binary
    /// loads the programs through balancer-user, so it embeds the broken ones too).
    fn command(&self, ws: &Workspace) -> Command {
        let mut cargo = ws.cargo();
        cargo.env("CARGO_TARGET_DIR", &self.dir);
        let mut test = integration(cargo, &["--features", "balancer-user/broken"]);
        self.artifacts.export_to(&mut test);
        test
    }
}

/// Builds the broken build in `<target>/broken`, seeded from the normal release build.
fn broken_build(ws: &Workspace) -> Result<BrokenBuild> {
    let dir = ws.target.join("broken");
    let release = ws.target.join("release");
    if !dir.join("release").exists() && release.is_dir() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        command::run(Command::new("cp").arg("-a").arg(&release).arg(dir.join("release")))?;
    }
    let mut cargo = ws.cargo();
    cargo.env("CARGO_TARGET_DIR", &dir);
    let artifacts =
        build::release_binaries(cargo, &dir.join("release"), &["--features", FEATURES])?;
    Ok(BrokenBuild { dir, artifacts })
}

/// `cargo test --release` of the integration binary with `extra` cargo arguments.
fn integration(mut cargo: Command, extra: &[&str]) -> Command {
    cargo.args(["test", "--release", "-p", "integration-tests", "--test", "integration"]);
    cargo.args(extra);
    cargo
}

/// Runs exactly the tests `names` of `test` (a `cargo test` command, to which the libtest
/// arguments are added) and returns their outcomes. Their output is echoed behind `prove| `, so
/// that the expected failures are not read as the suite's own results (.ci/run sums the lines
/// that start with `test result:`).
fn run_tests(mut test: Command, names: &[String]) -> Result<Outcomes> {
    test.args(["--", "--exact", "--test-threads", "1"]).args(names);
    let (_, outcomes) = run_collecting(&mut test, "prove| ")?;
    Ok(outcomes)
}

/// Runs a `cargo test` command, echoing its output with `prefix` before each line, and collects
/// every test's outcome and, for a failed test, what it printed (libtest's `---- name stdout
/// ----` block). Returns whether the command succeeded too.
pub fn run_collecting(cmd: &mut Command, prefix: &str) -> Result<(bool, Outcomes)> {
    println!("xtask: $ {}", command::shown(cmd));
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut outcomes = Outcomes::new();
    let mut current: Option<String> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{prefix}{line}");
        collect_line(&line, &mut outcomes, &mut current);
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((status.success(), outcomes))
}

/// One line of libtest's output: a result line, the start of a failure's block, or a line of it.
fn collect_line(line: &str, outcomes: &mut Outcomes, current: &mut Option<String>) {
    if let Some(rest) = line.strip_prefix("test ") {
        if let Some((name, result)) = rest.rsplit_once(" ... ") {
            match result.trim() {
                "ok" => {
                    outcomes
                        .insert(name.to_string(), Outcome { passed: true, ..Outcome::default() });
                }
                "FAILED" => {
                    outcomes.entry(name.to_string()).or_default().passed = false;
                }
                _ => {}
            }
            *current = None;
            return;
        }
    }
    if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
        *current = Some(name.to_string());
        return;
    }
    if line == "failures:" || line.starts_with("test result:") {
        *current = None;
        return;
    }
    if let Some(o) = current.as_ref().and_then(|name| outcomes.get_mut(name)) {
        o.output.push_str(line);
        o.output.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` with every run of white space made one space.
    fn squeeze(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The first cells of the table rows (not headers, not rules) of the README's `##` sections
    /// called `names`, less the benchmark's rows (`8x20`, `2x20`: measurements).
    fn readme_rows(readme: &str, names: &[&str]) -> Vec<String> {
        let mut rows = Vec::new();
        let mut inside = false;
        let lines: Vec<&str> = readme.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(h) = line.strip_prefix("## ") {
                inside = names.contains(&h.trim());
            }
            let rule = |l: &str| l.starts_with('|') && l.chars().all(|c| "|-: ".contains(c));
            let header = lines.get(i + 1).is_some_and(|n| rule(n));
            if !inside || !line.starts_with('|') || rule(line) || header {
                continue;
            }
            let first = line.trim_matches('|').split('|').next().unwrap_or("").trim();
            if !first.ends_with("x20") {
                rows.push(first.to_string());
            }
        }
        rows
    }

    /// docs/CLAIMS.md against the code and the README: every test it names exists, every broken
    /// build is used, every claim quotes the README, and every row of the README's tables in
    /// "What it does, measured" and "Works with" has a claim.
    #[test]
    fn claims_table_matches_the_code_and_the_readme() {
        let ws = Workspace::locate();
        let claims = claims(&ws).unwrap();
        let readme = std::fs::read_to_string(ws.root.join("README.md")).unwrap();
        let flat = squeeze(&readme);
        for c in &claims {
            let (module, name) = c.test.split_once("::").unwrap();
            let file = ws.root.join(format!("tests/tests/integration/{module}.rs"));
            let code = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: no module {}: {e}", c.test, file.display()));
            // A test function, or a row of a macro that makes one (compat.rs).
            let defined = code.contains(&format!("#[test]\nfn {name}("))
                || code.contains(&format!("\n    {name}: "));
            assert!(defined, "{CLAIMS} names {}, which {} does not define", c.test, file.display());
            assert!(
                flat.contains(&squeeze(&c.claim)),
                "{CLAIMS}: the claim `{}` is not in the README's words",
                c.claim
            );
        }
        for kind in Broken::ALL {
            assert!(
                claims.iter().any(|c| c.broken == Some(kind)),
                "{CLAIMS}: no test catches the broken build {}",
                kind.name()
            );
        }
        for row in readme_rows(&readme, &["What it does, measured", "Works with"]) {
            assert!(
                claims.iter().any(|c| squeeze(&c.claim) == squeeze(&row)),
                "the README's row `{row}` has no claim in {CLAIMS}"
            );
        }
    }

    const TABLE: &str = "\
| claim | test | broken build | fails with |
|---|---|---|---|
| balanced | `uwsgi::is_balanced` | sk-pass | `selected only` |
| says so | `compat::unix_socket` | — | no broken build makes it serve less |
";

    #[test]
    fn the_table_parses() {
        let c = parse_claims(TABLE).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].test, "uwsgi::is_balanced");
        assert_eq!(c[0].broken, Some(Broken::SkPass));
        assert_eq!(c[0].reason, "selected only");
        assert_eq!(c[1].broken, None);
    }

    #[test]
    fn an_unknown_broken_build_is_named() {
        let e = parse_claims("| a | `m::t` | sk_pass | x |").unwrap_err().to_string();
        assert!(e.contains("sk_pass") && e.contains("sk-pass"), "{e}");
    }

    #[test]
    fn failures_are_collected_with_their_output() {
        let out = "\
test m::a ... ok
test m::b ... FAILED

failures:

---- m::b stdout ----
thread 'm::b' panicked at tests/m.rs:1:2:
the program selected only 0 of 100 requests

failures:
    m::b

test result: FAILED. 1 passed; 1 failed; 0 ignored
";
        let mut outcomes = Outcomes::new();
        let mut current = None;
        for l in out.lines() {
            collect_line(l, &mut outcomes, &mut current);
        }
        assert!(outcomes["m::a"].passed);
        let b = &outcomes["m::b"];
        assert!(!b.passed);
        let claim = Claim {
            claim: String::new(),
            test: "m::b".into(),
            broken: Some(Broken::SkPass),
            reason: "selected only".into(),
        };
        assert!(judge(&claim, Some(b)).is_ok());
        let other = Claim { reason: "busiest/ideal".into(), ..claim };
        let why = judge(&other, Some(b)).unwrap_err();
        assert!(why.contains("selected only 0 of 100"), "{why}");
        assert!(judge(&other, Some(&outcomes["m::a"])).is_err());
        assert!(judge(&other, None).is_err());
    }
}
