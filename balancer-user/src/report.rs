//! The state of a running controller as one typed model: what `GET /status` answers (JSON), what
//! the Prometheus metrics are made from ([`crate::metrics`]), and what `reuselb status`,
//! `reuselb top` and `reuselb run --view` draw ([`crate::view`]).
//!
//! The shape follows what runs: a [`Report`] holds one [`ServiceReport`] per service, which holds
//! the registration counts of its registration socket and one [`GroupReport`] per balanced
//! address, which holds the group's policy, program, event counters and one [`WorkerReport`] per
//! occupied slot. Every reason is typed: events are counted per [`Event`], registrations per
//! protocol [`Status`] ([`Counts`]), the policy is a [`Policy`] and the program a [`Program`].
//!
//! Invariants: a [`Counts`] holds one counter for every reason of its type, zeros included (so a
//! reader sees every series from the start); in JSON it is an object from the reason's name to
//! its count, and names a reader does not know (from a newer controller) are ignored.
//!
//! This module reads the registry, the groups and each worker's resident memory (in /proc);
//! nothing here imports the metrics, the view or
//! the HTTP server (they import it).
use std::{fmt, marker::PhantomData, net::SocketAddr, time::Instant};

use balancer_common::{
    programs, protocol::Status, recent_now, slowness, Event, Policy, UnknownPolicy,
};
use serde::{
    de::{self, MapAccess, Visitor},
    ser::SerializeMap,
    Deserialize, Deserializer, Serialize, Serializer,
};

use crate::{group::SlotView, loader::Program, registry::Registry, Stats};

/// A closed set of named reasons that [`Counts`] counts: [`Event`] or [`Status`].
pub trait Reason: Copy + Eq + fmt::Debug + 'static {
    /// Every reason, in id order.
    const ALL: &'static [Self];
    /// The name in JSON and in metric labels.
    fn name(self) -> &'static str;
    /// Position in [`Reason::ALL`].
    fn index(self) -> usize;
}

impl Reason for Event {
    const ALL: &'static [Self] = &Event::ALL;
    fn name(self) -> &'static str {
        Event::name(self)
    }
    fn index(self) -> usize {
        self as usize
    }
}

impl Reason for Status {
    const ALL: &'static [Self] = &Status::ALL;
    fn name(self) -> &'static str {
        Status::name(self)
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// One counter per reason `R`.
#[derive(Clone, PartialEq, Eq)]
pub struct Counts<R: Reason> {
    counts: Vec<u64>,
    _reason: PhantomData<R>,
}

impl<R: Reason> Default for Counts<R> {
    fn default() -> Self {
        Self { counts: vec![0; R::ALL.len()], _reason: PhantomData }
    }
}

impl<R: Reason> Counts<R> {
    pub fn get(&self, reason: R) -> u64 {
        self.counts[reason.index()]
    }

    pub fn set(&mut self, reason: R, n: u64) {
        self.counts[reason.index()] = n;
    }

    pub fn add(&mut self, reason: R, n: u64) {
        self.counts[reason.index()] += n;
    }

    /// Every reason with its count, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        R::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// Adds every count of `other`.
    pub fn add_all(&mut self, other: &Self) {
        for (total, n) in self.counts.iter_mut().zip(&other.counts) {
            *total += n;
        }
    }
}

impl<R: Reason> fmt::Debug for Counts<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().map(|(r, n)| (r.name(), n))).finish()
    }
}

impl<R: Reason> Serialize for Counts<R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(R::ALL.len()))?;
        for (r, n) in self.iter() {
            map.serialize_entry(r.name(), &n)?;
        }
        map.end()
    }
}

