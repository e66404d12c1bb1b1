//! `bench compare`: reuselb against what people run today, side by side on one machine.
//!
//! The seed's setup, nginx in front of uWSGI (8 processes × 20 threads, GIL-bound Python), in the
//! configurations of [`configs::CONFIGS`] (A-G and more), on the workloads of
//! [`configs::Workload`] (uniform, io+cpu, skewed, blocked, slow, stalls), and the same with
//! processes = cores.
//! All configurations of a variant run at once, each behind its own nginx, idle but for the one
//! being measured. Each round runs every configuration in the order of a balanced Latin square
//! ([`schedule`]):
//!
//! 1. capacity: the throughput plateau of each configuration, per round: closed-loop runs with
//!    more clients at each step until throughput stops growing ([`capacity`]'s rule); one value
//!    per round, the plateau;
//! 2. latency at fixed shares of A's median plateau: open loop, Poisson arrivals, latency from
//!    each request's scheduled send time, the same arrival times and request mix for every
//!    configuration; every request's latency is kept and pooled over the rounds (full mode sizes
//!    the runs so a point has >= 5,000 requests);
//! 3. per point, the counters of [`counters`]: worker shares, context switches, CPU of nginx and of
//!    the router or controller, the kernel's ns per selection, the bench's own CPU, what other
//!    processes used, the load average.
//!
//! Everything measured goes into the raw file ([`raw`]); the report (tables with bootstrap
//! intervals and the one symmetric verdict rule of [`stats`], and the charts) is rendered from
//! that file alone by [`report::render`], here and by `bench report <file>`.
//!
//! Modules: [`configs`] (what is compared, options), [`capacity`] (the plateau search's rule),
//! [`deploy`] (starting and stopping a configuration), [`impair`] (the slow and stalls workloads'
//! one slowed or stopped worker), [`counters`] (/proc, BPF statistics), [`schedule`] (run order), [`stats`]
//! (percentiles, bootstrap, verdict), [`raw`] (the samples file), [`report`] (tables, charts).
pub mod capacity;
pub mod configs;
pub mod counters;
pub mod deploy;
pub mod impair;
pub mod raw;
pub mod report;
pub mod schedule;
pub mod stats;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use capacity::{Next, Step, EXPECTED_STEPS, RULE};
pub use configs::Options;
use configs::{cores, CfgRef, Variant, Workload, HOLD_MS, STALL_MS};
use counters::{
    clock_hz, fast_path_counts, git_commit, loadavg, loadavg1, machine, machine_ticks, own_cpu_ns,
    own_ticks, prog_counters, raise_nofile,
};
use deploy::{deploy, snapshot_binaries, Deployment};
use raw::{
    Caught, Machine, Plateau, Point, PointCounters, Raw, RawOptions, RawVariant, FAILED, FORMAT,
};

use crate::{
    choose_netns,
    loadgen::{self, check_interrupted, Mode, Rng, Spec},
    target_dir,
};
use integration_tests::apps::require;

/// Where a run writes its raw samples.
pub fn raw_path() -> PathBuf {
    target_dir().join("bench").join("compare-raw.json.gz")
}

/// Rough maximum throughput (req/s) of A per workload on a 2-core machine (measured in earlier
/// runs with 2 requests' worth of work per process in flight: below the plateau, so open-loop
/// runs sized from them are estimated on the long side), for the time estimate only. With as many
/// processes as cores, a hold request blocks half of them, and A's closed-loop clients queue behind
/// it. Slow and stalls: estimates from one quick smoke run each on a loaded machine (1 round,
/// `--configs AEF`), not from a full run.
fn nominal_capacity(w: Workload, v: Variant) -> f64 {
    let few = v.processes as usize <= cores();
    match (w, few) {
        (Workload::Uniform, false) => 435.0,
        (Workload::Uniform, true) => 326.0,
        (Workload::IoCpu, _) => 760.0,
        (Workload::Skewed, false) => 440.0,
        (Workload::Skewed, true) => 338.0,
        (Workload::Blocked, false) => 250.0,
        (Workload::Blocked, true) => 90.0,
        (Workload::Slow, false) => 420.0,
        (Workload::Slow, true) => 250.0,
        (Workload::Stalls, false) => 360.0,
        (Workload::Stalls, true) => 235.0,
    }
}

