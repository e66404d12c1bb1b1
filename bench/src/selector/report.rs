//! The markdown report of `bench selector`, from what its two parts measured ([`Results`]):
//! the method, the table of ns per selection (idle, contended, against SK_PASS), the connection
//! rates, every run's figure, and the verdicts against the targets.
use std::{fmt::Write as _, time::Duration};

use anyhow::Result;
use balancer_common::Policy;

use super::{
    configs::{
        at_64, Config, Options, SelTotals, ACCEPT_THREADS, CONFIGS, CONTENDED, DEFAULT, IDLE,
        TARGET_NS_AT_64, TARGET_RATE_RATIO,
    },
    writer::Placement,
};
use crate::{kernel_release, summarize, Summary};

/// What part 1 measured: per configuration (in [`CONFIGS`]' order), the totals of each mode.
pub(super) struct Selections {
    pub(super) totals: Vec<[SelTotals; 2]>,
    pub(super) placement: Placement,
    /// `kernel.bpf_stats_enabled` while part 1 ran, and after.
    pub(super) sysctl_during: String,
    pub(super) sysctl_after: String,
}

/// What part 2 measured: per round, the rate with the program and without, and their ratio;
/// the program's selections and fallbacks over the whole part.
pub(super) struct Rates {
    pub(super) rates: [Vec<f64>; 2],
    pub(super) paired: Vec<f64>,
    pub(super) selected: u64,
    pub(super) fallbacks: u64,
}

/// Everything the report says.
pub(super) struct Results<'a> {
    pub(super) o: &'a Options,
    /// Where the bench ran (see [`crate::choose_netns`]).
    pub(super) netns: String,
    pub(super) program_name: &'static str,
    pub(super) verified_insns: Option<u32>,
    pub(super) sysctl_before: String,
    pub(super) selections: Selections,
    pub(super) rates: Rates,
    /// Listeners per bed.
    pub(super) workers: Vec<usize>,
    pub(super) elapsed: Duration,
}

pub(super) fn render(r: &Results) -> Result<String> {
    let mut md = String::new();
    let w = &mut md;
    head(w, r)?;
    let ns_target_pass = part1(w, r)?;
    let ratio = part2(w, r)?;
    raw_runs(w, r)?;
    summary(w, r, ns_target_pass, ratio)?;
    Ok(md)
}

