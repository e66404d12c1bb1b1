//! Adoption: groups and slots pinned by an earlier controller, taken over at start.
//!
//! The pod groups pinned under the pin root are made again from their pins
//! ([`adopt_pod_groups`]: each keeps its program attached and its slots). Then, for every
//! adopted group, //!
//! when a controller starts on pins an earlier one left (a restart, an upgrade of the same
//! layout; see `Group::new`): the program has kept balancing the workers meanwhile. Each occupied
//! slot is kept for its worker until it registers again (it then gets its slot back, counters and
//! all), exits (watched through a pidfd), or the grace period ends.
//!
//! Invariants: a slot whose worker cannot be watched is freed at once; an adopted slot is freed
//! exactly once (here, or given back in admission). A slot is kept for, watched by, and given
//! back to, the owner the controller recorded in the group's `OWNERS` map (the SO_COOKIE of the
//! worker's listening socket, and its pid), never the pid in the shared load table, which every
//! worker of the service can write: a worker registering again gets the slot back only by
//! handing over that very socket, from that very process (see `Group::reuse`).
//!
//! This module owns the adopted slots still waiting for their workers ([`Adoption`]); freeing one
//! in its group is the caller's (it holds the group's lock and logs why).
use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    time::{Duration, Instant},
};

use super::{
    pods::{make_group, parse_pin_name, remove_pins, PodGroup, PodOptions},
    services::{Service, Services},
    workers::Key,
};
use crate::{group::SlotView, sys};

/// A slot of an adopted group whose worker has not registered again yet.
struct Adopted {
    /// The recorded owner (`OWNERS`), not the shared table's pid.
    pid: u32,
    /// SO_COOKIE of the owner's listening socket, as recorded.
    cookie: u64,
    /// `None` when the owner's pid is not visible here (pid 0): the slot is then kept for the
    /// grace period, for the socket's holder to register it again.
    pidfd: Option<OwnedFd>,
    deadline: Instant,
}

/// The adopted slots kept for their workers.
#[derive(Default)]
pub(super) struct Adoption {
    by_key: HashMap<Key, Adopted>,
}

impl Adoption {
    /// The occupied slots of the adopted groups among `services`, each kept for its worker for
    /// `grace`. The slots of workers that exited while no controller ran are freed here.
    pub(super) fn of(services: &Services, grace: Duration) -> Self {
        let mut by_key = HashMap::new();
        for (svc, service) in services.all() {
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
                match keep(&service, &view, grace) {
                    Some(a) => {
                        by_key.insert((svc, view.slot), a);
                    }
                    None => {
                        if let Err(e) = group.remove(view.slot) {
                            log::warn!("freeing slot {}: {e}", view.slot);
                        }
                    }
                }
            }
        }
        Self { by_key }
    }

    /// Slots of group `svc` kept for their workers.
    pub(super) fn held(&self, svc: usize) -> usize {
        self.by_key.keys().filter(|(s, _)| *s == svc).count()
    }

    /// The slot of group `svc` kept for the owner of the socket `cookie`: (slot, owner pid).
    pub(super) fn find(&self, svc: usize, cookie: u64) -> Option<(u32, u32)> {
        self.by_key
            .iter()
            .find(|((s, _), a)| *s == svc && a.cookie == cookie)
            .map(|((_, slot), a)| (*slot, a.pid))
    }

    /// Whether `key` is still kept for `pid`.
    pub(super) fn kept_for(&self, key: Key, pid: u32) -> bool {
        self.by_key.get(&key).is_some_and(|a| a.pid == pid)
    }

    /// Stops keeping `key` (its worker registered again, or it is freed): the owner's pid.
    pub(super) fn remove(&mut self, key: Key) -> Option<u32> {
        self.by_key.remove(&key).map(|a| a.pid)
    }

    pub(super) fn keys(&self) -> Vec<Key> {
        self.by_key.keys().copied().collect()
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Forgets every kept slot, leaving it as it is in its group (at stop, keeping slots).
    pub(super) fn clear(&mut self) {
        self.by_key.clear()
    }

    /// Slots whose grace ended.
    pub(super) fn late(&self, now: Instant) -> Vec<Key> {
        self.by_key.iter().filter(|(_, a)| a.deadline <= now).map(|(k, _)| *k).collect()
    }

    /// Owners' pidfds, for polling: (key, owner pid, pidfd).
    pub(super) fn watched(&self) -> impl Iterator<Item = (Key, u32, BorrowedFd<'_>)> {
        self.by_key.iter().filter_map(|(k, a)| a.pidfd.as_ref().map(|p| (*k, a.pid, p.as_fd())))
    }
}

/// Whether an occupied adopted slot is kept for its worker (and how), or freed (`None`, logged).
fn keep(service: &Service, view: &SlotView, grace: Duration) -> Option<Adopted> {
    let deadline = Instant::now() + grace;
    if view.cookie != 0 && view.pid == 0 {
        // A worker whose pid was not visible (another pid namespace): recognised by its
        // socket alone when it registers again.
        log::info!(
            "{}: adopted slot {} of a worker in another pid namespace: kept until its socket \
             registers again",
            service.describe(),
            view.slot
        );
        return Some(Adopted { pid: 0, cookie: view.cookie, pidfd: None, deadline });
    }
    if view.cookie == 0 || view.pid == 0 {
        log::warn!(
            "{}: adopted slot {} has no owner record: slot freed",
            service.describe(),
            view.slot
        );
        return None;
    }
    match sys::pidfd_open(view.pid) {
        Ok(pidfd) => {
            log::info!(
                "{}: adopted slot {} of worker {} ({} selected so far): kept until it registers \
                 again",
                service.describe(),
                view.slot,
                view.pid,
                view.selected_total
            );
            Some(Adopted { pid: view.pid, cookie: view.cookie, pidfd: Some(pidfd), deadline })
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
            None
        }
    }
}

/// Adopts the groups an earlier controller pinned under the pin root (a restart): each keeps its
/// program attached and its slots, for the workers to register again. Directories that are not a
/// group's, or whose template is gone, are removed.
pub(super) fn adopt_pod_groups(services: &Services, pods: &PodOptions) {
    let Some(root) = &pods.pin_root else { return };
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let parsed = parse_pin_name(&name);
        let Some((netns, addr, template)) = parsed else {
            log::warn!("{}: not a pod group's pin directory: left alone", path.display());
            continue;
        };
        let Some(t) = pods.template(&template) else {
            log::warn!(
                "{}: template `{template}` is no longer configured: pins removed, the workers \
                 register again",
                path.display()
            );
            remove_pins(&path);
            continue;
        };
        if services.len() >= pods.max_groups {
            log::warn!("{}: max_groups reached: not adopted, pins removed", path.display());
            remove_pins(&path);
            continue;
        }
        match make_group(pods, netns, addr, t) {
            Ok((group, _)) => {
                log::info!(
                    "pod group {addr} (netns {netns}, template {template}): {} with {} workers",
                    if group.adopted() { "adopted" } else { "made again" },
                    group.occupied_slots().count()
                );
                services.add(Service::pod(addr, PodGroup::new(netns, template), group));
            }
            Err(e) => log::error!("{}: adopting the pod group: {e}", path.display()),
        }
    }
}
