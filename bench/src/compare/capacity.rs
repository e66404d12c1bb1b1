//! Capacity as `bench compare` measures it: the throughput plateau of a configuration, found by
//! raising the closed loop's clients until throughput stops growing.
//!
//! This module owns the search's rule ([`Rule`]): where it starts (8 requests in flight per
//! process), how it steps (×1.5, rounded up), when it stops (two steps in a row that each add less
//! than 3% to the best before them, or the cap on clients), and which figure is the plateau (the
//! highest throughput of the steps run). The rule is a pure function of the (clients, throughput)
//! series so far ([`Rule::next`]); running the steps is the caller's.
//!
//! Why two steps and not one: a step is a closed loop of 1.5 s, and on skewed requests one step's
//! throughput moves by a few percent from noise alone. With one flat step ending the search (the
//! rule of issue 23's runs 1-15, whose raw files have no `patience` and read as 1), a
//! configuration's search stopped early in some rounds and not in others, and the plateaus
//! compared were measured at different clients: run 15 put speed-aware's skewed capacity at 0.94x
//! nginx `least_conn`'s while at equal clients their steps were within a few percent of each
//! other.
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
    /// A step that adds less than this share to the best throughput before it is flat;
    /// [`Rule::patience`] flat steps in a row end the search.
    pub min_growth: f64,
    /// The most clients per process a step may have.
    pub max_per_process: usize,
    /// How many flat steps in a row (each adding less than [`Rule::min_growth`]) end the search;
    /// raw files written before the field existed have none and read as 1.
    #[serde(default = "Rule::one_step")]
    pub patience: usize,
}

/// The rule `bench compare` runs with.
pub const RULE: Rule =
    Rule { start_per_process: 8, factor: 1.5, min_growth: 0.03, max_per_process: 64, patience: 2 };

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

    /// The patience of the rule before the field existed (serde's default for old raw files).
    fn one_step() -> usize {
        1
    }

    /// What to do after `steps` (in the order run): the first step if there is none; the plateau
    /// (the best step so far) if each of the last [`Rule::patience`] steps added less than
    /// [`Rule::min_growth`] to the best before it, or the last ran at the cap; else the next step.
    pub fn next(&self, steps: &[Step], processes: u32) -> Next {
        let Some(last) = steps.last() else {
            return Next::Step(self.first(processes));
        };
        // One pass: the best step so far (the first of equals), and how many steps in a row, up
        // to the last, added less than min_growth to the best before them (the first step grows).
        let mut best = *last;
        let mut flat_in_a_row = 0;
        for (i, s) in steps.iter().enumerate() {
            let grew = i == 0 || s.throughput >= best.throughput * (1.0 + self.min_growth);
            flat_in_a_row = if grew { 0 } else { flat_in_a_row + 1 };
            if i == 0 || s.throughput > best.throughput {
                best = *s;
            }
        }
        match self.after(last.clients, processes) {
            Some(c) if flat_in_a_row < self.patience.max(1) => Next::Step(c),
            _ => Next::Plateau(best),
        }
    }

    /// One line for the report: how the search went.
    pub fn describe(&self) -> String {
        format!(
            "closed-loop clients start at {} per process and grow ×{} per step (rounded up) until {} adds less than {:.0}% \
             to the best throughput before it, or the clients reach {} per process; the plateau is the best step's throughput",
            self.start_per_process,
            self.factor,
            match self.patience {
                0 | 1 => "a step".to_string(),
                n => format!("each of {n} steps in a row"),
            },
            self.min_growth * 100.0,
            self.max_per_process
        )
    }
}

