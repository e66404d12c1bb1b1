//! Prometheus metrics of the balanced services, made from the [`Report`] of [`crate::report`].
//!
//! [`Metrics`] either keeps the last report pushed with [`Metrics::update`], or asks a source set
//! with [`Metrics::set_source`] at every scrape. Either way the series are rebuilt from the report
//! on each scrape, so a worker that exits leaves no stale series behind. The HTTP server
//! ([`crate::http`]) serves [`Metrics::encode_text`] on `/metrics` and [`Metrics::report`] on
//! `/status`.
//!
//! Metrics (all `reuselb_`):
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `worker_inflight` | gauge | service, slot, pid |
//! | `worker_weight` | gauge | service, slot, pid |
//! | `worker_selected_total` | counter | service, slot, pid |
//! | `worker_accepted_total` | counter | service, slot, pid |
//! | `worker_completed_total` | counter | service, slot, pid (requests answered) |
//! | `worker_response_seconds_total` | counter | service, slot, pid (their time from accept to answer, summed) |
//! | `worker_busy` | gauge | service, slot, pid (1 while a request is accepted and not answered) |
//! | `worker_last_answer_timestamp_seconds` | gauge | service, slot, pid (Unix time of the last answer; absent before the first) |
//! | `worker_resident_memory_bytes` | gauge | service, slot, pid (VmRSS; absent if unreadable) |
//! | `worker_pace_seconds` | gauge | service, slot, pid (speed-aware's recent response time, decayed to now, at most 2^24 µs; absent before the first answer) |
//! | `worker_slowness` | gauge | service, slot, pid (how many times slower than its group's mean the program takes the worker to be: 1 below 3 x, or with no mean yet; from 3 the ratio, at most 64) |
//! | `workers` | gauge | service |
//! | `service_info` (=1) | gauge | service, policy, program |
//! | `fallbacks_total` | counter | service, reason (`no_config`, `no_active_slot`, `bad_config`, `select_failed`) |
//! | `migrations_total` | counter | service, outcome (`migrated`, `kernel_hash`) |
//! | `fast_path_total` | counter | service (least-loaded and work-left picks of an idle slot, no scan) |
//! | `blocked_passed_over_total` | counter | service (connections the program sent past a blocked worker to one that is not; placed by the program, not fallbacks) |
//! | `registrations_total` | counter | service (accepted registrations) |
//! | `registrations_rejected_total` | counter | service, reason (a `protocol::Status` name) |
//! | `registry_events_total` | counter | service, event (`departure`, `adjustment`, `pending_closed`, `accept_backoff`, `reading_stop`, `eviction`, `weight_capped`, `parked_expired`, `reattach_failure`) |
//! | `registry_closing_backlog` | gauge | service (peer descriptors not closed yet) |
//! | `config_reloads_total` | counter | outcome (`success`, `failure`) |
//! | `build_info` (=1) | gauge | version |
//! | `pod_worker_inflight` | gauge | netns, pod, addr, slot |
//! | `pod_worker_selected_total` | counter | netns, pod, addr, slot |
//! | `pod_worker_accepted_total` | counter | netns, pod, addr, slot |
//! | `pod_worker_completed_total` | counter | netns, pod, addr, slot |
//! | `pod_workers` | gauge | netns, pod, addr |
//! | `pod_group_info` (=1) | gauge | netns, pod, addr, template, policy, program |
//!
//! Groups made on registration (the `pods` section) have series of their own, per group:
//! `netns` is the cookie of the pod's network namespace, `pod` the label its workers sent
//! (`REUSELB_POD`, empty if none), `addr` the balanced address. Their workers' pids are not
//! visible to the daemon (other pid namespaces), so a slot names a worker. The series of a removed
//! group are gone at the next scrape: at most `max_groups` x `max_workers` series per family. The
//! `pods` section's registrations, rejections, registry events and fallbacks are summed under
//! `service="pods"` in the families above.
//!
//! A worker is one process: a worker that serves several addresses of a service is one series,
//! with its figures summed over the service's groups (and the slot it has in the first group);
//! fallbacks and migrations are summed over the groups too.
//!
//! `worker_selected_total` counts the selections of the slot since its group was created (the
//! program's per-slot counter survives slot reuse); `worker_accepted_total` and
//! `worker_completed_total` count since the worker took the slot, as does
//! `worker_response_seconds_total`: `rate(reuselb_worker_response_seconds_total[5m]) /
//! rate(reuselb_worker_completed_total[5m])` is a worker's average response time (a sum and a
//! count, as a summary without quantiles has). The answer's time is read from the monotonic clock
//! and shown as Unix time, so it can move by the clocks' drift.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use balancer_common::{protocol::Status, Event};
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::report::{Report, WorkerReport};

