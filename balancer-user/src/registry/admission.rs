//! Admission: what a registration must satisfy, as one pure function ([`check`]).
//!
//! In: the message as received ([`Message`]), what the kernel says about the peer and the socket
//! it handed over ([`Evidence`], read by the loop), the rules ([`Rules`]: settings, pod
//! templates) and a view of where groups and slots stand ([`Places`]). Out: a [`Checked`]
//! registration (its target group, weight, adopted slot) or a [`Rejection`] (status and reason).
//! No socket is read, no state changed, nothing sent or counted here: the loop does that, in one
//! place, and gives every descriptor of a refused message to the closer. A connection carries one
//! registration attempt: after a refusal it is closed (one refused at accept for its uid only
//! once its message is read or it hangs up: `super::connections`).
//!
//! The order of the checks is part of the contract (docs/SECURITY.md): layout, descriptor,
//! credentials, uid, socket, address and namespace (or pod template, then the pod's and the
//! node's group limits), adopted slot, capacity (the group's, then the pod's workers);
//! the asked weight is capped at [`MAX_ASKED_WEIGHT`].
//!
//! A registration with `Register::WANT_SOCKET` hands over the app's shared socket as the proof of
//! its address (it may have been shut down by another worker's split already, so it need not
//! listen); the listener that joins the group is then created by the loop (`super::handover`).
use std::net::SocketAddr;

use balancer_common::protocol::{Register, Status, LAYOUT_VERSION};

use super::{
    pods::PodOptions,
    settings::{Settings, MAX_ASKED_WEIGHT},
};
use crate::{listener::SocketFacts, sys::Cred};

/// Why a registration was refused: the status the worker gets, and a reason for its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejection {
    pub status: Status,
    pub reason: String,
}

impl Rejection {
    pub(super) fn new(status: Status, reason: impl Into<String>) -> Self {
        Self { status, reason: reason.into() }
    }
}

/// A registration message as received.
pub(super) struct Message<'a> {
    pub data: &'a [u8],
    /// Descriptors attached.
    pub fds: usize,
    /// Data or descriptors were cut.
    pub truncated: bool,
}

/// What the kernel says about the peer (SO_PEERCRED) and about the socket it handed over (read
/// only when exactly one was); each an answer or the error's text.
pub(super) struct Evidence {
    pub cred: Result<Cred, String>,
    pub socket: Result<SocketFacts, String>,
    /// SO_NETNS_COOKIE of the socket.
    pub netns: Result<u64, String>,
    /// SO_COOKIE of the socket.
    pub cookie: Result<u64, String>,
}

/// What registrations must satisfy.
pub(super) struct Rules<'a> {
    pub settings: &'a Settings,
    /// Groups made on registration, if enabled.
    pub pods: Option<&'a PodOptions>,
    /// Network namespace of the listed services.
    pub netns: u64,
}

/// Where the groups and slots stand, as admission needs to know.
pub(super) trait Places {
    /// The group balancing `addr` (a listed service's).
    fn group_of(&self, addr: SocketAddr) -> Option<usize>;
    /// The pod group of (`netns`, `addr`) and its template: `Some(id)` if it exists, `None` if
    /// it is being made.
    fn pod_group(&self, netns: u64, addr: SocketAddr) -> Option<(Option<usize>, String)>;
    /// Pod groups, those being made included.
    fn pod_groups(&self) -> usize;
    /// Pod groups of network namespace `netns`, those being made included.
    fn pod_groups_in(&self, netns: u64) -> usize;
    /// Slots of group `svc` held: by registered workers and kept for adopted ones.
    fn held(&self, svc: usize) -> usize;
    /// Slots held in the pod groups of network namespace `netns`, and registrations waiting for
    /// its groups being made.
    fn pod_workers(&self, netns: u64) -> usize;
    /// Registrations waiting for the pod group of (`netns`, `addr`), being made.
    fn waiting(&self, netns: u64, addr: SocketAddr) -> usize;
    /// The adopted slot of group `svc` whose recorded socket is `cookie`: (slot, owner pid).
    fn adopted(&self, svc: usize, cookie: u64) -> Option<(u32, u32)>;
}

/// Where a checked registration goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// An existing group (by id).
    Group(usize),
    /// The pod group of this key, made (or being made) with this template.
    New { netns: u64, addr: SocketAddr, template: String },
}

