//! The user side of reuselb: load the SK_REUSEPORT programs, own balanced groups of listening
//! sockets, and read what the program and the workers record.
//!
//! The binary (`reuselb`: `main.rs` and the subcommands in `cli/`) is a command line over this
//! library and holds what only it uses (flags, printing, `doctor`, `reuselb run`'s look at the
//! app's settings); the integration tests and benchmarks drive the same library against the real
//! kernel. Both `reuselb daemon` and `reuselb run` start their services through [`service`].

pub mod broken;
pub mod ebpf_log;
pub mod error;
pub mod group;
pub mod http;
pub mod listener;
pub mod loader;
pub mod metrics;
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