/// Content type of `/metrics`: the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Source = Box<dyn Fn() -> Report + Send + Sync>;

/// The latest report, or where to get one.
#[derive(Default)]
struct Shared {
    latest: Mutex<Option<Report>>,
    source: Mutex<Option<Arc<Source>>>,
}

impl Shared {
    fn current(&self) -> Option<Report> {
        let source = self.source.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match source {
            Some(source) => Some(source()),
            None => self.latest.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}

/// The registry with reuselb's metrics. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    shared: Arc<Shared>,
    reloads: IntCounterVec,
    /// The name of every metric family registered above, series or not.
    names: Vec<String>,
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
        let collector = ReportCollector::new(shared.clone());
        let names = [build_info.desc(), reloads.desc(), collector.desc()]
            .iter()
            .flatten()
            .map(|d| d.fq_name.clone())
            .collect();
        registry.register(Box::new(build_info)).expect("registered once");
        registry.register(Box::new(reloads.clone())).expect("registered once");
        registry.register(Box::new(collector)).expect("registered once");
        Self { registry, shared, reloads, names }
    }

    /// The name of every metric family reuselb registers, whether or not it has series now (what
    /// a dashboard or an alert rule may name).
    pub fn metric_names(&self) -> &[String] {
        &self.names
    }

    /// The registry, to register more metrics in it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Replaces the report that scrapes read (when no source is set).
    pub fn update(&self, report: Report) {
        *self.shared.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
    }

