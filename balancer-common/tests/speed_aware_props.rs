//! Property tests of speed-aware: arbitrary groups (active slots anywhere in range), loads,
//! last progress times, recent response times (at the mean's pace, slow, any value a worker
//! could write), group means (0, ordinary, huge), idle bytes (right or any), ticks and fixed
//! limits.
//!
//! - The stall limit is STALL_FACTOR x the mean, within [floor, ceiling], the ceiling for a mean
//!   of 0, and never overflows whatever the mean.
//! - The pick is never a stalled slot while an active one is not stalled, and it has the least
//!   cost, `(count + 1) * slowness - 1` per weight, of the slots that are not (all of them when
//!   every slot is stalled); a fixed `blocked_after_ms` is the limit when set.
//! - Slowness is 1 below SLOW_FACTOR times the mean (and without a mean), else the ratio, at
//!   most SLOWNESS_CAP.
//! - The fast path never picks a slow idle slot, and never clears a slow slot's idle byte; with
//!   right idle bytes, a fast idle slot and at most STALE_TRIES slow ones, the pick is a fast
//!   idle slot.
//! - With speeds equal and nothing stalled, speed-aware picks exactly what least-loaded picks.
//! - The recent response time moves 1/8 of the way up to a longer answer and half the way down to
//!   a shorter one, and stays between the two; a worker that answers at the group's pace again
//!   after a block stops being slow within a few answers.
mod common;

use std::cell::RefCell;

use balancer_common::{
    decide, is_blocked, policy::lighter, recent_next, recent_now, slowness, stall_limit_ns, Config,
    Draw, LoadSource, Policy, MAX_SLOTS, NO_SLOT, SLOWNESS_CAP, SLOW_FACTOR, STALE_TRIES,
    STALL_CEILING_NS, STALL_FACTOR, STALL_FLOOR_NS,
};
use proptest::{collection::vec, prelude::*};

/// CLOCK_MONOTONIC at every selection of these tests, in ns.
const NOW: u64 = 1 << 40;

/// A load table: loads, progress, recent response times, the group's mean and the idle bytes.
#[derive(Clone, Debug)]
struct Table {
    loads: Vec<(u64, u32)>,
    progress: Vec<u64>,
    recent: Vec<(u64, u64)>,
    mean: u64,
    idle: RefCell<Vec<u8>>,
}

impl LoadSource for Table {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        self.loads.get(slot as usize).copied()
    }
    fn progress(&self, slot: u32) -> u64 {
        self.progress.get(slot as usize).copied().unwrap_or(0)
    }
    fn recent(&self, slot: u32) -> (u64, u64) {
        self.recent.get(slot as usize).copied().unwrap_or((0, 0))
    }
    fn group_mean_us(&self) -> u64 {
        self.mean
    }
    fn idle_word(&self, w: u32) -> u64 {
        common::idle_word(&self.idle, w)
    }
    fn clear_idle(&self, slot: u32) {
        common::clear_idle(&self.idle, slot)
    }
}

impl Table {
    /// Whether `slot` is stalled under `limit_ns`.
    fn stalled(&self, slot: u32, limit_ns: u64) -> bool {
        is_blocked(self.loads[slot as usize].0, self.progress[slot as usize], NOW, limit_ns)
    }
    /// `slot`'s slowness, computed here the plain way (nothing is slow without a mean).
    fn slowness(&self, slot: u32) -> u64 {
        let (r, at) = self.recent[slot as usize];
        let mean = (self.mean & ((1 << 62) - 1)).min(1 << 24);
        let ratio = recent_now(r, at, self.mean, NOW / 1000) / mean.max(1);
        if mean != 0 && ratio >= SLOW_FACTOR {
            ratio.min(SLOWNESS_CAP)
        } else {
            1
        }
    }
    fn slow(&self, slot: u32) -> bool {
        self.slowness(slot) > 1
    }
    /// Speed-aware's cost of `slot`: its count, weighed by its slowness when it is slow.
    fn cost(&self, slot: u32) -> u64 {
        let count = self.loads[slot as usize].0;
        match self.slowness(slot) {
            1 => count,
            k => (count.min(1 << 20) + 1) * k - 1,
        }
    }
    /// Idle bytes set exactly where nothing is in flight.
    fn right_hints(mut self) -> Table {
        self.idle = RefCell::new(self.loads.iter().map(|&(l, _)| (l == 0) as u8).collect());
        self
    }
}

