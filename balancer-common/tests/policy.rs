//! The selection policy on the host: the same code the eBPF program runs, with plain arrays.
use balancer_common::{
    choose, Config, Draw, Event, Family, LoadSource, Policy, UnknownPolicy, MAX_SLOTS, NO_SLOT,
};

/// Loads of slots 0..N as (in flight, weight); slots beyond read as unreadable.
struct Loads(Vec<(u64, u32)>);

impl LoadSource for Loads {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        self.0.get(slot as usize).copied()
    }
}

fn config(policy: Policy, active: &[u32]) -> Config {
    let mut cfg = Config::empty(policy as u32);
    cfg.active[..active.len()].copy_from_slice(active);
    cfg.n_active = active.len() as u32;
    cfg
}

/// A draw whose random number and tick are both `n` (the scans start at the tick, p2c picks
/// with the random number).
fn draw(n: u32) -> Draw {
    Draw { random: n, hash: 0, tick: n, now: 0 }
}

fn unweighted(loads: &[u64]) -> Loads {
    Loads(loads.iter().map(|&l| (l, 1)).collect())
}

#[test]
fn least_loaded_picks_the_minimum_whatever_the_start() {
    let cfg = config(Policy::LeastLoaded, &[0, 1, 2, 3]);
    let loads = unweighted(&[5, 3, 7, 4]);
    for random in 0..16 {
        assert_eq!(choose(&cfg, &draw(random), NO_SLOT, &loads), Ok(1));
    }
}

#[test]
fn least_loaded_divides_by_weight() {
    let cfg = config(Policy::LeastLoaded, &[0, 1]);
    // 8 in flight on a worker of weight 4 is lighter than 3 on a worker of weight 1.
    let loads = Loads(vec![(8, 4), (3, 1)]);
    assert_eq!(choose(&cfg, &draw(1), NO_SLOT, &loads), Ok(0));
    // Weight 0 counts as 1.
    let loads = Loads(vec![(2, 0), (1, 1)]);
    assert_eq!(choose(&cfg, &draw(0), NO_SLOT, &loads), Ok(1));
}

