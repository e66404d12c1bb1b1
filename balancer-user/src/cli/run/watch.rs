//! What `reuselb run` shows while its app server runs: a status line per group every
//! `--status-every` seconds, or with `--view` a live per-worker table every second ([`Shown`]),
//! and `/metrics`, `/healthz` and `/status` over HTTP ([`serve_metrics`]). Both read the
//! services' report; neither outlives the run (each stops when dropped).
use std::{
    io::IsTerminal,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use balancer_user::{http, metrics::Metrics, report::Report, service::Services, view};

use super::RunArgs;

/// The thread of the status lines or the view; stopped and joined when dropped.
pub struct Shown {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Shown {
    /// Starts showing `services` as `args` ask (`--view`, `--status-every`); nothing when both
    /// say none.
    pub fn start(args: &RunArgs, services: &Arc<Services>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let view = args.view;
        let thread = (view || args.status_every > 0).then(|| {
            let stop = stop.clone();
            let services = services.clone();
            let every = Duration::from_secs(if view { 1 } else { args.status_every });
            std::thread::spawn(move || {
                let mut next = Instant::now() + every;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if Instant::now() >= next {
                        if view {
                            print_view(&services.report());
                        } else {
                            print_status(&services.report());
                        }
                        next = Instant::now() + every;
                    }
                }
            })
        });
        Self { stop, thread }
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The metrics server and the runtime it runs on; both stop when dropped (the server first: its
/// task is aborted, then the runtime's thread ends).
pub struct MetricsRunning {
    _server: http::Server,
    _runtime: tokio::runtime::Runtime,
}

/// Serves /metrics, /healthz and /status for `services`. `None` (with a warning) if that fails:
/// the app runs anyway.
pub fn serve_metrics(addr: SocketAddr, services: &Arc<Services>) -> Option<MetricsRunning> {
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
    let source = services.clone();
    metrics.set_source(move || source.report());
    let for_health = services.clone();
    match runtime.block_on(http::serve(addr, metrics, move || for_health.health())) {
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
