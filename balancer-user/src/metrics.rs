//! Prometheus metrics of the balanced services, and the small HTTP server for `/metrics`,
//! `/healthz` and `/status` (the JSON [`crate::status::Report`] that `reuselb status` and
//! `reuselb top` read).
//!
//! The figures come from a [`Snapshot`]: plain data that the daemon (or `reuselb run`) fills from
//! its groups ([`crate::Group::slots`], [`crate::Group::stats`]) and its registration counts.
//! [`Metrics`] either keeps the last snapshot pushed with [`Metrics::update`], or asks a source set
//! with [`Metrics::set_source`] at every scrape. Either way the worker series are rebuilt from the
//! snapshot on each scrape, so a worker that exits leaves no stale series behind.
//!
//! Metrics (all `reuselb_`):
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `worker_inflight` | gauge | service, slot, pid |
//! | `worker_weight` | gauge | service, slot, pid |
//! | `worker_selected_total` | counter | service, slot, pid |
//! | `worker_accepted_total` | counter | service, slot, pid |
//! | `worker_completed_total` | counter | service, slot, pid |
//! | `workers` | gauge | service |
//! | `service_info` (=1) | gauge | service, policy, program |
//! | `fallbacks_total` | counter | service, reason (`no_config`, `no_active_slot`, `bad_config`, `select_failed`) |
//! | `migrations_total` | counter | service, outcome (`migrated`, `kernel_hash`) |
//! | `registrations_total` | counter | service (accepted registrations) |
//! | `registrations_rejected_total` | counter | service, reason (a `protocol::Status` name) |
//! | `config_reloads_total` | counter | outcome (`success`, `failure`) |
//! | `build_info` (=1) | gauge | version |
//!
//! `worker_selected_total` counts the selections of the slot since its group was created (the
//! program's per-slot counter survives slot reuse); `worker_accepted_total` and
//! `worker_completed_total` count since the worker took the slot.
use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use balancer_common::{protocol::Status, Event, Policy};
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{group::SlotView, loader::Program, Stats};

/// Content type of `/metrics`: the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one service looks like right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSnapshot {
    pub service: String,
    pub policy: Policy,
    pub program: Program,
    /// The occupied slots ([`crate::Group::slots`]).
    pub slots: Vec<SlotView>,
    /// Fallbacks and migrations ([`crate::Group::stats`]).
    pub stats: Stats,
    /// Registrations answered with each [`Status`], indexed by its id: `Status::Ok` counts the
    /// accepted ones, every other entry the rejected ones with that reason.
    pub registrations: [u64; Status::ALL.len()],
}

impl ServiceSnapshot {
    /// A service with no worker and nothing counted yet.
    pub fn new(service: impl Into<String>, policy: Policy, program: Program) -> Self {
        Self {
            service: service.into(),
            policy,
            program,
            slots: Vec::new(),
            stats: Stats::default(),
            registrations: [0; Status::ALL.len()],
        }
    }

    /// Counts one registration answered with `status`.
    pub fn count_registration(&mut self, status: Status) {
        self.registrations[status as usize] += 1;
    }
}

/// Every service, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: Vec<ServiceSnapshot>,
}

type Source = Box<dyn Fn() -> Snapshot + Send + Sync>;
type StatusSource = Box<dyn Fn() -> crate::status::Report + Send + Sync>;

/// The latest snapshot, or where to get one.
#[derive(Default)]
struct Shared {
    latest: Mutex<Snapshot>,
    source: Mutex<Option<Arc<Source>>>,
    status: Mutex<Option<Arc<StatusSource>>>,
}

impl Shared {
    fn current(&self) -> Snapshot {
        let source = self.source.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match source {
            Some(source) => source(),
            None => self.latest.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}

/// The registry with reuselb's metrics. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    shared: Arc<Shared>,
    reloads: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let shared = Arc::new(Shared::default());
        let build_info =
            gauge_vec("reuselb_build_info", "reuselb build information; always 1.", &["version"]);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let reloads = counter_vec(
            "reuselb_config_reloads_total",
            "Configuration reloads, by outcome.",
            &["outcome"],
        );
        for outcome in ["success", "failure"] {
            reloads.with_label_values(&[outcome]);
        }
        let collector = SnapshotCollector::new(shared.clone());
        registry.register(Box::new(build_info)).expect("registered once");
        registry.register(Box::new(reloads.clone())).expect("registered once");
        registry.register(Box::new(collector)).expect("registered once");
        Self { registry, shared, reloads }
    }

    /// The registry, to register more metrics in it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Replaces the snapshot that scrapes read (when no source is set).
    pub fn update(&self, snapshot: Snapshot) {
        *self.shared.latest.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// Reads a fresh snapshot from `source` at every scrape instead (it runs on a blocking
    /// thread, so it may take locks).
    pub fn set_source(&self, source: impl Fn() -> Snapshot + Send + Sync + 'static) {
        *self.shared.source.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Arc::new(Box::new(source)));
    }

