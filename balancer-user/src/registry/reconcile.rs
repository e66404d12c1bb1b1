//! Reconciliation: keeping each slot's "in flight" figure honest, and the program attached.
//!
//! Every tick, for each registered worker, the slot's in-flight counter is compared with what
//! the kernel and the worker say: connections waiting in the accept queue of the worker's socket
//! (TCP_INFO) plus connections the worker accepted and has not closed (its shim's `accepted` -
//! `completed`). When both disagree twice in a row in the same direction, the smaller of the two
//! disagreements is taken back. Handshakes that never complete, connections reset before they
//! were accepted, and anything else that would leave `assigned` ahead of reality are taken back
//! within a second.
//!
//! Invariants: every figure a worker writes is untrusted; the arithmetic on them saturates
//! ([`correction`]), so no value a worker can write panics, wraps or moves a slot by more than
//! the disagreement. The program is attached again at every tick (idempotent), so that a holder
//! of a group's socket who detaches or replaces it (`SO_DETACH_REUSEPORT_BPF`,
//! `SO_ATTACH_REUSEPORT_EBPF`) undoes that for at most one tick. This module owns no state: the
//! workers' memory of the last tick lives with them ([`super::workers::Worker`]).
use std::{os::fd::AsFd, sync::atomic::Ordering};

use balancer_common::broken::Broken;

use super::{
    counters::Counters,
    services::Services,
    workers::{Key, Workers},
};
use crate::{broken, sys};

/// The correction to apply to a slot's in-flight counter, given its raw counter (`current`), the
/// worker's `accepted` and `completed` counters, the accept queue, and the disagreement seen at
/// the previous tick. Returns the delta to add (if any) and the disagreement to remember.
pub(super) fn correction(
    current: i64,
    accepted: u64,
    completed: u64,
    queued: u32,
    prev_diff: i64,
) -> (Option<i64>, i64) {
    let open = i64::try_from(accepted.saturating_sub(completed)).unwrap_or(i64::MAX);
    let target = open.saturating_add(i64::from(queued));
    let diff = current.saturating_sub(target);
    if diff != 0 && prev_diff != 0 && diff.signum() == prev_diff.signum() {
        let smaller = if diff.unsigned_abs() < prev_diff.unsigned_abs() { diff } else { prev_diff };
        (Some(smaller.saturating_neg()), 0)
    } else {
        (None, diff)
    }
}

/// True if the thread group leader of `pid` has exited (the process lives on in other threads).
fn leader_exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|c| c == 'Z' || c == 'X')
}

/// A worker that stopped accepting and whose main thread exited: its slot is to be freed and
/// its socket retired (its queue moves to the others).
pub(super) struct Stalled {
    pub key: Key,
    pub pid: u32,
    /// Connections waiting in its queue.
    pub queued: u32,
}

/// Brings each slot's in-flight figure back to what the kernel and the worker say, and attaches
/// each group's program again. Returns the workers to retire (the caller frees their slots).
pub(super) fn reconcile(
    services: &Services,
    counters: &Counters,
    workers: &mut Workers,
) -> Vec<Stalled> {
    let mut retire = Vec::new();
    let mut attached = std::collections::HashSet::new();
    for ((svc, slot), w) in workers.iter_mut() {
        let Some(service) = services.get(svc) else { continue };
        let group = service.group();
        if attached.insert(svc) {
            if let Err(e) = group.attach(&w.listener) {
                counters.reattach_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!("{}: attaching the program again: {e}", service.describe());
            }
        }
        let loads = group.loads();
        let Ok(queued) = sys::accept_queue_len(w.listener.as_fd()) else { continue };
        let rec = loads.read(slot);
        // A worker whose main thread is gone is on its way out and, if it stopped accepting,
        // may hang there a long time (uWSGI 2.0.21 threads with max-requests wait for their
        // worker-reload-mercy): its queue must not wait for it.
        let stalled = rec.accepted == w.last_accepted;
        w.last_accepted = rec.accepted;
        if stalled && leader_exited(w.pid) {
            retire.push(Stalled { key: (svc, slot), pid: w.pid, queued });
            continue;
        }
        let (delta, diff) =
            correction(rec.raw_inflight, rec.accepted, rec.completed, queued, w.prev_diff);
        // `cargo xtask prove` only: a controller that never corrects a count.
        let delta = delta.filter(|_| !broken::is(Broken::NoReconcile));
        w.prev_diff = diff;
        if let Some(delta) = delta {
            loads.add_inflight(slot, delta);
            loads.mark_progress(slot);
            counters.adjustments.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "slot {slot}: in flight {}, kernel and worker disagree: adjust by {delta}",
                rec.raw_inflight
            );
        }
        // The fast path's hint, from the counts as they are now (never, in the proof's
        // build that breaks it).
        if !broken::is(Broken::NoIdleRefresh) {
            loads.refresh_idle(slot);
        }
    }
    retire
}

#[cfg(test)]
mod tests {
    use super::correction;

    #[test]
    fn agreement_changes_nothing() {
        assert_eq!(correction(5, 10, 7, 2, 0), (None, 0));
    }

    #[test]
    fn two_disagreements_in_a_row_take_back_the_smaller() {
        let (d, prev) = correction(8, 10, 7, 2, 0);
        assert_eq!((d, prev), (None, 3));
        assert_eq!(correction(7, 10, 7, 2, prev), (Some(-2), 0));
        let (d, prev) = correction(-4, 1, 1, 0, 0);
        assert_eq!((d, prev), (None, -4));
        assert_eq!(correction(-4, 1, 1, 0, prev), (Some(4), 0));
    }

    #[test]
    fn hostile_values_saturate() {
        let extremes_u = [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX];
        let extremes_i = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
        for &current in &extremes_i {
            for &accepted in &extremes_u {
                for &completed in &extremes_u {
                    for &queued in &[0, 1, u32::MAX] {
                        for &prev in &extremes_i {
                            // Must not panic (this test runs with overflow checks in debug).
                            let (delta, diff) =
                                correction(current, accepted, completed, queued, prev);
                            if let Some(d) = delta {
                                assert_eq!(diff, 0);
                                assert_ne!(d, 0);
                                // Never more than the disagreement seen now.
                                assert!(d.unsigned_abs() <= prev.unsigned_abs());
                            }
                        }
                    }
                }
            }
        }
        // Completed ahead of accepted (a worker writing nonsense): nothing open, not a wrap.
        assert_eq!(correction(0, 1, u64::MAX, 0, 0), (None, 0));
        // The largest in-flight against nothing open: one correction of the full amount.
        assert_eq!(correction(i64::MAX, 0, 0, 0, i64::MAX), (Some(-i64::MAX), 0));
        assert_eq!(correction(i64::MIN, 0, 0, 0, i64::MIN), (Some(i64::MAX), 0));
    }
}
