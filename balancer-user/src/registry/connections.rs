//! The registration connections: one per worker (or would-be worker), keyed by an id that is
//! never reused, so that a stale event cannot reach a connection accepted later on the same
//! descriptor number.
//!
//! Owns each connection's descriptor, its peer uid, when it opened and its [`Stage`]. Invariants:
//! a connection carries one registration message: only a [`Stage::Pending`] one has a message
//! read as a registration ([`Connections::takes_message`]); one waiting for its pod group to be
//! made, or registered, has any further message ignored, so no second message can take a second
//! slot for it. The caps on unregistered connections count only [`Stage::Pending`] ones (and
//! only those are evicted to make room for a new one; out of descriptors, refused ones are
//! closed first): a registration waiting for its pod group passed every
//! check, and counts against its pod's limits instead (`max_workers_per_pod`), so a flood of
//! empty connections cannot push it out. The registration timeout applies to every connection
//! not registered, a uid's removal to every one not registered and not already refused (a
//! pending one of a removed uid is answered and becomes [`Stage::Refused`]).
//! Removing a connection hands its descriptor back: the caller gives it to the closer.
//!
//! A connection whose uid may not register is answered at accept and kept as
//! [`Stage::Refused`] until its message comes (read and dropped) or it hangs up, so that a peer
//! that sends before it reads gets its refusal, not a reset (a unix socket closed with a message
//! unread resets its peer's next read). Refused connections never take a message and never
//! count against, or evict, the others: they have caps of their own ([`Connections::refused`]).
use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    time::{Duration, Instant},
};

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Open, no registration message read yet.
    Pending,
    /// Its registration passed the checks and waits for its pod group to be made.
    Waiting,
    /// Registered: the worker of (service, slot).
    Registered((usize, u32)),
    /// Its uid may not register: answered so at accept, kept until its message or its hang-up.
    Refused,
}

struct Conn {
    fd: OwnedFd,
    uid: u32,
    opened: Instant,
    stage: Stage,
}

impl Conn {
    fn unregistered(&self, uid: Option<u32>) -> bool {
        !matches!(self.stage, Stage::Registered(_)) && uid.is_none_or(|u| self.uid == u)
    }

    /// In `stage` (and of `uid`, if given).
    fn in_stage(&self, stage: Stage, uid: Option<u32>) -> bool {
        self.stage == stage && uid.is_none_or(|u| self.uid == u)
    }
}

#[derive(Default)]
pub(super) struct Connections {
    by_id: HashMap<u64, Conn>,
    next: u64,
}

impl Connections {
    /// Adds a connection of peer `uid`; returns its id.
    pub(super) fn open(&mut self, fd: OwnedFd, uid: u32) -> u64 {
        self.insert(fd, uid, Stage::Pending)
    }

    /// Adds a connection of peer `uid`, refused and answered ([`Stage::Refused`]); returns its id.
    pub(super) fn open_refused(&mut self, fd: OwnedFd, uid: u32) -> u64 {
        self.insert(fd, uid, Stage::Refused)
    }

    fn insert(&mut self, fd: OwnedFd, uid: u32, stage: Stage) -> u64 {
        let id = self.next;
        self.next += 1;
        self.by_id.insert(id, Conn { fd, uid, opened: Instant::now(), stage });
        id
    }

    /// Removes connection `id`: its descriptor (for the closer) and its stage.
    pub(super) fn remove(&mut self, id: u64) -> Option<(OwnedFd, Stage)> {
        self.by_id.remove(&id).map(|c| (c.fd, c.stage))
    }

    /// Removes every connection (at stop): their descriptors.
    pub(super) fn take_all(&mut self) -> Vec<OwnedFd> {
        self.by_id.drain().map(|(_, c)| c.fd).collect()
    }

