//! Property tests of the selection policy: arbitrary configs (any slot count up to 300, active
//! entries in and out of range, unknown policy ids), loads (huge, unreadable, weight 0), draws
//! and exclusions.
//!
//! - work-left: its cost never overflows or panics whatever a worker wrote, grows with the count
//!   and with the ages, and the scan picks a cheapest candidate (chunked like the program).
//! - speed-aware's recent time, decayed: always between the worker's figure and the group's
//!   mean, moving toward the mean as time passes, below 2^25 whatever a worker wrote.
//! - The blocked check: least-loaded picks the lightest unblocked slot (the lightest blocked one
//!   when all are), p2c changes its pick only to leave a blocked slot, and `blocked_mask` (the
//!   branch-free form the scan uses) agrees with `is_blocked`.
//! - `choose` never panics; `Ok(slot)` is always an active slot, in range, never the excluded one;
//!   every error is the documented one for its cause.
//! - least-loaded returns a lightest readable candidate (the first after its start, the tick), and
//!   fails only when there is none; the `bpf_loop`-style scan (one call per chunk, as the program runs it) agrees with the plain loop.
//! - pack picks the first slot in dense order (never the excluded one) whose count is below
//!   depth x weight (depth 0 counting as 1), passing over blocked slots; when there is none it
//!   picks exactly what least-loaded picks on the same input.
//! - Fairness, simulating the program (each choice counted at once, as its atomic add does):
//!   least-loaded keeps equal-weight slots within 1 of each other when nothing completes, and
//!   weighted slots within one connection of their share; after random completions it never
//!   widens the spread and closes it again; p2c stays within a few connections over 10,000
//!   choices on 64 slots (fixed seeds, bounds measured against an ideal two-choice process);
//!   round robin is exact.
use balancer_common::{
    choose, decide, is_blocked, policy::lighter, policy::RECENT_HALF_LIFE_SHIFT, recent_now,
    work_left, Config, Cost, Draw, Event, LoadSource, Policy, Scan, MAX_SLOTS, NO_SLOT,
};
use proptest::{collection::vec, prelude::*, sample::Index, test_runner::TestRng};

// ---------------------------------------------------------------------------------------------
// Inputs

/// Loads of slots 0..N (`None`: unreadable); slots beyond the vector are unreadable too.
#[derive(Clone, Debug, Default)]
struct Loads(Vec<Option<(u64, u32)>>);

impl LoadSource for Loads {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        self.0.get(slot as usize).copied().flatten()
    }
}

/// Loads with a last-progress time per slot (the blocked check's input).
struct TimedLoads {
    loads: Loads,
    progress: Vec<u64>,
}

impl LoadSource for TimedLoads {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        self.loads.load(slot)
    }
    fn progress(&self, slot: u32) -> u64 {
        self.progress.get(slot as usize).copied().unwrap_or(0)
    }
}

/// The same loads, scanned the way the eBPF program does it: one call per chunk, driven by a
/// counter as `bpf_loop` drives `scan_step`, instead of the default loop.
struct ChunkedLoads<'a>(&'a Loads);

impl LoadSource for ChunkedLoads<'_> {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        self.0.load(slot)
    }
    fn run_scan<C: Cost>(&self, cfg: &Config, scan: &mut Scan) {
        for index in 0..Scan::chunks(scan.n) {
            scan.visit_chunk::<C, Self>(cfg, index, self);
        }
    }
}

fn policy_id() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..6, 1 => 6u32..10, 1 => any::<u32>()]
}

/// Mostly valid slots; sometimes just out of range, anything, or the "no slot" sentinel.
fn active_entry() -> impl Strategy<Value = u32> {
    prop_oneof![12 => 0..MAX_SLOTS, 1 => MAX_SLOTS..MAX_SLOTS + 64, 1 => any::<u32>(), 1 => Just(NO_SLOT)]
}

fn one_load() -> impl Strategy<Value = Option<(u64, u32)>> {
    prop_oneof![
        12 => (0u64..64, 0u32..6).prop_map(Some),
        2 => (any::<u64>(), any::<u32>()).prop_map(Some),
        1 => (Just(u64::MAX), Just(0u32)).prop_map(Some),
        1 => Just(None),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        policy_id(),
        prop_oneof![6 => 0u32..=MAX_SLOTS, 1 => MAX_SLOTS + 1..=300],
        vec(active_entry(), MAX_SLOTS as usize),
    )
        .prop_map(|(policy, n_active, entries)| {
            let mut cfg = Config::empty(policy);
            cfg.n_active = n_active;
            cfg.active.copy_from_slice(&entries);
            cfg
        })
}

