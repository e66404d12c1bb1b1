//! The load table as shared memory.
//!
//! The `LOADS` map is created mmap-able, so the controller (here) and the worker shims read and
//! update it directly, with atomics and no system call. The program updates the same memory with
//! BPF atomic adds.
use std::{
    os::fd::BorrowedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
};

use balancer_common::{table_offsets, LoadTable, LOADS_MMAP_LEN, MAX_SLOTS};

use crate::error::{Error, Result};

/// A mapping of the whole load table.
pub struct SharedLoads {
    base: NonNull<u8>,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for SharedLoads {}
// SAFETY: as above: every access is atomic, so shared references across threads are sound.
unsafe impl Sync for SharedLoads {}

/// One slot's figures, each read atomically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Connections in flight, clamped at 0.
    pub inflight: u64,
    /// The raw signed counter (negative while completions run ahead of a correction).
    pub raw_inflight: i64,
    pub weight: u32,
    pub accepted: u64,
    pub completed: u64,
    /// Sum of the completed requests' times from accept to answer, in microseconds.
    pub answer_us: u64,
    pub epoch: u64,
    pub pid: u32,
    /// The work figures (see [`LoadTable`]): requests being worked on (raw, signed) and the sum
    /// of their start times, in microseconds; the recent response time (speed-aware's) and when
    /// it was set (at the slot's last answer).
    pub working: i64,
    pub start_sum_us: u64,
    pub recent_us: u64,
    pub recent_at_us: u64,
}

impl SharedLoads {
    /// Maps the load table behind `map_fd` read-write.
    pub fn map(map_fd: BorrowedFd<'_>) -> Result<Self> {
        let base =
            crate::sys::map_shared(map_fd, LOADS_MMAP_LEN).map_err(|e| Error::Mmap(e.source))?;
        Ok(Self { base })
    }

    fn u64_at(&self, slot: u32, offset: fn(usize) -> usize) -> &AtomicU64 {
        assert!(slot < MAX_SLOTS, "slot {slot} out of range");
        // SAFETY: in bounds of the mapping, 8-aligned (the table is 64-aligned and these fields
        // are u64), and only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset(slot as usize)).cast()) }
    }

    fn u32_at(&self, slot: u32, offset: fn(usize) -> usize) -> &AtomicU32 {
        assert!(slot < MAX_SLOTS, "slot {slot} out of range");
        // SAFETY: as above, for 4-aligned u32 fields.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset(slot as usize)).cast()) }
    }

    pub fn read(&self, slot: u32) -> SlotSnapshot {
        let raw = self.u64_at(slot, table_offsets::inflight).load(Ordering::Relaxed);
        SlotSnapshot {
            inflight: LoadTable::inflight_of(raw),
            raw_inflight: raw as i64,
            weight: self.u32_at(slot, table_offsets::weight).load(Ordering::Relaxed),
            accepted: self.u64_at(slot, table_offsets::accepted).load(Ordering::Relaxed),
            completed: self.u64_at(slot, table_offsets::completed).load(Ordering::Relaxed),
            answer_us: self.u64_at(slot, table_offsets::answer_us).load(Ordering::Relaxed),
            epoch: self.u64_at(slot, table_offsets::epoch).load(Ordering::Relaxed),
            pid: self.u32_at(slot, table_offsets::pid).load(Ordering::Relaxed),
            working: self.u64_at(slot, table_offsets::working).load(Ordering::Relaxed) as i64,
            start_sum_us: self.u64_at(slot, table_offsets::start_sum_us).load(Ordering::Relaxed),
            recent_us: self.u64_at(slot, table_offsets::recent_us).load(Ordering::Relaxed),
            recent_at_us: self.u64_at(slot, table_offsets::recent_at_us).load(Ordering::Relaxed),
        }
    }

    /// The group's mean service time in microseconds, as the shims keep it (0 before the first
    /// answer).
    pub fn group_mean_us(&self) -> u64 {
        self.u64_at(0, table_offsets::group_mean_us).load(Ordering::Relaxed)
    }

    /// Sets the group's mean service time (tests standing for workers).
    pub fn set_group_mean_us(&self, mean_us: u64) {
        self.u64_at(0, table_offsets::group_mean_us).store(mean_us, Ordering::Relaxed);
    }

    /// Gives the slot to a new owner: counters to zero, then weight, pid, and its new `epoch`
    /// (the controller's, from the slot's owner record: never derived from this table, which
    /// workers can write).
    pub fn reset(&self, slot: u32, pid: u32, weight: u32, epoch: u64) {
        for field in [
            table_offsets::inflight,
            table_offsets::accepted,
            table_offsets::completed,
            table_offsets::answer_us,
            table_offsets::working,
            table_offsets::start_sum_us,
            table_offsets::recent_us,
            table_offsets::recent_at_us,
        ] {
            self.u64_at(slot, field).store(0, Ordering::Relaxed);
        }
        self.mark_progress(slot);
        self.set_weight(slot, weight);
        self.set_owner(slot, pid, epoch);
        self.set_idle(slot, true);
    }

