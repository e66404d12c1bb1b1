//! Map names, sizes and record layouts.

/// Number of worker slots in one balanced group. The socket array, the load array and the
/// per-slot statistics all have this many entries.
pub const MAX_SLOTS: u32 = 256;

/// Marks "no slot" where a slot index is expected (for example: nothing to exclude).
pub const NO_SLOT: u32 = u32::MAX;

/// `BPF_F_MMAPABLE`: the load array is created with it so workers and the controller use it as
/// plain shared memory, with no system call per update.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Names of the maps in the eBPF object.
pub mod maps {
    /// `REUSEPORT_SOCKARRAY`: slot -> listening socket.
    pub const SOCKETS: &str = "SOCKETS";
    /// mmap-able `ARRAY` of [`super::SlotLoad`], one per slot.
    pub const LOADS: &str = "LOADS";
    /// `ARRAY` with one [`super::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// `PERCPU_ARRAY` of u64: selections per slot.
    pub const SELECTED: &str = "SELECTED";
    /// `PERCPU_ARRAY` of u64: one counter per [`super::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// `PERCPU_ARRAY` with one u32: the round-robin position of each CPU.
    pub const RR_TICK: &str = "RR_TICK";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// `sk_reuseport`: picks a socket for each new connection.
    pub const SELECT: &str = "select";
    /// `sk_reuseport/migrate`: the same, and also places connections of a closing listener.
    pub const SELECT_OR_MIGRATE: &str = "select_or_migrate";
}

/// Load record of one slot, shared by the program (atomic add to `assigned`), the worker shim
/// (atomic adds to `accepted` and `completed`) and the controller (everything else).
///
/// Each counter has one kind of writer, so nobody needs a lock:
/// in flight = `assigned - completed - adjust`. One record per cache line, so that workers on
/// different CPUs do not share lines.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotLoad {
    /// Connections the program sent to this slot (and migrations into it).
    pub assigned: u64,
    /// Connections the worker accepted (shim).
    pub accepted: u64,
    /// Connections the worker closed (shim).
    pub completed: u64,
    /// Relative capacity of the worker; 0 is treated as 1.
    pub weight: u32,
    /// Process that owns the slot, 0 if none.
    pub pid: u32,
    /// Bumped each time the slot is given to a new owner.
    pub epoch: u64,
    /// The controller's reconciliation correction (two's complement: may be "negative"):
    /// assignments that will never complete, such as handshakes that were never finished.
    pub adjust: u64,
    pub _reserved: [u64; 2],
}

/// Byte offsets inside [`SlotLoad`], for code that works on the shared mapping with atomics.
pub mod slot_offsets {
    use super::SlotLoad;
    use core::mem::offset_of;
    pub const ASSIGNED: usize = offset_of!(SlotLoad, assigned);
    pub const ACCEPTED: usize = offset_of!(SlotLoad, accepted);
    pub const COMPLETED: usize = offset_of!(SlotLoad, completed);
    pub const WEIGHT: usize = offset_of!(SlotLoad, weight);
    pub const PID: usize = offset_of!(SlotLoad, pid);
    pub const EPOCH: usize = offset_of!(SlotLoad, epoch);
    pub const ADJUST: usize = offset_of!(SlotLoad, adjust);
}

/// Size of the mmap of the load array: the kernel lays array values out back to back.
pub const LOADS_MMAP_LEN: usize = MAX_SLOTS as usize * core::mem::size_of::<SlotLoad>();

impl SlotLoad {
    /// Connections assigned and not yet completed. Completions can briefly run ahead of
    /// assignments (a reconciliation racing an assignment): that reads as 0, never as a huge number.
    #[inline(always)]
    pub fn inflight_of(assigned: u64, completed: u64, adjust: u64) -> u64 {
        let diff = assigned.wrapping_sub(completed).wrapping_sub(adjust) as i64;
        if diff < 0 {
            0
        } else {
            diff as u64
        }
    }

    pub fn inflight(&self) -> u64 {
        Self::inflight_of(self.assigned, self.completed, self.adjust)
    }
}

/// The group's configuration record (the only entry of the `CONFIG` map).
///
/// The controller rewrites it whole; the program may see a half-written record, and every
/// outcome of that is safe: a stale slot either still has its socket or fails the selection,
/// which falls back to the kernel's hash.
#[repr(C)]
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
    /// Dense list of the slots that take new connections.
    pub active: [u32; MAX_SLOTS as usize],
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// Log every selection through aya-log. Costs far more than the selection: debugging only.
    pub const LOG_SELECTIONS: u32 = 1;
}

impl Config {
    pub const fn empty(policy: u32) -> Self {
        Self { policy, n_active: 0, generation: 0, flags: 0, active: [NO_SLOT; MAX_SLOTS as usize] }
    }

    /// The active slots, as a slice (clamped to the array, whatever `n_active` says).
    pub fn active_slots(&self) -> &[u32] {
        let n = (self.n_active as usize).min(self.active.len());
        &self.active[..n]
    }
}

/// Counted events, one per-CPU counter each in the `EVENTS` map.
///
/// Every fallback has its own reason, so an operator can tell why the kernel's hash was used.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The config record could not be read.
    FallbackNoConfig = 0,
    /// No active slot.
    FallbackNoActive = 1,
    /// The config record is out of range (unknown policy, too many slots).
    FallbackBadConfig = 2,
    /// The chosen slots had no socket (worker gone, slot emptied).
    FallbackSelectFailed = 3,
    /// A connection of a closing listener was moved to another worker.
    MigrateSelected = 4,
    /// A connection of a closing listener was left to the kernel's hash.
    MigrateFallback = 5,
}

impl Event {
    pub const COUNT: u32 = 6;
    pub const ALL: [Event; Self::COUNT as usize] = [
        Event::FallbackNoConfig,
        Event::FallbackNoActive,
        Event::FallbackBadConfig,
        Event::FallbackSelectFailed,
        Event::MigrateSelected,
        Event::MigrateFallback,
    ];

    /// Short name for metrics labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Event::FallbackNoConfig => "no_config",
            Event::FallbackNoActive => "no_active_slot",
            Event::FallbackBadConfig => "bad_config",
            Event::FallbackSelectFailed => "select_failed",
            Event::MigrateSelected => "migrated",
            Event::MigrateFallback => "migrate_fallback",
        }
    }

    pub const fn is_fallback(self) -> bool {
        (self as u32) <= Event::FallbackSelectFailed as u32
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, repr(C), no implicit padding (explicit reserved fields).
    unsafe impl aya::Pod for super::SlotLoad {}
    unsafe impl aya::Pod for super::Config {}
}

const _: () = assert!(core::mem::size_of::<SlotLoad>() == 64);
const _: () = assert!(core::mem::size_of::<Config>() == 16 + 4 * MAX_SLOTS as usize);
