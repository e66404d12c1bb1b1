//! The controller side of worker registration.
//!
//! Workers of a prefork app server run the reuselb shim (`libbalancer_shim.so`): each one creates
//! its own SO_REUSEPORT listening socket and registers it here, over a unix `SOCK_SEQPACKET`
//! socket, with the descriptor attached (see `balancer_common::protocol`). For each registration
//! the registry checks the peer and the socket ([`admission`]), puts the socket into the
//! service's [`Group`], and answers with the load map. It then watches the worker (pidfd, and the
//! registration connection) and frees the slot when the worker goes away ([`event_loop`]).
//!
//! With [`RegistryOptions::pods`], the registry also makes groups on registration ([`pods`]): a
//! worker's socket, from any network namespace, joins the group of (that socket's network
//! namespace, its bound address), which the first such worker creates (settings from the template
//! it names) and which is removed, pins included, a short grace after its last worker left.
//!
//! It also keeps the loads honest ([`reconcile`]): every [`RegistryOptions::reconcile_interval`]
//! it compares each slot's "in flight" figure with what the kernel and the worker say and
//! corrects the slot when both disagree twice in a row. A controller that restarts takes over
//! the pinned groups of the one before ([`adoption`]).
//!
//! # Parts
//!
//! The registry is made of owned parts, each with its state and a small interface, composed by
//! [`state`] and driven by [`event_loop`]: [`connections`] (the peers and where each stands),
//! [`workers`] (which slot each registered worker holds; parked last sockets), [`adoption`]
//! (groups and slots adopted from pins), [`pods`] (pod settings, groups being made),
//! [`services`] (every group, by id), [`closer`], [`reconcile`], [`handover`]; [`admission`] is
//! a pure function of the message, the kernel's evidence, the settings ([`settings`]) and a view
//! of the parts. What the caller and the thread share is in [`shared`]; [`counters`] is read by
//! anyone.
//!
//! One thread runs the loop; the groups are shared behind a `Mutex` so that the caller can read
//! them while it runs. Invariants:
//! - nothing a peer controls can stall that thread: every descriptor a peer handed over (and
//!   every registration connection) is defused and closed on separate threads ([`closer`]),
//!   which a watchdog adds to when a close is stuck; sockets are
//!   only read without waiting, unregistered connections are capped per uid and in total (a
//!   registration waiting for its pod group counts against its pod's limits instead) and
//!   must register within [`RegistryOptions::register_timeout`];
//! - the loop beats a heartbeat at every turn (at least once a second): [`Registry::is_running`]
//!   turns false when it has not for [`RegistryOptions::stall_limit`], and stopping waits for the
//!   thread a bounded time;
//! - events are keyed by what cannot be reused and no peer can write (connection ids, which also
//!   name a registration), so a stale event never touches a new owner.
use std::{
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use balancer_common::MAX_SLOTS;

use crate::{sys, Group};

mod admission;
mod adoption;
mod closer;
mod connections;
mod counters;
mod event_loop;
mod handover;
pub mod pods;
mod reconcile;
mod services;
mod settings;
mod shared;
mod state;
mod workers;

pub use counters::Counters;
pub use pods::{PodGroup, PodOptions, PodTemplate};
pub use services::Service;
use settings::Settings;
pub use settings::{MAX_ASKED_WEIGHT, MAX_DEFAULT_WEIGHT};
use shared::{Shared, Stop};

pub use crate::sys::{accept_queue_len, netns_cookie, own_netns_cookie};

/// Errors of starting the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registration socket {path}: {source}")]
    Socket { path: PathBuf, source: sys::Error },
    #[error("registration socket {path}: create_dir_all: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("registration socket {path}: chmod: {source}")]
    Chmod { path: PathBuf, source: std::io::Error },
    #[error("registration socket {0} is in use by a running controller")]
    InUse(PathBuf),
    #[error("registration socket path {0} is too long for a unix socket")]
    PathTooLong(PathBuf),
    #[error("two services on the same address {0}")]
    DuplicateService(SocketAddr),
    #[error("cannot read this process's network namespace: {0}")]
    Netns(sys::Error),
    #[error("cannot start the registry thread: {0}")]
    Thread(std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the registry runs.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Path of the registration socket (its parent directory is created).
    pub socket_path: PathBuf,
    /// Uids whose workers may register; root may always. Empty: the controller's own uid.
    pub allowed_uids: Vec<u32>,
    /// Any uid may register (`allowed_uids` is then ignored): what `reuselb run` does by default,
    /// so that workers that dropped privileges register. Admission then rests on the listener a
    /// worker must hand over (a socket on the service's address, which only the app's uid can
    /// bind, see docs/SECURITY.md); the caps on unregistered connections still apply per uid.
    pub any_uid: bool,
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
    /// Weight of a worker that registers without asking for one (weight 0 in its message), within
    /// `1..=`[`MAX_DEFAULT_WEIGHT`]. Changeable while running ([`Registry::set_default_weight`]).
    pub default_weight: u32,
    /// How long a worker that owned a slot of an adopted group (pinned by an earlier controller)
    /// has to register again before its slot is freed. Workers that exited meanwhile are freed at
    /// once, and a worker that exits before registering again is freed when it exits.
    pub adoption_grace: Duration,
    /// How long a connection may stay open without registering before it is closed.
    pub register_timeout: Duration,
    /// Most unregistered connections (no registration read yet) per peer uid; a new one beyond
    /// it evicts that uid's oldest. A registration waiting for its pod group is not counted (nor
    /// evicted): it counts against its pod's `max_workers_per_pod` instead.
    pub max_pending_per_uid: usize,
    /// Most unregistered connections in total (as for [`Self::max_pending_per_uid`]); a new one
    /// beyond it evicts the oldest.
    pub max_pending: usize,
    /// How long the last socket of a service with no worker left is kept listening (so that
    /// connections wait for the next worker instead of being refused) before it is closed.
    pub park_timeout: Duration,
    /// [`Registry::is_running`] turns false when the loop has not turned for this long.
    pub stall_limit: Duration,
    /// Groups made on registration (pods): `None` for a registry of listed services only.
    pub pods: Option<PodOptions>,
}

impl RegistryOptions {
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            allowed_uids: Vec::new(),
            any_uid: false,
            socket_mode: 0o660,
            netns_cookie: None,
            reconcile_interval: Duration::from_millis(250),
            max_workers: MAX_SLOTS,
            default_weight: 1,
            adoption_grace: Duration::from_secs(15),
            register_timeout: Duration::from_secs(5),
            max_pending_per_uid: 64,
            max_pending: 512,
            park_timeout: Duration::from_secs(30),
            stall_limit: Duration::from_secs(3),
            pods: None,
        }
    }
}

