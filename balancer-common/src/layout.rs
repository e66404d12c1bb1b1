//! Map names, sizes and record layouts.

/// Number of worker slots in one balanced group. The socket array, the load array and the
/// per-slot statistics all have this many entries.
pub const MAX_SLOTS: u32 = 256;

/// Version of the [`LoadTable`] layout that the program, the shim and the controller share. Bump
/// it with every change of [`LoadTable`], [`SlotRecord`], [`Config`], [`SlotOwner`] or of the set
/// of maps: a shim of another layout is refused at registration, and pins of another layout are
/// replaced, never adopted. Layout 3 added the `OWNERS` map; layout 4 [`LoadTable::progress`] and
/// [`Config::blocked_after_ms`]; layout 5 the work figures (a per-slot mean service time,
/// [`LoadTable::working`], [`LoadTable::start_sum_us`]) and counts a request done at its answer;
/// layout 6 replaces the per-slot mean with the group's ([`LoadTable::group`]) and adds the
/// peak-EWMA figures (`ewma_us`, `ewma_at_us`) and the fast path's
/// hints ([`LoadTable::idle`], [`Config::active_mask`], [`Config::idle_words`],
/// [`Config::uniform_weight`]); layout 7 the per-slot sum of response times
/// ([`SlotRecord::answer_us`]); layout 8 the per-slot recent response time of speed-aware
/// ([`LoadTable::recent_us`]); layout 9 drops the peak-EWMA estimate (`ewma_us`, with the
/// policy) and names its stamp for what is left to stamp ([`LoadTable::recent_at_us`]).
pub const LAYOUT_VERSION: u16 = 9;

/// Marks "no slot" where a slot index is expected (for example: nothing to exclude).
pub const NO_SLOT: u32 = u32::MAX;

/// `BPF_F_MMAPABLE`: the load array is created with it so workers and the controller use it as
/// plain shared memory, with no system call per update.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Names of the maps in the eBPF object.
pub mod maps {
    /// `REUSEPORT_SOCKARRAY`: slot -> listening socket.
    pub const SOCKETS: &str = "SOCKETS";
    /// mmap-able `ARRAY` with one [`super::LoadTable`].
    pub const LOADS: &str = "LOADS";
    /// `ARRAY` with one [`super::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// `PERCPU_ARRAY` of u64: selections per slot.
    pub const SELECTED: &str = "SELECTED";
    /// `PERCPU_ARRAY` of u64: one counter per [`super::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// `PERCPU_ARRAY` with one u32: the round-robin position of each CPU.
    pub const RR_TICK: &str = "RR_TICK";
    /// `ARRAY` of [`super::SlotOwner`], one per slot: who owns each slot, as the controller
    /// recorded it. Written by the controller only, pinned beside the others, never handed to a
    /// worker (unlike `LOADS`), never read by the program.
    pub const OWNERS: &str = "OWNERS";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// `sk_reuseport`: picks a socket for each new connection.
    pub const SELECT: &str = "select";
    /// `sk_reuseport/migrate`: the same, and also places connections of a closing listener.
    pub const SELECT_OR_MIGRATE: &str = "select_or_migrate";
}

