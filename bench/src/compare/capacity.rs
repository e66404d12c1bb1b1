//! Capacity as `bench compare` measures it: the throughput plateau of a configuration, found by
//! raising the closed loop's clients until throughput stops growing.
//!
//! This module owns the search's rule ([`Rule`]): where it starts (8 requests in flight per
//! process), how it steps (×1.5, rounded up), when it stops (a step that adds less than 3%, or the
//! cap on clients), and which figure is the plateau (the highest throughput of the steps run). The
//! rule is a pure function of the (clients, throughput) series so far ([`Rule::next`]); running
//! the steps is the caller's.
//!
//! Invariants: the clients of successive steps strictly grow and never pass the cap, so a search
//! runs at most [`Rule::max_steps`] steps, each one closed-loop run of bounded length.
use serde::{Deserialize, Serialize};

/// One step of a search: the closed loop's clients and the throughput it measured (req/s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub clients: usize,
    pub throughput: f64,
}

/// What the search does after the steps so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    /// Run another step with this many clients.
    Step(usize),
    /// Stop: the plateau is `throughput`, measured with `clients`.
    Plateau(Step),
}

/// The search's rule, recorded in the raw file with the run it governed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Requests in flight per process at the first step.
    pub start_per_process: usize,
    /// Each step's clients are the previous step's times this (rounded up).
    pub factor: f64,
    /// A step that adds less than this share to the best throughput so far ends the search.
    pub min_growth: f64,
    /// The most clients per process a step may have.
    pub max_per_process: usize,
}

/// The rule `bench compare` runs with.
pub const RULE: Rule =
    Rule { start_per_process: 8, factor: 1.5, min_growth: 0.03, max_per_process: 64 };

impl Rule {
    /// The first step's clients for `processes` processes.
    pub fn first(&self, processes: u32) -> usize {
        (self.start_per_process * processes as usize).max(1)
    }

    /// The most clients a step may have for `processes` processes.
    pub fn cap(&self, processes: u32) -> usize {
        (self.max_per_process * processes as usize).max(self.first(processes))
    }

    /// The clients of the step after one with `clients`, not past the cap (`None` at the cap).
    fn after(&self, clients: usize, processes: u32) -> Option<usize> {
        let cap = self.cap(processes);
        let next = ((clients as f64 * self.factor).ceil() as usize).max(clients + 1).min(cap);
        (next > clients).then_some(next)
    }

    /// The most steps a search can run for `processes` processes.
    pub fn max_steps(&self, processes: u32) -> usize {
        let mut clients = self.first(processes);
        let mut n = 1;
        while let Some(c) = self.after(clients, processes) {
            clients = c;
            n += 1;
        }
        n
    }

    /// What to do after `steps` (in the order run): the first step if there is none; the plateau
    /// (the best step so far) if the last step added less than [`Rule::min_growth`] to the best
    /// before it, or it ran at the cap; else the next step.
    pub fn next(&self, steps: &[Step], processes: u32) -> Next {
        let Some((last, before)) = steps.split_last() else {
            return Next::Step(self.first(processes));
        };
        let best = |s: &[Step]| {
            s.iter().copied().reduce(|a, b| if b.throughput > a.throughput { b } else { a })
        };
        let best_all = best(steps).unwrap_or(*last);
        let grew = match best(before) {
            None => true,
            Some(b) => last.throughput >= b.throughput * (1.0 + self.min_growth),
        };
        match self.after(last.clients, processes) {
            Some(c) if grew => Next::Step(c),
            _ => Next::Plateau(best_all),
        }
    }

    /// One line for the report: how the search went.
    pub fn describe(&self) -> String {
        format!(
            "closed-loop clients start at {} per process and grow ×{} per step (rounded up) until a step adds less than {:.0}% \
             to the best throughput before it, or the clients reach {} per process; the plateau is the best step's throughput",
            self.start_per_process,
            self.factor,
            self.min_growth * 100.0,
            self.max_per_process
        )
    }
}

/// The number of steps the time estimate counts per search: the first, two that grow, and the
/// one that does not.
pub const EXPECTED_STEPS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the rule over a throughput curve (clients -> req/s) until it stops; returns the
    /// clients of every step run and the plateau.
    fn search(curve: impl Fn(usize) -> f64, processes: u32) -> (Vec<usize>, Step) {
        let mut steps = Vec::new();
        loop {
            match RULE.next(&steps, processes) {
                Next::Step(clients) => steps.push(Step { clients, throughput: curve(clients) }),
                Next::Plateau(p) => return (steps.iter().map(|s| s.clients).collect(), p),
            }
        }
    }

    #[test]
    fn the_search_starts_at_eight_per_process_and_grows_by_half() {
        assert_eq!(RULE.next(&[], 2), Next::Step(16));
        assert_eq!(RULE.next(&[], 8), Next::Step(64));
        let s = [Step { clients: 16, throughput: 500.0 }];
        assert_eq!(RULE.next(&s, 2), Next::Step(24));
    }

    #[test]
    fn a_step_that_adds_less_than_three_percent_ends_the_search_at_the_best_step() {
        // Grows 16 -> 24 -> 36, then 36 -> 54 adds 2%: the plateau is 54's.
        let curve = |c: usize| match c {
            16 => 600.0,
            24 => 800.0,
            36 => 900.0,
            54 => 918.0,
            _ => panic!("step {c} should not run"),
        };
        let (clients, p) = search(curve, 2);
        assert_eq!(clients, vec![16, 24, 36, 54]);
        assert_eq!(p, Step { clients: 54, throughput: 918.0 });
    }

    #[test]
    fn a_step_that_falls_ends_the_search_at_the_step_before() {
        let curve = |c: usize| if c <= 24 { c as f64 * 40.0 } else { 900.0 };
        let (clients, p) = search(curve, 2);
        assert_eq!(clients, vec![16, 24, 36]);
        assert_eq!(p, Step { clients: 24, throughput: 960.0 });
        // Exactly 3% more is growth; a hair under is not.
        let s =
            |t: f64| [Step { clients: 16, throughput: 100.0 }, Step { clients: 24, throughput: t }];
        assert_eq!(RULE.next(&s(103.0), 2), Next::Step(36));
        assert!(matches!(RULE.next(&s(102.9), 2), Next::Plateau(_)));
    }

    #[test]
    fn growth_is_measured_against_the_best_step_not_the_last() {
        // 36 fell; 54 is above 36 by far but within 3% of 24, the best before it.
        let s = [
            Step { clients: 16, throughput: 600.0 },
            Step { clients: 24, throughput: 1000.0 },
            Step { clients: 36, throughput: 700.0 },
            Step { clients: 54, throughput: 1020.0 },
        ];
        assert_eq!(RULE.next(&s, 2), Next::Plateau(s[3]));
    }

    #[test]
    fn a_curve_that_keeps_growing_stops_at_the_cap() {
        let (clients, p) = search(|c| c as f64 * 10.0, 2);
        assert_eq!(clients, vec![16, 24, 36, 54, 81, 122, 128]);
        assert_eq!(p, Step { clients: 128, throughput: 1280.0 });
        assert_eq!(RULE.max_steps(2), clients.len());
        assert_eq!(RULE.cap(8), 512);
        assert!(RULE.max_steps(8) <= 8);
    }
}
