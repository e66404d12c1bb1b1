//! The state of a running controller as plain data: what `GET /status` answers (JSON), what
//! `reuselb status` and `reuselb top` draw, and what the Prometheus metrics are made from.
//!
//! One [`ServiceReport`] per balanced address (a service with two listen addresses has two, with
//! the same name). Registration counts are those of the service's registration socket, which all
//! its addresses share: every report of a service carries the same figures.
use std::{collections::BTreeMap, net::SocketAddr};

use balancer_common::{programs, protocol, Event, Policy};
use serde::{Deserialize, Serialize};

use crate::{
    group::SlotView,
    loader::Program,
    metrics::{ServiceSnapshot, Snapshot},
    registry::Registry,
    Stats,
};

/// Everything a controller balances, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// reuselb's version.
    pub version: String,
    /// What runs: `daemon` or `run`.
    pub mode: String,
    /// Seconds since the controller started.
    pub uptime_seconds: u64,
    pub services: Vec<ServiceReport>,
}

/// One balanced address of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub name: String,
    pub addr: SocketAddr,
    /// `least-loaded`, `p2c`, `round-robin` or `hash`.
    pub policy: String,
    /// `select` or `select_or_migrate`.
    pub program: String,
    /// True if the group was adopted from pins left by an earlier controller.
    pub adopted: bool,
    pub workers: Vec<WorkerReport>,
    /// Connections left to the kernel's hash, by reason (every reason, zeros included).
    pub fallbacks: BTreeMap<String, u64>,
    /// Connections of closing listeners: `migrated` to another worker, or left to `kernel_hash`.
    pub migrations: BTreeMap<String, u64>,
    /// Registrations accepted by the service's registration socket.
    pub registrations: u64,
    /// Registrations refused, by reason (a `protocol::Status` name).
    pub rejections: BTreeMap<String, u64>,
}

/// One worker (an occupied slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub slot: u32,
    pub pid: u32,
    pub weight: u32,
    pub epoch: u64,
    /// Connections assigned and not yet completed.
    pub inflight: u64,
    /// Selections of the slot since its group was created.
    pub selected: u64,
    /// Connections the worker accepted since it took the slot.
    pub accepted: u64,
    /// Connections the worker closed since it took the slot.
    pub completed: u64,
}

impl From<&SlotView> for WorkerReport {
    fn from(s: &SlotView) -> Self {
        Self {
            slot: s.slot,
            pid: s.pid,
            weight: s.weight,
            epoch: s.epoch,
            inflight: s.inflight,
            selected: s.selected_total,
            accepted: s.accepted,
            completed: s.completed,
        }
    }
}

impl From<&WorkerReport> for SlotView {
    fn from(w: &WorkerReport) -> Self {
        Self {
            slot: w.slot,
            pid: w.pid,
            weight: w.weight,
            epoch: w.epoch,
            inflight: w.inflight,
            accepted: w.accepted,
            completed: w.completed,
            selected_total: w.selected,
        }
    }
}

/// The program called `name` (`Program::name`).
pub fn program_from_name(name: &str) -> Option<Program> {
    match name {
        programs::SELECT => Some(Program::Select),
        programs::SELECT_OR_MIGRATE => Some(Program::SelectOrMigrate),
        _ => None,
    }
}

impl ServiceReport {
    pub fn policy(&self) -> Policy {
        self.policy.parse().unwrap_or_default()
    }

    pub fn program(&self) -> Program {
        program_from_name(&self.program).unwrap_or(Program::Select)
    }

    pub fn slots(&self) -> Vec<SlotView> {
        self.workers.iter().map(SlotView::from).collect()
    }

    /// Fallbacks and migrations as the group's counters.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for event in Event::ALL {
            let n = match event {
                Event::MigrateSelected => self.migrations.get("migrated"),
                Event::MigrateFallback => self.migrations.get("kernel_hash"),
                e => self.fallbacks.get(e.name()),
            };
            stats.events[event as usize] = n.copied().unwrap_or(0);
        }
        stats
    }

    /// The per-worker table of [`crate::view::render`], titled with the name and address.
    pub fn render(&self) -> String {
        crate::view::render(
            &format!("{} {}", self.name, self.addr),
            self.policy(),
            self.program(),
            &self.slots(),
            &self.stats(),
        )
    }
}

