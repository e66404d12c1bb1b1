//! Statistics of `bench compare`: percentiles of pooled samples, percentile-bootstrap confidence
//! intervals, and the one symmetric rule that turns a ratio's interval into a verdict.
//!
//! - A latency percentile's interval: resample each round's samples with replacement (stratified
//!   by round, so every replicate has each round's weight), pool, take the percentile; B times.
//! - A ratio's interval (configuration / reference): each replicate resamples both points
//!   independently; the b-th replicate of one over the b-th of the other.
//! - Maximum throughput: one value per round; replicates resample the rounds; the statistic is
//!   the median.
//! - The rule, for every comparison alike: "better" if the 95% interval of the ratio lies entirely
//!   on the better side of 1, "worse" if entirely on the worse side, else "no difference".
//!
//! Everything is deterministic: the generator is seeded from the point's identity, so a report
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

/// Bootstrap replicates of the quantiles `qs` of the pool of `rounds` (each a round's samples):
/// `out[i][b]` is quantile `qs[i]` of replicate b. Empty rounds are skipped; no samples: NaN.
pub fn replicates(rounds: &[&[u32]], qs: &[f64], b: usize, seed: u64) -> Vec<Vec<f64>> {
    let total: usize = rounds.iter().map(|r| r.len()).sum();
    if total == 0 {
        return qs.iter().map(|_| vec![f64::NAN; b]).collect();
    }
    let mut rng = Rng::new(seed);
    let mut out = vec![Vec::with_capacity(b); qs.len()];
    let mut pool: Vec<u32> = Vec::with_capacity(total);
    for _ in 0..b {
        pool.clear();
        for r in rounds.iter().filter(|r| !r.is_empty()) {
            for _ in 0..r.len() {
                pool.push(r[(rng.next_u64() % r.len() as u64) as usize]);
            }
        }
        for (i, q) in qs.iter().enumerate() {
            out[i].push(select_pct(&mut pool, *q));
        }
    }
    out
}

/// Bootstrap replicates of the median of per-round values (resampling the rounds).
pub fn median_replicates(values: &[f64], b: usize, seed: u64) -> Vec<f64> {
    if values.is_empty() {
        return vec![f64::NAN; b];
    }
    let mut rng = Rng::new(seed);
    let mut v = vec![0.0; values.len()];
    (0..b)
        .map(|_| {
            for x in v.iter_mut() {
                *x = values[(rng.next_u64() % values.len() as u64) as usize];
            }
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

/// The 95% interval (2.5th and 97.5th percentiles) of replicates; NaN if any is NaN.
pub fn ci(reps: &[f64]) -> (f64, f64) {
    if reps.is_empty() || reps.iter().any(|x| x.is_nan()) {
        return (f64::NAN, f64::NAN);
    }
    let mut v = reps.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    (at(0.025), at(0.975))
}

/// Replicates of the ratio a/b, pairing independent replicates.
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

    fn p99_verdict(a: &[Vec<u32>], b: &[Vec<u32>]) -> (Verdict, (f64, f64)) {
        let ra: Vec<&[u32]> = a.iter().map(|v| v.as_slice()).collect();
        let rb: Vec<&[u32]> = b.iter().map(|v| v.as_slice()).collect();
        let x = replicates(&ra, &[0.99], 1000, 1).remove(0);
        let y = replicates(&rb, &[0.99], 1000, 2).remove(0);
        let c = ci(&ratio_reps(&x, &y));
        (verdict(c, true), c)
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

    #[test]
    fn throughput_rule_is_the_mirror_of_latency() {
        assert_eq!(verdict((1.02, 1.10), false), Verdict::Better);
        assert_eq!(verdict((0.90, 0.98), false), Verdict::Worse);
        assert_eq!(verdict((0.98, 1.02), false), Verdict::NoDifference);
        assert_eq!(verdict((0.90, 0.98), true), Verdict::Better);
        assert_eq!(verdict((f64::NAN, 1.0), true), Verdict::Unknown);
        let up = median_replicates(&[110.0, 111.0, 112.0, 110.5, 111.5], 1000, 3);
        let down = median_replicates(&[100.0, 101.0, 99.0, 100.5, 99.5], 1000, 4);
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