/// The title, the machine, and how each connection is made.
fn head(w: &mut String, r: &Results) -> Result<()> {
    let (netns, program_name) = (&r.netns, r.program_name);
    writeln!(w, "# reuselb bench: selector\n")?;
    writeln!(
        w,
        "Kernel {}, {} CPUs, in {netns}, listeners on 127.0.0.1. reuselb program: `{program_name}` \
         (the policy is switched at run time between runs, no reload).\n",
        kernel_release(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    )?;
    writeln!(
        w,
        "Each connection: connect, accept, close (closed loop, one client). The acceptor ({ACCEPT_THREADS} threads, \
         epoll + nonblocking accept4) closes first with SO_LINGER 0 (RST) and the client waits for it, so no socket \
         is left in TIME_WAIT and no ephemeral port runs out; each accepted and closed connection is marked completed \
         in the load map, as a worker's shim would.\n"
    )?;

    Ok(())
}

/// Part 1: the method, the table, the totals. Returns whether the target at 64 workers was met.
fn part1(w: &mut String, r: &Results) -> Result<bool> {
    let (o, program_name, sel) = (r.o, r.program_name, &r.selections.totals);
    let (sysctl_before, sysctl_during, sysctl_after, placement, verified_insns) = (
        &r.sysctl_before,
        &r.selections.sysctl_during,
        &r.selections.sysctl_after,
        &r.selections.placement,
        r.verified_insns,
    );
    writeln!(w, "## 1. Cost of one selection (kernel BPF run-time statistics)\n")?;
    writeln!(
        w,
        "ns per selection = Δrun_time_ns / Δrun_cnt of the program over a run of {} connections ({}); {} runs per \
         configuration and mode, interleaved (A B C ... A B C ...), after {} warm-up connections each. The statistics were \
         switched on with BPF_ENABLE_STATS (aya `enable_stats`), the equivalent of `kernel.bpf_stats_enabled=1`, \
         for part 1 only, and switched back off when that fd was closed: the previous state is restored. \
         (`/proc/sys/kernel/bpf_stats_enabled` shows only what was written to the sysctl, not the fd's reference: \
         before {sysctl_before}, during {sysctl_during}, after {sysctl_after}.) Every figure includes the \
         statistics' own two clock reads per run, which is most of what the SK_PASS-only program shows; \
         \"− SK_PASS\" (each mode's median minus the SK_PASS program's median in the same mode) is the program's own cost.\n",
        o.conns,
        if o.burst > 0 { format!("opened {} at a time, back to back", o.burst) } else { "one at a time".to_string() },
        o.reps,
        o.warmup.max(1)
    )?;
    writeln!(
        w,
        "Each configuration is measured in two modes, in the same round, in alternating order. **Idle**: nothing \
         but the bench's own connections touches the load table, so its lines stay in the program's cache. \
         **Contended**: a writer thread does to the same table what the workers' shims do when connections \
         complete, in a tight loop for the whole run: for a random slot of the group, an atomic add of 1 to \
         `completed`, an atomic sub of 1 from `inflight` (and a store of 1 to the slot's `idle` byte when that \
         took it to 0, as the shim does) and an add of 1 back (so the loads stay those of the bench's own \
         connections), and a store of CLOCK_MONOTONIC (vDSO) to `progress`. Placement: {}. The \
         SK_PASS program's writer writes to the 64-worker group's table, which that program never reads: a \
         control for the cost of a busy second CPU alone. The writer's rate is far above what real workers make \
         (one completion per request): the contended figures are a worst case for the table's cache lines.\n",
        placement.describe()
    )?;
    writeln!(
        w,
        "Least-loaded first looks for an idle slot (nothing in flight) through the idle bytes, 8 slots per \
         read, and scans only when it finds none. The acceptors complete every connection at once, so in \
         most configurations most slots are idle. **64, none idle**: the same 64-worker group with every slot \
         1 in flight (and its idle byte cleared) for the run, so every selection tries the fast path, finds \
         nothing and scans: the cost when no worker is idle. \"fast path\" is the share of the measured \
         selections that the fast path made (the program's `fast_path` counter). **{}** (the default) \
         also reads the clock and the group's mean service time once per connection, and its fast path and \
         scan weigh each slot's pace and check its progress; the bench's acceptors record no answer times, so \
         these checks run on a table without them. **{}** at 64 workers decides nothing from the table \
         (the active slot at this CPU's turn) but does everything else per connection: the config, the \
         socket's selection, the count in the shared table, the per-CPU counters (no clock, no fast-path \
         event): the program's fixed part, which every policy pays besides its choice.\n",
        DEFAULT.name(),
        Policy::RoundRobin.name()
    )?;
    if let Some(n) = verified_insns {
        writeln!(w, "The verifier processed {n} instructions to load `{program_name}`.\n")?;
    }
    writeln!(w, "| program | policy | workers | idle ns/sel. median [min, max] | contended median [min, max] | contended − idle | idle − SK_PASS | contended − SK_PASS | writer completions/s (median) | runs/conn | fast path | target | result |")?;
    writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")?;
    let base = [summarize(&sel[0][IDLE].ns).median, summarize(&sel[0][CONTENDED].ns).median];
    let mut ns_target_pass = true;
    let target = at_64(DEFAULT, false);
    for (i, (cfg, t)) in CONFIGS.iter().zip(sel).enumerate() {
        if let Some(ok) = part1_row(w, r, cfg, t, base, i == target)? {
            ns_target_pass = ok;
        }
    }
    let (sel_selected, sel_conns, sel_fallbacks): (u64, u64, u64) = sel[1..]
        .iter()
        .flat_map(|t| t.iter())
        .fold((0, 0, 0), |acc, t| (acc.0 + t.selected, acc.1 + t.conns, acc.2 + t.fallbacks));
    let all_writes: u64 = sel.iter().map(|t| t[CONTENDED].writes).sum();
    writeln!(
        w,
        "\nreuselb's program picked a slot for {sel_selected} of {sel_conns} measured connections ({sel_fallbacks} fallbacks to the kernel's hash). \
         The writers made {all_writes} completions in all.\n"
    )?;

    Ok(ns_target_pass)
}

/// One configuration's row of part 1's table; whether it met the target, if it has one.
fn part1_row(
    w: &mut String,
    r: &Results,
    cfg: &Config,
    t: &[SelTotals; 2],
    base: [f64; 2],
    carries_target: bool,
) -> Result<Option<bool>> {
    let (program_name, workers) = (r.program_name, &r.workers);
    let mut target_ok = None;
    let idle = summarize(&t[IDLE].ns);
    let cont = summarize(&t[CONTENDED].ns);
    let (prog, policy) = match cfg.policy {
        None => ("SK_PASS only (`r0 = 1; exit`)".to_string(), "—".to_string()),
        Some(p) => (format!("reuselb `{program_name}`"), p.name().to_string()),
    };
    let workers = if cfg.busy {
        format!("{}, none idle", workers[cfg.bed])
    } else {
        workers[cfg.bed].to_string()
    };
    let over = |m: f64, b: f64| {
        if cfg.policy.is_none() {
            "—".to_string()
        } else {
            format!("{:+.1}", m - b)
        }
    };
    let (target, result) = if carries_target {
        let ok = idle.median <= TARGET_NS_AT_64 && cont.median <= TARGET_NS_AT_64;
        target_ok = Some(ok);
        (format!("≤ {TARGET_NS_AT_64:.0} ns both"), if ok { "PASS" } else { "MISS" }.to_string())
    } else {
        (String::new(), String::new())
    };
    let runs = t[IDLE].runs + t[CONTENDED].runs;
    let conns = t[IDLE].conns + t[CONTENDED].conns;
    let selected = t[IDLE].selected + t[CONTENDED].selected;
    let fast = if cfg.policy.is_none() {
        "—".to_string()
    } else {
        format!(
            "{:.1} %",
            100.0 * (t[IDLE].fast + t[CONTENDED].fast) as f64 / selected.max(1) as f64
        )
    };
    writeln!(
        w,
        "| {prog} | {policy} | {workers} | {:.1} [{:.1}, {:.1}] | {:.1} [{:.1}, {:.1}] | {:+.1} | {} | {} | {:.2e} | {:.2} | {fast} | {target} | {result} |",
        idle.median,
        idle.min,
        idle.max,
        cont.median,
        cont.min,
        cont.max,
        cont.median - idle.median,
        over(idle.median, base[IDLE]),
        over(cont.median, base[CONTENDED]),
        summarize(&t[CONTENDED].writes_per_sec).median,
        runs as f64 / conns as f64
    )?;
    Ok(target_ok)
}

/// Part 2: the connection rates and their ratio, which it returns.
fn part2(w: &mut String, r: &Results) -> Result<f64> {
    let o = r.o;
    let sysctl_after = &r.selections.sysctl_after;
    let Rates { rates, paired, selected: rate_selected, fallbacks: rate_fallbacks } = &r.rates;
    writeln!(w, "## 2. Connection rate, 8 workers\n")?;
    writeln!(
        w,
        "{} connections per run, {} runs each (closed loop: connect, accept, close), after {} warm-up connections \
         each. Interleaved finely: within a round the two configurations alternate every {} connections \
         (A B B A A B ...), so both see the same machine while other load comes and goes; a run's rate is its \
         connections over the sum of its slices' times. BPF statistics off again (sysctl: {sysctl_after}).\n",
        o.rate_conns,
        o.rate_reps,
        o.warmup.max(1),
        o.slice.clamp(1, o.rate_conns)
    )?;
    let with = summarize(&rates[0]);
    let without = summarize(&rates[1]);
    let ratio = with.median / without.median;
    let pr: Summary = summarize(paired);
    writeln!(w, "| selection | conn/s (median) | min | max |")?;
    writeln!(w, "|---|---:|---:|---:|")?;
    writeln!(
        w,
        "| {} program attached (the default) | {:.0} | {:.0} | {:.0} |",
        DEFAULT.name(),
        with.median,
        with.min,
        with.max
    )?;
    writeln!(
        w,
        "| no program (kernel hash) | {:.0} | {:.0} | {:.0} |",
        without.median, without.min, without.max
    )?;
    writeln!(w)?;
    writeln!(w, "| ratio with/without | value | target | result |")?;
    writeln!(w, "|---|---:|---|---|")?;
    writeln!(
        w,
        "| of the medians | {ratio:.3} | ≥ {TARGET_RATE_RATIO} | {} |",
        if ratio >= TARGET_RATE_RATIO { "PASS" } else { "MISS" }
    )?;
    writeln!(
        w,
        "| per round (median [min, max] of {} rounds) | {:.3} [{:.3}, {:.3}] | | |",
        pr.n, pr.median, pr.min, pr.max
    )?;
    writeln!(
        w,
        "\nWith the program: it picked a slot for {rate_selected} of {} connections ({rate_fallbacks} fallbacks).\n",
        o.rate_conns * o.rate_reps as u64
    )?;
    Ok(ratio)
}

/// Every run's figure.
fn raw_runs(w: &mut String, r: &Results) -> Result<()> {
    let (sel, workers, rates) = (&r.selections.totals, &r.workers, &r.rates.rates);
    writeln!(w, "## Raw runs\n")?;
    for (cfg, t) in CONFIGS.iter().zip(sel) {
        let name = match cfg.policy {
            None => "SK_PASS only".to_string(),
            Some(p) => p.name().to_string(),
        };
        let fmt = |v: &[f64]| v.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ");
        let n = workers[cfg.bed];
        let name = if cfg.busy { format!("{name} (none idle)") } else { name };
        writeln!(w, "- ns/selection, {name}, {n} workers, idle: {}", fmt(&t[IDLE].ns))?;
        writeln!(w, "- ns/selection, {name}, {n} workers, contended: {}", fmt(&t[CONTENDED].ns))?;
        let rates: Vec<String> =
            t[CONTENDED].writes_per_sec.iter().map(|v| format!("{v:.2e}")).collect();
        writeln!(w, "- writer completions/s, {name}, {n} workers: {}", rates.join(" "))?;
    }
    for (k, label) in ["conn/s with the program", "conn/s without"].iter().enumerate() {
        let runs: Vec<String> = rates[k].iter().map(|v| format!("{v:.0}")).collect();
        writeln!(w, "- {label}: {}", runs.join(" "))?;
    }
    writeln!(w)?;
    Ok(())
}

/// The verdicts against the targets, and the bench's run time.
fn summary(w: &mut String, r: &Results, ns_target_pass: bool, ratio: f64) -> Result<()> {
    let (sel, elapsed) = (&r.selections.totals, r.elapsed);
    writeln!(w, "## Summary\n")?;
    let median = |i: usize, mode: usize| summarize(&sel[i][mode].ns).median;
    let (default, idle) = (at_64(DEFAULT, false), at_64(DEFAULT, true));
    writeln!(
        w,
        "- {} (the default) at 64 workers: {:.1} ns per selection idle, {:.1} contended (target ≤ {TARGET_NS_AT_64:.0} both): {}",
        DEFAULT.name(),
        median(default, IDLE),
        median(default, CONTENDED),
        if ns_target_pass { "PASS" } else { "MISS" }
    )?;
    writeln!(
        w,
        "- {} at 64 workers, none idle (fast path finds nothing, exact scan): {:.1} ns idle, {:.1} contended",
        DEFAULT.name(),
        median(idle, IDLE),
        median(idle, CONTENDED),
    )?;
    for busy in [false, true] {
        let i = at_64(Policy::LeastLoaded, busy);
        writeln!(
            w,
            "- least-loaded at 64 workers{}: {:.1} ns idle, {:.1} contended",
            if busy { ", none idle" } else { "" },
            median(i, IDLE),
            median(i, CONTENDED),
        )?;
    }
    let fixed = at_64(Policy::RoundRobin, false);
    writeln!(
        w,
        "- {} at 64 workers (the program's fixed part, no choice): {:.1} ns idle, {:.1} contended",
        Policy::RoundRobin.name(),
        median(fixed, IDLE),
        median(fixed, CONTENDED),
    )?;
    writeln!(
        w,
        "- connection rate with/without the program: {ratio:.3} (target ≥ {TARGET_RATE_RATIO}): {}",
        if ratio >= TARGET_RATE_RATIO { "PASS" } else { "MISS" }
    )?;
    writeln!(w, "- bench run time: {:.1} s", elapsed.as_secs_f64())?;
    Ok(())
}