impl<'de, R: Reason> Deserialize<'de> for Counts<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountsVisitor<R>(PhantomData<R>);
        impl<'de, R: Reason> Visitor<'de> for CountsVisitor<R> {
            type Value = Counts<R>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object from reason names to counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut counts = Counts::default();
                while let Some((name, n)) = map.next_entry::<String, u64>()? {
                    if let Some(&r) = R::ALL.iter().find(|r| r.name() == name) {
                        counts.set(r, n);
                    }
                }
                Ok(counts)
            }
        }
        deserializer.deserialize_map(CountsVisitor(PhantomData))
    }
}

impl From<&Stats> for Counts<Event> {
    fn from(stats: &Stats) -> Self {
        let mut counts = Counts::default();
        for event in Event::ALL {
            counts.set(event, stats.get(event));
        }
        counts
    }
}

/// What runs the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `reuselb daemon`: the services of a config file.
    Daemon,
    /// `reuselb run`: one app server under an in-process controller.
    Run,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Daemon => "daemon",
            Mode::Run => "run",
        }
    }
}

/// Everything a controller balances, at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// reuselb's version.
    pub version: String,
    pub mode: Mode,
    /// Seconds since the controller started.
    pub uptime_seconds: u64,
    pub services: Vec<ServiceReport>,
}

impl Report {
    /// A report of this build of reuselb, `mode`, started at `started`.
    pub fn new(mode: Mode, started: Instant, services: Vec<ServiceReport>) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            mode,
            uptime_seconds: started.elapsed().as_secs(),
            services,
        }
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceReport> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// One service: its registration socket's counts and one group per balanced address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub name: String,
    /// Registrations answered, per status: `ok` counts the accepted ones, every other status the
    /// refused ones with that reason.
    pub registrations: Counts<Status>,
    pub groups: Vec<GroupReport>,
    /// What the registry did to keep the service balanced and to defend itself.
    #[serde(default)]
    pub registry: RegistryReport,
}

/// The registry's own figures: counts since it started, and `closing_backlog`, a gauge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryReport {
    /// Workers whose slot was freed (exit, connection closed, eviction).
    pub departures: u64,
    /// Corrections of in-flight figures applied by reconciliation.
    pub adjustments: u64,
    /// Unregistered connections closed: over a cap, or not registered in time.
    pub pending_closed: u64,
    /// Times accepting paused because descriptors (or memory) ran out.
    pub accept_backoffs: u64,
    /// Times accepting and reading registrations stopped because stalled closes held the
    /// closer's budget of descriptors.
    pub reading_stops: u64,
    /// Workers evicted because their uid left the allowed uids.
    pub evictions: u64,
    /// Weights asked above the maximum, and lowered to it.
    pub weights_capped: u64,
    /// Parked last sockets closed after the park timeout.
    pub parked_expired: u64,
    /// Renewals of the program's attachment that failed.
    pub reattach_failures: u64,
    /// Peer descriptors handed to the closing thread and not closed yet.
    pub closing_backlog: u64,
}

impl RegistryReport {
    /// The counters (not the gauge), each with its metric label.
    pub fn events(&self) -> [(&'static str, u64); 9] {
        [
            ("departure", self.departures),
            ("adjustment", self.adjustments),
            ("pending_closed", self.pending_closed),
            ("accept_backoff", self.accept_backoffs),
            ("reading_stop", self.reading_stops),
            ("eviction", self.evictions),
            ("weight_capped", self.weights_capped),
            ("parked_expired", self.parked_expired),
            ("reattach_failure", self.reattach_failures),
        ]
    }

    fn read(c: &crate::registry::Counters) -> Self {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Self {
            departures: get(&c.departures),
            adjustments: get(&c.adjustments),
            pending_closed: get(&c.pending_closed),
            accept_backoffs: get(&c.accept_backoffs),
            reading_stops: get(&c.reading_stops),
            evictions: get(&c.evictions),
            weights_capped: get(&c.weights_capped),
            parked_expired: get(&c.parked_expired),
            reattach_failures: get(&c.reattach_failures),
            closing_backlog: get(&c.closing_backlog),
        }
    }
}

impl ServiceReport {
    /// Registrations refused, all reasons together.
    pub fn rejected(&self) -> u64 {
        self.registrations.iter().filter(|(s, _)| *s != Status::Ok).map(|(_, n)| n).sum()
    }

