//! The registry thread: one `poll` loop over the registration socket, the registration
//! connections, the workers' pidfds and a wake-up eventfd, with a reconciliation tick.
//!
//! Owns the registry's state: connections (keyed by an id that is never reused, so a stale event
//! cannot reach a connection accepted later on the same descriptor number), registered workers
//! (keyed by service and slot, their exit events carry the id of the registration connection,
//! private to the registry, never the epoch workers can write), adopted slots, and the
//! parked last sockets of services with no worker.
//!
//! Invariants: the loop turns at least once a second and beats the heartbeat each time; it only
//! reads sockets without waiting and gives every peer descriptor to the [`Closer`]; accepting
//! takes at most [`ACCEPTS_PER_TURN`] connections per turn, and backs off (up to a second) when
//! descriptors run out instead of spinning on EMFILE.
use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use balancer_common::protocol::{Reply, Status};

use super::{adoption::Adopted, closer::Closer, RegistryOptions, Shared};
use crate::{
    sys::{self, Received},
    Group,
};

/// A registration connection.
pub(super) struct Conn {
    pub fd: OwnedFd,
    pub uid: u32,
    pub opened: Instant,
    /// (service, slot) once registered.
    pub worker: Option<(usize, u32)>,
}

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

/// The socket of the last worker of a service, kept listening while it has none.
pub(super) struct Parked {
    pub fd: OwnedFd,
    pub since: Instant,
}

#[derive(Clone, Copy)]
enum Source {
    Listener,
    Wake,
    Conn(u64),
    /// `conn`: the id of the worker's registration connection, registry-private and never
    /// reused (the slot's epoch lives in the shared table, which workers can write).
    Pidfd {
        key: (usize, u32),
        conn: u64,
    },
    AdoptedPidfd {
        key: (usize, u32),
        pid: u32,
    },
}

pub(super) struct Loop {
    pub shared: Arc<Shared>,
    listener: OwnedFd,
    pub wake: Arc<OwnedFd>,
    pub netns: u64,
    interval: Duration,
    pub options: RegistryOptions,
    pub conns: HashMap<u64, Conn>,
    next_conn: u64,
    pub workers: HashMap<(usize, u32), Worker>,
    /// Per service: the socket of the last worker that left, kept listening while the service has
    /// no worker at all (every worker recycled at once, say), so that connections wait in its
    /// queue instead of being refused. Closed when a worker registers (its queue then migrates)
    /// or after `park_timeout`.
    pub parked: HashMap<usize, Parked>,
    /// Slots of adopted groups kept for their workers until they register again.
    pub adopted: HashMap<(usize, u32), Adopted>,
    /// Generation of the settings last applied to registered workers.
    settings_generation: u64,
    /// Pod groups with no worker, since when (removed after the removal grace).
    pub pod_empty_since: HashMap<usize, Instant>,
    /// Pod groups being made on other threads, with the registrations waiting for them.
    pub making: HashMap<(u64, std::net::SocketAddr), super::pods::Making>,
    pub closer: Closer,
    /// Accepting is paused until then (descriptors ran out).
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
}

/// The loop turns at least this often, so that the heartbeat stays fresh.
const MAX_TURN: Duration = Duration::from_secs(1);

/// Connections accepted per turn of the loop at most.
const ACCEPTS_PER_TURN: usize = 48;

impl Loop {
    pub(super) fn new(
        shared: Arc<Shared>,
        listener: OwnedFd,
        wake: Arc<OwnedFd>,
        netns: u64,
        options: &RegistryOptions,
    ) -> std::io::Result<Self> {
        let adopted = super::adoption::adopted_slots(&shared, options.adoption_grace);
        let gauge_shared = shared.clone();
        let closer = Closer::start(
            shared.closer.clone(),
            Arc::new(move |n| gauge_shared.counters.closing_backlog.store(n, Ordering::Relaxed)),
        )?;
        Ok(Self {
            shared,
            listener,
            wake,
            netns,
            interval: options.reconcile_interval,
            options: options.clone(),
            conns: HashMap::new(),
            next_conn: 0,
            workers: HashMap::new(),
            parked: HashMap::new(),
            adopted,
            settings_generation: 0,
            pod_empty_since: HashMap::new(),
            making: HashMap::new(),
            closer,
            accept_paused_until: None,
            accept_backoff: Duration::ZERO,
        })
    }

