//! The SK_REUSEPORT programs of reuselb.
//!
//! For every new connection to a balanced port the kernel runs one of these with the group's
//! listening sockets; the program picks the slot of the least-busy worker (see
//! `balancer_common::policy`) and selects that slot's socket. Anything unexpected returns SK_PASS
//! without a selection, which lets the kernel's own hash decide: reuselb must never be the reason
//! a connection fails.
//!
//! What is counted: the kernel runs the program for every packet that finds no established
//! socket and reaches the listeners: a SYN, but also a stray ACK, an RST or FIN of a connection
//! already gone, the ACK that completes a SYN cookie. Each one is still given a socket (a cookie's
//! ACK must land where the policy says), but only what starts or moves a connection adds to the
//! slot's in-flight count and to `SELECTED`: a SYN without ACK, read straight from the TCP header
//! (the program sees the packet from the transport header on, as in the kernel selftest
//! `test_select_reuseport_kern.c`: a direct read, no helper call per connection), and every
//! migration (which moves a connection that exists). Two figures are therefore off for a moment,
//! and the registry's reconciliation (accept queue + accepted - completed, every 250 ms by
//! default) corrects both within about a second: a connection completed from a SYN cookie is not
//! counted, and a SYN whose handshake never completes (a SYN flood) is.
//!
//! Deliberately broken builds (`cargo xtask prove`, see `balancer_common::broken`), never made by
//! `cargo xtask build`: with the cargo feature `broken`, the loader sets the global [`BROKEN`] and
//! the programs either return SK_PASS at once, selecting nothing (`sk-pass`), give every
//! connection to the next active slot in turn, ignoring the load table (`ignore-load`), or refuse
//! every migration (`no-migrate`), so that the tests can show they notice a balancer that does
//! nothing, decides blindly or drops a closing worker's queue.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
    ptr::{addr_of, read_volatile},
};

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_loop},
    macros::{map, sk_reuseport},
    maps::{Array, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use aya_log_ebpf::debug;
use balancer_common::{
    broken::Broken, config_flags, decide, next_in_turn, Choice, Config, Cost, Draw, Event, Fast,
    LoadSource, LoadTable, PackScan, Policy, Scan, SlotOwner, BPF_F_MMAPABLE, IDLE_WORDS,
    MAX_SLOTS, NO_SLOT,
};

// Map names must match `balancer_common::maps`; the loader looks each one up by that name.
#[map]
static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_SLOTS, 0);
#[map]
static LOADS: Array<LoadTable> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static SELECTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);
#[map]
static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Event::COUNT, 0);
#[map]
static RR_TICK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// The controller's record of each slot's owner. The program never uses it (see [`keep_owners`]):
/// it is in the object so that the controller gets it created and pinned with the group.
#[map]
static OWNERS: Array<SlotOwner> = Array::with_max_entries(MAX_SLOTS, 0);

/// Selection for new connections only.
#[sk_reuseport]
pub fn select(ctx: SkReuseportContext) -> u32 {
    run(&ctx, false)
}

/// Selection for new connections, and placement of the connections of a closing listener
/// (its accept queue and its half-open handshakes), never back onto the closing one.
#[sk_reuseport(migrate)]
pub fn select_or_migrate(ctx: SkReuseportContext) -> u32 {
    run(&ctx, true)
}

/// Which part a broken build breaks (`balancer_common::broken::Broken` as u32, 0 for none), set by
/// the loader in `.rodata`, so the verifier knows it and walks only the path it takes.
#[cfg(feature = "broken")]
#[unsafe(no_mangle)]
static BROKEN: u32 = 0;

/// The broken part this program was loaded with (always none without the feature `broken`).
#[inline(always)]
fn broken() -> Option<Broken> {
    #[cfg(feature = "broken")]
    {
        // SAFETY: a plain read of a global the loader sets before the program is loaded.
        Broken::from_id(unsafe { read_volatile(addr_of!(BROKEN)) })
    }
    #[cfg(not(feature = "broken"))]
    {
        None
    }
}