    /// Every worker of every group (a worker that serves two addresses appears twice).
    pub fn workers(&self) -> impl Iterator<Item = &WorkerReport> {
        self.groups.iter().flat_map(|g| &g.workers)
    }
}

/// One balanced address of a service and its group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub addr: SocketAddr,
    #[serde(with = "policy_name")]
    pub policy: Policy,
    /// The pack policy's depth as applied (0 in the config reads 1); `None` under any other
    /// policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_depth: Option<u32>,
    #[serde(with = "program_name")]
    pub program: Program,
    /// True if the group was adopted from pins left by an earlier controller.
    pub adopted: bool,
    /// For a group made on registration: whose it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodReport>,
    /// The group's mean time from accept to answer, as speed-aware and work-left read it (an
    /// average that moves 1/16 of the way to each answer), in microseconds; `None` before the
    /// first answer, and in a report of an older reuselb.
    #[serde(default)]
    pub mean_response_us: Option<u64>,
    pub workers: Vec<WorkerReport>,
    /// The program's events: fallbacks to the kernel's hash per reason, and migrations
    /// (`migrated`, `migrate_fallback`).
    pub events: Counts<Event>,
}

impl GroupReport {
    /// Connections left to the kernel's hash, all reasons together.
    pub fn fallbacks(&self) -> u64 {
        self.events.iter().filter(|(e, _)| e.is_fallback()).map(|(_, n)| n).sum()
    }
}

/// Whose a group made on registration is: what `/status` and the metrics labels show of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReport {
    /// Cookie of the pod's network namespace (SO_NETNS_COOKIE of its sockets).
    pub netns: u64,
    /// The template its settings come from.
    pub template: String,
    /// The label its workers sent (`REUSELB_POD`, e.g. `namespace/pod`), empty if none.
    pub label: String,
}

/// One worker (an occupied slot of a group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub slot: u32,
    pub pid: u32,
    pub weight: u32,
    pub epoch: u64,
    /// Requests in flight: queued, or accepted and not yet answered.
    pub inflight: u64,
    /// Selections of the slot since its group was created (survives slot reuse).
    pub selected: u64,
    /// Requests the worker accepted since it took the slot.
    pub accepted: u64,
    /// Requests the worker answered since it took the slot (at the first write of the answer;
    /// a connection closed unanswered counts at its close).
    pub completed: u64,
    /// Sum of those requests' times from accept to answer, in microseconds.
    #[serde(default)]
    pub response_us: u64,
    /// Average time from accept to answer (`response_us / completed`), in microseconds; `None`
    /// before the first answer.
    #[serde(default)]
    pub avg_response_us: Option<u64>,
    /// True while the worker has a request accepted and not answered yet (uwsgitop's busy).
    #[serde(default)]
    pub busy: bool,
    /// Milliseconds since the worker's last answer; `None` before the first.
    #[serde(default)]
    pub since_last_answer_ms: Option<u64>,
    /// Resident memory of the worker's process (VmRSS in /proc/PID/status), in bytes; `None` if
    /// the controller cannot read it (a process of another pid namespace, gone already).
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// Speed-aware's recent response time of the worker, decayed to the time of the report
    /// toward the group's mean as the program decays it, in microseconds, bounded as the program
    /// bounds it (at most 2^24); `None` before the worker's first answer, and in a report of an
    /// older reuselb.
    #[serde(default)]
    pub pace_us: Option<u64>,
    /// How many times slower than its group's mean the program takes the worker to be, now: 1
    /// below [`SLOW_FACTOR`](balancer_common::SLOW_FACTOR) x the mean (or with no mean yet),
    /// else the ratio, at most [`SLOWNESS_CAP`](balancer_common::SLOWNESS_CAP): a slow worker,
    /// which speed-aware passes over while it is idle and weighs by
    /// `(in flight + 1) x slowness - 1`. The program's own function of the figures above,
    /// whatever the group's policy (only speed-aware acts on it); `None` in a report of an older
    /// reuselb.
    #[serde(default)]
    pub slowness: Option<u64>,
}