/// The open-loop run's length at `rate`: at least `open_secs`, and long enough that the rounds
/// together give `min_samples` ordinary requests (5% over, for the Poisson spread).
fn open_secs(o: &Options, rate: f64) -> f64 {
    let need = o.min_samples as f64 * 1.05 / (rate.max(1.0) * o.rounds() as f64);
    o.open_secs.max(need)
}

/// The expected run time in seconds (before any measurement: from nominal capacities), with
/// [`EXPECTED_STEPS`] steps per capacity search.
pub fn estimate_secs(o: &Options) -> f64 {
    estimate_with_steps(o, |_| EXPECTED_STEPS)
}

/// The run time in seconds if every capacity search ran to its cap.
pub fn longest_secs(o: &Options) -> f64 {
    estimate_with_steps(o, |v| RULE.max_steps(v.processes))
}

/// The run time in seconds with `steps(v)` steps per capacity search of variant `v`.
fn estimate_with_steps(o: &Options, steps: impl Fn(Variant) -> usize) -> f64 {
    let (r, c) = (o.rounds() as f64, o.configs.len() as f64);
    let per_variant = |v: Variant| -> f64 {
        let total: f64 = o
            .workloads
            .iter()
            .map(|&w| {
                // A hold request still running when the window ends is waited for.
                let tail =
                    if w.hold_path().is_some() { HOLD_MS as f64 / 1000.0 * 0.5 } else { 0.0 };
                // Each step: the run, its drain and the pause after it.
                let closed = r * c * steps(v) as f64 * (o.closed_secs + 0.4 + tail);
                let open: f64 = o
                    .levels
                    .iter()
                    .map(|l| r * c * (open_secs(o, nominal_capacity(w, v) * l) + 0.3 + tail))
                    .sum();
                c * (o.warmup_secs + 0.25) + closed + open
            })
            .sum();
        total + 5.0 + 1.5 * c
    };
    o.variants.iter().map(|&v| per_variant(v)).sum()
}

/// The expected time of a variant's open-loop phase, now that the rates are known.
fn open_phase_secs(o: &Options, rates: &[f64], tail: f64) -> f64 {
    let (r, c) = (o.rounds() as f64, o.configs.len() as f64);
    rates.iter().map(|&rate| r * c * (open_secs(o, rate) + 0.3) + tail * r * c).sum()
}

