//! Statistics of `bench compare`: percentiles of pooled samples, percentile-bootstrap confidence
//! intervals over rounds, and the one symmetric rule that turns a ratio's interval into a verdict.
//!
//! Owns the resampling. Its invariant: **every interval resamples whole rounds, and every
//! comparison draws the same rounds on both sides.** A round is the unit of the run's conditions
//! (every configuration of a round runs in one time window, in a balanced order), so the drift of
//! the machine from round to round is part of every interval, and a ratio's replicate is a ratio
//! measured under one draw of conditions.
//!
//! - [`RoundDraws`]: replicate b draws R rounds with replacement out of the R rounds run. One
//!   value for every configuration of one workload of one variant (seeded from the workload's
//!   identity, not the configuration's): the b-th replicates of two configurations are paired.
//! - A latency percentile (two-level bootstrap): for each round of replicate b's draw, resample
//!   that round's samples with replacement (as many as it has); pool; take the percentile. A round
//!   drawn twice contributes two independent resamples.
//! - Maximum throughput: one value per round; replicate b is the median of the values of the
//!   rounds of draw b.
//! - A ratio's interval (configuration / reference): the b-th replicate of one over the b-th of
//!   the other, both taken under draw b (latency and throughput alike).
//! - The rule, for every comparison alike: "better" if the 95% interval of the ratio lies entirely
//!   on the better side of 1, "worse" if entirely on the worse side, else "no difference".
//!
//! Everything is deterministic: the generators are seeded from the point's identity, so a report
//! regenerated from the same raw file is identical.
use crate::loadgen::Rng;

use super::raw::FAILED;

/// Nearest-rank `q`-quantile of sorted latencies in µs, in ms; a failure is infinite; NaN if none.
pub fn pct_sorted(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    to_ms(sorted[rank])
}

fn to_ms(us: u32) -> f64 {
    if us == FAILED {
        f64::INFINITY
    } else {
        us as f64 / 1000.0
    }
}

/// Nearest-rank quantile of unsorted values (selection, no full sort).
fn select_pct(v: &mut [u32], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    let (_, x, _) = v.select_nth_unstable(rank);
    to_ms(*x)
}

/// Samples beyond the `q`-quantile of `n`: fewer than 50 makes the percentile indicative.
pub fn beyond(n: usize, q: f64) -> f64 {
    n as f64 * (1.0 - q)
}

pub const MIN_BEYOND: f64 = 50.0;

/// A stable seed from a point's identity (FNV-1a).
pub fn seed_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Which rounds each bootstrap replicate draws: `b` draws of `rounds` round indices, with
/// replacement. Build one per workload of a variant and pass it to every configuration's
/// [`replicates`] and [`median_replicates`], so that their b-th replicates are paired.
pub struct RoundDraws {
    rounds: usize,
    /// Draw b is `picks[b * rounds..(b + 1) * rounds]`.
    picks: Vec<u32>,
}

impl RoundDraws {
    pub fn new(rounds: usize, b: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let picks = (0..b * rounds).map(|_| (rng.next_u64() % rounds as u64) as u32).collect();
        RoundDraws { rounds, picks }
    }

