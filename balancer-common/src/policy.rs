//! The selection policy: which slot gets the next connection.
//!
//! Written for both worlds: the eBPF program calls [`choose`] with loads read from its maps, the
//! host tests call it with plain arrays. Everything is `#[inline(always)]` and loops are bounded
//! by [`MAX_SLOTS`] so the verifier accepts it.
//!
//! Least-loaded and work-left first try the fast path ([`find_idle`]: an active slot with nothing
//! in flight, from the load table's idle bytes, checked against its counts), then the exact scan
//! ([`Scan`]). Either way the answer is a minimum of the policy's cost.
//!
//! The scan is specialized per policy [`Family`] (a [`Cost`] type parameter): the count family
//! (least-loaded, pack's fallback) weighs a slot by its count alone, the estimate family
//! (work-left) by its branch-free estimate of the work left, the speed family (speed-aware) by
//! its count and its [`slowness`]. The program runs each as its own `bpf_loop` callback, so
//! least-loaded pays nothing per slot for the others' arithmetic.
//!
//! Speed-aware is least-loaded with two uses of speed, both from the load table the shims keep.
//! A slot whose recent response time is [`SLOW_FACTOR`] times the group's mean or more is slow
//! ([`slowness`]): the fast path passes over it when idle, and the scan weighs it by its
//! expected delay (`(count + 1) * slowness - 1`), so it gets work in proportion to its pace,
//! not its count. And the blocked check is on with an adaptive limit ([`stall_limit_ns`])
//! unless [`Config::blocked_after_ms`] sets a fixed one: a worker with requests in flight and
//! no answer for a multiple of the mean is passed over while another is not.

use core::num::NonZeroU64;

use crate::layout::{Config, Event, MAX_SLOTS, NO_SLOT};

named_enum! {
    /// How the program picks a slot. The id is what the `CONFIG` map stores; the name is the one
    /// of the command line, config files and metrics. `ALL` is in the order messages list them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub enum Policy: u32 {
        /// Exact scan of the active slots for the fewest connections in flight (per weight).
        LeastLoaded = 0 => "least-loaded",
        /// Exact scan for the least work left: each request in flight counts the slot's mean
        /// service time, and each request being worked on also its age so far (with heavy-tailed
        /// requests, one that has run long has long to go). See [`work_left`].
        WorkLeft = 4 => "work-left",
        // Id 6 was peak-ewma, retired in issue 23 ([`UnknownPolicy::Retired`]): never reuse it,
        // a pinned `CONFIG` of an old build may still hold it (the program falls open on it).
        /// Least-loaded, passing over a worker that is not coming back (connections in flight and
        /// no answer for [`stall_limit_ns`]: a multiple of the group's mean service time), and
        /// weighing a worker whose answers are slow by its pace ([`slowness`]). The default: in two
        /// full runs of `bench compare` (README, issue 23's fourth step) it was worse than nginx
        /// `least_conn` on no point in both, and better on a slow worker in both, where
        /// least-loaded was worse in both. Runs since (fifth and sixth steps) found single-run
        /// misses, p99 on 8 x 20 io+cpu at 60% among them; on the build of runs 21-28 (ninth to
        /// eleventh steps) every workload of both variants has two runs, and it is worse on none
        /// of their 72 p99 points: the README lists them.
        #[default]
        SpeedAware = 7 => "speed-aware",
        /// Power of two choices: the lighter of two random active slots. O(1) for many workers.
        PowerOfTwo = 1 => "p2c",
        /// Each CPU walks the active slots in turn.
        RoundRobin = 2 => "round-robin",
        /// The connection's 4-tuple hash picks the slot, as the kernel itself would.
        Hash = 3 => "hash",
        /// Fills the active slots in dense (slot) order: the first whose connections in flight per
        /// weight are below [`Config::pack_depth`] wins, so that few workers stay warm; when every
        /// slot is full, least-loaded decides. See [`PackScan`].
        Pack = 5 => "pack",
    }
}

/// What a policy weighs a slot by: the policies of one family share a scan ([`Cost`]), and in
/// the program its `bpf_loop` callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Connections in flight per weight ([`Counts`]): least-loaded, pack, p2c.
    Counts,
    /// The estimate of the work left per slot ([`Estimates`]): work-left.
    Estimates,
    /// Counts weighed by each slot's slowness ([`Speeds`]): speed-aware.
    Speeds,
}

impl Policy {
    /// The policy's family, or `None` for those that weigh no load (round-robin, hash).
    pub const fn family(self) -> Option<Family> {
        match self {
            Policy::LeastLoaded | Policy::Pack | Policy::PowerOfTwo => Some(Family::Counts),
            Policy::WorkLeft => Some(Family::Estimates),
            Policy::SpeedAware => Some(Family::Speeds),
            Policy::RoundRobin | Policy::Hash => None,
        }
    }

    /// Whether the policy reads the clock ([`Draw::now`]) even with the blocked check off: the
    /// estimate family (ages), and speed-aware (its stall check and its slow-slot check).
    /// The program calls the clock only when some reader needs it (a helper call per
    /// connection), so a policy that reads ages must say so here.
    pub const fn reads_clock(self) -> bool {
        match self {
            Policy::WorkLeft | Policy::SpeedAware => true,
            Policy::LeastLoaded
            | Policy::Pack
            | Policy::PowerOfTwo
            | Policy::RoundRobin
            | Policy::Hash => false,
        }
    }

    /// Whether the policy uses [`Draw::random`] (p2c); the program draws one only then.
    pub const fn draws_random(self) -> bool {
        matches!(self, Policy::PowerOfTwo)
    }
}

/// The names of [`Policy::ALL`], comma-separated, for messages.
#[derive(Debug, Clone, Copy)]
pub struct PolicyNames;

impl core::fmt::Display for PolicyNames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, p) in Policy::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(p.name())?;
        }
        Ok(())
    }
}

/// Error of parsing a policy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// No policy has (or had) this name.
    Unknown,
    /// A policy that was retired: its name, and why, and what to use instead, in the message.
    Retired { name: &'static str, why: &'static str, instead: Policy },
}

impl UnknownPolicy {
    /// `peak-ewma`, retired in issue 23 (README, "Policies").
    const PEAK_EWMA: UnknownPolicy = UnknownPolicy::Retired {
        name: "peak-ewma",
        why: "worse than nginx least_conn on 3 of 8 p99 points, and better on none, in its one \
              full run; speed-aware weighs a slow worker by its recent response time",
        instead: Policy::SpeedAware,
    };
}

impl core::fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UnknownPolicy::Unknown => write!(f, "unknown policy: expected one of {PolicyNames}"),
            UnknownPolicy::Retired { name, why, instead } => write!(
                f,
                "policy `{name}` was retired ({why}): use `{}`, or one of {PolicyNames}",
                instead.name()
            ),
        }
    }
}