/// The load table, the only entry of the mmap-able `LOADS` array: shared by the program, the
/// worker shims and the controller as plain memory, with no system call per update.
///
/// What the program reads for every connection is dense (`inflight` and `weight`, 8 slots to a
/// cache line), so the least-loaded scan walks a few lines instead of one per slot. Each counter
/// is only ever changed by atomic adds, so nobody needs a lock.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadTable {
    /// Connections in flight per slot, two's complement: +1 by the program when it selects the
    /// slot (or migrates a connection to it), -1 by the worker's shim when it closes one, and the
    /// controller's reconciliation corrections. Read it through [`LoadTable::inflight_of`].
    pub inflight: [u64; MAX_SLOTS as usize],
    /// Relative capacity per slot; 0 counts as 1.
    pub weight: [u32; MAX_SLOTS as usize],
    /// When each slot last made progress, in CLOCK_MONOTONIC nanoseconds: the program stores the
    /// time when it gives a connection to a slot that had none in flight, the worker's shim when
    /// it completes one, the controller when it gives the slot an owner or corrects its count.
    /// A slot with connections in flight and no progress for [`Config::blocked_after_ms`] is
    /// blocked (a worker stuck in a long call holding the GIL, say): the policy passes it over.
    /// Plain stores; a value in the future (another clock) never counts as blocked.
    pub progress: [u64; MAX_SLOTS as usize],
    /// Requests the worker accepted and has not answered (the shim: +1 at accept, -1 at the
    /// answer), two's complement like `inflight`.
    pub working: [u64; MAX_SLOTS as usize],
    /// Sum of the accept times (CLOCK_MONOTONIC, microseconds) of those `working` requests, so
    /// that `working * now - start_sum_us` is the sum of their ages. The shim adds a start before
    /// it counts the request in `working`, and counts the answer out of `working` before it takes
    /// the start away: a reader between two updates sees less age, never more.
    pub start_sum_us: [u64; MAX_SLOTS as usize],
    /// When `recent_us` was last set (CLOCK_MONOTONIC, microseconds): at each answer, so also
    /// when the slot last answered.
    pub recent_at_us: [u64; MAX_SLOTS as usize],
    /// The slot's recent time from accept to answer for `speed-aware`, in microseconds (the
    /// shim, at each answer): an average that moves 1/8 of the way up to a longer answer and half
    /// the way down to a shorter one ([`crate::policy::recent_next`]), decaying toward the group's
    /// mean while the slot answers nothing (see [`crate::policy::recent_now`]). One long request
    /// among short ones moves it an eighth of its excess; a worker whose every answer is slow (a
    /// CPU quota, a slow disk) keeps it high; one that answers at the group's pace again drops it
    /// within a few answers.
    pub recent_us: [u64; MAX_SLOTS as usize],
    /// Figures of the whole group, on a cache line of their own.
    pub group: GroupFigures,
    /// One byte per slot, nonzero when the slot had nothing in flight when last written: the
    /// hint of the least-loaded and work-left fast path ([`crate::policy::find_idle`]), which
    /// reads it 8 slots at a time. The worker's shim sets its byte when an answer takes its
    /// in-flight count to 0; the program clears it when it gives the slot a connection, or finds
    /// it stale (the slot has work after all); the controller recomputes every byte at each
    /// reconciliation. Only a hint: races leave it stale either way, and the program checks the
    /// slot's counts before it takes one, so a wrong byte costs time, never a wrong choice.
    pub idle: [u8; MAX_SLOTS as usize],
    /// Per-slot bookkeeping the program never reads.
    pub slots: [SlotRecord; MAX_SLOTS as usize],
}

/// Figures of the whole group, beside the per-slot arrays of the [`LoadTable`].
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupFigures {
    /// Mean time from accept to answer of the group's recent requests, in microseconds: an
    /// average that moves 1/16 of the way to each new figure (every worker's shim, at each
    /// answer; 0 until the first). The `work-left` policy reads it once per connection.
    ///
    /// One figure for the group, not one per worker: a worker's own mean stays where its last
    /// requests left it until it gets traffic again, so one long request made a worker look
    /// expensive and kept new work away from it, which is what kept its mean high (measured:
    /// work-left at 3.6 times nginx `least_conn`'s p99 with per-worker means, 0.56 with one).
    pub mean_us: u64,
    /// The rest of the cache line (no implicit padding in shared memory).
    pub _reserved: [u64; 7],
}

/// Bookkeeping of one slot, beside its load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotRecord {
    /// Connections the worker accepted (shim).
    pub accepted: u64,
    /// Requests the worker answered (shim): counted at the first write of the answer, or at the
    /// close of a connection closed unanswered.
    pub completed: u64,
    /// Sum of the times from accept to answer of those requests, in microseconds (shim, at each
    /// answer): with `completed`, the worker's average response time.
    pub answer_us: u64,
    /// Bumped each time the slot is given to a new owner.
    pub epoch: u64,
    /// Process that owns the slot, 0 if none.
    pub pid: u32,
    pub _reserved: u32,
}

/// The controller's record of a slot's owner (one entry of the `OWNERS` map per slot).
///
/// Unlike [`SlotRecord::pid`], which every worker of the service can write (the load table is
/// mapped read-write into each of them), only the controller writes this record: it is how a
/// controller that adopts a pinned group recognises the owner of a slot when it registers again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOwner {
    /// SO_COOKIE of the worker's listening socket (set by the kernel, not by its holders); 0 if
    /// the slot has no owner.
    pub cookie: u64,
    /// The slot's epoch, bumped each time it is given to a new owner (kept when it is freed).
    pub epoch: u64,
    /// The owner's pid, as the kernel gave it at registration (SO_PEERCRED); 0 if none.
    pub pid: u32,
    pub _reserved: u32,
}

