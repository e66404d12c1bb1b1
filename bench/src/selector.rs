//! `bench selector`: what one selection costs in the kernel, and what the program costs the
//! connection rate.
//!
//! 1. ns per selection from the kernel's BPF run-time statistics (Δrun_time_ns / Δrun_cnt over a
//!    run of connections), for groups of 1, 8, 64 and 256 listeners with least-loaded (and p2c at
//!    64 and 256), beside an SK_REUSEPORT program that only returns SK_PASS. Each configuration
//!    is measured twice per round: on an idle load table, and contended, while a writer thread on
//!    another CPU does what the workers' shims do when connections complete, as fast as it can, to
//!    the same table (see [`Writer`]).
//! 2. Closed-loop connection rate of an 8-worker group with the least-loaded program attached
//!    and with no program at all (the kernel's reuseport hash).
//!
//! Every configuration runs several times, interleaved, and the report gives medians.
use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use balancer_common::Policy;
use balancer_user::{shared_loads::SharedLoads, Mode};

use crate::{
    bpf_stats_sysctl, choose_netns, kernel_release,
    rig::{drive, drive_burst, Acceptors, Bed, BedKind},
    sk_pass, summarize, Summary,
};

/// Target of the issue: at most this many ns per selection at 64 workers (least-loaded).
const TARGET_NS_AT_64: f64 = 150.0;
/// Target of the issue: connection rate with the program at least this share of the rate without.
const TARGET_RATE_RATIO: f64 = 0.97;
const ACCEPT_THREADS: usize = 2;
/// The writer of a contended run stops by itself after this long, whatever happens to the run.
const WRITER_LIMIT: Duration = Duration::from_secs(60);
/// Completions the writer makes between two looks at its stop flag and clock.
const WRITER_BATCH: u64 = 256;

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

// Bed indices.
const PASS64: usize = 0;
const G1: usize = 1;
const G8: usize = 2;
const G64: usize = 3;
const G256: usize = 4;
const PLAIN8: usize = 5;

struct Config {
    bed: usize,
    policy: Option<Policy>,
    /// Every slot has 1 in flight and no idle byte for the run: no idle slot, so least-loaded's
    /// fast path finds nothing and every selection pays for the exact scan as well.
    busy: bool,
}

const CONFIGS: [Config; 8] = [
    Config { bed: PASS64, policy: None, busy: false },
    Config { bed: G1, policy: Some(Policy::LeastLoaded), busy: false },
    Config { bed: G8, policy: Some(Policy::LeastLoaded), busy: false },
    Config { bed: G64, policy: Some(Policy::LeastLoaded), busy: false },
    Config { bed: G256, policy: Some(Policy::LeastLoaded), busy: false },
    Config { bed: G64, policy: Some(Policy::PowerOfTwo), busy: false },
    Config { bed: G256, policy: Some(Policy::PowerOfTwo), busy: false },
    Config { bed: G64, policy: Some(Policy::LeastLoaded), busy: true },
];

/// What the runs of one configuration in one mode (idle or contended) measured.
#[derive(Default)]
struct SelTotals {
    ns: Vec<f64>,
    runs: u64,
    conns: u64,
    selected: u64,
    fallbacks: u64,
    /// Selections the fast path made (an idle slot, no scan).
    fast: u64,
    /// Contended runs: the writer's completions per second, one per run.
    writes_per_sec: Vec<f64>,
    /// Contended runs: completions the writer made in all.
    writes: u64,
}

/// The two measuring modes of part 1.
const IDLE: usize = 0;
const CONTENDED: usize = 1;

/// CPU masks of the calling thread (sched_getaffinity / sched_setaffinity, pid 0).
mod affinity {
    use std::{io, mem::size_of};

    pub fn get() -> io::Result<libc::cpu_set_t> {
        // SAFETY: cpu_set_t is plain bits; all zeros is a valid (empty) set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`.
        let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }

    pub fn set(set: &libc::cpu_set_t) -> io::Result<()> {
        // SAFETY: the kernel reads size_of::<cpu_set_t>() bytes from `set`.
        let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The CPUs in `set`, in order.
    pub fn cpus(set: &libc::cpu_set_t) -> Vec<usize> {
        // SAFETY: CPU_ISSET only reads the set, for indices below CPU_SETSIZE.
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, set) }).collect()
    }

    /// Pins the calling thread to `cpu`.
    pub fn pin(cpu: usize) -> io::Result<()> {
        // SAFETY: cpu_set_t is plain bits; all zeros is a valid (empty) set.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes one bit of the set; `cpu` comes from `cpus`, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut one) };
        set(&one)
    }
}

