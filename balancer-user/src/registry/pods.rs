//! Groups made on registration: the pods of a node, which nobody lists.
//!
//! A worker registering on a registry with [`RegistryOptions::pods`] joins the group of
//! (the network namespace of the socket it hands over, as SO_NETNS_COOKIE says, and the address
//! that socket is bound to). Only the kernel's answers about that socket decide the group: a pod
//! can only ever reach groups of its own network namespace, whatever names it sends. The first
//! worker of a key makes the group with the settings of the template it names
//! (`Register::template`, or the default template): a program of its own, attached through the
//! worker's socket, maps of its own, pinned under `<pin_root>/<pin_name>` so that a restarted
//! controller adopts it ([`super::adoption`]). A later worker of the same key naming another
//! template is refused (`unknown_template`): one reuseport group runs one program.
//!
//! A group with no worker and no adopted slot left is removed after
//! [`PodOptions::removal_grace`]: its last socket (parked meanwhile) detached and closed, its pins
//! removed, its id gone (so its metric series and `/status` entry go too). The number of groups
//! is bounded by [`PodOptions::max_groups`]: a worker that would make one more is refused
//! (`no_free_slot`) and serves on the kernel's hash. One pod (one network namespace) has at most
//! [`PodOptions::max_groups_per_pod`] groups and [`PodOptions::max_workers_per_pod`] workers
//! over all of them (registrations waiting for a group included): beyond either, `pod_limit`.
//! So one pod cannot take every group of the node, nor every program load.
//!
//! Making a group loads a program and has the verifier check it (a second or more on a busy
//! node): that happens on a thread of its own ([`Making`]), never on the registry thread. The
//! registrations of the key wait for it (their connections stay open, their descriptors held) and
//! are answered when it is ready; groups being made count against `max_groups`.
//!
//! This module owns the pod settings ([`PodOptions`]) and the groups being made ([`Pods`]): the
//! key of each, its template, the thread making it and the registrations waiting for it (opaque
//! here: whatever the loop needs to answer them). Invariants: at most one group is made per key
//! at a time; a made group is handed out once ([`Pods::take_made`]), with every registration that
//! waited for it; a group's emptiness is timed from the first tick that found it empty.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use balancer_common::Policy;

use crate::{group::Mode, Group, GroupOptions};

/// Settings of the groups of the pods that name it (see `balancer_config::Template`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTemplate {
    pub name: String,
    pub policy: Policy,
    pub mode: Mode,
    /// Weight of a worker that asks for none.
    pub weight: u32,
    /// Most workers per group.
    pub max_workers: u32,
    /// The pack policy's depth (0 counts as 1).
    pub pack_depth: u32,
    /// Uids whose workers may use it, root like any other (it may only if listed); empty: the
    /// controller's own uid.
    pub allowed_uids: Vec<u32>,
}

/// Groups made on registration.
#[derive(Clone, Debug)]
pub struct PodOptions {
    /// At least one; `default_template` names one of them.
    pub templates: Vec<PodTemplate>,
    pub default_template: String,
    /// Most groups at once.
    pub max_groups: usize,
    /// Most groups of one network namespace (one pod) at once, groups being made included.
    pub max_groups_per_pod: usize,
    /// Most workers of one network namespace (one pod) over all its groups, registrations
    /// waiting for a group being made included.
    pub max_workers_per_pod: usize,
    /// How long a group with no worker is kept before it is removed.
    pub removal_grace: Duration,
    /// bpffs directory for the groups' pins (one directory per group); `None`: not pinned.
    pub pin_root: Option<PathBuf>,
}

impl PodOptions {
    pub(super) fn template(&self, name: &str) -> Option<&PodTemplate> {
        self.templates.iter().find(|t| t.name == name)
    }
}

/// Whose a group made on registration is.
#[derive(Debug)]
pub struct PodGroup {
    /// Cookie of the network namespace of its sockets (SO_NETNS_COOKIE).
    pub netns: u64,
    /// The template its settings come from.
    pub template: String,
    /// The label its latest worker sent (`REUSELB_POD`), empty if none: a claim, shown in
    /// metrics and `/status`, never used to decide anything.
    label: Mutex<String>,
}