#[inline(always)]
fn run(ctx: &SkReuseportContext, may_migrate: bool) -> u32 {
    let broken = broken();
    if broken == Some(Broken::SkPass) {
        return SK_PASS;
    }
    if broken == Some(Broken::NoMigrate) && may_migrate && ctx.migrating_sk().is_some() {
        return SK_DROP;
    }
    // Whether this is a migration is read where it is used, after the scan: a value the
    // verifier knows before the scan would have it walk the scan once for each.
    let migrating = || may_migrate && ctx.migrating_sk().is_some();
    let Some(cfg) = CONFIG.get(0) else {
        keep_owners();
        return fall_back(Event::FallbackNoConfig, migrating());
    };
    // The two helpers are called only for the policies that use what they give (each costs a
    // call per connection): the random number for p2c, the clock for the blocked check and the
    // policies that read ages. Without the clock, `account` leaves the blocked clock alone.
    // SAFETY: `cfg.policy` is a valid, aligned u32 (a reference's field).
    let policy = Policy::from_id(unsafe { read_volatile(addr_of!(cfg.policy)) });
    let draw = Draw {
        random: if policy.is_some_and(Policy::draws_random) {
            // SAFETY: a helper with no arguments, allowed in every program type.
            unsafe { bpf_get_prandom_u32() }
        } else {
            0
        },
        hash: ctx.hash(),
        // Read for every connection, whatever the policy: a branch here would have the verifier
        // walk the scan once more for each outcome.
        tick: next_tick(),
        now: if cfg.blocked_after_ms != 0 || policy.is_some_and(Policy::reads_clock) {
            // SAFETY: a helper with no arguments, allowed in every program type.
            unsafe { bpf_ktime_get_ns() }
        } else {
            0
        },
    };
    let Some(table) = LOADS.get_ptr(0) else {
        return fall_back(Event::FallbackNoConfig, migrating());
    };
    let decided = if broken == Some(Broken::IgnoreLoad) {
        next_in_turn(cfg, &draw, NO_SLOT).map(|slot| Choice {
            slot,
            passed_blocked: false,
            fast: false,
        })
    } else {
        decide(cfg, &draw, NO_SLOT, &MapLoads(table))
    };
    let choice = match decided {
        Ok(choice) => choice,
        Err(event) => return fall_back(event, migrating()),
    };
    // The chosen slot may have no socket (its worker just left; a migration asks after the
    // closing listener left the array): then the next slot in turn, not a second scan, which
    // would double what the verifier walks.
    let choice = if SOCKETS.select_reuseport(ctx, choice.slot).is_ok() {
        choice
    } else {
        match next_in_turn(cfg, &draw, choice.slot) {
            Ok(slot) if SOCKETS.select_reuseport(ctx, slot).is_ok() => {
                Choice { slot, passed_blocked: false, fast: false }
            }
            _ => return fall_back(Event::FallbackSelectFailed, migrating()),
        }
    };
    let slot = choice.slot;
    let migrating = migrating();
    if migrating || is_new_connection(ctx) {
        account(table, slot, migrating, draw.now);
        if choice.passed_blocked {
            bump(&EVENTS, Event::BlockedPassedOver as u32);
        }
        if choice.fast {
            bump(&EVENTS, Event::FastPath as u32);
        }
    }
    if cfg.flags & config_flags::LOG_SELECTIONS != 0 {
        debug!(ctx, "slot {} selected (migrating: {})", slot, migrating as u32);
    }
    SK_PASS
}

/// Keeps `OWNERS` in the object: the linker drops a map that no program references. One lookup
/// whose result is ignored, in a branch that never runs (`CONFIG` always has its one entry), so
/// the selection path pays nothing for it.
#[inline(always)]
fn keep_owners() {
    let _ = OWNERS.get(0);
}

