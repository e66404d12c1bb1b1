//! The controller side of worker registration.
//!
//! Workers of a prefork app server run the reuselb shim (`libbalancer_shim.so`): each one creates
//! its own SO_REUSEPORT listening socket and registers it here, over a unix `SOCK_SEQPACKET`
//! socket, with the descriptor attached (see `balancer_common::protocol`). For each registration
//! the registry checks the peer and the socket, puts the socket into the service's [`Group`], and
//! answers with the load map. It then watches the worker (pidfd, and the registration connection)
//! and frees the slot when the worker goes away.
//!
//! It also keeps the loads honest: every [`RegistryOptions::reconcile_interval`] it compares each
//! slot's "in flight" figure with what the kernel and the worker say (accept queue of the worker's
//! socket + connections the worker accepted and has not closed) and corrects the slot's `adjust`
//! when both disagree twice in a row. Handshakes that never complete, connections reset before
//! they were accepted, and anything else that would leave `assigned` ahead of reality, are taken
//! back within a second.
//!
//! One thread runs everything (a `poll` loop); the groups are shared behind a `Mutex` so that the
//! caller can read them (`Group::slots`) while it runs. The load records themselves are read
//! without the lock through [`Group::loads`].
use std::{
    collections::HashMap,
    io,
    mem::{size_of, zeroed},
    net::SocketAddr,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use balancer_common::{
    protocol::{Register, Reply, Status},
    MAX_SLOTS,
};

use crate::{listener, Group};

/// Errors of starting the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registration socket {path}: {op}: {source}")]
    Socket { path: PathBuf, op: &'static str, source: io::Error },
    #[error("registration socket {0} is in use by a running controller")]
    InUse(PathBuf),
    #[error("registration socket path {0} is too long for a unix socket")]
    PathTooLong(PathBuf),
    #[error("two services on the same address {0}")]
    DuplicateService(SocketAddr),
    #[error("cannot read this process's network namespace: {0}")]
    Netns(io::Error),
    #[error("cannot start the registry thread: {0}")]
    Thread(io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the registry runs.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Path of the registration socket (its parent directory is created).
    pub socket_path: PathBuf,
    /// Uids whose workers may register; root may always. Empty: the controller's own uid.
    pub allowed_uids: Vec<u32>,
    /// Mode of the socket file.
    pub socket_mode: u32,
    /// Network namespace the services live in, as a netns cookie (SO_NETNS_COOKIE); `None`: the
    /// controller's own.
    pub netns_cookie: Option<u64>,
    /// How often loads are reconciled against the kernel's figures.
    pub reconcile_interval: Duration,
    /// Most workers per address (group); registrations beyond it get `Status::NoFreeSlot`.
    /// Changeable while running ([`Registry::set_max_workers`]).
    pub max_workers: u32,
    /// Weight of a worker that registers without asking for one (weight 0 in its message).
    /// Changeable while running ([`Registry::set_default_weight`]).
    pub default_weight: u32,
    /// How long a worker that owned a slot of an adopted group (pinned by an earlier controller)
    /// has to register again before its slot is freed. Workers that exited meanwhile are freed at
    /// once, and a worker that exits before registering again is freed when it exits.
    pub adoption_grace: Duration,
}

impl RegistryOptions {
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            allowed_uids: Vec::new(),
            socket_mode: 0o660,
            netns_cookie: None,
            reconcile_interval: Duration::from_millis(250),
            max_workers: MAX_SLOTS,
            default_weight: 1,
            adoption_grace: Duration::from_secs(15),
        }
    }
}

/// One balanced address and its group.
pub struct Service {
    pub addr: SocketAddr,
    group: Mutex<Group>,
}