fn draw() -> impl Strategy<Value = Draw> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(random, hash, tick)| Draw {
        random,
        hash,
        tick,
        now: 0,
    })
}

/// Nothing excluded, an active slot, or any number.
#[derive(Clone, Debug)]
enum Exclude {
    Nothing,
    Active(Index),
    Raw(u32),
}

fn exclude() -> impl Strategy<Value = Exclude> {
    prop_oneof![
        2 => Just(Exclude::Nothing),
        2 => any::<Index>().prop_map(Exclude::Active),
        1 => (0..MAX_SLOTS + 4).prop_map(Exclude::Raw),
    ]
}

impl Exclude {
    fn slot(&self, cfg: &Config) -> u32 {
        match self {
            Exclude::Nothing => NO_SLOT,
            Exclude::Active(i) if !cfg.active_slots().is_empty() => *i.get(cfg.active_slots()),
            Exclude::Active(_) => NO_SLOT,
            Exclude::Raw(s) => *s,
        }
    }
}

/// What the scan compares: the load capped at 2^31 - 1, over the weight (0 counts as 1), as an
/// exact fraction.
fn weighted((load, weight): (u64, u32)) -> (u128, u128) {
    (load.min((1 << 30) - 1) as u128, weight.max(1) as u128)
}

fn no_heavier(a: (u64, u32), b: (u64, u32)) -> bool {
    let ((la, wa), (lb, wb)) = (weighted(a), weighted(b));
    la * wb <= lb * wa
}

fn usable(slot: u32, exclude: u32) -> bool {
    slot < MAX_SLOTS && slot != exclude
}

