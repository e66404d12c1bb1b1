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
    http,
    metrics::Metrics,
    registry::{Registry, RegistryOptions},
    report::{self, Mode, Report},
    view, Group, GroupOptions,
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Balanced address (ADDR:PORT) the app server binds; repeat for several.
    #[arg(long = "listen", value_name = "ADDR:PORT", required = true)]
    listen: Vec<SocketAddr>,
    /// Selection policy: least-loaded, work-left, peak-ewma, p2c, round-robin, hash or pack.
    #[arg(long, default_value = "least-loaded", value_parser = parse_policy)]
    policy: Policy,
    /// Pass over a worker that has had connections in flight and made no progress (no
    /// completion) for this many milliseconds, while another worker has not (least-loaded and
    /// p2c); 0 turns the check off.
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=balancer_config::MAX_BLOCKED_AFTER_MS as i64))]
    blocked_after_ms: u32,
    /// With `--policy pack`: connections in flight per unit of weight that fill a worker before
    /// the next one gets new connections (0 counts as 1).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=balancer_config::MAX_PACK_DEPTH as i64))]
    pack_depth: u32,
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
    #[arg(long, value_name = "ADDR:PORT", default_value = http::DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
    /// Serve no metrics at all.
    #[arg(long, conflicts_with = "metrics_addr")]
    no_metrics: bool,
    /// Only workers of this uid (and root) may register; repeat for several. Default: any uid,
    /// so that workers that drop privileges (uWSGI `uid`, gunicorn `--user`) register: admission
    /// then rests on the listener each worker must hand over, a socket on the balanced address
    /// that only the app's own uid can bind (docs/SECURITY.md).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
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
        // SAFETY: sigaction is plain data; all-zero is a valid starting value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: sa_mask is a valid sigset_t we own.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: installs a handler that only calls kill (async-signal-safe).
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

/// The registration socket of `reuselb run`: with no `--allow-uid`, any uid may connect (0666) and
/// register, so that the workers of an app server that drops privileges after binding (uWSGI
/// `uid`/`gid`, gunicorn `--user`) register too; the proof a registration needs is a listener on
/// the balanced address (or the app's shared socket), which another uid cannot bind while the
/// app holds it. With `--allow-uid`, only those uids and root (0600 when that is only our own).
fn registry_options(args: &RunArgs) -> RegistryOptions {
    let mut options = RegistryOptions::new(&args.socket);
    if args.allow_uid.is_empty() {
        options.any_uid = true;
        options.socket_mode = 0o666;
    } else {
        options.allowed_uids = args.allow_uid.clone();
        options.socket_mode = balancer_user::service::socket_mode(&args.allow_uid);
    }
    options
}

/// Says what the app's settings ask that reuselb cannot balance, before anything starts; false if
/// that rules out the shim.
fn preflight(command: &[std::ffi::OsString]) -> bool {
    let findings = crate::preflight::inspect(command);
    for finding in &findings {
        if finding.disables_shim() {
            log::error!("{}", finding.message());
        } else {
            log::warn!("{}", finding.message());
        }
    }
    !findings.iter().any(crate::preflight::Finding::disables_shim)
}

/// A balanced group for each address of `--listen`, its program loaded.
fn groups(args: &RunArgs) -> Result<Vec<(std::net::SocketAddr, Group)>> {
    let mut services = Vec::new();
    for addr in &args.listen {
        let blocked_after = (args.blocked_after_ms != 0)
            .then(|| std::time::Duration::from_millis(args.blocked_after_ms.into()));
        let group = Group::new(GroupOptions {
            policy: args.policy,
            blocked_after,
            pack_depth: args.pack_depth,
            ..Default::default()
        })
        .with_context(|| format!("creating the balanced group of {addr}"))?;
        log::info!(
            "{addr}: {} program loaded, policy {}",
            group.program().name(),
            balancer_user::service::policy_label(args.policy, args.pack_depth)
        );
        services.push((*addr, group));
    }
    Ok(services)
}

/// The app's command: `args.command` with the shim preloaded (if `with_shim`) and told where to
/// register, in a process group of its own, with the descriptor limit we started with.
fn app_command(
    args: &RunArgs,
    shim: &std::path::Path,
    with_shim: bool,
    listen: &str,
    limit: balancer_user::nofile::StartingLimit,
) -> Command {
    let preload = match std::env::var_os("LD_PRELOAD") {
        Some(existing) if !existing.is_empty() => {
            let mut p = existing;
            p.push(":");
            p.push(shim);
            p
        }
        _ => shim.as_os_str().to_owned(),
    };
    let mut command = Command::new(&args.command[0]);
    if with_shim {
        command.env("LD_PRELOAD", preload);
    }
    command
        .args(&args.command[1..])
        .env(protocol::ENV_LISTEN, listen)
        .env(protocol::ENV_SOCKET, &args.socket)
        // Its own process group: a terminal's Ctrl-C reaches it once, through us.
        .process_group(0);
    // SAFETY: the closure only makes one setrlimit system call (no allocation, no lock), which
    // is async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(move || limit.restore());
    }
    command
}