    fn idle_byte(&self, slot: u32) -> &AtomicU8 {
        assert!(slot < MAX_SLOTS, "slot {slot} out of range");
        // SAFETY: in bounds of the mapping (one byte of `idle`), only ever accessed atomically.
        unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(table_offsets::idle(slot as usize))) }
    }

    /// The slot's idle byte ([`LoadTable::idle`]): the fast path's hint.
    pub fn idle(&self, slot: u32) -> bool {
        self.idle_byte(slot).load(Ordering::Relaxed) != 0
    }

    /// Sets or clears the slot's idle byte (tests standing for workers or for the program).
    pub fn set_idle(&self, slot: u32, idle: bool) {
        self.idle_byte(slot).store(idle as u8, Ordering::Relaxed);
    }

    /// Recomputes the slot's idle byte from its counts (the reconciliation, each tick): set when
    /// nothing is in flight or being worked on. Races with the shim and the program leave it
    /// stale either way, which the program's check of the counts absorbs.
    pub fn refresh_idle(&self, slot: u32) {
        let rec = self.read(slot);
        self.set_idle(slot, rec.raw_inflight <= 0 && rec.working <= 0);
    }

    /// Records that the slot made progress now (CLOCK_MONOTONIC, as the program and the shim
    /// read it): a new owner, or a corrected count, starts the blocked clock again.
    pub fn mark_progress(&self, slot: u32) {
        self.u64_at(slot, table_offsets::progress).store(monotonic_ns(), Ordering::Relaxed);
    }

    /// When the slot last made progress (CLOCK_MONOTONIC ns).
    pub fn progress(&self, slot: u32) -> u64 {
        self.u64_at(slot, table_offsets::progress).load(Ordering::Relaxed)
    }

    /// Writes the slot's owner pid and epoch as the controller recorded them (undoing whatever a
    /// worker may have written there): the shim counts into a slot only while its epoch is the
    /// one it was given.
    pub fn set_owner(&self, slot: u32, pid: u32, epoch: u64) {
        self.u32_at(slot, table_offsets::pid).store(pid, Ordering::Relaxed);
        self.u64_at(slot, table_offsets::epoch).store(epoch, Ordering::Release);
    }

    pub fn set_weight(&self, slot: u32, weight: u32) {
        self.u32_at(slot, table_offsets::weight).store(weight.max(1), Ordering::Relaxed);
    }

    /// Adds `delta` to the slot's in-flight count: the controller's reconciliation, and tests
    /// standing for connections in flight.
    pub fn add_inflight(&self, slot: u32, delta: i64) {
        self.u64_at(slot, table_offsets::inflight).fetch_add(delta as u64, Ordering::Relaxed);
    }

    /// Writes the slot's work figures as a worker's shim would: `working` requests started at
    /// `started_us` in total (CLOCK_MONOTONIC microseconds) (tests standing for workers; the
    /// `work-left` policy reads them).
    pub fn set_work(&self, slot: u32, working: u64, started_us: u64) {
        self.u64_at(slot, table_offsets::start_sum_us).store(started_us, Ordering::Relaxed);
        self.u64_at(slot, table_offsets::working).store(working, Ordering::Relaxed);
    }

    /// Writes the slot's recent response time as a worker's shim would: `recent_us`, set at
    /// `at_us` (CLOCK_MONOTONIC microseconds) (tests standing for workers).
    pub fn set_recent(&self, slot: u32, recent_us: u64, at_us: u64) {
        self.u64_at(slot, table_offsets::recent_us).store(recent_us, Ordering::Relaxed);
        self.u64_at(slot, table_offsets::recent_at_us).store(at_us, Ordering::Relaxed);
    }

    /// CLOCK_MONOTONIC now, in microseconds: the clock of the work figures.
    pub fn now_us() -> u64 {
        monotonic_ns() / 1000
    }

    /// Counts `n` connections accepted by the worker, as its shim does.
    pub fn add_accepted(&self, slot: u32, n: u64) {
        self.u64_at(slot, table_offsets::accepted).fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` connections answered by the worker, as its shim does: no longer in flight,
    /// and the slot idle (its [`LoadTable::idle`] byte set) if that took its count to 0.
    pub fn add_completed(&self, slot: u32, n: u64) {
        self.add_completed_in(slot, n, 0);
    }

    /// [`SharedLoads::add_completed`], the `n` answers having taken `answer_us` microseconds in
    /// all (from accept to answer), as the shim adds them up.
    pub fn add_completed_in(&self, slot: u32, n: u64, answer_us: u64) {
        self.u64_at(slot, table_offsets::answer_us).fetch_add(answer_us, Ordering::Relaxed);
        self.u64_at(slot, table_offsets::completed).fetch_add(n, Ordering::Relaxed);
        let before =
            self.u64_at(slot, table_offsets::inflight).fetch_sub(n, Ordering::Relaxed) as i64;
        if before <= n as i64 {
            self.set_idle(slot, true);
        }
    }
}

impl Drop for SharedLoads {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no reference outlives self.
        if let Err(e) = unsafe { crate::sys::unmap(self.base, LOADS_MMAP_LEN) } {
            log::warn!("unmapping the load table: {e}");
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the program (`bpf_ktime_get_ns`) and of the shims.
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