/// TCP header flags (byte 13 of the header).
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether the packet starts a connection: a SYN without ACK. The packet data starts at the TCP
/// header; a packet too short to tell (never a real SYN: the kernel pulled the whole header before
/// the lookup) is not counted.
#[inline(always)]
fn is_new_connection(ctx: &SkReuseportContext) -> bool {
    let flags = ctx.data() + TCP_FLAGS_OFFSET;
    if flags + 1 > ctx.data_end() {
        return false;
    }
    // SAFETY: `flags` lies inside [data, data_end), checked just above (the verifier checks it too).
    let flags = unsafe { *(flags as *const u8) };
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Loads as the program sees them: plain reads of the shared table, which the workers and the
/// controller update concurrently (a slightly stale value only skews one choice).
struct MapLoads(*const LoadTable);

impl LoadSource for MapLoads {
    #[inline(always)]
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        if slot >= MAX_SLOTS {
            return None;
        }
        let i = slot as usize;
        // SAFETY: `self.0` points at the LOADS map's value (a whole LoadTable, from get_ptr) and
        // `i` < MAX_SLOTS, the length of both arrays; the reads are volatile because the
        // workers and the controller change the values concurrently.
        unsafe {
            let raw = read_volatile(addr_of!((*self.0).inflight).cast::<u64>().add(i));
            let weight = read_volatile(addr_of!((*self.0).weight).cast::<u32>().add(i));
            Some((LoadTable::inflight_of(raw), weight))
        }
    }

    #[inline(always)]
    fn progress(&self, slot: u32) -> u64 {
        if slot >= MAX_SLOTS {
            return 0;
        }
        // SAFETY: as in `load`: inside the LOADS value, slot < MAX_SLOTS; written concurrently.
        unsafe { read_volatile(addr_of!((*self.0).progress).cast::<u64>().add(slot as usize)) }
    }

    #[inline(always)]
    fn work(&self, slot: u32) -> (u64, u64) {
        if slot >= MAX_SLOTS {
            return (0, 0);
        }
        let i = slot as usize;
        // SAFETY: as in `load`: inside the LOADS value, slot < MAX_SLOTS; written concurrently.
        unsafe {
            (
                read_volatile(addr_of!((*self.0).working).cast::<u64>().add(i)),
                read_volatile(addr_of!((*self.0).start_sum_us).cast::<u64>().add(i)),
            )
        }
    }

    #[inline(always)]
    fn recent(&self, slot: u32) -> (u64, u64) {
        if slot >= MAX_SLOTS {
            return (0, 0);
        }
        let i = slot as usize;
        // SAFETY: as in `load`: inside the LOADS value, slot < MAX_SLOTS; written concurrently.
        unsafe {
            (
                read_volatile(addr_of!((*self.0).recent_us).cast::<u64>().add(i)),
                read_volatile(addr_of!((*self.0).recent_at_us).cast::<u64>().add(i)),
            )
        }
    }

    #[inline(always)]
    fn idle_word(&self, w: u32) -> u64 {
        // Hidden from LLVM, which can prove the bound and would drop the check the verifier needs.
        // SAFETY: `&w` is a valid, aligned reference to a local u32.
        let w = unsafe { read_volatile(&w) };
        if w >= IDLE_WORDS {
            return 0;
        }
        // SAFETY: inside the LOADS value: `idle` is 8-aligned (asserted in balancer-common) and
        // has IDLE_WORDS * 8 bytes; written concurrently by the workers and the controller.
        unsafe { read_volatile(addr_of!((*self.0).idle).cast::<u64>().add(w as usize)) }
    }

    #[inline(always)]
    fn clear_idle(&self, slot: u32) {
        clear_idle(self.0, slot);
    }

    #[inline(always)]
    fn group_mean_us(&self) -> u64 {
        // SAFETY: inside the LOADS value; written concurrently by the workers.
        unsafe { read_volatile(addr_of!((*self.0).group.mean_us)) }
    }

    /// The fast path through `bpf_loop`: the verifier checks [`fast_step`] once.
    #[inline(always)]
    fn run_fast(&self, _cfg: &Config, fast: &mut Fast) {
        // SAFETY: bpf_loop calls `fast_step` with the context pointer we pass, `fast`, which
        // outlives the call; the verifier checks the callback's signature.
        unsafe {
            bpf_loop(Fast::MAX_STEPS, fast_step as *mut c_void, (fast as *mut Fast).cast(), 0)
        };
    }

    /// The scan through `bpf_loop`: the verifier checks [`scan_step`] once per cost (each its own
    /// callback), where a plain loop over up to 256 slots would exhaust its instruction budget.
    #[inline(always)]
    fn run_scan<C: Cost>(&self, _cfg: &Config, scan: &mut Scan) {
        scan_loop::<C>(scan);
    }

    /// The pack scan through `bpf_loop`, one slot per call to [`pack_step`], which ends the loop
    /// at the first slot that fits.
    #[inline(always)]
    fn run_pack(&self, _cfg: &Config, scan: &mut PackScan) {
        // SAFETY: bpf_loop calls `pack_step` with the context pointer we pass, `scan`, which
        // outlives the call; the verifier checks the callback's signature.
        unsafe { bpf_loop(scan.n, pack_step as *mut c_void, (scan as *mut PackScan).cast(), 0) };
    }
}

/// The exact scan with cost `C`: a function of its own per cost, never inlined, so that each
/// `bpf_loop` call has one callback. Inlined into `decide`, the three calls differ only in their
/// callback, and LLVM merges them into one call whose callback is a choice between three: the
/// verifier then cannot inline that `bpf_loop` (it inlines one only when its callback is the same
/// on every path), and every slot of the scan costs the helper's indirect call.
#[inline(never)]
fn scan_loop<C: Cost>(scan: &mut Scan) {
    let step = scan_step::<C> as *mut c_void;
    // SAFETY: bpf_loop calls `step` with the context pointer we pass, `scan`, which outlives
    // the call; the verifier checks the callback's signature.
    unsafe { bpf_loop(Scan::chunks(scan.n), step, (scan as *mut Scan).cast(), 0) };
}

