//! `bench selector`: what one selection costs in the kernel, and what the program costs the
//! connection rate.
//!
//! 1. ns per selection from the kernel's BPF run-time statistics (Δrun_time_ns / Δrun_cnt over a
//!    run of connections), for groups of 1, 8, 64 and 256 listeners with least-loaded (and p2c at
//!    64 and 256, the default policy, speed-aware, at 64, and round-robin at 64: the program's
//!    fixed part, everything but the choice), beside an SK_REUSEPORT program that only returns
//!    SK_PASS. Each configuration is measured twice per round: on an idle load
//!    table, and contended, while a writer thread on another CPU does what the workers' shims do
//!    when connections complete, as fast as it can, to the same table (see [`writer`]).
//! 2. Closed-loop connection rate of an 8-worker group with the program attached (the default
//!    policy) and with no program at all (the kernel's reuseport hash).
//!
//! Every configuration runs several times, interleaved, and the report gives medians.
//!
//! Modules: [`configs`] (options, beds, the configurations, the targets), [`writer`] (the
//! contended runs' writer, CPU pinning), [`report`] (the markdown). Here: the rig, one measured
//! run of connections, and the two parts.
mod configs;
mod report;
mod writer;

use std::{sync::Arc, time::Instant};

use anyhow::{bail, Context, Result};
use balancer_common::Policy;
use balancer_user::{shared_loads::SharedLoads, Mode};

pub use configs::Options;
use configs::{
    Config, SelTotals, ACCEPT_THREADS, CONFIGS, CONTENDED, DEFAULT, G64, G8, IDLE, PASS64, PLAIN8,
};
use report::{Rates, Results, Selections};
use writer::{affinity, set_busy, Placement, WriteTarget, Writer, WRITER_LIMIT};

use crate::{
    bpf_stats_sysctl, choose_netns,
    rig::{drive, drive_burst, Acceptors, Bed, BedKind, Selector},
    sk_pass,
};

/// The beds, and the acceptors draining them. Drops the acceptors first, then detaches and
/// closes every bed.
struct Rig {
    acceptors: Option<Acceptors>,
    beds: Vec<Bed>,
}

impl Rig {
    fn acceptors(&self) -> &Acceptors {
        self.acceptors.as_ref().expect("acceptors run while the rig lives")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.acceptors.take();
        self.beds.clear();
    }
}

impl Rig {
    /// The beds (an SK_PASS group of 64, reuselb's groups of 1, 8, 64 and 256, 8 listeners with no
    /// program), and the acceptors draining them.
    fn start(program: Mode) -> Result<Self> {
        let beds = vec![
            Bed::new(BedKind::SkPass, 64)?,
            Bed::new(BedKind::Group(Policy::LeastLoaded, program), 1)?,
            Bed::new(BedKind::Group(Policy::LeastLoaded, program), 8)?,
            Bed::new(BedKind::Group(Policy::LeastLoaded, program), 64)?,
            Bed::new(BedKind::Group(Policy::LeastLoaded, program), 256)?,
            Bed::new(BedKind::KernelHash, 8)?,
        ];
        let acceptors = Acceptors::start(&beds, ACCEPT_THREADS)?;
        Ok(Rig { acceptors: Some(acceptors), beds })
    }

    /// What each bed's writer writes to: its own group's table; the SK_PASS bed has none (see
    /// [`target_of`]).
    fn write_targets(&self) -> Result<Vec<Option<WriteTarget>>> {
        let mut targets: Vec<Option<WriteTarget>> = Vec::new();
        for bed in &self.beds {
            targets.push(match bed.group() {
                Some(g) => Some(WriteTarget {
                    loads: Arc::new(
                        SharedLoads::map(g.loads_fd()).context("mapping the load table")?,
                    ),
                    slots: bed.slots.clone(),
                }),
                None => None,
            });
        }
        Ok(targets)
    }
}

/// The table `cfg`'s writer writes to: its own group's; the SK_PASS bed's writer writes to the
/// 64-worker group's table (a control: the same writer, with no table that the measured program
/// reads).
fn target_of<'t>(targets: &'t [Option<WriteTarget>], cfg: &Config) -> &'t WriteTarget {
    let bed = if targets[cfg.bed].is_some() { cfg.bed } else { G64 };
    targets[bed].as_ref().expect("every group bed has a target")
}

/// Makes `n` connections to the configuration's bed and records the program's ns per selection
/// in `totals` (none: warm-up). With `writer`, a [`Writer`] writes to that table meanwhile. A
/// busy configuration makes every slot of `table` busy for the run.
fn measure_selection(
    rig: &mut Rig,
    cfg: &Config,
    n: u64,
    burst: usize,
    totals: Option<&mut SelTotals>,
    writer: Option<(&WriteTarget, Option<usize>, u64)>,
    table: Option<&WriteTarget>,
) -> Result<()> {
    let bed = &mut rig.beds[cfg.bed];
    if let Some(p) = cfg.policy {
        bed.set_policy(p)?;
    }
    let busy = match table {
        Some(t) if cfg.busy => {
            set_busy(t, true);
            Some(t)
        }
        _ => None,
    };
    let res = measure_on(rig, cfg, n, burst, totals, writer);
    if let Some(t) = busy {
        set_busy(t, false);
    }
    res
}

