//! What `bench compare` compares and how it is asked to: the configurations (one table entry
//! each, [`CONFIGS`]), the workloads, the process × thread variants and the command-line options.
//!
//! Invariants: every configuration has a distinct letter; whether a configuration is "reuselb"
//! (and so excluded from "the best non-reuselb configuration") follows from its [`How`] alone.
use anyhow::{bail, Context, Result};

use crate::loadgen::Rng;

/// How a configuration spreads connections over the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// One uWSGI instance, every worker accepting from the one shared socket
    /// (`thunder_lock`: with `--thunder-lock`).
    Shared { thunder_lock: bool },
    /// uWSGI fastrouter with two instances of half the processes each subscribed.
    Fastrouter,
    /// nginx `least_conn` over one single-process uWSGI instance per process.
    NginxLeastConn,
    /// `reuselb run --policy <policy> <extra...> -- uwsgi ...`.
    Reuselb { policy: &'static str, extra: &'static [&'static str] },
}

/// One configuration: its letter, its label and how it runs.
#[derive(Debug)]
pub struct Cfg {
    pub letter: char,
    pub label: &'static str,
    /// One sentence for the report.
    pub describe: &'static str,
    pub how: How,
}

/// A configuration, by reference into [`CONFIGS`].
pub type CfgRef = &'static Cfg;

/// Every configuration there is. A new reuselb policy (or a policy with other flags) is one line.
pub const CONFIGS: &[Cfg] = &[
    Cfg {
        letter: 'A',
        label: "uWSGI shared socket",
        describe: "uWSGI as installed: every worker accepts from the one shared listening socket",
        how: How::Shared { thunder_lock: false },
    },
    Cfg {
        letter: 'B',
        label: "uWSGI thunder-lock",
        describe: "the same with `--thunder-lock` (accept() serialized across processes)",
        how: How::Shared { thunder_lock: true },
    },
    Cfg {
        letter: 'C',
        label: "SO_REUSEPORT, kernel hash",
        describe: "`reuselb run --policy hash`: each worker its own SO_REUSEPORT socket, the kernel's 4-tuple hash picks (loads counted, not used)",
        how: How::Reuselb { policy: "hash", extra: &[] },
    },
    Cfg {
        letter: 'D',
        label: "fastrouter, 2 instances",
        describe: "uWSGI fastrouter (`--fastrouter`, subscription server) with two uWSGI instances of half the processes each subscribed; nginx passes to the fastrouter",
        how: How::Fastrouter,
    },
    Cfg {
        letter: 'E',
        label: "nginx least_conn",
        describe: "nginx `upstream { least_conn; }` over one single-process uWSGI instance per process",
        how: How::NginxLeastConn,
    },
    Cfg {
        letter: 'F',
        label: "reuselb least-loaded",
        describe: "`reuselb run --policy least-loaded`: the worker with the fewest connections in flight",
        how: How::Reuselb { policy: "least-loaded", extra: &[] },
    },
    Cfg {
        letter: 'G',
        label: "reuselb p2c",
        describe: "`reuselb run --policy p2c`: the lighter of two random workers",
        how: How::Reuselb { policy: "p2c", extra: &[] },
    },
    Cfg {
        letter: 'H',
        label: "reuselb least-loaded, blocked 500 ms",
        describe: "`reuselb run --policy least-loaded --blocked-after-ms 500`: least-loaded, skipping a worker with requests in flight and no completion for 500 ms",
        how: How::Reuselb { policy: "least-loaded", extra: &["--blocked-after-ms", "500"] },
    },
    Cfg {
        letter: 'I',
        label: "reuselb work-left",
        describe: "`reuselb run --policy work-left`: the least work left, each request in flight counting the group's mean service time and each one being worked on also its age",
        how: How::Reuselb { policy: "work-left", extra: &[] },
    },
    // Depth 2, not the 20 threads: a GIL-bound process works on one request at a time, so a
    // second in flight keeps it busy across the first one's I/O and the hand-over, and a third
    // would only wait for the GIL. Depth 20 would queue up to 20 requests behind one GIL before
    // the next process got any: the right depth for an app whose threads run in parallel.
    Cfg {
        letter: 'J',
        label: "reuselb pack, depth 2",
        describe: "`reuselb run --policy pack --pack-depth 2`: the lowest-numbered worker with fewer than 2 requests in flight (few workers stay warm), least-loaded when every worker has 2",
        how: How::Reuselb { policy: "pack", extra: &["--pack-depth", "2"] },
    },
    Cfg {
        letter: 'L',
        label: "reuselb speed-aware",
        describe: "`reuselb run --policy speed-aware`: least-loaded, passing over a worker with requests in flight and no answer for 8 × the group's mean service time (20 ms to 2 s), and weighing a worker whose recent response time is 3 × the mean or more by its pace: (in flight + 1) × its times the mean − 1, where the others weigh their count (an idle one is passed over by the fast path)",
        how: How::Reuselb { policy: "speed-aware", extra: &[] },
    },
];

/// Configurations of policies that were retired: known by letter so that the reports whose raw
/// samples hold them still regenerate, never run again (`--configs` refuses them). Their letters
/// are never reused.
pub const RETIRED: &[Cfg] = &[Cfg {
    letter: 'K',
    label: "reuselb peak-ewma",
    describe: "`reuselb run --policy peak-ewma` (retired in issue 23): the least (service time estimate + 1) × (in flight + 1), the estimate jumping to a slower answer and decaying toward the group's mean (half-life 65 ms)",
    how: How::Reuselb { policy: "peak-ewma", extra: &[] },
}];

impl Cfg {
    /// The configuration of letter `c`, retired ones included (for reports of old runs).
    pub fn by_letter(c: char) -> Option<CfgRef> {
        Self::runnable(c).or_else(|| RETIRED.iter().find(|k| k.letter == c.to_ascii_uppercase()))
    }

    /// The configuration of letter `c` if it can still be run.
    pub fn runnable(c: char) -> Option<CfgRef> {
        CONFIGS.iter().find(|k| k.letter == c.to_ascii_uppercase())
    }

    pub fn short(&self) -> String {
        format!("{} {}", self.letter, self.label)
    }

    /// A reuselb configuration (its own policy in the kernel), as opposed to what people run today.
    pub fn is_reuselb(&self) -> bool {
        matches!(self.how, How::Reuselb { .. })
    }

    /// Has a balancing process besides nginx whose CPU is reported (fastrouter or controller).
    pub fn has_router(&self) -> bool {
        matches!(self.how, How::Fastrouter | How::Reuselb { .. })
    }
}

impl PartialEq for Cfg {
    fn eq(&self, other: &Self) -> bool {
        self.letter == other.letter
    }
}

impl Eq for Cfg {}

impl std::hash::Hash for Cfg {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.letter.hash(state)
    }
}

