//! The balanced groups: the listed services' (fixed for the registry's life) and the pod groups
//! made on registration (added and removed while it runs).
//!
//! Owns the id of every group. Invariants: the listed services have ids `0..listed`, the made
//! ones ids from there up, never reused, so that a stale key (a worker's, a timer's) never
//! reaches a new group; readers (the caller, metrics) and the registry thread share it behind a
//! lock held only to look a group up.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use super::pods::PodGroup;
use crate::Group;

/// One balanced address and its group.
pub struct Service {
    pub addr: SocketAddr,
    /// For a group made on registration: whose it is (network namespace, template, label).
    pub pod: Option<PodGroup>,
    group: Mutex<Group>,
}

impl Service {
    pub(super) fn listed(addr: SocketAddr, group: Group) -> Self {
        Self { addr, pod: None, group: Mutex::new(group) }
    }

    pub(super) fn pod(addr: SocketAddr, pod: PodGroup, group: Group) -> Self {
        Self { addr, pod: Some(pod), group: Mutex::new(group) }
    }

    /// `addr`, and for a pod's group its network namespace cookie, for log lines.
    pub fn describe(&self) -> String {
        match &self.pod {
            None => self.addr.to_string(),
            Some(p) => format!("{} (netns {})", self.addr, p.netns),
        }
    }

    /// The group (slots, loads, stats). Hold the lock briefly: registrations wait for it.
    pub fn group(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this is the pod group of (`netns`, `addr`).
    fn is_pod_of(&self, netns: u64, addr: SocketAddr) -> bool {
        self.addr == addr && self.pod.as_ref().is_some_and(|p| p.netns == netns)
    }
}

/// Every group, by id.
pub(super) struct Services {
    listed: Vec<Arc<Service>>,
    made: Mutex<Made>,
}

struct Made {
    by_id: BTreeMap<usize, Arc<Service>>,
    next: usize,
}

impl Services {
    pub(super) fn new(listed: Vec<Service>) -> Self {
        let next = listed.len();
        Self {
            listed: listed.into_iter().map(Arc::new).collect(),
            made: Mutex::new(Made { by_id: BTreeMap::new(), next }),
        }
    }

    fn made(&self) -> MutexGuard<'_, Made> {
        self.made.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group with id `id`, if it still exists.
    pub(super) fn get(&self, id: usize) -> Option<Arc<Service>> {
        match self.listed.get(id) {
            Some(s) => Some(s.clone()),
            None => self.made().by_id.get(&id).cloned(),
        }
    }

    /// Every group with its id, in id order.
    pub(super) fn all(&self) -> Vec<(usize, Arc<Service>)> {
        let made = self.made();
        let listed = self.listed.iter().cloned().enumerate();
        listed.chain(made.by_id.iter().map(|(id, s)| (*id, s.clone()))).collect()
    }

    /// The listed service of `addr`.
    pub(super) fn listed(&self, addr: SocketAddr) -> Option<&Arc<Service>> {
        self.listed.iter().find(|s| s.addr == addr)
    }

    /// The id of the group whose address is `addr` (listed or not).
    pub(super) fn find_addr(&self, addr: SocketAddr) -> Option<usize> {
        self.all().into_iter().find(|(_, s)| s.addr == addr).map(|(id, _)| id)
    }

    /// The pod group of (`netns`, `addr`), with its id.
    pub(super) fn find_pod(&self, netns: u64, addr: SocketAddr) -> Option<(usize, Arc<Service>)> {
        self.made()
            .by_id
            .iter()
            .find(|(_, s)| s.is_pod_of(netns, addr))
            .map(|(i, s)| (*i, s.clone()))
    }

    /// How many groups exist, listed ones included.
    pub(super) fn len(&self) -> usize {
        self.listed.len() + self.made().by_id.len()
    }

    /// The ids of the pod groups of network namespace `netns`.
    pub(super) fn pods_in(&self, netns: u64) -> Vec<usize> {
        let made = self.made();
        let of = |s: &Service| s.pod.as_ref().is_some_and(|p| p.netns == netns);
        made.by_id.iter().filter(|(_, s)| of(s)).map(|(id, _)| *id).collect()
    }

    /// How many pod groups exist.
    pub(super) fn pods(&self) -> usize {
        self.made().by_id.values().filter(|s| s.pod.is_some()).count()
    }

    /// Adds a group made on registration; returns its new id.
    pub(super) fn add(&self, svc: Service) -> usize {
        let mut made = self.made();
        let id = made.next;
        made.next += 1;
        made.by_id.insert(id, Arc::new(svc));
        id
    }

    /// Forgets group `id` (a made one; listed ones stay).
    pub(super) fn remove(&self, id: usize) {
        self.made().by_id.remove(&id);
    }
}
