//! Property tests of the fast path of least-loaded and work-left ([`find_idle`]): arbitrary
//! groups (active slots anywhere in range), loads (huge, unreadable, weight 0), work figures,
//! idle bytes (any value a worker could write: right, stale, or set on inactive slots), ticks and
//! exclusions.
//!
//! - With the fast path on, least-loaded still returns a lightest candidate, never an inactive
//!   or excluded slot, and succeeds exactly when the scan alone does; a slot the fast path takes
//!   has nothing in flight.
//! - Work-left: a fast pick costs the least there is; with weights that differ it never takes
//!   the fast path.
//! - Stale bytes never change the answer's validity; with every idle byte 0 the answer is the
//!   scan's own; with right bytes and an idle candidate the fast path always finds one; with
//!   every candidate idle it picks what the scan picks (the same rotating start).
//! - `lowest_byte` is the index of the lowest nonzero byte.
mod common;

use std::cell::RefCell;

use balancer_common::{
    decide, lowest_byte, policy::lighter, work_left, Config, Draw, LoadSource, Policy, MAX_SLOTS,
    NO_SLOT,
};
use proptest::{collection::vec, prelude::*};

/// A load table as the program sees it: loads (`None`: unreadable), work figures, the group's
/// mean, and the idle bytes (which the fast path may clear).
#[derive(Clone, Debug)]
struct Table {
    loads: Vec<Option<(u64, u32)>>,
    work: Vec<(u64, u64)>,
    mean: u64,
    idle: RefCell<Vec<u8>>,
}

impl LoadSource for Table {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        self.loads.get(slot as usize).copied().flatten()
    }
    fn work(&self, slot: u32) -> (u64, u64) {
        self.work.get(slot as usize).copied().unwrap_or((0, 0))
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
    /// The same table with every idle byte 0: the fast path finds nothing, the scan decides.
    fn without_hints(&self) -> Table {
        Table { idle: RefCell::new(vec![0; MAX_SLOTS as usize]), ..self.clone() }
    }
    /// The same table with the right idle bytes: set exactly where nothing is in flight.
    fn with_right_hints(&self) -> Table {
        let idle = (0..MAX_SLOTS).map(|s| matches!(self.load(s), Some((0, _))) as u8).collect();
        Table { idle: RefCell::new(idle), ..self.clone() }
    }
}

fn one_load() -> impl Strategy<Value = Option<(u64, u32)>> {
    prop_oneof![
        6 => Just(Some((0, 1))),
        6 => (0u64..8, 0u32..4).prop_map(Some),
        1 => (any::<u64>(), any::<u32>()).prop_map(Some),
        1 => Just(None),
    ]
}

fn one_idle_byte() -> impl Strategy<Value = u8> {
    prop_oneof![4 => Just(0u8), 4 => Just(1u8), 1 => any::<u8>()]
}

fn one_work() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![4 => Just((0, 0)), 2 => (0u64..4, 0u64..1_000_000), 1 => (any::<u64>(), any::<u64>())]
}

/// A group: distinct active slots (in a small range or anywhere), loads, work and idle bytes for
/// all 256 slots.
fn table_and_slots() -> impl Strategy<Value = (Table, Vec<u32>)> {
    (
        prop_oneof![
            proptest::sample::subsequence((0..16u32).collect::<Vec<_>>(), 1..=16),
            proptest::sample::subsequence((0..MAX_SLOTS).collect::<Vec<_>>(), 1..=64),
        ],
        vec(one_load(), MAX_SLOTS as usize),
        vec(one_work(), MAX_SLOTS as usize),
        prop_oneof![Just(0u64), 0u64..100_000, any::<u64>()],
        vec(one_idle_byte(), MAX_SLOTS as usize),
    )
        .prop_map(|(slots, loads, work, mean, idle)| {
            (Table { loads, work, mean, idle: RefCell::new(idle) }, slots)
        })
}

fn config(policy: Policy, slots: &[u32], uniform_weight: u32) -> Config {
    let mut cfg = Config::empty(policy as u32);
    cfg.set_active(slots, uniform_weight);
    cfg
}

fn draw(tick: u32, now: u64) -> Draw {
    Draw { random: 0, hash: 0, tick, now }
}