impl WorkerReport {
    /// The report of the slot `s` of a group whose mean response time is `mean_us`, read at
    /// `now_us` (CLOCK_MONOTONIC microseconds, the clock of the shim's answer times), with the
    /// process's resident memory read now.
    pub fn read(s: &SlotView, mean_us: u64, now_us: u64) -> Self {
        Self {
            slot: s.slot,
            pid: s.pid,
            weight: s.weight,
            epoch: s.epoch,
            inflight: s.inflight,
            selected: s.selected_total,
            accepted: s.accepted,
            completed: s.completed,
            response_us: s.answer_us,
            avg_response_us: s.answer_us.checked_div(s.completed),
            busy: s.working > 0,
            since_last_answer_ms: (s.answered_at_us != 0)
                .then(|| now_us.saturating_sub(s.answered_at_us) / 1000),
            rss_bytes: rss_bytes(s.pid),
            pace_us: (s.answered_at_us != 0)
                .then(|| recent_now(s.recent_us, s.answered_at_us, mean_us, now_us)),
            slowness: Some(slowness(s.recent_us, s.answered_at_us, mean_us, now_us)),
        }
    }
}

/// VmRSS of process `pid`, in bytes (`None` for pid 0, a process that is gone or not visible,
/// or a kernel thread, which has no VmRSS line).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// The report of the service `name` that `registry` serves: its groups read now (a group whose
/// maps cannot be read is reported empty, with a warning).
pub fn collect(name: &str, registry: &Registry) -> ServiceReport {
    let counters = registry.counters();
    let now_us = crate::shared_loads::SharedLoads::now_us();
    let mut registrations = Counts::default();
    for status in Status::ALL {
        registrations.set(status, counters.replies(status));
    }
    let groups = registry
        .services()
        .iter()
        .map(|svc| {
            let group = svc.group();
            let slots = group.slots().unwrap_or_else(|e| {
                log::warn!("{name} {}: reading the slots: {e}", svc.addr);
                Vec::new()
            });
            let stats = group.stats().unwrap_or_else(|e| {
                log::warn!("{name} {}: reading the counters: {e}", svc.addr);
                Stats::default()
            });
            let mean_us = group.loads().group_mean_us();
            GroupReport {
                addr: svc.addr,
                policy: group.policy(),
                pack_depth: (group.policy() == Policy::Pack).then(|| group.pack_depth()),
                program: group.program(),
                adopted: group.adopted(),
                pod: svc.pod.as_ref().map(|p| PodReport {
                    netns: p.netns,
                    template: p.template.clone(),
                    label: p.label(),
                }),
                mean_response_us: (mean_us != 0).then_some(mean_us),
                workers: slots.iter().map(|s| WorkerReport::read(s, mean_us, now_us)).collect(),
                events: Counts::from(&stats),
            }
        })
        .collect();
    let registry = RegistryReport::read(counters);
    ServiceReport { name: name.to_owned(), registrations, groups, registry }
}

/// A [`Policy`] as its name (`least-loaded`, `p2c`, `round-robin`, `hash`).
mod policy_name {
    use super::*;

