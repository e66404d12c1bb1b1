//! The integration tests, as one binary (as aya's integration-test is): one link of the library
//! and the embedded eBPF programs instead of one per file. Each module is the file of one concern;
//! test names carry the module, so `cargo test --release -p integration-tests --test integration
//! -- selector::` runs one of them.
//!
//! Every test needs root (BPF programs, network namespaces, bpffs pins), which is why this crate
//! is not a default member of the workspace: `cargo xtask test` runs it with `--workspace`. The
//! load tests of different modules share one lock (`integration_tests::apps::serial`), so they
//! never measure each other.

mod answers;
mod bench;
mod claims;
mod compat;
mod container;
mod daemon;
mod deploy;
mod failopen;
mod hostile;
mod migrate;
mod node;
mod nofile;
mod observe;
mod pod_limits;
mod privdrop;
mod restart;
mod seccomp;
mod selector;
mod speed;
mod stalling;
mod uwsgi;
mod worker_restarts;