impl core::str::FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The names, and the aliases people type.
        Policy::from_name(s)
            .or(match s {
                "least_loaded" | "ll" => Some(Policy::LeastLoaded),
                "power-of-two" | "power-of-two-choices" => Some(Policy::PowerOfTwo),
                "round_robin" | "rr" => Some(Policy::RoundRobin),
                "work_left" => Some(Policy::WorkLeft),
                "speed_aware" | "speed" => Some(Policy::SpeedAware),
                _ => None,
            })
            .ok_or(match s {
                "peak-ewma" | "peak_ewma" => UnknownPolicy::PEAK_EWMA,
                _ => UnknownPolicy::Unknown,
            })
    }
}

/// The per-connection inputs that are not in the maps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Draw {
    /// A fresh random number: the two picks of p2c (0 for the other policies).
    pub random: u32,
    /// The connection's 4-tuple hash (the kernel's own `reuseport` hash).
    pub hash: u32,
    /// This CPU's round-robin position: the turn of round-robin, and where the scans of
    /// least-loaded and work-left start, so that equally loaded slots take turns.
    pub tick: u32,
    /// CLOCK_MONOTONIC now, in ns, for the blocked check ([`Config::blocked_after_ms`]) and the
    /// ages of work-left; 0 when neither is on.
    pub now: u64,
}

/// What [`decide`] picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub slot: u32,
    /// A candidate was blocked and the pick is not (least-loaded: some active slot was blocked;
    /// p2c: the lighter of its two was).
    pub passed_blocked: bool,
    /// The fast path found it ([`find_idle`]), with no scan.
    pub fast: bool,
}

/// Where [`choose`] reads each slot's load, and how it drives the least-loaded scan.
pub trait LoadSource: Sized {
    /// `(connections in flight, weight)` of a slot, or `None` if it cannot be read.
    fn load(&self, slot: u32) -> Option<(u64, u32)>;

    /// When the slot last made progress ([`crate::LoadTable::progress`]); read only for a slot
    /// that would otherwise win, and only while the blocked check is on.
    fn progress(&self, _slot: u32) -> u64 {
        0
    }

    /// The slot's work figures, raw: `(working, start_sum_us)` as in [`crate::LoadTable`].
    /// Every value may be anything a worker wrote.
    fn work(&self, _slot: u32) -> (u64, u64) {
        (0, 0)
    }

    /// The slot's recent response time, raw: `(recent_us, recent_at_us)` as in
    /// [`crate::LoadTable`] (speed-aware's [`slowness`]).
    fn recent(&self, _slot: u32) -> (u64, u64) {
        (0, 0)
    }

    /// The group's mean service time, raw ([`crate::GroupFigures::mean_us`]); read once per
    /// connection, and only by work-left and speed-aware.
    fn group_mean_us(&self) -> u64 {
        0
    }

    /// Calls [`PackScan::visit`] for each dense index of `0..scan.n` until it returns true (a slot
    /// was found). The default is a plain loop; the eBPF program overrides it with `bpf_loop`.
    #[inline(always)]
    fn run_pack(&self, cfg: &Config, scan: &mut PackScan) {
        for i in 0..MAX_SLOTS {
            if i >= scan.n || scan.visit(cfg, i, self) {
                break;
            }
        }
    }

    /// Word `w` (< [`IDLE_WORDS`]) of the idle bytes ([`crate::LoadTable::idle`]), slots
    /// `8 w .. 8 w + 8`, little-endian (slot `8 w` in the low byte). The default, all zeros,
    /// never takes the fast path.
    fn idle_word(&self, _w: u32) -> u64 {
        0
    }

    /// Clears the slot's idle byte: the fast path found it stale.
    fn clear_idle(&self, _slot: u32) {}

    /// Calls [`Fast::step`] until it says the walk is over, at most [`Fast::MAX_STEPS`] times.
    /// The default is a plain loop; the eBPF program overrides it with `bpf_loop`.
    #[inline(always)]
    fn run_fast(&self, cfg: &Config, fast: &mut Fast) {
        for _ in 0..Fast::MAX_STEPS {
            if fast.step(cfg, self) {
                break;
            }
        }
    }

    /// Calls [`Scan::visit_chunk`] with cost `C` for each chunk of `0..scan.n`. The default is a
    /// plain loop; the eBPF program overrides it with `bpf_loop` (one callback per cost), so the
    /// verifier checks the chunk once instead of walking every iteration of every path.
    #[inline(always)]
    fn run_scan<C: Cost>(&self, cfg: &Config, scan: &mut Scan) {
        for chunk in 0..Scan::chunks(MAX_SLOTS) {
            if chunk >= Scan::chunks(scan.n) {
                break;
            }
            scan.visit_chunk::<C, Self>(cfg, chunk, self);
        }
    }
}

/// True if load `a` (with weight `wa`) is strictly lighter than `b` (with weight `wb`).
/// Compares `a/wa < b/wb` without dividing; a weight of 0 counts as 1.
#[inline(always)]
pub fn lighter(a: u64, wa: u32, b: u64, wb: u32) -> bool {
    let wa = if wa == 0 { 1 } else { wa as u64 };
    let wb = if wb == 0 { 1 } else { wb as u64 };
    // Loads are clamped to 32 bits so the products fit in 64 (no 128-bit multiply on BPF).
    let a = if a > u32::MAX as u64 { u32::MAX as u64 } else { a };
    let b = if b > u32::MAX as u64 { u32::MAX as u64 } else { b };
    a * wb < b * wa
}

/// Whether a slot with `load` in flight and `progress` as its last progress is blocked at `now`
/// (`limit_ns` 0: never). A progress in the future (another clock) is not blocked.
#[inline(always)]
pub fn is_blocked(load: u64, progress: u64, now: u64, limit_ns: u64) -> bool {
    limit_ns != 0 && load > 0 && (now.wrapping_sub(progress) as i64) > limit_ns as i64
}

/// All ones when a slot with `load` in flight and last progress `progress` is blocked at `now`
/// past `limit_ns`, else 0; `enabled` is all ones when the check is on. Branch-free (sign bits
/// of wrapping differences), so that the least-loaded scan keeps two paths per slot for the
/// verifier. Agrees with [`is_blocked`] whenever the progress lies less than 2^62 ns from now.
#[inline(always)]
pub fn blocked_mask(load: u64, progress: u64, now: u64, limit_ns: u64, enabled: u64) -> u64 {
    let age = now.wrapping_sub(progress) as i64;
    let over = ((limit_ns as i64).wrapping_sub(age) >> 63) as u64;
    let busy = ((load as i64).wrapping_neg() >> 63) as u64;
    over & busy & enabled
}