/// The running registry. Stops (and removes its socket file) when dropped.
pub struct Registry {
    shared: Arc<Shared>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    stall_limit: Duration,
}

/// How long stopping waits for the registry thread before leaving it behind.
const STOP_WAIT: Duration = Duration::from_secs(5);

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
        let mut settings = Settings::new(
            &options.allowed_uids,
            options.any_uid,
            options.max_workers,
            options.default_weight,
        );
        if let Some(pods) = &options.pods {
            // Who may connect at all: any template's uid (each template checks its own).
            for t in &pods.templates {
                settings.also_allow(&t.allowed_uids);
            }
        }
        let listener = bind_seqpacket(&options.socket_path, options.socket_mode)?;
        let wake = Arc::new(
            sys::eventfd()
                .map_err(|source| Error::Socket { path: options.socket_path.clone(), source })?,
        );
        let listed = services.into_iter().map(|(addr, group)| Service::listed(addr, group));
        let shared = Arc::new(Shared::new(services::Services::new(listed.collect()), settings));
        if let Some(pods) = &options.pods {
            adoption::adopt_pod_groups(shared.services(), pods);
        }
        let mut event_loop =
            event_loop::Loop::new(shared.clone(), listener, wake.clone(), netns, &options)
                .map_err(Error::Thread)?;
        let thread = std::thread::Builder::new()
            .name("reuselb-registry".into())
            .spawn(move || event_loop.run())
            .map_err(Error::Thread)?;
        log::info!("registration socket {} ready", options.socket_path.display());
        Ok(Self {
            shared,
            wake,
            thread: Some(thread),
            path: options.socket_path,
            stall_limit: options.stall_limit.max(Duration::from_secs(1)),
        })
    }

    /// Every group: the listed services' and the pods'.
    pub fn services(&self) -> Vec<Arc<Service>> {
        self.shared.services().all().into_iter().map(|(_, s)| s).collect()
    }

    /// The listed service's group of `addr`.
    pub fn service(&self, addr: SocketAddr) -> Option<&Service> {
        self.shared.services().listed(addr).map(|s| &**s)
    }

    /// The groups made on registration (pods).
    pub fn pod_groups(&self) -> Vec<Arc<Service>> {
        self.services().into_iter().filter(|s| s.pod.is_some()).collect()
    }

    pub fn counters(&self) -> &Counters {
        self.shared.counters()
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Stops serving, frees every slot and removes the socket file. The programs stay attached
    /// to the workers' sockets (with the loads as the workers keep counting them).
    pub fn stop(mut self) {
        self.shutdown(Stop::Free);
    }

    /// Stops serving and removes the socket file, but leaves every slot as it is: the program
    /// keeps balancing the registered workers (their shims keep counting), and a controller that
    /// adopts the pinned groups later matches the workers to their slots when they register
    /// again. What a daemon does when it is stopped.
    pub fn stop_keeping_slots(mut self) {
        self.shutdown(Stop::KeepSlots);
    }

    /// Stops serving, frees every slot and detaches the program from each service's reuseport
    /// group: the kernel's own hash spreads the connections again. For a service that is removed.
    pub fn stop_and_detach(mut self) {
        self.shutdown(Stop::Detach);
    }

    /// True while the registration thread runs and keeps turning: false once it has not
    /// completed a turn of its loop for [`RegistryOptions::stall_limit`] (stuck), or ended, or
    /// once peer descriptors wait to be closed and none has been closed for that long (every
    /// closer thread stuck: sockets queued behind stay open).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
            && self.shared.since_last_beat() < self.stall_limit
            && !self.shared.closer_health().stalled(self.stall_limit)
    }

    /// How long ago the loop last completed a turn.
    pub fn since_last_turn(&self) -> Duration {
        self.shared.since_last_beat()
    }

    /// Replaces the uids whose workers may register (empty: the controller's own uid). Applies to
    /// the next registrations, and registered workers of a uid no longer allowed are evicted
    /// (their slots freed, their registration connections closed) at the next reconciliation;
    /// its connections not registered yet get the refusal, as a new one would.
    pub fn set_allowed_uids(&self, uids: &[u32]) {
        self.shared.settings().set_allowed_uids(uids);
    }

    /// Changes the most workers per address. Lowering it below the number registered frees no
    /// slot: the next registrations are refused until enough workers left.
    pub fn set_max_workers(&self, max: u32) {
        self.shared.settings().set_max_workers(max);
    }

    /// Changes the weight of workers that did not ask for one, registered ones included (within
    /// `1..=`[`MAX_DEFAULT_WEIGHT`]).
    pub fn set_default_weight(&self, weight: u32) {
        self.shared.settings().set_default_weight(weight);
    }

    fn shutdown(&mut self, how: Stop) {
        let Some(t) = self.thread.take() else { return };
        self.shared.request_stop(how);
        if let Err(e) = sys::eventfd_signal(self.wake.as_fd()) {
            log::warn!("waking the registry thread: {e}");
        }
        // Never wait forever: a thread stuck in the kernel is left behind (and says so).
        let deadline = Instant::now() + STOP_WAIT;
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            log::error!(
                "the registry thread of {} did not stop within {STOP_WAIT:?} (last turn {:?} \
                 ago): leaving it behind",
                self.path.display(),
                self.shared.since_last_beat()
            );
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown(Stop::Free);
    }
}

fn bind_seqpacket(path: &Path, mode: u32) -> Result<OwnedFd> {
    use std::os::unix::fs::PermissionsExt;
    if !sys::fits_sockaddr_un(path) {
        return Err(Error::PathTooLong(path.into()));
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|source| Error::Dir { path: path.into(), source })?;
        }
    }
    if path.exists() {
        // A live controller answers; a stale file from a crash does not.
        if sys::seqpacket_answers(path) {
            return Err(Error::InUse(path.into()));
        }
        let _ = std::fs::remove_file(path);
    }
    let fd = sys::seqpacket_listen(path, 256)
        .map_err(|source| Error::Socket { path: path.into(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| Error::Chmod { path: path.into(), source })?;
    Ok(fd)
}
