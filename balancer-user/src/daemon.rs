//! `reuselb daemon --config FILE`: every service of the config file balanced at once, each with
//! its own registration socket, its groups pinned in bpffs, metrics and `/status` over HTTP.
//!
//! Signals:
//! - SIGHUP re-reads the file. A file that does not parse or check is refused (its error, with
//!   file:line:column, is logged) and the running config stays. A good one is applied service by
//!   service ([`Config::diff`]): policy, weight, max_workers and allowed_uids change in place; a
//!   new service starts; a removed one stops (program detached, slots freed, pins removed); a
//!   service whose listen addresses, netns, mode or socket changed is removed and started again.
//! - SIGTERM and SIGINT stop the daemon and leave every service serving, balanced: the programs
//!   stay attached to the workers' sockets (a program lives as long as the reuseport group it is
//!   attached to, and the group as long as the workers' sockets), the slots and load map stay as
//!   they are and pinned, and the workers' shims keep counting in the load map they mapped. Only
//!   the registration sockets go away, so workers that start meanwhile serve with the kernel's
//!   hash until a daemon is back. A daemon started again adopts the pinned groups, and the
//!   workers register again into the slots they hold (their shims retry every second).
//!   A SIGKILL leaves the same state, only without removing the socket files.
use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use balancer_user::{
    config::{self, Config},
    metrics::{self, Metrics, MetricsServer},
    registry::{self, Registry, RegistryOptions},
    status::{self, Report},
    Group, GroupOptions,
};
use tokio::signal::unix::{signal, SignalKind};

/// Where `/metrics`, `/healthz` and `/status` are served unless the config or `--metrics-addr`
/// says otherwise; also where `reuselb status` and `reuselb top` look.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// The YAML config file (see deploy/examples/reuselb.yaml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Serve /metrics, /healthz and /status here (overrides the config's metrics_addr; default
    /// 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<SocketAddr>,
}

/// A service that runs: its config and its registry (which owns one group per address).
struct Running {
    config: config::Service,
    registry: Registry,
}

type Services = Arc<Mutex<Vec<Running>>>;

fn lock(services: &Services) -> MutexGuard<'_, Vec<Running>> {
    services.lock().unwrap_or_else(|e| e.into_inner())
}

struct Daemon {
    config_path: PathBuf,
    config: Config,
    /// Where groups are pinned (None: nothing can be pinned here). Fixed for the daemon's life.
    pin_path: Option<PathBuf>,
    services: Services,
    metrics: Arc<Metrics>,
    server: MetricsServer,
    /// `--metrics-addr`, which wins over the config's.
    metrics_flag: Option<SocketAddr>,
}

