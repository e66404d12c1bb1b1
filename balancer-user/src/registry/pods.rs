//! Groups made on registration: the pods of a node, which nobody lists.
//!
//! A worker registering on a registry with [`RegistryOptions::pods`] joins the group of
//! (the network namespace of the socket it hands over, as SO_NETNS_COOKIE says, and the address
//! that socket is bound to). Only the kernel's answers about that socket decide the group: a pod
//! can only ever reach groups of its own network namespace, whatever names it sends. The first
//! worker of a key makes the group with the settings of the template it names
//! (`Register::template`, or the default template): a program of its own, attached through the
//! worker's socket, maps of its own, pinned under `<pin_root>/<pin_name>` so that a restarted
//! controller adopts it ([`adopt_pod_groups`]). A later worker of the same key naming another
//! template is refused (`unknown_template`): one reuseport group runs one program.
//!
//! A group with no worker and no adopted slot left is removed after
//! [`PodOptions::removal_grace`]: its last socket (parked meanwhile) detached and closed, its pins
//! removed, its id gone (so its metric series and `/status` entry go too). The number of groups
//! is bounded by [`PodOptions::max_groups`]: a worker that would make one more is refused
//! (`no_free_slot`) and serves on the kernel's hash.
//!
//! Making a group loads a program and has the verifier check it (a second or more on a busy
//! node): that happens on a thread of its own ([`Making`]), never on the registry thread. The
//! registrations of the key wait for it (their connections stay open, their descriptors held) and
//! are answered when it is ready; groups being made count against `max_groups`.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use balancer_common::{protocol::Status, Policy};

use super::{
    admission::{Checked, Rejection},
    event_loop::Loop,
    Service, Shared,
};
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
    /// Uids whose workers may use it (root always may); empty: the controller's own uid.
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
    /// How long a group with no worker is kept before it is removed.
    pub removal_grace: Duration,
    /// bpffs directory for the groups' pins (one directory per group); `None`: not pinned.
    pub pin_root: Option<PathBuf>,
}

impl PodOptions {
    fn template(&self, name: &str) -> Option<&PodTemplate> {
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
    pub fn label(&self) -> String {
        self.label.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_label(&self, label: &str) {
        if !label.is_empty() {
            *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label.to_owned();
        }
    }
}

/// A pod group being made on a thread of its own, and the registrations waiting for it.
pub(super) struct Making {
    template: String,
    started: Instant,
    /// (connection id, the checked registration, its socket).
    waiting: Vec<(u64, Checked, OwnedFd)>,
    done: mpsc::Receiver<crate::error::Result<(Group, Option<PathBuf>)>>,
}

/// Where a checked registration goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// An existing group (by id).
    Group(usize),
    /// A group to make for this key, with this template.
    New { netns: u64, addr: SocketAddr, template: String },
}

/// What the group's template allows.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub max_workers: u32,
    pub default_weight: u32,
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

fn make_group(
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

fn new_service(shared: &Shared, svc: Service) -> usize {
    let id = shared.next_service.fetch_add(1, Ordering::Relaxed) as usize;
    shared.services.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Arc::new(svc));
    id
}

/// Adopts the groups an earlier controller pinned under the pin root (a restart): each keeps its
/// program attached and its slots, for the workers to register again. Directories that are not a
/// group's, or whose template is gone, are removed.
pub(super) fn adopt_pod_groups(shared: &Shared) {
    let Some(pods) = &shared.pods else { return };
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
        if shared.all_services().len() >= pods.max_groups {
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
                let pod = PodGroup { netns, template, label: Mutex::new(String::new()) };
                new_service(shared, Service { addr, pod: Some(pod), group: Mutex::new(group) });
            }
            Err(e) => log::error!("{}: adopting the pod group: {e}", path.display()),
        }
    }
}

fn remove_pins(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", path.display());
        }
    }
}

impl Loop {
    /// Where a socket in network namespace `netns`, bound to `addr`, goes, for a worker of `uid`
    /// naming `template` (empty: the default), and the limits that apply there.
    pub(super) fn pod_target(
        &self,
        netns: u64,
        addr: SocketAddr,
        template: &str,
        uid: u32,
    ) -> Result<(Target, Limits), Rejection> {
        let pods = self.shared.pods.as_ref().expect("pod_target: pods enabled");
        let name = if template.is_empty() { pods.default_template.as_str() } else { template };
        let t = pods.template(name).ok_or_else(|| {
            Rejection::new(
                Status::UnknownTemplate,
                format!("no template `{name}` here: the app serves on the kernel's hash"),
            )
        })?;
        if uid != 0 && !t.allowed_uids.contains(&uid) {
            return Err(Rejection::new(
                Status::UidNotAllowed,
                format!("uid {uid} may not use template `{name}`"),
            ));
        }
        let limits = Limits { max_workers: t.max_workers, default_weight: t.weight };
        let existing = self
            .shared
            .all_services()
            .into_iter()
            .find(|(_, s)| s.addr == addr && s.pod.as_ref().is_some_and(|p| p.netns == netns));
        if let Some(m) = self.making.get(&(netns, addr)) {
            if m.template != name {
                return Err(Rejection::new(
                    Status::UnknownTemplate,
                    format!(
                        "{addr} in this network namespace is being balanced with template `{}`, \
                         not `{name}`: one address, one template",
                        m.template
                    ),
                ));
            }
            return Ok((Target::New { netns, addr, template: name.to_owned() }, limits));
        }
        match existing {
            Some((id, s)) => {
                let group_template = s.pod.as_ref().map(|p| p.template.as_str()).unwrap_or("");
                if group_template != name {
                    return Err(Rejection::new(
                        Status::UnknownTemplate,
                        format!(
                            "{addr} in this network namespace is balanced with template \
                             `{group_template}`, not `{name}`: one address, one template"
                        ),
                    ));
                }
                Ok((Target::Group(id), limits))
            }
            None => {
                let n = self.shared.all_services().iter().filter(|(_, s)| s.pod.is_some()).count()
                    + self.making.len();
                if n >= pods.max_groups {
                    return Err(Rejection::new(
                        Status::NoFreeSlot,
                        format!("max_groups ({}) reached: no new pod group", pods.max_groups),
                    ));
                }
                Ok((Target::New { netns, addr, template: name.to_owned() }, limits))
            }
        }
    }

