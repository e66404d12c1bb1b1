//! The selection policy on arbitrary configs, draws and loads: `choose` never panics, never
//! returns a slot that is not in the active list (or not a slot at all), never the excluded
//! slot; its errors are the documented ones; least-loaded returns a lightest readable slot and
//! fails only when there is none; round robin and hash take the drawn slot or the next usable;
//! pack takes the first usable slot in dense order below its depth, else what least-loaded takes.
//! With the fast path on (idle bytes of any value, the controller's active mask), all of that
//! still holds, and a slot the fast path takes has nothing in flight.
#![no_main]

use arbitrary::Arbitrary;
use balancer_common::{
    choose, decide, policy::lighter, work_left, Config, Draw, Event, LoadSource, Policy, MAX_SLOTS,
    NO_SLOT,
};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Mostly a known policy; sometimes a raw id.
    policy: u8,
    raw_policy: u32,
    /// Mostly the length of `active`; sometimes a raw count (beyond the list, or > MAX_SLOTS).
    n_mode: u8,
    raw_n: u32,
    /// Entries: in or near the slot range when the top bit is clear, raw otherwise.
    active: Vec<u32>,
    /// Per slot: Some((in flight, weight)), or unreadable.
    loads: Vec<Option<(u64, u32)>>,
    /// Load of every slot beyond `loads`.
    rest: Option<(u64, u32)>,
    random: u32,
    hash: u32,
    tick: u32,
    /// The pack policy's depth.
    pack_depth: u32,
    /// Index into the active list, or a raw slot, or none.
    exclude_mode: u8,
    raw_exclude: u32,
    /// The fast path on (the active mask and word count from the active list) or off.
    fast: bool,
    /// Idle bytes, as any worker could write them (slots beyond: 0).
    idle: Vec<u8>,
}

struct Loads<'a> {
    loads: &'a [Option<(u64, u32)>],
    rest: Option<(u64, u32)>,
    idle: RefCell<[u8; MAX_SLOTS as usize]>,
}

impl LoadSource for Loads<'_> {
    fn load(&self, slot: u32) -> Option<(u64, u32)> {
        match self.loads.get(slot as usize) {
            Some(l) => *l,
            None => self.rest,
        }
    }
    fn idle_word(&self, w: u32) -> u64 {
        let i = w as usize * 8;
        u64::from_le_bytes(self.idle.borrow()[i..i + 8].try_into().expect("8 bytes"))
    }
    fn clear_idle(&self, slot: u32) {
        self.idle.borrow_mut()[slot as usize] = 0;
    }
}

/// What the scan compares: loads capped at 2^30 - 1 (`Scan`'s cap, below the blocked lift of
/// 2^30), weight 0 counted as 1.
fn weighted(load: u64, weight: u32) -> (u128, u128) {
    (load.min((1 << 30) - 1) as u128, weight.max(1) as u128)
}

fn lighter_or_equal(a: (u64, u32), b: (u64, u32)) -> bool {
    let ((la, wa), (lb, wb)) = (weighted(a.0, a.1), weighted(b.0, b.1));
    la * wb <= lb * wa
}

