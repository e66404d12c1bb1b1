//! Accounting: `accept` on a registered own socket marks the new descriptor and adds 1 to the
//! slot's `accepted`. The connection is *done* at its first answer: the first write on a marked
//! descriptor (or its close, if it closes unanswered) adds 1 to `completed`, takes 1 off
//! `inflight` and stores the time in `progress` (the program's blocked check reads it). A read
//! that returns data on an answered connection (the next request of a kept-alive connection)
//! starts it again: 1 more `accepted` and `inflight`.
//!
//! Why the answer and not the close: an app server closes a connection well after it answered
//! (uWSGI takes the GIL back to clean up first, which takes as long as another thread holds it:
//! 6 to 90 ms measured under a skewed load), while the client (nginx) has the whole answer at
//! once and its next connection is being placed. Counted until the close, a worker that just
//! answered still looks busy to that placement, and least-loaded degrades to a coin toss between
//! workers that look equally loaded. nginx `least_conn` counts the same way: until the answer.
//!
//! For the `work-left` policy the shim also keeps, per slot, the requests it is working on
//! (`working`) and the sum of their start times (`start_sum_us`), and for the whole group the
//! mean time from accept to answer (`group.mean_us`); a connection's start sits in [`STARTS`]
//! until its answer. For `speed-aware` it keeps the slot's recent response time (`recent_us`,
//! set at `recent_at_us`): see [`work_done`].
//!
//! An answer that takes the slot's `inflight` to 0 sets its `idle` byte (the program's fast
//! path looks for one; it clears the byte when it gives the slot a connection), and a kept-alive
//! connection's next request clears it again.
//!
//! So `inflight` counts requests being worked on (queued, or accepted and not yet answered), and
//! the reconciliation's invariant stays `inflight = queued + accepted - completed`. Plain atomic
//! adds and stores on the shared load table; the clock is the vDSO's CLOCK_MONOTONIC, and the
//! only system call is the pid check that keeps a vfork child away from the parent's marks, made
//! once per request.

use core::{
    ffi::c_int,
    sync::atomic::{AtomicU64, Ordering},
};

use balancer_common::{broken::Broken, recent_next, recent_now, table_offsets};

use crate::{
    config::{config, is_broken},
    process::{in_vfork_child, my_pid},
    split::listener_closed,
    state::{
        entry, is_listener_state, state_of, SlotRef, CONNS, FDS, MAX_FDS, REGS, ST_DUP_OWN,
        ST_NOT_BALANCED, ST_SPLIT,
    },
};

/// `accept` on `listener` returned `conn`.
#[inline(always)]
pub(crate) fn on_accepted(listener: c_int, conn: c_int) {
    if conn < 0 || conn as usize >= MAX_FDS {
        return;
    }
    let pid = my_pid();
    // A descriptor number that comes back from accept is a fresh connection. (No pid check on
    // this path: a vfork child only closes, duplicates and execs; it never accepts.)
    forget_fd(conn, false);
    FDS[conn as usize].store(entry(pid, ST_NOT_BALANCED, 0), Ordering::Relaxed);
    if listener < 0 || listener as usize >= MAX_FDS {
        return;
    }
    let e = FDS[listener as usize].load(Ordering::Relaxed);
    if (e >> 32) as u32 != pid || !matches!(state_of(e), ST_SPLIT | ST_DUP_OWN) {
        return;
    }
    let idx = (e & 0xff) as usize;
    if is_broken(Broken::NoCount) {
        return; // `cargo xtask prove` only: nothing accepted or completed is counted.
    }
    let Some(reg) = REGS.get(idx) else { return };
    if let Some((seq, slot)) = reg.slot(None) {
        let m = (seq << 8) | (idx as u32 + 1);
        work_started(slot, conn);
        slot.field(table_offsets::accepted).fetch_add(1, Ordering::Relaxed);
        CONNS[conn as usize].store(m, Ordering::Relaxed);
    }
}

/// When each marked connection's current request started (CLOCK_MONOTONIC, microseconds).
static STARTS: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];

/// A request starts on `fd` now, in `slot`: its start goes into the slot's `start_sum_us`
/// before it counts in `working` (so a reader in between sees less age, never more).
#[inline(always)]
fn work_started(slot: SlotRef, fd: c_int) {
    let now = monotonic_ns() / 1000;
    STARTS[fd as usize].store(now, Ordering::Relaxed);
    slot.field(table_offsets::start_sum_us).fetch_add(now, Ordering::Relaxed);
    slot.field(table_offsets::working).fetch_add(1, Ordering::Relaxed);
}

/// The request that started at `start` (microseconds) is done at `now_ns`, in `slot`: out of
/// `working` first, then its start out of `start_sum_us`; its time from accept to answer adds to
/// the slot's `answer_us` (what `reuselb status` divides by `completed`), moves
/// the group's mean 1/16 of the way, and the slot's recent response time 1/8 of the way up to
/// it or half the way down (as decayed to now, [`recent_now`]; [`recent_next`]). The
/// read-modify-writes may lose a concurrent update of another worker (the mean) or thread (the
/// recent time): one figure.
#[inline(always)]
fn work_done(slot: SlotRef, start: u64, now_ns: u64) {
    slot.field(table_offsets::working).fetch_sub(1, Ordering::Relaxed);
    slot.field(table_offsets::start_sum_us).fetch_sub(start, Ordering::Relaxed);
    let mean = slot.field(table_offsets::group_mean_us);
    let now_us = now_ns / 1000;
    let took = now_us.saturating_sub(start);
    slot.field(table_offsets::answer_us).fetch_add(took, Ordering::Relaxed);
    let old = mean.load(Ordering::Relaxed);
    let next = if old == 0 { took } else { old - old / 16 + took / 16 };
    mean.store(next.max(1), Ordering::Relaxed);
    let recent = slot.field(table_offsets::recent_us);
    let at = slot.field(table_offsets::recent_at_us);
    let then = at.load(Ordering::Relaxed);
    // The decayed recent time lies below 2^25 and `took` is clamped there: no overflow.
    let took = took.min(1 << 25);
    // The slot's first answer (nothing set yet) is its recent time.
    let pace = if then == 0 {
        took
    } else {
        recent_now(recent.load(Ordering::Relaxed), then, old, now_us)
    };
    recent.store(recent_next(pace, took), Ordering::Relaxed);
    at.store(now_us, Ordering::Relaxed);
}

