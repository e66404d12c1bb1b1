//! The report's "what a stall catches" table (stalls workload, points that record
//! [`Point::caught`]): per configuration and offered level, summed over the rounds, the requests
//! at or over half a stall (the p99.9 target's bound) split by whether a balancer could have
//! avoided them. Points without the field (other workloads, files from before it) add nothing,
//! so older reports regenerate unchanged.
//!
//! A slow request is, in this order ([`classify`]):
//! - **sent during a stop**: served by the stopped worker and sent at or after a stop's start and
//!   before its end: the balancer placed it on a stopped worker;
//! - **already in it**: served by the stopped worker, sent before a stop's start and answered after
//!   it: it was accepted or queued there when the stop began, and no balancer can move it;
//! - **other**: failed, served by another worker, or overlapping no stop.
//!
//! The stops are [`Impaired::stalls_ms`], on the same origin as [`Caught::sent_us`].
use std::fmt::Write as _;

use anyhow::Result;

use super::{pct, Row};
use crate::compare::{
    configs::STALL_MS,
    raw::{Caught, Impaired, Point, FAILED},
};

/// The threshold the points record at, ms.
const OVER_MS: u64 = STALL_MS / 2;

/// Where one slow request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    SentDuring,
    AlreadyIn,
    Other,
}

/// The requests of a configuration at one level, summed over the rounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Split {
    /// Ordinary requests.
    n: u64,
    /// At or over [`OVER_MS`], or failed.
    over: u64,
    already_in: u64,
    sent_during: u64,
    other: u64,
    stops: u64,
}

/// Which kind `c` is, given what was done to the stopped worker.
fn classify(c: &Caught, imp: &Impaired) -> Kind {
    if c.lat_us == FAILED || imp.worker.is_none() || c.worker != imp.worker {
        return Kind::Other;
    }
    let sent = c.sent_us;
    let answered = sent + c.lat_us as u64;
    let stops = imp.stalls_ms.iter().map(|&(s, l)| (s as u64 * 1000, (s as u64 + l as u64) * 1000));
    if stops.clone().any(|(start, end)| start <= sent && sent < end) {
        Kind::SentDuring
    } else if stops.into_iter().any(|(start, _)| sent < start && answered > start) {
        Kind::AlreadyIn
    } else {
        Kind::Other
    }
}

/// The split of `pts` (one configuration at one level, every round).
fn split(pts: &[Point]) -> Split {
    let mut s = Split::default();
    for p in pts {
        s.n += p.lat_us.len() as u64;
        s.over += p.caught.len() as u64;
        let none = Impaired::default();
        let imp = p.impaired.as_ref().unwrap_or(&none);
        s.stops += imp.stalls_ms.len() as u64;
        for c in &p.caught {
            match classify(c, imp) {
                Kind::SentDuring => s.sent_during += 1,
                Kind::AlreadyIn => s.already_in += 1,
                Kind::Other => s.other += 1,
            }
        }
    }
    s
}

/// Whether any point of `rs` records its slow requests.
fn recorded<'a>(mut pts: impl Iterator<Item = &'a Point>) -> bool {
    pts.any(|p| !p.caught.is_empty())
}

/// The legend's line, if any point of the run records its slow requests.
pub(super) fn legend<'a>(w: &mut String, pts: impl Iterator<Item = &'a Point>) -> Result<()> {
    if recorded(pts) {
        writeln!(
            w,
            "**What a stall catches** (stalls): per configuration and level, summed over the rounds, the ordinary requests \
             (n) and those at or over {OVER_MS} ms or failed (per 1000 of n), split into those served by the stopped worker \
             and **sent during a stop** (the balancer sent them there), those served by it and **already in it** when a stop \
             began (sent before, answered after: no balancer can move them), and others (failed, another worker, or \
             overlapping no stop); and the stops applied.\n"
        )?;
    }
    Ok(())
}