/// The growth of a pair of counters read before and after a run; 0 if either read failed.
fn delta(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> (u64, u64) {
    match (before, after) {
        (Some((a0, b0)), Some((a1, b1))) => (a1.saturating_sub(a0), b1.saturating_sub(b0)),
        _ => (0, 0),
    }
}

/// The pids of [`Point::per_worker`]'s entries: `dep`'s workers in its order, then any other pid
/// that answered (by pid).
fn worker_pids(dep: &Deployment, by_pid: &HashMap<u32, u64>) -> Vec<u32> {
    let mut others: Vec<u32> =
        by_pid.keys().filter(|p| !dep.workers.contains(p)).copied().collect();
    others.sort_unstable();
    dep.workers.iter().copied().chain(others).collect()
}

/// Answers per worker of `dep`, in its order, then those of any other pid (by pid) that answered.
fn per_worker(dep: &Deployment, by_pid: &HashMap<u32, u64>) -> Vec<u64> {
    worker_pids(dep, by_pid).iter().map(|p| by_pid.get(p).copied().unwrap_or(0)).collect()
}

/// The requests a stall may have caught ([`Spec::note_over`]'s), their send times in µs from
/// `origin`, their workers as indices into `pids` (the order of [`Point::per_worker`]).
fn caught(noted: &[loadgen::Noted], origin: Instant, pids: &[u32]) -> Vec<Caught> {
    noted
        .iter()
        .map(|n| Caught {
            sent_us: n.sent.saturating_duration_since(origin).as_micros() as u64,
            lat_us: n.lat_us,
            worker: if n.lat_us == FAILED { None } else { pids.iter().position(|&p| p == n.pid) },
        })
        .collect()
}

/// The threshold of the requests a point records whole ([`Point::caught`]): on stalls, open loop,
/// the p99.9 target's bound, half a stall; none elsewhere.
fn note_over(w: Workload, level: f64) -> Option<Duration> {
    (w == Workload::Stalls && level > 0.0).then(|| Duration::from_millis(STALL_MS / 2))
}

/// Measures one point: a closed-loop run (`level` 0; its clients recorded) or an open-loop one.
#[allow(clippy::too_many_arguments)]
fn measure(
    deps: &[Deployment],
    dep: &Deployment,
    w: Workload,
    mode: Mode,
    secs: f64,
    seed: u64,
    round: usize,
    level: f64,
) -> Result<Point> {
    let paths = w.paths();
    let pick = move |r: &mut Rng| w.pick(r);
    let holds: Vec<Duration> =
        w.hold_schedule(secs, seed).into_iter().map(Duration::from_secs_f64).collect();
    let spec = Spec {
        addr: dep.front,
        paths: &paths,
        pick: &pick,
        mode,
        duration: Duration::from_secs_f64(secs),
        seed,
        timeout: Duration::from_secs(10),
        max_inflight: 4000,
        // A hold request (2 s of CPU, longer on a busy machine) and what queued behind it are
        // waited for, not failed: the next configuration's run must not share the CPU with it.
        drain: Duration::from_secs(if holds.is_empty() {
            5
        } else {
            5 + 2 * HOLD_MS as u64 / 1000
        }),
        holds: &holds,
        hold_path: w.hold_path().unwrap_or(0),
        note_over: note_over(w, level),
    };
    let detail = level > 0.0;
    let ids = if detail { dep.prog_ids() } else { Vec::new() };
    // The kernel's BPF run-time statistics, on for this run only (and only for reuselb's runs).
    let stats_fd =
        if !ids.is_empty() { aya::sys::enable_stats(aya::sys::Stats::RunTime).ok() } else { None };
    let hz = clock_hz();
    let (t0, (busy0, _), own0, self0) =
        (Instant::now(), machine_ticks(), own_ticks(deps), own_cpu_ns());
    let p0 = prog_counters(&ids);
    let f0 = fast_path_counts(&ids);
    let c0 = dep.counters();
    // One time origin for the stalls' schedule and the requests' send times.
    let origin = Instant::now();
    let (out, impaired) = impair::during(w, dep, origin, secs, || loadgen::run(&spec))?;
    let c1 = dep.counters();
    let p1 = prog_counters(&ids);
    let f1 = fast_path_counts(&ids);
    drop(stats_fd);
    let (busy1, _) = machine_ticks();
    let own1 = own_ticks(deps);
    let elapsed = t0.elapsed().as_secs_f64();
    let other = busy1.saturating_sub(busy0) as f64 - own1.saturating_sub(own0) as f64;
    let (bpf_ns, bpf_runs) = delta(p0, p1);
    let (fast_path, selected) = delta(f0, f1);
    let per_worker = per_worker(dep, &out.by_pid);
    let caught = caught(&out.noted, origin, &worker_pids(dep, &out.by_pid));
    let mut lat = if detail { out.latencies_us.clone() } else { Vec::new() };
    lat.sort_unstable();
    let mut hold_us = out.hold_us.clone();
    hold_us.sort_unstable();
    let (rate, clients) = match mode {
        Mode::Open { rate } => (rate, 0),
        Mode::Closed { clients } => (0.0, clients),
    };
    Ok(Point {
        config: dep.cfg.letter,
        workload: w.name().to_string(),
        level,
        rate,
        round,
        secs,
        clients,
        throughput: out.throughput(),
        lat_us: lat,
        failed: out.failed,
        hold_us,
        per_worker,
        c: PointCounters {
            answered: out.ok,
            behind_ctxsw: c1.behind_ctxsw.saturating_sub(c0.behind_ctxsw),
            nginx_cpu_ns: c1.nginx_cpu_ns.saturating_sub(c0.nginx_cpu_ns),
            router_cpu_ns: c1.router_cpu_ns.saturating_sub(c0.router_cpu_ns),
            bpf_ns,
            bpf_runs,
            fast_path,
            selected,
            loadgen_cpu_ns: own_cpu_ns().saturating_sub(self0),
            other_cpus: (other.max(0.0) / hz / elapsed.max(1e-3) * 1000.0).round() / 1000.0,
            loadavg1: loadavg1(),
        },
        errors: out.errors.into_iter().take(2).collect(),
        impaired,
        caught,
    })
}

/// What a run will do and how long it should take (printed first; `--plan` prints only this).
pub fn plan(o: &Options) -> String {
    let (rounds, n) = (o.rounds(), o.configs.len());
    let balanced = schedule::balanced(n, rounds);
    format!(
        "bench compare: {} mode, {rounds} rounds ({}), {} configurations × {} workloads × {} variants, levels {:?}; \
         expected duration ~{:.1} min with {EXPECTED_STEPS} steps per capacity search (~{:.1} min if every search \
         runs to its cap of {} clients per process)",
        if o.full { "full" } else { "quick" },
        if balanced { "balanced order" } else { "order NOT balanced" },
        n,
        o.workloads.len(),
        o.variants.len(),
        o.levels.iter().map(|l| l * 100.0).collect::<Vec<_>>(),
        estimate_secs(o) / 60.0,
        longest_secs(o) / 60.0,
        RULE.max_per_process
    )
}

fn median_of(v: &mut [f64]) -> f64 {
    stats::median(v)
}

/// Runs the bench, writes the raw samples, and returns the report rendered from them (the
/// charts are written beside the raw file).
pub fn run(o: &Options) -> Result<String> {
    let started = Instant::now();
    eprintln!("{}", plan(o));
    loadgen::install_interrupt_handler();
    require("uwsgi");
    require("nginx");
    let rounds = o.rounds();
    let n = o.configs.len();
    let balanced = schedule::balanced(n, rounds);
    let netns = choose_netns(o.no_netns);
    raise_nofile();
    let bins = snapshot_binaries()?;
    let (model, kernel) = machine();
    let mut raw = Raw {
        format: FORMAT,
        options: RawOptions {
            full: o.full,
            rounds,
            closed_secs: o.closed_secs,
            open_secs: o.open_secs,
            warmup_secs: o.warmup_secs,
            min_samples: o.min_samples,
            levels: o.levels.clone(),
            workloads: o.workloads.iter().map(|w| w.name().to_string()).collect(),
            configs: o.configs.iter().map(|c| c.letter).collect(),
            bootstrap: o.bootstrap,
            balanced,
            descriptions: o.configs.iter().map(|c| (c.letter, c.describe.to_string())).collect(),
            capacity: Some(RULE),
        },
        machine: Machine {
            cpus: cores(),
            model,
            kernel,
            netns,
            git_commit: git_commit(),
            load_before: loadavg(),
            load_after: String::new(),
            elapsed_secs: 0.0,
        },
        variants: Vec::new(),
    };
    let base_cfg = o.configs.iter().copied().find(|c| c.letter == 'A').unwrap_or(o.configs[0]);
    let hz = clock_hz();
    for &v in &o.variants {
        raw.variants.push(run_variant(o, v, &bins, base_cfg, hz)?);
    }
    raw.machine.load_after = loadavg();
    raw.machine.elapsed_secs = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let path = raw_path();
    raw.write(&path)?;
    eprintln!("raw samples written to {}", path.display());
    // The report comes from the file, read back: what `bench report` will render from it.
    render_to(&path, &target_dir().join("bench"))
}

/// Renders the report of the raw file `path`; writes the charts into `dir`; returns the markdown.
pub fn render_to(path: &Path, dir: &Path) -> Result<String> {
    let raw = Raw::read(path)?;
    let out = report::render(&raw)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, svg) in &out.charts {
        let p = dir.join(name);
        std::fs::write(&p, svg).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(out.markdown)
}

/// Starts configuration `c` of variant `v`. A start can fail for a reason of the moment (a port
/// picked as free taken by another instance before it binds): tries again twice (the failed
/// attempt's processes are gone with its guard) before giving up.
fn start(c: CfgRef, v: Variant, bins: &deploy::Binaries) -> Result<Deployment> {
    let mut attempt = 1;
    loop {
        match deploy(c, v, bins) {
            Ok(d) => return Ok(d),
            Err(e) if attempt < 3 => {
                let why = format!("{e:#}");
                let why = why.lines().next().unwrap_or_default();
                eprintln!("  {} did not start (attempt {attempt}), again: {why}", c.short());
                attempt += 1;
            }
            Err(e) => return Err(e.context(format!("starting {} ({})", c.short(), v.name()))),
        }
    }
}

/// Every configuration of variant `v`, started one after the other.
fn start_all(o: &Options, v: Variant, bins: &deploy::Binaries) -> Result<Vec<Deployment>> {
    eprintln!("bench compare: {} — starting {} configurations", v.name(), o.configs.len());
    let mut deps: Vec<Deployment> = Vec::new();
    for &c in &o.configs {
        check_interrupted()?;
        let t = Instant::now();
        let dep = start(c, v, bins)?;
        deps.push(dep);
        eprintln!(
            "  {} up in {:.1} s ({} workers)",
            c.short(),
            t.elapsed().as_secs_f64(),
            deps.last().unwrap().workers.len()
        );
    }
    Ok(deps)
}

/// One variant's configurations, all started, and the order of each round.
struct Phases<'a> {
    o: &'a Options,
    v: Variant,
    deps: &'a [Deployment],
    orders: Vec<Vec<CfgRef>>,
    /// The configuration the offered rates are shares of (A).
    base_cfg: CfgRef,
}

