//! What `bench selector` measures: its options, the beds (reuseport groups) and the
//! configurations measured on them, the targets, and the totals one configuration's
//! runs add up to in each mode (idle, contended).
use anyhow::{bail, Context, Result};
use balancer_common::Policy;
use balancer_user::Mode;

/// Target of the issue: at most this many ns per selection at 64 workers (the default policy).
pub(super) const TARGET_NS_AT_64: f64 = 150.0;
/// Target of the issue: connection rate with the program at least this share of the rate without.
pub(super) const TARGET_RATE_RATIO: f64 = 0.97;
pub(super) const ACCEPT_THREADS: usize = 2;

#[derive(Clone, Debug)]
pub struct Options {
    /// Connections per run in part 1.
    pub conns: u64,
    /// Runs per configuration in part 1.
    pub reps: usize,
    /// Connections per run in part 2.
    pub rate_conns: u64,
    /// Runs per configuration in part 2.
    pub rate_reps: usize,
    /// Part 2: connections per slice; the two configurations alternate slice by slice.
    pub slice: u64,
    /// Unrecorded connections per configuration before the measured runs.
    pub warmup: u64,
    /// Part 1 only: open this many connections back to back before waiting for them (0: one at a
    /// time, the default).
    pub burst: usize,
    /// Stay in the current network namespace.
    pub no_netns: bool,
    /// Which of reuselb's programs the groups load (`auto`: select-or-migrate where the kernel
    /// takes it, as reuselb itself does).
    pub program: Mode,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            conns: 5000,
            reps: 7,
            rate_conns: 20_000,
            rate_reps: 11,
            slice: 1000,
            warmup: 1000,
            burst: 0,
            no_netns: false,
            program: Mode::Auto,
        }
    }
}

const USAGE: &str = "bench selector [--conns N] [--reps N] [--rate-conns N] [--rate-reps N] [--slice N] [--warmup N] [--burst N] [--program auto|select|select-or-migrate] [--no-netns]";

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut num = |name: &str| -> Result<u64> {
                let v =
                    it.next().with_context(|| format!("{name} needs a value; usage: {USAGE}"))?;
                v.parse::<u64>().with_context(|| format!("{name} {v}: not a number"))
            };
            match arg.as_str() {
                "--conns" => o.conns = num("--conns")?,
                "--reps" => o.reps = num("--reps")? as usize,
                "--rate-conns" => o.rate_conns = num("--rate-conns")?,
                "--rate-reps" => o.rate_reps = num("--rate-reps")? as usize,
                "--slice" => o.slice = num("--slice")?,
                "--warmup" => o.warmup = num("--warmup")?,
                "--burst" => o.burst = num("--burst")? as usize,
                "--no-netns" => o.no_netns = true,
                "--program" => {
                    let v = it
                        .next()
                        .with_context(|| format!("--program needs a value; usage: {USAGE}"))?;
                    o.program = match v.as_str() {
                        "auto" => Mode::Auto,
                        "select" => Mode::Select,
                        "select-or-migrate" => Mode::SelectOrMigrate,
                        other => {
                            bail!("--program {other}: expected auto, select or select-or-migrate")
                        }
                    };
                }
                "-h" | "--help" => bail!("usage: {USAGE}"),
                other => bail!("unknown argument `{other}`; usage: {USAGE}"),
            }
        }
        if o.conns == 0 || o.reps == 0 || o.rate_conns == 0 || o.rate_reps == 0 {
            bail!("counts must be at least 1; usage: {USAGE}");
        }
        Ok(o)
    }
}

// Bed indices.
pub(super) const PASS64: usize = 0;
const G1: usize = 1;
pub(super) const G8: usize = 2;
pub(super) const G64: usize = 3;
const G256: usize = 4;
pub(super) const PLAIN8: usize = 5;

pub(super) struct Config {
    pub(super) bed: usize,
    pub(super) policy: Option<Policy>,
    /// Every slot has 1 in flight and no idle byte for the run: no idle slot, so least-loaded's
    /// fast path finds nothing and every selection pays for the exact scan as well.
    pub(super) busy: bool,
}

/// The default policy ([`Policy::default`], checked by a test): the selection-cost target and the
/// connection rate of part 2 are its.
pub(super) const DEFAULT: Policy = Policy::SpeedAware;

pub(super) const CONFIGS: [Config; 11] = [
    Config { bed: PASS64, policy: None, busy: false },
    Config { bed: G1, policy: Some(Policy::LeastLoaded), busy: false },
    Config { bed: G8, policy: Some(Policy::LeastLoaded), busy: false },
    Config { bed: G64, policy: Some(Policy::LeastLoaded), busy: false },
    Config { bed: G256, policy: Some(Policy::LeastLoaded), busy: false },
    Config { bed: G64, policy: Some(Policy::PowerOfTwo), busy: false },
    Config { bed: G256, policy: Some(Policy::PowerOfTwo), busy: false },
    Config { bed: G64, policy: Some(Policy::LeastLoaded), busy: true },
    Config { bed: G64, policy: Some(DEFAULT), busy: false },
    Config { bed: G64, policy: Some(DEFAULT), busy: true },
    Config { bed: G64, policy: Some(Policy::RoundRobin), busy: false },
];

/// Index in [`CONFIGS`] of `policy` at 64 workers (`busy`: none idle).
pub(super) fn at_64(policy: Policy, busy: bool) -> usize {
    CONFIGS
        .iter()
        .position(|c| c.bed == G64 && c.policy == Some(policy) && c.busy == busy)
        .unwrap_or_else(|| panic!("{} at 64 workers (busy {busy}) is not measured", policy.name()))
}

/// What the runs of one configuration in one mode (idle or contended) measured.
#[derive(Default)]
pub(super) struct SelTotals {
    pub(super) ns: Vec<f64>,
    pub(super) runs: u64,
    pub(super) conns: u64,
    pub(super) selected: u64,
    pub(super) fallbacks: u64,
    /// Selections the fast path made (an idle slot, no scan).
    pub(super) fast: u64,
    /// Contended runs: the writer's completions per second, one per run.
    pub(super) writes_per_sec: Vec<f64>,
    /// Contended runs: completions the writer made in all.
    pub(super) writes: u64,
}

/// The two measuring modes of part 1.
pub(super) const IDLE: usize = 0;
pub(super) const CONTENDED: usize = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_is_measured_at_64_workers_idle_and_none_idle() {
        assert_eq!(DEFAULT, Policy::default());
        assert_ne!(at_64(DEFAULT, false), at_64(DEFAULT, true));
        assert_ne!(at_64(Policy::LeastLoaded, false), at_64(DEFAULT, false));
        // The program's fixed part, which the report quotes (`at_64` panics without the row).
        assert_ne!(at_64(Policy::RoundRobin, false), at_64(DEFAULT, false));
    }
}