    /// Reads a fresh report from `source` at every scrape instead (the HTTP server calls it on a
    /// blocking thread, so it may take locks).
    pub fn set_source(&self, source: impl Fn() -> Report + Send + Sync + 'static) {
        *self.shared.source.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Arc::new(Box::new(source)));
    }

    /// The current report: the source's, else the last one pushed; `None` before either.
    pub fn report(&self) -> Option<Report> {
        self.shared.current()
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

/// Builds the per-service series from the report at each scrape.
struct ReportCollector {
    shared: Arc<Shared>,
    /// Held while the vectors are reset, refilled and read, so concurrent scrapes do not mix.
    busy: Mutex<()>,
    inflight: IntGaugeVec,
    weight: IntGaugeVec,
    selected: IntCounterVec,
    accepted: IntCounterVec,
    completed: IntCounterVec,
    response: CounterVec,
    busy_now: IntGaugeVec,
    last_answer: GaugeVec,
    rss: IntGaugeVec,
    pace: GaugeVec,
    slowness: IntGaugeVec,
    workers: IntGaugeVec,
    info: IntGaugeVec,
    fallbacks: IntCounterVec,
    migrations: IntCounterVec,
    fast_path: IntCounterVec,
    blocked_passed_over: IntCounterVec,
    registrations: IntCounterVec,
    rejected: IntCounterVec,
    registry_events: IntCounterVec,
    closing_backlog: IntGaugeVec,
    pod_inflight: IntGaugeVec,
    pod_selected: IntCounterVec,
    pod_accepted: IntCounterVec,
    pod_completed: IntCounterVec,
    pod_workers: IntGaugeVec,
    pod_info: IntGaugeVec,
}

const WORKER: &[&str] = &["service", "slot", "pid"];
const POD_WORKER: &[&str] = &["netns", "pod", "addr", "slot"];
const POD_GROUP: &[&str] = &["netns", "pod", "addr"];

impl ReportCollector {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            busy: Mutex::new(()),
            inflight: gauge_vec("reuselb_worker_inflight", "Requests in flight on the worker: queued, or accepted and not yet answered.", WORKER),
            weight: gauge_vec("reuselb_worker_weight", "Relative capacity of the worker.", WORKER),
            selected: counter_vec(
                "reuselb_worker_selected_total",
                "Connections the program sent to the slot since its group was created.",
                WORKER,
            ),
            accepted: counter_vec("reuselb_worker_accepted_total", "Connections the worker accepted since it took the slot.", WORKER),
            completed: counter_vec("reuselb_worker_completed_total", "Requests the worker answered since it took the slot.", WORKER),
            response: CounterVec::new(
                Opts::new("reuselb_worker_response_seconds_total", "Time from accept to answer of the requests the worker answered, summed."),
                WORKER,
            )
            .expect("valid metric definition"),
            busy_now: gauge_vec("reuselb_worker_busy", "1 while the worker has a request accepted and not answered yet, else 0.", WORKER),
            last_answer: GaugeVec::new(
                Opts::new("reuselb_worker_last_answer_timestamp_seconds", "When the worker last answered a request, in seconds since the Unix epoch."),
                WORKER,
            )
            .expect("valid metric definition"),
            rss: gauge_vec("reuselb_worker_resident_memory_bytes", "Resident memory of the worker's process, in bytes.", WORKER),
            pace: GaugeVec::new(
                Opts::new("reuselb_worker_pace_seconds", "The worker's recent time from accept to answer as speed-aware weighs it: moved 1/8 of the way up to a longer answer and half the way down to a shorter one, decaying toward the group's mean while the worker answers nothing."),
                WORKER,
            )
            .expect("valid metric definition"),
            slowness: gauge_vec(
                "reuselb_worker_slowness",
                "How many times slower than its group's mean the program takes the worker to be: 1 below 3 x, from 3 the ratio, at most 64 (speed-aware passes over a slow worker while it is idle and weighs it by (in flight + 1) x slowness - 1; other policies ignore it).",
                WORKER,
            ),
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
            fast_path: counter_vec(
                "reuselb_fast_path_total",
                "Connections least-loaded or work-left gave to an idle worker from the idle bytes, without a scan.",
                &["service"],
            ),
            blocked_passed_over: counter_vec(
                "reuselb_blocked_passed_over_total",
                "Connections the program sent to a worker that is not blocked while another candidate was blocked (placed by the program, not left to the kernel's hash).",
                &["service"],
            ),
            registrations: counter_vec("reuselb_registrations_total", "Worker registrations accepted.", &["service"]),
            rejected: counter_vec("reuselb_registrations_rejected_total", "Worker registrations refused, by reason.", &["service", "reason"]),
            registry_events: counter_vec(
                "reuselb_registry_events_total",
                "What the service's registry did to stay balanced and to defend itself, by event.",
                &["service", "event"],
            ),
            closing_backlog: gauge_vec(
                "reuselb_registry_closing_backlog",
                "Peer descriptors handed to the registry's closing thread and not closed yet.",
                &["service"],
            ),
            pod_inflight: gauge_vec("reuselb_pod_worker_inflight", "Requests in flight on the pod's worker: queued, or accepted and not yet answered.", POD_WORKER),
            pod_selected: counter_vec("reuselb_pod_worker_selected_total", "Connections the program sent to the pod's slot since its group was created.", POD_WORKER),
            pod_accepted: counter_vec("reuselb_pod_worker_accepted_total", "Connections the pod's worker accepted since it took the slot.", POD_WORKER),
            pod_completed: counter_vec("reuselb_pod_worker_completed_total", "Connections the pod's worker closed since it took the slot.", POD_WORKER),
            pod_workers: gauge_vec("reuselb_pod_workers", "Workers registered in the pod's group.", POD_GROUP),
            pod_info: gauge_vec(
                "reuselb_pod_group_info",
                "A group made on registration: its template, policy and program; always 1.",
                &["netns", "pod", "addr", "template", "policy", "program"],
            ),
        }
    }

    fn gauges(&self) -> [&IntGaugeVec; 11] {
        [
            &self.inflight,
            &self.slowness,
            &self.busy_now,
            &self.rss,
            &self.weight,
            &self.workers,
            &self.info,
            &self.closing_backlog,
            &self.pod_inflight,
            &self.pod_workers,
            &self.pod_info,
        ]
    }

    fn counters(&self) -> [&IntCounterVec; 13] {
        [
            &self.pod_selected,
            &self.pod_accepted,
            &self.pod_completed,
            &self.selected,
            &self.accepted,
            &self.completed,
            &self.fallbacks,
            &self.migrations,
            &self.fast_path,
            &self.blocked_passed_over,
            &self.registrations,
            &self.rejected,
            &self.registry_events,
        ]
    }

    /// The series of one worker process, `w`, one of its groups' (a process in several groups
    /// adds up: counts and sums add, busy, the last answer, the pace and the slowness take the most).
    fn fill_worker(&self, labels: &[&str; 3], w: &WorkerReport, now_unix: f64) {
        self.inflight.with_label_values(labels).add(clamp(w.inflight));
        self.weight.with_label_values(labels).set(i64::from(w.weight.max(1)));
        self.selected.with_label_values(labels).inc_by(w.selected);
        self.accepted.with_label_values(labels).inc_by(w.accepted);
        self.completed.with_label_values(labels).inc_by(w.completed);
        self.response.with_label_values(labels).inc_by(w.response_us as f64 / 1e6);
        let busy = self.busy_now.with_label_values(labels);
        busy.set(busy.get().max(i64::from(w.busy)));
        if let Some(ms) = w.since_last_answer_ms {
            let at = self.last_answer.with_label_values(labels);
            at.set(at.get().max(now_unix - ms as f64 / 1000.0));
        }
        if let Some(rss) = w.rss_bytes {
            self.rss.with_label_values(labels).set(clamp(rss));
        }
        if let Some(us) = w.pace_us {
            let pace = self.pace.with_label_values(labels);
            pace.set(pace.get().max(us as f64 / 1e6));
        }
        if let Some(slow) = w.slowness {
            let slowness = self.slowness.with_label_values(labels);
            slowness.set(slowness.get().max(clamp(slow)));
        }
    }

    fn fill(&self, report: &Report) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for s in &report.services {
            let service = s.name.as_str();
            // One series per worker process: the slot it has in the first group that holds it.
            let mut slot_of: BTreeMap<u32, String> = BTreeMap::new();
            let listed = || s.groups.iter().filter(|g| g.pod.is_none()).flat_map(|g| &g.workers);
            for w in listed() {
                slot_of.entry(w.pid).or_insert_with(|| w.slot.to_string());
            }
            for g in &s.groups {
                let Some(pod) = &g.pod else { continue };
                let netns = pod.netns.to_string();
                let addr = g.addr.to_string();
                let group = [netns.as_str(), pod.label.as_str(), addr.as_str()];
                for w in &g.workers {
                    let slot = w.slot.to_string();
                    let labels = [group[0], group[1], group[2], slot.as_str()];
                    self.pod_inflight.with_label_values(&labels).set(clamp(w.inflight));
                    self.pod_selected.with_label_values(&labels).inc_by(w.selected);
                    self.pod_accepted.with_label_values(&labels).inc_by(w.accepted);
                    self.pod_completed.with_label_values(&labels).inc_by(w.completed);
                }
                self.pod_workers.with_label_values(&group).set(g.workers.len() as i64);
                self.pod_info
                    .with_label_values(&[
                        group[0],
                        group[1],
                        group[2],
                        pod.template.as_str(),
                        g.policy.name(),
                        g.program.name(),
                    ])
                    .set(1);
            }
            for w in listed() {
                let pid = w.pid.to_string();
                let labels = [service, slot_of[&w.pid].as_str(), pid.as_str()];
                self.fill_worker(&labels, w, now_unix);
            }
            self.workers.with_label_values(&[service]).set(slot_of.len() as i64);
            for g in &s.groups {
                if g.pod.is_none() {
                    self.info
                        .with_label_values(&[service, g.policy.name(), g.program.name()])
                        .set(1);
                }
                for (event, n) in g.events.iter() {
                    let (vec, label) = match event {
                        Event::MigrateSelected => (&self.migrations, "migrated"),
                        Event::MigrateFallback => (&self.migrations, "kernel_hash"),
                        Event::FastPath => {
                            self.fast_path.with_label_values(&[service]).inc_by(n);
                            continue;
                        }
                        Event::BlockedPassedOver => {
                            self.blocked_passed_over.with_label_values(&[service]).inc_by(n);
                            continue;
                        }
                        e => (&self.fallbacks, e.name()),
                    };
                    vec.with_label_values(&[service, label]).inc_by(n);
                }
            }
            for (status, n) in s.registrations.iter() {
                match status {
                    Status::Ok => self.registrations.with_label_values(&[service]).inc_by(n),
                    other => self.rejected.with_label_values(&[service, other.name()]).inc_by(n),
                }
            }
            for (event, n) in s.registry.events() {
                self.registry_events.with_label_values(&[service, event]).inc_by(n);
            }
            self.closing_backlog
                .with_label_values(&[service])
                .set(clamp(s.registry.closing_backlog));
        }
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for ReportCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = Vec::new();
        for g in self.gauges() {
            d.extend(g.desc());
        }
        for c in self.counters() {
            d.extend(c.desc());
        }
        d.extend(self.response.desc());
        d.extend(self.last_answer.desc());
        d.extend(self.pace.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let report = self.shared.current();
        let _busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        for g in self.gauges() {
            g.reset();
        }
        for c in self.counters() {
            c.reset();
        }
        self.response.reset();
        self.last_answer.reset();
        self.pace.reset();
        if let Some(report) = &report {
            self.fill(report);
        }
        let mut out = Vec::new();
        for g in self.gauges() {
            out.extend(g.collect());
        }
        for c in self.counters() {
            out.extend(c.collect());
        }
        out.extend(self.response.collect());
        out.extend(self.last_answer.collect());
        out.extend(self.pace.collect());
        out
    }
}
