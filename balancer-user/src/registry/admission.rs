//! Admission: what a registration must satisfy, and the one place that answers it.
//!
//! [`Loop::register`] decodes the message, checks it ([`Loop::check`]: layout, descriptor,
//! credentials, uid, socket, address, namespace, capacity), puts the socket into the group, and
//! answers. Every refusal is a [`Rejection`]; the reply is sent and counted in one place
//! ([`Loop::answer`]), and every descriptor received with a refused message goes to the closer.
//! A connection carries one registration attempt: after a refusal it is closed.
//!
//! A registration with `Register::WANT_SOCKET` hands over the app's shared socket as the proof of
//! its address (it may have been shut down by another worker's split already); the listener that
//! joins the group is created here ([`super::handover`]) and goes back with the reply, after the
//! load map.
use std::os::fd::{AsFd, OwnedFd};

use balancer_common::protocol::{Register, Reply, Status, LAYOUT_VERSION};

use super::{
    event_loop::{Loop, Worker},
    pods::{Limits, Target},
    MAX_WEIGHT,
};
use crate::sys::{self, Cred, Received};

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

/// A registration that passed the checks.
pub(super) struct Checked {
    /// The group, or the pod group to make.
    target: Target,
    cred: Cred,
    /// `None` when the pid is not visible here (exit seen through the connection).
    pidfd: Option<OwnedFd>,
    /// The worker's label (`Register::pod`), shown for a pod group.
    pod_label: String,
    weight: u32,
    asked_weight: u32,
    /// The adopted slot kept for this worker, if any.
    adopted: Option<u32>,
    /// The worker asked for a listener created here ([`Register::WANT_SOCKET`], see
    /// [`super::handover`]): the socket it handed over is only the proof of its address.
    want_socket: bool,
}

impl Loop {
    /// Handles one registration message on connection `id`.
    pub(super) fn register(&mut self, id: u64, data: &[u8], msg: Received) {
        let truncated = msg.truncated;
        let mut fds = msg.fds;
        let outcome = self.check(id, data, &fds, truncated).and_then(|checked| {
            let socket = if checked.want_socket {
                let svc = match checked.target {
                    Target::Group(svc) => Some(svc),
                    Target::New { .. } => None,
                };
                let like = self.workers.iter().find(|((s, _), _)| Some(*s) == svc);
                super::handover::listener_for(
                    fds[0].as_fd(),
                    like.map(|(_, w)| w.listener.as_fd()),
                )?
            } else {
                fds.pop().expect("checked: exactly one descriptor")
            };
            self.admit(id, checked, socket)
        });
        for fd in fds {
            self.closer.close(fd);
        }
        if let Err(rejection) = outcome {
            // The connection closes right after: a failed send changes nothing.
            let _ = self.answer(id, &[], Err(rejection));
            self.close_conn(id);
        }
    }

    /// Sends the reply to connection `id` and counts it: the only place that does.
    /// `fds`: the load map, then the worker's listener when this controller created it.
    fn answer(
        &self,
        id: u64,
        fds: &[std::os::fd::BorrowedFd<'_>],
        outcome: Result<Reply, Rejection>,
    ) -> Result<(), sys::Error> {
        let Some(conn) = self.conns.get(&id) else { return Ok(()) };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(r) => {
                log::warn!("registration rejected ({}): {}", r.status.name(), r.reason);
                Reply::new(r.status, 0, 0, &r.reason)
            }
        };
        self.shared.counters.count_reply(reply.status());
        sys::send_with_fds(conn.fd.as_fd(), &reply.encode(), fds)
    }

