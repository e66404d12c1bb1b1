//! `reuselb run`: the controller in-process, around an app server started with the shim preloaded.
use std::{
    ffi::OsString,
    io::IsTerminal,
    net::SocketAddr,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use balancer_common::{protocol, Policy};
use balancer_user::{
    metrics,
    registry::{Registry, RegistryOptions},
    status, view, Group, GroupOptions,
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Balanced address (ADDR:PORT) the app server binds; repeat for several.
    #[arg(long = "listen", value_name = "ADDR:PORT", required = true)]
    listen: Vec<SocketAddr>,
    /// Selection policy: least-loaded, p2c, round-robin or hash.
    #[arg(long, default_value = "least-loaded", value_parser = parse_policy)]
    policy: Policy,
    /// Path of the registration socket the workers' shim connects to.
    #[arg(long, value_name = "PATH", default_value = protocol::DEFAULT_SOCKET_PATH)]
    socket: PathBuf,
    /// The shim library (default: libbalancer_shim.so next to this binary).
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,
    /// Seconds between per-worker status lines (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    status_every: u64,
    /// Redraw a live per-worker table every second instead of the status lines.
    #[arg(long)]
    view: bool,
    /// Serve /metrics, /healthz and /status here (`reuselb status` and `reuselb top` read it).
    /// If the address is taken, the app runs anyway, without them.
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::daemon::DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
    /// Serve no metrics at all.
    #[arg(long, conflicts_with = "metrics_addr")]
    no_metrics: bool,
    /// Service name in the metrics and the status (default: the command's file name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The app server and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse::<Policy>().map_err(|e| e.to_string())
}

/// pid of the app server, for the signal handler (0: not started yet).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn install_forwarding() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installs a handler that only calls kill.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            bail!("installing the handler of signal {sig}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn find_shim(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe().context("locating this binary")?;
            exe.parent()
                .map(|d| d.join("libbalancer_shim.so"))
                .context("this binary has no directory")?
        }
    };
    if !path.is_file() {
        bail!(
            "the shim library {} does not exist: build it (cargo build --release -p balancer-shim) or pass --shim PATH",
            path.display()
        );
    }
    // The dynamic loader needs an absolute path: the app may change directory.
    std::fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
}

/// Runs the command under the controller; returns its exit status (128 + signal if killed).
pub fn run(args: RunArgs) -> Result<i32> {
    let shim = find_shim(args.shim)?;
    let mut services = Vec::new();
    for addr in &args.listen {
        let group = Group::new(GroupOptions { policy: args.policy, ..Default::default() })
            .with_context(|| format!("creating the balanced group of {addr}"))?;
        log::info!(
            "{addr}: {} program loaded, policy {}",
            group.program().name(),
            args.policy.name()
        );
        services.push((*addr, group));
    }
    let registry = Registry::start(RegistryOptions::new(&args.socket), services)
        .context("starting the registration socket")?;
    install_forwarding()?;

    let preload = match std::env::var_os("LD_PRELOAD") {
        Some(existing) if !existing.is_empty() => {
            let mut p = existing;
            p.push(":");
            p.push(&shim);
            p
        }
        _ => shim.clone().into_os_string(),
    };
    let listen = args.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("LD_PRELOAD", preload)
        .env(protocol::ENV_LISTEN, &listen)
        .env(protocol::ENV_SOCKET, &args.socket)
        // Its own process group: a terminal's Ctrl-C reaches it once, through us.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            registry.stop();
            return Err(e).with_context(|| format!("starting {:?}", args.command[0]));
        }
    };
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    log::info!(
        "started {:?} (pid {}) with the shim preloaded, balancing {listen}",
        args.command[0],
        child.id()
    );

    let registry = Arc::new(registry);
    let name = args.name.clone().unwrap_or_else(|| {
        std::path::Path::new(&args.command[0])
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".into())
    });
    let metrics =
        (!args.no_metrics).then(|| start_metrics(args.metrics_addr, &registry, name)).flatten();
    let stop = Arc::new(AtomicBool::new(false));
    let view = args.view;
    let status = (view || args.status_every > 0).then(|| {
        let registry = registry.clone();
        let stop = stop.clone();
        let every = Duration::from_secs(if view { 1 } else { args.status_every });
        std::thread::spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() >= next {
                    if view {
                        print_view(&registry);
                    } else {
                        print_status(&registry);
                    }
                    next = Instant::now() + every;
                }
            }
        })
    });

    let status_code = child.wait().context("waiting for the app server")?;
    CHILD.store(0, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = status {
        let _ = t.join();
    }
    // The metrics hold only a weak reference to the registry; stop them first anyway.
    drop(metrics);
    match Arc::try_unwrap(registry) {
        Ok(r) => r.stop(),
        Err(_) => log::warn!("registry still in use at exit"),
    }
    let code = match (status_code.code(), status_code.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    };
    log::info!("app server exited ({status_code}); exiting with {code}");
    Ok(code)
}

