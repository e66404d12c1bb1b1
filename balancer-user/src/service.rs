//! Balanced services as a config file describes them: starting one (its groups, pinned under
//! `<pin_path>/<service>/<address>`, and its registration socket), changing what can change while
//! it runs, applying a reloaded config ([`Config::diff`]), stopping, and reporting.
//! Both controllers start their services here, and only here: `reuselb daemon` a [`Services`] of
//! its config file, `reuselb run` a [`Services`] of one service made from its flags (and checked
//! by the same [`Config::validate`]). What differs between them is the [`Mode`]: only a daemon
//! pins (its successor adopts what it leaves), and a service that names no `allowed_uids` admits
//! the daemon's own uid under a daemon, any uid under `reuselb run` (whose app's workers may drop
//! privileges; docs/SECURITY.md). `reuselb check-config` prints [`summary`].
//!
//! Invariants: at most one running service per name; a service that failed to start is not in
//! the set (so the next reload tries it again); a stopped-for-good service leaves no pins; at a
//! controller stop ([`Services::stop_keeping_slots`]) every program stays attached and every slot
//! stays as it is, for the next controller to adopt.
use std::{
    collections::BTreeMap,
    fs, io,
    net::SocketAddr,
    os::{fd::AsFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use balancer_common::Policy;

use crate::{
    config::{self, Config},
    registry::{self, PodOptions, PodTemplate, Registry, RegistryOptions},
    report::{self, Mode, Report},
    sys, Group, GroupOptions,
};

/// Why a service could not start. Each message carries its cause (no `source()` chain to repeat
/// it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network namespace {}: {what}: {error}", path.display())]
    Netns { path: PathBuf, what: &'static str, error: io::Error },
    #[error("creating the balanced group of {addr}: {error}")]
    Group { addr: SocketAddr, error: Box<crate::Error> },
    #[error("starting the registration socket: {0}")]
    Registry(registry::Error),
    #[error("starting service `{name}`: {error}")]
    Start { name: String, error: Box<Error> },
}

/// A service that runs: its config and its registry (which owns one group per address).
pub struct Running {
    pub config: config::Service,
    pub registry: Registry,
}

impl Running {
    /// Starts `svc`: one group per listen address (adopting what is pinned under `pin_path`, or
    /// pinning there), and its registration socket, admitting as [`Admission::of`] says.
    pub fn start(
        svc: &config::Service,
        pin_path: Option<&Path>,
        mode: Mode,
    ) -> Result<Self, Error> {
        let netns_cookie = match &svc.netns {
            Some(path) => Some(netns_cookie_of(path)?),
            None => None,
        };
        let mut groups = Vec::new();
        for addr in &svc.listen {
            let pin_dir = pin_path.map(|p| p.join(&svc.name).join(sanitize(addr)));
            let group = Group::new(GroupOptions {
                policy: svc.policy,
                mode: svc.mode,
                pin_dir: pin_dir.clone(),
                blocked_after: blocked_after(svc),
                pack_depth: svc.pack_depth,
                ..Default::default()
            })
            .map_err(|error| Error::Group { addr: *addr, error: Box::new(error) })?;
            let pinned = match &pin_dir {
                Some(d) => format!(", pinned at {}", d.display()),
                None => ", not pinned".to_owned(),
            };
            if group.adopted() {
                log::info!(
                    "{} {addr}: adopted the running {} program with {} workers{pinned}",
                    svc.name,
                    group.program().name(),
                    group.occupied_slots().count()
                );
            } else {
                log::info!(
                    "{} {addr}: {} program loaded, policy {}{pinned}",
                    svc.name,
                    group.program().name(),
                    policy_label(svc.policy, svc.pack_depth)
                );
            }
            groups.push((*addr, group));
        }
        let admission = Admission::of(svc, mode);
        let mut options = RegistryOptions::new(svc.shim_socket());
        admission.apply(&mut options);
        options.netns_cookie = netns_cookie;
        options.max_workers = svc.max_workers;
        options.default_weight = svc.weight;
        let registry = Registry::start(options, groups).map_err(Error::Registry)?;
        log::info!(
            "{}: workers register at {} ({admission}, max_workers {}, default weight {})",
            svc.name,
            svc.shim_socket().display(),
            svc.max_workers,
            svc.weight
        );
        Ok(Self { config: svc.clone(), registry })
    }

    /// Applies what can change while a service runs: policy, blocked_after_ms, pack_depth,
    /// default weight, max_workers, uids.
    pub fn update(&mut self, new: &config::Service) {
        let name = &new.name;
        let old = &self.config;
        if old.policy != new.policy {
            for svc in self.registry.services() {
                if let Err(e) = svc.group().set_policy(new.policy) {
                    log::error!("{name} {}: setting policy {}: {e}", svc.addr, new.policy.name());
                }
            }
            log::info!("{name}: policy {} -> {}", old.policy.name(), new.policy.name());
        }
        if old.blocked_after_ms != new.blocked_after_ms {
            for svc in self.registry.services() {
                if let Err(e) = svc.group().set_blocked_after(blocked_after(new)) {
                    log::error!("{name} {}: setting blocked_after_ms: {e}", svc.addr);
                }
            }
            log::info!(
                "{name}: blocked_after_ms {} -> {}",
                old.blocked_after_ms,
                new.blocked_after_ms
            );
        }
        if old.pack_depth != new.pack_depth {
            for svc in self.registry.services() {
                if let Err(e) = svc.group().set_pack_depth(new.pack_depth) {
                    log::error!("{name} {}: setting pack_depth: {e}", svc.addr);
                }
            }
            log::info!("{name}: pack_depth {} -> {}", old.pack_depth, new.pack_depth);
        }
        if old.weight != new.weight {
            self.registry.set_default_weight(new.weight);
            log::info!("{name}: default weight {} -> {}", old.weight, new.weight);
        }
        if old.max_workers != new.max_workers {
            self.registry.set_max_workers(new.max_workers);
            log::info!("{name}: max_workers {} -> {}", old.max_workers, new.max_workers);
        }
        if old.allowed_uids != new.allowed_uids {
            // Only a daemon reloads, and under a daemon every admission is a list of uids.
            let uids = new.allowed_uids_or(own_uid());
            self.registry.set_allowed_uids(&uids);
            set_socket_mode(new.shim_socket(), socket_mode(&uids));
            log::info!("{name}: allowed uids {uids:?}");
        }
        self.config = new.clone();
    }

    /// Stops the service for good: program detached, slots freed, pins removed.
    pub fn stop_for_good(self, pin_path: Option<&Path>) {
        let name = &self.config.name;
        for svc in self.registry.services() {
            if let Err(e) = svc.group().unpin() {
                log::warn!("{name} {}: removing the pins: {e}", svc.addr);
            }
        }
        if let Some(pin_path) = pin_path {
            let _ = fs::remove_dir(pin_path.join(name));
        }
        self.registry.stop_and_detach();
        log::info!("service `{name}` stopped: its workers serve with the kernel's hash");
    }

    /// The service's report, read now.
    pub fn report(&self) -> report::ServiceReport {
        report::collect(&self.config.name, &self.registry)
    }
}

/// The pods section running: one registration socket for every pod, groups made on registration
/// (see [`crate::registry::pods`]), pinned under `<pin_path>/pods`.
pub struct RunningPods {
    pub config: config::Pods,
    pub registry: Registry,
}

/// Name of the pods section in metrics labels, `/status` and under `pin_path`.
pub const PODS: &str = "pods";

impl RunningPods {
    pub fn start(pods: &config::Pods, pin_path: Option<&Path>) -> Result<Self, Error> {
        let own = own_uid();
        let templates: Vec<PodTemplate> = pods
            .templates
            .iter()
            .map(|t| PodTemplate {
                name: t.name.clone(),
                policy: t.policy,
                mode: t.mode,
                weight: t.weight,
                max_workers: t.max_workers,
                pack_depth: t.pack_depth,
                allowed_uids: t.allowed_uids_or(own),
            })
            .collect();
        let uids: Vec<u32> = {
            let mut u: Vec<u32> = templates.iter().flat_map(|t| t.allowed_uids.clone()).collect();
            u.sort_unstable();
            u.dedup();
            u
        };
        let mut options = RegistryOptions::new(pods.shim_socket());
        options.allowed_uids = uids.clone();
        options.socket_mode = socket_mode(&uids);
        options.pods = Some(PodOptions {
            templates,
            default_template: pods.default_template.clone(),
            max_groups: pods.max_groups as usize,
            max_groups_per_pod: pods.max_groups_per_pod as usize,
            max_workers_per_pod: pods.max_workers_per_pod as usize,
            removal_grace: std::time::Duration::from_millis(u64::from(pods.removal_grace_ms)),
            pin_root: pin_path.map(|p| p.join(PODS)),
        });
        let registry = Registry::start(options, Vec::new()).map_err(Error::Registry)?;
        log::info!(
            "pods: workers of any pod register at {} (templates {}, default {}, at most {} \
             groups, {} groups and {} workers per pod, uids {uids:?}); {} pod groups adopted",
            pods.shim_socket().display(),
            pods.templates.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "),
            pods.default_template,
            pods.max_groups,
            pods.max_groups_per_pod,
            pods.max_workers_per_pod,
            registry.pod_groups().len()
        );
        Ok(Self { config: pods.clone(), registry })
    }

    /// Stops for good: every pod group detached, its slots freed, its pins removed.
    pub fn stop_for_good(self) {
        for svc in self.registry.services() {
            if let Err(e) = svc.group().unpin() {
                log::warn!("pods {}: removing the pins: {e}", svc.describe());
            }
        }
        self.registry.stop_and_detach();
        log::info!("pods section stopped: pods serve with the kernel's hash");
    }

    pub fn report(&self) -> report::ServiceReport {
        report::collect(PODS, &self.registry)
    }
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Services that were to start (added or recreated) and could not; they are not running.
    pub failed: Vec<String>,
}

/// Who may register with a service: its `allowed_uids`, or, when it names none, the default of
/// the controller that runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// These uids (and root).
    Uids(Vec<u32>),
    /// Any uid: admission rests on the listener a worker hands over (docs/SECURITY.md).
    AnyUid,
}

impl Admission {
    /// `svc`'s admission under `mode`: its `allowed_uids`; else the daemon's own uid under a
    /// daemon, any uid under `reuselb run`.
    pub fn of(svc: &config::Service, mode: Mode) -> Self {
        match (&svc.allowed_uids, mode) {
            (Some(uids), _) => Admission::Uids(uids.clone()),
            (None, Mode::Daemon) => Admission::Uids(vec![own_uid()]),
            (None, Mode::Run) => Admission::AnyUid,
        }
    }

    /// The registry's uids and the socket file's mode ([`socket_mode`]; 0666 for any uid).
    fn apply(&self, options: &mut RegistryOptions) {
        match self {
            Admission::Uids(uids) => {
                options.allowed_uids = uids.clone();
                options.socket_mode = socket_mode(uids);
            }
            Admission::AnyUid => {
                options.any_uid = true;
                options.socket_mode = 0o666;
            }
        }
    }
}

impl std::fmt::Display for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Uids(uids) => write!(f, "uids {uids:?}"),
            Admission::AnyUid => f.write_str("any uid"),
        }
    }
}