/// Where the client (whose CPU runs the program: on loopback the SYN is processed in the
/// connecting thread's softirq) and the writer run.
#[derive(Clone, Copy, Debug)]
struct Placement {
    client: Option<usize>,
    writer: Option<usize>,
}

impl Placement {
    fn describe(&self) -> String {
        match (self.client, self.writer) {
            (Some(c), Some(w)) => format!("the client (and so the program) pinned to CPU {c}, the writer to CPU {w}"),
            _ => "nothing pinned (fewer than 2 CPUs allowed): the writer only time-shares the CPU with the \
                  client, so the contended figures do not show contention"
                .to_string(),
        }
    }
}

/// The table a contended run writes to, and its slots.
struct WriteTarget {
    loads: Arc<SharedLoads>,
    slots: Vec<u32>,
}

/// What a writer did.
struct WriterReport {
    writes: u64,
    secs: f64,
    /// It stopped at [`WRITER_LIMIT`] rather than when asked.
    timed_out: bool,
}

/// A thread doing to the shared load table what the workers' shims do when connections complete
/// (balancer-shim/src/accounting.rs), in a tight loop: for a random slot of the group, an atomic
/// add of 1 to `completed`, an atomic sub of 1 from `inflight` and, when that took it to 0, a
/// store of 1 to the slot's `idle` byte (so far what [`SharedLoads::add_completed`] does), an
/// atomic add of 1 back to `inflight` (so the loads the program sees stay what the bench's own
/// connections make them), and a store of CLOCK_MONOTONIC (the vDSO, as the shim reads it) to
/// `progress`. Bounded: it stops when asked, or after
/// [`WRITER_LIMIT`].
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<WriterReport>>,
}