    /// The replicates' count.
    pub fn len(&self) -> usize {
        self.picks.len().checked_div(self.rounds).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rounds of each replicate, in order.
    fn each(&self) -> impl Iterator<Item = &[u32]> {
        self.picks.chunks_exact(self.rounds.max(1))
    }
}

/// Two-level bootstrap replicates of the quantiles `qs` of the pool of `rounds` (`rounds[r]` is
/// round r's samples; empty if the round has none): `out[i][b]` is quantile `qs[i]` of replicate
/// b, which takes the rounds of draw b of `draws` and resamples each within. A replicate whose
/// drawn rounds have no samples is NaN.
pub fn replicates(rounds: &[&[u32]], draws: &RoundDraws, qs: &[f64], seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let mut out = vec![Vec::with_capacity(draws.len()); qs.len()];
    let most = rounds.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut pool: Vec<u32> = Vec::with_capacity(most * draws.rounds);
    for draw in draws.each() {
        pool.clear();
        for r in draw.iter().filter_map(|&i| rounds.get(i as usize)) {
            for _ in 0..r.len() {
                pool.push(r[(rng.next_u64() % r.len() as u64) as usize]);
            }
        }
        for (i, q) in qs.iter().enumerate() {
            out[i].push(if pool.is_empty() { f64::NAN } else { select_pct(&mut pool, *q) });
        }
    }
    out
}

/// Bootstrap replicates of the median of per-round values (`values[r]` is round r's; NaN if the
/// round has none): replicate b is the median of the rounds of draw b of `draws`.
pub fn median_replicates(values: &[f64], draws: &RoundDraws) -> Vec<f64> {
    let mut v = Vec::with_capacity(draws.rounds);
    draws
        .each()
        .map(|draw| {
            v.clear();
            v.extend(draw.iter().filter_map(|&i| values.get(i as usize)).filter(|x| !x.is_nan()));
            median(&mut v)
        })
        .collect()
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// a / b with infinities ordered sensibly (∞/∞ = 1, x/∞ = 0, ∞/x = ∞).
pub fn ratio(a: f64, b: f64) -> f64 {
    match (a.is_infinite(), b.is_infinite()) {
        (true, true) => 1.0,
        (false, true) => 0.0,
        (true, false) => f64::INFINITY,
        _ => a / b,
    }
}

/// The 95% interval (2.5th and 97.5th percentiles) of replicates. A NaN replicate (its draw
/// took only rounds without a point) is left out; NaN if half or more of them are.
pub fn ci(reps: &[f64]) -> (f64, f64) {
    let mut v: Vec<f64> = reps.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() || 2 * v.len() <= reps.len() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    (at(0.025), at(0.975))
}

/// Replicates of the ratio a/b: the b-th replicate of `a` over the b-th of `b` (paired: both
/// taken under the same [`RoundDraws`]).
pub fn ratio_reps(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| ratio(*x, *y)).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Better,
    Worse,
    NoDifference,
    /// No interval (a point missing).
    Unknown,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::NoDifference => "no difference",
            Verdict::Unknown => "—",
        }
    }
}

