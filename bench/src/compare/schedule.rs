//! The order in which `bench compare` runs the configurations in each round: a balanced Latin
//! square (Williams design).
//!
//! Invariant: over any multiple of `n` rounds every configuration runs in every position equally
//! often; for an even `n`, over `n` rounds, and for an odd `n`, over `2n` rounds, every
//! configuration also directly follows every other one equally often (so a configuration that
//! warms up or disturbs the next is charged to each equally).

/// Row `round` of a Williams square of order `n`: a permutation of `0..n`.
///
/// The first row is 0, 1, n-1, 2, n-2, ...; row r adds r (mod n). For an odd `n`, rounds
/// n..2n run the rows reversed, which completes the balance of who follows whom.
pub fn order(n: usize, round: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let mut first = Vec::with_capacity(n);
    let (mut lo, mut hi) = (0usize, n);
    for j in 0..n {
        if j % 2 == 0 {
            first.push(lo);
            lo += 1;
        } else {
            hi -= 1;
            first.push(hi);
        }
    }
    let r = round % n;
    let mut row: Vec<usize> = first.iter().map(|x| (x + r) % n).collect();
    if n % 2 == 1 && (round / n) % 2 == 1 {
        row.reverse();
    }
    row
}

/// Whether `rounds` rounds of `n` configurations are balanced for position (every configuration
/// in every position equally often).
pub fn balanced(n: usize, rounds: usize) -> bool {
    n > 0 && rounds.is_multiple_of(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(n: usize, rounds: usize, carryover: bool) {
        let mut pos = vec![vec![0usize; n]; n];
        let mut follows = vec![vec![0usize; n]; n];
        for r in 0..rounds {
            let row = order(n, r);
            let mut sorted = row.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "row {r} of {n} is a permutation");
            for (p, &c) in row.iter().enumerate() {
                pos[c][p] += 1;
            }
            for w in row.windows(2) {
                follows[w[0]][w[1]] += 1;
            }
        }
        for c in 0..n {
            assert!(pos[c].iter().all(|&k| k == rounds / n), "n={n}: positions {pos:?}");
        }
        if carryover && n > 1 {
            let want = follows[0][1];
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        assert_eq!(follows[a][b], want, "n={n}: follows {follows:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_configuration_in_every_position_and_after_every_other() {
        for n in [2, 4, 6, 8] {
            check(n, n, true);
        }
        for n in [3, 5, 7] {
            check(n, n, false);
            check(n, 2 * n, true);
        }
        check(1, 5, false);
        assert!(balanced(7, 14) && !balanced(7, 2));
    }
}