/// A registration that passed the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Checked {
    pub target: Target,
    /// The kernel's word on the peer; its pid, not the message's, owns the slot.
    pub cred: Cred,
    /// The pid the message claims (differs in another pid namespace): for a log line only.
    pub claimed_pid: u32,
    /// The worker's label (`Register::pod`), shown for a pod group.
    pub pod_label: String,
    pub weight: u32,
    /// The weight the message asked for (0: the default).
    pub asked_weight: u32,
    /// The asked weight was above [`MAX_ASKED_WEIGHT`] and was lowered to it.
    pub weight_capped: bool,
    /// The adopted slot kept for this worker, if any.
    pub adopted: Option<u32>,
    /// The worker asked for a listener created by the controller ([`Register::WANT_SOCKET`]):
    /// the socket it handed over is only the proof of its address.
    pub want_socket: bool,
}

/// What the target group's settings allow.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_workers: u32,
    default_weight: u32,
    /// A pod group's: the most workers of its network namespace (`max_workers_per_pod`).
    per_pod: Option<usize>,
}

/// Every check a registration must pass before it touches a group.
pub(super) fn check(
    msg: &Message<'_>,
    evidence: &Evidence,
    rules: &Rules<'_>,
    places: &impl Places,
) -> Result<Checked, Rejection> {
    let request = decode(msg)?;
    let cred = evidence.cred.clone().map_err(internal)?;
    if !rules.settings.allows(cred.uid) {
        return Err(Rejection::new(
            Status::UidNotAllowed,
            format!("uid {} may not register here", cred.uid),
        ));
    }
    let want_socket = request.flags & Register::WANT_SOCKET != 0;
    let facts = socket_checks(evidence, want_socket)?;
    let netns = evidence.netns.clone().map_err(internal)?;
    // The socket decides the group: its namespace and its address, as the kernel says.
    let (target, limits) = match (rules.pods, facts.local) {
        (Some(pods), Some(local)) => {
            pod_target(pods, places, netns, local, request.template.as_str(), cred.uid)?
        }
        _ => listed_target(rules, places, netns, facts.local)?,
    };
    let cookie = evidence.cookie.clone().map_err(internal)?;
    let adopted = adopted_slot(places, &target, cookie, cred.pid)?;
    // A group being made counts the registrations waiting for it.
    let held = match &target {
        Target::Group(svc) => places.held(*svc),
        Target::New { netns, addr, .. } => places.waiting(*netns, *addr),
    };
    if adopted.is_none() && held >= limits.max_workers as usize {
        return Err(Rejection::new(
            Status::NoFreeSlot,
            format!("max_workers ({}) reached", limits.max_workers),
        ));
    }
    match limits.per_pod {
        Some(max) if adopted.is_none() && places.pod_workers(netns) >= max => {
            return Err(Rejection::new(
                Status::PodLimit,
                format!("max_workers_per_pod ({max}) reached: this pod has that many workers"),
            ));
        }
        _ => {}
    }
    let (weight, weight_capped) = match request.weight {
        0 => (limits.default_weight, false),
        w if w > MAX_ASKED_WEIGHT => (MAX_ASKED_WEIGHT, true),
        w => (w, false),
    };
    Ok(Checked {
        target,
        cred,
        claimed_pid: request.pid,
        pod_label: request.pod.as_str().to_owned(),
        weight,
        asked_weight: request.weight,
        weight_capped,
        adopted,
        want_socket,
    })
}

fn internal(reason: String) -> Rejection {
    Rejection::new(Status::Internal, reason)
}

/// The message itself: its layout, the layout version, exactly one descriptor.
fn decode(msg: &Message<'_>) -> Result<Register, Rejection> {
    let request = Register::decode(msg.data)
        .map_err(|e| Rejection::new(Status::BadMessage, e.to_string()))?;
    if request.layout != LAYOUT_VERSION {
        return Err(Rejection::new(
            Status::LayoutMismatch,
            format!(
                "load-table layout {} (this controller has {LAYOUT_VERSION}): upgrade the shim \
                 and the controller together",
                request.layout
            ),
        ));
    }
    if msg.truncated || msg.fds != 1 {
        let got = if msg.truncated { "too many".into() } else { msg.fds.to_string() };
        return Err(Rejection::new(
            Status::NoDescriptor,
            format!("expected exactly one descriptor, got {got}"),
        ));
    }
    Ok(request)
}