/// `x`, hidden from LLVM: it cannot see that a mask is all ones or all zeros, so it cannot turn
/// the masking around it back into a comparison and a jump (BPF has no conditional move), which
/// would double the paths the verifier walks for every slot of the scan.
#[inline(always)]
fn opaque(x: u64) -> u64 {
    // SAFETY: `&x` is a valid, aligned reference to a local u64.
    unsafe { core::ptr::read_volatile(&x) }
}

/// All ones if `x` (as i64) is negative, else 0. Branch-free: `x` is hidden from LLVM too, or
/// it sees that the sign of `cap - x` is `x > cap` and compiles a comparison and a jump.
#[inline(always)]
fn negative(x: u64) -> u64 {
    opaque(((opaque(x) as i64) >> 63) as u64)
}

/// Branch-free `min(x, cap)` for `x` and `cap` below 2^62.
#[inline(always)]
fn min_below(x: u64, cap: u64) -> u64 {
    let over = negative(cap.wrapping_sub(x));
    x ^ ((x ^ cap) & over)
}

/// A raw microsecond figure a worker wrote (a mean or an estimate), capped at
/// [`Scan::MEAN_CAP_US`] and masked below 2^25, where the verifier can see the bound: every
/// speed figure is bounded so before any arithmetic.
#[inline(always)]
fn bounded_us(raw_us: u64) -> u64 {
    min_below(raw_us & ((1 << 62) - 1), Scan::MEAN_CAP_US) & ((1 << 25) - 1)
}

/// The work-left cost of a slot, in microseconds: `(inflight + 1) * (mean + 1)`, the group's
/// mean service time for each request in flight and the new one, plus the sum of the ages of the
/// requests being worked on (`working * now - start_sum`, 0 if that is negative).
///
/// A heuristic for heavy-tailed requests (a few long ones among many short ones): a request that
/// has run long probably has long to go, so a worker busy with an old request weighs more than
/// one busy with a young one, where least-loaded sees two equal counts. Every figure is
/// untrusted (workers write them): each is bounded first, and the arithmetic cannot overflow.
/// Branch-free, like the rest of the scan.
#[inline(always)]
pub fn work_left(inflight: u64, mean_us: u64, working: u64, start_sum_us: u64, now_us: u64) -> u64 {
    const MASK: u64 = (1 << 62) - 1;
    // A negative (two's complement) count reads as 0.
    let working = working & !negative(working);
    let working = min_below(working & MASK, 1 << 20) & ((1 << 21) - 1);
    let mean = bounded_us(mean_us);
    let age = working.wrapping_mul(now_us & ((1 << 42) - 1)).wrapping_sub(start_sum_us);
    let age = min_below((age & !negative(age)) & MASK, Scan::LOAD_CAP) & Scan::LOAD_CAP;
    let inflight = min_below(inflight & MASK, Scan::LOAD_CAP) & Scan::LOAD_CAP;
    (inflight + 1) * (mean + 1) + age
}

/// Speed-aware's recent response time halves its distance to the group's mean for every 2^22 µs
/// (about 4 seconds, whole half-lives) without an answer, so that a slow worker left without
/// work is tried again after some seconds (12 x the mean: three half-lives), not every few
/// requests. (A 1 s half-life, the default until issue 23's twelfth step, let a worker slowed
/// 12 x look normal a quarter of the time at 60% of capacity: README.)
pub const RECENT_HALF_LIFE_SHIFT: u32 = 22;

/// A slot's next recent response time, from `pace` (its recent time, decayed to now: see
/// [`recent_now`]) and the time `took` of the answer just given (both in µs, below 2^25): 1/8 of
/// the way up to a longer answer, so that one long request among short ones moves it an eighth
/// of its excess and only a worker whose answers keep being slow is called slow; half the way
/// down to a shorter one, so that a worker that answers at the group's pace again (after a block,
/// whose queued answers all took long) stops being called slow within a few answers, not after
/// seconds of decay with no work.
#[inline(always)]
pub fn recent_next(pace: u64, took: u64) -> u64 {
    if took >= pace {
        pace + (took - pace) / 8
    } else {
        pace - (pace - took) / 2
    }
}

/// A slot's recent response time ([`crate::LoadTable::recent_us`], set at `at_us`) at `now_us`:
/// moved toward the group's mean `mean_us` by half the distance for every
/// [`RECENT_HALF_LIFE_SHIFT`] half-life since (a stamp in the future: no time passed). Always
/// between the two figures, so below 2^25 whatever the inputs (workers write them).
///
/// Toward the mean, not toward 0: the workers of a group are alike, so a worker that has not
/// answered for a while is taken for an average one, not a free one. Without any decay, a worker
/// once slow would keep looking slow, and idle, until it got traffic again, which it would not.
/// Branch-free, like the rest of the scan; the shim uses it too, before it folds in an answer.
#[inline(always)]
pub fn recent_now(recent_us: u64, at_us: u64, mean_us: u64, now_us: u64) -> u64 {
    decayed(recent_us, at_us, mean_us, now_us, RECENT_HALF_LIFE_SHIFT)
}

/// `est` (µs, set at `at_us`) moved toward `mean_us` by half the distance per `2^shift` µs
/// since, both bounded first; between the two bounded figures, so below 2^25.
#[inline(always)]
fn decayed(est: u64, at_us: u64, mean_us: u64, now_us: u64, shift: u32) -> u64 {
    const MASK: u64 = (1 << 62) - 1;
    let est = bounded_us(est);
    let mean = bounded_us(mean_us);
    let since = now_us.wrapping_sub(at_us);
    let since = since & !negative(since);
    let halves = min_below((since & MASK) >> shift, 63) & 63;
    // An arithmetic shift rounds toward minus infinity: the result stays within [est, mean]
    // when est < mean, and within [mean, est] otherwise.
    let diff = (est.wrapping_sub(mean) as i64) >> halves;
    mean.wrapping_add(diff as u64) & ((1 << 25) - 1)
}

/// The blocked limit of `cfg` in ns (0: off).
#[inline(always)]
fn blocked_limit_ns(cfg: &Config, draw: &Draw) -> u64 {
    if draw.now == 0 {
        0
    } else {
        cfg.blocked_after_ms as u64 * 1_000_000
    }
}

/// Speed-aware: a slot with connections in flight and no progress for this many times the
/// group's mean service time is not coming back (see [`stall_limit_ns`]).
pub const STALL_FACTOR: u64 = 8;
/// The least stall limit, in ns (20 ms): below it, the scheduler's and the GIL's own pauses
/// (5 ms switch interval) would make a busy worker look stalled.
pub const STALL_FLOOR_NS: u64 = 20_000_000;
/// The greatest stall limit, in ns (2 s), and the limit before any answer gave a mean.
pub const STALL_CEILING_NS: u64 = 2_000_000_000;
/// Speed-aware calls a slot slow when its recent response time ([`recent_now`]) is at least
/// this many times the group's mean: below it, one long request among short ones (which moves
/// the recent time an eighth of its excess) or the GIL's and the scheduler's noise; above it, a
/// worker whose answers are all slow. See [`slowness`].
pub const SLOW_FACTOR: u64 = 3;
/// The greatest [`slowness`]: a slot slower than this many times the mean weighs as this.
pub const SLOWNESS_CAP: u64 = 64;

