//! The per-worker table that `reuselb run` and the demo redraw live, in the spirit of uwsgitop:
//! who holds how many connections right now, and who got what share so far.
use std::fmt::Write as _;

use balancer_common::{Event, Policy};

use crate::{group::SlotView, loader::Program, Stats};

/// Width of the bar of the busiest worker, in characters; the others are drawn to scale.
const BAR: usize = 30;

/// One group's table. `title` names the service (its address, say).
pub fn render(
    title: &str,
    policy: Policy,
    program: Program,
    slots: &[SlotView],
    stats: &Stats,
) -> String {
    let total: u64 = slots.iter().map(|s| s.selected_total).sum();
    let most = slots.iter().map(|s| s.selected_total).max().unwrap_or(0);
    let inflight: u64 = slots.iter().map(|s| s.inflight).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{title}  policy {}  program {}  workers {}  in flight {inflight}  selected {total}",
        policy.name(),
        program.name(),
        slots.len()
    );
    let _ = writeln!(
        out,
        "{:>4} {:>8} {:>6} {:>9} {:>10} {:>10} {:>7}",
        "slot", "pid", "weight", "in flight", "selected", "completed", "share"
    );
    for s in slots {
        let share = if total == 0 { 0.0 } else { s.selected_total as f64 / total as f64 };
        let bar_len = if most == 0 {
            0
        } else {
            (s.selected_total as f64 / most as f64 * BAR as f64).round() as usize
        };
        let bar = "#".repeat(bar_len);
        let _ = writeln!(
            out,
            "{:>4} {:>8} {:>6} {:>9} {:>10} {:>10} {:>6.1}%  {bar}",
            s.slot,
            s.pid,
            s.weight,
            s.inflight,
            s.selected_total,
            s.completed,
            share * 100.0
        );
    }
    let fallbacks: Vec<String> = Event::ALL
        .iter()
        .filter(|e| e.is_fallback() && stats.get(**e) > 0)
        .map(|e| format!("{} {}", e.name(), stats.get(*e)))
        .collect();
    let _ = writeln!(
        out,
        "fallbacks to kernel hash: {}  migrations: {} moved, {} to kernel hash",
        if fallbacks.is_empty() { "0".to_owned() } else { fallbacks.join(", ") },
        stats.get(Event::MigrateSelected),
        stats.get(Event::MigrateFallback)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(slot: u32, selected_total: u64, inflight: u64) -> SlotView {
        SlotView {
            slot,
            pid: 100 + slot,
            weight: 1,
            epoch: 1,
            inflight,
            accepted: 0,
            completed: 0,
            selected_total,
        }
    }

    #[test]
    fn shares_bars_and_fallbacks() {
        let mut stats = Stats::default();
        stats.events[Event::FallbackSelectFailed as usize] = 2;
        let text = render(
            "127.0.0.1:8000",
            Policy::LeastLoaded,
            Program::SelectOrMigrate,
            &[slot(0, 75, 3), slot(1, 25, 1)],
            &stats,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("workers 2")
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
        let text =
            render("x", Policy::PowerOfTwo, Program::Select, &[slot(0, 0, 0)], &Stats::default());
        assert!(text.contains("0.0%") && text.contains("fallbacks to kernel hash: 0"), "{text}");
    }
}