impl PodGroup {
    pub(super) fn new(netns: u64, template: String) -> Self {
        Self { netns, template, label: Mutex::new(String::new()) }
    }

    pub fn label(&self) -> String {
        self.label.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_label(&self, label: &str) {
        if !label.is_empty() {
            *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label.to_owned();
        }
    }
}

/// The pin directory name of a group: `n<netns>_<4|6><ip hex>_<port>_<template>` (bpffs refuses
/// dots; a template name is `[a-z0-9_-]`, so it goes last).
pub fn pin_name(netns: u64, addr: SocketAddr, template: &str) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(a) => format!("4{:08x}", u32::from(a)),
        IpAddr::V6(a) => format!("6{:032x}", u128::from(a)),
    };
    format!("n{netns}_{ip}_{}_{template}", addr.port())
}

/// The key a pin directory name stands for ([`pin_name`]), if it is one.
pub fn parse_pin_name(name: &str) -> Option<(u64, SocketAddr, String)> {
    let mut parts = name.splitn(4, '_');
    let netns = parts.next()?.strip_prefix('n')?.parse().ok()?;
    let ip = parts.next()?;
    let ip = match ip.split_at_checked(1)? {
        ("4", hex) if hex.len() == 8 => {
            IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(hex, 16).ok()?))
        }
        ("6", hex) if hex.len() == 32 => {
            IpAddr::V6(Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?))
        }
        _ => return None,
    };
    let port = parts.next()?.parse().ok()?;
    let template = parts.next()?;
    if template.is_empty() {
        return None;
    }
    Some((netns, SocketAddr::new(ip, port), template.to_owned()))
}

/// Makes (or, from its pins, adopts) the group of a key with `template`'s settings.
pub(super) fn make_group(
    pods: &PodOptions,
    netns: u64,
    addr: SocketAddr,
    template: &PodTemplate,
) -> crate::error::Result<(Group, Option<PathBuf>)> {
    let pin_dir = pods.pin_root.as_ref().map(|r| r.join(pin_name(netns, addr, &template.name)));
    let group = Group::new(GroupOptions {
        policy: template.policy,
        mode: template.mode,
        pack_depth: template.pack_depth,
        pin_dir: pin_dir.clone(),
        ..Default::default()
    })?;
    Ok((group, pin_dir))
}

pub(super) fn remove_pins(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", path.display());
        }
    }
}

/// What making a group gives: the group and its pin directory, if pinned.
type MakeResult = crate::error::Result<(Group, Option<PathBuf>)>;

/// A pod group being made on a thread of its own, and the registrations waiting for it.
struct Making<W> {
    template: String,
    started: Instant,
    waiting: Vec<W>,
    done: mpsc::Receiver<MakeResult>,
}

/// A group whose making ended (made, or failed), with the registrations that waited for it.
pub(super) struct Made<W> {
    pub netns: u64,
    pub addr: SocketAddr,
    pub template: String,
    pub started: Instant,
    pub waiting: Vec<W>,
    pub result: MakeResult,
}

/// The pod groups of a registry: their settings, the groups being made and the empty ones'
/// timers. `W`: a registration waiting for its group (the loop's).
pub(super) struct Pods<W> {
    options: Option<PodOptions>,
    making: HashMap<(u64, SocketAddr), Making<W>>,
    empty_since: HashMap<usize, Instant>,
}

impl<W> Pods<W> {
    pub(super) fn new(options: Option<PodOptions>) -> Self {
        Self { options, making: HashMap::new(), empty_since: HashMap::new() }
    }

    /// The pod settings, if groups are made on registration.
    pub(super) fn options(&self) -> Option<&PodOptions> {
        self.options.as_ref()
    }

    /// The template of the group of (`netns`, `addr`) being made, if it is.
    pub(super) fn being_made(&self, netns: u64, addr: SocketAddr) -> Option<&str> {
        self.making.get(&(netns, addr)).map(|m| m.template.as_str())
    }

    /// Registrations waiting for the group of (`netns`, `addr`) (0 if it is not being made).
    pub(super) fn waiting(&self, netns: u64, addr: SocketAddr) -> usize {
        self.making.get(&(netns, addr)).map_or(0, |m| m.waiting.len())
    }

    /// How many groups are being made.
    pub(super) fn making(&self) -> usize {
        self.making.len()
    }