/// How many times slower than the group's mean a slot answers, as speed-aware weighs it: 1 while
/// its recent response time `recent_us` (decayed, [`recent_now`]) is under [`SLOW_FACTOR`] times
/// the mean `mean_us`, else the whole ratio, at most [`SLOWNESS_CAP`]; 1 without a mean (nothing
/// known). The scan weighs a slot by `(count + 1) * slowness - 1` (least-loaded's count when it
/// is 1: a shortest-expected-delay cost for the slow ones only), and the fast path passes over
/// an idle slot whose slowness is over 1. Branch-free; the inputs are raw (workers write them).
#[inline(always)]
pub fn slowness(recent_us: u64, at_us: u64, mean_us: u64, now_us: u64) -> u64 {
    let est = recent_now(recent_us, at_us, mean_us, now_us);
    let mean = bounded_us(mean_us);
    let known = !negative(mean.wrapping_sub(1));
    // A mean of 0 divides by 1 (and is not slow): no division by zero, no panic path, and no
    // branch (a check of the divisor per slot doubles the paths the verifier walks).
    // SAFETY: `mean | 1` when `mean` is 0 (`known` all zeros), else `mean`: never 0.
    let ratio = est / unsafe { NonZeroU64::new_unchecked(mean | (1 & !known)) };
    let ratio = min_below(ratio, SLOWNESS_CAP) & (2 * SLOWNESS_CAP - 1);
    // Slow: a mean, and a ratio of at least SLOW_FACTOR (both masks all ones or all zeros).
    let slow = !negative(ratio.wrapping_sub(SLOW_FACTOR)) & known;
    (ratio & slow) | (1 & !slow)
}

/// Speed-aware's stall limit, in ns, for the group's mean service time `mean_us` (raw: workers
/// write it): [`STALL_FACTOR`] times the mean, within [[`STALL_FLOOR_NS`],
/// [`STALL_CEILING_NS`]]. A mean of 0 (no request answered yet) gives the ceiling: with nothing
/// known of the service time (an app that loads itself at its first requests, as uWSGI's
/// lazy-apps do, answers them late), a worker is not called stalled before the longest limit.
/// Branch-free, so that the verifier walks the scan once whatever the mean.
#[inline(always)]
pub fn stall_limit_ns(mean_us: u64) -> u64 {
    let mean = bounded_us(mean_us);
    // Below 2^25 * 8000 < 2^38: no overflow.
    let ns = min_below(mean * (STALL_FACTOR * 1000), STALL_CEILING_NS);
    let under = negative(ns.wrapping_sub(STALL_FLOOR_NS));
    let ns = ns ^ ((ns ^ STALL_FLOOR_NS) & under);
    let unknown = negative(mean.wrapping_sub(1));
    ns ^ ((ns ^ STALL_CEILING_NS) & unknown)
}

/// The blocked limit of speed-aware in ns: `cfg`'s fixed one if the service set one (the
/// operator's word wins), else [`stall_limit_ns`] of the group's mean `mean_us` (raw); 0 (off)
/// without a clock.
#[inline(always)]
fn speed_limit_ns(cfg: &Config, draw: &Draw, mean_us: u64) -> u64 {
    if draw.now == 0 {
        0
    } else if cfg.blocked_after_ms != 0 {
        cfg.blocked_after_ms as u64 * 1_000_000
    } else {
        stall_limit_ns(mean_us)
    }
}

/// Picks the slot for one connection, never `exclude` (pass [`NO_SLOT`] to allow every slot).
///
/// Returns the fallback [`Event`] when there is nothing to choose: the caller then leaves the
/// connection to the kernel's hash.
#[inline(always)]
pub fn choose<L: LoadSource>(
    cfg: &Config,
    draw: &Draw,
    exclude: u32,
    loads: &L,
) -> Result<u32, Event> {
    decide(cfg, draw, exclude, loads).map(|c| c.slot)
}

/// [`choose`], also telling whether a blocked slot was passed over.
///
/// Least-loaded, work-left, pack and p2c pass over a blocked slot (connections in flight, no
/// progress for [`Config::blocked_after_ms`]) while another candidate is not blocked; when every
/// candidate is blocked they pick as if none were (pack: least-loaded picks). Speed-aware does
/// the same with its adaptive limit ([`stall_limit_ns`]) when no fixed one is set. Round-robin
/// and hash ignore the check.
#[inline(always)]
pub fn decide<L: LoadSource>(
    cfg: &Config,
    draw: &Draw,
    exclude: u32,
    loads: &L,
) -> Result<Choice, Event> {
    let n = cfg.n_active;
    if n == 0 {
        return Err(Event::FallbackNoActive);
    }
    if n > MAX_SLOTS {
        return Err(Event::FallbackBadConfig);
    }
    let policy = match Policy::from_id(cfg.policy) {
        Some(p) => p,
        None => return Err(Event::FallbackBadConfig),
    };
    let plain = |slot: u32| Choice { slot, passed_blocked: false, fast: false };
    match policy {
        Policy::LeastLoaded | Policy::WorkLeft | Policy::Pack | Policy::SpeedAware => {
            // The group's mean service time, read once per connection, and only by the
            // policies that weigh it (least-loaded and pack read nothing of the speeds).
            let mean_us = if policy == Policy::LeastLoaded || policy == Policy::Pack {
                0
            } else {
                loads.group_mean_us()
            };
            let limit_ns = if policy == Policy::SpeedAware {
                speed_limit_ns(cfg, draw, mean_us)
            } else {
                blocked_limit_ns(cfg, draw)
            };
            if policy == Policy::Pack {
                let mut pack = PackScan::new(n, exclude, cfg.pack_depth, draw.now, limit_ns);
                loads.run_pack(cfg, &mut pack);
                if pack.found != NO_SLOT {
                    return Ok(pack.result());
                }
            }
            // An idle slot is a least-loaded and (checked) a work-left minimum, and when pack
            // found no slot below its depth none is idle. Speed-aware's fast path also passes
            // over a slow idle slot; if it finds none, the scan decides by counts and pace.
            if policy == Policy::LeastLoaded
                || policy == Policy::WorkLeft
                || policy == Policy::SpeedAware
            {
                let work_left_on = policy == Policy::WorkLeft;
                let fast = find_idle(cfg, draw, exclude, work_left_on, mean_us, loads);
                if fast != NO_SLOT {
                    return Ok(Choice { slot: fast, passed_blocked: false, fast: true });
                }
            }
            let mut scan = Scan::new(n, draw.tick % n, exclude, draw.now, limit_ns);
            match policy.family() {
                Some(Family::Estimates) => {
                    scan.set_cost(cfg, mean_us);
                    loads.run_scan::<Estimates>(cfg, &mut scan);
                }
                Some(Family::Speeds) => {
                    scan.mean_us = mean_us;
                    loads.run_scan::<Speeds>(cfg, &mut scan);
                }
                _ => loads.run_scan::<Counts>(cfg, &mut scan),
            }
            scan.result()
        }
        Policy::PowerOfTwo => {
            power_of_two(cfg, n, draw, blocked_limit_ns(cfg, draw), exclude, loads)
        }
        Policy::RoundRobin => nth_usable(cfg, n, draw.tick % n, exclude).map(plain),
        Policy::Hash => nth_usable(cfg, n, draw.hash % n, exclude).map(plain),
    }
}

