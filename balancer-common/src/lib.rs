//! Types and logic shared by the kernel side (`balancer-ebpf`), the controller (`balancer-user`)
//! and the worker shim (`balancer-shim`).
//!
//! Every map layout and constant is defined here once, so the three sides cannot drift apart.
//! The selection policy lives here too, as plain functions: the eBPF program runs exactly the code
//! that the host unit tests exercise.
#![no_std]

#[macro_use]
mod named;

pub mod broken;
pub mod layout;
pub mod policy;
pub mod protocol;

pub use layout::*;
pub use policy::{
    choose, decide, find_idle, is_blocked, lowest_byte, next_in_turn, recent_next, recent_now,
    slowness, stall_limit_ns, work_left, Choice, Cost, Counts, Draw, Estimates, Family, Fast,
    LoadSource, PackScan, Policy, PolicyNames, Scan, Speeds, UnknownPolicy, IDLE_WORDS,
    SLOWNESS_CAP, SLOW_FACTOR, STALE_TRIES, STALL_CEILING_NS, STALL_FACTOR, STALL_FLOOR_NS,
};