/// The running services of a config, shared by the signal loop and the HTTP server.
pub struct Services {
    running: Mutex<Vec<Running>>,
    /// The pods section, if configured and running.
    pods: Mutex<Option<RunningPods>>,
    /// Where groups are pinned (None: nothing can be pinned here). Fixed for the set's life.
    pin_path: Option<PathBuf>,
    /// Which controller runs them: what a service without `allowed_uids` admits, the report's mode.
    mode: Mode,
    started: Instant,
}

impl Services {
    /// Starts every service of `config` for `mode`'s controller; the first that fails stops the
    /// start (with the service's name in the error). A daemon prepares the config's pin path
    /// ([`prepare_pin_path`]) and pins there; `reuselb run` pins nothing (its groups end with
    /// its app server, nothing is left to adopt).
    pub fn start(config: &Config, mode: Mode) -> Result<Self, Error> {
        let services = Self {
            running: Mutex::new(Vec::new()),
            pods: Mutex::new(None),
            pin_path: match mode {
                Mode::Daemon => prepare_pin_path(&config.pin_path),
                Mode::Run => None,
            },
            mode,
            started: Instant::now(),
        };
        for svc in &config.services {
            let running = Running::start(svc, services.pin_path.as_deref(), mode)
                .map_err(|e| Error::Start { name: svc.name.clone(), error: Box::new(e) })?;
            services.lock().push(running);
        }
        if let Some(pods) = &config.pods {
            let running = RunningPods::start(pods, services.pin_path.as_deref())
                .map_err(|e| Error::Start { name: PODS.to_owned(), error: Box::new(e) })?;
            *services.pods_lock() = Some(running);
        }
        Ok(services)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pods_lock(&self) -> MutexGuard<'_, Option<RunningPods>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pin_path(&self) -> Option<&Path> {
        self.pin_path.as_deref()
    }