/// The metrics server and the runtime it runs on; both stop when dropped (the server first: its
/// task is aborted, then the runtime's thread ends).
struct MetricsRunning {
    _server: metrics::MetricsServer,
    _runtime: tokio::runtime::Runtime,
}

/// Serves /metrics, /healthz and /status for `registry`, named `name`. `None` (with a warning)
/// if that fails: the app runs anyway.
fn start_metrics(
    addr: SocketAddr,
    registry: &Arc<Registry>,
    name: String,
) -> Option<MetricsRunning> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("reuselb-metrics")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log::warn!("no metrics: cannot start the async runtime: {e}");
            return None;
        }
    };
    let started = Instant::now();
    let weak = Arc::downgrade(registry);
    let report = move || status::Report {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: "run".to_owned(),
        uptime_seconds: started.elapsed().as_secs(),
        services: weak.upgrade().map(|r| status::collect(&name, &r)).unwrap_or_default(),
    };
    let m = Arc::new(metrics::Metrics::new());
    let for_metrics = report.clone();
    m.set_source(move || for_metrics().to_metrics());
    m.set_status_source(report);
    let weak = Arc::downgrade(registry);
    let health = move || match weak.upgrade() {
        Some(r) if r.is_running() => Ok(()),
        _ => Err("the registration thread stopped".to_owned()),
    };
    match runtime.block_on(metrics::serve(addr, m, health)) {
        Ok(server) => {
            log::info!(
                "metrics on http://{}/metrics, status on /status (reuselb status --addr {})",
                server.local_addr(),
                server.local_addr()
            );
            Some(MetricsRunning { _server: server, _runtime: runtime })
        }
        Err(e) => {
            log::warn!("no metrics: cannot serve on {addr}: {e} (choose another with --metrics-addr, or --no-metrics)");
            None
        }
    }
}

/// The live per-worker tables of every service. On a terminal each frame replaces the last, so
/// the last frame with workers stays on screen after the app exits.
fn print_view(registry: &Registry) {
    let mut out = String::new();
    if std::io::stdout().is_terminal() {
        out.push_str("\x1b[H\x1b[2J");
    }
    for svc in registry.services() {
        let group = svc.group();
        match (group.slots(), group.stats()) {
            (Ok(slots), Ok(stats)) => {
                out.push_str(&view::render(
                    &svc.addr.to_string(),
                    group.policy(),
                    group.program(),
                    &slots,
                    &stats,
                ));
                out.push('\n');
            }
            (Err(e), _) | (_, Err(e)) => log::warn!("{}: reading the maps: {e}", svc.addr),
        }
    }
    print!("{out}");
}

fn print_status(registry: &Registry) {
    for svc in registry.services() {
        let group = svc.group();
        let slots = match group.slots() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{}: reading slots: {e}", svc.addr);
                continue;
            }
        };
        let total: u64 = slots.iter().map(|s| s.inflight).sum();
        let mut line = format!(
            "{} {}: {} workers, {} in flight |",
            svc.addr,
            group.policy().name(),
            slots.len(),
            total
        );
        for s in &slots {
            line.push_str(&format!(" {}:{} {}/{}", s.slot, s.pid, s.inflight, s.selected_total));
        }
        log::info!("{line}  (slot:pid inflight/selected)");
    }
}
