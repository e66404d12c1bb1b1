//! The registry's state, composed of its parts, and the operations that span them.
//!
//! Each part owns its state behind a small interface: [`Connections`] (the peers, and where each
//! stands), [`Workers`] (which slot each registered worker holds, and the parked last sockets),
//! [`Adoption`] (slots kept for the workers of adopted groups), [`Pods`] (pod groups being made,
//! and the empty ones' timers), [`Closer`] (closing peer descriptors off this thread), and the
//! groups themselves ([`Services`], shared with the caller). [`State`] only composes them: a
//! registration is checked by [`admission::check`] (pure), then placed; a departure frees the
//! slot in its group, forgets the worker and closes its connection.
//!
//! Invariants: every reply is sent and counted in one place ([`State::answer`]); every peer
//! descriptor goes to the closer; a slot is freed once (the worker's record is removed first, and
//! only a removed record frees); events are keyed by what cannot be reused and no peer can write
//! (connection ids, which also name a registration), so a stale event never touches a new owner.
use std::{
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use balancer_common::protocol::{Reply, Status};

use super::{
    admission::{self, Checked, Evidence, Message, Places, Rejection, Rules, Target},
    adoption::Adoption,
    closer::Closer,
    connections::{Connections, Stage},
    counters::Counters,
    handover,
    pods::{Made, PodGroup, Pods},
    reconcile,
    services::{Service, Services},
    shared::{Shared, Stop},
    workers::{Key, Worker, Workers},
    RegistryOptions,
};
use crate::{
    sys::{self, Received},
    Group,
};

/// A registration that passed the checks, with what it needs to join a group: a pidfd of its
/// worker (when its pid is visible here) and the socket that joins (the one it handed over, or
/// one created for it).
struct Prepared {
    checked: Checked,
    pidfd: Option<OwnedFd>,
    socket: OwnedFd,
}

/// A prepared registration of connection `conn`, waiting for its pod group to be made.
struct Waiting {
    conn: u64,
    prepared: Prepared,
}

/// Something to watch, besides the registration socket and the wake-up eventfd.
#[derive(Clone, Copy)]
pub(super) enum Event {
    Conn(u64),
    /// `conn`: the id of the worker's registration connection, registry-private and never
    /// reused (the slot's epoch lives in the shared table, which workers can write).
    Pidfd {
        key: Key,
        conn: u64,
    },
    AdoptedPidfd {
        key: Key,
        pid: u32,
    },
}

pub(super) struct State {
    shared: Arc<Shared>,
    options: RegistryOptions,
    /// Network namespace of the listed services.
    netns: u64,
    /// Signalled when a pod group is made.
    wake: Arc<OwnedFd>,
    conns: Connections,
    workers: Workers,
    adoption: Adoption,
    pods: Pods<Waiting>,
    closer: Closer,
    /// Generation of the settings last applied to registered workers.
    settings_generation: u64,
    /// Reading and accepting stopped: the closer holds its budget ([`State::reading`]).
    reading_stopped: bool,
}

/// What admission sees of the state.
struct View<'a> {
    services: &'a Services,
    workers: &'a Workers,
    adoption: &'a Adoption,
    pods: &'a Pods<Waiting>,
}

impl Places for View<'_> {
    fn group_of(&self, addr: SocketAddr) -> Option<usize> {
        self.services.find_addr(addr)
    }

    fn pod_group(&self, netns: u64, addr: SocketAddr) -> Option<(Option<usize>, String)> {
        if let Some(template) = self.pods.being_made(netns, addr) {
            return Some((None, template.to_owned()));
        }
        let (id, s) = self.services.find_pod(netns, addr)?;
        Some((Some(id), s.pod.as_ref().map(|p| p.template.clone()).unwrap_or_default()))
    }

    fn pod_groups(&self) -> usize {
        self.services.pods() + self.pods.making()
    }

    fn pod_groups_in(&self, netns: u64) -> usize {
        self.services.pods_in(netns).len() + self.pods.making_in(netns)
    }

    fn held(&self, svc: usize) -> usize {
        self.workers.held(svc) + self.adoption.held(svc)
    }

    fn pod_workers(&self, netns: u64) -> usize {
        let held: usize = self.services.pods_in(netns).into_iter().map(|id| self.held(id)).sum();
        held + self.pods.waiting_in(netns)
    }

    fn waiting(&self, netns: u64, addr: SocketAddr) -> usize {
        self.pods.waiting(netns, addr)
    }

    fn adopted(&self, svc: usize, cookie: u64) -> Option<(u32, u32)> {
        self.adoption.find(svc, cookie)
    }
}