    /// Services running now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `new` over `old` service by service ([`Config::diff`]): removed and recreated
    /// services stop for good, updated ones change in place, added and recreated ones start.
    /// Global settings (pin path, metrics address) are the caller's.
    pub fn apply(&self, old: &Config, new: &Config) -> Applied {
        let diff = old.diff(new);
        let mut applied = Applied::default();
        for name in diff.removed.iter().chain(&diff.recreated) {
            let running = {
                let mut services = self.lock();
                let Some(i) = services.iter().position(|r| &r.config.name == name) else {
                    continue;
                };
                services.remove(i)
            };
            running.stop_for_good(self.pin_path());
        }
        for name in &diff.updated {
            let svc = new.service(name).expect("updated services are in the new config");
            if let Some(r) = self.lock().iter_mut().find(|r| &r.config.name == name) {
                r.update(svc);
            }
        }
        for name in diff.added.iter().chain(&diff.recreated) {
            let svc = new.service(name).expect("added services are in the new config");
            match Running::start(svc, self.pin_path(), self.mode) {
                Ok(r) => self.lock().push(r),
                Err(e) => {
                    log::error!("reload: service `{name}` could not start: {e}");
                    applied.failed.push(name.clone());
                }
            }
        }
        if diff.pods_changed {
            // Changed settings: a new registry adopts the pinned groups (the programs keep
            // balancing meanwhile). Removed: every pod group goes back to the kernel's hash.
            let old_pods = self.pods_lock().take();
            match (old_pods, &new.pods) {
                (Some(old), Some(_)) => old.registry.stop_keeping_slots(),
                (Some(old), None) => old.stop_for_good(),
                (None, _) => {}
            }
            if let Some(pods) = &new.pods {
                match RunningPods::start(pods, self.pin_path()) {
                    Ok(r) => *self.pods_lock() = Some(r),
                    Err(e) => {
                        log::error!("reload: the pods section could not start: {e}");
                        applied.failed.push(PODS.to_owned());
                    }
                }
            }
        }
        applied
    }