/// The configurations run by default: all but the ones added for experiments after A-G.
pub fn default_configs() -> Vec<CfgRef> {
    CONFIGS.iter().collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Every request: 4 ms of CPU.
    Uniform,
    /// Every request: a 10 ms wait (GIL released), then 2 ms of CPU.
    IoCpu,
    /// 95% of requests 2 ms of CPU, 5% 50 ms (the demo app's mix).
    Skewed,
    /// The skewed mix, plus one request every ~3 s that holds the GIL for 2 s in one C call.
    Blocked,
    /// Every request: 4 ms of CPU (as uniform), and one worker process capped at
    /// [`SLOW_CPU_PERCENT`] % of a CPU while a point is measured (`super::impair`).
    Slow,
    /// Every request: 4 ms of CPU (as uniform), and one worker process stopped for [`STALL_MS`]
    /// every [`STALL_EVERY_MS`] while a point is measured (`super::impair`).
    Stalls,
}

pub const ALL_WORKLOADS: [Workload; 6] = [
    Workload::Uniform,
    Workload::IoCpu,
    Workload::Skewed,
    Workload::Blocked,
    Workload::Slow,
    Workload::Stalls,
];

/// The blocked workload's hold requests: how long each holds the GIL, and how often one comes.
pub const HOLD_MS: u32 = 2000;
pub const HOLD_EVERY_SECS: f64 = 3.0;

/// The slow workload's cap on its one slowed worker process: this many percent of one CPU, as a
/// cgroup v1 CFS quota ([`SLOW_QUOTA_US`] per [`SLOW_PERIOD_US`]). At 5 % a 4 ms request takes
/// at least 80 ms of wall time, and the process serves at most ~12 of them a second: far slower
/// than its even share of two cores (a worker whose host is overcommitted, or that a noisy
/// neighbour starves).
pub const SLOW_CPU_PERCENT: u64 = 5;
/// The CFS period of the slowed worker's cgroup (`cpu.cfs_period_us`, the kernel's default).
pub const SLOW_PERIOD_US: u64 = 100_000;
/// The CFS quota per period (`cpu.cfs_quota_us`): [`SLOW_CPU_PERCENT`] of [`SLOW_PERIOD_US`].
pub const SLOW_QUOTA_US: u64 = SLOW_PERIOD_US * SLOW_CPU_PERCENT / 100;

