//! The registry's counters, readable while it runs (metrics, `/status`, tests).
//!
//! Owns nothing but atomics: every part of the loop counts here, anyone reads. Invariant: a reply
//! is counted once, by the one place that sends replies (the loop's `answer`).
use std::sync::atomic::{AtomicU64, Ordering};

use balancer_common::protocol::Status;

/// Counters of the registry, readable while it runs.
#[derive(Default)]
pub struct Counters {
    /// Replies sent, per [`Status`] (indexed by its id): `Ok` counts registrations.
    replies: [AtomicU64; Status::ALL.len()],
    /// Workers whose slot was freed (exit, or connection closed).
    pub departures: AtomicU64,
    /// Corrections applied by reconciliation.
    pub adjustments: AtomicU64,
    /// Unregistered connections closed: over a cap, or not registered in time.
    pub pending_closed: AtomicU64,
    /// Times accepting stopped for a while because descriptors (or memory) ran out.
    pub accept_backoffs: AtomicU64,
    /// Times the registry stopped accepting and reading registrations because the closer held
    /// its budget of descriptors (closes stalled).
    pub reading_stops: AtomicU64,
    /// Registered workers evicted because their uid was removed from the allowed uids.
    pub evictions: AtomicU64,
    /// Weights asked above [`super::MAX_ASKED_WEIGHT`] (and lowered to it).
    pub weights_capped: AtomicU64,
    /// Parked last sockets closed after `park_timeout` with no worker registering.
    pub parked_expired: AtomicU64,
    /// Descriptors handed to the closing thread and not closed yet (a gauge).
    pub closing_backlog: AtomicU64,
    /// Program attachments renewed by reconciliation that failed (logged).
    pub reattach_failures: AtomicU64,
}

impl Counters {
    /// Replies sent with `status` (`Status::Ok`: successful registrations).
    pub fn replies(&self, status: Status) -> u64 {
        self.replies[status as usize].load(Ordering::Relaxed)
    }

    /// Rejections per reason, every reason listed (zeros included).
    pub fn rejections(&self) -> Vec<(Status, u64)> {
        Status::ALL.iter().filter(|s| **s != Status::Ok).map(|&s| (s, self.replies(s))).collect()
    }

    pub(super) fn count_reply(&self, status: Status) {
        self.replies[status as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one to `counter` (one of the public fields above).
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