/// Set in a connection's mark ([`CONNS`]) once it has answered: its request is done.
const ANSWERED: u32 = 1 << 31;

/// The app writes on `fd`: the first write on a marked connection that has not answered yet is
/// its answer, and the request is done. One load for any other descriptor.
#[inline(always)]
pub(crate) fn on_write(fd: c_int) {
    if fd < 0 || fd as usize >= MAX_FDS {
        return;
    }
    let slot = &CONNS[fd as usize];
    let m = slot.load(Ordering::Relaxed);
    if m == 0 || m & ANSWERED != 0 || in_vfork_child() || is_broken(Broken::NoAnswers) {
        return;
    }
    // Whoever flips the bit counts: a concurrent close or write on the same descriptor does not.
    if slot.compare_exchange(m, m | ANSWERED, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        request_done(m, fd);
    }
}

/// The app read `n` bytes from `fd`: data on a connection that has answered is the next request
/// of a kept-alive connection, which is in flight again. One load for any other descriptor.
#[inline(always)]
pub(crate) fn on_read(fd: c_int, n: isize) {
    if n <= 0 || fd < 0 || fd as usize >= MAX_FDS {
        return;
    }
    let slot = &CONNS[fd as usize];
    let m = slot.load(Ordering::Relaxed);
    if m & ANSWERED == 0 || in_vfork_child() {
        return;
    }
    if slot.compare_exchange(m, m & !ANSWERED, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        request_started(m & !ANSWERED, fd);
    }
}

/// The slot a mark `m` counts against, if the registration that counted the accept is still
/// the current one.
#[inline(always)]
fn mark_slot(m: u32) -> Option<SlotRef> {
    let idx = ((m & 0xff) as usize).wrapping_sub(1);
    let seq = Some((m & !ANSWERED) >> 8);
    REGS.get(idx)?.slot(seq).map(|(_, s)| s)
}

/// The request of mark `m` on `fd` is done: 1 more completed, 1 less in flight and working,
/// progress now.
#[inline(always)]
fn request_done(m: u32, fd: c_int) {
    let start = STARTS[fd as usize].swap(0, Ordering::Relaxed);
    let Some(slot) = mark_slot(m) else { return };
    let now = monotonic_ns();
    if start != 0 {
        work_done(slot, start, now);
    }
    slot.field(table_offsets::completed).fetch_add(1, Ordering::Relaxed);
    let before = slot.field(table_offsets::inflight).fetch_sub(1, Ordering::Relaxed);
    slot.field(table_offsets::progress).store(now, Ordering::Relaxed);
    if before as i64 <= 1 {
        // Nothing left in flight: the program's fast path may take this slot with no scan.
        slot.set_idle(true);
    }
}

/// The connection of mark `m` carries a new request: 1 more accepted and in flight; a slot that
/// had nothing in flight starts its blocked clock now, as the program does for a new connection.
#[inline(always)]
fn request_started(m: u32, fd: c_int) {
    let Some(slot) = mark_slot(m) else { return };
    work_started(slot, fd);
    slot.field(table_offsets::accepted).fetch_add(1, Ordering::Relaxed);
    if (slot.field(table_offsets::inflight).fetch_add(1, Ordering::Relaxed) as i64) <= 0 {
        slot.field(table_offsets::progress).store(monotonic_ns(), Ordering::Relaxed);
        slot.set_idle(false);
    }
}

/// `fd` is being closed or replaced (`closing`), or came back from `socket`/`accept` (a stale
/// entry): clear what we know of it, count a completion if it was an accepted connection of a
/// registered socket, and leave the group if the app closes its balanced listener (also while
/// another thread splits it: that thread sees the entry gone and gives the split up).
///
/// A vfork child runs this in its parent's memory: an entry that matters (a counted connection,
/// a balanced listener) is only touched after a pid check, so `close` stays one load for other
/// descriptors. Plain entries ("not balanced") are cleared either way: that only makes the parent
/// look at the descriptor again.
#[inline(always)]
pub(crate) fn forget_fd(fd: c_int, closing: bool) {
    if fd < 0 || fd as usize >= MAX_FDS {
        return;
    }
    let i = fd as usize;
    let e = FDS[i].load(Ordering::Relaxed);
    let m = CONNS[i].load(Ordering::Relaxed);
    if e == 0 && m == 0 {
        return;
    }
    let marked = m != 0 || is_listener_state(state_of(e));
    if marked && in_vfork_child() {
        return;
    }
    if e != 0 {
        FDS[i].store(0, Ordering::Relaxed);
        if closing
            && (e >> 32) as u32 == my_pid()
            && is_listener_state(state_of(e))
            && (e & 0xff) < config().n_addrs as u64
        {
            listener_closed(fd, (e & 0xff) as usize, state_of(e));
        }
    }
    if m != 0 {
        // Closed unanswered (a client that gave up, an error): done now.
        let m = CONNS[i].swap(0, Ordering::Relaxed);
        if m != 0 && m & ANSWERED == 0 {
            request_done(m, fd);
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, which the program compares with.
/// Served by the vDSO, with no system call.
#[inline(always)]
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the local it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