/// The stalls workload: its one stalled worker process is stopped this long ...
pub const STALL_MS: u64 = 300;
/// ... every this long (a garbage collection or a swap-in, the rest of the time normal) ...
pub const STALL_EVERY_MS: u64 = 2000;
/// ... the first stall this far into a run, so that even a quick 1 s run has one.
pub const STALL_FIRST_MS: u64 = 500;

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::IoCpu => "io+cpu",
            Workload::Skewed => "skewed",
            Workload::Blocked => "blocked",
            Workload::Slow => "slow",
            Workload::Stalls => "stalls",
        }
    }

    pub fn by_name(s: &str) -> Option<Self> {
        ALL_WORKLOADS
            .iter()
            .copied()
            .find(|x| x.name() == s || (s == "io" && *x == Workload::IoCpu))
    }

    pub fn describe(self) -> &'static str {
        match self {
            Workload::Uniform => "every request burns 4 ms of CPU under the GIL (`/?cpu=4`)",
            Workload::IoCpu => "every request waits 10 ms with the GIL released, then burns 2 ms of CPU (`/?io=10&cpu=2`)",
            Workload::Skewed => "95% of requests burn 2 ms of CPU, 5% burn 50 ms (`/?cpu=2`, `/?cpu=50`; the demo app's mix)",
            Workload::Blocked => "the skewed mix, plus one request about every 3 s (seeded schedule, its own connection through nginx) that holds the GIL for 2 s in one C call (`/?hold=2000`, like a C extension); percentiles are over the ordinary requests, the hold requests are counted apart",
            Workload::Slow => "every request burns 4 ms of CPU under the GIL (`/?cpu=4`, as uniform), and one worker process, the same in every configuration (the first uWSGI instance's first worker: worker 1 of the one instance, E's first instance's worker, D's first instance's first worker), is capped by a cgroup v1 CPU quota at 5% of a CPU (`cpu.cfs_quota_us` 5000 per `cpu.cfs_period_us` 100000) while each point is measured; the raw file records its pid, its CPU time and how often the quota throttled it",
            Workload::Stalls => "every request burns 4 ms of CPU under the GIL (`/?cpu=4`, as uniform), and the same one worker process as in slow is stopped for 300 ms every 2 s (SIGSTOP, then SIGCONT; the first stall 0.5 s into each run), like a garbage collection or a swap-in, while each point is measured (closed and open loop); the raw file records its pid and each stall as applied. p99.9 is the requests a stall catches",
        }
    }

    /// Request paths; the index of the hold request's path (if any) is [`Self::hold_path`].
    pub fn paths(self) -> Vec<String> {
        match self {
            Workload::Uniform | Workload::Slow | Workload::Stalls => vec!["/?cpu=4".into()],
            Workload::IoCpu => vec!["/?io=10&cpu=2".into()],
            Workload::Skewed => vec!["/?cpu=2".into(), "/?cpu=50".into()],
            Workload::Blocked => {
                vec!["/?cpu=2".into(), "/?cpu=50".into(), format!("/?hold={HOLD_MS}")]
            }
        }
    }

    pub fn hold_path(self) -> Option<usize> {
        (self == Workload::Blocked).then_some(2)
    }

    /// The path of an ordinary request, from the mix RNG.
    pub fn pick(self, rng: &mut Rng) -> usize {
        match self {
            Workload::Skewed | Workload::Blocked => usize::from(rng.unit() < 0.05),
            _ => 0,
        }
    }

    /// Mean CPU and mean wall time of an ordinary request's work, in ms.
    pub fn means(self) -> (f64, f64) {
        match self {
            Workload::Uniform | Workload::Slow | Workload::Stalls => (4.0, 4.0),
            Workload::IoCpu => (2.0, 12.0),
            Workload::Skewed | Workload::Blocked => {
                (0.95 * 2.0 + 0.05 * 50.0, 0.95 * 2.0 + 0.05 * 50.0)
            }
        }
    }

    /// Closed-loop clients: two requests' worth of work per process, counting the waits.
    pub fn clients(self, processes: u32) -> usize {
        let (cpu, wall) = self.means();
        (2.0 * processes as f64 * wall / cpu).ceil() as usize
    }

    /// The hold requests' send times within a run of `secs` (seeded): the first 0.2-0.5 s in,
    /// then one every [`HOLD_EVERY_SECS`] ± 0.5 s.
    pub fn hold_schedule(self, secs: f64, seed: u64) -> Vec<f64> {
        if self.hold_path().is_none() {
            return Vec::new();
        }
        let mut rng = Rng::new(seed ^ 0x401d);
        let mut t = 0.2 + 0.3 * rng.unit();
        let mut out = Vec::new();
        while t < secs {
            out.push(t);
            t += HOLD_EVERY_SECS - 0.5 + rng.unit();
        }
        out
    }

    /// The stalls of a run of `secs` (stalls workload only; else none): (start, end) in seconds
    /// from the start, the first at [`STALL_FIRST_MS`], then one every [`STALL_EVERY_MS`], each
    /// [`STALL_MS`] long. Every stall that begins within the run is whole: one that outlasts the
    /// window ends during the drain. The same for every configuration.
    pub fn stall_windows(self, secs: f64) -> Vec<(f64, f64)> {
        if self != Workload::Stalls {
            return Vec::new();
        }
        let (len, every) = (STALL_MS as f64 / 1000.0, STALL_EVERY_MS as f64 / 1000.0);
        (0..)
            .map(|k| STALL_FIRST_MS as f64 / 1000.0 + k as f64 * every)
            .take_while(|&t| t < secs)
            .map(|t| (t, t + len))
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub processes: u32,
    pub threads: u32,
}