/// Stale idle bytes the fast path clears per connection before it leaves the choice to the scan.
pub const STALE_TRIES: u32 = 8;

/// Number of u64 words of idle bytes (and of [`Config::active_mask`]): 8 slots each.
pub const IDLE_WORDS: u32 = MAX_SLOTS / 8;

/// The fast path of least-loaded and work-left: an active, idle slot, or [`NO_SLOT`].
///
/// A slot with nothing in flight is a minimum for least-loaded (0 per any weight, never
/// blocked), and for work-left (with the group's weights all the same, see
/// [`Config::uniform_weight`]) when its cost is `mean + 1`, the least possible: nothing being
/// worked on either. So if one is found, the scan's answer can be no better.
///
/// Reads the idle bytes ([`crate::LoadTable::idle`], a hint every worker can write) 8 at a time,
/// ANDed with the controller's [`Config::active_mask`], from the slot where the scan would start
/// on (the active slot at this CPU's tick), wrapping around, so idle slots take turns as the
/// scan's rotating start makes equal ones do (with every slot idle both pick the same one).
/// In each word the first nonzero byte, found without a branch (lowest set bit, then a population
/// count), is only a candidate: the slot's own counts decide. A stale byte (the slot has work) is
/// cleared, and the search goes on. At most `idle_words + 1` words are read and [`STALE_TRIES`]
/// stale bytes cleared; when nothing qualifies the caller runs the exact scan.
///
/// Under speed-aware (`cfg`'s policy), an idle candidate whose [`slowness`] is over 1 is passed
/// over like a stale one but its byte is kept (it is idle, only slow); with no mean yet nothing
/// is slow. The scan that follows when no fast idle slot is found may still pick it: a slow
/// worker gets work when every fast one has enough in flight ([`Speeds`]), and its recent
/// response time decays toward the mean while it gets none.
///
/// Driven by [`LoadSource::run_fast`], one [`Fast::step`] at a time (the eBPF program: its own
/// `bpf_loop` callback, checked once by the verifier; a plain loop unrolled into the program made
/// it exceed the verifier's budget).
#[inline(always)]
pub fn find_idle<L: LoadSource>(
    cfg: &Config,
    draw: &Draw,
    exclude: u32,
    work_left_on: bool,
    mean_us: u64,
    loads: &L,
) -> u32 {
    match Fast::new(cfg, draw, exclude, work_left_on, mean_us) {
        Some(mut fast) => {
            loads.run_fast(cfg, &mut fast);
            fast.found
        }
        None => NO_SLOT,
    }
}

/// State of the fast path's walk over the idle bytes (see [`find_idle`]).
#[derive(Clone, Copy, Debug)]
pub struct Fast {
    /// Words to walk ([`Config::idle_words`]).
    pub words: u32,
    /// The word the walk starts in.
    pub first: u32,
    /// Bytes of the first word at or after the start; the others are walked last.
    pub later: u64,
    /// The excluded slot's word (or [`IDLE_WORDS`]: none) and its byte.
    pub ex_word: u32,
    pub ex_bits: u64,
    /// All ones for work-left.
    pub work_on: bool,
    /// Speed-aware: an idle slot whose [`slowness`] is over 1 is passed over.
    pub speed_on: bool,
    pub mean: u64,
    pub now_us: u64,
    /// The least work-left cost there is: an idle slot's.
    pub least_work: u64,
    pub uniform_weight: u32,
    /// The next word of the walk to read (0 ..= words: the first word twice, its two parts).
    pub next: u32,
    /// The current word and its remaining candidates.
    pub w: u32,
    pub x: u64,
    /// The slot found, or [`NO_SLOT`].
    pub found: u32,
}

impl Fast {
    /// Turns a walk takes at most: `words + 1` reads and [`STALE_TRIES`] stale candidates.
    pub const MAX_STEPS: u32 = IDLE_WORDS + 1 + STALE_TRIES;

    /// The walk for one connection, or `None` when the fast path does not apply; `mean_us` is
    /// the group's mean service time (raw), weighed by work-left and speed-aware only.
    #[inline(always)]
    pub fn new(
        cfg: &Config,
        draw: &Draw,
        exclude: u32,
        work_on: bool,
        mean_us: u64,
    ) -> Option<Self> {
        let words = cfg.idle_words;
        if words == 0 || words > IDLE_WORDS || (work_on && cfg.uniform_weight == 0) {
            return None;
        }
        // The slot the scan would start from (the active slot at this CPU's tick): with every
        // slot idle, both pick it, and idle slots take turns in the active list's order.
        // `checked_rem`: LLVM keeps a division-by-zero check here, and a panic does not load.
        let start = active_at(cfg, draw.tick.checked_rem(cfg.n_active).unwrap_or(0));
        let start = if start < words * 8 { start } else { 0 };
        let speed_on = cfg.policy == Policy::SpeedAware as u32;
        // Least-loaded computes no cost: `work_left` hides its inputs from LLVM, which then
        // cannot fold it away even when they are all 0.
        let (mean, now_us, least_work) = if work_on {
            let now_us = draw.now / 1000;
            (mean_us, now_us, work_left(0, mean_us, 0, 0, now_us))
        } else if speed_on {
            (mean_us, draw.now / 1000, 0)
        } else {
            (0, 0, 0)
        };
        Some(Self {
            words,
            first: start / 8,
            later: u64::MAX << ((start % 8) * 8),
            ex_word: if exclude < MAX_SLOTS { exclude / 8 } else { IDLE_WORDS },
            ex_bits: 0xffu64 << ((exclude % 8) * 8),
            work_on,
            speed_on,
            mean,
            now_us,
            least_work,
            uniform_weight: cfg.uniform_weight,
            next: 0,
            w: 0,
            x: 0,
            found: NO_SLOT,
        })
    }

