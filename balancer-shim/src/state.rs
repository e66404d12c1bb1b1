//! Per-process state: what each descriptor is, the accounting marks of accepted connections, the
//! own socket and the registration of each balanced address.
//!
//! Invariants: everything is a fixed-size array of atomics (no allocation, no lock in a hook), and
//! every entry that describes a descriptor is tagged with the pid of the process that wrote it, so
//! that what fork copies is never mistaken for the child's own (the pid and the tagging are
//! [`crate::process`]'s).

use core::{
    ffi::c_int,
    ptr,
    sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering},
};

use balancer_common::table_offsets;

use crate::config::MAX_ADDRS;

/// Descriptors below this number are tracked (cached classification, connection marks).
pub(crate) const MAX_FDS: usize = 65536;

/// What a descriptor is, cached per fd: `pid << 32 | state << 8 | address index`. An entry whose
/// pid is not ours (copied by fork, or 0) means "unknown".
pub(crate) static FDS: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];

/// Not a listener of a balanced address.
pub(crate) const ST_NOT_BALANCED: u64 = 1;
/// A thread of this process is replacing it (others wait).
pub(crate) const ST_SPLITTING: u64 = 2;
/// This process's own, registered (or once registered) socket.
pub(crate) const ST_SPLIT: u64 = 3;
/// The inherited, shared listener, kept because no registration succeeded yet (fail-open).
pub(crate) const ST_SHARED: u64 = 4;
/// Another descriptor of this process's own socket (`dup`, `socket.fromfd`): counted like it,
/// never registered again, and closing it leaves the group only if it was the last one.
pub(crate) const ST_DUP_OWN: u64 = 5;
/// Another descriptor of the shared listener this process keeps ([`ST_SHARED`]).
pub(crate) const ST_DUP_SHARED: u64 = 6;

/// The states of a descriptor of this process's listener of a balanced address.
#[inline(always)]
pub(crate) fn is_listener_state(st: u64) -> bool {
    matches!(st, ST_SPLIT | ST_SHARED | ST_SPLITTING | ST_DUP_OWN | ST_DUP_SHARED)
}

#[inline(always)]
pub(crate) fn entry(pid: u32, state: u64, idx: usize) -> u64 {
    ((pid as u64) << 32) | (state << 8) | (idx as u64 & 0xff)
}

/// The state part of an [`FDS`] entry.
#[inline(always)]
pub(crate) fn state_of(e: u64) -> u64 {
    (e >> 8) & 0xff
}

/// Accepted connections of a registered own socket: `seq << 8 | (address index + 1)`, 0 if none;
/// bit 31 is set once the connection has answered (see `accounting`).
pub(crate) static CONNS: [AtomicU32; MAX_FDS] = [const { AtomicU32::new(0) }; MAX_FDS];

/// Backlog seen in `listen` per balanced address (survives fork, on purpose).
pub(crate) static BACKLOG: [AtomicI32; MAX_ADDRS] = [const { AtomicI32::new(0) }; MAX_ADDRS];

/// Backlog of an own socket when the original's `listen` was not seen.
const DEFAULT_BACKLOG: c_int = 128;

/// The backlog an own socket of address `idx` gets: the one the app asked for in `listen`.
pub(crate) fn own_backlog(idx: usize) -> c_int {
    match BACKLOG[idx].load(Ordering::Relaxed) {
        b if b > 0 => b,
        _ => DEFAULT_BACKLOG,
    }
}

/// This process's own socket per balanced address: `pid << 32 | fd`, or 0.
pub(crate) static OWN_FD: [AtomicU64; MAX_ADDRS] = [const { AtomicU64::new(0) }; MAX_ADDRS];

/// SO_COOKIE of this process's own socket per address (0: unknown), written before [`OWN_FD`]:
/// the registration thread checks its private duplicate of [`OWN_FD`]'s number against it, so
/// that it never registers another descriptor the app put at that number.
pub(crate) static OWN_COOKIE: [AtomicU64; MAX_ADDRS] = [const { AtomicU64::new(0) }; MAX_ADDRS];

/// Where this process holds the inherited shared listener while it is not split ([`ST_SHARED`]):
/// `pid << 32 | fd` (the app's descriptor number), or 0.
pub(crate) static SHARED_FD: [AtomicU64; MAX_ADDRS] = [const { AtomicU64::new(0) }; MAX_ADDRS];

/// A private duplicate of the shared listener (high descriptor number, close-on-exec), owned by
/// the registration thread: it copies the listener's options from it and shuts it down after a
/// late registration, whatever the app does with its own descriptor meanwhile. `pid << 32 | fd`.
pub(crate) static SHARED_REF: [AtomicU64; MAX_ADDRS] = [const { AtomicU64::new(0) }; MAX_ADDRS];

/// A fresh own socket registered by the thread, waiting for a hook of this process to swap it in
/// over [`SHARED_FD`]: `pid << 32 | fd`, or 0.
pub(crate) static PENDING: [AtomicU64; MAX_ADDRS] = [const { AtomicU64::new(0) }; MAX_ADDRS];

