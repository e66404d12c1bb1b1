//! The per-worker tables that `reuselb status`, `reuselb top` and `reuselb run --view` draw, in
//! the spirit of uwsgitop: per worker, busy or idle now, requests in flight, selections, requests
//! answered, the average response time, how many times slower than its group the program takes
//! it to be (speed-aware's slowness: `1x` below 3 x the group's mean, `3x` to `64x` slow), the
//! time since the last answer, resident memory, and the share of the group's selections so far
//! (with a bar where the width allows). Each group
//! starts with a summary line (workers, busy ones, in flight, selected, answered, average
//! response time, memory), so a group of 64 workers reads at a glance. Plain text from a
//! [`Report`], at most a given width wide (the bar shrinks, then goes; 80 columns fit every
//! column); drawing it on a terminal, and scrolling it, is the caller's business.
use std::fmt::Write as _;

use balancer_common::Event;

use crate::report::{GroupReport, Report, ServiceReport, WorkerReport};

/// Width of the bar of the busiest worker, in characters; the others are drawn to scale.
const BAR: usize = 30;

/// Width of a worker's line without its bar.
const COLUMNS: usize = 80;

/// A bar narrower than this is not drawn.
const MIN_BAR: usize = 5;

/// The width to draw for on stdout: the terminal's columns, or no limit if stdout is not a
/// terminal (a pipe, a file) or does not say.
pub fn stdout_width() -> usize {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(ws) if ws.ws_col > 0 => ws.ws_col.into(),
        _ => usize::MAX,
    }
}

/// Milliseconds as `850ms`, `4.2s`, `35s`, `3m05s`, `17m`, `2h03m`, `37h`, `12d`: at most 5
/// characters.
pub fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=9999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => uptime(ms / 1000),
    }
}

/// An average response time in milliseconds, `-` if there is none: one decimal below a second,
/// none from a second up (so that it fits its 7 columns up to about 2.8 hours).
fn avg_ms(us: Option<u64>) -> String {
    match us {
        None => "-".to_owned(),
        Some(us) if us < 1_000_000 => format!("{:.1}", us as f64 / 1000.0),
        Some(us) => format!("{}", us / 1000),
    }
}

/// A count, in millions with one decimal (`123.4M`) from 10^8 up, so that it fits its 8 columns
/// below 10^11.
fn count(n: u64) -> String {
    if n < 100_000_000 {
        n.to_string()
    } else {
        format!("{:.1}M", n as f64 / 1e6)
    }
}

/// A slowness as `12x`, `-` if unknown (a report of an older reuselb).
fn times(slowness: Option<u64>) -> String {
    slowness.map_or_else(|| "-".to_owned(), |s| format!("{s}x"))
}

/// Bytes in MiB, `-` if unknown.
fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b as f64 / (1024.0 * 1024.0)))
}

/// The summary of a group's workers: how many, how many busy, and their totals.
fn summary(workers: &[WorkerReport]) -> String {
    let busy = workers.iter().filter(|w| w.busy).count();
    let inflight: u64 = workers.iter().map(|w| w.inflight).sum();
    let answered: u64 = workers.iter().map(|w| w.completed).sum();
    let response_us: u64 = workers.iter().map(|w| w.response_us).sum();
    let rss: Vec<u64> = workers.iter().filter_map(|w| w.rss_bytes).collect();
    let rss = if rss.is_empty() {
        "-".to_owned()
    } else {
        format!("{:.0}", rss.iter().sum::<u64>() as f64 / (1024.0 * 1024.0))
    };
    format!(
        "workers {} ({busy} busy)  in flight {inflight}  answered {}  avg {} ms  \
         rss {rss} MiB",
        workers.len(),
        count(answered),
        avg_ms(response_us.checked_div(answered)),
    )
}

/// One group's table, titled `title` (the service's name and address, say), full width (the
/// bars at [`BAR`] characters).
pub fn render_group(title: &str, group: &GroupReport) -> String {
    render_group_width(title, group, usize::MAX)
}