/// A count and its share of `n` per 1000: "12 (1.20‰)".
fn per_mille(k: u64, n: u64) -> String {
    if n == 0 {
        return format!("{k}");
    }
    format!("{k} ({:.2}‰)", k as f64 * 1000.0 / n as f64)
}

/// The table, if any point of `rs` records its slow requests.
pub(super) fn table(w: &mut String, levels: &[f64], rs: &[Row]) -> Result<()> {
    if !recorded(rs.iter().flat_map(|r| r.open.iter().flatten())) {
        return Ok(());
    }
    writeln!(w, "\nWhat a stall catches: requests at or over {OVER_MS} ms (or failed), summed over the rounds.\n")?;
    writeln!(w, "| config | level | n | ≥ {OVER_MS} ms | sent during a stop | already in it | other | stops |")?;
    writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in rs {
        for (l, pts) in levels.iter().zip(&r.open) {
            let s = split(pts);
            writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.cfg.short(),
                pct(*l),
                s.n,
                per_mille(s.over, s.n),
                per_mille(s.sent_during, s.n),
                per_mille(s.already_in, s.n),
                per_mille(s.other, s.n),
                s.stops
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worker 1 stopped at 500 ms for 300 ms and at 2500 ms for 300 ms.
    fn stopped() -> Impaired {
        Impaired {
            pid: 7,
            worker: Some(1),
            stalls_ms: vec![(500, 300), (2500, 300)],
            ..Default::default()
        }
    }

    fn req(sent_ms: f64, lat_ms: f64, worker: Option<usize>) -> Caught {
        Caught { sent_us: (sent_ms * 1000.0) as u64, lat_us: (lat_ms * 1000.0) as u32, worker }
    }

    #[test]
    fn a_slow_request_is_classified_by_worker_and_stop() {
        let imp = stopped();
        let kind = |c: Caught| classify(&c, &imp);
        // Sent during a stop: from its first µs to the last before its end.
        assert_eq!(kind(req(500.0, 200.0, Some(1))), Kind::SentDuring);
        assert_eq!(kind(req(799.999, 200.0, Some(1))), Kind::SentDuring);
        assert_eq!(kind(req(2600.0, 200.0, Some(1))), Kind::SentDuring);
        // Sent at the stop's end: not during it (and it began before: other).
        assert_eq!(kind(req(800.0, 200.0, Some(1))), Kind::Other);
        // Already in it: sent before the start, answered after it.
        assert_eq!(kind(req(400.0, 200.0, Some(1))), Kind::AlreadyIn);
        assert_eq!(kind(req(499.999, 160.0, Some(1))), Kind::AlreadyIn);
        // Answered exactly at the start: the stop caught nothing.
        assert_eq!(kind(req(300.0, 200.0, Some(1))), Kind::Other);
        // Overlapping no stop.
        assert_eq!(kind(req(1000.0, 400.0, Some(1))), Kind::Other);
        // Another worker, or a failure, even inside a stop.
        assert_eq!(kind(req(600.0, 200.0, Some(0))), Kind::Other);
        assert_eq!(kind(Caught { sent_us: 600_000, lat_us: FAILED, worker: None }), Kind::Other);
        // The impaired worker unknown: nothing can be blamed on it.
        let unknown = Impaired { worker: None, ..stopped() };
        assert_eq!(classify(&req(600.0, 200.0, Some(1)), &unknown), Kind::Other);
    }

    #[test]
    fn the_split_sums_the_rounds_and_counts_the_stops() {
        let p = Point {
            lat_us: vec![1000; 1000],
            impaired: Some(stopped()),
            caught: vec![
                req(600.0, 200.0, Some(1)),
                req(450.0, 400.0, Some(1)),
                req(900.0, 151.0, Some(0)),
            ],
            ..Default::default()
        };
        let s = split(&[p.clone(), p]);
        let want = Split { n: 2000, over: 6, already_in: 2, sent_during: 2, other: 2, stops: 4 };
        assert_eq!(s, want);
        assert_eq!(per_mille(s.over, s.n), "6 (3.00‰)");
    }
}