/// pid of the process that has a [`PENDING`] socket: the hooks' fast check is one load.
pub(crate) static PENDING_PID: AtomicU32 = AtomicU32::new(0);

/// pid of the process that closed its listener of this address: it left the group and never
/// registers that address again.
pub(crate) static LEFT: [AtomicU32; MAX_ADDRS] = [const { AtomicU32::new(0) }; MAX_ADDRS];

/// Most epoll instances per address whose registration of the shared listener is remembered.
pub(crate) const MAX_EPOLLS: usize = 64;

/// One `epoll_ctl` ADD/MOD of a shared listener: `key` is `pid << 32 | epfd` (0: free).
pub(crate) struct EpollRec {
    pub key: AtomicU64,
    pub events: AtomicU32,
    pub data: AtomicU64,
}

/// The epoll instances each shared listener was added to, so that a late split can move the
/// registration to the own socket (delete before `dup3`, add after).
pub(crate) static EPOLLS: [[EpollRec; MAX_EPOLLS]; MAX_ADDRS] = [const {
    [const { EpollRec { key: AtomicU64::new(0), events: AtomicU32::new(0), data: AtomicU64::new(0) } };
        MAX_EPOLLS]
}; MAX_ADDRS];

/// Registration of one own socket. `state` is `seq << 1 | active`; the other fields are written
/// before `state` turns active (Release) and read after it is seen active (Acquire).
pub(crate) struct Registration {
    pub state: AtomicU32,
    pub base: AtomicPtr<u8>,
    pub slot: AtomicU32,
    pub epoch: AtomicU64,
    /// Kernel id of the load map (0: unknown), to tell a re-registration into the same slot of
    /// the same map (a restarted controller that adopted the pinned map) from a new one.
    pub map_id: AtomicU32,
}

pub(crate) static REGS: [Registration; MAX_ADDRS] = [const {
    Registration {
        state: AtomicU32::new(0),
        base: AtomicPtr::new(ptr::null_mut()),
        slot: AtomicU32::new(0),
        epoch: AtomicU64::new(0),
        map_id: AtomicU32::new(0),
    }
}; MAX_ADDRS];

/// pid of the process whose registration thread runs (0: none).
pub(crate) static THREAD_PID: AtomicU32 = AtomicU32::new(0);

impl Registration {
    /// Marks the registration inactive (new sequence number, so old marks stop counting).
    pub(crate) fn deactivate(&self) {
        let s = self.state.load(Ordering::Relaxed);
        self.state.store(((s >> 1).wrapping_add(1)) << 1, Ordering::Release);
    }

    /// Our slot of the load table, if registered and the slot is still ours, with the
    /// registration's sequence number (23 bits, as stored in connection marks, whose bit 31 says
    /// whether the connection answered); `want_seq` restricts to that registration. Checked once
    /// per event, however many of the slot's counters the event then changes.
    #[inline(always)]
    pub(crate) fn slot(&self, want_seq: Option<u32>) -> Option<(u32, SlotRef)> {
        let s = self.state.load(Ordering::Acquire);
        let seq = (s >> 1) & 0x7f_ffff;
        if s & 1 == 0 || want_seq.is_some_and(|w| w != seq) {
            return None;
        }
        let base = self.base.load(Ordering::Relaxed);
        if base.is_null() {
            return None;
        }
        let slot = self.slot.load(Ordering::Relaxed) as usize;
        if slot >= balancer_common::MAX_SLOTS as usize {
            return None;
        }
        let found = SlotRef { base, slot };
        if found.field(table_offsets::epoch).load(Ordering::Relaxed)
            != self.epoch.load(Ordering::Relaxed)
        {
            return None;
        }
        Some((seq, found))
    }
}

/// One slot of the mapped load table (a base that is never unmapped, a slot < MAX_SLOTS), as
/// [`Registration::slot`] found it.
#[derive(Clone, Copy)]
pub(crate) struct SlotRef {
    base: *mut u8,
    slot: usize,
}

impl SlotRef {
    /// The slot's counter at `field` (a [`table_offsets`] function).
    #[inline(always)]
    pub(crate) fn field(self, field: fn(usize) -> usize) -> &'static AtomicU64 {
        // SAFETY: the mapping covers the whole table (its size was checked before mmap) and is
        // never unmapped while the process lives; `slot` < MAX_SLOTS, and every field is 8-aligned
        // and only accessed atomically.
        unsafe { AtomicU64::from_ptr(self.base.add(field(self.slot)).cast()) }
    }

    /// The slot's idle byte ([`balancer_common::LoadTable::idle`]): the program's fast path
    /// looks for a set one.
    #[inline(always)]
    pub(crate) fn set_idle(self, idle: bool) {
        // SAFETY: as in `field`: inside the mapping, `slot` < MAX_SLOTS; a byte has no alignment
        // and is only accessed atomically.
        let byte = unsafe { AtomicU8::from_ptr(self.base.add(table_offsets::idle(self.slot))) };
        byte.store(idle as u8, Ordering::Relaxed);
    }
}