    /// The report of every running service.
    pub fn report(&self) -> Report {
        let mut services: Vec<_> = self.lock().iter().map(Running::report).collect();
        if let Some(p) = self.pods_lock().as_ref() {
            services.push(p.report());
        }
        Report::new(self.mode, self.started, services)
    }

    /// `Err` naming the first service whose registration thread stopped.
    pub fn health(&self) -> Result<(), String> {
        if let Some(r) = self.lock().iter().find(|r| !r.registry.is_running()) {
            return Err(format!("service {}: the registration thread stopped", r.config.name));
        }
        if self.pods_lock().as_ref().is_some_and(|p| !p.registry.is_running()) {
            return Err("pods: the registration thread stopped".to_owned());
        }
        Ok(())
    }

    /// Stops every registration socket and frees every slot; the programs stay attached to the
    /// workers' sockets. What `reuselb run` does once its app server has exited.
    pub fn stop(&self) {
        for r in std::mem::take(&mut *self.lock()) {
            r.registry.stop();
        }
        if let Some(p) = self.pods_lock().take() {
            p.registry.stop();
        }
    }

    /// Stops every registration socket and leaves every service serving, balanced (programs
    /// attached, slots as they are, pinned). Returns how many services were running.
    pub fn stop_keeping_slots(&self) -> usize {
        let services = std::mem::take(&mut *self.lock());
        let mut n = services.len();
        for r in services {
            r.registry.stop_keeping_slots();
        }
        if let Some(p) = self.pods_lock().take() {
            n += p.registry.pod_groups().len();
            p.registry.stop_keeping_slots();
        }
        n
    }
}