impl Writer {
    /// Starts the writer and returns once it is writing.
    fn start(target: &WriteTarget, cpu: Option<usize>, seed: u64) -> Result<Self> {
        if target.slots.is_empty() {
            bail!("a contended run needs at least one slot to write to");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (loads, slots, flag) = (target.loads.clone(), target.slots.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("bench-writer".into())
            .spawn(move || {
                if let Some(c) = cpu {
                    if let Err(e) = affinity::pin(c) {
                        let _ = ready_tx.send(Err(format!("pinning the writer to CPU {c}: {e}")));
                        return WriterReport { writes: 0, secs: 0.0, timed_out: false };
                    }
                }
                let _ = ready_tx.send(Ok(()));
                write_loop(&loads, &slots, &flag, seed)
            })
            .context("spawning the writer thread")?;
        let mut writer = Writer { stop, handle: Some(handle) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(writer),
            Ok(Err(e)) => {
                writer.finish()?;
                Err(anyhow!(e))
            }
            Err(_) => Err(anyhow!("the writer thread ended before it started writing")),
        }
    }

    /// Stops the writer and says what it did.
    fn finish(&mut self) -> Result<WriterReport> {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().context("the writer was already stopped")?;
        handle.join().map_err(|_| anyhow!("the writer thread panicked"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.finish();
        }
    }
}

fn write_loop(loads: &SharedLoads, slots: &[u32], stop: &AtomicBool, seed: u64) -> WriterReport {
    let started = Instant::now();
    let mut x = seed | 1;
    let mut writes = 0u64;
    let mut timed_out = false;
    while !stop.load(Ordering::Relaxed) {
        if started.elapsed() > WRITER_LIMIT {
            timed_out = true;
            break;
        }
        for _ in 0..WRITER_BATCH {
            // xorshift64: cheap, and no two runs pick the same sequence of slots.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = slots[((x >> 32) as usize) % slots.len()];
            loads.add_completed(slot, 1);
            loads.add_inflight(slot, 1);
            loads.mark_progress(slot);
        }
        writes += WRITER_BATCH;
    }
    WriterReport { writes, secs: started.elapsed().as_secs_f64(), timed_out }
}

/// Every slot of `table` 1 more in flight (`busy`), or 1 less, with its idle byte cleared or set
/// to match.
fn set_busy(table: &WriteTarget, busy: bool) {
    for &slot in &table.slots {
        table.loads.add_inflight(slot, if busy { 1 } else { -1 });
        table.loads.set_idle(slot, !busy);
    }
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
    let beds = vec![
        Bed::new(BedKind::SkPass, 64)?,
        Bed::new(BedKind::Group(Policy::LeastLoaded, o.program), 1)?,
        Bed::new(BedKind::Group(Policy::LeastLoaded, o.program), 8)?,
        Bed::new(BedKind::Group(Policy::LeastLoaded, o.program), 64)?,
        Bed::new(BedKind::Group(Policy::LeastLoaded, o.program), 256)?,
        Bed::new(BedKind::KernelHash, 8)?,
    ];
    let acceptors = Acceptors::start(&beds, ACCEPT_THREADS)?;
    let mut rig = Rig { acceptors: Some(acceptors), beds };
    let program_name = rig.beds[G8].group().expect("group bed").program().name();
    let verified_insns = rig.beds[G8]
        .group()
        .expect("group bed")
        .program_info()
        .context("reading the program's info")?
        .verified_instruction_count();

    // What each configuration's writer writes to: its own group's table; the SK_PASS bed has
    // none, and its writer writes to the 64-worker group's table (a control: the same writer,
    // with no table that the measured program reads).
    let mut targets: Vec<Option<WriteTarget>> = Vec::new();
    for bed in &rig.beds {
        targets.push(match bed.group() {
            Some(g) => Some(WriteTarget {
                loads: Arc::new(SharedLoads::map(g.loads_fd()).context("mapping the load table")?),
                slots: bed.slots.clone(),
            }),
            None => None,
        });
    }
    let target_of = |cfg: &Config| {
        let bed = if targets[cfg.bed].is_some() { cfg.bed } else { G64 };
        targets[bed].as_ref().expect("every group bed has a target")
    };

    // Pin this thread (the client; the acceptors, started before, keep the old mask) and the
    // writer to two different CPUs, for part 1 only.
    let mask_before = affinity::get().context("sched_getaffinity")?;
    let allowed = affinity::cpus(&mask_before);
    let placement = if allowed.len() >= 2 {
        affinity::pin(allowed[0])
            .with_context(|| format!("pinning the client to CPU {}", allowed[0]))?;
        Placement { client: Some(allowed[0]), writer: Some(allowed[1]) }
    } else {
        eprintln!("warning: fewer than 2 CPUs allowed; the writer will not run beside the program");
        Placement { client: None, writer: None }
    };

    // ---- Part 1: ns per selection, BPF run-time stats on while the fd is held.
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
    let sysctl_during = bpf_stats_sysctl();
    for cfg in &CONFIGS {
        let table = targets[cfg.bed].as_ref();
        measure_selection(&mut rig, cfg, o.warmup.max(1), o.burst, None, None, table)
            .context("warm-up")?;
    }
    let mut sel: Vec<[SelTotals; 2]> = CONFIGS.iter().map(|_| Default::default()).collect();
    for rep in 0..o.reps {
        eprintln!("part 1 (ns per selection, idle and contended): round {}/{}", rep + 1, o.reps);
        for (i, cfg) in CONFIGS.iter().enumerate() {
            // Idle first in half of the runs, contended first in the other half.
            let order = if (rep + i) % 2 == 0 { [IDLE, CONTENDED] } else { [CONTENDED, IDLE] };
            for mode in order {
                let seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((rep * CONFIGS.len() + i) as u64) << 20;
                let writer = (mode == CONTENDED).then(|| (target_of(cfg), placement.writer, seed));
                let res = measure_selection(
                    &mut rig,
                    cfg,
                    o.conns,
                    o.burst,
                    Some(&mut sel[i][mode]),
                    writer,
                    targets[cfg.bed].as_ref(),
                );
                if let Err(e) = res {
                    let mode = if mode == IDLE { "idle" } else { "contended" };
                    return Err(e.context(format!(
                        "part 1, {}, {mode}",
                        config_label(&rig, cfg, program_name)
                    )));
                }
            }
        }
    }
    if let crate::rig::Selector::SkPass(p) = &rig.beds[PASS64].selector {
        sk_pass::cross_check_with_aya(p)?;
    }
    drop(stats_fd);
    let sysctl_after = bpf_stats_sysctl();
    drop(targets);
    affinity::set(&mask_before).context("restoring the client's CPU mask")?;

    // ---- Part 2: connection rate, 8 workers, least-loaded program vs no program.
    rig.beds[G8].set_policy(Policy::LeastLoaded)?;
    let rate_beds = [G8, PLAIN8];
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut paired = Vec::new();
    for &b in &rate_beds {
        drive(&rig.beds[b], rig.acceptors(), o.warmup.max(1)).context("warm-up")?;
    }
    let (a0, f0) = (rig.beds[G8].assigned_total(), rig.beds[G8].fallbacks()?);
    let slice = o.slice.clamp(1, o.rate_conns);
    for rep in 0..o.rate_reps {
        eprintln!("part 2 (connection rate): round {}/{}", rep + 1, o.rate_reps);
        // A round makes `rate_conns` connections with each configuration, in slices that
        // alternate between the two (A B B A A B ...), so both see the same machine even when
        // its load changes within seconds; a run's rate is its connections over the sum of its
        // slices' times.
        let mut secs = [0.0f64; 2];
        let mut done = 0u64;
        let mut flip = rep % 2 == 1;
        while done < o.rate_conns {
            let k = slice.min(o.rate_conns - done);
            let order: [usize; 2] = if flip { [1, 0] } else { [0, 1] };
            for c in order {
                let d = drive(&rig.beds[rate_beds[c]], rig.acceptors(), k)
                    .with_context(|| format!("part 2, round {}", rep + 1))?;
                secs[c] += d.as_secs_f64();
            }
            flip = !flip;
            done += k;
        }
        let round = [o.rate_conns as f64 / secs[0], o.rate_conns as f64 / secs[1]];
        rates[0].push(round[0]);
        rates[1].push(round[1]);
        paired.push(round[0] / round[1]);
    }
    let rate_selected = rig.beds[G8].assigned_total() - a0;
    let rate_fallbacks = rig.beds[G8].fallbacks()? - f0;
    rig.acceptors().check()?;
    let workers: Vec<usize> = rig.beds.iter().map(Bed::workers).collect();
    drop(rig);
    let elapsed = started.elapsed();

    // ---- Report.
    let mut md = String::new();
    let w = &mut md;
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
         selections that the fast path made (the program's `fast_path` counter).\n"
    )?;
    if let Some(n) = verified_insns {
        writeln!(w, "The verifier processed {n} instructions to load `{program_name}`.\n")?;
    }
    writeln!(w, "| program | policy | workers | idle ns/sel. median [min, max] | contended median [min, max] | contended − idle | idle − SK_PASS | contended − SK_PASS | writer completions/s (median) | runs/conn | fast path | target | result |")?;
    writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")?;
    let base = [summarize(&sel[0][IDLE].ns).median, summarize(&sel[0][CONTENDED].ns).median];
    let mut ns_target_pass = true;
    for (cfg, t) in CONFIGS.iter().zip(&sel) {
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
        let (target, result) =
            if cfg.bed == G64 && cfg.policy == Some(Policy::LeastLoaded) && !cfg.busy {
                let ok = idle.median <= TARGET_NS_AT_64 && cont.median <= TARGET_NS_AT_64;
                ns_target_pass = ok;
                (
                    format!("≤ {TARGET_NS_AT_64:.0} ns both"),
                    if ok { "PASS" } else { "MISS" }.to_string(),
                )
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
    let pr: Summary = summarize(&paired);
    writeln!(w, "| selection | conn/s (median) | min | max |")?;
    writeln!(w, "|---|---:|---:|---:|")?;
    writeln!(
        w,
        "| least-loaded program attached | {:.0} | {:.0} | {:.0} |",
        with.median, with.min, with.max
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
    writeln!(w, "## Raw runs\n")?;
    for (cfg, t) in CONFIGS.iter().zip(&sel) {
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
    writeln!(w, "## Summary\n")?;
    writeln!(
        w,
        "- least-loaded at 64 workers: {:.1} ns per selection idle, {:.1} contended (target ≤ {TARGET_NS_AT_64:.0} both): {}",
        summarize(&sel[3][IDLE].ns).median,
        summarize(&sel[3][CONTENDED].ns).median,
        if ns_target_pass { "PASS" } else { "MISS" }
    )?;
    writeln!(
        w,
        "- least-loaded at 64 workers, none idle (fast path finds nothing, exact scan): {:.1} ns idle, {:.1} contended",
        summarize(&sel[7][IDLE].ns).median,
        summarize(&sel[7][CONTENDED].ns).median,
    )?;
    writeln!(
        w,
        "- connection rate with/without the program: {ratio:.3} (target ≥ {TARGET_RATE_RATIO}): {}",
        if ratio >= TARGET_RATE_RATIO { "PASS" } else { "MISS" }
    )?;
    writeln!(w, "- bench run time: {:.1} s", elapsed.as_secs_f64())?;
    Ok(md)
}

fn config_label(rig: &Rig, cfg: &Config, program: &str) -> String {
    let n = rig.beds[cfg.bed].workers();
    match cfg.policy {
        None => format!("SK_PASS-only program, {n} workers"),
        Some(p) => format!("`{program}` {} with {n} workers", p.name()),
    }
}