/// The slot to exclude: none, one of the active ones, or any.
fn exclude(slots: &[u32], pick: u32) -> u32 {
    match pick % 3 {
        0 => NO_SLOT,
        1 => slots[(pick / 3) as usize % slots.len()],
        _ => pick % MAX_SLOTS,
    }
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn least_loaded_with_the_fast_path_is_still_a_minimum(
        (table, slots) in table_and_slots(), tick in any::<u32>(), pick in any::<u32>(),
    ) {
        let cfg = config(Policy::LeastLoaded, &slots, 1);
        let ex = exclude(&slots, pick);
        let d = draw(tick, 0);
        let scan_only = decide(&cfg, &d, ex, &table.without_hints());
        let got = decide(&cfg, &d, ex, &table);
        prop_assert_eq!(got.is_ok(), scan_only.is_ok(), "{:?} vs the scan's {:?}", got, scan_only);
        if let Ok(choice) = got {
            prop_assert!(slots.contains(&choice.slot), "inactive slot {}", choice.slot);
            prop_assert!(choice.slot != ex, "the excluded slot");
            let (l, w) = table.load(choice.slot).expect("a readable slot");
            if choice.fast {
                // Nothing in flight: no candidate is lighter.
                prop_assert_eq!(l, 0, "the fast path took a busy slot");
                for &s in slots.iter().filter(|&&s| s != ex) {
                    if let Some((ls, ws)) = table.load(s) {
                        prop_assert!(!lighter(ls, ws, l, w), "slot {} is lighter than the pick", s);
                    }
                }
            } else {
                // No fast pick: the scan's own answer (its minimum is tested in policy_props.rs).
                prop_assert_eq!(Ok(choice), scan_only);
            }
        }
    }

    #[test]
    fn work_left_fast_picks_cost_the_least_and_need_one_weight(
        (table, slots) in table_and_slots(), tick in any::<u32>(), pick in any::<u32>(),
        now in prop_oneof![Just(0u64), 1_000_000_000u64..10_000_000_000_000],
    ) {
        // Every active slot at weight 1, as the controller says (uniform_weight 1).
        let mut table = table;
        for &s in &slots {
            if let Some((l, _)) = table.loads[s as usize] {
                table.loads[s as usize] = Some((l, 1));
            }
        }
        let ex = exclude(&slots, pick);
        let d = draw(tick, now);
        let cfg = config(Policy::WorkLeft, &slots, 1);
        let got = decide(&cfg, &d, ex, &table);
        let scan_only = decide(&cfg, &d, ex, &table.without_hints());
        prop_assert_eq!(got.is_ok(), scan_only.is_ok());
        if let Ok(choice) = got {
            prop_assert!(slots.contains(&choice.slot) && choice.slot != ex);
            if choice.fast {
                let cost = |s: u32| {
                    let (l, _) = table.load(s).expect("readable");
                    let (wk, sum) = table.work(s);
                    work_left(l, table.mean, wk, sum, now / 1000)
                };
                let least = work_left(0, table.mean, 0, 0, now / 1000);
                prop_assert_eq!(cost(choice.slot), least);
                for &s in slots.iter().filter(|&&s| s != ex && table.load(s).is_some()) {
                    prop_assert!(cost(s) >= least, "slot {} costs less than an idle slot", s);
                }
            }
        }
        // Weights that differ (uniform_weight 0): never the fast path.
        let cfg = config(Policy::WorkLeft, &slots, 0);
        if let Ok(choice) = decide(&cfg, &d, ex, &table.with_right_hints()) {
            prop_assert!(!choice.fast, "work-left took the fast path with mixed weights");
        }
    }

    #[test]
    fn without_hints_the_scan_decides_and_with_right_ones_an_idle_slot_is_found(
        (table, slots) in table_and_slots(), tick in any::<u32>(), pick in any::<u32>(),
    ) {
        let cfg = config(Policy::LeastLoaded, &slots, 1);
        let mut no_fast = cfg;
        no_fast.idle_words = 0;
        let ex = exclude(&slots, pick);
        let d = draw(tick, 0);
        let none = table.without_hints();
        prop_assert_eq!(decide(&cfg, &d, ex, &none), decide(&no_fast, &d, ex, &none));

        let right = table.with_right_hints();
        let idle_candidate =
            slots.iter().any(|&s| s != ex && matches!(table.load(s), Some((0, _))));
        let got = decide(&cfg, &d, ex, &right);
        prop_assert_eq!(got.map(|c| c.fast).unwrap_or(false), idle_candidate, "{:?}", got);
        // With every candidate idle, the fast path picks what the scan picks.
        let all_idle = slots.iter().all(|&s| matches!(table.load(s), Some((0, _))));
        if all_idle {
            prop_assert_eq!(
                got.map(|c| c.slot),
                decide(&no_fast, &d, ex, &right).map(|c| c.slot)
            );
        }
    }

    #[test]
    fn a_stale_hint_is_cleared_and_idle_slots_keep_theirs(
        (table, slots) in table_and_slots(), tick in any::<u32>(),
    ) {
        let cfg = config(Policy::LeastLoaded, &slots, 1);
        let before = table.idle.borrow().clone();
        let _ = decide(&cfg, &draw(tick, 0), NO_SLOT, &table);
        let after = table.idle.borrow();
        for s in 0..MAX_SLOTS as usize {
            if after[s] != before[s] {
                prop_assert_eq!(after[s], 0, "slot {}: a byte was set", s);
                prop_assert!(!matches!(table.load(s as u32), Some((0, _))), "slot {}: an idle slot lost its byte", s);
            }
        }
    }

    #[test]
    fn lowest_byte_is_the_lowest_nonzero_byte(x in any::<u64>().prop_filter("nonzero", |x| *x != 0)) {
        prop_assert_eq!(lowest_byte(x), x.trailing_zeros() / 8);
    }
}