    pub fn serialize<S: Serializer>(policy: &Policy, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(policy.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Policy, D::Error> {
        let name = String::deserialize(d)?;
        // A daemon of an older build may run a policy this build retired: say which, and why.
        name.parse().map_err(|e| match e {
            UnknownPolicy::Unknown => de::Error::custom(format!("unknown policy `{name}`")),
            retired => de::Error::custom(format!(
                "the daemon runs `{name}` (an older reuselb; restart it on this build once its \
                 config names another policy): {retired}"
            )),
        })
    }
}

/// A [`Program`] as its name (`select`, `select_or_migrate`).
mod program_name {
    use super::*;

    pub fn serialize<S: Serializer>(program: &Program, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(program.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Program, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            programs::SELECT => Ok(Program::Select),
            programs::SELECT_OR_MIGRATE => Ok(Program::SelectOrMigrate),
            _ => Err(de::Error::custom(format!("unknown program `{name}`"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn group(addr: &str, workers: &[(u32, u32, u64)]) -> GroupReport {
        let mut events = Counts::default();
        events.set(Event::FallbackSelectFailed, 2);
        GroupReport {
            addr: addr.parse().unwrap(),
            policy: Policy::PowerOfTwo,
            pack_depth: None,
            program: Program::SelectOrMigrate,
            adopted: false,
            pod: None,
            mean_response_us: None,
            workers: workers
                .iter()
                .map(|&(slot, pid, selected)| WorkerReport {
                    slot,
                    pid,
                    weight: 1,
                    epoch: 1,
                    inflight: 1,
                    selected,
                    accepted: selected,
                    completed: selected - 1,
                    ..Default::default()
                })
                .collect(),
            events,
        }
    }

    #[test]
    fn json_round_trip() {
        let mut registrations = Counts::default();
        registrations.set(Status::Ok, 4);
        registrations.set(Status::NoFreeSlot, 3);
        let r = Report {
            version: "0.1.0".into(),
            mode: Mode::Daemon,
            uptime_seconds: 5,
            services: vec![ServiceReport {
                name: "web".into(),
                registrations,
                groups: vec![
                    group("127.0.0.1:8000", &[(0, 10, 5), (1, 11, 7)]),
                    group("[::1]:8000", &[(1, 10, 1)]),
                ],
                registry: RegistryReport {
                    departures: 2,
                    closing_backlog: 1,
                    ..Default::default()
                },
            }],
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        for part in [
            r#""mode":"daemon""#,
            r#""addr":"[::1]:8000""#,
            r#""policy":"p2c""#,
            r#""program":"select_or_migrate""#,
            r#""ok":4,"bad_message":0"#,
            r#""select_failed":2,"migrated":0"#,
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
        assert_eq!(r.services[0].rejected(), 3);
        assert_eq!(r.services[0].workers().count(), 3);
        assert_eq!(r.services[0].groups[0].fallbacks(), 2);
    }

    /// The uwsgitop figures of a slot: answered, the average response time from the sum, busy
    /// from the requests being worked on, the time since the last answer, and the RSS of the
    /// process (this test's own, which /proc shows).
    #[test]
    fn worker_figures_from_a_slot() {
        let slot = SlotView {
            slot: 2,
            pid: std::process::id(),
            weight: 1,
            epoch: 3,
            cookie: 9,
            inflight: 2,
            accepted: 12,
            completed: 10,
            answer_us: 250_000,
            working: 1,
            answered_at_us: 5_000_000,
            recent_us: 30_000,
            selected_total: 12,
        };
        let w = WorkerReport::read(&slot, 25_000, 5_750_000);
        assert_eq!((w.completed, w.response_us, w.avg_response_us), (10, 250_000, Some(25_000)));
        assert!(w.busy);
        assert_eq!(w.since_last_answer_ms, Some(750));
        let rss = w.rss_bytes.expect("this process's VmRSS");
        assert!(rss > 1 << 20, "{rss}");
        // Nothing answered yet, nothing being worked on, a pid that names no process.
        let idle =
            SlotView { completed: 0, answer_us: 0, working: 0, answered_at_us: 0, pid: 0, ..slot };
        let w = WorkerReport::read(&idle, 25_000, 5_750_000);
        assert_eq!(
            (w.avg_response_us, w.busy, w.since_last_answer_ms, w.rss_bytes, w.pace_us),
            (None, false, None, None, None)
        );
        assert_eq!(w.slowness, Some(1));
        // A report from before these fields existed still reads, with none of them.
        let old = r#"{"slot":1,"pid":2,"weight":1,"epoch":1,"inflight":0,"selected":3,"accepted":3,"completed":3}"#;
        let w: WorkerReport = serde_json::from_str(old).unwrap();
        assert_eq!((w.response_us, w.busy, w.rss_bytes), (0, false, None));
        assert_eq!((w.pace_us, w.slowness), (None, None));
    }

    /// The pace and slowness a report shows are the program's: a recent time at 1.2 x the
    /// group's mean is not slow, 3 x is (the slowness is the ratio, capped), and 3 x answered two
    /// half-lives ago has come half the way and half again toward the mean, so it is not slow
    /// any more.
    #[test]
    fn pace_and_slowness_as_the_program_sees_them() {
        let at = 5_000_000;
        let slot = |recent_us| SlotView {
            slot: 0,
            pid: 0,
            weight: 1,
            epoch: 1,
            cookie: 1,
            inflight: 0,
            accepted: 5,
            completed: 5,
            answer_us: 5 * recent_us,
            working: 0,
            answered_at_us: at,
            recent_us,
            selected_total: 5,
        };
        let read = |recent_us, now_us| {
            let w = WorkerReport::read(&slot(recent_us), 20_000, now_us);
            (w.pace_us, w.slowness)
        };
        assert_eq!(read(24_000, at + 1_000), (Some(24_000), Some(1)));
        assert_eq!(read(60_000, at + 1_000), (Some(60_000), Some(3)));
        assert_eq!(read(400_000, at + 1_000), (Some(400_000), Some(20)));
        assert_eq!(read(20_000 * 100, at), (Some(2_000_000), Some(balancer_common::SLOWNESS_CAP)));
        let two_half_lives = 2 << balancer_common::policy::RECENT_HALF_LIFE_SHIFT;
        assert_eq!(read(60_000, at + two_half_lives), (Some(30_000), Some(1)));
        // No mean yet: nothing is slow, whatever the recent time.
        let w = WorkerReport::read(&slot(400_000), 0, at + 1_000);
        assert_eq!(w.slowness, Some(1));
    }

    #[test]
    fn pack_depth_is_reported_under_pack_only() {
        let plain = serde_json::to_string(&group("127.0.0.1:1", &[])).unwrap();
        assert!(!plain.contains("pack_depth"), "{plain}");
        let mut g = group("127.0.0.1:1", &[]);
        g.policy = Policy::Pack;
        g.pack_depth = Some(3);
        let text = serde_json::to_string(&g).unwrap();
        assert!(text.contains(r#""policy":"pack","pack_depth":3"#), "{text}");
        assert_eq!(serde_json::from_str::<GroupReport>(&text).unwrap(), g);
        // A report from before pack_depth existed still reads.
        assert_eq!(serde_json::from_str::<GroupReport>(&plain).unwrap().pack_depth, None);
    }

    #[test]
    fn unknown_reasons_are_ignored_bad_names_are_errors() {
        let c: Counts<Status> = serde_json::from_str(r#"{"ok":1,"from_the_future":9}"#).unwrap();
        assert_eq!((c.get(Status::Ok), c.get(Status::Internal)), (1, 0));
        let text = serde_json::to_string(&group("127.0.0.1:1", &[]))
            .unwrap()
            .replace(r#""p2c""#, r#""fastest""#);
        let err = serde_json::from_str::<GroupReport>(&text).unwrap_err();
        assert!(err.to_string().contains("unknown policy `fastest`"), "{err}");
        // An older daemon's retired policy: named, with what replaced it.
        let text = text.replace(r#""fastest""#, r#""peak-ewma""#);
        let err = serde_json::from_str::<GroupReport>(&text).unwrap_err().to_string();
        assert!(err.contains("the daemon runs `peak-ewma` (an older reuselb"), "{err}");
        assert!(err.contains("was retired") && err.contains("use `speed-aware`"), "{err}");
    }
}
