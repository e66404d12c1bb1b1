//! The user side of reuselb: load the SK_REUSEPORT programs, own balanced groups of listening
//! sockets, and read what the program and the workers record.
//!
//! The binary (`reuselb`, in `main.rs`) is a thin CLI over this library; the integration tests and
//! benchmarks drive the same library against the real kernel.

pub mod config;
pub mod doctor;
pub mod ebpf_log;
pub mod error;
pub mod group;
pub mod listener;
pub mod loader;
pub mod metrics;
pub mod registry;
pub mod shared_loads;
pub mod status;
pub mod sys;
pub mod view;

pub use error::Error;
pub use group::{Group, GroupOptions, Mode, SlotView, Stats};