    /// One turn: reads the next word if the current one has no candidate left, then checks one
    /// candidate. True when the walk is over (found, or nothing left).
    #[inline(always)]
    pub fn step<L: LoadSource>(&mut self, cfg: &Config, loads: &L) -> bool {
        if self.x == 0 {
            let k = self.next;
            if k > self.words {
                return true;
            }
            self.next = k + 1;
            let w = self.first + k;
            let w = if w >= self.words { w - self.words } else { w };
            let mut x = loads.idle_word(w) & active_word(cfg, w);
            if k == 0 {
                x &= self.later;
            }
            if k == self.words {
                x &= !self.later;
            }
            if w == self.ex_word {
                x &= !self.ex_bits;
            }
            self.w = w;
            self.x = x;
            if x == 0 {
                return false;
            }
        }
        let byte = lowest_byte(self.x);
        let slot = self.w.wrapping_mul(8).wrapping_add(byte);
        // Hidden from LLVM, which may prove `slot` < MAX_SLOTS and drop the bounds checks of the
        // reads below that the verifier needs.
        // SAFETY: `&slot` is a valid, aligned reference to a local u32.
        let slot = unsafe { core::ptr::read_volatile(&slot) };
        let Some((count, weight)) = loads.load(slot) else { return true };
        let ok = if self.work_on {
            let (working, start_sum) = loads.work(slot);
            count == 0
                && weight == self.uniform_weight
                && work_left(0, self.mean, working, start_sum, self.now_us) == self.least_work
        } else {
            count == 0
        };
        if ok && self.speed_on {
            let (recent, at) = loads.recent(slot);
            if slowness(recent, at, self.mean, self.now_us) > 1 {
                // Slow, not stale: the byte stays; on to the next candidate of this word.
                self.x &= !(0xffu64 << (byte * 8));
                return false;
            }
        }
        if ok {
            self.found = slot;
            return true;
        }
        // Stale: cleared for the next connections; on to the next candidate of this word.
        loads.clear_idle(slot);
        self.x &= !(0xffu64 << (byte * 8));
        false
    }
}

/// Word `w` (< [`IDLE_WORDS`]) of [`Config::active_mask`], as [`LoadSource::idle_word`] reads
/// the idle bytes.
#[inline(always)]
fn active_word(cfg: &Config, w: u32) -> u64 {
    // Hidden from LLVM, which can prove the bound and would drop the check the verifier needs.
    // SAFETY: `&w` is a valid, aligned reference to a local u32.
    let w = unsafe { core::ptr::read_volatile(&w) };
    if w >= IDLE_WORDS {
        return 0;
    }
    // SAFETY: `w` < IDLE_WORDS, so the 8 bytes lie inside `active_mask`, which is 8-aligned
    // (Config is `align(8)` and the offset is asserted in layout.rs).
    unsafe { core::ptr::read_volatile(cfg.active_mask.as_ptr().cast::<u64>().add(w as usize)) }
}

