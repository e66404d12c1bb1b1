//! Shared fixtures of the integration tests: private network namespaces, and pools of
//! SO_REUSEPORT listeners balanced by a real [`Group`] in the real kernel; apps registered with an
//! in-process controller ([`registered`]). The benchmarks (the `reuselb-bench` crate, `bench/`)
//! start their apps and namespaces with these too.
//!
//! Every test runs in a network namespace of its own, so tests run in parallel without sharing
//! ports, and nothing outlives a test: the namespace goes away with its last socket and handle.

pub mod apps;
pub mod blocked;
pub mod http;
pub mod netns;
pub mod pool;
pub mod registered;
pub mod shim_client;

pub use netns::NetNs;
pub use pool::Pool;

/// Moves the calling test's thread, and every thread and process it starts afterwards, into a
/// private network namespace with a loopback of its own: the ports `apps::free_port` picks and the
/// servers a test starts on them cannot meet another test or process on the machine. Panics
/// with the reason if it cannot (these tests need root).
pub fn private_loopback() {
    netns::isolate_thread().expect("entering a private network namespace for this test");
}

/// The loopback addresses the tests run on: every test runs for IPv4 and IPv6.
pub const LOOPBACKS: [&str; 2] = ["127.0.0.1", "::1"];