/// The service's blocked check, `None` when off.
fn blocked_after(svc: &config::Service) -> Option<std::time::Duration> {
    (svc.blocked_after_ms != 0)
        .then(|| std::time::Duration::from_millis(svc.blocked_after_ms.into()))
}

fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The mode of a registration socket. Who may register is decided by the peer's uid, which the
/// kernel vouches for (SO_PEERCRED), against allowed_uids: that check is exact, per uid, and
/// counted in the metrics. The file mode only keeps everybody else from connecting at all when
/// the daemon's own uid is the only one allowed (0600); when other uids are allowed it is 0666,
/// since a group-based mode would need a group that holds exactly those uids.
pub fn socket_mode(uids: &[u32]) -> u32 {
    if uids.iter().all(|&u| u == own_uid()) {
        0o600
    } else {
        0o666
    }
}

fn set_socket_mode(path: &Path, mode: u32) {
    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        log::warn!("chmod {:o} {}: {e}", mode, path.display());
    }
}

/// `addr` as a bpffs file name (bpffs refuses names with a dot): `127.0.0.1:8000` ->
/// `127_0_0_1_8000`, `[::1]:8000` -> `__1_8000`.
pub fn sanitize(addr: &SocketAddr) -> String {
    let s = match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("{}:{}", a.ip(), a.port()),
    };
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The cookie of the network namespace at `path`, read from a socket made in a thread that
/// entered it (the rest of the process stays where it is).
fn netns_cookie_of(path: &Path) -> Result<u64, Error> {
    let err = |what, error| Error::Netns { path: path.to_owned(), what, error };
    let file = fs::File::open(path).map_err(|e| err("opening it", e))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<u64, Error> {
            sys::enter_netns(file.as_fd())
                .map_err(|e| err("setns (needs CAP_SYS_ADMIN)", e.source))?;
            sys::own_netns_cookie().map_err(|e| err("reading its cookie", e.source))
        })
        .join()
        .map_err(|_| err("entering it", io::Error::other("the namespace thread panicked")))?
    })
}

