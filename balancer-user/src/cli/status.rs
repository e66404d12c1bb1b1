//! `reuselb status`: read `/status` from a running `reuselb daemon` or `reuselb run` and print the
//! per-worker tables of [`balancer_user::view`] (or the JSON as it came).
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{anyhow, Context, Result};
use balancer_user::{
    http::{client, DEFAULT_METRICS_ADDR},
    report::Report,
    view,
};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Metrics address of the daemon or `reuselb run` (HOST:PORT).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_METRICS_ADDR)]
    addr: String,
    /// Print the JSON report instead of the tables.
    #[arg(long)]
    json: bool,
}

/// `addr` (HOST:PORT) resolved to its first address.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to nothing"))
}

/// The report at `addr` and its JSON text.
pub fn fetch(addr: SocketAddr) -> Result<(Report, String)> {
    Ok(client::status_blocking(addr)?)
}

/// The error of a first fetch that failed: what to check.
pub fn not_there(addr: &str) -> String {
    format!(
        "no reuselb status at {addr} (is `reuselb daemon` or `reuselb run` running with that \
         metrics address?)"
    )
}

pub fn status(args: StatusArgs) -> Result<i32> {
    let (report, body) =
        resolve(&args.addr).and_then(fetch).with_context(|| not_there(&args.addr))?;
    if args.json {
        print!("{body}");
    } else {
        print!("{}", view::render_width(&report, view::stdout_width()));
    }
    Ok(0)
}