fn measure_on(
    rig: &Rig,
    cfg: &Config,
    n: u64,
    burst: usize,
    totals: Option<&mut SelTotals>,
    writer: Option<(&WriteTarget, Option<usize>, u64)>,
) -> Result<()> {
    let bed = &rig.beds[cfg.bed];
    let mut running = match writer {
        Some((target, cpu, seed)) => Some(Writer::start(target, cpu, seed)?),
        None => None,
    };
    let (t0, c0) = bed.prog_counters()?.context("no program attached")?;
    let (a0, f0, p0) = (bed.assigned_total(), bed.fallbacks()?, bed.fast_path()?);
    if burst > 0 {
        drive_burst(bed, rig.acceptors(), n, burst)?;
    } else {
        drive(bed, rig.acceptors(), n)?;
    }
    let (t1, c1) = bed.prog_counters()?.context("no program attached")?;
    let (a1, f1, p1) = (bed.assigned_total(), bed.fallbacks()?, bed.fast_path()?);
    let wrote = match running.as_mut() {
        Some(w) => Some(w.finish()?),
        None => None,
    };
    if let Some(r) = &wrote {
        if r.timed_out {
            bail!(
                "the writer stopped at its limit of {WRITER_LIMIT:?} before the run of {n} connections ended: \
                 use fewer --conns"
            );
        }
        if r.writes == 0 {
            bail!("the writer made no completion during the run");
        }
    }
    let runs = c1.wrapping_sub(c0);
    let ns = t1.wrapping_sub(t0);
    if runs == 0 || ns == 0 {
        bail!("the kernel counted no program runs (run_cnt {c0}->{c1}, run_time_ns {t0}->{t1}) for {n} connections: BPF run-time statistics are not on");
    }
    if runs < n {
        bail!("the program ran {runs} times for {n} connections: some connections bypassed it");
    }
    if let Some(t) = totals {
        t.ns.push(ns as f64 / runs as f64);
        t.runs += runs;
        t.conns += n;
        t.selected += a1 - a0;
        t.fallbacks += f1 - f0;
        t.fast += p1 - p0;
        if let Some(r) = wrote {
            t.writes_per_sec.push(r.writes as f64 / r.secs);
            t.writes += r.writes;
        }
    }
    Ok(())
}

pub fn run(o: &Options) -> Result<String> {
    let started = Instant::now();
    let netns = choose_netns(o.no_netns);
    let sysctl_before = bpf_stats_sysctl();

    eprintln!("bench selector: binding the listeners on 127.0.0.1, loading the programs");
    let mut rig = Rig::start(o.program)?;
    let group = rig.beds[G8].group().expect("group bed");
    let program_name = group.program().name();
    let verified_insns =
        group.program_info().context("reading the program's info")?.verified_instruction_count();
    let selections = part1(o, &mut rig, program_name)?;
    let rates = part2(o, &mut rig)?;
    rig.acceptors().check()?;
    let workers: Vec<usize> = rig.beds.iter().map(Bed::workers).collect();
    drop(rig);
    let elapsed = started.elapsed();
    report::render(&Results {
        o,
        netns,
        program_name,
        verified_insns,
        sysctl_before,
        selections,
        rates,
        workers,
        elapsed,
    })
}

/// Pins this thread (the client; the acceptors, started before, keep the old mask) to the first
/// CPU allowed, and places the writer on the second; nothing pinned if fewer than 2 are allowed.
fn pin_client(allowed: &[usize]) -> Result<Placement> {
    if allowed.len() < 2 {
        eprintln!("warning: fewer than 2 CPUs allowed; the writer will not run beside the program");
        return Ok(Placement { client: None, writer: None });
    }
    affinity::pin(allowed[0])
        .with_context(|| format!("pinning the client to CPU {}", allowed[0]))?;
    Ok(Placement { client: Some(allowed[0]), writer: Some(allowed[1]) })
}