impl Phases<'_> {
    fn dep_of(&self, c: CfgRef) -> &Deployment {
        self.deps.iter().find(|d| d.cfg == c).expect("deployed")
    }

    /// Every configuration, every workload, unrecorded.
    fn warm_up(&self) -> Result<()> {
        for &w in &self.o.workloads {
            for d in self.deps {
                let mode = Mode::Closed { clients: RULE.first(self.v.processes) };
                measure(self.deps, d, w, mode, self.o.warmup_secs, 1, 0, 0.0)?;
            }
        }
        Ok(())
    }

    /// Part 1, capacity, closed loop: every configuration's plateau search in every round; adds
    /// the steps' points and the plateaus to `out`.
    fn closed(&self, out: &mut RawVariant) -> Result<()> {
        let rounds = self.orders.len();
        for (r, order) in self.orders.iter().enumerate() {
            for &w in &self.o.workloads {
                eprintln!("  {} capacity (closed loop), round {}/{rounds}", w.name(), r + 1);
                for &c in order {
                    let plateau = self.search(out, c, w, r)?;
                    eprintln!(
                        "    {}: plateau {:.0} req/s with {} clients",
                        c.short(),
                        plateau.throughput,
                        plateau.clients
                    );
                    out.plateaus.push(Plateau {
                        config: c.letter,
                        workload: w.name().to_string(),
                        round: r,
                        clients: plateau.clients,
                        throughput: plateau.throughput,
                    });
                }
            }
        }
        Ok(())
    }

    /// Configuration `c`'s plateau search on workload `w` in round `r`: a closed-loop run per
    /// step, each of `closed_secs`, with the clients [`capacity::Rule::next`] asks for.
    fn search(&self, out: &mut RawVariant, c: CfgRef, w: Workload, r: usize) -> Result<Step> {
        let mut steps: Vec<Step> = Vec::new();
        loop {
            let clients = match RULE.next(&steps, self.v.processes) {
                Next::Step(clients) => clients,
                Next::Plateau(p) => return Ok(p),
            };
            let mode = Mode::Closed { clients };
            let secs = self.o.closed_secs;
            let p = measure(self.deps, self.dep_of(c), w, mode, secs, 1000 + r as u64, r, 0.0)?;
            eprintln!(
                "      {clients} clients: {:.0} req/s, failed {}{}",
                p.throughput,
                p.failed,
                notes(&p)
            );
            steps.push(Step { clients, throughput: p.throughput });
            out.points.push(p);
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// The base configuration's median plateau per workload.
    fn bases(&self, out: &mut RawVariant) {
        for &w in &self.o.workloads {
            let mut tp: Vec<f64> = out
                .plateaus
                .iter()
                .filter(|p| p.config == self.base_cfg.letter && p.workload == w.name())
                .map(|p| p.throughput)
                .collect();
            out.base.push((w.name().to_string(), median_of(&mut tp)));
        }
    }

    /// 2. Latency at fixed offered rates, open loop: adds its points to `out`.
    fn open(&self, out: &mut RawVariant) -> Result<()> {
        let o = self.o;
        let base_of = |w: Workload, b: &[(String, f64)]| {
            b.iter().find(|(n, _)| n == w.name()).map(|(_, x)| *x).unwrap_or(f64::NAN)
        };
        let rates: Vec<f64> = o
            .workloads
            .iter()
            .flat_map(|&w| o.levels.iter().map(move |l| (w, l)))
            .map(|(w, l)| base_of(w, &out.base) * l)
            .collect();
        let holds = o.workloads.iter().filter(|w| w.hold_path().is_some()).count() as f64;
        eprintln!(
            "  open-loop phase of {}: expected ~{:.1} min",
            self.v.name(),
            open_phase_secs(o, &rates, holds * o.levels.len() as f64 * HOLD_MS as f64 / 2000.0)
                / 60.0
        );
        for r in 0..self.orders.len() {
            for &w in &o.workloads {
                let base = base_of(w, &out.base);
                for (li, &level) in o.levels.iter().enumerate() {
                    self.open_point(out, r, w, (li, level), base * level)?;
                }
            }
        }
        Ok(())
    }

    /// Round `r`'s open-loop runs of workload `w` at level `level` (the `li`th), `rate` req/s,
    /// every configuration in the round's order.
    fn open_point(
        &self,
        out: &mut RawVariant,
        r: usize,
        w: Workload,
        (li, level): (usize, f64),
        rate: f64,
    ) -> Result<()> {
        let secs = open_secs(self.o, rate);
        eprintln!(
            "  {} open loop at {:.0}% of {} ({rate:.0} req/s, {secs:.1} s), round {}/{}",
            w.name(),
            level * 100.0,
            self.base_cfg.letter,
            r + 1,
            self.orders.len()
        );
        for &c in &self.orders[r] {
            let seed = 5000 + (r * 10 + li) as u64;
            let mode = Mode::Open { rate };
            let p = measure(self.deps, self.dep_of(c), w, mode, secs, seed, r, level)?;
            let lat = &p.lat_us;
            eprintln!(
                "    {}: n {} p50 {:.1} p99 {:.1} ms, failed {}{}",
                c.short(),
                lat.len(),
                stats::pct_sorted(lat, 0.5),
                stats::pct_sorted(lat, 0.99),
                p.failed,
                notes(&p)
            );
            out.points.push(p);
            std::thread::sleep(Duration::from_millis(150));
        }
        Ok(())
    }
}

fn run_variant(
    o: &Options,
    v: Variant,
    bins: &deploy::Binaries,
    base_cfg: CfgRef,
    hz: f64,
) -> Result<RawVariant> {
    let rounds = o.rounds();
    let deps = start_all(o, v, bins)?;
    let orders: Vec<Vec<CfgRef>> = (0..rounds)
        .map(|r| schedule::order(o.configs.len(), r).into_iter().map(|i| o.configs[i]).collect())
        .collect();
    let mut out = RawVariant {
        processes: v.processes,
        threads: v.threads,
        orders: orders.iter().map(|o| o.iter().map(|c| c.letter).collect()).collect(),
        ..Default::default()
    };
    let (t0, (busy0, steal0), own0) = (Instant::now(), machine_ticks(), own_ticks(&deps));
    let phases = Phases { o, v, deps: &deps, orders, base_cfg };
    phases.warm_up()?;
    phases.closed(&mut out)?;
    phases.bases(&mut out);
    phases.open(&mut out)?;
    let (busy1, steal1) = machine_ticks();
    let own1 = own_ticks(&deps);
    let secs = t0.elapsed().as_secs_f64();
    let other = busy1.saturating_sub(busy0) as f64 - own1.saturating_sub(own0) as f64;
    out.secs = secs.round();
    out.other_cpus = (other.max(0.0) / hz / secs * 100.0).round() / 100.0;
    out.steal_cpus = (steal1.saturating_sub(steal0) as f64 / hz / secs * 100.0).round() / 100.0;
    eprintln!(
        "bench compare: {} done in {secs:.0} s (other processes used {:.2} CPUs meanwhile, steal {:.2}); stopping its configurations",
        v.name(),
        out.other_cpus,
        out.steal_cpus
    );
    drop(deps);
    Ok(out)
}

/// What a point's progress line adds: its hold requests (blocked), and the impaired worker's
/// share of the answers (slow, stalls).
fn notes(p: &Point) -> String {
    let mut out = String::new();
    if !p.hold_us.is_empty() {
        let failed = p.hold_us.iter().filter(|&&x| x == FAILED).count();
        out = format!(", {} hold requests ({failed} failed)", p.hold_us.len());
    }
    if let Some(i) = &p.impaired {
        out.push_str(&format!(
            ", impaired worker (pid {}) {:.2} of an even share, {:.0} ms CPU{}",
            i.pid,
            report::impaired_share(p),
            i.cpu_ms,
            if i.stalls_ms.is_empty() {
                String::new()
            } else {
                format!(", {} stalls", i.stalls_ms.len())
            }
        ));
    }
    out
}