    /// Serves `GET /status`: `source`'s report as JSON, read at each request (on a blocking
    /// thread). Without it, `/status` answers 404.
    pub fn set_status_source(
        &self,
        source: impl Fn() -> crate::status::Report + Send + Sync + 'static,
    ) {
        *self.shared.status.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Arc::new(Box::new(source)));
    }

    /// The `/status` report as JSON, if a status source is set.
    pub fn status_json(&self) -> Option<String> {
        let source = self.shared.status.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
        match serde_json::to_string_pretty(&source()) {
            Ok(text) => Some(text + "\n"),
            Err(err) => {
                log::warn!("encoding the status failed: {err}");
                None
            }
        }
    }

    /// Counts a configuration reload (SIGHUP).
    pub fn record_reload(&self, success: bool) {
        self.reloads.with_label_values(&[if success { "success" } else { "failure" }]).inc();
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode_text(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&families, &mut out) {
            log::warn!("encoding metrics failed: {err}");
        }
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Builds the per-service series from a snapshot at each scrape.
struct SnapshotCollector {
    shared: Arc<Shared>,
    /// Held while the vectors are reset, refilled and read, so concurrent scrapes do not mix.
    busy: Mutex<()>,
    inflight: IntGaugeVec,
    weight: IntGaugeVec,
    selected: IntCounterVec,
    accepted: IntCounterVec,
    completed: IntCounterVec,
    workers: IntGaugeVec,
    info: IntGaugeVec,
    fallbacks: IntCounterVec,
    migrations: IntCounterVec,
    registrations: IntCounterVec,
    rejected: IntCounterVec,
}

const WORKER: &[&str] = &["service", "slot", "pid"];

impl SnapshotCollector {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            busy: Mutex::new(()),
            inflight: gauge_vec("reuselb_worker_inflight", "Connections assigned to the worker and not yet completed.", WORKER),
            weight: gauge_vec("reuselb_worker_weight", "Relative capacity of the worker.", WORKER),
            selected: counter_vec(
                "reuselb_worker_selected_total",
                "Connections the program sent to the slot since its group was created.",
                WORKER,
            ),
            accepted: counter_vec("reuselb_worker_accepted_total", "Connections the worker accepted since it took the slot.", WORKER),
            completed: counter_vec("reuselb_worker_completed_total", "Connections the worker closed since it took the slot.", WORKER),
            workers: gauge_vec("reuselb_workers", "Workers registered with the service.", &["service"]),
            info: gauge_vec("reuselb_service_info", "The service's selection policy and program; always 1.", &["service", "policy", "program"]),
            fallbacks: counter_vec(
                "reuselb_fallbacks_total",
                "Connections left to the kernel's reuseport hash, by reason.",
                &["service", "reason"],
            ),
            migrations: counter_vec(
                "reuselb_migrations_total",
                "Connections of a closing listener placed on another worker (migrated) or left to the kernel's hash (kernel_hash).",
                &["service", "outcome"],
            ),
            registrations: counter_vec("reuselb_registrations_total", "Worker registrations accepted.", &["service"]),
            rejected: counter_vec("reuselb_registrations_rejected_total", "Worker registrations refused, by reason.", &["service", "reason"]),
        }
    }

    fn gauges(&self) -> [&IntGaugeVec; 4] {
        [&self.inflight, &self.weight, &self.workers, &self.info]
    }

    fn counters(&self) -> [&IntCounterVec; 7] {
        [
            &self.selected,
            &self.accepted,
            &self.completed,
            &self.fallbacks,
            &self.migrations,
            &self.registrations,
            &self.rejected,
        ]
    }

    fn fill(&self, snapshot: &Snapshot) {
        for s in &snapshot.services {
            let service = s.service.as_str();
            for w in &s.slots {
                let (slot, pid) = (w.slot.to_string(), w.pid.to_string());
                let labels = [service, slot.as_str(), pid.as_str()];
                self.inflight.with_label_values(&labels).set(clamp(w.inflight));
                self.weight.with_label_values(&labels).set(i64::from(w.weight.max(1)));
                self.selected.with_label_values(&labels).inc_by(w.selected_total);
                self.accepted.with_label_values(&labels).inc_by(w.accepted);
                self.completed.with_label_values(&labels).inc_by(w.completed);
            }
            self.workers.with_label_values(&[service]).set(s.slots.len() as i64);
            self.info.with_label_values(&[service, s.policy.name(), s.program.name()]).set(1);
            for event in Event::ALL {
                let n = s.stats.get(event);
                match event {
                    Event::MigrateSelected => {
                        self.migrations.with_label_values(&[service, "migrated"]).inc_by(n)
                    }
                    Event::MigrateFallback => {
                        self.migrations.with_label_values(&[service, "kernel_hash"]).inc_by(n)
                    }
                    e => self.fallbacks.with_label_values(&[service, e.name()]).inc_by(n),
                }
            }
            for status in Status::ALL {
                let n = s.registrations[status as usize];
                match status {
                    Status::Ok => self.registrations.with_label_values(&[service]).inc_by(n),
                    other => self.rejected.with_label_values(&[service, other.name()]).inc_by(n),
                }
            }
        }
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = Vec::new();
        for g in self.gauges() {
            d.extend(g.desc());
        }
        for c in self.counters() {
            d.extend(c.desc());
        }
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self.shared.current();
        let _busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        for g in self.gauges() {
            g.reset();
        }
        for c in self.counters() {
            c.reset();
        }
        self.fill(&snapshot);
        let mut out = Vec::new();
        for g in self.gauges() {
            out.extend(g.collect());
        }
        for c in self.counters() {
            out.extend(c.collect());
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Says whether the process is healthy: `Err(reason)` makes `/healthz` answer 503 with it.
pub trait Health: Send + Sync + 'static {
    fn check(&self) -> Result<(), String>;
}

impl<F: Fn() -> Result<(), String> + Send + Sync + 'static> Health for F {
    fn check(&self) -> Result<(), String> {
        self()
    }
}