fuzz_target!(|input: Input| {
    let policy = if input.policy < 240 {
        Policy::ALL[input.policy as usize % Policy::ALL.len()] as u32
    } else {
        input.raw_policy
    };
    let mut cfg = Config::empty(policy);
    cfg.pack_depth = input.pack_depth;
    for (dst, &e) in cfg.active.iter_mut().zip(&input.active) {
        *dst = if e & 0x8000_0000 == 0 { e & 0x1ff } else { e };
    }
    cfg.n_active = if input.n_mode < 200 {
        input.active.len().min(MAX_SLOTS as usize) as u32
    } else {
        input.raw_n
    };
    let n = cfg.active_slots().len();
    let exclude = match input.exclude_mode % 3 {
        0 => NO_SLOT,
        1 if n > 0 => cfg.active[input.raw_exclude as usize % n],
        _ => input.raw_exclude,
    };
    let draw = Draw { random: input.random, hash: input.hash, tick: input.tick, now: 0 };
    let mut idle = [0u8; MAX_SLOTS as usize];
    for (dst, &b) in idle.iter_mut().zip(&input.idle) {
        *dst = b;
    }
    let loads = Loads { loads: &input.loads, rest: input.rest, idle: RefCell::new(idle) };
    if input.fast {
        // As the controller's `set_active`, on whatever the active list holds; work-left only
        // with one weight for the whole group, as the controller publishes it.
        let active: Vec<u32> =
            cfg.active_slots().iter().copied().filter(|&s| s < MAX_SLOTS).collect();
        for &s in &active {
            cfg.active_mask[s as usize] = 0xff;
            cfg.idle_words = cfg.idle_words.max(s / 8 + 1);
        }
        let weights: Vec<u32> = active.iter().filter_map(|&s| loads.load(s)).map(|l| l.1).collect();
        cfg.uniform_weight = match weights.first() {
            Some(&w) if weights.iter().all(|&x| x == w) => w,
            _ => 0,
        };
    }
    let decided = decide(&cfg, &draw, exclude, &loads);
    if let Ok(c) = decided {
        if c.fast {
            assert_eq!(loads.load(c.slot).map(|l| l.0), Some(0), "the fast path took a busy slot");
        }
    }
    let result = decided.map(|c| c.slot);

    // Errors: exactly the documented ones.
    if cfg.n_active == 0 {
        assert_eq!(result, Err(Event::FallbackNoActive));
        return;
    }
    if cfg.n_active > MAX_SLOTS || Policy::from_id(policy).is_none() {
        assert_eq!(result, Err(Event::FallbackBadConfig));
        return;
    }
    let usable = |s: u32| s < MAX_SLOTS && s != exclude;
    match result {
        Ok(slot) => {
            assert!(slot < MAX_SLOTS, "slot {slot} out of range");
            assert_ne!(slot, exclude, "the excluded slot");
            assert!(
                cfg.active_slots().contains(&slot),
                "slot {slot} is not active: {:?}",
                cfg.active_slots()
            );
        }
        Err(e) => assert_eq!(e, Event::FallbackSelectFailed),
    }
    let active = cfg.active_slots();
    match Policy::from_id(policy).unwrap() {
        p @ (Policy::LeastLoaded | Policy::WorkLeft | Policy::SpeedAware) => {
            // work-left with no work figures (all 0): the count plus one, per
            // weight. Speed-aware, without a clock (no stall check), is least-loaded by counts:
            // its fast path passes over slow idle slots only for other idle ones.
            let cost = |(l, w): (u64, u32)| {
                if p == Policy::WorkLeft {
                    // The scan caps the count first (a count of 2^63 + k is not k).
                    (work_left(l.min((1 << 30) - 1), 0, 0, 0, 0).min((1 << 30) - 1), w)
                } else {
                    (l, w)
                }
            };
            let candidates: Vec<(u32, (u64, u32))> = active
                .iter()
                .filter(|&&s| usable(s))
                .filter_map(|&s| loads.load(s).map(|l| (s, cost(l))))
                .collect();
            match result {
                Ok(slot) => {
                    let own = cost(loads.load(slot).expect("the scan chose an unreadable slot"));
                    for &(other, l) in &candidates {
                        assert!(
                            lighter_or_equal(own, l),
                            "slot {slot} {own:?} is heavier than slot {other} {l:?}"
                        );
                    }
                }
                Err(_) => assert!(candidates.is_empty(), "no slot chosen among {candidates:?}"),
            }
        }
        Policy::RoundRobin | Policy::Hash => {
            let i = if policy == Policy::RoundRobin as u32 { draw.tick } else { draw.hash }
                as usize
                % n;
            let first = active[i];
            let next = active[(i + 1) % n];
            let expected = if usable(first) {
                Ok(first)
            } else if n > 1 && usable(next) {
                Ok(next)
            } else {
                Err(Event::FallbackSelectFailed)
            };
            assert_eq!(result, expected);
        }
        Policy::Pack => {
            let depth = input.pack_depth.max(1) as u128;
            let first = active.iter().copied().find(|&s| {
                usable(s)
                    && loads.load(s).is_some_and(|(l, w)| (l as u128) < depth * w.max(1) as u128)
            });
            let expected = match first {
                Some(slot) => Ok(slot),
                None => {
                    let mut ll = cfg;
                    ll.policy = Policy::LeastLoaded as u32;
                    choose(&ll, &draw, exclude, &loads)
                }
            };
            assert_eq!(result, expected, "pack at depth {depth}");
        }
        Policy::PowerOfTwo => {
            // With every active slot usable and readable, p2c finds one.
            if active.iter().all(|&s| usable(s) && loads.load(s).is_some()) {
                assert!(result.is_ok(), "p2c failed with every slot usable: {result:?}");
            }
            // It never picks a slot heavier than every other active one (two distinct picks).
            // Heavier as p2c compares: `lighter`, which clamps loads at u32::MAX (the scan of
            // least-loaded caps them lower, at 2^30 - 1: loads that high only come from a
            // corrupted table, and both orders are safe).
            if let Ok(slot) = result {
                let own = loads.load(slot);
                let others: Vec<_> = active.iter().filter(|&&s| s != slot).collect();
                if let (true, Some((lo, wo))) = (n >= 2 && others.len() == n - 1, own) {
                    let all_lighter = others.iter().all(|&&s| {
                        usable(s) && loads.load(s).is_some_and(|(l, w)| lighter(l, w, lo, wo))
                    });
                    assert!(
                        !all_lighter,
                        "p2c chose slot {slot}, heavier than every other active slot"
                    );
                }
            }
        }
    }
});