/// Runs the command under the controller; returns its exit status (128 + signal if killed).
pub fn run(args: RunArgs) -> Result<i32> {
    // About three descriptors per registered worker: a soft limit of 1024 is too few. The app
    // gets the limit we started with (see `nofile`).
    let starting_limit = balancer_user::nofile::raise_soft_limit();
    let options = registry_options(&args);
    let shim = find_shim(args.shim.clone())?;
    let with_shim = preflight(&args.command);
    let registry =
        Registry::start(options, groups(&args)?).context("starting the registration socket")?;
    install_forwarding()?;

    let listen = args.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    let mut command = app_command(&args, &shim, with_shim, &listen, starting_limit);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            registry.stop();
            return Err(e).with_context(|| format!("starting {:?}", args.command[0]));
        }
    };
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    if with_shim {
        log::info!(
            "started {:?} (pid {}) with the shim preloaded, balancing {listen}",
            args.command[0],
            child.id()
        );
    } else {
        log::error!(
            "started {:?} (pid {}) WITHOUT the shim: {listen} is not balanced (see above)",
            args.command[0],
            child.id()
        );
    }

    let registry = Arc::new(registry);
    let name = args.name.clone().unwrap_or_else(|| {
        std::path::Path::new(&args.command[0])
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".into())
    });
    let started = Instant::now();
    let report = {
        let weak = Arc::downgrade(&registry);
        move || {
            let services = weak.upgrade().map(|r| vec![report::collect(&name, &r)]);
            Report::new(Mode::Run, started, services.unwrap_or_default())
        }
    };
    let metrics = (!args.no_metrics)
        .then(|| start_metrics(args.metrics_addr, &registry, report.clone()))
        .flatten();
    let stop = Arc::new(AtomicBool::new(false));
    let view = args.view;
    let status = (view || args.status_every > 0).then(|| {
        let stop = stop.clone();
        let every = Duration::from_secs(if view { 1 } else { args.status_every });
        std::thread::spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() >= next {
                    if view {
                        print_view(&report());
                    } else {
                        print_status(&report());
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
    _server: http::Server,
    _runtime: tokio::runtime::Runtime,
}

/// Serves /metrics, /healthz and /status for `registry`, from `report`. `None` (with a warning)
/// if that fails: the app runs anyway.
fn start_metrics(
    addr: SocketAddr,
    registry: &Arc<Registry>,
    report: impl Fn() -> Report + Send + Sync + 'static,
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
    let metrics = Arc::new(Metrics::new());
    metrics.set_source(report);
    let weak = Arc::downgrade(registry);
    let health = move || match weak.upgrade() {
        Some(r) if r.is_running() => Ok(()),
        _ => Err("the registration thread stopped".to_owned()),
    };
    match runtime.block_on(http::serve(addr, metrics, health)) {
        Ok(server) => {
            log::info!(
                "metrics on http://{}/metrics, status on /status (reuselb status --addr {})",
                server.local_addr(),
                server.local_addr()
            );
            Some(MetricsRunning { _server: server, _runtime: runtime })
        }
        Err(e) => {
            log::warn!(
                "no metrics: cannot serve on {addr}: {e} (choose another with --metrics-addr, or \
                 --no-metrics)"
            );
            None
        }
    }
}

/// The live per-worker tables of every group. On a terminal each frame replaces the last, so
/// the last frame with workers stays on screen after the app exits.
fn print_view(report: &Report) {
    let mut out = String::new();
    if std::io::stdout().is_terminal() {
        out.push_str("\x1b[H\x1b[2J");
    }
    let width = view::stdout_width();
    for s in &report.services {
        for g in &s.groups {
            out.push_str(&view::render_group_width(&format!("{} {}", s.name, g.addr), g, width));
            out.push('\n');
        }
    }
    print!("{out}");
}

/// One log line per group: `slot:pid inflight/selected` of each worker.
fn print_status(report: &Report) {
    for g in report.services.iter().flat_map(|s| &s.groups) {
        let total: u64 = g.workers.iter().map(|w| w.inflight).sum();
        let mut line = format!(
            "{} {}: {} workers, {} in flight |",
            g.addr,
            g.policy.name(),
            g.workers.len(),
            total
        );
        for w in &g.workers {
            line.push_str(&format!(" {}:{} {}/{}", w.slot, w.pid, w.inflight, w.selected));
        }
        log::info!("{line}  (slot:pid inflight/selected)");
    }
}
