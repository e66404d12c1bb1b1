//! HTTP for reuselb: the server of `/metrics`, `/healthz` and `/status` ([`server`], axum on
//! hyper 1, with tower's limits), and the client that `reuselb status`, `reuselb top` and the
//! integration tests use to read them ([`client`], hyper 1).
pub mod client;
pub mod server;

pub use server::{serve, Health, Server, MAX_CONNECTIONS, MAX_REQUEST, REQUEST_TIMEOUT};

/// Where `/metrics`, `/healthz` and `/status` are served unless the config or `--metrics-addr`
/// says otherwise; also where `reuselb status` and `reuselb top` look.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