    /// Every check a registration must pass before it touches the group.
    fn check(
        &self,
        id: u64,
        data: &[u8],
        fds: &[OwnedFd],
        truncated: bool,
    ) -> Result<Checked, Rejection> {
        let request = Register::decode(data)
            .map_err(|e| Rejection::new(Status::BadMessage, e.to_string()))?;
        if request.layout != LAYOUT_VERSION {
            return Err(Rejection::new(
                Status::LayoutMismatch,
                format!(
                    "load-table layout {} (this controller has {LAYOUT_VERSION}): upgrade the \
                     shim and the controller together",
                    request.layout
                ),
            ));
        }
        if truncated || fds.len() != 1 {
            let got = if truncated { "too many".into() } else { fds.len().to_string() };
            return Err(Rejection::new(
                Status::NoDescriptor,
                format!("expected exactly one descriptor, got {got}"),
            ));
        }
        let socket = fds[0].as_fd();
        let conn = &self.conns[&id];
        let cred = sys::peer_cred(conn.fd.as_fd())
            .map_err(|e| Rejection::new(Status::Internal, e.to_string()))?;
        let settings = self.shared.settings().clone();
        if !settings.allows(cred.uid) {
            return Err(Rejection::new(
                Status::UidNotAllowed,
                format!("uid {} may not register here", cred.uid),
            ));
        }
        let facts = crate::listener::socket_facts(socket)
            .map_err(|e| Rejection::new(Status::NotAListener, format!("not a socket: {e}")))?;
        let want_socket = request.flags & Register::WANT_SOCKET != 0;
        let problem = if !facts.tcp {
            Some("not a TCP socket")
        } else if !facts.listening && !want_socket {
            // With WANT_SOCKET the socket is only the proof of the address: the shared socket,
            // which another worker may have shut down already (it still holds the address).
            Some("not listening")
        } else if !facts.reuseport {
            Some("SO_REUSEPORT is not set")
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(Rejection::new(Status::NotAListener, p));
        }
        let netns = sys::netns_cookie(socket)
            .map_err(|e| Rejection::new(Status::Internal, e.to_string()))?;
        // The socket decides the group: its namespace and its address, as the kernel says.
        let (target, limits) = match (&self.shared.pods, facts.local) {
            (Some(_), Some(local)) => {
                self.pod_target(netns, local, request.template.as_str(), cred.uid)?
            }
            _ => {
                let svc = facts
                    .local
                    .and_then(|a| self.shared.all_services().into_iter().find(|(_, s)| s.addr == a))
                    .map(|(id, _)| id)
                    .ok_or_else(|| {
                        let local =
                            facts.local.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
                        Rejection::new(
                            Status::NotAListener,
                            format!("{local} is not balanced by this controller"),
                        )
                    })?;
                if netns != self.netns {
                    return Err(Rejection::new(
                        Status::WrongNamespace,
                        "the socket is in another network namespace than the service",
                    ));
                }
                let limits = Limits {
                    max_workers: settings.max_workers,
                    default_weight: settings.default_weight,
                };
                (Target::Group(svc), limits)
            }
        };
        if request.pid != cred.pid {
            log::debug!(
                "worker says pid {}, the kernel says {} (pid namespaces?): using the kernel's",
                request.pid,
                cred.pid
            );
        }
        // pid 0: the worker is in a pid namespace the controller cannot see (a pod); its exit is
        // seen through its registration connection, and an adopted slot is recognised by its
        // socket alone.
        let pidfd = match cred.pid {
            0 => None,
            pid => Some(
                sys::pidfd_open(pid)
                    .map_err(|e| Rejection::new(Status::Internal, format!("{e} (pid {pid})")))?,
            ),
        };
        // A worker that owned a slot of the adopted group gets it back, counters and all: it is
        // recognised by its socket's cookie (set by the kernel) and its pid (SO_PEERCRED), as the
        // controller recorded them, never by what the shared table says.
        let cookie = sys::socket_cookie(socket)
            .map_err(|e| Rejection::new(Status::Internal, e.to_string()))?;
        let svc = match target {
            Target::Group(svc) => Some(svc),
            Target::New { .. } => None,
        };
        let adopted =
            match self.adopted.iter().find(|((s, _), a)| Some(*s) == svc && a.cookie == cookie) {
                Some(((_, slot), a)) if a.pid == cred.pid => Some(*slot),
                Some(((_, slot), a)) => {
                    return Err(Rejection::new(
                        Status::Internal,
                        format!(
                        "this socket is the one of adopted slot {slot}, kept for worker {}: only \
                         that worker may register it again",
                        a.pid
                    ),
                    ));
                }
                None => None,
            };
        let held = self.workers.keys().filter(|(s, _)| Some(*s) == svc).count()
            + self.adopted.keys().filter(|(s, _)| Some(*s) == svc).count();
        if adopted.is_none() && held >= limits.max_workers as usize {
            return Err(Rejection::new(
                Status::NoFreeSlot,
                format!("max_workers ({}) reached", limits.max_workers),
            ));
        }
        let weight = match request.weight {
            0 => limits.default_weight,
            w if w > MAX_WEIGHT => {
                log::warn!(
                    "worker {} asked for weight {w}: lowered to the maximum, {MAX_WEIGHT}",
                    cred.pid
                );
                self.shared
                    .counters
                    .weights_capped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                MAX_WEIGHT
            }
            w => w,
        };
        Ok(Checked {
            target,
            cred,
            pidfd,
            pod_label: request.pod.as_str().to_owned(),
            weight,
            asked_weight: request.weight,
            adopted,
            want_socket,
        })
    }