pub fn run(args: DaemonArgs) -> Result<i32> {
    let config = Config::load(&args.config).map_err(|e| anyhow!("{e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("reuselb-daemon")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(main_loop(args, config))
}

async fn main_loop(args: DaemonArgs, config: Config) -> Result<i32> {
    let started = Instant::now();
    log::info!(
        "reuselb {} daemon starting: {} ({} services: {})",
        env!("CARGO_PKG_VERSION"),
        args.config.display(),
        config.services.len(),
        config.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    // Signals first: a SIGHUP or SIGTERM during the start must not kill the process.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let pin_path = prepare_pin_path(&config.pin_path);
    let services: Services = Arc::new(Mutex::new(Vec::new()));
    for svc in &config.services {
        let running = start_service(svc, pin_path.as_deref())
            .with_context(|| format!("starting service `{}`", svc.name))?;
        lock(&services).push(running);
    }

    let metrics = Arc::new(Metrics::new());
    let report = {
        let services = services.clone();
        move || Report {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            mode: "daemon".to_owned(),
            uptime_seconds: started.elapsed().as_secs(),
            services: lock(&services)
                .iter()
                .flat_map(|r| status::collect(&r.config.name, &r.registry))
                .collect(),
        }
    };
    let for_metrics = report.clone();
    metrics.set_source(move || for_metrics().to_metrics());
    metrics.set_status_source(report);
    let metrics_addr = metrics_addr(args.metrics_addr, &config);
    let server = serve_metrics(metrics_addr, &metrics, &services).await?;

    let mut daemon = Daemon {
        config_path: args.config,
        config,
        pin_path,
        services,
        metrics,
        server,
        metrics_flag: args.metrics_addr,
    };
    log::info!(
        "running; SIGHUP reloads {}, SIGTERM stops (services keep serving)",
        daemon.config_path.display()
    );
    let signal_name = loop {
        tokio::select! {
            _ = hup.recv() => daemon.reload().await,
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    daemon.stop(signal_name);
    Ok(0)
}

fn metrics_addr(flag: Option<SocketAddr>, config: &Config) -> SocketAddr {
    flag.or(config.metrics_addr)
        .unwrap_or_else(|| DEFAULT_METRICS_ADDR.parse().expect("valid default"))
}

async fn serve_metrics(
    addr: SocketAddr,
    metrics: &Arc<Metrics>,
    services: &Services,
) -> Result<MetricsServer> {
    let health_services = services.clone();
    let health = move || -> Result<(), String> {
        let services = lock(&health_services);
        match services.iter().find(|r| !r.registry.is_running()) {
            Some(r) => Err(format!("service {}: the registration thread stopped", r.config.name)),
            None => Ok(()),
        }
    };
    let server = metrics::serve(addr, metrics.clone(), health).await.with_context(|| {
        format!("serving metrics on {addr} (set metrics_addr in the config or --metrics-addr)")
    })?;
    log::info!(
        "metrics on http://{}/metrics, health on /healthz, status on /status",
        server.local_addr()
    );
    Ok(server)
}

impl Daemon {
    async fn reload(&mut self) {
        log::info!("SIGHUP: reloading {}", self.config_path.display());
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload refused, the running config stays: {e}");
                self.metrics.record_reload(false);
                return;
            }
        };
        let diff = self.config.diff(&new);
        if diff.is_empty() {
            log::info!("reload: nothing changed");
            self.metrics.record_reload(true);
            return;
        }
        log::info!(
            "reload: added {:?}, removed {:?}, updated {:?}, recreated {:?}{}",
            diff.added,
            diff.removed,
            diff.updated,
            diff.recreated,
            if diff.globals_changed { ", global settings changed" } else { "" }
        );
        let mut failed = Vec::new();
        for name in diff.removed.iter().chain(&diff.recreated) {
            self.stop_service(name);
        }
        for name in &diff.updated {
            let svc = new.service(name).expect("updated services are in the new config");
            let mut services = lock(&self.services);
            if let Some(r) = services.iter_mut().find(|r| &r.config.name == name) {
                update_service(r, svc);
            }
        }
        for name in diff.added.iter().chain(&diff.recreated) {
            let svc = new.service(name).expect("added services are in the new config");
            match start_service(svc, self.pin_path.as_deref()) {
                Ok(r) => lock(&self.services).push(r),
                Err(e) => {
                    log::error!("reload: service `{name}` could not start: {e:#}");
                    failed.push(name.clone());
                }
            }
        }
        if self.config.pin_path != new.pin_path {
            log::warn!(
                "reload: pin_path changed to {}: it takes effect when the daemon restarts (groups stay pinned under {})",
                new.pin_path.display(),
                self.config.pin_path.display()
            );
        }
        let old_addr = metrics_addr(self.metrics_flag, &self.config);
        let new_addr = metrics_addr(self.metrics_flag, &new);
        if old_addr != new_addr {
            match serve_metrics(new_addr, &self.metrics, &self.services).await {
                Ok(server) => self.server = server,
                Err(e) => log::error!("reload: {e:#}; metrics stay on {old_addr}"),
            }
        }
        // A service that failed to start is left out of the running config, so that the next
        // reload tries it again.
        let mut applied = new;
        applied.services.retain(|s| !failed.contains(&s.name));
        self.config = applied;
        self.metrics.record_reload(failed.is_empty());
        log::info!("reload done: {} services running", lock(&self.services).len());
    }

    /// Stops a service for good: program detached, slots freed, pins removed.
    fn stop_service(&mut self, name: &str) {
        let running = {
            let mut services = lock(&self.services);
            let Some(i) = services.iter().position(|r| r.config.name == name) else { return };
            services.remove(i)
        };
        for svc in running.registry.services() {
            if let Err(e) = svc.group().unpin() {
                log::warn!("{name} {}: removing the pins: {e}", svc.addr);
            }
        }
        if let Some(pin_path) = &self.pin_path {
            let _ = fs::remove_dir(pin_path.join(name));
        }
        running.registry.stop_and_detach();
        log::info!("service `{name}` stopped: its workers serve with the kernel's hash");
    }

    fn stop(self, signal_name: &str) {
        let services = std::mem::take(&mut *lock(&self.services));
        let n = services.len();
        for r in services {
            r.registry.stop_keeping_slots();
        }
        drop(self.server);
        log::info!(
            "{signal_name}: stopped; {n} services keep serving, balanced by their attached programs{}",
            match &self.pin_path {
                Some(p) => format!(" (state pinned under {}: a daemon started again adopts it)", p.display()),
                None => String::new(),
            }
        );
    }
}

/// Applies what can change while a service runs: policy, default weight, max_workers, uids.
fn update_service(r: &mut Running, new: &config::Service) {
    let name = &new.name;
    if r.config.policy != new.policy {
        for svc in r.registry.services() {
            if let Err(e) = svc.group().set_policy(new.policy) {
                log::error!("{name} {}: setting policy {}: {e}", svc.addr, new.policy.name());
            }
        }
        log::info!("{name}: policy {} -> {}", r.config.policy.name(), new.policy.name());
    }
    if r.config.weight != new.weight {
        r.registry.set_default_weight(new.weight);
        log::info!("{name}: default weight {} -> {}", r.config.weight, new.weight);
    }
    if r.config.max_workers != new.max_workers {
        r.registry.set_max_workers(new.max_workers);
        log::info!("{name}: max_workers {} -> {}", r.config.max_workers, new.max_workers);
    }
    if r.config.allowed_uids != new.allowed_uids {
        let uids = new.allowed_uids_or(own_uid());
        r.registry.set_allowed_uids(&uids);
        set_socket_mode(new.shim_socket(), socket_mode(&uids));
        log::info!("{name}: allowed uids {uids:?}");
    }
    r.config = new.clone();
}

fn own_uid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// The mode of a registration socket. Who may register is decided by the peer's uid, which the
/// kernel vouches for (SO_PEERCRED), against allowed_uids: that check is exact, per uid, and
/// counted in the metrics. The file mode only keeps everybody else from connecting at all when
/// the daemon's own uid is the only one allowed (0600); when other uids are allowed it is 0666,
/// since a group-based mode would need a group that holds exactly those uids.
fn socket_mode(uids: &[u32]) -> u32 {
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

fn start_service(svc: &config::Service, pin_path: Option<&Path>) -> Result<Running> {
    let netns_cookie = match &svc.netns {
        Some(path) => Some(
            netns_cookie_of(path)
                .with_context(|| format!("network namespace {}", path.display()))?,
        ),
        None => None,
    };
    let mut groups = Vec::new();
    for addr in &svc.listen {
        let pin_dir = pin_path.map(|p| p.join(&svc.name).join(sanitize(addr)));
        let group = Group::new(GroupOptions {
            policy: svc.policy,
            mode: svc.mode,
            pin_dir: pin_dir.clone(),
            ..Default::default()
        })
        .with_context(|| format!("creating the balanced group of {addr}"))?;
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
                svc.policy.name()
            );
        }
        groups.push((*addr, group));
    }
    let uids = svc.allowed_uids_or(own_uid());
    let mut options = RegistryOptions::new(svc.shim_socket());
    options.allowed_uids = uids.clone();
    options.socket_mode = socket_mode(&uids);
    options.netns_cookie = netns_cookie;
    options.max_workers = svc.max_workers;
    options.default_weight = svc.weight;
    let registry = Registry::start(options, groups).context("starting the registration socket")?;
    log::info!(
        "{}: workers register at {} (uids {uids:?}, max_workers {}, default weight {})",
        svc.name,
        svc.shim_socket().display(),
        svc.max_workers,
        svc.weight
    );
    Ok(Running { config: svc.clone(), registry })
}

/// The cookie of the network namespace at `path`, read from a socket made in a thread that
/// entered it (the rest of the process stays where it is).
fn netns_cookie_of(path: &Path) -> Result<u64> {
    let file = fs::File::open(path).context("opening it")?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<u64> {
            // SAFETY: setns on this thread only, with a namespace descriptor we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {} (needs CAP_SYS_ADMIN)", std::io::Error::last_os_error());
            }
            registry::own_netns_cookie().context("reading its cookie")
        })
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))?
    })
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `pin_path` is a directory on a BPF filesystem, mounting bpffs at /sys/fs/bpf if it
/// is not mounted. `None` (with a warning) if groups cannot be pinned: the daemon then runs, but
/// a restarted daemon cannot adopt what this one leaves.
fn prepare_pin_path(pin_path: &Path) -> Option<PathBuf> {
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(bpffs) && !is_bpffs(bpffs) {
        let _ = fs::create_dir_all(bpffs);
        // SAFETY: mount(2) with NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r == 0 {
            log::info!("the BPF filesystem was not mounted: mounted it at /sys/fs/bpf");
        } else {
            log::warn!(
                "the BPF filesystem is not mounted at /sys/fs/bpf and mounting it failed ({}): mount it (mount -t bpf bpf /sys/fs/bpf) or grant CAP_SYS_ADMIN",
                std::io::Error::last_os_error()
            );
        }
    }
    if let Err(e) = fs::create_dir_all(pin_path) {
        log::warn!("cannot create pin_path {}: {e}: nothing is pinned, a restarted daemon will not adopt the running groups", pin_path.display());
        return None;
    }
    if !is_bpffs(pin_path) {
        log::warn!(
            "pin_path {} is not on a BPF filesystem: nothing is pinned, a restarted daemon will not adopt the running groups",
            pin_path.display()
        );
        return None;
    }
    Some(pin_path.to_owned())
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
                s.policy.name(),
                s.max_workers,
                s.shim_socket().display()
            ),
        );
    }
    by_name.into_values().collect::<Vec<_>>().join("\n")
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
}