#[test]
fn least_loaded_ties_spread_over_all_tied_slots() {
    let cfg = config(Policy::LeastLoaded, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let loads = unweighted(&[2, 1, 1, 9, 1, 1, 1, 1]);
    let mut seen = [0u32; 8];
    for random in 0..800 {
        let slot = choose(&cfg, &draw(random), NO_SLOT, &loads).unwrap();
        seen[slot as usize] += 1;
    }
    assert_eq!((seen[0], seen[3]), (0, 0), "never a heavier slot: {seen:?}");
    for slot in [1, 2, 4, 5, 6, 7] {
        assert!(
            seen[slot] >= 100,
            "tied slot {slot} chosen only {} times of 800: {seen:?}",
            seen[slot]
        );
    }
}

/// Equal loads take turns: over `n` consecutive ticks every one of `n` equally loaded slots wins
/// exactly once (a random start gave some two or three in a row).
#[test]
fn least_loaded_work_left_and_speed_aware_rotate_among_equal_slots() {
    for policy in [Policy::LeastLoaded, Policy::WorkLeft, Policy::SpeedAware] {
        let cfg = config(policy, &[4, 7, 9]);
        let mut raw = vec![(0, 1); 16];
        raw[4] = (2, 1);
        raw[7] = (2, 1);
        raw[9] = (2, 1);
        for first in [0u32, 5, 1000] {
            let mut won: Vec<u32> = (first..first + 3)
                .map(|t| choose(&cfg, &draw(t), NO_SLOT, &Loads(raw.clone())).unwrap())
                .collect();
            won.sort();
            assert_eq!(won, [4, 7, 9], "{policy:?} from tick {first}");
        }
    }
}

#[test]
fn least_loaded_uses_the_dense_active_list() {
    // Slots 3, 9 and 200 active; loads of other slots are irrelevant.
    let mut raw = vec![(0, 1); 256];
    raw[3] = (4, 1);
    raw[9] = (2, 1);
    raw[200] = (3, 1);
    let cfg = config(Policy::LeastLoaded, &[3, 9, 200]);
    assert_eq!(choose(&cfg, &draw(7), NO_SLOT, &Loads(raw)), Ok(9));
}

#[test]
fn exclusion_skips_the_closing_slot() {
    let loads = unweighted(&[0, 5, 6]);
    for policy in Policy::ALL {
        let cfg = config(policy, &[0, 1, 2]);
        for random in 0..50 {
            let d = Draw { random, hash: random, tick: random, now: 0 };
            let slot = choose(&cfg, &d, 0, &loads).unwrap();
            assert_ne!(slot, 0, "{policy:?} chose the excluded slot");
        }
    }
    // The only slot excluded: nothing to choose.
    let cfg = config(Policy::LeastLoaded, &[0]);
    assert_eq!(choose(&cfg, &draw(0), 0, &loads), Err(Event::FallbackSelectFailed));
}

#[test]
fn p2c_picks_two_distinct_slots_and_the_lighter() {
    let cfg = config(Policy::PowerOfTwo, &[0, 1, 2, 3]);
    // Slot 2 is heaviest: with two distinct picks it can never win.
    let loads = unweighted(&[1, 1, 100, 1]);
    let mut seen = [0u32; 4];
    for random in 0..4000u32 {
        let r = random.wrapping_mul(2654435761);
        seen[choose(&cfg, &draw(r), NO_SLOT, &loads).unwrap() as usize] += 1;
    }
    assert_eq!(seen[2], 0, "{seen:?}");
    assert!(seen.iter().enumerate().filter(|(i, _)| *i != 2).all(|(_, &c)| c > 800), "{seen:?}");
}

#[test]
fn p2c_with_one_slot() {
    let cfg = config(Policy::PowerOfTwo, &[5]);
    let loads = Loads(vec![(0, 1); 8]);
    assert_eq!(choose(&cfg, &draw(12345), NO_SLOT, &loads), Ok(5));
}

#[test]
fn round_robin_cycles_through_active_slots() {
    let cfg = config(Policy::RoundRobin, &[2, 4, 6]);
    let loads = Loads(vec![(0, 1); 8]);
    let order: Vec<u32> = (0..6)
        .map(|tick| {
            choose(&cfg, &Draw { random: 0, hash: 0, tick, now: 0 }, NO_SLOT, &loads).unwrap()
        })
        .collect();
    assert_eq!(order, [2, 4, 6, 2, 4, 6]);
}

#[test]
fn hash_maps_the_connection_hash_onto_active_slots() {
    let cfg = config(Policy::Hash, &[1, 3]);
    let loads = Loads(vec![(0, 1); 4]);
    assert_eq!(
        choose(&cfg, &Draw { random: 0, hash: 10, tick: 0, now: 0 }, NO_SLOT, &loads),
        Ok(1)
    );
    assert_eq!(
        choose(&cfg, &Draw { random: 0, hash: 11, tick: 0, now: 0 }, NO_SLOT, &loads),
        Ok(3)
    );
}

#[test]
fn errors_name_their_reason() {
    let loads = Loads(vec![(0, 1); 4]);
    assert_eq!(
        choose(&config(Policy::LeastLoaded, &[]), &draw(0), NO_SLOT, &loads),
        Err(Event::FallbackNoActive)
    );
    let mut too_many = config(Policy::LeastLoaded, &[0]);
    too_many.n_active = MAX_SLOTS + 1;
    assert_eq!(choose(&too_many, &draw(0), NO_SLOT, &loads), Err(Event::FallbackBadConfig));
    let mut bad_policy = config(Policy::LeastLoaded, &[0]);
    bad_policy.policy = 99;
    assert_eq!(choose(&bad_policy, &draw(0), NO_SLOT, &loads), Err(Event::FallbackBadConfig));
    // Active entries pointing outside the slot range are skipped, never used as an index.
    let mut garbage = config(Policy::LeastLoaded, &[0]);
    garbage.active[0] = 4096;
    assert_eq!(choose(&garbage, &draw(0), NO_SLOT, &loads), Err(Event::FallbackSelectFailed));
    // Unreadable loads are skipped too.
    assert_eq!(
        choose(&config(Policy::LeastLoaded, &[7]), &draw(0), NO_SLOT, &loads),
        Err(Event::FallbackSelectFailed)
    );
}

#[test]
fn herding_is_prevented_by_counting_each_assignment() {
    // Simulates the program: every choice is counted at once, before any completion.
    let cfg = config(Policy::LeastLoaded, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let mut loads = unweighted(&[0; 8]);
    for i in 0..803u32 {
        let slot = choose(&cfg, &draw(i.wrapping_mul(2654435761)), NO_SLOT, &loads).unwrap();
        loads.0[slot as usize].0 += 1;
    }
    let counts: Vec<u64> = loads.0.iter().map(|l| l.0).collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "{counts:?}");
}

#[test]
fn policy_names_round_trip() {
    for p in Policy::ALL {
        assert_eq!(p.name().parse::<Policy>(), Ok(p));
        assert_eq!(Policy::from_id(p as u32), Some(p));
    }
    assert!("fastest".parse::<Policy>().is_err());
    let past = Policy::ALL.iter().map(|&p| p as u32).max().unwrap() + 1;
    assert_eq!(Policy::from_id(past), None);
    assert_eq!(Policy::from_id(u32::MAX), None);
}

/// Loads whose estimate figures must not be read: the count family's scan weighs counts alone.
struct CountsOnly(Loads);

impl LoadSource for CountsOnly {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        self.0.load(slot)
    }
    fn work(&self, slot: u32) -> (u64, u64) {
        panic!("work figures of slot {slot} read by a count-family scan")
    }
    fn recent(&self, slot: u32) -> (u64, u64) {
        panic!("recent time of slot {slot} read by a count-family scan")
    }
    fn group_mean_us(&self) -> u64 {
        panic!("group mean read by a count-family scan")
    }
}