/// The running HTTP server. Dropping it (or [`MetricsServer::shutdown`]) stops it.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (the actual port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(self) {}
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves, on the current tokio runtime:
/// `GET /metrics` (also HEAD): [`Metrics::encode_text`] as [`CONTENT_TYPE`];
/// `GET /healthz`: 200 `ok`, or 503 with the reason [`Health::check`] gives;
/// `GET /status`: [`Metrics::status_json`] as `application/json` (404 without a status source);
/// 404 for other paths, 405 for other methods, 400 for what is not an HTTP request,
/// 431 for a request head over [`MAX_REQUEST`] bytes. One request per connection.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: impl Health,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let health: Arc<dyn Health> = Arc::new(health);
    let task = tokio::spawn(accept_loop(listener, metrics, health));
    Ok(MetricsServer { local_addr, task })
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<dyn Health>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and the like: wait a little rather than spin.
                log::warn!("metrics server: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, metrics, health)).await.is_err()
            {
                log::debug!("metrics server: a client timed out");
            }
        });
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", extra: "", body: body.into() }
    }
}

/// The request head, or what to answer instead.
async fn read_head(stream: &mut TcpStream) -> Result<Option<String>, Response> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Err(Response::text(
                "431 Request Header Fields Too Large",
                "request too large\n",
            ));
        }
        match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            // HTTP/1.0 clients may half-close after the request line: take what came.
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Ok(None),
        }
    }
    match String::from_utf8(buf) {
        Ok(s) => Ok(Some(s)),
        Err(_) => Err(Response::text("400 Bad Request", "bad request\n")),
    }
}

/// Index just past the blank line that ends the head, if it is in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn handle(mut stream: TcpStream, metrics: Arc<Metrics>, health: Arc<dyn Health>) {
    let (response, head_only) = match read_head(&mut stream).await {
        Ok(None) => return,
        Err(response) => (response, false),
        Ok(Some(head)) => route(&head, metrics, health).await,
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        response.extra
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if !head_only {
        let _ = stream.write_all(response.body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// The answer to a request head, and whether it was a HEAD request.
async fn route(head: &str, metrics: Arc<Metrics>, health: Arc<dyn Health>) -> (Response, bool) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Response::text("400 Bad Request", "bad request\n"), false);
    };
    let valid_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !valid_method
        || !target.starts_with('/')
        || !(version == "HTTP/1.0" || version == "HTTP/1.1")
    {
        return (Response::text("400 Bad Request", "bad request\n"), false);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let head_only = method == "HEAD";
    if path != "/metrics" && path != "/healthz" && path != "/status" {
        return (
            Response::text("404 Not Found", "not found: try /metrics, /healthz or /status\n"),
            head_only,
        );
    }
    if method != "GET" && method != "HEAD" {
        let mut r = Response::text("405 Method Not Allowed", "method not allowed\n");
        r.extra = "Allow: GET, HEAD\r\n";
        return (r, false);
    }
    let response = if path == "/metrics" {
        match tokio::task::spawn_blocking(move || metrics.encode_text()).await {
            Ok(body) => Response { status: "200 OK", content_type: CONTENT_TYPE, extra: "", body },
            Err(_) => Response::text("500 Internal Server Error", "collecting metrics failed\n"),
        }
    } else if path == "/status" {
        match tokio::task::spawn_blocking(move || metrics.status_json()).await {
            Ok(Some(body)) => {
                Response { status: "200 OK", content_type: "application/json", extra: "", body }
            }
            Ok(None) => Response::text("404 Not Found", "no status here\n"),
            Err(_) => Response::text("500 Internal Server Error", "collecting the status failed\n"),
        }
    } else {
        match tokio::task::spawn_blocking(move || health.check()).await {
            Ok(Ok(())) => Response::text("200 OK", "ok\n"),
            Ok(Err(reason)) => Response::text("503 Service Unavailable", format!("{reason}\n")),
            Err(_) => Response::text("503 Service Unavailable", "health check failed\n"),
        }
    };
    (response, head_only)
}