/// A slot's recent response time for a group mean `mean`: about the mean, slow (2 to 80
/// times, set up to 4 s ago, so decayed or not), or anything.
fn one_recent(mean: u64) -> impl Strategy<Value = (u64, u64)> {
    let now_us = NOW / 1000;
    prop_oneof![
        4 => (0..=mean * 2).prop_map(move |e| (e, now_us)),
        3 => (2u64..80, 0u64..4_000_000).prop_map(move |(k, ago)| (mean * k + 1, now_us - ago)),
        1 => (any::<u64>(), any::<u64>()),
    ]
}

/// A group: distinct active slots, and a table for all 256 slots.
fn table_and_slots() -> impl Strategy<Value = (Table, Vec<u32>)> {
    let mean = prop_oneof![Just(0u64), 1u64..20_000, any::<u64>()];
    mean.prop_flat_map(|mean| {
        (
            prop_oneof![
                proptest::sample::subsequence((0..16u32).collect::<Vec<_>>(), 1..=16),
                proptest::sample::subsequence((0..MAX_SLOTS).collect::<Vec<_>>(), 1..=64),
            ],
            vec(prop_oneof![3 => Just((0u64, 1u32)), 3 => (0u64..6, 1u32..3)], MAX_SLOTS as usize),
            // Ages in ms: fresh, past any adaptive limit, or a progress in the future.
            vec(prop_oneof![0u64..15, 15u64..3_000, Just(u64::MAX)], MAX_SLOTS as usize),
            vec(one_recent(mean.min(1 << 24)), MAX_SLOTS as usize),
            vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], MAX_SLOTS as usize),
        )
            .prop_map(move |(slots, loads, ages, recent, idle)| {
                let progress = ages
                    .iter()
                    .map(|&a| if a == u64::MAX { NOW + 5_000_000 } else { NOW - a * 1_000_000 })
                    .collect();
                (Table { loads, progress, recent, mean, idle: RefCell::new(idle) }, slots)
            })
    })
}

fn config(policy: Policy, slots: &[u32], blocked_after_ms: u32) -> Config {
    let mut cfg = Config::empty(policy as u32);
    cfg.set_active(slots, 1);
    cfg.blocked_after_ms = blocked_after_ms;
    cfg
}

