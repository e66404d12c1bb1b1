//! Accounting: `accept` on a registered own socket marks the new descriptor and adds 1 to the
//! slot's `accepted`; closing a marked descriptor adds 1 to `completed`, takes 1 off `inflight`
//! and stores the time in `progress` (the program's blocked check reads it). Plain atomic adds
//! and stores on the shared load table; the clock is the vDSO's CLOCK_MONOTONIC, and the only
//! system call is the pid check that keeps a vfork child's `close` away from the parent's marks.

use core::{ffi::c_int, sync::atomic::Ordering};

use balancer_common::table_offsets;

use crate::{
    config::config,
    split::listener_closed,
    state::{
        entry, in_vfork_child, is_listener_state, my_pid, state_of, CONNS, FDS, MAX_FDS, REGS,
        ST_DUP_OWN, ST_NOT_BALANCED, ST_SPLIT,
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
    if cfg!(feature = "broken-no-count") {
        return; // `cargo xtask prove` only: nothing accepted or completed is counted.
    }
    let Some(reg) = REGS.get(idx) else { return };
    if let Some((seq, c)) = reg.counter(None, table_offsets::accepted) {
        c.fetch_add(1, Ordering::Relaxed);
        CONNS[conn as usize].store((seq << 8) | (idx as u32 + 1), Ordering::Relaxed);
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
        let m = CONNS[i].swap(0, Ordering::Relaxed);
        if m != 0 {
            let idx = ((m & 0xff) as usize).wrapping_sub(1);
            if let Some(reg) = REGS.get(idx) {
                // Only count if the registration that counted the accept is still the current one.
                let seq = Some(m >> 8);
                if let Some((_, c)) = reg.counter(seq, table_offsets::completed) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if let Some((_, c)) = reg.counter(seq, table_offsets::inflight) {
                    c.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some((_, c)) = reg.counter(seq, table_offsets::progress) {
                    c.store(monotonic_ns(), Ordering::Relaxed);
                }
            }
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
