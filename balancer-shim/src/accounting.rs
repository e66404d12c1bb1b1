//! Accounting: `accept` on a registered own socket marks the new descriptor and adds 1 to the
//! slot's `accepted`; closing a marked descriptor adds 1 to `completed` and takes 1 off
//! `inflight`. Plain atomic adds on the shared load table, no system call.

use core::{ffi::c_int, sync::atomic::Ordering};

use balancer_common::table_offsets;

use crate::state::{entry, my_pid, CONNS, FDS, MAX_FDS, REGS, ST_NOT_BALANCED, ST_SPLIT};

/// `accept` on `listener` returned `conn`.
#[inline(always)]
pub(crate) fn on_accepted(listener: c_int, conn: c_int) {
    if conn < 0 || conn as usize >= MAX_FDS {
        return;
    }
    let pid = my_pid();
    // A descriptor number that comes back from accept is a fresh connection.
    forget_fd(conn);
    FDS[conn as usize].store(entry(pid, ST_NOT_BALANCED, 0), Ordering::Relaxed);
    if listener < 0 || listener as usize >= MAX_FDS {
        return;
    }
    let e = FDS[listener as usize].load(Ordering::Relaxed);
    if (e >> 32) as u32 != pid || (e >> 8) & 0xff != ST_SPLIT {
        return;
    }
    let idx = (e & 0xff) as usize;
    let Some(reg) = REGS.get(idx) else { return };
    if let Some((seq, c)) = reg.counter(None, table_offsets::accepted) {
        c.fetch_add(1, Ordering::Relaxed);
        CONNS[conn as usize].store((seq << 8) | (idx as u32 + 1), Ordering::Relaxed);
    }
}

/// `fd` is being closed or replaced: clear what we know of it, count a completion if it was an
/// accepted connection of a registered socket.
#[inline(always)]
pub(crate) fn forget_fd(fd: c_int) {
    if fd < 0 || fd as usize >= MAX_FDS {
        return;
    }
    let i = fd as usize;
    if FDS[i].load(Ordering::Relaxed) != 0 {
        FDS[i].store(0, Ordering::Relaxed);
    }
    if CONNS[i].load(Ordering::Relaxed) != 0 {
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
            }
        }
    }
}