/// `n` cases, and no failure files: a failure prints its minimal input, to be turned into a
/// plain test.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Safety: any input

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn never_an_inactive_or_excluded_slot(cfg in config(), loads in vec(one_load(), 0..=300), d in draw(), ex in exclude()) {
        let loads = Loads(loads);
        let exclude = ex.slot(&cfg);
        let result = choose(&cfg, &d, exclude, &loads);
        match result {
            Ok(slot) => {
                prop_assert!(slot < MAX_SLOTS, "slot {} out of range", slot);
                prop_assert_ne!(slot, exclude, "the excluded slot");
                prop_assert!(cfg.active_slots().contains(&slot), "slot {} not in the active list", slot);
            }
            Err(e) => {
                let expected = if cfg.n_active == 0 {
                    Event::FallbackNoActive
                } else if cfg.n_active > MAX_SLOTS || Policy::from_id(cfg.policy).is_none() {
                    Event::FallbackBadConfig
                } else {
                    Event::FallbackSelectFailed
                };
                prop_assert_eq!(e, expected);
            }
        }
        // A config out of range never selects anything.
        if cfg.n_active == 0 || cfg.n_active > MAX_SLOTS || Policy::from_id(cfg.policy).is_none() {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn least_loaded_is_a_minimum_and_fails_only_without_candidates(
        mut cfg in config(), loads in vec(one_load(), 0..=300), d in draw(), ex in exclude()
    ) {
        cfg.policy = Policy::LeastLoaded as u32;
        cfg.n_active = cfg.n_active.min(MAX_SLOTS);
        let loads = Loads(loads);
        let exclude = ex.slot(&cfg);
        let result = choose(&cfg, &d, exclude, &loads);
        let candidates: Vec<(u32, (u64, u32))> = cfg
            .active_slots()
            .iter()
            .filter(|&&s| usable(s, exclude))
            .filter_map(|&s| loads.load(s).map(|l| (s, l)))
            .collect();
        match result {
            Ok(slot) => {
                let own = loads.load(slot);
                prop_assert!(own.is_some(), "slot {} cannot be read", slot);
                for &(other, load) in &candidates {
                    prop_assert!(no_heavier(own.unwrap(), load), "slot {} {:?} is heavier than slot {} {:?}", slot, own, other, load);
                }
            }
            Err(e) if cfg.n_active == 0 => prop_assert_eq!(e, Event::FallbackNoActive),
            Err(e) => {
                prop_assert_eq!(e, Event::FallbackSelectFailed);
                prop_assert!(candidates.is_empty(), "nothing chosen among {:?}", candidates);
            }
        }
        // Ties go to the first lightest slot after the start, this CPU's tick (so ties take turns).
        let n = cfg.active_slots().len();
        if n > 0 && !candidates.is_empty() {
            let start = d.tick as usize % n;
            let min = candidates.iter().map(|&(_, l)| l).reduce(|a, b| if no_heavier(a, b) { a } else { b }).unwrap();
            let first = (0..n)
                .map(|k| cfg.active[(start + k) % n])
                .find(|&s| usable(s, exclude) && loads.load(s).is_some_and(|l| no_heavier(l, min)));
            prop_assert_eq!(result.ok(), first);
        }
        // The program's chunked scan gives the very same answer.
        prop_assert_eq!(choose(&cfg, &d, exclude, &ChunkedLoads(&loads)), result);
    }

    #[test]
    fn round_robin_and_hash_take_the_drawn_slot_or_the_next(
        mut cfg in config(), loads in vec(one_load(), 0..=300), d in draw(), ex in exclude(), hash in any::<bool>()
    ) {
        cfg.policy = if hash { Policy::Hash } else { Policy::RoundRobin } as u32;
        cfg.n_active = cfg.n_active.clamp(1, MAX_SLOTS);
        let exclude = ex.slot(&cfg);
        let active = cfg.active_slots();
        let n = active.len();
        let i = if hash { d.hash } else { d.tick } as usize % n;
        let (first, next) = (active[i], active[(i + 1) % n]);
        let expected = if usable(first, exclude) {
            Ok(first)
        } else if n > 1 && usable(next, exclude) {
            Ok(next)
        } else {
            Err(Event::FallbackSelectFailed)
        };
        // Loads play no part.
        prop_assert_eq!(choose(&cfg, &d, exclude, &Loads(loads)), expected);
        prop_assert_eq!(choose(&cfg, &d, exclude, &Loads(Vec::new())), expected);
    }

    #[test]
    fn p2c_never_picks_a_slot_heavier_than_all_others(
        n in 2usize..=MAX_SLOTS as usize, slots in Just(()).prop_perturb(|_, mut rng| distinct_slots(&mut rng)),
        heavy in any::<Index>(), base in vec(0u64..100, MAX_SLOTS as usize), d in draw()
    ) {
        // Distinct, readable, usable slots; one of them strictly heavier than every other.
        let active = &slots[..n];
        let heavy = *heavy.get(active);
        let mut loads = Loads(base.iter().map(|&l| Some((l, 1))).collect());
        loads.0[heavy as usize] = Some((1000, 1));
        let mut cfg = Config::empty(Policy::PowerOfTwo as u32);
        cfg.active[..n].copy_from_slice(active);
        cfg.n_active = n as u32;
        let slot = choose(&cfg, &d, NO_SLOT, &loads);
        prop_assert!(slot.is_ok());
        prop_assert_ne!(slot.unwrap(), heavy);
    }

    #[test]
    fn pack_takes_the_first_slot_below_its_depth_and_else_the_least_loaded(
        mut cfg in config(), loads in vec(one_load(), 0..=300), d in draw(), ex in exclude(),
        depth in prop_oneof![Just(0u32), 1u32..6, Just(u32::MAX)]
    ) {
        cfg.policy = Policy::Pack as u32;
        cfg.n_active = cfg.n_active.min(MAX_SLOTS);
        cfg.pack_depth = depth;
        let loads = Loads(loads);
        let exclude = ex.slot(&cfg);
        let result = choose(&cfg, &d, exclude, &loads);
        let room = |(count, weight): (u64, u32)| {
            (count as u128) < depth.max(1) as u128 * weight.max(1) as u128
        };
        // Dense order is the order of `active`, whatever the slot numbers.
        let first = cfg
            .active_slots()
            .iter()
            .copied()
            .find(|&s| usable(s, exclude) && loads.load(s).is_some_and(room));
        match first {
            Some(slot) => prop_assert_eq!(result, Ok(slot)),
            None => {
                let mut ll = cfg;
                ll.policy = Policy::LeastLoaded as u32;
                prop_assert_eq!(result, choose(&ll, &d, exclude, &loads));
            }
        }
        if let Ok(slot) = result {
            prop_assert_ne!(slot, exclude, "the excluded slot");
        }
    }

    #[test]
    fn pack_passes_over_blocked_slots(
        n in 1usize..=64,
        loads in vec((0u64..6, 0u32..3), 64),
        ages in vec(prop_oneof![0u64..2_000, 2_000u64..10_000], 64),
        d in draw(),
        limit_ms in prop_oneof![Just(0u32), 1u32..5],
        depth in 0u32..4
    ) {
        let now: u64 = 1 << 40;
        let progress: Vec<u64> = ages.iter().map(|&a| now - a * 1_000).collect();
        let mut cfg = Config::empty(Policy::Pack as u32);
        for i in 0..n { cfg.active[i] = i as u32; }
        cfg.n_active = n as u32;
        cfg.blocked_after_ms = limit_ms;
        cfg.pack_depth = depth;
        let timed = TimedLoads {
            loads: Loads(loads.iter().map(|&l| Some(l)).collect()),
            progress: progress.clone(),
        };
        let d = Draw { now, ..d };
        let limit = limit_ms as u64 * 1_000_000;
        let blocked = |s: usize| is_blocked(loads[s].0, progress[s], now, limit);
        let room = |s: usize| loads[s].0 < depth.max(1) as u64 * loads[s].1.max(1) as u64;
        let choice = decide(&cfg, &d, NO_SLOT, &timed).unwrap();
        match (0..n).find(|&s| room(s) && !blocked(s)) {
            Some(s) => {
                prop_assert_eq!(choice.slot as usize, s);
                prop_assert_eq!(choice.passed_blocked, (0..s).any(|b| room(b) && blocked(b)));
            }
            None => {
                let mut ll = cfg;
                ll.policy = Policy::LeastLoaded as u32;
                prop_assert_eq!(Ok(choice), decide(&ll, &d, NO_SLOT, &timed));
            }
        }
    }

    #[test]
    fn least_loaded_passes_over_blocked_slots_while_another_is_free(
        n in 1usize..=64, loads in vec((0u64..6, 1u32..3), 64), ages in vec(prop_oneof![0u64..2_000, 2_000u64..10_000, Just(u64::MAX / 4)], 64),
        d in draw(), limit_ms in prop_oneof![Just(0u32), 1u32..5]
    ) {
        // Slots 0..n, ages in ms before `now`; one case in three is another clock (in the future).
        let now: u64 = 1 << 40;
        let progress: Vec<u64> = ages.iter().map(|&a| if a == u64::MAX / 4 { now + 5_000_000 } else { now - a * 1_000 }).collect();
        let mut cfg = Config::empty(Policy::LeastLoaded as u32);
        for i in 0..n { cfg.active[i] = i as u32; }
        cfg.n_active = n as u32;
        cfg.blocked_after_ms = limit_ms;
        let timed = TimedLoads { loads: Loads(loads.iter().map(|&l| Some(l)).collect()), progress: progress.clone() };
        let d = Draw { now, ..d };
        let limit = limit_ms as u64 * 1_000_000;
        let blocked = |s: usize| is_blocked(loads[s].0, progress[s], now, limit);
        let choice = decide(&cfg, &d, NO_SLOT, &timed).unwrap();
        let free: Vec<usize> = (0..n).filter(|&s| !blocked(s)).collect();
        let pool: Vec<usize> = if free.is_empty() { (0..n).collect() } else { free.clone() };
        // The choice is a lightest slot of the pool: the unblocked slots (by load per weight), or,
        // when every slot is blocked, all of them (by load alone).
        prop_assert!(pool.contains(&(choice.slot as usize)), "picked {} outside {:?}", choice.slot, pool);
        let (l, w) = loads[choice.slot as usize];
        for &s in &pool {
            let heavier = if free.is_empty() { loads[s].0 < l } else { lighter(loads[s].0, loads[s].1, l, w) };
            prop_assert!(!heavier, "slot {} is lighter than the pick {}", s, choice.slot);
        }
        // Counted as steered away: some slot was blocked, and the pick is not.
        prop_assert_eq!(choice.passed_blocked, !free.is_empty() && (0..n).any(blocked));
        // With the check off, or no clock, the pick is the plain least-loaded one.
        if limit_ms == 0 {
            prop_assert_eq!(Ok(choice.slot), choose(&cfg, &Draw { now: 0, ..d }, NO_SLOT, &timed.loads));
        }
        prop_assert_eq!(decide(&cfg, &Draw { now: 0, ..d }, NO_SLOT, &timed).map(|c| c.slot), choose(&cfg, &Draw { now: 0, ..d }, NO_SLOT, &timed.loads));
    }

    #[test]
    fn the_branch_free_blocked_test_agrees_with_the_plain_one(
        load in prop_oneof![Just(0u64), 1u64..100, any::<u64>()], now in any::<u64>(),
        delta in prop_oneof![-(1i64 << 40)..(1i64 << 40), Just(0i64)], limit_ms in 0u32..=600_000
    ) {
        let limit = limit_ms as u64 * 1_000_000;
        let progress = now.wrapping_sub(delta as u64);
        let load = load.min((1 << 30) - 1);
        let enabled = if limit != 0 { u64::MAX } else { 0 };
        let mask = balancer_common::policy::blocked_mask(load, progress, now, limit, enabled);
        prop_assert!(mask == 0 || mask == u64::MAX);
        prop_assert_eq!(mask != 0, is_blocked(load, progress, now, limit));
    }

    #[test]
    fn p2c_takes_the_unblocked_one_of_its_two(
        n in 2usize..=64, loads in vec((0u64..6, 1u32..3), 64), stale in vec(any::<bool>(), 64), d in draw()
    ) {
        let now: u64 = 1 << 40;
        let progress: Vec<u64> = stale.iter().map(|&st| if st { now - 10_000_000_000 } else { now }).collect();
        let mut cfg = Config::empty(Policy::PowerOfTwo as u32);
        for i in 0..n { cfg.active[i] = i as u32; }
        cfg.n_active = n as u32;
        cfg.blocked_after_ms = 1000;
        let timed = TimedLoads { loads: Loads(loads.iter().map(|&l| Some(l)).collect()), progress };
        let blocked = |s: u32| is_blocked(loads[s as usize].0, timed.progress[s as usize], now, 1_000_000_000);
        let with = decide(&cfg, &Draw { now, ..d }, NO_SLOT, &timed).unwrap();
        let without = decide(&cfg, &Draw { now: 0, ..d }, NO_SLOT, &timed).unwrap();
        prop_assert!(!without.passed_blocked);
        if with.slot != without.slot {
            // Changed only to leave a blocked slot for one that is not.
            prop_assert!(blocked(without.slot) && !blocked(with.slot) && with.passed_blocked);
        } else {
            prop_assert!(!with.passed_blocked);
        }
    }

    #[test]
    fn lighter_is_exact_and_cannot_overflow(
        a in prop_oneof![0u64..8, any::<u64>()], wa in prop_oneof![0u32..4, any::<u32>()],
        b in prop_oneof![0u64..8, any::<u64>()], wb in prop_oneof![0u32..4, any::<u32>()],
    ) {
        let clamp = |x: u64| x.min(u32::MAX as u64) as u128;
        let expected = clamp(a) * (wb.max(1) as u128) < clamp(b) * (wa.max(1) as u128);
        prop_assert_eq!(lighter(a, wa, b, wb), expected);
    }
}

/// All 256 slots in a random order (take a prefix for distinct random slots).
fn distinct_slots(rng: &mut TestRng) -> Vec<u32> {
    let mut slots: Vec<u32> = (0..MAX_SLOTS).collect();
    for i in (1..slots.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        slots.swap(i, j);
    }
    slots
}

// ---------------------------------------------------------------------------------------------
// Fairness: the program's accounting, simulated

/// A small deterministic generator for the per-connection draws of a simulation (the program
/// uses `bpf_get_prandom_u32`), seeded by proptest.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A group of `n` workers on distinct random slots, all with weight `weight`.
fn group(policy: Policy, slots: &[u32], n: usize) -> Config {
    let mut cfg = Config::empty(policy as u32);
    cfg.active[..n].copy_from_slice(&slots[..n]);
    cfg.n_active = n as u32;
    cfg
}

/// One connection, as the program handles it: choose, then count the assignment at once.
fn assign(cfg: &Config, loads: &mut Loads, rng: &mut SplitMix, tick: u32) -> u32 {
    let d = Draw { random: rng.u32(), hash: rng.u32(), tick, now: 0 };
    let slot = choose(cfg, &d, NO_SLOT, loads).expect("every slot is usable");
    let l = loads.0[slot as usize].as_mut().unwrap();
    l.0 += 1;
    slot
}

fn spread(cfg: &Config, loads: &Loads) -> u64 {
    let v: Vec<u64> = cfg.active_slots().iter().map(|&s| loads.load(s).unwrap().0).collect();
    v.iter().max().unwrap() - v.iter().min().unwrap()
}

fn slot_vec() -> impl Strategy<Value = Vec<u32>> {
    Just(()).prop_perturb(|_, mut rng| distinct_slots(&mut rng))
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn least_loaded_keeps_equal_weights_within_one(
        n in 1usize..=MAX_SLOTS as usize, weight in 0u32..5, start in 0u64..3, steps in 1usize..3000,
        seed in any::<u64>(), slots in slot_vec()
    ) {
        let cfg = group(Policy::LeastLoaded, &slots, n);
        let mut loads = Loads(vec![Some((start, weight)); MAX_SLOTS as usize]);
        let mut rng = SplitMix(seed);
        for step in 0..steps {
            assign(&cfg, &mut loads, &mut rng, 0);
            prop_assert!(spread(&cfg, &loads) <= 1, "spread {} after {} assignments", spread(&cfg, &loads), step + 1);
        }
    }

    #[test]
    fn least_loaded_keeps_each_weight_within_one_connection_of_its_share(
        weights in vec(0u32..8, 1..=64), steps in 1usize..3000, seed in any::<u64>(), slots in slot_vec()
    ) {
        // No completions: a slot was the lightest when it got its last connection, and the others
        // only grew since, so (load - 1) / weight <= every other load / weight.
        let n = weights.len();
        let cfg = group(Policy::LeastLoaded, &slots, n);
        let mut loads = Loads(vec![Some((0, 1)); MAX_SLOTS as usize]);
        for (i, &w) in weights.iter().enumerate() {
            loads.0[slots[i] as usize] = Some((0, w));
        }
        let mut rng = SplitMix(seed);
        for _ in 0..steps {
            assign(&cfg, &mut loads, &mut rng, 0);
        }
        for &a in cfg.active_slots() {
            let (la, wa) = loads.load(a).unwrap();
            if la == 0 {
                continue;
            }
            for &b in cfg.active_slots() {
                let (lb, wb) = loads.load(b).unwrap();
                prop_assert!(
                    (la - 1) * wb.max(1) as u64 <= lb * wa.max(1) as u64,
                    "slot {} ({} at weight {}) is more than a connection over slot {} ({} at weight {})", a, la, wa, b, lb, wb
                );
            }
        }
    }

    #[test]
    fn least_loaded_with_completions_never_widens_and_then_closes_the_spread(
        n in 2usize..=64, steps in 1usize..3000, complete_pct in 0u64..100, seed in any::<u64>(), slots in slot_vec()
    ) {
        let cfg = group(Policy::LeastLoaded, &slots, n);
        let mut loads = Loads(vec![Some((0, 1)); MAX_SLOTS as usize]);
        let mut rng = SplitMix(seed);
        for _ in 0..steps {
            // A worker finishes one of its connections, at random.
            if rng.next() % 100 < complete_pct {
                let s = cfg.active[rng.below(n)] as usize;
                let l = loads.0[s].as_mut().unwrap();
                l.0 = l.0.saturating_sub(1);
            }
            let before = spread(&cfg, &loads);
            assign(&cfg, &mut loads, &mut rng, 0);
            let after = spread(&cfg, &loads);
            prop_assert!(after <= before.max(1), "an assignment widened the spread from {} to {}", before, after);
        }
        // Completions stop: each assignment goes to a lightest slot, so after as many as the
        // lighter slots are short of the heaviest, the spread is back to 1 at most.
        let max = cfg.active_slots().iter().map(|&s| loads.load(s).unwrap().0).max().unwrap();
        let short: u64 = cfg.active_slots().iter().map(|&s| max - loads.load(s).unwrap().0).sum();
        for _ in 0..short {
            assign(&cfg, &mut loads, &mut rng, 0);
        }
        prop_assert!(spread(&cfg, &loads) <= 1, "spread {} after {} catch-up assignments", spread(&cfg, &loads), short);
    }

    #[test]
    fn round_robin_is_exact(n in 1usize..=MAX_SLOTS as usize, rounds in 1u32..20, first_tick in any::<u32>(), slots in slot_vec()) {
        let cfg = group(Policy::RoundRobin, &slots, n);
        let mut loads = Loads(vec![Some((0, 1)); MAX_SLOTS as usize]);
        let mut rng = SplitMix(0);
        // Start where the tick is a multiple of n and far from wrapping (u32::MAX + 1 is not a
        // multiple of most n: one slot is taken twice in a row there, once per 2^32 connections).
        let first = (first_tick % (u32::MAX / 2)) / n as u32 * n as u32;
        for k in 0..rounds * n as u32 {
            let slot = assign(&cfg, &mut loads, &mut rng, first + k);
            prop_assert_eq!(slot, slots[(k as usize) % n]);
        }
        for &s in cfg.active_slots() {
            prop_assert_eq!(loads.load(s).unwrap().0, rounds as u64);
        }
    }
}

/// p2c is not exact: two random picks leave some slots a few connections behind. Measured here
/// for 64 slots and 10,000 choices over 400 seeds (the same as an ideal two-choice process with
/// its own random generator): the spread at the end is 3 to 9, 4.5 on average; the widest at any
/// moment of a run is 6 to 11. One random choice (the kernel's hash) ends about 50 apart.
/// Deterministic seeds, bounds with a margin: this test cannot flake.
#[test]
fn p2c_stays_within_a_few_connections_over_10k_choices() {
    let slots: Vec<u32> = (0..MAX_SLOTS).rev().step_by(3).take(64).collect();
    let cfg = group(Policy::PowerOfTwo, &slots, 64);
    let runs = 32;
    let mut finals = Vec::new();
    for seed in 0..runs {
        let mut loads = Loads(vec![Some((0, 1)); MAX_SLOTS as usize]);
        let mut rng = SplitMix(seed);
        let mut worst = 0;
        for _ in 0..10_000 {
            assign(&cfg, &mut loads, &mut rng, 0);
            worst = worst.max(spread(&cfg, &loads));
        }
        let last = spread(&cfg, &loads);
        assert!(worst <= 16, "seed {seed}: spread reached {worst} over 10,000 choices on 64 slots");
        assert!(last <= 12, "seed {seed}: spread {last} after 10,000 choices on 64 slots");
        finals.push(last);
    }
    let mean = finals.iter().sum::<u64>() as f64 / runs as f64;
    assert!(mean <= 6.0, "mean spread {mean:.2} after 10,000 choices on 64 slots: {finals:?}");
    println!("p2c, 64 slots, 10,000 choices: final spread {finals:?}, mean {mean:.2}");
}

// ---------------------------------------------------------------------------------------------
// work-left

/// Loads with the figures of work-left: per slot `(working, start_sum_us)` (missing: 0), and the
/// group's mean.
#[derive(Default)]
struct FigureLoads {
    loads: Loads,
    work: Vec<(u64, u64)>,
    mean_us: u64,
}

impl LoadSource for FigureLoads {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        self.loads.load(slot)
    }
    fn work(&self, slot: u32) -> (u64, u64) {
        self.work.get(slot as usize).copied().unwrap_or((0, 0))
    }
    fn group_mean_us(&self) -> u64 {
        self.mean_us
    }
}