    pub(super) fn fd(&self, id: u64) -> Option<BorrowedFd<'_>> {
        self.by_id.get(&id).map(|c| c.fd.as_fd())
    }

    pub(super) fn stage(&self, id: u64) -> Option<Stage> {
        self.by_id.get(&id).map(|c| c.stage)
    }

    /// Whether a message on connection `id` is read as its registration.
    pub(super) fn takes_message(&self, id: u64) -> bool {
        self.stage(id) == Some(Stage::Pending)
    }

    pub(super) fn set_stage(&mut self, id: u64, stage: Stage) {
        if let Some(c) = self.by_id.get_mut(&id) {
            c.stage = stage;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every connection, for polling.
    pub(super) fn watched(&self) -> impl Iterator<Item = (u64, BorrowedFd<'_>)> {
        self.by_id.iter().map(|(id, c)| (*id, c.fd.as_fd()))
    }

    /// Connections with no registration message read yet (of `uid`, if given): what the caps
    /// on unregistered connections count.
    pub(super) fn pending(&self, uid: Option<u32>) -> usize {
        self.count(Stage::Pending, uid)
    }

    /// The oldest connection with no registration message read yet (of `uid`, if given).
    pub(super) fn oldest_pending(&self, uid: Option<u32>) -> Option<u64> {
        self.oldest(Stage::Pending, uid)
    }

    /// Refused connections still open (of `uid`, if given): what their own caps count.
    pub(super) fn refused(&self, uid: Option<u32>) -> usize {
        self.count(Stage::Refused, uid)
    }

    /// The oldest refused connection still open (of `uid`, if given).
    pub(super) fn oldest_refused(&self, uid: Option<u32>) -> Option<u64> {
        self.oldest(Stage::Refused, uid)
    }

    fn count(&self, stage: Stage, uid: Option<u32>) -> usize {
        self.by_id.values().filter(|c| c.in_stage(stage, uid)).count()
    }

    fn oldest(&self, stage: Stage, uid: Option<u32>) -> Option<u64> {
        self.by_id.iter().filter(|(_, c)| c.in_stage(stage, uid)).map(|(id, _)| *id).min()
    }

    /// Connections not registered within `limit` of opening.
    pub(super) fn late(&self, limit: Duration) -> Vec<u64> {
        let late = |c: &Conn| c.unregistered(None) && c.opened.elapsed() >= limit;
        self.by_id.iter().filter(|(_, c)| late(c)).map(|(id, _)| *id).collect()
    }

    /// Connections not registered whose uid `allowed` refuses (not those already answered so):
    /// id, uid and stage of each.
    pub(super) fn unregistered_refused(
        &self,
        allowed: impl Fn(u32) -> bool,
    ) -> Vec<(u64, u32, Stage)> {
        let refused =
            |c: &Conn| c.unregistered(None) && c.stage != Stage::Refused && !allowed(c.uid);
        self.by_id.iter().filter(|(_, c)| refused(c)).map(|(id, c)| (*id, c.uid, c.stage)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn one_message_per_connection() {
        let mut conns = Connections::default();
        let id = conns.open(fd(), 1000);
        assert!(conns.takes_message(id));
        // Waiting for its pod group: a second message must not register again (it could
        // overwrite the first registration's slot and leak it).
        conns.set_stage(id, Stage::Waiting);
        assert!(!conns.takes_message(id));
        conns.set_stage(id, Stage::Registered((0, 1)));
        assert!(!conns.takes_message(id));
        assert!(!conns.takes_message(id + 1));
    }

    #[test]
    fn waiting_connections_are_not_capped_or_evicted_but_time_out() {
        let mut conns = Connections::default();
        let a = conns.open(fd(), 1000);
        let b = conns.open(fd(), 1001);
        let c = conns.open(fd(), 1000);
        let d = conns.open(fd(), 1000);
        conns.set_stage(a, Stage::Waiting);
        conns.set_stage(c, Stage::Registered((0, 0)));
        // Only d and b wait for a message: a waits for its pod group, c is registered.
        assert_eq!(conns.pending(None), 2);
        assert_eq!(conns.pending(Some(1000)), 1);
        assert_eq!(conns.oldest_pending(None), Some(b));
        assert_eq!(conns.oldest_pending(Some(1000)), Some(d));
        assert_eq!(conns.oldest_pending(Some(1001)), Some(b));
        conns.remove(d);
        assert_eq!(conns.unregistered_refused(|uid| uid == 1000), vec![(b, 1001, Stage::Pending)]);
        let mut late = conns.late(Duration::ZERO);
        late.sort();
        assert_eq!(late, vec![a, b]);
        assert_eq!(conns.remove(c).map(|(_, s)| s), Some(Stage::Registered((0, 0))));
        assert_eq!(conns.len(), 2);
    }

    #[test]
    fn refused_connections_take_no_message_have_caps_of_their_own_and_time_out() {
        let mut conns = Connections::default();
        let p = conns.open(fd(), 1000);
        let r1 = conns.open_refused(fd(), 65534);
        let r2 = conns.open_refused(fd(), 65534);
        let r3 = conns.open_refused(fd(), 1000);
        for r in [r1, r2, r3] {
            assert!(!conns.takes_message(r), "a refused connection's message is not read as one");
        }
        // Not pending: they neither count against the others' caps nor get evicted for them.
        assert_eq!(conns.pending(None), 1);
        assert_eq!(conns.oldest_pending(None), Some(p));
        assert_eq!(conns.refused(None), 3);
        assert_eq!(conns.refused(Some(65534)), 2);
        assert_eq!(conns.oldest_refused(Some(65534)), Some(r1));
        assert_eq!(conns.oldest_refused(Some(1000)), Some(r3));
        // Already answered: a change of the allowed uids does not close them again.
        assert_eq!(conns.unregistered_refused(|uid| uid == 1000), vec![]);
        let mut late = conns.late(Duration::ZERO);
        late.sort();
        assert_eq!(late, vec![p, r1, r2, r3]);
    }
}