    /// Admits a registration that waited for its pod group `svc` to be made, or refuses it.
    pub(super) fn admit_into(&mut self, id: u64, mut c: Checked, socket: OwnedFd, svc: usize) {
        c.target = Target::Group(svc);
        if let Err(rejection) = self.admit(id, c, socket) {
            let _ = self.answer(id, &[], Err(rejection));
            self.close_conn(id);
        }
    }

    /// Refuses a registration that waited for a pod group that could not be made.
    pub(super) fn refuse_waiting(&mut self, id: u64, socket: OwnedFd, reason: String) {
        self.closer.close(socket);
        let _ = self.answer(id, &[], Err(Rejection::new(Status::Internal, reason)));
        self.close_conn(id);
    }

    /// Puts a checked worker's socket into its group and answers it.
    fn admit(&mut self, id: u64, c: Checked, socket: OwnedFd) -> Result<(), Rejection> {
        let svc = match &c.target {
            Target::Group(svc) => *svc,
            Target::New { netns, addr, template } => {
                // Made on another thread; answered when it is ready (see `pods`).
                let (netns, addr, template) = (*netns, *addr, template.clone());
                self.make_pod_group(netns, addr, template, id, c, socket);
                return Ok(());
            }
        };
        let service = self
            .shared
            .service(svc)
            .ok_or_else(|| Rejection::new(Status::Internal, "the group is gone"))?;
        if let Some(pod) = &service.pod {
            pod.set_label(&c.pod_label);
        }
        let mut group = service.group();
        // Attaching on every registration is idempotent and also covers a reuseport group
        // that the kernel recreated after all its sockets were closed.
        group
            .attach(&socket)
            .map_err(|e| Rejection::new(Status::Internal, format!("attaching the program: {e}")))?;
        let inserted = match c.adopted {
            Some(slot) => group.reuse(slot, &socket, c.cred.pid, c.weight).map(|e| (slot, e)),
            None => group.insert(&socket, c.cred.pid, c.weight),
        };
        let (slot, epoch) = inserted.map_err(|e| match e {
            crate::Error::NoFreeSlot => Rejection::new(Status::NoFreeSlot, "every slot is taken"),
            e => Rejection::new(Status::Internal, e.to_string()),
        })?;
        let map_id = group.loads_map_id();
        let mut reply = Reply::new(Status::Ok, slot, epoch, "registered").with_map_id(map_id);
        let mut fds = vec![group.loads_fd()];
        if c.want_socket {
            reply = reply.with_flags(Reply::SOCKET_ATTACHED);
            fds.push(socket.as_fd());
        }
        if let Err(e) = self.answer(id, &fds, Ok(reply)) {
            log::warn!("reply to worker {}: {e}", c.cred.pid);
            let _ = group.remove(slot);
            drop(group);
            self.closer.close(socket);
            self.close_conn(id);
            return Ok(());
        }
        drop(group);
        let key = (svc, slot);
        if self.adopted.remove(&key).is_some() {
            log::info!(
                "worker {} registered again on {}: back in its slot {slot} (epoch {epoch}), \
                 counters kept",
                c.cred.pid,
                service.describe()
            );
        } else {
            log::info!(
                "worker {} registered on {} as slot {slot} (epoch {epoch}){}",
                c.cred.pid,
                service.describe(),
                if c.want_socket { ", on a listener created for it (uid drop)" } else { "" }
            );
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.worker = Some(key);
        }
        let previous = self.workers.insert(
            key,
            Worker {
                pid: c.cred.pid,
                uid: c.cred.uid,
                pidfd: c.pidfd,
                listener: socket,
                conn: id,
                prev_diff: 0,
                last_accepted: 0,
                asked_weight: c.asked_weight,
            },
        );
        if let Some(old) = previous {
            self.closer.close(old.listener);
        }
        if let Some(parked) = self.parked.remove(&svc) {
            // Its queue migrates to the new worker. Shut down first: the parked socket may be
            // that of a worker still hanging on its way out (see `remove_worker_and`), which
            // holds it open; closing only our copy would leave its queue waiting for it.
            if let Err(e) = sys::shutdown(parked.fd.as_fd()) {
                log::debug!("shutting the parked socket down: {e}");
            }
            self.closer.close(parked.fd);
        }
        Ok(())
    }
}