/// One `bpf_loop` iteration of the pack scan: one slot. Returns 1 (stop) once a slot was found.
extern "C" fn pack_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `&mut PackScan` that `run_pack` gave it, alive for the loop.
    let scan = unsafe { &mut *ctx.cast::<PackScan>() };
    match (CONFIG.get(0), LOADS.get_ptr(0)) {
        (Some(cfg), Some(table)) => scan.visit(cfg, index as u32, &MapLoads(table)) as i64,
        _ => 1,
    }
}

/// One `bpf_loop` iteration of the fast path ([`Fast::step`]). Looks up the config and the table
/// itself, as [`scan_step`] does.
extern "C" fn fast_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `&mut Fast` that `run_fast` gave it, alive for the loop.
    let fast = unsafe { &mut *ctx.cast::<Fast>() };
    match (CONFIG.get(0), LOADS.get_ptr(0)) {
        (Some(cfg), Some(table)) => fast.step(cfg, &MapLoads(table)) as i64,
        _ => 1,
    }
}

/// One `bpf_loop` iteration of the exact scan with cost `C`: one chunk of slots. Looks up the
/// config and the table itself: a pointer to map memory cannot travel through the loop context.
extern "C" fn scan_step<C: Cost>(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `&mut Scan` that `scan_loop` gave it, alive for the loop.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    match (CONFIG.get(0), LOADS.get_ptr(0)) {
        (Some(cfg), Some(table)) => {
            scan.visit_chunk::<C, MapLoads>(cfg, index as u32, &MapLoads(table));
            0
        }
        _ => 1,
    }
}

/// Counts the connection against its slot right away, so a burst of connections arriving before
/// any worker accepts does not all land on the same "least loaded" worker. Called only for what
/// becomes a connection (see the module docs). A slot that had nothing in flight starts its
/// blocked clock now (`now` is 0 when the blocked check is off).
#[inline(always)]
fn account(table: *const LoadTable, slot: u32, migrating: bool, now: u64) {
    if slot < MAX_SLOTS {
        // SAFETY: `table` is the LOADS map's value and slot < MAX_SLOTS, the array's length.
        let counter =
            unsafe { addr_of!((*table).inflight).cast::<u64>().cast_mut().add(slot as usize) };
        // The value just before the add, read apart: this target (`--cpu generic`) has no
        // fetch-and-add, and a race only moves the clock's start by one connection.
        // SAFETY: an aligned u64 inside map memory.
        let before = unsafe { read_volatile(counter) };
        // SAFETY: an aligned u64 inside map memory, only ever changed by atomic adds.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
        if before as i64 <= 0 {
            // No longer idle: off the fast path until its worker answers.
            clear_idle(table, slot);
        }
        if now != 0 && before as i64 <= 0 {
            // SAFETY: inside the LOADS value, slot < MAX_SLOTS; a plain store of a u64.
            unsafe {
                addr_of!((*table).progress).cast::<u64>().cast_mut().add(slot as usize).write(now)
            };
        }
    }
    bump(&SELECTED, slot);
    if migrating {
        bump(&EVENTS, Event::MigrateSelected as u32);
    }
}

/// Clears the slot's idle byte ([`LoadTable::idle`]).
#[inline(always)]
fn clear_idle(table: *const LoadTable, slot: u32) {
    if slot < MAX_SLOTS {
        // SAFETY: inside the LOADS value, slot < MAX_SLOTS, the array's length; a plain store of
        // a byte that others write concurrently (a lost race leaves a hint stale, checked anyway).
        unsafe { addr_of!((*table).idle).cast::<u8>().cast_mut().add(slot as usize).write(0) };
    }
}

#[inline(always)]
fn fall_back(event: Event, migrating: bool) -> u32 {
    bump(&EVENTS, if migrating { Event::MigrateFallback } else { event } as u32);
    SK_PASS
}

#[inline(always)]
fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = counters.get_ptr_mut(index) {
        // SAFETY: this CPU's own value of a per-CPU map; the program does not migrate CPUs.
        unsafe { *c += 1 };
    }
}

/// This CPU's round-robin position (per CPU, so no shared cache line and no atomics).
#[inline(always)]
fn next_tick() -> u32 {
    match RR_TICK.get_ptr_mut(0) {
        // SAFETY: this CPU's own value of a per-CPU map; the program does not migrate CPUs.
        Some(t) => unsafe {
            let now = *t;
            *t = now.wrapping_add(1);
            now
        },
        None => 0,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