impl Variant {
    pub fn name(self) -> String {
        format!("{}x{}", self.processes, self.threads)
    }

    pub fn parse(s: &str) -> Result<Self> {
        let (p, t) = s.split_once('x').with_context(|| format!("variant `{s}` is not PxT"))?;
        Ok(Variant {
            processes: p.parse().with_context(|| format!("processes in `{s}`"))?,
            threads: t.parse().with_context(|| format!("threads in `{s}`"))?,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub full: bool,
    /// Rounds; `None`: the default of the mode (full: a multiple of the configurations, >= 5).
    pub rounds: Option<usize>,
    pub closed_secs: f64,
    /// The shortest open-loop run; full mode lengthens it to reach `min_samples`.
    pub open_secs: f64,
    pub warmup_secs: f64,
    /// Ordinary requests wanted per open-loop point, pooled over the rounds.
    pub min_samples: u64,
    /// Offered rates, as shares of A's capacity (its median throughput plateau).
    pub levels: Vec<f64>,
    pub variants: Vec<Variant>,
    pub workloads: Vec<Workload>,
    pub configs: Vec<CfgRef>,
    pub bootstrap: usize,
    pub no_netns: bool,
    /// Print the plan (rounds, order balance, expected duration) and run nothing.
    pub plan_only: bool,
}

pub const USAGE: &str =
    "bench compare [--full] [--rounds N] [--closed-secs S] [--open-secs S] [--warmup-secs S] \
     [--min-samples N] [--levels 60,90] [--bootstrap B] [--configs ABCDEFGH] \
     [--workloads uniform,io+cpu,skewed,blocked,slow,stalls] [--variants 8x20,2x20] [--no-netns] [--plan]";

impl Options {
    fn quick() -> Self {
        Self {
            full: false,
            rounds: Some(2),
            closed_secs: 1.0,
            open_secs: 1.0,
            warmup_secs: 0.3,
            min_samples: 0,
            levels: vec![0.9],
            variants: vec![
                Variant { processes: 8, threads: 20 },
                Variant { processes: cores().max(1) as u32, threads: 20 },
            ],
            workloads: ALL_WORKLOADS.to_vec(),
            configs: default_configs(),
            bootstrap: 1000,
            no_netns: false,
            plan_only: false,
        }
    }

    /// Full mode's defaults, over quick mode's.
    fn full(mut self) -> Self {
        self.full = true;
        self.rounds = None;
        self.closed_secs = 1.5;
        self.open_secs = 1.0;
        self.warmup_secs = 0.5;
        self.min_samples = 5000;
        self.levels = vec![0.6, 0.9, 0.97];
        self
    }

    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self::quick();
        if args.iter().any(|a| a == "--full") {
            o = o.full();
        }
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut val = |name: &str| -> Result<String> {
                it.next().cloned().with_context(|| format!("{name} needs a value; usage: {USAGE}"))
            };
            match arg.as_str() {
                "--full" => {}
                "--rounds" | "--reps" => {
                    let n: usize =
                        val(arg)?.parse().with_context(|| format!("{arg}: not a count"))?;
                    o.rounds = Some(n);
                }
                "--closed-secs" => o.closed_secs = number(arg, &val(arg)?)?,
                "--open-secs" => o.open_secs = number(arg, &val(arg)?)?,
                "--warmup-secs" => o.warmup_secs = number(arg, &val(arg)?)?,
                "--min-samples" => o.min_samples = number(arg, &val(arg)?)? as u64,
                "--bootstrap" => o.bootstrap = number(arg, &val(arg)?)? as usize,
                "--levels" => o.levels = levels(&val(arg)?)?,
                "--configs" => o.configs = configs(&val(arg)?)?,
                "--workloads" => o.workloads = workloads(&val(arg)?)?,
                "--variants" => o.variants = variants(&val(arg)?)?,
                "--no-netns" => o.no_netns = true,
                "--plan" => o.plan_only = true,
                "-h" | "--help" => bail!("usage: {USAGE}"),
                other => bail!("unknown argument `{other}`; usage: {USAGE}"),
            }
        }
        o.checked()
    }

    /// Refuses options that run nothing; drops repeated configurations, variants and levels, and
    /// sorts the levels.
    fn checked(mut self) -> Result<Self> {
        if self.rounds == Some(0)
            || self.configs.is_empty()
            || self.workloads.is_empty()
            || self.variants.is_empty()
            || self.levels.is_empty()
        {
            bail!("nothing to run; usage: {USAGE}");
        }
        if self.closed_secs <= 0.0 || self.open_secs <= 0.0 {
            bail!("durations must be positive; usage: {USAGE}");
        }
        if self.bootstrap < 100 {
            bail!("--bootstrap: at least 100 replicates");
        }
        self.configs.dedup();
        self.variants.dedup();
        self.levels.sort_by(f64::total_cmp);
        self.levels.dedup();
        Ok(self)
    }

    /// The number of rounds: as given, or (full mode) the number of configurations, or its
    /// smallest multiple >= 5, so that a balanced order puts each in each position equally often.
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or_else(|| {
            let n = self.configs.len();
            n * 5usize.div_ceil(n)
        })
    }
}