fn draw(tick: u32) -> Draw {
    Draw { random: 0, hash: 0, tick, now: NOW }
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn the_stall_limit_is_a_bounded_multiple_of_the_mean(mean in prop_oneof![Just(0u64), 0u64..1 << 26, any::<u64>()]) {
        let limit = stall_limit_ns(mean);
        prop_assert!((STALL_FLOOR_NS..=STALL_CEILING_NS).contains(&limit));
        let expected = match mean.min(1 << 24) {
            0 => STALL_CEILING_NS,
            m => (m * STALL_FACTOR * 1000).clamp(STALL_FLOOR_NS, STALL_CEILING_NS),
        };
        prop_assert_eq!(limit, expected);
    }

    #[test]
    fn the_pick_is_never_stalled_while_another_slot_is_not(
        (table, slots) in table_and_slots(), tick in any::<u32>(), fixed_ms in prop_oneof![3 => Just(0u32), 1 => 1u32..100],
    ) {
        let cfg = config(Policy::SpeedAware, &slots, fixed_ms);
        let limit = if fixed_ms != 0 { fixed_ms as u64 * 1_000_000 } else { stall_limit_ns(table.mean) };
        let choice = decide(&cfg, &draw(tick), NO_SLOT, &table).expect("a pick");
        prop_assert!(slots.contains(&choice.slot), "inactive slot {}", choice.slot);
        let free: Vec<u32> = slots.iter().copied().filter(|&s| !table.stalled(s, limit)).collect();
        let pool = if free.is_empty() { slots.clone() } else { free.clone() };
        prop_assert!(pool.contains(&choice.slot), "picked {} outside {:?}", choice.slot, pool);
        let (c, w) = (table.cost(choice.slot), table.loads[choice.slot as usize].1);
        for &s in &pool {
            let (cs, ws) = (table.cost(s), table.loads[s as usize].1);
            let heavier = if free.is_empty() { cs < c } else { lighter(cs, ws, c, w) };
            prop_assert!(!heavier, "slot {} is lighter than the pick {}", s, choice.slot);
        }
        if !choice.fast {
            prop_assert_eq!(choice.passed_blocked, !free.is_empty() && free.len() < slots.len());
        }
    }

    #[test]
    fn the_fast_path_passes_over_slow_idle_slots_and_keeps_their_bytes(
        (table, slots) in table_and_slots(), tick in any::<u32>(),
    ) {
        let table = table.right_hints();
        let cfg = config(Policy::SpeedAware, &slots, 0);
        let idle = |s: u32| table.loads[s as usize].0 == 0;
        let slow_idle: Vec<u32> = slots.iter().copied().filter(|&s| idle(s) && table.slow(s)).collect();
        let fast_idle = slots.iter().any(|&s| idle(s) && !table.slow(s));
        let choice = decide(&cfg, &draw(tick), NO_SLOT, &table).expect("a pick");
        if choice.fast {
            prop_assert!(idle(choice.slot) && !table.slow(choice.slot), "the fast path took slot {}", choice.slot);
        }
        if fast_idle && slow_idle.len() <= STALE_TRIES as usize {
            prop_assert!(choice.fast && !table.slow(choice.slot), "{:?} while a fast idle slot was free", choice);
        }
        for &s in &slow_idle {
            prop_assert_eq!(table.idle.borrow()[s as usize], 1, "slot {}'s idle byte was cleared", s);
        }
    }

    #[test]
    fn with_equal_speeds_and_no_stall_speed_aware_picks_what_least_loaded_picks(
        (table, slots) in table_and_slots(), tick in any::<u32>(), right in any::<bool>(),
    ) {
        let mut table = if right { table.right_hints() } else { table };
        let now_us = NOW / 1000;
        table.recent = vec![(table.mean.min(1 << 24), now_us); MAX_SLOTS as usize];
        table.progress = vec![NOW; MAX_SLOTS as usize];
        let theirs = table.clone();
        let mine = decide(&config(Policy::SpeedAware, &slots, 0), &draw(tick), NO_SLOT, &table);
        let ll = decide(&config(Policy::LeastLoaded, &slots, 0), &draw(tick), NO_SLOT, &theirs);
        prop_assert_eq!(mine, ll);
        prop_assert_eq!(table.idle.borrow().clone(), theirs.idle.borrow().clone());
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn slowness_is_one_below_the_factor_else_the_capped_ratio(
        recent in prop_oneof![0u64..1 << 26, any::<u64>()], ago in prop_oneof![0u64..1 << 24, any::<u64>()],
        mean in prop_oneof![Just(0u64), 1u64..1 << 25, any::<u64>()],
    ) {
        let now_us = NOW / 1000;
        let at = now_us.wrapping_sub(ago);
        let got = slowness(recent, at, mean, now_us);
        let m = (mean & ((1 << 62) - 1)).min(1 << 24);
        let ratio = recent_now(recent, at, mean, now_us) / m.max(1);
        let want = if m != 0 && ratio >= SLOW_FACTOR { ratio.min(SLOWNESS_CAP) } else { 1 };
        prop_assert_eq!(got, want);
    }
}

/// A worker 12 times slower than the group's mean, idle, beside three fast ones with `busy`
/// each in flight: the pick of speed-aware and of least-loaded (at every tick).
fn slow_idle_against(busy: u64) -> Vec<(u32, u32)> {
    let mean = 5_000;
    let now_us = NOW / 1000;
    let mut table = Table {
        loads: vec![(busy, 1); MAX_SLOTS as usize],
        progress: vec![NOW; MAX_SLOTS as usize],
        recent: vec![(mean, now_us); MAX_SLOTS as usize],
        mean,
        idle: RefCell::new(vec![0; MAX_SLOTS as usize]),
    };
    table.loads[2] = (0, 1);
    table.recent[2] = (12 * mean, now_us);
    let table = table.right_hints();
    let slots = [0, 1, 2, 3];
    (0..8)
        .map(|tick| {
            let pick =
                |p: Policy| decide(&config(p, &slots, 0), &draw(tick), NO_SLOT, &table.clone());
            (pick(Policy::SpeedAware).unwrap().slot, pick(Policy::LeastLoaded).unwrap().slot)
        })
        .collect()
}

#[test]
fn a_slow_idle_worker_waits_until_the_fast_ones_hold_its_slowness() {
    // Fast workers with 2 in flight: least-loaded gives the idle slow worker the connection,
    // speed-aware (cost 11 against 2) does not.
    for (mine, ll) in slow_idle_against(2) {
        assert_eq!(ll, 2);
        assert_ne!(mine, 2);
    }
    // With 12 in flight each, the slow worker's expected delay (cost 11) is the least.
    for (mine, _) in slow_idle_against(12) {
        assert_eq!(mine, 2);
    }
}

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn the_recent_time_rises_an_eighth_and_falls_half_way(pace in 0u64..1 << 25, took in 0u64..1 << 25) {
        let next = recent_next(pace, took);
        prop_assert!(next >= pace.min(took) && next <= pace.max(took));
        if took >= pace {
            prop_assert_eq!(next, pace + (took - pace) / 8);
        } else {
            prop_assert_eq!(next, pace - (pace - took) / 2);
        }
    }
}