/// [`render_group`] at most `width` characters wide (the title and summary lines excepted).
pub fn render_group_width(title: &str, group: &GroupReport, width: usize) -> String {
    let workers = &group.workers;
    let total: u64 = workers.iter().map(|w| w.selected).sum();
    let most = workers.iter().map(|w| w.selected).max().unwrap_or(0);
    let bar_width = width.saturating_sub(COLUMNS + 2).min(BAR);
    let bar_width = if bar_width < MIN_BAR { 0 } else { bar_width };
    let mut out = String::new();
    let mean = group
        .mean_response_us
        .map_or_else(String::new, |us| format!("  recent mean {} ms", avg_ms(Some(us))));
    let _ = writeln!(
        out,
        "{title}  policy {}  program {}{mean}",
        group.policy.name(),
        group.program.name()
    );
    let _ = writeln!(out, "{}", summary(workers));
    let _ = writeln!(
        out,
        "{:>4} {:>7} {:>3} {:<5} {:>5} {:>8} {:>8} {:>7} {:>4} {:>5} {:>7} {:>6}",
        "slot",
        "pid",
        "wt",
        "state",
        "inflt",
        "selected",
        "answered",
        "avg ms",
        "slow",
        "last",
        "rss MiB",
        "share"
    );
    for w in workers {
        let share = if total == 0 { 0.0 } else { w.selected as f64 / total as f64 };
        let bar_len = if most == 0 {
            0
        } else {
            (w.selected as f64 / most as f64 * bar_width as f64).round() as usize
        };
        let line = format!(
            "{:>4} {:>7} {:>3} {:<5} {:>5} {:>8} {:>8} {:>7} {:>4} {:>5} {:>7} {:>5.1}%",
            w.slot,
            w.pid,
            w.weight,
            if w.busy { "busy" } else { "idle" },
            w.inflight,
            count(w.selected),
            count(w.completed),
            avg_ms(w.avg_response_us),
            times(w.slowness),
            w.since_last_answer_ms.map_or_else(|| "-".to_owned(), age),
            mib(w.rss_bytes),
            share * 100.0
        );
        if bar_width == 0 {
            let _ = writeln!(out, "{line}");
        } else {
            let _ = writeln!(out, "{line}  {}", "#".repeat(bar_len));
        }
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
    render_service_width(service, usize::MAX)
}

/// [`render_service`] with tables at most `width` characters wide.
pub fn render_service_width(service: &ServiceReport, width: usize) -> String {
    let mut out = String::new();
    for g in &service.groups {
        out.push_str(&render_group_width(&format!("{} {}", service.name, g.addr), g, width));
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

/// The whole report: a header line, then every service, full width.
pub fn render(report: &Report) -> String {
    render_width(report, usize::MAX)
}

/// [`render`] with tables at most `width` characters wide.
pub fn render_width(report: &Report, width: usize) -> String {
    let addresses: usize = report.services.iter().map(|s| s.groups.len()).sum();
    let mut out = format!(
        "reuselb {} ({}), up {}, {} services, {addresses} balanced addresses\n\n",
        report.version,
        report.mode.name(),
        uptime(report.uptime_seconds),
        report.services.len(),
    );
    for s in &report.services {
        out.push_str(&render_service_width(s, width));
        out.push('\n');
    }
    out
}

/// `59s`, `1m05s`, `17m`, `2h03m`, `37h`, `12d`: at most 5 characters, up to 27 years.
pub fn uptime(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=599 => format!("{}m{:02}s", s / 60, s % 60),
        600..=3599 => format!("{}m", s / 60),
        3600..=35_999 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        36_000..=359_999 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
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
        g.workers[0].busy = true;
        g.workers[0].response_us = 74 * 12_500;
        g.workers[0].avg_response_us = Some(12_500);
        g.workers[0].since_last_answer_ms = Some(65_000);
        g.workers[0].rss_bytes = Some(48 << 20);
        g.workers[0].slowness = Some(12);
        g.workers[1].slowness = Some(1);
        g.mean_response_us = Some(6_340);
        let text = render_group("web 127.0.0.1:8000", &g);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "web 127.0.0.1:8000  policy p2c  program select_or_migrate  recent mean 6.3 ms",
            "{text}"
        );
        assert_eq!(
            lines[1], "workers 2 (1 busy)  in flight 4  answered 98  avg 9.4 ms  rss 48 MiB",
            "{text}"
        );
        assert_eq!(
            lines[2],
            "slot     pid  wt state inflt selected answered  avg ms slow  last rss MiB  share",
            "{text}"
        );
        assert_eq!(
            lines[3],
            format!(
                "   0     100   1 busy      3       75       74    12.5  12x 1m05s    48.0  75.0%  {}",
                "#".repeat(30)
            ),
            "{text}"
        );
        assert_eq!(
            lines[4],
            format!(
                "   1     101   1 idle      1       25       24       -   1x     -       -  25.0%  {}",
                "#".repeat(10)
            ),
            "{text}"
        );
        assert!(lines[5].contains("select_failed 2"), "{text}");
    }

    /// 64 workers at 80 columns: every line of the table fits (the bars go), with the widest
    /// figures each column takes (7-digit pids, counts past 10^8, a two-minute average, a last
    /// answer 59 minutes or 99 hours ago, 2000 MiB, slowness 64), and the summary line counts
    /// them all.
    #[test]
    fn sixty_four_workers_fit_80_columns() {
        let workers: Vec<(u32, u32, u64)> =
            (0..64).map(|i| (i, 4_000_000 + i, 123_456_789 + u64::from(i))).collect();
        let mut g = group("[2001:db8::1]:8000", &workers);
        for w in &mut g.workers {
            w.avg_response_us = Some(123_456_789);
            // The widest ages: minutes only from 10 minutes on, hours only from 10 hours on.
            w.since_last_answer_ms = Some(if w.slot % 2 == 0 { 3_599_000 } else { 359_999_000 });
            w.rss_bytes = Some(2000 << 20);
            w.slowness = Some(64);
        }
        let text = render_group_width("web [2001:db8::1]:8000", &g, 80);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3 + 64 + 1, "{text}");
        for line in &lines {
            assert!(line.chars().count() <= 80, "{} columns: {line}", line.chars().count());
        }
        assert!(lines[1].starts_with("workers 64 (0 busy)  in flight 64"), "{text}");
        assert!(!text.contains('#'), "no room for bars at 80 columns: {text}");
        // At 120 columns there is room for bars again.
        assert!(render_group_width("web", &g, 120).contains("##########"));
    }

    #[test]
    fn ages() {
        assert_eq!(
            [0, 999, 1000, 9_949, 10_000, 65_000, 599_000, 600_000, 3_599_000, 7_380_000].map(age),
            ["0ms", "999ms", "1.0s", "9.9s", "10s", "1m05s", "9m59s", "10m", "59m", "2h03m"]
        );
        assert_eq!(
            [36_000_000, 359_999_000, 360_000_000, 863_913_600_000].map(age),
            ["10h", "99h", "4d", "9999d"]
        );
    }

    #[test]
    fn no_traffic_yet() {
        let mut g = group("127.0.0.1:8000", &[(0, 100, 1)]);
        g.workers[0].selected = 0;
        g.events = Counts::default();
        let text = render_group("x", &g);
        assert!(text.contains("0.0%") && text.contains("fallbacks to kernel hash: 0"), "{text}");
        // No answer yet: no recent mean in the title; a report of an older reuselb: no slowness.
        assert_eq!(text.lines().next(), Some("x  policy p2c  program select_or_migrate"));
        assert!(text.lines().nth(3).unwrap().contains("      -    -     -       -"), "{text}");
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
