//! Adoption: slots of groups pinned by an earlier controller, kept for their workers.
//!
//! When a controller starts on pins an earlier one left (a restart, an upgrade of the same
//! layout; see `Group::new`), the program has kept balancing the workers meanwhile. Each occupied
//! slot is kept for its worker until it registers again (it then gets its slot back, counters and
//! all), exits (watched through a pidfd), or the grace period ends.
//!
//! Invariants: a slot whose worker cannot be watched is freed at once; an adopted slot is freed
//! exactly once (here, or given back in admission). A slot is kept for, watched by, and given
//! back to, the owner the controller recorded in the group's `OWNERS` map (the SO_COOKIE of the
//! worker's listening socket, and its pid), never the pid in the shared load table, which every
//! worker of the service can write: a worker registering again gets the slot back only by
//! handing over that very socket, from that very process (see `Group::reuse`).
use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use super::{event_loop::Loop, Shared};
use crate::sys;

/// A slot of an adopted group whose worker has not registered again yet.
pub(super) struct Adopted {
    /// The recorded owner (`OWNERS`), not the shared table's pid.
    pub pid: u32,
    /// SO_COOKIE of the owner's listening socket, as recorded.
    pub cookie: u64,
    /// `None` when the owner's pid is not visible here (pid 0): the slot is then kept for the
    /// grace period, for the socket's holder to register it again.
    pub pidfd: Option<OwnedFd>,
    pub deadline: Instant,
}

/// The occupied slots of adopted groups, each kept for its worker until it registers again. The
/// slots of workers that exited while no controller ran are freed here.
pub(super) fn adopted_slots(shared: &Shared, grace: Duration) -> HashMap<(usize, u32), Adopted> {
    let mut out = HashMap::new();
    for (svc, service) in shared.all_services() {
        let mut group = service.group();
        if !group.adopted() {
            continue;
        }
        let slots = match group.slots() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{}: reading the adopted slots: {e}", service.describe());
                continue;
            }
        };
        for view in slots {
            if view.cookie != 0 && view.pid == 0 {
                // A worker whose pid was not visible (another pid namespace): recognised by its
                // socket alone when it registers again.
                log::info!(
                    "{}: adopted slot {} of a worker in another pid namespace: kept until its \
                     socket registers again",
                    service.describe(),
                    view.slot
                );
                out.insert(
                    (svc, view.slot),
                    Adopted {
                        pid: 0,
                        cookie: view.cookie,
                        pidfd: None,
                        deadline: Instant::now() + grace,
                    },
                );
                continue;
            }
            if view.cookie == 0 || view.pid == 0 {
                log::warn!(
                    "{}: adopted slot {} has no owner record: slot freed",
                    service.describe(),
                    view.slot
                );
                if let Err(e) = group.remove(view.slot) {
                    log::warn!("freeing slot {}: {e}", view.slot);
                }
                continue;
            }
            match sys::pidfd_open(view.pid) {
                Ok(pidfd) => {
                    log::info!(
                        "{}: adopted slot {} of worker {} ({} selected so far): kept until it \
                         registers again",
                        service.describe(),
                        view.slot,
                        view.pid,
                        view.selected_total
                    );
                    out.insert(
                        (svc, view.slot),
                        Adopted {
                            pid: view.pid,
                            cookie: view.cookie,
                            pidfd: Some(pidfd),
                            deadline: Instant::now() + grace,
                        },
                    );
                }
                Err(e) => {
                    let why = if e.raw_os_error() == Some(libc::ESRCH) {
                        "exited while no controller ran".to_owned()
                    } else {
                        format!("cannot be watched ({e})")
                    };
                    log::info!(
                        "{}: worker {} of adopted slot {} {why}: slot freed",
                        service.describe(),
                        view.pid,
                        view.slot
                    );
                    if let Err(e) = group.remove(view.slot) {
                        log::warn!("freeing slot {}: {e}", view.slot);
                    }
                }
            }
        }
    }
    out
}

impl Loop {
    /// Frees the slot of an adopted group kept for a worker that did not register again.
    pub(super) fn free_adopted(&mut self, key: (usize, u32), why: &str) {
        let Some(a) = self.adopted.remove(&key) else { return };
        let Some(service) = self.shared.service(key.0) else { return };
        log::info!(
            "{}: worker {} of adopted slot {} {why}: slot freed",
            service.describe(),
            a.pid,
            key.1
        );
        let removed = service.group().remove(key.1);
        if let Err(e) = removed {
            log::warn!("freeing slot {}: {e}", key.1);
        }
    }

    pub(super) fn expire_adopted(&mut self) {
        let now = Instant::now();
        let late: Vec<_> =
            self.adopted.iter().filter(|(_, a)| a.deadline <= now).map(|(k, _)| *k).collect();
        for key in late {
            self.free_adopted(key, "did not register again in time");
        }
    }
}