/// Slowness, against a group mean of 10 ms, of a worker whose recent time was at the mean when
/// a 2 s block began, after it answered the block's request and 4 queued ones (2 s each), then
/// `fast` answers at the mean's pace, all at one instant (no decay), with `step` as the shim's
/// averaging.
fn slowness_after_a_block(fast: usize, step: impl Fn(u64, u64) -> u64) -> u64 {
    let mean = 10_000;
    let mut recent = mean;
    for took in std::iter::repeat_n(2_000_000, 5).chain(std::iter::repeat_n(mean, fast)) {
        recent = step(recent, took);
    }
    slowness(recent, NOW / 1000, mean, NOW / 1000)
}

#[test]
fn a_worker_answering_at_pace_after_a_block_is_soon_not_slow() {
    // Right after the block's answers it is slow, whatever the averaging.
    assert_eq!(slowness_after_a_block(0, recent_next), SLOWNESS_CAP);
    // Six answers at the group's pace later it is not.
    assert_eq!(slowness_after_a_block(6, recent_next), 1);
    // The control: an average that moves 1/8 of the way down as up (the shim's before this test)
    // still calls it slow after 12 such answers, and a slow worker gets work only when the others
    // hold its slowness: left idle, it waited seconds for the decay after every block. With it,
    // speed-aware's p99 on 8 x 20 blocked was 8.81 x nginx's at 60% and 1.33 x at 90%
    // (docs/benchmarks/issue23/run8); with this averaging, 1.03 and 0.90, no difference (README).
    let symmetric = |pace: u64, took: u64| pace - pace / 8 + took / 8;
    assert!(slowness_after_a_block(12, symmetric) > 1);
}

#[test]
fn speed_aware_has_its_names() {
    for name in ["speed-aware", "speed_aware", "speed"] {
        assert_eq!(name.parse::<Policy>(), Ok(Policy::SpeedAware), "{name}");
    }
    assert_eq!(Policy::from_id(7), Some(Policy::SpeedAware));
    assert_eq!(Policy::SpeedAware.name(), "speed-aware");
}