/// The number of steps the time estimate counts per search: the first, two that grow, and the
/// two that do not.
pub const EXPECTED_STEPS: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule of issue 23's runs 1-15: one flat step ends the search.
    const ONE_STEP: Rule = Rule { patience: 1, ..RULE };

    /// Runs `rule` over a throughput curve (clients -> req/s) until it stops; returns the
    /// clients of every step run and the plateau.
    fn search(rule: &Rule, curve: impl Fn(usize) -> f64, processes: u32) -> (Vec<usize>, Step) {
        let mut steps = Vec::new();
        loop {
            match rule.next(&steps, processes) {
                Next::Step(clients) => steps.push(Step { clients, throughput: curve(clients) }),
                Next::Plateau(p) => return (steps.iter().map(|s| s.clients).collect(), p),
            }
        }
    }

    /// A throughput curve known only at `steps` (clients, req/s): a step elsewhere panics.
    fn measured(steps: &'static [(usize, f64)]) -> impl Fn(usize) -> f64 + Copy {
        move |c| match steps.iter().find(|s| s.0 == c) {
            Some(&(_, t)) => t,
            None => panic!("step {c} should not run"),
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
    fn two_steps_in_a_row_that_add_less_than_three_percent_end_the_search_at_the_best_step() {
        // Grows 16 -> 24 -> 36, then 54 adds 2% and 81 adds 1% to 54's: the plateau is 81's.
        let curve = measured(&[(16, 600.0), (24, 800.0), (36, 900.0), (54, 918.0), (81, 927.0)]);
        let (clients, p) = search(&RULE, curve, 2);
        assert_eq!(clients, vec![16, 24, 36, 54, 81]);
        assert_eq!(p, Step { clients: 81, throughput: 927.0 });
        // The old rule stopped at the first flat step.
        let (clients, p) = search(&ONE_STEP, curve, 2);
        assert_eq!(clients, vec![16, 24, 36, 54]);
        assert_eq!(p, Step { clients: 54, throughput: 918.0 });
    }

    #[test]
    fn two_steps_that_fall_end_the_search_at_the_step_before() {
        let curve = |c: usize| if c <= 24 { c as f64 * 40.0 } else { 900.0 };
        let (clients, p) = search(&RULE, curve, 2);
        assert_eq!(clients, vec![16, 24, 36, 54]);
        assert_eq!(p, Step { clients: 24, throughput: 960.0 });
        let (clients, p) = search(&ONE_STEP, curve, 2);
        assert_eq!(clients, vec![16, 24, 36]);
        assert_eq!(p, Step { clients: 24, throughput: 960.0 });
        // Exactly 3% more is growth; a hair under is not.
        let s = |t: f64| {
            [
                Step { clients: 16, throughput: 100.0 },
                Step { clients: 24, throughput: 100.0 },
                Step { clients: 36, throughput: t },
            ]
        };
        assert_eq!(RULE.next(&s(103.0), 2), Next::Step(54));
        assert!(matches!(RULE.next(&s(102.9), 2), Next::Plateau(_)));
    }

    #[test]
    fn a_step_that_grows_resets_the_count_of_flat_steps() {
        // Flat, grows, flat: one flat step in a row, the search goes on.
        let s = [
            Step { clients: 16, throughput: 600.0 },
            Step { clients: 24, throughput: 601.0 },
            Step { clients: 36, throughput: 700.0 },
            Step { clients: 54, throughput: 701.0 },
        ];
        assert_eq!(RULE.next(&s, 2), Next::Step(81));
        assert!(matches!(ONE_STEP.next(&s[..2], 2), Next::Plateau(_)));
    }

    #[test]
    fn growth_is_measured_against_the_best_step_not_the_last() {
        // 36 fell; 54 is above 36 by far but within 3% of 24, the best before it: two flat steps.
        let s = [
            Step { clients: 16, throughput: 600.0 },
            Step { clients: 24, throughput: 1000.0 },
            Step { clients: 36, throughput: 700.0 },
            Step { clients: 54, throughput: 1020.0 },
        ];
        assert_eq!(RULE.next(&s, 2), Next::Plateau(s[3]));
    }

    #[test]
    fn one_noisy_flat_step_does_not_end_the_search() {
        // Run 15, 8 x 20 skewed, first round: speed-aware's search stopped at 96 clients (540 ->
        // 543 req/s, +0.6%) while nginx least_conn's went on to 324 (619 req/s). The steps past
        // 96 are made up, rising as E's did. One flat step of 1.5 s on skewed requests is noise;
        // two in a row are a plateau.
        let curve = measured(&[(64, 540.0), (96, 543.0), (144, 585.0), (216, 595.0), (324, 596.0)]);
        let (clients, p) = search(&RULE, curve, 8);
        assert_eq!(clients, vec![64, 96, 144, 216, 324]);
        assert_eq!(p, Step { clients: 324, throughput: 596.0 });
    }

    #[test]
    fn a_curve_that_keeps_growing_stops_at_the_cap() {
        let (clients, p) = search(&RULE, |c| c as f64 * 10.0, 2);
        assert_eq!(clients, vec![16, 24, 36, 54, 81, 122, 128]);
        assert_eq!(p, Step { clients: 128, throughput: 1280.0 });
        assert_eq!(RULE.max_steps(2), clients.len());
        assert_eq!(RULE.cap(8), 512);
        assert!(RULE.max_steps(8) <= 8);
    }

    #[test]
    fn the_cap_ends_the_search_after_one_flat_step_and_patience_0_acts_as_1() {
        // 128 is the cap for 2 processes: one flat step there ends the search.
        let curve = measured(&[(16, 100.0), (24, 200.0), (36, 300.0), (54, 400.0), (81, 500.0)]);
        let mut steps: Vec<Step> = [16, 24, 36, 54, 81]
            .iter()
            .map(|&c| Step { clients: c, throughput: curve(c) })
            .collect();
        steps.push(Step { clients: 122, throughput: 600.0 });
        assert_eq!(RULE.next(&steps, 2), Next::Step(128));
        steps.push(Step { clients: 128, throughput: 601.0 });
        assert_eq!(RULE.next(&steps, 2), Next::Plateau(steps[6]));
        let zero = Rule { patience: 0, ..RULE };
        assert_eq!(zero.next(&steps[..2], 2), Next::Step(36));
        let flat = [steps[0], Step { clients: 24, throughput: 101.0 }];
        assert_eq!(zero.next(&flat, 2), Next::Plateau(flat[1]));
        assert_eq!(zero.describe(), ONE_STEP.describe());
    }

    #[test]
    fn a_raw_file_without_patience_reads_as_one_step() {
        let old = r#"{"start_per_process":8,"factor":1.5,"min_growth":0.03,"max_per_process":64}"#;
        let rule: Rule = serde_json::from_str(old).expect("an old rule parses");
        assert_eq!(rule, ONE_STEP);
        assert!(rule.describe().contains("until a step adds less than 3%"));
        assert!(RULE.describe().contains("until each of 2 steps in a row adds less than 3%"));
    }
}
