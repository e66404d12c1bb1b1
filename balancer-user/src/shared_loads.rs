//! The load array as shared memory.
//!
//! The `LOADS` map is created mmap-able, so the controller (here) and the worker shims read and
//! update the per-slot records directly, with atomics and no system call. The program updates the
//! same memory with BPF atomic adds.
use std::{
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use balancer_common::{slot_offsets, SlotLoad, LOADS_MMAP_LEN, MAX_SLOTS};

use crate::error::{Error, Result};

/// A mapping of the whole load array.
pub struct SharedLoads {
    base: NonNull<SlotLoad>,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for SharedLoads {}
unsafe impl Sync for SharedLoads {}

impl SharedLoads {
    /// Maps the load array behind `map_fd` read-write.
    pub fn map(map_fd: BorrowedFd<'_>) -> Result<Self> {
        // SAFETY: a fresh shared mapping of a file descriptor; the kernel checks the length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LOADS_MMAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map_fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self { base: NonNull::new(ptr.cast()).expect("mmap returned NULL without MAP_FAILED") })
    }

    fn field_u64(&self, slot: u32, offset: usize) -> &AtomicU64 {
        assert!(slot < MAX_SLOTS, "slot {slot} out of range");
        // SAFETY: in bounds of the mapping, 8-aligned (records are 64-aligned, offsets multiples
        // of 8), and only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(slot as usize).cast::<u8>().add(offset).cast()) }
    }

    fn field_u32(&self, slot: u32, offset: usize) -> &AtomicU32 {
        assert!(slot < MAX_SLOTS, "slot {slot} out of range");
        // SAFETY: as above, 4-aligned.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(slot as usize).cast::<u8>().add(offset).cast()) }
    }

    /// A consistent-enough copy of one record (each field read atomically).
    pub fn read(&self, slot: u32) -> SlotLoad {
        SlotLoad {
            assigned: self.field_u64(slot, slot_offsets::ASSIGNED).load(Ordering::Relaxed),
            accepted: self.field_u64(slot, slot_offsets::ACCEPTED).load(Ordering::Relaxed),
            completed: self.field_u64(slot, slot_offsets::COMPLETED).load(Ordering::Relaxed),
            weight: self.field_u32(slot, slot_offsets::WEIGHT).load(Ordering::Relaxed),
            pid: self.field_u32(slot, slot_offsets::PID).load(Ordering::Relaxed),
            epoch: self.field_u64(slot, slot_offsets::EPOCH).load(Ordering::Relaxed),
            adjust: self.field_u64(slot, slot_offsets::ADJUST).load(Ordering::Relaxed),
            _reserved: [0; 2],
        }
    }

    /// Gives the slot to a new owner: counters to zero, then weight, pid, and a new epoch.
    pub fn reset(&self, slot: u32, pid: u32, weight: u32) -> u64 {
        for off in [slot_offsets::ASSIGNED, slot_offsets::ACCEPTED, slot_offsets::COMPLETED, slot_offsets::ADJUST] {
            self.field_u64(slot, off).store(0, Ordering::Relaxed);
        }
        self.set_weight(slot, weight);
        self.field_u32(slot, slot_offsets::PID).store(pid, Ordering::Relaxed);
        self.field_u64(slot, slot_offsets::EPOCH).fetch_add(1, Ordering::Release) + 1
    }

    pub fn set_weight(&self, slot: u32, weight: u32) {
        self.field_u32(slot, slot_offsets::WEIGHT).store(weight.max(1), Ordering::Relaxed);
    }

    /// Adds `delta` (wrapping: may be "negative") to the slot's reconciliation correction.
    pub fn add_adjust(&self, slot: u32, delta: i64) {
        self.field_u64(slot, slot_offsets::ADJUST).fetch_add(delta as u64, Ordering::Relaxed);
    }

    /// Adds to the slot's `completed` counter, as a worker does when it closes a connection.
    pub fn add_completed(&self, slot: u32, n: u64) {
        self.field_u64(slot, slot_offsets::COMPLETED).fetch_add(n, Ordering::Relaxed);
    }

    /// Adds to the slot's `assigned` counter (tests use this to stand for connections in flight).
    pub fn add_assigned(&self, slot: u32, n: u64) {
        self.field_u64(slot, slot_offsets::ASSIGNED).fetch_add(n, Ordering::Relaxed);
    }

    /// Adds to the slot's `accepted` counter, as a worker does on accept.
    pub fn add_accepted(&self, slot: u32, n: u64) {
        self.field_u64(slot, slot_offsets::ACCEPTED).fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for SharedLoads {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no reference outlives self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), LOADS_MMAP_LEN) };
    }
}