    pub(super) fn run(&mut self) {
        let mut next_tick = Instant::now() + self.interval;
        while !self.shared.stop.load(Ordering::Acquire) {
            self.shared.beat();
            self.closer.retry();
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
            }
            let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
            let mut sources = Vec::new();
            if self.accept_paused_until.is_none() {
                fds.push(self.listener.as_fd());
                sources.push(Source::Listener);
            }
            fds.push(self.wake.as_fd());
            sources.push(Source::Wake);
            for (id, c) in &self.conns {
                fds.push(c.fd.as_fd());
                sources.push(Source::Conn(*id));
            }
            for (key, w) in &self.workers {
                if let Some(pidfd) = &w.pidfd {
                    fds.push(pidfd.as_fd());
                    sources.push(Source::Pidfd { key: *key, conn: w.conn });
                }
            }
            for (key, a) in &self.adopted {
                if let Some(pidfd) = &a.pidfd {
                    fds.push(pidfd.as_fd());
                    sources.push(Source::AdoptedPidfd { key: *key, pid: a.pid });
                }
            }
            let mut until = next_tick.min(now + MAX_TURN);
            if let Some(t) = self.accept_paused_until {
                until = until.min(t);
            }
            let ready = match sys::poll_readable(&fds, until.saturating_duration_since(now)) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("registry {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    vec![false; fds.len()]
                }
            };
            drop(fds);
            for (src, _) in sources.into_iter().zip(ready).filter(|(_, r)| *r) {
                match src {
                    Source::Listener => self.accept_all(),
                    Source::Wake => sys::eventfd_drain(self.wake.as_fd()),
                    Source::Conn(id) => self.on_conn(id),
                    Source::Pidfd { key, conn } => {
                        // Only if the slot still has the owner this event was about.
                        match self.workers.get(&key) {
                            Some(w) if w.conn == conn => {
                                log::info!(
                                    "worker {} exited: slot {} of {} freed",
                                    w.pid,
                                    key.1,
                                    self.describe(key.0)
                                );
                                self.remove_worker(key);
                            }
                            _ => {}
                        }
                    }
                    Source::AdoptedPidfd { key, pid } => {
                        if self.adopted.get(&key).is_some_and(|a| a.pid == pid) {
                            self.free_adopted(key, "exited before registering again")
                        }
                    }
                }
            }
            self.collect_made();
            if Instant::now() >= next_tick {
                self.reconcile();
                self.apply_settings();
                self.expire_adopted();
                self.expire_pending();
                self.expire_parked();
                self.expire_pod_groups();
                next_tick = Instant::now() + self.interval;
            }
        }
        self.finish();
    }

    /// What happens at stop, as the caller asked.
    fn finish(&mut self) {
        if self.shared.detach.load(Ordering::Acquire) {
            for (svc, service) in self.shared.all_services() {
                let socket = self
                    .workers
                    .iter()
                    .find(|((s, _), _)| *s == svc)
                    .map(|(_, w)| &w.listener)
                    .or(self.parked.get(&svc).map(|p| &p.fd));
                if let Some(socket) = socket {
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
        if self.shared.keep_slots.load(Ordering::Acquire) {
            let n = self.workers.len() + self.adopted.len();
            log::info!("leaving {n} workers in their slots: the program keeps balancing them");
            for (_, w) in std::mem::take(&mut self.workers) {
                self.closer.close(w.listener);
            }
            self.adopted.clear();
        } else {
            let keys: Vec<_> = self.workers.keys().copied().collect();
            for key in keys {
                self.remove_worker(key);
            }
            let keys: Vec<_> = self.adopted.keys().copied().collect();
            for key in keys {
                self.free_adopted(key, "the controller stops");
            }
        }
        for (_, c) in std::mem::take(&mut self.conns) {
            self.closer.close(c.fd);
        }
        for (_, p) in std::mem::take(&mut self.parked) {
            self.closer.close(p.fd);
        }
        self.closer.finish(Duration::from_secs(2));
    }

    /// Applies changed settings: a new default weight to the registered workers that did not
    /// ask for one, and evicts the workers of uids no longer allowed.
    fn apply_settings(&mut self) {
        let settings = self.shared.settings().clone();
        if settings.generation == self.settings_generation {
            return;
        }
        self.settings_generation = settings.generation;
        let mut evict = Vec::new();
        for (&(svc, slot), w) in &self.workers {
            if !settings.allows(w.uid) {
                evict.push((svc, slot));
                continue;
            }
            let Some(service) = self.shared.service(svc) else { continue };
            // A pod group's default weight is its template's, which a reload does not change.
            if w.asked_weight == 0 && service.pod.is_none() {
                if let Err(e) = service.group().set_weight(slot, settings.default_weight) {
                    log::warn!("setting the weight of slot {slot}: {e}");
                }
            }
        }
        for key in evict {
            if let Some(w) = self.workers.get(&key) {
                log::warn!(
                    "uid {} is no longer allowed: worker {} evicted from slot {} of {}",
                    w.uid,
                    w.pid,
                    key.1,
                    self.describe(key.0)
                );
            }
            self.shared.counters.evictions.fetch_add(1, Ordering::Relaxed);
            self.remove_worker(key);
        }
        // Unregistered connections of such uids go too.
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.worker.is_none() && !settings.allows(c.uid))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.close_conn(id);
        }
    }

    /// Accepts what waits, at most [`ACCEPTS_PER_TURN`]: a connect/close flood must not keep the
    /// thread here, away from departures, reconciliation and the heartbeat. The rest waits for
    /// the next turn (the listener is still readable, so that turn comes at once).
    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match sys::accept(self.listener.as_fd()) {
                Ok(fd) => {
                    self.accept_backoff = Duration::ZERO;
                    let id = self.admit_conn(fd);
                    // The shim sends its registration right after connecting: read it now, before
                    // a flood of later connections can push this one out.
                    if let Some(id) = id {
                        self.on_conn(id);
                    }
                }
                Err(e) if e.is_transient() => return,
                Err(e) if e.is_exhaustion() => {
                    self.accept_backoff =
                        (self.accept_backoff * 2).clamp(Duration::from_millis(50), MAX_TURN);
                    self.accept_paused_until = Some(Instant::now() + self.accept_backoff);
                    self.shared.counters.accept_backoffs.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "registry {e}: not accepting for {:?} ({} connections open)",
                        self.accept_backoff,
                        self.conns.len()
                    );
                    // Make room: unregistered connections are the only ones we can drop.
                    self.evict_oldest_pending(None);
                    return;
                }
                Err(e) => {
                    log::warn!("registry {e}");
                    return;
                }
            }
        }
    }

    /// Refuses a connection of a uid that may not register, before reading anything from it;
    /// keeps the others within the caps on unregistered ones and returns the new id.
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
            let reason = format!("uid {uid} may not register here");
            log::warn!("registration rejected ({}): {reason}", Status::UidNotAllowed.name());
            self.shared.counters.count_reply(Status::UidNotAllowed);
            // Without waiting; whatever it sent is never read, and closes with the connection.
            let reply = Reply::new(Status::UidNotAllowed, 0, 0, &reason);
            let _ = sys::send_with_fd(fd.as_fd(), &reply.encode(), None);
            self.closer.close(fd);
            return None;
        }
        let pending = |conns: &HashMap<u64, Conn>, uid: Option<u32>| {
            conns.values().filter(|c| c.worker.is_none() && uid.is_none_or(|u| c.uid == u)).count()
        };
        if pending(&self.conns, Some(uid)) >= self.options.max_pending_per_uid.max(1) {
            self.evict_oldest_pending(Some(uid));
        }
        if pending(&self.conns, None) >= self.options.max_pending.max(1) {
            self.evict_oldest_pending(None);
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn { fd, uid, opened: Instant::now(), worker: None });
        Some(id)
    }

    /// Closes the oldest unregistered connection (of `uid`, if given).
    fn evict_oldest_pending(&mut self, uid: Option<u32>) {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.worker.is_none() && uid.is_none_or(|u| c.uid == u))
            .min_by_key(|(id, _)| **id)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.shared.counters.pending_closed.fetch_add(1, Ordering::Relaxed);
            self.close_conn(id);
        }
    }

    /// Closes connections that did not register within `register_timeout`.
    fn expire_pending(&mut self) {
        let limit = self.options.register_timeout;
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.worker.is_none() && c.opened.elapsed() >= limit)
            .map(|(id, _)| *id)
            .collect();
        if !late.is_empty() {
            log::info!("closing {} connections that did not register within {limit:?}", late.len());
        }
        for id in late {
            self.shared.counters.pending_closed.fetch_add(1, Ordering::Relaxed);
            self.close_conn(id);
        }
    }

    /// Closes parked sockets kept longer than `park_timeout` without a worker registering.
    fn expire_parked(&mut self) {
        let limit = self.options.park_timeout;
        let late: Vec<usize> = self
            .parked
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= limit)
            .map(|(svc, _)| *svc)
            .collect();
        for svc in late {
            if let Some(p) = self.parked.remove(&svc) {
                log::warn!(
                    "{}: no worker registered within {limit:?} of the last one leaving: closing \
                     its socket (connections are refused until a worker registers)",
                    self.describe(svc)
                );
                self.shared.counters.parked_expired.fetch_add(1, Ordering::Relaxed);
                self.closer.close(p.fd);
            }
        }
    }

    fn on_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else { return };
        let mut buf = [0u8; 256];
        match sys::recv_with_fds(conn.fd.as_fd(), &mut buf) {
            Err(e) if e.is_transient() => {}
            Err(_) => self.close_conn(id),
            Ok(Received { len: 0, fds, .. }) => {
                for fd in fds {
                    self.closer.close(fd);
                }
                self.close_conn(id)
            }
            Ok(msg) => {
                if conn.worker.is_some() {
                    // One registration per connection; anything more is ignored.
                    for fd in msg.fds {
                        self.closer.close(fd);
                    }
                    return;
                }
                let data = buf[..msg.len.min(buf.len())].to_vec();
                self.register(id, &data, msg);
            }
        }
    }

    pub(super) fn close_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else { return };
        if let Some(key) = conn.worker {
            if let Some(w) = self.workers.get(&key) {
                log::info!(
                    "worker {} closed its registration: slot {} of {} freed",
                    w.pid,
                    key.1,
                    self.describe(key.0)
                );
            }
            self.remove_worker(key);
        }
        self.closer.close(conn.fd);
    }

    /// The group's address (and pod) for log lines.
    pub(super) fn describe(&self, svc: usize) -> String {
        self.shared.service(svc).map(|s| s.describe()).unwrap_or_else(|| format!("group {svc}"))
    }

    pub(super) fn remove_worker(&mut self, key: (usize, u32)) {
        self.remove_worker_and(key, false)
    }

    /// Frees the worker's slot; with `retire`, also shuts its socket down (the socket is shared
    /// with the worker): it stops listening, and the program moves its queue to the others.
    /// The last worker of a service is never shut down: there is no other to take its queue,
    /// and new connections would be refused. Its socket is parked instead, and shut down when
    /// the next worker registers (its queue then moves to that one).
    pub(super) fn remove_worker_and(&mut self, key: (usize, u32), retire: bool) {
        let Some(w) = self.workers.remove(&key) else { return };
        if let Some(service) = self.shared.service(key.0) {
            if let Err(e) = service.group().remove(key.1) {
                log::warn!("freeing slot {}: {e}", key.1);
            }
        }
        let last = !self.workers.keys().any(|(svc, _)| *svc == key.0);
        if retire && !last {
            if let Err(e) = sys::shutdown(w.listener.as_fd()) {
                log::warn!("retiring the socket of worker {}: {e}", w.pid);
            }
        }
        self.shared.counters.departures.fetch_add(1, Ordering::Relaxed);
        if let Some(conn) = self.conns.remove(&w.conn) {
            self.closer.close(conn.fd);
        }
        if last
            && !self.shared.stop.load(Ordering::Relaxed)
            && crate::listener::socket_facts(w.listener.as_fd()).is_ok_and(|f| f.listening)
        {
            log::info!(
                "{}: no worker left; keeping the last socket listening until one registers \
                 (at most {:?})",
                self.describe(key.0),
                self.options.park_timeout
            );
            if let Some(old) =
                self.parked.insert(key.0, Parked { fd: w.listener, since: Instant::now() })
            {
                self.closer.close(old.fd);
            }
        } else {
            // If the worker is gone, so is its socket once this copy closes, and the program
            // moves its queue to the other workers.
            self.closer.close(w.listener);
        }
    }
}