/// Option `name`'s value `v`: a finite number >= 0.
fn number(name: &str, v: &str) -> Result<f64> {
    let x: f64 = v.parse().with_context(|| format!("{name}: `{v}` is not a number"))?;
    if !x.is_finite() || x < 0.0 {
        bail!("{name}: `{v}` must be a finite number >= 0");
    }
    Ok(x)
}

/// `--levels 60,90`: percentages in (0, 200], as shares.
fn levels(v: &str) -> Result<Vec<f64>> {
    v.split(',')
        .map(|s| {
            let p = number("--levels", s)?;
            if p <= 0.0 || p > 200.0 {
                bail!("--levels: `{s}` is not a percentage in (0, 200]");
            }
            Ok(p / 100.0)
        })
        .collect()
}

/// `--configs AEF`: configurations by letter.
fn configs(v: &str) -> Result<Vec<CfgRef>> {
    v.chars()
        .map(|c| {
            let letters = || CONFIGS.iter().map(|c| c.letter).collect::<String>();
            match (Cfg::runnable(c), Cfg::by_letter(c)) {
                (Some(cfg), _) => Ok(cfg),
                (None, Some(retired)) => bail!(
                    "--configs: configuration `{c}` ({}) was retired and is not run any more \
                     (there are {})",
                    retired.label,
                    letters()
                ),
                (None, None) => {
                    bail!("--configs: no configuration `{c}` (there are {})", letters())
                }
            }
        })
        .collect()
}

/// `--workloads uniform,skewed`: workloads by name.
fn workloads(v: &str) -> Result<Vec<Workload>> {
    v.split(',')
        .map(|w| Workload::by_name(w).with_context(|| format!("--workloads: no workload `{w}`")))
        .collect()
}