/// Part 1: ns per selection of every configuration, idle and contended, in `o.reps` rounds, with
/// the BPF run-time statistics on while the fd is held and the client and the writer pinned to
/// two different CPUs (the client's mask is restored after).
fn part1(o: &Options, rig: &mut Rig, program_name: &str) -> Result<Selections> {
    let targets = rig.write_targets()?;
    let mask_before = affinity::get().context("sched_getaffinity")?;
    let placement = pin_client(&affinity::cpus(&mask_before))?;
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
    let sysctl_during = bpf_stats_sysctl();
    for cfg in &CONFIGS {
        let table = targets[cfg.bed].as_ref();
        measure_selection(rig, cfg, o.warmup.max(1), o.burst, None, None, table)
            .context("warm-up")?;
    }
    let part = Part1 { o, targets: &targets, writer_cpu: placement.writer, program_name };
    let mut sel: Vec<[SelTotals; 2]> = CONFIGS.iter().map(|_| Default::default()).collect();
    for rep in 0..o.reps {
        eprintln!("part 1 (ns per selection, idle and contended): round {}/{}", rep + 1, o.reps);
        part.round(rig, rep, &mut sel)?;
    }
    if let Selector::SkPass(p) = &rig.beds[PASS64].selector {
        sk_pass::cross_check_with_aya(p)?;
    }
    drop(stats_fd);
    let sysctl_after = bpf_stats_sysctl();
    drop(targets);
    affinity::set(&mask_before).context("restoring the client's CPU mask")?;
    Ok(Selections { totals: sel, placement, sysctl_during, sysctl_after })
}

/// What every round of part 1 runs with.
struct Part1<'a> {
    o: &'a Options,
    targets: &'a [Option<WriteTarget>],
    /// The CPU the writer is pinned to, if any.
    writer_cpu: Option<usize>,
    program_name: &'a str,
}

impl Part1<'_> {
    /// Round `rep`: every configuration in both modes, adding to `sel`.
    fn round(&self, rig: &mut Rig, rep: usize, sel: &mut [[SelTotals; 2]]) -> Result<()> {
        for (i, cfg) in CONFIGS.iter().enumerate() {
            // Idle first in half of the runs, contended first in the other half.
            let order =
                if (rep + i).is_multiple_of(2) { [IDLE, CONTENDED] } else { [CONTENDED, IDLE] };
            for mode in order {
                let seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((rep * CONFIGS.len() + i) as u64) << 20;
                let writer = (mode == CONTENDED)
                    .then(|| (target_of(self.targets, cfg), self.writer_cpu, seed));
                let res = measure_selection(
                    rig,
                    cfg,
                    self.o.conns,
                    self.o.burst,
                    Some(&mut sel[i][mode]),
                    writer,
                    self.targets[cfg.bed].as_ref(),
                );
                if let Err(e) = res {
                    let mode = if mode == IDLE { "idle" } else { "contended" };
                    return Err(e.context(format!(
                        "part 1, {}, {mode}",
                        config_label(rig, cfg, self.program_name)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Part 2: connection rate, 8 workers, the program with the default policy vs no program.
fn part2(o: &Options, rig: &mut Rig) -> Result<Rates> {
    rig.beds[G8].set_policy(DEFAULT)?;
    let rate_beds = [G8, PLAIN8];
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut paired = Vec::new();
    for &b in &rate_beds {
        drive(&rig.beds[b], rig.acceptors(), o.warmup.max(1)).context("warm-up")?;
    }
    let (a0, f0) = (rig.beds[G8].assigned_total(), rig.beds[G8].fallbacks()?);
    for rep in 0..o.rate_reps {
        eprintln!("part 2 (connection rate): round {}/{}", rep + 1, o.rate_reps);
        let secs = rate_round(o, rig, rate_beds, rep)?;
        let round = [o.rate_conns as f64 / secs[0], o.rate_conns as f64 / secs[1]];
        rates[0].push(round[0]);
        rates[1].push(round[1]);
        paired.push(round[0] / round[1]);
    }
    let selected = rig.beds[G8].assigned_total() - a0;
    let fallbacks = rig.beds[G8].fallbacks()? - f0;
    Ok(Rates { rates, paired, selected, fallbacks })
}

/// Round `rep` of part 2: `rate_conns` connections with each of `beds`, in slices that alternate
/// between the two (A B B A A B ...), so both see the same machine even when its load changes
/// within seconds. Returns each bed's time in seconds, the sum of its slices' times.
fn rate_round(o: &Options, rig: &Rig, beds: [usize; 2], rep: usize) -> Result<[f64; 2]> {
    let slice = o.slice.clamp(1, o.rate_conns);
    let mut secs = [0.0f64; 2];
    let mut done = 0u64;
    let mut flip = rep % 2 == 1;
    while done < o.rate_conns {
        let k = slice.min(o.rate_conns - done);
        let order: [usize; 2] = if flip { [1, 0] } else { [0, 1] };
        for c in order {
            let d = drive(&rig.beds[beds[c]], rig.acceptors(), k)
                .with_context(|| format!("part 2, round {}", rep + 1))?;
            secs[c] += d.as_secs_f64();
        }
        flip = !flip;
        done += k;
    }
    Ok(secs)
}

fn config_label(rig: &Rig, cfg: &Config, program: &str) -> String {
    let n = rig.beds[cfg.bed].workers();
    match cfg.policy {
        None => format!("SK_PASS-only program, {n} workers"),
        Some(p) => format!("`{program}` {} with {n} workers", p.name()),
    }
}