/// The one rule: the ratio's 95% interval entirely below 1 or entirely above 1 decides;
/// `lower_is_better` says which side is better (latency: below; throughput: above).
pub fn verdict((lo, hi): (f64, f64), lower_is_better: bool) -> Verdict {
    if lo.is_nan() || hi.is_nan() {
        return Verdict::Unknown;
    }
    let (below, above) = (hi < 1.0, lo > 1.0);
    match (below, above, lower_is_better) {
        (true, _, true) | (_, true, false) => Verdict::Better,
        (true, _, false) | (_, true, true) => Verdict::Worse,
        _ => Verdict::NoDifference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lognormal-ish latencies (µs) from a seeded generator, sorted.
    fn sample(seed: u64, n: usize, scale: f64) -> Vec<u32> {
        let mut r = Rng::new(seed);
        let mut v: Vec<u32> = (0..n).map(|_| (scale * (1.0 + r.exp(1.0))) as u32).collect();
        v.sort_unstable();
        v
    }

    fn slices(rounds: &[Vec<u32>]) -> Vec<&[u32]> {
        rounds.iter().map(|v| v.as_slice()).collect()
    }

    /// p99 of `a` over p99 of `b`: its interval and verdict, both sides under `draws`.
    fn p99_verdict_under(
        a: &[Vec<u32>],
        b: &[Vec<u32>],
        draws: &RoundDraws,
    ) -> (Verdict, (f64, f64)) {
        let x = replicates(&slices(a), draws, &[0.99], 1).remove(0);
        let y = replicates(&slices(b), draws, &[0.99], 2).remove(0);
        let c = ci(&ratio_reps(&x, &y));
        (verdict(c, true), c)
    }

    fn p99_verdict(a: &[Vec<u32>], b: &[Vec<u32>]) -> (Verdict, (f64, f64)) {
        p99_verdict_under(a, b, &RoundDraws::new(a.len(), 1000, 9))
    }

    /// The method before rounds were resampled: every replicate takes every round once (and
    /// resamples within it). Kept here to show what the bootstrap over rounds changes.
    fn each_round_once(rounds: usize, b: usize) -> RoundDraws {
        RoundDraws { rounds, picks: (0..b).flat_map(|_| 0..rounds as u32).collect() }
    }

    /// Round r's latencies of one configuration: `sample` scaled by `scales[r]`.
    fn rounds_of(seed: u64, n: usize, scales: &[f64]) -> Vec<Vec<u32>> {
        scales.iter().enumerate().map(|(r, k)| sample(seed + r as u64, n, 10_000.0 * k)).collect()
    }

    /// Two samples of one distribution: the rule says "no difference" about 95% of the time (a
    /// 95% interval), and errs to either side alike.
    #[test]
    fn identical_distributions_make_no_difference() {
        let (mut none, mut better, mut worse) = (0, 0, 0);
        for s in 0..40u64 {
            let a: Vec<Vec<u32>> = (0..5).map(|r| sample(100 * s + r, 1000, 10_000.0)).collect();
            let b: Vec<Vec<u32>> =
                (0..5).map(|r| sample(100 * s + r + 50, 1000, 10_000.0)).collect();
            match p99_verdict(&a, &b).0 {
                Verdict::NoDifference => none += 1,
                Verdict::Better => better += 1,
                Verdict::Worse => worse += 1,
                Verdict::Unknown => panic!("no interval"),
            }
        }
        assert!(none >= 34, "no difference {none}/40 (better {better}, worse {worse})");
        assert!(better <= 4 && worse <= 4, "better {better}, worse {worse}");
    }

    #[test]
    fn a_clear_shift_is_better_one_way_and_worse_the_other() {
        let slow: Vec<Vec<u32>> = (0..5).map(|r| sample(r, 1000, 13_000.0)).collect();
        let fast: Vec<Vec<u32>> = (0..5).map(|r| sample(r + 10, 1000, 10_000.0)).collect();
        let (v, c) = p99_verdict(&fast, &slow);
        assert_eq!(v, Verdict::Better, "{c:?}");
        let (w, d) = p99_verdict(&slow, &fast);
        assert_eq!(w, Verdict::Worse, "{d:?}");
        // Symmetric: the intervals mirror each other around 1 (up to resampling noise).
        assert!((c.1 * d.0 - 1.0).abs() < 0.1, "{c:?} vs {d:?}");
    }

    /// X is faster than Y in some rounds and slower in others, by a round effect much larger than
    /// the sampling noise within a round (8 x 20 uniform was 0.91 "better" in one full run and
    /// 0.99 in the next): resampling only within rounds calls the pooled difference "worse";
    /// resampling the rounds says "no difference".
    #[test]
    fn a_round_effect_that_changes_sides_makes_no_difference() {
        let x = rounds_of(1, 2000, &[0.7, 1.4, 0.7, 1.4, 0.7, 1.4]);
        let y = rounds_of(101, 2000, &[1.0; 6]);
        let (old, c) = p99_verdict_under(&x, &y, &each_round_once(6, 1000));
        assert_eq!(old, Verdict::Worse, "within rounds only: {c:?}");
        let (new, d) = p99_verdict(&x, &y);
        assert_eq!(new, Verdict::NoDifference, "over rounds: {d:?}");
        assert!(d.1 - d.0 > 2.0 * (c.1 - c.0), "the drift widens the interval: {c:?} vs {d:?}");
    }

    /// Two configurations of one distribution whose every (configuration, round) has its own
    /// drift (a factor of up to about ±50%): over rounds the rule still says "no difference"
    /// most of the time; within rounds only it calls most of them a difference.
    #[test]
    fn drift_of_each_round_makes_no_difference_most_of_the_time() {
        let (mut none, mut none_within) = (0, 0);
        for s in 0..30u64 {
            let mut r = Rng::new(7 + s);
            let mut drift = || (0..6).map(|_| (0.5 * (r.unit() + r.unit() - 1.0)).exp()).collect();
            let (sx, sy): (Vec<f64>, Vec<f64>) = (drift(), drift());
            let x = rounds_of(1000 * s, 1000, &sx);
            let y = rounds_of(1000 * s + 500, 1000, &sy);
            let draws = RoundDraws::new(6, 500, s);
            none += (p99_verdict_under(&x, &y, &draws).0 == Verdict::NoDifference) as usize;
            let within = p99_verdict_under(&x, &y, &each_round_once(6, 500)).0;
            none_within += (within == Verdict::NoDifference) as usize;
        }
        // 27 and 8 here: a bootstrap over 6 rounds covers somewhat less than its nominal 95%.
        assert!(none >= 25, "over rounds: no difference {none}/30");
        assert!(none_within <= 15, "within rounds only: no difference {none_within}/30");
    }

    /// A drift that every configuration of a round shares (the machine's state in that time
    /// window) cancels in a ratio when both sides draw the same rounds: a shift of 15% in every
    /// round is "better" however much the rounds differ, and "no difference" if the two sides
    /// drew their rounds independently.
    #[test]
    fn a_consistent_shift_is_better_when_the_rounds_are_paired() {
        let shared = [0.6, 1.5, 0.8, 1.2, 1.0, 0.7, 1.4, 0.9];
        let fast: Vec<f64> = shared.iter().map(|k| 0.85 * k).collect();
        let x = rounds_of(1, 1000, &fast);
        let y = rounds_of(101, 1000, &shared);
        let (v, c) = p99_verdict(&x, &y);
        assert_eq!(v, Verdict::Better, "{c:?}");
        let xr = replicates(&slices(&x), &RoundDraws::new(8, 1000, 3), &[0.99], 1).remove(0);
        let yr = replicates(&slices(&y), &RoundDraws::new(8, 1000, 4), &[0.99], 2).remove(0);
        let unpaired = ci(&ratio_reps(&xr, &yr));
        assert_eq!(verdict(unpaired, true), Verdict::NoDifference, "{unpaired:?}");
        // Throughput alike: 3% more in every round, rounds ±25% apart.
        let e = [400.0, 520.0, 300.0, 450.0, 350.0, 480.0, 380.0, 330.0];
        let f: Vec<f64> = e.iter().map(|x| 1.03 * x).collect();
        let draws = RoundDraws::new(8, 1000, 5);
        let paired =
            ci(&ratio_reps(&median_replicates(&f, &draws), &median_replicates(&e, &draws)));
        assert_eq!(verdict(paired, false), Verdict::Better, "{paired:?}");
        let other = RoundDraws::new(8, 1000, 6);
        let apart = ci(&ratio_reps(&median_replicates(&f, &draws), &median_replicates(&e, &other)));
        assert_eq!(verdict(apart, false), Verdict::NoDifference, "{apart:?}");
    }

    /// A missing round (no point) is left out of the replicates that draw it, not counted as 0.
    #[test]
    fn a_missing_round_is_left_out() {
        let draws = RoundDraws::new(3, 200, 1);
        assert_eq!(draws.len(), 200);
        let reps = median_replicates(&[100.0, f64::NAN, 100.0], &draws);
        assert!(reps.iter().all(|&x| x == 100.0 || x.is_nan()), "{reps:?}");
        let one = [5000u32; 10];
        let lat = replicates(&[&one, &[], &one], &draws, &[0.5], 1).remove(0);
        assert!(lat.iter().all(|&x| x == 5.0 || x.is_nan()), "{lat:?}");
        // Only a draw of round 1 alone has nothing (1 in 27): the interval leaves it out.
        assert!(lat.iter().any(|x| x.is_nan()) && lat.iter().filter(|x| x.is_nan()).count() < 20);
        assert_eq!(ci(&lat), (5.0, 5.0));
        assert_eq!(ci(&reps), (100.0, 100.0));
        assert!(ci(&[f64::NAN; 10]).0.is_nan(), "no point, no interval");
    }

    #[test]
    fn throughput_rule_is_the_mirror_of_latency() {
        assert_eq!(verdict((1.02, 1.10), false), Verdict::Better);
        assert_eq!(verdict((0.90, 0.98), false), Verdict::Worse);
        assert_eq!(verdict((0.98, 1.02), false), Verdict::NoDifference);
        assert_eq!(verdict((0.90, 0.98), true), Verdict::Better);
        assert_eq!(verdict((f64::NAN, 1.0), true), Verdict::Unknown);
        let draws = RoundDraws::new(5, 1000, 3);
        let up = median_replicates(&[110.0, 111.0, 112.0, 110.5, 111.5], &draws);
        let down = median_replicates(&[100.0, 101.0, 99.0, 100.5, 99.5], &draws);
        assert_eq!(verdict(ci(&ratio_reps(&up, &down)), false), Verdict::Better);
    }

    #[test]
    fn failures_are_infinitely_slow() {
        let mut v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        v[99] = FAILED;
        assert_eq!(pct_sorted(&v, 1.0), f64::INFINITY);
        assert_eq!(pct_sorted(&v, 0.5), 50.0);
        assert_eq!(ratio(f64::INFINITY, 5.0), f64::INFINITY);
        assert!(beyond(5000, 0.99) >= MIN_BEYOND && beyond(5000, 0.999) < MIN_BEYOND);
    }
}