    /// Has the group of a new key made on a thread of its own; registration `id` waits for it
    /// (with the others of the same key).
    pub(super) fn make_pod_group(
        &mut self,
        netns: u64,
        addr: SocketAddr,
        template: String,
        id: u64,
        checked: Checked,
        socket: OwnedFd,
    ) {
        if self.making.values().any(|m| m.waiting.iter().any(|(w, _, _)| *w == id)) {
            // One registration per connection, waiting or not.
            self.refuse_waiting(id, socket, "this connection registered already".into());
            return;
        }
        if let Some(m) = self.making.get_mut(&(netns, addr)) {
            m.waiting.push((id, checked, socket));
            return;
        }
        let pods = self.shared.pods.clone().expect("make_pod_group: pods enabled");
        let t = pods.template(&template).expect("checked by pod_target").clone();
        let (tx, done) = mpsc::channel();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new().name("reuselb-group".into()).spawn(move || {
            let _ = tx.send(make_group(&pods, netns, addr, &t));
            if let Err(e) = crate::sys::eventfd_signal(wake.as_fd()) {
                log::warn!("waking the registry thread: {e}");
            }
        });
        if let Err(e) = spawned {
            self.refuse_waiting(
                id,
                socket,
                format!("cannot start a thread to make the group: {e}"),
            );
            return;
        }
        let making = Making { template, started: Instant::now(), waiting: Vec::new(), done };
        self.making.insert((netns, addr), making);
        if let Some(m) = self.making.get_mut(&(netns, addr)) {
            m.waiting.push((id, checked, socket));
        }
    }

    /// Takes the pod groups made meanwhile and answers the registrations that waited for them.
    pub(super) fn collect_made(&mut self) {
        let ready: Vec<_> = self
            .making
            .iter()
            .filter_map(|(key, m)| match m.done.try_recv() {
                Ok(result) => Some((*key, Some(result))),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some((*key, None)),
            })
            .collect();
        for ((netns, addr), result) in ready {
            let Some(m) = self.making.remove(&(netns, addr)) else { continue };
            let result = result.unwrap_or_else(|| {
                Err(crate::Error::Socket {
                    op: "making the group",
                    source: std::io::Error::other("the thread ended without a group"),
                })
            });
            match result {
                Ok((group, pin_dir)) => {
                    log::info!(
                        "pod group {addr} (netns {netns}, template {}): {} {} program, policy {}, \
                         made in {:?}{}",
                        m.template,
                        if group.adopted() { "adopted the pinned" } else { "new" },
                        group.program().name(),
                        group.policy().name(),
                        m.started.elapsed(),
                        pin_dir.map(|d| format!(", pinned at {}", d.display())).unwrap_or_default()
                    );
                    let pod = PodGroup {
                        netns,
                        template: m.template.clone(),
                        label: Mutex::new(String::new()),
                    };
                    let svc = new_service(
                        &self.shared,
                        Service { addr, pod: Some(pod), group: Mutex::new(group) },
                    );
                    for (id, checked, socket) in m.waiting {
                        if self.conns.contains_key(&id) {
                            self.admit_into(id, checked, socket, svc);
                        } else {
                            self.closer.close(socket);
                        }
                    }
                }
                Err(e) => {
                    log::error!("pod group {addr} (netns {netns}): {e}");
                    for (id, _, socket) in m.waiting {
                        self.refuse_waiting(id, socket, format!("making the group of {addr}: {e}"));
                    }
                }
            }
        }
    }

    /// Removes the pod groups that have had no worker (registered or adopted) for the removal
    /// grace: last socket detached and closed, pins removed, id gone.
    pub(super) fn expire_pod_groups(&mut self) {
        let Some(pods) = &self.shared.pods else { return };
        let grace = pods.removal_grace;
        let now = Instant::now();
        for (id, s) in self.shared.all_services() {
            if s.pod.is_none() {
                continue;
            }
            let occupied = self.workers.keys().any(|(svc, _)| *svc == id)
                || self.adopted.keys().any(|(svc, _)| *svc == id);
            if occupied {
                self.pod_empty_since.remove(&id);
                continue;
            }
            let since = *self.pod_empty_since.entry(id).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            self.pod_empty_since.remove(&id);
            self.remove_pod_group(id, &s);
        }
    }

    fn remove_pod_group(&mut self, id: usize, s: &Service) {
        if let Some(parked) = self.parked.remove(&id) {
            if let Err(e) = Group::detach(&parked.fd) {
                log::debug!("{}: detaching the program: {e}", s.describe());
            }
            self.closer.close(parked.fd);
        }
        if let Err(e) = s.group().unpin() {
            log::warn!("{}: removing the pins: {e}", s.describe());
        }
        self.shared.services.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        let label = s.pod.as_ref().map(|p| p.label()).unwrap_or_default();
        log::info!(
            "pod group {}{} removed: no worker for {:?}; pins removed",
            s.describe(),
            if label.is_empty() { String::new() } else { format!(" of {label}") },
            self.shared.pods.as_ref().map(|p| p.removal_grace).unwrap_or_default()
        );
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
