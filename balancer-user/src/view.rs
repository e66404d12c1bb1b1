//! The per-worker tables that `reuselb status`, `reuselb top` and `reuselb run --view` draw, in
//! the spirit of uwsgitop: who holds how many connections right now, and who got what share so
//! far. Plain text from a [`Report`]; drawing it on a terminal is the caller's business.
use std::fmt::Write as _;

use balancer_common::Event;

use crate::report::{GroupReport, Report, ServiceReport};

/// Width of the bar of the busiest worker, in characters; the others are drawn to scale.
const BAR: usize = 30;

/// One group's table, titled `title` (the service's name and address, say).
pub fn render_group(title: &str, group: &GroupReport) -> String {
    let workers = &group.workers;
    let total: u64 = workers.iter().map(|w| w.selected).sum();
    let most = workers.iter().map(|w| w.selected).max().unwrap_or(0);
    let inflight: u64 = workers.iter().map(|w| w.inflight).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{title}  policy {}  program {}  workers {}  in flight {inflight}  selected {total}",
        group.policy.name(),
        group.program.name(),
        workers.len()
    );
    let _ = writeln!(
        out,
        "{:>4} {:>8} {:>6} {:>9} {:>10} {:>10} {:>7}",
        "slot", "pid", "weight", "in flight", "selected", "completed", "share"
    );
    for w in workers {
        let share = if total == 0 { 0.0 } else { w.selected as f64 / total as f64 };
        let bar_len = if most == 0 {
            0
        } else {
            (w.selected as f64 / most as f64 * BAR as f64).round() as usize
        };
        let bar = "#".repeat(bar_len);
        let _ = writeln!(
            out,
            "{:>4} {:>8} {:>6} {:>9} {:>10} {:>10} {:>6.1}%  {bar}",
            w.slot,
            w.pid,
            w.weight,
            w.inflight,
            w.selected,
            w.completed,
            share * 100.0
        );
    }
    let fallbacks: Vec<String> = group
        .events
        .iter()
        .filter(|(e, n)| e.is_fallback() && *n > 0)
        .map(|(e, n)| format!("{} {n}", e.name()))
        .collect();
    let _ = writeln!(
        out,
        "fallbacks to kernel hash: {}  migrations: {} moved, {} to kernel hash",
        if fallbacks.is_empty() { "0".to_owned() } else { fallbacks.join(", ") },
        group.events.get(Event::MigrateSelected),
        group.events.get(Event::MigrateFallback)
    );
    out
}

/// A service's tables, one per address, and its registrations.
pub fn render_service(service: &ServiceReport) -> String {
    let mut out = String::new();
    for g in &service.groups {
        out.push_str(&render_group(&format!("{} {}", service.name, g.addr), g));
    }
    let adopted = service.groups.iter().any(|g| g.adopted);
    let _ = writeln!(
        out,
        "registrations: {} accepted, {} refused{}",
        service.registrations.get(balancer_common::protocol::Status::Ok),
        service.rejected(),
        if adopted { "  (adopted after a restart)" } else { "" }
    );
    out
}

/// The whole report: a header line, then every service.
pub fn render(report: &Report) -> String {
    let addresses: usize = report.services.iter().map(|s| s.groups.len()).sum();
    let mut out = format!(
        "reuselb {} ({}), up {}, {} services, {addresses} balanced addresses\n\n",
        report.version,
        report.mode.name(),
        uptime(report.uptime_seconds),
        report.services.len(),
    );
    for s in &report.services {
        out.push_str(&render_service(s));
        out.push('\n');
    }
    out
}

/// `59s`, `1m05s`, `2h03m`.
pub fn uptime(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use balancer_common::protocol::Status;

    use super::*;
    use crate::report::{tests::group, Counts, Mode};

    #[test]
    fn shares_bars_and_fallbacks() {
        let mut g = group("127.0.0.1:8000", &[(0, 100, 75), (1, 101, 25)]);
        g.workers[0].inflight = 3;
        let text = render_group("web 127.0.0.1:8000", &g);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("web 127.0.0.1:8000  policy p2c  program select_or_migrate")
                && lines[0].contains("workers 2")
                && lines[0].contains("in flight 4")
                && lines[0].contains("selected 100"),
            "{text}"
        );
        assert!(
            lines[2].contains("75.0%") && lines[2].ends_with(&format!(" {}", "#".repeat(30))),
            "{text}"
        );
        assert!(
            lines[3].contains("25.0%") && lines[3].ends_with(&format!(" {}", "#".repeat(10))),
            "{text}"
        );
        assert!(lines[4].contains("select_failed 2"), "{text}");
    }

    #[test]
    fn no_traffic_yet() {
        let mut g = group("127.0.0.1:8000", &[(0, 100, 1)]);
        g.workers[0].selected = 0;
        g.events = Counts::default();
        let text = render_group("x", &g);
        assert!(text.contains("0.0%") && text.contains("fallbacks to kernel hash: 0"), "{text}");
    }

    #[test]
    fn whole_report() {
        let mut registrations = Counts::default();
        registrations.set(Status::Ok, 2);
        registrations.set(Status::UidNotAllowed, 1);
        let report = Report {
            version: "9.9.9".into(),
            mode: Mode::Run,
            uptime_seconds: 65,
            services: vec![ServiceReport {
                name: "web".into(),
                registrations,
                groups: vec![group("127.0.0.1:8000", &[(0, 100, 3)]), group("[::1]:8000", &[])],
                registry: Default::default(),
            }],
        };
        let text = render(&report);
        assert!(
            text.starts_with("reuselb 9.9.9 (run), up 1m05s, 1 services, 2 balanced addresses\n"),
            "{text}"
        );
        assert!(text.contains("\nweb [::1]:8000  policy p2c"), "{text}");
        assert!(text.contains("registrations: 2 accepted, 1 refused\n"), "{text}");
    }
}
