//! Slots and workers: which slot of which group each registered worker holds, and the parked
//! last sockets of groups with no worker left.
//!
//! Owns each registered worker's record ([`Worker`]: its pid, uid, pidfd, our copy of its
//! listener, its registration connection, the reconciliation's memory) keyed by (group id,
//! slot), and per group the socket of the last worker that left ([`Parked`]), kept listening
//! while the group has no worker, so that connections wait in its queue instead of being
//! refused. Invariants: one worker per (group, slot); a group has a parked socket only while it
//! has no worker ([`Workers::insert`] hands the parked one back for the caller to shut down and
//! close); every descriptor removed from here is handed back, never closed here (the caller gives
//! it to the closer). The group's own slot table is changed by the caller, under its lock.
use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    time::{Duration, Instant},
};

/// (group id, slot).
pub(super) type Key = (usize, u32);

/// A registered worker.
pub(super) struct Worker {
    pub pid: u32,
    pub uid: u32,
    /// `None` when the worker's pid is not visible here (another pid namespace): its exit is
    /// then seen through its registration connection, which the shim keeps open for the
    /// worker's life (close-on-exec, and closed in a forked child).
    pub pidfd: Option<OwnedFd>,
    /// Our reference to the worker's socket: for the accept-queue figure. Closed (by the closer)
    /// when the worker leaves: if the worker is gone, so is its socket, and its queue migrates.
    pub listener: OwnedFd,
    /// Id of its registration connection.
    pub conn: u64,
    /// Disagreement seen at the previous reconciliation.
    pub prev_diff: i64,
    /// `accepted` at the previous reconciliation.
    pub last_accepted: u64,
    /// The weight the worker asked for; 0: the service's default.
    pub asked_weight: u32,
}

/// The socket of the last worker of a group, kept listening while it has none.
struct Parked {
    fd: OwnedFd,
    since: Instant,
}

#[derive(Default)]
pub(super) struct Workers {
    by_key: HashMap<Key, Worker>,
    parked: HashMap<usize, Parked>,
}

impl Workers {
    /// Records the worker of `key`. Returns the listener of a worker it replaced, if any, and
    /// the group's parked socket, if it had one: both for the caller to close (the parked one
    /// shut down first, so that its queue migrates to the new worker).
    pub(super) fn insert(&mut self, key: Key, w: Worker) -> (Option<OwnedFd>, Option<OwnedFd>) {
        let replaced = self.by_key.insert(key, w).map(|old| old.listener);
        (replaced, self.parked.remove(&key.0).map(|p| p.fd))
    }

    /// Removes the worker of `key`; also says whether it was its group's last.
    pub(super) fn remove(&mut self, key: Key) -> Option<(Worker, bool)> {
        let w = self.by_key.remove(&key)?;
        let last = !self.occupied(key.0);
        Some((w, last))
    }

    pub(super) fn get(&self, key: Key) -> Option<&Worker> {
        self.by_key.get(&key)
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(super) fn keys(&self) -> Vec<Key> {
        self.by_key.keys().copied().collect()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (Key, &Worker)> {
        self.by_key.iter().map(|(k, w)| (*k, w))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut Worker)> {
        self.by_key.iter_mut().map(|(k, w)| (*k, w))
    }

    /// Slots of group `svc` held by registered workers.
    pub(super) fn held(&self, svc: usize) -> usize {
        self.by_key.keys().filter(|(s, _)| *s == svc).count()
    }

    pub(super) fn occupied(&self, svc: usize) -> bool {
        self.by_key.keys().any(|(s, _)| *s == svc)
    }

    /// A registered worker's listener of group `svc`.
    pub(super) fn listener_of(&self, svc: usize) -> Option<BorrowedFd<'_>> {
        self.by_key.iter().find(|((s, _), _)| *s == svc).map(|(_, w)| w.listener.as_fd())
    }

    /// A socket of group `svc`: a worker's listener, or the parked one.
    pub(super) fn socket_of(&self, svc: usize) -> Option<BorrowedFd<'_>> {
        self.listener_of(svc).or(self.parked.get(&svc).map(|p| p.fd.as_fd()))
    }

    /// Every worker's pidfd (those visible here), for polling: (key, connection id, pidfd).
    pub(super) fn watched(&self) -> impl Iterator<Item = (Key, u64, BorrowedFd<'_>)> {
        self.by_key.iter().filter_map(|(k, w)| w.pidfd.as_ref().map(|p| (*k, w.conn, p.as_fd())))
    }

    /// Removes every worker (at stop, leaving their slots as they are): their listeners.
    pub(super) fn take_all(&mut self) -> Vec<OwnedFd> {
        self.by_key.drain().map(|(_, w)| w.listener).collect()
    }

    /// Parks `fd`, the last socket of group `svc`; returns a socket parked before, to close.
    pub(super) fn park(&mut self, svc: usize, fd: OwnedFd) -> Option<OwnedFd> {
        self.parked.insert(svc, Parked { fd, since: Instant::now() }).map(|p| p.fd)
    }

    /// Removes the parked socket of group `svc`.
    pub(super) fn unpark(&mut self, svc: usize) -> Option<OwnedFd> {
        self.parked.remove(&svc).map(|p| p.fd)
    }

    /// Removes the sockets parked for `limit` or longer: (group, socket).
    pub(super) fn unpark_late(&mut self, limit: Duration) -> Vec<(usize, OwnedFd)> {
        let late: Vec<usize> = self
            .parked
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= limit)
            .map(|(svc, _)| *svc)
            .collect();
        late.into_iter().filter_map(|svc| self.unpark(svc).map(|fd| (svc, fd))).collect()
    }

    /// Removes every parked socket (at stop).
    pub(super) fn take_parked(&mut self) -> Vec<OwnedFd> {
        self.parked.drain().map(|(_, p)| p.fd).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn worker(conn: u64) -> Worker {
        Worker {
            pid: 1,
            uid: 0,
            pidfd: None,
            listener: fd(),
            conn,
            prev_diff: 0,
            last_accepted: 0,
            asked_weight: 0,
        }
    }

    #[test]
    fn last_worker_and_parking() {
        let mut w = Workers::default();
        assert_eq!(w.insert((0, 0), worker(1)).0.map(|_| ()), None);
        w.insert((0, 1), worker(2));
        w.insert((1, 0), worker(3));
        assert_eq!((w.held(0), w.held(1), w.held(2)), (2, 1, 0));
        assert!(!w.remove((0, 0)).unwrap().1, "slot 1 is left");
        let (gone, last) = w.remove((0, 1)).unwrap();
        assert!(last);
        assert!(w.park(0, gone.listener).is_none());
        assert!(w.socket_of(0).is_some() && w.listener_of(0).is_none());
        // A worker registering takes the parked socket out.
        let (replaced, parked) = w.insert((0, 4), worker(4));
        assert!(replaced.is_none() && parked.is_some());
        assert!(w.unpark(0).is_none());
        assert!(w.insert((0, 4), worker(5)).0.is_some(), "the replaced listener comes back");
    }
}