impl State {
    pub(super) fn new(
        shared: Arc<Shared>,
        wake: Arc<OwnedFd>,
        netns: u64,
        options: &RegistryOptions,
    ) -> std::io::Result<Self> {
        let adoption = Adoption::of(shared.services(), options.adoption_grace);
        let gauge = shared.clone();
        let closer = Closer::start(
            shared.closer_health().clone(),
            Arc::new(move |n| gauge.counters().closing_backlog.store(n, Ordering::Relaxed)),
        )?;
        Ok(Self {
            shared,
            options: options.clone(),
            netns,
            wake,
            conns: Connections::default(),
            workers: Workers::default(),
            adoption,
            pods: Pods::new(options.pods.clone()),
            closer,
            settings_generation: 0,
            reading_stopped: false,
        })
    }

    fn counters(&self) -> &Counters {
        self.shared.counters()
    }

    /// At each turn: descriptors the closer could not take yet.
    pub(super) fn turn(&mut self) {
        self.closer.retry();
    }

    /// What to watch: the connections, the workers' and the adopted slots' owners' pidfds.
    pub(super) fn watched(&self) -> Vec<(Event, BorrowedFd<'_>)> {
        let conns = self.conns.watched().map(|(id, fd)| (Event::Conn(id), fd));
        let workers =
            self.workers.watched().map(|(key, conn, fd)| (Event::Pidfd { key, conn }, fd));
        let adopted =
            self.adoption.watched().map(|(key, pid, fd)| (Event::AdoptedPidfd { key, pid }, fd));
        conns.chain(workers).chain(adopted).collect()
    }

    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            Event::Conn(id) => self.on_conn(id),
            Event::Pidfd { key, conn } => {
                // Only if the slot still has the owner this event was about.
                let Some(w) = self.workers.get(key).filter(|w| w.conn == conn) else { return };
                log::info!(
                    "worker {} exited: slot {} of {} freed",
                    w.pid,
                    key.1,
                    self.describe(key.0)
                );
                self.remove_worker(key, false);
            }
            Event::AdoptedPidfd { key, pid } => {
                if self.adoption.kept_for(key, pid) {
                    self.free_adopted(key, "exited before registering again")
                }
            }
        }
    }

    /// The periodic work: reconciliation, settings, and every expiry.
    pub(super) fn tick(&mut self) {
        self.reconcile();
        self.apply_settings();
        self.expire_adopted();
        self.expire_pending();
        self.expire_parked();
        self.expire_pod_groups();
    }

    /// Open registration connections.
    pub(super) fn connections(&self) -> usize {
        self.conns.len()
    }

    /// A connection accepted: refused at once if its uid may not register; else kept (within
    /// the caps on unregistered ones) and its registration read now: the shim sends it right
    /// after connecting, and a flood of later connections must not push this one out first.
    pub(super) fn accepted(&mut self, fd: OwnedFd) {
        if let Some(id) = self.admit_conn(fd) {
            self.on_conn(id);
        }
    }

    /// Refuses a connection of a uid that may not register, before reading anything from it, and
    /// keeps it (within caps of its own) until its message or its hang-up; keeps the others
    /// within the caps on unregistered ones and returns the new id.
    fn admit_conn(&mut self, fd: OwnedFd) -> Option<u64> {
        let uid = match sys::peer_cred(fd.as_fd()) {
            Ok(c) => c.uid,
            Err(e) => {
                log::warn!("registry: {e}");
                self.closer.close(fd);
                return None;
            }
        };
        if !self.shared.settings().allows(uid) {
            // The connection stays open until its message comes (read and dropped, `on_conn`)
            // or it hangs up: closed with a message unread, a unix socket resets its peer's next
            // read, and the peer would get that instead of this reply.
            self.send_refusal(fd.as_fd(), uid);
            self.make_room_for_refused(uid);
            self.conns.open_refused(fd, uid);
            return None;
        }
        if self.conns.pending(Some(uid)) >= self.options.max_pending_per_uid.max(1) {
            self.evict_oldest_pending(Some(uid));
        }
        if self.conns.pending(None) >= self.options.max_pending.max(1) {
            self.evict_oldest_pending(None);
        }
        Some(self.conns.open(fd, uid))
    }

    /// Answers a peer whose uid may not register (logged and counted), without waiting.
    fn send_refusal(&self, fd: BorrowedFd<'_>, uid: u32) {
        let reason = format!("uid {uid} may not register here");
        log::warn!("registration rejected ({}): {reason}", Status::UidNotAllowed.name());
        self.counters().count_reply(Status::UidNotAllowed);
        let reply = Reply::new(Status::UidNotAllowed, 0, 0, &reason);
        let _ = sys::send_with_fd(fd, &reply.encode(), None);
    }

    /// Closes the oldest refused connections, of `uid` and of any uid, while either is at its cap
    /// (those of unregistered connections, counted apart): a flood of refused connections holds
    /// a bounded number of descriptors and never pushes out a connection that may register.
    fn make_room_for_refused(&mut self, uid: u32) {
        for (of, cap) in
            [(Some(uid), self.options.max_pending_per_uid), (None, self.options.max_pending)]
        {
            if self.conns.refused(of) >= cap.max(1) {
                if let Some(id) = self.conns.oldest_refused(of) {
                    self.close_conn(id);
                }
            }
        }
    }

    /// Descriptors ran out: closes the oldest refused connection (its peer may not register in
    /// any case; its refusal was sent at accept), or, with none left, the oldest connection with
    /// no registration read yet. So a flood from a uid that may not register, at the descriptor
    /// limit, closes its own connections, not a worker's that may register. (A refused peer
    /// closed so before its message was read gets a reset instead of its refusal: it sent after
    /// the refusal came, which a shim never does, or holds the connection open without sending.)
    pub(super) fn make_room(&mut self) {
        match self.conns.oldest_refused(None) {
            Some(id) => self.close_conn(id),
            None => self.evict_oldest_pending(None),
        }
    }

    /// Closes the oldest connection with no registration read yet (of `uid`, if given): to make
    /// room. A registration waiting for its pod group is never evicted.
    fn evict_oldest_pending(&mut self, uid: Option<u32>) {
        if let Some(id) = self.conns.oldest_pending(uid) {
            Counters::bump(&self.counters().pending_closed);
            self.close_conn(id);
        }
    }

    /// Whether the registry reads registration messages and accepts connections now: not while
    /// the closer holds its budget of descriptors ([`Closer::full`]). Says so once per episode.
    pub(super) fn reading(&mut self) -> bool {
        let was_full = self.reading_stopped;
        self.reading_stopped = self.closer.full();
        if self.reading_stopped && !was_full {
            Counters::bump(&self.counters().reading_stops);
            log::warn!(
                "registry: {} peer descriptors wait to be closed (budget {}; closes are stalled): \
                 not accepting or reading registrations until half of them are closed \
                 (departures are still processed)",
                self.closer.backlog(),
                self.closer.budget()
            );
        } else if was_full && !self.reading_stopped {
            log::info!(
                "registry: {} peer descriptors wait to be closed: accepting and reading \
                 registrations again",
                self.closer.backlog()
            );
        }
        !self.reading_stopped
    }

    fn on_conn(&mut self, id: u64) {
        if !self.reading() {
            // Only a hang-up is taken (it frees what the connection holds); messages wait.
            let hung_up = self.conns.fd(id).is_some_and(|fd| {
                sys::poll_ready(&[(fd, false)], std::time::Duration::ZERO).is_ok_and(|r| r[0])
            });
            if hung_up {
                self.close_conn(id);
            }
            return;
        }
        let Some(fd) = self.conns.fd(id) else { return };
        let mut buf = [0u8; 256];
        match sys::recv_with_fds(fd, &mut buf) {
            Err(e) if e.is_transient() => {}
            Err(_) => self.close_conn(id),
            Ok(Received { len: 0, fds, .. }) => {
                for fd in fds {
                    self.closer.close(fd);
                }
                self.close_conn(id)
            }
            Ok(msg) if !self.conns.takes_message(id) => {
                // One registration per connection; anything more is ignored. A refused
                // connection's message is what it was kept open for: now it can close.
                for fd in msg.fds {
                    self.closer.close(fd);
                }
                if self.conns.stage(id) == Some(Stage::Refused) {
                    self.close_conn(id);
                }
            }
            Ok(msg) => {
                let len = msg.len.min(buf.len());
                self.register(id, &buf[..len], msg);
            }
        }
    }

    /// What the kernel says about connection `id`'s peer and the socket it handed over.
    fn evidence(&self, id: u64, fds: &[OwnedFd]) -> Evidence {
        let text = |e: sys::Error| e.to_string();
        let cred = match self.conns.fd(id) {
            Some(fd) => sys::peer_cred(fd).map_err(text),
            None => Err("the connection is gone".into()),
        };
        let [socket] = fds else {
            let none = "not exactly one descriptor".to_owned();
            let (socket, netns, cookie) = (Err(none.clone()), Err(none.clone()), Err(none));
            return Evidence { cred, socket, netns, cookie };
        };
        Evidence {
            cred,
            socket: crate::listener::socket_facts(socket.as_fd()).map_err(|e| e.to_string()),
            netns: sys::netns_cookie(socket.as_fd()).map_err(text),
            cookie: sys::socket_cookie(socket.as_fd()).map_err(text),
        }
    }

    /// Handles one registration message on connection `id`.
    fn register(&mut self, id: u64, data: &[u8], msg: Received) {
        let mut fds = msg.fds;
        let message = Message { data, fds: fds.len(), truncated: msg.truncated };
        let evidence = self.evidence(id, &fds);
        let settings = self.shared.settings().clone();
        let rules = Rules { settings: &settings, pods: self.pods.options(), netns: self.netns };
        let view = View {
            services: self.shared.services(),
            workers: &self.workers,
            adoption: &self.adoption,
            pods: &self.pods,
        };
        let outcome = admission::check(&message, &evidence, &rules, &view)
            .and_then(|checked| self.prepare(checked, &mut fds));
        let outcome = outcome.and_then(|prepared| self.place(id, prepared));
        for fd in fds {
            self.closer.close(fd);
        }
        if let Err(rejection) = outcome {
            self.refuse(id, rejection);
        }
    }

    /// What a checked registration needs before it joins a group ([`Prepared`]).
    fn prepare(&self, c: Checked, fds: &mut Vec<OwnedFd>) -> Result<Prepared, Rejection> {
        if c.claimed_pid != c.cred.pid {
            log::debug!(
                "worker says pid {}, the kernel says {} (pid namespaces?): using the kernel's",
                c.claimed_pid,
                c.cred.pid
            );
        }
        if c.weight_capped {
            log::warn!(
                "worker {} asked for weight {}: lowered to the maximum, {}",
                c.cred.pid,
                c.asked_weight,
                c.weight
            );
            Counters::bump(&self.counters().weights_capped);
        }
        // pid 0: the worker is in a pid namespace the controller cannot see (a pod); its exit is
        // seen through its registration connection, and an adopted slot is recognised by its
        // socket alone.
        let pidfd = match c.cred.pid {
            0 => None,
            pid => Some(
                sys::pidfd_open(pid)
                    .map_err(|e| Rejection::new(Status::Internal, format!("{e} (pid {pid})")))?,
            ),
        };
        let socket = if c.want_socket {
            let like = match c.target {
                Target::Group(svc) => self.workers.listener_of(svc),
                Target::New { .. } => None,
            };
            handover::listener_for(fds[0].as_fd(), like)?
        } else {
            fds.pop().expect("checked: exactly one descriptor")
        };
        Ok(Prepared { checked: c, pidfd, socket })
    }

    /// Puts a prepared registration into its group, or has it wait for its pod group.
    fn place(&mut self, id: u64, prepared: Prepared) -> Result<(), Rejection> {
        let (netns, addr, template) = match &prepared.checked.target {
            Target::Group(svc) => return self.admit(id, *svc, prepared),
            Target::New { netns, addr, template } => (*netns, *addr, template.clone()),
        };
        // Made on another thread; answered when it is ready (`collect_made`).
        let waiting = Waiting { conn: id, prepared };
        match self.pods.wait_for(netns, addr, &template, &self.wake, waiting) {
            Ok(()) => {
                self.conns.set_stage(id, Stage::Waiting);
                Ok(())
            }
            Err((w, reason)) => {
                self.closer.close(w.prepared.socket);
                Err(Rejection::new(Status::Internal, reason))
            }
        }
    }

    /// Refuses the registration of connection `id`, and closes it.
    fn refuse(&mut self, id: u64, rejection: Rejection) {
        // The connection closes right after: a failed send changes nothing.
        let _ = self.answer(id, &[], Err(rejection));
        self.close_conn(id);
    }

    /// Sends the reply to connection `id` and counts it: the only place that does.
    /// `fds`: the load map, then the worker's listener when this controller created it.
    fn answer(
        &self,
        id: u64,
        fds: &[BorrowedFd<'_>],
        outcome: Result<Reply, Rejection>,
    ) -> Result<(), sys::Error> {
        let Some(conn) = self.conns.fd(id) else { return Ok(()) };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(r) => {
                log::warn!("registration rejected ({}): {}", r.status.name(), r.reason);
                Reply::new(r.status, 0, 0, &r.reason)
            }
        };
        self.counters().count_reply(reply.status());
        sys::send_with_fds(conn, &reply.encode(), fds)
    }

    /// Puts a checked worker's socket into group `svc` and answers it.
    fn admit(&mut self, id: u64, svc: usize, prepared: Prepared) -> Result<(), Rejection> {
        let Prepared { checked: c, pidfd, socket } = prepared;
        let internal = |e: String| Rejection::new(Status::Internal, e);
        let service =
            self.shared.services().get(svc).ok_or_else(|| internal("the group is gone".into()))?;
        if let Some(pod) = &service.pod {
            pod.set_label(&c.pod_label);
        }
        let mut group = service.group();
        // Attaching on every registration is idempotent and also covers a reuseport group
        // that the kernel recreated after all its sockets were closed.
        group.attach(&socket).map_err(|e| internal(format!("attaching the program: {e}")))?;
        let inserted = match c.adopted {
            Some(slot) => group.reuse(slot, &socket, c.cred.pid, c.weight).map(|e| (slot, e)),
            None => group.insert(&socket, c.cred.pid, c.weight),
        };
        let (slot, epoch) = inserted.map_err(|e| match e {
            crate::Error::NoFreeSlot => Rejection::new(Status::NoFreeSlot, "every slot is taken"),
            e => internal(e.to_string()),
        })?;
        let mut reply =
            Reply::new(Status::Ok, slot, epoch, "registered").with_map_id(group.loads_map_id());
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
        if self.adoption.remove((svc, slot)).is_some() {
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
        self.record(id, (svc, slot), &c, pidfd, socket);
        Ok(())
    }

    /// Records the worker registered on connection `id` in slot `key`.
    fn record(&mut self, id: u64, key: Key, c: &Checked, pidfd: Option<OwnedFd>, socket: OwnedFd) {
        self.conns.set_stage(id, Stage::Registered(key));
        let worker = Worker {
            pid: c.cred.pid,
            uid: c.cred.uid,
            pidfd,
            listener: socket,
            conn: id,
            prev_diff: 0,
            last_accepted: 0,
            asked_weight: c.asked_weight,
        };
        let (replaced, parked) = self.workers.insert(key, worker);
        if let Some(old) = replaced {
            self.closer.close(old);
        }
        if let Some(parked) = parked {
            // Its queue migrates to the new worker. Shut down first: the parked socket may be
            // that of a worker still hanging on its way out (see `remove_worker`), which holds
            // it open; closing only our copy would leave its queue waiting for it.
            if let Err(e) = sys::shutdown(parked.as_fd()) {
                log::debug!("shutting the parked socket down: {e}");
            }
            self.closer.close(parked);
        }
    }

    /// Takes the pod groups made meanwhile and answers the registrations that waited for them.
    pub(super) fn collect_made(&mut self) {
        for made in self.pods.take_made() {
            let Made { netns, addr, template, started, waiting, result } = made;
            let (group, pin_dir) = match result {
                Ok(made) => made,
                Err(e) => {
                    log::error!("pod group {addr} (netns {netns}): {e}");
                    for w in waiting {
                        self.closer.close(w.prepared.socket);
                        let reason = format!("making the group of {addr}: {e}");
                        self.refuse(w.conn, Rejection::new(Status::Internal, reason));
                    }
                    continue;
                }
            };
            log::info!(
                "pod group {addr} (netns {netns}, template {template}): {} {} program, policy {}, \
                 made in {:?}{}",
                if group.adopted() { "adopted the pinned" } else { "new" },
                group.program().name(),
                group.policy().name(),
                started.elapsed(),
                pin_dir.map(|d| format!(", pinned at {}", d.display())).unwrap_or_default()
            );
            let pod = PodGroup::new(netns, template);
            let svc = self.shared.services().add(Service::pod(addr, pod, group));
            for w in waiting {
                if self.conns.stage(w.conn) != Some(Stage::Waiting) {
                    self.closer.close(w.prepared.socket);
                    continue;
                }
                if let Err(rejection) = self.admit(w.conn, svc, w.prepared) {
                    self.refuse(w.conn, rejection);
                }
            }
        }
    }

    fn close_conn(&mut self, id: u64) {
        let Some((fd, stage)) = self.conns.remove(id) else { return };
        if let Stage::Registered(key) = stage {
            if let Some(w) = self.workers.get(key) {
                log::info!(
                    "worker {} closed its registration: slot {} of {} freed",
                    w.pid,
                    key.1,
                    self.describe(key.0)
                );
            }
            self.remove_worker(key, false);
        }
        self.closer.close(fd);
    }

    /// The group's address (and pod) for log lines.
    fn describe(&self, svc: usize) -> String {
        let service = self.shared.services().get(svc);
        service.map(|s| s.describe()).unwrap_or_else(|| format!("group {svc}"))
    }

    /// Frees the worker's slot; with `retire`, also shuts its socket down (the socket is shared
    /// with the worker): it stops listening, and the program moves its queue to the others.
    /// The last worker of a service is never shut down: there is no other to take its queue,
    /// and new connections would be refused. Its socket is parked instead, and shut down when
    /// the next worker registers (its queue then moves to that one).
    fn remove_worker(&mut self, key: Key, retire: bool) {
        let Some((w, last)) = self.workers.remove(key) else { return };
        if let Some(service) = self.shared.services().get(key.0) {
            if let Err(e) = service.group().remove(key.1) {
                log::warn!("freeing slot {}: {e}", key.1);
            }
        }
        if retire && !last {
            if let Err(e) = sys::shutdown(w.listener.as_fd()) {
                log::warn!("retiring the socket of worker {}: {e}", w.pid);
            }
        }
        Counters::bump(&self.counters().departures);
        if let Some((fd, _)) = self.conns.remove(w.conn) {
            self.closer.close(fd);
        }
        if last
            && !self.shared.stopping()
            && crate::listener::socket_facts(w.listener.as_fd()).is_ok_and(|f| f.listening)
        {
            log::info!(
                "{}: no worker left; keeping the last socket listening until one registers \
                 (at most {:?})",
                self.describe(key.0),
                self.options.park_timeout
            );
            if let Some(old) = self.workers.park(key.0, w.listener) {
                self.closer.close(old);
            }
        } else {
            // If the worker is gone, so is its socket once this copy closes, and the program
            // moves its queue to the other workers.
            self.closer.close(w.listener);
        }
    }

    /// Frees the slot of an adopted group kept for a worker that did not register again.
    fn free_adopted(&mut self, key: Key, why: &str) {
        let Some(pid) = self.adoption.remove(key) else { return };
        let Some(service) = self.shared.services().get(key.0) else { return };
        log::info!(
            "{}: worker {pid} of adopted slot {} {why}: slot freed",
            service.describe(),
            key.1
        );
        let removed = service.group().remove(key.1);
        if let Err(e) = removed {
            log::warn!("freeing slot {}: {e}", key.1);
        }
    }

    fn expire_adopted(&mut self) {
        for key in self.adoption.late(Instant::now()) {
            self.free_adopted(key, "did not register again in time");
        }
    }

    /// Closes connections that did not register within `register_timeout`.
    fn expire_pending(&mut self) {
        let limit = self.options.register_timeout;
        let late = self.conns.late(limit);
        if !late.is_empty() {
            log::info!("closing {} connections that did not register within {limit:?}", late.len());
        }
        for id in late {
            Counters::bump(&self.counters().pending_closed);
            self.close_conn(id);
        }
    }

    /// Closes parked sockets kept longer than `park_timeout` without a worker registering.
    fn expire_parked(&mut self) {
        let limit = self.options.park_timeout;
        for (svc, fd) in self.workers.unpark_late(limit) {
            log::warn!(
                "{}: no worker registered within {limit:?} of the last one leaving: closing its \
                 socket (connections are refused until a worker registers)",
                self.describe(svc)
            );
            Counters::bump(&self.counters().parked_expired);
            self.closer.close(fd);
        }
    }

    /// Brings the slots' figures back to the kernel's and the workers', and retires the workers
    /// that stopped accepting on their way out.
    fn reconcile(&mut self) {
        let stalled =
            reconcile::reconcile(self.shared.services(), self.shared.counters(), &mut self.workers);
        for s in stalled {
            log::info!(
                "worker {} stopped accepting and its main thread exited: slot {} of {} freed, \
                 its {} queued connections moved",
                s.pid,
                s.key.1,
                self.describe(s.key.0),
                s.queued
            );
            self.remove_worker(s.key, true);
        }
    }

    /// Applies changed settings: a new default weight to the registered workers that did not
    /// ask for one, and evicts the workers (and unregistered connections) of uids no longer
    /// allowed.
    fn apply_settings(&mut self) {
        let settings = self.shared.settings().clone();
        if settings.generation() == self.settings_generation {
            return;
        }
        self.settings_generation = settings.generation();
        let mut evict = Vec::new();
        for (key, w) in self.workers.iter() {
            if !settings.allows(w.uid) {
                evict.push(key);
                continue;
            }
            let Some(service) = self.shared.services().get(key.0) else { continue };
            // A pod group's default weight is its template's, which a reload does not change.
            if w.asked_weight == 0 && service.pod.is_none() {
                if let Err(e) = service.group().set_weight(key.1, settings.default_weight()) {
                    log::warn!("setting the weight of slot {}: {e}", key.1);
                }
            }
        }
        for key in evict {
            if let Some(w) = self.workers.get(key) {
                log::warn!(
                    "uid {} is no longer allowed: worker {} evicted from slot {} of {}",
                    w.uid,
                    w.pid,
                    key.1,
                    self.describe(key.0)
                );
            }
            Counters::bump(&self.counters().evictions);
            self.remove_worker(key, false);
        }
        // Unregistered connections of a removed uid get the refusal a new one would get. One
        // whose message is still to come is kept as refused, as at accept, until it comes or
        // the peer hangs up; one waiting for its pod group (message read) is closed.
        for (id, uid, stage) in self.conns.unregistered_refused(|uid| settings.allows(uid)) {
            if let Some(fd) = self.conns.fd(id) {
                self.send_refusal(fd, uid);
            }
            if stage == Stage::Pending {
                self.make_room_for_refused(uid);
                self.conns.set_stage(id, Stage::Refused);
            } else {
                self.close_conn(id);
            }
        }
    }

    /// Removes the pod groups that have had no worker (registered or adopted) for the removal
    /// grace: last socket detached and closed, pins removed, id gone.
    fn expire_pod_groups(&mut self) {
        let now = Instant::now();
        for (id, s) in self.shared.services().all() {
            if s.pod.is_none() {
                continue;
            }
            let occupied = self.workers.occupied(id) || self.adoption.held(id) > 0;
            if self.pods.expired(id, occupied, now) {
                self.remove_pod_group(id, &s);
            }
        }
    }

    fn remove_pod_group(&mut self, id: usize, s: &Service) {
        if let Some(parked) = self.workers.unpark(id) {
            if let Err(e) = Group::detach(&parked) {
                log::debug!("{}: detaching the program: {e}", s.describe());
            }
            self.closer.close(parked);
        }
        if let Err(e) = s.group().unpin() {
            log::warn!("{}: removing the pins: {e}", s.describe());
        }
        self.shared.services().remove(id);
        let label = s.pod.as_ref().map(|p| p.label()).unwrap_or_default();
        log::info!(
            "pod group {}{} removed: no worker for {:?}; pins removed",
            s.describe(),
            if label.is_empty() { String::new() } else { format!(" of {label}") },
            self.pods.options().map(|p| p.removal_grace).unwrap_or_default()
        );
    }

    /// What happens at stop, as the caller asked.
    pub(super) fn finish(&mut self) {
        let how = self.shared.stop_how();
        if how == Stop::Detach {
            self.detach_all();
        }
        if how == Stop::KeepSlots {
            let n = self.workers.len() + self.adoption.len();
            log::info!("leaving {n} workers in their slots: the program keeps balancing them");
            for fd in self.workers.take_all() {
                self.closer.close(fd);
            }
            self.adoption.clear();
        } else {
            for key in self.workers.keys() {
                self.remove_worker(key, false);
            }
            for key in self.adoption.keys() {
                self.free_adopted(key, "the controller stops");
            }
        }
        let waiting = self.pods.take_waiting().into_iter().map(|w| w.prepared.socket);
        let rest: Vec<OwnedFd> =
            waiting.chain(self.conns.take_all()).chain(self.workers.take_parked()).collect();
        for fd in rest {
            self.closer.close(fd);
        }
        self.closer.finish(std::time::Duration::from_secs(2));
    }

    /// Detaches the program from every group's reuseport group (a service removed).
    fn detach_all(&self) {
        for (svc, service) in self.shared.services().all() {
            let Some(socket) = self.workers.socket_of(svc) else { continue };
            match Group::detach(socket) {
                Ok(()) => log::info!(
                    "{}: program detached; the kernel's hash spreads connections again",
                    service.describe()
                ),
                Err(e) => log::warn!("{}: detaching the program: {e}", service.describe()),
            }
        }
    }
}