/// Makes sure `pin_path` is a directory on a BPF filesystem, mounting bpffs at /sys/fs/bpf if it
/// is not mounted. `None` (with a warning) if groups cannot be pinned: the daemon then runs, but
/// a restarted daemon cannot adopt what this one leaves.
pub fn prepare_pin_path(pin_path: &Path) -> Option<PathBuf> {
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(bpffs) && !sys::is_bpffs(bpffs) {
        let _ = fs::create_dir_all(bpffs);
        match sys::mount_bpffs(bpffs) {
            Ok(()) => log::info!("the BPF filesystem was not mounted: mounted it at /sys/fs/bpf"),
            Err(e) => log::warn!(
                "the BPF filesystem is not mounted at /sys/fs/bpf and mounting it failed ({e}): \
                 mount it (mount -t bpf bpf /sys/fs/bpf) or grant CAP_SYS_ADMIN"
            ),
        }
    }
    if let Err(e) = fs::create_dir_all(pin_path) {
        log::warn!(
            "cannot create pin_path {}: {e}: nothing is pinned, a restarted daemon will not adopt \
             the running groups",
            pin_path.display()
        );
        return None;
    }
    if !sys::is_bpffs(pin_path) {
        log::warn!(
            "pin_path {} is not on a BPF filesystem: nothing is pinned, a restarted daemon will \
             not adopt the running groups",
            pin_path.display()
        );
        return None;
    }
    Some(pin_path.to_owned())
}

/// A policy's name, with its depth under pack (0 counts as 1): `pack (depth 2)`.
pub fn policy_label(policy: Policy, pack_depth: u32) -> String {
    match policy {
        Policy::Pack => format!("pack (depth {})", pack_depth.max(1)),
        p => p.name().to_owned(),
    }
}

/// For `reuselb check-config`: what a good file holds, one line per service.
pub fn summary(config: &Config) -> String {
    let mut by_name = BTreeMap::new();
    for s in &config.services {
        by_name.insert(
            s.name.clone(),
            format!(
                "{}: {} policy {} max_workers {} socket {}",
                s.name,
                s.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
                policy_label(s.policy, s.pack_depth),
                s.max_workers,
                s.shim_socket().display()
            ),
        );
    }
    let mut lines = by_name.into_values().collect::<Vec<_>>();
    if let Some(p) = &config.pods {
        lines.push(format!(
            "{PODS}: groups made on registration, socket {}, at most {} groups ({} groups and {} \
             workers per pod), removed {} ms after their last worker; templates {} (default {})",
            p.shim_socket().display(),
            p.max_groups,
            p.max_groups_per_pod,
            p.max_workers_per_pod,
            p.removal_grace_ms,
            p.templates
                .iter()
                .map(|t| format!(
                    "{} (policy {}, max_workers {})",
                    t.name,
                    policy_label(t.policy, t.pack_depth),
                    t.max_workers
                ))
                .collect::<Vec<_>>()
                .join(", "),
            p.default_template
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_file_names() {
        assert_eq!(sanitize(&"127.0.0.1:8000".parse().unwrap()), "127_0_0_1_8000");
        assert_eq!(sanitize(&"[::1]:8000".parse().unwrap()), "__1_8000");
        assert_eq!(sanitize(&"[fe80::1%2]:80".parse().unwrap()), "fe80__1_80");
    }

    #[test]
    fn a_service_without_uids_admits_its_controllers_default() {
        let config = Config::parse(
            "services:\n  - name: app\n    listen: 127.0.0.1:8000\n  - name: other\n    \
             listen: 127.0.0.1:8001\n    allowed_uids: [33]\n",
            "t.yaml",
        )
        .unwrap();
        let (none, some) = (&config.services[0], &config.services[1]);
        assert_eq!(Admission::of(none, Mode::Daemon), Admission::Uids(vec![own_uid()]));
        assert_eq!(Admission::of(none, Mode::Run), Admission::AnyUid);
        assert_eq!(Admission::of(some, Mode::Run), Admission::Uids(vec![33]));
        let mut options = RegistryOptions::new("/tmp/x.sock");
        Admission::AnyUid.apply(&mut options);
        assert!(options.any_uid);
        assert_eq!(options.socket_mode, 0o666);
    }
}