/// Byte offsets of a slot's fields inside the [`LoadTable`] mapping, for code that works on the
/// shared memory with atomics.
pub mod table_offsets {
    use super::{LoadTable, SlotRecord};
    use core::mem::{offset_of, size_of};

    pub const fn inflight(slot: usize) -> usize {
        offset_of!(LoadTable, inflight) + slot * 8
    }
    pub const fn weight(slot: usize) -> usize {
        offset_of!(LoadTable, weight) + slot * 4
    }
    pub const fn progress(slot: usize) -> usize {
        offset_of!(LoadTable, progress) + slot * 8
    }
    /// The group's [`super::GroupFigures::mean_us`] (the same for every slot).
    pub const fn group_mean_us(_slot: usize) -> usize {
        offset_of!(LoadTable, group) + offset_of!(super::GroupFigures, mean_us)
    }
    pub const fn working(slot: usize) -> usize {
        offset_of!(LoadTable, working) + slot * 8
    }
    pub const fn start_sum_us(slot: usize) -> usize {
        offset_of!(LoadTable, start_sum_us) + slot * 8
    }
    pub const fn recent_at_us(slot: usize) -> usize {
        offset_of!(LoadTable, recent_at_us) + slot * 8
    }
    pub const fn recent_us(slot: usize) -> usize {
        offset_of!(LoadTable, recent_us) + slot * 8
    }
    /// The slot's byte of [`super::LoadTable::idle`].
    pub const fn idle(slot: usize) -> usize {
        offset_of!(LoadTable, idle) + slot
    }
    const fn record(slot: usize) -> usize {
        offset_of!(LoadTable, slots) + slot * size_of::<SlotRecord>()
    }
    pub const fn accepted(slot: usize) -> usize {
        record(slot) + offset_of!(SlotRecord, accepted)
    }
    pub const fn completed(slot: usize) -> usize {
        record(slot) + offset_of!(SlotRecord, completed)
    }
    pub const fn answer_us(slot: usize) -> usize {
        record(slot) + offset_of!(SlotRecord, answer_us)
    }
    pub const fn epoch(slot: usize) -> usize {
        record(slot) + offset_of!(SlotRecord, epoch)
    }
    pub const fn pid(slot: usize) -> usize {
        record(slot) + offset_of!(SlotRecord, pid)
    }
}

/// Size of the mmap of the load table.
pub const LOADS_MMAP_LEN: usize = core::mem::size_of::<LoadTable>();

impl LoadTable {
    /// A raw `inflight` counter as a load. Completions can briefly run ahead of assignments (a
    /// reconciliation racing an assignment): that reads as 0, never as a huge number.
    #[inline(always)]
    pub fn inflight_of(raw: u64) -> u64 {
        let v = raw as i64;
        if v < 0 {
            0
        } else {
            v as u64
        }
    }
}

/// The group's configuration record (the only entry of the `CONFIG` map).
///
/// The controller rewrites it whole; the program may see a half-written record, and every
/// outcome of that is safe: a stale slot either still has its socket or fails the selection,
/// which falls back to the kernel's hash.
///
/// Aligned to 8 so that the fast path can read [`Config::active_mask`] a u64 at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// A [`crate::Policy`] id.
    pub policy: u32,
    /// Number of valid entries in `active`.
    pub n_active: u32,
    /// Bumped on every change, so readers can tell that something changed.
    pub generation: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
    /// A slot with connections in flight and no [`LoadTable::progress`] for this long is passed
    /// over by least-loaded and p2c while another slot is not blocked; 0 turns the check off.
    /// Speed-aware: replaces its adaptive limit ([`crate::policy::stall_limit_ns`]), which 0 keeps.
    pub blocked_after_ms: u32,
    /// The pack policy's depth: connections in flight per unit of weight that fill a slot
    /// before the next one takes new connections; 0 counts as 1.
    pub pack_depth: u32,
    /// How many 8-slot words of [`Config::active_mask`] (and of [`LoadTable::idle`]) the fast
    /// path reads: the highest active slot / 8 + 1; 0 turns the fast path off.
    pub idle_words: u32,
    /// The weight every active slot has, if they all have the same one, else 0. Work-left takes
    /// its fast path only then (with weights, an idle slot is not always the lightest); it takes
    /// a slot whose weight in the table is not this one only through the scan.
    pub uniform_weight: u32,
    /// Dense list of the slots that take new connections.
    pub active: [u32; MAX_SLOTS as usize],
    /// The same set as bytes, 0xff for an active slot and 0 for any other: the fast path ANDs
    /// it with the load table's idle bytes, 8 slots at a time. Written by the controller only,
    /// like the rest of this record: a worker can set idle bytes (the load table is mapped into
    /// every worker) but cannot make a slot active (a draining worker is never picked).
    pub active_mask: [u8; MAX_SLOTS as usize],
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// Log every selection through aya-log. Costs far more than the selection: debugging only.
    pub const LOG_SELECTIONS: u32 = 1;
}