/// `--variants 8x20,2x20`: processes × threads.
fn variants(v: &str) -> Result<Vec<Variant>> {
    v.split(',').map(|s| Variant::parse(s).context("--variants")).collect()
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_distinct_and_reuselb_follows_the_table() {
        let mut l: Vec<char> = CONFIGS.iter().chain(RETIRED).map(|c| c.letter).collect();
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), CONFIGS.len() + RETIRED.len());
        assert!(Cfg::runnable('K').is_none() && Cfg::by_letter('k').is_some());
        assert!(Cfg::by_letter('f').unwrap().is_reuselb());
        assert!(!Cfg::by_letter('E').unwrap().is_reuselb());
        assert!(Cfg::by_letter('H').unwrap().is_reuselb());
    }

    #[test]
    fn every_reuselb_policy_is_one_the_program_knows() {
        for cfg in CONFIGS {
            if let How::Reuselb { policy, .. } = cfg.how {
                let parsed: balancer_common::Policy = policy.parse().expect(policy);
                assert_eq!(parsed.name(), policy, "{}", cfg.short());
            }
        }
        let speed = Cfg::by_letter('L').unwrap();
        assert!(matches!(speed.how, How::Reuselb { policy: "speed-aware", extra: &[] }));
    }

    #[test]
    fn full_mode_rounds_are_a_multiple_of_the_configurations() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(Options::parse(&args("--full")).unwrap().rounds(), CONFIGS.len());
        assert_eq!(Options::parse(&args("--full --configs AEF")).unwrap().rounds(), 6);
        assert_eq!(Options::parse(&args("--full --configs AE")).unwrap().rounds(), 6);
        assert_eq!(Options::parse(&args("--configs AEF")).unwrap().rounds(), 2);
        assert!(Options::parse(&args("--configs AZ")).is_err());
        let retired = Options::parse(&args("--configs AK")).unwrap_err().to_string();
        assert!(retired.contains("`K` (reuselb peak-ewma) was retired"), "{retired}");
    }

    #[test]
    fn slow_and_stalls_parse_and_run_in_full_mode() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let o = Options::parse(&args("--workloads slow,stalls")).unwrap();
        assert_eq!(o.workloads, vec![Workload::Slow, Workload::Stalls]);
        let full = Options::parse(&args("--full")).unwrap();
        assert!(
            full.workloads.contains(&Workload::Slow) && full.workloads.contains(&Workload::Stalls)
        );
        for w in [Workload::Slow, Workload::Stalls] {
            assert_eq!(Workload::by_name(w.name()), Some(w));
            assert_eq!(w.paths(), Workload::Uniform.paths(), "GIL-bound ~4 ms requests");
            assert_eq!(w.clients(8), Workload::Uniform.clients(8));
            assert!(w.hold_path().is_none() && w.hold_schedule(10.0, 1).is_empty());
        }
        assert!(Options::parse(&args("--workloads slow,stall")).is_err());
        assert_eq!(SLOW_QUOTA_US, 5_000);
        // The report's texts say what the constants are.
        assert!(Workload::Slow.describe().contains(&format!("{SLOW_CPU_PERCENT}% of a CPU")));
        assert!(Workload::Slow.describe().contains(&format!("{SLOW_QUOTA_US} per")));
        assert!(Workload::Stalls.describe().contains(&format!("{STALL_MS} ms every 2 s")));
    }

    #[test]
    fn stalls_come_every_two_seconds_for_300_ms() {
        let w = Workload::Stalls.stall_windows(5.0);
        assert_eq!(w.len(), 3);
        for (i, (a, b)) in w.iter().enumerate() {
            assert!((a - (0.5 + 2.0 * i as f64)).abs() < 1e-9, "{w:?}");
            assert!((b - a - 0.3).abs() < 1e-9, "{w:?}");
        }
        // A quick 1 s run has one; a stall that begins before the end is whole.
        assert_eq!(Workload::Stalls.stall_windows(1.0).len(), 1);
        let edge = Workload::Stalls.stall_windows(2.6);
        assert_eq!(edge.len(), 2);
        assert!((edge[1].1 - 2.8).abs() < 1e-9);
        assert!(Workload::Stalls.stall_windows(0.5).is_empty());
        assert!(Workload::Slow.stall_windows(10.0).is_empty());
        assert!(Workload::Uniform.stall_windows(10.0).is_empty());
    }
}