    /// How many groups of network namespace `netns` are being made.
    pub(super) fn making_in(&self, netns: u64) -> usize {
        self.making.keys().filter(|(n, _)| *n == netns).count()
    }

    /// Registrations waiting for a group of network namespace `netns` being made.
    pub(super) fn waiting_in(&self, netns: u64) -> usize {
        self.making.iter().filter(|((n, _), _)| *n == netns).map(|(_, m)| m.waiting.len()).sum()
    }

    /// Adds `w` to the registrations waiting for the group of (`netns`, `addr`), and starts
    /// making it (with `template`) if nobody has; `wake` is signalled when it is made. Gives `w`
    /// back, with the reason, when no thread could be started.
    pub(super) fn wait_for(
        &mut self,
        netns: u64,
        addr: SocketAddr,
        template: &str,
        wake: &Arc<OwnedFd>,
        w: W,
    ) -> Result<(), (W, String)> {
        if let Some(m) = self.making.get_mut(&(netns, addr)) {
            m.waiting.push(w);
            return Ok(());
        }
        let Some(pods) = self.options.clone() else {
            return Err((w, "no pod groups here".into()));
        };
        let Some(t) = pods.template(template).cloned() else {
            return Err((w, format!("no template `{template}` here")));
        };
        let (tx, done) = mpsc::channel();
        let wake = wake.clone();
        let spawned = std::thread::Builder::new().name("reuselb-group".into()).spawn(move || {
            let _ = tx.send(make_group(&pods, netns, addr, &t));
            if let Err(e) = crate::sys::eventfd_signal(wake.as_fd()) {
                log::warn!("waking the registry thread: {e}");
            }
        });
        if let Err(e) = spawned {
            return Err((w, format!("cannot start a thread to make the group: {e}")));
        }
        let making = Making {
            template: template.to_owned(),
            started: Instant::now(),
            waiting: vec![w],
            done,
        };
        self.making.insert((netns, addr), making);
        Ok(())
    }

    /// The groups whose making ended since the last call (each handed out once).
    pub(super) fn take_made(&mut self) -> Vec<Made<W>> {
        let ready: Vec<_> = self
            .making
            .iter()
            .filter_map(|(key, m)| match m.done.try_recv() {
                Ok(result) => Some((*key, result)),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some((
                    *key,
                    Err(crate::Error::Socket {
                        op: "making the group",
                        source: std::io::Error::other("the thread ended without a group"),
                    }),
                )),
            })
            .collect();
        let mut out = Vec::new();
        for ((netns, addr), result) in ready {
            let Some(m) = self.making.remove(&(netns, addr)) else { continue };
            let (template, started, waiting) = (m.template, m.started, m.waiting);
            out.push(Made { netns, addr, template, started, waiting, result });
        }
        out
    }

    /// Every registration still waiting for a group (at stop).
    pub(super) fn take_waiting(&mut self) -> Vec<W> {
        self.making.drain().flat_map(|(_, m)| m.waiting).collect()
    }

    /// Whether pod group `id`, `occupied` or not now, has been empty for the removal grace (it
    /// is then forgotten here, and the caller removes it).
    pub(super) fn expired(&mut self, id: usize, occupied: bool, now: Instant) -> bool {
        let Some(grace) = self.options.as_ref().map(|p| p.removal_grace) else { return false };
        if occupied {
            self.empty_since.remove(&id);
            return false;
        }
        let since = *self.empty_since.entry(id).or_insert(now);
        if now.duration_since(since) < grace {
            return false;
        }
        self.empty_since.remove(&id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        for (netns, addr, t) in [
            (4097u64, "0.0.0.0:8000", "default"),
            (u64::MAX, "127.0.0.1:1", "a_b-c"),
            (1, "[::1]:65535", "x"),
            (7, "[fe80::1:2]:80", "web_v2"),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let name = pin_name(netns, addr, t);
            assert!(!name.contains('.'), "{name}");
            assert_eq!(parse_pin_name(&name), Some((netns, addr, t.to_owned())), "{name}");
        }
        for bad in ["", "layout-5", "n1_4000000_80_", "nx_400000000_80_t", "n1_5ab_80_t"] {
            assert_eq!(parse_pin_name(bad), None, "{bad}");
        }
    }
}
