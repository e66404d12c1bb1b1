//! The daemon's configuration file (`reuselb daemon --config FILE`, `reuselb check-config FILE`).
//!
//! YAML, read with serde_yaml; unknown fields are errors everywhere. Every error names the file,
//! the line and column of the offending node, the field, the bad value and what was expected:
//!
//! ```text
//! /etc/reuselb/reuselb.yaml:7:13: services[0].policy: unknown policy `fastest`: expected one of least-loaded, work-left, speed-aware, p2c, round-robin, hash, pack
//! ```
//!
//! Checks of one value (policy names, addresses, ranges, paths) run while the file is read, so
//! serde_yaml knows where the value is. Checks across values (duplicate names, overlapping listen
//! addresses, shared socket paths) run afterwards in [`Config::validate`]; their position is found
//! by reading the text again with a probe that stops at the offending node (see [`locate`]), so
//! they point at the exact line and column too. `deploy/examples/reuselb.yaml` documents the format.
//!
//! A crate of its own, with no dependency on the rest of reuselb but balancer-common's `Policy`:
//! balancer-user re-exports it as `balancer_user::config`, and the fuzz target (fuzz/) depends on
//! it directly, without building balancer-user's eBPF programs.

mod check;
mod de;
mod diff;
mod error;
mod load;
mod locate;
mod model;
pub mod pods;
mod settings;
mod values;

pub use diff::ConfigDiff;
pub use error::ConfigError;
pub use locate::{locate, Seg};
pub use model::{Config, Mode, Service};
pub use pods::{Pods, Template};

/// Default of `shim_socket_dir`.
pub const DEFAULT_SHIM_SOCKET_DIR: &str = "/run/reuselb";
/// Default of `pin_path`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/reuselb";
/// Highest default `weight` a service or template may give (the operator's, for workers that ask
/// for none); what a worker may ask for itself is capped lower, at the registry's
/// `MAX_ASKED_WEIGHT` (1024).
pub const MAX_WEIGHT: u32 = 65535;
/// Longest service name.
pub const MAX_NAME_LEN: usize = 32;
/// The longest `blocked_after_ms`: ten minutes.
pub const MAX_BLOCKED_AFTER_MS: u32 = 600_000;
/// The largest `pack_depth`.
pub const MAX_PACK_DEPTH: u32 = 65_535;