/// Index (0..8) of the lowest nonzero byte of `x` (nonzero), without a branch: the lowest set
/// bit, minus 1, is a run of ones whose length (a population count) / 8 is the byte.
#[inline(always)]
pub fn lowest_byte(x: u64) -> u32 {
    let below = (x & x.wrapping_neg()).wrapping_sub(1);
    // SWAR population count.
    let c = below - ((below >> 1) & 0x5555_5555_5555_5555);
    let c = (c & 0x3333_3333_3333_3333) + ((c >> 2) & 0x3333_3333_3333_3333);
    let c = (c + (c >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    let c = c.wrapping_mul(0x0101_0101_0101_0101) >> 56;
    (c as u32 >> 3) & 7
}

/// The active slot at dense index `i` (< `n`), or [`NO_SLOT`] if the record is out of range.
///
/// Plain `u32` with a sentinel rather than `Option`: LLVM may read the payload of a `None`, which
/// the verifier rejects as an uninitialized register.
#[inline(always)]
fn active_at(cfg: &Config, i: u32) -> u32 {
    // The verifier cannot bound `x % n`, while LLVM can, and would drop the bounds check below as
    // redundant: the volatile read hides `i` from LLVM so the check stays for the verifier.
    // SAFETY: `&i` is a valid, aligned reference to a local u32.
    let i = unsafe { core::ptr::read_volatile(&i) };
    if i >= MAX_SLOTS {
        return NO_SLOT;
    }
    let slot = cfg.active[i as usize];
    if slot < MAX_SLOTS {
        slot
    } else {
        NO_SLOT
    }
}

/// State of the least-loaded (and work-left) scan: an exact pass over the active slots starting
/// at dense index `start` and wrapping around, keeping the first strict minimum. The start moves
/// on by one slot per connection (this CPU's tick), so equally loaded slots take turns instead of
/// piling on slot 0; a random start, used before, gave one slot two or three in a row as often.
///
/// The load is the slot's [`Cost`]: the count in flight ([`Counts`]), the [`work_left`] cost
/// ([`Estimates`]) or the count weighed by the slot's slowness ([`Speeds`]).
///
/// With the blocked check on (`limit_ns` > 0), a blocked slot's load is lifted by
/// [`Scan::BLOCKED`] (and its weight taken as 1), above every slot that is not blocked: it wins
/// only when every candidate is blocked, and then the one with the fewest in flight does. The
/// lift is computed without a branch ([`blocked_mask`]), so the verifier still sees two paths per
/// slot.
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    pub n: u32,
    pub start: u32,
    pub exclude: u32,
    pub best: u32,
    pub best_weight: u32,
    pub best_load: u64,
    pub now: u64,
    pub limit_ns: u64,
    /// All ones when the blocked check is on.
    pub enabled: u64,
    /// All ones once a blocked candidate was seen.
    pub blocked_seen: u64,
    /// All ones for work-left ([`Estimates`], [`Scan::set_cost`]).
    pub work_on: u64,
    /// `now` in microseconds.
    pub now_us: u64,
    /// The group's mean service time ([`Estimates`], [`Speeds`]), raw.
    pub mean_us: u64,
}

impl Scan {
    /// Slots visited per [`Scan::visit_chunk`] (one `bpf_loop` call each). One: with two slots
    /// per call the verifier processed 928,577 instructions for `select_or_migrate` (the limit
    /// is 1,000,000, and a change of three masks in a cost went over it) and a group took
    /// 1.7-1.9 s to load; with one slot, 223,800 and 0.3 s. The price is a call per slot, paid
    /// when the scan runs (no slot idle): least-loaded at 64 workers none idle cost 2,331-2,365
    /// ns a selection against 1,759-1,762 (`bench selector`, two runs of each), about 9 ns a
    /// slot; with a slot idle, within the runs' spread idle and 13-23% more contended
    /// (docs/BENCHMARKS.md, "One slot per callback").
    pub const CHUNK: u32 = 1;

    /// Loads are capped here, so that a blocked load ([`Scan::BLOCKED`] + load) is heavier than
    /// any other, and [`Scan::NONE_YET`] heavier than all.
    pub const LOAD_CAP: u64 = (1 << 30) - 1;
    /// A slot's mean service time is capped here (about 16 s) in the work-left cost.
    pub const MEAN_CAP_US: u64 = 1 << 24;
    /// Added to a blocked slot's load.
    pub const BLOCKED: u64 = 1 << 30;
    /// The load of "no slot chosen yet". A sentinel rather than a test of `best == NO_SLOT`:
    /// comparing `best` with a constant makes the verifier track it exactly, and then it cannot
    /// merge the paths of a chunk, which multiply.
    const NONE_YET: u64 = 1 << 31;

    pub fn new(n: u32, start: u32, exclude: u32, now: u64, limit_ns: u64) -> Self {
        Self {
            n,
            start,
            exclude,
            best: NO_SLOT,
            best_weight: 1,
            best_load: Self::NONE_YET,
            now,
            limit_ns,
            enabled: if limit_ns != 0 { u64::MAX } else { 0 },
            blocked_seen: 0,
            work_on: 0,
            now_us: now / 1000,
            mean_us: 0,
        }
    }

    /// Sets what [`Estimates`] weighs each slot by: the [`work_left`] cost for work-left (the
    /// count for any other policy, which never runs that scan), with `mean_us` (raw) as the
    /// group's mean service time.
    ///
    /// The mask comes from the policy id read again from `cfg`, without a branch, so that the
    /// verifier cannot know it: with the work-left cost alone, unmasked, it processed 522,668
    /// instructions for `select` (two and a half times as many: it tracks the exact cost and
    /// prunes fewer paths), with the mask 208,117 (a throwaway loader, issue 23's eighth step).
    #[inline(always)]
    pub fn set_cost(&mut self, cfg: &Config, mean_us: u64) {
        // SAFETY: `cfg.policy` is a valid, aligned u32 (a reference's field).
        let id = unsafe { core::ptr::read_volatile(&cfg.policy) } as u64;
        self.work_on = negative((id ^ Policy::WorkLeft as u64).wrapping_sub(1));
        self.mean_us = mean_us;
    }

    /// Number of chunks that cover `n` slots.
    #[inline(always)]
    pub const fn chunks(n: u32) -> u32 {
        n.div_ceil(Self::CHUNK)
    }

    /// Looks at the slots `chunk * CHUNK ..` of the pass, up to `n`, weighed by `C`.
    #[inline(always)]
    pub fn visit_chunk<C: Cost, L: LoadSource>(&mut self, cfg: &Config, chunk: u32, loads: &L) {
        let base = chunk.wrapping_mul(Self::CHUNK);
        for j in 0..Self::CHUNK {
            let k = base.wrapping_add(j);
            if k >= self.n {
                return;
            }
            self.visit::<C, L>(cfg, k, loads);
        }
    }

    /// Looks at the `k`-th slot of the pass (`k < n`).
    ///
    /// The blocked check runs for every slot, masked off when it is not enabled, rather than
    /// behind a branch: a branch (or a second `bpf_loop` callback chosen at run time) doubles the
    /// paths the verifier walks, and loading took 3-12 s instead of about 1.5 s that way.
    #[inline(always)]
    pub fn visit<C: Cost, L: LoadSource>(&mut self, cfg: &Config, k: u32, loads: &L) {
        let i = self.start.wrapping_add(k);
        let i = if i >= self.n { i.wrapping_sub(self.n) } else { i };
        let slot = active_at(cfg, i);
        if slot == NO_SLOT || slot == self.exclude {
            return;
        }
        let Some((count, weight)) = loads.load(slot) else { return };
        let count = if count > Self::LOAD_CAP { Self::LOAD_CAP } else { count };
        let blocked =
            blocked_mask(count, loads.progress(slot), self.now, self.limit_ns, self.enabled);
        let load = C::cost(self, slot, count, loads);
        self.blocked_seen |= blocked;
        let load = load + (blocked & Self::BLOCKED);
        let weight = (weight & !(blocked as u32)) | (blocked as u32 & 1);
        if lighter(load, weight, self.best_load, self.best_weight) {
            self.best = slot;
            self.best_load = load;
            self.best_weight = weight;
        }
    }

    pub fn result(&self) -> Result<Choice, Event> {
        // A blocked candidate was seen and the pick is not blocked: it was steered away.
        // Computed before the branch and hidden from LLVM, so that the register holding it is
        // written on the failing path too: LLVM may read a flag of the `Err` path's undefined
        // payload where both paths meet, which the verifier refuses ("!read_ok"; seen in the
        // build with the feature `broken`).
        let passed_blocked =
            opaque((self.blocked_seen != 0 && self.best_load < Self::BLOCKED) as u64) != 0;
        if self.best == NO_SLOT {
            return Err(Event::FallbackSelectFailed);
        }
        Ok(Choice { slot: self.best, passed_blocked, fast: false })
    }
}

/// What a [`Scan`] weighs a slot by: one per [`Family`], a type parameter so that each family's
/// scan is its own code (in the program, its own `bpf_loop` callback).
pub trait Cost {
    /// The cost of `slot`, whose count in flight (at most [`Scan::LOAD_CAP`]) is `count`: at
    /// most [`Scan::LOAD_CAP`], in a way the verifier can see (a branch on it, or a mask).
    fn cost<L: LoadSource>(scan: &Scan, slot: u32, count: u64, loads: &L) -> u64;
}

/// The count family's cost ([`Family::Counts`]): the count in flight, nothing else read.
#[derive(Clone, Copy, Debug)]
pub enum Counts {}

impl Cost for Counts {
    #[inline(always)]
    fn cost<L: LoadSource>(_scan: &Scan, _slot: u32, count: u64, _loads: &L) -> u64 {
        count
    }
}

/// The estimate family's cost ([`Family::Estimates`]): the [`work_left`] cost as
/// [`Scan::set_cost`] chose it (the count if it did not: a mask, for the verifier's sake).
#[derive(Clone, Copy, Debug)]
pub enum Estimates {}

impl Cost for Estimates {
    #[inline(always)]
    fn cost<L: LoadSource>(scan: &Scan, slot: u32, count: u64, loads: &L) -> u64 {
        let (working, start_sum) = loads.work(slot);
        let work = work_left(count, scan.mean_us, working, start_sum, scan.now_us);
        // Masked as well as capped: the mask is what tells the verifier the bound (a value it
        // cannot bound makes every comparison after it a path of its own).
        let work = min_below(work, Scan::LOAD_CAP) & Scan::LOAD_CAP;
        (count & !scan.work_on) | (work & scan.work_on)
    }
}

/// The speed family's cost ([`Family::Speeds`]): `(count + 1) * slowness - 1`, least-loaded's
/// count for a slot that answers at the group's pace ([`slowness`] 1), a shortest-expected-delay
/// cost for a slow one: it gets work when every other slot has `slowness - 1` more in flight
/// per request it holds. Reads the slot's recent response time, nothing of the estimates.
#[derive(Clone, Copy, Debug)]
pub enum Speeds {}

impl Cost for Speeds {
    #[inline(always)]
    fn cost<L: LoadSource>(scan: &Scan, slot: u32, count: u64, loads: &L) -> u64 {
        let (recent, at) = loads.recent(slot);
        let slow = slowness(recent, at, scan.mean_us, scan.now_us);
        // All ones for a slow slot (slowness 2 or more): only its count is weighed.
        let is_slow = !negative(slow.wrapping_sub(2));
        // count < 2^20 and slowness <= SLOWNESS_CAP: below 2^27, so within LOAD_CAP.
        let held = min_below(count, 1 << 20) & ((1 << 21) - 1);
        let weighed = min_below((held + 1) * slow - 1, Scan::LOAD_CAP) & Scan::LOAD_CAP;
        (count & !is_slow) | (weighed & is_slow)
    }
}

/// State of the pack scan: a pass over the active slots in dense order (the controller keeps
/// `cfg.active` sorted by slot, so that is slot order), stopping at the first slot whose
/// connections in flight are below `depth * weight` (a weight of 0 counts as 1, a depth of 0 as
/// 1). The `exclude` slot is never picked, and a slot the blocked check calls blocked is passed
/// over like a full one.
///
/// When no slot is found (all full, blocked or excluded), [`decide`] falls back to the
/// least-loaded [`Scan`], which handles the blocked slots its own way (a blocked one wins only
/// when every candidate is blocked). A separate scan rather than a mask in [`Scan::visit`]: it
/// stops at the first slot that fits, and it adds nothing to the paths the verifier walks in the
/// least-loaded scan.
#[derive(Clone, Copy, Debug)]
pub struct PackScan {
    pub n: u32,
    pub exclude: u32,
    /// Connections in flight per unit of weight that fill a slot (at least 1).
    pub depth: u32,
    pub now: u64,
    pub limit_ns: u64,
    /// The slot picked, or [`NO_SLOT`] while none is.
    pub found: u32,
    /// A blocked slot was passed over before `found`.
    pub blocked_seen: bool,
}

impl PackScan {
    pub fn new(n: u32, exclude: u32, depth: u32, now: u64, limit_ns: u64) -> Self {
        Self {
            n,
            exclude,
            depth: if depth == 0 { 1 } else { depth },
            now,
            limit_ns,
            found: NO_SLOT,
            blocked_seen: false,
        }
    }

    /// Looks at the active slot at dense index `i` (`i < n`); true once a slot was found, which
    /// ends the pass.
    #[inline(always)]
    pub fn visit<L: LoadSource>(&mut self, cfg: &Config, i: u32, loads: &L) -> bool {
        let slot = active_at(cfg, i);
        if slot == NO_SLOT || slot == self.exclude {
            return false;
        }
        let Some((count, weight)) = loads.load(slot) else { return false };
        let weight = if weight == 0 { 1 } else { weight as u64 };
        // depth and weight are both u32: the product fits in 64 bits.
        if count >= self.depth as u64 * weight {
            return false;
        }
        if self.limit_ns != 0 && is_blocked(count, loads.progress(slot), self.now, self.limit_ns) {
            self.blocked_seen = true;
            return false;
        }
        self.found = slot;
        true
    }

    /// The pick (call only when `found` is a slot).
    pub fn result(&self) -> Choice {
        Choice { slot: self.found, passed_blocked: self.blocked_seen, fast: false }
    }
}

/// Two distinct random active slots; the lighter one wins, the first on a tie (it is random too).
/// A blocked one loses to one that is not.
#[inline(always)]
fn power_of_two<L: LoadSource>(
    cfg: &Config,
    n: u32,
    draw: &Draw,
    limit_ns: u64,
    exclude: u32,
    loads: &L,
) -> Result<Choice, Event> {
    let plain = |slot: u32| Choice { slot, passed_blocked: false, fast: false };
    let random = draw.random;
    let a = (random & 0xffff) % n;
    if n == 1 {
        return nth_usable(cfg, n, a, exclude).map(plain);
    }
    // Offset in 1..n, so b != a.
    let b = (a + 1 + (random >> 16) % (n - 1)) % n;
    let x = usable(active_at(cfg, a), exclude);
    let y = usable(active_at(cfg, b), exclude);
    if x == NO_SLOT && y == NO_SLOT {
        return Err(Event::FallbackSelectFailed);
    }
    if x == NO_SLOT {
        return Ok(plain(y));
    }
    if y == NO_SLOT {
        return Ok(plain(x));
    }
    let (lx, wx) = match loads.load(x) {
        Some(l) => l,
        None => return Ok(plain(y)),
    };
    let (ly, wy) = match loads.load(y) {
        Some(l) => l,
        None => return Ok(plain(x)),
    };
    let (light, heavy) =
        if lighter(ly, wy, lx, wx) { ((y, ly), (x, lx)) } else { ((x, lx), (y, ly)) };
    if limit_ns != 0
        && is_blocked(light.1, loads.progress(light.0), draw.now, limit_ns)
        && !is_blocked(heavy.1, loads.progress(heavy.0), draw.now, limit_ns)
    {
        return Ok(Choice { slot: heavy.0, passed_blocked: true, fast: false });
    }
    Ok(plain(light.0))
}

/// The slot to try when `failed`, the chosen one, has no socket: the active slot in turn after
/// this CPU's tick, or the one after it if that is `failed`.
#[inline(always)]
pub fn next_in_turn(cfg: &Config, draw: &Draw, failed: u32) -> Result<u32, Event> {
    let n = cfg.n_active;
    if n == 0 || n > MAX_SLOTS {
        return Err(Event::FallbackSelectFailed);
    }
    nth_usable(cfg, n, draw.tick.wrapping_add(1) % n, failed)
}

/// `slot`, or [`NO_SLOT`] if it is the excluded one.
#[inline(always)]
fn usable(slot: u32, exclude: u32) -> u32 {
    if slot == exclude {
        NO_SLOT
    } else {
        slot
    }
}

/// The active slot at dense index `i`, or the next one if that one is excluded.
#[inline(always)]
fn nth_usable(cfg: &Config, n: u32, i: u32, exclude: u32) -> Result<u32, Event> {
    let slot = usable(active_at(cfg, i), exclude);
    if slot != NO_SLOT {
        return Ok(slot);
    }
    let next = if n > 1 { usable(active_at(cfg, (i + 1) % n), exclude) } else { NO_SLOT };
    if next != NO_SLOT {
        Ok(next)
    } else {
        Err(Event::FallbackSelectFailed)
    }
}