/// The reports of every address a registry serves, under the service name `name`.
pub fn collect(name: &str, registry: &Registry) -> Vec<ServiceReport> {
    let counters = registry.counters();
    let rejections: BTreeMap<String, u64> =
        counters.rejections().into_iter().map(|(s, n)| (s.name().to_owned(), n)).collect();
    let registrations = counters.replies(protocol::Status::Ok);
    let mut out = Vec::new();
    for svc in registry.services() {
        let group = svc.group();
        let slots = group.slots().unwrap_or_else(|e| {
            log::warn!("{name} {}: reading the slots: {e}", svc.addr);
            Vec::new()
        });
        let stats = group.stats().unwrap_or_else(|e| {
            log::warn!("{name} {}: reading the counters: {e}", svc.addr);
            Stats::default()
        });
        let mut fallbacks = BTreeMap::new();
        let mut migrations = BTreeMap::new();
        for event in Event::ALL {
            match event {
                Event::MigrateSelected => {
                    migrations.insert("migrated".to_owned(), stats.get(event))
                }
                Event::MigrateFallback => {
                    migrations.insert("kernel_hash".to_owned(), stats.get(event))
                }
                e => fallbacks.insert(e.name().to_owned(), stats.get(e)),
            };
        }
        out.push(ServiceReport {
            name: name.to_owned(),
            addr: svc.addr,
            policy: group.policy().name().to_owned(),
            program: group.program().name().to_owned(),
            adopted: group.adopted(),
            workers: slots.iter().map(WorkerReport::from).collect(),
            fallbacks,
            migrations,
            registrations,
            rejections: rejections.clone(),
        });
    }
    out
}

impl Report {
    /// The metrics' view: one entry per service name. A worker is one process: a worker that
    /// serves several addresses of a service is one series, with its figures summed over them
    /// (and the slot it has at the first address); fallbacks and migrations are summed too.
    pub fn to_metrics(&self) -> Snapshot {
        let mut services: Vec<ServiceSnapshot> = Vec::new();
        for r in &self.services {
            let i = match services.iter().position(|s| s.service == r.name) {
                Some(i) => i,
                None => {
                    let mut s = ServiceSnapshot::new(r.name.clone(), r.policy(), r.program());
                    for status in protocol::Status::ALL {
                        s.registrations[status as usize] = match status {
                            protocol::Status::Ok => r.registrations,
                            other => r.rejections.get(other.name()).copied().unwrap_or(0),
                        };
                    }
                    services.push(s);
                    services.len() - 1
                }
            };
            let s = &mut services[i];
            let stats = r.stats();
            for (total, n) in s.stats.events.iter_mut().zip(stats.events) {
                *total += n;
            }
            for w in &r.workers {
                match s.slots.iter_mut().find(|v| v.pid == w.pid) {
                    Some(v) => {
                        v.inflight += w.inflight;
                        v.accepted += w.accepted;
                        v.completed += w.completed;
                        v.selected_total += w.selected;
                    }
                    None => s.slots.push(SlotView::from(w)),
                }
            }
        }
        Snapshot { services }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, addr: &str, workers: &[(u32, u32, u64)]) -> ServiceReport {
        let mut fallbacks = BTreeMap::new();
        fallbacks.insert("select_failed".to_owned(), 2);
        ServiceReport {
            name: name.into(),
            addr: addr.parse().unwrap(),
            policy: "p2c".into(),
            program: "select_or_migrate".into(),
            adopted: false,
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
                })
                .collect(),
            fallbacks,
            migrations: BTreeMap::new(),
            registrations: 4,
            rejections: BTreeMap::from([("no_free_slot".to_owned(), 3)]),
        }
    }

    #[test]
    fn json_round_trip_and_merge_by_service() {
        let r = Report {
            version: "0.1.0".into(),
            mode: "daemon".into(),
            uptime_seconds: 5,
            services: vec![
                report("web", "127.0.0.1:8000", &[(0, 10, 5), (1, 11, 7)]),
                report("web", "[::1]:8000", &[(1, 10, 1), (0, 11, 2)]),
                report("api", "127.0.0.1:9000", &[(0, 20, 3)]),
            ],
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(text.contains(r#""addr":"[::1]:8000""#), "{text}");

        let m = r.to_metrics();
        assert_eq!(m.services.len(), 2);
        let web = &m.services[0];
        assert_eq!(web.service, "web");
        assert_eq!(web.policy, Policy::PowerOfTwo);
        assert_eq!(web.slots.len(), 2);
        assert_eq!(
            (
                web.slots[0].slot,
                web.slots[0].pid,
                web.slots[0].selected_total,
                web.slots[0].inflight
            ),
            (0, 10, 6, 2)
        );
        assert_eq!((web.slots[1].slot, web.slots[1].pid, web.slots[1].selected_total), (1, 11, 9));
        assert_eq!(web.stats.get(Event::FallbackSelectFailed), 4);
        assert_eq!(web.registrations[protocol::Status::Ok as usize], 4);
        assert_eq!(web.registrations[protocol::Status::NoFreeSlot as usize], 3);
        assert!(r.services[0].render().starts_with("web 127.0.0.1:8000  policy p2c"));
    }
}