/// The socket handed over: a TCP socket with SO_REUSEPORT, listening (unless it is only the
/// proof of the address, with `WANT_SOCKET`: the shared socket, which another worker may have
/// shut down already, still holds the address).
fn socket_checks(evidence: &Evidence, want_socket: bool) -> Result<SocketFacts, Rejection> {
    let facts = evidence
        .socket
        .clone()
        .map_err(|e| Rejection::new(Status::NotAListener, format!("not a socket: {e}")))?;
    let problem = if !facts.tcp {
        Some("not a TCP socket")
    } else if !facts.listening && !want_socket {
        Some("not listening")
    } else if !facts.reuseport {
        Some("SO_REUSEPORT is not set")
    } else {
        None
    };
    match problem {
        Some(p) => Err(Rejection::new(Status::NotAListener, p)),
        None => Ok(facts),
    }
}

/// The listed service of the socket's address, in the services' network namespace.
fn listed_target(
    rules: &Rules<'_>,
    places: &impl Places,
    netns: u64,
    local: Option<SocketAddr>,
) -> Result<(Target, Limits), Rejection> {
    let svc = local.and_then(|a| places.group_of(a)).ok_or_else(|| {
        let local = local.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        Rejection::new(Status::NotAListener, format!("{local} is not balanced by this controller"))
    })?;
    if netns != rules.netns {
        return Err(Rejection::new(
            Status::WrongNamespace,
            "the socket is in another network namespace than the service",
        ));
    }
    let limits = Limits {
        max_workers: rules.settings.max_workers(),
        default_weight: rules.settings.default_weight(),
        per_pod: None,
    };
    Ok((Target::Group(svc), limits))
}

/// Where a socket in network namespace `netns`, bound to `addr`, goes, for a worker of `uid`
/// naming `template` (empty: the default), and the limits of its template.
fn pod_target(
    pods: &PodOptions,
    places: &impl Places,
    netns: u64,
    addr: SocketAddr,
    template: &str,
    uid: u32,
) -> Result<(Target, Limits), Rejection> {
    let name = if template.is_empty() { pods.default_template.as_str() } else { template };
    let t = pods.template(name).ok_or_else(|| {
        Rejection::new(
            Status::UnknownTemplate,
            format!("no template `{name}` here: the app serves on the kernel's hash"),
        )
    })?;
    // Root is limited like any uid: in a pod, uid 0 is only the container's (any pod may run
    // as root), so a template admits it only if it lists 0.
    if !t.allowed_uids.contains(&uid) {
        return Err(Rejection::new(
            Status::UidNotAllowed,
            format!("uid {uid} may not use template `{name}`"),
        ));
    }
    let limits = Limits {
        max_workers: t.max_workers,
        default_weight: t.weight,
        per_pod: Some(pods.max_workers_per_pod),
    };
    let new = Target::New { netns, addr, template: name.to_owned() };
    match places.pod_group(netns, addr) {
        Some((existing, group_template)) if group_template != name => {
            let being = if existing.is_some() { "" } else { "being " };
            Err(Rejection::new(
                Status::UnknownTemplate,
                format!(
                    "{addr} in this network namespace is {being}balanced with template \
                     `{group_template}`, not `{name}`: one address, one template"
                ),
            ))
        }
        Some((Some(id), _)) => Ok((Target::Group(id), limits)),
        Some((None, _)) => Ok((new, limits)),
        None if places.pod_groups_in(netns) >= pods.max_groups_per_pod => Err(Rejection::new(
            Status::PodLimit,
            format!(
                "max_groups_per_pod ({}) reached: this pod has that many groups, no new one",
                pods.max_groups_per_pod
            ),
        )),
        None if places.pod_groups() >= pods.max_groups => Err(Rejection::new(
            Status::NoFreeSlot,
            format!("max_groups ({}) reached: no new pod group", pods.max_groups),
        )),
        None => Ok((new, limits)),
    }
}

/// A worker that owned a slot of the adopted group gets it back, counters and all: it is
/// recognised by its socket's cookie (set by the kernel) and its pid (SO_PEERCRED), as the
/// controller recorded them, never by what the shared table says. The socket of an adopted slot
/// registered by another process is refused.
fn adopted_slot(
    places: &impl Places,
    target: &Target,
    cookie: u64,
    pid: u32,
) -> Result<Option<u32>, Rejection> {
    let Target::Group(svc) = *target else { return Ok(None) };
    match places.adopted(svc, cookie) {
        Some((slot, owner)) if owner == pid => Ok(Some(slot)),
        Some((slot, owner)) => Err(Rejection::new(
            Status::Internal,
            format!(
                "this socket is the one of adopted slot {slot}, kept for worker {owner}: only \
                 that worker may register it again"
            ),
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
