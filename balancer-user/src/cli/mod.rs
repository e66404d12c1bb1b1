//! The `reuselb` command line: one module per subcommand (`run`, `daemon`, `status`, `top`,
//! `doctor`, `check-config`), the log set-up and the descriptor limit (`nofile`) they share. Each module owns its subcommand's
//! flags (a clap `Args` struct) and its entry point, which returns the process's exit status;
//! `main.rs` only parses and dispatches.
//!
//! What a subcommand needs beyond its own output comes from the library: the services
//! ([`balancer_user::service`]), the report and its views, the metrics and HTTP. Nothing here is
//! used by the library, the tests or the benchmarks (they drive the library directly), which is
//! why it is here and not in `lib.rs`. Imports run one way: `top` reads through `status`; no
//! other subcommand imports another.
pub mod check_config;
pub mod daemon;
pub mod doctor;
pub mod logging;
pub mod nofile;
pub mod run;
pub mod status;
pub mod top;