/// `choose` picks a readable active candidate of the least `cost` (per weight), and fails only
/// when there is none.
fn chooses_a_cheapest(
    cfg: &Config,
    d: &Draw,
    loads: &FigureLoads,
    cost: impl Fn(u32) -> (u64, u32),
) -> Result<(), TestCaseError> {
    let candidates: Vec<u32> =
        cfg.active_slots().iter().copied().filter(|&s| loads.load(s).is_some()).collect();
    match choose(cfg, d, NO_SLOT, loads) {
        Ok(slot) => {
            let (c, w) = cost(slot);
            for &other in &candidates {
                let (oc, ow) = cost(other);
                prop_assert!(
                    !lighter(oc, ow, c, w),
                    "slot {} {:?} is dearer than slot {} {:?}",
                    slot,
                    (c, w),
                    other,
                    (oc, ow)
                );
            }
        }
        Err(_) => prop_assert!(candidates.is_empty(), "nothing chosen among {:?}", candidates),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Any figures (a worker may write anything): no panic (debug builds check overflow), and
    /// the cost stays below 2^62.
    #[test]
    fn work_left_is_total(inflight in any::<u64>(), mean in any::<u64>(), working in any::<u64>(), sum in any::<u64>(), now in any::<u64>()) {
        prop_assert!(work_left(inflight, mean, working, sum, now) < 1 << 62);
    }

    /// With sane figures: one more in flight never costs less, and older requests (an earlier
    /// start, the same count) never cost less.
    #[test]
    fn work_left_grows_with_count_and_age(inflight in 0u64..1000, mean in 0u64..1_000_000, working in 1u64..100, age in 0u64..10_000_000, now in 100_000_000u64..1_000_000_000_000, older in 1u64..1_000_000) {
        let sum = working * now - age;
        let cost = work_left(inflight, mean, working, sum, now);
        prop_assert!(work_left(inflight + 1, mean, working, sum, now) >= cost);
        prop_assert!(work_left(inflight, mean, working, sum.saturating_sub(older), now) >= cost);
        // The ages add up: `working` requests started at `sum` have `age` between them.
        prop_assert_eq!(cost, (inflight + 1) * (mean + 1) + age.min((1 << 30) - 1));
    }

    /// work-left picks a candidate of the least cost (readable, usable, per weight), and the
    /// chunked scan of the program agrees.
    #[test]
    fn work_left_picks_a_cheapest_candidate(
        mut cfg in config(), loads in vec((0u64..64, 1u32..4), 1..=64), work in vec((0u64..8, 0u64..400_000), 64), mean_us in 0u64..50_000, d in draw(), now in 1_000_000u64..2_000_000
    ) {
        cfg.policy = Policy::WorkLeft as u32;
        cfg.n_active = cfg.n_active.min(MAX_SLOTS);
        let now_us = now;
        let d = Draw { now: now_us * 1000, ..d };
        let loads = FigureLoads { loads: Loads(loads.into_iter().map(Some).collect()), work, mean_us };
        let cost = |s: u32| {
            let (count, weight) = loads.load(s).unwrap();
            let (w, sum) = loads.work(s);
            (work_left(count, mean_us, w, sum, now_us).min((1 << 30) - 1), weight)
        };
        chooses_a_cheapest(&cfg, &d, &loads, cost)?;
    }
}

// ---------------------------------------------------------------------------------------------
// speed-aware's recent time, decayed

proptest! {
    #![proptest_config(cases(2000))]

    /// Any figures: no panic, and the decayed recent time stays below 2^25.
    #[test]
    fn the_recent_time_is_total(recent in any::<u64>(), at in any::<u64>(), mean in any::<u64>(), now in any::<u64>()) {
        prop_assert!(recent_now(recent, at, mean, now) < 1 << 25);
    }

    /// With sane figures: the decayed recent time lies between the worker's and the group's
    /// mean, is the worker's when no time passed, gets no farther from the mean as time passes,
    /// and is the mean after 63 half-lives.
    #[test]
    fn the_recent_time_decays_toward_the_group_mean(recent in 0u64..(1 << 24), mean in 0u64..(1 << 24), at in 0u64..1 << 40, since in 0u64..1 << 30, later in 0u64..1 << 30) {
        let now = at + since;
        let est = recent_now(recent, at, mean, now);
        prop_assert!(recent.min(mean) <= est && est <= recent.max(mean), "{} not within {}..{}", est, recent, mean);
        prop_assert_eq!(recent_now(recent, at, mean, at), recent);
        let after = recent_now(recent, at, mean, now + later);
        prop_assert!(after.abs_diff(mean) <= est.abs_diff(mean));
        let long = at + (63 << RECENT_HALF_LIFE_SHIFT);
        prop_assert!(recent_now(recent, at, mean, long).abs_diff(mean) <= 1);
    }
}