impl Config {
    pub const fn empty(policy: u32) -> Self {
        Self {
            policy,
            n_active: 0,
            generation: 0,
            flags: 0,
            blocked_after_ms: 0,
            pack_depth: 0,
            idle_words: 0,
            uniform_weight: 0,
            active: [NO_SLOT; MAX_SLOTS as usize],
            active_mask: [0; MAX_SLOTS as usize],
        }
    }

    /// Makes `slots` (in range, at most [`MAX_SLOTS`] of them; others are dropped) the active
    /// ones: the dense list, the byte mask and the fast path's word count. `uniform_weight` as
    /// in [`Config::uniform_weight`].
    pub fn set_active(&mut self, slots: &[u32], uniform_weight: u32) {
        self.active = [NO_SLOT; MAX_SLOTS as usize];
        self.active_mask = [0; MAX_SLOTS as usize];
        let mut n = 0;
        let mut top = 0;
        for &slot in slots.iter().filter(|&&s| s < MAX_SLOTS) {
            if n == MAX_SLOTS as usize {
                break;
            }
            self.active[n] = slot;
            self.active_mask[slot as usize] = 0xff;
            top = top.max(slot / 8 + 1);
            n += 1;
        }
        self.n_active = n as u32;
        self.idle_words = top;
        self.uniform_weight = uniform_weight;
    }

    /// The active slots, as a slice (clamped to the array, whatever `n_active` says).
    pub fn active_slots(&self) -> &[u32] {
        let n = (self.n_active as usize).min(self.active.len());
        &self.active[..n]
    }
}

named_enum! {
    /// Counted events, one per-CPU counter each in the `EVENTS` map; the name is the metrics label
    /// and the log's word.
    ///
    /// Every fallback has its own reason, so an operator can tell why the kernel's hash was used.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Event: u32 {
        /// The config record or the load table could not be read.
        FallbackNoConfig = 0 => "no_config",
        /// No active slot.
        FallbackNoActive = 1 => "no_active_slot",
        /// The config record is out of range (unknown policy, too many slots).
        FallbackBadConfig = 2 => "bad_config",
        /// The chosen slots had no socket (worker gone, slot emptied).
        FallbackSelectFailed = 3 => "select_failed",
        /// A connection of a closing listener was moved to another worker.
        MigrateSelected = 4 => "migrated",
        /// A connection of a closing listener was left to the kernel's hash.
        MigrateFallback = 5 => "migrate_fallback",
        /// A connection went to a worker that is not blocked while another candidate was blocked
        /// (see [`Config::blocked_after_ms`]).
        BlockedPassedOver = 6 => "blocked_passed_over",
        /// Least-loaded or work-left took an idle slot from the fast path, with no scan
        /// ([`crate::policy::find_idle`]).
        FastPath = 7 => "fast_path",
    }
}

impl Event {
    /// How many events there are (the `EVENTS` map's entries).
    pub const COUNT: u32 = Event::ALL.len() as u32;

    pub const fn is_fallback(self) -> bool {
        (self as u32) <= Event::FallbackSelectFailed as u32
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, repr(C), no padding.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: plain old data, repr(C), no padding (two u64, two u32).
    unsafe impl aya::Pod for super::SlotOwner {}
}

const _: () = assert!(core::mem::size_of::<SlotRecord>() == 40);
const _: () = assert!(core::mem::size_of::<SlotOwner>() == 24);
const _: () = assert!(
    core::mem::size_of::<LoadTable>() == MAX_SLOTS as usize * (8 + 4 + 8 + 4 * 8 + 1 + 40) + 64
);
const _: () = assert!(core::mem::size_of::<GroupFigures>() == 64);
const _: () = assert!(core::mem::size_of::<Config>() == 32 + 5 * MAX_SLOTS as usize);
// The fast path reads the idle bytes as u64 words.
const _: () = assert!(core::mem::offset_of!(LoadTable, idle) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Config, active_mask) % 8 == 0);
