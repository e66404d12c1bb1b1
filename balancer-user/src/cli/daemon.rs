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
//!
//! This file holds the signal loop and the metrics server's address; the services themselves are
//! [`balancer_user::service`]'s.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{anyhow, Context, Result};
use balancer_user::{
    config::Config,
    http::{self, DEFAULT_METRICS_ADDR},
    metrics::Metrics,
    report::Mode,
    service::Services,
};
use tokio::signal::unix::{signal, SignalKind};

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

struct Daemon {
    config_path: PathBuf,
    config: Config,
    services: Arc<Services>,
    metrics: Arc<Metrics>,
    server: http::Server,
    /// `--metrics-addr`, which wins over the config's.
    metrics_flag: Option<SocketAddr>,
}

pub fn run(args: DaemonArgs) -> Result<i32> {
    // About three descriptors per registered worker: a soft limit of 1024 is too few.
    crate::cli::nofile::raise_soft_limit();
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

    let services = Arc::new(Services::start(&config, Mode::Daemon)?);

    let metrics = Arc::new(Metrics::new());
    let source = services.clone();
    metrics.set_source(move || source.report());
    let metrics_addr = metrics_addr(args.metrics_addr, &config);
    let server = serve_metrics(metrics_addr, &metrics, &services).await?;

    let mut daemon = Daemon {
        config_path: args.config,
        config,
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
    services: &Arc<Services>,
) -> Result<http::Server> {
    let for_health = services.clone();
    let server = http::serve(addr, metrics.clone(), move || for_health.health())
        .await
        .with_context(|| {
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
            "reload: added {:?}, removed {:?}, updated {:?}, recreated {:?}{}{}",
            diff.added,
            diff.removed,
            diff.updated,
            diff.recreated,
            if diff.globals_changed { ", global settings changed" } else { "" },
            if diff.pods_changed { ", pods section changed" } else { "" }
        );
        let applied = self.services.apply(&self.config, &new);
        if self.config.pin_path != new.pin_path {
            log::warn!(
                "reload: pin_path changed to {}: it takes effect when the daemon restarts (groups \
                 stay pinned under {})",
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
        let mut running = new;
        running.services.retain(|s| !applied.failed.contains(&s.name));
        if applied.failed.iter().any(|n| n == balancer_user::service::PODS) {
            running.pods = None;
        }
        self.config = running;
        self.metrics.record_reload(applied.failed.is_empty());
        log::info!("reload done: {} services running", self.services.len());
    }

    fn stop(self, signal_name: &str) {
        let n = self.services.stop_keeping_slots();
        drop(self.server);
        log::info!(
            "{signal_name}: stopped; {n} services keep serving, balanced by their attached \
             programs{}",
            match self.services.pin_path() {
                Some(p) => format!(
                    " (state pinned under {}: a daemon started again adopts it)",
                    p.display()
                ),
                None => String::new(),
            }
        );
    }
}