impl Service {
    /// The group (slots, loads, stats). Hold the lock briefly: registrations wait for it.
    pub fn group(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counters of the registry, readable while it runs.
#[derive(Default)]
pub struct Counters {
    /// Replies sent, per [`Status`] (indexed by its id): `Ok` counts registrations.
    replies: [AtomicU64; Status::ALL.len()],
    /// Workers whose slot was freed (exit, or connection closed).
    pub departures: AtomicU64,
    /// Corrections applied by reconciliation.
    pub adjustments: AtomicU64,
}

impl Counters {
    /// Replies sent with `status` (`Status::Ok`: successful registrations).
    pub fn replies(&self, status: Status) -> u64 {
        self.replies[status as usize].load(Ordering::Relaxed)
    }

    /// Rejections per reason, every reason listed (zeros included).
    pub fn rejections(&self) -> Vec<(Status, u64)> {
        Status::ALL.iter().filter(|s| **s != Status::Ok).map(|&s| (s, self.replies(s))).collect()
    }
}

struct Shared {
    services: Vec<Service>,
    counters: Counters,
    stop: AtomicBool,
    /// At stop, leave every slot as it is (the program keeps balancing the workers, with the
    /// counts their shims keep making, and the next controller adopts the pinned group).
    keep_slots: AtomicBool,
    /// At stop, detach the program from the services' reuseport groups (a service removed).
    detach: AtomicBool,
    settings: Mutex<Settings>,
}

/// What registrations must satisfy; changed by a configuration reload.
#[derive(Clone, Debug)]
struct Settings {
    allowed_uids: Vec<u32>,
    max_workers: u32,
    default_weight: u32,
    /// Bumped at each change, so the loop applies a new default weight once.
    generation: u64,
}

impl Shared {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running registry. Stops (and removes its socket file) when dropped.
pub struct Registry {
    shared: Arc<Shared>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Registry {
    /// Binds the registration socket and starts serving `services` (one group per address).
    pub fn start(options: RegistryOptions, services: Vec<(SocketAddr, Group)>) -> Result<Self> {
        let mut seen = Vec::new();
        for (addr, _) in &services {
            if seen.contains(addr) {
                return Err(Error::DuplicateService(*addr));
            }
            seen.push(*addr);
        }
        let netns = match options.netns_cookie {
            Some(c) => c,
            None => own_netns_cookie().map_err(Error::Netns)?,
        };
        let allowed = allowed_or_own(&options.allowed_uids);
        let listener = bind_seqpacket(&options.socket_path, options.socket_mode)?;
        let wake = Arc::new(eventfd().map_err(|source| Error::Socket {
            path: options.socket_path.clone(),
            op: "eventfd",
            source,
        })?);
        let shared = Arc::new(Shared {
            services: services
                .into_iter()
                .map(|(addr, group)| Service { addr, group: Mutex::new(group) })
                .collect(),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            keep_slots: AtomicBool::new(false),
            detach: AtomicBool::new(false),
            settings: Mutex::new(Settings {
                allowed_uids: allowed,
                max_workers: options.max_workers.clamp(1, MAX_SLOTS),
                default_weight: options.default_weight.max(1),
                generation: 0,
            }),
        });
        let adopted = adopted_slots(&shared, options.adoption_grace);
        let mut event_loop = Loop {
            shared: shared.clone(),
            listener,
            wake: wake.clone(),
            netns,
            interval: options.reconcile_interval,
            conns: HashMap::new(),
            workers: HashMap::new(),
            parked: HashMap::new(),
            adopted,
            settings_generation: 0,
        };
        let thread = std::thread::Builder::new()
            .name("reuselb-registry".into())
            .spawn(move || event_loop.run())
            .map_err(Error::Thread)?;
        log::info!("registration socket {} ready", options.socket_path.display());
        Ok(Self { shared, wake, thread: Some(thread), path: options.socket_path })
    }

    pub fn services(&self) -> &[Service] {
        &self.shared.services
    }

    pub fn service(&self, addr: SocketAddr) -> Option<&Service> {
        self.shared.services.iter().find(|s| s.addr == addr)
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Stops serving, frees every slot and removes the socket file. The programs stay attached
    /// to the workers' sockets (with the loads as the workers keep counting them).
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops serving and removes the socket file, but leaves every slot as it is: the program
    /// keeps balancing the registered workers (their shims keep counting), and a controller that
    /// adopts the pinned groups later matches the workers to their slots when they register
    /// again. What a daemon does when it is stopped.
    pub fn stop_keeping_slots(mut self) {
        self.shared.keep_slots.store(true, Ordering::Release);
        self.shutdown();
    }

    /// Stops serving, frees every slot and detaches the program from each service's reuseport
    /// group: the kernel's own hash spreads the connections again. For a service that is removed.
    pub fn stop_and_detach(mut self) {
        self.shared.detach.store(true, Ordering::Release);
        self.shutdown();
    }

    /// True while the registration thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Replaces the uids whose workers may register (empty: the controller's own uid). Applies to
    /// the next registrations; registered workers stay.
    pub fn set_allowed_uids(&self, uids: &[u32]) {
        let mut s = self.shared.settings();
        s.allowed_uids = allowed_or_own(uids);
        s.generation += 1;
    }

    /// Changes the most workers per address. Lowering it below the number registered frees no
    /// slot: the next registrations are refused until enough workers left.
    pub fn set_max_workers(&self, max: u32) {
        let mut s = self.shared.settings();
        s.max_workers = max.clamp(1, MAX_SLOTS);
        s.generation += 1;
    }

    /// Changes the weight of workers that did not ask for one, registered ones included.
    pub fn set_default_weight(&self, weight: u32) {
        let mut s = self.shared.settings();
        s.default_weight = weight.max(1);
        s.generation += 1;
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Release);
            let one: u64 = 1;
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------

struct Conn {
    fd: OwnedFd,
    /// (service, slot) once registered.
    worker: Option<(usize, u32)>,
}

struct Worker {
    pid: u32,
    pidfd: OwnedFd,
    /// Our reference to the worker's socket: for the accept-queue figure. Dropped on exit, which
    /// closes the socket if the worker is gone (its queue then migrates to the others).
    listener: OwnedFd,
    conn: RawFd,
    /// Disagreement seen at the previous reconciliation.
    prev_diff: i64,
    /// `accepted` at the previous reconciliation.
    last_accepted: u64,
    /// The weight the worker asked for; 0: the service's default.
    asked_weight: u32,
}

/// A slot of an adopted group whose worker has not registered again yet.
struct Adopted {
    pid: u32,
    pidfd: OwnedFd,
    deadline: Instant,
}

struct Loop {
    shared: Arc<Shared>,
    listener: OwnedFd,
    wake: Arc<OwnedFd>,
    netns: u64,
    interval: Duration,
    conns: HashMap<RawFd, Conn>,
    workers: HashMap<(usize, u32), Worker>,
    /// Per service: the socket of the last worker that left, kept listening while the service has
    /// no worker at all (every worker recycled at once, say), so that connections wait in its
    /// queue instead of being refused. Closed when a worker registers: its queue then migrates.
    parked: HashMap<usize, OwnedFd>,
    /// Slots of adopted groups kept for their workers until they register again.
    adopted: HashMap<(usize, u32), Adopted>,
    /// Generation of the settings last applied to registered workers.
    settings_generation: u64,
}

#[derive(Clone, Copy)]
enum Source {
    Listener,
    Wake,
    Conn(RawFd),
    Pidfd((usize, u32)),
    AdoptedPidfd((usize, u32)),
}

impl Loop {
    fn run(&mut self) {
        let mut next_tick = Instant::now() + self.interval;
        while !self.shared.stop.load(Ordering::Acquire) {
            let mut pfds = vec![
                libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let mut sources = vec![Source::Listener, Source::Wake];
            for fd in self.conns.keys() {
                pfds.push(libc::pollfd { fd: *fd, events: libc::POLLIN, revents: 0 });
                sources.push(Source::Conn(*fd));
            }
            for (key, w) in &self.workers {
                pfds.push(libc::pollfd {
                    fd: w.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                sources.push(Source::Pidfd(*key));
            }
            for (key, a) in &self.adopted {
                pfds.push(libc::pollfd {
                    fd: a.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                sources.push(Source::AdoptedPidfd(*key));
            }
            let timeout = next_tick.saturating_duration_since(Instant::now()).as_millis() as i32;
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                log::error!("registry poll: {}", io::Error::last_os_error());
                std::thread::sleep(Duration::from_millis(100));
            }
            if n > 0 {
                for (p, src) in pfds.iter().zip(&sources) {
                    if p.revents == 0 {
                        continue;
                    }
                    match *src {
                        Source::Listener => self.accept_all(),
                        Source::Wake => {
                            let mut v = 0u64;
                            unsafe {
                                libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8)
                            };
                        }
                        Source::Conn(fd) => self.on_conn(fd),
                        Source::Pidfd(key) => {
                            if let Some(w) = self.workers.get(&key) {
                                log::info!(
                                    "worker {} exited: slot {} of {} freed",
                                    w.pid,
                                    key.1,
                                    self.shared.services[key.0].addr
                                );
                            }
                            self.remove_worker(key);
                        }
                        Source::AdoptedPidfd(key) => {
                            self.free_adopted(key, "exited before registering again")
                        }
                    }
                }
            }
            if Instant::now() >= next_tick {
                self.reconcile();
                self.apply_settings();
                self.expire_adopted();
                next_tick = Instant::now() + self.interval;
            }
        }
        if self.shared.detach.load(Ordering::Acquire) {
            for (svc, service) in self.shared.services.iter().enumerate() {
                let socket = self
                    .workers
                    .iter()
                    .find(|((s, _), _)| *s == svc)
                    .map(|(_, w)| &w.listener)
                    .or(self.parked.get(&svc));
                if let Some(socket) = socket {
                    match Group::detach(socket) {
                        Ok(()) => log::info!(
                            "{}: program detached; the kernel's hash spreads connections again",
                            service.addr
                        ),
                        Err(e) => log::warn!("{}: detaching the program: {e}", service.addr),
                    }
                }
            }
        }
        if self.shared.keep_slots.load(Ordering::Acquire) {
            let n = self.workers.len() + self.adopted.len();
            log::info!("leaving {n} workers in their slots: the program keeps balancing them");
            self.workers.clear();
            self.adopted.clear();
            return;
        }
        let keys: Vec<_> = self.workers.keys().copied().collect();
        for key in keys {
            self.remove_worker(key);
        }
        let keys: Vec<_> = self.adopted.keys().copied().collect();
        for key in keys {
            self.free_adopted(key, "the controller stops");
        }
    }

    /// Frees the slot of an adopted group kept for a worker that did not register again.
    fn free_adopted(&mut self, key: (usize, u32), why: &str) {
        let Some(a) = self.adopted.remove(&key) else { return };
        let service = &self.shared.services[key.0];
        log::info!(
            "{}: worker {} of adopted slot {} {why}: slot freed",
            service.addr,
            a.pid,
            key.1
        );
        if let Err(e) = service.group().remove(key.1) {
            log::warn!("freeing slot {}: {e}", key.1);
        }
    }

    fn expire_adopted(&mut self) {
        let now = Instant::now();
        let late: Vec<_> =
            self.adopted.iter().filter(|(_, a)| a.deadline <= now).map(|(k, _)| *k).collect();
        for key in late {
            self.free_adopted(key, "did not register again in time");
        }
    }

    /// Applies a changed default weight to the registered workers that did not ask for one.
    fn apply_settings(&mut self) {
        let (generation, weight) = {
            let s = self.shared.settings();
            (s.generation, s.default_weight)
        };
        if generation == self.settings_generation {
            return;
        }
        self.settings_generation = generation;
        for (&(svc, slot), w) in &self.workers {
            if w.asked_weight == 0 {
                if let Err(e) = self.shared.services[svc].group().set_weight(slot, weight) {
                    log::warn!("setting the weight of slot {slot}: {e}");
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
                    log::warn!("registry accept: {e}");
                }
                return;
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            self.conns.insert(fd.as_raw_fd(), Conn { fd, worker: None });
        }
    }

    fn on_conn(&mut self, raw: RawFd) {
        let Some(conn) = self.conns.get(&raw) else { return };
        let mut buf = [0u8; 256];
        let received = recv_with_fds(conn.fd.as_fd(), &mut buf);
        match received {
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) | Ok(Received { len: 0, .. }) => self.close_conn(raw),
            Ok(msg) => {
                if conn.worker.is_some() {
                    // One registration per connection; anything more is ignored.
                    return;
                }
                let fd = conn.fd.try_clone();
                match fd {
                    Ok(fd) => self.register(raw, fd, &buf[..msg.len], msg),
                    Err(_) => self.close_conn(raw),
                }
            }
        }
    }

    fn close_conn(&mut self, raw: RawFd) {
        if let Some(conn) = self.conns.remove(&raw) {
            if let Some(key) = conn.worker {
                if let Some(w) = self.workers.get(&key) {
                    log::info!(
                        "worker {} closed its registration: slot {} of {} freed",
                        w.pid,
                        key.1,
                        self.shared.services[key.0].addr
                    );
                }
                self.remove_worker(key);
            }
        }
    }

    fn remove_worker(&mut self, key: (usize, u32)) {
        self.remove_worker_and(key, false)
    }

    /// Frees the worker's slot; with `retire`, also shuts its socket down (the socket is shared
    /// with the worker): it stops listening, and the program moves its queue to the others.
    fn remove_worker_and(&mut self, key: (usize, u32), retire: bool) {
        let Some(w) = self.workers.remove(&key) else { return };
        if let Err(e) = self.shared.services[key.0].group().remove(key.1) {
            log::warn!("freeing slot {}: {e}", key.1);
        }
        if retire {
            unsafe { libc::shutdown(w.listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.shared.counters.departures.fetch_add(1, Ordering::Relaxed);
        if let Some(conn) = self.conns.remove(&w.conn) {
            drop(conn);
        }
        let last = !self.workers.keys().any(|(svc, _)| *svc == key.0);
        if last && !self.shared.stop.load(Ordering::Relaxed) && is_listening(w.listener.as_fd()) {
            log::info!(
                "{}: no worker left; keeping the last socket listening until one registers",
                self.shared.services[key.0].addr
            );
            self.parked.insert(key.0, w.listener);
        }
        // Otherwise `w.listener` closes here: if the worker is gone, so is its socket, and the
        // program moves its queue to the other workers.
    }

    fn reject(&self, conn: BorrowedFd<'_>, status: Status, reason: &str) {
        log::warn!("registration rejected ({}): {reason}", status.name());
        self.shared.counters.replies[status as usize].fetch_add(1, Ordering::Relaxed);
        let reply = Reply::new(status, 0, 0, reason).encode();
        let _ = send_with_fd(conn, &reply, None);
    }

    fn register(&mut self, raw: RawFd, conn: OwnedFd, data: &[u8], msg: Received) {
        let conn_fd = conn.as_fd();
        let request = match Register::decode(data) {
            Ok(r) => r,
            Err(e) => return self.reject(conn_fd, Status::BadMessage, &e.to_string()),
        };
        if msg.truncated || msg.fds.len() != 1 {
            let reason = format!(
                "expected exactly one descriptor, got {}",
                if msg.truncated { "too many".into() } else { msg.fds.len().to_string() }
            );
            return self.reject(conn_fd, Status::NoDescriptor, &reason);
        }
        let socket = msg.fds.into_iter().next().expect("one fd");
        let cred = match peer_cred(conn_fd) {
            Ok(c) => c,
            Err(e) => return self.reject(conn_fd, Status::Internal, &format!("SO_PEERCRED: {e}")),
        };
        let (allowed, max_workers, default_weight) = {
            let s = self.shared.settings();
            (s.allowed_uids.contains(&cred.uid), s.max_workers, s.default_weight)
        };
        if cred.uid != 0 && !allowed {
            return self.reject(
                conn_fd,
                Status::UidNotAllowed,
                &format!("uid {} may not register here", cred.uid),
            );
        }
        let facts = match listener::socket_facts(socket.as_fd()) {
            Ok(f) => f,
            Err(e) => {
                return self.reject(conn_fd, Status::NotAListener, &format!("not a socket: {e}"))
            }
        };
        let problem = if !facts.tcp {
            Some("not a TCP socket".to_string())
        } else if !facts.listening {
            Some("not listening".to_string())
        } else if !facts.reuseport {
            Some("SO_REUSEPORT is not set".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            return self.reject(conn_fd, Status::NotAListener, &p);
        }
        let Some(svc) =
            facts.local.and_then(|a| self.shared.services.iter().position(|s| s.addr == a))
        else {
            let local = facts.local.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
            return self.reject(
                conn_fd,
                Status::NotAListener,
                &format!("{local} is not balanced by this controller"),
            );
        };
        match netns_cookie(socket.as_fd()) {
            Ok(c) if c == self.netns => {}
            Ok(_) => {
                return self.reject(
                    conn_fd,
                    Status::WrongNamespace,
                    "the socket is in another network namespace than the service",
                )
            }
            Err(e) => {
                return self.reject(conn_fd, Status::Internal, &format!("SO_NETNS_COOKIE: {e}"))
            }
        }
        if request.pid != cred.pid {
            log::debug!(
                "worker says pid {}, the kernel says {} (pid namespaces?): using the kernel's",
                request.pid,
                cred.pid
            );
        }
        let pidfd = match pidfd_open(cred.pid) {
            Ok(p) => p,
            Err(e) => {
                return self.reject(
                    conn_fd,
                    Status::Internal,
                    &format!("pidfd_open({}): {e}", cred.pid),
                )
            }
        };
        let service = &self.shared.services[svc];
        // A worker that owned a slot of the adopted group gets it back, counters and all.
        let adopted =
            self.adopted.iter().find(|((s, _), a)| *s == svc && a.pid == cred.pid).map(|(k, _)| *k);
        let held = self.workers.keys().filter(|(s, _)| *s == svc).count()
            + self.adopted.keys().filter(|(s, _)| *s == svc).count();
        if adopted.is_none() && held >= max_workers as usize {
            return self.reject(
                conn_fd,
                Status::NoFreeSlot,
                &format!("max_workers ({max_workers}) reached"),
            );
        }
        let weight = if request.weight == 0 { default_weight } else { request.weight };
        let (slot, epoch) = {
            let mut group = service.group();
            // Attaching on every registration is idempotent and also covers a reuseport group
            // that the kernel recreated after all its sockets were closed.
            if let Err(e) = group.attach(&socket) {
                drop(group);
                return self.reject(
                    conn_fd,
                    Status::Internal,
                    &format!("attaching the program: {e}"),
                );
            }
            let inserted = match adopted {
                Some((_, slot)) => {
                    group.reuse(slot, &socket, cred.pid, weight).map(|epoch| (slot, epoch))
                }
                None => group.insert(&socket, cred.pid, weight),
            };
            match inserted {
                Ok(x) => {
                    let reply = Reply::new(Status::Ok, x.0, x.1, "registered").encode();
                    if let Err(e) = send_with_fd(conn_fd, &reply, Some(group.loads_fd())) {
                        log::warn!("reply to worker {}: {e}", cred.pid);
                        let _ = group.remove(x.0);
                        drop(group);
                        self.close_conn(raw);
                        return;
                    }
                    x
                }
                Err(crate::Error::NoFreeSlot) => {
                    drop(group);
                    return self.reject(conn_fd, Status::NoFreeSlot, "every slot is taken");
                }
                Err(e) => {
                    drop(group);
                    return self.reject(conn_fd, Status::Internal, &e.to_string());
                }
            }
        };
        self.shared.counters.replies[Status::Ok as usize].fetch_add(1, Ordering::Relaxed);
        let key = (svc, slot);
        if self.adopted.remove(&key).is_some() {
            log::info!("worker {} registered again on {}: back in its slot {slot} (epoch {epoch}), counters kept", cred.pid, service.addr);
        } else {
            log::info!(
                "worker {} registered on {} as slot {slot} (epoch {epoch})",
                cred.pid,
                service.addr
            );
        }
        if let Some(c) = self.conns.get_mut(&raw) {
            c.worker = Some(key);
        }
        self.workers.insert(
            key,
            Worker {
                pid: cred.pid,
                pidfd,
                listener: socket,
                conn: raw,
                prev_diff: 0,
                last_accepted: 0,
                asked_weight: request.weight,
            },
        );
        if let Some(parked) = self.parked.remove(&svc) {
            // Its queue migrates to the new worker.
            drop(parked);
        }
    }

    /// Brings each slot's in-flight figure back to what the kernel and the worker say.
    fn reconcile(&mut self) {
        let mut retire = Vec::new();
        for (&(svc, slot), w) in self.workers.iter_mut() {
            let group = self.shared.services[svc].group();
            let loads = group.loads();
            let Ok(queued) = accept_queue_len(w.listener.as_fd()) else { continue };
            let rec = loads.read(slot);
            // A worker whose main thread is gone is on its way out and, if it stopped accepting,
            // may hang there a long time (uWSGI 2.0.21 threads with max-requests wait for their
            // worker-reload-mercy): its queue must not wait for it.
            let stalled = rec.accepted == w.last_accepted;
            w.last_accepted = rec.accepted;
            if stalled && leader_exited(w.pid) {
                retire.push(((svc, slot), w.pid, queued));
                continue;
            }
            let open = (rec.accepted.wrapping_sub(rec.completed) as i64).max(0);
            let target = open + queued as i64;
            let current = rec.raw_inflight;
            let diff = current - target;
            if diff != 0 && w.prev_diff != 0 && diff.signum() == w.prev_diff.signum() {
                let delta = if diff.abs() < w.prev_diff.abs() { diff } else { w.prev_diff };
                loads.add_inflight(slot, -delta);
                self.shared.counters.adjustments.fetch_add(1, Ordering::Relaxed);
                log::debug!("slot {slot}: in flight {current}, kernel and worker say {target}: adjust by {delta}");
                w.prev_diff = 0;
            } else {
                w.prev_diff = diff;
            }
        }
        for (key, pid, queued) in retire {
            log::info!(
                "worker {pid} stopped accepting and its main thread exited: slot {} of {} freed, its {queued} queued connections moved",
                key.1,
                self.shared.services[key.0].addr
            );
            self.remove_worker_and(key, true);
        }
    }
}

/// `uids`, or the controller's own uid when empty.
fn allowed_or_own(uids: &[u32]) -> Vec<u32> {
    if uids.is_empty() {
        vec![unsafe { libc::geteuid() }]
    } else {
        uids.to_vec()
    }
}

/// The occupied slots of adopted groups, each kept for its worker until it registers again. The
/// slots of workers that exited while no controller ran are freed here.
fn adopted_slots(shared: &Shared, grace: Duration) -> HashMap<(usize, u32), Adopted> {
    let mut out = HashMap::new();
    for (svc, service) in shared.services.iter().enumerate() {
        let mut group = service.group();
        if !group.adopted() {
            continue;
        }
        let slots = match group.slots() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{}: reading the adopted slots: {e}", service.addr);
                continue;
            }
        };
        for view in slots {
            match pidfd_open(view.pid) {
                Ok(pidfd) => {
                    log::info!(
                        "{}: adopted slot {} of worker {} ({} selected so far): kept until it registers again",
                        service.addr,
                        view.slot,
                        view.pid,
                        view.selected_total
                    );
                    out.insert(
                        (svc, view.slot),
                        Adopted { pid: view.pid, pidfd, deadline: Instant::now() + grace },
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
                        service.addr,
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

// ---------------------------------------------------------------------------------------------
// System helpers

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn bind_seqpacket(path: &Path, mode: u32) -> Result<OwnedFd> {
    let err = |op: &'static str| {
        let source = io::Error::last_os_error();
        move |_| Error::Socket { path: path.to_path_buf(), op, source }
    };
    let (addr, len) = sockaddr_un(path)?;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Socket {
                path: path.into(),
                op: "create_dir_all",
                source,
            })?;
        }
    }
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })
    .map_err(|source| Error::Socket { path: path.into(), op: "socket", source })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if path.exists() {
        // A live controller answers; a stale file from a crash does not.
        let probe = cvt(unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
        })
        .map_err(|source| Error::Socket { path: path.into(), op: "socket", source })?;
        let probe = unsafe { OwnedFd::from_raw_fd(probe) };
        if unsafe {
            libc::connect(probe.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len)
        } == 0
        {
            return Err(Error::InUse(path.into()));
        }
        let _ = std::fs::remove_file(path);
    }
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })
        .map_err(err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| Error::Socket { path: path.into(), op: "chmod", source })?;
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 256) }).map_err(err("listen"))?;
    Ok(fd)
}

fn sockaddr_un(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(Error::PathTooLong(path.into()));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok((addr, (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t))
}

fn eventfd() -> io::Result<OwnedFd> {
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The peer's credentials at connect time (pid in our pid namespace).
struct Cred {
    pid: u32,
    uid: u32,
}

fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<Cred> {
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(Cred { pid: cred.pid as u32, uid: cred.uid })
}

/// The cookie of the network namespace `fd` (a socket) lives in.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    })?;
    Ok(cookie)
}

/// The cookie of this process's network namespace.
pub fn own_netns_cookie() -> io::Result<u64> {
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    netns_cookie(fd.as_fd())
}

/// True if the thread group leader of `pid` has exited (the process lives on in other threads).
fn leader_exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|c| c == 'Z' || c == 'X')
}

fn is_listening(fd: BorrowedFd<'_>) -> bool {
    listener::socket_facts(fd).map(|f| f.listening).unwrap_or(false)
}

/// Connections waiting in a listener's accept queue (TCP_INFO's `tcpi_unacked` on a listener).
pub fn accept_queue_len(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info: libc::tcp_info = unsafe { zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    })?;
    if info.tcpi_state != 10
    /* TCP_LISTEN */
    {
        return Ok(0);
    }
    Ok(info.tcpi_unacked)
}

struct Received {
    len: usize,
    fds: Vec<OwnedFd>,
    /// Control data was cut (more descriptors than we take).
    truncated: bool,
}

fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    #[repr(C, align(8))]
    struct Cmsg([u8; 128]);
    let mut cbuf = Cmsg([0; 128]);
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len();
    let n = unsafe {
        libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / size_of::<libc::c_int>();
                for k in 0..count {
                    let f = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(k));
                    fds.push(OwnedFd::from_raw_fd(f));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        len: n as usize,
        fds,
        truncated: msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0,
    })
}

fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    #[repr(C, align(8))]
    struct Cmsg([u8; 64]);
    let mut cbuf = Cmsg([0; 64]);
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        }
    }
    let n =
        unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