#[test]
fn the_count_family_scans_without_the_estimates() {
    for policy in Policy::ALL {
        let family = policy.family();
        let estimates = policy == Policy::WorkLeft;
        assert_eq!(family == Some(Family::Estimates), estimates, "{policy:?}: {family:?}");
        if family != Some(Family::Counts) {
            continue;
        }
        // Every slot busy (pack at depth 1 is full), so least-loaded and pack scan them all.
        let cfg = config(policy, &[0, 1, 2, 3]);
        let loads = CountsOnly(unweighted(&[5, 3, 7, 4]));
        for tick in 0..8 {
            let slot = choose(&cfg, &draw(tick), NO_SLOT, &loads).unwrap();
            if policy != Policy::PowerOfTwo {
                assert_eq!(slot, 1, "{policy:?}");
            }
        }
    }
}

#[test]
fn only_the_policies_that_use_them_get_the_clock_and_a_random_number() {
    for policy in Policy::ALL {
        // Work-left reads ages; speed-aware its stall limit and its recent times.
        let ages = matches!(policy, Policy::WorkLeft | Policy::SpeedAware);
        assert_eq!(policy.reads_clock(), ages, "{policy:?}");
        assert_eq!(policy.draws_random(), policy == Policy::PowerOfTwo, "{policy:?}");
    }
}

/// A retired policy's name is not unknown: its error says it was retired and what to use.
#[test]
fn a_retired_policy_name_says_what_to_use_instead() {
    for name in ["peak-ewma", "peak_ewma"] {
        let err = name.parse::<Policy>().unwrap_err();
        assert!(
            matches!(err, UnknownPolicy::Retired { instead: Policy::SpeedAware, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with("policy `peak-ewma` was retired ("), "{text}");
        assert!(text.contains("use `speed-aware`"), "{text}");
    }
    assert_eq!("fastest".parse::<Policy>().unwrap_err(), UnknownPolicy::Unknown);
    assert!(Policy::ALL.iter().all(|p| p.name() != "peak-ewma"));
    assert_eq!(Policy::from_id(6), None, "peak-ewma's id is not reused");
}
