//! The user side of reuselb: load the SK_REUSEPORT programs, own balanced groups of listening
//! sockets, and read what the program and the workers record.
//!
//! The binary (`reuselb`, in `main.rs`) is a thin CLI over this library; the integration tests and
//! benchmarks drive the same library against the real kernel.

pub mod broken;
pub mod doctor;
pub mod ebpf_log;
pub mod error;
pub mod group;
pub mod http;
pub mod listener;
pub mod loader;
pub mod metrics;
pub mod nofile;
pub mod registry;
pub mod report;
pub mod service;
pub mod shared_loads;
pub mod sys;
pub mod view;

/// The daemon's config file: its own crate, so the fuzz target builds without this one.
pub use balancer_config as config;
pub use error::Error;
pub use group::{Group, GroupOptions, Mode, SlotView, Stats};
